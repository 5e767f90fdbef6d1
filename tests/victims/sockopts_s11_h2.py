"""Idle TCP connections that watch what the kernel shows of them (for test_probes_s11_h2):
one over IPv4 and, with argv[3] "6", one over IPv6, accepted from the test; every 0.1 s each reads
TCP_MAXSEG (the segment size in use: on an idle connection it never changes),
SO_SNDBUF, SO_RCVBUF, TCP_NODELAY and SO_KEEPALIVE, and tells any change.

argv: OUT PORT [6].  Reports "port N" once listening, "ready" once both are accepted,
"tick N" per round, "FAIL ..." at a change."""

from __future__ import annotations

import socket
import sys
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
port = int(sys.argv[2])
OPTS = {"TCP_MAXSEG": (socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        "SO_SNDBUF": (socket.SOL_SOCKET, socket.SO_SNDBUF),
        "SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF),
        "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE)}  # fmt: skip
conns = []
six = sys.argv[3:] == ["6"]
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))[: 1 + six]:
    ln = socket.socket(family)
    ln.bind((host, port))
    ln.listen(1)
    conns.append([family.name, ln, None])
print(f"port {port}", file=out)
for c in conns:
    c[2] = c[1].accept()[0]
    c[2].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c[2].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def read(s: socket.socket) -> dict[str, int]:
    return {k: s.getsockopt(lv, o) for k, (lv, o) in OPTS.items()}


seen = [read(c[2]) for c in conns]
print(f"ready {seen}", file=out)
tick = 0
while True:
    time.sleep(0.1)
    for (name, _ln, s), was in zip(conns, seen, strict=True):
        now = read(s)
        for k in now:
            if now[k] != was[k]:
                print(f"FAIL {name} {k} {now[k]}, was {was[k]}", file=out)
        was.update(now)
    tick += 1
    print(f"tick {tick}", file=out)
