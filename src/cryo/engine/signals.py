"""Signals: the action of each of the 64 signals, the blocked mask, pending signals
(per thread and process-wide, with their siginfo) and the alternate signal stack."""

from __future__ import annotations

import ctypes
import signal
import struct
from collections.abc import Generator
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch, Injector
from cryo.engine.ptrace import Tracee
from cryo.engine.timers import ns_tid
from cryo.linux import structs as S
from cryo.linux.consts import NSIG, SYS

KIND = b"SIGS"
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)
ALL_SIGNALS = 0xFFFFFFFFFFFFFFFF
_SIZEOF_ACT = ctypes.sizeof(S.kernel_sigaction)
_SIZEOF_STACK = ctypes.sizeof(S.stack_t)
_PER_BATCH = 256  # siginfo queued per batch: 32 KiB of the scratch area


def dump(ctx: DumpContext, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Queue hook (drivers.py), process-wide: the action of every signal and the
    process-wide pending signals."""
    sigs = [s for s in range(1, NSIG + 1) if s not in _UNCATCHABLE]
    buf = b.reserve(_SIZEOF_ACT * len(sigs))
    for k, sig in enumerate(sigs):
        b.call(SYS.rt_sigaction, sig, 0, buf + k * _SIZEOF_ACT, 8)
    yield
    raw = b.read(buf, _SIZEOF_ACT * len(sigs))
    actions = {sig: raw[k * _SIZEOF_ACT : (k + 1) * _SIZEOF_ACT] for k, sig in enumerate(sigs)}
    return {
        "pid": ctx.pid,
        "actions": actions,
        "pending_shared": ctx.tracee.pending(shared=True),
    }


def dump_thread(tracee: Tracee, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Per thread, its call queued in its batch ``b`` (threads.dump): blocked mask,
    pending signals, alternate stack."""
    buf = b.reserve(_SIZEOF_STACK)
    b.call(SYS.sigaltstack, 0, buf)
    yield
    return {
        "blocked": tracee.get_sigmask(),
        "pending": tracee.pending(shared=False),
        "altstack": b.read(buf, _SIZEOF_STACK),
    }


def restore_actions(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Every action, SIGTRAP's included (cryo's injected calls never force a SIGTRAP on
    a task that ignores or blocks it: Tracee.step), in one batch; those the process has
    already, byte for byte (the restore helper's, cryo's own when it was forked, as
    tree.build noted them: ``born_actions``), are left as they are."""
    inj = ctx.inj
    for sig, act in rec["actions"].items():
        if int(sig) == signal.SIGTRAP and \
                S.kernel_sigaction.from_buffer_copy(act).sa_handler == 1:  # fmt: skip
            for t in {ctx.tracee, inj.t, *ctx.threads.values()}:
                t.sigtrap_ignored = True  # before the call that makes it so
    have: dict[int, bytes] = getattr(inj, "born_actions", None) or {}
    actions = [(sig, act) for sig, act in rec["actions"].items() if have.get(int(sig)) != act]
    if have:
        setattr(inj, "born_actions", None)  # (a child it forks from now on has these)  # noqa: B010
    with inj.hold(room=len(actions) * _SIZEOF_ACT) as b:  # (with the next stop's calls)
        buf = b.put(b"".join(act for _sig, act in actions))  # one write for all of them
        for k, (sig, _act) in enumerate(actions):
            b.call(SYS.rt_sigaction, int(sig), buf + k * _SIZEOF_ACT, 0, 8)


def restore_altstack(inj: Injector, trec: dict[str, Any]) -> None:
    ss = S.stack_t.from_buffer_copy(trec["altstack"])
    if ss.ss_flags & 1:  # SS_ONSTACK is read-only state: the kernel derives it from rsp
        ss.ss_flags &= ~1
    with inj.hold(room=len(bytes(ss))) as b:
        b.call(SYS.sigaltstack, b.put(bytes(ss)), 0)


def restore_pending(ctx: RestoreContext, rec: dict[str, Any],
                    threads: list[dict[str, Any]]) -> None:  # fmt: skip
    """Queue the pending signals again, from the task to itself, with every signal
    blocked in every thread (each thread's own mask is set at the very end).  The pids
    given to the calls are the ones the process sees (its own pid namespace's)."""
    inj = ctx.inj
    for t in ctx.threads.values():
        t.set_sigmask(ALL_SIGNALS)
    pid = ns_tid(ctx.pid, ctx.pid)
    shared = rec["pending_shared"]
    for at in range(0, len(shared), _PER_BATCH):
        with inj.batch() as b:
            for info in shared[at : at + _PER_BATCH]:
                signo = struct.unpack_from("<i", info)[0]
                b.call(SYS.rt_sigqueueinfo, pid, signo, b.put(info))
    injectors = getattr(ctx, "injectors", None) or {}
    for trec in threads:
        new_tid = ctx.tid_map[trec["tid"]]
        tid = ns_tid(ctx.pid, new_tid)
        # from the thread itself: the kernel lets no other thread queue a signal with
        # the siginfo of a tgkill or of the kernel (si_code SI_TKILL or >= 0)
        tinj = injectors.get(new_tid, inj)
        # and the signals that came while cryo held it (kill()'s from outside...), with
        # their siginfo: once every signal is blocked, none is taken any more
        held = ctx.threads.get(new_tid)
        deferred: list[bytes] = []
        if held is not None:
            deferred = [raw for _s, raw in held.deferred_signals if len(raw) == S.SIGINFO_SIZE]
            held.deferred_signals = [d for d in held.deferred_signals
                                     if len(d[1]) != S.SIGINFO_SIZE]  # fmt: skip
        infos = [*trec["pending"], *deferred]
        for at in range(0, len(infos), _PER_BATCH):  # (their siginfo fill the scratch area)
            with tinj.batch() as b:
                for info in infos[at : at + _PER_BATCH]:
                    signo = struct.unpack_from("<i", info)[0]
                    b.call(SYS.rt_tgsigqueueinfo, pid, tid, signo, b.put(info))


def describe(rec: dict[str, Any], threads: list[dict[str, Any]]) -> dict[str, Any]:
    acts = {}
    for sig, raw in rec["actions"].items():
        a = S.kernel_sigaction.from_buffer_copy(raw)
        if a.sa_handler == 0:
            continue
        name = signal.Signals(int(sig)).name if int(sig) in signal.Signals._value2member_map_ \
            else f"SIG{sig}"  # fmt: skip
        acts[name] = "ignore" if a.sa_handler == 1 else f"handler {a.sa_handler:#x}"
    main = threads[0]
    ss = S.stack_t.from_buffer_copy(main["altstack"])
    return {
        "actions": acts,
        "blocked": f"{main['blocked']:#018x}",
        "pending": [struct.unpack_from("<i", i)[0] for t in threads for i in t["pending"]],
        "pending_shared": [struct.unpack_from("<i", i)[0] for i in rec["pending_shared"]],
        "altstack": None if ss.ss_flags & 2 else f"{ss.ss_sp:#x}+{ss.ss_size}",
    }
