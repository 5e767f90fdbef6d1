"""cryod with real daemon processes (issue 14): each test starts its own daemon on a
temporary socket, state and store, and kills it at the end; every job's processes are
killed and reaped (the test is a child subreaper: a killed daemon's jobs come to it)."""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo import store as cstore
from cryo.daemon import Client
from cryo.daemon.procs import start_time
from cryo.daemon.server import admit_for
from cryo.errors import AccessDenied, CryoError, ExitCode
from tests.conftest import Procs, gone
from tests.integration.test_grid import etcd  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cryod:
    """One daemon process on ``base``/s.sock, state in ``base``/state, store in
    ``base``/store; started again by :meth:`start` after :meth:`kill`."""

    def __init__(self, procs: Procs, base: Path, *extra: str) -> None:
        self.procs, self.base, self.extra = procs, base, extra
        self.socket = str(base / "s.sock")
        self.state = base / "state"
        self.store = str(base / "store")
        self.log = base / "cryod.log"
        self.port = _free_port()
        self.pid = 0

    def start(self) -> Cryod:
        argv = [sys.executable, "-m", "cryo", "daemon", "--socket", self.socket, "--state",
                str(self.state), "--store", self.store, "--log", str(self.log),
                "--metrics", f"127.0.0.1:{self.port}", *self.extra]  # fmt: skip
        v = self.procs.spawn(argv, out=self.log)
        self.pid = v.pid
        deadline = time.monotonic() + 30
        while True:
            try:
                with Client(self.socket, timeout=5) as c:
                    assert c.ping()["pid"] == self.pid
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"cryod did not start:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        self.procs.kill(self.pid)

    def client(self) -> Client:
        return Client(self.socket, timeout=120)

    def jobs(self) -> dict[str, dict[str, Any]]:
        with self.client() as c:
            return {j["name"]: j for j in c.jobs()}

    def track_jobs(self) -> None:
        """Every pid the state names, so that the test kills it at the end."""
        with contextlib.closing(sqlite3.connect(self.state / "cryod.db")) as db:
            for (pid,) in db.execute("SELECT pid FROM jobs WHERE pid IS NOT NULL"):
                if pid not in self.procs.pids:
                    self.procs.track(pid)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return str(r.read().decode())


@pytest.fixture
def cryod(procs: Procs, tmp_path: Path) -> Iterator[Callable[..., Cryod]]:
    made: list[Cryod] = []

    def make(*extra: str, base: Path | None = None) -> Cryod:
        d = Cryod(procs, base or tmp_path, *extra)
        made.append(d)
        return d.start()

    try:
        yield make
    finally:
        for d in made:
            with contextlib.suppress(Exception):
                d.track_jobs()


def wait(pred: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.05)


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f)}


def unharmed(pid: int) -> None:
    """Not stopped, not traced (after the engine's worker let it go)."""
    def free() -> bool:
        s = status(pid)
        return s["TracerPid"] == "0" and s["State"][0] in "RS"

    wait(free, 15, f"process {pid} to be let go")


def ticks(out: Path) -> list[int]:
    if not out.exists():  # (a job just started may not have made it yet)
        return []
    return [int(x.split()[1]) for x in out.read_text().splitlines() if x.startswith("tick ")]


def ticking(out: Path, timeout: float = 15) -> None:
    n = len(ticks(out))
    wait(lambda: len(ticks(out)) > n + 3, timeout, f"ticks in {out}")
    assert "FAIL" not in out.read_text()


def published(d: Cryod, app: str) -> list[int]:
    (entry,) = [a for a in cstore.describe(d.store) if a["app"] == app]
    return [v["version"] for v in entry["versions"] if not v["retired"]]


# -- the protocol and the command line, without a daemon ------------------------------------


def test_protocol_checks_every_message() -> None:
    from cryo.daemon import protocol as P
    from cryo.errors import CryoError, ImageMissing

    op, args = P.check_request({"op": "job_restart", "args": {"name": "a", "version": 3}})
    assert (op.name, args) == ("job_restart", {"name": "a", "version": 3})
    for bad in ({}, {"op": 3}, {"op": "nope"}, {"op": "job_get"},
                {"op": "job_get", "args": {"name": 1}},
                {"op": "job_get", "args": {"name": "a", "extra": 1}},
                {"op": "job_restart", "args": {"name": "a", "version": True}},
                {"op": "jobs", "args": []}):  # fmt: skip
        with pytest.raises(P.ProtocolError):
            P.check_request(bad)
    # an error crosses as its class and exit code
    with pytest.raises(ImageMissing) as info:
        P.raise_reply(P.reply_error(ImageMissing("no version 9")))
    assert info.value.exit_code == ExitCode.IMAGE_MISSING
    with pytest.raises(CryoError) as other:
        P.raise_reply({"ok": False, "error": "FromTheFuture", "message": "m", "exit_code": 42})
    assert other.value.exit_code == 42
    assert P.raise_reply(P.reply_ok([1])) == [1]
    # frames
    a, b = socket.socketpair()
    with a, b:
        P.send(a, {"op": "ping"})
        assert P.recv(b) == {"op": "ping"}
        a.sendall(b"\x00\x00\x00\x02{x")
        with pytest.raises(P.ProtocolError):
            P.recv(b)
        a.close()
        assert P.recv(b) is None


def test_print_unit_and_durations() -> None:
    from cryo.cli.daemon import duration

    assert [duration(x) for x in ("10m", "1.5h", "500ms", "1d", "30")] == [
        600, 5400, 0.5, 86400, 30]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "cryo", "daemon", "--print-unit", "--socket",
                        "/run/cryo/x.sock"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "[Service]" in r.stdout and "--socket /run/cryo/x.sock" in r.stdout
    assert "ExecStart=" in r.stdout and "WantedBy=multi-user.target" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cryo", "jobs", "--socket", "/nonexistent.sock"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot reach cryod" in r.stderr


# -- periodic checkpoints and retention ----------------------------------------------


def test_periodic_versions_and_retention(cryod: Callable[..., Cryod], build: Any,
                                         tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "counter.txt"
    with d.client() as c:
        job = c.add("ticker", cmd=[build("counter"), str(out)], every=1.0, keep_last=2)
    d.procs.track(job["pid"])
    assert job["scope"] == "tree" and job["state"] == "running"
    ticking(out)

    def enough() -> list[dict[str, Any]]:
        with d.client() as c:
            hist = c.history("ticker")
        return [a for a in hist if a["status"] == "ok"] if len(
            [a for a in hist if a["status"] == "ok"]) >= 5 else []  # fmt: skip

    done = wait(enough, 60, "5 periodic checkpoints")
    assert [a["version"] for a in done[:5]] == [1, 2, 3, 4, 5]
    for a in done:
        assert a["kind"] == "checkpoint" and a["due"] is not None
        assert a["started"] - a["due"] < 1.0, a  # taken within a second of its time
    # each due time a whole number of periods after the one before (the cadence holds)
    gaps = [b - a for a, b in itertools.pairwise(a["due"] for a in done)]
    assert all(g > 0.99 and abs(g - round(g)) < 0.01 for g in gaps), gaps

    def retained() -> bool:
        with d.client() as c:
            db = [v["version"] for v in c.versions("ticker")]
        return len(db) == 2 and db == published(d, "ticker")

    wait(retained, 20, "retention: the last 2 versions, in the store and the state")
    ticking(out)
    unharmed(job["pid"])
    metrics = d.metrics()
    line = next(x for x in metrics.splitlines()
                if x.startswith('cryo_checkpoints_total{job="ticker"}'))
    assert int(float(line.split()[-1])) >= 5
    assert 'cryo_checkpoint_frozen_seconds_total{job="ticker"}' in metrics
    assert "cryo_daemon_rss_bytes" in metrics
    # the CLI on the same daemon
    r = subprocess.run([sys.executable, "-m", "cryo", "jobs", "--socket", d.socket],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ticker" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "cryo", "job", "rm", "ticker", "--kill",
                        "--socket", d.socket], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait(lambda: not os.path.exists(f"/proc/{job['pid']}"), 10, "the job killed")
    assert d.jobs() == {}
    # cryo run --every: a job of the daemon at once
    quick = tmp_path / "quick.txt"
    r = subprocess.run([sys.executable, "-m", "cryo", "run", "--every", "1s", "--keep-last",
                        "1", "--socket", d.socket, "--", build("counter"), str(quick)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[-1])
    d.procs.track(pid)
    (name,) = d.jobs()
    assert name == "counter-1" and d.jobs()[name]["pid"] == pid
    wait(lambda: (d.jobs()[name]["last_version"] or 0) >= 2, 90,
         "versions of cryo run --every")  # (a loaded machine: each version takes seconds)
    assert len(published(d, name)) <= 2


def test_failing_checkpoint_retried_with_backoff(cryod: Callable[..., Cryod], build: Any,
                                                 procs: Procs, tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "counter.txt"
    # its stdout is a pipe whose other end is ours: outside the checkpoint, unsupported
    v = procs.spawn([build("counter"), str(out)], out=out, stdout=subprocess.PIPE)
    assert v.popen is not None and v.popen.stdout is not None
    with v.popen.stdout:  # (closed at the end)
        _failing(d, v, out)


def _failing(d: Cryod, v: Any, out: Path) -> None:
    v.wait_line("tick")
    with d.client() as c:
        c.add("stuck", pid=v.pid, every=30.0)
        # the first is due in 30 s: take one now, failing, then the retries follow
        with pytest.raises(Exception, match="outside the checkpoint") as info:
            c.checkpoint("stuck")
        assert info.value.exit_code == ExitCode.UNSUPPORTED  # type: ignore[attr-defined]

        def retried() -> list[dict[str, Any]]:
            h = [a for a in c.history("stuck") if a["status"] == "failed"]
            return h if len(h) >= 4 else []

        hist = wait(retried, 30, "three retries")
        job = c.job("stuck")
    assert all(a["error"] == "Unsupported" for a in hist), hist
    gaps = [b["started"] - a["started"] for a, b in itertools.pairwise(hist[:4])]
    assert gaps[0] < gaps[1] < gaps[2] < 30, gaps  # 1, 2, 4 s: backoff, within the period
    assert job["failures"] >= 4 and job["versions"] == 0
    assert 'cryo_checkpoint_failures_total{job="stuck"}' in d.metrics()
    unharmed(v.pid)
    ticking(out)


# -- the daemon killed in the middle of a checkpoint ---------------------------------------


def _checks_itself(out: Path, gen: int) -> None:
    """incr.c's memory is what generation ``gen`` must hold, every byte (SIGUSR2)."""
    pid = int(out.read_text().split()[1])
    n = out.read_text().count(f"ok {gen}\n")
    os.kill(pid, signal.SIGUSR2)
    wait(lambda: out.read_text().count(f"ok {gen}\n") > n or "FAIL" in out.read_text(), 30,
         f"incr's check of generation {gen}")  # fmt: skip
    assert "FAIL" not in out.read_text()


def test_daemon_sigkill_during_checkpoint(cryod: Callable[..., Cryod], build: Any,
                                          tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "big.txt"
    with d.client() as c:
        job = c.add("big", cmd=[build("incr"), str(out), "384", "1000"], keep_last=5)
        d.procs.track(job["pid"])
        small = c.add("small", cmd=[build("counter"), str(tmp_path / "small.txt")])
        d.procs.track(small["pid"])
        wait(lambda: "ready" in out.read_text() if out.exists() else False, 30, "incr")
        v1 = c.checkpoint("big")["version"]
        s1 = c.checkpoint("small")["version"]
        # every page of it written again: version 2 copies all 384 MiB, long enough to be
        # caught in the middle (an unchanged job's version takes milliseconds)
        os.kill(job["pid"], signal.SIGUSR1)
        wait(lambda: "gen 1" in out.read_text(), 30, "incr's generation 1")
    assert (v1, s1) == (1, 1)
    app = Path(d.store) / "big"

    def call() -> None:
        with contextlib.suppress(Exception), d.client() as c:
            c.checkpoint("big")

    t = threading.Thread(target=call, daemon=True)
    t.start()
    wait(lambda: any(".tmp." in n for n in os.listdir(app)), 30, "a version being written")
    time.sleep(0.05)
    d.kill()  # SIGKILL, in the middle of writing version 2
    t.join(10)
    unharmed(job["pid"])
    _checks_itself(out, 1)

    d.start()  # the same state and store
    jobs = d.jobs()
    assert set(jobs) == {"big", "small"}
    assert jobs["big"]["pid"] == job["pid"] and jobs["big"]["state"] == "running"
    with d.client() as c:
        versions = [v["version"] for v in c.versions("big")]
        assert versions[0] == 1
        assert versions == published(d, "big")  # reconciled with the store
        assert [v["version"] for v in c.versions("small")] == [1]
        hist = c.history("big")
        assert hist[-1]["status"] == "interrupted", hist[-1]
        assert "daemon stopped" in hist[-1]["message"]
        again = c.checkpoint("big")["version"]
    assert again == versions[-1] + 1
    assert not cstore.verify(d.store).problems
    unharmed(job["pid"])
    _checks_itself(out, 1)


def test_daemon_sigkill_during_gc(cryod: Callable[..., Cryod], build: Any,
                                  tmp_path: Path) -> None:  # fmt: skip
    """The daemon killed while its gc copies pages (a version's file of which the kept
    version reads a tenth: merged): no version it keeps is lost, the store verifies, the
    job goes on untouched, the next gc finishes, and the kept version restarts exactly."""
    d = cryod()
    out = tmp_path / "big.txt"
    with d.client() as c:
        job = c.add("big", cmd=[build("incr"), str(out), "512", "900"], keep_last=1)
        d.procs.track(job["pid"])
        wait(lambda: "ready" in out.read_text() if out.exists() else False, 30, "incr")
        assert c.checkpoint("big")["version"] == 1
        os.kill(job["pid"], signal.SIGUSR1)  # 90% of its pages new: version 1 goes sparse
        wait(lambda: "gen 1" in out.read_text(), 30, "incr's generation 1")
    v2 = Path(d.store) / "big" / "v2"

    def call() -> None:
        with contextlib.suppress(Exception), d.client() as c:
            c.checkpoint("big")  # (returns once retention ran: it will not)

    t = threading.Thread(target=call, daemon=True)
    t.start()

    def merging() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return any(n.startswith("pages-1.img.tmp.") for n in os.listdir(v2))
        return False

    wait(merging, 60, "gc copying version 1's live pages into version 2")
    d.kill()  # SIGKILL, in the middle of the copy
    t.join(10)
    unharmed(job["pid"])
    _checks_itself(out, 1)
    assert not cstore.verify(d.store).problems

    d.start()
    with d.client() as c:
        assert [v["version"] for v in c.versions("big")] == published(d, "big")
        assert 2 in published(d, "big")
        assert c.checkpoint("big")["version"] == 3  # and its gc, to the end
        assert [v["version"] for v in c.versions("big")] == published(d, "big") == [3]
        assert not cstore.verify(d.store).problems
        unharmed(job["pid"])
        _checks_itself(out, 1)
        # (the job, orphaned by the killed daemon, is ours now: killed and reaped here,
        # its zombie would hold the pid the restart takes back)
        os.kill(job["pid"], signal.SIGKILL)
        os.waitpid(job["pid"], 0)
        r = c.restart("big")
        d.procs.track(r["pid"])
    assert r["version"] == 3
    wait(lambda: out.read_text().count("ready") >= 1, 30)
    _checks_itself(out, 1)


def test_checkpoint_timeout_kills_it_harmlessly(cryod: Callable[..., Cryod], build: Any,
                                                tmp_path: Path) -> None:  # fmt: skip
    """--checkpoint-timeout: a checkpoint that has not ended in time is killed (its child,
    and the engine's worker with it) and fails like any other; the target goes on as it
    was, and no version is published."""
    d = cryod("--checkpoint-timeout", "300ms")
    out = tmp_path / "big.txt"
    with d.client() as c:
        job = c.add("slow", cmd=[build("bigmem"), str(out), "384"])
        d.procs.track(job["pid"])
        wait(lambda: "ready" in out.read_text() if out.exists() else False, 30, "bigmem")
        with pytest.raises(CryoError, match=r"did not end within 0\.3 s") as info:
            c.checkpoint("slow")
        assert info.value.exit_code == ExitCode.ERROR
        (last,) = c.history("slow")
        assert (last["status"], last["error"]) == ("failed", "CryoError"), last
        assert c.job("slow")["versions"] == 0 and c.job("slow")["failures"] == 1
    unharmed(job["pid"])
    ticking(out, 30)
    if (Path(d.store) / "slow").exists():
        assert published(d, "slow") == []


# -- restart after a crash, and after a "reboot" -------------------------------------------


def test_job_killed_comes_back(cryod: Callable[..., Cryod], build: Any,
                               tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "counter.txt"
    with d.client() as c:
        job = c.add("phoenix", cmd=[build("counter"), str(out)], restart_on_failure=True,
                    max_restarts=2)  # fmt: skip
        d.procs.track(job["pid"])
        ticking(out)
        assert c.checkpoint("phoenix")["version"] == 1
    os.kill(job["pid"], signal.SIGKILL)
    before = ticks(out)

    def back() -> dict[str, Any] | None:
        j = d.jobs()["phoenix"]
        return j if j["restarts"] == 1 and j["state"] == "running" and not j["busy"] else None

    j = wait(back, 30, "the job restarted")
    d.procs.track(j["pid"])
    assert j["status"] == "killed by SIGKILL"
    ticking(out)
    again = ticks(out)[len(before):]
    # it goes on from where version 1 was taken: back to an earlier tick, then onwards
    assert again[0] <= before[-1] and again[-1] > again[0], (before[-3:], again[:3])
    assert "FAIL" not in out.read_text()
    # a job that exits normally is done, not restarted
    with d.client() as c:
        done = c.add("once", cmd=["/bin/sh", "-c", "sleep 0.3; exit 0"],
                     restart_on_failure=True)  # fmt: skip
        d.procs.track(done["pid"])
    j = wait(lambda: d.jobs()["once"]["state"] != "running" and d.jobs()["once"], 15, "exit")
    assert (j["state"], j["status"], j["restarts"]) == ("exited", "exit 0", 0)


def test_restart_after_reboot(cryod: Callable[..., Cryod], build: Any, procs: Procs,
                              tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "counter.txt"
    with d.client() as c:
        job = c.add("survivor", cmd=[build("counter"), str(out)], restart_on_failure=True)
        procs.track(job["pid"])
        ticking(out)
        c.checkpoint("survivor")
    d.kill()
    procs.kill(job["pid"])  # the machine went down with it
    d.start()
    j = wait(lambda: (j := d.jobs()["survivor"])["restarts"] == 1 and j["state"] == "running"
             and not j["busy"] and j, 30, "the job restarted at start")  # fmt: skip
    procs.track(j["pid"])
    assert j["status"] == "unknown"
    ticking(out)


def deaths(out: Path) -> list[tuple[int, int, int]]:
    """The deathsig victim's lines: (tick, parent-death signals received, ppid)."""
    return [(int(w[1]), int(w[3]), int(w[5])) for w in
            (x.split() for x in out.read_text().splitlines()) if w[:1] == ["tick"]]


def test_restored_job_keeps_its_parent(cryod: Callable[..., Cryod], build: Any,
                                       procs: Procs, tmp_path: Path) -> None:  # fmt: skip
    """A restored job whose process set PR_SET_PDEATHSIG: the kernel signals the death of
    the *thread* that forked it, so the daemon forks restored processes from its main
    thread, which lives as long as it: the thread of a request, or of a restart after a
    failure, may end without the job being told its parent died.  The daemon's own death
    is its parent's (the job is told, as it was set up to be, and goes on here)."""
    d = cryod()
    out = tmp_path / "deathsig.txt"
    v = procs.spawn([build("deathsig"), str(out)], out=out)
    v.wait_line("tick")
    with d.client() as c:
        c.add("heir", pid=v.pid, restart_on_failure=True, max_restarts=3)
        assert c.checkpoint("heir")["version"] == 1
    # its parent (this test) reaps it once the restart has killed it: the restart waits
    # for its pid, held by its zombie till then
    threading.Thread(target=os.waitpid, args=(v.pid, 0), daemon=True).start()
    with d.client() as c:  # a connection of its own: its thread ends when it closes
        r = c.restart("heir")
    procs.track(r["pid"])
    seen = len(deaths(out))  # (the old process was killed before the restart)

    def settled(pid: int, seen: int) -> None:
        """pid ticks as the daemon's child, two seconds after the thread that asked for
        it ended, and was never told its parent died."""
        wait(lambda: len(deaths(out)) > seen, 15, "ticks of the restored job")
        n = deaths(out)[-1][0]
        time.sleep(2.0)
        last = deaths(out)[-1]
        assert last[0] > n + 10 and last[1:] == (0, d.pid), deaths(out)[-3:]
        assert "FAIL" not in out.read_text()
        assert status(pid)["State"][0] in "RS"

    settled(r["pid"], seen)
    # restarted after a failure, by a thread of the scheduler that ends at once
    start = start_time(r["pid"])
    os.kill(r["pid"], signal.SIGKILL)
    # (gone, or already back under the same pid: the restart may take its pid again at once)
    wait(lambda: start_time(r["pid"]) != start, 10, "the job killed")
    seen = len(deaths(out))
    j = wait(lambda: (j := d.jobs()["heir"])["restarts"] == 1 and j["state"] == "running"
             and not j["busy"] and j, 30, "the job restarted")  # fmt: skip
    procs.track(j["pid"])
    settled(j["pid"], seen)
    # the daemon dies: that is its parent's death, signalled; it goes on, and the daemon
    # started again finds it running
    d.kill()
    wait(lambda: deaths(out)[-1][1] >= 1, 15, "the parent's death signalled")
    n = deaths(out)[-1][0]
    wait(lambda: deaths(out)[-1][0] > n + 5, 15, "ticks after the daemon died")
    d.start()
    job = d.jobs()["heir"]
    assert (job["pid"], job["state"], job["restarts"]) == (j["pid"], "running", 1)
    assert "FAIL" not in out.read_text()


# -- staged checkpoints ----------------------------------------------------------------


def test_staged_through_client(cryod: Callable[..., Cryod], build: Any, procs: Procs,
                               tmp_path: Path) -> None:  # fmt: skip
    d = cryod()
    out = tmp_path / "counter.txt"
    v = procs.spawn([build("counter"), str(out)], out=out)
    v.wait_line("tick")
    with d.client() as c:
        job = c.add("staged", pid=v.pid)
        assert job["scope"] == "process"
        c.prepare("staged")
        n = len(ticks(out))
        time.sleep(0.4)
        assert len(ticks(out)) <= n + 1  # frozen
        assert d.jobs()["staged"]["staged"]
        w = c.write("staged")
        assert w["version"] == 1 and w["memory"] > 0
        time.sleep(0.2)
        assert len(ticks(out)) <= n + 1  # still frozen until resumed
        c.resume("staged")
        ticking(out)
        unharmed(v.pid)
        c.prepare("staged")
        c.abort("staged")
        unharmed(v.pid)
        ticking(out)
        assert [x["version"] for x in c.versions("staged")] == [1]
        kinds = [(a["kind"], a["status"]) for a in c.history("staged")]
        assert kinds == [("staged", "ok"), ("staged", "aborted")]
        with pytest.raises(Exception, match="no staged checkpoint"):
            c.resume("staged")
    assert not cstore.verify(d.store).problems
    assert not v.fails()


# -- users who are not root -----------------------------------------------------------------


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    name = f"cryot{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-U", "-s", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        for pid in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(name).pw_uid:
                    os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["userdel", name], check=False)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], check=False)


def as_user(u: pwd.struct_passwd, argv: list[str]) -> int:
    """`cryo ARGV` run by a child that became the user; its exit code.  (Whatever it
    imports is imported here first: the user may not reach the test's Python.)"""
    from cryo.cli import build_parser, main

    build_parser()
    child = os.fork()
    if child == 0:  # pragma: no cover (in the child)
        code = 70
        try:
            os.setgroups([])
            os.setresgid(u.pw_gid, u.pw_gid, u.pw_gid)
            os.setresuid(u.pw_uid, u.pw_uid, u.pw_uid)
            code = main(argv)
        except BaseException as err:
            print(f"as user: {err!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, st = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(st)


def test_process_with_children_needs_a_scope(cryod: Callable[..., Cryod], procs: Procs,
                                             tmp_path: Path) -> None:  # fmt: skip
    """A process with a child added by pid without a scope is refused, naming both
    scopes (its periodic checkpoints would have left the child out); with one it is
    added."""
    d = cryod()
    code = "import os, time\nif os.fork() == 0:\n  time.sleep(600)\ntime.sleep(600)\n"
    v = procs.spawn([sys.executable, "-c", code], out=tmp_path / "out")
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    procs.track(int(Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split()[0]))
    with d.client() as c:
        with pytest.raises(Exception, match=r"has children.*--scope tree"):
            c.add("parent", pid=v.pid)
        assert c.add("parent", pid=v.pid, scope="tree")["scope"] == "tree"


def test_user_manages_own_job_only(cryod: Callable[..., Cryod], build: Any, procs: Procs,
                                   user: pwd.struct_passwd) -> None:  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="cryod-", dir="/tmp"))  # both reach it
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    exe = base / "counter"
    exe.write_bytes(Path(build("counter")).read_bytes())
    os.chmod(exe, 0o755)
    try:
        d = cryod(base=base)
        sock = ["--socket", d.socket]
        root_out = base / "root.txt"
        with d.client() as c:
            rootjob = c.add("rootjob", cmd=[str(exe), str(root_out)])
        procs.track(rootjob["pid"])
        out = home / "mine.txt"
        assert as_user(user, ["job", "add", "mine", *sock, "--", str(exe), str(out)]) == 0
        mine = d.jobs()["mine"]
        procs.track(mine["pid"])
        assert mine["owner"] == user.pw_uid
        assert status(mine["pid"])["Uid"].split() == [str(user.pw_uid)] * 4
        ticking(out)
        assert as_user(user, ["job", "checkpoint", "mine", *sock]) == 0
        assert as_user(user, ["jobs", *sock]) == 0
        # another user's job and process: access denied, exit 4
        for argv in (["job", "checkpoint", "rootjob"], ["job", "restart", "rootjob"],
                     ["job", "rm", "rootjob"], ["job", "show", "rootjob"],
                     ["job", "add", "stolen", "--pid", str(rootjob["pid"])],
                     ["job", "add", "elsewhere", "--store", str(base), "--pid",
                      str(mine["pid"])]):  # fmt: skip
            assert as_user(user, [*argv, *sock]) == ExitCode.ACCESS_DENIED, argv
        assert set(d.jobs()) == {"rootjob", "mine"}
        # the user sees only their job
        child = os.fork()
        if child == 0:  # pragma: no cover
            ok = False
            try:
                os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
                os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
                with Client(d.socket) as c:
                    ok = [j["name"] for j in c.jobs()] == ["mine"]
                    try:
                        c.checkpoint("rootjob")
                        ok = False
                    except AccessDenied:
                        pass
            finally:
                os._exit(0 if ok else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
        # the images are root's, unreadable by others
        st = os.stat(Path(d.store) / "mine")
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700
        # a restart of their own job runs as them, at their nice value (the daemon's
        # own --nice, -10 by default, is neither inherited nor granted)
        assert as_user(user, ["job", "restart", "mine", *sock]) == 0
        again = d.jobs()["mine"]
        procs.track(again["pid"])
        assert status(again["pid"])["Uid"].split() == [str(user.pw_uid)] * 4
        assert os.getpriority(os.PRIO_PROCESS, again["pid"]) == 0
        ticking(out)
        os.setpriority(os.PRIO_PROCESS, again["pid"], -10)  # (root's doing, not theirs)
        with d.client() as c:
            assert c.checkpoint("mine")["version"] == 2
        assert as_user(user, ["job", "restart", "mine", *sock]) == ExitCode.ACCESS_DENIED
        assert d.jobs()["mine"]["pid"] == again["pid"]  # refused before anything was killed
        os.setpriority(os.PRIO_PROCESS, again["pid"], 0)
        ticking(out)
        assert as_user(user, ["job", "rm", "mine", "--kill", *sock]) == 0
        assert set(d.jobs()) == {"rootjob"}
        # root's image restarted on the user's behalf would make them root: refused
        with d.client() as c:
            c.checkpoint("rootjob")
        with pytest.raises(AccessDenied, match="would run as uids"):
            admit_for(d.store, "rootjob", 1, user.pw_uid, user.pw_gid)
    finally:
        d.kill()
        procs.cleanup()
        procs.pids.clear()
        subprocess.run(["rm", "-rf", str(base)], check=False)


# -- the grid agent inside the daemon (cryod --grid) ------------------------------------------


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server missing")
def test_grid_agent_inside_the_daemon(cryod: Callable[..., Cryod], build: Any, procs: Procs,
                                      etcd: str, tmp_path: Path) -> None:  # noqa: F811
    """`cryod --grid URL --host NAME`: the daemon registers its host in a real etcd (its
    agent a child it supervises), runs the part of a grid application assigned to it
    and takes part in a global checkpoint; an agent that dies is started again; the
    daemon stopped takes its host out of the grid at once (the lease revoked)."""
    from cryo.grid import keys as K
    from cryo.grid.etcd import Etcd

    e = Etcd(etcd)
    gstore = tmp_path / "grid"
    d = cryod("--grid", etcd, "--host", "hx", "--grid-store", str(gstore), "--grid-lease", "2")

    def registered() -> dict[str, Any] | None:
        rec = e.get(K.host("hx"))
        if rec is None or gone(rec["pid"]):
            return None
        return rec if status(rec["pid"])["PPid"] == str(d.pid) else None

    rec = wait(registered, 30, "host hx registered by the daemon's agent")
    procs.track(rec["pid"])
    with d.client() as c:
        grid = c.ping()["grid"]
    assert (grid["host"], grid["agent_pid"], grid["starts"]) == ("hx", rec["pid"], 1)
    # a grid application of one part, on this host: the daemon's agent starts it
    out = tmp_path / "part-{part}.txt"
    r = subprocess.run([sys.executable, "-m", "cryo", "grid", "run", "--etcd", etcd, "--app",
                        "solo", "--hosts", "hx", "--store", str(gstore), "--",
                        build("counter"), str(out)],
                       capture_output=True, text=True, timeout=90)  # fmt: skip
    assert r.returncode == 0, r.stderr
    part = e.get(K.part("solo", 0))
    assert part is not None and part["state"] == "running", part
    procs.track(part["pid"])
    ticking(tmp_path / "part-0.txt")
    r = subprocess.run([sys.executable, "-m", "cryo", "grid", "checkpoint", "--etcd", etcd,
                        "solo"], capture_output=True, text=True, timeout=90)  # fmt: skip
    assert r.returncode == 0 and "global version 1 committed" in r.stdout, r.stderr
    assert (gstore / "solo" / "v1" / "part0").is_dir()
    ticking(tmp_path / "part-0.txt")
    unharmed(part["pid"])
    # the agent killed: the daemon starts another once the old lease expired
    os.kill(rec["pid"], signal.SIGKILL)
    again = wait(lambda: (x := registered()) and x["pid"] != rec["pid"] and x, 30,
                 "the agent started again")  # fmt: skip
    procs.track(again["pid"])
    # the daemon stopped (SIGTERM): its agent leaves the grid at once
    os.kill(d.pid, signal.SIGTERM)
    # (its agent has 10 s to leave, then its supervising thread 10 s more: under a full
    # CI run's load 30 s was once not enough)
    wait(lambda: gone(d.pid), 60, "the daemon stopped")
    wait(lambda: gone(again["pid"]), 15, "its agent stopped")
    assert e.get(K.host("hx")) is None  # (revoked: the lease is 2 s, well before it ended)
    ticking(tmp_path / "part-0.txt")  # the part goes on
