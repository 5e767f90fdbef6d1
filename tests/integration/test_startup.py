"""A small program's ``cryo checkpoint`` and ``cryo restart`` import only what it needs
(issue 16, docs/design.md "Start-up"): the modules of resources it lacks (sockets, TCP
and its network lock, the applications' channel, fanotify; terminals at restart) are
never imported,
and the restarted program goes on.  The import set is the command's and its worker's,
read from ``python -v``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Procs, Victim, reap
from tests.unit.test_startup import CHECKPOINT_LATER, LAZY, RESTART_LATER, RESTART_LAZY

BIN = str(Path(__file__).resolve().parents[2] / "bin" / "cryo")
# how the command is started: as tests and benchmarks do, and as bin/cryo starts itself
STARTS = {"module": ["-m", "cryo"], "script": ["-S", BIN]}
# what bin/cryo's short commands import on first use only (argparse's formatter asks
# shutil for the width, dataclasses names inspect, the image's temporary directory):
# site's own hooks import some of them under ``-m cryo``
SCRIPT_LAZY = ("shutil", "tempfile", "random", "bz2", "inspect", "ast", "dis",
               "traceback", "linecache", "tokenize", "textwrap")  # (logging's traceback)


def cryo_imports(*args: str, start: str = "module"
                 ) -> tuple[subprocess.CompletedProcess[str], set[str]]:  # fmt: skip
    r = subprocess.run([sys.executable, "-v", *STARTS[start], *args],
                       capture_output=True, text=True, timeout=60, close_fds=True)  # fmt: skip
    # (-v names each module as it is imported, in the checkpoint's worker too)
    mods = {line.split("'")[1] for line in r.stderr.splitlines() if line.startswith("import '")}
    r.stdout = r.stdout.strip()
    return r, mods


@pytest.mark.parametrize("start", list(STARTS))
def test_small_program_imports_no_driver_it_lacks(procs: Procs, build: Any, tmp_path: Path,
                                                  start: str) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out), "5"], out=out)
    v.wait_ok_after(2)
    img = tmp_path / "img"
    r, mods = cryo_imports("checkpoint", str(v.pid), "-D", str(img), "--kill", start=start)
    assert r.returncode == 0, r.stderr
    assert "cryo.engine.files" in mods and "cryo.engine.memory" in mods
    assert not mods & set(LAZY), sorted(mods & set(LAZY))
    assert not mods & set(CHECKPOINT_LATER), sorted(mods & set(CHECKPOINT_LATER))
    if start == "script":
        assert not mods & set(SCRIPT_LAZY), sorted(mods & set(SCRIPT_LAZY))
    reap(v.pid)
    last = max(v.oks())
    r, mods = cryo_imports("restart", "-D", str(img), "--detach", start=start)
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    assert "cryo.engine.restore" in mods
    assert not mods & set(RESTART_LAZY), sorted(mods & set(RESTART_LAZY))
    assert not mods & set(RESTART_LATER), sorted(mods & set(RESTART_LATER))
    if start == "script":
        assert not mods & set(SCRIPT_LAZY), sorted(mods & set(SCRIPT_LAZY))
    Victim(v.pid, v.out).wait_ok_after(last + 3)


def test_a_socket_imports_its_driver(procs: Procs, tmp_path: Path) -> None:
    # the same commands for a program with a unix socket pair: the socket driver comes in
    # (and the pair comes back: both ends talk after the restart)
    prog = tmp_path / "pair.py"
    prog.write_text(
        "import socket, sys, time\n"
        "a, b = socket.socketpair()\n"
        "out = open(sys.argv[1], 'a', buffering=1)\n"
        "i = 0\n"
        "while True:\n"
        "    a.send(b'x%d' % i)\n"
        "    got = b.recv(100)\n"
        "    print(('tick %d' % i) if got == b'x%d' % i else 'FAIL pair', file=out)\n"
        "    i += 1\n"
        "    time.sleep(0.005)\n")  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-S", str(prog), str(out)], out=out)
    v.wait_ok_after(2)
    img = tmp_path / "img"
    r, mods = cryo_imports("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    assert "cryo.engine.sockets" in mods
    reap(v.pid)
    last = max(v.oks())
    r, mods = cryo_imports("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    assert "cryo.engine.sockets" in mods
    Victim(v.pid, v.out).wait_ok_after(last + 3)
