"""A pty pair in canonical mode with input waiting: complete lines ended four ways (a
newline, the EOL character, EOF, an empty EOF line), one with a newline typed after ^V,
and a line still being typed (an erase in it).  After ``go`` appears, the same is
typed on a new pair, the rest of each typed line ("def\\n") on both, and every read of
the slave (one a line) and the echo on the master compared with the new pair's.
Arguments: OUT GO"""

import fcntl
import os
import sys
import termios
import time

from ptycheck import against_a_new_pair

out, go = sys.argv[1:3]


def pair() -> tuple[int, int]:
    m, s = os.openpty()
    a = termios.tcgetattr(s)
    a[3] |= termios.ICANON | termios.ECHO | termios.ECHOE | termios.ISIG | termios.IEXTEN
    a[6][termios.VEOL] = b"!"
    a[6][termios.VEOF] = b"\x04"
    a[6][termios.VLNEXT] = b"\x16"
    termios.tcsetattr(s, termios.TCSANOW, a)
    for fd in (m, s):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    return m, s


def type_in(m: int) -> None:
    for chunk in (b"one\n", b"two!", b"three\x04", b"\x04", b"fo\x16\nur\n", b"abcX\x7f"):
        os.write(m, chunk)
        time.sleep(0.02)


def rest(m: int, s: int) -> tuple[list[bytes], bytes]:
    """Every read of the slave until the one that ends with "def\\n", and the echo until
    its end (the line discipline takes what the master writes in a kernel worker: no
    fixed wait is enough on a loaded machine); 10 s at most."""
    os.write(m, b"def\n")
    reads: list[bytes] = []
    echo = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (reads and reads[-1].endswith(b"def\n")):
        try:
            reads.append(os.read(s, 4096))
        except BlockingIOError:
            time.sleep(0.01)
    while time.monotonic() < deadline and not echo.endswith(b"def\r\n"):
        try:
            echo += os.read(m, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    return reads, echo


against_a_new_pair(out, go, pair, type_in, rest, ("reads", "echo"),
                   lambda w: None if len(w[0]) == 6 else f"the new pair gave {w[0]!r}")
