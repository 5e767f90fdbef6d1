"""The daemon's protocol, every message in one place (docs/protocol.md, "Daemon").

A connection to the unix socket carries frames: a 4-byte big-endian length, then that
many bytes of UTF-8 JSON, one object.  The client sends a request ``{"op": NAME,
"args": {...}}`` and reads one reply per request: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": CLASS, "message": TEXT, "exit_code": N}`` where CLASS is the
name of a class of :mod:`cryo.errors` (the client raises it again, the CLI exits with
its code).  Several requests may follow each other on one connection.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

from cryo import errors
from cryo.errors import CryoError, ExitCode

DEFAULT_SOCKET = "/run/cryo/cryod.sock"
DEFAULT_STATE = "/var/lib/cryo/daemon"  # the daemon's SQLite state
DEFAULT_STORE = "/var/lib/cryo/store"  # the store of jobs that name none
SOCKET_ENV = "CRYO_DAEMON_SOCKET"  # the client's default socket, when set
MAX_FRAME = 16 << 20
_LEN = struct.Struct(">I")


class ProtocolError(CryoError):
    """A malformed frame or message."""


@dataclass(frozen=True)
class Field:
    name: str
    type: type | tuple[type, ...]
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Op:
    name: str
    fields: tuple[Field, ...]
    reply: str
    doc: str
    root_only: bool = False


_NAME = Field("name", str, True, "the job's name (letters, digits, ._+-)")
_INT = (int,)
_OPT_INT = (int, type(None))

OPS: dict[str, Op] = {op.name: op for op in (
    Op("ping", (), "{version, pid, uid, gid}: the daemon's and the caller's identity",
       "is the daemon there; who am I to it"),
    Op("jobs", (), "[job, ...] (every job for root; the caller's own otherwise)",
       "list jobs"),
    Op("job_get", (_NAME,), "job", "one job"),
    Op("job_add", (
        _NAME,
        Field("pid", _OPT_INT, False, "adopt this running process (owned by the caller)"),
        Field("cmd", (list, type(None)), False, "or start this command (argv) as the caller"),
        Field("cwd", (str, type(None)), False, "the command's working directory"),
        Field("env", (dict, type(None)), False, "the command's environment"),
        Field("output", (str, type(None)), False, "the command's stdout and stderr file"),
        Field("every", (int, float, type(None)), False, "seconds between checkpoints"),
        Field("keep_last", _OPT_INT, False, "retention: keep the last N versions"),
        Field("keep_every", _OPT_INT, False, "retention: also every version multiple of K"),
        Field("store", (str, type(None)), False, "the store (root only; default the daemon's)"),
        Field("scope", (str, type(None)), False, "process | tree (default: tree for a"
              " command, by `cryo run`'s mark for a pid)"),
        Field("restart_on_failure", (bool,), False, "restart it when it dies by a signal"),
        Field("max_restarts", _OPT_INT, False, "at most N restarts (default 3)"),
    ), "job", "add a job: adopt a pid or start a command"),
    Op("job_rm", (_NAME, Field("kill", (bool,), False, "also kill its processes")),
       "{}", "forget a job (its versions stay in the store)"),
    Op("job_checkpoint", (_NAME,), "{version, memory, stored, frozen, seconds}",
       "checkpoint now (waits for a checkpoint in progress)"),
    Op("job_restart", (_NAME, Field("version", _OPT_INT, False, "default the latest")),
       "{pid, version}", "kill what runs of it, then restart it from a version"),
    Op("job_versions", (_NAME,), "[{version, created, memory, stored, frozen, seconds}]",
       "the job's versions in the store"),
    Op("job_history", (_NAME, Field("limit", _INT, False, "the last N (default 100)")),
       "[{id, kind, due, started, finished, status, error, message}]",
       "the job's attempts (checkpoints, restarts) and their results"),
    Op("job_prepare", (_NAME,), "{pids}", "staged: callbacks run, processes frozen"),
    Op("job_write", (_NAME,), "{version, memory, stored, frozen}",
       "staged: write the frozen state as a new version (processes stay frozen)"),
    Op("job_resume", (_NAME,), "{}", "staged: let the processes go on"),
    Op("job_abort", (_NAME,), "{}", "staged: let them go on as before, nothing kept"
       " (a version already written stays)"),
    # the thin client's (cryo.cli.thin, docs/protocol.md "Commands"): a cryo command line
    # run by a child of the daemon; the request carries, with SCM_RIGHTS, the caller's
    # fds 0, 1, 2 and its working directory (an O_PATH fd), in that order
    Op("command", (
        Field("argv", list, True, "the command line after `cryo` (checkpoint, restart, show)"),
        Field("env", dict, True, "the command's environment"),
        Field("umask", _INT, True, "the command's umask"),
        Field("cwd", (str, type(None)), False, "the working directory's path (for messages;"
              " the fd is the one used)"),
    ), "{exit_code} once the command ended (an error reply: it was not run)",
       "run a cryo command for a root caller, in its fds, cwd, umask, environment, nice"
       " value and limits", root_only=True),
    Op("command_signal", (Field("signal", _INT, True, "SIGINT, SIGTERM or SIGHUP"),),
       "none", "on a connection running a command: send it this signal", root_only=True),
)}
COMMAND_FDS = 4  # the fds a command request carries: 0, 1, 2 and the cwd
COMMAND_SIGNALS = (1, 2, 15)  # what command_signal forwards: SIGHUP, SIGINT, SIGTERM


def check_request(msg: Any) -> tuple[Op, dict[str, Any]]:
    """The op and its arguments, checked against the declaration (ProtocolError)."""
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("a request is an object with an \"op\"")
    op = OPS.get(msg["op"])
    if op is None:
        raise ProtocolError(f"unknown op {msg['op']!r}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("\"args\" is an object")
    known = {f.name: f for f in op.fields}
    for key in args:
        if key not in known:
            raise ProtocolError(f"{op.name}: unknown argument {key!r}")
    for f in op.fields:
        if f.name not in args or args[f.name] is None:
            if f.required:
                raise ProtocolError(f"{op.name}: argument {f.name!r} is required")
            continue
        value = args[f.name]
        types = f.type if isinstance(f.type, tuple) else (f.type,)
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(f"{op.name}: {f.name} is not a number")
        if not isinstance(value, types):
            raise ProtocolError(f"{op.name}: {f.name} has the wrong type")
    return op, args


def request(op: str, **args: Any) -> dict[str, Any]:
    return {"op": op, "args": {k: v for k, v in args.items() if v is not None}}


def reply_ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def reply_error(err: BaseException) -> dict[str, Any]:
    if isinstance(err, CryoError):
        return {"ok": False, "error": type(err).__name__, "message": str(err),
                "exit_code": err.exit_code}  # fmt: skip
    return {"ok": False, "error": "InternalError",
            "message": f"internal error (a bug in cryod): {type(err).__name__}: {err}",
            "exit_code": ExitCode.INTERNAL}  # fmt: skip


def raise_reply(reply: Any) -> Any:
    """The result of a reply, or its error raised as the class it names."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ProtocolError("malformed reply from the daemon")
    if reply["ok"]:
        return reply.get("result")
    cls = getattr(errors, str(reply.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, CryoError)):
        cls = CryoError
    err = cls(str(reply.get("message", "the daemon failed")))
    code = reply.get("exit_code")
    if isinstance(code, int) and code != err.exit_code:
        err.exit_code = code  # a class this client does not know: keep the daemon's code
    raise err


def send(sock: socket.socket, msg: Any) -> None:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes is too large")
    sock.sendall(_LEN.pack(len(data)) + data)


def send_fds(sock: socket.socket, msg: Any, fds: list[int]) -> None:
    """:func:`send`, with ``fds`` passed (SCM_RIGHTS) on the frame's first byte."""
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes is too large")
    frame = _LEN.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], fds)
    if sent < len(frame):
        sock.sendall(frame[sent:])


MAX_FDS = 8  # fds taken with one frame (more are closed by the kernel)


def _read_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if fds is not None:  # (fds ride on the first byte: taken with the length)
            chunk, got, _, _ = socket.recv_fds(sock, n - len(buf), MAX_FDS,
                                               socket.MSG_CMSG_CLOEXEC)  # fmt: skip
            fds.extend(got)
        else:
            chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed in the middle of a frame")
            return None
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket, fds: list[int] | None = None) -> Any:
    """The next message, or None at the end of the connection; with ``fds``, the fds
    that came with it are added to that list (the caller closes them)."""
    head = _read_exact(sock, _LEN.size, fds)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes is too large")
    body = _read_exact(sock, n) if n else b""
    if body is None:
        raise ProtocolError("connection closed in the middle of a frame")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"a frame is not JSON: {err}") from err


__all__ = ["COMMAND_FDS", "COMMAND_SIGNALS", "DEFAULT_SOCKET", "DEFAULT_STATE",
           "DEFAULT_STORE", "MAX_FDS", "OPS", "SOCKET_ENV", "Field", "Op", "ProtocolError",
           "check_request", "raise_reply", "recv", "reply_error", "reply_ok", "request",
           "send", "send_fds"]
