"""The dump orchestrator: the only code that knows the order of a checkpoint.

    freeze (PTRACE_SEIZE + INTERRUPT)
    -> injected calls, while a scratch page is mapped: task, signals, timers, brk
    -> scratch unmapped, registers put back
    -> registers, files, memory layout (read from outside)
    -> records written; pages copied into buffers; the target is let go as soon as its
       pages are in our buffers (unless a signal is to be sent after the checkpoint)
    -> blocks written by a writer thread; the image is fsync'd and renamed into place
    -> the signal after checkpoint, if any
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
from cryo import procfs
from cryo.engine import files, memory, registers, signals, sysvshm, task, timers
from cryo.engine.context import DumpContext
from cryo.engine.inject import Injector, find_vdso_syscall
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError, NoSuchProcess, Unsupported, translate_oserror
from cryo.image import records as R
from cryo.image.sink import DirSink, Sink

log = logging.getLogger(__name__)
_DEFER = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class DumpResult:
    path: str
    pid: int
    memory_bytes: int = 0
    stored_bytes: int = 0
    freeze_seconds: float = 0.0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _check_target(pid: int) -> procfs.Stat:
    if pid <= 0:
        raise NoSuchProcess(f"process {pid} does not exist", pid=pid)
    if pid == os.getpid():
        raise CryoError("cryo cannot checkpoint itself", pid=pid)
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    if st.state in ("Z", "X"):
        raise NoSuchProcess(f"process {pid} is a zombie", pid=pid)
    if st.num_threads > 1:
        raise Unsupported(f"process {pid} has {st.num_threads} threads; multi-threaded"
                          " processes are not supported yet", pid=pid,
                          resource="threads")  # fmt: skip
    return st


def memory_budget() -> int:
    """How much page data may wait in our buffers for the writer."""
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    return max(memory.BLOCK * 2, min(avail // 2, 8 << 30))


def checkpoint(
    pid: int,
    dest: str | Sink,
    *,
    force: bool = False,
    compress: bool = False,
    shell_job: bool = False,
    signal_after: int = 0,
    direct_io: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DumpResult:
    """Write the complete state of process ``pid`` into directory ``dest`` (or any Sink,
    such as a new version in a store).

    The process keeps running unless ``signal_after`` is given, which is sent once the
    image is safely on disk.  On any failure the process is left running as before.
    ``direct_io`` writes page data with O_DIRECT (shorter freeze, no page cache used);
    without it the image stays cached for a quick restart.
    """
    t0 = time.perf_counter()
    _check_target(pid)
    sink: Sink = (DirSink(dest, force=force, compress=compress, direct=direct_io)
                  if isinstance(dest, str) else dest)  # fmt: skip
    result = DumpResult(path=sink.path, pid=pid)
    tracee: Tracee | None = None
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFER)
    try:
        tracee = Tracee.seize(pid)
        t_freeze = time.perf_counter()
        ctx = DumpContext(pid, tracee, Injector(tracee, find_vdso_syscall(pid)),
                          options={"shell_job": shell_job})  # fmt: skip
        live = _dump_injected(ctx)
        recs = {
            R.REGS: registers.dump(ctx),
            R.FILE: files.dump(ctx),
        }
        mm_rec, runs = memory.dump(ctx)
        sysvshm.dump(ctx, mm_rec["vmas"], sink)
        recs[R.MM] = mm_rec
        recs.update(live)
        sink.record(R.HEAD, _head(pid))
        for kind in (R.TASK, R.MM, R.REGS, R.SIGS, R.TIMR, R.FILE):
            sink.record(kind, recs[kind])
        for blob in ctx.blobs:
            sink.record(R.FDAT, blob, raw=True)

        total = sum(n for _, n in runs)
        done = [0]

        def on_block(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        def release() -> None:
            if not signal_after and tracee is not None:
                tracee.detach()
                result.freeze_seconds = time.perf_counter() - t_freeze
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

        metas, stats = memory.copy_pages(pid, runs, mm_rec["vmas"], sink.write_block,
                                         buffer_limit=memory_budget(), progress=on_block,
                                         on_read_done=release)  # fmt: skip
        for meta in metas:
            sink.record(R.PBLK, meta)
        sink.commit()
        result.memory_bytes = stats.bytes
        result.stored_bytes = sink.stored_bytes
        result.warnings = ctx.warnings
    except OSError as err:
        _let_go(tracee)
        sink.abort()
        raise translate_oserror(err, pid=pid) from err
    except BaseException:
        _let_go(tracee)
        sink.abort()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if signal_after:
        assert tracee is not None
        # queued while the task is still held, so it acts before any further instruction
        os.kill(pid, signal_after)
        tracee.detach()
        result.freeze_seconds = time.perf_counter() - t_freeze
    result.total_seconds = time.perf_counter() - t0
    return result


def _dump_injected(ctx: DumpContext) -> dict[bytes, Any]:
    """Everything only the task can tell us, asked while a scratch page is mapped."""
    inj = ctx.inj
    inj.map_scratch()
    try:
        out = {
            R.TASK: task.dump(ctx),
            R.SIGS: signals.dump(ctx),
            R.TIMR: timers.dump(ctx),
        }
        memory.dump_brk(ctx)
    finally:
        try:
            inj.unmap_scratch()
        finally:
            inj.finish()
            ctx.tracee.park()
    return out


def _let_go(tracee: Tracee | None) -> None:
    if tracee is not None and tracee.attached:
        try:
            tracee.detach()
        except OSError as err:  # pragma: no cover (the target died meanwhile)
            log.warning("could not detach from %d: %s", tracee.pid, err)


def _head(pid: int) -> dict[str, Any]:
    return {
        "arch": platform.machine(),
        "kernel": platform.release(),
        "cryo": cryo.__version__,
        "created": time.time(),
        "hostname": socket.gethostname(),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "root_pid": pid,
        "pids": [pid],
    }
