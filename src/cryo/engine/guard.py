"""A plain injected call (the scratch mapping's mmap and munmap, which the batch routine
cannot make itself) that the target survives should cryo die in the middle of it.

The call runs from a ``syscall`` in the vDSO that is followed only by register clears
and a ``ret`` (``syscall; xor %edx,%edx; ...; ret``), between a syscall-entry and a
syscall-exit stop (PTRACE_SYSCALL with PTRACE_O_TRACESYSGOOD: no single step, so no
SIGTRAP is ever forced on the task, and the stops' own "signal", 0x85, is not one the
kernel can send if the tracer is gone).  The stack pointer given to the call points
below the task's stack, past its red zone, at the address of a ``mov $15, %rax;
syscall`` (glibc's and musl's __restore_rt, found in the task's text) followed by a
signal frame holding the task's own registers, signal mask and extended state.  Should
cryo die before it has put the registers back, the task goes from the call through
``ret`` into rt_sigreturn, which puts every register back (an interrupted system call
set up to restart, as inject.resume_regs), and it goes on where it was.  The stack bytes
the frame covers are dead by the ABI (the kernel writes its signal frames there) and are
put back when cryo lives.  No such site or gadget, or no room below the stack: the
caller single-steps as before.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
from typing import Any

from cryo import procfs
from cryo.errors import CryoError
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import PTRACE, PTRACE_O

log = logging.getLogger(__name__)
# syscall, then only xor reg,reg (32-bit forms, r8d..r15d too), then ret
_SITE = re.compile(rb"\x0f\x05(?:\x31[\xc0-\xff]|\x45\x31[\xc0-\xff])*\xc3", re.DOTALL)
_RESTORE_RT = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")
_RED_ZONE = 128
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 1, 2, 4
FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2 = 0x46505853, 0x46505845
_SW_RESERVED = 464  # the software-reserved bytes of the FXSAVE area
_SS_INVALID = 3  # an uc_stack rt_sigreturn rejects (EINVAL, ignored): the altstack stays
_cache: dict[tuple[int, int, int], tuple[int, int] | None] = {}


def find_chain(pid: int) -> tuple[int, int] | None:
    """(the vDSO's ``syscall ... ret`` site, a ``mov $15, %rax; syscall`` in the text),
    or None; looked for once per process (its bytes checked again on each use)."""
    try:
        st = procfs.parse_stat(procfs.read(pid, "stat"))
    except CryoError:
        return None
    key = (pid, st.start_code, st.start_stack)
    got = _cache.get(key)
    if got is not None and _still(pid, got):
        return got
    _cache[key] = got = _find(pid)
    return got


def _still(pid: int, chain: tuple[int, int]) -> bool:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return False
    try:
        site, gadget = os.pread(fd, 32, chain[0]), os.pread(fd, 9, chain[1])
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(_SITE.match(site)) and any(gadget.startswith(p) for p in _RESTORE_RT)


def _find(pid: int) -> tuple[int, int] | None:
    try:
        maps = procfs.parse_maps(procfs.read(pid, "maps"))
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except (CryoError, OSError):
        return None
    try:
        site = gadget = 0
        text = sorted((v for v in maps if v.perms[2] == "x" and v.path != "[vsyscall]"),
                      key=lambda v: (v.path != "[vdso]", "libc" not in v.path,
                                     v.start))  # fmt: skip
        for v in text:
            try:
                data = os.pread(fd, v.size, v.start) if v.size <= 64 << 20 else b""
            except OSError:
                continue
            if v.path == "[vdso]" and not site:
                m = _SITE.search(data)
                site = v.start + m.start() if m else 0
            elif v.path != "[vdso]" and not gadget:
                for pat in _RESTORE_RT:
                    at = data.find(pat)
                    if at >= 0:
                        gadget = v.start + at
                        break
            if site and gadget:
                return site, gadget
        return None
    finally:
        os.close(fd)


def frame(at: int, gadget: int, regs: S.user_regs_struct, mask: int, xstate: bytes) -> bytes:
    """The bytes at ``at`` (the stack pointer the call is given): the gadget's address
    (popped by ``ret``; rt_sigreturn takes it for the frame's pretcode), the ucontext
    with ``regs``, ``mask`` and an invalid uc_stack, then the xsave area, 64-aligned."""
    uc = at + 8
    sc = struct.pack("<18Q4H4Q", regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13,
                     regs.r14, regs.r15, regs.rdi, regs.rsi, regs.rbp, regs.rbx, regs.rdx,
                     regs.rax, regs.rcx, regs.rsp, regs.rip, regs.eflags, regs.cs, 0, 0,
                     regs.ss, 0, 0, 0, 0)  # fmt: skip
    head_len = 8 + 8 + 8 + 24 + len(sc) + 8 + 64 + 8  # + fpstate, reserved1[8], sigmask
    fp = (uc + head_len + 63) & ~63
    fpstate = bytearray(xstate) + struct.pack("<I", FP_XSTATE_MAGIC2)
    # PTRACE_GETREGSET leaves the task's feature mask (XCR0) in the reserved bytes
    xfeatures = struct.unpack_from("<Q", xstate, _SW_RESERVED)[0] or 3
    struct.pack_into("<IIQI", fpstate, _SW_RESERVED, FP_XSTATE_MAGIC1, len(xstate) + 4,
                     xfeatures, len(xstate))  # fmt: skip
    out = bytearray(fp - at) + fpstate
    body = struct.pack("<QQQiiQ", UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0,
                       0, _SS_INVALID, 0, 0) + sc + struct.pack("<Q", fp) + bytes(64) \
        + struct.pack("<Q", mask)  # fmt: skip
    struct.pack_into("<Q", out, 0, gadget)
    out[8 : 8 + len(body)] = body
    return bytes(out)


def call(inj: Any, nr: int, args: list[int]) -> int | None:
    """Run ``nr`` guarded as the module says; its raw result, or None if it cannot be
    guarded here (nothing was done then)."""
    from cryo.engine.inject import NO_SYSCALL, resume_regs

    t = inj.t
    if t.options & PTRACE_O.EXITKILL:
        return None  # a restored task dies with cryo: nothing to guard
    chain = find_chain(t.pid)
    if chain is None:
        return None
    site, gadget = chain
    back = resume_regs(inj.saved)
    if -struct.unpack("<q", struct.pack("<Q", inj.saved.rax))[0] == 516 and \
            inj.saved.orig_rax != NO_SYSCALL:  # fmt: skip
        # ERESTART_RESTARTBLOCK: rt_sigreturn voids the restart block; what a signal
        # handler's return would give instead (the call fails with EINTR)
        back = S.user_regs_struct.from_buffer_copy(inj.saved)
        back.rax, back.orig_rax = (-errno.EINTR) & 0xFFFFFFFFFFFFFFFF, NO_SYSCALL
    try:
        xstate = inj.xstate if getattr(inj, "xstate", None) else t.get_xstate()
        inj.xstate = xstate
        size = len(frame(0, 0, back, 0, xstate)) + 64
        at = (inj.saved.rsp - _RED_ZONE - size) & ~63
        if not _room(t.pid, inj.saved.rsp, at):
            return None
        data = frame(at, gadget, back, t.get_sigmask(), xstate)
        old = inj.read(at, len(data))
        inj.write(at, data)
    except OSError:
        return None
    regs = S.user_regs_struct.from_buffer_copy(inj.saved)
    regs.rax, regs.orig_rax, regs.rip, regs.rsp = nr, NO_SYSCALL, site, at
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (
        x & 0xFFFFFFFFFFFFFFFF for x in [*args, 0, 0, 0, 0, 0, 0][:6])
    if not t.options & PTRACE_O.TRACESYSGOOD:
        t.options |= PTRACE_O.TRACESYSGOOD
        libc.ptrace(PTRACE.SETOPTIONS, t.tid, 0, t.options)
    t.setregs(regs)
    _entry_to_exit(t)
    ret = int(t.getregs().rax)
    # from here a death lets the task go on from its own registers (restarting its call)
    t.setregs(back)
    inj.exit_stop = True
    inj.write(at, old)
    return ret - (1 << 64) if ret >= 1 << 63 else ret


def _room(pid: int, sp: int, low: int) -> bool:
    """Is [low, sp) inside the writable mapping that holds the stack pointer?"""
    try:
        maps = procfs.parse_maps(procfs.read(pid, "maps"))
    except CryoError:
        return False
    return any(v.start <= low and sp <= v.end and v.perms[1] == "w" for v in maps)


def _entry_to_exit(t: Any) -> None:
    """From a stop, through the call's syscall-entry stop to its syscall-exit stop;
    signals that arrive meanwhile are held back, other stops resumed."""
    libc.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
    entered = False
    while True:
        stop = t.wait_stop()
        sig, event = stop & 0xFF, stop >> 8
        if not event and sig == 0x85:  # a syscall stop (TRACESYSGOOD)
            if entered:
                return
            entered = True
        elif not event:
            t.defer(sig)
        libc.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
