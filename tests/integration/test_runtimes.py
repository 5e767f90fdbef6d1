"""Language runtimes with their own threads, schedulers and signals, checkpointed while
they work: a Go service (goroutines, the netpoller, SIGURG preemption, its GC)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap

pytestmark = pytest.mark.skipif(shutil.which("go") is None,
                                reason="needs Go (Debian's golang-go; .ci/run installs it)")


def _total(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return int(r.read().split()[1])


def test_go_service(procs: Procs, tmp_path: Path) -> None:
    """Checkpointed twice while it runs, then killed and restarted: its rounds check
    its pages and go on, and its HTTP server answers on the same port with a total that
    kept growing."""
    exe = tmp_path / "goserver"
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": "",
           "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(exe), str(VICTIMS / "goserver.go")],
                   check=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([str(exe), str(out)], out)
    port = int(v.wait_line("port").split()[1])
    v.wait_ok_after(2)
    seen = _total(port)
    for i in range(2):
        checkpoint(v.pid, str(tmp_path / f"img{i}"))
        v.wait_ok_after(max(v.oks()) + 3)
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    assert rr.pid == v.pid
    new = Victim(rr.pid, out)
    new.wait_ok_after(last + 5)
    assert _total(port) > seen
    assert not new.fails(), new.fails()
