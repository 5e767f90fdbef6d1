"""A Python program is restored exactly: after checkpoint, kill and restart it prints
the very lines an uninterrupted run prints (generator, random state, objects, file)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap


def test_python_program_continues_exactly(procs: Procs, tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("".join(f"input line {i}\n" for i in range(37)))
    script = str(VICTIMS / "pystate.py")
    ref = tmp_path / "ref.txt"
    subprocess.run([sys.executable, script, str(ref), str(source), "120"], check=True,
                   timeout=60, close_fds=True)
    expected = [ln for ln in ref.read_text().splitlines() if ln.startswith("tick")]

    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, script, str(out), str(source)], out)
    v.wait_ok_after(30)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    pid = procs.track(restart(str(tmp_path / "img")).pid)
    assert pid == v.pid
    restored = Victim(pid, out)
    restored.wait_ok_after(119, timeout=30)
    got = [ln for ln in out.read_text().splitlines() if ln.startswith("tick")][:120]
    assert got == expected
