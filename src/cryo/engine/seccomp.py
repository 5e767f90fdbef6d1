"""seccomp, per thread: strict mode, or the stack of filters (classic BPF programs, the
first installed first, each with its SECCOMP_FILTER_FLAG_LOG), inherited and TSYNC'd
ones included (the kernel shows every thread the whole chain it runs).

The filters never apply to cryo's own injected calls: a task under seccomp is traced
with PTRACE_O_SUSPEND_SECCOMP before its first injected call (cryo.engine.inject), at
checkpoint and at restart, and refused before anything is touched if the kernel does
not allow that.  At restart each thread installs its filters again itself, with an
injected seccomp(SECCOMP_SET_MODE_FILTER), while it still has CAP_SYS_ADMIN (so
no_new_privs is not needed, as for the original), and strict mode last of all.  Threads
that share the first filters of their chains (inherited, or TSYNC'd into all) share them
again: those are installed in the leader before the other threads are made, which
inherit them, so that a later SECCOMP_FILTER_FLAG_TSYNC by the program works as it would
have (the kernel needs the same filter objects, not equal ones)."""

from __future__ import annotations

import ctypes
import struct
from typing import Any

from cryo import procfs
from cryo.engine.inject import Batch, Injector
from cryo.engine.ptrace import Tracee
from cryo.errors import Unsupported
from cryo.linux import structs as S
from cryo.linux.consts import PR, SECCOMP_MODE, SECCOMP_SET, SYS


def mode(pid: int, tid: int) -> int:
    status = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    return int(status.get("Seccomp", "0"))


_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_RET_USER_NOTIF = 0x7FC00000


def _notifies(prog: bytes) -> bool:
    """Does the filter ever return SECCOMP_RET_USER_NOTIF (a constant return)?"""
    for i in range(0, len(prog), 8):
        code, _jt, _jf, k = struct.unpack_from("<HBBI", prog, i)
        if code == _BPF_RET_K and k & 0xFFFF0000 == _RET_USER_NOTIF:
            return True
    return False


def dump_thread(pid: int, tracee: Tracee) -> dict[str, Any]:
    m = mode(pid, tracee.tid)
    filters = tracee.seccomp_filters() if m == SECCOMP_MODE.FILTER else []
    if any(_notifies(prog) for prog, _flags in filters):
        raise Unsupported(f"thread {tracee.tid} of process {pid} has a seccomp filter that"
                          " hands calls to a user-space notifier (SECCOMP_RET_USER_NOTIF),"
                          " which cannot be connected again", pid=pid,
                          resource="seccomp notifier")  # fmt: skip
    return {"seccomp": {"mode": m, "filters": [[prog, flags] for prog, flags in filters]}}


def _chain(trec: dict[str, Any]) -> list[tuple[bytes, int]]:
    sc = trec.get("seccomp") or {}
    if sc.get("mode") != SECCOMP_MODE.FILTER:
        return []
    return [(bytes(prog), int(flags)) for prog, flags in sc["filters"]]


def restore_shared(inj: Injector, trecs: list[dict[str, Any]], options: int) -> None:
    """In the leader, before the other threads are made: the filters at the start of
    every thread's chain, which the threads then inherit (the same filters, as in the
    original, and as a later TSYNC needs).  Each thread installs the rest of its own
    chain later (restore_filters)."""
    chains = [_chain(t) for t in trecs]
    common = 0
    while all(len(c) > common and c[common] == chains[0][common] for c in chains):
        common += 1
    if not common:
        return
    inj.t.suspend_seccomp(options)
    _install(inj, chains[0][:common])
    for t in trecs:
        t["seccomp"]["inherited"] = common  # not saved: read by restore_filters


def _install(inj: Injector, chain: list[tuple[bytes, int]]) -> None:
    with inj.batch() as b:
        _queue_install(b, chain)


def _queue_install(b: Batch, chain: list[tuple[bytes, int]]) -> None:
    for prog, flags in chain:
        addr = b.put(prog)
        fprog = S.sock_fprog(len(prog) // ctypes.sizeof(S.sock_filter), addr)
        b.call(SYS.seccomp, SECCOMP_SET.MODE_FILTER, flags, b.put(bytes(fprog)),
               what=" installing a seccomp filter")  # fmt: skip


def restore_filters(inj: Injector, trec: dict[str, Any], options: int) -> None:
    """Install the thread's filters, those it did not inherit from the leader (needs
    CAP_SYS_ADMIN or no_new_privs); from now on the thread is traced with its seccomp
    suspended (``options``: those in force)."""
    sc = trec.get("seccomp")
    if not sc or sc["mode"] == SECCOMP_MODE.DISABLED:
        return
    inj.t.suspend_seccomp(options)
    _install(inj, _chain(trec)[sc.get("inherited", 0):])


def queue_filters(b: Batch, trec: dict[str, Any]) -> None:
    """:func:`restore_filters` as calls of a batch (the thread's seccomp already
    suspended: Tracee.suspend_seccomp)."""
    sc = trec.get("seccomp")
    if sc and sc["mode"] != SECCOMP_MODE.DISABLED:
        _queue_install(b, _chain(trec)[sc.get("inherited", 0):])


def restore_strict(inj: Injector, trec: dict[str, Any]) -> None:
    """Strict mode, the thread's very last own call (then only read, write, exit and
    sigreturn are allowed; our later calls are not, being suspended)."""
    with inj.batch() as b:
        queue_strict(b, trec)


def queue_strict(b: Batch, trec: dict[str, Any]) -> None:
    sc = trec.get("seccomp")
    if sc and sc["mode"] == SECCOMP_MODE.STRICT:
        b.call(SYS.prctl, PR.SET_SECCOMP, SECCOMP_MODE.STRICT, 0, 0, 0)


def describe(trec: dict[str, Any]) -> str | None:
    sc = trec.get("seccomp")
    if not sc or not sc["mode"]:
        return None
    if sc["mode"] == SECCOMP_MODE.STRICT:
        return "strict"
    return f"{len(sc['filters'])} filter(s)"

