"""Signals: the action of each of the 64 signals, the blocked mask, pending signals
(per thread and process-wide, with their siginfo) and the alternate signal stack."""

from __future__ import annotations

import ctypes
import signal
import struct
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.linux import structs as S
from cryo.linux.consts import NSIG, SYS

KIND = b"SIGS"
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)
ALL_SIGNALS = 0xFFFFFFFFFFFFFFFF
_SIZEOF_ACT = ctypes.sizeof(S.kernel_sigaction)
_SIZEOF_STACK = ctypes.sizeof(S.stack_t)


def dump(ctx: DumpContext) -> dict[str, Any]:
    inj = ctx.inj
    actions: dict[int, bytes] = {}
    for sig in range(1, NSIG + 1):
        if sig in _UNCATCHABLE:
            continue
        inj(SYS.rt_sigaction, sig, 0, inj.scratch, 8)
        actions[sig] = inj.read(inj.scratch, _SIZEOF_ACT)
    inj(SYS.sigaltstack, 0, inj.scratch)
    altstack = inj.read(inj.scratch, _SIZEOF_STACK)
    return {
        "pid": ctx.pid,
        "actions": actions,
        "blocked": ctx.tracee.get_sigmask(),
        "pending": ctx.tracee.peek_siginfo(shared=False),
        "pending_shared": ctx.tracee.peek_siginfo(shared=True),
        "altstack": altstack,
    }


def restore_actions(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    for sig, act in rec["actions"].items():
        addr = inj.put(act)
        inj(SYS.rt_sigaction, int(sig), addr, 0, 8)
    ss = S.stack_t.from_buffer_copy(rec["altstack"])
    if ss.ss_flags & 1:  # SS_ONSTACK is read-only state: the kernel derives it from rsp
        ss.ss_flags &= ~1
    inj(SYS.sigaltstack, inj.put(bytes(ss)), 0)


def restore_pending(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Queue the pending signals again, to ourselves, with every signal blocked."""
    inj = ctx.inj
    ctx.tracee.set_sigmask(ALL_SIGNALS)
    for info, shared in [(i, True) for i in rec["pending_shared"]] + [
        (i, False) for i in rec["pending"]
    ]:
        signo = struct.unpack_from("<i", info)[0]
        addr = inj.put(info)
        if shared:
            inj(SYS.rt_sigqueueinfo, ctx.pid, signo, addr)
        else:
            inj(SYS.rt_tgsigqueueinfo, ctx.pid, ctx.pid, signo, addr)


def restore_mask(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    ctx.tracee.set_sigmask(rec["blocked"])


def describe(rec: dict[str, Any]) -> dict[str, Any]:
    acts = {}
    for sig, raw in rec["actions"].items():
        a = S.kernel_sigaction.from_buffer_copy(raw)
        if a.sa_handler == 0:
            continue
        name = signal.Signals(int(sig)).name if int(sig) in signal.Signals._value2member_map_ \
            else f"SIG{sig}"  # fmt: skip
        acts[name] = "ignore" if a.sa_handler == 1 else f"handler {a.sa_handler:#x}"
    ss = S.stack_t.from_buffer_copy(rec["altstack"])
    return {
        "actions": acts,
        "blocked": f"{rec['blocked']:#018x}",
        "pending": [struct.unpack_from("<i", i)[0] for i in rec["pending"]],
        "pending_shared": [struct.unpack_from("<i", i)[0] for i in rec["pending_shared"]],
        "altstack": None if ss.ss_flags & 2 else f"{ss.ss_sp:#x}+{ss.ss_size}",
    }
