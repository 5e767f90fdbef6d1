"""An epoll_wait or epoll_pwait interrupted by a checkpoint waits only its time left
(issue 9, session 11; engine/restartblock.py).  The end of its timeout is in no restart
block: only the hrtimer on the sleeping thread's kernel stack holds it, read with a BPF
task iterator just before the freeze.  Before, the call ran again whole: a 3 s wait
caught 1.5 s in returned after 4.5 s, in a target that went on after a mere checkpoint
too (victims/epollwait_s11.c)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.session import CheckpointSession
from cryo.image.reader import Image
from cryo.linux import bpf
from tests.conftest import Procs, Victim, restart_later, run_cryo

pytestmark = pytest.mark.timeout(120)
MODES = ("epoll_wait", "epoll_pwait")
DONE = r"done (\S+) ret=(-?\d+) errno=(\d+) ms=(\d+)"


def _bpf_or_skip() -> None:
    try:
        bpf.need("iter_task", "task.stack", "sym.hrtimer_wakeup")
    except (bpf.Unavailable, AttributeError) as err:
        pytest.skip(f"no BPF iterator here: {err}")


def _start(procs: Procs, build: Callable[[str], str], tmp_path: Path, mode: str,
           *extra: str) -> Victim:  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([build("epollwait_s11"), str(out), mode, *extra], out)
    v.wait_line("ready")
    return v


@pytest.mark.parametrize("mode", MODES)
def test_restarted_wait_keeps_its_time_left(procs: Procs, build: Callable[[str], str],
                                            tmp_path: Path, mode: str) -> None:  # fmt: skip
    """Checkpointed with --kill 1.5 s into a 3 s wait, restarted 0.5 s later: the call
    returns 0 after 3 s of its own time (the dead time taken out), not 4.5 s."""
    _bpf_or_skip()
    v, dead = restart_later(procs, _start(procs, build, tmp_path, mode), tmp_path / "img")
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and (int(m[2]), int(m[3])) == (0, 0), line
    own = int(m[4]) / 1000 - dead
    assert 2.9 < own < 3.4, f"{line}: {own:.3f} s of its own (dead {dead:.3f} s)"
    (rec,) = Image(str(tmp_path / "img")).raw(b"THRD")
    assert rec["restart"]["fn"] == "epoll" and 1.3e9 < rec["restart"]["left_ns"] < 1.6e9, rec
    r = run_cryo("show", str(tmp_path / "img"))
    assert re.search(rf"in {mode}\(\), 1[345]\d\d ms left", r.stdout), r.stdout
    v.wait_ok_after(3)
    assert not v.fails()


@pytest.mark.parametrize("mode", MODES)
def test_running_target_waits_to_the_same_end(procs: Procs, build: Callable[[str], str],
                                              tmp_path: Path, mode: str) -> None:  # fmt: skip
    """Checkpointed (it goes on) 1.5 s into a 3 s wait: the call returns 0 when its 3 s
    are up, the frozen time counted, as the kernel counts it (before: at 4.5 s)."""
    _bpf_or_skip()
    v = _start(procs, build, tmp_path, mode)
    time.sleep(1.5)
    checkpoint(v.pid, str(tmp_path / "img"))
    m = re.fullmatch(DONE, line := v.wait_line("done", timeout=10))
    assert m and (int(m[2]), int(m[3])) == (0, 0), line
    assert 2.99 < int(m[4]) / 1000 < 3.3, line
    v.wait_ok_after(3)
    assert not v.fails()


def test_a_wait_that_ended_before_the_freeze_is_not_taken(procs: Procs,
                                                          build: Callable[[str], str],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """The sleep is read in prepare, just before the freeze; here the caller waits 0.5 s
    between the two (a staged checkpoint), so that the 400 ms call read ends and another
    begins: that one must not be taken for it (it would get the first one's end, gone
    by, and return at once: "FAIL early"); it runs whole."""
    _bpf_or_skip()
    v = _start(procs, build, tmp_path, "loop", "400")
    v.wait_ok_after(1, timeout=10)
    for _ in range(3):
        n = max(v.oks())
        v.wait_ok_after(n + 1, timeout=10)  # (a call just begun)
        s = CheckpointSession(v.pid, str(tmp_path / "img"), hold=True, force=True)
        try:
            s.prepare()
            time.sleep(0.5)
            for phase in ("freeze", "collect", "write", "commit"):
                getattr(s, phase)()
            s.resume()
        finally:
            s.close()
        v.wait_ok_after(max(v.oks()) + 2, timeout=10)
    assert not v.fails(), v.fails()
