"""A read of a pty slave in noncanonical mode with VMIN 3 (VTIME 0: no timer), one
byte of three typed when it is checkpointed.  Arguments: OUT GO.  The parent holds the
master: it types "a", and once GO exists "bc"; the child (its own process) reads with
one read() and says what it got: "abc" at once, as without a checkpoint (the freeze's
interrupt made the read return "a" alone, found by probing with tmux)."""

import os
import sys
import termios
import time

out, go = sys.argv[1:3]
m, s = os.openpty()
a = termios.tcgetattr(s)
a[3] &= ~(termios.ICANON | termios.ECHO)
a[6][termios.VMIN], a[6][termios.VTIME] = 3, 0
termios.tcsetattr(s, termios.TCSANOW, a)


def say(line: str) -> None:
    with open(out, "a") as f:
        f.write(line + "\n")


child = os.fork()
if child == 0:
    os.close(m)
    reads = []
    while sum(map(len, reads)) < 3:
        reads.append(os.read(s, 3 - sum(map(len, reads))))
    say("checked " + ("good" if reads == [b"abc"] else f"reads {reads!r}"))
    time.sleep(600)
    os._exit(0)
os.close(s)
os.write(m, b"a")
time.sleep(0.3)  # the child has it, in its read
say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
os.write(m, b"bc")
while True:
    time.sleep(1)
