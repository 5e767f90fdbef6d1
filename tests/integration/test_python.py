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


ASYNCIO = """
import asyncio, sys
out = open(sys.argv[1], "a", buffering=1)
async def main():
    i = 0
    while True:
        try:
            await asyncio.sleep(0.02)
        except Exception as err:
            print("FAIL", repr(err), file=out)
            raise
        print("ok", i, file=out)
        i += 1
asyncio.run(main())
"""


def test_asyncio_program_keeps_its_pid_or_is_refused(procs: Procs, tmp_path: Path) -> None:
    """asyncio finds its running loop by the pid that set it: under another pid the
    program fails at its next await ("no running event loop"). So a restart whose pid is
    taken (the program runs on) is refused, exit 10, nothing made (before: it came back
    under a new pid, exit 0, and failed at once); with the pid free it goes on."""
    from tests.conftest import run_cryo

    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", ASYNCIO, str(out)], out)
    v.wait_ok_after(3)
    checkpoint(v.pid, str(tmp_path / "img"))
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--allow-duplicate")
    if r.returncode == 0:
        procs.track(int(r.stdout))
    assert r.returncode == 10 and f"pid {v.pid} is taken" in r.stderr, r.stderr
    v.wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()
    procs.kill(v.pid)
    reap(v.pid)
    last = max(v.oks())
    pid = procs.track(restart(str(tmp_path / "img")).pid)
    assert pid == v.pid
    Victim(pid, out).wait_ok_after(last + 5)
    assert not v.fails()
