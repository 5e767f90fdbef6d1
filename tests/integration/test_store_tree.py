"""A process tree (tests/victims/forkserver.c: a parent, children, a zombie, pipes,
shared memory) checkpointed into a store several times: one page map per process and
per shared object, and restarts of the latest and an older version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryo import store
from tests.conftest import Procs, Victim
from tests.integration.test_tree import kill_tree, tree_pids


def test_tree_versions(procs: Procs, build: Any, tmp_path: Path) -> None:
    st = str(tmp_path / "store")
    out = tmp_path / "out.txt"
    v = procs.spawn([build("forkserver"), str(out)], out)
    v.wait_ok_after(3)
    pids = tree_pids(v.pid)
    assert len(pids) > 2
    for version in (1, 2, 3):
        got, _ = store.checkpoint(v.pid, st, "app", scope="tree")
        assert got == version
        v.wait_ok_after(max(v.oks()) + 2)
    info = store.describe(st)[0]["versions"]
    units = info[-1]["units"]
    assert sorted(int(u.split()[1]) for u in units if u.startswith("pid")) == [
        p for p in pids if Path(f"/proc/{p}/maps").read_text()]  # zombies have no memory
    assert info[2]["new"] < info[0]["new"] / 2, info
    kill_tree(pids)
    for version in (None, 1):
        start = len(v.lines())
        r = store.restart(st, "app", version)
        for p in r.pids.values():
            procs.track(p)
        assert tree_pids(r.pid) == pids
        w = Victim(r.pid, out)
        lines = w.wait_for(lambda ls, s=start: sum(x.startswith(("ok", "FAIL"))
                                                   for x in ls[s:]) >= 3)  # fmt: skip
        assert not [x for x in lines[start:] if x.startswith("FAIL")]
        kill_tree(tree_pids(r.pid))
        time.sleep(0.05)
    assert not store.verify(st).problems
