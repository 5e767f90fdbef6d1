"""Timers: the three interval timers and POSIX timers, with their remaining time.  A
POSIX timer aimed at one thread (SIGEV_THREAD_ID, as glibc's SIGEV_THREAD timers are:
signal 32 to its helper thread) is aimed again at that thread's restored tid, as the
process sees it (in a pid namespace of its own, not as cryo does).

A CLOCK_REALTIME timer set with TIMER_ABSTIME keeps its wall-clock expiry (restored
relative, restarted later, it fired later by the time away).  No interface shows the
flag (/proc/PID/timers: id, signal, notify, clock; timer_gettime: the time left), but the
kernel shows its effect: a relative CLOCK_REALTIME timer runs on the monotonic hrtimer
base (clock changes do not move it), an absolute one on the realtime base, and
/proc/timer_list lists every armed hrtimer (posix_timer_fn) by base with its expiry in
nanoseconds.  The timer is found there by that expiry, which lies between the clock
read just before its timer_gettime and the clock read just after, plus the time left
(a window of microseconds, the calls running in one batch in the frozen target).  A
periodic timer that fired during the freeze is re-armed only when its signal is taken,
so it is in no list then: it is found in the list read just before the freeze
(:func:`snapshot`), its expiry now that one plus a whole number of intervals.  A
CLOCK_REALTIME timer found in neither (SIGEV_NONE ones are never in the list; one whose
signal was pending before the freeze; no /proc/timer_list, which only root may read)
is refused: exit 9, naming it.  On the other clocks the flag changes nothing the kernel
keeps (one base, the expiry absolute either way): they come back relative, their time
left counted from the restart, as CRIU does."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import struct
import time
from collections.abc import Generator
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch
from cryo.errors import CryoError, Unsupported
from cryo.image import records as R
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
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TIMER_ABSTIME = 1
TIMER_LIST = "/proc/timer_list"
_BASES = {0: "monotonic", 1: "realtime"}  # hrtimer base index & 3 (4-7: their soft twins)
_NS = 10**9


def ns_tid(pid: int, tid: int) -> int:
    """``tid`` (of process ``pid``, as cryo sees it) as the process itself sees it."""
    try:
        ids = procfs.parse_status(procfs.read(pid, f"task/{tid}/status")).get("NSpid", "")
    except CryoError:
        return tid
    return int(ids.split()[-1]) if ids else tid


def dump(ctx: DumpContext, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Queue hook (drivers.py): the timers' calls in the process's batch, in one run of
    the routine (no stop between the clock reads that bracket them: ``together``)."""
    timers = procfs.parse_timers(procfs.read(ctx.pid, "timers"))
    itv, its = ctypes.sizeof(S.itimerval), ctypes.sizeof(S.itimerspec)
    real = any(t.clock == CLOCK_REALTIME for t in timers)
    ibuf = b.reserve(3 * itv)
    pbuf = b.reserve(max(1, len(timers)) * its)
    cbuf = b.reserve(4 * 16)  # the two clocks before and after the timers' reads
    with b.together():
        if real:
            b.call(SYS.clock_gettime, CLOCK_REALTIME, cbuf)
            b.call(SYS.clock_gettime, CLOCK_MONOTONIC, cbuf + 16)
        for which in range(3):  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
            b.call(SYS.getitimer, which, ibuf + which * itv)
        for k, t in enumerate(timers):
            b.call(SYS.timer_gettime, t.id, pbuf + k * its)
        if real:
            b.call(SYS.clock_gettime, CLOCK_REALTIME, cbuf + 32)
            b.call(SYS.clock_gettime, CLOCK_MONOTONIC, cbuf + 48)
    yield
    raw = b.read(ibuf, cbuf + 64 - ibuf)
    itimers = [raw[which * itv : (which + 1) * itv] for which in range(3)]
    posix = []
    for t in timers:
        _check_clock(ctx.pid, t.id, t.clock)
    listed: dict[str, list[int]] | None = None
    for k, t in enumerate(timers):
        at = pbuf - ibuf + k * its
        rec: dict[str, Any] = {
            "id": t.id, "signal": t.signal, "value": t.sigev_value, "notify": t.notify,
            "tid": t.notify_tid, "clock": t.clock, "to_thread": t.to_thread,
            "spec": raw[at : at + its],
        }  # fmt: skip
        spec = S.itimerspec.from_buffer_copy(raw[at : at + its])
        left = spec.it_value.tv_sec * _NS + spec.it_value.tv_nsec
        if t.clock == CLOCK_REALTIME and left:
            if listed is None:
                listed = _read_list()
            c = [int.from_bytes(raw[cbuf - ibuf + 8 * i : cbuf - ibuf + 8 * i + 8], "little")
                 for i in range(8)]  # fmt: skip
            clocks = {"realtime": (c[0] * _NS + c[1], c[4] * _NS + c[5]),
                      "monotonic": (c[2] * _NS + c[3], c[6] * _NS + c[7])}  # fmt: skip
            iv = spec.it_interval.tv_sec * _NS + spec.it_interval.tv_nsec
            deadline = _absolute(ctx, t.id, left, iv, clocks, listed)
            if deadline is not None:
                rec["deadline"] = deadline
        posix.append(rec)
    return {"pid": ctx.pid, "itimers": itimers, "posix": posix}


SI_TIMER = -2


def check_pending(ctx: DumpContext) -> None:
    """Collect hook, once the process's signals and timers are read: a periodic POSIX timer
    whose own signal is pending and blocked (by every thread that could take it: a
    program that takes it with sigwaitinfo or a signalfd) is refused. The kernel queues
    a timer's signal once; while it is pending the timer is not re-armed and counts the
    periods that go by, given to the program as si_overrun (and timer_getoverrun) when
    it takes the signal. That count is not shown (the queued siginfo says 0,
    /proc/PID/timers and timer_gettime nothing of it), and a signal queued again by cryo
    is no longer the timer's: restored so, the re-armed timer queued a second signal
    next to it and the periods before the checkpoint were lost (found by probing: two
    signals pending at once, si_overrun 0 then the periods since the restart, exit 0). A
    one-shot timer's pending signal, which carries no count, is restored as before."""
    _check_cpu_sleeps(ctx)
    rec, sigs = ctx.records.get(KIND), ctx.records.get(R.SIGS)
    if not rec or sigs is None:
        return
    periodic = {t["id"] for t in rec["posix"] if any(t["spec"][:16])}  # (it_interval)
    if not periodic:
        return
    # (blocked where it waits: a signal that could be taken is pending only because it
    # came during the freeze, and the module's note says how that timer comes back;
    # refused for that, 1 checkpoint in 15 of a process with a 30 ms timer failed)
    every = [t.get("blocked", 0) for t in ctx.thread_records]
    infos = [*((i, every) for i in sigs.get("pending_shared", [])),
             *((i, [t.get("blocked", 0)]) for t in ctx.thread_records
               for i in t.get("pending", []))]  # fmt: skip
    waited = _waited_for(ctx)
    for info, masks in infos:
        signo, _errno, code, timer = struct.unpack_from("<iii4xi", info)
        held = all(m >> (signo - 1) & 1 for m in masks) and not waited >> (signo - 1) & 1
        if code == SI_TIMER and timer in periodic and held:
            raise Unsupported(
                f"periodic POSIX timer {timer} has its signal {signo} pending: how many"
                " periods it counted since (its si_overrun) is not shown, and a timer"
                " whose signal is pending cannot be made again", pid=ctx.pid,
                resource="timer")  # fmt: skip


def _check_cpu_sleeps(ctx: DumpContext) -> None:
    """A thread in clock_nanosleep on a CPU-time clock with TIMER_ABSTIME is refused:
    the process's CPU clocks start again from 0 at the restart (docs/design.md), so the
    sleep, run again with its deadline, would last the CPU time used before the
    checkpoint too (a relative one keeps its time left through ``rem``, or runs again
    whole)."""
    for t in ctx.thread_records:
        regs = S.user_regs_struct.from_buffer_copy(t["regs"])
        clock = ctypes.c_int32(regs.rdi & 0xFFFFFFFF).value
        if regs.orig_rax == SYS.clock_nanosleep and clock < 0 and regs.rsi & TIMER_ABSTIME:
            raise Unsupported(f"thread {t['tid']} sleeps until a CPU-time clock ({clock})"
                              " reaches a deadline (clock_nanosleep, TIMER_ABSTIME): the"
                              " CPU clocks start again from 0 at a restart", pid=ctx.pid,
                              resource="timer")  # fmt: skip


def _waited_for(ctx: DumpContext) -> int:
    """The signals a thread of the process waits for in sigwaitinfo or sigtimedwait
    (rt_sigtimedwait, its set read from its memory): one of these pending is pending
    only because the process is frozen, as glibc's SIGEV_THREAD helper thread waits for
    its timers' signal 32 (found by the lead's test_procstate timer tests: refused every
    time); its timer comes back as the module's note says."""
    out = 0
    for t in ctx.thread_records:
        regs = S.user_regs_struct.from_buffer_copy(t["regs"])
        if regs.orig_rax == SYS.rt_sigtimedwait:
            try:
                out |= int.from_bytes(ctx.inj.read(regs.rdi, 8), "little")
            except OSError:
                out = (1 << 64) - 1
    return out


def snapshot(session: Any) -> None:
    """Before the freeze: /proc/timer_list as it is (0.1-0.3 ms: every CPU's hrtimers),
    for a periodic timer whose signal comes during the freeze (see the module's note);
    read only where a process of the scope has a CLOCK_REALTIME POSIX timer, the only
    ones it is for (/proc/PID/timers, a few us each: most programs have none).  A timer
    made between this and the freeze is not in it, as one made after the list's read."""
    from cryo.engine import tree

    with contextlib.suppress(OSError, AttributeError):
        if any(_has_realtime(pid) for pid in tree.scope_members(session)):
            session.shared.early["timer_list"] = _parse_list(_read_text())


def _has_realtime(pid: int) -> bool:
    try:
        return any(t.clock == CLOCK_REALTIME
                   for t in procfs.parse_timers(procfs.read(pid, "timers")))  # fmt: skip
    except (CryoError, OSError):
        return True  # (gone, or unreadable: the list as before; the freeze will tell)


def _read_text() -> str:
    with open(TIMER_LIST) as f:
        return f.read()


def _read_list() -> dict[str, list[int]] | None:
    try:
        return _parse_list(_read_text())
    except OSError:
        return None


def _parse_list(text: str) -> dict[str, list[int]]:
    """The expiry (soft, in its base's clock) of every armed POSIX timer, by base."""
    out: dict[str, list[int]] = {"monotonic": [], "realtime": []}
    base: str | None = None
    fn = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("clock ") and s.endswith(":"):
            base = _BASES.get(int(s[6:-1]) & 3)
        elif s.startswith("#") and not s.startswith("# "):
            fn = ", posix_timer_fn," in s
        elif fn and base is not None and s.startswith("# expires at "):
            out[base].append(int(s[13:].split("-", 1)[0]))
            fn = False
    return out


def _absolute(ctx: DumpContext, timer: int, left: int, iv: int,
              clocks: dict[str, tuple[int, int]],
              listed: dict[str, list[int]] | None) -> int | None:  # fmt: skip
    """A CLOCK_REALTIME timer's expiry (ns since the epoch) if it was set with
    TIMER_ABSTIME, None if relative; refused where it cannot be told."""
    found: set[str] = set()
    if listed is not None:
        found = {base for base, exp in listed.items() for e in exp
                 if clocks[base][0] + left <= e <= clocks[base][1] + left}  # fmt: skip
        if len(found) == 1:
            return _deadline(found.pop(), listed, clocks, left, 0)
        before = ctx.shared.early.get("timer_list") if ctx.shared is not None else None
        if not found and iv and before is not None:
            found = {base for base, exp in before.items() for e in exp
                     if _hit(e, iv, clocks[base][0] + left, clocks[base][1] + left)}  # fmt: skip
            if len(found) == 1:
                return _deadline(found.pop(), before, clocks, left, iv)
    why = "/proc/timer_list cannot be read" if listed is None else \
        "its expiry matches timers of both hrtimer bases" if found else \
        "its hrtimer is not armed (SIGEV_NONE, or its signal pending before the freeze)"
    raise Unsupported(f"POSIX timer {timer} (CLOCK_REALTIME) is armed and whether it was set"
                      f" with TIMER_ABSTIME cannot be seen: {why}", pid=ctx.pid,
                      resource="timer")  # fmt: skip


def _hit(e: int, iv: int, lo: int, hi: int) -> bool:
    """Is some e + k * iv (k >= 0) in [lo, hi]?"""
    if hi < e:
        return False
    k = max(0, (lo - e + iv - 1) // iv)
    return e + k * iv <= hi


def _deadline(base: str, listed: dict[str, list[int]], clocks: dict[str, tuple[int, int]],
              left: int, iv: int) -> int | None:  # fmt: skip
    if base == "monotonic":
        return None  # relative: its time left, as before
    lo, hi = clocks[base][0] + left, clocks[base][1] + left
    for e in listed[base]:
        if lo <= e <= hi:
            return e
        if iv and _hit(e, iv, lo, hi):
            return e + max(0, (lo - e + iv - 1) // iv) * iv
    return None


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


ITIMER_REAL = 0
CLOCK_MONOTONIC_COARSE = 6


def _itimer_value(which: int, val: bytes) -> bytes:
    """What to give setitimer for an interval timer whose getitimer said ``val``.  The
    kernel adds a tick to the value of ITIMER_VIRTUAL and ITIMER_PROF when they are set
    (kernel/time/itimer.c, set_cpu_itimer) and getitimer shows what is left of that: set
    again as read, each restart left them a tick later (found by probing: 1000.004 s
    left at the checkpoint, 1000.008 s after the restart).  So a tick (TICK_NSEC, the
    resolution of the coarse clocks) is taken off first, where more than a tick is
    left; less than that comes back late by under a tick (0 would disarm it)."""
    if which == ITIMER_REAL:
        return val
    tv = S.itimerval.from_buffer_copy(val)
    left = tv.it_value.tv_sec * 10**6 + tv.it_value.tv_usec
    tick = round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 10**6)
    if left <= tick:
        return val
    left -= tick
    tv.it_value.tv_sec, tv.it_value.tv_usec = divmod(left, 10**6)
    return bytes(tv)


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """In one batch: the interval timers, then each POSIX timer made again with its id
    (PR_TIMER_CREATE_RESTORE_IDS, turned off again whatever happens) and armed; held for
    the process's next stop (the credentials'), the ids checked once they ran."""
    inj = ctx.inj
    ids: list[tuple[int, int]] = []  # (wanted id, index of its timer_create)
    try:
        with inj.hold(room=128 + 128 * len(rec["posix"])) as b:
            for which, val in enumerate(rec["itimers"]):
                if any(val):
                    b.call(SYS.setitimer, which, b.put(_itimer_value(which, val)), 0)
            if rec["posix"]:
                b.call(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON,
                       0, 0, 0)  # fmt: skip
            # the oldest first: /proc/PID/timers lists the newest first (its list takes
            # each new timer at its head); made in that order, they were listed reversed
            for t in reversed(rec["posix"]):
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
                if "deadline" in t:  # TIMER_ABSTIME: the same wall-clock expiry (past: now)
                    d = t["deadline"]
                    spec = t["spec"][:16] + struct.pack("<qq", d // _NS, d % _NS)
                    b.call(SYS.timer_settime, t["id"], TIMER_ABSTIME, b.put(spec), 0)
                else:
                    b.call(SYS.timer_settime, t["id"], 0, b.put(t["spec"]), 0)
            if rec["posix"]:
                b.call(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF,
                       0, 0, 0)  # fmt: skip
    except BaseException:
        if rec["posix"]:
            inj.raw(SYS.prctl, PR.TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF,
                    0, 0, 0)  # fmt: skip
        raise
    inj.after(lambda: _ids_made(ctx, b, ids))


def _ids_made(ctx: RestoreContext, b: Batch, ids: list[tuple[int, int]]) -> None:
    for want, id_addr in ids:
        got = int.from_bytes(b.read(id_addr, 4), "little")
        if got != want:
            ctx.warnings.append(f"POSIX timer {want} came back as {got}")


_CLOCKS = {0: "realtime", 1: "monotonic", 2: "process-cpu", 3: "thread-cpu", 7: "boottime",
           8: "realtime-alarm", 9: "boottime-alarm", 11: "tai"}  # fmt: skip


def describe(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """``cryo show``: each POSIX timer, its clock, time left or wall-clock expiry."""
    out = []
    for t in rec["posix"]:
        spec = S.itimerspec.from_buffer_copy(t["spec"])
        d: dict[str, Any] = {
            "id": t["id"], "signal": t["signal"],
            "clock": _CLOCKS.get(t["clock"], "cpu" if t["clock"] < 0 else str(t["clock"])),
            "left": spec.it_value.tv_sec + spec.it_value.tv_nsec / _NS,
            "interval": spec.it_interval.tv_sec + spec.it_interval.tv_nsec / _NS,
        }  # fmt: skip
        if "deadline" in t:
            d["absolute"] = t["deadline"] / _NS
        out.append(d)
    return out
