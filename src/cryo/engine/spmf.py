"""Saved files: SPMF ("Save Private Mapped Files", seed 003 sections 5.2 and 6.4), and
the list of files a checkpoint depends on (seed 003 section 6.2).

With ``save_files`` (``cryo checkpoint --save-files``) the executable and every file a
process maps privately (its libraries) go into the image, so that a restart works when
they were moved, deleted or replaced since.  Files mapped shared are data the program
shares with others: they are not copied.

Dump: in the write phase, while the targets are frozen, each file is opened through
``/proc/PID/exe`` or ``/proc/PID/map_files/A-B`` (the very inode mapped, even if it was
replaced or deleted since); once the pages are in the sink (``written``) each distinct
content is copied once into a side file named by its hash (``spmf-<BLAKE2b-256>``, so
that processes mapping the same library share one copy), and each process gets a
``SPMF`` record naming its files.

Restart: the ``prepare`` hook, before any other, looks at each saved file where the
restart would open it (translated): when it is missing or is not the file saved (size
or mtime differ, or the bytes its mappings cover: engine/changed.py), the copy (checked
against the sealed digest of its side file) is extracted into a private directory
(0700), with its mode and mtime, and a translation original -> copy is added
(engine/translate.py); the mapping and the executable are then
opened from there like any translated path.  The directory is removed once the
processes run: they keep the copies mapped, unlinked.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
from collections.abc import Iterable
from typing import Any

from cryo import procfs
from cryo.engine import changed, translate
from cryo.engine.context import DumpContext
from cryo.image import format as fmt

log = logging.getLogger(__name__)
KIND = b"SPMF"
PREFIX = "spmf-"
FILES_DIR = "/var/lib/cryo/files"  # when the temporary directory is mounted noexec
CHUNK = 1 << 20


# -- dump ------------------------------------------------------------------------------


def _mapped(ctx: DumpContext) -> list[tuple[str, str, bool]]:
    """(path, where to open it, is the executable) of every file to save."""
    mm = ctx.records[b"MM  "]
    out = [(mm["exe"], f"/proc/{ctx.pid}/exe", True)]
    seen = {mm["exe"]}
    for v in mm["vmas"]:
        if v["kind"] == "file" and v["path"] not in seen:
            seen.add(v["path"])
            out.append((v["path"], f"/proc/{ctx.pid}/map_files/{v['start']:x}-{v['end']:x}",
                        False))  # fmt: skip
    return out


def open_files(ctx: DumpContext, _sink: Any) -> None:
    """Driver hook (write, the targets frozen): the files to save, opened."""
    if not ctx.options.get("save_files"):
        return
    held = []
    try:
        for path, where, exe in _mapped(ctx):
            fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
            held.append((path.removesuffix(procfs.DELETED), fd, exe))
    except BaseException:
        for _p, fd, _e in held:
            os.close(fd)
        raise
    ctx.live["spmf"] = held


# file (dev, ino, size, mtime, ctime) -> its digest: processes of a tree share their
# libraries, hashed once (a write to a file changes its mtime and ctime)
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def _digest(fd: int) -> str:
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        if len(_DIGESTS) > 4096:
            _DIGESTS.clear()
        _DIGESTS[key] = _hash(fd)
    return _DIGESTS[key]


def _hash(fd: int) -> str:
    h = fmt.content_hash()
    pos = 0
    while chunk := os.pread(fd, CHUNK, pos):
        h.update(chunk)
        pos += len(chunk)
    return str(h.hexdigest())


def save(ctx: DumpContext, sink: Any) -> None:
    """Driver hook (written): each file copied into the image once per content; the
    process's SPMF record."""
    held = ctx.live.pop("spmf", None)
    if held is None:
        return
    files = []
    try:
        for path, fd, exe in held:
            st = os.fstat(fd)
            name = PREFIX + _digest(fd)
            if not sink.has_side(name):
                with sink.side_file(name) as out:
                    pos = 0
                    while chunk := os.pread(fd, CHUNK, pos):
                        out.write(chunk)
                        pos += len(chunk)
            files.append({"path": path, "name": name, "exe": exe, "size": st.st_size,
                          "mtime": st.st_mtime_ns, "mode": stat.S_IMODE(st.st_mode),
                          "dev": st.st_dev, "ino": st.st_ino})  # fmt: skip
    finally:
        for _p, fd, _e in held:
            os.close(fd)
    rec = {"pid": ctx.pid, "files": files}
    ctx.records[KIND] = rec  # (for depends(); the session does not write it again)
    sink.record(KIND, rec)
    log.debug("process %d: %d files saved", ctx.pid, len(files))


# -- restart ---------------------------------------------------------------------------


def _same(path: str, f: dict[str, Any]) -> bool:
    """Is ``path`` the file that was saved (by size and mtime, as a mapping is checked)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (f["size"], f["mtime"])


def _private_dir() -> str:
    """A new 0700 directory on a filesystem that lets us map and execute files."""
    import tempfile  # (not at the top: 3 ms of every restart's start-up)

    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        if os.statvfs(base).f_flag & os.ST_NOEXEC:
            os.makedirs(FILES_DIR, 0o700, exist_ok=True)
            base = FILES_DIR
    return tempfile.mkdtemp(prefix="cryo-files-", dir=base)


def prepare(rs: Any) -> None:
    """Driver hook (prepare, first of all): a saved file whose original is missing or
    differs is extracted, and the restart translates its path to the copy."""
    recs = rs.image.raw(KIND)
    if not recs:
        return
    t = translate.of(rs.options)
    fingerprints = changed.saved(rs.image)  # (its bytes: same size and mtime is not enough)
    directory: str | None = None
    done: set[str] = set()
    for rec in recs:
        for f in rec["files"]:
            path = f["path"]
            if path in done:
                continue
            done.add(path)
            here = t.apply(path)
            if _same(here, f) and not any(changed.differs(here, fp)
                                          for fp in fingerprints.get(path, ())):  # fmt: skip
                continue
            if directory is None:
                import shutil

                directory = _private_dir()
                rs.on_exit(functools.partial(shutil.rmtree, directory, ignore_errors=True))
            copy = os.path.join(directory, f"{len(done)}-{os.path.basename(path)}")
            _extract(rs.image.side_file(f["name"]), copy, f)
            t.add(path, copy)
            log.info("%s: using the copy saved in the image", path)


def _extract(src: Any, copy: str, f: dict[str, Any]) -> None:
    src.seek(0)
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o700)  # fmt: skip
    try:
        while chunk := src.read(CHUNK):
            os.write(fd, chunk)
        os.fchmod(fd, f["mode"] & 0o777)  # never set-id
    finally:
        os.close(fd)
    os.utime(copy, ns=(f["mtime"], f["mtime"]))  # as mapped: memory.py compares it


# -- the files a checkpoint depends on -------------------------------------------------


def depends(file_recs: Iterable[dict[str, Any]], mm_recs: Iterable[dict[str, Any]],
            descs: list[dict[str, Any]], spmf_recs: Iterable[dict[str, Any]] = (),
            thread_recs: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """Every file a restart of these records opens, once each: {path, use (open, exe,
    mapped, cwd, root), pids, saved (its content is in the image)}, sorted by path.  A
    thread's own cwd (its THRD record's ``fs``) is a cwd of its process."""
    saved = {f["path"] for r in spmf_recs for f in r["files"]}
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def add(path: str, use: str, pid: int, in_image: bool = False) -> None:
        base = path.removesuffix(procfs.DELETED)
        e = out.setdefault((base, use), {"path": base, "use": use, "pids": [],
                                         "saved": in_image or base in saved})  # fmt: skip
        if pid not in e["pids"]:
            e["pids"].append(pid)

    for rec in file_recs:
        pid = rec["pid"]
        for ent in rec["fds"]:
            d = descs[ent["desc"]]
            if d["kind"] in ("file", "dir", "chr", "fifo"):
                add(d["path"], "open", pid, bool(d.get("deleted")))
        add(rec["cwd"], "cwd", pid)
        if rec["root"] != "/":
            add(rec["root"], "root", pid)
    for t in thread_recs:
        if t.get("fs"):
            add(t["fs"]["cwd"], "cwd", t["pid"])
    for mm in mm_recs:
        pid = mm["pid"]
        add(mm["exe"], "exe", pid)
        for v in mm["vmas"]:
            if v["kind"] in ("file", "shared-file"):
                add(v["path"], "mapped", pid)
    return sorted(out.values(), key=lambda e: (e["path"], e["use"]))


def of_session(session: Any) -> list[dict[str, Any]]:
    """:func:`depends` for a checkpoint session once written (DumpResult.files)."""
    ctxs = session.contexts
    return depends([c.records[b"FILE"] for c in ctxs if b"FILE" in c.records],
                   [c.records[b"MM  "] for c in ctxs if b"MM  " in c.records],
                   session.shared.descs.descs,
                   [c.records[KIND] for c in ctxs if KIND in c.records],
                   [t for c in ctxs for t in c.thread_records])  # fmt: skip


def of_image(image: Any) -> list[dict[str, Any]]:
    """:func:`depends` for an image (``cryo show --files``)."""
    fdsc = image.raw(b"FDSC")
    return depends(image.raw(b"FILE"), image.raw(b"MM  "), fdsc[0]["descs"] if fdsc else [],
                   image.raw(KIND), image.raw(b"THRD"))  # fmt: skip


__all__ = ["KIND", "depends", "of_image", "of_session", "open_files", "prepare", "save"]
