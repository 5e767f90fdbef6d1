"""A unix server whose socket file has its own mode, owner and times (as screen marks a
session attached or detached by its socket's mode).  argv: OUT DIR.  It binds DIR/srv
(stream) and DIR/rel (datagram, a relative name, bound from DIR), sets the stream
socket's file to mode 0640, owner 1234:5678, times 1e9 s and 2e9 s, the datagram one's to
0604; then "ready", and "ok N" every 20 ms while it answers each client with "pong"."""

import os
import select
import socket
import sys
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
d = sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(f"{d}/srv")
srv.listen(4)
os.chmod(f"{d}/srv", 0o640)
os.chown(f"{d}/srv", 1234, 5678)
os.utime(f"{d}/srv", ns=(1_000_000_000 * 10**9, 2_000_000_000 * 10**9))
os.chdir(d)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind("rel")
os.chmod("rel", 0o604)
out.write("ready\n")
n = 0
while True:
    for s in select.select([srv], [], [], 0.02)[0]:
        c, _ = s.accept()
        c.sendall(b"pong")
        c.close()
    out.write(f"ok {n}\n")
    n += 1
    time.sleep(0.01)
