"""Incremental checkpoints into a store, with real processes: a victim changes a known
part of its memory each generation (tests/victims/incr.c) and checks every byte of it
on demand; it is checkpointed after each generation, killed, and restarted from the
latest and from older versions, before and after gc."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash

from cryo import store
from cryo.store import retention
from tests.conftest import Procs, Victim, gone, reap, run_cryo

MIB = 16


class Incr:
    """The incr victim: generation changes and checks, and its memory read from outside."""

    def __init__(self, v: Victim) -> None:
        self.v = v
        ready = v.wait_line("ready", timeout=30).split()
        self.addr, self.size = int(ready[2], 16), int(ready[3])

    @property
    def pid(self) -> int:
        return self.v.pid

    def _wait(self, want: str, start: int, timeout: float = 30) -> None:
        lines = self.v.wait_for(lambda ls: any(x == want or x.startswith("FAIL")
                                               for x in ls[start:]), timeout)  # fmt: skip
        fails = [x for x in lines[start:] if x.startswith("FAIL")]
        assert not fails, fails

    def next(self, gen: int) -> None:
        start = len(self.v.lines())
        os.kill(self.pid, signal.SIGUSR1)
        self._wait(f"gen {gen}", start)

    def check(self, gen: int) -> None:
        """The process checks every byte it holds against generation ``gen``."""
        start = len(self.v.lines())
        os.kill(self.pid, signal.SIGUSR2)
        self._wait(f"ok {gen}", start, timeout=60)

    def digest(self) -> str:
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(self.addr)
            return xxhash.xxh3_128_hexdigest(f.read(self.size))

    def restarted(self, pid: int) -> Incr:
        new = Incr.__new__(Incr)
        new.v, new.addr, new.size = Victim(pid, self.v.out), self.addr, self.size
        return new


def spawn(procs: Procs, build: Any, tmp_path: Path, mib: int = MIB, permille: int = 20,
          name: str = "out") -> Incr:  # fmt: skip
    mapped = tmp_path / "mapped.bin"
    if not mapped.exists():  # (versions of an earlier victim map it: leave it as it was)
        mapped.write_bytes(b"F" * 8 * 4096)
    out = tmp_path / f"{name}.txt"
    v = procs.spawn([build("incr"), str(out), str(mib), str(permille), str(mapped)], out)
    return Incr(v)


def restart(procs: Procs, victim: Incr, st: str, version: int | None) -> Incr:
    r = store.restart(st, "app", version)
    procs.track(r.pid)
    return victim.restarted(r.pid)


@pytest.mark.parametrize("track", [True, False], ids=["tracked", "hashed"])
def test_versions_restart_latest_and_older(procs: Procs, build: Any, tmp_path: Path,
                                           track: bool) -> None:  # fmt: skip
    """With the engine's write tracking, and with every page hashed."""
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path)
    digests = {}
    for gen in range(5):
        if gen:
            v.next(gen)
        version, r = store.checkpoint(v.pid, st, "app", track=track)
        assert version == gen + 1
        assert r.path == os.path.join(st, "app", f"v{version}")
        digests[version] = v.digest()
    info = store.describe(st)[0]["versions"]
    full = info[0]["new"]
    assert full >= MIB << 20
    for x in info[1:]:
        # about 2% of the big region changes, plus the small regions' pages
        assert x["new"] < 0.06 * full, x
        assert x["needs"] and x["needs"][0] == 1
    v.check(4)
    reap(v.pid)
    # the latest: every byte, and it goes on changing and checkpointing
    w = restart(procs, v, st, None)
    assert w.pid == v.pid
    w.check(4)
    assert w.digest() == digests[5]
    w.next(5)
    w.check(5)
    version, _ = store.checkpoint(w.pid, st, "app", track=track)
    assert version == 6
    assert store.describe(st)[0]["versions"][-1]["new"] < 0.06 * full
    reap(w.pid)
    # older versions: pages from every version before them
    for version, gen in ((2, 1), (1, 0), (4, 3), (6, 5)):
        w = restart(procs, v, st, version)
        w.check(gen)
        if version in digests:
            assert w.digest() == digests[version]
        reap(w.pid)
    assert not store.verify(st).problems


def test_cli_ls_verify_gc_and_restart(procs: Procs, build: Any, tmp_path: Path) -> None:
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path, mib=32, permille=300)  # heavy churn
    digests = {}
    for gen in range(6):
        if gen:
            v.next(gen)
        r = run_cryo("checkpoint", str(v.pid), "--store", st, "--app", "app")
        assert r.returncode == 0, r.stderr
        assert f"app version {gen + 1}" in r.stderr
        digests[gen + 1] = v.digest()
    reap(v.pid)
    r = run_cryo("store", "ls", st)
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("app ")]
    assert [row[1] for row in rows] == ["1", "2", "3", "4", "5", "6", "total"]
    assert rows[2][-1] == "1,2"  # version 3 reads pages of versions 1 and 2
    r = run_cryo("store", "verify", st)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    r = run_cryo("store", "gc", st, "--keep-last", "2", "--keep-every", "3", "--dry-run")
    assert r.returncode == 0 and "would delete" in r.stdout
    assert store.describe(st)[0]["versions"][0]["version"] == 1
    r = run_cryo("store", "gc", st, "--keep-last", "2", "--keep-every", "3")
    assert r.returncode == 0, r.stderr
    # the files of 1, 2 and 4 are still mostly read: left in place, nothing copied
    assert "kept 3, 5, 6; delete none; retire 1, 2, 4" in r.stdout, r.stdout
    assert "copy" not in r.stdout, r.stdout
    kept = [x["version"] for x in store.describe(st)[0]["versions"] if not x["retired"]]
    assert kept == [3, 5, 6]
    assert run_cryo("store", "verify", st).returncode == 0

    def check(version: int) -> None:
        r = run_cryo("restart", "--store", st, "--app", "app", "--version", str(version),
                     "--detach")  # fmt: skip
        assert r.returncode == 0, r.stderr
        w = v.restarted(procs.track(int(r.stdout)))
        w.check(version - 1)
        assert w.digest() == digests[version]
        reap(w.pid)

    for version in (3, 5, 6):
        check(version)
    # keeping only 6, the dead pages outnumber the live ones: gc compacts (copies)
    r = run_cryo("store", "gc", st, "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    assert "kept 6;" in r.stdout and "copy" in r.stdout, r.stdout
    assert run_cryo("store", "verify", st).returncode == 0
    (rep,) = store.gc(st, keep_last=1, dry_run=True)
    assert rep.stored <= 2 * rep.live + retention.SLACK, rep
    check(6)
    r = run_cryo("restart", "--store", st, "--app", "app", "--version", "2", "--detach")
    assert r.returncode == 7, r.stderr
    assert "no version 2" in r.stderr


def test_gc_retires_a_big_version_kept_versions_read(procs: Procs, build: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path, mib=32, permille=5)
    for gen in range(4):
        if gen:
            v.next(gen)
        store.checkpoint(v.pid, st, "app")
    (r,) = store.gc(st, keep_last=1)
    assert r.kept == [4] and 1 in r.retired  # 32 MiB mostly still read: left in place
    reap(v.pid)
    w = restart(procs, v, st, None)
    w.check(3)
    assert not store.verify(st).problems


def test_gc_after_each_version_copies_no_page(procs: Procs, build: Any,
                                              tmp_path: Path) -> None:  # fmt: skip
    """The daemon's way: gc keep 3 after every version of a job changing a few pages.
    The files of the versions that go stay in place while kept versions read them (no
    page is read or copied), and the kept versions restart exactly."""
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path, permille=20)
    digests = {}
    for gen in range(8):
        if gen:
            v.next(gen)
        version, _ = store.checkpoint(v.pid, st, "app")
        digests[version] = v.digest()
        (r,) = store.gc(st, keep_last=3)
        assert r.kept == list(range(max(1, version - 2), version + 1)), r
        assert not r.merged, r  # nothing copied
        assert r.retired == ([version - 3] if version > 3 else []), r
        assert r.stored <= 2 * r.live + retention.SLACK, r
    reap(v.pid)
    listed = [x["version"] for x in store.describe(st)[0]["versions"] if not x["retired"]]
    assert listed == [6, 7, 8]
    assert not store.verify(st).problems
    for version in (6, 8):
        w = restart(procs, v, st, version)
        w.check(version - 1)
        assert w.digest() == digests[version]
        reap(w.pid)


def corrupt(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


def test_bad_input_and_damage(procs: Procs, build: Any, tmp_path: Path) -> None:
    st = tmp_path / "store"
    v = spawn(procs, build, tmp_path, mib=4)
    store.checkpoint(v.pid, str(st), "app")
    v.next(1)
    store.checkpoint(v.pid, str(st), "app")
    pid = v.pid
    reap(pid)

    def cryo(*args: str) -> tuple[int, str]:
        r = run_cryo(*args)
        return r.returncode, r.stderr

    assert cryo("restart", "--store", str(st), "--app", "nope")[0] == 7
    assert cryo("restart", "--store", str(st), "--app", "app", "--version", "9")[0] == 7
    assert cryo("restart", "--store", str(tmp_path / "none"), "--app", "app")[0] == 7
    assert cryo("store", "ls", str(tmp_path))[0] == 7  # not a store
    assert cryo("store", "verify", str(tmp_path / "none"))[0] == 7
    assert cryo("store", "gc", str(st), "--keep-last", "0")[0] == 1
    assert cryo("restart", "--store", str(st), "--app", "a/b")[0] == 1
    assert cryo("checkpoint", str(os.getpid()), "--process", "--store", str(st), "--app",
                "app", "--compress")[0] == 1  # fmt: skip (--process: we have children)
    # bad command lines exit 2, as the README's table says (issue 12)
    assert cryo("restart", "-D", str(st), "--version", "1")[0] == 2
    assert cryo("restart", "--store", str(st))[0] == 2  # --app missing
    assert cryo("checkpoint", "999999999", "--store", str(st), "--app", "app")[0] == 3
    assert sorted(os.listdir(st / "app")) == [".lock", "v1", "v2"]
    # a page version 2 reads from version 1, damaged
    corrupt(st / "app" / "v1" / "pages.img", 4096 * 3 + 17)
    code, err = cryo("store", "verify", str(st))
    assert code == 5 and "checksum mismatch" in err, err
    code, err = cryo("restart", "--store", str(st), "--app", "app", "--detach")
    assert code == 5, err
    assert not os.path.exists(f"/proc/{pid}"), "nothing may be created from a damaged store"
    corrupt(st / "app" / "v1" / "pages.img", 4096 * 3 + 17)
    assert cryo("store", "verify", str(st))[0] == 0
    corrupt(st / "app" / "v2" / "pmap.img", 30)
    assert cryo("store", "verify", str(st))[0] == 5
    assert cryo("restart", "--store", str(st), "--app", "app", "--detach")[0] == 5
    # a damaged latest version: the next checkpoint is full (and says so)
    w = spawn(procs, build, tmp_path, mib=4, name="second")
    version, r = store.checkpoint(w.pid, str(st), "app")
    assert version == 3 and any("damaged" in x for x in r.warnings)
    assert store.describe(str(st))[0]["versions"][-1]["needs"] == []
    (st / "app" / "v1" / "core.img").write_bytes(b"junk")
    assert cryo("restart", "--store", str(st), "--app", "app", "--version", "1")[0] == 5


@pytest.mark.timeout(180)
def test_checkpoint_killed_at_random_points(procs: Procs, build: Any, tmp_path: Path) -> None:
    """SIGKILL to `cryo checkpoint --store` anywhere: the store stays consistent, every
    version published before stays as it was, and the next checkpoint works.

    (Should the kill leave the target dead, which is the engine's "do no harm" to keep
    and tests/integration/test_harm.py's to test, a new one takes its place.)"""
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path, mib=64, permille=20)
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    t = time.perf_counter()
    r = run_cryo("checkpoint", str(v.pid), "--store", st, "--app", "app")
    full = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    holds = {1: (v, 0)}  # version -> (process, generation it holds)
    gen = 0
    kills = 0
    for i in range(12):
        if i % 3 == 0:
            gen += 1
            v.next(gen)
        before = store.describe(st)[0]["versions"]
        delay = rnd.uniform(0.05, full * 1.1)
        p = procs.spawn([*_cryo(), "checkpoint", str(v.pid), "--store", st, "--app", "app"])
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        reap(p.pid)
        after = store.describe(st)[0]["versions"]
        published = [x["version"] for x in after]
        assert published[: len(before)] == [x["version"] for x in before]
        assert len(after) <= len(before) + 1
        for x, y in zip(before, after, strict=False):
            assert (x["new"], x["memory"]) == (y["new"], y["memory"])
        if len(after) > len(before):
            holds[published[-1]] = (v, gen)
        else:
            kills += 1
        assert not store.verify(st).problems
        if gone(v.pid):  # harmed by the engine, not by the store: carry on with another
            reap(v.pid)
            v, gen = spawn(procs, build, tmp_path, mib=64, permille=20, name=f"out{i}"), 0
            continue
        v.check(gen)  # the target goes on untouched
    assert kills, "no kill landed during a checkpoint"
    last, _ = store.checkpoint(v.pid, st, "app")
    holds[last] = (v, gen)
    assert not any(n.startswith(".v") for n in os.listdir(os.path.join(st, "app")))
    for x, _ in holds.values():
        reap(x.pid)
    for version in [*sorted(holds)[:: max(1, len(holds) // 4)], last]:
        x, g = holds[version]
        w = restart(procs, x, st, version)
        w.check(g)
        reap(w.pid)


@pytest.mark.timeout(180)
def test_gc_killed_at_random_points(procs: Procs, build: Any, tmp_path: Path) -> None:
    """SIGKILL to `cryo store gc` anywhere: the versions it keeps stay restorable."""
    st = str(tmp_path / "store")
    v = spawn(procs, build, tmp_path, mib=32, permille=300)
    for gen in range(8):
        if gen:
            v.next(gen)
        store.checkpoint(v.pid, st, "app")
    reap(v.pid)
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    for keep in (6, 4, 3, 2):
        p = procs.spawn([*_cryo(), "store", "gc", st, "--keep-last", str(keep)])
        time.sleep(rnd.uniform(0.1, 0.8))
        os.kill(p.pid, signal.SIGKILL)
        reap(p.pid)
        assert not store.verify(st).problems
        published = [x["version"] for x in store.describe(st)[0]["versions"]
                     if not x["retired"]]  # fmt: skip
        assert published[-keep:] == list(range(9 - keep, 9))
        w = restart(procs, v, st, published[0])
        w.check(published[0] - 1)
        reap(w.pid)
    store.gc(st, keep_last=2)
    assert [x["version"] for x in store.describe(st)[0]["versions"]
            if not x["retired"]] == [7, 8]  # fmt: skip
    for version in (7, 8):
        w = restart(procs, v, st, version)
        w.check(version - 1)
        reap(w.pid)


def _cryo() -> list[str]:
    return [sys.executable, "-m", "cryo"]
