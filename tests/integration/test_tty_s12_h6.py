"""Pseudo-terminals (issue 11, session 12 h6): what a checkpoint changes on a pair or a
restart loses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim, cli_cycle, run_cryo

pytestmark = pytest.mark.timeout(120)
VICTIMS = Path(__file__).parent.parent / "victims"


@pytest.mark.parametrize("kill", [False, True])
def test_echoes_held_by_a_stopped_terminal(procs: Procs, tmp_path: Path, kill: bool) -> None:
    """A terminal stopped with ^S holds the echoes of what is typed meanwhile until ^Q:
    they stay held after a checkpoint (the program goes on) and after a restart (before,
    the copy of the queues started the terminal and they reached the master at once)."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptystop_s12_h6.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    if kill:
        v = Victim(cli_cycle(procs, v.pid, tmp_path / "img"), v.out)
    else:
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr
    go.touch()
    assert v.wait_line("checked", timeout=40) == "checked good"


@pytest.mark.parametrize("kill", [True, False])
def test_output_column(procs: Procs, tmp_path: Path, kill: bool) -> None:
    """The column the line discipline keeps is the original's after a restart (a tab
    under TAB3 after "abc" gives 5 spaces, a CR under ONOCR is written, backspaces go
    back as far), and a checkpoint leaves it as it was (before, a restarted pair was at
    column 0)."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptycol_s12_h6.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    if kill:
        v = Victim(cli_cycle(procs, v.pid, tmp_path / "img"), v.out)
    else:
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr
    go.touch()
    assert v.wait_line("checked", timeout=40) == "checked good"
