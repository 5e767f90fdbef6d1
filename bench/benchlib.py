"""What the benchmarks share: building the test victims, and ending what they start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

VICTIMS = Path(__file__).resolve().parent.parent / "tests" / "victims"


def build(name: str, out: Path) -> str:
    """Compile tests/victims/NAME.c into ``out``; returns the binary's path."""
    exe = out / name
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(VICTIMS / f"{name}.c"), "-lrt",
                    "-lpthread"], check=True)  # fmt: skip
    return str(exe)


def reap(pid: int) -> None:
    """Kill ``pid`` (one we started) and wait until it is gone from /proc."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.002)


def kill_all(pids: list[int]) -> None:
    """Kill every pid first, then wait for each (children before parents do not matter)."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in pids:
        reap(p)
