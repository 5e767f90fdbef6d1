"""Pty pairs whose output depends on the column the line discipline keeps: "abc"
written to each slave (and read on the master), then, after ``go`` appears, the same
on new pairs, then on all of them bytes whose output depends on the column and a NUL,
what the masters get compared: one pair with OPOST and TAB3 (a tab expands to the next
multiple of 8: 5 spaces after "abc"; backspaces then stop at column 0), one with OPOST
and ONOCR (a CR at column 0 is dropped), one with both after a line of 1,003 bytes
(1,000 backspaces, then a tab).  Arguments: OUT GO"""

import os
import sys
import termios
import time

out, go = sys.argv[1:3]
KINDS = ((termios.TAB3, b"abc", b"\tX" + b"\b" * 14 + b"\tZ"),
         (termios.ONOCR, b"abc", b"\r\tX\r"),
         (termios.TAB3 | termios.ONOCR, b"y" * 1003, b"\b" * 1000 + b"\tX\r\r"))  # fmt: skip


def pair(oflag: int, text: bytes, then: bytes) -> tuple[int, int, bytes]:
    m, s = os.openpty()
    a = termios.tcgetattr(s)
    a[1] = termios.OPOST | oflag
    termios.tcsetattr(s, termios.TCSANOW, a)
    os.write(s, text + b"\0")
    got = b""
    while not got.endswith(b"\0"):
        got += os.read(m, 4096)
    return m, s, then


def look(m: int, s: int, then: bytes) -> bytes:
    os.write(s, then + b"\0")
    got = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not got.endswith(b"\0"):
        got += os.read(m, 4096)
    return got


old = [pair(*k) for k in KINDS]
with open(out, "w") as f:
    f.write("ready\n")
while not os.path.exists(go):
    time.sleep(0.01)
new = [pair(*k) for k in KINDS]
bad = []
for i, (a, b) in enumerate(zip(old, new, strict=True)):
    got, want = look(*a), look(*b)
    if got != want:
        bad.append(f"pair {i}: {got!r} not {want!r}")
with open(out, "a") as f:
    f.write("checked " + ("; ".join(bad) or "good") + "\n")
time.sleep(600)
