"""The address-space layout that exec computes, for processes whose layout is not cryo's.

At execve the kernel lays out a process's address space from its personality and its
RLIMIT_STACK at that moment (arch_pick_mmap_layout): mm->mmap_base (where mmap(NULL)
searches down from), mm->mmap_legacy_base and the bottom-up or top-down choice
(MMF_TOPDOWN), and the task's PF_RANDOMIZE (randomized, or not: ADDR_NO_RANDOMIZE).
No call sets them afterwards.  A restored process is forked from cryo (or from its
restored parent) and never exec'd, so it has cryo's (its parent's): right for an
ordinary process, wrong for one started under ``setarch -R`` (gdb's and rr's default),
``setarch -L`` (ADDR_COMPAT_LAYOUT) or a large or unlimited ``ulimit -s``, whose next
mmap(NULL) would land elsewhere than in an uninterrupted run.

Such a process is made so that its layout is computed again as it was: the helper sets
the personality and the RLIMIT_STACK, then execs a tiny static ELF stub (held in a
memfd, :func:`stub_fd`), and is rebuilt from there as any other (its stub's mappings
unmapped, the image's made).  What decides it is :class:`Layout`, the part of the
exec-time state the layout depends on: a process whose Layout is the one it would
inherit (cryo's for a root, its restored parent's for a child) keeps the fast path.

What cannot be known: the RLIMIT_STACK at the process's exec if it changed it since (the
current one is taken), and a randomized base (a new one is drawn, as exec would).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import struct
from typing import Any, NamedTuple, NoReturn

from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError
from cryo.linux import libc
from cryo.linux.consts import PTRACE, PTRACE_EVENT, PTRACE_O, SYS

ADDR_NO_RANDOMIZE = 0x0040000
MMAP_PAGE_ZERO = 0x0100000
ADDR_COMPAT_LAYOUT = 0x0200000
RLIM_INFINITY = 2**64 - 1
RLIMIT_STACK = 3
_TASK_SIZE = 0x7FFFFFFFF000  # (DEFAULT_MAP_WINDOW: the 47-bit space exec lays out)
_SIZE_128M = 128 << 20
_STACK_RND = 0x3FFFFF << 12  # stack_maxrandom_size of a 64-bit task that randomizes
SYS_EXECVEAT = 322
AT_EMPTY_PATH = 0x1000


class Layout(NamedTuple):
    """What exec's layout depends on: randomized or not, bottom-up (legacy) or top-down,
    and the gap kept below the stack (a function of RLIMIT_STACK; None when legacy)."""

    randomized: bool
    legacy: bool
    gap: int | None


class Plan(NamedTuple):
    """How a helper gets a process's layout: the personality and RLIMIT_STACK to exec
    with."""

    layout: Layout
    personality: int
    stack: tuple[int, int]


def _sysctl(name: str, default: int) -> int:
    try:
        with open(f"/proc/sys/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


_guard: int | None = None


def _guard_gap() -> int:
    """stack_guard_gap (the kernel's stack_guard_gap= parameter, in pages; 256 by
    default)."""
    global _guard
    if _guard is None:
        pages = 256
        with contextlib.suppress(OSError, ValueError), open("/proc/cmdline") as f:
            for word in f.read().split():
                if word.startswith("stack_guard_gap="):
                    pages = int(word.split("=", 1)[1], 0)
        _guard = pages << 12
    return _guard


def layout_of(personality: int, stack_soft: int) -> Layout:
    """The layout exec gives a process of ``personality`` under a soft RLIMIT_STACK of
    ``stack_soft`` (arch/x86/mm/mmap.c: mmap_is_legacy, mmap_base)."""
    randomized = not personality & ADDR_NO_RANDOMIZE and \
        _sysctl("kernel/randomize_va_space", 2) != 0  # fmt: skip
    legacy = bool(personality & ADDR_COMPAT_LAYOUT) or _sysctl("vm/legacy_va_layout", 0) != 0
    if legacy:
        return Layout(randomized, True, None)
    gap = stack_soft
    pad = (_STACK_RND if randomized else 0) + _guard_gap()
    if gap + pad < 2**64:  # (values close to RLIM_INFINITY would overflow: not added)
        gap += pad
    gap = min(max(gap, _SIZE_128M), _TASK_SIZE // 6 * 5)
    return Layout(randomized, False, gap)


_own: Layout | None = None


def own() -> Layout:
    """cryo's own layout, which a helper forked from it has (its RLIMIT_STACK now taken
    for the one at its exec: cryo does not change it)."""
    global _own
    if _own is None:
        with open("/proc/self/personality") as f:
            pers = int(f.read(), 16)
        _own = layout_of(pers, resource.getrlimit(resource.RLIMIT_STACK)[0])
    return _own


def plan(task: dict[str, Any] | None) -> Plan | None:
    """The exec plan of a process whose TASK record is ``task`` (None: a zombie)."""
    if task is None:
        return None
    limits = task["rlimits"]
    stack = tuple(limits.get(RLIMIT_STACK, limits.get(str(RLIMIT_STACK), (8 << 20,) * 2)))
    pers = int(task["personality"])
    # (MMAP_PAGE_ZERO would map page 0 at the exec: the image has that mapping if the
    # process kept it; the whole personality is set again before memory: task.py)
    return Plan(layout_of(pers, int(stack[0])), pers & ~MMAP_PAGE_ZERO,
                (int(stack[0]), int(stack[1])))


# -- the stub ----------------------------------------------------------------------------

_BASE = 0x400000  # (below the restorer area, which is above 0x10000000: memory.free_area)
_ENTRY = 64 + 2 * 56  # (the code after the ELF header and two program headers)


def _stub() -> bytes:
    """A static ELF64 executable of one PT_LOAD: exit_group(127).  It never runs: its
    helper is traced from before the exec and taken at the stop right after it."""
    code = b"\xbf\x7f\x00\x00\x00" b"\xb8\xe7\x00\x00\x00" b"\x0f\x05"  # edi=127; exit_group
    ehsize, phsize, phnum = 64, 56, 2
    off = _ENTRY
    size = off + len(code)
    eh = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                     2, 62, 1, _BASE + off, ehsize, 0, 0, ehsize, phsize, phnum,
                     0, 0, 0)  # fmt: skip
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)  # PT_GNU_STACK rw-
    return eh + load + stack + code


_fd: int | None = None


def stub_fd() -> int:
    """An fd of a memfd holding the stub, inherited (not close-on-exec, above 100) by
    every helper and every process made from one, until each gets its own fds (the files
    stage closes every other); made once per cryo process."""
    global _fd
    if _fd is None:
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            mfd = os.memfd_create("cryo-layout", flags | getattr(os, "MFD_EXEC", 0x10))
        except OSError:  # (before Linux 6.3 no MFD_EXEC; vm.memfd_noexec=2 refuses it)
            mfd = os.memfd_create("cryo-layout", flags)
        try:
            os.write(mfd, _stub())
            os.fchmod(mfd, 0o500)
            fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)  # fmt: skip
            _fd = fcntl.fcntl(mfd, fcntl.F_DUPFD, 100)
        finally:
            os.close(mfd)
    return _fd


def become(p: Plan | None, fd: int) -> NoReturn:
    """In a freshly forked helper: traced by its parent, stopped; with a plan, first
    its personality and RLIMIT_STACK set and the stub exec'd (which stops it: the
    SIGTRAP of an exec under PTRACE_TRACEME)."""
    try:
        libc.ptrace(PTRACE.TRACEME, 0)
        if p is None:
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            libc.syscall(SYS.personality, p.personality)
            soft, hard = (resource.RLIM_INFINITY if v >= 2**63 else v for v in p.stack)
            resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))
            os.execve(fd, [b"cryo-layout"], {})  # noqa: S606 (cryo's stub, by its fd)
    finally:
        os._exit(127)


def exec_child(t: Tracee, inj: Any, p: Plan, fd: int, area: int, options: int) -> None:
    """A child just cloned by its restored parent (stopped, traced with the ptrace
    ``options`` it inherited; ``inj`` its injector, whose syscall instruction is at
    ``area``, inherited): personality and RLIMIT_STACK set, then the stub exec'd from
    there.  It is then stopped right after the exec, with none of its parent's
    mappings: it is to be made as a root."""
    inj(SYS.personality, p.personality)
    inj(SYS.prlimit64, 0, RLIMIT_STACK, inj.put(struct.pack("<QQ", *p.stack)), 0,
        what=" prlimit64 RLIMIT_STACK")  # fmt: skip
    inj.flush()
    frame = inj.frame()
    empty = frame.put(b"\0")
    name = frame.put(b"cryo-layout\0")
    argv = frame.put(struct.pack("<QQ", name, 0))
    envp = frame.put(struct.pack("<Q", 0))
    regs = t.getregs()
    regs.rax, regs.orig_rax = SYS_EXECVEAT, 2**64 - 1
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8 = fd, empty, argv, envp, AT_EMPTY_PATH
    regs.rip = area  # (syscall; int3)
    regs.eflags &= ~0x100
    t.setregs(regs)
    libc.ptrace(PTRACE.SETOPTIONS, t.tid, 0, options | PTRACE_O.TRACEEXEC)
    try:
        libc.ptrace(PTRACE.CONT, t.tid, 0, 0)
        while True:
            stop = t.wait_stop()
            if stop >> 8 == PTRACE_EVENT.EXEC:
                # (a call injected from this stop would have its rax overwritten by the
                # exec's return: one step first, whose trap comes as the call returns,
                # at the stub's entry, and is dropped when the task is resumed)
                t.step()
                return
            if stop & 0xFF == signal.SIGTRAP and not stop >> 8:  # the int3: it failed
                rax = int(t.getregs().rax)
                err = 2**64 - rax if rax >= 2**63 else 0
                raise CryoError(f"could not give process {t.pid} the layout of its exec"
                                f" (execveat of cryo's stub: {os.strerror(err)})", pid=t.pid)
            if stop >> 8:  # (another event: none is expected)
                libc.ptrace(PTRACE.CONT, t.tid, 0, 0)
                continue
            t.defer(stop & 0xFF)  # a signal meanwhile: kept for later, as the injector does
            libc.ptrace(PTRACE.CONT, t.tid, 0, 0)
    finally:
        with contextlib.suppress(OSError):
            libc.ptrace(PTRACE.SETOPTIONS, t.tid, 0, options)


def prepare(tasks: dict[int, dict[str, Any]]) -> None:
    """Before the first process of a restart is forked: the stub's fd made if a process
    may be exec'd for its layout (any whose layout is not cryo's), so that every helper
    and every process forked from one has it."""
    if any(p is not None and p.layout != own() for p in map(plan, tasks.values())):
        stub_fd()


def close() -> None:
    """The stub's fd closed (the end of a restart)."""
    global _fd
    if _fd is not None:
        with contextlib.suppress(OSError):
            os.close(_fd)
        _fd = None
