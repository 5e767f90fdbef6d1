"""Running system calls inside a stopped task.

The task is held in a ptrace-stop.  The first call (the mmap of a scratch mapping) and
the last (its munmap) run from a ``syscall`` instruction that already exists in the
task's address space (the vDSO has several, each after ``mov $nr, %eax``): registers
loaded, one single step, the result read.  Every other call runs through the batch
routine (batch.S) that the injector writes at the end of the executable scratch
mapping: it walks a table of calls, stores each result, and ends by sending its own
thread a signal the process ignores, which is the one ptrace stop cryo waits for
(:meth:`Injector.batch`; a single call is a batch of one).

Why that end and no single step (issue 9: the target survives the death of cryo at
every moment).  When a tracer dies, the kernel (exit_ptrace -> __ptrace_detach ->
__ptrace_unlink) only unlinks its tracees: it does not clear the single-step state
(TIF_SINGLESTEP, the trap flag it forced, the SYSCALL_EXIT_TRAP work that raises a
SIGTRAP after a stepped ``syscall``; only PTRACE_DETACH's ptrace_disable and a resume
do), and a task in a signal-delivery stop is woken with its exit_code still the stopped
signal, which ptrace_signal then delivers.  So a single-stepped call killed its target
by SIGTRAP whenever cryo died between the step and the next resume, and left its
registers pointing into the vDSO.  Through the routine, whatever the moment:

- before it runs, or while it runs: the task runs the rest of the table untraced, sends
  itself the stop signal, which the kernel discards (an ignored signal, not blocked,
  sent to an untraced task), and at ``back`` puts every register back from the resume
  block (the saved ones, an interrupted system call set up to restart as the kernel
  would have) and jumps to where it was;
- in the stop at ``back``: the kernel delivers the stop signal, ignored, and the task
  goes on at ``back`` as above, or with its own registers once cryo put them back (they
  are put back right after each batch), the kernel restarting an interrupted call.

What is left at worst is the rest of one batch of calls (cryo's checkpoint calls only
read state) and the scratch mapping.  No signal is forced, none is left pending, no
instruction of cryo's runs once it is back.  A target that forbids writable and
executable mappings (PR_SET_MDWE), or one where no ignored signal is unblocked, gets
single calls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from cryo import procfs
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError, InternalError, Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import ERESTART, MAP, MREMAP, PROT, PTRACE, PTRACE_EVENT, PTRACE_O, SYS

log = logging.getLogger(__name__)
_SYSCALL_IN_VDSO = re.compile(rb"\xb8[\x00-\xff]{2}\x00\x00\x0f\x05", re.DOTALL)
SCRATCH_SIZE = 64 * 1024
NO_SYSCALL = 0xFFFFFFFFFFFFFFFF  # orig_rax = -1: not in a syscall, no restart

# The batch routine, assembled from batch.S (`as batch.S && objdump -d`): code at the
# start of the region, the resume registers at 0x200, the table's header at 0x300 and
# its entries from 0x320, 64 bytes each.
BATCH_CODE = bytes.fromhex(
    "4c8d25f90200004d8b2c244d8d7c24204531f64d39ee7355410fb64f0385c97412410fb7570448c1e206498b"
    "541458498914cf410fb707498b7f08498b7710498b57184d8b57204d8b47284d8b4f300f0549894738483d01"
    "f0ffff720741f6470201740949ffc64983c740eba64d89742408b8270000000f054889c3b8ba0000000f0548"
    "89c64889df498b542410b8ea0000000f05488d2564010000ff35ee0100009d4c8b3d560100004c8b35570100"
    "004c8b2d580100004c8b2559010000488b2d5a010000488b1d5b0100004c8b1d5c0100004c8b155d0100004c"
    "8b0d5e0100004c8b055f010000488b0560010000488b0d61010000488b1562010000488b3563010000488b3d"
    "64010000488b2585010000ff2567010000"
)  # fmt: skip
BATCH_REGION = 8192  # at the end of the scratch mapping
BATCH_BACK = 0x95  # the instruction after the routine's tgkill: where it stops
_RESUME, _HEADER, _ENTRIES, _ENTRY = 0x200, 0x300, 0x320, 64
BATCH_MAX = (BATCH_REGION - _ENTRIES) // _ENTRY  # entries per run (a batch may be longer)
_MAY_FAIL = 1 << 16
# a signal the process ignores ends a batch: these by default, or any it set to SIG_IGN
# except those whose sending has an effect of its own (SIGCONT, the stop signals)
_DEFAULT_IGNORED = (signal.SIGURG, signal.SIGWINCH, signal.SIGCHLD)
_NEVER_STOP_WITH = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP,
                    signal.SIGTTIN, signal.SIGTTOU, signal.SIGTRAP}  # fmt: skip
# calls that could take the routine's own page away: always run from the plain syscall
_PKEY_MPROTECT = 329
_MAPPING_CALLS = {SYS.munmap, SYS.mremap, SYS.mprotect, SYS.mmap, SYS.madvise, _PKEY_MPROTECT}
_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
_FORK_EVENTS = (PTRACE_EVENT.FORK, PTRACE_EVENT.VFORK, PTRACE_EVENT.CLONE)
STATS = {"batches": 0, "batched_calls": 0, "single_calls": 0}


def find_vdso_syscall(pid: int, maps: list[procfs.Vma] | None = None) -> int:
    """A syscall instruction in the vDSO of ``pid`` (whose maps are ``maps`` if given: a
    restore helper forked from cryo has cryo's)."""
    for vma in procfs.parse_maps(procfs.read(pid, "maps")) if maps is None else maps:
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


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _name(nr: int) -> str:
    return SYS(nr).name if nr in SYS._value2member_map_ else str(nr)


X86_EFLAGS_TF = 0x100  # the trap flag: a program that single-steps itself sets it


def syscall_error(nr: int, ret: int, tid: int, what: str = "") -> SyscallError:
    return SyscallError(-ret, f"{os.strerror(-ret)} [{_name(nr)} in pid {tid}{what}]")


def resume_regs(saved: S.user_regs_struct) -> S.user_regs_struct:
    """The registers a task stopped with ``saved`` goes on with in user space, as the
    kernel would set them on its way back without a signal: an interrupted system call
    set up to run again (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND: the same call;
    ERESTART_RESTARTBLOCK: restart_syscall, whose restart block the task still holds)."""
    regs = S.user_regs_struct.from_buffer_copy(saved)
    if _signed(regs.orig_rax) >= 0:
        err = -_signed(regs.rax)
        if err in (ERESTART.SYS, ERESTART.NOINTR, ERESTART.NOHAND):
            regs.rax, regs.rip = regs.orig_rax, regs.rip - 2
        elif err == ERESTART.RESTARTBLOCK:
            regs.rax, regs.rip = SYS.restart_syscall, regs.rip - 2
    regs.orig_rax = NO_SYSCALL
    return regs


class Ref(NamedTuple):
    """An argument that is the result of an earlier call of the same batch (an fd)."""

    call: int


class Batch:
    """System calls run in one go by the batch routine (:meth:`Injector.batch`).

    ``call`` queues a call and returns its index; arguments may be integers, buffers
    in the scratch area (``put``, ``put_str``, ``reserve``: the batch's own frame) or
    ``Ref(i)`` / ``ref(i)``, the result of call ``i``.  The calls run when the ``with``
    block ends, in order, each once, stopping at the first that fails (unless queued
    with ``may_fail=True``), which raises the same SyscallError as a single call would,
    naming it; results are read afterwards: ``result(i)`` (the raw result, a negative
    errno for a call that may fail), ``read(addr, size)``."""

    def __init__(self, inj: Injector, frame: ScratchFrame | None = None) -> None:
        self.inj = inj
        self.frame = frame or inj.frame()
        self.calls: list[tuple[int, tuple[int | Ref, ...], bool, str]] = []
        self.results: list[int] = []
        self.unsplit: dict[int, int] = {}  # first call -> one past the last: one run
        self._snap: tuple[int, bytes] | None = None  # the frame as the calls left it

    def call(self, nr: int, *args: int | Ref, may_fail: bool = False, what: str = "") -> int:
        if len(args) > 6:
            raise InternalError("a syscall takes at most 6 arguments")
        if sum(isinstance(a, Ref) for a in args) > 1:
            raise InternalError("a batched call takes at most one earlier result")
        for a in args:
            if isinstance(a, Ref) and not 0 <= a.call < len(self.calls):
                raise InternalError(f"call {len(self.calls)} refers to call {a.call}")
        self.calls.append((int(nr), args, may_fail, what))
        return len(self.calls) - 1

    @staticmethod
    def ref(index: int) -> Ref:
        return Ref(index)

    def put(self, data: bytes) -> int:
        return self.frame.put(data)

    def put_str(self, s: str) -> int:
        return self.frame.put_str(s)

    def reserve(self, size: int) -> int:
        return self.frame.reserve(size)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """The calls queued in the block run in one run of the routine, with no stop in
        between (a window bracketed by clock reads: engine/timers.py), where they fit."""
        first = len(self.calls)
        yield
        if len(self.calls) - first > 1:
            self.unsplit[first] = len(self.calls)

    def run(self, keep: bool = False) -> None:
        """Run the queued calls (:meth:`Injector.run_batch`).  ``keep``: then read the
        frame's buffers back in one go, and :meth:`read` answers from that copy, so that
        later calls into the same scratch area (another batch, another driver's) do not
        change what this batch's calls wrote (the drivers' queued batches)."""
        self.results = self.inj.run_batch(self.calls, self.unsplit)
        used = self.frame.used  # (a frame of the scratch area: from its start)
        self._snap = (self.inj.scratch, self.inj.read(self.inj.scratch, used)) \
            if keep and used and type(self.frame) is ScratchFrame else None  # fmt: skip

    def room(self) -> int:
        """Bytes of the scratch area this batch's buffers may still take."""
        return self.inj.scratch_size - BATCH_REGION - self.frame.used

    def result(self, index: int) -> int:
        return self.results[index]

    def read(self, addr: int, size: int) -> bytes:
        if self._snap is not None:
            base, data = self._snap
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base : addr - base + size]
        return self.inj.read(addr, size)


class Injector:
    """Executes syscalls in ``tracee``; restores its registers on :meth:`finish`."""

    def __init__(self, tracee: Tracee, syscall_addr: int) -> None:
        self.t = tracee
        self.syscall_addr = syscall_addr
        self.saved = tracee.getregs()
        self.scratch = 0
        self.scratch_size = 0
        self.calls = 0
        self.stops = 0
        self._seccomp_checked = False
        self.exit_stop = False  # in the syscall-exit stop of a guarded call (guard.py)
        self.xstate = b""  # the task's extended state, read once for guard.py
        self._routine: int | None = None  # the region's address, 0: none, None: not known
        self._routine_of = (0, 0)  # the scratch (address, size) it was looked for in
        # (address, size, executable) of the scratch mapping map_scratch made (an injector
        # of another thread of the process may be given it with the scratch itself)
        self.scratch_known: tuple[int, int, bool] | None = None
        self._ignored: list[int] = []  # signals the process ignores, in order of choice
        self.born: int | None = None  # the pid (ours) of the last child a batch forked
        self._after: list[Callable[[], None]] = []  # (hold: checks of calls not yet run)
        # batching off: CRYO_NO_BATCH=1 (benchmarks compare the two in one run)
        self.batching = os.environ.get("CRYO_NO_BATCH", "") in ("", "0")

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
        ign = int(status.get("SigIgn", "0"), 16)
        cgt = int(status.get("SigCgt", "0"), 16)
        if ign & 1 << (signal.SIGTRAP - 1):
            self.t.sigtrap_ignored = True
        self._ignored = [int(s) for s in _DEFAULT_IGNORED if not cgt & 1 << (s - 1)]
        self._ignored += [s for s in range(1, 65) if ign & 1 << (s - 1)
                          and s not in _NEVER_STOP_WITH and s not in self._ignored]  # fmt: skip
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
        if not self._plain(nr, args):
            return self.run_batch([(nr, args, True, "")])[0]
        return self._single(nr, *args)

    def _plain(self, nr: int, args: tuple[int | Ref, ...]) -> bool:
        """Must this call run from the plain syscall instruction: no routine here, or
        the call may change the routine's own mapping?"""
        region = self.routine()
        if not region:
            return True
        if nr not in _MAPPING_CALLS:
            return False
        if any(isinstance(a, Ref) for a in args[:2]):
            return True
        start = int(args[0]) if args else 0  # type: ignore[arg-type]
        size = int(args[1]) if len(args) > 1 else 0  # type: ignore[arg-type]
        if start < region + BATCH_REGION and region < start + max(size, 1):
            return True
        if nr != SYS.mremap:
            return False
        # mremap(old, old_size, new_size, flags, new): the old range is checked above; a
        # move to a fixed address (MREMAP_FIXED, or MREMAP_DONTUNMAP's new range) could
        # land on the routine, a growth in place (new_size > old_size) could not (the
        # routine's mapping is in the way: ENOMEM)
        if len(args) < 4 or any(isinstance(a, Ref) for a in args[2:5]):
            return True
        flags = int(args[3])  # type: ignore[arg-type]
        if not flags & MREMAP.FIXED:
            return False
        if len(args) < 5:
            return True
        new, new_size = int(args[4]), int(args[2])  # type: ignore[arg-type]
        return new < region + BATCH_REGION and region < new + max(new_size, 1)

    def _single(self, nr: int, *args: int) -> int:
        """One call from the plain syscall instruction: guarded (engine/guard.py: the
        target survives cryo's death in the middle of it), or by a single step."""
        from cryo.engine import guard

        got = guard.call(self, nr, list(args)) if self.batching else None
        if got is not None:
            self.calls += 1
            self.stops += 2
            STATS["single_calls"] += 1
            if self._routine and nr in _MAPPING_CALLS and got >= 0:
                self._routine = None
            return got
        regs = S.user_regs_struct.from_buffer_copy(self.saved)
        regs.eflags &= ~X86_EFLAGS_TF  # (the program's own single-stepping: not ours)
        a = [*args, 0, 0, 0, 0, 0, 0]
        regs.rax = nr
        regs.orig_rax = NO_SYSCALL
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (x & 0xFFFFFFFFFFFFFFFF
                                                                      for x in a[:6])  # fmt: skip
        regs.rip = self.syscall_addr
        self.t.setregs(regs)
        self.t.step(self.syscall_addr + 2)
        self.calls += 1
        self.stops += 1
        STATS["single_calls"] += 1
        ret = _signed(int(self.t.getregs().rax))
        region = self._routine
        if region and nr in _MAPPING_CALLS and ret >= 0:
            self._routine = None  # the routine's mapping may have changed: look again
        return ret

    def __call__(self, nr: int, *args: int, what: str = "") -> int:
        ret = self.raw(nr, *args)
        if -4096 < ret < 0:
            raise syscall_error(nr, ret, self.t.tid, what)
        return ret

    # -- batches -------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """``with inj.batch() as b: i = b.call(SYS.x, ...)``: the calls run together at
        the end of the block (one ptrace stop for up to BATCH_MAX calls; single calls
        where the routine cannot run); then ``b.result(i)``.  See :class:`Batch`."""
        b = Batch(self)
        yield b
        b.run()

    def routine(self) -> int:
        """The batch routine's region in this task's scratch mapping (written there the
        first time), or 0 where it cannot run: no executable scratch mapping, batching
        turned off, or the region does not fit."""
        if self._routine_of != (self.scratch, self.scratch_size):
            self._routine = None
        if self._routine is None:
            self._routine, self._routine_of = 0, (self.scratch, self.scratch_size)
            if self.batching and self.scratch and self.scratch_size > 2 * BATCH_REGION \
                    and self._scratch_executable():  # fmt: skip
                region = self.scratch + self.scratch_size - BATCH_REGION
                self.write(region, BATCH_CODE)
                self._routine = region
        return self._routine

    def _scratch_executable(self) -> bool:
        known = self.scratch_known  # (mapped by map_scratch: no need to read the maps)
        if known is not None and known[:2] == (self.scratch, self.scratch_size):
            return known[2]
        try:
            maps = procfs.parse_maps(procfs.read(self.t.pid, "maps"))
        except CryoError:
            return False
        end = self.scratch + self.scratch_size
        return any(v.start <= end - BATCH_REGION and end <= v.end and v.perms[2] == "x"
                   and v.perms[1] == "w" for v in maps)  # fmt: skip

    def _stop_signal(self) -> tuple[int, int | None]:
        """A signal to end a batch with: one the process ignores and this thread does
        not block (sent to an untraced task, the kernel discards it).  In a restored
        task, which dies with cryo (PTRACE_O_EXITKILL), any of the default-ignored ones,
        unblocked for the batch if need be: (signal, mask to set back after, if any).
        The kernel's mask, not the program's: while a flood is held at bay every signal
        but those ignored when it began is blocked, and a restored task's actions may
        have changed since (seen: a restored process catching SIGCHLD, SIGURG and
        SIGWINCH, flooded, spun for ever in the routine, its stop signal blocked)."""
        mask = self.t.kernel_sigmask()
        for sig in self._ignored:
            if not mask & 1 << (sig - 1):
                return sig, None
        if self.t.options & PTRACE_O.EXITKILL:
            pending = self._pending()
            for sig in _DEFAULT_IGNORED:  # one not pending: its unblocking delivers nothing
                if not pending & 1 << (sig - 1):
                    return int(sig), mask if mask & 1 << (sig - 1) else None
        return 0, None

    def _pending(self) -> int:
        try:
            with open(f"/proc/{self.t.pid}/task/{self.t.tid}/status", "rb") as f:
                status = procfs.parse_status(f.read())
        except OSError:
            return ~0
        return int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)

    def run_batch(self, calls: list[tuple[int, tuple[int | Ref, ...], bool, str]],
                  unsplit: dict[int, int] | None = None) -> list[int]:  # fmt: skip
        """Run ``calls`` ((nr, args, may_fail, what) each) in order; their raw results.
        The first that fails and may not raises SyscallError (the rest do not run).
        ``unsplit``: {first: end} ranges of calls begun in a new run of the routine
        rather than cut by the end of one (where they fit in one)."""
        if not self._seccomp_checked:
            self._first_call()
        results: list[int] = []
        i = 0
        while i < len(calls):
            run: list[tuple[int, list[int], int, int]] = []  # nr, args, flags, ref
            while i + len(run) < len(calls) and len(run) < BATCH_MAX:
                end = unsplit.get(i + len(run)) if unsplit else None
                if end is not None and run and len(run) + end - (i + len(run)) > BATCH_MAX \
                        and end - (i + len(run)) <= BATCH_MAX:  # fmt: skip
                    break
                nr, args, may_fail, _what = calls[i + len(run)]
                if self._plain(nr, args):
                    break
                vals, ref = self._args(args, results, i)
                run.append((nr, vals, _MAY_FAIL if may_fail else 0, ref))
            if not run:  # one call on its own, from the plain syscall instruction
                nr, args, may_fail, what = calls[i]
                ret = self._single(nr, *self._args(args, results, i, plain=True)[0])
                results.append(ret)
                i += 1
                if -4096 < ret < 0 and not may_fail:
                    raise syscall_error(nr, ret, self.t.tid, what)
                continue
            got = self._run(run)
            for k, ret in enumerate(got):
                nr, _args, may_fail, what = calls[i + k]
                results.append(ret)
                if -4096 < ret < 0 and not may_fail:
                    raise syscall_error(nr, ret, self.t.tid, what)
            i += len(got)
        return results

    @staticmethod
    def _args(args: tuple[int | Ref, ...], results: list[int], first: int,
              plain: bool = False) -> tuple[list[int], int]:  # fmt: skip
        """The argument values (a reference to a call of an earlier run replaced by its
        result) and the reference to a call of this run, encoded for the table."""
        vals: list[int] = []
        ref = 0
        for n, a in enumerate(args):
            if isinstance(a, Ref):
                if a.call < first or plain:
                    vals.append(results[a.call] & 0xFFFFFFFFFFFFFFFF)
                    continue
                ref = (n + 1) << 24 | (a.call - first) << 32
                vals.append(0)
            else:
                vals.append(int(a) & 0xFFFFFFFFFFFFFFFF)
        return vals, ref

    def _run(self, run: list[tuple[int, list[int], int, int]]) -> list[int]:
        """One run of the routine over ``run``; the raw results of the calls made (a
        failing call that may not fail is the last)."""
        region = self._routine
        assert region
        sig, mask = self._stop_signal()
        if not sig:  # no signal to stop with: one call at a time, as before
            return self._one_by_one(run)
        table = bytearray(_ENTRIES - _RESUME + len(run) * _ENTRY)
        table[:ctypes.sizeof(S.user_regs_struct)] = bytes(resume_regs(self.saved))
        struct.pack_into("<QQQ", table, _HEADER - _RESUME, len(run), 0, sig)
        for k, (nr, vals, flags, ref) in enumerate(run):
            struct.pack_into("<Q6Q", table, _ENTRIES - _RESUME + k * _ENTRY,
                             nr | flags | ref, *(vals + [0] * 6)[:6])  # fmt: skip
        self.write(region + _RESUME, bytes(table))
        regs = S.user_regs_struct.from_buffer_copy(self.saved)
        regs.rip = region
        regs.eflags &= ~X86_EFLAGS_TF
        regs.orig_rax = NO_SYSCALL
        if mask is not None:
            self.t.set_kernel_sigmask(mask & ~(1 << (sig - 1)))
        self.t.batch_signal = sig
        try:
            self.t.setregs(regs)
            self.exit_stop = False
            self._wait_back(region + BATCH_BACK, sig)
        finally:
            self.t.batch_signal = 0
            if mask is not None:
                self.t.set_kernel_sigmask(mask)
        # back in cryo's hands: its own registers at once, so that from here on the
        # task would go on exactly as it was should cryo die
        self.t.setregs(self.saved)
        out = self.read(region + _HEADER, _ENTRIES - _HEADER + len(run) * _ENTRY)
        done = struct.unpack_from("<Q", out, 8)[0]
        n = min(done + 1, len(run))
        self.calls += n
        STATS["batches"] += 1
        STATS["batched_calls"] += n
        return [_signed(struct.unpack_from("<Q", out, 32 + k * _ENTRY + 56)[0])
                for k in range(n)]  # fmt: skip

    def _one_by_one(self, run: list[tuple[int, list[int], int, int]]) -> list[int]:
        out: list[int] = []
        for nr, vals, flags, ref in run:
            args = list(vals)
            if ref:
                args[(ref >> 24 & 0xFF) - 1] = out[ref >> 32] & 0xFFFFFFFFFFFFFFFF
            out.append(self._single(nr, *args))
            if -4096 < out[-1] < 0 and not flags & _MAY_FAIL:
                break
        return out

    def _wait_back(self, back: int, sig: int) -> None:
        """Let the routine run until it stops itself at ``back`` with ``sig``; signals
        that arrive meanwhile are held back (delivered when we let go), other stops
        (events, a group stop) resumed."""
        libc.ptrace(PTRACE.CONT, self.t.tid, 0, 0)
        while True:
            stop = self.t.wait_stop()
            self.stops += 1
            got, event = stop & 0x7F, stop >> 8
            if not event:  # a signal-delivery stop: ours, or one that arrived
                rip = self.t.getregs().rip
                if got == sig and rip == back:
                    return
                if got in _FAULTS and back - BATCH_BACK <= rip < back - BATCH_BACK + BATCH_REGION:
                    raise InternalError(f"cryo's batch routine faulted in {self.t.tid}"
                                        f" (signal {got} at {rip:#x})")  # fmt: skip
                self.t.defer(got)
            elif event in _FORK_EVENTS:  # a clone3 of the batch: its child's pid, as we see it
                msg = ctypes.c_ulong()
                libc.ptrace(PTRACE.GETEVENTMSG, self.t.tid, 0, msg)
                self.born = msg.value
            libc.ptrace(PTRACE.CONT, self.t.tid, 0, 0)

    # -- scratch memory ----------------------------------------------------
    def map_scratch(self, size: int = SCRATCH_SIZE, addr: int = 0, exe: bool = True) -> int:
        """The scratch mapping: readable, writable and, for the batch routine,
        executable (where the process forbids that, PR_SET_MDWE, not executable: single
        calls then)."""
        flags = MAP.PRIVATE | MAP.ANONYMOUS | (MAP.FIXED_NOREPLACE if addr else 0)
        rw = PROT.READ | PROT.WRITE
        ret = self.raw(SYS.mmap, addr, size, rw | PROT.EXEC, flags, -1, 0) if exe else -1
        executable = exe and not -4096 < ret < 0
        if not exe or ret in (-errno.EACCES, -errno.EPERM):
            ret = self.raw(SYS.mmap, addr, size, rw, flags, -1, 0)
        if -4096 < ret < 0:
            raise syscall_error(SYS.mmap, ret, self.t.tid, " mapping cryo's scratch area")
        self.scratch = ret
        self.scratch_size = size
        self.scratch_known = (ret, size, executable)
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
        """Put the task's registers back (or set ``regs``).  A task left in the
        syscall-exit stop of a guarded call is parked first: there, its own registers
        (an interrupted call's -ERESTART* result) would reach user space as they are
        should cryo die, with no signal to have the kernel restart the call."""
        if self.exit_stop:
            self.t.park()
            self.exit_stop = False
        self.t.setregs(regs if regs is not None else self.saved)

    # -- calls that may wait (a restart: HoldingInjector) ------------------------------
    @contextlib.contextmanager
    def hold(self, room: int = 0) -> Iterator[Batch]:
        """``with inj.hold() as b:`` queues calls as :meth:`batch` does, for calls whose
        results nothing needs before the task's next stop: here they run at the end of
        the block, as a batch; a :class:`HoldingInjector` keeps them for its next batch
        (one stop for both).  A check of their results goes to :meth:`after`; ``room``:
        the bytes the block puts in the scratch area, at most HELD_ROOM to be held."""
        n0 = len(self._after)
        with self.batch() as b:
            yield b
            mine = self._after[n0:]
            del self._after[n0:]
        for fn in mine:
            fn()

    def after(self, fn: Callable[[], None]) -> None:
        """``fn()`` once the calls held so far have run (it reads their results, and
        may raise: the restart aborts)."""
        self._after.append(fn)

    def flush(self) -> None:
        """Run the calls held (none here)."""


HELD_SIZE = 16384  # a HoldingInjector's area for the buffers of its held calls
_MAKES_TASKS = frozenset({SYS.clone3, SYS.clone, SYS.fork})
HELD_ROOM = 8192  # the most one hold block may put there


class HoldingInjector(Injector):
    """A restored process's injector (engine/tree.py): the calls of :meth:`hold` blocks
    wait, in one batch, for the next batch or single call into the task, which they
    precede in the same run of the routine, or for :meth:`flush`; their checks run once
    they ran.  Their buffers lie in HELD_SIZE bytes right after the scratch area
    (``scratch + scratch_size``, the batch routine's region being the scratch area's
    last BATCH_REGION bytes), which no other frame uses.  Whatever acts on the task from
    outside (its pages written, a ptrace request) after a held call must flush first."""

    def __init__(self, tracee: Tracee, syscall_addr: int) -> None:
        super().__init__(tracee, syscall_addr)
        self._held: Batch | None = None
        # the signal actions it has from its birth (tree.build, signals.restore_actions)
        self.born_actions: dict[int, bytes] | None = None

    @contextlib.contextmanager
    def hold(self, room: int = 0) -> Iterator[Batch]:
        if room > HELD_ROOM or not self.scratch:
            with super().hold(room) as b:
                yield b
            return
        if self._held is not None and self._held.frame.used + room > HELD_SIZE - HELD_ROOM:
            self.flush()
        if self._held is None:
            self._held = Batch(self)
            self._held.frame = _HeldFrame(self)
        yield self._held

    def flush(self) -> None:
        if self._held is not None:
            self.run_batch([])

    def run_batch(self, calls: list[tuple[int, tuple[int | Ref, ...], bool, str]],
                  *rest: Any, **kw: Any) -> list[int]:  # fmt: skip
        """The calls held first, in the same runs of the routine, then ``calls``."""
        held, self._held = self._held, None
        if held is None:
            return super().run_batch(calls, *rest, **kw)
        after, self._after = self._after, []
        n = len(held.calls)
        # (a batch's own ``unsplit`` ranges, {first: end}, if any: counted after the held)
        unsplit = rest[0] if len(rest) == 1 and isinstance(rest[0], dict) else None
        # a batch that makes a task runs after the held calls' checks: one that fails
        # then must not leave a child or thread the restart has not recorded to kill
        if kw or not calls or (rest and unsplit is None and rest != (None,)) \
                or any(c[0] in _MAKES_TASKS for c in calls):  # fmt: skip
            held.results = super().run_batch(held.calls)
            for fn in after:
                fn()
            return super().run_batch(calls, *rest, **kw) if calls else []
        merged = held.calls + [
            (nr, tuple(Ref(a.call + n) if isinstance(a, Ref) else a for a in args), mf, w)
            for nr, args, mf, w in calls]  # fmt: skip
        extra = [{k + n: e + n for k, e in unsplit.items()}] if unsplit else []
        got = super().run_batch(merged, *extra)
        held.results, out = got[:n], got[n:]
        for fn in after:
            fn()
        return out

    def _single(self, nr: int, *args: int) -> int:
        if self._held is not None:  # (a call that cannot go into a batch: the held first)
            self.flush()
        return super()._single(nr, *args)


class ScratchFrame:
    """Buffers for one injected call (or a few that go together), each placed after the
    previous one, 16-byte aligned, in the injector's scratch area: no offsets by hand."""

    def __init__(self, inj: Injector) -> None:
        self.inj = inj
        self.used = 0

    def reserve(self, size: int) -> int:
        """Room for ``size`` bytes (a buffer the call fills); returns its address."""
        at = self.used
        if at + size > self.inj.scratch_size - BATCH_REGION:
            raise InternalError("scratch area too small")
        self.used = (at + size + 15) & ~15
        return self.inj.scratch + at

    def put(self, data: bytes) -> int:
        addr = self.reserve(len(data))
        self.inj.write(addr, data)
        return addr

    def put_str(self, s: str) -> int:
        return self.put(s.encode(errors="surrogateescape") + b"\0")


class _HeldFrame(ScratchFrame):
    """The held calls' buffers, after the scratch area (:class:`HoldingInjector`)."""

    def reserve(self, size: int) -> int:
        at = self.used
        if at + size > HELD_SIZE:
            raise InternalError("the held calls' scratch area is too small")
        self.used = (at + size + 15) & ~15
        return self.inj.scratch + self.inj.scratch_size + at
