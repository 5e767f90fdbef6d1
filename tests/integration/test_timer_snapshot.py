"""/proc/timer_list is read before a freeze only where it can be needed (issue 14: 0.3
ms of every periodic checkpoint of a program without timers): a process of the scope
with a CLOCK_REALTIME POSIX timer (engine/timers.py, snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryo.engine.session import Checkpoint
from tests.conftest import Procs


def _early(pid: int) -> dict[str, Any]:
    c = Checkpoint(pid)
    try:
        c.prepare()
        return dict(c.shared.early)
    finally:
        c.abort()


def test_timer_list_read_only_for_realtime_timers(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    plain = procs.spawn([build("counter"), str(tmp_path / "a.txt")], tmp_path / "a.txt")
    timed = procs.spawn([build("posixabs"), str(tmp_path / "b.txt")], tmp_path / "b.txt")
    plain.wait_ok_after(1)
    timed.wait_ok_after(1)
    assert "timer_list" not in _early(plain.pid)
    assert "timer_list" in _early(timed.pid)
    plain.wait_ok_after(max(plain.oks()) + 1)
    timed.wait_ok_after(max(timed.oks()) + 1)
    assert not plain.fails() and not timed.fails()
