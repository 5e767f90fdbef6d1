"""A server that writes as nginx does: one connection, non-blocking, in an epoll with an
edge-triggered watch; it writes until EAGAIN, then waits for the next EPOLLOUT edge
(the kernel gives one when acknowledged data frees a third of the send buffer).  Its
buffer sizes are its own (SO_SNDBUF, SO_RCVBUF); it does not read what its client
sends until it has written everything.

argv: OUT PORT TOTAL INCOMING [HOST [LOWAT]] (LOWAT: its TCP_NOTSENT_LOWAT, as HTTP/2
servers set it, so that its writes stop once that much is queued unsent).  Reports
"port N", "full QUEUED" once its first write met EAGAIN, "tick N" every 0.1 s, "wrote
TOTAL" when all is written, then "read INCOMING" and "ok sizes" once it read what its
client sent and found its buffer sizes as they were; "FAIL ..." otherwise."""

from __future__ import annotations

import select
import socket
import sys

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
port, total, incoming = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
lowat = int(sys.argv[6]) if len(sys.argv) > 6 else 0
PATTERN = bytes(range(251)) * 1045  # 262,295 bytes: chunks never line up with buffers

ln = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ln.bind((host, port))
ln.listen(1)
print(f"port {port}", file=out)
c, _ = ln.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
if lowat:
    c.setsockopt(socket.IPPROTO_TCP, 25, lowat)  # TCP_NOTSENT_LOWAT
sizes = (c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
         c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))  # fmt: skip
c.setblocking(False)
ep = select.epoll()
ep.register(c.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLET)
sent = 0
full = False


def write() -> None:
    """Until EAGAIN (or all is written), as an edge-triggered writer must."""
    global sent, full
    while sent < total:
        at = sent % len(PATTERN)
        try:
            n = c.send(PATTERN[at : at + min(total - sent, 65536)])
        except BlockingIOError:
            if not full:
                full = True
                print(f"full {sent}", file=out)
            return
        sent += n


tick = 0
while sent < total:
    for _fd, ev in ep.poll(0.1):
        if ev & select.EPOLLOUT:
            write()
    tick += 1
    print(f"tick {tick}", file=out)
print(f"wrote {sent}", file=out)
ep.unregister(c.fileno())
c.setblocking(True)
got = bytearray()
while len(got) < incoming:
    chunk = c.recv(1 << 20)
    if not chunk:
        break
    got += chunk
want = (PATTERN * (incoming // len(PATTERN) + 1))[:incoming]
if bytes(got) != want:
    print(f"FAIL read {len(got)} bytes, not the {incoming} sent", file=out)
else:
    print(f"read {len(got)}", file=out)
now = (c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
       c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))  # fmt: skip
if now != sizes:
    print(f"FAIL sizes (SO_SNDBUF, SO_RCVBUF) {now}, were {sizes}", file=out)
else:
    print("ok sizes", file=out)
c.close()
