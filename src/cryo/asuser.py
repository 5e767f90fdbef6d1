"""Doing something as another user: in a forked child that has become that user
(groups, then gids, then uids), its answer read back through a pipe.  For checks that
must see what that user would see (permissions along a path, ACLs, mounts)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def run_as(uid: int, gid: int, groups: Iterable[int], fn: Callable[[], bytes]) -> bytes | None:
    """``fn()`` in a child that is ``uid``/``gid`` with ``groups``; returns what it
    returned, or None when it failed (it raised, or the child could not become the
    user): callers fail closed on None."""
    groups = sorted(set(groups))
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: become the user, answer, never return into the caller
        try:
            os.close(r)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out = b"+" + fn()
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
    return data[1:] if data[:1] == b"+" else None
