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
from typing import Any

from cryo.engine import registers, signals, task, tree
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError
from cryo.linux import structs as S
from cryo.linux.consts import CLONE_THREAD_FLAGS, SYS

log = logging.getLogger(__name__)
KIND = b"THRD"


def dump(ctx: DumpContext, tracee: Tracee, inj: Injector) -> dict[str, Any]:
    """The THRD record of one thread; ``inj`` injects into that thread."""
    return {"pid": ctx.pid, "tid": tracee.tid, **registers.dump(tracee, inj),
            **signals.dump_thread(tracee, inj), **task.dump_thread(ctx.pid, tracee, inj)}


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
