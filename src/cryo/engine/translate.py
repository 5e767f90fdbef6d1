"""Path translation at restart (seed 003, 6.2 "File Management"), in one place.

The table comes from ``cryo restart --translate OLD=NEW`` (repeatable) or the API's
``restart(..., translate={OLD: NEW})``, and grows with the copies of saved files a
restart extracts (engine/spmf.py).  Every path of an image that a restart opens goes
through :meth:`Translation.apply`: open files and FIFOs (engine/files.py), files
deleted while open (where they are recreated), mapped files and the executable
(engine/memory.py), cwd and root (files.py), unix socket paths (engine/sockets.py),
shared memory files (engine/shmem.py).  The longest matching prefix wins, whole path
components only: ``/data=/mnt/data`` maps ``/data/x`` but not ``/database``.

:func:`check` (the ``paths`` driver's prepare hook, before anything is created) looks
at every path the restart will open, translated, and fails naming the first that is
missing or of the wrong type.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any

from cryo.errors import CryoError, FileChanged, Usage
from cryo.procfs import DELETED


class Translation(Mapping[str, str]):
    """OLD prefix -> NEW prefix, applied to whole path components."""

    def __init__(self, table: Mapping[str, str] | None = None) -> None:
        self._table: dict[str, str] = {}
        for old, new in (table or {}).items():
            self.add(old, new)

    @classmethod
    def parse(cls, items: list[str]) -> Translation:
        """From ``OLD=NEW`` strings (the command line's --translate)."""
        t = cls()
        for item in items:
            old, sep, new = item.partition("=")
            if not sep or not old or not new:
                raise Usage(f"--translate takes OLD=NEW, not {item!r}")
            t.add(old, new)
        return t

    def add(self, old: str, new: str) -> None:
        if not old.startswith("/") or not new.startswith("/"):
            raise Usage(f"translation {old}={new}: both paths must be absolute")
        self._table[os.path.normpath(old)] = os.path.normpath(new)

    def apply(self, path: str) -> str:
        """``path`` as the restart opens it.  A path the kernel shows as deleted
        (``/x (deleted)``) is translated without its mark when a translation covers
        it (a saved copy), else left as it is."""
        if path.endswith(DELETED):
            base = path.removesuffix(DELETED)
            new = self.apply(base)
            return new if new != base else path
        best = None
        for old in self._table:
            if (path == old or path.startswith(old.rstrip("/") + "/")) and (
                    best is None or len(old) > len(best)):  # fmt: skip
                best = old
        if best is None:
            return path
        rest = path[len(best.rstrip("/")) :]
        return (self._table[best].rstrip("/") + rest).rstrip("/") or "/"

    def __getitem__(self, key: str) -> str:
        return self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Translation({self._table!r})"


def of(options: dict[str, Any]) -> Translation:
    """The restart's translation, kept in its options under ``translate`` (a plain
    table given there is made a :class:`Translation` once, so that what is added to it
    later, e.g. by SPMF, is seen by every process)."""
    t = options.get("translate")
    if not isinstance(t, Translation):
        t = Translation(t or {})
        options["translate"] = t
    return t


def apply(options: dict[str, Any], path: str) -> str:
    """``path`` translated by the restart whose options are ``options``."""
    return of(options).apply(path)


# -- the check before anything is created ------------------------------------------------

_TYPES = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory",
          stat.S_IFCHR: "a character device", stat.S_IFIFO: "a FIFO",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
          stat.S_IFLNK: "a symbolic link"}  # fmt: skip


class PathMissing(CryoError):
    """A file the image needs is not where the restart looks for it (or not of its
    type)."""


def _named(path: str, new: str) -> str:
    return new if new == path else f"{new} (translated from {path})"


def _need(what: str, path: str, new: str, fmt: int | None,
          size_mtime: tuple[int, int] | None = None) -> None:  # fmt: skip
    try:
        st = os.stat(new)
    except OSError as err:
        raise PathMissing(f"{what}: {_named(path, new)}: {err.strerror}; give --translate"
                          " OLD=NEW if it moved", path=new) from err  # fmt: skip
    if fmt is not None and stat.S_IFMT(st.st_mode) != fmt:
        now = _TYPES.get(stat.S_IFMT(st.st_mode), "another kind of file")
        raise PathMissing(f"{what}: {_named(path, new)} is {now}, not"
                          f" {_TYPES.get(fmt, 'what it was')}", path=new)  # fmt: skip
    if size_mtime is not None and (st.st_size, st.st_mtime_ns) != size_mtime:
        raise FileChanged(f"{what}: {_named(path, new)} changed since the checkpoint"
                          f" ({changed_how(size_mtime, st)}); its data is the file's, not the"
                          " image's: --ignore-changed-files restarts anyway",
                          path=new)  # fmt: skip


def changed_how(size_mtime: tuple[int, int], st: os.stat_result) -> str:
    """In words, how a file's (size, mtime) differs from ``size_mtime``."""
    if st.st_size != size_mtime[0]:
        return f"its size was {size_mtime[0]}, it is {st.st_size} now"
    return "same size, modified since (mtime)"


def unix_path(d: dict[str, Any], key: str) -> str | None:
    """A unix socket's address ``key`` as a path (None if abstract or unnamed)."""
    name = d.get(key)
    if not isinstance(name, bytes) or not name or name[:1] == b"\0":
        return None
    path = name.decode(errors="surrogateescape")
    return path if path.startswith("/") else os.path.join(d.get("cwd", "/"), path)


def paths(plan: Any) -> Iterator[tuple[str, str, int | None, tuple[int, int] | None]]:
    """Every path a restart of ``plan`` opens as it is: (what, path, file type or
    None, (size, mtime) it must still have or None)."""
    for d in plan.descs:
        if d["kind"] in ("file", "dir", "chr", "fifo") and not d.get("deleted"):
            yield (f"fd {d['fd']} of process {d['pid']}", d["path"],
                   stat.S_IFMT(d["mode"]), None)  # fmt: skip
        if d["kind"] == "unix":  # a bound socket is made again in its directory; an
            what = f"unix socket fd {d['fd']} of process {d['pid']}"  # outside peer is there
            name = unix_path(d, "name")
            if name and not d.get("unlinked"):
                yield f"the directory of {what}", os.path.dirname(name), stat.S_IFDIR, None
            peer = unix_path(d, "peer_name") if d.get("external") else None
            if peer:
                yield f"the peer of {what}", peer, stat.S_IFSOCK, None
    for pid, recs in plan.procs.items():
        mm = recs.get(b"MM  ")
        if mm is not None:
            if not mm["exe"].endswith(DELETED):
                yield f"the executable of process {pid}", mm["exe"], stat.S_IFREG, None
            for v in mm["vmas"]:
                if v["kind"] in ("file", "shared-file"):  # a private one's bytes are
                    f = v.get("file")  # compared by changed.py (its mtime may differ)
                    yield (f"mapping {v['start']:#x} of process {pid}", v["path"], None,
                           (f[2], f[3]) if f and v["kind"] == "shared-file" else None)  # fmt: skip
        frec = recs.get(b"FILE")
        if frec is not None and not frec.get("cwd_deleted"):  # (else made again)
            yield f"the working directory of process {pid}", frec["cwd"], stat.S_IFDIR, None
            if frec["root"] != "/":
                yield f"the root directory of process {pid}", frec["root"], stat.S_IFDIR, None
    for pid, trecs in plan.threads.items():  # a thread's own (unshare(CLONE_FS))
        for t in trecs:
            if t.get("fs"):
                yield (f"the working directory of thread {t['tid']} of process {pid}",
                       t["fs"]["cwd"], stat.S_IFDIR, None)  # fmt: skip


def check(rs: Any) -> None:
    """Driver hook (prepare, before any other): every path the restart will open
    exists, translated, and is of the type it was; a mapped file is the one mapped
    then (same size and mtime; --save-files keeps a copy when it is not)."""
    from cryo.engine.drivers import APPX as APP_KIND  # (not appchannel: lazy)

    t = of(rs.options)
    owner = rs.options.get("owner")  # the privilege rule (cryo.image.trust), for the
    if owner is not None:  # mapped files a copy saved in the image may stand in for
        from cryo.image import trust

        trust.check_deferred(owner, t.apply)
    ignore_changed = bool(rs.options.get("ignore_changed"))
    # files the application saved with cryo.app are put back by its driver's prepare
    put_back = {f["path"] for r in rs.image.raw(APP_KIND) for f in r.get("files", ())}
    seen: set[tuple[str, int | None, tuple[int, int] | None]] = set()
    for what, path, fmt, size_mtime in paths(rs.plan):
        if path in put_back:
            continue
        new = t.apply(path)
        key = (new, fmt, None if ignore_changed else size_mtime)
        if key not in seen:
            _need(what, path, new, *key[1:])
            seen.add(key)


__all__ = ["PathMissing", "Translation", "apply", "check", "of", "unix_path"]
