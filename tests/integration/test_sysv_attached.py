"""SysV shm segments attached to a process are restored with it (seed 001): found again
by key when they outlived the process, recreated from the image when they did not; the
attach addresses are kept; the shmid may change.  Each case runs in its own IPC namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.ipc import live
from cryo.linux import sysv
from tests.integration.ipc_ns import in_new_ipc_ns

KEY = 0x5EED


def _lines(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def _wait(out: Path, pred: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred(_lines(out)):
        assert time.monotonic() < deadline, _lines(out)[-5:]
        time.sleep(0.01)


def _oks(out: Path) -> list[int]:
    return [int(x.split()[1]) for x in _lines(out) if x.startswith("ok ")]


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


SHM_DEST = 0o1000


def _marked() -> list[bool]:
    """Of each live segment: is it marked for removal (/proc/sysvipc/shm's perms)?"""
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return sorted(bool(int(r.split()[2], 8) & SHM_DEST) for r in rows)


def scenario(exe: str, tmp: str, case: str) -> dict[str, Any]:
    out = Path(tmp) / "out.txt"
    p = subprocess.Popen([exe, str(out), hex(KEY)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    try:
        _wait(out, lambda ls: len(_oks(out)) > 2 or any("FAIL" in x for x in ls))
        maps_before = [ln for ln in Path(f"/proc/{p.pid}/maps").read_text().splitlines()
                       if "SYSV" in ln]
        if case == "marked":  # IPC_RMID while attached: gone with the last detach
            for o in live("shm"):
                sysv.shmctl(o.id, 0)
        checkpoint(p.pid, f"{tmp}/img", signal_after=signal.SIGKILL)
        p.wait()
        if case == "recreated":
            for o in live("shm"):
                sysv.shmctl(o.id, 0)  # IPC_RMID: gone with their last attach, which was p
        last = max(_oks(out))
        r = restart(f"{tmp}/img")
        try:
            _wait(out, lambda ls: any("FAIL" in x for x in ls) or max(_oks(out)) > last + 3)
            maps_after = [ln for ln in Path(f"/proc/{r.pid}/maps").read_text().splitlines()
                          if "SYSV" in ln]
            segs = [(o.key, o.size) for o in live("shm")]
            marked = _marked()
        finally:
            _kill(r.pid)
        left = [(o.key, o.size) for o in live("shm")]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    fails = [x for x in _lines(out) if "FAIL" in x]
    strip = [" ".join(ln.split()[:2]) for ln in maps_before], [" ".join(ln.split()[:2])
                                                                for ln in maps_after]
    return {"fails": fails, "maps": strip, "segs": sorted(segs), "marked": marked,
            "left": sorted(left)}  # fmt: skip


@pytest.mark.parametrize("case", ["outlived", "recreated", "marked"])
def test_attached_segments(build: Any, tmp_path: Path, case: str) -> None:
    """Marked: segments marked for removal while attached come back marked (their keys
    IPC_PRIVATE, as the kernel left them) and go with the restored process."""
    res = in_new_ipc_ns(scenario, build("shm"), str(tmp_path), case)
    assert res["fails"] == []
    before, after = res["maps"]
    assert before == after and len(before) == 3  # same addresses and protections
    if case == "marked":
        assert res["segs"] == [(0, 64 * 1024), (0, 1 << 20)]
        assert res["marked"] == [True, True]
        assert res["left"] == []  # (before: both outlived it)
    else:
        assert res["segs"] == [(0, 64 * 1024), (KEY, 1 << 20)]
        assert res["marked"] == [False, False]
        assert res["left"] == [(0, 64 * 1024), (KEY, 1 << 20)]
