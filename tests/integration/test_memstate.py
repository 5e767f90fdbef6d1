"""Memory state beyond the data (issue 9, "Memory"): madvise advice, mlock, NORESERVE,
DROPPABLE, guard pages, mseal, mlockall; mappings of deleted files, /dev/zero and memfd;
hugetlb; refusals (AIO rings).  Each victim checks itself after checkpoint, kill and
restart and reports "ok N" or "FAIL what"."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap


def cycle(procs: Procs, v: Victim, img: Path) -> Victim:
    """Checkpoint ``v`` (killed once the image is written), reap it, restart it; the
    restored victim must pass two more rounds of its own checks."""
    last = max(v.oks(), default=-1)
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(img))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 2)
    return new


def smaps_flags(pid: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    start = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            start = int(head.split("-")[0], 16)
        elif head == "VmFlags:":
            out[start] = line.split()[1:]
    return out


@pytest.mark.parametrize("mode", ["regions", "future"])
def test_madvise_state_survives(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("madvise"), str(out), mode], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
