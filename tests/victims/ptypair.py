"""A pseudo-terminal with both ends in one tree, checked across a restart.
argv: OUT GO.  The parent holds the master (packet mode on, window 33x101) and pings
through it; its child (pty.fork: a session whose controlling terminal is the slave)
forks a worker that makes its own process group the terminal's foreground, turns echo
off and answers each ping.  Once GO exists the worker checks the terminal: its name,
settings and window size; the session leader that it is its controlling terminal with
the worker's group in the foreground."""

import fcntl
import os
import pty
import signal
import struct
import sys
import termios
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
go = sys.argv[2]


def say(line: str) -> None:
    out.write(line + "\n")


def work() -> None:
    """The worker, in its own process group, in the terminal's foreground."""
    if True:
        attrs = termios.tcgetattr(0)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)
        attrs[6][termios.VMIN] = 1
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        os.write(1, b"worker ready\n")
        name = os.ttyname(0)
        saved = termios.tcgetattr(0)
        sid = os.getsid(0)
        checked = False
        while True:
            line = b""
            while not line.endswith(b"\n"):
                line += os.read(0, 64)
            os.write(1, b"pong %d\n" % (int(line.split()[-1]) + 1))
            if not checked and os.path.exists(go):
                checked = True
                bad = []
                if os.ttyname(0) != name:
                    bad.append(f"name {os.ttyname(0)} was {name}")
                if termios.tcgetattr(0) != saved:
                    bad.append("termios")
                size = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
                if size[:2] != (33, 101):
                    bad.append(f"window {size}")
                if os.getsid(0) != sid:
                    bad.append("session")
                say("checked " + ("; ".join(bad) if bad else "good"))


if sys.argv[3:] == ["worker"]:
    work()
pid, master = pty.fork()
if pid == 0:  # the session leader: its terminal is the slave
    worker = os.fork()
    if worker == 0:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # not yet in the foreground
        os.tcsetpgrp(0, os.getpgrp())
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        # a fresh program: no memory shared copy-on-write with its parents
        os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:3], "worker"])
    # the session leader: its controlling terminal, and who is in the foreground
    while not os.path.exists(go):
        time.sleep(0.01)
    bad = []
    try:
        tty_sid = struct.unpack("i", fcntl.ioctl(0, 0x5429, b"\0" * 4))[0]  # TIOCGSID
        if tty_sid != os.getpid():
            bad.append(f"terminal of session {tty_sid}")
        if os.tcgetpgrp(0) != worker:
            bad.append(f"foreground {os.tcgetpgrp(0)} not {worker}")
    except Exception as err:  # reported: not printed on the terminal
        bad.append(repr(err))
    say("leader " + ("; ".join(bad) if bad else "good"))
    while True:
        time.sleep(1)
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
seen = b""
while b"worker ready" not in seen:  # the worker has set the terminal up
    seen += os.read(master, 64)
say(f"ready {os.getpid()}")
n = 0
while True:
    os.write(master, b"ping %d\n" % n)
    got = b""
    while not got.endswith(b"\n"):
        data = os.read(master, 64)
        if data[:1] != b"\0":  # packet mode: a control byte first
            continue
        got += data[1:]
    m = int(got.split()[-1])
    if m != n + 1:
        say(f"FAIL {got!r} after {n}")
    n = m
    say(f"tick {n}")
    time.sleep(0.01)
