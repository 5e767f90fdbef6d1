"""A unix stream pair in one process (for test_probes_s11_h2), written as nginx writes:
the writer end non-blocking in an epoll with an edge-triggered watch, written until
EAGAIN (its peer's queue full), then waiting for the next EPOLLOUT edge; once the file
GO exists it reads the reader end, 16 KiB a round, so that the writer must be woken
again and again, and checks every byte and its SO_SNDBUF.

argv: OUT GO TOTAL.  Reports "full QUEUED", "tick N" every 0.1 s, then "read TOTAL" and
"ok sizes"; "FAIL ..." otherwise."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
go, total = sys.argv[2], int(sys.argv[3])
PATTERN = bytes(range(251)) * 1045
w, r = socket.socketpair()
w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 96 << 10)
size = w.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
w.setblocking(False)
r.setblocking(False)
ep = select.epoll()
ep.register(w.fileno(), select.EPOLLOUT | select.EPOLLET)
sent, full, got = 0, False, bytearray()
tick = 0
while len(got) < total:
    for _fd, _ev in ep.poll(0.1):
        while sent < total:
            at = sent % len(PATTERN)
            try:
                sent += w.send(PATTERN[at : at + min(total - sent, 65536)])
            except BlockingIOError:
                if not full:
                    full = True
                    print(f"full {sent}", file=out)
                break
    if os.path.exists(go):
        with contextlib.suppress(BlockingIOError):
            got += r.recv(16384)
    tick += 1
    print(f"tick {tick}", file=out)
want = (PATTERN * (total // len(PATTERN) + 1))[:total]
print(f"read {len(got)}" if bytes(got) == want else f"FAIL bytes read differ ({len(got)})",
      file=out)  # fmt: skip
now = w.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
print("ok sizes" if now == size else f"FAIL SO_SNDBUF {now}, was {size}", file=out)
