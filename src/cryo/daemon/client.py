"""The Python client of cryod: one method per message of cryo.daemon.protocol."""

from __future__ import annotations

import os
import socket
from typing import Any

from cryo.daemon import protocol as P
from cryo.errors import CryoError


def default_socket() -> str:
    return os.environ.get(P.SOCKET_ENV) or P.DEFAULT_SOCKET


class Client:
    """A connection to the daemon; every call raises the daemon's error as the
    cryo.errors class it names (with its exit code)."""

    def __init__(self, path: str | None = None, timeout: float | None = None) -> None:
        self.path = path or default_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except OSError as err:
                s.close()
                raise CryoError(f"cannot reach cryod at {self.path}: {err.strerror or err}"
                                " (is the daemon running? cryo daemon --socket PATH)",
                                path=self.path) from err  # fmt: skip
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Any:
        s = self._connect()
        try:
            P.send(s, P.request(op, **args))
            reply = P.recv(s)
        except OSError as err:
            self.close()
            raise CryoError(f"lost the connection to cryod: {err}", path=self.path) from err
        if reply is None:
            self.close()
            raise CryoError("cryod closed the connection without a reply", path=self.path)
        return P.raise_reply(reply)

    # -- the messages -------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return dict(self.call("ping"))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.call("jobs"))

    def job(self, name: str) -> dict[str, Any]:
        return dict(self.call("job_get", name=name))

    def add(self, name: str, *, pid: int | None = None, cmd: list[str] | None = None,
            cwd: str | None = None, env: dict[str, str] | None = None,
            output: str | None = None, every: float | None = None,
            keep_last: int | None = None, keep_every: int | None = None,
            store: str | None = None, scope: str | None = None,
            restart_on_failure: bool = False,
            max_restarts: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Adopt ``pid`` or start ``cmd`` (in ``cwd``, with ``env``: by default ours)."""
        if cmd is not None:
            cwd = cwd or os.getcwd()
            env = dict(os.environ) if env is None else env
            if output and not os.path.isabs(output):
                output = os.path.join(cwd, output)
        return dict(self.call("job_add", name=name, pid=pid, cmd=cmd, cwd=cwd, env=env,
                              output=output, every=every, keep_last=keep_last,
                              keep_every=keep_every, store=store, scope=scope,
                              restart_on_failure=restart_on_failure or None,
                              max_restarts=max_restarts))  # fmt: skip

    def remove(self, name: str, *, kill: bool = False) -> None:
        self.call("job_rm", name=name, kill=kill or None)

    def checkpoint(self, name: str) -> dict[str, Any]:
        return dict(self.call("job_checkpoint", name=name))

    def restart(self, name: str, version: int | None = None) -> dict[str, Any]:
        return dict(self.call("job_restart", name=name, version=version))

    def versions(self, name: str) -> list[dict[str, Any]]:
        return list(self.call("job_versions", name=name))

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.call("job_history", name=name, limit=limit))

    def prepare(self, name: str) -> dict[str, Any]:
        return dict(self.call("job_prepare", name=name))

    def write(self, name: str) -> dict[str, Any]:
        return dict(self.call("job_write", name=name))

    def resume(self, name: str) -> None:
        self.call("job_resume", name=name)

    def abort(self, name: str) -> None:
        self.call("job_abort", name=name)


__all__ = ["Client", "default_socket"]
