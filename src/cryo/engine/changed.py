"""Files that changed between a checkpoint and its restart.

A restart reopens the program's files by name; if one of them changed meanwhile the
program would go on with state that no longer matches it (an offset past the end of a
truncated file; a mapping whose unsaved pages are now other bytes).  Such a restart is
refused with :class:`FileChanged` (exit 12) before any process is created, unless the
user says ``--ignore-changed-files`` (restart option ``ignore_changed``, which
memory.py and translate.py read too; ``ignore_changed_files`` is taken as well).

For mapped files, what the image assumes is the file's bytes: the pages of a private
file mapping that the image does not hold are read from the file at restart.  So the
checkpoint (driver ``fingerprints``, :func:`collect`) records for every file a process
maps privately, opened through /proc/PID/map_files (the very inode mapped), its size,
mtime, ELF build-id when it has one, and a hash (xxh3-128) of every byte its mappings
cover (ranges merged, each file hashed once per checkpoint); record kind ``MAPF``, one
per process.  The restart (:func:`check_all`, a ``prepare`` hook, once the saved
files were extracted, before the paths are checked and anything is made) hashes the same
ranges of the file it will map (translated) and refuses with FileChanged (exit 12)
when they differ, even with the same size and mtime.  Files mapped shared are the
program's data shared with others: only their size and mtime are compared (memory.py).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import xxhash

from cryo.errors import ExitCode, FileChanged

FILE_CHANGED = ExitCode.FILE_CHANGED
PAGE = 4096
CHUNK = 1 << 20
O_NOATIME = 0o1000000
KIND = b"MAPF"
DELETED = " (deleted)"


def ignored(options: dict[str, Any]) -> bool:
    return bool(options.get("ignore_changed_files") or options.get("ignore_changed"))


def check_offset(d: dict[str, Any], fd: int, path: str, options: dict[str, Any]) -> None:
    """A regular file reopened for an fd whose saved offset lies past its end now, and
    that is shorter than it was at the checkpoint (an offset already past the end then,
    as lseek allows, is the program's own: found by probing, such a restart was refused
    with the file unchanged)."""
    if ignored(options):
        return
    size = os.fstat(fd).st_size
    if d["pos"] > size and size < d.get("size", d["pos"]):
        raise FileChanged(f"fd {d['fd']} of process {d['pid']}: {path} is {size} bytes now,"
                          f" shorter than the offset {d['pos']} saved at the checkpoint (it"
                          " changed since); --ignore-changed-files restarts anyway",
                          pid=d["pid"], resource=f"fd {d['fd']}", path=path)  # fmt: skip


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | O_NOATIME | os.O_CLOEXEC)
    except PermissionError:  # O_NOATIME: only the owner (or CAP_FOWNER) may ask
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def build_id(fd: int) -> bytes | None:
    """The GNU build-id of an ELF file (its PT_NOTE segments), or None."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None  # not a 64-bit little-endian ELF file
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", table,
                                                                          i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        notes = os.pread(fd, min(p_filesz, 1 << 16), p_offset)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
            name_end = pos + 12 + ((namesz + 3) & ~3)
            desc_end = name_end + ((descsz + 3) & ~3)
            if notes[pos + 12 : pos + 12 + namesz] == b"GNU\0" and ntype == 3:
                return notes[name_end : name_end + descsz]
            pos = desc_end
    return None


def _merged(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return out


def _hash(fd: int, ranges: list[list[int]]) -> bytes:
    """xxh3-128 of the bytes of ``ranges``, read 1 MiB at a time (never page by page;
    not through a mapping: a file truncated meanwhile would kill us with SIGBUS)."""
    h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for off, n in ranges:
        pos, end = off, off + n
        while pos < end:
            got = os.preadv(fd, [view[: min(CHUNK, end - pos)]], pos)
            if not got:
                break  # (past the end: the size tells)
            h.update(view[:got])
            pos += got
    return bytes(h.digest())


def fingerprint(path: str, ranges: list[list[int]] | None = None) -> dict[str, Any]:
    """What a checkpoint records of a mapped file: its size, mtime, ELF build-id, and a
    hash of the bytes of ``ranges`` ([offset, length], the whole file by default)."""
    fd = _open(path)
    try:
        return _fingerprint(fd, ranges)
    finally:
        os.close(fd)


def _fingerprint(fd: int, ranges: list[list[int]] | None) -> dict[str, Any]:
    st = os.fstat(fd)
    ranges = _merged([[o, max(0, min(o + n, st.st_size) - o)] for o, n in ranges
                      if o < st.st_size]) if ranges is not None else [[0, st.st_size]]  # fmt: skip
    out: dict[str, Any] = {"size": st.st_size, "mtime": st.st_mtime_ns, "ranges": ranges,
                           "hash": _hash(fd, ranges)}  # fmt: skip
    bid = build_id(fd)
    if bid is not None:
        out["build_id"] = bid
    return out


def check_fingerprint(path: str, saved: dict[str, Any], options: dict[str, Any],
                      what: str) -> None:  # fmt: skip
    """At restart, before anything is created: the file at ``path`` is the one the image
    mapped (FileChanged otherwise, unless --ignore-changed-files)."""
    if ignored(options):
        return
    why = differs(path, saved)
    if why is not None:
        raise FileChanged(f"{what}: {path} changed since the checkpoint ({why});"
                          " --ignore-changed-files restarts anyway", path=path)  # fmt: skip


def differs(path: str, saved: dict[str, Any]) -> str | None:
    """How the file at ``path`` differs from ``saved`` (its fingerprint), or None."""
    try:
        fd = _open(path)
    except OSError as err:
        return f"cannot open it: {err.strerror}"
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
               tuple(tuple(r) for r in saved["ranges"]))  # fmt: skip
        now = _SEEN.get(key)
        if now is None:
            now = _SEEN[key] = _fingerprint(fd, saved["ranges"])
    finally:
        os.close(fd)
    if saved.get("build_id") != now.get("build_id"):
        return "its ELF build-id differs"
    if saved["size"] != now["size"]:
        return f"its size was {saved['size']}, it is {now['size']} now"
    if saved["hash"] != now["hash"]:
        same = " (same size and mtime)" if saved["mtime"] == now["mtime"] else ""
        return f"the bytes it maps differ{same}"
    return None


# (dev, ino, size, mtime, ctime, ranges) -> fingerprint: the processes of a tree map the
# same libraries; hashed once (a write changes mtime and ctime)
_SEEN: dict[tuple[Any, ...], dict[str, Any]] = {}


# -- the driver ------------------------------------------------------------------------


def collect(ctx: Any) -> None:
    """Driver hook (collect, after the memory driver's): the fingerprint of every file
    the process maps privately (record MAPF)."""
    mm = ctx.records[b"MM  "]
    by_file: dict[str, tuple[str, list[list[int]]]] = {}
    for v in mm["vmas"]:
        if v["kind"] != "file" or v["path"].endswith(DELETED) or not v["path"].startswith("/"):
            continue
        where, ranges = by_file.setdefault(
            v["path"], (f"/proc/{ctx.pid}/map_files/{v['start']:x}-{v['end']:x}", []))
        ranges.append([v["pgoff"], v["end"] - v["start"]])
    files = []
    for path, (where, ranges) in by_file.items():
        try:
            fd = _open(where)
        except OSError:
            continue  # (memory.py refuses what it cannot map again)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   tuple(tuple(r) for r in _merged(ranges)))  # fmt: skip
            fp = _SEEN.get(key)
            if fp is None:
                if len(_SEEN) > 4096:
                    _SEEN.clear()
                fp = _SEEN[key] = _fingerprint(fd, ranges)
        finally:
            os.close(fd)
        files.append({"path": path, **fp})
    ctx.records[KIND] = {"pid": ctx.pid, "files": files}


def saved(image: Any) -> dict[str, list[dict[str, Any]]]:
    """The image's fingerprints by path."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in image.raw(KIND):
        for f in rec["files"]:
            out.setdefault(f["path"], []).append(f)
    return out


def check_all(rs: Any) -> None:
    """Driver hook (prepare, once the saved files are out): every file the restart maps
    privately is the one the image assumed (FileChanged, exit 12, before anything is
    made, unless --ignore-changed-files)."""
    if ignored(rs.options):
        return
    from cryo.engine.translate import apply as translated

    done: set[tuple[str, Any]] = set()
    for path, fps in saved(rs.image).items():
        new = translated(rs.options, path)
        if not os.path.exists(new):
            continue  # (missing: the path check says so, with --translate)
        for fp in fps:
            key = (new, fp["hash"])
            if key in done:
                continue
            done.add(key)
            check_fingerprint(new, fp, rs.options, "mapped file")


def describe(v: Any) -> dict[str, Any]:
    """cryo show: each mapped file's fingerprint."""
    rec = v.records.get(KIND)
    if rec is None:
        return {}
    return {"mapped_files": [{"path": f["path"], "size": f["size"],
                              "hashed": sum(n for _, n in f["ranges"]),
                              **({"build_id": f["build_id"].hex()} if "build_id" in f else {})}
                             for f in rec["files"]]}  # fmt: skip
