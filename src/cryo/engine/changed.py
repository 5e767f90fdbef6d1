"""Files that changed between a checkpoint and its restart.

A restart reopens the program's files by name; if one of them changed meanwhile the
program would go on with state that no longer matches it (an offset past the end of a
truncated file; a mapping whose unsaved pages are now other bytes).  Such a restart is
refused with :class:`FileChanged` (exit 12) before any process is created, unless the
user says ``--ignore-changed-files`` (restart option ``ignore_changed``, which
memory.py and translate.py read too; ``ignore_changed_files`` is taken as well).

For mapped files, :func:`fingerprint` is what a checkpoint records of a file beyond its
size and mtime (the ELF build-id when it has one, and a hash of its first and last
pages), and :func:`check_fingerprint` what the restart compares.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

from cryo.errors import ExitCode, FileChanged

FILE_CHANGED = ExitCode.FILE_CHANGED
PAGE = 4096
O_NOATIME = 0o1000000


def ignored(options: dict[str, Any]) -> bool:
    return bool(options.get("ignore_changed_files") or options.get("ignore_changed"))


def check_offset(d: dict[str, Any], fd: int, path: str, options: dict[str, Any]) -> None:
    """A regular file reopened for an fd whose saved offset lies past its end now."""
    if ignored(options):
        return
    size = os.fstat(fd).st_size
    if d["pos"] > size:
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


def fingerprint(path: str) -> dict[str, Any]:
    """What a checkpoint records of a mapped file: its size, its build-id (ELF) and a
    hash of its first and last pages."""
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size
        h = hashlib.blake2b(digest_size=16)
        h.update(os.pread(fd, PAGE, 0))
        if size > PAGE:
            h.update(os.pread(fd, PAGE, (size - 1) // PAGE * PAGE))
        bid = build_id(fd)
    finally:
        os.close(fd)
    out: dict[str, Any] = {"size": size, "pages": h.digest()}
    if bid is not None:
        out["build_id"] = bid
    return out


def check_fingerprint(path: str, saved: dict[str, Any], options: dict[str, Any],
                      what: str) -> None:  # fmt: skip
    """At restart, before anything is created: the file at ``path`` is the one the image
    mapped (FileChanged otherwise, unless --ignore-changed-files)."""
    if ignored(options):
        return
    now = fingerprint(path)
    for key, name in (("build_id", "ELF build-id"), ("size", "size"),
                      ("pages", "first and last pages")):  # fmt: skip
        if saved.get(key) != now.get(key):
            raise FileChanged(f"{what}: {path} changed since the checkpoint (its {name}"
                              " differs); --ignore-changed-files restarts anyway",
                              path=path)  # fmt: skip
