"""Syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH, as Wine uses it): each thread's
configuration is read from outside (PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, Linux
6.11) and given back the same way, once the restorer is gone, so that it sends SIGSYS
for the same system calls (restored without it, a thread made them all: exit 0, found
by probing).

While it is on, a system call from outside the thread's allowed region is turned into a
SIGSYS unless the selector byte says "allow": cryo's injected calls too.  So a thread
whose dispatch is on is only touched when its selector allows system calls at that
moment; otherwise (or without a selector) the checkpoint is refused before anything is
injected, the target untouched.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from cryo.errors import Unsupported
from cryo.linux import libc

PTRACE_SET_SUD_CONFIG, PTRACE_GET_SUD_CONFIG = 0x4210, 0x4211
SYSCALL_DISPATCH_FILTER_ALLOW = 0


class _Config(ctypes.Structure):
    _fields_ = (("mode", ctypes.c_uint64), ("selector", ctypes.c_uint64),
                ("offset", ctypes.c_uint64), ("len", ctypes.c_uint64))  # fmt: skip


def read(tid: int) -> list[int] | None:
    """[mode, selector, offset, len] of a traced, stopped thread whose dispatch is on;
    None when it is off (or the kernel cannot tell: before 6.11 nothing can be seen)."""
    cfg = _Config()
    try:
        libc.ptrace(PTRACE_GET_SUD_CONFIG, tid, ctypes.sizeof(cfg), cfg)
    except OSError as err:
        if err.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise
    return [cfg.mode, cfg.selector, cfg.offset, cfg.len] if cfg.mode else None


def check(pid: int, tids: list[int]) -> None:
    """Before any call is injected in ``pid``: refuse a thread whose dispatch would turn
    the calls into SIGSYS."""
    for tid in tids:
        cfg = read(tid)
        if cfg is None:
            continue
        sel = cfg[1]
        byte = ctypes.create_string_buffer(1)
        if sel:
            try:
                libc.process_vm_readv(pid, [(ctypes.addressof(byte), 1)], [(sel, 1)])
            except OSError:
                sel = 0
        if not sel or byte.raw[0] != SYSCALL_DISPATCH_FILTER_ALLOW:
            raise Unsupported(f"thread {tid}: syscall user dispatch is on and its selector"
                              " does not allow system calls now: cryo's own calls would"
                              " be sent to it as SIGSYS", pid=pid,
                              resource="syscall user dispatch")  # fmt: skip


def restore_thread(ctx: Any, _inj: Any, trec: dict[str, Any]) -> None:
    """Driver hook (the "regs" stage: no call is injected after it): dispatch on again."""
    cfg = trec.get("sud")
    if not cfg:
        return
    t = ctx.threads[ctx.tid_map[trec["tid"]]]
    c = _Config(*cfg)
    libc.ptrace(PTRACE_SET_SUD_CONFIG, t.tid, ctypes.sizeof(c), c)
