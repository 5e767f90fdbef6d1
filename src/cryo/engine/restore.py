"""The restore orchestrator: the only code that knows the order of a restart.

Stages (docs/design.md):
    VALIDATE  read every record, check arch/format/CPU/kernel, verify every page checksum
    TREE      create the process (old pid with clone3 set_tid when free), traced, stopped
    RESTORER  map a private code+scratch page at an address free in both layouts and
              run every further syscall from it
    MEMORY    unmap the helper's mappings, move vDSO/vvar, map the image's VMAs, write
              pages, set protections and mm fields (PR_SET_MM_MAP)
    FILES     fd table, cwd/root/umask
    TASK      session, comm, limits, prctl flags, robust list, tid address, rseq
    SIGNALS   actions, alt stack, timers, credentials, pending signals
    REGS      unmap the restorer, set xstate and registers, signal mask; let go
A failure at any stage kills the half-built process; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryo import procfs
from cryo.engine import files, memory, registers, signals, sysvshm, task, timers
from cryo.engine.context import RestoreContext
from cryo.engine.inject import Injector, find_vdso_syscall
from cryo.engine.ptrace import XSTATE_MAX, Tracee
from cryo.errors import CryoError, RestoreConflict, translate_oserror
from cryo.image import records as R
from cryo.image.reader import Image, ImageSource
from cryo.linux import libc
from cryo.linux.consts import PAGE_SIZE, PTRACE, SYS

log = logging.getLogger(__name__)
RESTORER_SIZE = 64 * 1024


@dataclass
class RestoreResult:
    pid: int
    old_pid: int
    memory_bytes: int = 0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


_xstate_size: int | None = None


def xstate_size_here() -> int:
    """Size of this CPU's xsave area as ptrace reports it (probed once on a child)."""
    global _xstate_size
    if _xstate_size is None:
        child = _spawn_helper(None)
        try:
            t = Tracee.adopt_traceme_child(child)
            _xstate_size = len(t.get_xstate())
        finally:
            _kill(child)
    return _xstate_size


def validate(src: str | ImageSource) -> tuple[ImageSource, dict[bytes, dict[str, Any]],
                                              dict[int, Any]]:  # fmt: skip
    """Read and check everything; returns the image, its records and its SysV segments."""
    image = Image(src) if isinstance(src, str) else src
    pid = image.head["root_pid"]
    recs = {kind: image.one(kind, pid)
            for kind in (R.TASK, R.MM, R.REGS, R.SIGS, R.TIMR, R.FILE)}  # fmt: skip
    memory.check(recs[R.MM])
    registers.check(recs[R.REGS], xstate_size_here())
    image.verify()
    segments = sysvshm.check(image, recs[R.MM]["vmas"])
    return image, recs, segments


def _pid_free(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _spawn_helper(want_pid: int | None) -> int:
    """Fork a child that stops itself under our trace; with ``want_pid``, as that pid."""
    child = libc.clone3_set_tid(want_pid) if want_pid is not None else os.fork()
    if child == 0:  # the child: become traceable and stop; we take it from there
        try:
            libc.ptrace(PTRACE.TRACEME, 0)
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(127)
    return child


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def restart(
    path: str | ImageSource,
    *,
    must_reuse_pid: bool = False,
    shell_job: bool = False,
    translate: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreResult:
    """Recreate the process saved in ``path`` (a directory image, or any ImageSource such
    as a version of a store); it runs, as our child, when this returns."""
    t0 = time.perf_counter()
    image, recs, segments = validate(path)
    old_pid = image.head["root_pid"]
    want: int | None = old_pid if _pid_free(old_pid) else None
    if want is None and must_reuse_pid:
        raise RestoreConflict(f"pid {old_pid} is taken; cannot restore with the same pid",
                              pid=old_pid)  # fmt: skip
    try:
        child = _spawn_helper(want)
    except OSError as err:
        if must_reuse_pid or err.errno not in (errno.EEXIST, errno.EPERM, errno.EINVAL):
            raise RestoreConflict(f"cannot create pid {old_pid}: {err.strerror}",
                                  pid=old_pid) from err  # fmt: skip
        child = _spawn_helper(None)
    result = RestoreResult(pid=child, old_pid=old_pid)
    created: list[int] = []  # SysV segments this restart made
    try:
        tracee = Tracee.adopt_traceme_child(child)
        ctx = RestoreContext(child, old_pid, tracee, Injector(tracee, find_vdso_syscall(child)),
                             image, options={"shell_job": shell_job,
                                             "translate": translate or {}})  # fmt: skip
        shm_ids = sysvshm.ensure(segments, created)
        result.memory_bytes = _build(ctx, recs, shm_ids, progress)
        result.warnings = ctx.warnings
        tracee.detach()
    except OSError as err:
        _kill(child)
        sysvshm.remove(created)
        raise translate_oserror(err, pid=child) from err
    except BaseException:
        _kill(child)
        sysvshm.remove(created)
        raise
    finally:
        image.close()
    result.total_seconds = time.perf_counter() - t0
    return result


def _build(ctx: RestoreContext, recs: dict[bytes, dict[str, Any]], shm_ids: dict[int, int],
           progress: Callable[[int, int], None] | None) -> int:  # fmt: skip
    inj = ctx.inj
    mm_rec = recs[R.MM]
    # RESTORER
    helper = [(v.start, v.end) for v in procfs.parse_maps(procfs.read(ctx.pid, "maps"))]
    area = memory.free_area(helper, memory.layout(mm_rec), size=RESTORER_SIZE)
    inj.map_scratch(RESTORER_SIZE, addr=area, exe=True)
    inj.write(area, b"\x0f\x05\xcc")  # syscall; int3
    inj.syscall_addr = area
    inj.scratch, inj.scratch_size = area + PAGE_SIZE, RESTORER_SIZE - PAGE_SIZE
    task.unregister_rseq(ctx)
    if ctx.options["shell_job"]:
        files.stash_stdio(ctx)
    task.restore_early(ctx, recs[R.TASK])
    # MEMORY
    memory.unmap_helper(ctx, keep=(area, area + RESTORER_SIZE))
    temp = memory.free_area([(area, area + RESTORER_SIZE)], memory.layout(mm_rec),
                            size=1 << 20)  # fmt: skip
    memory.move_specials(ctx, mm_rec, temp)
    fixup = memory.map_vmas(ctx, mm_rec)
    sysvshm.attach(ctx, mm_rec["vmas"], shm_ids)
    total = sum(b["raw"] for b in ctx.image.blocks)
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    written = memory.write_pages(ctx, step)
    memory.protect(ctx, fixup)
    memory.restore_mm(ctx, mm_rec)
    # FILES
    files.restore_fds(ctx, recs[R.FILE])
    files.restore_fs(ctx, recs[R.FILE])
    # TASK
    task.restore(ctx, recs[R.TASK])
    # SIGNALS, timers, credentials
    signals.restore_actions(ctx, recs[R.SIGS])
    timers.restore(ctx, recs[R.TIMR])
    task.restore_creds(ctx, recs[R.TASK])
    signals.restore_pending(ctx, recs[R.SIGS])
    # REGS: the last injected call unmaps the restorer itself
    inj(SYS.munmap, area, RESTORER_SIZE)
    registers.restore(ctx, recs[R.REGS])
    signals.restore_mask(ctx, recs[R.SIGS])
    return written


def wait(pid: int, forward: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
         ) -> int:  # fmt: skip
    """Wait for a restored child, forwarding ``forward`` signals to it; shell-style status."""
    def fwd(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    old = {s: signal.signal(s, fwd) for s in forward}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
            except ChildProcessError as err:
                raise CryoError(f"process {pid} is not our child") from err
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
        128 + os.WTERMSIG(status)  # fmt: skip


__all__ = ["XSTATE_MAX", "RestoreResult", "restart", "validate", "wait"]
