"""Running system calls inside a stopped task.

The task is held in a ptrace-stop.  We point its instruction pointer at a ``syscall``
instruction that already exists in its address space (the vDSO has several, each after
``mov $nr, %eax``), load the arguments, single-step once and read the result.  Nothing
is written into the task's code.  Buffers the calls need live in a scratch mapping that
we map at the start and unmap at the end.
"""

from __future__ import annotations

import ctypes
import logging
import re
import signal

from cryo import procfs
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError, InternalError, Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import MAP, PROT, SYS

log = logging.getLogger(__name__)
_SYSCALL_IN_VDSO = re.compile(rb"\xb8[\x00-\xff]{2}\x00\x00\x0f\x05", re.DOTALL)
SCRATCH_SIZE = 64 * 1024
NO_SYSCALL = 0xFFFFFFFFFFFFFFFF  # orig_rax = -1: not in a syscall, no restart


def find_vdso_syscall(pid: int) -> int:
    for vma in procfs.parse_maps(procfs.read(pid, "maps")):
        if vma.path == "[vdso]":
            buf = bytearray(vma.size)
            libc.process_vm_readv(pid, [(libc.buffer_address(buf), vma.size)],
                                  [(vma.start, vma.size)])  # fmt: skip
            m = _SYSCALL_IN_VDSO.search(bytes(buf))
            if m:
                return vma.start + m.start() + 5
    raise CryoError(f"no syscall instruction found in the vDSO of {pid}", pid=pid)


class SyscallError(OSError):
    pass


class Injector:
    """Executes syscalls in ``tracee``; restores its registers on :meth:`finish`."""

    def __init__(self, tracee: Tracee, syscall_addr: int) -> None:
        self.t = tracee
        self.syscall_addr = syscall_addr
        self.saved = tracee.getregs()
        self.scratch = 0
        self.scratch_size = 0
        self.calls = 0
        self._seccomp_checked = False

    def _first_call(self) -> None:
        """Before the first call into a task: a SIGTRAP it ignores is never forced on it
        (Tracee.step); under seccomp (strict or filters), seccomp is suspended for as long
        as we trace the task, or the task is refused before it is touched."""
        self._seccomp_checked = True
        try:
            with open(f"/proc/{self.t.pid}/task/{self.t.tid}/status", "rb") as f:
                status = procfs.parse_status(f.read())
        except OSError:
            return  # gone: the call will say so
        if int(status.get("SigIgn", "0"), 16) & 1 << (signal.SIGTRAP - 1):
            self.t.sigtrap_ignored = True
        mode = status.get("Seccomp", "0")
        if mode == "0":
            return
        try:
            self.t.suspend_seccomp()
        except OSError as err:
            raise Unsupported(
                f"thread {self.t.tid} of process {self.t.pid} runs under seccomp (mode"
                f" {mode}) and cryo may not suspend it ({err.strerror}: PTRACE_O_SUSPEND_"
                "SECCOMP needs CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE); its filter"
                " could deny or kill cryo's injected calls", pid=self.t.pid,
                resource="seccomp") from err  # fmt: skip

    def raw(self, nr: int, *args: int) -> int:
        """Run syscall ``nr``; returns the kernel's raw result (negative errno on failure)."""
        if len(args) > 6:
            raise InternalError("a syscall takes at most 6 arguments")
        if not self._seccomp_checked:
            self._first_call()
        regs = S.user_regs_struct.from_buffer_copy(self.saved)
        a = [*args, 0, 0, 0, 0, 0, 0]
        regs.rax = nr
        regs.orig_rax = NO_SYSCALL
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (x & 0xFFFFFFFFFFFFFFFF
                                                                      for x in a[:6])  # fmt: skip
        regs.rip = self.syscall_addr
        self.t.setregs(regs)
        self.t.step()
        self.calls += 1
        ret = int(self.t.getregs().rax)
        return ret - (1 << 64) if ret >= (1 << 63) else ret

    def __call__(self, nr: int, *args: int, what: str = "") -> int:
        ret = self.raw(nr, *args)
        if -4096 < ret < 0:
            name = SYS(nr).name if nr in SYS._value2member_map_ else str(nr)
            import os

            raise SyscallError(-ret, f"{os.strerror(-ret)} [{name} in pid {self.t.tid}{what}]")
        return ret

    # -- scratch memory ----------------------------------------------------
    def map_scratch(self, size: int = SCRATCH_SIZE, addr: int = 0, exe: bool = False) -> int:
        prot = PROT.READ | PROT.WRITE | (PROT.EXEC if exe else 0)
        flags = MAP.PRIVATE | MAP.ANONYMOUS | (MAP.FIXED_NOREPLACE if addr else 0)
        self.scratch = self(SYS.mmap, addr, size, prot, flags, -1, 0)
        self.scratch_size = size
        return self.scratch

    def unmap_scratch(self) -> None:
        if self.scratch:
            self(SYS.munmap, self.scratch, self.scratch_size)
            self.scratch = 0

    def write(self, addr: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        libc.process_vm_writev(self.t.tid, [(ctypes.addressof(buf), len(data))],
                               [(addr, len(data))])  # fmt: skip

    def read(self, addr: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        libc.process_vm_readv(self.t.tid, [(ctypes.addressof(buf), size)], [(addr, size)])
        return buf.raw

    def put(self, data: bytes) -> int:
        """Copy ``data`` to the start of the scratch area; returns its address (for a call
        that takes one buffer; several: :meth:`frame`)."""
        return self.frame().put(data)

    def put_str(self, s: str) -> int:
        return self.frame().put_str(s)

    def frame(self) -> ScratchFrame:
        """The scratch area for one call's buffers, laid out one after another."""
        return ScratchFrame(self)


    def finish(self, regs: S.user_regs_struct | None = None) -> None:
        """Put the task's registers back (or set ``regs``)."""
        self.t.setregs(regs if regs is not None else self.saved)


class ScratchFrame:
    """Buffers for one injected call (or a few that go together), each placed after the
    previous one, 16-byte aligned, in the injector's scratch area: no offsets by hand."""

    def __init__(self, inj: Injector) -> None:
        self.inj = inj
        self.used = 0

    def reserve(self, size: int) -> int:
        """Room for ``size`` bytes (a buffer the call fills); returns its address."""
        at = self.used
        if at + size > self.inj.scratch_size:
            raise InternalError("scratch area too small")
        self.used = (at + size + 15) & ~15
        return self.inj.scratch + at

    def put(self, data: bytes) -> int:
        addr = self.reserve(len(data))
        self.inj.write(addr, data)
        return addr

    def put_str(self, s: str) -> int:
        return self.put(s.encode(errors="surrogateescape") + b"\0")
