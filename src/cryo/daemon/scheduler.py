"""The daemon's clock: periodic checkpoints when due, the watch over every job's
process (restart after an abnormal end, by the job's policy), staged checkpoints left
too long, and orphans to reap.

Due times follow the period, not the end of the last checkpoint (``due + every``), and
are kept in the database, so a daemon started again keeps the cadence; a period missed
altogether (the daemon was down, the slots were busy) is skipped, not made up.  A job's
operations never overlap (the daemon's busy set); the global limit on concurrent
checkpoints is the daemon's set of checkpointers.  Due checkpoints and restarts after a
failure are handed to the daemon's workers (a fixed set of threads: one thread per
operation gave each its own malloc arena, and the daemon's RSS grew with them).

The clock sleeps until the next due time, a job's process ending (a pidfd of each
job's process, readable when it exits), a change of the state or a job no longer busy
(the daemon's wake-up), or :data:`CHECK` seconds, whichever comes first: it used to
wake every 50 ms and read every job from SQLite and every job's /proc/PID/stat, which
cost an idle daemon of 20 jobs 17 ms of CPU a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import time
from typing import TYPE_CHECKING, Any

from cryo.daemon import procs

if TYPE_CHECKING:
    from cryo.daemon.server import Daemon

log = logging.getLogger("cryo.daemon")
CHECK = 1.0  # every job's process looked at, at least this often (seconds)
ORPHAN_SWEEP = 5.0


class Watch:
    """A pidfd for each job's process: :meth:`wait` returns once one has ended, the
    daemon wakes us, or the time is up.  A pidfd that told stays readable: it is not
    waited on again (the periodic check sees to its job, busy at the time)."""

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, int | None, int]] = {}  # name -> (pid, start, fd)
        self._told: set[str] = set()

    def update(self, jobs: list[dict[str, Any]]) -> None:
        want = {j["name"]: (j["pid"], j["start_time"]) for j in jobs
                if j["state"] == "running" and j["pid"]}  # fmt: skip
        for name, (pid, start, fd) in list(self._fds.items()):
            if want.get(name) != (pid, start):
                os.close(fd)
                del self._fds[name]
                self._told.discard(name)
        for name, (pid, start) in want.items():
            if name not in self._fds:
                with contextlib.suppress(OSError):  # gone already: the next check sees it
                    self._fds[name] = (pid, start, os.pidfd_open(pid))

    def wait(self, timeout: float, wake: int) -> set[str]:
        """The jobs whose process has ended (or may have)."""
        fds = {fd: name for name, (_, _, fd) in self._fds.items() if name not in self._told}
        try:
            ready, _, _ = select.select([wake, *fds], [], [], max(0.0, timeout))
        except InterruptedError:
            return set()
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)
        told = {fds[fd] for fd in ready if fd in fds}
        self._told |= told
        return told

    def close(self) -> None:
        for _, _, fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._told.clear()


def run(daemon: Daemon) -> None:
    reaper = procs.OrphanReaper()
    watch = Watch()
    last_sweep = last_check = time.monotonic()
    ended: set[str] = set()
    try:
        while not daemon.stopping.is_set():
            timeout = CHECK
            try:
                check_all = time.monotonic() - last_check >= CHECK
                if check_all:
                    last_check = time.monotonic()
                nxt = tick(daemon, ended, check_all)
                if nxt is not None:
                    timeout = min(timeout, nxt - time.time())
                watch.update(daemon.state.jobs())
                if time.monotonic() - last_sweep > ORPHAN_SWEEP:
                    last_sweep = time.monotonic()
                    keep = {j["pid"] for j in daemon.state.jobs() if j["pid"]}
                    for pid in reaper.sweep(keep):
                        log.debug("reaped orphan %d", pid)
                ended = watch.wait(timeout, daemon.wake_fd)
            except Exception:
                log.exception("scheduler")
                watch.close()  # (opened again at the next turn)
                ended = set()
                daemon.stopping.wait(0.05)
    finally:
        watch.close()


def tick(daemon: Daemon, ended: set[str] | None = None, check_all: bool = True) -> float | None:
    """Hand out what is due; look at the processes of jobs in ``ended`` (all with
    ``check_all``).  Returns the wall time of the next due checkpoint (None: none)."""
    now = time.time()
    nxt: float | None = None
    for job in daemon.state.jobs():
        name = job["name"]
        if job["state"] != "running" or name in daemon.staged or not daemon.try_busy(name):
            continue
        handed = False
        try:
            ended_now = None
            if job["pid"] and (check_all or name in (ended or ())):
                ended_now = procs.check(job["pid"], job["start_time"])
            if ended_now is not None:
                handed = died(daemon, job, ended_now)
            elif job["every"] and job["next_due"] is not None and job["next_due"] <= now:
                due = float(job["next_due"])
                after = due + job["every"]
                if after <= now:  # more than a period late: skip to the next one
                    log.warning("periods missed", extra={"fields": {
                        "job": name, "due": due, "late": round(now - due, 3)}})  # fmt: skip
                    after = now + job["every"]
                # (the next due time is written with the attempt, by the worker: the
                # clock waits for no disk)
                daemon.submit(name, functools.partial(daemon.checkpoint, name, due=due,
                                                      next_due=after, held=True))  # fmt: skip
                handed = True
            elif job["every"] and job["next_due"] is not None:
                nxt = job["next_due"] if nxt is None else min(nxt, job["next_due"])
        finally:
            if not handed:
                daemon.unbusy(name, wake=False)
    for name, st in list(daemon.staged.items()):
        if time.monotonic() - st.started > daemon.staged_timeout:
            daemon.abort_staged(name, "timeout")
    return nxt


def died(daemon: Daemon, job: dict[str, Any], ended: procs.Ended) -> bool:
    """The job's process is gone: restart it (True: handed to a thread, busy held) or
    record how it ended."""
    name, status = job["name"], ended.describe()
    from cryo.daemon.server import event

    event("job ended", job=name, pid=job["pid"], status=status)
    if ended.abnormal and job["restart_on_failure"]:
        if job["restarts"] >= job["max_restarts"]:
            daemon.state.update_job(name, state="failed", status=f"{status}; restarts"
                                    f" exhausted ({job['restarts']})")  # fmt: skip
            return False
        if not daemon.state.versions(name):
            daemon.state.update_job(name, state="failed", status=f"{status}; no version")
            return False
        daemon.state.update_job(name, status=status)
        daemon.submit(name, lambda: daemon.restart(name, held=True, failure=True))
        return True
    state = "exited" if not ended.abnormal else ("lost" if ended.status is None else "failed")
    daemon.state.update_job(name, state=state, status=status)
    return False


__all__ = ["died", "run", "tick"]
