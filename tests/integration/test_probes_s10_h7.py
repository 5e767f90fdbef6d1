"""Probes of session 10 (h7): real programs checkpointed mid-work as a user would (issue
9), their output and end compared with an uninterrupted run; what they found, each in
the smallest program that shows it.  The programs tried and what each gave are in
bench/probes/s10_h7.md."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.errors import ExitCode
from tests.conftest import Procs, run_cryo, spawn_mode

pytestmark = pytest.mark.timeout(120)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.parametrize("mode", ["sqpoll", "ring", "closed"])
def test_io_uring_refused_its_target_untouched(procs: Procs, build: Callable[[str], str],
                                               tmp_path: Path, mode: str) -> None:  # fmt: skip
    """node with UV_USE_IO_URING=1 (libuv's io_uring, an SQPOLL ring among them): the
    checkpoint never returned, the target held stopped for ever (the freeze seized the
    ring's kernel thread, iou-sqp-PID, which stops for ptrace but never returns to user
    space: the first call injected in it never ended, and the watchdog waits for an
    injected call to end), and the worker outlived the killed command.  Now refused
    before anything is seized, exit 9 naming io_uring, the target going on untraced.  A
    plain ring, with its fd or by its mapping alone, was and is refused by its mapping."""
    v = spawn_mode(procs, build("iouring_s10"), tmp_path, mode)
    t0 = time.monotonic()
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), timeout=30)
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "io_uring" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())
    st = _status(v.pid)
    assert st["TracerPid"] == "0" and st["State"][0] in "SR", st
    v.wait_ok_after(max(v.oks()) + 3)
