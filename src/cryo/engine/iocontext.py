"""Tasks that share one I/O context (clone with CLONE_IO, issue 9): task->io_context,
which no /proc file shows, read with a BPF task iterator (linux/bpf.py).

The block layer keeps a task's I/O priority and its schedulers' per-context state there;
CLONE_IO makes a child share its parent's (ioprio_set on one then acts on both).  A
restart makes each task its own, so two tasks of the checkpoint that share one are
refused by name (Unsupported, exit 9) before anything is written.  A task without an I/O
context yet (made lazily, at its first I/O priority or block-layer request) shares
nothing; io_uring's workers (PF_IO_WORKER) are the kernel's, not compared.  One run of
the iterator over every task, only for a checkpoint of more than one task; without BPF
(no CAP_BPF, no BTF: bpf.Unavailable) nothing is checked, as before (logged).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from cryo.errors import Unsupported
from cryo.linux import bpf

log = logging.getLogger(__name__)
PF_IO_WORKER = 0x10  # include/linux/sched.h
_REC = struct.Struct("<iiQQ")  # pid, tgid, flags (its first 4 bytes), io_context


def check(session: Any) -> None:
    """Driver hook (shared: every process collected)."""
    tids = {t: p.pid for p in session.procs.values() if not p.zombie for t in p.threads}
    if len(tids) < 2:
        return
    try:
        pid, flags, ioc = bpf.need("task.pid", "task.flags", "task.io_context")
        data = bpf.read("iter_task", (bpf.Read(pid, 8), bpf.Read(flags, 8), bpf.Read(ioc, 8)))
    except (bpf.Unavailable, OSError) as err:
        log.info("no BPF iterator (%s): tasks sharing an I/O context (CLONE_IO) not looked"
                 " for", err)
        return
    by_ctx: dict[int, list[int]] = {}
    for tid, _tgid, fl, ctx in _REC.iter_unpack(data[: len(data) // _REC.size * _REC.size]):
        if ctx and tid in tids and not fl & 0xFFFFFFFF & PF_IO_WORKER:
            by_ctx.setdefault(ctx, []).append(tid)
    for shared in by_ctx.values():
        if len(shared) > 1:
            a, b = sorted(shared)[:2]
            raise Unsupported(
                f"task {b} (process {tids[b]}) shares its I/O context with task {a} (process"
                f" {tids[a]}): made with clone(CLONE_IO), it would come back with one of its"
                " own (its I/O priority no longer shared)", pid=tids[b],
                resource="I/O context (CLONE_IO)")  # fmt: skip
