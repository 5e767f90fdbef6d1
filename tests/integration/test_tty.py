"""Pseudo-terminals with both ends in the checkpoint (issue 11): a tree holding a pty
master and a session on its slave, restored with the same terminal settings, window
size, packet mode, controlling terminal and foreground process group."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import Procs, Victim, run_cryo
from tests.integration.test_tree import kill_tree, tree_pids

VICTIMS = Path(__file__).parent.parent / "victims"


def test_pty_pair_in_tree(procs: Procs, tmp_path: Path) -> None:
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptypair.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_ok_after(5)
    pids = tree_pids(v.pid)
    assert len(pids) == 3
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    seen = max(v.oks())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    for p in pids:
        procs.track(p)
    v = Victim(v.pid, v.out)
    v.wait_ok_after(seen + 5)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
    assert v.wait_line("leader", timeout=20) == "leader good"
    v.wait_ok_after(max(v.oks()) + 5)


def test_terminal_outside_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A slave whose master is not in the checkpoint: refused by name (exit 9)."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        v = procs.spawn([sys.executable, "-c", "import time; time.sleep(600)"],
                        tmp_path / "out", stdin=slave)  # fmt: skip
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 9 and "whose master is outside" in r.stderr, r.stderr
    finally:
        os.close(master)
        os.close(slave)
