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
condition once and leaves with -ERESTART_RESTARTBLOCK (in the thread's "late" stage:
every process built and every page checked, the restorer still there); the thread then
resumes at its own syscall instruction with restart_syscall, which runs the rebuilt
block: it waits what it had left, and its word, fds and rem are the program's.  If the
call ends otherwise (the word changed, an fd is ready, the time is up), the whole call
runs again as before, which is then correct.  The time the restart spends after the
rebuild (the last steps of this and the later processes, until all are let go) counts in
the sleep: a few ms (in the "creds" stage, before the other processes were built and the
pages checked, it was up to seconds for a large image).

epoll_wait and epoll_pwait have no restart block: interrupted they fail with EINTR
(fs/eventpoll.c), and the end of their timeout lives only in the hrtimer_sleeper on the
sleeping thread's kernel stack, gone once the freeze wakes it.  So just before the
freeze (:func:`snapshot`, a before_freeze hook) each thread of the scope that sleeps in
one with a timeout (/proc/PID/task/TID/syscall) has its kernel stack read by a BPF task
iterator (bpf.task_stack), and the sleeper found there (its function hrtimer_wakeup, its
task the thread, enqueued) gives the end, with the thread's voluntary context switches.
At the collect, the call the freeze interrupted is taken for that same sleep only if it
has the same arguments and the thread switched once since (the freeze's own stop): a
call that ended and began again in between switched twice, and runs whole as before.
Its time left is counted from the snapshot (a little more than it had: late by the
moments up to the freeze, never early).  A target that goes on after the checkpoint
waits on to the same end (Tracee.undo_eintr: the frozen time counted, as by the kernel;
a call whose end went by runs with a timeout of 0); a restarted one waits its time left,
the time away not counted, as the blocks above: either way the call runs again with
its timeout argument (r10, which the kernel does not change and no caller reads back)
set to what is left, in ms rounded up.

rt_sigtimedwait, semtimedop and epoll_pwait2 sleep the same way (schedule_hrtimeout_range:
the sleeper on the stack, the end absolute), are woken by the freeze the same way (EINTR)
and found so, but their timeout is a timespec in the program's memory, which the kernel
reads once at the call's start and never writes back: run again as it is, the call waited
its whole timeout again (a 3 s sigtimedwait caught 1.5 s in returned after 4.5 s, in a
target that went on after a mere checkpoint too).  So the call is run again with its
timeout pointer (rdx; r10) set to a timespec of what is left, written below the red zone
of the thread's stack (rsp - 128 - 16: no live data is there), as the thread's last step
before it is let go (Tracee.rerun, :class:`Rerun`): its registers are left as the kernel
leaves a call it restarts (the call's number in orig_rax, -ERESTARTNOHAND), so that the
kernel, letting it go, runs it again at once, no user code in between, unless it
delivers a signal to a handler first, which would write its frame there: the call then
returns EINTR, as a handler makes these calls do.  (Let go from its syscall-entry stop
instead, it woke at once: the detach leaves TIF_SIGPENDING set, and semtimedop and
epoll_pwait2 returned EINTR.)  The pointer register keeps the scratch address after the
call (a call's argument registers are the caller's to lose: no wrapper reads them back).
The sleep is armed when every process is stopped (:func:`frozen`), so that a checkpoint
refused later lets it wait to its end too.  Without a BPF iterator (no CAP_BPF, no BTF:
bpf.Unavailable) every call of this note runs whole again, late, never early.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import struct
import time
from typing import Any

from cryo.engine.inject import NO_SYSCALL, Injector
from cryo.engine.ptrace import Tracee, timeout_ms
from cryo.errors import CryoError, Unsupported
from cryo.linux import libc
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
EPOLL = frozenset({SYS.epoll_wait, SYS.epoll_pwait})  # (their timeout: ms in r10)
# calls whose timeout is a relative timespec in the program's memory: the register
# that points at it (user_regs_struct field, and its index in /proc's syscall args)
TIMESPEC: dict[int, tuple[str, int]] = {SYS.rt_sigtimedwait: ("rdx", 2),
                                        SYS.semtimedop: ("r10", 3),
                                        SYS.epoll_pwait2: ("r10", 3),
                                        SYS.io_getevents: ("r8", 4),
                                        SYS.io_pgetevents: ("r8", 4)}  # fmt: skip
_INTERRUPTED = (-errno.EINTR, -ERESTART.NOHAND)  # (io_pgetevents: ERESTARTNOHAND)
STACKED = frozenset({"epoll", "timespec"})  # THRD restart fns read off the kernel stack
RED_ZONE = 128
IO_URING_ENTER = 426
EARLY = "epoll sleeps"  # shared.early's key: tid -> Sleep
_no_stack: list[str] = []  # why no kernel stack could be read (once a process)


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


def dump(tid: int, regs: S.user_regs_struct,
         early: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """THRD ``restart`` of a thread stopped so (:func:`wanted`): its fn and the time left
    (ns) when the freeze began (``early``'s clocks: before the thread stopped, so never
    less than it had; now without them), or None where the block cannot be read or is
    not the call's."""
    from cryo.linux import bpf  # (where a thread sleeps so: imported then only)

    try:
        o = bpf.offsets()
        rb, size, pid_off = bpf.need("task.restart_block", "restart_block", "task.pid")
        fn_addr = bpf.need("sym." + FN[int(regs.orig_rax)])[0]
        data = bpf.read("iter_task", (bpf.Read(pid_off, 8), bpf.Read(rb, (size + 7) & ~7)),
                        tid=tid)
    except OSError as err:  # (bpf.Unavailable is one)
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
    here = (early or {}).get("clocks at freeze", {}).get(clock)
    try:
        here = time.clock_gettime_ns(clock) if here is None else here
    except OSError:
        return None
    return {"fn": FN[nr], "left_ns": max(0, end - here)}


# what rebuild() did, by (pid, tid), for final() in the thread's last step
_done: dict[tuple[int, int], int | None] = {}


def rebuild(inj: Injector, saved: S.user_regs_struct, restart: dict[str, Any]) -> None:
    """Rebuild the restart block of ``inj``'s thread (in its "late" stage: its memory is
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


class Sleep:
    """A thread's epoll sleep as the snapshot found it: the call's arguments, the end of
    its timeout (CLOCK_MONOTONIC ns), its voluntary switches and when it was read."""

    __slots__ = ("args", "at", "end", "nvcsw")

    def __init__(self, args: tuple[int, ...], end: int, nvcsw: int, at: int) -> None:
        self.args, self.end, self.nvcsw, self.at = args, end, nvcsw, at


def snapshot(session: Any) -> None:
    """Before the freeze (before_freeze hook): the epoll sleeps of the scope's threads
    (module note).  A few us a thread where none sleeps so; no BPF: nothing."""
    from cryo.engine import tree

    if _no_stack:
        return
    found: dict[int, Sleep] = {}
    for pid in tree.scope_members(session):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/syscall", "rb") as f:
                    fields = f.read().split()
                nr = int(fields[0])
            except (OSError, ValueError, IndexError):
                continue  # ("running", or gone)
            if nr == SYS.recvmmsg and len(fields) >= 6 and int(fields[5], 16):
                _refuse_recvmmsg(pid, int(t))
            if nr == IO_URING_ENTER:  # (refused at the collect, after its EINTR: now)
                raise Unsupported(f"thread {t} of process {pid} waits in io_uring_enter:"
                                  " io_uring is not supported", pid=pid,
                                  resource="io_uring")  # fmt: skip
            if len(fields) < 6 or (nr not in EPOLL and nr not in TIMESPEC):
                continue
            args = tuple(int(x, 16) for x in fields[1:6])
            timeout = _timeout(pid, nr, args)
            if timeout > 0:
                sleep = _sleeper(int(t), args, timeout)
                if sleep is not None:
                    found[int(t)] = sleep
    if found:
        session.shared.early[EARLY] = found


def _refuse_recvmmsg(pid: int, tid: int) -> None:
    """recvmmsg with a timeout (module note): the end of its timeout (its start plus
    the timeout, in a timespec64 of __sys_recvmmsg's frame, no sleeper to find it by)
    is nowhere to be read; run again, its end would move on by the time it had
    waited, and it would take datagrams it would not have.  Refused, exit 9."""
    raise Unsupported(f"thread {tid} of process {pid} waits in recvmmsg with a timeout:"
                      " the end of that timeout (the call's start plus the timeout) is"
                      " kept nowhere cryo can read, and the call run again would wait"
                      " past it", pid=pid, resource="recvmmsg timeout")  # fmt: skip


def refuse(pid: int, tid: int, regs: S.user_regs_struct) -> None:
    """The collect's check of a thread's registers: a recvmmsg with a timeout that the
    freeze interrupted (entered after the snapshot) is refused as the snapshot does."""
    if int(regs.orig_rax) == SYS.recvmmsg and regs.r8 and -_signed(regs.rax) in (
            ERESTART.SYS, errno.EINTR):  # fmt: skip
        _refuse_recvmmsg(pid, tid)


def _timeout(pid: int, nr: int, args: tuple[int, ...]) -> int:
    """The timeout (ns) of a call of EPOLL or TIMESPEC with ``args``; 0 for none (a
    NULL timespec, a negative epoll timeout) or where it cannot be read."""
    if nr in EPOLL:
        return max(0, ctypes.c_int32(args[3]).value) * 1_000_000
    ptr = args[TIMESPEC[nr][1]]
    if not ptr:
        return 0  # (no timeout: nothing to keep)
    buf = ctypes.create_string_buffer(16)
    try:
        if libc.process_vm_readv(pid, [(ctypes.addressof(buf), 16)], [(ptr, 16)]) != 16:
            return 0
    except OSError:
        return 0
    sec, nsec = struct.unpack("<qq", buf.raw)
    return sec * 1_000_000_000 + nsec if sec >= 0 and 0 <= nsec < 1_000_000_000 else 0


def _sleeper(tid: int, args: tuple[int, ...], timeout: int) -> Sleep | None:
    from cryo.linux import bpf

    try:
        fn_off, task_off, exp_off, state_off, wakeup = bpf.need(
            "hrt.function", "hrs.task", "hrt.expires", "hrt.state", "sym.hrtimer_wakeup")
        got = bpf.task_stack(tid)
    except OSError as err:  # (bpf.Unavailable is one)
        _no_stack.append(str(err))
        log.info("no BPF iterator (%s): an epoll_wait's or sigtimedwait's timeout runs"
                 " whole again", err)
        return None
    at = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    if got is None:
        return None
    nvcsw, task, _stack, data = got
    key, words = struct.pack("<Q", wakeup), []
    i = data.find(key)
    while i >= 0:
        if i % 8 == 0 and i >= fn_off:
            base = i - fn_off
            if (base + task_off + 8 <= len(data) and data[base + state_off] & 1 and
                    struct.unpack_from("<Q", data, base + task_off)[0] == task):  # fmt: skip
                words.append(struct.unpack_from("<q", data, base + exp_off)[0])
        i = data.find(key, i + 1)
    if len(words) != 1 or not 0 <= words[0] - at <= timeout + _slack(tid):
        return None  # (none, two, or not this call's: the call runs whole)
    return Sleep(args, words[0], nvcsw, at)


def _slack(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/timerslack_ns", "rb") as f:
            return int(f.read()) + 1000
    except (OSError, ValueError):
        return 50_000 + 1000


def frozen(session: Any) -> None:
    """Every process stopped (frozen hook), nothing injected yet: a sleep of the snapshot
    is the one the freeze interrupted only if its thread switched exactly once since
    (the freeze's stop; module note).  The others are dropped.  The kept ones' threads
    wait to the same end when let go, whether the checkpoint goes on or fails (armed
    now: a refusal at the collect lets the target go as it was)."""
    sleeps: dict[int, Sleep] | None = session.shared.early.get(EARLY)
    if not sleeps:
        return
    tracees = {tid: (p.pid, t) for p in session.procs.values() for tid, t in p.tracees.items()}
    for tid, sleep in list(sleeps.items()):
        if tid not in tracees or _switches(tracees[tid][0], tid) != sleep.nvcsw + 1:
            del sleeps[tid]  # (it woke and slept again in between, or is gone)
            continue
        t = tracees[tid][1]
        with contextlib.suppress(OSError):
            _arm(t, t.getregs(), sleep)


def _switches(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def dump_epoll(tracee: Tracee, regs: S.user_regs_struct,
               early: dict[int, Sleep] | None) -> dict[str, Any] | None:
    """THRD ``restart`` of a thread whose epoll, sigtimedwait or semtimedop sleep the
    freeze interrupted, where the snapshot found that sleep (module note); sets
    ``tracee.timeout_end`` (epoll) or ``tracee.rerun`` (a timespec's) for a target that
    goes on.  None where it was not found, or is not the same sleep."""
    sleep = (early or {}).get(tracee.tid)
    if sleep is None or not _arm(tracee, regs, sleep):
        return None
    fn = "timespec" if int(regs.orig_rax) in TIMESPEC else "epoll"
    return {"fn": fn, "left_ns": max(0, sleep.end - sleep.at)}


def _arm(tracee: Tracee, regs: S.user_regs_struct, sleep: Sleep) -> bool:
    """Is the call the freeze made fail (``regs``) the snapshot's ``sleep``?  If so the
    thread, let go, runs it again to the same end: ``tracee.timeout_end`` (epoll: its
    ms timeout argument set in undo_eintr) or ``tracee.rerun`` (:class:`Rerun`)."""
    nr, ret = int(regs.orig_rax), _signed(regs.rax)
    if (nr not in EPOLL and nr not in TIMESPEC) or ret not in _INTERRUPTED or \
            sleep.args != (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8):  # fmt: skip
        return False
    if nr in TIMESPEC:
        tracee.rerun = Rerun(nr, getattr(regs, TIMESPEC[nr][0]), end=sleep.end)
    else:
        tracee.timeout_end = sleep.end
    return True


def final_epoll(saved: S.user_regs_struct, regs: S.user_regs_struct,
                restart: dict[str, Any]) -> S.user_regs_struct:
    """The registers to resume with (``regs``: final_regs'): an epoll call run again
    waits only its time left."""
    if _signed(regs.rax) == _signed(saved.orig_rax) and int(saved.orig_rax) in EPOLL:
        regs.r10 = (regs.r10 & ~0xFFFFFFFF) | timeout_ms(int(restart["left_ns"]))
    return regs


def final_timespec(tracee: Tracee, saved: S.user_regs_struct, regs: S.user_regs_struct,
                   restart: dict[str, Any]) -> None:
    """A restarted thread whose call of TIMESPEC runs again (``regs``: final_regs')
    waits its time left: given at its let-go (:class:`Rerun`)."""
    nr = int(saved.orig_rax)
    if nr in TIMESPEC and _signed(regs.rax) == nr:
        tracee.rerun = Rerun(nr, getattr(saved, TIMESPEC[nr][0]),
                             left=int(restart["left_ns"]))  # fmt: skip


class Rerun:
    """Tracee.rerun of a thread whose call of TIMESPEC runs again when let go: at its
    syscall-entry stop its timeout pointer is set to a timespec of what is left, written
    below its stack's red zone (module note).  ``end``: the sleep's end (CLOCK_MONOTONIC
    ns: a target that goes on, the frozen time counted); ``left``: the time left (a
    restarted one, the time away not counted)."""

    __slots__ = ("end", "left", "nr", "ptr")

    def __init__(self, nr: int, ptr: int, *, end: int | None = None,
                 left: int = 0) -> None:  # fmt: skip
        self.nr, self.ptr, self.end, self.left = nr, ptr, end, left

    def __call__(self, t: Tracee) -> None:
        try:
            self._run(t)
        except (OSError, CryoError) as err:  # (it runs whole: late, never early)
            log.debug("thread %d: its call %d runs whole again: %s", t.tid, self.nr, err)

    def _run(self, t: Tracee) -> None:
        reg = TIMESPEC[self.nr][0]
        regs = t.getregs()
        if t.group_stop or t.deferred_signals or getattr(regs, reg) != self.ptr:
            return
        if regs.rax == self.nr:  # (undo_eintr's: the syscall instruction again)
            regs.rip += 2
        elif _signed(regs.rax) != -ERESTART.NOHAND or regs.orig_rax != self.nr:
            return  # (not run again: a signal comes first)
        left = self.left if self.end is None else \
            self.end - time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # fmt: skip
        at = (regs.rsp - RED_ZONE - 16) & ~15
        ts = ctypes.create_string_buffer(struct.pack("<qq", *divmod(max(0, left),
                                                                   1_000_000_000)), 16)
        if libc.process_vm_writev(t.tid, [(ctypes.addressof(ts), 16)], [(at, 16)]) != 16:
            return
        setattr(regs, reg, at)
        # (the kernel restarts it when let go, unless it delivers a signal to a handler
        # first: then EINTR, as a handler makes these calls return)
        regs.orig_rax, regs.rax = self.nr, -ERESTART.NOHAND & 0xFFFFFFFFFFFFFFFF
        t.setregs(regs)
