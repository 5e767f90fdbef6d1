"""Timers: the three interval timers and POSIX timers, with their remaining time.  A
POSIX timer aimed at one thread (SIGEV_THREAD_ID, as glibc's SIGEV_THREAD timers are:
signal 32 to its helper thread) is aimed again at that thread's restored tid, as the
process sees it (in a pid namespace of its own, not as cryo does)."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError, Unsupported
from cryo.linux import structs as S
from cryo.linux.consts import (
    PR,
    PR_TIMER_CREATE_RESTORE_IDS_OFF,
    PR_TIMER_CREATE_RESTORE_IDS_ON,
    SYS,
)

log = logging.getLogger(__name__)
KIND = b"TIMR"
_NOTIFY = {"signal": 0, "none": 1, "thread": 2}  # SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD
SIGEV_THREAD_ID = 4


def ns_tid(pid: int, tid: int) -> int:
    """``tid`` (of process ``pid``, as cryo sees it) as the process itself sees it."""
    try:
        ids = procfs.parse_status(procfs.read(pid, f"task/{tid}/status")).get("NSpid", "")
    except CryoError:
        return tid
    return int(ids.split()[-1]) if ids else tid


def dump(ctx: DumpContext) -> dict[str, Any]:
    inj = ctx.inj
    timers = procfs.parse_timers(procfs.read(ctx.pid, "timers"))
    itv, its = ctypes.sizeof(S.itimerval), ctypes.sizeof(S.itimerspec)
    with inj.batch() as b:  # one stop for all of them
        ibuf = b.reserve(3 * itv)
        pbuf = b.reserve(max(1, len(timers)) * its)
        for which in range(3):  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
            b.call(SYS.getitimer, which, ibuf + which * itv)
        for k, t in enumerate(timers):
            b.call(SYS.timer_gettime, t.id, pbuf + k * its)
    raw = b.read(ibuf, pbuf - ibuf + len(timers) * its)
    itimers = [raw[which * itv : (which + 1) * itv] for which in range(3)]
    posix = []
    for t in timers:
        _check_clock(ctx.pid, t.id, t.clock)
    for k, t in enumerate(timers):
        at = pbuf - ibuf + k * its
        posix.append({
            "id": t.id, "signal": t.signal, "value": t.sigev_value, "notify": t.notify,
            "tid": t.notify_tid, "clock": t.clock, "to_thread": t.to_thread,
            "spec": raw[at : at + its],
        })  # fmt: skip
    return {"pid": ctx.pid, "itimers": itimers, "posix": posix}


def _check_clock(pid: int, timer: int, clock: int) -> None:
    """A CPU-time clock (negative: ``~pid << 3 | thread << 2 | kind``, as glibc makes
    CLOCK_PROCESS_CPUTIME_ID and CLOCK_THREAD_CPUTIME_ID ones for pid 0, the caller) is
    made again by the restored process for itself: the process's own (-8..-5) always;
    its calling thread's (-4..-1) only in a process of one thread (which of several it
    was is not shown); another process's or a thread named by its id is refused.  Such
    timers' images were refused at restart as corrupt (clock out of range)."""
    if clock >= 0:
        return
    who, thread = ~(clock >> 3), clock & 4
    if who == 0 and not thread:
        return
    if who == 0 and len(os.listdir(f"/proc/{pid}/task")) == 1:
        return
    what = f"thread {who}'s" if who and thread else f"process {who}'s" if who else \
        "the CPU clock of the thread that made it, in a process of several threads (which" \
        " one is not shown):"  # fmt: skip
    raise Unsupported(f"POSIX timer {timer} runs on {what} CPU-time clock ({clock}):"
                      " not supported", pid=pid, resource="timer")  # fmt: skip


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """In one batch: the interval timers, then each POSIX timer made again with its id
    (PR_TIMER_CREATE_RESTORE_IDS, turned off again whatever happens) and armed."""
    inj = ctx.inj
    ids: list[tuple[int, int]] = []  # (wanted id, index of its timer_create)
    try:
        with inj.batch() as b:
            for which, val in enumerate(rec["itimers"]):
                if any(val):
                    b.call(SYS.setitimer, which, b.put(val), 0)
            if rec["posix"]:
                b.call(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON,
                       0, 0, 0)  # fmt: skip
            for t in rec["posix"]:
                ev = S.sigevent()
                ev.sigev_value = t["value"]
                ev.sigev_signo = t["signal"]
                ev.sigev_notify = _NOTIFY[t["notify"]]
                if t.get("to_thread") or t["notify"] == "thread":  # images before to_thread
                    ev.sigev_notify = SIGEV_THREAD_ID
                    ev.sigev_notify_thread_id = ns_tid(ctx.pid,
                                                       ctx.tid_map.get(t["tid"], ctx.pid))
                ev_addr = b.put(bytes(ev))
                id_addr = b.put(t["id"].to_bytes(4, "little"))
                b.call(SYS.timer_create, t["clock"], ev_addr, id_addr)
                ids.append((t["id"], id_addr))
                # the id asked for is the id made (checked below: a warning if not)
                b.call(SYS.timer_settime, t["id"], 0, b.put(t["spec"]), 0)
            if rec["posix"]:
                b.call(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF,
                       0, 0, 0)  # fmt: skip
    except BaseException:
        if rec["posix"]:
            inj.raw(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF,
                    0, 0, 0)  # fmt: skip
        raise
    for want, id_addr in ids:
        got = int.from_bytes(inj.read(id_addr, 4), "little")
        if got != want:
            ctx.warnings.append(f"POSIX timer {want} came back as {got}")
