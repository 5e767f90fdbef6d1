"""The resource drivers: what each resource kind does in which phase, in one table.

A checkpoint session (engine/session.py) walks :data:`DRIVERS` in order in each of its
phases, and a restart session walks it in each restore stage; neither knows any
resource by name.  A driver names its record kinds and gives a function for each phase
it takes part in.  The dump and restore halves live in the resource's own module; the
few lines here only hand them what they take from the context.  Resource modules do not
import each other: what one phase leaves for a later one goes through the context.

Checkpoint phases a driver may act in (per process unless said otherwise):

    queue          inside the frozen task, a scratch page mapped: the calls it needs
                   queued into the process's one batch (``queue(ctx, b)``), see below
    queue_thread   the same, for each thread (``queue_thread(ctx, tracee, b)``, ``b``
                   that thread's batch; the leader's is the process's): what it returns
                   goes into the thread's THRD record
    inject         then, every queued call read: calls of its own (``ctx.inj``), those
                   that change the process (the write-tracking token), after every
                   refusal of the queue hooks
    collect        from outside the task (/proc, ptrace, process_vm_readv)
    shared         once for all processes, after every process was collected
    write          per process, the sink known: side data, which pages to copy
    records        once: shared records (kind, payload, raw), after per-process ones

    written        per process, after its pages are in the sink, before the commit
    before_freeze  once, at the end of prepare: the applications' callbacks (cryo.app)
    frozen         once, every process stopped, before anything is injected or read
    thaw           once, just before the processes are let go (release or abort)
    after_checkpoint  once, after the resume or in the abort (with why it failed)

Restart: ``prepare`` once before any process exists (objects cryo makes and every
process inherits; cleanups and undos go on the session), ``born`` for each process as
soon as it is made (its session and group set, before its children), ``started`` once every process
is built (before they run), ``after_restart`` once they run, and per process the stages of
:data:`BUILD_STAGES` in order, and once every process is built :data:`FINISH_STAGES`;
those in :data:`PER_THREAD` run once per thread (``restore_thread``), with that thread's
injector and THRD record, the others once per process (``restore``).

The queue hooks of every driver share one batch of injected calls per thread, so that a
process is stopped once for all of them, not once per driver (issue 14).  A queue hook is
a generator: it queues its calls in ``b`` and yields; the session runs every thread's
batch, then resumes the hooks in driver order, each reading its results (``b.result``,
``b.read``) and returning what it found (its record, for a driver that keeps one; a
refusal raises here, before anything is written in the process).  A hook that needs an
earlier result for its next calls queues them in the batch its yield returns
(``nb = yield``) and yields again: the session runs a second round for those.  A queue
hook with nothing to queue may be a plain function (it returns None).

Adding a resource: a module with its dump and restore halves, and one line here.  A
resource most programs lack has its module imported on first use: its hooks here are
``_when(module, hook, need)`` (imported and run only where ``need`` finds the resource)
and ``_used(module, hook)`` (run only if something imported the module), so that a small
program's checkpoint and restart import none of it (tests/unit/test_startup.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cryo import procfs
from cryo.engine import (
    anonfds,
    cgroups,
    changed,
    dirty,
    files,
    ghosts,
    landlock,
    locks,
    memory,
    namespaces,
    numa,
    registers,
    restartblock,
    semundo,
    shmem,
    signals,
    specialfds,
    sud,
    sysvshm,
    task,
    threads,
    timers,
    x86,
)
from cryo.engine.inject import Batch, Injector
from cryo.engine.spmf import open_files as spmf_open
from cryo.engine.spmf import prepare as spmf_prepare
from cryo.engine.spmf import save as spmf_save
from cryo.engine.translate import apply as translated
from cryo.engine.translate import check as check_paths
from cryo.image import records as R

if TYPE_CHECKING:
    from cryo.engine.context import DumpContext, RestoreContext
    from cryo.engine.ptrace import Tracee

DumpHook = Callable[["DumpContext"], None]
Queued = Generator[None, Batch, Any]  # yields once its calls are queued (see above)
QueueHook = Callable[["DumpContext", Batch], Queued | None]
ThreadQueueHook = Callable[["DumpContext", "Tracee", Batch], Queued | None]
SessionHook = Callable[[Any], None]  # takes the session (engine/session.py)
WriteHook = Callable[["DumpContext", Any], None]  # the context and the sink
RecordsHook = Callable[[Any], Iterable[tuple[bytes, Any, bool]]]
RestoreHook = Callable[["RestoreContext"], None]
ThreadRestoreHook = Callable[["RestoreContext", "Injector", dict[str, Any]], None]

BUILD_STAGES = ("early", "memory", "pages", "protect", "files", "task", "signals", "threads",
                "thread", "timers", "creds", "pending")  # fmt: skip
# run as each process is made, before its children are forked from it: they inherit its
# pages copy-on-write (and still all of cryo's fds: "files" comes later)
BIRTH_STAGES = BUILD_STAGES[: BUILD_STAGES.index("protect")]
# every process built and its pages checked, the restorer still there: what must come as
# close to the let-go as it can (a sleep's restart block: its time runs from there on)
LATE_STAGES = ("late",)
FINISH_STAGES = ("regs",)  # once the restorer is gone, every process built
PER_THREAD = frozenset({"thread", "creds", "late", "regs"})


_HOOKS = ("queue", "queue_thread", "inject", "collect", "shared", "write", "written", "records",
          "prepare", "before_freeze", "frozen", "after_checkpoint", "after_restart", "born",
          "describe", "thaw", "started")


class Driver:
    """One resource kind: the record kinds it writes and a function for each phase it
    acts in (a plain class, not a dataclass: made at import, on every command's path).

    ``kinds``: per-process records it writes, in this order; ``optional``: its records
    may be absent (else every process has them).  Checkpoint hooks: ``queue``,
    ``queue_thread``, ``inject``, ``collect``, ``shared``, ``write``, ``written``,
    ``records``;
    ``before_freeze`` (at the end of prepare), ``after_checkpoint`` (after the resume,
    or in the abort, with why it failed), ``thaw`` (before the processes are let go).
    Restart: ``prepare``, ``born`` (a process just made, with its session and group,
    before its children: its injector and old pid), ``started`` (every process built,
    before they run), ``after_restart`` (once they run), ``restore`` and
    ``restore_thread`` (stage -> hook).  ``describe``: its fields for ``cryo show``."""

    __slots__ = ("kinds", "name", "optional", "restore", "restore_thread", *_HOOKS)
    name: str
    kinds: tuple[bytes, ...]
    optional: bool
    queue: QueueHook | None
    queue_thread: ThreadQueueHook | None
    inject: DumpHook | None
    collect: DumpHook | None
    shared: SessionHook | None
    write: WriteHook | None
    written: WriteHook | None
    records: RecordsHook | None
    prepare: SessionHook | None
    before_freeze: SessionHook | None
    frozen: SessionHook | None
    after_checkpoint: Callable[[Any, str | None], None] | None
    after_restart: SessionHook | None
    born: Callable[[Injector, int], None] | None
    describe: Callable[[View], dict[str, Any]] | None
    thaw: SessionHook | None
    started: SessionHook | None
    restore: Mapping[str, RestoreHook]
    restore_thread: Mapping[str, ThreadRestoreHook]

    def __init__(self, name: str, kinds: tuple[bytes, ...] = (), optional: bool = False, *,
                 restore: Mapping[str, RestoreHook] | None = None,
                 restore_thread: Mapping[str, ThreadRestoreHook] | None = None,
                 **hooks: Any) -> None:
        unknown = set(hooks) - set(_HOOKS)
        if unknown:
            raise TypeError(f"driver {name}: no phase {', '.join(sorted(unknown))}")
        self.name, self.kinds, self.optional = name, kinds, optional
        self.restore, self.restore_thread = restore or {}, restore_thread or {}
        for hook in _HOOKS:
            setattr(self, hook, hooks.get(hook))

    def replace(self, **changes: Any) -> Driver:
        """A copy with ``changes`` (as dataclasses.replace made of the frozen dataclass)."""
        now = {k: getattr(self, k) for k in ("kinds", "optional", "restore", "restore_thread",
                                              *_HOOKS)}  # fmt: skip
        return Driver(changes.pop("name", self.name), **{**now, **changes})

    def __repr__(self) -> str:
        return f"Driver({self.name!r})"


class View:
    """What ``cryo show`` hands each driver's describe: one process of an image."""

    __slots__ = ("descs", "records", "threads")

    def __init__(self, records: dict[bytes, Any], threads: list[dict[str, Any]],
                 descs: list[dict[str, Any]]) -> None:
        self.records = records  # its records by kind
        self.threads = threads  # its THRD records, the leader first
        self.descs = descs  # the image's open file descriptions


# -- the drivers of modules imported on first use: each such hook runs only where it has
# something to do, so that a program without the resource never imports the module (a
# TCP connection, a unix socket, a terminal, an agent of cryo.app: docs/design.md,
# "Start-up").  A hook that acts only on what its module itself set up earlier in the
# same checkpoint or restart (its module state) is skipped while the module was never
# imported; the others are asked first whether the target has the resource at all.
# Once the module is imported, each of its hooks runs as it always did.

_APPCHANNEL, _INET = "cryo.engine.appchannel", "cryo.engine.inet"
_SOCKETS, _TTY = "cryo.engine.sockets", "cryo.engine.tty"
APPX = b"APPX"  # appchannel.KIND (tests/unit/test_startup.py checks it is the same)
_HSPERF, HSPF = "cryo.engine.hsperf", b"HSPF"  # hsperf.KIND
_EPOLLREADY, EPRD = "cryo.engine.epollready", b"EPRD"  # epollready.KIND
_AIO, AIOR = "cryo.engine.aio", b"AIOR"  # aio.KIND


def _holds_socket(ctx: DumpContext) -> bool:
    """Whether the process holds a socket, by the fd table _holds_epoll read if it did."""
    links = ctx.live.get("fd_links", (None, None))[1]
    if links is None:
        return _has_socket(ctx.pid)
    return any(t.startswith("socket:[") for t in links.values())


def _holds_epoll(ctx: DumpContext) -> bool:
    """Whether the process holds an epoll fd; the fd table read here is left for the
    files driver (one readlink per fd, not two)."""
    ctx.live["fd_links"] = procfs.fd_links(ctx.pid)
    links = ctx.live["fd_links"][1]
    return "anon_inode:[eventpoll]" in links.values()


def _maps_hsperf(ctx: DumpContext) -> bool:
    return any(v["kind"] == "shared-file" and v["path"].startswith("/tmp/hsperfdata_")
               for v in ctx.records[R.MM]["vmas"])  # fmt: skip


def _used(module: str, fn: str) -> Callable[..., Any]:
    """The hook ``fn`` of ``module``, run only once something imported the module."""

    def hook(*args: Any) -> Any:
        mod = sys.modules.get(module)
        return None if mod is None else getattr(mod, fn)(*args)

    hook.__qualname__ = f"{module}.{fn}"
    return hook


def _when(module: str, fn: str, need: Callable[..., bool]) -> Callable[..., Any]:
    """The hook ``fn`` of ``module``, run where ``need`` says it has something to do
    (or where the module is imported already)."""

    def hook(*args: Any) -> Any:
        if module not in sys.modules and not need(*args):
            return None
        return getattr(importlib.import_module(module), fn)(*args)

    hook.__qualname__ = f"{module}.{fn}"
    return hook


def _read_returned(_ctx: Any, _t: Any, b: Any) -> bool:
    """A thread stopped as its read() returned bytes (tty.undo_short_read)."""
    regs = b.inj.saved
    return bool(regs.orig_rax == 0 and 0 < regs.rax < 1 << 63)  # (read is call 0)


def _has_socket(pid: int) -> bool:
    """Whether process ``pid`` holds a socket (one readlink per fd)."""
    try:
        links = procfs.fd_links(pid)[1]
    except OSError:
        return True  # (let the driver say why)
    return any(t.startswith("socket:[") for t in links.values())


def _kind_in(kind: str, descs: Iterable[dict[str, Any]]) -> bool:
    return any(d["kind"] == kind for d in descs)


def _dumped(kind: str) -> Callable[[Any], bool]:
    """Checkpoint: a description of ``kind`` was collected."""
    return lambda session: _kind_in(kind, session.shared.descs.descs)


def _planned(kind: str) -> Callable[[Any], bool]:
    """Restart, before the descriptions are opened: the image has one of ``kind``."""
    return lambda rs: _kind_in(kind, rs.plan.descs)


def _opened(kind: str) -> Callable[[Any], bool]:
    """Restart, the descriptions opened: one of ``kind`` among them."""
    return lambda rs: _kind_in(kind, rs.shared.descs or [])


def _agents_possible(session: Any) -> bool:
    """Checkpoint, before the freeze: a process of the scope holds a socket (an agent of
    cryo.app listens on a unix socket).  The fd tables read are left for appchannel's
    search (shared.early 'fd_links before', taken once: one readlink per fd, not two)."""
    from cryo.engine import tree

    read: dict[int, dict[int, str]] = session.shared.early.setdefault("fd_links before", {})
    here: list[bool] = []  # (asked once: an agent listens in cryo's own namespace)

    def listens_here() -> bool:
        if not here:
            here.append(_agent_listens_here())
        return here[0]

    def has_socket(pid: int) -> bool:
        mine = _netns_is_mine(pid)
        # a process of few fds has them read first (a few readlinks, where the dump of
        # the listeners imports cryo.linux.net: 3-4 ms of a small program's checkpoint);
        # a busy server's are not read where no agent listens in cryo's namespace
        few = mine and _few_fds(pid)
        if mine and not few and not listens_here():
            return False
        try:
            links = read[pid] = procfs.fd_links(pid)[1]
        except OSError:
            return True  # (let the driver say why)
        if not any(t.startswith("socket:[") for t in links.values()):
            return False
        return not few or listens_here()

    return any(has_socket(pid) for pid in tree.scope_members(session))


AGENT_PREFIX = b"\0cryo-app/"  # cryo.app.protocol.PREFIX (tests/unit/test_startup.py)


def _few_fds(pid: int, most: int = 64) -> bool:
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) <= most
    except OSError:
        return False


def _netns_is_mine(pid: int) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _agent_listens_here() -> bool:
    """A unix socket of cryo's network namespace listens under a cryo.app agent's name
    (one sock_diag dump of the listening ones; True where it cannot tell)."""
    from cryo.linux import net

    try:
        return any(n.startswith(AGENT_PREFIX) for n in net.unix_listeners().values())
    except OSError:
        return True


# -- the hand-over between the context and each module's functions ----------------------


def _keep(kind: bytes, fn: Callable[[DumpContext, Batch], Queued]) -> QueueHook:
    """A queue hook whose result is the process's record ``kind``."""

    def hook(ctx: DumpContext, b: Batch) -> Queued:
        ctx.records[kind] = yield from fn(ctx, b)

    return hook


def _memory_collect(ctx: DumpContext) -> None:
    mm, ctx.runs = memory.dump(ctx, ctx.shared.objects)
    ctx.records[R.MM] = mm


def _sysvshm_write(ctx: DumpContext, sink: Any) -> None:
    sysvshm.dump(ctx, ctx.records[R.MM]["vmas"], sink)


def _rs(ctx: RestoreContext, kind: bytes) -> Any:
    return ctx.records[kind]


def _task_early(ctx: RestoreContext) -> None:
    task.unregister_rseq(ctx.tracee, ctx.inj)
    task.restore_early(ctx, _rs(ctx, R.TASK))


def _memory_layout(ctx: RestoreContext) -> None:
    mm = _rs(ctx, R.MM)
    keep = (ctx.area, ctx.area + ctx.area_size)
    temp = memory.free_area([keep], memory.layout(mm), memory.staged_sources(ctx), size=1 << 20)
    # (the helper unmapped and the specials moved in the stop that opens the mapped files)
    ctx.live["fixup"] = memory.map_vmas(ctx, mm, first=lambda bt: memory.unmap_helper(
        ctx, keep=keep, specials=(mm, temp), into=bt))


def _memory_pages(ctx: RestoreContext) -> None:
    ctx.live["written"] = memory.write_pages(ctx, ctx.progress)


def _memory_protect(ctx: RestoreContext) -> None:
    memory.protect(ctx, ctx.live.pop("fixup"))
    memory.restore_mm(ctx, _rs(ctx, R.MM))


def _sysvshm_attach(ctx: RestoreContext) -> None:
    sysvshm.attach(ctx, _rs(ctx, R.MM)["vmas"], ctx.shared.shm_ids)


def _files_restore(ctx: RestoreContext) -> None:
    files.restore_fds(ctx, _rs(ctx, R.FILE), ctx.shared.opened)
    files.restore_fs(ctx, _rs(ctx, R.FILE))


def _anonfds_register(ctx: RestoreContext) -> None:
    anonfds.register(ctx, _rs(ctx, R.FILE)["fds"], ctx.shared.descs)


def _thread_state(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    task.restore_thread(inj, trec)
    task.restore_thread_fs(ctx, inj, trec)


def _thread_creds(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    task.restore_creds(inj, trec)


def _thread_altstack(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    signals.restore_altstack(inj, trec)


def _thread_regs(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    t = ctx.threads[ctx.tid_map[trec["tid"]]]
    registers.restore(t, inj, trec)
    t.set_sigmask(trec["blocked"])


def _threads_create(ctx: RestoreContext) -> None:
    """The other threads, made by the leader with an injected clone3 (old tids when free)."""
    ctx.threads[ctx.pid] = ctx.tracee
    ctx.tid_map[ctx.old_pid] = ctx.pid
    ctx.injectors[ctx.pid] = ctx.inj
    nstids = dict(zip(ctx.proc["threads"], ctx.proc["nstids"], strict=True))
    for trec in ctx.thread_records[1:]:
        want = nstids[trec["tid"]] if ctx.pidns or threads.tid_free(trec["tid"]) else None
        t = threads.create(ctx, trec, want)
        ctx.threads[t.tid] = t
        ctx.tid_map[trec["tid"]] = t.tid
        tinj = Injector(t, ctx.area)
        tinj.scratch, tinj.scratch_size = ctx.inj.scratch, ctx.inj.scratch_size
        ctx.injectors[t.tid] = tinj


def _object_sources(session: Any) -> None:
    """The pages of every shared memory object, read once for all processes."""
    for obj in session.shared.objects.objs:
        fd, runs = session.shared.objects.data_ranges(obj)
        session.shared.sources.append(memory.object_source(obj["id"], fd, runs))


def _shmem_records(session: Any) -> Iterable[tuple[bytes, Any, bool]]:
    return [(R.SHMO, shmem.record(session.shared.objects), False)]


def _shmem_prepare(rs: Any) -> None:
    """Every shared memory object made once (refilled from the image), on fds above
    those cryo opened for the descriptions; every process inherits them."""
    opened = rs.shared.opened
    rs.shared.objects = objects = shmem.make_all(rs.plan.objects, opened.base + len(opened.fds),
                                                 lambda p: translated(rs.options, p))
    rs.on_exit(objects.close)
    for b in rs.image.blocks:
        if "obj" in b:
            owner, offset = rs.image.block_data(b)
            shmem.fill(objects, b["obj"], owner, offset, b["runs"])
    shmem.exes_read_only(objects, rs.plan.objects.get("objs", []),
                         {recs[R.MM]["exe"] for recs in rs.plan.procs.values() if R.MM in recs})


def _sysvshm_prepare(rs: Any) -> None:
    created: list[int] = []
    rs.on_failure(lambda: sysvshm.remove(created))
    rs.shared.shm_ids = sysvshm.ensure(rs.plan.segments, created)


def _dirty_inject(ctx: DumpContext) -> None:
    """For a store that tracks writes: name this checkpoint's arming in the process."""
    token = ctx.options.get("track", False)
    if token is not False:
        ctx.live["tracking"] = dirty.prepare(ctx, token)


def _dirty_select(ctx: DumpContext, sink: Any) -> None:
    """Only the pages the sink does not have from its previous version are copied."""
    tracker = sink.tracking
    tracking = ctx.live.pop("tracking", None)
    if tracker is None:
        return
    tag = ("pid", ctx.pid)
    present = [[a, n] for a, n in ctx.runs]
    written = dirty.written(tracking, ctx.records[R.MM]["vmas"], ctx.runs,
                            as_array=getattr(tracker, "runs_as_arrays", False)) \
        if tracking else None  # fmt: skip
    need = tracker.select(tag, present, written)
    ctx.live["inherit"] = (tag, present, need)
    ctx.runs = [(a, n) for a, n in need]
    if tracking is not None:
        ctx.records[dirty.KIND] = tracking.record()


def _dirty_inherit(ctx: DumpContext, sink: Any) -> None:
    """The pages not copied are the previous version's."""
    if "inherit" in ctx.live:
        sink.tracking.inherit(*ctx.live.pop("inherit"))


def _describe_task(v: View) -> dict[str, Any]:
    t = v.records[R.TASK]
    return {"comm": t["comm"], "uid": v.threads[0]["uids"][0], "task": task.describe(t)}


def _describe_memory(v: View) -> dict[str, Any]:
    mm = v.records[R.MM]
    return {"exe": mm["exe"], "mappings": [
        {"start": f"{m['start']:#x}", "end": f"{m['end']:#x}", "perms": _perms(m),
         "size": m["end"] - m["start"], "saved": m.get("data", 0), "kind": m["kind"],
         "path": m["path"], "state": memory.describe_state(m), **locks.describe(m)}
        for m in mm["vmas"]]}  # fmt: skip


def _perms(m: dict[str, Any]) -> str:
    p = m["prot"]
    return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-") + (
        "s" if m["shared"] else "p")


def _describe_threads(v: View) -> dict[str, Any]:
    return {"threads": [_thread(t) for t in v.threads], "registers": _thread(v.threads[0])}


def _thread(trec: dict[str, Any]) -> dict[str, Any]:
    from cryo.linux import structs as S
    from cryo.linux.sysnames import name as syscall_name

    regs = S.user_regs_struct.from_buffer_copy(trec["regs"])
    sc = registers.signed(regs.orig_rax)
    return {"tid": trec["tid"], "comm": trec["comm"].decode(errors="replace"),
            "rip": f"{regs.rip:#x}", "rsp": f"{regs.rsp:#x}", "fs_base": f"{regs.fs_base:#x}",
            "syscall": sc if sc >= 0 else None,
            "syscall_name": syscall_name(sc) if sc >= 0 else None,
            "xstate_bytes": len(trec["xstate"]), **task.describe_thread(trec),
            **({"time_left_ms": round(trec["restart"]["left_ns"] / 1e6, 3)}
               if "restart" in trec else {})}  # fmt: skip


def _describe_files(v: View) -> dict[str, Any]:
    rec = v.records[R.FILE]
    return {"cwd": rec["cwd"] + (" (deleted)" if rec.get("cwd_deleted") else ""),
            "files": files.describe(rec, v.descs)}


DRIVERS: tuple[Driver, ...] = (
    # restart: the saved files extracted where needed, then every path checked, before
    # any other driver creates anything
    Driver("spmf", write=spmf_open, written=spmf_save, prepare=spmf_prepare),
    # the files an application saved (cryo.app) are back before any file is opened
    Driver("app-files", prepare=_when(_APPCHANNEL, "prepare", lambda rs: bool(rs.image.raw(APPX)))),
    # the JVM's performance-data file, put back as it was (engine/hsperf.py)
    Driver("hsperf", (HSPF,), optional=True,
           write=_when(_HSPERF, "write", lambda c, _sink: _maps_hsperf(c)),
           prepare=_when(_HSPERF, "prepare", lambda rs: bool(rs.image.raw(HSPF)))),
    # a file mapped privately that is there but not what the image assumed: exit 12
    # (FileChanged) before the path check would call it missing
    Driver("fingerprint-check", prepare=changed.check_all),
    Driver("paths", prepare=check_paths),
    Driver("task", (R.TASK,), queue=_keep(R.TASK, task.dump),
           restore={"early": _task_early, "task": lambda c: task.restore(c, _rs(c, R.TASK)),
                    "timers": lambda c: task.restore_futex_hash(c, _rs(c, R.TASK))},
           restore_thread={"thread": _thread_state, "creds": _thread_creds},
           describe=_describe_task),
    # (after task: its entries go into TASK)
    Driver("x86", queue=x86.dump, queue_thread=x86.check_thread,
           restore={"task": x86.restore},
           describe=lambda v: x86.describe(v.records[R.TASK])),
    # (after task: its entry goes into TASK) the stops of its children its waits took
    Driver("jobctl", inject=_when("cryo.engine.jobctl", "dump",
                                  lambda c: any(p.ppid == c.pid for p in c.shared.procs.values()))),
    Driver("memory", (R.MM,), queue=memory.dump_brk, collect=_memory_collect,
           shared=_object_sources,
           restore={"memory": _memory_layout, "pages": _memory_pages,
                    "protect": _memory_protect}, describe=_describe_memory),
    # (after memory: its rings are VMAs of MM) AIO contexts, their rings made again after
    # the process's memory is back
    Driver("aio", (AIOR,), optional=True,
           collect=_when(_AIO, "collect", lambda c: any(v["kind"] == "aio"
                                                         for v in c.records[R.MM]["vmas"])),
           restore={"protect": _when(_AIO, "restore", lambda c: bool(c.image.raw(AIOR)))},
           describe=lambda v: {"aio": importlib.import_module(_AIO).describe(v.records[AIOR])}
           if AIOR in v.records else {}),
    # the bytes of each file mapped privately (its pages not in the image come from it),
    # checked at restart by fingerprint-check, above
    Driver("fingerprints", (changed.KIND,), optional=True, collect=changed.collect,
           describe=changed.describe),
    Driver("sysvshm", write=_sysvshm_write, prepare=_sysvshm_prepare,
           restore={"memory": _sysvshm_attach},
           started=lambda rs: sysvshm.mark_removed(rs.plan.segments, rs.shared.shm_ids)),
    # (after task, whose record it adds to; after memory and sysvshm, whose mappings it
    # gives their policies before any page is written)
    Driver("numa", queue=numa.dump, restore={"memory": numa.restore}),
    Driver("signals", (R.SIGS,), queue=_keep(R.SIGS, signals.dump),
           restore={"signals": lambda c: signals.restore_actions(c, _rs(c, R.SIGS)),
                    "pending": lambda c: signals.restore_pending(c, _rs(c, R.SIGS),
                                                                 c.thread_records)},
           restore_thread={"thread": _thread_altstack},
           describe=lambda v: {"signals": signals.describe(v.records[R.SIGS], v.threads)}),
    Driver("timers", (R.TIMR,), queue=_keep(R.TIMR, timers.dump),
           before_freeze=timers.snapshot, collect=timers.check_pending,
           restore={"timers": lambda c: timers.restore(c, _rs(c, R.TIMR))},
           describe=lambda v: {"timers": timers.describe(v.records[R.TIMR])}),
    Driver("namespaces", collect=namespaces.check),
    Driver("semundo", collect=semundo.check),
    Driver("io-context", shared=_when("cryo.engine.iocontext", "check", lambda s: sum(
        len(p.threads) for p in s.procs.values() if not p.zombie) > 1)),
    Driver("cgroups", prepare=cgroups.prepare, born=cgroups.born),
    # (refuses: before any thread is read)
    Driver("landlock", queue_thread=landlock.check_thread, shared=landlock.release,
           thaw=landlock.release),
    # (before threads, which reads the registers it may set)
    Driver("tty-read", queue_thread=_when(_TTY, "undo_short_read", _read_returned)),
    Driver("tty-job", inject=_when(_TTY, "take_job_input",
                                   lambda c: bool(c.options.get("shell_job")))),
    Driver("threads", queue=lambda c, _b: threads.scan_tracees(c), queue_thread=threads.dump,
           shared=threads.check_tracers, restore={"threads": _threads_create},
           describe=_describe_threads),
    Driver("inet", collect=_when(_INET, "lock_connections", _holds_socket),
           shared=_when(_INET, "check_queued", _dumped("inet")), thaw=_used(_INET, "thaw"),
           prepare=_when(_INET, "prepare", _planned("inet")),
           started=_when(_INET, "started", _opened("inet"))),
    # (restart: every unix socket made at the first process's "files" stage, before the
    # files driver hands the processes their fds)
    Driver("unix-in-flight", shared=_used(_SOCKETS, "describe_in_flight"),
           restore={"files": _used(_SOCKETS, "make_all")}),
    Driver("tty", shared=_when(_TTY, "check", lambda s: getattr(s, "shell_job", False)
                                  or _dumped("pty")(s)),
           prepare=_when(_TTY, "prepare", _planned("pty")), born=_used(_TTY, "take_ctty"),
           restore={"task": _used(_TTY, "restore_ctty")},
           started=_when(_TTY, "hand_over", lambda rs: bool(rs.options.get("shell_job"))),
           after_restart=_used(_TTY, "redraw")),
    Driver("files", (R.FILE,), collect=files.collect, shared=files.dump_shared,
           records=files.shared_records, prepare=files.prepare,
           restore={"files": _files_restore}, describe=_describe_files),
    # a pidfd of a thread: put in place once the process's threads exist
    Driver("thread-pidfds", shared=specialfds.check_thread_pidfds,
           restore={"timers": specialfds.restore_thread_pidfds}),
    Driver("unix", shared=_when(_SOCKETS, "check_peers", _dumped("unix")),
           thaw=_used(_SOCKETS, "release_in_flight"),
           prepare=_when(_SOCKETS, "prepare_restart", _opened("unix")),
           started=_used(_SOCKETS, "send_credentialed")),
    Driver("anonfds", restore={"files": _anonfds_register}),
    # (after anonfds: the interest lists are filled) edge-triggered epoll ready lists
    Driver("epoll-ready", (EPRD,), optional=True,
           inject=_when(_EPOLLREADY, "dump", _holds_epoll),
           restore={"files": _when(_EPOLLREADY, "restore", lambda c: bool(c.image.raw(EPRD)))}),
    Driver("shmem", records=_shmem_records, prepare=_shmem_prepare,
           started=lambda rs: ghosts.seal_late(rs.shared.descs, rs.shared.opened)),
    # (after files and shmem: its prepare reopens fds of mapped deleted files from their
    # object, then takes the locks of the descriptions)
    Driver("locks", queue=lambda c, _b: locks.read_table_early(c), collect=locks.collect,
           shared=locks.check_shared, prepare=locks.prepare,
           restore={"files": locks.restore}, restore_thread={"creds": locks.restore_owner}),
    # (the app driver before dirty: it leaves pages out before dirty selects them)
    Driver("app", (APPX,), optional=True,
           before_freeze=_when(_APPCHANNEL, "before_freeze", _agents_possible),
           write=_when(_APPCHANNEL, "write", lambda c, _sink: bool(c.shared.app)),
           after_checkpoint=_when(_APPCHANNEL, "after_checkpoint",
                                  lambda s, _why: bool(s.shared.channels)),
           after_restart=_when(_APPCHANNEL, "after_restart",
                               lambda rs: "app_channels" in rs.shared.keep)),
    Driver("dirty", (dirty.KIND,), optional=True, inject=_dirty_inject, write=_dirty_select,
           written=_dirty_inherit),
    # (the last before_freeze hook, after the applications' callbacks: the epoll sleeps
    # read just before the freeze, engine/restartblock.py)
    Driver("registers", before_freeze=restartblock.snapshot, frozen=restartblock.frozen,
           restore_thread={"late": registers.restart_block, "regs": _thread_regs}),
    Driver("sud", restore_thread={"regs": sud.restore_thread}),  # (no call injected after)
    # (after every thread's registers) a stopped process stops inside its calls again
    Driver("stop-inside", restore={"regs": _when("cryo.engine.jobctl", "stop_inside",
                                                 lambda c: bool(c.thread_records and c.
                                                                thread_records[0].get("group_stop")))}),
    # (the last started hook) inotify watches get their masks, fanotify groups their
    # marks: nothing the restart did to the files queued an event (engine/fsnotify.py)
    Driver("fsnotify", started=_used("cryo.engine.fsnotify", "arm")),
)
