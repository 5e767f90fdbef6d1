"""A System V segment attached by several processes of one image is saved once, through
the sink (a side file with its sealed digest), and restored for all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryo.image import format as fmt
from cryo.image import records as R
from tests.integration.ipc_ns import in_new_ipc_ns

# parent and child both attach one segment (the child by fork); each writes its own byte
# and reports the other's
VICTIM = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
shmid = libc.shmget(0x5EE5, 1 << 20, 0o1600)
addr = libc.shmat(shmid, None, 0)
mem = (ctypes.c_ubyte * (1 << 20)).from_address(addr)
me = 0 if os.fork() else 1
out = open(sys.argv[1] + str(me), "a", buffering=1)
i = 0
while True:
    mem[me] = i % 256
    out.write(f"ok {i} {mem[1 - me]}\n")
    i += 1
    time.sleep(0.02)
"""


def _oks(out: Path) -> list[int]:
    return [int(x.split()[1]) for x in out.read_text().splitlines()
            if x.startswith("ok ")] if out.exists() else []  # fmt: skip


def _wait_past(out: Path, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while max(_oks(out), default=-1) <= n:
        assert time.monotonic() < deadline, out
        time.sleep(0.02)


def scenario(tmp: str) -> dict[str, Any]:
    import ctypes

    from cryo.engine.dump import checkpoint
    from cryo.engine.restore import restart

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    base = Path(tmp) / "out"
    p = subprocess.Popen([sys.executable, "-c", VICTIM, str(base)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    outs = [Path(f"{base}0"), Path(f"{base}1")]
    pids: list[int] = []
    try:
        for o in outs:
            _wait_past(o, 2)
        done = checkpoint(p.pid, f"{tmp}/img", scope="tree", signal_after=signal.SIGKILL)
        p.wait()
        for q in done.pids:  # the child too: its zombie would hold its pid (reaped by
            with contextlib.suppress(ChildProcessError):  # us, a child subreaper)
                os.waitpid(q, 0)
        last = [max(_oks(o)) for o in outs]
        img = Path(tmp) / "img"
        sides = sorted(x.name for x in img.iterdir() if x.name.startswith("sysvshm-"))
        side_recs = [r.payload["name"] for r in fmt.read_file(img / "core.img", R.CORE_MAGIC)
                     if r.kind == b"SIDE"]  # fmt: skip
        r = restart(f"{tmp}/img")
        pids = list(r.pids.values())
        for o, n in zip(outs, last, strict=True):
            _wait_past(o, n + 3)
    finally:
        for pid in [*pids, p.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in [*pids, p.pid]:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return {"sides": sides, "side_recs": side_recs, "processes": len(pids)}


def test_segment_of_two_processes_saved_once(tmp_path: Path) -> None:
    res = in_new_ipc_ns(scenario, str(tmp_path))
    assert res["processes"] == 2
    assert len(res["sides"]) == 1 and res["side_recs"] == res["sides"]
