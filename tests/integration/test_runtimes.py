"""Language runtimes with their own threads, schedulers and signals, checkpointed while
they work: a Go service (goroutines, the netpoller, SIGURG preemption, its GC), a
Node.js service (libuv's loop, a worker thread), a JVM (threads, the GC, a
ServerSocket) and a numpy job (OpenBLAS's threads and mbind'ed buffers).  Each checks
its own state every round; the test asks its server too, where it has one."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap


def _needs(cmd: str, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(cmd) is None, reason=f"needs {cmd} ({package})")


def _http(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return int(r.read().split()[1])


def _line(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return int(s.makefile().readline().split()[1])


def _service(procs: Procs, tmp_path: Path, argv: list[str],
             ask: Callable[[int], int] | None) -> None:
    """Start ``argv`` (its report file last), checkpoint it twice while it runs, then
    kill and restart it: its rounds go on without a failure, and its server answers on
    the same port with a count that kept growing."""
    out = tmp_path / "out.txt"
    v = procs.spawn([*argv, str(out)], out)
    port = int(v.wait_line("port", timeout=30).split()[1])
    v.wait_ok_after(2, timeout=30)
    seen = ask(port) if ask else 0
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
    assert ask is None or ask(port) > seen
    assert not new.fails(), new.fails()


@_needs("go", "Debian's golang-go; .ci/run installs it")
def test_go_service(procs: Procs, tmp_path: Path) -> None:
    exe = tmp_path / "goserver"
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": "",
           "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(exe), str(VICTIMS / "goserver.go")],
                   check=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    _service(procs, tmp_path, [str(exe)], _http)


@_needs("node", "Node.js")
def test_node_service(procs: Procs, tmp_path: Path) -> None:
    _service(procs, tmp_path, ["node", str(VICTIMS / "nodeserver.js")], _http)


def test_numpy_job(procs: Procs, tmp_path: Path) -> None:
    """Before: refused, exit 9 (OpenBLAS's buffers have a memory policy of their own)."""
    pytest.importorskip("numpy")
    _service(procs, tmp_path, [sys.executable, str(VICTIMS / "npwork.py")], None)


@_needs("javac", "a JDK")
def test_jvm_threads_and_gc(procs: Procs, tmp_path: Path) -> None:
    subprocess.run(["javac", "-d", str(tmp_path), str(VICTIMS / "JvmWork.java")],
                   check=True, timeout=120)  # fmt: skip
    perf = Path("/tmp") / f"hsperfdata_{pwd.getpwuid(os.getuid()).pw_name}"
    before = set(perf.glob("*"))
    try:
        _service(procs, tmp_path, ["java", "-Xmx256m", "-cp", str(tmp_path), "JvmWork"],
                 _line)
    finally:  # the restored JVM is killed (SIGKILL): its performance-data file stays
        for f in set(perf.glob("*")) - before:
            f.unlink(missing_ok=True)
