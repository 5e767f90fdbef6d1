"""Job control probed in session 9 (h1, issue 9): victims/jobctl_s9.c, a parent and its
stopped children checkpointed as a tree (once letting them run on, once killed and
restarted); the parent checks each round what a wait and its SIGCHLD handler find of
each stop, then, once ``go`` exists, continues and reaps its child."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap
from tests.integration.test_procstate import build_threaded

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("jobctl"), "jobctl_s9")


def _others(v: Victim) -> list[int]:
    return sorted({int(x.split()[1]) for x in v.lines() if x.startswith("other ")})


# mode -> (what it holds, the lines its last steps write)
MODES = {
    "collected": ("the parent's handler ran once for the stop and its waitid took the report:"
                  " none after the restart (before: reported again, CLD_STOPPED twice)",
                  ["continued", "reaped"]),
    "pending": ("the parent's handler ran once, the report not taken: still there, once",
                ["took", "continued", "reaped"]),
    "blocked": ("SIGCHLD blocked in the parent: pending once, its siginfo the child's stop",
                ["sigchld once", "continued", "reaped"]),
    "chain": ("a stopped child whose own stopped child's report it took: neither reported"
              " again, each handler ran once", ["took", "child ok", "continued", "reaped"]),
    "group": ("two children of a group of their own stopped by one kill(-pgid): the first's"
              " report taken, the second's not", ["reaped"]),
}


def test_continued_report_kept(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A child stopped and continued by its parent, which took the stop's report but not
    the continue's: after the restart waitid(WCONTINUED | WNOWAIT) still finds it, and
    the child runs.  Before: the report was lost (the restored child was never stopped:
    nothing held SIGNAL_STOP_CONTINUED); now the restart stops and continues it before
    its last stage, its parent held (engine/jobctl.py continue_now)."""
    test_stops_of_children_reported_as_before(procs, exe, tmp_path, "continued")


@pytest.mark.parametrize("mode", list(MODES))
def test_stops_of_children_reported_as_before(procs: Procs, exe: str, tmp_path: Path,
                                              mode: str) -> None:  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([exe, str(out), mode, str(tmp_path)], out)
    try:
        v.wait_line("ready")
        v.wait_ok_after(1)
    finally:
        for pid in _others(v):
            procs.track(pid)
    checkpoint(v.pid, str(tmp_path / "img0"), scope="tree")  # and the tree goes on as it was
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    for pid in [v.pid, *_others(v)]:
        reap(pid)
    rr = restart(str(tmp_path / "img"))
    for pid in rr.pids.values():
        procs.track(pid)
    v = Victim(rr.pid, out)
    v.wait_ok_after(last + 3)
    assert not v.fails()
    (tmp_path / "go").touch()
    want = MODES[mode][1] if mode in MODES else ["took continued", "reaped"]
    v.wait_for(lambda ls: all(w in ls for w in want) or bool(v.fails()))
    v.wait_ok_after(max(v.oks()) + 1)
    assert not v.fails()
    assert os.path.exists(f"/proc/{v.pid}")


@pytest.fixture(scope="module")
def fsexe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("fsnotify"), "fsnotify_s9")


@pytest.mark.parametrize("kind", ["mount", "fs", "inoroot"])
def test_no_fanotify_event_from_cryo_itself(procs: Procs, fsexe: str, tmp_path: Path,
                                            kind: str) -> None:  # fmt: skip
    """A fanotify mark of the process on a mount of its own (a tmpfs; FAN_MARK_MOUNT or
    FAN_MARK_FILESYSTEM: FAN_OPEN, FAN_ACCESS, FAN_CLOSE_NOWRITE; or an inotify watch of
    that mount's root, "inoroot", which the checkpoint's look-up of the watch by its
    handle opened before: exit 9, its own events), a file there mapped
    privately and held open: neither a checkpoint that lets it run nor a restart makes
    an event there (the mapped bytes read through the mapping; the marks added once
    every process is built: engine/fsnotify.py arm)."""
    import subprocess

    from tests.integration.test_procstate import cycle

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cryo-h1", str(mnt)], check=True)
    try:
        out = tmp_path / "out.txt"
        v = procs.spawn([fsexe, str(out), kind, str(mnt)], out)
        v.wait_line("ready")
        v.wait_ok_after(1)
        checkpoint(v.pid, str(tmp_path / "img0"))
        v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails()
        v = cycle(procs, v, tmp_path / "img")
        v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails()
        os.kill(v.pid, signal.SIGKILL)
        reap(v.pid)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
