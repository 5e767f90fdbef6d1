"""image/running.py: markers of running images, and their pruning."""

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from cryo import procfs
from cryo.image import running


def _marker(d: Path, ident: str, pid: int, start: int) -> Path:
    (d / f"{ident}.lock").touch()
    m = d / ident
    m.write_text(json.dumps({"pid": pid, "start": start}))
    return m


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_prune_removes_only_the_markers_of_ended_processes(tmp_path: Path) -> None:
    me = os.getpid()
    start = procfs.start_time(me)
    assert start is not None
    live = _marker(tmp_path, "a" * 32, me, start)
    dead = _marker(tmp_path, "b" * 32, _dead_pid(), 1)
    reused = _marker(tmp_path, "c" * 32, me, start + 1)  # our pid, another process's start
    half = tmp_path / f"{'b' * 32}.{_dead_pid()}"  # a mark() that died half way
    half.write_text("{")
    gone = running.prune(str(tmp_path))
    assert sorted(gone) == ["b" * 32, "c" * 32]
    assert live.exists() and (tmp_path / f"{live.name}.lock").exists()
    for m in (dead, reused):
        assert not m.exists() and not (tmp_path / f"{m.name}.lock").exists()
    assert not half.exists()


def test_prune_leaves_a_marker_whose_lock_is_held(tmp_path: Path) -> None:
    """A restart holding the lock (checking, or marking) is never disturbed."""
    m = _marker(tmp_path, "d" * 32, _dead_pid(), 1)
    fd = os.open(f"{m}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert running.prune(str(tmp_path)) == []
        assert m.exists()
    finally:
        os.close(fd)
    assert running.prune(str(tmp_path)) == ["d" * 32]


def test_lock_taken_after_a_prune_is_the_file_at_the_path(tmp_path: Path) -> None:
    """One waiting on a lock that a pruner then removed takes the new file, not the
    unlinked one: two restarts can never both hold "the" lock."""
    path = str(tmp_path / ("e" * 32))
    fd = running._locked(path)
    assert fd is not None
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(running._locked(path)))
    waiter.start()
    time.sleep(0.3)  # it has opened the file and waits for the lock
    os.unlink(f"{path}.lock")  # as prune does, under the lock
    os.close(fd)
    waiter.join(10)
    assert got and got[0] is not None
    try:
        st, mine = os.stat(f"{path}.lock"), os.fstat(got[0])
        assert (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
    finally:
        os.close(got[0])
