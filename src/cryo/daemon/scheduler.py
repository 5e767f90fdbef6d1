"""The daemon's clock: periodic checkpoints when due, the watch over every job's
process (restart after an abnormal end, by the job's policy), staged checkpoints left
too long, and orphans to reap.

Due times follow the period, not the end of the last checkpoint (``due + every``), and
are kept in the database, so a daemon started again keeps the cadence; a period missed
altogether (the daemon was down, the slots were busy) is skipped, not made up.  A job's
operations never overlap (the daemon's busy set); the global limit on concurrent
checkpoints is the daemon's semaphore.  Due checkpoints and restarts after a failure
are handed to the daemon's workers (a fixed set of threads: one thread per operation
gave each its own malloc arena, and the daemon's RSS grew with them).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from cryo.daemon import procs

if TYPE_CHECKING:
    from cryo.daemon.server import Daemon

log = logging.getLogger("cryo.daemon")
TICK = 0.05
ORPHAN_SWEEP = 5.0


def run(daemon: Daemon) -> None:
    reaper = procs.OrphanReaper()
    last_sweep = time.monotonic()
    while not daemon.stopping.is_set():
        try:
            tick(daemon)
            if time.monotonic() - last_sweep > ORPHAN_SWEEP:
                last_sweep = time.monotonic()
                keep = {j["pid"] for j in daemon.state.jobs() if j["pid"]}
                for pid in reaper.sweep(keep):
                    log.debug("reaped orphan %d", pid)
        except Exception:
            log.exception("scheduler")
        daemon.stopping.wait(TICK)


def tick(daemon: Daemon) -> None:
    now = time.time()
    for job in daemon.state.jobs():
        name = job["name"]
        if job["state"] != "running" or name in daemon.staged or not daemon.try_busy(name):
            continue
        handed = False
        try:
            ended = procs.check(job["pid"], job["start_time"]) if job["pid"] else None
            if ended is not None:
                handed = died(daemon, job, ended)
            elif job["every"] and job["next_due"] is not None and job["next_due"] <= now:
                due = float(job["next_due"])
                nxt = due + job["every"]
                if nxt <= now:  # more than a period late: skip to the next one
                    log.warning("periods missed", extra={"fields": {
                        "job": name, "due": due, "late": round(now - due, 3)}})  # fmt: skip
                    nxt = now + job["every"]
                daemon.state.update_job(name, next_due=nxt)
                daemon.submit(name, functools.partial(daemon.checkpoint, name, due=due, held=True))
                handed = True
        finally:
            if not handed:
                daemon.unbusy(name)
    for name, st in list(daemon.staged.items()):
        if time.monotonic() - st.started > daemon.staged_timeout:
            daemon.abort_staged(name, "timeout")


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
