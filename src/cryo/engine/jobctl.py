"""Job control between a stopped process and its parent, both in the checkpoint.

A child's group stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) tells its parent twice: a
SIGCHLD (CLD_STOPPED, unless the parent ignores SIGCHLD or set SA_NOCLDSTOP) and a
report for waitid(WSTOPPED), which the parent's first such wait takes (the child's
signal->group_exit_code, cleared by a wait without WNOWAIT: kernel/exit.c
wait_task_stopped).  Only a fresh stop tells: a stopped task that a tracer lets go
stops again without a word (kernel/ptrace.c __ptrace_unlink: JOBCTL_STOP_PENDING
without JOBCTL_STOP_CONSUME).

Dump (:func:`dump`, an inject hook in the parent): for each group-stopped child in the
checkpoint, waitid(P_PID, child, WSTOPPED | WNOHANG | WNOWAIT) in the parent tells
whether its report is still there (WNOWAIT: nothing taken); the children whose report
the parent took go into its TASK record (``stops_collected``).

Restart (:func:`stopped_first`, :func:`stop_now`, from the session's finalize): such a
child (its parent a live process of the restart) is finished first, children before
their parents, and let go at once with its stop signal queued (:func:`stop_inside`):
it stops before it runs an instruction of its own, and the stop, a fresh one, tells the
parent, which cryo still holds, all its signals blocked.  There the SIGCHLD is taken
back (rt_sigtimedwait) unless one was pending in the image (a standard signal is
pending once: the same), and a report the parent had taken is taken again (waitid
WSTOPPED | WNOHANG).  Before (found by probing, session 8): the child stopped once let
go, after its parent, whose SIGCHLD handler ran a second time for the one stop and
whose waitid(WSTOPPED) reported it again.

A continue tells the parent the same two ways (SIGCHLD, CLD_CONTINUED, and a report for
waitid(WCONTINUED): the child's SIGNAL_STOP_CONTINUED, which only a SIGCONT after a
stop sets).  Dump: for the parent's other children, waitid(WCONTINUED | WNOHANG |
WNOWAIT) finds those whose report no wait took yet (TASK ``continued_pending``).
Restart (:func:`continued_first`, :func:`continue_now`): each such child is stopped and
continued under ptrace before its last stage, the parent held, which the SIGCHLD is
taken back from.  Before (found by probing, session 9): the report was lost.  A child of
several threads too (session 10; it was left out, and its report lost): its leader alone
takes the SIGSTOP into a group stop that its other threads, held in their ptrace stops,
never join, and the SIGCONT that comes in the middle of it sets SIGNAL_STOP_CONTINUED
all the same (kernel/signal.c prepare_signal: a group stop under way counts as one that
finished and was continued; the SIGCHLD it sends, CLD_STOPPED then, is taken back).
"""

from __future__ import annotations

import os
import signal
import struct
import time
from typing import Any

from cryo import procfs
from cryo.errors import CryoError
from cryo.linux.consts import ERESTART, SYS

P_PID = 1
SYS_WAITID = 247
WNOHANG, WSTOPPED, WNOWAIT, WALL = 0x1, 0x2, 0x1000000, 0x40000000
CLD_STOPPED, CLD_CONTINUED = 5, 6
WCONTINUED = 0x8
SIGINFO_SIZE = 128
SIG_IGN, SA_NOCLDSTOP = 1, 1
TASK = b"TASK"
SIGS = b"SIGS"
KEY = "stops_collected"
CONTINUED = "continued_pending"


# -- dump ------------------------------------------------------------------------------


def dump(ctx: Any) -> None:
    """Driver hook (inject, in the parent, after the task driver's): which of its
    group-stopped children in the checkpoint had their stop collected by a wait, and
    which of its others (continued) have a CLD_CONTINUED report no wait took yet."""
    procs = getattr(ctx.shared, "procs", None) or {}
    kids = [p for p in procs.values() if p.ppid == ctx.pid and not p.zombie
            and p.pid in p.tracees]  # fmt: skip
    if not kids:
        return
    collected: list[int] = []
    continued: list[int] = []
    for i in range(0, len(kids), 64):  # (64 siginfos: 8 KiB of the scratch area)
        part = kids[i : i + 64]
        with ctx.inj.batch() as b:
            bufs = [b.reserve(SIGINFO_SIZE) for _ in part]
            calls = [b.call(SYS_WAITID, P_PID, k.nspid or k.pid, buf,
                            (WSTOPPED if k.tracees[k.pid].group_stop else WCONTINUED)
                            | WNOHANG | WNOWAIT | WALL, 0, may_fail=True)
                     for k, buf in zip(part, bufs, strict=True)]  # fmt: skip
        for k, buf, c in zip(part, bufs, calls, strict=True):
            if b.result(c) < 0:
                continue  # (not its child after all: nothing to say)
            info = b.read(buf, 20)  # (si_code at 8, si_pid at 16: the union is 8-aligned)
            code, pid = struct.unpack_from("<i", info, 8)[0], struct.unpack_from("<i", info, 16)[0]
            if k.tracees[k.pid].group_stop:
                if not (pid and code == CLD_STOPPED):
                    collected.append(k.pid)
            elif pid and code == CLD_CONTINUED:
                continued.append(k.pid)
    if collected:
        ctx.records[TASK][KEY] = collected
    if continued:
        ctx.records[TASK][CONTINUED] = continued


# -- restart ---------------------------------------------------------------------------


def _stop_signal(m: Any) -> int:
    return int(m.ctx.thread_records[0].get("group_stop", 0)) if m.ctx is not None else 0


def stopped_first(made: dict[int, Any]) -> list[int]:
    """The processes (old pids) to finish and let go before the others: those stopped
    whose parent is a live process of the restart, each after its own such children."""
    def depth(old: int) -> int:
        n, seen = 0, set()
        while old in made and old not in seen:
            seen.add(old)
            old = made[old].rec["ppid"]
            n += 1
        return n

    first = [old for old, m in made.items() if _stop_signal(m)
             and m.rec["ppid"] in made and made[m.rec["ppid"]].ctx is not None]  # fmt: skip
    return sorted(first, key=depth, reverse=True)


def _all_stopped(pid: int) -> bool:
    """Every thread of ``pid`` in its group stop (or gone: nothing to wait for)."""
    try:
        return all(procfs.parse_stat(procfs.read(pid, f"task/{t}/stat")).state == "T"
                   for t in os.listdir(f"/proc/{pid}/task"))  # fmt: skip
    except (CryoError, OSError):
        return True


def _shared_pending(pid: int) -> int:
    try:
        return int(procfs.parse_status(procfs.read(pid, "status")).get("ShdPnd", "0"), 16)
    except CryoError:
        return 0


def stop_now(made: dict[int, Any], old: int, nspid: Any) -> None:
    """The process ``old``, finished (its stop signal queued), let go: it stops at once;
    its parent, still held, keeps of that stop what it had at the checkpoint
    (``nspid``: a pid as the processes see it, tree.nspid)."""
    m = made[old]
    for t in m.ctx.threads.values():
        t.detach()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not _all_stopped(m.pid):
        time.sleep(0.0005)
    _take_back(made, m)
    parent = made[m.rec["ppid"]]
    inj = parent.inj
    if old in parent.ctx.records[TASK].get(KEY, ()):
        f = inj.frame()
        inj.raw(SYS_WAITID, P_PID, nspid(m.pid), f.reserve(SIGINFO_SIZE),
                WSTOPPED | WNOHANG | WALL, 0)


def continued_first(made: dict[int, Any]) -> list[int]:
    """The processes (old pids) whose parent, a live process of the restart, had a
    CLD_CONTINUED report of theirs no wait had taken (of one thread or several: the
    stop below is the leader's, see the module's docstring)."""
    return [old for old, m in made.items() if m.ctx is not None and not _stop_signal(m)
            and m.rec["ppid"] in made
            and made[m.rec["ppid"]].ctx is not None
            and old in made[m.rec["ppid"]].ctx.records[TASK].get(CONTINUED, ())]  # fmt: skip


def continue_now(made: dict[int, Any], old: int) -> None:
    """Before its last stage (every signal blocked in it, cryo's tracee): the process
    ``old`` stops and is continued, so that its held parent has a CLD_CONTINUED report
    of it again (the kernel's SIGNAL_STOP_CONTINUED, which only a continue after a stop
    sets).  Its SIGSTOP taken into a group stop (PTRACE_CONT with the signal, from its
    delivery stop); then SIGCONT, and a SIGSTOP at once, which takes the SIGCONT out of
    its queue (a tracee's signals are never ignored) and which it meets, once resumed,
    right after telling its parent it continues (get_signal): left in that delivery stop,
    the SIGSTOP goes with the next resume (signal 0).  It never runs an instruction of
    its own meanwhile.  Then the parent's SIGCHLD is taken back as for a stop."""
    from cryo.linux import libc
    from cryo.linux.consts import PTRACE, PTRACE_EVENT

    m = made[old]
    t = m.ctx.threads[m.pid]

    def step(sig: int, what: str) -> None:
        libc.ptrace(PTRACE.CONT, t.tid, 0, sig)
        stop = t.wait_stop()
        if stop & 0xFF != signal.SIGSTOP or stop >> 8 not in (0, PTRACE_EVENT.STOP):
            raise CryoError(f"process {m.pid}: stop {stop:#x} where {what} was awaited",
                            pid=m.pid)  # fmt: skip

    os.kill(m.pid, signal.SIGSTOP)
    step(0, "its SIGSTOP")
    step(signal.SIGSTOP, "its group stop")
    os.kill(m.pid, signal.SIGCONT)
    os.kill(m.pid, signal.SIGSTOP)
    step(0, "its continue")
    _take_back(made, m)


# calls that only a signal ends: a thread stopped in one goes back into it before it stops
SYS_RT_SIGSUSPEND = 130
_SIGNAL_ONLY = frozenset({SYS_RT_SIGSUSPEND, SYS.pause})


def _inside(trec: dict[str, Any]) -> int:
    """The call (its number) a thread of a stopped process stopped in, when it is one
    that only a signal ends and the stop interrupted it (ERESTARTNOHAND); else 0."""
    from cryo.linux import structs as S

    regs = S.user_regs_struct.from_buffer_copy(trec["regs"])
    nr, ret = regs.orig_rax, regs.rax - (1 << 64) if regs.rax >= 1 << 63 else regs.rax
    return nr if nr in _SIGNAL_ONLY and ret == -ERESTART.NOHAND else 0


def stop_inside(ctx: Any) -> None:
    """Restore hook ("regs" stage, after every thread's registers and mask): a process
    that was stopped (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) stops again, and its parent is
    told (waitid WSTOPPED, with the signal), the signal sent while cryo still holds every
    thread, once, from its leader's record.  The kernel drops SIGTSTP, SIGTTIN and
    SIGTTOU in an orphaned process group (a restored job whose parent is not in its
    session usually is one): SIGSTOP then.  A process whose parent is in the restart is
    finished and let go before its parent (:func:`stop_now`): it stops while its parent
    is held, which keeps of the stop what it had at the checkpoint (its SIGCHLD, its
    wait's report).

    A thread that stopped inside sigsuspend or pause stops there again, as it was:
    /proc/PID/task/TID/syscall names the call, SigBlk is the call's temporary mask (the
    thread's own is its saved_sigmask, put back when the call returns).  Before (found
    by probing, session 11): it stopped before it entered the call again (the stop
    signal, queued while cryo held it, met on its way back to user space), "-1" and its
    own mask; right again once continued.  Each such thread (its registers set up to
    run the call again) is resumed, still traced, and sleeps in the call again; the
    signal is then sent to the first of them, which takes it into a group stop
    (PTRACE_CONT with it from its delivery stop) that wakes the others out of their
    calls into their group-stop traps: each as the kernel leaves a task stopped inside
    the call (ERESTARTNOHAND, the call's number, its temporary mask and the saved one).
    Let go, each stops again at once, without a word (kernel/ptrace.c __ptrace_unlink);
    the other threads, still held, join the stop when let go (before they enter their
    calls again: "-1").  With a signal pending (queued again at restart: a call could
    return for it, a handler run), the signal is sent at once: every thread stops
    before it enters its call again."""
    from cryo.engine import task
    from cryo.linux import libc
    from cryo.linux.consts import PTRACE, PTRACE_EVENT

    sig = int(ctx.thread_records[0].get("group_stop", 0)) if ctx.thread_records else 0
    if not sig:
        return
    if sig != signal.SIGSTOP and task._orphaned_pgrp(ctx.pid):
        sig = signal.SIGSTOP
    calls = [(ctx.threads[ctx.tid_map[t["tid"]]], nr) for t in ctx.thread_records
             if (nr := _inside(t))]  # fmt: skip
    if not calls or ctx.records[SIGS]["pending_shared"] or \
            any(t["pending"] for t in ctx.thread_records):  # fmt: skip
        os.kill(ctx.pid, sig)
        return
    for t, _nr in calls:
        libc.ptrace(PTRACE.CONT, t.tid, 0, 0)
    deadline = time.monotonic() + 5.0
    for t, nr in calls:  # each asleep in its call again
        while not _sleeps_in(ctx.pid, t.tid, nr):
            if time.monotonic() > deadline:
                raise CryoError(f"thread {t.tid} of process {ctx.pid} did not go back into"
                                f" its call {nr}", pid=ctx.pid)  # fmt: skip
            time.sleep(0.0005)
    first = calls[0][0]
    libc.syscall(SYS.tgkill, ctx.pid, first.tid, sig)
    stop = first.wait_stop()
    if stop != sig:
        raise CryoError(f"process {ctx.pid}: stop {stop:#x} where its signal {sig} was"
                        " awaited", pid=ctx.pid)  # fmt: skip
    libc.ptrace(PTRACE.CONT, first.tid, 0, sig)  # into the group stop
    for t, _nr in calls:
        stop = t.wait_stop()
        if stop not in (sig, sig | PTRACE_EVENT.STOP << 8):  # (attached, or seized)
            raise CryoError(f"thread {t.tid} of process {ctx.pid}: stop {stop:#x} where its"
                            " group stop was awaited", pid=ctx.pid)  # fmt: skip


def _sleeps_in(pid: int, tid: int, nr: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as f:
            return f.read().split(b" ", 1)[0] == str(nr).encode()
    except OSError:
        return False


def _take_back(made: dict[int, Any], m: Any) -> None:
    """The SIGCHLD that the stop (or the continue) of ``m`` sent its held parent taken
    back, unless one was pending there in the image."""
    parent = made[m.rec["ppid"]]
    sigs = parent.ctx.records[SIGS]
    act = sigs["actions"].get(signal.SIGCHLD) or sigs["actions"].get(str(int(signal.SIGCHLD)))
    handler, flags = struct.unpack_from("<QQ", act) if act else (0, 0)
    if handler == SIG_IGN or flags & SA_NOCLDSTOP:
        return
    bit = 1 << (signal.SIGCHLD - 1)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not _shared_pending(parent.pid) & bit:
        time.sleep(0.0005)
    pending = [struct.unpack_from("<i", info)[0] for info in
               [*sigs["pending_shared"], *(i for t in parent.ctx.thread_records
                                           for i in t["pending"])]]  # fmt: skip
    if signal.SIGCHLD not in pending and _shared_pending(parent.pid) & bit:
        f = parent.inj.frame()  # (the set, a zero timeout)
        parent.inj.raw(SYS.rt_sigtimedwait, f.put(bit.to_bytes(8, "little")), 0,
                       f.put(bytes(16)), 8)  # fmt: skip
