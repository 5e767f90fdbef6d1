"""Servers and clients (issue 11): listening, bound and unbound TCP sockets with their
options, UDP, raw, packet and netlink sockets, and established TCP connections with
TCP_REPAIR under the nftables lock.  Every test runs in a network namespace of its own
(only its loopback, removed at the end), with cryo run inside it: the nftables tables
and ports of one test touch nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import inet, netlock
from cryo.linux import net as N
from cryo.linux.net import setns
from tests.conftest import Procs, Victim, cli_cycle, reap, run_cryo

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/nft")
                                and not os.path.exists("/usr/bin/nft"),
                                reason="needs nftables (nft)")  # fmt: skip


class Netns:
    """A network namespace with its loopback up; commands run inside it."""

    def __init__(self) -> None:
        self.name = f"cryo-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up", check=True)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = False, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(self.argv(*cmd), capture_output=True, text=True, check=check,
                              timeout=timeout, close_fds=True)  # fmt: skip

    def cryo(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "cryo", *args, timeout=timeout)

    def tables(self) -> list[str]:
        out = self.run("nft", "list", "tables", check=True).stdout
        return [line.split()[-1] for line in out.splitlines() if line.startswith("table")]

    def enter(self) -> int:
        """This thread's network namespace switched to ours; returns the old one's fd."""
        old = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            setns(fd)
        finally:
            os.close(fd)
        return old

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns()
    try:
        yield n
    finally:
        n.remove()


@contextlib.contextmanager
def inside(n: Netns) -> Iterator[None]:
    """Sockets made meanwhile by this thread belong to the namespace."""
    old = n.enter()
    try:
        yield
    finally:
        setns(old)
        os.close(old)


def spawn(procs: Procs, n: Netns, argv: list[str], out: Path) -> Victim:
    return procs.spawn(n.argv(*argv), out)


def connect(n: Netns, addr: tuple[Any, ...], family: int = socket.AF_INET,
            timeout: float = 10) -> socket.socket:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        with inside(n):
            s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr)
            return s
        except (ConnectionRefusedError, TimeoutError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cycle(procs: Procs, n: Netns, pid: int, img: Path, *opts: str) -> int:
    """Checkpoint with --kill, then restart (detached); returns the restored pid."""
    r = n.cryo("checkpoint", str(pid), "-D", str(img), "--kill", *opts)
    assert r.returncode == 0, r.stderr
    reap(pid)
    r = n.cryo("restart", "-D", str(img), "--detach", *opts)
    assert r.returncode == 0, r.stderr
    return procs.track(int(r.stdout))


def test_http_server(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """`python3 -m http.server` checkpointed, killed, restarted: it serves again."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from before\n")
    v = spawn(procs, ns, [sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1",
                          "--directory", str(tmp_path / "www")], tmp_path / "out")  # fmt: skip

    def get() -> bytes:
        s = connect(ns, ("127.0.0.1", 8000))
        with s:
            s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data

    assert get().endswith(b"hello from before\n")
    time.sleep(0.2)  # the server's connection is gone (TIME_WAIT has no fd)
    pid = cycle(procs, ns, v.pid, tmp_path / "img")
    assert pid == v.pid
    assert get().endswith(b"hello from before\n")
    assert get().startswith(b"HTTP/1.0 200")
    assert ns.tables() == []


def test_socket_options(procs: Procs, ns: Netns, build: Any, tmp_path: Path) -> None:
    """Listeners (v4, v6 only, dual stack), unbound and bound-only TCP, bound and
    connected UDP, raw, packet and netlink sockets, with their options: the victim
    compares every option and address with what it had."""
    go = tmp_path / "go"
    v = spawn(procs, ns, [build("sockopts"), str(tmp_path / "out"), "7000", str(go)],
              tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    assert not v.fails()
    pid = cycle(procs, ns, v.pid, tmp_path / "img")
    v = Victim(pid, v.out)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good", v.fails()
    for addr, family, answer in ((("127.0.0.1", 7000), socket.AF_INET, b"A\n"),
                                 (("::1", 7001), socket.AF_INET6, b"B\n"),
                                 (("::1", 7002), socket.AF_INET6, b"C\n"),
                                 (("127.0.0.1", 7002), socket.AF_INET, b"C\n")):  # fmt: skip
        with connect(ns, addr, family) as s:
            s.sendall(b"x")  # TCP_DEFER_ACCEPT: the listener wakes on data
            assert s.recv(16) == answer
    with inside(ns):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with u:
        u.settimeout(5)
        u.sendto(b"ping", ("127.0.0.1", 7004))
        assert u.recv(16) == b"ping"


SERVER = r"""
import socket, sys, time
# a download of TOTAL bytes (byte i = (i * 7 + i // 251) & 0xFF) to the first client
TOTAL = int(sys.argv[2])
out = open(sys.argv[3], "a", buffering=1)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(1)
out.write("ready\n")
c, _ = srv.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
pattern = bytes((i * 7 + i // 251) & 0xFF for i in range(251 * 256))
off = 0
while off < TOTAL:
    n = min(65536, TOTAL - off)
    start = off % len(pattern)
    c.sendall((pattern * 3)[start:start + n])
    off += n
    out.write(f"sent {off}\n")
c.shutdown(socket.SHUT_WR)
out.write("done\n")
c.recv(1)
"""


def expected(n: int) -> bytes:
    pattern = bytes((i * 7 + i // 251) & 0xFF for i in range(251 * 256))
    return (pattern * (n // len(pattern) + 1))[:n]


def test_download_survives(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A client outside the checkpoint receives a large download from a server that is
    checkpointed, killed and restarted meanwhile: every byte exactly once, no reset,
    and no nftables table left."""
    total = 48 << 20
    (tmp_path / "server.py").write_text(SERVER)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "server.py"), "9000", str(total),
                          str(out)], out)  # fmt: skip
    v.wait_line("ready")
    c = connect(ns, ("127.0.0.1", 9000))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    got = bytearray()
    while len(got) < 8 << 20:
        got += c.recv(1 << 16)
    assert ns.tables() == []
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    locks = ns.tables()
    assert len(locks) == 1 and locks[0].startswith(f"cryo-image-{v.pid}-"), locks
    # meanwhile the connection is silent, not reset
    c.settimeout(0.3)
    with contextlib.suppress(TimeoutError):
        while True:
            chunk = c.recv(1 << 16)
            assert chunk, "the connection was closed while the server was away"
            got += chunk
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    assert ns.tables() == []
    c.settimeout(30)
    while chunk := c.recv(1 << 20):
        got += chunk
    assert len(got) == total
    assert bytes(got) == expected(total)
    c.close()


ECHO = r"""
import socket, sys, time
# request/response: "n\n" -> "n squared\n", each answer after 50 ms of "work"
out = open(sys.argv[2], "a", buffering=1)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(4)
out.write("ready\n")
c, _ = srv.accept()
f = c.makefile("rwb", buffering=0)
while line := f.readline():
    time.sleep(0.05)
    n = int(line)
    out.write(f"tick {n}\n")
    c.sendall(f"{n * n}\n".encode())
"""


def test_request_mid_flight(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A request/response client whose connection is checkpointed mid-request (the
    request waiting in the server's receive queue or being worked on): the answer comes
    from the restarted server."""
    (tmp_path / "echo.py").write_text(ECHO)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "echo.py"), "9100", str(out)], out)
    v.wait_line("ready")
    c = connect(ns, ("127.0.0.1", 9100))
    f = c.makefile("rwb", buffering=0)
    for n in range(1, 4):
        f.write(f"{n}\n".encode())
        assert f.readline() == f"{n * n}\n".encode()
    f.write(b"12345\n")  # sent; the checkpoint comes before the answer
    cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
    assert f.readline() == b"152399025\n"
    for n in range(4, 8):
        f.write(f"{n}\n".encode())
        assert f.readline() == f"{n * n}\n".encode()
    c.close()
    assert ns.tables() == []


PAIR = r"""
import os, socket, sys, time
# a parent and its child talk over loopback TCP: ping n, pong n + 1
out = open(sys.argv[2], "a", buffering=1)
srv = socket.socket()
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(1)
if os.fork() == 0:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    while data := c.recv(64):
        c.sendall(str(int(data) + 1).encode())
    os._exit(0)
s, _ = srv.accept()
n = 0
while True:
    s.sendall(str(n).encode())
    m = int(s.recv(64))
    if m != n + 1:
        out.write(f"FAIL {m} after {n}\n")
    n = m
    out.write(f"tick {n}\n")
    time.sleep(0.01)
"""


def test_loopback_pair_in_tree(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """Both ends of a connection in the checkpoint (parent and child): both restored."""
    (tmp_path / "pair.py").write_text(PAIR)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "pair.py"), "9200", str(out)], out)
    v.wait_ok_after(5)
    kids = (Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split())
    r = ns.cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for p in [v.pid, *map(int, kids)]:
        reap(p)
    seen = max(v.oks())
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    for k in kids:
        procs.track(int(k))
    Victim(v.pid, out).wait_ok_after(seen + 10)
    assert ns.tables() == []


def test_established_needs_an_option(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """Without --tcp-established or --tcp-close an established connection is refused
    (exit 9, saying which option), and the server goes on; without the option at
    restart, an image with connections is refused too; --tcp-close restores it closed."""
    (tmp_path / "echo.py").write_text(ECHO)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "echo.py"), "9300", str(out)], out)
    v.wait_line("ready")
    c = connect(ns, ("127.0.0.1", 9300))
    f = c.makefile("rwb", buffering=0)
    f.write(b"3\n")
    assert f.readline() == b"9\n"
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9, r.stderr
    assert "established TCP connection" in r.stderr and "--tcp-established" in r.stderr
    f.write(b"4\n")
    assert f.readline() == b"16\n"  # untouched
    assert ns.tables() == []
    # checkpointed with the connection, but the process goes on (no --kill): unlocked
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--tcp-established")
    assert r.returncode == 0, r.stderr
    assert ns.tables() == []
    f.write(b"5\n")
    assert f.readline() == b"25\n"
    os.kill(v.pid, signal.SIGKILL)
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 9 and "--tcp-established" in r.stderr, r.stderr
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-close")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    # the restored server finds its connection closed: its loop ends, it exits
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text(
            ).rsplit(")", 1)[1].split()[0] != "Z":  # fmt: skip
        assert time.monotonic() < deadline, "the restored server still waits"
        time.sleep(0.05)
    c.close()


def test_connection_being_set_up_is_refused(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A connect() still in SYN_SENT (its SYN dropped) is refused cleanly."""
    code = ("import socket, sys, time\n"
            "s = socket.socket(); s.setblocking(False)\n"
            "try:\n  s.connect(('10.255.255.1', 9))\nexcept BlockingIOError:\n  pass\n"
            f"open('{tmp_path / 'out'}', 'w').write('ready\\n')\ntime.sleep(600)\n")
    ns.run("ip", "route", "add", "10.255.255.0/24", "dev", "lo", check=True)
    ns.run("nft", "add table inet t; add chain inet t c { type filter hook output priority 0;"
           " ip daddr 10.255.255.1 drop; }", check=True)  # fmt: skip
    v = spawn(procs, ns, [sys.executable, "-c", code], tmp_path / "out")
    v.wait_line("ready")
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--tcp-established")
    assert r.returncode == 9 and "SYN_SENT" in r.stderr, r.stderr
    assert ns.tables() == ["t"]


def test_stale_lock_is_removed(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A table left by a cryo killed with SIGKILL (its pid gone) goes at the next run,
    and so does the table of connections it held (but not an image's, held by nobody)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns.run("nft", f"add table inet cryo-{dead.pid}", check=True)
    ns.run("nft", f"add table inet cryo-{dead.pid}-holds-cryo-image-1-ab", check=True)
    ns.run("nft", "add table inet cryo-image-1-ab", check=True)
    ns.run("nft", "add table inet cryo-image-2-cd", check=True)
    (tmp_path / "echo.py").write_text(ECHO)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "echo.py"), "9400", str(out)], out)
    v.wait_line("ready")
    c = connect(ns, ("127.0.0.1", 9400))
    f = c.makefile("rwb", buffering=0)
    f.write(b"2\n")
    assert f.readline() == b"4\n"
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--tcp-established")
    assert r.returncode == 0, r.stderr
    assert ns.tables() == ["cryo-image-2-cd"]
    ns.run("nft", "delete table inet cryo-image-2-cd", check=True)
    c.close()


def test_lock_tables_are_listed_without_nft(ns: Netns) -> None:
    """cryo lists the inet tables of the namespace over nfnetlink (no nft run) exactly as
    ``nft list tables inet`` does, a dump over several messages too; other families'
    tables are not listed."""
    script = "".join(f"add table inet cryo-test-{i}\n" for i in range(600))
    ns.run("nft", "add table ip cryo-not-inet", check=True)
    r = subprocess.run(ns.argv("nft", "-f", "-"), input=script, capture_output=True,
                       text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with inside(ns):
        got = N.nft_tables()
        ours = netlock.tables()
    want = [t for t in ns.tables() if t.startswith("cryo-test-")]
    assert sorted(got) == sorted(want) and len(got) == 600
    assert sorted(ours) == sorted(want)  # (cryo's prefix only)


def test_lock_is_made_over_nfnetlink(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network lock is made by one nfnetlink batch (no nft run: nft's script is the
    fallback) and is what nft makes of that script, byte code and elements (IPv4, IPv6,
    IPv4-mapped); its connection's packets are dropped until it is removed."""
    def no_nft(*_args: Any) -> str:
        raise AssertionError("nft was run")

    conns = [("127.0.0.1", 7777, "127.0.0.1", 40000), ("::1", 80, "::1", 5000),
             ("::ffff:10.0.0.1", 22, "::ffff:10.0.0.2", 3333),
             ("fe80::1", 1, "2001:db8::5", 65535)]  # fmt: skip
    v4, v6 = netlock._elements(conns)
    script = netlock._table("cryo-image-1-nft") + "".join(
        f"add element inet cryo-image-1-nft {k} {{ {', '.join(e)} }}\n"
        for k, e in (("conn4", v4), ("conn6", v6)))  # fmt: skip
    r = subprocess.run(ns.argv("nft", "-f", "-"), input=script, capture_output=True,
                       text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with inside(ns):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        a = socket.create_connection(srv.getsockname())
        b = srv.accept()[0]
    try:
        with inside(ns):
            monkeypatch.setattr(netlock, "_nft", no_nft)
            lock = netlock.Lock("cryo-image-1-nl")
            lock.add(conns[:2])
            lock.add([*conns[2:], (*a.getsockname(), *a.getpeername())])
            monkeypatch.undo()
        assert sorted(ns.tables()) == sorted(["cryo-image-1-nft", "cryo-image-1-nl",
                                              lock.owner])  # fmt: skip
        listed = {}
        for t in ("cryo-image-1-nft", "cryo-image-1-nl"):
            r = ns.run("nft", "--debug=netlink", "list", "table", "inet", t, check=True)
            code = (r.stdout + r.stderr).replace(t, "T").split("table inet T {")[0]
            listed[t] = sorted(line for line in code.splitlines() if "element" not in line)
            r = ns.run("nft", "list", "set", "inet", t, "conn6", check=True)
            assert "::ffff" not in r.stdout
        assert listed["cryo-image-1-nft"] == listed["cryo-image-1-nl"]
        r = ns.run("nft", "list", "table", "inet", "cryo-image-1-nl", check=True)
        assert f"127.0.0.1 . {a.getsockname()[1]} . 127.0.0.1 . {srv.getsockname()[1]}" \
            in r.stdout and "10.0.0.1 . 22 . 10.0.0.2 . 3333" in r.stdout  # fmt: skip
        a.sendall(b"held")
        b.settimeout(0.5)
        with pytest.raises(TimeoutError):
            b.recv(16)
        with inside(ns):
            lock.drop()
        b.settimeout(10)  # (retransmitted once the lock is gone)
        assert b.recv(16) == b"held"
        assert sorted(ns.tables()) == ["cryo-image-1-nft"]
    finally:
        for x in (a, b, srv):
            x.close()


def test_tcp_table_from_sock_diag_is_proc_net_tcp(ns: Netns) -> None:
    """The TCP sockets of our own namespace are read from sock_diag (binary) and give
    what /proc/net/tcp and tcp6 give: listeners, IPv4, IPv6, IPv4-mapped, half closed,
    inode and state, addresses as /proc's reading spells them."""
    keep: list[socket.socket] = []
    try:
        with inside(ns):
            l6 = socket.socket(socket.AF_INET6)
            l6.bind(("::", 0))
            l6.listen(64)
            l4 = socket.socket()
            l4.bind(("127.0.0.1", 0))
            l4.listen(64)
            keep += [l6, l4]
            for addr in (("127.0.0.1", l6.getsockname()[1]), ("::1", l6.getsockname()[1]),
                         l4.getsockname(), l4.getsockname()):  # fmt: skip
                keep.append(socket.create_connection(addr))
            for lst in (l6, l6, l4, l4):
                keep.append(lst.accept()[0])
            keep[-1].shutdown(socket.SHUT_WR)  # FIN_WAIT2 here, CLOSE_WAIT at its peer
            time.sleep(0.2)  # (its FIN acknowledged: FIN_WAIT1 no more)
            pid = os.getpid()
            got = inet.tcp_table(pid)
            want: dict[int, Any] = {}
            for proto in ("tcp", "tcp6"):
                with open(f"/proc/{pid}/net/{proto}", "rb") as f:
                    want.update(inet.parse_proc_net_tcp(f.read()))
            mine = {os.fstat(x.fileno()).st_ino for x in keep}
            assert inet._same_netns(pid)
            assert {k: v for k, v in got.items() if k in mine} == \
                {k: v for k, v in want.items() if k in mine}  # fmt: skip
            assert len(mine & set(got)) == len(keep)
            assert any(":" in v[1][0] and "." not in v[1][0] for v in got.values())
            assert any(v[1][0].startswith("::ffff:") for v in got.values())
            assert {v[0] for k, v in got.items() if k in mine} >= {1, 10, 5, 8}
            only = {os.fstat(keep[2].fileno()).st_ino}
            assert inet.tcp_table(pid, only) == {k: want[k] for k in only}
    finally:
        for x in keep:
            x.close()


def test_unix_sockets(procs: Procs, tmp_path: Path) -> None:
    """Unix sockets of every kind in a tree (tests/victims/unixsk.py): listeners on a
    path and an abstract name, an accepted connection, a datagram socket connected to a
    bound one, a bound socket whose file was unlinked, seqpacket pairs with queued
    messages and one whose peer is gone; names, options and queues come back."""
    from tests.integration.test_tree import kill_tree, tree_pids

    go = tmp_path / "go"
    sk = tmp_path / "sk"
    sk.mkdir()
    victim = Path(__file__).parent.parent / "victims" / "unixsk.py"
    v = procs.spawn([sys.executable, str(victim), str(tmp_path / "out"), str(sk), str(go)],
                    tmp_path / "out")  # fmt: skip
    v.wait_ok_after(5)
    pids = tree_pids(v.pid)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    seen = max(v.oks())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    for p in pids:
        procs.track(p)
    v.wait_ok_after(seen + 5)
    go.touch()
    for addr in (str(sk / "srv"), b"\0cryo-unixsk-" + str(v.pid).encode()):
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(addr)
            assert c.recv(16) == b"hello"
    assert v.wait_line("checked", timeout=20) == "checked good"
    v.wait_ok_after(max(v.oks()) + 5)


def test_unix_peer_outside(procs: Procs, tmp_path: Path) -> None:
    """A unix socket connected to a server outside the checkpoint is refused, unless
    --ext-unix-sk: then the restart connects it to the same path again, from the
    restored process (the server's SO_PEERCRED names it, not cryo)."""
    path = str(tmp_path / "ext")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(2)
    srv.settimeout(10)
    code = ("import socket, sys, time\n"
            f"c = socket.socket(socket.AF_UNIX); c.connect({path!r})\n"
            f"open({str(tmp_path / 'out')!r}, 'w').write('ready\\n')\n"
            "while True:\n  c.sendall(b'x'); time.sleep(0.05)\n")
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out")
    first, _ = srv.accept()
    v.wait_line("ready")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9 and "--ext-unix-sk" in r.stderr, r.stderr
    assert first.recv(1) == b"x"  # untouched
    restored = cli_cycle(procs, v.pid, tmp_path / "img", "--ext-unix-sk")
    again, _ = srv.accept()
    again.settimeout(10)
    assert again.recv(1) == b"x"
    # the server sees the restored process connect, as it saw the original (not cryo)
    cred = struct.unpack("iII", again.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    assert cred == (restored, 0, 0), cred
    for s in (first, again, srv):
        s.close()


def _talk(c: socket.socket, request: bytes, end: bytes) -> bytes:
    c.sendall(request)
    data = b""
    while not data.endswith(end):
        chunk = c.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


@pytest.mark.skipif(not os.path.exists("/usr/bin/redis-server"), reason="needs redis-server")
def test_redis(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """redis-server (Debian's, 5 threads) with data and an open client connection:
    checkpointed with --tcp-established, killed, restarted; the same connection reads
    the data back and a new one works."""
    v = spawn(procs, ns, ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
              tmp_path / "out")  # fmt: skip
    c = connect(ns, ("127.0.0.1", 6379))
    assert _talk(c, _resp(b"SET", b"greeting", b"hello"), b"\r\n") == b"+OK\r\n"
    big = os.urandom(1 << 20).hex().encode()
    assert _talk(c, _resp(b"SET", b"big", big), b"\r\n") == b"+OK\r\n"
    assert _talk(c, _resp(b"RPUSH", b"list", b"a", b"b", b"c"), b"\r\n") == b":3\r\n"
    cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
    assert _talk(c, _resp(b"GET", b"greeting"), b"hello\r\n") == b"$5\r\nhello\r\n"
    assert _talk(c, _resp(b"GET", b"big"), big + b"\r\n").endswith(big + b"\r\n")
    assert _talk(c, _resp(b"LRANGE", b"list", b"0", b"-1"), b"c\r\n") == \
        b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"  # fmt: skip
    with connect(ns, ("127.0.0.1", 6379)) as d:
        assert _talk(d, _resp(b"INCR", b"n"), b"\r\n") == b":1\r\n"
    c.close()
    assert ns.tables() == []


@pytest.mark.skipif(not os.path.exists("/usr/bin/memcached"), reason="needs memcached")
def test_memcached(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """memcached (Debian's, 8 threads) with data and an open client connection, before
    and after a checkpoint with --tcp-established, a kill and a restart."""
    v = spawn(procs, ns, ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11211", "-U",
                          "0", "-t", "2"], tmp_path / "out")  # fmt: skip
    c = connect(ns, ("127.0.0.1", 11211))
    assert _talk(c, b"set k 0 0 5\r\nhello\r\n", b"\r\n") == b"STORED\r\n"
    assert _talk(c, b"set n 0 0 1\r\n7\r\n", b"\r\n") == b"STORED\r\n"
    cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
    assert _talk(c, b"get k\r\n", b"END\r\n") == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
    assert _talk(c, b"incr n 5\r\n", b"\r\n") == b"12\r\n"
    with connect(ns, ("127.0.0.1", 11211)) as d:
        assert _talk(d, b"get n\r\n", b"END\r\n") == b"VALUE n 0 2\r\n12\r\nEND\r\n"
    c.close()
    assert ns.tables() == []


def test_failed_checkpoint_unlocks(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A checkpoint that fails after the connections were locked and put in repair mode
    (here: a second client waits to be accepted, refused by name) leaves no table and
    the connection working."""
    (tmp_path / "echo.py").write_text(ECHO)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "echo.py"), "9500", str(out)], out)
    v.wait_line("ready")
    c = connect(ns, ("127.0.0.1", 9500))
    f = c.makefile("rwb", buffering=0)
    f.write(b"6\n")
    assert f.readline() == b"36\n"
    waiting = connect(ns, ("127.0.0.1", 9500))  # in the accept queue, never accepted
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 9 and "waiting to be accepted" in r.stderr, r.stderr
    assert ns.tables() == []
    f.write(b"7\n")
    assert f.readline() == b"49\n"
    assert not (tmp_path / "img").exists()
    waiting.close()
    c.close()


HALF = r"""
import os, socket, sys, time
# half-closed connections: argv PORT OUT GO MODE
out = open(sys.argv[2], "a", buffering=1)
go, mode = sys.argv[3], sys.argv[4]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(1)
out.write("ready\n")
c, _ = srv.accept()
if mode == "fin_wait2":
    c.sendall(b"bye\n")
    c.shutdown(socket.SHUT_WR)
while not os.path.exists(go):
    time.sleep(0.01)
data = b""
while chunk := c.recv(65536):
    data += chunk
out.write(f"got {len(data)} {data[:16]!r}\n")
if mode == "close_wait":
    c.sendall(f"{len(data)}\n".encode())
c.close()
"""


def _state(n: Netns, port: int) -> str:
    """The state of the (only) connection on local port ``port``."""
    lines = n.run("ss", "-tanH", f"sport = :{port}", check=True).stdout.splitlines()
    return " ".join(x.split()[0] for x in lines if not x.startswith("LISTEN"))


def test_half_closed(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """Half-closed connections across a checkpoint with --tcp-established: the server in
    CLOSE_WAIT (the client sent its request and shut down its side) reads the request
    and the end of it after the restart and answers; the server in FIN_WAIT2 (it said
    bye and shut down its side) still receives what the client sends."""
    (tmp_path / "half.py").write_text(HALF)
    for port, mode, state in ((9600, "close_wait", "CLOSE-WAIT"), (9601, "fin_wait2",
                                                                  "FIN-WAIT-2")):  # fmt: skip
        out, go = tmp_path / f"out-{mode}", tmp_path / f"go-{mode}"
        v = spawn(procs, ns, [sys.executable, str(tmp_path / "half.py"), str(port), str(out),
                              str(go), mode], out)  # fmt: skip
        v.wait_line("ready")
        c = connect(ns, ("127.0.0.1", port))
        if mode == "close_wait":
            c.sendall(b"request " * 1000)
            c.shutdown(socket.SHUT_WR)
        else:
            assert c.recv(16) == b"bye\n" and c.recv(16) == b""
        deadline = time.monotonic() + 10
        while _state(ns, port) != state:
            assert time.monotonic() < deadline, _state(ns, port)
            time.sleep(0.02)
        cycle(procs, ns, v.pid, tmp_path / f"img-{mode}", "--tcp-established")
        assert _state(ns, port) == state
        go.touch()
        if mode == "close_wait":
            assert c.recv(64) == b"8000\n" and c.recv(64) == b""
            c.close()
            assert Victim(v.pid, out).wait_line("got") == "got 8000 b'request request '"
        else:
            c.sendall(b"after")
            c.close()
            assert Victim(v.pid, out).wait_line("got") == "got 5 b'after'"
        assert ns.tables() == []


PING = r"""
import socket, struct, sys, time
# an ICMP "ping" socket (bound: its port is the echo identifier) pinging 127.0.0.1
out = open(sys.argv[1], "a", buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.bind(("127.0.0.1", 4242))
s.settimeout(5)
n = 0
while True:
    s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, n) + b"cryo", ("127.0.0.1", 0))
    reply = s.recv(64)
    typ, _code, _sum, ident, seq = struct.unpack("!BBHHH", reply[:8])
    if typ != 0 or seq != n or ident != 4242 or s.getsockname()[1] != 4242:
        out.write(f"FAIL reply {typ} {ident} {seq} for {n}\n")
    out.write(f"tick {n}\n")
    n += 1
    time.sleep(0.01)
"""


def test_ping_socket(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """An ICMP ping socket comes back bound to its identifier and keeps pinging."""
    ns.run("sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647", check=True)
    (tmp_path / "ping.py").write_text(PING)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "ping.py"), str(out)], out)
    v.wait_ok_after(5)
    pid = cycle(procs, ns, v.pid, tmp_path / "img")
    seen = max(v.oks())
    Victim(pid, out).wait_ok_after(seen + 10)


def test_multicast_is_said_lost(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A UDP socket that joined a multicast group: checkpointed and restored, with a
    warning that its membership is not."""
    code = ("import socket, struct, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 5353))\n"
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,"
            " struct.pack('4s4s', socket.inet_aton('239.1.2.3'), socket.inet_aton('127.0.0.1')))\n"
            f"open({str(tmp_path / 'out')!r}, 'w').write('ready\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v = spawn(procs, ns, [sys.executable, "-c", code], tmp_path / "out")
    v.wait_line("ready")
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    assert "239.1.2.3" in r.stderr and "not restored" in r.stderr, r.stderr


def test_socket_filter_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A socket with a classic BPF filter attached is refused by name, not restored
    without it."""
    code = ("import ctypes, socket, struct, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "prog = ctypes.create_string_buffer(struct.pack('HBBI', 6, 0, 0, 0xFFFFFFFF))\n"
            "s.setsockopt(socket.SOL_SOCKET, 26, struct.pack('HxxxxxxQ', 1,"
            " ctypes.addressof(prog)))\n"
            f"open({str(tmp_path / 'out')!r}, 'w').write('ready\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out")
    v.wait_line("ready")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 9 and "SO_ATTACH_FILTER" in r.stderr, r.stderr


BIG_ECHO = ECHO.replace("srv = socket.socket()",
                        "ballast = b'x' * (384 << 20)  # a long copy\nsrv = socket.socket()")


def test_killed_cryo_leaves_no_lock(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """cryo killed with SIGKILL while it holds connections locked (its worker puts the
    target back): no table is left, the connection works."""
    (tmp_path / "echo.py").write_text(BIG_ECHO)
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "echo.py"), "9700", str(out)], out)
    v.wait_line("ready", timeout=30)
    c = connect(ns, ("127.0.0.1", 9700))
    f = c.makefile("rwb", buffering=0)
    f.write(b"8\n")
    assert f.readline() == b"64\n"
    p = subprocess.Popen(ns.argv(sys.executable, "-m", "cryo", "checkpoint", str(v.pid), "-D",
                                 str(tmp_path / "img"), "--page-cache", "--tcp-established"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(t.startswith("cryo-") for t in ns.tables()):
            assert p.poll() is None, "the checkpoint ended before its lock was seen"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        p.kill()
    finally:
        p.wait()
    deadline = time.monotonic() + 30
    while ns.tables():
        assert time.monotonic() < deadline, ns.tables()
        time.sleep(0.05)
    f.write(b"9\n")
    assert f.readline() == b"81\n"
    assert "TracerPid:\t0" in Path(f"/proc/{v.pid}/status").read_text()
    c.close()


INFLIGHT = r"""
import os, socket, sys, time
# file descriptors in flight: a seqpacket and a datagram pair each hold three messages,
# the middle one carrying a pipe's read end (whose write end the process keeps) and a
# file open at offset 3 that only the message holds
out, go, path = sys.argv[1], sys.argv[2], sys.argv[3]
pairs = [socket.socketpair(socket.AF_UNIX, t) for t in (socket.SOCK_SEQPACKET,
                                                        socket.SOCK_DGRAM)]
pipes = []
for a, b in pairs:
    r, w = os.pipe()
    f = os.open(path, os.O_RDONLY)
    os.lseek(f, 3, os.SEEK_SET)
    b.send(b"first")
    socket.send_fds(b, [b"fds"], [r, f])
    os.close(r)
    os.close(f)
    b.send(b"last")
    pipes.append(w)
open(out, "a").write("ready\n")
while not os.path.exists(go):
    time.sleep(0.01)
bad = []
for (a, _b), w in zip(pairs, pipes):
    first = a.recv(64)
    msg, fds, _flags, _addr = socket.recv_fds(a, 64, 4)
    last = a.recv(64)
    if (first, msg, last) != (b"first", b"fds", b"last") or len(fds) != 2:
        bad.append(f"messages {first!r} {msg!r} {last!r} {fds}")
        continue
    os.write(w, b"through the pipe")
    if os.read(fds[0], 64) != b"through the pipe":
        bad.append("pipe")
    if os.read(fds[1], 64) != b"lo, file":
        bad.append("file")
open(out, "a").write("checked " + ("; ".join(bad) if bad else "good") + "\n")
time.sleep(600)
"""


def test_fds_in_flight(procs: Procs, tmp_path: Path) -> None:
    """File descriptors in flight on unix datagram and seqpacket sockets (SCM_RIGHTS):
    one the process still holds the other end of, one only the message holds."""
    (tmp_path / "inflight.py").write_text(INFLIGHT)
    (tmp_path / "data").write_bytes(b"hello, file")
    go, out = tmp_path / "go", tmp_path / "out"
    v = procs.spawn([sys.executable, str(tmp_path / "inflight.py"), str(out), str(go),
                     str(tmp_path / "data")], out)  # fmt: skip
    v.wait_line("ready")
    cli_cycle(procs, v.pid, tmp_path / "img")
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"


ACCEPTQ = r"""
import os, socket, sys, time
out, go, path = sys.argv[1:4]
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(8)
kids = []
for i in range(3):  # one after the other: the accept queue holds them in this order
    pid = os.fork()
    if pid == 0:
        srv.close()
        c = socket.socket(socket.AF_UNIX)
        if i == 1:
            c.bind("\0cryo-acceptq-client-%d" % os.getppid())  # a named client
        c.connect(path)
        say("connected %d" % i)
        c.settimeout(120)
        hello = c.recv(64)  # the server speaks first, once it accepts
        c.sendall(b"%d:%s" % (i, hello))
        time.sleep(600)
    kids.append(pid)
    while not os.path.exists(out) or "connected %d" % i not in open(out).read():
        time.sleep(0.01)
say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
got = []
for k in range(3):
    c, _ = srv.accept()
    c.sendall(b"hello %d" % k)
    c.settimeout(20)
    got.append(c.recv(64))
good = got == [b"%d:hello %d" % (k, k) for k in range(3)]
say("checked " + ("good" if good else "bad %r" % got))
time.sleep(600)
"""


def _tracked_tree(procs: Procs, v: Victim, count: int) -> list[int]:
    """The pids of ``v``'s tree, ``count`` of them, each tracked."""
    from tests.integration.test_tree import tree_pids

    pids = tree_pids(v.pid)
    assert len(pids) == count
    for p in pids:
        procs.track(p)
    return pids


def _tree_cycle(v: Victim, pids: list[int], img: Path, *opts: str,
                cryo: Callable[..., subprocess.CompletedProcess[str]] = run_cryo
                ) -> None:  # fmt: skip
    """Checkpoint ``v``'s tree with --kill, end what is left of it, restart it: the same
    pids come back."""
    from tests.integration.test_tree import kill_tree, tree_pids

    r = cryo("checkpoint", str(v.pid), "--tree", "-D", str(img), "--kill", *opts)
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    r = cryo("restart", "-D", str(img), "--detach", *opts)
    assert r.returncode == 0, r.stderr
    assert tree_pids(v.pid) == pids


def test_unix_accept_queue(procs: Procs, tmp_path: Path) -> None:
    """A unix listener with three connections of its children waiting to be accepted
    (one of them from a bound socket): after a restart the server accepts them in the
    same order and talks to each client.  A client that had already sent data to a
    connection not yet accepted is refused by name, and left running."""
    from tests.integration.test_tree import kill_tree

    (tmp_path / "acceptq.py").write_text(ACCEPTQ)
    go, out, path = tmp_path / "go", tmp_path / "out", tmp_path / "srv"
    v = procs.spawn([sys.executable, str(tmp_path / "acceptq.py"), str(out), str(go),
                     str(path)], out)  # fmt: skip
    v.wait_line("ready")
    pids = _tracked_tree(procs, v, 4)
    _tree_cycle(v, pids, tmp_path / "img")
    go.touch()
    assert v.wait_line("checked", timeout=30) == "checked good"
    kill_tree(pids)

    # data already sent into a connection nobody accepted: refused, nothing touched
    (tmp_path / "talker.py").write_text(
        "import socket, sys, time\n"
        "srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen(4)\n"
        "c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); c.sendall(b'early')\n"
        "open(sys.argv[2], 'w').write('ready\\n')\n"
        "time.sleep(600)\n")  # fmt: skip
    path2, out2 = tmp_path / "srv2", tmp_path / "out2"
    v2 = procs.spawn([sys.executable, str(tmp_path / "talker.py"), str(path2), str(out2)],
                     out2)  # fmt: skip
    v2.wait_line("ready")
    r = run_cryo("checkpoint", str(v2.pid), "-D", str(tmp_path / "img2"))
    assert r.returncode == 9 and "waiting to be accepted already holds data" in r.stderr, \
        r.stderr  # fmt: skip
    assert not (tmp_path / "img2" / "core.img").exists()
    with socket.socket(socket.AF_UNIX) as c:  # still listening
        c.connect(str(path2))


TCP_ACCEPTQ = r"""
import os, socket, sys, time
out, go = sys.argv[1:3]
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
srv = socket.socket()
srv.bind(("127.0.0.1", 7070))
srv.listen(4)
pid = os.fork()
if pid == 0:
    srv.close()
    c = socket.create_connection(("127.0.0.1", 7070))
    say("connected")
    c.settimeout(120)
    hello = c.recv(64)  # the server speaks first, once it accepts
    c.sendall(b"ack:" + hello)
    time.sleep(600)
while not os.path.exists(out) or "connected" not in open(out).read():
    time.sleep(0.01)
say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
c, _ = srv.accept()
c.sendall(b"hello")
c.settimeout(20)
say("checked " + ("good" if c.recv(64) == b"ack:hello" else "bad"))
time.sleep(600)
"""


def test_tcp_accept_queue(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A TCP listener with a connection of its child waiting to be accepted: after a
    restart (--tcp-established) the server accepts it and the two talk.  One waiting
    from a client outside the checkpoint is refused by name, the server left running."""
    from tests.integration.test_tree import kill_tree, tree_pids

    (tmp_path / "acceptq.py").write_text(TCP_ACCEPTQ)
    go, out = tmp_path / "go", tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "acceptq.py"), str(out), str(go)],
              out)  # fmt: skip
    v.wait_line("ready")
    server = v.pid  # (ip netns exec runs it in its place)
    pids = tree_pids(server)
    assert len(pids) == 2
    for p in pids:
        procs.track(p)
    r = ns.cryo("checkpoint", str(server), "--tree", "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
    assert r.returncode == 0, r.stderr
    assert tree_pids(server) == pids
    go.touch()
    assert v.wait_line("checked", timeout=30) == "checked good"
    assert not [t for t in ns.tables() if t.startswith("cryo-")]
    kill_tree(pids)

    # a connection from outside waiting to be accepted: refused, nothing touched
    out2 = tmp_path / "out2"
    code = ("import socket, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 7071)); s.listen(4)\n"
            f"open({str(out2)!r}, 'w').write('ready\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v2 = spawn(procs, ns, [sys.executable, "-c", code], out2)
    v2.wait_line("ready")
    lone = v2.pid
    with connect(ns, ("127.0.0.1", 7071)):
        r = ns.cryo("checkpoint", str(lone), "-D", str(tmp_path / "img2"),
                    "--tcp-established")  # fmt: skip
        assert r.returncode == 9 and "whose client is outside the checkpoint" in r.stderr, \
            r.stderr  # fmt: skip
        with connect(ns, ("127.0.0.1", 7071)):  # still listening
            pass
    assert not (tmp_path / "img2" / "core.img").exists()


TCP_ACCEPTQ_N = r"""
import os, select, socket, sys, time
out, go, n, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
def said(line):
    return os.path.exists(out) and line in open(out).read().split("\n")
srv = socket.socket()
srv.bind(("127.0.0.1", 7072))
srv.listen(16)
if gap == 0 and os.fork() == 0:  # one client making them all, one right after the other
    srv.close()
    cs = [socket.create_connection(("127.0.0.1", 7072)) for i in range(n)]
    say("connected %d" % (n - 1))
    left = set(cs)
    while left:
        for c in select.select(list(left), [], [], 120)[0]:
            if c.recv(64) == b"who?":
                c.sendall(b"%d" % cs.index(c))
            left.discard(c)
    time.sleep(600)
if gap and os.fork() == 0:  # the clients, one process each, the last made first to connect
    srv.close()
    for i in range(n):
        if i == n - 1 or os.fork() == 0:
            break
    while i < n - 1 and not said("connected %d" % (i + 1)):
        time.sleep(0.001)
    time.sleep(gap)
    c = socket.create_connection(("127.0.0.1", 7072))
    say("connected %d" % i)
    c.settimeout(120)
    if c.recv(64) == b"who?":  # the server speaks first, once it accepts
        c.sendall(b"%d" % i)
    time.sleep(600)
while not said("connected %d" % (0 if gap else n - 1)):
    time.sleep(0.01)
say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
got = []
for _ in range(n):
    c, _ = srv.accept()
    c.settimeout(20)
    c.sendall(b"who?")
    got.append(int(c.recv(64)))
want = list(range(n))[::-1] if gap else list(range(n))
say("checked " + ("good" if got == want else "bad %s" % got))
time.sleep(600)
"""


def _acceptq(procs: Procs, ns: Netns, tmp_path: Path, n: int, gap: float
             ) -> tuple[Victim, list[int], Path]:  # fmt: skip
    from tests.integration.test_tree import tree_pids

    (tmp_path / "acceptq.py").write_text(TCP_ACCEPTQ_N)
    go, out = tmp_path / "go", tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "acceptq.py"), str(out), str(go),
                          str(n), str(gap)], out)  # fmt: skip
    v.wait_line("ready", timeout=30)
    pids = tree_pids(v.pid)
    assert len(pids) == (n + 1 if gap else 2)
    for p in pids:
        procs.track(p)
    return v, pids, go


def test_tcp_accept_queue_order(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """A TCP listener with five connections of its children waiting to be accepted, made
    20 ms apart, the last child first: after a restart (--tcp-established) the server
    accepts them in the order they were made (each client says which it is when
    accepted)."""
    from tests.integration.test_tree import kill_tree

    v, pids, go = _acceptq(procs, ns, tmp_path, 5, 0.02)
    _tree_cycle(v, pids, tmp_path / "img", "--tcp-established", cryo=ns.cryo)
    go.touch()
    assert v.wait_line("checked", timeout=30) == "checked good"
    assert not [t for t in ns.tables() if t.startswith("cryo-")]
    kill_tree(pids)


def test_tcp_accept_queue_same_jiffy(procs: Procs, ns: Netns, tmp_path: Path) -> None:
    """Two connections waiting to be accepted, made one right after the other by one
    client (most often in the same jiffy): the checkpoint either refuses them by name (exit 9, the
    server left running, then accepting them in their order) or restores them in their
    order; never swapped."""
    from tests.integration.test_tree import kill_tree, tree_pids

    v, pids, go = _acceptq(procs, ns, tmp_path, 2, 0)
    r = ns.cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    if r.returncode == 0:
        kill_tree(pids)
        r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
        assert r.returncode == 0, r.stderr
        assert tree_pids(v.pid) == pids
    else:
        assert r.returncode == 9 and "the order in which they would be accepted cannot" \
            " be read" in r.stderr, r.stderr  # fmt: skip
        assert "jiffy" in r.stderr or "told apart" in r.stderr, r.stderr
        assert not (tmp_path / "img" / "core.img").exists()
    go.touch()
    assert v.wait_line("checked", timeout=30) == "checked good"
    assert not [t for t in ns.tables() if t.startswith("cryo-")]
    kill_tree(pids)


def test_fds_in_flight_on_a_stream_refused(procs: Procs, tmp_path: Path) -> None:
    """File descriptors in flight on a unix stream socket: refused by name (exit 9, the
    bytes they came with cannot be told), and the process goes on with them."""
    out, go = tmp_path / "out", tmp_path / "go"
    code = ("import os, socket, sys, time\n"
            "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "r, w = os.pipe()\n"
            "b.send(b'before-'); socket.send_fds(b, [b'FDS'], [r]); os.close(r)\n"
            f"open({str(out)!r}, 'w').write('ready\\n')\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            "first = a.recv(7)\n"
            "msg, fds, _f, _a = socket.recv_fds(a, 64, 4)\n"
            "os.write(w, b'x')\n"
            "good = (first, msg, len(fds)) == (b'before-', b'FDS', 1)\n"
            "good = good and os.read(fds[0], 1) == b'x'\n"
            f"open({str(out)!r}, 'a').write('checked ' + ('good' if good else 'bad') + '\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v = procs.spawn([sys.executable, "-c", code], out)
    v.wait_line("ready")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 9 and "in flight on a stream socket" in r.stderr, r.stderr
    assert not (tmp_path / "img" / "core.img").exists()
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"


def test_unix_client_waiting_on_an_outside_listener(procs: Procs, tmp_path: Path) -> None:
    """A unix client whose connection waits in the accept queue of a listener outside
    the checkpoint: refused (it would have come back as a closed connection), unless
    --ext-unix-sk: then the restart connects it to the listener's path again."""
    path = str(tmp_path / "ext")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(20)
    code = ("import socket, time\n"
            f"c = socket.socket(socket.AF_UNIX); c.connect({path!r})\n"
            f"open({str(tmp_path / 'out')!r}, 'w').write('ready\\n')\n"
            "c.settimeout(120)\n"
            "c.sendall(b'got ' + c.recv(16))\n"
            "time.sleep(600)\n")  # fmt: skip
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out")
    v.wait_line("ready")
    time.sleep(0.2)  # in its recv
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9 and "waiting to be accepted by" in r.stderr, r.stderr
    cli_cycle(procs, v.pid, tmp_path / "img", "--ext-unix-sk")
    old, _ = srv.accept()  # the killed process's connection: closed
    old.settimeout(10)
    assert old.recv(16) == b""
    again, _ = srv.accept()
    again.settimeout(10)
    again.sendall(b"hi")
    assert again.recv(16) == b"got hi"
    for s in (old, again, srv):
        s.close()


CREDS = r"""
import os, socket, struct, sys, time
out, go = sys.argv[1:3]
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
# a datagram pair whose reader shows credentials: a child sends one message as itself
# and one as uid/gid 1234 (root may), the parent one as itself
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
pid = os.fork()
if pid == 0:
    b.send(b"child")
    cred = struct.pack("iII", os.getpid(), 1234, 1234)
    b.sendmsg([b"as 1234"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)])
    say("sent")
    time.sleep(600)
while not os.path.exists(out) or "sent" not in open(out).read():
    time.sleep(0.01)
b.send(b"parent")
say("ready")
while not os.path.exists(go):
    time.sleep(0.01)
got = []
for _ in range(3):
    data, anc, _f, _a = a.recvmsg(64, 64)
    creds = [struct.unpack("iII", x[2][:12]) for x in anc if x[1] == socket.SCM_CREDENTIALS]
    got.append((data, creds))
want = [(b"child", [(pid, 0, 0)]), (b"as 1234", [(pid, 1234, 1234)]),
        (b"parent", [(os.getpid(), 0, 0)])]
say("checked " + ("good" if got == want else "bad %r" % got))
time.sleep(600)
"""


def test_credentials_in_flight(procs: Procs, tmp_path: Path) -> None:
    """Datagrams queued with their senders' credentials (SCM_CREDENTIALS, the reader has
    SO_PASSCRED): after a restart each still names its sender, a process of the tree,
    and the uid and gid it was sent as."""

    (tmp_path / "creds.py").write_text(CREDS)
    go, out = tmp_path / "go", tmp_path / "out"
    v = procs.spawn([sys.executable, str(tmp_path / "creds.py"), str(out), str(go)], out)
    v.wait_line("ready")
    pids = _tracked_tree(procs, v, 2)
    _tree_cycle(v, pids, tmp_path / "img")
    go.touch()
    assert v.wait_line("checked", timeout=30) == "checked good"

    # a datagram from a process outside the checkpoint, with its credentials: refused
    path, out2 = tmp_path / "dgram", tmp_path / "out2"
    code = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1); s.bind(sys.argv[1])\n"
            "open(sys.argv[2], 'w').write('ready\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v2 = procs.spawn([sys.executable, "-c", code, str(path), str(out2)], out2)
    v2.wait_line("ready")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.sendto(b"from outside", str(path))
    r = run_cryo("checkpoint", str(v2.pid), "-D", str(tmp_path / "img2"))
    assert r.returncode == 9 and f"process {os.getpid()}, outside" in r.stderr, r.stderr
    assert not (tmp_path / "img2" / "core.img").exists()


PEERCRED = r"""
import os, socket, struct, sys, time
out, srv = sys.argv[1:3]
f = open(out, "a", buffering=1)
def say(line):
    f.write(line + "\n")
def who(s):
    pid, uid, gid = struct.unpack("iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    raw = s.getsockopt(socket.SOL_SOCKET, 59, 1024)  # SO_PEERGROUPS
    groups = sorted(struct.unpack("%dI" % (len(raw) // 4), raw))
    pidfd = s.getsockopt(socket.SOL_SOCKET, 77)  # SO_PEERPIDFD: the very process, or -1
    info = open("/proc/self/fdinfo/%d" % pidfd).read()
    os.close(pidfd)
    alive = int(info.split("Pid:")[1].split()[0])
    return (pid, uid, gid, groups, alive, s.getsockname())
name = b"\0cryo-peercred-%d" % os.getpid()
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:  # another user: it listens, accepts its parent, makes a pair of its own
    os.setgroups([5, 6])
    os.setresgid(1234, 1234, 1234)
    os.setresuid(1234, 1234, 1234)
    lis = socket.socket(socket.AF_UNIX)
    lis.bind(name)
    lis.listen(4)
    os.write(ready_w, b"x")
    acc, _ = lis.accept()
    own = socket.socketpair()
    socks = {"listener": lis, "accepted": acc, "own": own[0]}
    before = {k: who(s) for k, s in socks.items()}
    say("child ready %r" % (before,))
    os.read(go_r, 1)
    after = {k: who(s) for k, s in socks.items()}
    say("child checked " + ("good" if after == before else "bad %r" % (after,)))
    time.sleep(600)
os.read(ready_r, 1)
client = socket.socket(socket.AF_UNIX)
client.connect(name)
pair = socket.socketpair()
plis = socket.socket(socket.AF_UNIX)  # a path listener: its accepted end has its name
plis.bind(srv)
plis.listen(4)
pc = socket.socket(socket.AF_UNIX)
pc.connect(srv)
pacc, _ = plis.accept()
plis2 = socket.socket(socket.AF_UNIX)  # a listener closed since: its file stays
plis2.bind(srv + "2")
plis2.listen(4)
pc2 = socket.socket(socket.AF_UNIX)
pc2.connect(srv + "2")
pacc2, _ = plis2.accept()
plis2.close()
os.chdir(os.path.dirname(srv))  # a listener bound to a relative path: named so again
rlis = socket.socket(socket.AF_UNIX)
rlis.bind("rel")
rlis.listen(4)
rc = socket.socket(socket.AF_UNIX)
rc.connect("rel")
racc, _ = rlis.accept()
chan = socket.socketpair()
helper = os.fork()  # a process that makes a pair, hands it over and is gone
if helper == 0:
    x, y = socket.socketpair()
    socket.send_fds(chan[1], [b"p"], [x.fileno(), y.fileno()])
    os._exit(0)
os.waitpid(helper, 0)
_m, fds, _f, _a = socket.recv_fds(chan[0], 1, 2)
orphan = socket.socket(fileno=fds[0])
# queued without credentials, then read with SO_PASSCRED: pid 0, the overflow ids
dg = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
st = socket.socketpair()
dg[1].send(b"no creds")
st[1].send(b"none")
dg[0].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
st[0].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
socks = {"client": client, "pair": pair[0], "plistener": plis, "pclient": pc,
         "paccepted": pacc, "pclient2": pc2, "paccepted2": pacc2, "orphan": orphan,
         "rlistener": rlis, "raccepted": racc}
before = {k: who(s) for k, s in socks.items()}
assert before["orphan"][0] == helper and before["orphan"][4] == -1, before
assert before["raccepted"][5] == "rel", before
say("ready %d %d %r" % (child, helper, before))
while not os.path.exists(out + ".go"):
    time.sleep(0.01)
os.write(go_w, b"x")
after = {k: who(s) for k, s in socks.items()}
got = []
for s in (dg[0], st[0]):
    data, anc, _f, _a = s.recvmsg(64, 64)
    got.append((data, [struct.unpack("iII", x[2][:12]) for x in anc
                       if x[1] == socket.SCM_CREDENTIALS]))
want = [(b"no creds", [(0, 65534, 65534)]), (b"none", [(0, 65534, 65534)])]
bad = [] if after == before else ["creds %r" % (after,)]
bad += [] if got == want else ["queued %r" % (got,)]
bad += [] if os.path.exists(srv + "2") else ["the closed listener's file is gone"]
say("checked " + ("good" if not bad else "bad " + " ".join(bad)))
time.sleep(600)
"""


def test_unix_peer_credentials(procs: Procs, tmp_path: Path) -> None:
    """SO_PEERCRED, SO_PEERGROUPS and SO_PEERPIDFD of every unix socket come back as the
    program saw them (tests' own target checks): a socketpair of root and one of another
    user (uid 1234, groups 5 and 6), a listener of that user, a connection between the
    two (each end names the other process), the accepted ends of a path listener, of one
    closed since and of one bound to a relative path with its name as it was
    (getsockname), a pair made by a process that is gone (its pid, and a pidfd of
    nobody); and messages queued without credentials on a socket that shows them read
    as the kernel gave them (pid 0, uid and gid 65534), not as cryo's."""
    from tests.integration.test_tree import kill_tree, tree_pids

    (tmp_path / "peercred.py").write_text(PEERCRED)
    out = tmp_path / "out"
    v = procs.spawn([sys.executable, str(tmp_path / "peercred.py"), str(out),
                     str(tmp_path / "srv")], out)  # fmt: skip
    v.wait_line("ready")
    v.wait_line("child ready")
    pids = _tracked_tree(procs, v, 2)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    shown = run_cryo("show", str(tmp_path / "img")).stdout
    child, helper = v.wait_line("ready").split()[1:3]
    assert f"pid {child} uid 1234 gid 1234 groups [5, 6]" in shown, shown
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    assert tree_pids(v.pid) == pids
    (tmp_path / "out.go").touch()
    assert v.wait_line("checked", timeout=30) == "checked good"
    assert v.wait_line("child checked", timeout=30) == "child checked good"
    assert not os.path.exists(f"/proc/{helper}")  # the restart's helper is gone too


def test_unix_pair_made_outside_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A socket pair made by a live process outside the checkpoint (the test, which hands
    both ends to the target): its SO_PEERCRED names a process the restart cannot make
    it from, so the checkpoint is refused naming SO_PEERCRED, and the target goes on."""
    a, b = socket.socketpair()
    out = tmp_path / "out"
    code = ("import socket, sys, time\n"
            "a, b = (socket.socket(fileno=int(x)) for x in sys.argv[1:3])\n"
            "open(sys.argv[3], 'w').write('ready\\n')\n"
            "while True:\n"
            "  a.send(b'x'); assert b.recv(1) == b'x'; time.sleep(0.05)\n")  # fmt: skip
    v = procs.spawn([sys.executable, "-c", code, str(a.fileno()), str(b.fileno()), str(out)],
                    out, pass_fds=(a.fileno(), b.fileno()))  # fmt: skip
    a.close()
    b.close()
    v.wait_line("ready")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 9, r.stderr
    assert f"SO_PEERCRED) of this unix socket name process {os.getpid()}" in r.stderr, r.stderr
    assert not (tmp_path / "img" / "core.img").exists()
    time.sleep(0.3)  # the target goes on talking to itself through the pair
    assert os.waitpid(v.pid, os.WNOHANG)[0] == 0


ORPHAN_PAIR = r"""
import os, socket, struct, sys, time
out = sys.argv[1]
chan = socket.socketpair()
helper = os.fork()  # makes a pair, hands it over and is gone
if helper == 0:
    x, y = socket.socketpair()
    socket.send_fds(chan[1], [b"p"], [x.fileno(), y.fileno()])
    os._exit(0)
os.waitpid(helper, 0)
_m, fds, _f, _a = socket.recv_fds(chan[0], 1, 2)
x = socket.socket(fileno=fds[0])
open(out, "w").write("ready %d\n" % helper)
while not os.path.exists(out + ".go"):
    time.sleep(0.01)
pid = struct.unpack("iII", x.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
open(out, "a").write("checked " + ("good" if pid == helper else "bad %d" % pid) + "\n")
time.sleep(600)
"""


def test_unix_pair_of_a_gone_process_whose_pid_is_taken(procs: Procs, tmp_path: Path) -> None:
    """A pair made by a process that is gone is made again by a helper with its pid; if
    that pid is taken at restart, the restart fails naming SO_PEERCRED and leaves
    nothing behind; once the pid is free, it restarts and the pair names that pid."""
    from cryo.engine import tree

    (tmp_path / "orphan.py").write_text(ORPHAN_PAIR)
    out = tmp_path / "out"
    v = procs.spawn([sys.executable, str(tmp_path / "orphan.py"), str(out)], out)
    helper = int(v.wait_line("ready").split()[1])
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    taker = tree.spawn_helper(helper)  # (stopped, traced by us: ends below)
    try:
        assert taker == helper
        r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
        assert r.returncode != 0 and "SO_PEERCRED" in r.stderr and "taken" in r.stderr, \
            r.stderr  # fmt: skip
        assert not os.path.exists(f"/proc/{v.pid}")
    finally:
        os.kill(taker, signal.SIGKILL)
        os.waitpid(taker, 0)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(v.pid)
    (tmp_path / "out.go").touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
