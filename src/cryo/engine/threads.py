"""Threads: what each thread owns (registers and FPU state, signal mask, pending
signals, alternate stack, credentials, rseq, robust list, clear_child_tid, name), and
creating the threads again with their tids.

A thread is recreated by the process's leader with an injected clone3 (CLONE_VM,
CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD, ... and set_tid); the new thread is traced from
its first instant (PTRACE_O_TRACECLONE) and gets its own state injected before it ever
runs a user instruction.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Generator
from typing import Any

from cryo.engine import registers, signals, task, tree
from cryo.engine.context import DumpContext, RestoreContext, background
from cryo.engine.inject import Batch
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError, InternalError, Unsupported
from cryo.linux import structs as S
from cryo.linux.consts import CLONE_THREAD_FLAGS, SYS

log = logging.getLogger(__name__)
KIND = b"THRD"


def dump(ctx: DumpContext, tracee: Tracee, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Queue-thread hook (drivers.py): the THRD record of one thread, the calls queued in
    ``b``, that thread's batch."""
    parts = [signals.dump_thread(tracee, b), task.dump_thread(ctx.pid, tracee, b)]
    for g in parts:
        next(g)
    yield
    early = ctx.shared.early if ctx.shared is not None else None
    return {"pid": ctx.pid, "tid": tracee.tid, **registers.dump(tracee, b.inj, early),
            **_result(parts[0]), **_result(parts[1])}


def _result(g: Generator[None, Batch, dict[str, Any]]) -> dict[str, Any]:
    """What a queued part returns once its calls ran (it queues nothing more)."""
    try:
        g.send(None)  # type: ignore[arg-type]
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise InternalError("a thread's part queued a second round")


def create(ctx: RestoreContext, trec: dict[str, Any], want_tid: int | None) -> Tracee:
    """Make a thread in the restored process (``want_tid`` when it is free)."""
    inj = ctx.inj
    args = S.clone_args()
    args.flags = CLONE_THREAD_FLAGS
    args.exit_signal = 0
    frame = inj.frame()
    if want_tid is not None:
        args.set_tid = frame.put(struct.pack("<i", want_tid))
        args.set_tid_size = 1
    size = len(bytes(args))
    known = {int(x) for x in os.listdir(f"/proc/{ctx.pid}/task")}
    got = inj(SYS.clone3, frame.put(bytes(args)), size, what=f" clone3 thread {trec['tid']}")
    if want_tid is not None and got != want_tid:
        raise CryoError(f"thread {trec['tid']} came back as {got}")
    tid = tree.new_thread(ctx.pid, known)  # the tid as we see it (pid namespaces)
    t = Tracee(ctx.pid, tid)
    t.attached = True  # traced from birth (PTRACE_O_TRACECLONE)
    t.wait_stop()
    return t


def tid_free(tid: int) -> bool:
    return not os.path.exists(f"/proc/{tid}")


# -- tracers: a process of the checkpoint that ptraces another ---------------------------

def scan_tracees(ctx: DumpContext) -> None:
    """Driver hook (queue, with no call; once per checkpoint): every process's TracerPid
    read in a thread while the freeze goes on (2-3 ms for 120 processes), for
    :func:`check_tracers`."""
    if ctx.shared is None or "tracees" in ctx.shared.early:
        return

    def scan() -> list[tuple[int, int]]:
        # (os.open and one os.read, not open(): a file object per process was a third
        # of the scan's CPU, 2.4 -> 1.6 ms for 105 processes; TracerPid is in the first
        # few hundred bytes, and the kernel makes the whole file at the first read)
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                fd = os.open(f"/proc/{d}/status", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                s = os.read(fd, 4096)
            except OSError:
                continue
            finally:
                os.close(fd)
            at = s.find(b"TracerPid:\t")
            tracer = int(s[at + 11 : s.index(b"\n", at)]) if at >= 0 else 0
            if tracer:
                found.append((int(d), tracer))
        return found

    ctx.shared.early["tracees"] = background(scan)


def check_tracers(session: Any) -> None:
    """Driver hook (shared): a process of the checkpoint that traces one outside it is
    refused (exit 9): the ptrace relationship cannot be made again (a restored strace or
    gdb would find its tracee gone: restored, strace -p came back tracing nothing, exit
    0).  A tracee inside the checkpoint cannot be seized by cryo and fails earlier, exit
    4.  Only tracees' leaders are read: a tracer of another process's non-leader thread
    alone is not seen."""
    scan = session.shared.early.pop("tracees", None)
    if scan is None:
        return
    owner = {tid: p.pid for p in session.procs.values() for tid in p.threads}
    for tracee, tracer in scan.result():
        if tracer in owner and tracee not in owner:
            pid = owner[tracer]
            raise Unsupported(f"process {pid} traces process {tracee} (ptrace, thread"
                              f" {tracer}): a tracing cannot be restored", pid=pid,
                              resource="ptrace")  # fmt: skip
