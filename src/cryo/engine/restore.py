"""The restore orchestrator: the only code that knows the order of a restart.

Stages (docs/design.md):
    VALIDATE  read every record, check arch/format/CPU/kernel, verify every page checksum
    SHARED    cryo opens every open file description (pipes refilled) and makes every
              shared memory object, on fds every process will inherit
    TREE      the first process forked by cryo (its old pid through clone3 set_tid),
              traced and stopped; a restorer page (syscall; int3 + scratch) mapped in it
              at an address free in every layout; each further process forked by its
              restored parent with an injected clone3 (set_tid), so parents, sessions and
              process groups are real again
    per process, in that order:
    MEMORY    unmap the helper's mappings, move vDSO/vvar, map the image's VMAs, write
              pages, set protections and mm fields (PR_SET_MM_MAP)
    FILES     fd table from the inherited descriptions, cwd/root/umask
    TASK      limits, prctl flags
    SIGNALS   actions; threads created (clone3 set_tid) and their own state; timers;
              credentials in every thread; pending signals
    REGS      the restorer unmapped; xstate, registers and masks of every thread
    finally zombies exit with their status and every task is let go at once.
A failure at any stage kills every process built so far; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryo import procfs
from cryo.engine import (
    anonfds,
    files,
    memory,
    registers,
    shmem,
    signals,
    sysvshm,
    task,
    threads,
    timers,
    tree,
)
from cryo.engine.context import RestoreContext
from cryo.engine.inject import Injector, find_vdso_syscall
from cryo.engine.ptrace import Tracee
from cryo.errors import CryoError, ImageCorrupt, RestoreConflict, translate_oserror
from cryo.image import records as R
from cryo.image.reader import Image, ImageSource
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import CLONE, PAGE_SIZE, PTRACE, SYS

log = logging.getLogger(__name__)
RESTORER_SIZE = 64 * 1024
_PER_PROCESS = (R.TASK, R.MM, R.SIGS, R.TIMR, R.FILE)


@dataclass
class RestoreResult:
    pid: int
    old_pid: int
    pids: dict[int, int] = field(default_factory=dict)  # old pid -> new pid
    memory_bytes: int = 0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What an image holds, read and checked."""

    tree: dict[str, Any]
    procs: dict[int, dict[bytes, dict[str, Any]]]  # live processes' records by old pid
    threads: dict[int, list[dict[str, Any]]]  # THRD records by old pid, leader first
    descs: list[dict[str, Any]]
    blobs: list[bytes]
    objects: dict[str, Any]
    segments: dict[int, Any]


_xstate_size: int | None = None


_XSTATE_CACHE = "/run/cryo/xstate-size"


def xstate_size_here() -> int:
    """Size of this CPU's xsave area as ptrace reports it: probed on a child once per boot
    (the answer is kept in /run, keyed by the boot id) and once per process."""
    global _xstate_size
    if _xstate_size is None:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        try:
            with open(_XSTATE_CACHE) as f:
                cached_boot, size = f.read().split()
            if cached_boot == boot:
                _xstate_size = int(size)
                return _xstate_size
        except (OSError, ValueError):
            pass
        child = _spawn_helper(None)
        try:
            t = Tracee.adopt_traceme_child(child)
            _xstate_size = len(t.get_xstate())
        finally:
            _kill(child)
        try:
            os.makedirs(os.path.dirname(_XSTATE_CACHE), exist_ok=True)
            tmp = f"{_XSTATE_CACHE}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{boot} {_xstate_size}\n")
            os.replace(tmp, _XSTATE_CACHE)
        except OSError:  # a cache only
            pass
    return _xstate_size


def validate(src: str | ImageSource) -> tuple[ImageSource, Plan]:
    """Read and check everything before anything is created."""
    image = Image(src) if isinstance(src, str) else src
    trees = image.raw(R.TREE)
    if not trees:
        raise ImageCorrupt(f"image {image.path} is corrupt: no TREE record", path=image.path)
    tree_rec = trees[0]
    procs: dict[int, dict[bytes, dict[str, Any]]] = {}
    thread_recs: dict[int, list[dict[str, Any]]] = {}
    all_threads = image.raw(R.THRD)
    xstate = xstate_size_here()
    segments: dict[int, Any] = {}
    for p in tree_rec["procs"]:
        if p["zombie"]:
            continue
        pid = p["pid"]
        procs[pid] = {kind: image.one(kind, pid) for kind in _PER_PROCESS}
        trecs = sorted((t for t in all_threads if t["pid"] == pid),
                       key=lambda t: (t["tid"] != pid, t["tid"]))  # fmt: skip
        if not trecs or trecs[0]["tid"] != pid:
            raise ImageCorrupt(f"image {image.path} is corrupt: no thread record for {pid}",
                               path=image.path)  # fmt: skip
        thread_recs[pid] = trecs
        memory.check(procs[pid][R.MM])
        for t in trecs:
            registers.check(t, xstate)
        segments.update(sysvshm.check(image, procs[pid][R.MM]["vmas"]))
    image.verify()
    fdsc = image.raw(R.FDSC)
    shmo = image.raw(R.SHMO)
    return image, Plan(tree_rec, procs, thread_recs, fdsc[0]["descs"] if fdsc else [],
                       image.raw(R.FDAT), shmo[0] if shmo else {"objs": []},
                       segments)  # fmt: skip


def _spawn_helper(want_pid: int | None, new_pidns: bool = False) -> int:
    """Fork a child that stops itself under our trace; with ``want_pid``, as that pid;
    with ``new_pidns`` as pid 1 of a new pid namespace."""
    if new_pidns:
        child = libc.clone3(None, CLONE.NEWPID)
    else:
        child = libc.clone3(want_pid) if want_pid is not None else os.fork()
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


@dataclass
class _Shared:
    opened: files.Opened
    objects: shmem.Made


@dataclass
class _Made:
    """A process being built: its leader under our control."""

    rec: dict[str, Any]
    pid: int
    tracee: Tracee
    inj: Injector
    ctx: RestoreContext | None = None
    injectors: dict[int, Injector] = field(default_factory=dict)


def restart(
    path: str | ImageSource,
    *,
    must_reuse_pid: bool = False,
    shell_job: bool = False,
    translate: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreResult:
    """Recreate the processes saved in ``path`` (a directory image, or any ImageSource
    such as a version of a store); they run, the first one as our child, when this
    returns."""
    t0 = time.perf_counter()
    image, plan = validate(path)
    tree.check_groups(plan.tree, shell_job)
    reuse = tree.pids_free(plan.tree)
    if must_reuse_pid and not reuse:
        tree.need_free(plan.tree)
    options = {"shell_job": shell_job, "translate": translate or {}}
    root_old = plan.tree["root"]
    result = RestoreResult(pid=0, old_pid=root_old)
    made: dict[int, _Made] = {}
    created_shm: list[int] = []
    opened: files.Opened | None = None
    objects: shmem.Made | None = None
    try:
        opened = files.open_all(plan.descs, plan.blobs,
                                [r[R.FILE] for r in plan.procs.values()], options)  # fmt: skip
        objects = shmem.make_all(plan.objects, opened.base + len(opened.fds))
        shared = _Shared(opened, objects)
        _fill_objects(image, shared.objects)
        shm_ids = sysvshm.ensure(plan.segments, created_shm)
        area = _build_tree(plan, made, reuse, shell_job)
        total = sum(b["raw"] for b in image.blocks if "pid" in b)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        pid_map = {old: m.pid for old, m in made.items()}
        for old, m in made.items():
            if old in plan.procs:
                m.ctx = RestoreContext(m.pid, old, m.tracee, m.inj, image, options=options,
                                       pid_map=pid_map, shared=shared)  # fmt: skip
                result.memory_bytes += _build_process(m, plan, area, shm_ids, step)
                result.warnings.extend(m.ctx.warnings)
        for old, m in made.items():
            if old in plan.procs:
                _finish_process(m, plan, area)
        for old, m in made.items():
            if old not in plan.procs:
                _finish_zombie(m, area)
        for m in made.values():
            for t in ([m.tracee] if m.ctx is None else m.ctx.threads.values()):
                t.detach()
        result.pid = made[root_old].pid
        result.pids = pid_map
    except OSError as err:
        _undo(made, created_shm)
        raise translate_oserror(err, pid=result.pid or None) from err
    except BaseException:
        _undo(made, created_shm)
        raise
    finally:  # the processes have their own copies by now (or are gone)
        if opened is not None:
            opened.close()
        if objects is not None:
            objects.close()
        image.close()
    result.total_seconds = time.perf_counter() - t0
    return result


def _undo(made: dict[int, _Made], created_shm: list[int]) -> None:
    for m in reversed(list(made.values())):
        _kill(m.pid)
    sysvshm.remove(created_shm)


def _fill_objects(image: ImageSource, objects: shmem.Made) -> None:
    for b in image.blocks:
        if "obj" in b:
            owner, offset = image.block_data(b)
            shmem.fill(objects, b["obj"], owner, offset, b["runs"])


def _layouts(plan: Plan) -> list[tuple[int, int]]:
    return [r for recs in plan.procs.values() for r in memory.layout(recs[R.MM])]


def _build_tree(plan: Plan, made: dict[int, _Made], reuse: bool, shell_job: bool) -> int:
    """Create every process, parents first, with ids, sessions and groups; returns the
    address of the restorer area they all have."""
    area = 0
    for rec in tree.creation_order(plan.tree):
        old = rec["pid"]
        parent = made.get(rec["ppid"])
        if parent is None:  # a root: forked by cryo
            if area == 0:
                own = [(v.start, v.end) for v in procfs.parse_maps(procfs.read("self", "maps"))]
                area = memory.free_area(own, _layouts(plan), size=RESTORER_SIZE)
            try:
                child = _spawn_helper(old if reuse else None, bool(plan.tree.get("pidns")))
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
                raise RestoreConflict(f"pid {old} was taken meanwhile", pid=old) from err
            t = Tracee.adopt_traceme_child(child, tree.TRACE_NEW)
            made[old] = m = _Made(rec, child, t, Injector(t, find_vdso_syscall(child)))
            m.inj.map_scratch(RESTORER_SIZE, addr=area, exe=True)
            m.inj.write(area, b"\x0f\x05\xcc")  # syscall; int3
        else:  # forked by its restored parent
            pinj = parent.inj
            args = S.clone_args()
            args.exit_signal = rec["exit_signal"]
            if reuse:
                args.set_tid = pinj.put(struct.pack("<i", rec["nspid"]), 512)
                args.set_tid_size = 1
            known = set(tree.children(parent.pid))
            pinj(SYS.clone3, pinj.put(bytes(args)), len(bytes(args)), what=f" clone3 for {old}")
            child = tree.new_child(parent.pid, known)
            t = Tracee(child)
            t.attached = True  # traced from birth (PTRACE_O_TRACEFORK)
            t.wait_stop()
            made[old] = m = _Made(rec, child, t, Injector(t, area))
        m.inj.syscall_addr = area
        m.inj.scratch, m.inj.scratch_size = area + PAGE_SIZE, RESTORER_SIZE - PAGE_SIZE
        _ids(m, made, shell_job, root=parent is None)
    return area


def _ids(m: _Made, made: dict[int, _Made], shell_job: bool, root: bool) -> None:
    """Session and process group, set right after birth, before any child is made."""
    rec, inj = m.rec, m.inj
    old = rec["pid"]
    if rec["sid"] == old:
        if not (root and shell_job):
            inj(SYS.setsid)
        return
    if rec["pgid"] == old:
        inj(SYS.setpgid, 0, 0)
    elif rec["pgid"] in made and not root:  # the leader's pid as the process sees it
        leader = made[rec["pgid"]]
        inj(SYS.setpgid, 0, tree.nspid(leader.pid))


def _build_process(m: _Made, plan: Plan, area: int, shm_ids: dict[int, int],
                   step: Callable[[int], None]) -> int:  # fmt: skip
    ctx = m.ctx
    assert ctx is not None
    inj = m.inj
    recs = plan.procs[ctx.old_pid]
    mm_rec = recs[R.MM]
    # MEMORY
    task.unregister_rseq(m.tracee, inj)
    task.restore_early(ctx, recs[R.TASK])
    memory.unmap_helper(ctx, keep=(area, area + RESTORER_SIZE))
    temp = memory.free_area([(area, area + RESTORER_SIZE)], memory.layout(mm_rec),
                            size=1 << 20)  # fmt: skip
    memory.move_specials(ctx, mm_rec, temp)
    fixup = memory.map_vmas(ctx, mm_rec)
    sysvshm.attach(ctx, mm_rec["vmas"], shm_ids)
    written = memory.write_pages(ctx, step)
    memory.protect(ctx, fixup)
    memory.restore_mm(ctx, mm_rec)
    # FILES
    files.restore_fds(ctx, recs[R.FILE], ctx.shared.opened)
    anonfds.register(ctx, recs[R.FILE]["fds"], plan.descs)
    files.restore_fs(ctx, recs[R.FILE])
    # TASK
    task.restore(ctx, recs[R.TASK])
    # SIGNALS, threads, timers, credentials, pending signals
    signals.restore_actions(ctx, recs[R.SIGS])
    trecs = plan.threads[ctx.old_pid]
    ctx.threads[m.pid] = m.tracee
    ctx.tid_map[ctx.old_pid] = m.pid
    m.injectors[m.pid] = inj
    pidns = bool(plan.tree.get("pidns"))
    nstids = dict(zip(m.rec["threads"], m.rec["nstids"], strict=True))
    for trec in trecs[1:]:
        want = nstids[trec["tid"]] if pidns or threads.tid_free(trec["tid"]) else None
        t = threads.create(ctx, trec, want)
        ctx.threads[t.tid] = t
        ctx.tid_map[trec["tid"]] = t.tid
        tinj = Injector(t, area)
        tinj.scratch, tinj.scratch_size = inj.scratch, inj.scratch_size
        m.injectors[t.tid] = tinj
    for trec in trecs:
        tinj = m.injectors[ctx.tid_map[trec["tid"]]]
        task.restore_thread(tinj, trec)
        signals.restore_altstack(tinj, trec)
    timers.restore(ctx, recs[R.TIMR])
    for trec in trecs:
        task.restore_creds(m.injectors[ctx.tid_map[trec["tid"]]], trec)
    signals.restore_pending(ctx, recs[R.SIGS], trecs)
    return written


def _finish_process(m: _Made, plan: Plan, area: int) -> None:
    """The last injected call unmaps the restorer; then every thread's registers."""
    ctx = m.ctx
    assert ctx is not None
    m.inj(SYS.munmap, area, RESTORER_SIZE)
    for trec in plan.threads[ctx.old_pid]:
        tid = ctx.tid_map[trec["tid"]]
        registers.restore(ctx.threads[tid], m.injectors[tid], trec)
        ctx.threads[tid].set_sigmask(trec["blocked"])


def _finish_zombie(m: _Made, area: int) -> None:
    """Let a zombie-to-be go straight into exit_group (or a fatal signal) with the
    status its parent will collect."""
    status = m.rec["exit_code"]
    inj = m.inj
    regs = S.user_regs_struct.from_buffer_copy(inj.saved)
    regs.rip = area
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        inj(SYS.rt_sigaction, sig, inj.put(bytes(32)), 0, 8)  # SIG_DFL
        inj(SYS.prlimit64, 0, 4, inj.put(bytes(16)), 0)  # RLIMIT_CORE 0: no core file
        regs.rax, regs.rdi, regs.rsi, regs.rdx = SYS.tgkill, m.pid, m.pid, sig
    else:
        regs.rax, regs.rdi = SYS.exit_group, os.WEXITSTATUS(status) if os.WIFEXITED(status) \
            else 0  # fmt: skip
    inj.finish(regs)


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


__all__ = ["RestoreResult", "restart", "validate", "wait"]
