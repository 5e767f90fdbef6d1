"""Registers: general purpose (user_regs_struct, with fs/gs base) and the xsave area
(x87, SSE, AVX, AVX-512, MXCSR).  A task stopped inside a system call is set up to
restart that call."""

from __future__ import annotations

import errno
from typing import Any

from cryo.engine import sched
from cryo.engine.inject import NO_SYSCALL, Injector
from cryo.engine.ptrace import Tracee
from cryo.errors import ImageIncompatible
from cryo.linux import structs as S
from cryo.linux.consts import ERESTART, SYS

# calls whose restart block is lost with the task: run them again from the start
_RERUN = {SYS.nanosleep, SYS.clock_nanosleep, SYS.poll, SYS.ppoll, SYS.select, SYS.pselect6,
          SYS.epoll_wait, SYS.epoll_pwait, SYS.futex}  # fmt: skip


def dump(tracee: Tracee, inj: Injector) -> dict[str, Any]:
    return {"regs": bytes(inj.saved), "xstate": tracee.get_xstate()}


def signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def final_regs(data: bytes) -> S.user_regs_struct:
    """The registers to resume with: an interrupted syscall is set up to run again."""
    regs = S.user_regs_struct.from_buffer_copy(data)
    nr, ret = signed(regs.orig_rax), signed(regs.rax)
    if nr >= 0:
        if -ret in (ERESTART.SYS, ERESTART.NOINTR, ERESTART.NOHAND):
            regs.rax = nr
            regs.rip -= 2
        elif -ret == ERESTART.RESTARTBLOCK:
            if nr in _RERUN:
                regs.rax = nr
                regs.rip -= 2
            else:
                regs.rax = (-errno.EINTR) & 0xFFFFFFFFFFFFFFFF
    regs.orig_rax = NO_SYSCALL
    return regs


def check(trec: dict[str, Any], xstate_here: int) -> None:
    if len(trec["xstate"]) != xstate_here:
        raise ImageIncompatible(
            f"the image's FPU state is {len(trec['xstate'])} bytes, this CPU's is {xstate_here}:"
            " the image comes from a CPU with other extended state"
        )


def restore(tracee: Tracee, inj: Injector, trec: dict[str, Any]) -> None:
    """The thread's last step: registers, then its scheduling (from outside: an idle or
    real-time policy must not slow or race the restore)."""
    tracee.set_xstate(trec["xstate"])
    inj.finish(final_regs(trec["regs"]))
    sched.restore_thread(tracee.tid, trec)
