"""Unix sockets of every kind in a tree of two processes, checked across a restart.
argv: OUT DIR GO.  The parent listens on DIR/srv (stream) and @cryo-unixsk-PID
(abstract), receives datagrams on DIR/dgram (its child's socket is connected to it) and
on DIR/gone (unlinked after bind); its child connects to DIR/srv and answers pings.  A
seqpacket pair holds two queued messages, another one whose other end is closed holds
one.  Once GO exists (after the restart) the parent checks names, options and queues."""

import os
import socket
import sys
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
d, go = sys.argv[2], sys.argv[3]


def say(line: str) -> None:
    out.write(line + "\n")


srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(f"{d}/srv")
srv.listen(5)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
abstract = b"\0cryo-unixsk-" + str(os.getpid()).encode()
asrv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
asrv.bind(abstract)
asrv.listen(3)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind(f"{d}/dgram")
dg.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 123456)
gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
gone.bind(f"{d}/gone")
os.unlink(f"{d}/gone")
sp_a, sp_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sp_b.send(b"first")
sp_b.send(b"second, longer")
lone, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
other.send(b"last words")
other.close()
if os.fork() == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(f"{d}/srv")
    u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    u.connect(f"{d}/dgram")
    while data := c.recv(64):
        c.sendall(str(int(data) + 1).encode())
        u.send(b"d" + data)
    os._exit(0)
conn, _ = srv.accept()
rcvbuf = dg.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
say(f"ready {os.getpid()}")
n = 0
checked = False
while True:
    conn.sendall(str(n).encode())
    m = int(conn.recv(64))
    if m != n + 1:
        say(f"FAIL pong {m} after {n}")
    got = dg.recv(64)
    if got != b"d" + str(n).encode():
        say(f"FAIL datagram {got!r} for {n}")
    n = m
    say(f"tick {n}")
    if not checked and os.path.exists(go):
        checked = True
        bad = []
        if srv.getsockname() != f"{d}/srv" or asrv.getsockname() != abstract:
            bad.append(f"names {srv.getsockname()!r} {asrv.getsockname()!r}")
        if not srv.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED):
            bad.append("SO_PASSCRED lost")
        if dg.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) != rcvbuf:
            bad.append("SO_RCVBUF changed")
        if os.path.exists(f"{d}/gone") or gone.getsockname() != f"{d}/gone":
            bad.append("the unlinked socket")
        if [sp_a.recv(64), sp_a.recv(64)] != [b"first", b"second, longer"]:
            bad.append("seqpacket queue")
        if lone.recv(64) != b"last words" or lone.recv(64) != b"":
            bad.append("seqpacket with its peer gone")
        for s in (srv, asrv):  # the test connects to each once: answer
            s.settimeout(10)
            try:
                a, _ = s.accept()
                a.sendall(b"hello")
                a.close()
            except OSError as err:
                bad.append(f"accept {err}")
        say("checked " + ("; ".join(bad) if bad else "good"))
    time.sleep(0.01)
