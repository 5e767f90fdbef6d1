"""Registers: general purpose (user_regs_struct, with fs/gs base) and the xsave area
(x87, SSE, AVX, AVX-512, MXCSR).  A task stopped inside a system call is set up to
restart that call.

A relative nanosleep or clock_nanosleep interrupted by the freeze keeps its remaining
time: the kernel wrote it to the call's ``rem`` argument when it was interrupted (part of
the saved memory), and the restored task sleeps that long, the call rerun with ``rem``
as its request.  Without a ``rem`` pointer the remaining time exists only in the kernel's
restart block, which does not survive the task: the whole sleep runs again.

What the restart block keeps (ERESTART_RESTARTBLOCK, run by restart_syscall): poll() its
fds and the absolute monotonic end of its timeout; FUTEX_WAIT with a timeout its word,
value, bitset and absolute end; nanosleep/clock_nanosleep the absolute expiry and the
``rem`` pointer.  No interface reads it back; a BPF task iterator does: the checkpoint
saves the time left of poll, relative FUTEX_WAIT and rem-less relative sleeps (THRD
``restart``), and the restart rebuilds the block by injecting the same call with that
time left (engine/restartblock.py); the thread resumes with restart_syscall.  Without
BPF (no CAP_BPF, no BTF) or when the rebuilt call ends otherwise (the word changed, an fd
is ready) the call runs again whole, so that it may end late, never early (CRIU makes
these calls return EINTR).  epoll_wait and epoll_pwait keep no restart block (EINTR):
their timeout's end is read off the sleeping thread's kernel stack just before the
freeze, and they run again with what is left (engine/restartblock.py).
ppoll, select and pselect6 restart with ERESTARTNOHAND after the kernel wrote the time
left into the caller's timeout (part of the saved memory): run again, they wait only that
long (unless the STICKY_TIMEOUTS personality)."""

from __future__ import annotations

import errno
from typing import Any

from cryo.engine import restartblock, sched
from cryo.engine.inject import NO_SYSCALL, Injector
from cryo.engine.ptrace import EINTR_BY_TRACER, Tracee
from cryo.errors import ImageIncompatible
from cryo.linux import structs as S
from cryo.linux.consts import ERESTART, SYS

# calls whose restart block is lost with the task: run them again from the start
_RERUN = {SYS.nanosleep, SYS.clock_nanosleep, SYS.poll, SYS.ppoll, SYS.select, SYS.pselect6,
          SYS.epoll_wait, SYS.epoll_pwait, SYS.futex}  # fmt: skip


def dump(tracee: Tracee, inj: Injector, early: dict[str, Any] | None = None) -> dict[str, Any]:
    """The thread's registers, and where the freeze interrupted a sleep whose time left
    only the kernel held, that time (``early``: the session's reads before the freeze)."""
    out: dict[str, Any] = {"regs": bytes(inj.saved), "xstate": tracee.get_xstate()}
    restartblock.refuse(tracee.pid, tracee.tid, inj.saved)
    if restartblock.wanted(inj.saved):
        block = restartblock.dump(tracee.tid, inj.saved, early)
        if block is not None:
            out["restart"] = block
    elif early and restartblock.EARLY in early:
        block = restartblock.dump_epoll(tracee, inj.saved, early[restartblock.EARLY])
        if block is not None:
            out["restart"] = block
    return out


def signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def final_regs(data: bytes, signals: bool = True) -> S.user_regs_struct:
    """The registers to resume with: an interrupted syscall is set up to run again; one
    that the freeze made fail with EINTR too, where no signal (``signals``: the thread
    has one pending it does not block) explains it (ptrace.EINTR_BY_TRACER)."""
    regs = S.user_regs_struct.from_buffer_copy(data)
    nr, ret = signed(regs.orig_rax), signed(regs.rax)
    if nr >= 0:
        eintr = -ret == errno.EINTR and nr in EINTR_BY_TRACER and not signals
        if eintr or -ret in (ERESTART.SYS, ERESTART.NOINTR, ERESTART.NOHAND):
            regs.rax = nr
            regs.rip -= 2
        elif -ret == ERESTART.RESTARTBLOCK:
            if nr in _RERUN:
                regs.rax = nr
                regs.rip -= 2
                _keep_remaining(regs, nr)
            else:
                regs.rax = (-errno.EINTR) & 0xFFFFFFFFFFFFFFFF
    regs.orig_rax = NO_SYSCALL
    return regs


TIMER_ABSTIME = 1


def _takes_signal(trec: dict[str, Any]) -> bool:
    """Has the thread a pending signal it does not block (queued again at restart)?"""
    pending = 0
    for info in trec.get("pending", []):
        pending |= 1 << (int.from_bytes(info[:4], "little") - 1)
    return bool(pending & ~trec["blocked"])


def _keep_remaining(regs: S.user_regs_struct, nr: int) -> None:
    """A relative sleep with a ``rem`` pointer sleeps only what the kernel left there."""
    if nr == SYS.nanosleep and regs.rsi:  # nanosleep(req, rem)
        regs.rdi = regs.rsi
    elif nr == SYS.clock_nanosleep and not regs.rsi & TIMER_ABSTIME and regs.r10:
        regs.rdx = regs.r10  # clock_nanosleep(clock, flags, req, rem)


def check(trec: dict[str, Any], xstate_here: int) -> None:
    if len(trec["xstate"]) != xstate_here:
        raise ImageIncompatible(
            f"the image's FPU state is {len(trec['xstate'])} bytes, this CPU's is {xstate_here}:"
            " the image comes from a CPU with other extended state"
        )


def restart_block(ctx: Any, inj: Injector, trec: dict[str, Any]) -> None:
    """Thread hook ("late" stage: every process built and its pages checked, so that
    the rebuilt block's time runs from as near the let-go as can be): the restart block
    of a thread whose sleep only it held (engine/restartblock.py), unless a signal it
    takes first voids the block."""
    if "restart" in trec and trec["restart"]["fn"] not in restartblock.STACKED and \
            not _takes_signal(trec):  # fmt: skip
        saved = S.user_regs_struct.from_buffer_copy(trec["regs"])
        restartblock.rebuild(inj, saved, trec["restart"])


def restore(tracee: Tracee, inj: Injector, trec: dict[str, Any]) -> None:
    """The thread's last step: registers, then its scheduling (from outside: an idle or
    real-time policy must not slow or race the restore); a stopped process is stopped
    again once every thread's registers are set (jobctl.stop_inside)."""
    tracee.set_xstate(trec["xstate"])
    # (a thread group-stopped when seized: an EINTR is the stop's, kept as a continue
    # gives it, epoll_wait's among them: signal(7); cryo's interrupt made none)
    regs = final_regs(trec["regs"], _takes_signal(trec) or bool(trec.get("group_stop")))
    if "restart" in trec:
        saved = S.user_regs_struct.from_buffer_copy(trec["regs"])
        if trec["restart"]["fn"] == "epoll":
            regs = restartblock.final_epoll(saved, regs, trec["restart"])
        elif trec["restart"]["fn"] == "timespec":  # (sigtimedwait, semtimedop, pwait2)
            restartblock.final_timespec(tracee, saved, regs, trec["restart"])
        else:
            regs = restartblock.final(tracee, saved, regs)
    inj.finish(regs)
    sched.restore_thread(tracee.tid, trec)
