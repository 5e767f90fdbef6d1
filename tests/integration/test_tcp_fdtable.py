"""What the dump of a server's fd table reads once and shares (issue 11, bench/tcp.py):
an epoll's watches of TCP connections told from their fds without kcmp where the fd
is that socket still, the signal owner of a connection read on cryo's held duplicate.
A Python server with connections under --tcp-established, checkpointed, killed and
restarted; it answers each client with what it sees."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Procs
from tests.integration.test_sockets import Netns, connect, cycle, pytestmark, spawn  # noqa: F401

SERVER = r"""
import fcntl, os, select, signal, socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
F_SETSIG, F_GETSIG = 10, 11
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
say("ready")
conns = [srv.accept()[0] for _ in range(4)]
ep = select.epoll()
for c in conns:
    ep.register(c.fileno(), select.EPOLLIN)
# the first connection's watch outlives its fd: the socket kept at another number, the
# fifth connection accepted onto that number and watched too (two watches of fd a)
a = conns[0].fileno()
kept = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, os.dup(a))
conns[0].detach()
os.close(a)
fifth = srv.accept()[0]
assert fifth.fileno() == a, (fifth.fileno(), a)
ep.register(a, select.EPOLLIN)
fcntl.fcntl(conns[1], fcntl.F_SETOWN, os.getpid())  # a signal owner on a connection
fcntl.fcntl(conns[1], F_SETSIG, signal.SIGUSR1)
signal.signal(signal.SIGURG, signal.SIG_IGN)
label = {kept: "kept", fifth: "fifth", conns[1]: "c1", conns[2]: "c2", conns[3]: "c3"}
by_fd = {a: [kept, fifth], **{c.fileno(): [c] for c in conns[1:]}}
say("set")
while True:
    for fd, _ev in ep.poll():
        for s in by_fd[fd]:
            try:
                data = s.recv(100, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            if not data:
                sys.exit(1)
            name = label[s]
            if s is conns[1]:
                name += f" {fcntl.fcntl(s, fcntl.F_GETOWN)} {fcntl.fcntl(s, F_GETSIG)}"
            s.sendall(name.encode() + b" " + data)
"""


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns()
    try:
        yield n
    finally:
        n.remove()


def _ask(clients: list[socket.socket], pid: int) -> None:
    want = ["kept", f"c1 {pid} 10", "c2", "c3", "fifth"]
    for i in (4, 0, 2, 1, 3):  # (one at a time: each answer is its socket's)
        clients[i].sendall(b"x%d" % i)
        assert clients[i].recv(100) == f"{want[i]} x{i}".encode(), i


def test_epoll_of_connections_and_owner(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(SERVER)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "server.py"), "9410", str(out)], out)
    v.wait_line("ready")
    clients = [connect(ns, ("127.0.0.1", 9410)) for _ in range(5)]
    try:
        v.wait_line("set")
        _ask(clients, v.pid)
        pid = cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
        assert pid == v.pid
        _ask(clients, pid)
        r = ns.cryo("show", str(tmp_path / "img"), "--json")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("closed since") == 1, r.stdout  # the kept socket's watch
    finally:
        for c in clients:
            c.close()


def test_options_sock_diag_shows_are_what_getsockopt_answers() -> None:
    """A connection's options as inet.options reads them with what sock_diag showed
    (diag_known: those at their default not asked) are what it reads asking each: with
    every option sock_diag shows at its default, and with each set otherwise."""
    from cryo.engine import inet
    from cryo.linux import net as N

    ident = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    cases: list[list[tuple[int, int, int | bytes]]] = [
        [], [(N.SOL.IP, N.IP.TOS, 0x10)],
        [(N.SOL.IP, N.IP.FREEBIND, 1), (N.SOL.IP, N.IP.RECVERR, 1)],
        [(N.SOL.IP, N.IP.TRANSPARENT, 1), (N.SOL.IP, N.IP.BIND_ADDRESS_NO_PORT, 1)],
        [(N.SOL.IP, N.IP.RECVERR_RFC4884, 1)],
        [(N.SOL.SOCKET, N.SO.MARK, 7), (N.SOL.SOCKET, N.SO.PRIORITY, 3)],
        [(N.SOL.SOCKET, N.SO.MARK, -5)], [(N.SOL.SOCKET, N.SO.BINDTODEVICE, b"lo")],
        [(N.SOL.TCP, N.TCP.CONGESTION, b"reno")],
    ]  # fmt: skip
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        for opts in cases:
            with socket.create_connection(srv.getsockname()) as _c, srv.accept()[0] as a:
                for level, opt, value in opts:
                    a.setsockopt(level, opt, value)
                ino = os.fstat(a.fileno()).st_ino
                attrs: dict[int, dict[int, Any]] = {}
                N.inet_diag(socket.AF_INET, only={ino}, attrs=attrs)
                known = inet.diag_known(attrs.get(ino))
                assert known and len(known) >= 10, attrs
                asked = inet.options(a, ident, buffers=False, connection=True)
                assert inet.options(a, ident, buffers=False, connection=True,
                                    known=known) == asked, opts  # fmt: skip
                # (as lock_connections asks: the plan made once per sock_diag signature)
                sig, shared = inet._known_of(attrs.get(ino))
                assert sig is not None and shared == known, (sig, shared)
                assert inet.options(a, ident, buffers=False, connection=True, known=shared,
                                    known_sig=sig) == asked, opts  # fmt: skip
                # (each option set is seen; IP_TOS sets SO_PRIORITY too)
                assert {(lv, o) for lv, o, _v in opts} <= {(x[0], x[1]) for x in asked}, asked
