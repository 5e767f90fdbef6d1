"""An MPTCP server (IPPROTO_MPTCP; for test_probes_s11_h2): one connection accepted, each
line it reads answered "reply N LINE".  argv: OUT PORT.  Reports "port N"."""

from __future__ import annotations

import socket
import sys

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
ln = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ln.bind(("127.0.0.1", int(sys.argv[2])))
ln.listen(4)
print(f"port {sys.argv[2]}", file=out)
c, _ = ln.accept()
f = c.makefile("rwb", buffering=0)
n = 0
while line := f.readline():
    n += 1
    f.write(b"reply %d %s\n" % (n, line.strip()))
