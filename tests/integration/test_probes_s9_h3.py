"""Kernel-visible state probed in session 9 by h3 (issue 9, docs/state-coverage.md:
"found by probing, session 9 (h3)"): victims/probes_s9h3.c sets one piece of state per
mode (in the main thread and, where the kernel keeps it per thread, in a second one), is
checkpointed, killed and restarted, and checks itself every round ("ok N", or "FAIL
what"); what cannot be restored is refused (exit 9 naming it), the target untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.errors import ExitCode
from tests.conftest import Procs, Victim, run_cryo, spawn_mode
from tests.integration.test_procstate import build_threaded, cycle

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("probes_s9h3"), "probes_s9h3")


STATE = {
    "thpadvised": "PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED (Linux 6.18):"
                  " came back as a plain PR_SET_THP_DISABLE (1, not 3), exit 0",
    "dumpable0": "PR_SET_DUMPABLE 0",
    "comm": "each thread's own name, one set with PR_SET_NAME, one through"
            " /proc/self/task/TID/comm",
    "zmm": "AVX-512: zmm16-31 and k1-k7 of each thread, caught in a raw nanosleep",
    "ghostflags": "a deleted file's inode flags (append-only, no-dump, no-atime): came back"
                  " without them, exit 0",
    "mdwe": "PR_SET_MDWE with PR_MDWE_NO_INHERIT",
    "slice": "a custom time slice of SCHED_OTHER (sched_runtime) of each thread",
    "timeroneshot": "a one-shot POSIX timer's signal pending (blocked): taken once after go,"
                    " SI_TIMER with its id and no overrun, no other",
    "dirpos": "directories (ext4 and tmpfs) read half way with getdents64: the rest, once",
    "secbits": "SECBIT_EXEC_RESTRICT_FILE and SECBIT_EXEC_DENY_INTERACTIVE (Linux 6.14) in"
               " one thread only",
}
# after the restart, go: the line a mode writes once its last step is right
LAST_STEP = {"timeroneshot": "oneshot taken", "dirpos": "dirdone"}


@pytest.mark.parametrize("mode", sorted(STATE))
def test_state_restored(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """Each STATE mode's state is the same after the restart, checked by the process
    itself every round, in both threads."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    try:
        v = cycle(procs, v, tmp_path / "img")
        v.wait_ok_after(max(v.oks()) + 2)
        if mode in LAST_STEP:
            (tmp_path / "go").touch()
            v.wait_line(LAST_STEP[mode])
            v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails()
    finally:  # (dirpos: its directory in /dev/shm, the machine's)
        shutil.rmtree(f"/dev/shm/probes_s9h3.{v.pid}", ignore_errors=True)


def test_layout_of_a_process_without_address_randomization(
    procs: Procs, exe: str, tmp_path: Path
) -> None:
    """ADDR_NO_RANDOMIZE (setarch -R, gdb's inferiors and their children): the kernel
    lays out a process's address space at exec (mmap_base), without randomization
    here, so that a new mmap(NULL) lands where it did before.  Restored, the process is
    a child of cryo, never exec'd: its personality said ADDR_NO_RANDOMIZE, but its
    mmap_base was cryo's, randomized, and mmap(NULL) landed elsewhere (exit 0).  Now it
    is exec'd for its layout first (engine/execlayout.py; test_probes_s10_h2.py)."""
    v = cycle(procs, spawn_mode(procs, exe, tmp_path, "norandmap"), tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)


@pytest.mark.parametrize("mode", ["timerpend", "timerpendstd"])
def test_periodic_timer_with_its_signal_pending_refused(
    procs: Procs, exe: str, tmp_path: Path, mode: str
) -> None:
    """A periodic CLOCK_MONOTONIC POSIX timer whose signal is blocked and pending (a
    real-time one, and SIGUSR1): the count of periods it keeps while its signal waits
    is not shown.  Restored, the signal came back queued by cryo next to the re-armed
    timer's own (two pending at once, the periods before the checkpoint lost: exit 0);
    now exit 9 naming the timer, no image, and the process goes on: after go it takes
    the signal once, the periods it counts matching the time gone by."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "periodic POSIX timer" in r.stderr and "pending" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    (tmp_path / "go").touch()
    v.wait_line("timer taken")
    v.wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()


def test_process_sharing_its_memory_with_its_parent_outside_refused(
    procs: Procs, exe: str, tmp_path: Path
) -> None:
    """A child made with clone(CLONE_VM) (no CLONE_THREAD) checkpointed alone, its parent
    outside writing the memory they share: restored, it had a memory of its own and the
    parent's count no longer reached it, exit 0 (only a parent inside the checkpoint was
    compared).  Now exit 9 naming the parent, no image, and the child still sees the
    count move."""
    out = tmp_path / "out.txt"
    parent = procs.spawn([exe, str(out), "vmchild", str(tmp_path)], out)
    kid = int(parent.wait_line("child ").split()[1])
    procs.track(kid)
    v = Victim(kid, out)
    v.wait_ok_after(1)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(kid), "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert f"shares its address space with its parent {parent.pid}" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()


def test_a_program_that_single_steps_itself_gets_no_trap_from_a_checkpoint(
    procs: Procs, exe: str, tmp_path: Path
) -> None:
    """A thread that single-steps itself (EFLAGS.TF, a SIGTRAP handler counting) through
    stretches of 200 nops, checkpointed six times while it runs: each checkpoint gave it
    one trap more than its instructions (the calls cryo injects ran with its trap flag
    set), exit 0.  Now none more, and none less (a trap lost now and then: fixed in
    session 10, test_probes_s10_h8::test_a_thread_single_stepping_itself_loses_no_trap)."""
    v = spawn_mode(procs, exe, tmp_path, "selfstep")
    for i in range(6):
        checkpoint(v.pid, str(tmp_path / f"img{i}"))
        n = max(v.oks()) + 2
        v.wait_for(lambda _, n=n: max(v.oks()) > n)
    wrong = [x for x in v.fails() if x.startswith("FAIL a stretch gave")]
    assert not wrong, wrong


def test_absolute_sleep_on_a_cpu_clock_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A thread in clock_nanosleep(CLOCK_PROCESS_CPUTIME_ID, TIMER_ABSTIME): the process's
    CPU clocks start again from 0 at a restart, so the sleep run again with its deadline
    would last the CPU time used before the checkpoint too (restored so, exit 0).  Now
    exit 9 naming it, no image, the thread still asleep."""
    v = spawn_mode(procs, exe, tmp_path, "cpusleep")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "CPU-time clock" in r.stderr and "TIMER_ABSTIME" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
