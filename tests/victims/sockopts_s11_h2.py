"""Idle TCP connections that watch what the kernel shows of them (for test_probes_s11_h2):
one over IPv4 and, with argv[3] "6", one over IPv6, accepted from the test; every 0.1 s each reads
TCP_MAXSEG (the segment size in use: on an idle connection it never changes),
SO_SNDBUF, SO_RCVBUF, TCP_NODELAY and SO_KEEPALIVE, and tells any change.

With "many" after it, each connection is given many options of its own first (the
keepalive times, TCP_USER_TIMEOUT, TCP_WINDOW_CLAMP, TCP_CONGESTION reno, TCP_CORK,
TCP_NOTSENT_LOWAT, TCP_THIN_LINEAR_TIMEOUTS, IP_TOS, IP_TTL, SO_PRIORITY, SO_MARK,
SO_LINGER, SO_RCVLOWAT, SO_RCVTIMEO, SO_SNDTIMEO), and it watches those too.

argv: OUT PORT [6|4 [many]].  Reports "port N" once listening, "ready" once both are accepted,
"tick N" per round, "FAIL ..." at a change."""

from __future__ import annotations

import socket
import struct
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
six = sys.argv[3:4] == ["6"]
many = sys.argv[4:5] == ["many"]
T, S, IP = socket.IPPROTO_TCP, socket.SOL_SOCKET, socket.IPPROTO_IP
MANY = {  # name: (level, option, value to set, size to read: 0 for an int)
    "TCP_KEEPIDLE": (T, socket.TCP_KEEPIDLE, 77, 0),
    "TCP_KEEPINTVL": (T, socket.TCP_KEEPINTVL, 13, 0),
    "TCP_KEEPCNT": (T, socket.TCP_KEEPCNT, 4, 0),
    "TCP_USER_TIMEOUT": (T, 18, 12345, 0),
    "TCP_WINDOW_CLAMP": (T, socket.TCP_WINDOW_CLAMP, 40000, 0),
    "TCP_CONGESTION": (T, socket.TCP_CONGESTION, b"reno", 16),
    "TCP_CORK": (T, socket.TCP_CORK, 1, 0),
    "TCP_NOTSENT_LOWAT": (T, 25, 50000, 0),
    "TCP_THIN_LINEAR_TIMEOUTS": (T, 16, 1, 0),
    "IP_TTL": (IP, socket.IP_TTL, 33, 0),
    "SO_PRIORITY": (S, socket.SO_PRIORITY, 3, 0),
    "SO_MARK": (S, 36, 7, 0),
    "SO_LINGER": (S, socket.SO_LINGER, struct.pack("ii", 1, 5), 8),
    "SO_RCVLOWAT": (S, socket.SO_RCVLOWAT, 10, 0),
    "SO_RCVTIMEO": (S, socket.SO_RCVTIMEO, struct.pack("ll", 3, 250000), 16),
    "SO_SNDTIMEO": (S, socket.SO_SNDTIMEO, struct.pack("ll", 4, 500000), 16),
    "IP_TOS": (IP, socket.IP_TOS, 0x10, 0),  # (after SO_PRIORITY? it sets it: last but one)
}
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
    for lv, o, val, _n in MANY.values() if many else ():
        if lv == IP and c[0] == "AF_INET6":
            continue
        c[2].setsockopt(lv, o, val)


def read(s: socket.socket) -> dict[str, object]:
    got: dict[str, object] = {k: s.getsockopt(lv, o) for k, (lv, o) in OPTS.items()}
    for name, (lv, o, _val, n) in MANY.items() if many else ():
        if lv == IP and s.family == socket.AF_INET6:
            continue
        got[name] = s.getsockopt(lv, o, n) if n else s.getsockopt(lv, o)
    return got


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
