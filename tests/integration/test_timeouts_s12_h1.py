"""A timed call interrupted by a checkpoint ends at its first deadline (issue 9, session
12 h1; engine/restartblock.py), in a target that goes on after the checkpoint and in one
restarted after --kill (the time away not counted for a relative timeout; an absolute one
ends at its instant).  rt_sigtimedwait, semtimedop and epoll_pwait2 keep their relative
timeout in a timespec of the program's memory that the kernel never writes back: before,
they waited their whole 3 s again (4.5 s in all, caught 1.5 s in).  The other calls of
the audit (design.md) are checked the same way: ppoll, pselect6, select (the kernel
writes the time left back), poll, nanosleep with and without rem, clock_nanosleep,
FUTEX_WAIT (restart block), clock_nanosleep TIMER_ABSTIME and FUTEX_WAIT_BITSET
(absolute: the same deadline); sigtimedwait without a timeout has nothing to keep and
still takes its signal.  A checkpoint refused after the freeze (a POSIX message queue,
which cryo refuses: mq_timedreceive's case too) leaves each call its deadline
(victims/timeouts_s12_h1.c)."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.engine.session import CheckpointSession
from cryo.errors import Unsupported
from cryo.image.reader import Image
from cryo.linux import bpf
from tests.conftest import Procs, Victim, reap, restart_later, run_cryo

pytestmark = pytest.mark.timeout(120)
DONE = r"done (\S+) ret=(-?\d+) errno=(\d+) ms=(\d+)"
# mode -> (absolute deadline?, ret, errno) of the call when its time is up
MODES = {
    "sigtimedwait": (False, -1, errno.EAGAIN), "semtimedop": (False, -1, errno.EAGAIN),
    "epoll_pwait2": (False, 0, 0), "ppoll": (False, 0, 0), "pselect6": (False, 0, 0),
    "select": (False, 0, 0), "poll": (False, 0, 0), "nanosleep": (False, 0, 0),
    "nanosleep_rem": (False, 0, 0), "clock_nanosleep": (False, 0, 0),
    "futex": (False, -1, errno.ETIMEDOUT), "clock_nanosleep_abs": (True, 0, 0),
    "futex_abs": (True, -1, errno.ETIMEDOUT), "io_getevents": (False, 0, 0),
    "io_pgetevents": (False, 0, 0),
}  # fmt: skip
RESULTS = {**MODES, "epoll_wait": (False, 0, 0), "mq_timedreceive": (True, -1, errno.ETIMEDOUT),
           "io_uring_enter": (False, -1, errno.ETIME)}
# (kept by session 12 h1: their timeout a timespec the kernel never writes back)
FIXED = ("sigtimedwait", "semtimedop", "epoll_pwait2", "io_getevents", "io_pgetevents")
# calls whose time left only a BPF iterator reads (the others need none)
NEEDS_BPF = (*FIXED, "epoll_wait", "poll", "nanosleep", "clock_nanosleep", "futex")


def _bpf_or_skip(mode: str) -> None:
    if mode not in NEEDS_BPF:
        return
    try:
        bpf.need("iter_task", "task.stack", "sym.hrtimer_wakeup")
    except (bpf.Unavailable, AttributeError) as err:
        pytest.skip(f"no BPF iterator here: {err}")


@pytest.fixture
def start(procs: Procs, build: Callable[[str], str],
          tmp_path: Path) -> Iterator[Callable[[str], Victim]]:  # fmt: skip
    sems: list[str] = []

    def _start(mode: str, *extra: str) -> Victim:
        out = tmp_path / "out.txt"
        v = procs.spawn([build("timeouts_s12_h1"), str(out), mode, *extra], out)
        v.wait_line("ready")
        if mode == "semtimedop":
            sems.append(v.wait_line("sem ").split()[1])
        return v

    yield _start
    for sem in sems:
        subprocess.run(["ipcrm", "-s", sem], check=False, capture_output=True)


def _done(v: Victim, mode: str) -> float:
    """The call's result checked: its time (s) as the program measured it."""
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and m[1] == mode and (int(m[2]), int(m[3])) == RESULTS[mode][1:], line
    v.wait_ok_after(3)
    assert not v.fails(), v.fails()
    return int(m[4]) / 1000


@pytest.mark.parametrize("mode", MODES)
def test_running_target_ends_at_its_deadline(start: Callable[[str], Victim],
                                             tmp_path: Path, mode: str) -> None:  # fmt: skip
    """Checkpointed (it goes on) 1.5 s into its 3 s: the call returns when its 3 s are
    up, the frozen time counted, as the kernel counts it (before, for FIXED: 4.5 s)."""
    _bpf_or_skip(mode)
    v = start(mode)
    time.sleep(1.5)
    checkpoint(v.pid, str(tmp_path / "img"))
    took = _done(v, mode)
    assert 2.99 < took < 3.3, f"{mode}: {took:.3f} s"


def test_recvmmsg_with_a_timeout_is_refused(start: Callable[..., Victim],
                                            tmp_path: Path) -> None:  # fmt: skip
    """recvmmsg's timeout ends at its start plus the timeout, kept in the kernel's frame
    and nowhere else: run again (before: exit 0), it would end later and take datagrams
    it would not have.  Refused before the freeze, exit 9, the target untouched: still
    in its call, which takes the two datagrams then sent."""
    v = start("recvmmsg")
    port = int(v.wait_line("port ").split()[1])
    time.sleep(0.5)
    with pytest.raises(Unsupported, match="recvmmsg with a timeout"):
        checkpoint(v.pid, str(tmp_path / "img"))
    assert not any(x.startswith("done") for x in v.lines()), v.lines()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(2):
            s.sendto(b"x", ("127.0.0.1", port))
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and int(m[2]) == 2, line
    v.wait_ok_after(3)


@pytest.mark.parametrize("mode", MODES)
def test_restarted_target_ends_at_its_deadline(start: Callable[[str], Victim],
                                               procs: Procs, tmp_path: Path,
                                               mode: str) -> None:  # fmt: skip
    """Checkpointed with --kill 1.5 s into its 3 s, restarted 0.5 s later: a relative
    timeout ends after 3 s of the program's own time (the time away not counted), an
    absolute one at its instant (3 s after the start)."""
    _bpf_or_skip(mode)
    v, dead = restart_later(procs, start(mode), tmp_path / "img")
    took = _done(v, mode)
    if MODES[mode][0]:
        assert 2.99 < took < 3.3, f"{mode}: {took:.3f} s"
    else:
        own = took - dead
        assert 2.9 < own < 3.4, f"{mode}: {took:.3f} s, {own:.3f} s of its own"
    if mode in FIXED:
        (rec,) = Image(str(tmp_path / "img")).raw(b"THRD")
        left = rec["restart"]["left_ns"]
        assert rec["restart"]["fn"] == "timespec" and 1.3e9 < left < 1.6e9, rec["restart"]
        name = "rt_sigtimedwait" if mode == "sigtimedwait" else mode
        r = run_cryo("show", str(tmp_path / "img"))
        assert re.search(rf"in {name}\(\), 1[3-6]\d\d ms left", r.stdout), r.stdout


def test_sigtimedwait_without_a_timeout_still_takes_its_signal(
        start: Callable[[str], Victim], procs: Procs, tmp_path: Path) -> None:
    """No timeout, nothing to keep: restarted, it still waits, and takes its SIGUSR2."""
    v = start("sigwait_null")
    time.sleep(0.5)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    v = Victim(rr.pid, v.out)
    time.sleep(0.5)
    assert not any(x.startswith("done") for x in v.lines()), v.lines()
    os.kill(rr.pid, signal.SIGUSR2)
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and int(m[2]) == signal.SIGUSR2, line
    v.wait_ok_after(3)


@pytest.mark.parametrize("mode", (*FIXED, "epoll_wait", "mq_timedreceive"))
def test_refused_checkpoint_leaves_the_call_its_deadline(start: Callable[..., Victim],
                                                         tmp_path: Path,
                                                         mode: str) -> None:  # fmt: skip
    """A checkpoint refused at the collect, after the freeze (the process holds a POSIX
    message queue: exit 9), lets the target go as it was: its call ends at its 3 s
    (armed when every process is stopped, not at the collect, which did not reach it)."""
    _bpf_or_skip(mode)
    v = start(mode, *(() if mode == "mq_timedreceive" else ("mq",)))
    time.sleep(1.5)
    with pytest.raises(Unsupported, match="message queue"):
        checkpoint(v.pid, str(tmp_path / "img"))
    took = _done(v, mode)
    assert 2.99 < took < 3.3, f"{mode}: {took:.3f} s"


def test_io_uring_enter_is_refused_before_the_freeze(start: Callable[..., Victim],
                                                     tmp_path: Path) -> None:  # fmt: skip
    """Every io_uring fd is refused (an anonymous inode); one whose thread waits in
    io_uring_enter was refused at the collect, after the freeze had made the call fail
    with EINTR, which cryo does not undo: the refused checkpoint harmed the target (-1
    EINTR at 2 s).  Refused before the freeze now, exit 9: the call ends at its 3 s,
    -ETIME."""
    v = start("io_uring_enter")
    time.sleep(1.5)
    with pytest.raises(Unsupported, match="io_uring"):
        checkpoint(v.pid, str(tmp_path / "img"))
    took = _done(v, "io_uring_enter")
    assert 2.99 < took < 3.3, f"io_uring_enter: {took:.3f} s"


def test_io_getevents_without_a_timeout_goes_on_waiting(start: Callable[..., Victim],
                                                        procs: Procs,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """io_getevents (fs/aio.c) fails with EINTR when the freeze interrupts it (no event
    read, a signal pending), which cryo did not undo: after a mere checkpoint, and after
    a restart, the program got EINTR, exit 0.  It goes on waiting now (and, with a
    timeout, to its deadline: the tests above)."""
    v = start("io_getevents_null")
    time.sleep(0.5)
    checkpoint(v.pid, str(tmp_path / "img0"))
    time.sleep(1)
    assert not any(x.startswith("done") for x in v.lines()), v.lines()
    assert Path(f"/proc/{v.pid}/syscall").read_text().split()[0] == "208"
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    time.sleep(1)
    assert not any(x.startswith("done") for x in Victim(rr.pid, v.out).lines()), v.lines()
    assert Path(f"/proc/{rr.pid}/syscall").read_text().split()[0] == "208"


def test_sigtimedwait_takes_a_signal_that_came_during_the_freeze(
        start: Callable[..., Victim], tmp_path: Path) -> None:
    """The signal it waits for, sent while cryo holds the process (pending, blocked in
    the program's mask): the call run again with its time left takes it at once."""
    _bpf_or_skip("sigtimedwait")
    v = start("sigtimedwait")
    time.sleep(1)
    s = CheckpointSession(v.pid, str(tmp_path / "img"), hold=True, force=True)
    try:
        s.prepare()
        s.freeze()
        os.kill(v.pid, signal.SIGUSR2)
        for phase in ("collect", "write", "commit"):
            getattr(s, phase)()
        t0 = time.monotonic()
        s.resume()
    finally:
        s.close()
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and int(m[2]) == signal.SIGUSR2, line
    assert time.monotonic() - t0 < 1, line
    v.wait_ok_after(3)
