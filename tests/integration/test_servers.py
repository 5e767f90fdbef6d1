"""Real database servers checkpointed with their clients' connections open: PostgreSQL
(Debian's 15, a tree of a postmaster, its helpers and a backend, shared memory of three
kinds) in the middle of a transaction, in a network namespace of its own as in
test_sockets."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryo.linux import sysv
from tests.conftest import Procs, gone, reap
from tests.integration.test_sockets import Netns, spawn

PG = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
pytestmark = pytest.mark.skipif(not PG or not shutil.which("psql"),
                                reason="needs Debian's postgresql server and psql")  # fmt: skip


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """A data directory the postgres user owns (pytest's own are root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="cryo-pg-"))
    try:
        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        as_pg = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
        subprocess.run([*as_pg, str(Path(PG[-1]).with_name("initdb")), "-D", str(d / "db"),
                        "-A", "trust", "-U", "postgres", "--no-sync"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _segments() -> set[str]:
    """The ids of the SysV shared memory segments postgres owns (its interlock)."""
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    uid = str(pwd.getpwnam("postgres").pw_uid)
    return {r[1] for r in rows if len(r) > 7 and r[7] == uid}


class Psql:
    """One psql session (a client outside the checkpoint) on pipes: ``ask`` sends SQL
    and returns the rows it printed, up to a marker."""

    def __init__(self, ns: Netns, port: int) -> None:
        self.p = subprocess.Popen(ns.argv("psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                                          "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, close_fds=True)  # fmt: skip
        self.n = 0

    def ask(self, sql: str) -> list[str]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.n += 1
        mark = f"--mark {self.n}--"
        self.p.stdin.write(f"{sql};\n\\echo {mark}\n")
        self.p.stdin.flush()
        rows = []
        while (line := self.p.stdout.readline()) != f"{mark}\n":
            assert line, f"psql ended after {rows}"
            rows.append(line.rstrip("\n"))
        return rows

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.p.kill()
        self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def test_postgres_mid_transaction(procs: Procs, tmp_path: Path, pgdata: Path) -> None:
    """A transaction open on a TCP connection when the server tree is checkpointed
    (--tcp-established), killed and restarted: the same session goes on inserting and
    commits, every row is there, and a new connection sees them."""
    pw = pwd.getpwnam("postgres")
    ns = Netns()
    sessions: list[Psql] = []
    segments = _segments()
    try:
        v = spawn(procs, ns, ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                              "--init-groups", PG[-1], "-D", str(pgdata / "db"), "-p", "5432",
                              "-c", "listen_addresses=127.0.0.1", "-c",
                              f"unix_socket_directories={pgdata}", "-c", "fsync=off"],
                  tmp_path / "out")  # fmt: skip
        for _ in range(300):  # until the server takes connections
            if ns.run("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432").returncode == 0:
                break
            time.sleep(0.1)
        a = Psql(ns, 5432)
        sessions.append(a)
        assert a.ask("SELECT 1") == ["1"]
        a.ask("CREATE TABLE t (n int PRIMARY KEY, s text)")
        a.ask("BEGIN")
        a.ask("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        backend = a.ask("SELECT pg_backend_pid()")[0]
        kids = Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split()
        assert backend in kids
        for k in kids:
            procs.track(int(k))
        r = ns.cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"), "--kill",
                    "--tcp-established")  # fmt: skip
        assert r.returncode == 0, r.stderr
        for k in kids:
            reap(int(k))
        reap(v.pid)
        r = ns.cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--tcp-established")
        assert r.returncode == 0, r.stderr
        assert procs.track(int(r.stdout)) == v.pid
        assert a.ask("SELECT pg_backend_pid()") == [backend]  # the same session
        a.ask("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(5001, 6000) g")
        a.ask("COMMIT")
        b = Psql(ns, 5432)
        sessions.append(b)
        assert b.ask("SELECT count(*), sum(n), bool_and(s = md5(n::text)) FROM t") == \
            ["6000|18003000|t"]  # fmt: skip
        assert ns.tables() == []
        os.kill(v.pid, signal.SIGINT)  # a fast shutdown: it removes its segment itself
        deadline = time.monotonic() + 30
        while not gone(v.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for s in sessions:
            s.close()
        with contextlib.suppress(Exception):
            for k in Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split():
                reap(int(k))
        with contextlib.suppress(Exception):
            reap(v.pid)
        ns.remove()
        for seg in _segments() - segments:  # (left by the server killed at checkpoint)
            with contextlib.suppress(OSError):
                sysv.shmctl(int(seg), sysv.IPC_CMD.RMID)
    assert gone(v.pid)
