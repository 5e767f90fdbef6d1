"""The thin client: ``cryo checkpoint | restart | show`` run by a running cryod (issue 16;
docs/design.md "Start-up", docs/protocol.md "Commands").

Opt-in: ``cryo --via-daemon COMMAND ...``, or ``CRYO_DAEMON=1`` in the environment
(``CRYO_DAEMON=/path/to/cryod.sock`` names the socket too; otherwise
``$CRYO_DAEMON_SOCKET`` or /run/cryo/cryod.sock).  The client connects to the daemon's
socket, sends the command line, its environment and umask, and with SCM_RIGHTS its
fds 0, 1, 2 and its working directory; the daemon runs the command in a child of its
own that has the engine imported already, with those fds, and the client exits with
the command's code.  SIGINT, SIGTERM and SIGHUP are forwarded to it meanwhile.

Where the daemon does not take it (no daemon on the socket, a caller that is not root
or not in the daemon's namespaces, root and cgroups, an older daemon, a terminal to hand
over with ``--shell-job``, a command other than those three), :func:`run` returns None
and the ``cryo`` command runs it itself, as it would without the option: the daemon
answers an error only for a command it did not start.  A connection lost after the
daemon took the command is reported (exit 1): the command may have run.

This module is loaded by bin/cryo from its file, under ``python -S``, before anything
else: it imports only built-in modules (no ``socket``, ``json`` or ``signal``, whose
imports of ``enum`` and ``re`` would cost more than all the rest of the client).
"""

import _json
import _signal  # type: ignore[import-not-found]
import _socket
import os
import sys

ENV = "CRYO_DAEMON"
SOCKET_ENV = "CRYO_DAEMON_SOCKET"  # (cryo.daemon.protocol.SOCKET_ENV)
DEFAULT_SOCKET = "/run/cryo/cryod.sock"  # (cryo.daemon.protocol.DEFAULT_SOCKET)
OPTION = "--via-daemon"
COMMANDS = ("checkpoint", "restart", "show")  # (cryo.daemon.commands.COMMANDS)
FORWARD = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)  # (protocol.COMMAND_SIGNALS)


def split(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``argv`` (after ``cryo``) asks for the daemon (the option among the global
    options, or the environment), and ``argv`` without the option."""
    asked = False
    out = list(argv)
    for i, arg in enumerate(argv):
        if arg == OPTION:
            del out[i]
            asked = True
            break
        if not (arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"})):
            break
    value = os.environ.get(ENV, "")
    return asked or value not in ("", "0"), out


def socket_path() -> str:
    value = os.environ.get(ENV, "")
    if value.startswith("/"):
        return value
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _command(argv: list[str]) -> str | None:
    for arg in argv:
        if not (arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"})):
            return arg
    return None


def _dumps(value: object) -> str:
    """JSON of str, int, bool, None, list and dict (strings with lone surrogates, as
    os.environ has for bytes that are not UTF-8, as ``\\udcXX``: json.loads gives them
    back, and os.environ the bytes)."""
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dumps(k)}:{_dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value).__name__)


class _Ctx:  # what _json.make_scanner reads (json.JSONDecoder's attributes)
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, object] = {}


def _loads(text: str) -> object:
    value, _end = _json.make_scanner(_Ctx())(text, 0)  # type: ignore[arg-type]
    return value


def _frame(msg: object) -> bytes:
    body = _dumps(msg).encode()
    return len(body).to_bytes(4, "big") + body


def _recv_frame(sock: _socket.socket) -> object:
    """The next frame's message; None at the end of the connection."""
    buf = b""
    need = 4
    while len(buf) < need:
        chunk = sock.recv(max(need - len(buf), 4096))
        if not chunk:
            return None
        buf += chunk
        if need == 4 and len(buf) >= 4:
            need = 4 + int.from_bytes(buf[:4], "big")
    return _loads(buf[4:need].decode())


def _say(argv: list[str], text: str) -> None:
    """A line on stderr, with -v only (the global options come first)."""
    if argv and argv[0] != _command(argv):
        os.write(2, f"cryo: {text}\n".encode(errors="backslashreplace"))


def run(argv: list[str]) -> int | None:
    """``cryo ARGV`` run by the daemon: its exit code; None where the daemon did not
    take it (the caller runs it itself)."""
    command = _command(argv)
    if command not in COMMANDS or "--shell-job" in argv:
        return None
    path = socket_path()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        _say(argv, f"no daemon at {path} ({err.strerror}): the command runs here")
        return None
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        sock.close()
        return None
    mask = os.umask(0o022)
    os.umask(mask)
    try:
        here = os.getcwd()
    except OSError:
        here = None
    frame = _frame({"op": "command", "args": {
        "argv": argv, "env": dict(os.environ), "umask": mask, "cwd": here}})
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, cwd))
    state: dict[str, bool] = {"sent": False}
    pending: list[int] = []

    def forward(sig: int, _frame_: object) -> None:
        if not state["sent"]:
            pending.append(sig)
            return
        try:
            sock.sendall(_frame({"op": "command_signal", "args": {"signal": sig}}))
        except OSError:  # (the daemon gone: the reply says so)
            return

    old = {sig: _signal.signal(sig, forward) for sig in FORWARD}
    try:
        try:
            sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(frame):
                sock.sendall(frame[sent:])
        except OSError as err:  # (ENOTCONN, EBADF: fd 0-2 closed; the daemon gone)
            _say(argv, f"cannot send the command to {path} ({err}): the command runs here")
            return None
        finally:
            os.close(cwd)
        state["sent"] = True
        for sig in pending:
            forward(sig, None)
        try:
            reply = _recv_frame(sock)
        except (OSError, ValueError) as err:
            reply = err
        if not isinstance(reply, dict) or "ok" not in reply:
            os.write(2, f"cryo: error: lost the connection to cryod at {path} ({reply}):"
                        " the command may have run\n".encode())
            return 1
        if not reply["ok"]:  # (not run: the daemon answers so before it starts one)
            _say(argv, f"the daemon did not take the command ({reply.get('error')}:"
                       f" {reply.get('message')}): the command runs here")
            return None
        result = reply.get("result")
        code = result.get("exit_code") if isinstance(result, dict) else None
        return code if isinstance(code, int) else 1
    finally:
        for sig, handler in old.items():
            _signal.signal(sig, handler)
        sock.close()


__all__ = ["COMMANDS", "ENV", "OPTION", "run", "socket_path", "split"]
