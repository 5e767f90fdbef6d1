"""Pseudo-terminals (issue 11, session 12 h6): what a checkpoint changes on a pair or a
restart loses."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Procs, checked_after

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
    checked_after(procs, tmp_path, v, go, kill, timeout=40)


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
    checked_after(procs, tmp_path, v, go, kill, timeout=40)


_NO_ADMIN = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
def test_shell_job_half_typed_line_without_cap_sys_admin(procs: Procs, tmp_path: Path,
                                                         kill: bool) -> None:  # fmt: skip
    """A shell job reading a line (canonical mode) with half of it typed, checkpointed
    by a cryo without CAP_SYS_ADMIN (no TIOCSTI on a terminal not its own; the job types
    it back itself): after the restart, or on the job that goes on, the rest typed
    completes it (before: the half-typed line was lost at the restart, exit 0: ' 6'
    alone was read)."""
    from tests.integration.test_probes_s11_h1 import _finish_typed
    from tests.integration.test_tty import _SHELL, Terminal, _job_of

    prog = "import os; os.write(1, b'? '); print('got', os.read(0, 100))"
    term = Terminal()
    try:
        shell = term.start([sys.executable, "-c", _SHELL, sys.executable, "-c", prog],
                           tmp_path)  # fmt: skip
        procs.track(shell.pid)
        job = procs.track(_job_of(shell.pid))
        term.wait_for(b"? ")
        mark = term.mark()
        term.type(b"7 *")
        term.wait_for(b"7 *", since=mark)
        time.sleep(0.3)
        img = tmp_path / "img"
        r = subprocess.run([*_NO_ADMIN, sys.executable, "-m", "cryo", "checkpoint", str(job),
                            "-D", str(img), "--shell-job", *(["--kill"] if kill else [])],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        if not kill:
            mark = term.mark()
            term.type(b" 6\n")
            assert shell.wait(timeout=20) == 0
            term.wait_for(b"got b'7 * 6\\n'", since=mark)
            return
        shell.wait(timeout=20)
    finally:
        term.close()
    _finish_typed(procs, img, tmp_path, job, b" 6\n", b"got b'7 * 6\\n'")
