"""cryod: the socket, who may do what (SO_PEERCRED), and the operations on jobs.

Every request is authorized by the credentials the kernel gives for the connection's
peer: root may do anything; any other uid sees and manages only its own jobs, adopts
only processes whose every uid is its own, cannot name a store (the daemon's store is
root's, 0700), and a restart of its job is admitted only if the image grants no
privilege that uid lacks (cryo.image.trust's rule, with the caller as the owner).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import functools
import json
import logging
import os
import pwd
import queue
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryo import __version__
from cryo.asuser import AsUserFailed, call_as
from cryo.daemon import procs
from cryo.daemon import protocol as P
from cryo.daemon.metrics import Metrics
from cryo.daemon.runner import Runner
from cryo.daemon.state import State
from cryo.errors import AccessDenied, CryoError, ImageExists, NoSuchProcess, Usage

if TYPE_CHECKING:
    from cryo.daemon.commands import CommandServer
    from cryo.daemon.gridhost import GridHost

log = logging.getLogger("cryo.daemon")
DEFAULT_STATE, DEFAULT_STORE = P.DEFAULT_STATE, P.DEFAULT_STORE
ROOT = 0
GC_WAIT = 1.0  # seconds a background gc waits for no checkpoint of its store in progress
# a job's retention after its periodic versions: after every GC_ROUNDS-th one, or the
# first one GC_DELAY seconds or more after its last gc (a job every 10 minutes: each;
# every 5 s: every fourth).  A gc's cost is mostly that of loading the kept versions'
# maps, whatever it deletes (bench/daemon_round.py --gc-every: 12 ms of CPU a round
# after each, 4 ms after every fourth); the versions over the policy meanwhile are at
# most GC_ROUNDS - 1, for at most GC_DELAY s plus a period.  An asked checkpoint's
# retention runs at once, as before.
GC_ROUNDS = 4
GC_DELAY = 60.0


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int

    @property
    def root(self) -> bool:
        return self.uid == ROOT


@dataclass
class Staged:
    handle: Any
    attempt: int
    started: float
    version: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


def event(what: str, **fields: Any) -> None:
    """A structured log line (the JSON formatter puts ``fields`` beside the message)."""
    log.info(what, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}  # fmt: skip
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Daemon:
    def __init__(self, *, socket_path: str = P.DEFAULT_SOCKET, state_dir: str = DEFAULT_STATE,
                 store: str = DEFAULT_STORE, metrics: str | None = None,
                 max_concurrent: int = 2, staged_timeout: float = 120.0,
                 backoff: float = 1.0, grid: GridHost | None = None,
                 checkpoint_timeout: float | None = 3600.0) -> None:  # fmt: skip
        self.socket_path = socket_path
        self.store = os.path.abspath(store)
        self.state = State(state_dir)
        self.metrics = Metrics()
        self.metrics_address = metrics
        self.max_concurrent = max(1, max_concurrent)
        # the checkpointers (daemon/runner.py), forked at start: an operation holds one,
        # so that there are at most --max-concurrent checkpoints (and gc) at once
        self._runners: queue.SimpleQueue[Runner] = queue.SimpleQueue()
        self._metrics_fds: list[int] = []
        # gc after a periodic checkpoint: queued (a job once however often), done by one
        # background checkpointer of its own, so that it never holds a checkpoint's slot
        self._gc_runner: Runner | None = None
        self._gc_queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._gc_pending: set[str] = set()
        self._gc_lock = threading.Lock()
        self._gc_busy = threading.Lock()  # held while the background gc works
        # job -> (periodic versions since its last gc, monotonic time of that gc)
        self._gc_since: dict[str, tuple[int, float]] = {}
        # a store's background gc starts when none of its jobs is being checkpointed (its
        # unlinks and fsyncs would lengthen that job's freeze): see gate()
        self._gate = threading.Condition()
        self._in_checkpoint: dict[str, int] = {}  # store -> checkpoints in progress
        # the scheduler's wake-up: a byte on this pipe (a change of state, a job no
        # longer busy) ends its sleep
        self.wake_fd, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.state.on_change = self.wake
        self.staged_timeout = staged_timeout
        self.backoff = backoff
        self.checkpoint_timeout = checkpoint_timeout  # a checkpoint (its child) at most
        self.staged: dict[str, Staged] = {}
        self.grid = grid  # this host's grid agent, supervised (cryod --grid)
        self._stores: set[str] = set()
        self._stores_lock = threading.Lock()
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self.stopping = threading.Event()
        self.server: socketserver.UnixStreamServer | None = None
        self.threads: list[threading.Thread] = []
        self._main: int | None = None  # the thread that forks restored processes
        # the workers: a fixed set of threads for periodic checkpoints and restarts
        # after failures (threads made and ended per operation each took a malloc
        # arena of their own: the daemon's RSS crept up with them)
        self._work: queue.SimpleQueue[tuple[str, Callable[[], Any]]] = queue.SimpleQueue()
        self.workers = [threading.Thread(target=self._worker, name=f"cryod-worker-{i}",
                                         daemon=True) for i in range(self.max_concurrent)]
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = \
            queue.SimpleQueue()  # fmt: skip
        self.commands: CommandServer | None = None  # the thin client's (daemon/commands.py)

    def submit(self, name: str, fn: Callable[[], Any]) -> None:
        """``fn()`` (an operation of job ``name``) run by the next free worker."""
        self._work.put((name, fn))

    def _worker(self) -> None:
        while True:
            name, fn = self._work.get()
            try:
                fn()
            except CryoError:
                pass  # reported where it failed (an attempt, a log line, a metric)
            except Exception:
                log.exception("job %s", name)

    # -- the main thread: the parent of every restored process ------------------------

    def in_main(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` run by the daemon's main thread, which :meth:`run` keeps
        for this.  Restarts go there: the kernel tells a process of its parent's death
        (PR_SET_PDEATHSIG, restored with it) when the *thread* that forked it ends, and
        the thread of a request or of a restart after a failure ends right after it.
        The main thread lives as long as the daemon, and orphans that come to the
        daemon (the jobs it starts) are given to it as well."""
        call = functools.partial(fn, *args, **kw)
        if self._main is None or threading.get_ident() == self._main:
            return call()
        fut: Future[Any] = Future()
        self._calls.put((call, fut))
        return fut.result()

    def run(self) -> None:
        """Serve (the socket in a thread) and run :meth:`in_main`'s calls in this
        thread, the main one, until :meth:`stop`."""
        assert self.server is not None
        self._main = threading.get_ident()
        server = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="cryod-server", daemon=True)  # fmt: skip
        server.start()
        while server.is_alive():
            try:
                call, fut = self._calls.get(timeout=0.2)
            except queue.Empty:
                continue
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(call())
                except BaseException as err:
                    fut.set_exception(err)
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                _, fut = self._calls.get_nowait()
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(CryoError("the daemon is stopping"))

    # -- the checkpointers: the global limit ------------------------------------------

    @contextlib.contextmanager
    def slot(self) -> Iterator[Runner]:
        """One of the ``--max-concurrent`` checkpointers, waited for."""
        runner = self._runners.get()
        try:
            yield runner
        finally:
            self._runners.put(runner)

    def _listening_fds(self) -> list[int]:
        fds = [self.server.fileno()] if self.server is not None else []
        fds += self.commands.fds if self.commands is not None else []
        return fds + list(self._metrics_fds)

    # -- one operation per job at a time ---------------------------------------------

    def try_busy(self, name: str) -> bool:
        with self._cond:
            if name in self._busy:
                return False
            self._busy.add(name)
            return True

    def wait_busy(self, name: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while name in self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CryoError(f"job {name} is busy (another operation is in progress)")
                self._cond.wait(left)
            self._busy.add(name)

    def unbusy(self, name: str, *, wake: bool = True) -> None:
        with self._cond:
            self._busy.discard(name)
            self._cond.notify_all()
        if wake:
            self.wake()

    def wake(self) -> None:
        """The scheduler looks again now (what is due, what ended)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def is_busy(self, name: str) -> bool:
        with self._cond:
            return name in self._busy

    @contextlib.contextmanager
    def busy(self, name: str, *, held: bool = False) -> Iterator[None]:
        if not held:
            self.wait_busy(name)
        try:
            yield
        finally:
            self.unbusy(name)

    # -- authorization -------------------------------------------------------------

    def job_of(self, caller: Caller, name: str) -> dict[str, Any]:
        job = self.state.job(name)
        if job is None:
            raise CryoError(f"there is no job {name}")
        if not caller.root and job["owner"] != caller.uid:
            raise AccessDenied(f"job {name} belongs to uid {job['owner']}, not to uid"
                               f" {caller.uid}: access denied")  # fmt: skip
        return job

    def visible(self, caller: Caller) -> list[dict[str, Any]]:
        jobs = self.state.jobs()
        return jobs if caller.root else [j for j in jobs if j["owner"] == caller.uid]

    # -- the operations (one per message of the protocol) ----------------------------

    def dispatch(self, caller: Caller, op: P.Op, args: dict[str, Any]) -> Any:
        fn: Callable[[Caller, dict[str, Any]], Any] = getattr(self, f"op_{op.name}")
        return fn(caller, args)

    def op_command(self, caller: Caller, args: dict[str, Any], fds: list[int] | None = None,
                   conn: socket.socket | None = None) -> Any:
        """A thin client's command line (cryo.cli.thin), handed with the connection and
        the caller's fds to the command server, which answers when it ends; refused (and
        so not run: the client runs it itself) for a caller whose namespaces, root or
        cgroups are not the daemon's."""
        from cryo.daemon.commands import COMMANDS, caller_limits, command_of, same_place

        if fds is None or conn is None:
            raise Usage("command: only on the daemon's socket, with its fds")
        if len(fds) != P.COMMAND_FDS:
            raise P.ProtocolError(f"command: {P.COMMAND_FDS} fds (0, 1, 2 and the cwd) go"
                                  f" with it, not {len(fds)}")  # fmt: skip
        argv = args["argv"]
        if not all(isinstance(a, str) for a in argv) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in args["env"].items()):
            raise P.ProtocolError("command: argv and env are strings")
        if command_of(argv) not in COMMANDS:
            raise Usage(f"command: the daemon runs {', '.join(COMMANDS)} only")
        if "--shell-job" in argv:  # (its terminal and session are the caller's, not ours)
            raise Usage("command: --shell-job is run by the caller itself")
        if self.commands is None:
            raise CryoError("this daemon runs no commands")
        differs = same_place(caller.pid)
        if differs is not None:
            raise AccessDenied(f"command: process {caller.pid} differs from cryod in"
                               f" {differs}", pid=caller.pid)  # fmt: skip
        job = {"argv": argv, "env": args["env"], "umask": args["umask"] & 0o777,
               "cwd": args.get("cwd"), "caller": caller.pid, **caller_limits(caller.pid)}
        self.commands.hand(conn, fds, job)
        return None

    def op_command_signal(self, caller: Caller, args: dict[str, Any]) -> Any:
        raise Usage("command_signal: only on a connection running a command")

    def op_ping(self, caller: Caller, args: dict[str, Any]) -> Any:
        return {"version": __version__, "pid": os.getpid(), "uid": caller.uid,
                "gid": caller.gid, "store": self.store,
                "grid": self.grid.describe() if self.grid else None,
                "commands": self.commands.pid if self.commands else None}  # fmt: skip

    def op_jobs(self, caller: Caller, args: dict[str, Any]) -> Any:
        return [self.describe(j) for j in self.visible(caller)]

    def op_job_get(self, caller: Caller, args: dict[str, Any]) -> Any:
        return self.describe(self.job_of(caller, args["name"]))

    def describe(self, job: dict[str, Any]) -> dict[str, Any]:
        versions = self.state.versions(job["name"])
        last = versions[-1] if versions else None
        out = {k: job[k] for k in ("name", "owner", "pid", "state", "status", "launched",
                                   "cmd", "scope", "store", "created", "next_due", "failures",
                                   "restarts", "every", "keep_last", "keep_every",
                                   "restart_on_failure", "max_restarts")}  # fmt: skip
        out.update(busy=self.is_busy(job["name"]) or job["name"] in self.staged,
                   staged=job["name"] in self.staged, versions=len(versions),
                   last_version=last["version"] if last else None,
                   last_checkpoint=last["created"] if last else None,
                   memory=last["memory"] if last else None,
                   stored=sum(v["stored"] or 0 for v in versions))
        return out

    def op_job_add(self, caller: Caller, args: dict[str, Any]) -> Any:
        from cryo.store.layout import check_app_name

        name = check_app_name(args["name"])
        pid, cmd = args.get("pid"), args.get("cmd")
        if (pid is None) == (cmd is None):
            raise Usage("a job is a running process (pid) or a command to start (cmd)")
        if args.get("store") and not caller.root:
            raise AccessDenied("only root may choose the store of a job (a user's jobs go"
                               " to the daemon's store)")  # fmt: skip
        store = os.path.abspath(args.get("store") or self.store)
        every = args.get("every")
        if every is not None and every < 0.1:
            raise Usage("--every takes at least 0.1 s")
        keep_last, keep_every = args.get("keep_last"), args.get("keep_every")
        if keep_last is not None and keep_last < 1:
            raise Usage("--keep-last takes 1 or more")
        if keep_every is not None and keep_every < 1:
            raise Usage("--keep-every takes a positive number")
        if keep_every is not None and keep_last is None:
            raise Usage("--keep-every goes with --keep-last")
        scope = args.get("scope")
        if scope not in (None, "process", "tree"):
            raise Usage("scope is process or tree")
        with self._cond:
            if self.state.job(name) is not None or name in self._busy:
                raise ImageExists(f"a job {name} exists already")
            self._busy.add(name)
        try:
            if cmd is not None:
                if not cmd or not all(isinstance(a, str) for a in cmd):
                    raise Usage("cmd is a non-empty list of strings")
                pid = self.launch(caller, cmd, args)
                scope = scope or "tree"
            else:
                assert isinstance(pid, int)
                owned = procs.owned_by(pid, caller.uid)
                if owned is None:
                    raise NoSuchProcess(f"process {pid} does not exist", pid=pid)
                if not caller.root and not owned:
                    raise AccessDenied(f"process {pid} is not yours (uid {caller.uid}):"
                                       " access denied", pid=pid)  # fmt: skip
                if scope is None:
                    scope = _scope_of(pid)
                    if scope == "process":  # (alone, it would come back without them)
                        from cryo.engine.tree import refuse_children

                        refuse_children(pid, "give --scope tree to take them with it, or"
                                        " --scope process to take it alone")  # fmt: skip
            start = procs.start_time(pid)
            if start is None:
                raise NoSuchProcess(f"process {pid} exited at once", pid=pid)
            now = time.time()
            self.state.add_job(
                {"name": name, "owner": caller.uid, "gid": caller.gid, "pid": pid,
                 "start_time": start, "state": "running", "launched": cmd is not None,
                 "cmd": cmd, "scope": scope, "store": store, "created": now,
                 "next_due": now + every if every else None},
                {"every": every, "keep_last": keep_last, "keep_every": keep_every,
                 "restart_on_failure": bool(args.get("restart_on_failure")),
                 "max_restarts": args.get("max_restarts", 3)})  # fmt: skip
            if self.state.job(name) and os.path.isdir(os.path.join(store, name)):
                self.sync(name)  # versions of an earlier job of that name
        finally:
            self.unbusy(name)
        event("job added", job=name, pid=pid, owner=caller.uid, cmd=cmd, every=every)
        return self.op_job_get(caller, {"name": name})

    def launch(self, caller: Caller, cmd: list[str], args: dict[str, Any]) -> int:
        """Start ``cmd`` with cryo.launch.run, as the caller: in a child of the daemon that
        becomes the caller (groups, gid, uid, then its directory and environment, so
        that the output file and the directory are reached with the caller's rights
        only).  The child exits at once; the job, orphaned, comes to the daemon (a child
        subreaper), which reaps it and reads how it ended."""
        from cryo import launch

        env = args.get("env")
        env = {str(k): str(v) for k, v in env.items()} if env else {"PATH": os.defpath}
        output, cwd = args.get("output") or os.devnull, args.get("cwd") or "/"
        ids = None if caller.uid == os.geteuid() else (
            caller.uid, caller.gid, _groups(caller.uid, caller.gid))  # fmt: skip

        def start() -> bytes:  # in the child, as the caller
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            return str(launch.run(cmd, output)).encode()

        try:
            # (the priority first: not the daemon's own --nice, while it may still)
            pid = call_as(ids, start, first=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
        except AsUserFailed as err:
            raise CryoError(f"cannot start {cmd[0]} as uid {caller.uid}: {err}") from None
        return int(pid)

    def op_job_rm(self, caller: Caller, args: dict[str, Any]) -> Any:
        job = self.job_of(caller, args["name"])
        name = job["name"]
        with self.busy(name):
            staged = self.staged.pop(name, None)
            if staged is not None:
                with contextlib.suppress(Exception):
                    staged.handle.abort()
            if args.get("kill") and job["pid"] and job["state"] == "running":
                procs.kill(job["pid"], job["start_time"], tree=job["scope"] == "tree")
            self.state.remove_job(name)
        self.metrics.forget(name)
        with self._gc_lock:
            self._gc_since.pop(name, None)
        event("job removed", job=name, kill=bool(args.get("kill")))
        return {}

    def op_job_checkpoint(self, caller: Caller, args: dict[str, Any]) -> Any:
        job = self.job_of(caller, args["name"])
        self.wait_busy(job["name"])
        return self.checkpoint(job["name"], held=True)

    def op_job_restart(self, caller: Caller, args: dict[str, Any]) -> Any:
        job = self.job_of(caller, args["name"])
        self.wait_busy(job["name"])
        return self.restart(job["name"], args.get("version"), held=True, kill=True)

    def op_job_versions(self, caller: Caller, args: dict[str, Any]) -> Any:
        job = self.job_of(caller, args["name"])
        return self.state.versions(job["name"])

    def op_job_history(self, caller: Caller, args: dict[str, Any]) -> Any:
        job = self.job_of(caller, args["name"])
        return self.state.history(job["name"], args.get("limit", 100))

    # -- checkpoints -----------------------------------------------------------------

    def ensure_store(self, path: str) -> None:
        """Make the store once, from one thread: cryo.store makes a store safely against
        other processes, not against threads of one process (one temporary marker name
        per pid)."""
        from cryo.store.layout import Store

        with self._stores_lock:
            if path not in self._stores:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                Store(path, create=True)
                self._stores.add(path)

    def alive(self, job: dict[str, Any]) -> int:
        pid = job["pid"]
        if job["state"] != "running" or not pid or not procs.running(pid, job["start_time"]):
            raise NoSuchProcess(f"job {job['name']} is not running ({job['state']}"
                                f"{', ' + job['status'] if job['status'] else ''})",
                                pid=pid)  # fmt: skip
        return int(pid)

    def checkpoint(self, name: str, *, due: float | None = None, next_due: float | None = None,
                   held: bool = False) -> dict[str, Any]:  # fmt: skip
        """A new version of job ``name``, then retention by its policy; a periodic one
        (``due``) records the ``next_due`` time with its attempt."""
        with self.busy(name, held=held):
            job = self.state.job(name)
            if job is None:
                raise CryoError(f"there is no job {name}")
            with self.slot() as runner:  # the global limit on concurrent checkpoints
                fields = None if next_due is None else {"next_due": next_due}
                attempt = self.state.begin(name, "checkpoint", due, job_fields=fields)
                job.update(fields or {})
                started = time.time()
                if due is not None:
                    self.metrics.top("checkpoint_lateness_seconds_max", name, started - due)
                try:
                    pid = self.alive(job)
                    self.ensure_store(job["store"])
                    with self.gate(job["store"], gc=False):
                        version, r = runner.call("checkpoint", pid, job["store"], name,
                                                 job["scope"],
                                                 timeout=self.checkpoint_timeout)  # fmt: skip
                except BaseException as err:
                    self.failed(job, attempt, err)
                    raise
                self.state.add_version(name, version, memory=r.memory_bytes,
                                       stored=r.stored_bytes, frozen=r.freeze_seconds,
                                       seconds=r.total_seconds, attempt=attempt)  # fmt: skip
                self.counted(name, r)
                event("checkpoint", job=name, version=version, memory=r.memory_bytes,
                      stored=r.stored_bytes, frozen=round(r.freeze_seconds, 4),
                      seconds=round(r.total_seconds, 4), cpu=round(runner.cpu, 4),
                      late=round(started - due, 4) if due is not None else None)  # fmt: skip
                if due is None:
                    self.retain(job, runner)  # (an asked one returns once retention ran)
            if due is not None and self.gc_due(name):
                self.retain_later(name)
            return {"version": version, "memory": r.memory_bytes, "stored": r.stored_bytes,
                    "frozen": r.freeze_seconds, "seconds": r.total_seconds}  # fmt: skip

    def counted(self, name: str, r: Any) -> None:
        m = self.metrics
        m.add("checkpoints_total", name)
        m.add("checkpoint_seconds_total", name, r.total_seconds)
        m.add("checkpoint_frozen_seconds_total", name, r.freeze_seconds)
        m.add("checkpoint_stored_bytes_total", name, r.stored_bytes)
        m.set("checkpoint_memory_bytes", name, r.memory_bytes)

    def failed(self, job: dict[str, Any], attempt: int, err: BaseException) -> None:
        """A failed checkpoint: reported, retried with backoff (at most one period
        later); the versions before it are untouched (cryo.store's guarantee)."""
        failures = job["failures"] + 1
        fields: dict[str, Any] = {"failures": failures}
        if job["every"]:
            retry = time.time() + min(job["every"], self.backoff * 2 ** (failures - 1))
            fields["next_due"] = min(retry, job["next_due"] or retry)
        self.state.finish(attempt, "failed", error=type(err).__name__, message=str(err),
                          job_fields=fields)  # fmt: skip
        self.metrics.add("checkpoint_failures_total", job["name"])
        log.warning("checkpoint failed", extra={"fields": {
            "job": job["name"], "error": type(err).__name__, "message": str(err),
            "failures": failures, "retry": fields.get("next_due")}})  # fmt: skip

    @contextlib.contextmanager
    def gate(self, store: str, *, gc: bool) -> Iterator[None]:
        """A checkpoint of ``store`` (``gc`` False), counted; or its background gc,
        which starts once none is in progress (or after :data:`GC_WAIT` seconds without
        a gap).  Checkpoints never wait for a gc: the gc's checkpointer runs 10 nice
        values below them, and every job of the store waiting for it was a priority
        inversion (bench/daemon.py at load 17-23: 464 of 1186 checkpoints started more
        than 1 s late)."""
        with self._gate:
            if gc:
                self._gate.wait_for(lambda: not self._in_checkpoint.get(store), GC_WAIT)
            else:
                self._in_checkpoint[store] = self._in_checkpoint.get(store, 0) + 1
        try:
            yield
        finally:
            if not gc:
                with self._gate:
                    self._in_checkpoint[store] -= 1
                    if not self._in_checkpoint[store]:
                        del self._in_checkpoint[store]
                        self._gate.notify_all()

    def gc_due(self, name: str) -> bool:
        """After a periodic version of job ``name``: whether its retention runs now
        (:data:`GC_ROUNDS`, :data:`GC_DELAY`; the first after the daemon's start does)."""
        now = time.monotonic()
        with self._gc_lock:
            rounds, last = self._gc_since.get(name, (GC_ROUNDS - 1, now - GC_DELAY))
            if rounds + 1 < GC_ROUNDS and now - last < GC_DELAY:
                self._gc_since[name] = (rounds + 1, last)
                return False
            self._gc_since[name] = (0, now)
            return True

    def retain_later(self, name: str) -> None:
        """Retention of job ``name`` by the background gc (queued once)."""
        with self._gc_lock:
            if name in self._gc_pending:
                return
            self._gc_pending.add(name)
        self._gc_queue.put(name)

    def _gc_worker(self) -> None:
        while True:
            name = self._gc_queue.get()
            with self._gc_lock:
                self._gc_pending.discard(name)
            job = self.state.job(name)
            if job is None or self._gc_runner is None:
                continue
            try:
                with self._gc_busy, self.gate(job["store"], gc=True):
                    self.retain(job, self._gc_runner)
            except Exception:
                log.exception("gc of job %s", name)

    def retain(self, job: dict[str, Any], runner: Runner | None = None) -> None:
        """gc by the job's policy, by ``runner`` (or the next free one)."""
        if not job["keep_last"]:
            return
        with self._gc_lock:
            self._gc_since[job["name"]] = (0, time.monotonic())
        if runner is None:
            with self.slot() as free:
                self.retain(job, free)
            return
        try:
            reports = runner.call("gc", job["store"], job["keep_last"], job["keep_every"],
                                  job["name"], timeout=self.checkpoint_timeout)  # fmt: skip
        except CryoError as err:
            log.warning("gc failed", extra={"fields": {"job": job["name"], "message": str(err)}})
            return
        if any(rep.deleted or rep.retired for rep in reports):
            cpu = runner.cpu
            for rep in reports:
                event("gc", job=job["name"], deleted=rep.deleted, retired=rep.retired,
                      freed=rep.freed, cpu=round(cpu, 4))  # fmt: skip
            self.sync(job["name"], job["store"], runner)

    def sync(self, name: str, store: str | None = None,
             runner: Runner | None = None) -> tuple[list[int], list[int]]:  # fmt: skip
        """The job's versions in the database made those of the store (read by a
        checkpointer: the page maps of a version's metadata never load in the daemon)."""
        job = self.state.job(name)
        store = store or (job["store"] if job else self.store)
        if runner is None:
            with self.slot() as free:
                return self.sync(name, store, free)
        info = runner.call("versions", store, name, timeout=self.checkpoint_timeout)
        return self.state.sync_versions(name, info)

    # -- restarts --------------------------------------------------------------------

    def restart(self, name: str, version: int | None = None, *, held: bool = False,
                kill: bool = False, failure: bool = False) -> dict[str, Any]:  # fmt: skip
        from cryo import store as cstore

        with self.busy(name, held=held):
            job = self.state.job(name)
            if job is None:
                raise CryoError(f"there is no job {name}")
            attempt = self.state.begin(name, "restart")
            try:
                from cryo.store.layout import Store

                v = Store(job["store"]).app(name).resolve(version)
                if job["owner"] != ROOT:  # (before what runs is killed: a refusal harms none)
                    admit_for(job["store"], name, v, job["owner"], job["gid"])
                if kill and job["pid"] and job["state"] == "running":
                    procs.kill(job["pid"], job["start_time"], tree=job["scope"] == "tree")
                r = self.in_main(at_jobs_nice, cstore.restart, job["store"], name, v)
            except BaseException as err:
                fields: dict[str, Any] = {}
                if failure:
                    fields = {"restarts": job["restarts"] + 1, "state": "failed"}
                self.state.finish(attempt, "failed", error=type(err).__name__,
                                  message=str(err), job_fields=fields)  # fmt: skip
                self.metrics.add("restart_failures_total", name)
                log.warning("restart failed", extra={"fields": {
                    "job": name, "version": version, "error": type(err).__name__,
                    "message": str(err)}})  # fmt: skip
                raise
            start = procs.start_time(r.pid)
            fields = {"pid": r.pid, "start_time": start, "state": "running"}
            if failure:
                fields["restarts"] = job["restarts"] + 1
            if job["every"]:
                fields["next_due"] = time.time() + job["every"]
            self.state.finish(attempt, "ok", version=v, job_fields=fields)
            self.metrics.add("restarts_total", name)
            event("restart", job=name, version=v, pid=r.pid, old_pid=r.old_pid,
                  after_failure=failure)  # fmt: skip
            return {"pid": r.pid, "version": v}

    # -- staged checkpoints ------------------------------------------------------------

    def op_job_prepare(self, caller: Caller, args: dict[str, Any]) -> Any:
        from cryo.engine.dump import prepare

        job = self.job_of(caller, args["name"])
        name = job["name"]
        self.wait_busy(name, timeout=60)
        try:
            attempt = self.state.begin(name, "staged")
            try:
                pid = self.alive(job)
                handle = prepare(pid, scope=job["scope"],
                                      freeze_timeout=self.staged_timeout)  # fmt: skip
            except BaseException as err:
                self.state.finish(attempt, "failed", error=type(err).__name__,
                                  message=str(err))  # fmt: skip
                raise
        except BaseException:
            self.unbusy(name)
            raise
        self.staged[name] = Staged(handle, attempt, time.monotonic())  # (busy until the end)
        event("staged prepare", job=name, pid=job["pid"])
        return {"pid": job["pid"]}

    def _staged(self, caller: Caller, name: str) -> tuple[dict[str, Any], Staged]:
        job = self.job_of(caller, name)
        st = self.staged.get(name)
        if st is None:
            raise CryoError(f"job {name} has no staged checkpoint (job prepare first)")
        return job, st

    def op_job_write(self, caller: Caller, args: dict[str, Any]) -> Any:
        from cryo.store.layout import Store

        job, st = self._staged(caller, args["name"])
        if st.version is not None:
            raise CryoError(f"job {job['name']}: the staged checkpoint is written already")
        name = job["name"]
        with self.slot():
            self.ensure_store(job["store"])
            a = Store(job["store"]).app(name, create=True)
            with a.lock(exclusive=True):  # (held here while the worker writes)
                a.sweep()
                parent = a.latest()
                version = a.next_version()
                try:
                    r = st.handle.write(functools.partial(_version_sink, job["store"], name,
                                                          version, parent))  # fmt: skip
                except BaseException as err:
                    self._end_staged(name, "failed", err)
                    raise
        st.version = version
        self.state.add_version(name, version, memory=r.memory_bytes, stored=r.stored_bytes,
                               frozen=r.freeze_seconds, seconds=r.total_seconds)  # fmt: skip
        self.counted(name, r)
        event("staged write", job=name, version=version, stored=r.stored_bytes)
        return {"version": version, "memory": r.memory_bytes, "stored": r.stored_bytes,
                "frozen": r.freeze_seconds}  # fmt: skip

    def op_job_resume(self, caller: Caller, args: dict[str, Any]) -> Any:
        job, st = self._staged(caller, args["name"])
        try:
            st.handle.resume()
        except BaseException as err:
            self._end_staged(job["name"], "failed", err)
            raise
        self._end_staged(job["name"], "ok")
        self.retain(job)
        return {"version": st.version}

    def op_job_abort(self, caller: Caller, args: dict[str, Any]) -> Any:
        job, st = self._staged(caller, args["name"])
        self.abort_staged(job["name"], "aborted")
        return {"version": st.version}

    def abort_staged(self, name: str, why: str) -> None:
        st = self.staged.get(name)
        if st is None:
            return
        err: BaseException | None = None
        try:
            st.handle.abort()
        except BaseException as e:  # ended already (the watchdog): the targets are free
            err = e
        self._end_staged(name, why, err)

    def _end_staged(self, name: str, status: str, err: BaseException | None = None) -> None:
        st = self.staged.pop(name, None)
        if st is None:
            return
        self.state.finish(st.attempt, "ok" if status == "ok" else status, version=st.version,
                          error=type(err).__name__ if err else None,
                          message=str(err) if err else None)  # fmt: skip
        self.unbusy(name)
        event("staged end", job=name, status=status, version=st.version)

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        """Reconcile with the store and the processes, then serve and schedule."""
        from cryo.daemon import scheduler
        from cryo.linux import libc
        from cryo.linux.consts import PR

        libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
        # the engine's and the store's modules, once: every checkpoint's child, forked
        # from here, has them (each imported them again: a second of a checkpoint, on a
        # loaded machine without bytecode cache, and its due time missed)
        from cryo.preload import preload

        preload()
        import numpy.ma  # noqa: F401 (numpy's set routines import it at their first call)

        for _ in range(self.max_concurrent):
            self._runners.put(Runner(forker=self.in_main, close_fds=self._listening_fds))
        self._gc_runner = Runner(forker=self.in_main, close_fds=self._listening_fds,
                                 background=True)  # fmt: skip
        # the thin client's commands: forked now, while this is the only thread
        from cryo.daemon.commands import CommandServer

        self.commands = CommandServer()
        for a in self.state.interrupted():
            event("interrupted attempt", job=a["job"], kind=a["kind"], attempt=a["id"],
                  daemon=a["daemon"])  # fmt: skip
        for job in self.state.jobs():
            added, gone = self.sync(job["name"], job["store"])
            if added or gone:
                event("reconciled", job=job["name"], added=added, deleted=gone)
        self.server = _serve(self)
        if self.metrics_address:
            from cryo.daemon import metrics

            httpd = metrics.serve(self.metrics_address, self.render_metrics)
            self._metrics_fds.append(httpd.fileno())
        self.threads = [threading.Thread(target=scheduler.run, args=(self,),
                                         name="cryod-scheduler", daemon=True),
                        threading.Thread(target=self._gc_worker, name="cryod-gc",
                                         daemon=True),
                        *self.workers]  # fmt: skip
        for t in self.threads:
            t.start()
        if self.grid is not None:
            self.grid.start()
        event("started", pid=os.getpid(), socket=self.socket_path, store=self.store,
              state=self.state.path, jobs=len(self.state.jobs()))  # fmt: skip

    def render_metrics(self) -> str:
        by_state: dict[str, int] = {}
        for j in self.state.jobs():
            by_state[j["state"]] = by_state.get(j["state"], 0) + 1
        return self.metrics.render(by_state)

    def close_runners(self) -> dict[str, float]:
        """The idle checkpointers end (one still at work stops when the daemon exits:
        its parent-death signal), all told at once and then waited for (each was told
        and waited for in turn: 10 s then SIGTERM and 10 s more, each, when another
        process held the daemon's ends); returns the seconds each step took."""
        took: dict[str, float] = {}
        t0 = time.monotonic()
        ended: list[Runner] = []
        with contextlib.suppress(queue.Empty):
            while True:
                ended.append(self._runners.get_nowait())
        if self._gc_runner is not None and self._gc_busy.acquire(blocking=False):
            ended.append(self._gc_runner)  # (and the lock stays held: no gc after this)
        ended = [r for r in ended if r.end()]
        for r in ended:
            r.wait_end(grace=5.0)
        took["checkpointers"] = time.monotonic() - t0
        if self.commands is not None:
            t0 = time.monotonic()
            self.commands.close()
            took["commands"] = time.monotonic() - t0
        return took

    def stop(self) -> None:
        self.stopping.set()
        self.wake()
        for name in list(self.staged):
            self.abort_staged(name, "aborted")
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        if self.grid is not None:
            threading.Thread(target=self.grid.stop, daemon=True).start()


def _version_sink(store: str, app: str, version: int, parent: int | None) -> Any:
    """The sink of a new version (as cryo.store.checkpoint makes it), made in the staged
    session's worker: the caller holds the application's lock meanwhile."""
    from cryo.store.layout import Store
    from cryo.store.sink import VersionSink, load_previous

    a = Store(store).app(app)
    previous = load_previous(a, parent) if parent is not None else None
    return VersionSink(a, version, previous, parent=parent, direct=True)


def _scope_of(pid: int) -> str:
    from cryo.launch import RUN_MARK

    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return "tree" if RUN_MARK.encode() in f.read().split(b"\0") else "process"
    except OSError:
        return "process"


def _groups(uid: int, gid: int) -> set[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return {gid}
    return {gid, pw.pw_gid, *os.getgrouplist(pw.pw_name, pw.pw_gid)}


def at_jobs_nice(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)`` with this thread at nice 0, the jobs' (then back at the
    daemon's ``--nice``): the privilege rule weighs an image's nice values against the
    calling thread's, and the processes a restart forks inherit it until their own are
    set; at the daemon's -10 a user's image could have had -10 granted."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # (this thread's: Linux keeps it per thread)
    if nice >= 0:
        return fn(*args, **kw)
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    try:
        return fn(*args, **kw)
    finally:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def admit_for(store: str, app: str, version: int, uid: int, gid: int) -> None:
    """The privilege rule for a restart on behalf of ``uid``: the store is root's, so
    the image's files and MADE record say root; the rule is applied with the job's owner
    as the image's owner instead (AccessDenied, exit 4, if it asks for more), and with
    the jobs' nice value, not the daemon's, as the one not to go below."""
    from cryo.image import trust
    from cryo.store.layout import Store
    from cryo.store.source import VersionImage

    a = Store(store).app(app)
    with a.lock(exclusive=False):
        image = VersionImage(a, version, None)
        try:
            image.check()
            at_jobs_nice(trust.check_privilege, image, trust.Owner(
                uid, gid, _groups(uid, gid), why="the job's owner"))  # fmt: skip
        finally:
            image.close()


# -- the socket ------------------------------------------------------------------------

_PEERCRED = struct.Struct("3i")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         _PEERCRED.size))  # fmt: skip
        caller = Caller(pid, uid, gid)
        daemon = self.server.daemon
        while True:
            fds: list[int] = []  # (a command's: the caller's fds 0-2 and cwd)
            try:
                msg = P.recv(sock, fds)
            except (P.ProtocolError, OSError) as err:
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    P.send(sock, P.reply_error(err if isinstance(err, CryoError) else
                                               P.ProtocolError(str(err))))  # fmt: skip
                return
            if msg is None:
                return
            t0 = time.monotonic()
            handed = False
            try:
                op, args = P.check_request(msg)
                if op.root_only and not caller.root:
                    raise AccessDenied(f"{op.name} is for root only")
                if op.name == "command":  # (the command server answers, at its end)
                    daemon.op_command(caller, args, fds, sock)
                    handed = True
                    reply = P.reply_ok(None)
                else:
                    reply = P.reply_ok(daemon.dispatch(caller, op, args))
            except Exception as err:
                if not isinstance(err, CryoError):
                    log.exception("bug in %s", msg.get("op") if isinstance(msg, dict) else "?")
                reply = P.reply_error(err)
            finally:
                for fd in fds:
                    os.close(fd)
            event("request", op=msg.get("op") if isinstance(msg, dict) else None,
                  uid=uid, pid=pid, ok=reply["ok"], error=reply.get("error"),
                  seconds=round(time.monotonic() - t0, 4))  # fmt: skip
            if handed:
                self.server.handed(sock)
                return
            try:
                P.send(sock, reply)
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    daemon: Daemon
    _handed: set[socket.socket]

    def handed(self, request: socket.socket) -> None:
        """``request`` (a command's connection) is the command server's now: closed
        here without a shutdown, which would end it for the server as well."""
        self._handed.add(request)

    def shutdown_request(self, request: Any) -> None:
        if request in self._handed:
            self._handed.discard(request)
            self.close_request(request)
            return
        super().shutdown_request(request)


def _serve(daemon: Daemon) -> _Server:
    path = daemon.socket_path
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            os.unlink(path)  # a dead daemon's socket
        else:
            raise CryoError(f"another cryod listens on {path}", path=path)
        finally:
            probe.close()
    server = _Server(path, _Handler, bind_and_activate=False)
    server.daemon = daemon
    server._handed = set()
    old = os.umask(0o111)
    try:
        server.server_bind()
    finally:
        os.umask(old)
    os.chmod(path, 0o666)  # noqa: S103 (every user may connect; each request is authorized)
    server.server_activate()
    return server


def set_nice(nice: int) -> None:
    """The daemon's threads at ``nice``, and, when it leads its session, that session's
    autogroup: with autogroups (kernel.sched_autogroup_enabled, the default) the
    scheduler shares the CPUs between sessions first, so a task's own nice value
    weighs only against the tasks of its session, and every job the daemon starts or
    adopts is a session of its own.  Without it, a nice of -10 changed nothing against
    busy jobs: a checkpoint had its share of a CPU among theirs (docs/protocol.md)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:  # not root, without CAP_SYS_NICE: a raise is refused
        log.warning("nice %d refused: the daemon runs at %d", nice,
                    os.getpriority(os.PRIO_PROCESS, 0))  # fmt: skip
        return
    if os.getsid(0) != os.getpid():
        return  # (a session of a terminal's: not the daemon's to change)
    # (no autogroups in this kernel: the nice value is all there is)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(str(nice))


def main(args: Any) -> int:
    """``cryod`` / ``cryo daemon``: run until SIGTERM or SIGINT."""
    stream: Any = open(args.log, "a", buffering=1) if args.log else sys.stderr  # noqa: SIM115
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    grid = None
    if args.grid:
        from cryo.daemon.gridhost import GridHost

        grid = GridHost(args.grid, args.host or socket.gethostname(), args.grid_store,
                        lease=args.grid_lease, output=stream, dev=args.grid_dev,
                        listen=args.grid_listen,
                        secret_file=args.grid_secret_file)  # fmt: skip
    daemon = Daemon(socket_path=args.socket, state_dir=args.state, store=args.store,
                    metrics=args.metrics, max_concurrent=args.max_concurrent,
                    staged_timeout=args.staged_timeout, grid=grid,
                    checkpoint_timeout=args.checkpoint_timeout or None)  # fmt: skip

    def stop(sig: int, _frame: object) -> None:
        event("stopping", signal=signal.Signals(sig).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)  # stacks, for bugs
    if args.nice:
        # the daemon, its checkpointers and their checkpoints run at this priority (jobs
        # it starts at 0, restored ones at their own): the same CPU, taken at once rather
        # than in the jobs' gaps, so that checkpoints start and end on time on a machine
        # whose CPUs the jobs fill (docs/protocol.md)
        set_nice(args.nice)
    daemon.start()
    daemon.run()
    t0 = time.monotonic()
    took = daemon.close_runners()  # (the phases of the stop logged: a stop that hangs
    if grid is not None:  # tells where)
        t1 = time.monotonic()
        grid.stop()
        took["grid"] = time.monotonic() - t1
    with contextlib.suppress(OSError):
        os.unlink(daemon.socket_path)
    event("stopped", seconds=round(time.monotonic() - t0, 3),
          **{k: round(v, 3) for k, v in took.items()})  # fmt: skip
    return 0


__all__ = ["Caller", "Daemon", "admit_for", "main"]
