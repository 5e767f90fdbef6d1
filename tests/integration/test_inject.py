"""Injected system calls in batches (Injector.batch, the routine of batch.S), in a real
stopped process: results as single calls give them, errors named, results of earlier
calls as arguments, batches longer than one run, one stop per run; and the target goes
on as it was afterwards, or when its tracer dies in the middle of a batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import textscan
from cryo.engine.inject import BATCH_MAX, Injector, SyscallError
from cryo.engine.ptrace import Tracee
from cryo.linux.consts import SYS
from tests.conftest import Procs, Victim


@pytest.fixture
def held(procs: Procs, build: Any, tmp_path: Path) -> Iterator[tuple[Victim, Injector]]:
    """A counter, seized, with a scratch mapping; let go again (and checked) after."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    t = Tracee.seize(v.pid)
    inj = Injector(t, textscan.find_syscall(v.pid))
    inj.map_scratch()
    try:
        yield v, inj
    finally:
        inj.unmap_scratch()
        inj.finish()
        t.park()
        t.detach()
    assert Path(f"/proc/{v.pid}/maps").read_text() == maps
    v.wait_ok_after(max(v.oks()) + 1)
    assert not v.fails()


def test_batch_gives_what_single_calls_give(held: tuple[Victim, Injector]) -> None:
    v, inj = held
    assert inj.routine(), "the scratch mapping is executable: the routine runs"
    stops = inj.stops
    with inj.batch() as b:
        acts = b.reserve(64 * 32)
        calls = [b.call(SYS.rt_sigaction, sig, 0, acts + 32 * (sig - 1), 8)
                 for sig in range(1, 65) if sig not in (9, 19)]  # fmt: skip
        pid = b.call(SYS.getpid)
    assert inj.stops - stops == 1, "64 calls, one stop"
    assert b.result(pid) == v.pid
    assert all(b.result(i) == 0 for i in calls)
    batched = b.read(acts, 64 * 32)
    inj.batching = False  # the same, one call at a time by single steps
    inj.routine()
    inj._routine = 0
    single = bytearray(64 * 32)
    for sig in range(1, 65):
        if sig not in (9, 19):
            inj(SYS.rt_sigaction, sig, 0, inj.scratch, 8)
            single[32 * (sig - 1) : 32 * sig] = inj.read(inj.scratch, 32)
    assert batched == bytes(single)
    inj._routine = None
    inj.batching = True


def test_batch_errors_refs_and_length(held: tuple[Victim, Injector]) -> None:
    v, inj = held
    fds = set(os.listdir(f"/proc/{v.pid}/fd"))
    with inj.batch() as b:  # an fd opened, used and closed by reference
        fd = b.call(SYS.open, b.put_str("/dev/null"), os.O_RDONLY)
        st = b.call(5, b.ref(fd), b.reserve(144))  # fstat
        bad = b.call(SYS.close, 987654, may_fail=True)
        b.call(SYS.close, b.ref(fd))
    assert b.result(fd) >= 0 and b.result(st) == 0 and b.result(bad) == -9  # EBADF
    assert set(os.listdir(f"/proc/{v.pid}/fd")) == fds
    # the failing call named, and the calls after it not run
    with pytest.raises(SyscallError, match=r"close in pid \d+ the second"), inj.batch() as b:
        b.call(SYS.close, 987654, what=" the second")
        b.call(32, 0)  # dup
    assert set(os.listdir(f"/proc/{v.pid}/fd")) == fds
    stops = inj.stops
    n = 2 * BATCH_MAX + 7
    with inj.batch() as b:  # longer than one run; a reference across runs
        first = b.call(SYS.getpid)
        ids = [b.call(SYS.getppid) for _ in range(n)]
        last = b.call(121, b.ref(first))  # getpgid
    assert inj.stops - stops == 3
    ppid = int(Path(f"/proc/{v.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert {b.result(i) for i in ids} == {ppid}
    assert b.result(last) == os.getpgid(v.pid)
    assert inj(SYS.getpid) == v.pid  # a single call is a batch of one


_DIE_MID_BATCH = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[3])
from cryo.engine import textscan
from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee
from cryo.linux.consts import SYS
pid, when = int(sys.argv[1]), sys.argv[2]
t = Tracee.seize(pid)
inj = Injector(t, textscan.find_syscall(pid))
if when in ("entry", "exit"):  # in the guarded mmap of the scratch (engine/guard.py)
    from cryo.engine import guard
    from cryo.engine.ptrace import libc as L, PTRACE
    assert guard.find_chain(pid), "no guard chain"
    def die(t):
        if when == "entry":
            L.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
            t.wait_stop()
        else:
            real(t)
        print(0, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    real, guard._entry_to_exit = guard._entry_to_exit, die
inj.map_scratch()
print(inj.scratch, flush=True)
if when == "stopped":  # in the stop at the end of a batch, its registers not yet back
    setregs = t.setregs
    t.setregs = lambda regs: None if regs is inj.saved else setregs(regs)  # type: ignore
    with inj.batch() as b:
        for _ in range(100):
            b.call(SYS.getppid)
else:  # while the routine runs: a batch of sleeps
    with inj.batch() as b:
        for _ in range(20):
            b.call(SYS.nanosleep, b.put(bytes(8) + (50_000_000).to_bytes(8, "little")), 0)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("when", ["running", "stopped", "entry", "exit"])
def test_tracer_dies_in_a_batch(procs: Procs, build: Any, tmp_path: Path, when: str) -> None:
    """The tracer killed while the routine runs, or in its stop: the target runs the rest
    of the batch, discards its stop signal and goes back to where it was (only the
    scratch mapping is left).  Or in the one call that is not in a batch, the mmap of
    the scratch mapping, at its syscall-entry or -exit stop: the target goes through
    rt_sigreturn back to where it was (engine/guard.py)."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    p = subprocess.Popen([sys.executable, "-c", _DIE_MID_BATCH, str(v.pid), when,
                          str(Path(__file__).parents[2] / "src")],
                         stdout=subprocess.PIPE, close_fds=True)  # fmt: skip
    scratch = int(p.stdout.readline()) if p.stdout else 0
    if when == "running":
        time.sleep(0.3)
        assert "TracerPid:\t0\n" not in Path(f"/proc/{v.pid}/status").read_text()
        p.kill()
    p.wait(timeout=30)
    if p.stdout:
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    time.sleep(0.2)
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    assert "TracerPid:\t0\n" in Path(f"/proc/{v.pid}/status").read_text()
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    assert scratch == 0 or f"{scratch:x}-" in maps
    if scratch == 0:  # the mmap ran once cryo was gone: one anonymous 64 KiB mapping more
        assert any(line.split()[-1] == "0" and int(line.split()[0].split("-")[1], 16)
                   - int(line.split()[0].split("-")[0], 16) == 65536 and "rwxp" in line
                   for line in maps.splitlines())  # fmt: skip


def test_together_starts_a_run_and_results_are_kept(held: tuple[Victim, Injector]) -> None:
    """Calls queued ``together`` are not cut by the end of a run (they begin the next
    one); what a batch's calls wrote in the scratch area is read as they left it, even
    after a later batch wrote over the same bytes."""
    v, inj = held
    stops = inj.stops
    with inj.batch() as b:
        ppids = [b.call(SYS.getppid) for _ in range(BATCH_MAX - 3)]
        with b.together():
            pids = [b.call(SYS.getpid) for _ in range(10)]
        act = b.reserve(32)
        b.call(SYS.rt_sigaction, signal.SIGTERM, 0, act, 8)
    assert inj.stops - stops == 2, "the ten together in the second run, not cut after 3"
    assert {b.result(i) for i in pids} == {v.pid} and len({b.result(i) for i in ppids}) == 1
    first = b.read(act, 32)
    b.run(keep=True)  # (the drivers' batches: session._queued)
    with inj.batch() as b2:
        b2.put(b"\xff" * 64)  # the same bytes of the scratch area
        b2.call(SYS.getpid)
    assert inj.read(act, 32) == b"\xff" * 32
    assert b.read(act, 32) == first != b"\xff" * 32


def test_one_batch_for_every_driver(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The drivers' calls for a one-thread process run in one batch (issue 14: they
    were ten, one or two per driver): two runs of the routine, two stops, for its ~116
    calls (BATCH_MAX a run), and the process goes on."""
    from cryo.engine import inject
    from cryo.engine.dump import checkpoint

    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    before = dict(inject.STATS)
    checkpoint(v.pid, str(tmp_path / "img"), worker=False)
    got = {k: inject.STATS[k] - before[k] for k in before}
    assert got["batches"] <= 2, got
    assert got["batched_calls"] > 60, got  # (the signals' actions alone are 62)
    v.wait_ok_after(max(v.oks()) + 1)
    assert not v.fails()


def test_a_queue_hook_takes_a_second_round(procs: Procs, build: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A queue hook whose next call needs an earlier result queues it in the batch its
    yield returns (drivers.py): the session runs a second round for it, the other
    drivers' calls having run in the first; a thread hook's result goes to THRD."""
    from cryo.engine import drivers as D
    from cryo.engine import inject
    from cryo.engine.dump import checkpoint

    seen: dict[str, Any] = {}

    def twice(ctx: Any, b: Any) -> Any:
        pid = b.call(SYS.getpid)
        nb = yield
        seen["first"] = b.result(pid)
        pgid = nb.call(121, b.result(pid))  # getpgid(its own pid)
        yield
        seen["second"] = nb.result(pgid)

    def per_thread(ctx: Any, t: Any, b: Any) -> Any:
        tid = b.call(186)  # gettid
        yield
        seen.setdefault("tids", []).append(b.result(tid))
        return {}

    extra = D.Driver("test-rounds", queue=twice, queue_thread=per_thread)
    monkeypatch.setattr(D, "DRIVERS", (*D.DRIVERS, extra))
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    before = inject.STATS["batches"]
    checkpoint(v.pid, str(tmp_path / "img"), worker=False)
    assert seen == {"first": v.pid, "second": os.getpgid(v.pid), "tids": [v.pid]}
    assert inject.STATS["batches"] - before <= 3  # the first round's two runs, the second
    v.wait_ok_after(max(v.oks()) + 1)
    assert not v.fails()
