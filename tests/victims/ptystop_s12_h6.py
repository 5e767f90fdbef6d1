"""A pty pair stopped with ^S (IXON) while input was typed: its echoes are held by the
line discipline until ^Q.  Typed: "x\\n" (echoed, the echo left unread on the master),
^S, then "abc\\n" and "de" (their echoes held).  After ``go`` appears, the same on a new
pair; then on both: what the master gives before ^Q (only "x\\r\\n"), what it gives
after ^Q, and the slave's reads, compared.  Arguments: OUT GO"""

import contextlib
import os
import select
import sys
import termios
import time

from ptycheck import against_a_new_pair

out, go = sys.argv[1:3]


def pair() -> tuple[int, int]:
    m, s = os.openpty()
    a = termios.tcgetattr(s)
    a[0] |= termios.IXON
    a[3] |= termios.ICANON | termios.ECHO | termios.ECHOE | termios.ISIG | termios.IEXTEN
    termios.tcsetattr(s, termios.TCSANOW, a)
    os.set_blocking(m, False)
    os.set_blocking(s, False)
    return m, s


def type_in(m: int) -> None:
    for chunk in (b"x\n", b"\x13", b"abc\n", b"de"):
        os.write(m, chunk)
        time.sleep(0.05)


def read_for(fd: int, seconds: float, until: bytes = b"") -> bytes:
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and got.endswith(until)):
        if select.select([fd], [], [], 0.02)[0]:
            with contextlib.suppress(BlockingIOError):
                got += os.read(fd, 4096)
    return got


def look(m: int, s: int) -> tuple[bytes, bytes, bytes]:
    before = read_for(m, 0.5)
    os.write(m, b"\x11")
    after = read_for(m, 10, b"de")
    os.write(m, b"f\n")
    after += read_for(m, 10, b"f\r\n")
    return before, after, read_for(s, 10, b"def\n")


against_a_new_pair(out, go, pair, type_in, look, ("before", "after", "reads"),
                   lambda w: None if w[0] == b"x\r\n" else f"the new pair gave {w!r}")
