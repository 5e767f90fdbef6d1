"""A stopped task under our control: seize, interrupt, registers, detach."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import struct
import time
from collections.abc import Callable

from cryo import procfs
from cryo.errors import AccessDenied, CryoError, NoSuchProcess
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import NT, PTRACE, PTRACE_EVENT, PTRACE_O, PTRACE_SYSCALL_INFO, SYS

log = logging.getLogger(__name__)
XSTATE_MAX = 16384
_WALL = 0x40000000
_SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)
SI_TKILL = -6
# signal-delivery stops delivered before the interrupt's trap at a seize (one at most:
# the trap is checked before the next signal is taken; the bound for safety)
_SEIZE_SIGNALS = 8
# sent again with tgkill (their sending is what acts), never given back through a carrier
_SENT_PLAIN = {signal.SIGKILL, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN,
               signal.SIGTTOU, signal.SIGCONT}  # fmt: skip
_DEFAULT_IGNORED = (signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH)
# calls that return EINTR, not an ERESTART* code the kernel would restart, when woken by
# anything that makes a signal pending, PTRACE_INTERRUPT's trap too (signal(7): as
# after SIGSTOP and SIGCONT): epoll_wait even without a timeout, semop, sigtimedwait,
# a socket's calls with SO_RCVTIMEO/SO_SNDTIMEO.  Where no signal is there to take, the
# EINTR is cryo's doing, and the call runs again (connect and close are not: interrupted,
# their work goes on or is done)
EINTR_BY_TRACER = frozenset({
    SYS.epoll_wait, SYS.epoll_pwait, SYS.epoll_pwait2, SYS.semop, SYS.semtimedop,
    SYS.rt_sigtimedwait, SYS.read, SYS.readv, SYS.write, SYS.writev, SYS.recvfrom,
    SYS.recvmsg, SYS.recvmmsg, SYS.sendto, SYS.sendmsg, SYS.sendmmsg, SYS.accept,
    SYS.accept4, SYS.io_getevents})  # fmt: skip
_EINTR = -errno.EINTR & 0xFFFFFFFFFFFFFFFF
# ptrace stops waited for in this process, for the benchmarks (bench/inject_stops.py)
STATS = {"stops": 0}


def timeout_ms(left_ns: int) -> int:
    """An epoll timeout argument for ``left_ns`` (ms, rounded up: never early)."""
    return -(-max(0, left_ns) // 1_000_000)


class Tracee:
    """One task (thread) that we hold in a ptrace-stop."""

    def __init__(self, pid: int, tid: int | None = None) -> None:
        self.pid = pid
        self.tid = tid or pid
        self.attached = False
        self.seized = False  # attached with PTRACE_SEIZE (PTRACE_INTERRUPT works)
        # signals that arrived while we held the task, with their siginfo (sent again
        # when we let go: detach)
        self.deferred_signals: list[tuple[int, bytes]] = []
        # a flood of signals (one arriving at every resume) held at bay: the program's
        # own mask while every signal is blocked in the task (see defer)
        self.flood_mask: int | None = None
        # the signal a batch of injected calls under way ends with (inject._run): never
        # blocked by a flood's mask, which may begin in the middle of the batch
        self.batch_signal = 0
        self.options = 0  # the PTRACE_O_* flags in force (PTRACE_SETOPTIONS replaces them)
        self.group_stop = 0  # the stop signal, when the task was group-stopped when seized
        self.timeout_end = 0  # an epoll sleep's end (CLOCK_MONOTONIC ns), where read
        # the last step before the let-go of a call run again whose timeout is a timespec
        # (engine/restartblock.Rerun)
        self.rerun: Callable[[Tracee], None] | None = None
        # the process ignores SIGTRAP: see step()
        self.sigtrap_ignored = False
        # the pending signals' siginfo (own, process-wide) when the freeze was done
        self.frozen_pending: tuple[list[bytes], list[bytes]] | None = None

    # -- attaching ---------------------------------------------------------
    @classmethod
    def seize(cls, pid: int, tid: int | None = None, options: int = 0) -> Tracee:
        t = cls(pid, tid)
        try:
            libc.ptrace(PTRACE.SEIZE, t.tid, 0, options)
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise NoSuchProcess(f"process {pid} does not exist", pid=pid) from err
            if err.errno == errno.EPERM:
                tracer = _tracer_of(t.tid)
                why = f" (already traced by pid {tracer})" if tracer else ""
                raise AccessDenied(f"process {pid} may not be traced{why}", pid=pid) from err
            raise
        t.attached = True
        t.seized = True
        t.options = options
        try:
            libc.ptrace(PTRACE.INTERRUPT, t.tid)
            stop = t.wait_stop()
            for _ in range(_SEIZE_SIGNALS):
                if stop >> 8:
                    break
                # a signal-delivery stop: the thread took a signal the moment it was
                # seized, before the interrupt's trap (get_signal checks the trap first,
                # but the signal was dequeued already).  Let go of with 0 later, it was
                # lost (seen: one SIGTRAP of a thread single-stepping itself in about
                # one checkpoint in ten).  Delivered now, with its own siginfo, as the
                # kernel was doing (a handler's frame set up, as a moment later); the
                # interrupt's trap comes next
                libc.ptrace(PTRACE.CONT, t.tid, 0, stop & 0xFF)
                stop = t.wait_stop()
            # a task in group-stop (SIGSTOP, SIGTSTP, ...) reports it instead of the trap
            if stop >> 8 == PTRACE_EVENT.STOP and stop & 0xFF != signal.SIGTRAP:
                t.group_stop = stop & 0xFF
        except BaseException:
            t.detach()
            raise
        return t

    @classmethod
    def adopt_traceme_child(cls, pid: int, options: int = 0) -> Tracee:
        """A child that called PTRACE_TRACEME and stopped itself with SIGSTOP; it dies
        with us (PTRACE_O_EXITKILL), and so do the tasks it makes while we trace it."""
        t = cls(pid)
        t.attached = True
        _, status = os.waitpid(pid, _WALL)
        if not os.WIFSTOPPED(status):
            raise CryoError(f"restore helper {pid} did not stop (status {status:#x})", pid=pid)
        t.options = int(PTRACE_O.EXITKILL | options)
        libc.ptrace(PTRACE.SETOPTIONS, pid, 0, t.options)
        return t

    def wait_stop(self) -> int:
        """Wait for the next ptrace-stop; returns the stop signal (SIGTRAP for traps)."""
        while True:
            try:
                _, status = os.waitpid(self.tid, _WALL)
            except ChildProcessError as err:
                self.attached = False
                raise NoSuchProcess(f"process {self.pid} vanished", pid=self.pid) from err
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.attached = False
                raise NoSuchProcess(f"process {self.pid} exited during the operation",
                                    pid=self.pid)  # fmt: skip
            if os.WIFSTOPPED(status):
                STATS["stops"] += 1
                return int(os.WSTOPSIG(status)) | ((status >> 16) << 8)

    def step(self, expect_rip: int = 0) -> None:
        """Run one instruction, a ``syscall``; signals that arrive meanwhile are kept for
        later.  A single step ends in a SIGTRAP that the kernel forces on the task: were
        SIGTRAP blocked or ignored there, the kernel would first reset its action to
        SIG_DFL and unblock it, changing the task.  So then the call is run from
        syscall-entry to syscall-exit stop instead (PTRACE_SYSCALL), which raises no
        signal (and costs one stop more).  ``expect_rip``: the address after the
        instruction, which tells the step's trap from a SIGTRAP the task had pending."""
        if self.sigtrap_ignored or self.get_sigmask() & _SIGTRAP_BIT:
            self._syscall_step()
            return
        libc.ptrace(PTRACE.SINGLESTEP, self.tid)
        while True:
            stop = self.wait_stop()
            sig, event = stop & 0xFF, stop >> 8
            if sig == signal.SIGTRAP and event == 0:
                # the step's own trap, or a SIGTRAP the task had pending, reported
                # before the instruction ran (``expect_rip``: where the step ends)
                if not expect_rip or self.getregs().rip == expect_rip:
                    return
                log.debug("pid %d: deferring a pending SIGTRAP", self.tid)
                self.defer(sig)
                libc.ptrace(PTRACE.SINGLESTEP, self.tid)
                continue
            if event == PTRACE_EVENT.STOP or event:
                libc.ptrace(PTRACE.SINGLESTEP, self.tid)
                continue
            # a signal arrived: hold it back and deliver it when we let go
            self.defer(sig)
            libc.ptrace(PTRACE.SINGLESTEP, self.tid)

    def _syscall_step(self) -> None:
        libc.ptrace(PTRACE.SYSCALL, self.tid)
        while True:
            stop = self.wait_stop()
            sig, event = stop & 0x7F, stop >> 8
            if not event and sig == signal.SIGTRAP:
                op = self.syscall_info_op()
                if op == PTRACE_SYSCALL_INFO.EXIT:
                    return
                if op == PTRACE_SYSCALL_INFO.ENTRY:
                    libc.ptrace(PTRACE.SYSCALL, self.tid)
                    continue
            if not event:  # a signal arrived: hold it back and deliver it when we let go
                self.defer(sig)
            libc.ptrace(PTRACE.SYSCALL, self.tid)

    def syscall_info_op(self) -> int:
        """Is the task in a syscall-entry or -exit stop (PTRACE_SYSCALL_INFO.ENTRY, EXIT),
        or another (NONE)?  Without PTRACE_O_TRACESYSGOOD (options we may not change),
        a syscall stop is the SIGTRAP whose si_code is SIGTRAP itself, and the event
        message says which."""
        info = ctypes.create_string_buffer(S.SIGINFO_SIZE)
        libc.ptrace(PTRACE.GETSIGINFO, self.tid, 0, info)
        signo, _errno, code = struct.unpack_from("<iii", info.raw)
        if signo != signal.SIGTRAP or code & 0x7F != signal.SIGTRAP:
            return PTRACE_SYSCALL_INFO.NONE
        msg = ctypes.c_ulong()
        libc.ptrace(PTRACE.GETEVENTMSG, self.tid, 0, msg)
        return msg.value if msg.value in (1, 2) else PTRACE_SYSCALL_INFO.NONE

    def park(self) -> None:
        """Move from the trap of our last single step into a clean PTRACE_EVENT_STOP.

        Resuming clears the single-step state, and the interrupt stops the task again
        before it returns to user mode.  Should we die from now on, the kernel lets the
        task go from that stop exactly as it was: no pending SIGTRAP, no trap flag, and
        an interrupted system call restarted as usual.
        """
        libc.ptrace(PTRACE.INTERRUPT, self.tid)
        libc.ptrace(PTRACE.CONT, self.tid)
        while True:
            stop = self.wait_stop()
            sig, event = stop & 0xFF, stop >> 8
            if event == PTRACE_EVENT.STOP:
                return
            if not event and sig != signal.SIGTRAP:
                self.defer(sig)
            libc.ptrace(PTRACE.CONT, self.tid)

    def defer(self, sig: int) -> None:
        """In a signal-delivery stop for ``sig``: hold it back, with its siginfo, to be
        sent again when we let go (the task does not get it now)."""
        try:
            info = ctypes.create_string_buffer(S.SIGINFO_SIZE)
            libc.ptrace(PTRACE.GETSIGINFO, self.tid, 0, info)
            raw = info.raw
        except OSError:
            raw = b""
        log.debug("pid %d: deferring signal %d", self.tid, sig)
        self.deferred_signals.append((sig, raw))
        if len(self.deferred_signals) >= FLOOD and self.flood_mask is None:
            # another process sends signals as fast as we resume the task, so none of
            # our steps would ever come (a test's sender held a target for 12 minutes,
            # where no watchdog can act): every signal the kernel lets us blocked in
            # the task until we let go, when its own mask comes back and the signals
            # left pending are delivered by the kernel, each with its own siginfo.
            # get_sigmask answers the program's mask meanwhile (what the image saves,
            # and what guard's frame puts back should we die inside a call)
            # (but the signals the process ignores: a batch of injected calls ends by
            # sending itself one, inject._stop_signal)
            try:
                with open(f"/proc/{self.pid}/status", "rb") as f:
                    st = procfs.parse_status(f.read())
                ignored = int(st.get("SigIgn", "0"), 16) | (
                    _IGNORED_BY_DEFAULT & ~int(st.get("SigCgt", "0"), 16))
            except OSError:
                return
            self.flood_mask = self.get_sigmask()
            log.debug("pid %d: a flood of signals, all blocked while held", self.tid)
            if self.batch_signal:  # (seen: a restored process catching SIGURG, which
                # its batch ended with, flooded in the middle of it: the routine went on
                # past its end into the program's code, and faulted there for ever)
                ignored |= 1 << (self.batch_signal - 1)
            libc.ptrace(PTRACE.SETSIGMASK, self.tid, 8, ctypes.c_uint64(_BLOCK_ALL & ~ignored))

    def detach(self, sig: int = 0) -> None:
        """Let the task go (with ``sig`` delivered, from a signal-delivery stop).  The
        signals held back meanwhile go back to this thread first (a signal aimed at one
        thread, a timer's SIGEV_THREAD_ID signal or glibc's SIGTIMER to its helper, must
        not go to another, where its action may be fatal, as os.kill of the process
        did), each with its own siginfo: :meth:`give_back`."""
        if not self.attached:
            return
        try:
            if self.flood_mask is not None:  # (its own mask back first)
                libc.ptrace(PTRACE.SETSIGMASK, self.tid, 8, ctypes.c_uint64(self.flood_mask))
                self.flood_mask = None
            self.undo_eintr()
            self.give_back()
            if self.rerun is not None and not sig:
                self.rerun(self)
        except OSError as err:  # (the task goes on without the rest)
            if err.errno != errno.ESRCH:
                log.warning("pid %d: signals held back not all given back: %s", self.tid, err)
        try:
            libc.ptrace(PTRACE.DETACH, self.tid, 0, sig)
        except OSError as err:
            if err.errno != errno.ESRCH:
                raise
        self.attached = False

    def undo_eintr(self) -> None:
        """A call of EINTR_BY_TRACER that cryo's interrupt made fail with EINTR, with no
        signal held back nor pending for the thread to take, runs again when let go
        (the registers as the kernel leaves them for a restart: the call's number, the
        ``syscall`` instruction again): the target went on with EINTR after a mere
        checkpoint, an event loop's epoll_wait(-1) among them.  A relative timeout runs
        whole again."""
        if self.deferred_signals or self.group_stop:
            return
        regs = self.getregs()
        if regs.rax != _EINTR or regs.orig_rax not in EINTR_BY_TRACER:
            return
        try:
            with open(f"/proc/{self.pid}/task/{self.tid}/status", "rb") as f:
                st = procfs.parse_status(f.read())
        except OSError:
            return
        pending = int(st.get("SigPnd", "0"), 16) | int(st.get("ShdPnd", "0"), 16)
        if pending & ~int(st.get("SigBlk", "0"), 16):
            return  # (a signal interrupted it: it comes next)
        regs.rax, regs.rip = regs.orig_rax, regs.rip - 2
        if self.timeout_end and regs.orig_rax in (SYS.epoll_wait, SYS.epoll_pwait):
            # (its sleep's end, read before the freeze: it waits on to it, the frozen
            # time counted as the kernel counts it; engine/restartblock.py)
            left = self.timeout_end - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            regs.r10 = (regs.r10 & ~0xFFFFFFFF) | timeout_ms(left)
        self.setregs(regs)

    def give_back(self) -> None:
        """The signals held back (``deferred_signals``) given back to the thread, each
        with its own siginfo (si_code, si_pid, si_uid, si_value...: an SA_SIGINFO
        handler reads them, and glibc's SIGEV_THREAD helper took a SIGTIMER sent again
        with tgkill, SI_TKILL, for a cancellation and exited).  The kernel lets another
        process queue a siginfo only when si_code < 0 and not SI_TKILL (a timer's, a
        sigqueue's, SIGIO's...: rt_tgsigqueueinfo from here); a kill()'s (SI_USER), a
        tgkill()'s (SI_TKILL) or the kernel's own (si_code > 0) sent again by cryo would
        name cryo as the sender.  Those are delivered by ptrace instead (:meth:`
        _deliver`): a *carrier*, a signal the process ignores, sent to the thread, and
        in its signal-delivery stop the siginfo replaced (PTRACE_SETSIGINFO) and the
        task resumed with the signal itself, which the kernel delivers with that
        siginfo, or queues with it if the thread blocks it (ptrace_signal).  Stop
        signals, SIGCONT, a thread in a group stop, one not seized (a restored thread's
        are queued again from inside it with the image's pending ones:
        signals.restore_pending), or no carrier (and the signal blocked, which could
        carry itself): tgkill as before.  Costs nothing when no signal was held back."""
        todo, self.deferred_signals = self.deferred_signals, []
        if not todo:
            return
        carrier = self._carrier() if self.seized and not self.group_stop else 0
        blocked = self.get_sigmask() if self.seized and not carrier else 0
        budget = 16 * len(todo) + 64  # stops, against a flood of new signals
        rest: list[tuple[int, bytes]] = []
        for s, raw in todo:
            code = struct.unpack_from("<i", raw, 8)[0] if len(raw) >= 12 else 0
            if self.seized and not self.group_stop and budget > 0 \
                    and len(raw) == S.SIGINFO_SIZE and (code >= 0 or code == SI_TKILL) \
                    and s not in _SENT_PLAIN:  # fmt: skip
                # no carrier: the signal itself, where the thread did not block it (a
                # handler's mask from a signal given back before is lifted for the while)
                c = carrier or (0 if blocked >> (s - 1) & 1 else s)
                if c:
                    try:
                        budget -= self._deliver(c, s, raw, min(budget, 256))
                        continue
                    except NoSuchProcess:
                        return  # (a signal given back was fatal)
                    except _Starved as err:
                        budget = 0  # (the rest as before)
                        if c == s or err.delivered:
                            continue  # (sent already: with its siginfo, or tgkill's)
            rest.append((s, raw))
        rest += self.deferred_signals  # (stop signals met on the way)
        self.deferred_signals = []
        for s, raw in rest:
            try:
                code = struct.unpack_from("<i", raw, 8)[0] if len(raw) >= 12 else 0
                if code < 0 and code != SI_TKILL:
                    info = ctypes.create_string_buffer(raw, len(raw))
                    libc.syscall(SYS.rt_tgsigqueueinfo, self.pid, self.tid, s,
                                 ctypes.addressof(info))  # fmt: skip
                else:
                    libc.syscall(SYS.tgkill, self.pid, self.tid, s)
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise

    def _carrier(self) -> int:
        """A signal to carry a siginfo (:meth:`give_back`): one the process ignores (set
        to SIG_IGN, a real-time one first, which never merges with one pending; or
        SIGCHLD, SIGURG, SIGWINCH left to their default), that this thread does not
        block and that is not pending: should cryo die before the swap, the kernel
        delivers it, and it does nothing.  0 if there is none."""
        try:
            with open(f"/proc/{self.pid}/task/{self.tid}/status", "rb") as f:
                st = procfs.parse_status(f.read())
        except OSError:
            return 0
        ign, cgt, blk = (int(st.get(k, "0"), 16) for k in ("SigIgn", "SigCgt", "SigBlk"))
        busy = blk | int(st.get("SigPnd", "0"), 16) | int(st.get("ShdPnd", "0"), 16)
        ignored = [x for x in range(64, 0, -1) if ign >> (x - 1) & 1 and x not in _SENT_PLAIN
                   and x != signal.SIGTRAP]  # fmt: skip
        ignored += [int(x) for x in _DEFAULT_IGNORED if not (cgt | ign) >> (x - 1) & 1]
        return next((x for x in ignored if not busy >> (x - 1) & 1), 0)

    def _deliver(self, carrier: int, s: int, raw: bytes, limit: int) -> int:
        """Deliver ``s`` with the siginfo ``raw`` through a signal-delivery stop of
        ``carrier`` (see :meth:`give_back`); the task ends in an event stop (the
        interrupt asked before it goes on).  Signals that arrive meanwhile are delivered
        as they are.  Returns the number of stops it took; _Starved after ``limit``
        stops without the carrier (a flood of lower signals, taken first: the carrier,
        ignored, is left pending, the task in a stop)."""
        bit = 1 << (carrier - 1)
        libc.syscall(SYS.tgkill, self.pid, self.tid, carrier)
        stops = 0
        while True:
            if stops >= limit:
                raise _Starved
            # a handler's mask (of a signal delivered just before) may block the carrier:
            # unblocked for the while (its sigreturn puts the mask back all the same)
            mask = self.get_sigmask()
            if mask & bit:
                self.set_sigmask(mask & ~bit)
            libc.ptrace(PTRACE.CONT, self.tid, 0, 0)
            stop = self.wait_stop()
            stops += 1
            if mask & bit:
                self.set_sigmask(mask)
            got, event = stop & 0xFF, stop >> 8
            if event:
                continue  # (an event stop: go on to the carrier)
            if got in _SENT_PLAIN and got != carrier:
                self.defer(got)  # (a stop signal: sent again last, its sending acts)
                continue
            if got == carrier:
                info = ctypes.create_string_buffer(raw, S.SIGINFO_SIZE)
                libc.ptrace(PTRACE.SETSIGINFO, self.tid, 0, info)
            libc.ptrace(PTRACE.INTERRUPT, self.tid)
            libc.ptrace(PTRACE.CONT, self.tid, 0, s if got == carrier else got)
            try:
                stops += self._wait_event_stop(max(1, limit - stops))
            except _Starved as err:
                err.delivered = got == carrier  # (``s`` went with the carrier's stop)
                raise
            if got == carrier:
                return stops

    def _wait_event_stop(self, limit: int) -> int:
        """After an interrupt: resume until the event stop, delivering the signals met
        on the way as they are; _Starved after ``limit`` stops without it (a flood of
        signals, each taken before the interrupt's trap: it held a target for 12 minutes
        under test_signals_from_another_process, where no watchdog can act), the task
        left in that signal's delivery stop with the signal held back (sent again at the
        detach, as the others)."""
        n = 0
        while True:
            stop = self.wait_stop()
            n += 1
            got, event = stop & 0xFF, stop >> 8
            if event == PTRACE_EVENT.STOP:
                return n
            if not event and (got in _SENT_PLAIN or n >= limit):
                self.defer(got)  # (its siginfo kept)
                if n >= limit:
                    raise _Starved
                got = 0
            libc.ptrace(PTRACE.CONT, self.tid, 0, 0 if event else got)

    # -- seccomp -----------------------------------------------------------
    def suspend_seccomp(self, options: int | None = None) -> None:
        """Suspend the task's seccomp filters or strict mode while we trace it
        (PTRACE_O_SUSPEND_SECCOMP: CONFIG_CHECKPOINT_RESTORE and CAP_SYS_ADMIN), so that
        no injected call is ever denied, trapped or fatal; a detach ends it, even ours
        by death.  ``options``: the options in force, when not known to this object."""
        if options is not None:
            self.options = options
        self.options |= PTRACE_O.SUSPEND_SECCOMP
        libc.ptrace(PTRACE.SETOPTIONS, self.tid, 0, self.options)

    def seccomp_filters(self) -> list[tuple[bytes, int]]:
        """The task's seccomp filters, the first installed first, each as its classic BPF
        program and its SECCOMP_FILTER_FLAG_* flags (only LOG is kept by the kernel)."""
        out: list[tuple[bytes, int]] = []
        while True:
            try:
                n = libc.ptrace(PTRACE.SECCOMP_GET_FILTER, self.tid, len(out), 0)
            except OSError as err:
                if err.errno == errno.ENOENT:
                    return out
                raise
            buf = ctypes.create_string_buffer(n * ctypes.sizeof(S.sock_filter))
            libc.ptrace(PTRACE.SECCOMP_GET_FILTER, self.tid, len(out), buf)
            meta = S.seccomp_metadata(filter_off=len(out))
            libc.ptrace(PTRACE.SECCOMP_GET_METADATA, self.tid, ctypes.sizeof(meta), meta)
            out.append((buf.raw, int(meta.flags)))

    # -- registers ---------------------------------------------------------
    def getregs(self) -> S.user_regs_struct:
        regs = S.user_regs_struct()
        libc.ptrace_getregset(self.tid, NT.PRSTATUS, regs)
        return regs

    def setregs(self, regs: S.user_regs_struct) -> None:
        libc.ptrace_setregset(self.tid, NT.PRSTATUS, regs)

    def get_xstate(self) -> bytes:
        buf = ctypes.create_string_buffer(XSTATE_MAX)
        n = libc.ptrace_getregset(self.tid, NT.X86_XSTATE, buf)
        return buf.raw[:n]

    def set_xstate(self, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        libc.ptrace_setregset(self.tid, NT.X86_XSTATE, buf, len(data))

    def get_sigmask(self) -> int:
        """The task's signal mask (its own while a flood is held at bay: defer)."""
        if self.flood_mask is not None:
            return self.flood_mask
        mask = ctypes.c_uint64()
        libc.ptrace(PTRACE.GETSIGMASK, self.tid, 8, mask)
        return mask.value

    def set_sigmask(self, mask: int) -> None:
        if self.flood_mask is not None:  # (set when we let go)
            self.flood_mask = mask
            return
        self.set_kernel_sigmask(mask)

    def kernel_sigmask(self) -> int:
        """The mask the kernel applies now (a flood's blocking included)."""
        mask = ctypes.c_uint64()
        libc.ptrace(PTRACE.GETSIGMASK, self.tid, 8, mask)
        return mask.value

    def set_kernel_sigmask(self, mask: int) -> None:
        libc.ptrace(PTRACE.SETSIGMASK, self.tid, 8, ctypes.c_uint64(mask))

    def peek_siginfo(self, shared: bool) -> list[bytes]:
        """All pending signals' siginfo (128 bytes each), per-thread or process-wide."""
        out: list[bytes] = []
        buf = ctypes.create_string_buffer(S.SIGINFO_SIZE * 32)
        while True:
            args = S.ptrace_peeksiginfo_args(len(out), 1 if shared else 0, 32)
            n = libc.ptrace(PTRACE.PEEKSIGINFO, self.tid, ctypes.addressof(args), buf)
            if n <= 0:
                return out
            out.extend(buf.raw[i * S.SIGINFO_SIZE : (i + 1) * S.SIGINFO_SIZE] for i in range(n))

    def note_pending(self, shared: bool = True) -> None:
        """Note the signals pending now (``shared``: the process-wide ones too), for
        :meth:`pending` to answer: the freeze done, before cryo resumes the task for a
        call, which takes a pending signal the task does not block (it is held back and
        given back, but no longer pending for a later look)."""
        self.frozen_pending = (self.peek_siginfo(shared=False),
                               self.peek_siginfo(shared=True) if shared else [])  # fmt: skip

    def pending(self, shared: bool) -> list[bytes]:
        """The pending signals' siginfo (own or process-wide) as :meth:`note_pending`
        saw them, or now."""
        if self.frozen_pending is not None:
            return self.frozen_pending[1 if shared else 0]
        return self.peek_siginfo(shared)

    def rseq_configuration(self) -> S.ptrace_rseq_configuration:
        conf = S.ptrace_rseq_configuration()
        libc.ptrace(PTRACE.GET_RSEQ_CONFIGURATION, self.tid, ctypes.sizeof(conf), conf)
        return conf


FLOOD = 256  # signals held back from one task before all are blocked in it (defer)
_BLOCK_ALL = (1 << 64) - 1  # (the kernel leaves SIGKILL and SIGSTOP out itself)
# SIGCHLD, SIGCONT, SIGURG, SIGWINCH: ignored by default (a batch may end with one)
_IGNORED_BY_DEFAULT = sum(1 << (n - 1) for n in (17, 18, 23, 28))


class _Starved(Exception):
    """The carrier of a signal given back never came, or the interrupt's stop after it
    (Tracee._deliver); ``delivered``: the signal went with the carrier all the same."""

    delivered = False


def _tracer_of(pid: int) -> int:
    try:
        return int(procfs.parse_status(procfs.read(pid, "status")).get("TracerPid", "0"))
    except CryoError:
        return 0
