"""The daemon's checkpointers: long-lived processes that run its checkpoints and gc.

A periodic checkpoint used to cost the daemon two forks (a child of the daemon, so
that the store's page maps never stayed in its memory, and in it the engine's worker)
and a cold start in each: modules that only the first call imports (numpy.ma, which
numpy's set routines pull in), regular expressions compiled again, pages of the
daemon's heap copied on write.  On an idle machine that was 60-75 ms of CPU per
checkpoint against 25 ms of work (docs/protocol.md, "Figures").  A :class:`Runner` is
forked once from the daemon, after it has preloaded the engine, and serves one
operation at a time over a socket pair for as long as it lives; the daemon keeps
``--max-concurrent`` of them, and an operation holds one (that is the global limit).

It does what the engine's worker does for a checkpoint's targets (engine/worker.py),
in itself: it holds the targets while it checkpoints them, so it must never die
outright in the middle.  It dies with the daemon, but gently: the kernel sends it
SIGTERM when the daemon dies (PR_SET_PDEATHSIG), which, as SIGINT, SIGHUP and SIGQUIT,
stops the checkpoint at the next safe point (never inside an injected system call, nor
while a version is committed: a moment later), so that every target is let go as it
was and no version is half published; then it exits.  A checkpoint's time bound
(``--checkpoint-timeout``) is an alarm in the runner that acts the same way, and the
runner goes on serving.  Only a runner that does not answer long after its bound (stuck
in the kernel) is killed outright, and another forked.

The page maps and hash tables an operation loads are freed when it ends, in the
runner; the daemon's own memory never holds them.  A runner is replaced by a fresh
fork after :data:`RECYCLE` operations, so that whatever its heap keeps cannot grow
with the daemon's age.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from cryo.engine.worker import Connection
from cryo.errors import CryoError, InternalError

_ENDS: set[int] = set()  # the daemon's end of every runner's socket pair
RECYCLE = 500  # operations a runner serves before a fresh one replaces it
GRACE = 30.0  # seconds past its bound before a runner that does not answer is killed
# where an interruption waits a moment: inside an injected call or a ptrace step (the
# target's registers are ours), while a version or an image is written out and committed
_CRITICAL = ("cryo.engine.inject", "cryo.engine.ptrace", "cryo.store.sink",
             "cryo.image.sink", "cryo.image.format")  # fmt: skip


def _checkpoint(pid: int, store: str, app: str, scope: str) -> tuple[int, Any]:
    from cryo import store as cstore

    return cstore.checkpoint(pid, store, app, scope=scope, worker=False)


def _gc(store: str, keep_last: int, keep_every: int | None, app: str) -> Any:
    from cryo import store as cstore

    return cstore.gc(store, keep_last, keep_every, app=app)


def _versions(store: str, app: str) -> dict[int, dict[str, Any]]:
    """What the daemon's database keeps of each published version of ``app`` (from the
    first record of each pmap.img alone: the whole file, maps and seal digest, was 2.7
    ms a round for a 64 MiB job)."""
    from cryo.store.layout import Store, VersionMeta

    try:
        a = Store(store).app(app)
        published = a.published()
    except CryoError:
        return {}
    info: dict[int, dict[str, Any]] = {}
    for v in published:
        try:
            meta = VersionMeta.head(a.vdir(v))
            info[v] = {"created": meta.get("created"), "memory": meta.get("memory"),
                       "stored": meta.get("new")}  # fmt: skip
        except CryoError:
            info[v] = {}
    return info


OPS: dict[str, Callable[..., Any]] = {"checkpoint": _checkpoint, "gc": _gc,
                                      "versions": _versions}  # fmt: skip


class Runner:
    """One checkpointer process, forked now; :meth:`call` runs an operation in it.

    ``forker(fn)`` runs ``fn`` (which forks a fresh runner) in a thread that lives as
    long as the daemon: the kernel sends the parent-death signal when the *thread* that
    forked a process ends, and a request's thread ends with its request.
    ``close_fds()`` names the daemon's descriptors a runner must not keep open (its
    listening sockets: a runner outliving the daemon for a moment would answer for
    it)."""

    def __init__(self, *, forker: Callable[[Callable[[], None]], Any] | None = None,
                 close_fds: Callable[[], list[int]] | None = None,
                 background: bool = False) -> None:  # fmt: skip
        self._forker = forker or (lambda fn: fn())
        self.background = background  # 10 nice values below the daemon's (the gc)
        self._close_fds = close_fds or list
        self.pid = 0
        self.served = 0
        self.cpu = 0.0  # CPU seconds the last operation took in the runner
        self._end = -1
        self._conn: Connection | None = None
        self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.set_inheritable(False)
        theirs.set_inheritable(False)
        parent = os.getpid()
        # (the daemon's listening sockets, and its ends of the other runners' pairs, which
        # would keep those from seeing the daemon close them)
        closing = [*self._close_fds(), *_ENDS]
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the runner)
            code = 70
            try:
                ours.close()
                for fd in closing:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                code = _serve(Connection(theirs), parent, self.background)
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.served = pid, 0
        self._conn = Connection(ours)
        self._end = ours.fileno()
        _ENDS.add(self._end)

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """``OPS[op](*args)`` in the runner: its result, or its error raised again.  With
        ``timeout``, the runner stops it at that bound (CryoError, the targets let
        go); one that has not answered :data:`GRACE` seconds later is killed."""
        if self._conn is None or self.served >= RECYCLE:
            self.replace()
        conn = self._conn
        assert conn is not None
        self.served += 1
        try:
            conn.send((op, args, timeout))
            late = None if timeout is None else time.monotonic() + timeout + GRACE
            while not conn.poll(1.0 if late is None else max(0.0, min(1.0,
                                                                       late - time.monotonic()))):
                if late is not None and time.monotonic() >= late:
                    self.kill()
                    raise CryoError(f"{op} did not end within {timeout:g} s, nor stop within"
                                  f" {GRACE:g} s more: its checkpointer was killed")
            kind, value, self.cpu = conn.recv()
        except (EOFError, OSError):
            status = self._reap()
            raise InternalError(f"the daemon's checkpointer {self.pid} died during {op}"
                                f" ({_describe(status)})") from None  # fmt: skip
        if kind == "exit":  # it was told to stop (and stopped what it did first)
            self._reap()
        if kind in ("error", "exit"):
            raise value
        return value

    def replace(self) -> None:
        """A fresh runner for this one (which ends first, between operations)."""
        self.close()
        self._forker(self._spawn)

    def kill(self) -> None:
        """SIGKILL: only for a runner that does not answer (stuck in the kernel)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def close(self) -> None:
        """Between operations: it reads the end and exits (told with SIGTERM if it has
        not after 10 s: another process holding our end of the pair)."""
        if self.end():
            self.wait_end()

    def end(self) -> bool:
        """Our end of the pair closed (the runner reads the end): whether it was open.
        Several runners ended first and then waited for (:meth:`wait_end`) take the
        longest one's time, not the sum."""
        if self._conn is None:
            return False
        _ENDS.discard(self._end)
        self._conn.close()
        self._conn = None
        return True

    def wait_end(self, grace: float = 10.0) -> None:
        """Wait for the ended runner to exit: SIGTERM after ``grace`` seconds, SIGKILL
        ``grace`` seconds later."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(self.pid, os.WNOHANG)[0]:
                        return
                except ChildProcessError:
                    return
                time.sleep(0.01)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        self._reap()

    def _reap(self) -> int:
        if self._conn is not None:
            _ENDS.discard(self._end)
            self._conn.close()
            self._conn = None
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _inside(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__") in _CRITICAL:
            return True
        frame = frame.f_back
    return False


def _serve(conn: Connection, parent: int, background: bool) -> int:  # pragma: no cover
    """The runner's loop: one operation at a time until the daemon goes away.  A
    ``background`` one (the daemon's gc) runs 10 nice values below the daemon: in the
    daemon's autogroup it yields to the checkpoints (a tenth of their weight) but not to
    the jobs, against which the group weighs as the daemon's --nice says.  (In a session
    of its own, at the jobs' weight, it fell behind: 26 versions of a job kept 3.)"""
    from cryo.linux import libc
    from cryo.linux.consts import PR

    libc.prctl(PR.SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the daemon died already
        return 0
    if background:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10))
    # what the daemon had when it forked us is left out of the collector's walks: they
    # would copy every page of it into this process
    gc.freeze()
    pending: list[BaseException] = []
    stop: list[bool] = []
    bound: list[float] = [0.0]

    def interrupt(exc: BaseException, frame: FrameType | None) -> None:
        if _inside(frame):  # a moment later, once out of it
            pending.append(exc)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise exc

    def stopped(_sig: int, frame: FrameType | None) -> None:
        stop.append(True)
        interrupt(KeyboardInterrupt(), frame)

    def alarm(_sig: int, frame: FrameType | None) -> None:
        interrupt(pending.pop() if pending else CryoError(
            f"checkpoint did not end within {bound[0]:g} s: stopped, its targets let go as"
            " they were"), frame)  # fmt: skip

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, stopped)
    signal.signal(signal.SIGALRM, alarm)
    while not stop:
        try:
            op, args, timeout = conn.recv()
        except (EOFError, OSError):
            return 0  # the daemon closed its end, or died
        except KeyboardInterrupt:
            return 0
        out: tuple[str, Any, float]
        cpu = time.process_time()
        try:
            try:
                bound[0] = timeout or 0.0
                if timeout:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                value = OPS[op](*args)
                out = ("ok", value, time.process_time() - cpu)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                pending.clear()
        except KeyboardInterrupt:
            out = ("exit", CryoError(f"{op} interrupted: the daemon's checkpointer was told"
                                     " to stop (its targets let go as they were)"), 0.0)
        except BaseException as err:  # the targets are let go (the engine's abort)
            out = ("error", err, 0.0)
        try:
            conn.send(out)
        except OSError:
            return 0
        except Exception as err:  # (it could not be pickled)
            conn.send(("error", InternalError(f"cannot hand back {out[0]} of {op}: {err!r}"),
                       0.0))
    return 0


__all__ = ["GRACE", "OPS", "RECYCLE", "Runner"]
