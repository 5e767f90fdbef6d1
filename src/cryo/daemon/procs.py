"""What the daemon needs to know of processes: alive or how they ended, whose they are.

A job's process is found again by its pid *and* its start time (field 22 of
/proc/PID/stat), so that a pid used again after a reboot or a wrap is not taken for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    sid: int
    start_time: int
    exit_code: int  # field 52: the wait status, valid once a zombie


def stat(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    f_ = data[data.rindex(b")") + 2 :].split()
    # f_[0] is field 3
    return Proc(pid, f_[0].decode(), int(f_[1]), int(f_[3]), int(f_[19]),
                int(f_[49]) if len(f_) > 49 else 0)  # fmt: skip


def start_time(pid: int) -> int | None:
    p = stat(pid)
    return None if p is None or p.state in ("Z", "X") else p.start_time


def running(pid: int, start: int | None) -> bool:
    """Whether ``pid`` is still the process started at ``start`` and not a zombie (it
    reaps nothing: how it ended is :func:`check`'s to find)."""
    p = stat(pid)
    return p is not None and p.state not in ("Z", "X") and start in (None, p.start_time)


def uids_gids(pid: int) -> tuple[list[int], list[int]] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = dict(line.split(":", 1) for line in f if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ([int(x) for x in lines["Uid"].split()], [int(x) for x in lines["Gid"].split()])


def owned_by(pid: int, uid: int) -> bool | None:
    """True when every uid of ``pid`` (real, effective, saved, fs) is ``uid`` and it runs
    no setgid program; None when it does not exist."""
    ids = uids_gids(pid)
    if ids is None:
        return None
    uids, gids = ids
    return all(u == uid for u in uids) and len(set(gids)) == 1


@dataclass(frozen=True)
class Ended:
    """How a process ended: ``status`` is a wait status, or None when unknown (not our
    child, reaped by another, gone while the daemon was down, pid reused)."""

    status: int | None

    @property
    def abnormal(self) -> bool:
        return self.status is None or os.WIFSIGNALED(self.status)

    def describe(self) -> str:
        if self.status is None:
            return "unknown"
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"killed by {name}"
        return f"exit {os.waitstatus_to_exitcode(self.status)}"


def check(pid: int, start: int | None) -> Ended | None:
    """None while process ``pid`` (started at ``start``) runs; how it ended otherwise.
    Our own children (launched, restored, or orphans we reap as a subreaper) are waited
    for; of others, a zombie's exit status is read from /proc while it lasts."""
    p = stat(pid)
    if p is None or (start is not None and p.start_time != start):
        return Ended(None)
    if p.ppid == os.getpid():
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return Ended(None) if p.state in ("Z", "X") else None
        return Ended(status) if got == pid else None
    if p.state in ("Z", "X"):
        return Ended(p.exit_code)
    return None


def session_members(sid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = stat(int(name))
            if p is not None and p.sid == sid:
                out.append(p.pid)
    return out


def kill(pid: int, start: int | None, *, tree: bool, timeout: float = 10.0) -> None:
    """SIGKILL the process (and, with ``tree``, every process of its session when it
    leads one) and wait until it is gone (reaped when it is our child; by its parent
    otherwise, for at most ``timeout``: a restart cannot have its pid while its zombie
    holds it)."""
    p = stat(pid)
    if p is None or (start is not None and p.start_time != start):
        return
    targets = session_members(pid) if tree and p.sid == pid else [pid]
    for t in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(t, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = stat(pid)
        if q is None or q.start_time != p.start_time:
            return
        if q.state in ("Z", "X") and q.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return
        time.sleep(0.01)


class OrphanReaper:
    """As a child subreaper the daemon inherits orphans (a job's children, the processes
    left by `cryo run`).  Zombies among its children that are no job's and stayed
    zombies over two sweeps are reaped; the library waits for its own workers itself,
    at once, so they are never zombies that long."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def sweep(self, keep: set[int]) -> list[int]:
        me = os.getpid()
        zombies = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            p = stat(int(name))
            if p is not None and p.ppid == me and p.state == "Z" and p.pid not in keep:
                zombies.add(p.pid)
        reaped = []
        for pid in zombies & self._seen:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
        self._seen = zombies - set(reaped)
        return reaped


__all__ = ["Ended", "OrphanReaper", "Proc", "check", "kill", "owned_by", "running",
           "session_members", "start_time", "stat"]
