"""Mappings' own NUMA memory policies (mbind) come back: a parent's and its forked
child's, on private, split and shared mappings, with their mode flags (engine/numa.py).
Before, any of them was refused (exit 9), and with it every numpy program (OpenBLAS
binds its buffers "local")."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, reap


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _layout(pid: int) -> list[tuple[str, str]]:
    """The mappings' ranges and protections (mbind splits and merges mappings)."""
    with open(f"/proc/{pid}/maps") as f:
        return [tuple(line.split()[:2]) for line in f]  # type: ignore[misc]


def test_mbind_policies_of_a_tree(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("numa"), str(out)], out)
    v.wait_for(lambda ls: any(x.startswith("child ok 1") for x in ls))
    kid = _children(v.pid)[0]
    procs.track(kid)
    layouts = _layout(v.pid), _layout(kid)
    checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    reap(kid)
    reap(v.pid)
    mark = len(out.read_text().splitlines())
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    procs.track(kid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = out.read_text().splitlines()[mark:]
        if sum(x.startswith("ok ") for x in after) >= 3 and \
                sum(x.startswith("child ok") for x in after) >= 3:  # fmt: skip
            break
        time.sleep(0.05)
    after = out.read_text().splitlines()[mark:]
    assert not [x for x in after if x.startswith("FAIL")], after
    assert sum(x.startswith("ok ") for x in after) >= 3, after
    assert sum(x.startswith("child ok") for x in after) >= 3, after
    assert (_layout(v.pid), _layout(kid)) == layouts
