"""Real servers checkpointed in the middle of real work (issues 9 and 11; session 11,
h2), each in a network namespace of its own as in test_sockets, and checked from
outside byte for byte after a kill and a restart: nginx (a master and its workers,
keep-alive connections, a large response mid-transfer), redis-server with AOF on and a
BGSAVE child in flight, memcached with many connections, a Go net/http server
(goroutines, the netpoller, timers) streaming, a Python asyncio server streaming, and
sqlite3 in WAL mode with a reader and a writer process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VICTIMS, Procs, Victim, reap
from tests.integration.test_sockets import Netns, connect, inside, ns, pytestmark, spawn  # noqa: F401

pytestmark = [pytestmark, pytest.mark.timeout(300)]


def _needs(cmd: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(cmd) is None, reason=f"needs {cmd}")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _wait(cond: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _tree_cycle(procs: Procs, n: Netns, pid: int, img: Path, pids: list[int],
                *opts: str) -> int:  # fmt: skip
    """A checkpoint of the tree of ``pid`` with --kill, every one of ``pids`` reaped,
    then a restart (detached) in the namespace; returns the restored root's pid."""
    r = n.cryo("checkpoint", str(pid), "--tree", "-D", str(img), "--kill", *opts,
               timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for p in (*pids, pid):
        reap(p)
    r = n.cryo("restart", "-D", str(img), "--detach", *opts, timeout=120)
    assert r.returncode == 0, r.stderr
    return procs.track(int(r.stdout))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def _http_head(s: socket.socket) -> tuple[bytes, bytes]:
    """The response head (up to the blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _get(s: socket.socket, path: str, size: int, first: int | None = None) -> bytes:
    """GET ``path`` on a keep-alive connection; its body of ``size`` bytes (only the first
    ``first`` bytes read when given)."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, rest = _http_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert f"content-length: {size}".encode() in head.lower(), head
    want = size if first is None else first
    return rest + _recv_exact(s, want - len(rest))


# ----------------------------------------------- an edge-triggered writer, full queues


@pytest.mark.parametrize(("host", "lowat"), [("127.0.0.1", 0), ("::1", 0),
                                             ("127.0.0.1", 16384)])  # fmt: skip
def test_edge_triggered_writer_with_full_queues(procs: Procs, ns: Netns,  # noqa: F811
                                                tmp_path: Path, host: str, lowat: int
                                                ) -> None:  # fmt: skip
    """victims/etwrite_s11_h2.py (nginx's way of writing: non-blocking, an edge-triggered
    epoll watch, write until EAGAIN, wait for the next EPOLLOUT edge) with its send queue
    full (its client reads nothing) and its receive queue holding 300,000 bytes it has
    not read, its buffer sizes its own.  Checkpointed with --tcp-established, killed,
    restarted: the client then reads everything it writes, byte for byte, and it finds
    what the client sent and its SO_SNDBUF and SO_RCVBUF as they were.  Before: the
    restored send buffer was twice the send queue's length (the room its refill needed),
    so the restored socket was writable when its watch was added, that edge was taken
    off the ready list as one the program had had, and the kernel, which tells the
    writer of a full socket only (SOCK_NOSPACE, set by the EAGAIN), never woke it: the
    client hung.  And SO_RCVBUF read twice the receive queue's length."""
    out = tmp_path / "out.txt"
    total, incoming = 24 << 20, 300_000
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "etwrite_s11_h2.py"), str(out), "9300",
                          str(total), str(incoming), host, str(lowat)], out)  # fmt: skip
    v.wait_line("port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    c = connect(ns, (host, 9300), family=family, timeout=60)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    pattern = bytes(range(251)) * 1045
    want = (pattern * (total // len(pattern) + 1))[:total]
    c.sendall(want[:incoming])
    v.wait_line("full", timeout=30)
    time.sleep(0.3)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    c.settimeout(20)
    got = _recv_exact(c, total)
    assert got == want
    v.wait_line("ok sizes", timeout=30)
    assert not v.fails(), v.fails()
    assert v.wait_line("read") == f"read {incoming}"
    c.close()
    assert ns.tables() == []


# ---------------------------------------------------------------------------- nginx


@_needs("nginx")
@pytest.mark.parametrize("sendfile", ["on", "off"])
def test_nginx_large_response_mid_transfer_and_keepalive(
        procs: Procs, ns: Netns, tmp_path: Path, sendfile: str  # noqa: F811
) -> None:  # fmt: skip
    """nginx, a master and two workers: one client in the middle of a 48 MiB download
    (its receive window full, the worker's send queue full, the rest of the file still
    to send), two more idle on keep-alive connections after a request each.  Checkpointed
    as a tree with --tcp-established, killed, restarted: the download goes on and ends
    with every byte exactly once (its sha256), the idle connections serve another
    request each, a new connection is served, and the master still runs its workers."""
    t = str(tmp_path)
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 48
    (tmp_path / "html" / "big.bin").write_bytes(big)
    (tmp_path / "html" / "small.txt").write_bytes(b"small and fine\n")
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 2; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps} sendfile {sendfile};\n"
        f"  keepalive_timeout 300s; send_timeout 300s; keepalive_requests 1000;\n"
        f"  server {{ listen 127.0.0.1:8080; root {t}/html; }} }}\n")  # fmt: skip
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "out")
    _wait(lambda: len(_children(v.pid)) == 2, "two workers")
    workers = _children(v.pid)
    for w in workers:
        procs.track(w)
    idle = [connect(ns, ("127.0.0.1", 8080), timeout=60) for _ in range(2)]
    for c in idle:
        assert _get(c, "/small.txt", 15) == b"small and fine\n"
    dl = connect(ns, ("127.0.0.1", 8080), timeout=60)
    dl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    got = _get(dl, "/big.bin", len(big), first=3 << 20)
    time.sleep(0.5)  # the worker fills what the window lets it send, then waits
    pid = _tree_cycle(procs, ns, v.pid, tmp_path / "img", workers, "--tcp-established")
    assert pid == v.pid
    assert sorted(_children(pid)) == sorted(workers)
    rest = _recv_exact(dl, len(big) - len(got))
    assert hashlib.sha256(got + rest).digest() == hashlib.sha256(big).digest()
    assert _get(dl, "/small.txt", 15) == b"small and fine\n"  # still keep-alive
    for c in idle:
        assert _get(c, "/small.txt", 15) == b"small and fine\n"
    with connect(ns, ("127.0.0.1", 8080)) as c:
        assert hashlib.sha256(_get(c, "/big.bin", len(big))).digest() == \
            hashlib.sha256(big).digest()  # fmt: skip
    for c in (*idle, dl):
        c.close()
    os.kill(pid, signal.SIGQUIT)
    _wait(lambda: not os.path.exists(f"/proc/{pid}/task/{pid}/children")
          or not _children(pid), "nginx's workers quit")  # fmt: skip
    assert ns.tables() == []


# ---------------------------------------------------------------------------- redis


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _talk(c: socket.socket, request: bytes, end: bytes) -> bytes:
    c.sendall(request)
    data = b""
    while not data.endswith(end):
        chunk = c.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _info(c: socket.socket, section: str) -> dict[str, str]:
    raw = _talk(c, _resp(b"INFO", section.encode()), b"\r\n\r\n")  # (ends in a blank line)
    text = raw.split(b"\r\n", 1)[1].decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@_needs("redis-server")
@pytest.mark.parametrize("op", ["BGSAVE", "BGREWRITEAOF"])
def test_redis_aof_and_bgsave_child_in_flight(procs: Procs, ns: Netns,  # noqa: F811
                                              tmp_path: Path, op: str) -> None:  # fmt: skip
    """redis-server with AOF on (appendfsync everysec: its bio thread fsyncs) and a child
    in the middle of writing a snapshot (rdb-key-save-delay: 20 ms a key, 200 keys): a
    BGSAVE, or a BGREWRITEAOF (the AOF's new base, the parent writing a new increment
    meanwhile); a client connected and another whose pipeline of 200 GETs is half
    answered.  Checkpointed as a tree with --tcp-established, killed, restarted: the
    pipeline's answers go on byte for byte, the child finishes and the server takes its
    end (its last status ok, nothing in progress); the client's connection reads every
    key; more writes; the restored server forks a second child of the same, which
    ends well; then a fresh redis-server started on the (second) snapshot alone
    (BGSAVE) and another on the AOF alone each hold exactly what they must."""
    d = tmp_path / "data"
    d.mkdir()
    argv = ["redis-server", "--port", "6390", "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
            "--dir", str(d), "--rdb-key-save-delay", "20000"]  # fmt: skip
    v = spawn(procs, ns, argv, tmp_path / "out")
    c = connect(ns, ("127.0.0.1", 6390), timeout=60)
    keys = {b"k%03d" % i: os.urandom(64 + i * 37).hex().encode() for i in range(200)}
    for k, val in keys.items():
        assert _talk(c, _resp(b"SET", k, val), b"\r\n") == b"+OK\r\n"
    started = {"BGSAVE": b"+Background saving started\r\n",
               "BGREWRITEAOF": b"+Background append only file rewriting started\r\n"}
    busy = {"BGSAVE": "rdb_bgsave_in_progress", "BGREWRITEAOF": "aof_rewrite_in_progress"}
    assert _talk(c, _resp(op.encode()), b"\r\n") == started[op]
    _wait(lambda: _children(v.pid), "the child")
    child = _children(v.pid)
    for p in child:
        procs.track(p)
    time.sleep(1)  # ~50 of 200 keys written
    assert _info(c, "persistence")[busy[op]] == "1"
    # after the child began: in the AOF and the server's memory, not in the snapshot
    assert _talk(c, _resp(b"SET", b"after", b"bgsave"), b"\r\n") == b"+OK\r\n"
    p = connect(ns, ("127.0.0.1", 6390), timeout=60)  # a pipeline, its answers half read
    p.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    p.sendall(b"".join(_resp(b"GET", k) for k in keys))
    answers = b"".join(b"$%d\r\n%s\r\n" % (len(val), val) for val in keys.values())
    first = _recv_exact(p, 100_000)
    pid = _tree_cycle(procs, ns, v.pid, tmp_path / "img", child, "--tcp-established")
    assert pid == v.pid and _children(pid) == child
    assert first + _recv_exact(p, len(answers) - len(first)) == answers
    p.close()
    for k, val in keys.items():
        assert _talk(c, _resp(b"GET", k), b"\r\n" + val + b"\r\n").endswith(val + b"\r\n")
    assert _talk(c, _resp(b"SET", b"restored", b"yes"), b"\r\n") == b"+OK\r\n"
    _wait(lambda: _info(c, "persistence")[busy[op]] == "0", "the child finished",
          timeout=60)  # fmt: skip
    info = _info(c, "persistence")
    assert info["rdb_last_bgsave_status"] == "ok", info
    assert info["aof_last_write_status"] == "ok" and info["aof_last_bgrewrite_status"] == "ok"
    assert _children(pid) == []
    if op == "BGSAVE":
        shutil.copy(d / "dump.rdb", tmp_path / "first.rdb")  # (the restored child's)
    # and the restored server forks its children as before: one more of the same
    assert _talk(c, _resp(b"CONFIG", b"SET", b"rdb-key-save-delay", b"0"), b"\r\n") == \
        b"+OK\r\n"  # fmt: skip
    assert _talk(c, _resp(op.encode()), b"\r\n") == started[op]
    _wait(lambda: _info(c, "persistence")[busy[op]] == "0", "the second child finished",
          timeout=60)  # fmt: skip
    info = _info(c, "persistence")
    assert info["rdb_last_bgsave_status"] == "ok" and info["aof_last_bgrewrite_status"] == \
        "ok", info  # fmt: skip
    time.sleep(1.5)  # (everysec: the AOF written and fsynced)
    c.sendall(_resp(b"SHUTDOWN", b"NOSAVE"))
    c.close()
    _wait(lambda: not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", "redis quits")
    everything = {**keys, b"after": b"bgsave", b"restored": b"yes"}
    checks = [("aof", everything)]
    if op == "BGSAVE":  # the restored child's snapshot, then the second's (made after all)
        checks += [("first.rdb", keys), ("dump.rdb", everything)]
    for only, want in checks:
        e = tmp_path / only.replace(".", "-")
        e.mkdir()
        if only.endswith(".rdb"):
            shutil.copy(tmp_path / only if only == "first.rdb" else d / only, e / "dump.rdb")
            extra = ["--appendonly", "no"]
        else:
            shutil.copytree(d / "appendonlydir", e / "appendonlydir")
            extra = ["--appendonly", "yes"]
        w = spawn(procs, ns, ["redis-server", "--port", "6391", "--bind", "127.0.0.1",
                              "--save", "", "--daemonize", "no", "--dir", str(e), *extra],
                  tmp_path / f"out-{only}")  # fmt: skip
        with connect(ns, ("127.0.0.1", 6391), timeout=60) as q:
            _wait(lambda q=q: _info(q, "persistence")["loading"] == "0", "loaded")
            n = int(_talk(q, _resp(b"DBSIZE"), b"\r\n")[1:])
            assert n == len(want), (only, n)
            for k, val in want.items():
                got = _talk(q, _resp(b"GET", k), b"\r\n" + val + b"\r\n")
                assert got.endswith(val + b"\r\n"), (only, k)
        reap(w.pid)
    if op == "BGREWRITEAOF":  # (the rewrite's base holds the 200 keys, the rest after it)
        m = (d / "appendonlydir" / "appendonly.aof.manifest").read_text()
        assert "type b" in m and m.count("type i") == 1, m
    assert ns.tables() == []


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---------------------------------------------------------------------------- sqlite


def _locks(pids: list[int]) -> list[tuple[int, str, str, str, str, str]]:
    """The file locks these processes hold (/proc/locks): pid, kind, mode, inode, range."""
    got = []
    with open("/proc/locks") as f:
        for line in f:
            w = line.split()
            if w[1] == "->":  # (a waiter)
                continue
            if int(w[4]) in pids:
                got.append((int(w[4]), w[1], w[3], w[5], w[6], w[7]))
    return sorted(got)


def _busy(db: Path) -> tuple[bool, tuple[int, int, int]]:
    """From outside: whether the write lock is taken (BEGIN IMMEDIATE fails at once), and
    what a TRUNCATE checkpoint of the WAL finds (busy, log frames, frames checkpointed)."""
    import sqlite3

    c = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    try:
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("ROLLBACK")
            locked = False
        except sqlite3.OperationalError as err:
            assert "locked" in str(err), err
            locked = True
        row = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return locked, (row[0], row[1], row[2])
    finally:
        c.close()


def test_sqlite_wal_reader_and_writer_mid_transaction(procs: Procs, tmp_path: Path) -> None:
    """victims/sqlwal_s11_h2.py: SQLite in WAL mode, a reader process holding a snapshot
    and a writer process holding the write lock with 50 rows not committed, checkpointed
    as a tree, killed, restarted: they hold the same locks (/proc/locks: kind, mode,
    inode, range), an outside connection still finds the write lock taken, the reader's
    snapshot still shows 100 rows after the writer commits, a new one 150, and the
    database passes its integrity check."""
    import sqlite3

    from cryo.engine.dump import checkpoint
    from cryo.engine.restore import restart
    from tests.conftest import Victim

    out, db = tmp_path / "out.txt", tmp_path / "db.sqlite"
    v = procs.spawn([sys.executable, str(VICTIMS / "sqlwal_s11_h2.py"), str(out), str(db)], out)
    v.wait_line("reader ready", timeout=30)
    v.wait_line("writer ready", timeout=30)
    kids = _children(v.pid)
    for k in kids:
        procs.track(k)
    fifos = {n: os.open(f"{db}.{n}", os.O_WRONLY) for n in ("r", "w")}
    try:
        time.sleep(0.2)
        before = _locks(kids)
        assert {p for p, *_ in before} == set(kids), before  # (each holds some)
        outside = _busy(db)
        assert outside[0], outside
        checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
        for p in (*kids, v.pid):
            reap(p)
        rr = restart(str(tmp_path / "img"))
        procs.track(rr.pid)
        v = Victim(rr.pid, out)
        assert sorted(_children(rr.pid)) == sorted(kids)
        assert _locks(kids) == before
        assert _busy(db) == outside
        os.write(fifos["r"], b"count\n")
        assert v.wait_line("reader sees") == "reader sees 100"
        os.write(fifos["w"], b"commit\n")
        v.wait_line("writer committed")
        os.write(fifos["r"], b"count\nend\n")
        v.wait_line("reader after")
        assert [x for x in v.lines() if x.startswith("reader ")][1:] == \
            ["reader sees 100", "reader sees 100", "reader after 150"]  # fmt: skip
    finally:
        for fd in fifos.values():
            os.close(fd)
    v.wait_line("done")
    c = sqlite3.connect(str(db))
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 150
    c.close()


# ---------------------------------------------------------------------------- Go


def _chunked_lines(s: socket.socket, buf: bytearray, n: int) -> list[str]:
    """Read ``n`` lines of a chunked body whose chunks each hold one line (Go's Flush)."""
    lines: list[str] = []
    while len(lines) < n:
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {lines[-3:]}"
            buf += chunk
        size_line, _, rest = bytes(buf).partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {lines[-3:]}"
            rest += chunk
        lines += rest[:size].decode().splitlines()
        buf[:] = rest[size + 2 :]
    return lines


@_needs("go")
def test_go_http_server_streaming_big_and_timers(procs: Procs, ns: Netns,  # noqa: F811
                                                 tmp_path: Path) -> None:  # fmt: skip
    """A Go net/http server (victims/gohttp_s11_h2.go: goroutines, the netpoller with its
    edge-triggered epoll, timers) in the middle of: a stream of lines every 20 ms (a
    ticker), a 32 MiB response written in one Write (its goroutine parked until the
    socket drains), a handler waiting on a 2 s timer, and an idle keep-alive
    connection.  Checkpointed with --tcp-established, killed, restarted: the stream
    goes on with no line lost or doubled, the download ends byte for byte, the timer's
    answer comes, the idle connection serves again, and 30 signals sent to it
    (signal.Notify) are all taken."""
    import subprocess

    exe = tmp_path / "gohttp"
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": "",
           "CGO_ENABLED": "0"}  # fmt: skip
    subprocess.run(["go", "build", "-o", str(exe), str(VICTIMS / "gohttp_s11_h2.go")],
                   check=True, env=env, cwd=tmp_path, timeout=180)  # fmt: skip
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [str(exe), str(out)], out)
    v.wait_line("ready", timeout=30)
    addr = ("127.0.0.1", 8081)
    idle = connect(ns, addr, timeout=60)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = _http_head(idle)
    assert body.endswith(b"served 1\n") or _recv_exact(idle, 9) == b"served 1\n"
    st = connect(ns, addr, timeout=60)
    st.sendall(b"GET /stream?n=250 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, rest = _http_head(st)
    assert b"chunked" in head, head
    sbuf = bytearray(rest)
    lines = _chunked_lines(st, sbuf, 40)
    big = connect(ns, addr, timeout=60)
    big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    whole = hashlib.sha256(_get(big, "/big", 32 << 20)).digest()  # (once, whole)
    got = _get(big, "/big", 32 << 20, first=1 << 20)
    slow = connect(ns, addr, timeout=60)
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    for c in (idle, st, big, slow):
        c.settimeout(30)
    head, body = _http_head(slow)
    assert head.startswith(b"HTTP/1.1 200"), head
    while not body.endswith(b"\n"):
        body += slow.recv(100)
    assert body.endswith(b"slept true\n"), body
    lines += _chunked_lines(st, sbuf, 250 - len(lines))
    assert lines == [f"line {i}" for i in range(250)], [x for x in lines if "FAIL" in x]
    rest = _recv_exact(big, (32 << 20) - len(got))
    assert hashlib.sha256(got + rest).digest() == whole
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = _http_head(idle)
    assert head.startswith(b"HTTP/1.1 200"), head
    pid = int(r.stdout)
    for k in range(30):  # (its threads take them in turn: each its own sigaltstack)
        os.kill(pid, signal.SIGUSR1 if k % 2 else signal.SIGHUP)
        time.sleep(0.01)

    def signals() -> bytes:
        idle.sendall(b"GET /signals HTTP/1.1\r\nHost: x\r\n\r\n")
        _head, body = _http_head(idle)
        while not body.endswith(b"\n"):
            body += idle.recv(100)
        return body

    _wait(lambda: signals() == b"signals 30\n", "30 signals taken")
    assert not os.path.exists(f"/proc/{pid}") or _state(pid) not in ("Z", "gone")
    for c in (idle, st, big, slow):
        c.close()
    assert ns.tables() == []



# ---------------------------------------------------------------------------- memcached


@_needs("memcached")
def test_memcached_many_connections_mid_request(procs: Procs, ns: Netns,  # noqa: F811
                                                tmp_path: Path) -> None:  # fmt: skip
    """memcached (4 worker threads) with 240 client connections: 80 idle after a SET of
    their own, 80 in the middle of a SET (the command line and half the value sent),
    80 with a GET of a 512 KiB value answered and not read (each client reads 100 bytes
    of it).  Checkpointed with --tcp-established, killed, restarted: the half-sent SETs
    complete and are STORED, the unread answers read byte for byte, the idle ones get
    their own value back, and a new connection sees every key."""
    v = spawn(procs, ns, ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11311", "-U",
                          "0", "-t", "4", "-c", "1024", "-m", "256", "-I", "2m"],
              tmp_path / "out")  # fmt: skip
    first = connect(ns, ("127.0.0.1", 11311), timeout=60)
    bigval = os.urandom(256 << 10).hex().encode()  # 512 KiB
    assert _talk(first, b"set big 0 0 %d\r\n%s\r\n" % (len(bigval), bigval), b"\r\n") == \
        b"STORED\r\n"  # fmt: skip
    idle, half, unread = [], [], []
    for i in range(80):
        c = connect(ns, ("127.0.0.1", 11311))
        val = b"idle-%d" % i
        assert _talk(c, b"set i%d 0 0 %d\r\n%s\r\n" % (i, len(val), val), b"\r\n") == \
            b"STORED\r\n"  # fmt: skip
        idle.append((c, val))
    for i in range(80):
        c = connect(ns, ("127.0.0.1", 11311))
        val = os.urandom(3000 + i).hex().encode()
        c.sendall(b"set h%d 0 0 %d\r\n%s" % (i, len(val), val[: len(val) // 2]))
        half.append((c, val))
    answer = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(bigval), bigval)
    for _ in range(80):
        c = connect(ns, ("127.0.0.1", 11311))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        c.sendall(b"get big\r\n")
        unread.append((c, _recv_exact(c, 100)))
    time.sleep(0.5)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    for c, val in half:
        c.settimeout(20)
        c.sendall(val[len(val) // 2 :] + b"\r\n")
        assert _recv_exact(c, 8) == b"STORED\r\n"
    for c, got in unread:
        c.settimeout(20)
        assert got + _recv_exact(c, len(answer) - len(got)) == answer
    for i, (c, val) in enumerate(idle):
        c.settimeout(20)
        assert _talk(c, b"get i%d\r\n" % i, b"END\r\n") == \
            b"VALUE i%d 0 %d\r\n%s\r\nEND\r\n" % (i, len(val), val)  # fmt: skip
    with connect(ns, ("127.0.0.1", 11311)) as c:
        for i, (_c, val) in enumerate(half):
            assert _talk(c, b"get h%d\r\n" % i, b"END\r\n") == \
                b"VALUE h%d 0 %d\r\n%s\r\nEND\r\n" % (i, len(val), val)  # fmt: skip
        stats = _talk(c, b"stats\r\n", b"END\r\n").decode()
        assert "STAT curr_items 161\r\n" in stats, stats
    for c, *_ in (*idle, *half, *unread):
        c.close()
    first.close()
    assert ns.tables() == []


# ---------------------------------------------------------------------------- asyncio


def _lines(s: socket.socket, buf: bytearray, n: int) -> list[str]:
    lines: list[str] = []
    while len(lines) < n:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {lines[-3:]}"
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        lines.append(line.decode())
        buf[:] = rest
    return lines


def test_asyncio_server_streaming(procs: Procs, ns: Netns,  # noqa: F811
                                  tmp_path: Path) -> None:  # fmt: skip
    """victims/aiostream_s11_h2.py: an asyncio server in the middle of streaming lines
    to three clients (each at its own line: asyncio.sleep between them) and of a
    16 MiB answer its client does not read (the transport's buffer full, writing
    paused), checkpointed with --tcp-established, killed, restarted: each stream goes
    on with no line lost or doubled, the answer ends byte for byte, its loop's clock
    never went back, and the server counts every request."""
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "aiostream_s11_h2.py"), str(out),
                          "9310"], out)  # fmt: skip
    v.wait_line("port", timeout=30)
    streams = []
    for n in (150, 200, 300):
        c = connect(ns, ("127.0.0.1", 9310), timeout=60)
        c.sendall(b"stream %d\n" % n)
        streams.append((c, n, bytearray()))
    got = [_lines(c, buf, 20) for c, _n, buf in streams]
    big = connect(ns, ("127.0.0.1", 9310), timeout=60)
    big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    size = 16 << 20
    big.sendall(b"big %d\n" % size)
    first = _recv_exact(big, 1 << 20)
    time.sleep(0.3)
    last = max(v.oks())
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    v.wait_ok_after(last + 3, timeout=30)
    for (c, n, buf), g in zip(streams, got, strict=True):
        c.settimeout(30)
        lines = g + _lines(c, buf, n - len(g))
        assert lines == [f"line {i}" for i in range(n)]
    big.settimeout(30)
    pattern = bytes(range(256)) * 4093
    want = (pattern * (size // len(pattern) + 1))[:size]
    assert first + _recv_exact(big, size - len(first)) == want
    big.sendall(b"count\n")
    assert _lines(big, bytearray(), 1) == ["served 5"]
    assert not v.fails(), v.fails()
    for c, *_ in streams:
        c.close()
    big.close()
    assert ns.tables() == []


# ------------------------------------------------------- what an idle connection shows


@pytest.mark.parametrize("six", ["4", "4 many", "6"])
def test_idle_connections_show_the_same_options(procs: Procs, ns: Netns,  # noqa: F811
                                                tmp_path: Path, six: str) -> None:  # fmt: skip
    """victims/sockopts_s11_h2.py: an idle IPv4 connection (and an IPv6 one too, [6])
    whose process reads TCP_MAXSEG (the segment size in use), its buffer sizes,
    TCP_NODELAY and SO_KEEPALIVE ([4 many]: and 17 options more it set) every 0.1 s:
    after --tcp-established, a kill and a restart it finds them as they were.  Before:
    TCP_MAXSEG read 524 instead of 32768 on loopback, and the connection sent segments
    that small until its peer's window grew: connect in repair mode computes the size
    from the default MSS, and TCP_REPAIR_OPTIONS sets the clamp alone.  And [4 many]:
    TCP_WINDOW_CLAMP 40000 came back 65536 (taken for the connection's own, yet
    TCP_REPAIR restores none)."""
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "sockopts_s11_h2.py"), str(out),
                          "9320", *six.split()], out)  # fmt: skip
    v.wait_line("port", timeout=30)
    conns = [connect(ns, ("127.0.0.1", 9320), timeout=60)]
    try:  # (closed whatever happens: [6] fails, as expected, before the end)
        if six.startswith("6"):
            conns.append(connect(ns, ("::1", 9320), family=socket.AF_INET6, timeout=60))
        assert "32768" in v.wait_line("ready", timeout=30)
        v.wait_ok_after(3, timeout=30)
        r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                    "--tcp-established")  # fmt: skip
        assert r.returncode == 0, r.stderr
        last = max(v.oks())
        reap(v.pid)
        r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
        assert r.returncode == 0, r.stderr
        procs.track(int(r.stdout))
        v.wait_ok_after(last + 5, timeout=30)
    finally:
        for c in conns:
            c.close()
    assert ns.tables() == []


# ---------------------------------------------------------------------------- a client


def _nginx_serving(procs: Procs, ns: Netns, tmp_path: Path, port: int) -> int:  # noqa: F811
    """An nginx of the test's (one worker, not checkpointed) serving tmp_path/html."""
    t = str(tmp_path)
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 1; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps} keepalive_timeout 300s;\n"
        f"  send_timeout 300s; server {{ listen 127.0.0.1:{port}; root {t}/html; }} }}\n")
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "nginx.out")
    _wait(lambda: len(_children(v.pid)) == 1, "a worker")
    procs.track(_children(v.pid)[0])
    return v.pid


@_needs("nginx")
@_needs("curl")
def test_curl_mid_download(procs: Procs, ns: Netns, tmp_path: Path) -> None:  # noqa: F811
    """curl downloading 64 MiB from a server outside the checkpoint (an nginx of the
    test's), at 8 MB/s (--limit-rate: its own timers), checkpointed with
    --tcp-established mid-download, killed, restarted: it finishes with status 200 and
    the file it wrote is the server's, byte for byte."""
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 64
    (tmp_path / "html" / "big.bin").write_bytes(big)
    _nginx_serving(procs, ns, tmp_path, 8082)
    dest, out = tmp_path / "got.bin", tmp_path / "curl.out"
    c = spawn(procs, ns, ["sh", "-c", f'exec curl -sS --limit-rate 8M -o "{dest}" -w'
                          f' "%{{http_code}} %{{size_download}}\\n"'
                          f' http://127.0.0.1:8082/big.bin > "{out}"'], out)  # fmt: skip
    _wait(lambda: dest.exists() and dest.stat().st_size > 8 << 20, "8 MiB downloaded")
    r = ns.cryo("checkpoint", str(c.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(c.pid)
    at = dest.stat().st_size
    assert at < len(big)
    r = ns.run(sys.executable, "-m", "cryo", "restart", "-D", str(tmp_path / "img"),
               "--tcp-established", timeout=120)  # fmt: skip (waits for it: curl's status)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert out.read_text() == f"200 {len(big)}\n"
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(big).digest()
    assert ns.tables() == []


def _resets(ns: Netns) -> int:  # noqa: F811
    """The resets sent in the namespace so far (both ends are in it: /proc/net/snmp)."""
    rows = [line.split() for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
            if line.startswith("Tcp:")]  # fmt: skip
    return int(rows[1][rows[0].index("OutRsts")])


def test_clients_act_while_the_server_is_down(procs: Procs, ns: Netns,  # noqa: F811
                                              tmp_path: Path) -> None:  # fmt: skip
    """The asyncio server of victims/aiostream_s11_h2.py checkpointed with three clients;
    while it is gone (killed, its connections locked) one sends a request, one shuts
    its side (FIN), one closes.  Restarted: the request is answered, the half-closed
    client reads the server's end (0 bytes, no reset), and no reset is sent by anyone
    in the namespace."""
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "aiostream_s11_h2.py"), str(out),
                          "9311"], out)  # fmt: skip
    v.wait_line("port", timeout=30)
    ask, half, gone = (connect(ns, ("127.0.0.1", 9311), timeout=60) for _ in range(3))
    for c in (ask, half, gone):
        c.sendall(b"count\n")
    assert sorted(_lines(c, bytearray(), 1)[0] for c in (ask, half, gone)) == \
        ["served 1", "served 2", "served 3"]  # fmt: skip
    resets = _resets(ns)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    ask.sendall(b"count\n")
    half.shutdown(socket.SHUT_WR)
    gone.close()
    time.sleep(0.5)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    ask.settimeout(30)
    half.settimeout(30)
    assert _lines(ask, bytearray(), 1) == ["served 4"]
    assert half.recv(100) == b""
    time.sleep(0.5)
    assert _resets(ns) == resets
    ask.close()
    half.close()
    assert ns.tables() == []


BACKEND = """
import hashlib, http.server, os, sys
BIG = os.urandom(1 << 20) * 48
open(sys.argv[2], "w").write(hashlib.sha256(BIG).hexdigest())
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BIG)))
        self.end_headers()
        self.wfile.write(BIG)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@_needs("nginx")
def test_nginx_proxy_buffering_to_a_slow_client(procs: Procs, ns: Netns,  # noqa: F811
                                                tmp_path: Path) -> None:  # fmt: skip
    """nginx as a reverse proxy (a master, one worker) between a backend outside the
    checkpoint (a Python server sending 48 MiB at once) and a client that reads slowly:
    the worker holds its upstream connection and its client's, and buffers what the
    client has not taken in a temporary file it unlinked (proxy_temp_path).  Checkpointed
    as a tree with --tcp-established mid-transfer, killed, restarted: the client reads
    the 48 MiB byte for byte, and a second request through the proxy works."""
    t = str(tmp_path)
    (tmp_path / "backend.py").write_text(BACKEND)
    spawn(procs, ns, [sys.executable, str(tmp_path / "backend.py"), "9330",
                      str(tmp_path / "sha")], tmp_path / "backend.out")  # fmt: skip
    _wait(lambda: (tmp_path / "sha").exists() and (tmp_path / "sha").read_text(), "backend")
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 1; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps} keepalive_timeout 300s;\n"
        f"  send_timeout 300s; proxy_read_timeout 300s; proxy_max_temp_file_size 1024m;\n"
        f"  upstream b {{ server 127.0.0.1:9330; keepalive 4; }}\n"
        f"  server {{ listen 127.0.0.1:8083; location / {{ proxy_pass http://b;\n"
        f'    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}\n')
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "out")
    _wait(lambda: len(_children(v.pid)) == 1, "a worker")
    workers = _children(v.pid)
    procs.track(workers[0])
    sha = bytes.fromhex((tmp_path / "sha").read_text())
    size = 48 << 20
    c = connect(ns, ("127.0.0.1", 8083), timeout=60)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    got = _get(c, "/", size, first=2 << 20)

    def buffered() -> bool:
        fds = os.listdir(f"/proc/{workers[0]}/fd")
        return any("/proxy/" in os.readlink(f"/proc/{workers[0]}/fd/{fd}") and "(deleted)"
                   in os.readlink(f"/proc/{workers[0]}/fd/{fd}") for fd in fds)  # fmt: skip

    _wait(buffered, "the worker buffers in a temporary file")
    time.sleep(0.5)
    pid = _tree_cycle(procs, ns, v.pid, tmp_path / "img", workers, "--tcp-established")
    assert _children(pid) == workers
    c.settimeout(30)
    rest = _recv_exact(c, size - len(got))
    assert hashlib.sha256(got + rest).digest() == sha
    assert hashlib.sha256(_get(c, "/", size)).digest() == sha
    c.close()
    assert ns.tables() == []


_LISTENER_OPTS = {
    "SO_REUSEADDR": (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    "SO_REUSEPORT": (socket.SOL_SOCKET, socket.SO_REUSEPORT),
    "SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF),
    "SO_SNDBUF": (socket.SOL_SOCKET, socket.SO_SNDBUF),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "TCP_DEFER_ACCEPT": (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT),
    "TCP_FASTOPEN": (socket.IPPROTO_TCP, socket.TCP_FASTOPEN),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "IPV6_V6ONLY": (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
}


def _listeners(pid: int) -> dict[int, dict[str, object]]:
    """What each listening TCP socket of ``pid`` shows (through a duplicate of its fd):
    its address, the options above, and its backlog (ss's Send-Q of a listener)."""
    from cryo.linux import libc

    got: dict[int, dict[str, object]] = {}
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            fd = int(name)
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            s = socket.socket(fileno=libc.pidfd_getfd(pidfd, fd))
            try:
                if s.type != socket.SOCK_STREAM or not s.getsockopt(socket.SOL_SOCKET,
                                                                     socket.SO_ACCEPTCONN):
                    continue  # fmt: skip
                o: dict[str, object] = {"name": s.getsockname()}
                for k, (lv, opt) in _LISTENER_OPTS.items():
                    if lv == socket.IPPROTO_IPV6 and s.family != socket.AF_INET6:
                        continue
                    o[k] = s.getsockopt(lv, opt)
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                o["backlog"] = struct.unpack_from("I", info, 28)[0]  # tcpi_sacked: backlog
                got[fd] = o
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return got


@_needs("nginx")
def test_nginx_listeners_keep_their_options(procs: Procs, ns: Netns,  # noqa: F811
                                            tmp_path: Path) -> None:  # fmt: skip
    """nginx with listeners made with every option its listen directive has: reuseport
    (a socket per worker, one SO_REUSEPORT group), deferred (TCP_DEFER_ACCEPT), fastopen,
    backlog, so_keepalive, rcvbuf, sndbuf, an IPv6 one with ipv6only.  After a tree
    checkpoint, a kill and a restart every listener of every process shows the same
    address, options and backlog, and each serves."""
    t = str(tmp_path)
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "index.html").write_text("hi\n")
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 2; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps}\n"
        f"  server {{ listen 127.0.0.1:8085 reuseport deferred fastopen=16 backlog=77\n"
        f"      so_keepalive=30s:10s:3 rcvbuf=65536 sndbuf=131072;\n"
        f"    listen 127.0.0.1:8086 backlog=33 so_keepalive=on;\n"
        f"    listen [::1]:8087 ipv6only=on backlog=55; root {t}/html; }} }}\n")
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "out")
    _wait(lambda: len(_children(v.pid)) == 2, "two workers")
    workers = _children(v.pid)
    for w in workers:
        procs.track(w)
    before = {p: _listeners(p) for p in (v.pid, *workers)}
    assert sum(len(x) for x in before.values()) >= 9, before
    pid = _tree_cycle(procs, ns, v.pid, tmp_path / "img", workers)
    assert sorted(_children(pid)) == sorted(workers)
    after = {p: _listeners(p) for p in (v.pid, *workers)}
    assert after == before
    for port, fam, host in ((8085, socket.AF_INET, "127.0.0.1"), (8086, socket.AF_INET,
                            "127.0.0.1"), (8087, socket.AF_INET6, "::1")):  # fmt: skip
        for _ in range(4):
            with connect(ns, (host, port), family=fam) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := c.recv(4096):
                    data += chunk
                assert data.endswith(b"\r\n\r\nhi\n"), data


@_needs("redis-server")
@pytest.mark.parametrize("ext", [False, True])
def test_redis_unix_socket_client_outside(procs: Procs, tmp_path: Path, ext: bool) -> None:
    """redis-server on a unix socket with a client outside the checkpoint connected to
    it: the checkpoint is refused, exit 9, naming the socket, the server going on
    serving that client; with --ext-unix-sk too (the accepted end of a connection
    cannot be connected again: its client is the one outside)."""
    from tests.conftest import run_cryo

    path = tmp_path / "redis.sock"
    v = procs.spawn(["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
                    tmp_path / "out")  # fmt: skip
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(20)
    _wait(lambda: c.connect_ex(str(path)) == 0, "the socket")
    assert _talk(c, _resp(b"SET", b"k", b"v"), b"\r\n") == b"+OK\r\n"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                 *(["--ext-unix-sk"] if ext else []))  # fmt: skip
    assert r.returncode == 9, (r.returncode, r.stderr)
    assert "outside" in r.stderr or "ext-unix-sk" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())
    assert _talk(c, _resp(b"GET", b"k"), b"v\r\n") == b"$1\r\nv\r\n"
    c.close()


@_needs("nginx")
def test_nginx_reload_after_restart_mid_download(procs: Procs, ns: Netns,  # noqa: F811
                                                 tmp_path: Path) -> None:  # fmt: skip
    """nginx restored in the middle of a 48 MiB download, then reloaded (SIGHUP): the old
    worker, shutting down, finishes the download byte for byte and exits, the master
    reaps it and runs the new workers, which serve."""
    t = str(tmp_path)
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 48
    (tmp_path / "html" / "big.bin").write_bytes(big)
    (tmp_path / "html" / "small.txt").write_bytes(b"small and fine\n")
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 1; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps} sendfile on; send_timeout 300s;\n"
        f"  server {{ listen 127.0.0.1:8088; root {t}/html; }} }}\n")  # fmt: skip
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "out")
    _wait(lambda: len(_children(v.pid)) == 1, "a worker")
    workers = _children(v.pid)
    procs.track(workers[0])
    dl = connect(ns, ("127.0.0.1", 8088), timeout=60)
    dl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    got = _get(dl, "/big.bin", len(big), first=3 << 20)
    time.sleep(0.5)
    pid = _tree_cycle(procs, ns, v.pid, tmp_path / "img", workers, "--tcp-established")
    assert _children(pid) == workers
    os.kill(pid, signal.SIGHUP)
    _wait(lambda: len(set(_children(pid)) - set(workers)) == 1, "a new worker")
    for w in _children(pid):
        procs.track(w)
    with connect(ns, ("127.0.0.1", 8088)) as c:
        assert _get(c, "/small.txt", 15) == b"small and fine\n"
    assert workers[0] in _children(pid)  # (shutting down: its download goes on)
    dl.settimeout(30)
    rest = _recv_exact(dl, len(big) - len(got))
    assert hashlib.sha256(got + rest).digest() == hashlib.sha256(big).digest()
    _wait(lambda: workers[0] not in _children(pid), "the old worker exits, reaped")
    with connect(ns, ("127.0.0.1", 8088)) as c:
        assert _get(c, "/small.txt", 15) == b"small and fine\n"
    dl.close()
    assert ns.tables() == []


def _mptcp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _mptcp(), reason="needs MPTCP (CONFIG_MPTCP, net.mptcp.enabled)")
def test_mptcp_connection_refused_by_name(procs: Procs, ns: Netns,  # noqa: F811
                                          tmp_path: Path) -> None:  # fmt: skip
    """An MPTCP connection (victims/mptcp_s11_h2.py) checkpointed with --tcp-established:
    refused, exit 9, naming MPTCP (TCP_REPAIR works on neither the connection nor its
    subflows), no lock left, the server serving its client on.  Before: exit 1,
    'Protocol not available'."""
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "mptcp_s11_h2.py"), str(out),
                          "9340"], out)  # fmt: skip
    v.wait_line("port", timeout=30)
    with inside(ns):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    c.settimeout(20)
    _wait(lambda: c.connect_ex(("127.0.0.1", 9340)) == 0, "connected")
    f = c.makefile("rwb", buffering=0)
    f.write(b"a\n")
    assert f.readline() == b"reply 1 a\n"
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 9 and "MPTCP" in r.stderr, (r.returncode, r.stderr)
    assert ns.tables() == []
    f.write(b"b\n")
    assert f.readline() == b"reply 2 b\n"
    c.close()


@_needs("nginx")
def test_nginx_checkpointed_again_and_again_mid_download(procs: Procs, ns: Netns,  # noqa: F811
                                                         tmp_path: Path) -> None:  # fmt: skip
    """nginx checkpointed three times while it goes on (as cryod's periodic checkpoints
    would), each in the middle of a slow client's 48 MiB download, with a keep-alive
    client asking for a small file after each: the download ends byte for byte, every
    answer is right, no lock is left after any of them."""
    t = str(tmp_path)
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 48
    (tmp_path / "html" / "big.bin").write_bytes(big)
    (tmp_path / "html" / "small.txt").write_bytes(b"small and fine\n")
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 2; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps} sendfile on; send_timeout 300s;\n"
        f"  keepalive_timeout 300s; server {{ listen 127.0.0.1:8089; root {t}/html; }} }}\n")
    v = spawn(procs, ns, ["nginx", "-c", f"{t}/nginx.conf", "-p", t], tmp_path / "out")
    _wait(lambda: len(_children(v.pid)) == 2, "two workers")
    for w in _children(v.pid):
        procs.track(w)
    dl = connect(ns, ("127.0.0.1", 8089), timeout=60)
    dl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    dl.settimeout(30)
    got = _get(dl, "/big.bin", len(big), first=2 << 20)
    small = connect(ns, ("127.0.0.1", 8089), timeout=60)
    for i in range(3):
        r = ns.cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / f"img{i}"),
                    "--tcp-established", timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert ns.tables() == []
        assert _get(small, "/small.txt", 15) == b"small and fine\n"
        got += _recv_exact(dl, 8 << 20)
        time.sleep(0.3)
    rest = _recv_exact(dl, len(big) - len(got))
    assert hashlib.sha256(got + rest).digest() == hashlib.sha256(big).digest()
    assert _get(dl, "/small.txt", 15) == b"small and fine\n"
    for c in (dl, small):
        c.close()


THREADED = """
import http.server, sys
PATTERN = bytes(range(256)) * 4099
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = int(self.path[1:])
        body = (PATTERN * (n // len(PATTERN) + 1))[:n]
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body)  # (one blocking sendall in this client's thread)
    def log_message(self, *a):
        pass
print("port", sys.argv[1], file=open(sys.argv[2], "a"), flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_threaded_server_blocked_in_sendall(procs: Procs, ns: Netns,  # noqa: F811
                                            tmp_path: Path) -> None:  # fmt: skip
    """Python's ThreadingHTTPServer with 12 clients that read slowly, each of its threads
    blocked in one sendall of an 8 MiB body (a blocking socket: the freeze interrupts
    the call mid-copy, and Python's sendall goes on where the kernel left it).
    Checkpointed with --tcp-established, killed, restarted: every client reads its
    body byte for byte, and a new one is served."""
    (tmp_path / "srv.py").write_text(THREADED)
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(tmp_path / "srv.py"), "9350", str(out)], out)
    v.wait_line("port", timeout=30)
    size = 8 << 20
    pattern = bytes(range(256)) * 4099
    want = (pattern * (size // len(pattern) + 1))[:size]
    clients = []
    for _ in range(12):
        c = connect(ns, ("127.0.0.1", 9350), timeout=60)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        clients.append((c, _get(c, f"/{size}", size, first=200_000)))
    time.sleep(0.5)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    for c, got in clients:
        c.settimeout(30)
        assert got + _recv_exact(c, size - len(got)) == want
    with connect(ns, ("127.0.0.1", 9350)) as c:
        assert _get(c, "/1000", 1000) == want[:1000]
    for c, _got in clients:
        c.close()
    assert ns.tables() == []


@_needs("node")
def test_node_server_streaming(procs: Procs, ns: Netns, tmp_path: Path) -> None:  # noqa: F811
    """A Node.js HTTP server (victims/nodestream_s11_h2.js: libuv's loop, setInterval,
    backpressure by 'drain') in the middle of a chunked stream of lines and of a 32 MiB
    answer its client does not read, with an idle keep-alive connection: after
    --tcp-established, a kill and a restart the stream goes on with no line lost or
    doubled, the answer ends byte for byte, the idle connection serves again."""
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, ["node", str(VICTIMS / "nodestream_s11_h2.js"), str(out), "9360"], out)
    v.wait_line("port", timeout=30)
    _stream_cycle(procs, ns, v, 9360, tmp_path, 0.3, 120)


def _stream_cycle(procs: Procs, ns: Netns, v: Victim, port: int, tmp_path: Path,  # noqa: F811
                  settle: float, timeout: float) -> None:  # fmt: skip
    """The clients of an HTTP victim serving / (a line), /stream?n=N (chunked lines) and
    /big?n=SIZE (a pattern): one idle after a request, one mid-stream, one mid 32 MiB
    answer it does not read; --tcp-established, kill, restart; the stream goes on with
    no line lost or doubled, the answer ends byte for byte, the idle one serves again."""
    addr = ("127.0.0.1", port)
    idle = connect(ns, addr, timeout=60)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = _http_head(idle)
    assert head.startswith(b"HTTP/1.1 200"), head
    while not body.endswith(b"\n"):  # (the body read: the connection idle)
        body += idle.recv(100)
    st = connect(ns, addr, timeout=60)
    st.sendall(b"GET /stream?n=250 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, rest = _http_head(st)
    assert b"chunked" in head, head
    sbuf = bytearray(rest)
    lines = _chunked_lines(st, sbuf, 30)
    size = 32 << 20
    pattern = bytes(range(256)) * 4099
    want = (pattern * (size // len(pattern) + 1))[:size]
    big = connect(ns, addr, timeout=60)
    big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    got = _get(big, f"/big?n={size}", size, first=1 << 20)
    time.sleep(settle)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    for c in (idle, st, big):
        c.settimeout(30)
    lines += _chunked_lines(st, sbuf, 250 - len(lines))
    assert lines == [f"line {i}" for i in range(250)]
    assert got + _recv_exact(big, size - len(got)) == want
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _body = _http_head(idle)
    assert head.startswith(b"HTTP/1.1 200"), head
    for c in (idle, st, big):
        c.close()
    assert ns.tables() == []


@_needs("redis-server")
@pytest.mark.parametrize("which", ["master", "replica"])
def test_redis_master_with_a_replica(procs: Procs, ns: Netns,  # noqa: F811
                                     tmp_path: Path, which: str) -> None:  # fmt: skip
    """A redis master and its replica streaming their replication link: one of them
    checkpointed with --tcp-established, killed, restarted (the other outside the
    checkpoint); writes made then reach the replica over the same link, which never
    broke (one full sync only, the master's and the replica's offsets equal)."""
    for name in ("m", "r"):
        (tmp_path / name).mkdir()
    base = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--repl-timeout", "120"]  # fmt: skip
    m = spawn(procs, ns, [*base, "--port", "6392", "--dir", str(tmp_path / "m")],
              tmp_path / "m.out")  # fmt: skip
    mc = connect(ns, ("127.0.0.1", 6392), timeout=60)
    r = spawn(procs, ns, [*base, "--port", "6393", "--dir", str(tmp_path / "r"),
                          "--replicaof", "127.0.0.1", "6392"], tmp_path / "r.out")  # fmt: skip
    rc = connect(ns, ("127.0.0.1", 6393), timeout=60)
    _wait(lambda: _info(rc, "replication").get("master_link_status") == "up", "replica up")
    for i in range(100):
        assert _talk(mc, _resp(b"SET", b"a%d" % i, b"%d" % i), b"\r\n") == b"+OK\r\n"
    _wait(lambda: _talk(rc, _resp(b"GET", b"a99"), b"\r\n").endswith(b"99\r\n"), "copied")
    target = m if which == "master" else r
    pid = _tree_cycle(procs, ns, target.pid, tmp_path / "img", [], "--tcp-established")
    for i in range(100):
        assert _talk(mc, _resp(b"SET", b"b%d" % i, b"%d" % i), b"\r\n") == b"+OK\r\n"
    _wait(lambda: _talk(rc, _resp(b"GET", b"b99"), b"\r\n").endswith(b"99\r\n"),
          "copied after the restart")  # fmt: skip

    def offsets() -> tuple[str, str]:
        return (_info(mc, "replication")["master_repl_offset"],
                _info(rc, "replication")["master_repl_offset"])  # fmt: skip

    _wait(lambda: len(set(offsets())) == 1, "the offsets meet")
    assert _info(mc, "stats")["sync_full"] == "1"
    assert _info(rc, "replication")["master_link_status"] == "up"
    assert int(_talk(rc, _resp(b"DBSIZE"), b"\r\n")[1:]) == 200
    assert pid == target.pid
    mc.close()
    rc.close()
    assert ns.tables() == []


def test_asyncio_server_mid_upload(procs: Procs, ns: Netns,  # noqa: F811
                                   tmp_path: Path) -> None:  # fmt: skip
    """The asyncio server of victims/aiostream_s11_h2.py in the middle of reading a
    48 MiB upload slowly (its receive window full, the client blocked on a full send
    queue, zero-window probes going): checkpointed with --tcp-established, killed,
    restarted, it reads the rest and answers the sha256 of exactly what was sent."""
    import threading

    out = tmp_path / "out.txt"
    v = spawn(procs, ns, [sys.executable, str(VICTIMS / "aiostream_s11_h2.py"), str(out),
                          "9312"], out)  # fmt: skip
    v.wait_line("port", timeout=30)
    data = os.urandom(1 << 20) * 48
    c = connect(ns, ("127.0.0.1", 9312), timeout=60)
    c.settimeout(60)
    c.sendall(b"upload %d\n" % len(data))
    sent: list[BaseException] = []

    def send() -> None:
        try:
            c.sendall(data)
        except BaseException as err:  # (told to the test)
            sent.append(err)

    t = threading.Thread(target=send)
    t.start()
    time.sleep(1.5)  # (a part read, the rest waiting)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    t.join(60)
    assert not t.is_alive() and not sent, sent
    assert _lines(c, bytearray(), 1) == [f"sha {hashlib.sha256(data).hexdigest()}"]
    c.close()
    assert ns.tables() == []


@_needs("nginx")
def test_nginx_pipelined_requests_mid_response(procs: Procs, ns: Netns,  # noqa: F811
                                               tmp_path: Path) -> None:  # fmt: skip
    """Three requests pipelined on one keep-alive connection (a 32 MiB file, a small
    one, the large one again), the client reading the first answer slowly: nginx
    checkpointed as a tree with --tcp-established in the middle of the first, killed,
    restarted; the three answers come in order, byte for byte."""
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 32
    (tmp_path / "html" / "big.bin").write_bytes(big)
    (tmp_path / "html" / "small.txt").write_bytes(b"small and fine\n")
    master = _nginx_serving(procs, ns, tmp_path, 8090)
    workers = _children(master)
    c = connect(ns, ("127.0.0.1", 8090), timeout=60)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    c.settimeout(30)
    c.sendall(b"".join(f"GET /{p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                       for p in ("big.bin", "small.txt", "big.bin")))  # fmt: skip
    buf = bytearray()

    def take(n: int) -> bytes:
        while len(buf) < n:
            chunk = c.recv(1 << 20)
            assert chunk, f"connection closed after {len(buf)} of {n} bytes"
            buf.extend(chunk)
        got = bytes(buf[:n])
        del buf[:n]
        return got

    def head() -> int:
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(4096)
            assert chunk, "connection closed"
            buf.extend(chunk)
        h, _, _ = bytes(buf).partition(b"\r\n\r\n")
        del buf[: len(h) + 4]
        assert h.startswith(b"HTTP/1.1 200"), h
        return int(h.split(b"Content-Length: ")[1].split(b"\r\n")[0])

    assert head() == len(big)
    first = take(2 << 20)
    time.sleep(0.5)
    _tree_cycle(procs, ns, master, tmp_path / "img", workers, "--tcp-established")
    assert first + take(len(big) - len(first)) == big
    assert head() == 15 and take(15) == b"small and fine\n"
    assert head() == len(big) and take(len(big)) == big
    c.close()
    assert ns.tables() == []


@_needs("nginx")
def test_nginx_tcp_close_mid_download(procs: Procs, ns: Netns,  # noqa: F811
                                      tmp_path: Path) -> None:  # fmt: skip
    """nginx mid-download checkpointed and restarted with --tcp-close: the worker's
    connection comes back closed, and the worker (an edge-triggered epoll watch waiting
    for EPOLLOUT) learns it at once, as it would of a reset, and lets it go: no socket
    of it is left after a few seconds; a new client is served."""
    (tmp_path / "html").mkdir()
    big = os.urandom(1 << 20) * 32
    (tmp_path / "html" / "big.bin").write_bytes(big)
    (tmp_path / "html" / "small.txt").write_bytes(b"small and fine\n")
    master = _nginx_serving(procs, ns, tmp_path, 8091)
    workers = _children(master)
    c = connect(ns, ("127.0.0.1", 8091), timeout=60)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    _get(c, "/big.bin", len(big), first=2 << 20)
    time.sleep(0.5)

    def sockets(pid: int) -> int:
        return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                   for fd in os.listdir(f"/proc/{pid}/fd"))  # fmt: skip

    before = sockets(workers[0])
    _tree_cycle(procs, ns, master, tmp_path / "img", workers, "--tcp-close")
    _wait(lambda: sockets(workers[0]) == before - 1, "the worker lets the connection go",
          timeout=10)  # fmt: skip
    with connect(ns, ("127.0.0.1", 8091)) as d:
        assert _get(d, "/small.txt", 15) == b"small and fine\n"
    c.close()


@_needs("javac")
def test_jvm_http_server_streaming(procs: Procs, ns: Netns,  # noqa: F811
                                   tmp_path: Path) -> None:  # fmt: skip
    """A JVM HTTP server (victims/JvmHttp_s11_h2.java, com.sun.net.httpserver: its
    selector thread, handler threads) in the middle of a chunked stream and of a
    32 MiB answer written in one write, with an idle keep-alive connection: after
    --tcp-established, a kill and a restart the stream goes on with no line lost or
    doubled, the answer ends byte for byte, the idle connection serves again."""
    import pwd
    import subprocess

    subprocess.run(["javac", "-d", str(tmp_path), str(VICTIMS / "JvmHttp_s11_h2.java")],
                   check=True, timeout=180)  # fmt: skip
    perf = Path("/tmp") / f"hsperfdata_{pwd.getpwuid(os.getuid()).pw_name}"
    before = set(perf.glob("*"))
    try:
        _jvm_http(procs, ns, tmp_path)
    finally:  # (the restored JVM, killed by the test, leaves its performance-data file)
        for f in set(perf.glob("*")) - before:
            f.unlink(missing_ok=True)


def _jvm_http(procs: Procs, ns: Netns, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out.txt"
    v = spawn(procs, ns, ["java", "-Xmx256m", "-cp", str(tmp_path), "JvmHttp_s11_h2",
                          str(out), "9370"], out)  # fmt: skip
    v.wait_line("port", timeout=60)
    _stream_cycle(procs, ns, v, 9370, tmp_path, 0.5, 240)


def test_unix_edge_triggered_writer_with_a_full_peer(procs: Procs, tmp_path: Path) -> None:
    """victims/unixet_s11_h2.py: a unix stream pair, its writer end waiting for an
    EPOLLOUT edge (edge-triggered, its peer's queue full) when checkpointed, killed,
    restarted; then its reader end read slowly: the writer is woken each time room is
    made and every byte arrives once, its SO_SNDBUF as it was."""
    from cryo.engine.dump import checkpoint
    from cryo.engine.restore import restart
    from tests.conftest import Victim

    out, go = tmp_path / "out.txt", tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "unixet_s11_h2.py"), str(out), str(go),
                     str(1 << 20)], out)  # fmt: skip
    v.wait_line("full", timeout=30)
    v.wait_ok_after(3, timeout=30)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    v = Victim(rr.pid, out)
    go.write_text("")
    v.wait_line("ok sizes", timeout=60)
    assert not v.fails(), v.fails()
    assert v.wait_line("read") == f"read {1 << 20}"
