"""A pty pair with more waiting each way than its line discipline holds (4 KiB): the
program wrote to the slave until it would block, and to the master until it would
block, nobody reading (canonical: 150 lines of 100 bytes typed).  After GO exists
every byte is read from both ends, in order.  Arguments: OUT GO MODE (raw: the slave
noncanonical; canon: canonical)."""

import fcntl
import os
import sys
import termios
import time

out, go, mode = sys.argv[1:4]
m, s = os.openpty()
a = termios.tcgetattr(s)
a[1] &= ~termios.OPOST
a[3] &= ~termios.ECHO
if mode == "raw":
    a[3] &= ~termios.ICANON
termios.tcsetattr(s, termios.TCSANOW, a)
for fd in (m, s):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def fill(fd: int, unit: int) -> bytes:
    sent = b""
    for _ in range(3):  # (until it would block, three times: the kernel's worker moves
        n = 0  # data on between)
        while True:
            chunk = (b"%05d" % (len(sent) // unit)).ljust(unit - 1, b".") + b"\n"
            try:
                n = os.write(fd, chunk)
            except BlockingIOError:
                break
            sent += chunk[:n]
            if n < len(chunk):
                break
        time.sleep(0.2)
    return sent


output = fill(s, 100)
if mode == "raw":
    typed = fill(m, 100)
else:  # (a canonical discipline drops what comes once it is full: 150 lines, below that)
    typed = b"".join((b"%05d" % i).ljust(99, b".") + b"\n" for i in range(150))
    for i in range(0, len(typed), 100):
        os.write(m, typed[i:i + 100])
        time.sleep(0.002)


def drain(fd: int) -> bytes:
    got = b""
    quiet = time.monotonic()
    while time.monotonic() - quiet < 1:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        got += data
        quiet = time.monotonic()
    return got


with open(out, "w") as f:
    f.write(f"ready {len(output)} {len(typed)}\n")
while not os.path.exists(go):
    time.sleep(0.01)
bad = []
if (got := drain(m)) != output:
    bad.append(f"output {len(got)} bytes of {len(output)}")
if (got := drain(s)) != typed:
    bad.append(f"input {len(got)} bytes of {len(typed)}")
with open(out, "a") as f:
    f.write("checked " + ("; ".join(bad) or "good") + "\n")
time.sleep(600)
