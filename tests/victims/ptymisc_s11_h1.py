"""A pty pair with state a new one lacks, checked across a checkpoint (and a restart):
the slave's speeds set with TCSETS2 (BOTHER: 12345 in, 54321 out baud) and its locked
settings (TIOCSLCKTRMIOS: ECHO locked, a change of it ignored).  Arguments: OUT GO."""

import fcntl
import os
import struct
import sys
import termios
import time

out, go = sys.argv[1:3]
TCGETS2, TCSETS2 = 0x802C542A, 0x402C542B
TIOCGLCKTRMIOS, TIOCSLCKTRMIOS = 0x5456, 0x5457
BOTHER, CBAUD = 0o010000, 0o010017
m, s = os.openpty()
t2 = bytearray(fcntl.ioctl(s, TCGETS2, b"\0" * 44))
cflag = struct.unpack_from("I", t2, 8)[0]
cflag = (cflag & ~CBAUD & ~(CBAUD << 16)) | BOTHER | (BOTHER << 16)
struct.pack_into("I", t2, 8, cflag)
struct.pack_into("II", t2, 36, 12345, 54321)
fcntl.ioctl(s, TCSETS2, bytes(t2))
a = termios.tcgetattr(s)
a[3] &= ~(termios.ICANON | termios.ECHO)
termios.tcsetattr(s, termios.TCSANOW, a)
lock = bytearray(36)
struct.pack_into("I", lock, 12, termios.ECHO)
fcntl.ioctl(s, TIOCSLCKTRMIOS, bytes(lock))


def state() -> tuple[object, ...]:
    return fcntl.ioctl(s, TCGETS2, b"\0" * 44), fcntl.ioctl(s, TIOCGLCKTRMIOS, b"\0" * 36)


before = state()
with open(out, "w") as f:
    f.write("ready\n")
while not os.path.exists(go):
    time.sleep(0.01)
bad = []
after = state()
for name, x, y in zip(("termios2", "locked"), before, after, strict=True):
    if x != y:
        bad.append(f"{name} {y!r} was {x!r}")
a = termios.tcgetattr(s)
a[3] |= termios.ECHO
termios.tcsetattr(s, termios.TCSANOW, a)
if termios.tcgetattr(s)[3] & termios.ECHO:
    bad.append("ECHO not locked")
with open(out, "a") as f:
    f.write("checked " + ("; ".join(bad) or "good") + "\n")
time.sleep(600)
