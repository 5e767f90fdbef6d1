"""Probes of session 9 (h8): real programs checkpointed as a user would (issue 9, 11)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim, reap, run_cryo

pytestmark = pytest.mark.timeout(120)

VICTIMS = Path(__file__).parent.parent / "victims"


def test_pty_session_in_a_pid_namespace(procs: Procs, tmp_path: Path) -> None:
    """A `cryo run --pid-ns` job holding a pty and a session on its slave (found with
    script(1) running an interactive bash): the restart failed, 'No such process
    [ioctl ... TIOCSPGRP]', exit 3, because the foreground group was given to the
    restored leader by its pid in cryo's namespace, not the one it sees.  Now the
    session leader has its terminal back with the worker's group in the foreground."""
    go, out = tmp_path / "go", tmp_path / "out"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--",
                 sys.executable, str(VICTIMS / "ptypair.py"), str(out), str(go))  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(5)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    assert "3 processes" in r.stderr
    reap(v.pid)
    seen = max(v.oks())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(seen + 5)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
    assert v.wait_line("leader", timeout=20) == "leader good"
    v.wait_ok_after(max(v.oks()) + 5)
