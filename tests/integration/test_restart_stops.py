"""How many times a restart stops each restored process (issue 16): the restore hooks'
injected calls wait in the process's injector (inject.HoldingInjector) and run with the
next batch that must run, so that a process is stopped a few times, not once per
driver and stage."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import inject
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim
from tests.integration.test_tree import kill_tree, tree_pids


def test_a_tree_restarts_in_few_stops_per_process(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """A parent and 4 children (1 MiB each), restarted in this process: at most 6
    batches of injected calls per process (5 here: the mappings, the pages, the rest
    from the protections to the credentials in one; the parent's clone3 of each child),
    where every stage of every driver had a batch of its own before (17 per process),
    and the tree goes on ticking, each process with its pid."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("fanout"), str(out), "4", "1"], out)
    v.wait_line("ready")
    pids = tree_pids(v.pid)
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
    kill_tree(pids)
    before = dict(inject.STATS)
    r = restart(str(img))
    got = {k: inject.STATS[k] - before[k] for k in before}
    for p in r.pids.values():
        procs.track(p)
    assert sorted(r.pids.values()) == pids
    assert got["batches"] <= 6 * len(pids), got
    w = Victim(r.pid, out)
    w.wait_ok_after(max(w.oks(), default=0) + 2)
    assert all(os.path.exists(f"/proc/{p}") for p in pids)


@pytest.mark.timeout(120)
def test_a_child_is_not_stopped_for_its_parents_numa_policies(procs: Procs, build: Any,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """A child forked from its restored parent had, per mapping it keeps from it, an
    mbind to MPOL_DEFAULT held, which made the stop before its pages: needed only where
    the parent's mapping has a policy of its own (tests/integration/test_numa.py), and a
    parent without any (most programs) gives none.  A parent and 4 children: 4 batches
    per process before (20), at most 16 now, and the tree goes on."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("fanout"), str(out), "4", "1"], out)
    v.wait_line("ready")
    pids = tree_pids(v.pid)
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
    kill_tree(pids)
    before = dict(inject.STATS)
    r = restart(str(img))
    got = {k: inject.STATS[k] - before[k] for k in before}
    for p in r.pids.values():
        procs.track(p)
    assert sorted(r.pids.values()) == pids
    assert got["batches"] <= 3 * len(pids) + 1, got
    w = Victim(r.pid, out)
    w.wait_ok_after(max(w.oks(), default=0) + 2)
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
