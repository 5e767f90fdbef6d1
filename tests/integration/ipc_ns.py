"""Run a test scenario in a forked child that has its own, empty IPC namespace.

Nothing the scenario creates can leak: the namespace, with every queue, set and segment in
it, dies with the last process in it.  The child sends back its result (or its traceback)
through a pipe and is always reaped; a scenario that outlives its time limit is killed.
Processes the scenario forks (senders, waiters) must be reaped by the scenario itself;
:func:`spawn` and :func:`stop` help.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cryo.linux import sysv

PROC_SYSVIPC = Path("/proc/sysvipc")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare of the IPC namespace, *_next_id)")


def root_ns_objects() -> dict[str, list[str]]:
    """What this (the test runner's) IPC namespace holds, to check nothing leaked into it."""
    return {k: (PROC_SYSVIPC / k).read_text().splitlines()[1:] for k in ("msg", "sem", "shm")}


def in_new_ipc_ns(fn: Callable[..., Any], *args: Any, timeout: float = 100.0,
                  **kwargs: Any) -> Any:  # fmt: skip
    """Call ``fn(*args, **kwargs)`` in a forked child in a new IPC namespace; return its result."""
    need_root()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            try:
                sysv.unshare_ipc()
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException:
                payload = pickle.dumps(("err", traceback.format_exc()))
            with os.fdopen(w, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the scenario took more than {timeout} s")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                data = os.read(r, 1 << 20)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError(f"the scenario's child died (wait status {status:#x})")
    what, value = pickle.loads(b"".join(chunks))
    if what == "err":
        raise AssertionError(f"in the scenario's IPC namespace:\n{value}")
    return value


def spawn(fn: Callable[[], None]) -> int:
    """Fork a helper process (in the caller's namespaces) running ``fn``; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def stop(pid: int, sig: int = signal.SIGKILL) -> int:
    """Signal a helper and reap it; returns its wait status."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    return status


def join(pid: int, timeout: float = 30.0) -> int:
    """Wait for a helper to exit by itself; returns its exit code (kills it if late)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    stop(pid)
    raise AssertionError(f"helper {pid} did not finish in {timeout} s")


def cryo(
    *argv: str, store: Path | None = None, tool: str = "cryo"
) -> subprocess.CompletedProcess[str]:
    """Run the ``cryo`` command (or a krgipc* command) in the caller's namespaces."""
    env = dict(os.environ)
    if store is not None:
        env["CRYO_STORE"] = str(store)
    if tool == "cryo":
        cmd = [sys.executable, "-m", "cryo", *argv]
    else:
        cmd = [sys.executable, "-c",
               f"import sys; from cryo.cli.ipc import {tool}_main as m; sys.exit(m())",
               *argv]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, check=False)
