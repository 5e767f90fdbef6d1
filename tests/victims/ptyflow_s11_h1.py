"""A pty pair whose slave's output is stopped, or whose packet-mode master holds a
control status not read yet, checked across a checkpoint (and a restart).
Arguments: OUT GO MODE.  Modes: ixon (^S typed: ^Q goes on), tco (tcflow TCOOFF: ^Q
does not, TCOON does), pktnone (packet mode, no status), pktstop (packet mode, ^S:
TIOCPKT_STOP pending), pktstart (^S then ^Q: TIOCPKT_START), pktdostop (IXON off and on:
TIOCPKT_DOSTOP), pktflush (tcflush both ways: FLUSHREAD|FLUSHWRITE).  In each the master
has output waiting and (but for pktflush) the slave a partial line typed.  Once GO
exists: the status the master's next read returns, the stop (a write of the slave
waits), the output and the input as they were, and what ends the stop."""

import contextlib
import fcntl
import os
import select
import struct
import sys
import termios
import time

out, go, mode = sys.argv[1:4]
packet = mode.startswith("pkt")
m, s = os.openpty()
a = termios.tcgetattr(s)
a[3] &= ~termios.ECHO
termios.tcsetattr(s, termios.TCSANOW, a)
if packet:
    fcntl.ioctl(m, termios.TIOCPKT, struct.pack("i", 1))
for fd in (m, s):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
STATUS = {"pktnone": 0, "pktstop": termios.TIOCPKT_STOP, "pktstart": termios.TIOCPKT_START,
          "pktdostop": termios.TIOCPKT_DOSTOP,
          "pktflush": termios.TIOCPKT_FLUSHREAD | termios.TIOCPKT_FLUSHWRITE}
want_status = STATUS.get(mode, 0)
stopped = mode in ("ixon", "tco", "pktstop")
typed = b"" if mode == "pktflush" else b"typed"
if mode == "pktflush":
    termios.tcflush(s, termios.TCIOFLUSH)
os.write(s, b"before\n")
os.write(m, typed)
time.sleep(0.1)
if mode in ("ixon", "pktstop", "pktstart"):
    os.write(m, b"\x13")
    time.sleep(0.1)
if mode == "pktstart":
    os.write(m, b"\x11")
if mode == "tco":
    termios.tcflow(s, termios.TCOOFF)
if mode == "pktdostop":
    a = termios.tcgetattr(s)
    a[0] &= ~termios.IXON
    termios.tcsetattr(s, termios.TCSANOW, a)
    a[0] |= termios.IXON
    termios.tcsetattr(s, termios.TCSANOW, a)
time.sleep(0.2)


def say(line: str) -> None:
    with open(out, "a") as f:
        f.write(line + "\n")


def status() -> int:
    p = select.poll()
    p.register(m, select.POLLPRI)
    return os.read(m, 1)[0] if p.poll(0) else 0


def goes() -> bool:
    try:
        os.write(s, b"x")
        return True
    except BlockingIOError:
        return False


def output(want: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 5
    while len(got) < len(want) and time.monotonic() < deadline:
        try:
            data = os.read(m, 4096)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        got += data[1:] if packet else data
    return got


say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
bad = []
if (st := status()) != want_status:
    bad.append(f"status {st:#x} not {want_status:#x}")
if (st := status()) != 0:
    bad.append(f"a second status {st:#x}")
if goes() == stopped:
    bad.append("its output " + ("goes" if stopped else "stopped"))
if (got := output(b"before\r\n" + (b"" if stopped else b"x"))) != \
        b"before\r\n" + (b"" if stopped else b"x"):  # fmt: skip
    bad.append(f"output {got!r}")
with contextlib.suppress(BlockingIOError):
    bad.append(f"input {os.read(s, 100)!r} before the line's end")
os.write(m, b"\n")
time.sleep(0.1)
if (line := os.read(s, 100)) != typed + b"\n":
    bad.append(f"input {line!r}")
if mode == "ixon":
    os.write(m, b"\x11")  # ^Q: goes on
    time.sleep(0.1)
    if not goes():
        bad.append("^Q did not end the stop")
if mode == "tco":
    os.write(m, b"\x11")  # not after tcflow
    time.sleep(0.1)
    if goes():
        bad.append("^Q ended tcflow's stop")
    termios.tcflow(s, termios.TCOON)
    if not goes():
        bad.append("TCOON did not end the stop")
say("checked " + ("; ".join(bad) or "good"))
time.sleep(600)
