"""The dump orchestrator: the only code that knows the order of a checkpoint.

    scope and freeze: every thread of every process of the scope seized and stopped
    -> per process, injected calls while a scratch page is mapped (task, signals,
       timers, brk; per thread: alt stack, clear_child_tid, ...), then registers put
       back and every thread parked in a clean stop
    -> per process, read from outside: threads' registers, memory layout, fd table;
       once for all: open file descriptions, pipe data, shared memory objects
    -> records written; pages copied into buffers; the processes are let go as soon as
       their pages are in our buffers (unless a signal is to be sent afterwards)
    -> blocks written by a writer thread; the image is fsync'd and renamed into place
    -> the signal after checkpoint, if any, to every process
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cryo
from cryo.engine import (
    dirty,
    files,
    memory,
    shmem,
    signals,
    sysvshm,
    task,
    threads,
    timers,
    tree,
)
from cryo.engine.context import DumpContext
from cryo.engine.inject import Injector, find_vdso_syscall
from cryo.errors import translate_oserror
from cryo.image import records as R
from cryo.image.sink import DirSink, Sink

log = logging.getLogger(__name__)
_DEFER = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class DumpResult:
    path: str
    pid: int
    pids: list[int] = field(default_factory=list)
    threads: int = 0
    memory_bytes: int = 0
    stored_bytes: int = 0
    freeze_seconds: float = 0.0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def memory_budget() -> int:
    """How much page data may wait in our buffers for the writer."""
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    return max(memory.BLOCK * 2, min(avail // 2, 8 << 30))


@dataclass
class _Shared:
    descs: files.Descriptions = field(default_factory=files.Descriptions)
    objects: shmem.Objects = field(default_factory=shmem.Objects)


def checkpoint(
    pid: int,
    dest: str | Sink,
    *,
    scope: str = "process",
    force: bool = False,
    compress: bool = False,
    shell_job: bool = False,
    signal_after: int = 0,
    direct_io: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DumpResult:
    """Write the complete state of process ``pid`` (and, by ``scope``, its descendants,
    process group or session) into directory ``dest`` (or any Sink, such as a new
    version in a store).

    The processes keep running unless ``signal_after`` is given, which is sent to each
    once the image is safely on disk.  On any failure they are left running as before.
    ``direct_io`` writes page data with O_DIRECT (shorter freeze, no page cache used);
    without it the image stays cached for a quick restart.
    """
    t0 = time.perf_counter()
    tree.members(pid, scope)  # a scope with no process is an error before anything else
    sink: Sink = (DirSink(dest, force=force, compress=compress, direct=direct_io)
                  if isinstance(dest, str) else dest)  # fmt: skip
    result = DumpResult(path=sink.path, pid=pid)
    procs: dict[int, tree.Proc] = {}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFER)
    t_freeze = time.perf_counter()
    released = False
    # a store's version sink can take only the pages written since its previous version
    tsink: Any = sink if hasattr(sink, "select") else None
    track = tsink is not None
    tokens = {r["pid"]: r["token"] for r in tsink.previous_records(dirty.KIND)} if track \
        else {}  # fmt: skip
    inherit: list[tuple[tuple[str, int], list[list[int]], list[list[int]]]] = []
    try:
        procs = tree.freeze(pid, scope)
        t_freeze = time.perf_counter()
        result.warnings.extend(files.check_shared_tables(
            [p.pid for p in procs.values() if not p.zombie]))
        shared = _Shared()
        per_proc: list[dict[bytes, Any]] = []
        thread_recs: list[dict[str, Any]] = []
        sources: list[memory.Source] = []
        for p in procs.values():
            if p.zombie:
                continue
            ctx = DumpContext(p.pid, p.leader, Injector(p.leader, find_vdso_syscall(p.pid)),
                              options={"shell_job": shell_job}, shared=shared)  # fmt: skip
            recs, trecs, tracking = _dump_injected(ctx, p, tokens.get(p.pid) if track else False)
            thread_recs.extend(trecs)
            mm_rec, runs = memory.dump(ctx, shared.objects)
            if tracking is not None:
                tag = ("pid", p.pid)
                present = [[a, n] for a, n in runs]
                need = tsink.select(tag, present, dirty.written(tracking, mm_rec["vmas"], runs))
                inherit.append((tag, present, need))
                runs = [(a, n) for a, n in need]
                recs[dirty.KIND] = tracking.record()
            sysvshm.dump(ctx, mm_rec["vmas"], sink)
            recs[R.MM] = mm_rec
            recs[R.FILE] = files.dump(ctx, shared.descs)
            per_proc.append(recs)
            sources.append(memory.process_source(p.pid, runs, mm_rec["vmas"]))
            result.warnings.extend(ctx.warnings)
        files.dump_pipes(shared.descs, shell_job)
        for obj in shared.objects.objs:
            fd, runs = shared.objects.data_ranges(obj)
            sources.append(memory.object_source(obj["id"], fd, runs))

        sink.record(R.HEAD, _head(pid, procs))
        sink.record(R.TREE, tree.record(procs, pid, scope))
        for recs in per_proc:
            for kind in (R.TASK, R.MM, R.SIGS, R.TIMR, R.FILE, dirty.KIND):
                if kind in recs:
                    sink.record(kind, recs[kind])
        for trec in thread_recs:
            sink.record(R.THRD, trec)
        sink.record(R.FDSC, {"descs": shared.descs.descs})
        sink.record(R.SHMO, shmem.record(shared.objects))
        for blob in shared.descs.blobs:
            sink.record(R.FDAT, blob, raw=True)

        total = sum(n for src in sources for _, n in src.runs)
        done = [0]

        def on_block(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        def release() -> None:
            nonlocal released
            if not signal_after:
                tree.let_go(procs)
                released = True
                result.freeze_seconds = time.perf_counter() - t_freeze
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

        wants = getattr(sink, "wants_checksum", True)
        metas, stats = memory.copy_pages(sources, sink.write_block,
                                         buffer_limit=memory_budget(), progress=on_block,
                                         on_read_done=release, checksums=wants)  # fmt: skip
        for meta in metas:
            sink.record(R.PBLK, meta)
        for tag, present, need in inherit:  # pages not copied: the previous version's
            tsink.inherit(tag, present, need)
        sink.commit()
        result.memory_bytes = stats.bytes
        result.stored_bytes = sink.stored_bytes
    except OSError as err:
        tree.let_go(procs)
        sink.abort()
        raise translate_oserror(err, pid=pid) from err
    except BaseException:
        tree.let_go(procs)
        sink.abort()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    result.pids = sorted(procs)
    result.threads = sum(len(p.threads) for p in procs.values())
    if signal_after:
        for p in procs.values():
            # queued while the task is still held, so it acts before any further instruction
            if not p.zombie:
                os.kill(p.pid, signal_after)
        if signal_after == signal.SIGKILL:
            tree.collect_dead(procs)  # dead tracees wait for their tracer, not a detach
        tree.let_go(procs)
        result.freeze_seconds = time.perf_counter() - t_freeze
    result.total_seconds = time.perf_counter() - t0
    return result


def _dump_injected(ctx: DumpContext, p: tree.Proc, token: str | bool | None
                   ) -> tuple[dict[bytes, Any], list[dict[str, Any]],
                              dirty.Tracking | None]:  # fmt: skip
    """Everything only the tasks can tell us, asked while a scratch page is mapped; and,
    for a store (``token`` not False), write tracking named for this checkpoint."""
    inj = ctx.inj
    inj.map_scratch()
    injectors = {p.pid: inj}
    trecs = []
    tracking = None
    try:
        if token is not False:
            tracking = dirty.prepare(ctx, token if isinstance(token, str) else None)
        recs = {
            R.TASK: task.dump(ctx),
            R.SIGS: signals.dump(ctx),
            R.TIMR: timers.dump(ctx),
        }
        memory.dump_brk(ctx)
        for tid in p.threads:
            t = p.tracees[tid]
            tinj = injectors.get(tid) or Injector(t, inj.syscall_addr)
            tinj.scratch, tinj.scratch_size = inj.scratch, inj.scratch_size
            injectors[tid] = tinj
            trecs.append(threads.dump(ctx, t, tinj))
    finally:
        try:
            inj.unmap_scratch()
        finally:
            for tid, tinj in injectors.items():
                tinj.finish()
                p.tracees[tid].park()
    return recs, trecs, tracking


def _head(pid: int, procs: dict[int, tree.Proc]) -> dict[str, Any]:
    return {
        "arch": platform.machine(),
        "kernel": platform.release(),
        "cryo": cryo.__version__,
        "created": time.time(),
        "hostname": socket.gethostname(),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "root_pid": pid,
        "pids": sorted(procs),
    }
