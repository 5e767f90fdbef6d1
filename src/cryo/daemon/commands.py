"""cryod's command server: a ``cryo`` command line run for a thin client (issue 16;
docs/protocol.md, "Commands"; docs/design.md, "Start-up").

A small program's ``cryo checkpoint`` or ``cryo restart`` spends most of its time
starting an interpreter and importing the engine.  The daemon has both already: for a
root caller, cryo.cli.thin sends the command line, its environment and umask, and with
SCM_RIGHTS its fds 0-2 and its working directory; the daemon's request thread checks
the caller and hands all of it, with the connection, to this server.

The server is one process, forked from the daemon at its start, after the engine was
preloaded and before any other thread of the daemon ran (so no lock of another thread is
held in it, nor in what it forks), with every fd of the daemon closed but its stdio. It
is single-threaded; for each command it has a child become the caller's command (one
forked ahead while the server was idle and set up as far as it can be without the
command, waiting for it; else one forked then): the caller's fds as 0-2, its cwd, umask,
environment, nice value and resource limits, a session of its own (out of the daemon's
autogroup, whose nice value is the daemon's), the signal dispositions and mask of a
fresh interpreter, the daemon's logging and exit handlers left out; then ``cryo.cli``
parses and runs the command as the ``cryo`` command would, and the child exits with its
code. The server holds the child unreaped until it ends, so that the signals the client
forwards (``command_signal``) reach that child and no other process; a client that goes
away is a hang-up (SIGHUP, as for a command whose terminal closed). When the child ends,
the server answers the client with its exit code (128 + N for a child killed by signal
N) and closes the connection. A restored process's parent is that child; once it exits,
the server (a child subreaper), which reaps it as soon as it ends."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import Any

from cryo.daemon import protocol as P
from cryo.errors import CryoError

# the commands a thin client may send (their parsers are built once, in the server)
COMMANDS = ("checkpoint", "restart", "show")
_KEEP: list[Any] = []  # what the children replace, kept alive: its finalizer would close fds
# the spare (a command's child forked ahead) is forked once the server was idle this long
# (ms): a fork and set-up right after a command, while the caller may be starting the
# next, were in its way (a restart's wall 1.15x in a back-to-back run)
SPARE_IDLE = 50


def command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (after the global options), as cryo.cli reads it."""
    for arg in argv:
        if arg in ("-v", "--verbose", "--via-daemon") or (
                arg.startswith("-v") and set(arg[1:]) == {"v"}):
            continue
        return arg
    return None


class CommandServer:
    """The server process, forked now (from a thread that lives as long as the daemon:
    its parent-death signal is bound to the thread that forked it)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.set_inheritable(False)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the server)
            code = 70
            try:
                ours.close()
                code = _serve(theirs, parent)
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self._sock: socket.socket | None = ours
        self._lock = threading.Lock()

    @property
    def fds(self) -> list[int]:
        """The daemon's end of the server's pair (that other forks of the daemon close)."""
        return [self._sock.fileno()] if self._sock is not None else []

    def hand(self, conn: socket.socket, fds: list[int], job: dict[str, Any]) -> None:
        """Give the server the client's connection, its fds and what to run
        (CryoError, and nothing run, if the server is not there)."""
        with self._lock:
            if self._sock is None:
                raise CryoError("the daemon's command server is stopped")
            try:
                P.send_fds(self._sock, job, [conn.fileno(), *fds])
            except OSError as err:  # (it died: not started again, see the module's text)
                raise CryoError(f"the daemon's command server is gone: {err}") from None

    def close(self) -> None:
        """The server takes no more commands, and ends (those running lose their answer:
        docs/protocol.md)."""
        with self._lock:
            if self._sock is None:
                return
            self._sock.close()
            self._sock = None
        for _ in range(200):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            threading.Event().wait(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def same_place(pid: int) -> str | None:
    """What differs between process ``pid`` and the daemon that a command run for it
    would get wrong (its namespaces, root, cgroups), or None."""
    for ns in sorted(os.listdir("/proc/self/ns")):
        try:
            if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
                return f"its {ns} namespace"
        except FileNotFoundError:
            continue  # (a kind this kernel does not name for it)
        except OSError as err:
            return f"its {ns} namespace ({err.strerror})"
    try:
        theirs, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return "its root directory"
        with open(f"/proc/{pid}/cgroup") as a, open("/proc/self/cgroup") as b:
            if a.read() != b.read():
                return "its cgroups"
    except OSError as err:
        return f"its root and cgroups ({err.strerror})"
    return None


def caller_limits(pid: int) -> dict[str, Any]:
    """The nice value and resource limits of process ``pid``, for its command."""
    import resource

    limits = []
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            res = getattr(resource, name)
            with contextlib.suppress(OSError, ValueError):
                limits.append([res, *resource.prlimit(pid, res)])
    return {"nice": os.getpriority(os.PRIO_PROCESS, pid), "rlimits": limits}


# -- the server ---------------------------------------------------------------------------


class _Running:
    __slots__ = ("buf", "conn", "pid")

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid, self.conn = pid, conn
        self.buf = b""


def _serve(ctl: socket.socket, parent: int) -> int:  # pragma: no cover (the server)
    """The server's loop.  It is a child subreaper: the processes a command leaves (a
    restart's, detached) come to it when the command's child exits, and it reaps them
    as soon as they end (their zombies would hold the pids a restart needs back)."""
    from cryo.linux import libc
    from cryo.linux.consts import PR

    libc.prctl(PR.SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return 0
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the daemon's terminal's ^C: the daemon's)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    import faulthandler

    with contextlib.suppress(RuntimeError):
        faulthandler.unregister(signal.SIGUSR1)  # (the daemon's: its log's fd goes now)
    keep = {0, 1, 2, ctl.fileno()}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))  # (their objects live on, unused, until we exit)
    parsers = _parsers()
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)  # (the byte on wake_w)
    gc.freeze()  # (the children's collections would copy every page they walk)
    spare = _Spares(_fork_spare(parsers))  # a command's child forked ahead
    running: dict[int, _Running] = {}  # by pid: unreaped until we answer
    conns: dict[int, _Running] = {}  # by the connection's fd, while it is open
    poll = select.poll()
    poll.register(ctl, select.POLLIN)
    poll.register(wake_r, select.POLLIN)
    open_ctl = True
    while open_ctl or running:
        want = spare.now is None and open_ctl and not spare.off
        try:
            events = poll.poll(SPARE_IDLE if want else None)
        except InterruptedError:
            continue
        if not events and want:  # (idle a while: not in a command's way)
            spare.now = _fork_spare(parsers)
        for fd, _ in events:
            if fd == ctl.fileno():
                fds: list[int] = []
                try:
                    job = P.recv(ctl, fds)
                except (OSError, P.ProtocolError):
                    job = None
                if job is None:
                    poll.unregister(ctl)
                    open_ctl = False
                    for f in fds:
                        os.close(f)
                    continue
                r = _start(job, fds, parsers, spare)
                if r is not None:
                    running[r.pid] = r
                    conns[r.conn.fileno()] = r
                    poll.register(r.conn, select.POLLIN)
            elif fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(running, conns, poll, spare)
            elif fd in conns:
                r = conns[fd]
                if not _client_says(r):  # it went away: a hang-up
                    poll.unregister(fd)
                    del conns[fd]
                    os.kill(r.pid, signal.SIGHUP)  # (unreaped: it is that child)
        if not open_ctl and spare.now is not None:  # (its end closed: it exits)
            _drop_spare(spare)
    return 0


def _reap(running: dict[int, _Running], conns: dict[int, _Running], poll: select.poll,
          spare: _Spares) -> None:  # fmt: skip  # pragma: no cover (the server)
    """Every child that ended: a command's is answered with its code, an orphan's is
    only reaped (and a spare that ended before it had a command, forgotten: no more
    spares then, each command's child forked for it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if spare.now is not None and spare.now.pid == pid:
            spare.now.sock.close()
            spare.now, spare.off = None, True
        r = running.pop(pid, None)
        if r is None:
            continue  # (an orphan)
        code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
            128 + os.WTERMSIG(status)  # fmt: skip
        if conns.pop(r.conn.fileno(), None) is not None:
            poll.unregister(r.conn)
        with contextlib.suppress(OSError):
            r.conn.settimeout(5.0)
            P.send(r.conn, P.reply_ok({"exit_code": code}))
        r.conn.close()


def _parsers() -> dict[str, Any]:
    """The parser of each command, built once (each child gets a copy), and what the
    commands import beyond the daemon's preload."""
    from cryo import cli, launch  # noqa: F401 (launch: a checkpoint's scope, RUN_MARK)

    return {c: cli.build_parser([c]) for c in COMMANDS}


def _client_says(r: _Running) -> bool:  # pragma: no cover (the server)
    """Read what the client sent (command_signal frames); False once it is gone."""
    try:
        data = r.conn.recv(4096, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    if not data:
        return False
    r.buf += data
    while len(r.buf) >= 4:
        n = int.from_bytes(r.buf[:4], "big")
        if n > 4096:
            return False  # (no such frame on this connection)
        if len(r.buf) < 4 + n:
            break
        frame, r.buf = r.buf[4:4 + n], r.buf[4 + n:]
        try:
            msg = json.loads(frame)
            sig = msg["args"]["signal"] if msg.get("op") == "command_signal" else None
        except (ValueError, TypeError, KeyError, AttributeError):
            return False
        if sig in P.COMMAND_SIGNALS:
            os.kill(r.pid, sig)
    return True


class _Spare:
    __slots__ = ("pid", "sock")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock = pid, sock


class _Spares:
    """The spare (or None), and whether spares are off (one ended without a command)."""

    __slots__ = ("now", "off")

    def __init__(self, now: _Spare | None) -> None:
        self.now, self.off = now, False


def _fork_spare(parsers: dict[str, Any]) -> _Spare | None:  # pragma: no cover (the server)
    """A command's child forked ahead and set up as far as no command is needed (its
    fork, the signal state, its session, the daemon's fds, logging and exit handlers
    gone: 5-7 ms and ~400 page faults off the command's path); it waits on its own
    socket pair for the job and its fds (:func:`_start`), or ends when that closes."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        code = 70
        try:
            signal.set_wakeup_fd(-1)  # (the server's, closed below: not the command's)
            ours.close()
            code = _spare(theirs, parsers)
        finally:
            os._exit(code)
    theirs.close()
    return _Spare(pid, ours)


def _drop_spare(spare: _Spares) -> None:  # pragma: no cover (the server)
    """The spare told to go (its socket closed) and reaped."""
    s, spare.now = spare.now, None
    if s is None:
        return
    s.sock.close()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(s.pid, 0)


def _spare(sock: socket.socket, parsers: dict[str, Any]) -> int:  # pragma: no cover
    """The spare's life: set up, wait for the job, run it as :func:`_child` does."""
    _ready(keep=sock.fileno())
    fds: list[int] = []
    try:
        job = P.recv(sock, fds)
    except (OSError, P.ProtocolError):
        job = None
    sock.close()
    if job is None or len(fds) != P.COMMAND_FDS:
        return 0  # (the server is gone, or took no command)
    return _child(job, fds, parsers, ready=True)


def _start(job: dict[str, Any], fds: list[int], parsers: dict[str, Any],
           spare: _Spares) -> _Running | None:  # fmt: skip  # pragma: no cover
    """Fork the child for ``job`` (or hand it to the spare); the server's side of it
    (None if the request is malformed: the connection is closed, which the client
    reports)."""
    if len(fds) != 1 + P.COMMAND_FDS:
        for f in fds:
            os.close(f)
        return None
    conn = socket.socket(fileno=fds[0])
    s, spare.now = spare.now, None
    if s is not None:
        try:
            P.send_fds(s.sock, job, fds[1:])
            handed = True
        except OSError:  # (it ended meanwhile: reaped as an orphan; a fork of our own)
            handed = False
        s.sock.close()  # (it has what it needs: no more from us)
        if handed:
            for f in fds[1:]:
                os.close(f)
            conn.setblocking(True)
            return _Running(s.pid, conn)
    try:
        pid = os.fork()
    except OSError as err:
        with contextlib.suppress(OSError):
            P.send(conn, P.reply_error(CryoError(f"cryod cannot fork the command: {err}")))
        conn.close()
        for f in fds[1:]:
            os.close(f)
        return None
    if pid == 0:
        code = 70
        try:
            signal.set_wakeup_fd(-1)  # (the server's, closed below: not the command's)
            code = _child(job, fds[1:], parsers)
        finally:
            os._exit(code)
    for f in fds[1:]:
        os.close(f)
    conn.setblocking(True)
    return _Running(pid, conn)


def _as_worker(pid: int, dest: Any, *, worker: bool = True, **options: Any
               ) -> Any:  # fmt: skip  # pragma: no cover (a command's child)
    """cryo.engine.dump.checkpoint in a command's child, which is the worker itself
    instead of forking one (a fork of this process and its exit: half of a small
    program's checkpoint, 30 of 64 ms measured): the session runs here with the
    worker's discipline (engine/worker.py): SIGTERM, SIGHUP, SIGINT and SIGQUIT (the
    client's, forwarded; its hang-up) stop it at the next safe point, never inside an
    injected call, a ptrace step or the image's commit; the watchdog's SIGALRM bounds
    the freeze; every target is let go as it was on any failure.  As for the worker,
    only a SIGKILL of this process cuts it short anywhere."""
    from cryo.engine import worker as W
    from cryo.engine.session import Checkpoint, FreezeTimeout
    from cryo.errors import Interrupted, translate_oserror

    target = Checkpoint(pid, dest, in_worker=True, **options)
    pending: list[BaseException] = []

    def interrupt(exc: BaseException, frame: Any) -> None:
        if target.critical or W._inside(frame, W._CRITICAL):
            pending.append(exc)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise exc

    def stop(_sig: int, frame: Any) -> None:
        interrupt(KeyboardInterrupt(), frame)

    def alarm(_sig: int, frame: Any) -> None:
        interrupt(pending.pop() if pending else FreezeTimeout(
            "the targets were frozen longer than the watchdog allows; let go"), frame)

    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGALRM)
    old = {sig: signal.signal(sig, alarm if sig == signal.SIGALRM else stop)
           for sig in signals}  # fmt: skip
    try:
        try:
            return target.run()
        except BaseException as err:
            with contextlib.suppress(BaseException):
                target.abort()
            if isinstance(err, KeyboardInterrupt):
                raise Interrupted("interrupted") from None
            if isinstance(err, OSError):
                raise translate_oserror(err, pid=pid) from err
            raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _ready(keep: int = -1) -> None:  # pragma: no cover (a command's child)
    """What a command's child is before it knows its command: the signal state of a
    fresh interpreter, a session of its own, none of the server's fds but 0-2 (and
    ``keep``), the daemon's logging and exit handlers left out, the engine's checkpoint
    run in this process (:func:`_as_worker`)."""
    import atexit
    import logging

    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):  # fmt: skip
        signal.signal(sig, signal.SIG_DFL)
    top = os.sysconf("SC_OPEN_MAX")
    if keep >= 3:
        os.closerange(3, keep)  # (their objects are never freed here)
        os.closerange(keep + 1, top)
    else:
        os.closerange(3, top)
    os.setsid()
    root = logging.getLogger()
    _KEEP.append(root.handlers[:])
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    atexit._clear()  # (the daemon's exit handlers are not the command's)
    from cryo.engine import dump  # (its checkpoint, in this child only: _as_worker)

    dump.checkpoint = _as_worker


def _child(job: dict[str, Any], fds: list[int], parsers: dict[str, Any],
           ready: bool = False) -> int:  # fmt: skip  # pragma: no cover (a command's child)
    """Become the caller's command, run it, its exit code (``ready``: a spare, which
    did :func:`_ready` before its command came)."""
    import atexit
    import io
    import resource

    try:
        for i in range(3):
            os.dup2(fds[i], i)
        os.fchdir(fds[3])
        if ready:
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        else:
            _ready()  # (which closes fds[...] too)
        os.umask(job["umask"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in job["env"].items()})
        import time

        time.tzset()  # (the caller's TZ, for the times a command prints)
        for res, soft, hard in job["rlimits"]:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(res, (soft, hard))
        os.setpriority(os.PRIO_PROCESS, 0, job["nice"])
    except (OSError, ValueError) as err:  # (ValueError: a name putenv refuses)
        os.write(2, f"cryo: error: cryod could not set up the command: {err}\n".encode())
        return 1
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    _KEEP.extend((sys.stdin, sys.stdout, sys.stderr))
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), errors="strict")  # noqa: SIM115
    sys.stdout, sys.stderr = (
        io.TextIOWrapper(open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False),  # noqa: SIM115
                         errors=errors, line_buffering=os.isatty(fd) or unbuffered,
                         write_through=unbuffered)
        for fd, errors in ((1, "strict"), (2, "backslashreplace")))  # fmt: skip
    argv = [str(a) for a in job["argv"]]
    sys.argv = ["cryo", *argv]
    from cryo import cli

    try:
        command = cli._command(argv)
        parser = parsers.get(command) if command else None
        code = cli.run(parser or cli.build_parser(argv), argv)
    except SystemExit as exit:  # (argparse: a bad command line, --help)
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if not isinstance(exit.code, (int, type(None))):
            print(exit.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


__all__ = ["COMMANDS", "CommandServer", "caller_limits", "same_place"]
