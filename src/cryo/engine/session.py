"""Checkpoint and restart sessions: the phases, by name, and the only code that knows
their order.  Each phase walks the driver table (engine/drivers.py).

A checkpoint::

    prepare   the scope has processes; the sink is opened (an existing image is refused
              before anything is touched); a store's write tracking is looked up
    freeze    every thread of every process of the scope seized and stopped (tree.freeze);
              from here a watchdog bounds how long they may stay frozen
    collect   per process, a scratch page mapped in it: the drivers' ``queue`` hooks'
              calls run in one batch per thread, each hook then reads its results,
              then the ``inject`` hooks; every thread is parked in a clean stop; then
              the ``collect`` hooks read from outside; once for all: the ``shared`` hooks
    write     per process the ``write`` hooks (side data, which pages); the records; the
              pages copied into buffers and written by a writer thread; the processes
              are *released* as soon as their last page is in our buffers, unless a
              signal is to be sent afterwards or the caller holds them (``hold``)
    commit    the sink makes the image durable and visible at once
    resume    ("continue") the signal after checkpoint is queued to each process, and
              every process still held is let go
    abort     from any phase: every process let go as it was, the sink leaves no trace

A restart::

    validate  every record checked, and where the page blocks are (each block's checksum
              when it is read, in tree; finalize checks any block left); ids, groups and
              sessions possible
    shared    the drivers' ``prepare`` hooks: objects cryo opens once, inherited by all
    tree      every process created, parents first, with ids, sessions, groups
    processes per process, the stages of drivers.BUILD_STAGES
    finalize  drivers.LATE_STAGES, the restorer unmapped, drivers.FINISH_STAGES per thread,
              zombies exit
    let_go    every task detached at once: they run
    abort     from any phase: every process built so far killed, cleanups run

:class:`CheckpointSession` runs the phases of a checkpoint in a worker process that
outlives its caller just long enough to put the targets back (engine/worker.py), so a
caller killed at any moment harms nothing; the caller's signal mask and handlers are
left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cryo
from cryo import procfs
from cryo.engine import clocks, cpu, files, memory, scratchlog, shmem, sud, textscan, tree, vdso
from cryo.engine import drivers as D
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import SCRATCH_SIZE, Batch, Injector
from cryo.engine.spmf import of_session as files_of
from cryo.engine.translate import of as translate_of
from cryo.errors import CryoError, InternalError, translate_oserror
from cryo.image import records as R
from cryo.image.sink import DirSink, Sink
from cryo.linux.consts import SYS

log = logging.getLogger(__name__)
T = TypeVar("T")
FREEZE_BASE = 60.0  # seconds a frozen target may be held, plus FREEZE_PER_GIB per GiB
FREEZE_PER_GIB = 15.0


@dataclass
class DumpResult:
    """What a checkpoint made: where, of which processes, how much, how long."""

    path: str
    pid: int
    pids: list[int] = field(default_factory=list)
    threads: int = 0
    memory_bytes: int = 0
    stored_bytes: int = 0
    freeze_seconds: float = 0.0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    # every file a restart opens: {path, use, pids, saved} (engine/spmf.py's depends)
    files: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Shared:
    """What several processes share, collected once for the whole checkpoint."""

    descs: files.Descriptions = field(default_factory=files.Descriptions)
    objects: shmem.Objects = field(default_factory=shmem.Objects)
    sources: list[memory.Source] = field(default_factory=list)  # page sources of objects
    channels: list[Any] = field(default_factory=list)  # open to applications' agents
    app: dict[int, dict[str, Any]] = field(default_factory=dict)  # what each agent asked
    early: dict[str, Any] = field(default_factory=dict)  # reads begun in the freeze, by name
    procs: dict[int, Any] = field(default_factory=dict)  # the frozen tree: tree.Proc by pid


# where a checkpoint goes: a directory, a Sink, or a function that makes the Sink (called
# in the worker, so that the caller keeps no copy of it open)
Destination = str | Sink | Callable[[], Sink]


class FreezeTimeout(CryoError):
    """The targets were held frozen longer than the watchdog allows."""


def memory_budget() -> int:
    """How much page data may wait in our buffers for the writer."""
    avail = 0
    fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
    try:  # (its 4 KiB whole, as bytes: the text file read line by line was 0.1 ms)
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    at = data.find(b"\nMemAvailable:")
    if at >= 0:
        avail = int(data[at + 14 : data.index(b"\n", at + 1)].split()[0]) * 1024
    return max(memory.BLOCK * 2, min(avail // 2, 8 << 30))


class Checkpoint:
    """One checkpoint, phase by phase, run by the process that holds the targets (the
    tracer).  Use :class:`CheckpointSession`, which runs it in a worker."""

    def __init__(self, pid: int, dest: Destination | None = None, *, scope: str = "process",
                 force: bool = False, compress: bool = False, shell_job: bool = False,
                 save_files: bool = False,
                 signal_after: int = 0, direct_io: bool = True, hold: bool = False,
                 freeze_timeout: float | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 in_worker: bool = False, net: dict[str, bool] | None = None,
                 no_callbacks: bool = False, nonblocking: bool = False,
                 callback_timeout: float = 30.0,
                 release_gate: int | None = None) -> None:  # fmt: skip
        self.pid, self.scope, self.dest = pid, scope, dest
        # an fd of the caller's (a pipe: the worker, forked, has it too): once every
        # page is read the targets wait for one byte there, b"g" to go on, anything
        # else to be let go unwritten (a coordinated checkpoint: grid/agent.py)
        self.release_gate = release_gate
        self.net = net or {}  # tcp_established, tcp_close, ext_unix_sk
        self.sink_options = {"force": force, "compress": compress, "direct": direct_io}
        self.shell_job, self.signal_after, self.hold = shell_job, signal_after, hold
        self.save_files = save_files  # SPMF: the executable and libraries into the image
        self.freeze_timeout, self.progress = freeze_timeout, progress
        self.app_options = {"no_callbacks": no_callbacks, "nonblocking": nonblocking,
                            "callback_timeout": callback_timeout}  # fmt: skip
        self.in_worker = in_worker  # owns its signals: the watchdog may use SIGALRM
        self.critical = False  # an interruption now would leave a half state: later
        self.sink: Sink | None = None
        self.procs: dict[int, tree.Proc] = {}
        self.shared = Shared()
        self.contexts: list[DumpContext] = []
        self.tokens: dict[int, str] = {}
        self.track = False
        self.phase = "new"
        self.released = True
        self.result = DumpResult(path="", pid=pid)
        self._t0 = time.perf_counter()
        self._t_freeze = 0.0
        self._deadline = 0.0

    # -- the phases ----------------------------------------------------------------------
    def prepare(self) -> None:
        self._phase("new", "prepare")
        # a scope with no process: an error first; the walk is kept for the hooks before
        # the freeze (tree.scope_members: one walk, not one per hook)
        self.shared.early["members"] = tree.members(self.pid, self.scope)
        if self.dest is not None:
            self._open_sink(self.dest)
        for d in D.DRIVERS:  # the applications' callbacks, before anything is touched
            if d.before_freeze:
                d.before_freeze(self)

    def freeze(self) -> None:
        self._phase("prepare", "freeze")
        self._t_freeze = time.perf_counter()  # frozen from the first process stopped on
        # (the clocks then: a sleep's time left counted from before its thread stopped,
        # never after, engine/restartblock.py)
        self.shared.early["clocks at freeze"] = {
            c: time.clock_gettime_ns(c) for c in (time.CLOCK_MONOTONIC, time.CLOCK_REALTIME,
                                                  time.CLOCK_BOOTTIME, time.CLOCK_TAI)}
        self.released = False
        # (armed before the first seize: a thread that never stops would hold the others)
        self._watchdog(self.freeze_timeout or FREEZE_BASE)
        self.procs = self.shared.procs = tree.freeze(self.pid, self.scope)
        # what a restart could not rebuild is refused now, not found out then: a group or
        # a session whose leader is outside the checkpoint
        tree.check_groups(tree.record(self.procs, self.pid, self.scope), self.shell_job)
        self.result.warnings.extend(files.check_shared_tables(
            [p.pid for p in self.procs.values() if not p.zombie]))
        for d in D.DRIVERS:
            if d.frozen:
                d.frozen(self)

    def collect(self) -> None:
        self._phase("freeze", "collect")
        for p in self.procs.values():
            if p.zombie:
                continue
            self.check()
            ctx = DumpContext(p.pid, p.leader, Injector(p.leader, textscan.find_syscall(p.pid)),
                              options={"shell_job": self.shell_job, **self.net,
                                       "save_files": self.save_files,
                                       "track": self.tokens.get(p.pid) if self.track
                                       else False},
                              shared=self.shared)  # fmt: skip
            self._inject(ctx, p)
            for d in D.DRIVERS:
                if d.collect:
                    d.collect(ctx)
            self.contexts.append(ctx)
            self.result.warnings.extend(ctx.warnings)
        for d in D.DRIVERS:
            if d.shared:
                d.shared(self)
        if self.freeze_timeout is None:  # the bound grows with what is to be copied
            size = sum(n for c in self.contexts for _, n in c.runs)
            self._watchdog(FREEZE_BASE + FREEZE_PER_GIB * size / (1 << 30))

    def write(self, dest: Destination | None = None) -> None:
        self._phase("collect", "write")
        if dest is not None:
            if self.sink is not None:
                raise CryoError("this checkpoint has a destination already")
            self._open_sink(dest)
        sink = self.sink
        if sink is None:
            raise CryoError("a checkpoint needs a destination: a directory or a sink")
        for ctx in self.contexts:
            for d in D.DRIVERS:
                if d.write:
                    d.write(ctx, sink)
        sink.record(R.HEAD, self._head())
        sink.record(R.TREE, tree.record(self.procs, self.pid, self.scope))
        for ctx in self.contexts:
            for d in D.DRIVERS:
                for kind in d.kinds:
                    if kind in ctx.records:
                        sink.record(kind, ctx.records[kind])
        for ctx in self.contexts:
            for trec in ctx.thread_records:
                sink.record(R.THRD, trec)
        for d in D.DRIVERS:
            if d.records:
                for kind, payload, raw in d.records(self):
                    sink.record(kind, payload, raw=raw)
        sources = [memory.process_source(c.pid, c.runs, c.records[R.MM]["vmas"])
                   for c in self.contexts] + self.shared.sources  # fmt: skip
        total = sum(n for src in sources for _, n in src.runs)
        done = [0]

        def on_block(n: int) -> None:
            done[0] += n
            if self.progress:
                self.progress(done[0], total)

        def read_done() -> None:
            if self.release_gate is not None:
                self._await_gate(self.release_gate)
            if not self.signal_after and not self.hold:
                self.release()

        metas, stats = memory.copy_pages(sources, sink.write_block,
                                         buffer_limit=memory_budget(), progress=on_block,
                                         on_read_done=read_done,
                                         checksums=sink.wants_checksum)  # fmt: skip
        for meta in metas:
            sink.record(R.PBLK, meta)
        for ctx in self.contexts:
            for d in D.DRIVERS:
                if d.written:
                    d.written(ctx, sink)
        self.result.memory_bytes = stats.bytes
        self.result.files = files_of(self)

    def _await_gate(self, fd: int) -> None:
        """Until the caller opens the release gate (the watchdog bounds the wait); a
        gate that says no fails the write: the targets are let go, nothing kept."""
        if os.read(fd, 1) != b"g":  # (b"": every write end closed)
            raise CryoError("the coordinated checkpoint was called off before its release")

    def release(self) -> None:
        """Let every process go on as it was (the pages are in our buffers, or the
        checkpoint failed); idempotent."""
        if not self.released:
            self._thaw()
            tree.let_go(self.procs)
            self.released = True
            self.result.freeze_seconds = time.perf_counter() - self._t_freeze
            self._watchdog(0)

    def commit(self) -> DumpResult:
        self._phase("write", "commit")
        assert self.sink is not None
        self.critical = True  # the image goes into place whole, or not at all
        try:
            self.sink.commit()
        finally:
            self.critical = False
        r = self.result
        r.stored_bytes = self.sink.stored_bytes
        r.pids = sorted(self.procs)
        r.threads = sum(len(p.threads) for p in self.procs.values())
        return r

    def resume(self) -> DumpResult:
        """The "continue" phase: the signal after checkpoint, then every process let go."""
        self._phase("commit", "resume")
        if self.signal_after:
            for p in self.procs.values():
                # queued while the task is still held: it acts before any instruction
                if not p.zombie:
                    os.kill(p.pid, self.signal_after)
            if self.signal_after == signal.SIGKILL:
                tree.collect_dead(self.procs)  # dead tracees wait for their tracer
        self.release()
        self._after(None)
        self.result.total_seconds = time.perf_counter() - self._t0
        return self.result

    def abort(self, why: str = "aborted") -> None:
        """From any phase: the processes go on exactly as before; the sink leaves no
        trace."""
        try:
            if self.procs and not self.released:
                self._thaw()
                tree.let_go(self.procs)
                self.released = True
                self._watchdog(0)
        finally:
            try:
                if self.sink is not None and self.phase not in ("commit", "resume"):
                    self.sink.abort()
            finally:
                self.phase = "aborted"
                self._after(why)

    def _after(self, failure: str | None) -> None:
        for d in D.DRIVERS:
            if d.after_checkpoint:
                with contextlib.suppress(Exception):  # (telling must not fail the rest)
                    d.after_checkpoint(self, failure)

    def run(self) -> DumpResult:
        """Every phase in order; on any failure, :meth:`abort`."""
        return _all_or_abort((self.prepare, self.freeze, self.collect, self.write,
                              self.commit), self.resume, self.abort, lambda: self.pid)

    # -- helpers -------------------------------------------------------------------------
    def check(self) -> None:
        """A safe point: stop here if we held the targets too long."""
        if self._deadline and time.monotonic() > self._deadline:
            raise FreezeTimeout(f"the targets were frozen for more than"
                                f" {time.perf_counter() - self._t_freeze:.0f} s; let go",
                                pid=self.pid)  # fmt: skip

    def _thaw(self) -> None:
        """The drivers undo what they did to the frozen processes (before they go on)."""
        for d in D.DRIVERS:
            if d.thaw:
                try:
                    d.thaw(self)
                except Exception as err:  # the processes must be let go all the same
                    log.warning("%s: %s", d.name, err)
                    self.result.warnings.append(f"{d.name}: {err}")

    def _phase(self, before: str, now: str) -> None:
        if self.phase != before:
            raise CryoError(f"checkpoint phase {now!r} cannot follow {self.phase!r}")
        if now != "prepare":
            self.check()
        self.phase = now

    def _open_sink(self, dest: Destination) -> None:
        if isinstance(dest, str):
            self.sink = DirSink(dest, **self.sink_options)
        else:  # a sink, or what makes one where the work is done (in the worker)
            self.sink = dest() if callable(dest) else dest
        self.result.path = self.sink.path
        tracking = self.sink.tracking
        self.track = tracking is not None and getattr(tracking, "tracks_writes", True)
        if tracking is not None:
            from cryo.engine import dirty

            self.tokens = {r["pid"]: r["token"] for r in tracking.previous_records(dirty.KIND)}

    def _inject(self, ctx: DumpContext, p: tree.Proc) -> None:
        """The drivers' queue hooks (their calls in one batch a thread: _queued), then
        their inject hooks, while a scratch page is mapped; then every thread is parked
        in a clean stop, so that if we die from here on the kernel lets it go exactly as
        it was."""
        inj = ctx.inj
        sud.check(p.pid, p.threads)  # (before any call is injected)
        scratchlog.sweep(p.pid, lambda addr, size: inj(SYS.munmap, addr, size, what=(
            " removing the scratch area a killed checkpoint left")))  # fmt: skip
        addr = scratchlog.choose(p.pid, SCRATCH_SIZE)
        ledger = scratchlog.note(p.pid, addr, SCRATCH_SIZE) if addr else None
        try:
            inj.map_scratch(SCRATCH_SIZE, addr=addr)
        except CryoError:
            scratchlog.forget(ledger)  # (refused: nothing was mapped)
            raise
        injectors = {p.pid: inj}
        try:
            for tid in p.threads:
                if tid not in injectors:
                    tinj = injectors[tid] = Injector(p.tracees[tid], inj.syscall_addr)
                    tinj.scratch, tinj.scratch_size = inj.scratch, inj.scratch_size
                    tinj.scratch_known = inj.scratch_known  # (no maps read per thread)
            ctx.thread_records.extend(_queued(ctx, p, injectors))
            for d in D.DRIVERS:
                if d.inject:
                    d.inject(ctx)
        finally:
            try:
                inj.unmap_scratch()
                scratchlog.forget(ledger)
            finally:
                for tid, tinj in injectors.items():
                    tinj.finish()
                    p.tracees[tid].park()

    def _head(self) -> dict[str, Any]:
        return {
            "arch": os.uname().machine,  # (platform.machine() and release(): the same,
            "kernel": os.uname().release,  # without importing platform)
            "cryo": cryo.__version__,
            "created": time.time(),
            "hostname": os.uname().nodename,  # (socket.gethostname(): the same)
            "page_size": os.sysconf("SC_PAGE_SIZE"),
            # (for the agents of cryo.app only, their restart_info's old_addrs: an
            # rtnetlink dump and cryo.linux.net's import, 3-4 ms, for no other program)
            **({"addrs": _host_addresses()} if self.shared.app else {}),
            "root_pid": self.pid,
            "pids": sorted(self.procs),
            "clocks": clocks.view(self.pid),
            "cpu": cpu.here(),
            **({"vdso": v} if (v := vdso.here()) else {}),
        }

    def _watchdog(self, seconds: float) -> None:
        """Bound the freeze: at the deadline the next safe point fails the checkpoint,
        and in a worker (which owns its signals) SIGALRM interrupts whatever runs."""
        self._deadline = time.monotonic() + seconds if seconds else 0.0
        if self.in_worker:
            signal.setitimer(signal.ITIMER_REAL, seconds)


def _queued(ctx: DumpContext, p: tree.Proc, injectors: dict[int, Injector]
            ) -> list[dict[str, Any]]:  # fmt: skip
    """The drivers' queue hooks (drivers.py): every driver's calls for one thread in one
    batch (the leader's process-wide ones in the leader's), all the batches run, then
    each hook resumed in driver order to read its results; rounds again while a hook
    queued more.  The THRD record of each thread, in the order of ``p.threads``."""
    tids = list(dict.fromkeys([p.pid, *p.threads]))
    batches = {tid: Batch(injectors[tid]) for tid in tids}
    trecs: dict[int, dict[str, Any]] = {tid: {} for tid in p.threads}
    # (what each hook's result is for: None for a process hook, the thread's tid)
    going: list[tuple[Generator[None, Batch, Any], int | None]] = []

    def started(g: Generator[None, Batch, Any] | None, tid: int | None) -> None:
        if g is None:
            return
        try:
            next(g)
        except StopIteration as done:
            ended(done.value, tid)
        else:
            going.append((g, tid))

    def ended(value: Any, tid: int | None) -> None:
        if tid is not None and value:
            trecs[tid].update(value)

    for d in D.DRIVERS:
        if d.queue:
            started(d.queue(ctx, batches[p.pid]), None)
    for tid in p.threads:
        for d in D.DRIVERS:
            if d.queue_thread:
                started(d.queue_thread(ctx, p.tracees[tid], batches[tid]), tid)
    while going:
        for b in batches.values():
            if b.calls:
                b.run(keep=True)
        batches = {tid: Batch(injectors[tid]) for tid in tids}
        now, going = going, []
        for g, whose in now:
            try:
                g.send(batches[p.pid if whose is None else whose])
            except StopIteration as done:
                ended(done.value, whose)
            else:
                going.append((g, whose))
    return [trecs[tid] for tid in p.threads]


def _all_or_abort(phases: tuple[Callable[[], object], ...], last: Callable[[], T],
                  abort: Callable[[], None], pid: Callable[[], int | None]) -> T:  # fmt: skip
    """Run ``phases`` then ``last`` in order and return what ``last`` returns; on any
    failure ``abort`` first (an OSError is raised as cryo's error for ``pid()``)."""
    try:
        for phase in phases:
            phase()
        return last()
    except OSError as err:
        abort()
        raise translate_oserror(err, pid=pid()) from err
    except BaseException:
        abort()
        raise


def _host_addresses() -> list[str]:
    """This host's addresses of global scope, for HEAD (not appchannel's: the cryo.app
    channel is imported only for a program that has an agent)."""
    from cryo.linux.net import host_addresses

    with contextlib.suppress(OSError):
        return host_addresses()
    return []


class CheckpointSession:
    """A checkpoint the caller steps through (or runs in one call with :meth:`run`),
    done by a worker process that holds the targets: if the caller dies at any moment,
    the worker puts them back as they were and cleans up.  ``worker=False`` runs the
    phases in this process (the caller then owns its signals: no watchdog alarm)."""

    def __init__(self, pid: int, dest: Destination | None = None, *, worker: bool = True,
                 **options: Any) -> None:  # fmt: skip
        self._worker = None
        if worker:
            from cryo.engine.worker import Worker

            self._worker = Worker(Checkpoint(pid, dest, in_worker=True, **options),
                                  progress=options.get("progress"))
            self._local: Checkpoint | None = None
        else:
            self._local = Checkpoint(pid, dest, **options)

    def _call(self, name: str, *args: Any) -> Any:
        if self._worker is not None:
            return self._worker.call(name, *args)
        assert self._local is not None
        try:
            return getattr(self._local, name)(*args)
        except OSError as err:
            with contextlib.suppress(BaseException):
                self._local.abort()
            raise translate_oserror(err, pid=self._local.pid) from err
        except BaseException:
            if name != "abort":
                with contextlib.suppress(BaseException):
                    self._local.abort()
            raise

    def prepare(self) -> None:
        self._call("prepare")

    def freeze(self) -> None:
        self._call("freeze")

    def collect(self) -> None:
        self._call("collect")

    def write(self, dest: Destination | None = None) -> None:
        self._call("write", dest)

    def commit(self) -> DumpResult:
        return self._call("commit")  # type: ignore[no-any-return]

    def resume(self) -> DumpResult:
        result = self._call("resume")
        self.close()
        return result  # type: ignore[no-any-return]

    def abort(self) -> None:
        try:
            self._call("abort")
        finally:
            self.close()

    def run(self) -> DumpResult:
        try:
            return self._call("run")  # type: ignore[no-any-return]
        finally:
            self.close()

    def close(self) -> None:
        """Done with it: a checkpoint not yet resumed is aborted."""
        if self._worker is not None:
            self._worker.close()


# -- restart ---------------------------------------------------------------------------


@dataclass
class RestoreResult:
    """What a restart made: the new pids, how much, how long."""

    pid: int
    old_pid: int
    pids: dict[int, int] = field(default_factory=dict)  # old pid -> new pid
    memory_bytes: int = 0
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _shared_pending(pid: int) -> int:
    try:
        return int(procfs.parse_status(procfs.read(pid, "status")).get("ShdPnd", "0"), 16)
    except CryoError:
        return 0


class Restart:
    """One restart, phase by phase; the processes are our children and tracees until
    :meth:`let_go` (PTRACE_O_EXITKILL: if we die, so does everything half-built)."""

    def __init__(self, path: Any, *, must_reuse_pid: bool = False, shell_job: bool = False,
                 translate: dict[str, str] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 trust_image: bool = False, allow_duplicate: bool = False,
                 net: dict[str, bool] | None = None,
                 ignore_changed_files: bool = False, ignore_cpu: bool = False,
                 new_pids: bool | None = False) -> None:  # fmt: skip
        self.path, self.must_reuse_pid, self.shell_job = path, must_reuse_pid, shell_job
        # where an old pid is taken: False fails (RestoreConflict), True takes new ones,
        # None takes a new one for a lone thread only (tree.pids_matter)
        self.new_pids = new_pids
        self.trust: dict[str, Any] = {"trust_image": trust_image,
                                      "allow_duplicate": allow_duplicate}
        self.options: dict[str, Any] = {"shell_job": shell_job, "translate": translate or {},
                                        "ignore_changed": ignore_changed_files,
                                        "ignore_cpu": ignore_cpu, **(net or {})}  # fmt: skip
        self.trust["translate"] = translate_of(self.options).apply  # trust: paths opened
        self.progress = progress
        self.image: Any = None
        self.plan: Any = None
        self.reuse = False
        self.shared: Any = _RestoreShared()
        self.made: dict[int, tree.Made] = {}
        self.pid_map: dict[int, int] = {}  # old pid -> new, filled as they are made
        self.area = 0
        # old pid -> [(start, end, address)]: private anonymous pieces whose pages are
        # staged in this process, moved into place by the memory driver (cryo.migrate.stage)
        self.staged: dict[int, list[tuple[int, int, int]]] = {}
        self.lazy: dict[int, Any] = {}  # old pid -> {runs, start(uffd)} (cryo.migrate.lazy)
        self.result = RestoreResult(pid=0, old_pid=0)
        self._cleanups = contextlib.ExitStack()  # closed at the end, whatever happens
        self._undo: list[Callable[[], None]] = []  # run only if the restart fails
        self._t0 = time.perf_counter()

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._cleanups.callback(fn)

    def on_failure(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def validate(self) -> None:
        from cryo.engine import restore
        from cryo.image.reader import Image

        # a directory image's page blocks are checked as they are read, in one pass: the
        # processes stay ours (traced, stopped) until every block has been checked, and
        # are killed if one fails (finalize; abort)
        src = Image(self.path, defer_pages=True) if isinstance(self.path, str) else self.path
        try:
            self.image, self.plan = restore.validate(src, **self.trust)
        except BaseException:
            if src is not self.path:
                src.close()
            raise
        self.options["owner"] = getattr(self.image, "owner", None)  # files open as it
        self.on_exit(self.image.close)
        cpu.check(self.image.head.get("cpu"), self.options["ignore_cpu"])
        vdso.check(self.image.head.get("vdso"), self.plan, self.image.head.get("kernel"))
        # where this host's clocks are behind the image's, the processes get a time
        # namespace of their own (made with the roots: tree.build), their clocks ahead
        # of cryo's by clock_shift (and so the expiries of the timerfds cryo opens)
        shift = self.options["clock_shift"] = clocks.restart_shift(self.image.head.get("clocks"))
        if shift is not None:
            self.result.warnings.append(
                "this host's monotonic and boot-time clocks are behind the image's: restarted"
                " in a time namespace of its own, in which they go on from where they were")
        tree.check_groups(self.plan.tree, self.shell_job)
        self.reuse = tree.pids_free(self.plan.tree)
        if not self.reuse and self.must_reuse_pid:
            tree.need_free(self.plan.tree)
        elif not self.reuse and self.new_pids is not True:
            why = tree.pids_matter(self.plan.tree, lone_ok=self.new_pids is None)
            if why:
                tree.need_free(self.plan.tree, why)
        self.result.old_pid = self.plan.tree["root"]

    def prepare_shared(self) -> None:
        for d in D.DRIVERS:
            if d.prepare:
                d.prepare(self)

    def build_tree(self) -> None:
        """Every process made, parents first, each with its ids, session and group; and
        as soon as it is made, its memory (drivers.BIRTH_STAGES), so that the children
        forked from it next share its pages copy-on-write as they did."""
        own_maps = procfs.parse_maps(procfs.read("self", "maps"))  # (a root's too: tree.build)
        own = [(v.start, v.end) for v in own_maps]
        layouts = [r for recs in self.plan.procs.values() for r in memory.layout(recs[R.MM])]
        self.area = memory.free_area(own, layouts, size=tree.RESTORER_SIZE)
        total = sum(b["raw"] for b in self.image.blocks if "pid" in b)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if self.progress:
                self.progress(done[0], total)

        procs = self.plan.procs
        order = tree.creation_order(self.plan.tree)
        # the pages of processes that fork no child here are filled by workers while the
        # next processes are made (memory.Fills); the others' read ahead by the image
        fills = memory.Fills(self.image) if memory.Fills.usable(self.image) else None
        parents = {p["ppid"] for p in order}
        later = {p["pid"] for p in order if fills is not None and p["pid"] in procs
                 and p["pid"] not in parents and p["pid"] not in self.lazy
                 and p["pid"] not in self.staged and fills.takes(self._blocks_of(p["pid"]))}
        if fills is not None and later:
            self.on_exit(fills.close)  # (before the image closes: the workers read it)
        expect = getattr(self.image, "expect", None)
        if expect is not None:  # read ahead, in the order the processes will write them
            expect([b for p in order if p["pid"] in procs and p["pid"] not in later
                    for b in self._blocks_of(p["pid"])])  # fmt: skip
        pause = getattr(self.image, "pause", None)
        timens = self.options.get("clock_shift")
        from cryo.engine import execlayout

        tasks = {o: recs[R.TASK] for o, recs in procs.items()}  # (tree.build: execlayout)
        execlayout.prepare(tasks)  # (before the first fork: every process inherits it)
        self.on_exit(execlayout.close)
        for p in order:
            old = p["pid"]
            if pause is not None and p["ppid"] not in self.made:
                pause()  # a root is forked by cryo itself: no reader thread may run then
                if fills is not None:
                    fills.drain()  # nor a worker
            tree.build(dict(self.plan.tree, procs=[p]), self.made, self.reuse, self.shell_job,
                       self.area, born=self._born, timens=timens, own=own_maps,
                       tasks=tasks)  # fmt: skip
            m = self.made[old]
            self.pid_map[old] = m.pid
            if old not in procs:
                continue  # a zombie: it only exits, in finalize
            ctx = m.ctx = RestoreContext(
                m.pid, old, m.tracee, m.inj, self.image, options=self.options,
                pid_map=self.pid_map, shared=self.shared, records=procs[old],
                thread_records=self.plan.threads[old], proc=m.rec,
                pidns=bool(self.plan.tree.get("pidns")), area=self.area,
                area_size=tree.RESTORER_SIZE, progress=step)  # fmt: skip
            if m.forked_maps is not None:
                ctx.live["helper_maps"] = m.forked_maps
            if p["ppid"] in procs:  # (the policies its parent's mappings had: numa.restore)
                ctx.live["parent_policies"] = procs[p["ppid"]][R.TASK].get("vma_policies") or []
            if p["ppid"] in procs and not m.execd:  # forked from its restored parent
                memory.inherit_from_parent(ctx, procs[old][R.MM], procs[p["ppid"]][R.MM])
            if old in self.staged:  # (only a root forked by cryo has cryo's staging area)
                if p["ppid"] in self.made or m.execd:
                    raise InternalError(f"pages of {old} staged, but it is not forked by cryo")
                ctx.live["staged"] = self.staged[old]
            if old in self.lazy:  # its private anonymous pages come later (cryo.migrate.lazy)
                ctx.live["lazy"] = self.lazy[old]
            if old in later:
                ctx.live["fills"] = fills
            self._stages(ctx, D.BIRTH_STAGES)
        if pause is not None:  # (every block of the plan is used by now)
            pause()

    def _blocks_of(self, old: int) -> list[dict[str, Any]]:
        return [b for b in self.image.blocks if b.get("pid") == old]

    @staticmethod
    def _born(inj: Injector, old_pid: int) -> None:
        for d in D.DRIVERS:
            if d.born:
                d.born(inj, old_pid)

    def build_processes(self) -> None:
        """Once every process exists: the other stages of each."""
        rest = D.BUILD_STAGES[len(D.BIRTH_STAGES) :]
        for m in self.made.values():
            if m.ctx is None:
                continue
            self._stages(m.ctx, rest)
            m.ctx.inj.flush()  # (its calls held for a next stop: inject.HoldingInjector)
            self.result.memory_bytes += m.ctx.live.pop("written", 0)
            self.result.warnings.extend(m.ctx.warnings)

    def finalize(self) -> None:
        verify_rest = getattr(self.image, "verify_rest", None)
        if verify_rest is not None:  # every page block checked before anything runs
            verify_rest()
        self._zombies_die()
        from cryo.engine import jobctl

        for old in jobctl.continued_first(self.made):  # (a continued child's report)
            jobctl.continue_now(self.made, old)
        first = jobctl.stopped_first(self.made)  # (stopped children, before their parents)
        rest = set(self.made) - set(first)
        for old in [*first, *(o for o in self.made if o in rest)]:
            m = self.made[old]
            if m.ctx is not None:  # the last injected call unmaps the restorer
                self._stages(m.ctx, D.LATE_STAGES)
                m.inj(SYS.munmap, self.area, tree.RESTORER_SIZE)
                self._stages(m.ctx, D.FINISH_STAGES)
                if old not in rest:  # let go now: it stops while its parent is held
                    jobctl.stop_now(self.made, old, tree.nspid)

    def _zombies_die(self) -> None:
        """The zombies exit now, each a zombie before any live process runs (a parent
        let go first looked for its zombie, waitid WNOWAIT, while it still ran its
        exit).  The signal each sends its restored parent (its exit signal, SIGCHLD;
        blocked there still, as every signal is until the "regs" stage) is not the
        image's: the parent's handler ran for that child before the checkpoint.  It is
        taken back (rt_sigtimedwait in the parent) unless that signal was pending in the
        image (a standard signal is pending once: the same)."""
        sent: dict[int, int] = {}  # parent's old pid -> the exit signals of its zombies
        for old, m in self.made.items():
            if m.ctx is None and old not in self.plan.procs:
                after = tree.finish_zombie(m, self.area)
                m.tracee.detach()
                for fn in after:  # (the signal that ends it, a core's cleanup)
                    fn()
                tree.wait_dead(m.pid)
                sig = int(m.rec.get("exit_signal", signal.SIGCHLD))
                if 0 < sig < 32:
                    sent[m.rec["ppid"]] = sent.get(m.rec["ppid"], 0) | 1 << (sig - 1)
        for old, signals in sent.items():
            p, mask = self.made.get(old), signals
            if p is None or p.ctx is None:
                continue
            rec = p.ctx.records[R.SIGS]
            for info in [*rec["pending_shared"], *(i for t in p.ctx.thread_records
                                                   for i in t["pending"])]:  # fmt: skip
                mask &= ~(1 << (struct.unpack_from("<i", info)[0] - 1))
            if not mask:
                continue
            deadline = time.monotonic() + 1.0  # (its exit is seen before its signal is sent)
            while _shared_pending(p.pid) & mask != mask and time.monotonic() < deadline:
                time.sleep(0.0005)
            for sig in range(1, 32):
                if mask & 1 << (sig - 1):
                    f = p.inj.frame()  # (one buffer each: the set, a zero timeout)
                    one = (1 << (sig - 1)).to_bytes(8, "little")
                    p.inj.raw(SYS.rt_sigtimedwait, f.put(one), 0, f.put(bytes(16)), 8)

    def let_go(self) -> RestoreResult:
        for d in D.DRIVERS:
            if d.started:
                d.started(self)
        # the zombies first, each dead before any live process runs: a parent let go
        # first could look for its zombie (waitid WNOWAIT) while it still ran its exit
        for m in sorted(self.made.values(), key=lambda m: m.ctx is not None):
            for t in ([m.tracee] if m.ctx is None else m.ctx.threads.values()):
                t.detach()
            if m.ctx is None:
                tree.wait_dead(m.pid)
        self.result.pid = self.made[self.plan.tree["root"]].pid
        self.result.pids = {old: m.pid for old, m in self.made.items()}
        from cryo.image import trust

        trust.restarted(self.image, self.result.pid)  # a second copy of it is refused
        for d in D.DRIVERS:
            if d.after_restart:
                d.after_restart(self)
        self._cleanups.close()
        self.result.total_seconds = time.perf_counter() - self._t0
        return self.result

    def abort(self) -> None:
        try:
            tree.kill_made(self.made)
            for fn in reversed(self._undo):
                fn()
        finally:
            self._cleanups.close()

    def run(self) -> RestoreResult:
        """Every phase in order; on any failure, :meth:`abort`."""
        return _all_or_abort((self.validate, self.prepare_shared, self.build_tree,
                              self.build_processes, self.finalize), self.let_go,
                             self.abort, lambda: self.result.pid or None)

    @staticmethod
    def _stages(ctx: RestoreContext, stages: tuple[str, ...]) -> None:
        for stage in stages:
            for d in D.DRIVERS:
                hook = d.restore.get(stage)
                if hook is not None:
                    hook(ctx)
                thook = d.restore_thread.get(stage)
                if thook is not None:
                    for trec in ctx.thread_records:
                        thook(ctx, ctx.thread_injector(trec), trec)


@dataclass
class _RestoreShared:
    """What the drivers' prepare hooks made for every process (each sets its own)."""

    opened: Any = None  # files.Opened
    objects: Any = None  # shmem.Made
    shm_ids: dict[int, int] = field(default_factory=dict)
    descs: list[dict[str, Any]] = field(default_factory=list)
    keep: dict[str, Any] = field(default_factory=dict)  # what a kind opened keeps for later
