"""Timers: the three interval timers and POSIX timers, with their remaining time.  A
POSIX timer aimed at one thread (SIGEV_THREAD_ID, as glibc's SIGEV_THREAD timers are:
signal 32 to its helper thread) is aimed again at that thread's restored tid, as the
process sees it (in a pid namespace of its own, not as cryo does)."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError
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
    itimers = []
    for which in range(3):  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
        inj(SYS.getitimer, which, inj.scratch)
        itimers.append(inj.read(inj.scratch, ctypes.sizeof(S.itimerval)))
    posix = []
    for t in procfs.parse_timers(procfs.read(ctx.pid, "timers")):
        inj(SYS.timer_gettime, t.id, inj.scratch)
        posix.append({
            "id": t.id, "signal": t.signal, "value": t.sigev_value, "notify": t.notify,
            "tid": t.notify_tid, "clock": t.clock, "to_thread": t.to_thread,
            "spec": inj.read(inj.scratch, ctypes.sizeof(S.itimerspec)),
        })  # fmt: skip
    return {"pid": ctx.pid, "itimers": itimers, "posix": posix}


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    for which, val in enumerate(rec["itimers"]):
        if any(val):
            inj(SYS.setitimer, which, inj.put(val), 0)
    if not rec["posix"]:
        return
    inj(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0)
    try:
        for t in rec["posix"]:
            ev = S.sigevent()
            ev.sigev_value = t["value"]
            ev.sigev_signo = t["signal"]
            ev.sigev_notify = _NOTIFY[t["notify"]]
            if t.get("to_thread") or t["notify"] == "thread":  # images before to_thread
                ev.sigev_notify = SIGEV_THREAD_ID
                ev.sigev_notify_thread_id = ns_tid(ctx.pid, ctx.tid_map.get(t["tid"], ctx.pid))
            frame = inj.frame()
            ev_addr = frame.put(bytes(ev))
            id_addr = frame.put(t["id"].to_bytes(4, "little"))
            inj(SYS.timer_create, t["clock"], ev_addr, id_addr)
            got = int.from_bytes(inj.read(id_addr, 4), "little")
            if got != t["id"]:
                ctx.warnings.append(f"POSIX timer {t['id']} came back as {got}")
            inj(SYS.timer_settime, got, 0, inj.put(t["spec"]), 0)
    finally:
        inj(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0)
