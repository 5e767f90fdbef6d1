"""The worker that holds a checkpoint's targets, so that its caller may die at any time.

While a checkpoint runs system calls inside a frozen target, the target's registers are
ours: if the process holding them were killed outright (SIGKILL), the kernel would let
the target go in that state.  So a session's phases run in a child, forked when the
session is made: killing the caller only tells the worker (PR_SET_PDEATHSIG: SIGTERM),
which stops at the next safe point, puts every target back as it was, lets it go and
cleans up.  Signals that stop it (SIGINT, SIGTERM, SIGHUP, SIGQUIT) and the watchdog
that bounds how long the targets stay frozen (SIGALRM) act at once, except in the
middle of an injected system call or of the image's commit: there a moment later.
The caller's own signal handlers and mask are never touched.

The caller sends a phase's name and arguments over a socket pair and waits for the
answer (pickled; errors are raised again in the caller); progress reports come the same
way.
"""

from __future__ import annotations

import _pickle as pickle  # (pickle's own C code: pickle.py is 1 ms of start-up more)
import _socket
import contextlib
import gc
import logging
import os
import select
import signal
import struct
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from cryo.errors import CryoError, InternalError, Interrupted

log = logging.getLogger(__name__)
_HEAD = struct.Struct("<Q")


class Connection:
    """Pickled messages over a stream socket, each behind its length (what
    multiprocessing.connection does, without importing multiprocessing: a small
    checkpoint's start-up counts)."""

    def __init__(self, sock: _socket.socket) -> None:  # (socket.socket is one)
        self._sock = sock

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=-1)  # (the highest)
        self._sock.sendall(_HEAD.pack(len(data)) + data)

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = self._sock.recv(n - len(buf))
            if not got:
                raise EOFError("the other side closed the connection")
            buf += got
        return bytes(buf)

    def recv(self) -> Any:
        (n,) = _HEAD.unpack(self._exactly(_HEAD.size))
        return pickle.loads(self._exactly(n))  # (our own worker, a socket pair)

    def poll(self, timeout: float) -> bool:
        """A message (or the end) can be read within ``timeout`` seconds."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        self._sock.close()


class Worker:
    """Runs ``target``'s methods in a child process; ``target`` is copied there by fork."""

    def __init__(self, target: Any, progress: Callable[[int, int], None] | None = None) -> None:
        self._progress = progress
        # (_socket's: socket.py would be 3 ms of a small program's checkpoint more)
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        # the objects that exist now are left out of the collector's walks (in both
        # processes) so that the child does not write to every page it shares with us;
        # not if the caller froze some itself (unfreezing would undo theirs)
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            pid = os.fork()
        finally:
            if freeze and os.getpid() == parent:
                gc.unfreeze()
        if pid == 0:  # pragma: no cover (the child; its coverage is the tests' own)
            ours.close()
            # numpy, if the child is the first to import it (cow.split, the store's page
            # maps): OpenBLAS would start a thread per CPU, spinning for work that never
            # comes, on the CPUs the checkpoint needs (h5, session 9: a third of a
            # 1,000-connection checkpoint's samples).  The child runs no program of
            # anyone's, so its environment is its own.
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            code = 0
            try:
                code = _serve(target, Connection(theirs), parent,
                              bool(progress))  # fmt: skip
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self._conn: Connection | None = Connection(ours)

    def call(self, name: str, *args: Any) -> Any:
        conn = self._conn
        if conn is None:
            raise CryoError("this checkpoint session is closed")
        try:
            conn.send(("call", name, args))
        except OSError:
            status = self._reap()
            raise InternalError(f"the checkpoint worker {self.pid} died"
                                f" ({_status(status)})") from None  # fmt: skip
        interrupted = False
        while True:
            try:
                if not conn.poll(0.2):
                    continue
                msg = conn.recv()
            except KeyboardInterrupt:  # tell the worker; it answers once it has let go
                if not interrupted:
                    interrupted = True
                    os.kill(self.pid, signal.SIGINT)
                continue
            except (EOFError, OSError):
                status = self._reap()
                raise InternalError(f"the checkpoint worker {self.pid} died"
                                    f" ({_status(status)})") from None  # fmt: skip
            if msg[0] == "progress":
                if self._progress is not None:
                    self._progress(msg[1], msg[2])
                continue
            if msg[0] == "ok":
                if interrupted:
                    raise KeyboardInterrupt
                return msg[1]
            err = msg[1]
            where = getattr(err, "worker_traceback", None)
            if where:
                log.debug("raised in the worker:\n%s", where)
            raise err

    def close(self) -> None:
        """Done: a checkpoint still in progress is aborted by the worker, which exits."""
        if self._conn is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send(("close",))
        self._conn.close()
        self._conn = None
        self._reap()

    def _reap(self) -> int:
        while True:
            try:
                _, status = os.waitpid(self.pid, 0)
                return status
            except ChildProcessError:
                return 0
            except KeyboardInterrupt:
                os.kill(self.pid, signal.SIGINT)

    def __del__(self) -> None:
        if getattr(self, "_conn", None) is not None:
            self.close()


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _serve(target: Any, conn: Connection, parent: int, progress: bool) -> int:
    """The worker's loop: run each phase asked for; abort the session when the caller
    goes away, closes, or we are told to stop."""
    from cryo.linux import libc
    from cryo.linux.consts import PR

    libc.prctl(PR.SET_PDEATHSIG, signal.SIGTERM)

    pending: list[BaseException] = []

    def interrupt(exc: BaseException, frame: FrameType | None) -> None:
        """Raise ``exc`` here, unless we are in the middle of something that must not be
        cut short (an injected call: the task's registers are ours; the commit of the
        image): then a moment later, once out of it."""
        if target.critical or (_inside(frame, _CRITICAL) and not _seizing(frame)):
            pending.append(exc)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise exc

    def stop(_sig: int, frame: FrameType | None) -> None:
        interrupt(KeyboardInterrupt(), frame)

    def alarm(_sig: int, frame: FrameType | None) -> None:
        from cryo.engine.session import FreezeTimeout

        interrupt(pending.pop() if pending else FreezeTimeout(
            "the targets were frozen longer than the watchdog allows; let go"), frame)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGALRM, alarm)
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

    if progress:
        target.progress = lambda done, total: send(("progress", done, total))
    if os.getppid() != parent:  # the caller is gone already
        return 130
    finished = False  # no target held any more: nothing to undo
    failed: BaseException | None = None  # the session ended while idle: why
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break  # the caller is gone
        except BaseException as err:  # told to stop, or the watchdog, between phases
            if not finished:
                with contextlib.suppress(BaseException):
                    target.abort()
                finished = True
                failed = Interrupted("interrupted") if isinstance(err, KeyboardInterrupt) \
                    else err  # fmt: skip
            continue
        if msg[0] == "close":
            break
        _, name, args = msg
        if failed is not None:
            send(("err", _portable(failed)))
            continue
        try:
            value = getattr(target, name)(*args)
        except BaseException as err:  # a failed phase: every target let go first
            try:
                with contextlib.suppress(BaseException):
                    target.abort()
            finally:
                finished = True
                failed = Interrupted("interrupted") if isinstance(err, KeyboardInterrupt) \
                    else err  # fmt: skip
            send(("err", _portable(failed)))
            continue
        send(("ok", value))
        finished = finished or name in ("run", "resume", "abort")
    if not finished:  # nothing more to do if this fails too: the targets are let go
        with contextlib.suppress(BaseException):
            target.abort()
    return 0


_PTRACE = "cryo.engine.ptrace"
_CRITICAL = ("cryo.engine.inject", _PTRACE)


def _seizing(frame: FrameType | None) -> bool:
    """Inside Tracee.seize: waiting for a thread's first stop, nothing of it changed yet
    (a thread that never stops must not defer the watchdog for ever: seize lets it go)."""
    while frame is not None:
        if frame.f_code.co_name == "seize" and frame.f_globals.get("__name__") == _PTRACE:
            return True
        frame = frame.f_back
    return False


def _inside(frame: FrameType | None, modules: tuple[str, ...]) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__") in modules:
            return True
        frame = frame.f_back
    return False


def _portable(err: BaseException) -> BaseException:
    """An error as the caller will see it: ours as they are, OSError translated (each
    carrying where it was raised, which the caller logs at debug level), anything else as
    a bug in cryo with its traceback."""
    import traceback

    text = "".join(traceback.format_exception(err)).rstrip()
    if isinstance(err, CryoError | OSError):
        if isinstance(err, OSError):
            from cryo.errors import translate_oserror

            err = translate_oserror(err, pid=getattr(err, "pid", None))
        err.worker_traceback = text  # type: ignore[attr-defined]  # logged by the caller
        return err
    return InternalError(f"{type(err).__name__}: {err}\n{text}")
