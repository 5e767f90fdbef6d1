"""Pages shared copy-on-write in a tree stay shared after a restart (issue 9, "Memory";
session 12 h2): those a parent shares with its children, and those its children share
among them only (the parent rewrote its copy after the forks: cow.split_siblings, held
by the restored parent while they are forked, cow.sibling_plan).  The sum of Pss of the
tree is measured before and after; every process checks its own memory each round."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration import test_probes_s11_h3 as probes

pytestmark = pytest.mark.timeout(240)
MB = 1 << 20


def _pss(pids: list[int]) -> int:
    """The sum of Pss of ``pids``, in bytes."""
    total = 0
    for p in pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def _oks(v: Victim, who: str) -> int:
    return sum(1 for x in v.lines() if x.startswith(f"{who}ok "))


def _cycle(procs: Procs, v: Victim, kids: int, tmp: Path) -> tuple[int, int, list[int]]:
    """Pss before, checkpoint --tree --kill, restart --detach, every process seen to
    check itself again; Pss after, and the restored pids."""
    pids = probes.tree(v.pid)
    assert len(pids) == kids + 1, pids
    for p in pids[1:]:
        procs.track(p)
    before = _pss(pids)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp / "img"), "--tree", "--kill")
    assert r.returncode == 0, r.stderr
    for p in reversed(pids):
        reap(p)
    counts = {w: _oks(v, w) for w in ["", *(f"child {k} " for k in range(1, kids + 1))]}
    r = run_cryo("restart", "-D", str(tmp / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    new = procs.track(int(r.stdout))
    after_pids = probes.tree(new)
    for p in after_pids[1:]:
        procs.track(p)
    v2 = Victim(new, v.out)
    v2.wait_for(lambda _ls: all(_oks(v2, w) > n for w, n in counts.items()) or bool(v.fails()))
    assert not v.fails(), v.fails()
    time.sleep(0.2)
    return before, _pss(after_pids), after_pids


@pytest.mark.parametrize("mode", ["", "late"], ids=["cowtree", "cowtree_late"])
def test_children_share_what_their_parent_rewrote(procs: Procs, build: Any, tmp_path: Path,
                                                  mode: str) -> None:  # fmt: skip
    """[cowtree] victims/cowtree.c: 32 MiB shared by a parent and 3 children, each child
    with a MiB of its own, the parent with a MiB rewritten after the forks (the children
    share the old one among them): the tree's Pss as before (it was 2 MiB more: the old
    MiB once per child).

    [cowtree_late] victims/cowtree.c late: children 1 and 2 share the parent's old
    MiB 1 between them while child 3, forked after the parent rewrote it, shares the new
    one with the parent; all three share the old MiB 2, rewritten by the parent last.
    Every process reads its own bytes (the restored parent holds the old MiB 2 while it
    forks the three, and the old MiB 1 until child 2 is made, before child 3 is forked:
    child 3 takes the parent's own there), and the tree's Pss is as before (it was 3 MiB
    more: the old MiB 1 and 2 once per child)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("cowtree"), str(out), *([mode] if mode else [])], out)
    v.wait_line("ready")
    for k in (1, 2, 3):
        v.wait_line(f"child {k} ready")
    time.sleep(0.3)
    before, after, _pids = _cycle(procs, v, 3, tmp_path)
    print(f"Pss sum: before {before / MB:.2f} MiB, after {after / MB:.2f} MiB")
    assert after <= before + MB // 2, (before / MB, after / MB)
