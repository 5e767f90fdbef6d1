"""Doing something as another user: in a forked child that has become that user
(groups, then gids, then uids), its answer read back through a pipe.  For checks that
must see what that user would see (permissions along a path, ACLs, mounts), and for
the daemon starting a command on a user's behalf."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


class AsUserFailed(Exception):
    """What ``fn`` raised in the child (or why it could not become the user), as text."""


def call_as(ids: tuple[int, int, Iterable[int]] | None, fn: Callable[[], bytes], *,
            first: Callable[[], None] | None = None) -> bytes:  # fmt: skip
    """``fn()`` in a forked child that is ``ids`` = (uid, gid, groups) (None: stays who
    we are), after ``first()`` (run before the child changes ids, with our rights);
    returns what ``fn`` returned, or raises :class:`AsUserFailed` with the child's
    error (an OSError's strerror, else the exception as text)."""
    groups = sorted(set(ids[2])) if ids is not None else []
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: answer, never return into the caller)
        try:
            os.close(r)
            try:
                if first is not None:
                    first()
                if ids is not None:
                    os.setgroups(groups)
                    os.setresgid(ids[1], ids[1], ids[1])
                    os.setresuid(ids[0], ids[0], ids[0])
                out = b"+" + fn()
            except BaseException as err:
                what = err.strerror if isinstance(err, OSError) and err.strerror else err
                out = b"-" + str(what).encode(errors="replace")[:4096]
            while out:
                out = out[os.write(w, out) :]
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if data[:1] == b"+":
        return data[1:]
    raise AsUserFailed(data[1:].decode(errors="replace") or "the child ended without an answer")


def run_as(uid: int, gid: int, groups: Iterable[int], fn: Callable[[], bytes]) -> bytes | None:
    """``fn()`` in a child that is ``uid``/``gid`` with ``groups``; returns what it
    returned, or None when it failed (it raised, or the child could not become the
    user): callers fail closed on None."""
    try:
        return call_as((uid, gid, groups), fn)
    except AsUserFailed:
        return None
