"""Shared memory objects: anonymous shared mappings (shmem), memfd, and deleted files
mapped MAP_SHARED (POSIX semaphores and multiprocessing arenas in /dev/shm).

Several processes may map one object, each a part of it: the object is saved once, whole
(the data ranges that exist, found with SEEK_DATA/SEEK_HOLE on /proc/PID/map_files), and
at restart cryo makes it again before the first process is created (an anonymous shared
mapping of its own, a memfd of the same name, or a file in the same directory that is
unlinked again), fills it, and keeps an fd to it that every process inherits and maps
at its old address and offset.  Pages are shared again exactly as they were.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryo.errors import CryoError
from cryo.linux import libc
from cryo.linux.mm import MAP_HUGE_SHIFT, MFD_HUGETLB, huge_flag, hugepages_available

log = logging.getLogger(__name__)
KIND = b"SHMO"
SEEK_DATA, SEEK_HOLE = 3, 4


def kind_of(path: str, shared: bool) -> str | None:
    """Which kind of shared object a VMA maps, if any."""
    if not shared:
        return None
    if path in ("", "/dev/zero (deleted)", "/anon_hugepage (deleted)") or path.startswith(
        "[anon_shmem:"
    ):
        return "anon"
    if path.startswith("/memfd:"):
        return "memfd"
    if path.startswith("/") and path.endswith(" (deleted)") and not path.startswith("/SYSV"):
        return "deleted"
    return None


def private_kind(path: str) -> str | None:
    """Which kind of object a private mapping of a deleted file or memfd maps: its
    pages that were not copied on write are the object's, so it is saved like one."""
    kind = kind_of(path, True)
    return kind if kind in ("memfd", "deleted") else None


@dataclass
class Objects:
    """The shared memory objects of a checkpoint, each described once."""

    objs: list[dict[str, Any]] = field(default_factory=list)
    by_key: dict[tuple[int, int], int] = field(default_factory=dict)
    # processes whose memory was described already (pages shared copy-on-write with a
    # parent among them are saved once, with the parent: engine/cow.py)
    mm_pids: set[int] = field(default_factory=set)
    # and each one's parent and the runs it saved itself, with their starts (the pages its
    # later siblings share with it only are saved once, with it: cow.split_siblings)
    mm_own: dict[int, tuple[int, list[tuple[int, int]], list[int]]] = field(default_factory=dict)

    def add(self, pid: int, vma: Any, kind: str) -> int:
        path = f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}"
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key not in self.by_key:
            self.by_key[key] = len(self.objs)
            self.objs.append({"id": len(self.objs), "kind": kind, "size": st.st_size,
                              "mode": st.st_mode & 0o7777, "name": vma.path,
                              "dev": st.st_dev, "ino": st.st_ino,
                              "uid": st.st_uid, "gid": st.st_gid,
                              "where": [pid, vma.start, vma.end],
                              "huge": vma.page_size if "ht" in vma.flags else 0})  # fmt: skip
        return self.by_key[key]

    def lookup(self, dev: int, ino: int) -> int | None:
        """The object of this file (st_dev, st_ino), if a mapping of it was seen: an fd
        on a deleted file or memfd that is also mapped must come back as that object
        (files: save ``{"obj": id}`` instead of the contents; memory is dumped first)."""
        return self.by_key.get((dev, ino))

    def stat(self, obj_id: int) -> list[int]:
        """[dev, ino, size, 0] of an object, as a mapped file's record has them."""
        obj = self.objs[obj_id]
        return [obj["dev"], obj["ino"], obj["size"], 0]

    def data_ranges(self, obj: dict[str, Any]) -> tuple[int, list[tuple[int, int]]]:
        """Open the object; returns (fd, [(offset, length)] of the data it holds)."""
        pid, start, end = obj["where"]
        fd = os.open(f"/proc/{pid}/map_files/{start:x}-{end:x}", os.O_RDONLY)
        runs: list[tuple[int, int]] = []
        off, size = 0, obj["size"]
        while off < size:
            try:
                data = os.lseek(fd, off, SEEK_DATA)
            except OSError as err:  # ENXIO: no data after off; anything else fails
                if err.errno != errno.ENXIO:
                    os.close(fd)
                    raise
                break
            hole = os.lseek(fd, data, SEEK_HOLE)
            runs.append((data, min(hole, size) - data))
            off = hole
        return fd, runs


def record(objs: Objects) -> dict[str, Any]:
    return {"objs": objs.objs}


# -- restore ---------------------------------------------------------------------------


@dataclass
class Made:
    """Objects cryo made for a restart: id -> fd (inherited by every process)."""

    fds: dict[int, int] = field(default_factory=dict)
    # a deleted file's name, kept until its descriptions are reopened (:meth:`reopen`:
    # one opened with O_NOFOLLOW must be opened by a real path, not /proc/self/fd's link)
    names: dict[int, str] = field(default_factory=dict)
    maps: list[mmap.mmap] = field(default_factory=list)
    # hugetlb objects are filled through a mapping (hugetlbfs has no write())
    views: dict[int, mmap.mmap] = field(default_factory=dict)

    def reopen(self, obj_id: int, flags: int) -> int:
        """A new open file description of object ``obj_id`` with open ``flags`` (for an
        fd of the image on that file: the same file as the mappings, not a copy)."""
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        name = self.names.get(obj_id)
        if not flags & os.O_NOFOLLOW or name is None:
            return os.open(f"/proc/self/fd/{self.fds[obj_id]}", flags)
        fd = os.open(name, flags)  # (shm_open's O_NOFOLLOW: kept in F_GETFL)
        st, want = os.fstat(fd), os.fstat(self.fds[obj_id])
        if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
            os.close(fd)
            raise CryoError(f"{name}: another file took its place while the restart made it")
        return fd

    def unlink_names(self) -> None:
        """The deleted files' names gone again (before any process runs)."""
        for name in self.names.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        self.names.clear()

    def close(self) -> None:
        self.unlink_names()
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        for m in [*self.maps, *self.views.values()]:
            with contextlib.suppress(BufferError, ValueError):
                m.close()
        self.maps.clear()
        self.views.clear()


def make_all(rec: dict[str, Any], base: int,
             where: Callable[[str], str] = lambda path: path) -> Made:
    """Every object of ``rec`` made, on fds from ``base``; a deleted file is recreated at
    ``where(its path)`` (the restart's translation) when that is free."""
    made = Made()
    need: dict[int, int] = {}
    for obj in rec["objs"]:
        if obj.get("huge"):
            need[obj["huge"]] = need.get(obj["huge"], 0) + -(-obj["size"] // obj["huge"])
    _check_hugepages(need)
    try:
        for obj in rec["objs"]:
            fd = _make(obj, made, where)
            made.fds[obj["id"]] = _high(fd, base)
            if obj.get("huge") and obj["id"] not in made.views:
                made.views[obj["id"]] = mmap.mmap(made.fds[obj["id"]], obj["size"])
    except BaseException:
        made.close()
        raise
    return made


def _check_hugepages(need: dict[int, int]) -> None:
    for size, n in need.items():
        have = hugepages_available(size)
        if n > have:
            raise CryoError(f"the image's shared hugetlb objects need {n} huge pages of"
                            f" {size >> 10} kB and {have} are free here (raise"
                            " /proc/sys/vm/nr_hugepages)", resource="hugetlb")  # fmt: skip


def _high(fd: int, base: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, base)
    os.close(fd)
    return high


def _make(obj: dict[str, Any], made: Made, where: Callable[[str], str]) -> int:
    size = obj["size"]
    huge = obj.get("huge", 0)
    if obj["kind"] == "anon":
        # an anonymous shared mapping of our own; its map_files entry is the object
        m = mmap.mmap(-1, max(size, mmap.PAGESIZE),
                      flags=mmap.MAP_SHARED | (huge_flag(huge) if huge else 0))  # fmt: skip
        made.maps.append(m)
        if huge:
            made.views[obj["id"]] = m
        addr = libc.buffer_address(m)
        return os.open(f"/proc/self/map_files/{addr:x}-{addr + len(m):x}", os.O_RDWR)
    if obj["kind"] == "memfd":
        name = obj["name"].removeprefix("/memfd:").removesuffix(" (deleted)")
        # (sealable: the seals its fds had go on once they are reopened on it,
        # ghosts.reopen_objects; made without, it has F_SEAL_SEAL and takes none)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | (
            MFD_HUGETLB | ((huge.bit_length() - 1) << MAP_HUGE_SHIFT) if huge else 0))
        os.fchmod(fd, obj["mode"])  # memfd_create makes it 0777
        _owner(fd, obj)
        os.ftruncate(fd, size)
        return fd
    path = where(obj["name"].removesuffix(" (deleted)"))
    directory = os.path.dirname(path) if os.path.isdir(os.path.dirname(path)) else "/dev/shm"
    try:  # under its old name when that is free, so that /proc/PID/maps shows it again
        tmp = path
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, obj["mode"])
    except OSError:
        tmp = os.path.join(directory, f".cryo-{os.getpid()}-{obj['id']}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, obj["mode"])
    made.names[obj["id"]] = tmp  # (unlinked once its descriptions are reopened)
    _owner(fd, obj)
    os.fchmod(fd, obj["mode"])  # not narrowed by our umask
    os.ftruncate(fd, size)
    return fd


def exes_read_only(made: Made, objs: list[dict[str, Any]], exes: set[str]) -> None:
    """Once filled: each object that is a process's deleted exe is held read-only, on its
    same fd number (the processes inherit it), as a running binary is (the kernel makes
    an exe of no file open for writing: PR_SET_MM_MAP fails, EACCES, and its private
    mappings need no more).  memory.restore_mm sets it as the process's exe again."""
    for obj in objs:
        if obj["kind"] == "deleted" and obj["name"] in exes and obj["id"] in made.fds:
            fd = made.fds[obj["id"]]
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.dup2(ro, fd)  # (inheritable, as _high made it)
            finally:
                os.close(ro)


def _owner(fd: int, obj: dict[str, Any]) -> None:
    """The object's owner as it was (trust admitted it: a user's image names the user)."""
    if "uid" in obj and (obj["uid"], obj["gid"]) != (os.geteuid(), os.getegid()):
        os.fchown(fd, obj["uid"], obj["gid"])


def fill(made: Made, obj_id: int, buf: Any, offset: int, runs: list[list[int]]) -> int:
    """Write a block of an object's data (runs are object offsets)."""
    fd = made.fds[obj_id]
    view = memoryview(buf)
    pos = offset
    if obj_id in made.views:  # hugetlb: through our mapping, leaving zero pages alone
        dest = made.views[obj_id]
        for start, length in runs:
            for off in range(0, length, mmap.PAGESIZE):  # a fresh page is zero already
                n = min(mmap.PAGESIZE, length - off)
                chunk = view[pos + off : pos + off + n]
                if bytes(chunk).count(0) != n:
                    dest[start + off : start + off + n] = chunk
            pos += length
        return pos - offset
    for start, length in runs:
        chunk, at = view[pos : pos + length], start
        while chunk:
            n = os.pwrite(fd, chunk, at)
            if n <= 0:
                raise CryoError(f"short write into shared object {obj_id}")
            chunk, at = chunk[n:], at + n
        pos += length
    return pos - offset
