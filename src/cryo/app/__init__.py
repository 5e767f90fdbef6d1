"""What an application imports to take part in its checkpoints (seed 003's API).

Everything here is a harmless no-op when no checkpointer is involved, and a program
that never imports it is checkpointed exactly as any other.  The first call that needs
it starts an agent thread that listens on an abstract unix socket (cryo.app.protocol);
a checkpoint of the process then goes through it:

1. cryo asks; the agent waits until no critical section is open (or answers "busy" at
   once for a non-blocking checkpoint), and from then on :func:`disable` blocks;
2. every registered callback starts: a ``"thread"`` callback in a thread of its own,
   a ``"signal"`` callback on the main thread between two bytecodes (delivered with
   :data:`SIGNAL`); each does its preparations and calls :func:`checkpoint_ready`,
   which blocks while the checkpoint is taken and returns :data:`CONTINUED` after it,
   or :data:`RESTARTED` when the program runs again after a restart (or returns; or
   calls :func:`abort_checkpoint`, which makes the checkpoint fail, program untouched);
3. once every callback is ready the agent says so, with the files to save
   (:func:`add_saved_file`) and the memory to leave out (:func:`advise`); cryo freezes
   the process and writes the image, then tells the agent the outcome.

    import cryo.app as cr

    def flush(_):
        db.flush()
        if cr.checkpoint_ready() == cr.RESTARTED:
            db.reconnect()           # a new host, a new pid: cr.restart_info() says

    cr.register(flush)
    with cr.critical():              # no checkpoint in the middle of this
        write_both_halves()
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryo import procfs
from cryo.app import protocol as P

CONTINUED, RESTARTED, FAILED = 0, 1, -1  # what checkpoint_ready() returns
SIGNAL = signal.SIGRTMIN + 2  # delivers "signal" callbacks to the main thread
__all__ = [
    "CONTINUED",
    "FAILED",
    "RESTARTED",
    "SIGNAL",
    "CheckpointInfo",
    "RestartInfo",
    "abort_checkpoint",
    "add_saved_file",
    "advise",
    "checkpoint_info",
    "checkpoint_ready",
    "checkpoint_self",
    "critical",
    "disable",
    "enable",
    "register",
    "restart_info",
    "unregister",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint being taken (seed 003's cr_checkpoint_info)."""

    signal: int  # sent to the process once the image is written (0: none)
    requester: int  # pid of the process that asked for it
    target: int  # pid, process group or session id it was asked for
    scope: str  # "process", "tree", "pgid" or "sid"


@dataclass(frozen=True)
class RestartInfo:
    """What changed since the checkpoint (seed 003, 6.5.4)."""

    old_pid: int
    new_pid: int
    old_host: str
    new_host: str
    old_addrs: tuple[str, ...]
    new_addrs: tuple[str, ...]
    image: str
    generation: int  # the store version restarted (0: a plain image)
    dropped: tuple[tuple[int, int], ...]  # memory left out (advise): zeros now


class CheckpointAborted(Exception):
    """Raised by abort_checkpoint() inside a callback; the checkpoint fails."""


@dataclass
class _Round:
    """One checkpoint as the agent sees it."""

    info: CheckpointInfo
    pending: int = 0  # callbacks that have not yet reached checkpoint_ready()
    veto: str | None = None
    outcome: int | None = None
    done: threading.Condition = field(default_factory=threading.Condition)


class _Agent:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.callbacks: dict[int, tuple[Callable[[Any], Any], Any, str]] = {}
        self.next_id = 1
        self.critical = 0  # open critical sections
        self.round: _Round | None = None  # the checkpoint in progress
        self.last_restart: RestartInfo | None = None
        self.saved_files: list[str] = []
        self.dropped: list[tuple[int, int]] = []
        self.local = threading.local()  # is this thread running a callback?
        self.waiters: list[threading.Event] = []  # checkpoint_self() callers
        self.results: dict[int, int] = {}
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(P.PREFIX + secrets.token_hex(8).encode())
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, name="cryo-app", daemon=True)
        self.thread.start()

    # -- the agent thread -----------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ValueError):
                if _trusted(conn):  # only root (cryo) or our own user may ask
                    self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        name, fields = P.decode(P.read_line(conn))
        if name != P.CHECKPOINT:
            return
        f = dict(fields)
        info = CheckpointInfo(int(f.get("signal", 0)), int(f.get("requester", 0)),
                              int(f.get("target", 0)), f.get("scope", "process"))  # fmt: skip
        timeout = float(f.get("timeout", 30))
        with self.lock:  # 1. no critical section open; from now on disable() waits
            if self.critical and f.get("nonblocking") == "1":
                conn.sendall(P.encode(P.BUSY, [("reason", "inside a critical section")]))
                return
            if not self.lock.wait_for(lambda: not self.critical, timeout):
                conn.sendall(P.encode(P.BUSY, [("reason", "a critical section did not"
                                                          f" end within {timeout:g} s")]))
                return
            rnd = self.round = _Round(info)
            callbacks = list(self.callbacks.values()) if f.get("callbacks", "1") == "1" else []
            rnd.pending = len(callbacks)
        try:
            for fn, data, context in callbacks:  # 2. the callbacks
                self._start(rnd, fn, data, context)
            with rnd.done:
                if not rnd.done.wait_for(lambda: rnd.pending == 0 or rnd.veto is not None,
                                         timeout):  # fmt: skip
                    rnd.veto = f"a callback was not ready within {timeout:g} s"
            if rnd.veto is not None:
                conn.sendall(P.encode(P.ABORT, [("reason", rnd.veto)]))
                self._finish(rnd, FAILED)
                return
            with self.lock:
                fields_out: list[tuple[str, object]] = [("file", p) for p in self.saved_files]
                fields_out += [("drop", f"{a}:{n}") for a, n in self.dropped]
            conn.sendall(P.encode(P.READY, fields_out))  # 3. cryo freezes us now
            line = P.read_line(conn)
            outcome, fields = P.decode(line) if line else (P.FAILED, [])
            if outcome == P.RESTARTED:
                self.last_restart = _restart_info(dict(fields), fields)
                self.pid = os.getpid()
            self._finish(rnd, {P.CONTINUED: CONTINUED, P.RESTARTED: RESTARTED}.get(outcome,
                                                                                   FAILED))
        except BaseException:
            self._finish(rnd, FAILED)
            raise

    def _start(self, rnd: _Round, fn: Callable[[Any], Any], data: Any, context: str) -> None:
        def run() -> None:
            self.local.round = rnd
            self.local.ready = False
            try:
                fn(data)
            except CheckpointAborted as err:
                self._veto(rnd, str(err) or "aborted by the application")
            except BaseException as err:  # a failing callback vetoes the checkpoint
                self._veto(rnd, f"callback {getattr(fn, '__name__', fn)!r} failed: {err!r}")
            finally:
                if not self.local.ready:  # returned without checkpoint_ready(): counts
                    self._arrive(rnd)
                self.local.round = None

        if context == "signal":
            _main_queue.append(run)
            signal.pthread_kill(threading.main_thread().ident or 0, SIGNAL)
        else:
            threading.Thread(target=run, name="cryo-callback", daemon=True).start()

    def _arrive(self, rnd: _Round) -> None:
        with rnd.done:
            rnd.pending -= 1
            rnd.done.notify_all()

    def _veto(self, rnd: _Round, reason: str) -> None:
        with rnd.done:
            if rnd.veto is None:
                rnd.veto = reason
            rnd.done.notify_all()

    def _finish(self, rnd: _Round, outcome: int) -> None:
        with rnd.done:
            rnd.outcome = outcome
            rnd.done.notify_all()
        with self.lock:
            self.round = None
            for ev in self.waiters:
                self.results[id(ev)] = outcome
                ev.set()
            self.waiters.clear()
            self.lock.notify_all()

    # -- what callbacks call ------------------------------------------------------------
    def ready(self) -> int:
        rnd: _Round | None = getattr(self.local, "round", None)
        if rnd is None:
            return CONTINUED  # not inside a callback: nothing to wait for
        self.local.ready = True
        self._arrive(rnd)
        with rnd.done:
            rnd.done.wait_for(lambda: rnd.outcome is not None)
        assert rnd.outcome is not None
        return rnd.outcome


def _trusted(conn: socket.socket) -> bool:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


_agent: _Agent | None = None
_agent_lock = threading.Lock()
_main_queue: list[Callable[[], None]] = []


def _get() -> _Agent:
    global _agent
    with _agent_lock:
        if _agent is None or (_agent.pid != os.getpid() and not _agent.thread.is_alive()):
            _agent = _Agent()  # (a forked child gets an agent of its own)
        return _agent


def _run_main_queue(_sig: int, _frame: object) -> None:
    while _main_queue:
        _main_queue.pop(0)()


def _restart_info(f: dict[str, str], fields: list[tuple[str, str]]) -> RestartInfo:
    def addrs(key: str) -> tuple[str, ...]:
        return tuple(a for a in f.get(key, "").split(",") if a)

    dropped = tuple((int(a), int(n)) for a, _, n in
                    (d.partition(":") for d in f.get("dropped", "").split(",") if d))  # fmt: skip
    return RestartInfo(int(f.get("old_pid", 0)), int(f.get("new_pid", 0)),
                       f.get("old_host", ""), f.get("new_host", ""), addrs("old_addrs"),
                       addrs("new_addrs"), f.get("image", ""), int(f.get("generation", 0)),
                       dropped)  # fmt: skip


# -- the API -------------------------------------------------------------------------------


def register(fn: Callable[[Any], Any], data: Any = None, context: str = "thread") -> int:
    """Call ``fn(data)`` before every checkpoint; returns an id for :func:`unregister`.
    ``context`` is ``"thread"`` (a thread of its own: it may block, take locks, ...) or
    ``"signal"`` (the main thread, between two bytecodes: the rest of the program's
    main thread waits meanwhile)."""
    if context not in ("thread", "signal"):
        raise ValueError(f"context must be 'thread' or 'signal', not {context!r}")
    a = _get()
    if context == "signal" and signal.getsignal(SIGNAL) is not _run_main_queue:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("a 'signal' callback must be registered from the main thread")
        signal.signal(SIGNAL, _run_main_queue)
    with a.lock:
        cid = a.next_id
        a.next_id += 1
        a.callbacks[cid] = (fn, data, context)
    return cid


def unregister(cid: int) -> None:
    a = _get()
    with a.lock:
        a.callbacks.pop(cid, None)


def checkpoint_ready() -> int:
    """Inside a callback: the preparations are done; blocks while the checkpoint is
    taken and returns CONTINUED after it (FAILED if it failed), or RESTARTED when the
    program runs again after a restart.  Outside a callback: CONTINUED at once."""
    return _agent.ready() if _agent is not None else CONTINUED


def abort_checkpoint(reason: str = "") -> None:
    """Inside a callback: make this checkpoint fail (cryo exits with its own code and
    the program is left as it was).  Raises, so that the callback ends here."""
    raise CheckpointAborted(reason or "aborted by the application")


def disable() -> None:
    """Open a critical section (nestable): no checkpoint starts until as many
    :func:`enable` calls; waits while a checkpoint is in progress."""
    a = _get()
    with a.lock:
        if getattr(a.local, "round", None) is None:  # a callback may use them freely
            a.lock.wait_for(lambda: a.round is None)
        a.critical += 1


def enable() -> None:
    a = _get()
    with a.lock:
        if a.critical <= 0:
            raise RuntimeError("enable() without disable()")
        a.critical -= 1
        a.lock.notify_all()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """``with critical():`` the block is never cut by a checkpoint."""
    disable()
    try:
        yield
    finally:
        enable()


def checkpoint_info() -> CheckpointInfo | None:
    """Inside a callback: the checkpoint being taken; otherwise None."""
    rnd = getattr(_agent.local, "round", None) if _agent is not None else None
    return rnd.info if rnd is not None else None


def restart_info() -> RestartInfo | None:
    """After a restart: what changed (pid, host, addresses, image); otherwise None."""
    return _agent.last_restart if _agent is not None else None


def add_saved_file(path: str) -> None:
    """Save the file at ``path`` into every checkpoint's image; a restart puts it back
    when it is missing or differs (seed 003's cr_add_saved_file)."""
    a = _get()
    full = os.path.abspath(path)
    with a.lock:
        if full not in a.saved_files:
            a.saved_files.append(full)


def advise(kind: str, include: bool, id: Any = None) -> None:
    """Seed 002's cradvise.  Supported: ``advise("memory", False, (addr, length))`` or
    ``advise("memory", False, buffer)``: the whole pages inside that range are not
    saved and come back as zeros in anonymous memory (restart_info().dropped says
    which); ``include=True`` takes it back."""
    if kind != "memory":
        raise ValueError(f"advise: kind {kind!r} is not supported yet (only 'memory')")
    addr, length = _range(id)
    a = _get()
    with a.lock:
        if include:
            a.dropped = [r for r in a.dropped if r != (addr, length)]
        elif (addr, length) not in a.dropped:
            a.dropped.append((addr, length))


def _range(obj: Any) -> tuple[int, int]:
    if isinstance(obj, tuple) and len(obj) == 2:
        return int(obj[0]), int(obj[1])
    import ctypes

    view = memoryview(obj)
    buf = (ctypes.c_char * view.nbytes).from_buffer(obj)
    return ctypes.addressof(buf), view.nbytes


def checkpoint_self(dest: str, *args: str, timeout: float = 300.0) -> int:
    """Ask for a checkpoint of this process into ``dest`` (more ``cryo checkpoint``
    options in ``args``); returns CONTINUED once it is written, RESTARTED when the
    program runs again from it.  Raises RuntimeError if the checkpoint failed, or if cryo
    had not finished within ``timeout`` seconds (it is then killed: an interrupted
    checkpoint writes no image and leaves this process running).

    cryo runs in a grandchild (not ours, not saved), its stderr a file of its own; this
    process holds no fd of it while it is checkpointed (a pipe from cryo would be one
    whose writer is outside the checkpoint, which is refused), and watches it by pid
    and start time until the agent is told the outcome or cryo is gone."""
    import tempfile

    a = _get()
    ev = threading.Event()
    with a.lock:
        a.waiters.append(ev)
    logfd, log = tempfile.mkstemp(prefix="cryo-self-", suffix=".log")
    r, w = os.pipe()  # the grandchild's pid, then closed: before cryo starts
    cmd = [sys.executable, "-m", "cryo", "checkpoint", str(os.getpid()), "-D", dest, *args]
    child = os.fork()
    if child == 0:  # pragma: no cover
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd, to in ((devnull, 0), (devnull, 1), (logfd, 2)):
                    os.dup2(fd, to)
                os.closerange(3, 1 << 16)
                os.execv(cmd[0], cmd)  # noqa: S606 (our own interpreter, argv of our making)
            os.write(w, str(grandchild).encode())
        finally:
            os._exit(127)
    os.close(w)
    os.close(logfd)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as f:
        cryo_pid = int(f.read() or b"0")
    started = procfs.start_time(cryo_pid, alive=True)
    deadline = time.monotonic() + timeout
    killed = False
    try:
        # until the agent is told (cryo tells it before it exits: a moment's grace) or
        # cryo is gone without telling it
        gone_at = None
        while not ev.wait(0.05):
            now = time.monotonic()
            if gone_at is None and (
                    not started or procfs.start_time(cryo_pid, alive=True) != started):
                gone_at = now
            elif gone_at is None and now > deadline and not killed:
                # still the cryo we started (pid and start time): no other process's pid
                os.kill(cryo_pid, signal.SIGKILL)
                killed = True
            if gone_at is not None and now - gone_at > 2.0:
                with a.lock:
                    if ev in a.waiters:
                        a.waiters.remove(ev)
                why = f"cryo did not finish within {timeout:g} s" if killed else _said(log)
                raise RuntimeError(f"checkpoint_self: no checkpoint was taken: {why}")
        outcome = a.results.pop(id(ev), FAILED)
        if outcome == FAILED:
            why = f"cryo did not finish within {timeout:g} s" if killed else _said(log)
            raise RuntimeError(f"checkpoint_self: the checkpoint failed: {why}")
        return outcome
    finally:
        with contextlib.suppress(OSError):
            os.unlink(log)


def _said(log: str) -> str:
    """What cryo wrote to its stderr."""
    try:
        with open(log, "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""
