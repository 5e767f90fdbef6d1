"""System calls of the fd kinds the file drivers save beyond plain files: kcmp of an
epoll's target, inotify, fanotify, file handles (open_by_handle_at), pidfds.

As in libc.py: explicit prototypes, failures as ``OSError(errno, "call ...")``.
"""

from __future__ import annotations

import ctypes
import os

from cryo.linux.libc import libc

SYS_KCMP = 312
SYS_PIDFD_GETFD = 438
SYS_PIDFD_OPEN = 434
SYS_OPEN_BY_HANDLE_AT = 304
SYS_NAME_TO_HANDLE_AT = 303
SYS_FANOTIFY_INIT = 300
SYS_FANOTIFY_MARK = 301
SYS_INOTIFY_INIT1 = 294
SYS_INOTIFY_ADD_WATCH = 254
SYS_INOTIFY_RM_WATCH = 255
KCMP_EPOLL_TFD = 7
PIDFD_THREAD = os.O_EXCL
MAX_HANDLE_SZ = 128

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [{what}]")
    return ret


class _EpollSlot(ctypes.Structure):
    _fields_ = (("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32))


def kcmp_epoll_tfd(pid1: int, fd1: int, pid2: int, efd: int, tfd: int, toff: int) -> bool:
    """Is fd ``fd1`` of ``pid1`` the file that epoll ``efd`` of ``pid2`` watches as its
    ``toff``-th target added with fd number ``tfd``?"""
    slot = _EpollSlot(efd, tfd, toff)
    ret = _syscall(ctypes.c_long(SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2),
                   ctypes.c_long(KCMP_EPOLL_TFD), ctypes.c_long(fd1),
                   ctypes.c_void_p(ctypes.addressof(slot)))  # fmt: skip
    return _check(int(ret), f"kcmp epoll tfd pid={pid2} efd={efd} tfd={tfd}") == 0


def inotify_init1(flags: int) -> int:
    return _check(int(_syscall(ctypes.c_long(SYS_INOTIFY_INIT1), ctypes.c_long(flags))),
                  "inotify_init1")  # fmt: skip


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    ret = _syscall(ctypes.c_long(SYS_INOTIFY_ADD_WATCH), ctypes.c_long(fd),
                   ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint32(mask))  # fmt: skip
    return _check(int(ret), f"inotify_add_watch {path} mask={mask:#x}")


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(int(_syscall(ctypes.c_long(SYS_INOTIFY_RM_WATCH), ctypes.c_long(fd),
                        ctypes.c_long(wd))), f"inotify_rm_watch {wd}")  # fmt: skip


def fanotify_init(flags: int, event_f_flags: int) -> int:
    ret = _syscall(ctypes.c_long(SYS_FANOTIFY_INIT), ctypes.c_uint(flags),
                   ctypes.c_uint(event_f_flags))  # fmt: skip
    return _check(int(ret), f"fanotify_init flags={flags:#x}")


def fanotify_mark(fd: int, flags: int, mask: int, dirfd: int, path: str | None) -> None:
    ret = _syscall(ctypes.c_long(SYS_FANOTIFY_MARK), ctypes.c_long(fd), ctypes.c_uint(flags),
                   ctypes.c_uint64(mask), ctypes.c_long(dirfd),
                   ctypes.c_char_p(None if path is None else os.fsencode(path)))  # fmt: skip
    _check(int(ret), f"fanotify_mark flags={flags:#x} mask={mask:#x} {path}")


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """Open the file a handle (name_to_handle_at, or an inotify/fanotify mark's
    ``f_handle``) names, on the filesystem of ``mount_fd`` (CAP_DAC_READ_SEARCH)."""
    buf = ctypes.create_string_buffer(8 + len(handle))
    ctypes.memmove(buf, len(handle).to_bytes(4, "little")
                   + handle_type.to_bytes(4, "little", signed=True) + handle,
                   8 + len(handle))  # fmt: skip
    ret = _syscall(ctypes.c_long(SYS_OPEN_BY_HANDLE_AT), ctypes.c_long(mount_fd),
                   ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_long(flags))  # fmt: skip
    return _check(int(ret), "open_by_handle_at")


AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x400, 0x1000


def name_to_handle_at(dirfd: int, path: str, flags: int) -> bytes | None:
    """The file handle of ``path`` (relative to ``dirfd``; with AT_EMPTY_PATH and "" the
    file of ``dirfd`` itself) as handle_type (4 bytes, little-endian) and its bytes; None
    where the filesystem gives none.  It names one inode of one filesystem for as long
    as it lives (the generation number besides the inode number: a reused number gives
    another handle)."""
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    ctypes.memmove(buf, MAX_HANDLE_SZ.to_bytes(4, "little"), 4)
    mount_id = ctypes.c_int()
    ret = _syscall(ctypes.c_long(SYS_NAME_TO_HANDLE_AT), ctypes.c_long(dirfd),
                   ctypes.c_char_p(os.fsencode(path)), ctypes.c_void_p(ctypes.addressof(buf)),
                   ctypes.c_void_p(ctypes.addressof(mount_id)), ctypes.c_long(flags))  # fmt: skip
    if ret == -1:
        return None
    n = int.from_bytes(buf.raw[:4], "little")
    return buf.raw[4 : 8 + min(n, MAX_HANDLE_SZ)]


def pidfd_open(pid: int, flags: int) -> int:
    return _check(int(_syscall(ctypes.c_long(SYS_PIDFD_OPEN), ctypes.c_long(pid),
                               ctypes.c_uint(flags))), f"pidfd_open {pid}")  # fmt: skip


MQUEUE_MAGIC = 0x19800202
SECRETMEM_MAGIC = 0x5345434D
_statfs = libc.statfs
_statfs.restype = ctypes.c_int
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def fs_type(path: str) -> int:
    """statfs(2)'s f_type of the filesystem ``path`` is on (a /proc/PID/fd/N link is
    followed to the open file's)."""
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type comes first
    _check(_statfs(os.fsencode(path), buf), f"statfs {path}")
    return int.from_bytes(buf.raw[:8], "little", signed=True)


SYS_CACHESTAT = 451


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = (("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64))  # fmt: skip


def cached_pages(fd: int, off: int = 0, length: int = 0) -> int:
    """How many pages of [off, off + length) of the file (0: to its end) are in the page
    cache (cachestat(2), Linux 6.5)."""
    rng, cs = _CachestatRange(off, length), _Cachestat()
    _check(_syscall(ctypes.c_long(SYS_CACHESTAT), ctypes.c_long(fd),
                    ctypes.c_void_p(ctypes.addressof(rng)), ctypes.c_void_p(ctypes.addressof(cs)),
                    ctypes.c_long(0)), "cachestat")  # fmt: skip
    return int(cs.nr_cache)
