"""The time left of a sleep that only the kernel's restart block holds (issue 9).

A thread stopped in poll(), FUTEX_WAIT with a timeout, or a relative nanosleep or
clock_nanosleep without ``rem`` returns -ERESTART_RESTARTBLOCK, and what the call has
left lives only in task->restart_block: the fn that restart_syscall runs and its
arguments (poll: ufds, nfds and the absolute monotonic end; futex: uaddr, val, bitset and
the absolute end; nanosleep: the clock, rmtp and the absolute expiry).  No interface
reads it; a BPF task iterator does (linux/bpf.py: its offsets from BTF, fn named by
/proc/kallsyms), and :func:`dump` saves the time left at the checkpoint (THRD
``restart``).

At restart :func:`rebuild` makes the kernel write the block again: the same call is
injected (same uaddr/val/bitset, ufds/nfds, clock and rem pointer) with the time left as
a relative timeout (a timespec in the injector's scratch; poll's milliseconds rounded
up), run from its syscall-entry stop with a signal of cryo's queued right behind it
(dropped at its delivery stop: the thread never gets it), so that it checks its
condition once and leaves with -ERESTART_RESTARTBLOCK (in the thread's "creds" stage,
while the restorer is there: the program's memory is back); the thread then
resumes at its own syscall instruction with restart_syscall, which runs the rebuilt
block: it waits what it had left, and its word, fds and rem are the program's.  If the
call ends otherwise (the word changed, an fd is ready, the time is up), the whole call
runs again as before, which is then correct.  The time the restart spends after the
thread's last step (until it is let go) counts in the sleep: a few ms.

epoll_wait and epoll_pwait have no restart block: interrupted they fail with EINTR
(fs/eventpoll.c; no time left is kept anywhere), and cryo runs them again whole, as it
does when no BPF iterator is available (no CAP_BPF, no BTF: bpf.Unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import struct
import time
from typing import Any

from cryo.engine.inject import NO_SYSCALL, Injector
from cryo.engine.ptrace import Tracee
from cryo.linux import bpf, libc
from cryo.linux import structs as S
from cryo.linux.consts import ERESTART, PTRACE, PTRACE_SYSCALL_INFO, SYS

log = logging.getLogger(__name__)
FUTEX_WAIT, FUTEX_CMD = 0, 0x7F  # (op & 127: FUTEX_PRIVATE_FLAG and CLOCK_REALTIME off)
TIMER_ABSTIME = 1
# the call -> the fn its restart block names
FN: dict[int, str] = {SYS.poll: "do_restart_poll", SYS.futex: "futex_wait_restart",
      SYS.nanosleep: "hrtimer_nanosleep_restart",
      SYS.clock_nanosleep: "hrtimer_nanosleep_restart"}  # fmt: skip
_unavailable: list[str] = []  # why no block could be read (said once a process)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def wanted(regs: S.user_regs_struct) -> bool:
    """Is this thread stopped in a call whose time left only the restart block has?"""
    nr, ret = _signed(regs.orig_rax), _signed(regs.rax)
    if -ret != ERESTART.RESTARTBLOCK or nr not in FN:
        return False
    if nr == SYS.nanosleep:
        return not regs.rsi  # (with rem: the kernel wrote the time left there)
    if nr == SYS.clock_nanosleep:
        return not regs.rsi & TIMER_ABSTIME and not regs.r10
    if nr == SYS.futex:  # (FUTEX_WAIT_BITSET's timeout is absolute: rerun whole, exact)
        return regs.rsi & FUTEX_CMD == FUTEX_WAIT and bool(regs.r10)
    return ctypes.c_int32(regs.rdx).value >= 0  # poll with a timeout


def dump(tid: int, regs: S.user_regs_struct) -> dict[str, Any] | None:
    """THRD ``restart`` of a thread stopped so (:func:`wanted`): its fn and the time left
    (ns), or None where the block cannot be read or is not the call's."""
    try:
        o = bpf.offsets()
        rb, size, pid_off = bpf.need("task.restart_block", "restart_block", "task.pid")
        fn_addr = bpf.need("sym." + FN[int(regs.orig_rax)])[0]
        data = bpf.read("iter_task", (bpf.Read(pid_off, 8), bpf.Read(rb, (size + 7) & ~7)),
                        tid=tid)
    except (bpf.Unavailable, OSError) as err:
        if not _unavailable:
            _unavailable.append(str(err))
            log.info("no BPF iterator (%s): a sleep whose time left only the kernel holds"
                     " runs whole again after a restart", err)
        return None
    if len(data) < 8 or struct.unpack_from("<i", data)[0] != tid:
        return None
    block = data[8:]

    def u(key: str, fmt: str = "<Q") -> int:
        return int(struct.unpack_from(fmt, block, o[key])[0])

    nr = int(regs.orig_rax)
    if u("rb.fn") != fn_addr:
        return None
    if nr == SYS.poll:
        if u("rb.poll.ufds") != regs.rdi or u("rb.poll.nfds", "<i") != ctypes.c_int32(
                regs.rsi).value or not u("rb.poll.has_timeout", "<i"):  # fmt: skip
            return None
        end = u("rb.poll.tv_sec") * 1_000_000_000 + u("rb.poll.tv_nsec")
        clock = time.CLOCK_MONOTONIC
    elif nr == SYS.futex:
        if u("rb.futex.uaddr") != regs.rdi or u("rb.futex.val", "<I") != regs.rdx & 0xFFFFFFFF:
            return None
        end, clock = u("rb.futex.time"), time.CLOCK_MONOTONIC
    else:
        if u("rb.nanosleep.rmtp"):
            return None
        clock = u("rb.nanosleep.clockid", "<i")  # (a relative CLOCK_REALTIME: MONOTONIC)
        end = u("rb.nanosleep.expires")
    try:
        here = time.clock_gettime_ns(clock)
    except OSError:
        return None
    return {"fn": FN[nr], "left_ns": max(0, end - here)}


# what rebuild() did, by (pid, tid), for final() in the thread's last step
_done: dict[tuple[int, int], int | None] = {}


def rebuild(inj: Injector, saved: S.user_regs_struct, restart: dict[str, Any]) -> None:
    """Rebuild the restart block of ``inj``'s thread (in its "creds" stage: its memory is
    back, the restorer's ``syscall`` and scratch are still there); the thread is left
    stopped with the registers it had.  :func:`final` tells its last step the outcome."""
    t, nr, left = inj.t, int(saved.orig_rax), int(restart["left_ns"])
    inj.flush()
    if not inj.scratch:
        return
    regs = S.user_regs_struct.from_buffer_copy(bytes(inj.saved))
    regs.rax, regs.orig_rax, regs.rip = nr, NO_SYSCALL, inj.syscall_addr
    regs.rdi, regs.rsi, regs.rdx = saved.rdi, saved.rsi, saved.rdx
    regs.r10, regs.r8, regs.r9 = saved.r10, saved.r8, saved.r9
    if nr == SYS.poll:
        regs.rdx = -(-left // 1_000_000)  # ms, rounded up: never early
    else:
        ts = inj.put(struct.pack("<qq", *divmod(left, 1_000_000_000)))
        if nr == SYS.nanosleep:
            regs.rdi = ts
        elif nr == SYS.clock_nanosleep:
            regs.rdx = ts
        else:
            regs.r10 = ts
    t.setregs(regs)
    ret = _interrupted(t)
    t.setregs(inj.saved)
    if ret == -ERESTART.RESTARTBLOCK:
        _done[(t.pid, t.tid)] = None
    elif (nr == SYS.futex and ret == -errno.ETIMEDOUT) or (nr != SYS.futex and ret == 0):
        _done[(t.pid, t.tid)] = ret  # the time was up: the call's result
    else:
        log.debug("thread %d: the rebuilt %s returned %d: run whole", t.tid,
                  restart["fn"], ret)


def final(tracee: Tracee, saved: S.user_regs_struct,
          whole: S.user_regs_struct) -> S.user_regs_struct:
    """The registers to resume with: ``saved`` (the image's) set to run restart_syscall
    where the block was rebuilt, or to return the call's result where it ended by its
    timeout; else ``whole`` (the call run again from the start)."""
    key = (tracee.pid, tracee.tid)
    if key not in _done:
        return whole
    ret = _done.pop(key)
    out = S.user_regs_struct.from_buffer_copy(bytes(saved))
    out.orig_rax = NO_SYSCALL
    if ret is None:
        out.rax, out.rip = SYS.restart_syscall, saved.rip - 2
    else:
        out.rax = ret & 0xFFFFFFFFFFFFFFFF
    return out


KICK = signal.SIGRTMAX  # what makes the injected call leave (sent by cryo, taken back)
SI_TKILL = -6


def _interrupted(t: Tracee) -> int:
    """Run the call set in ``t``'s registers: from its syscall-entry stop on with a
    signal of cryo's (KICK, unblocked meanwhile) queued behind it, so that it checks its
    condition once and leaves as a signal makes it; its result at its syscall-exit stop.
    The thread is left in KICK's signal-delivery stop, whose next resume (a signal of 0)
    drops it: the thread never gets it.  Other signals that arrive are held back."""
    mask = t.get_sigmask()
    bit = 1 << (KICK - 1)
    if mask & bit:
        t.set_sigmask(mask & ~bit)
    try:
        libc.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
        entered, ret = False, None
        while True:
            stop = t.wait_stop()
            sig, event = stop & 0x7F, stop >> 8
            if event:
                pass
            elif sig == signal.SIGTRAP and t.syscall_info_op() != PTRACE_SYSCALL_INFO.NONE:
                op = t.syscall_info_op()
                if op == PTRACE_SYSCALL_INFO.ENTRY and not entered:
                    entered = True
                    libc.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
                    libc.syscall(SYS.tgkill, t.pid, t.tid, KICK)
                    continue
                if op == PTRACE_SYSCALL_INFO.EXIT and entered and ret is None:
                    ret = _signed(int(t.getregs().rax))
            elif sig == KICK and ret is not None and _ours(t):
                return ret
            else:
                t.defer(stop & 0xFF)
            libc.ptrace(PTRACE.SYSCALL, t.tid, 0, 0)
    finally:
        if mask & bit:
            t.set_sigmask(mask)


def _ours(t: Tracee) -> bool:
    info = ctypes.create_string_buffer(S.SIGINFO_SIZE)
    libc.ptrace(PTRACE.GETSIGINFO, t.tid, 0, info)
    _signo, _errno, code, pid = struct.unpack_from("<iii4xi", info.raw)  # (si_pid at 16)
    # (si_pid as the thread's pid namespace sees cryo: 0 from outside it, a --pid-ns job)
    return bool(code == SI_TKILL and pid in (os.getpid(), 0))
