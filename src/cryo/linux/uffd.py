"""userfaultfd in missing mode: filling another process's fresh anonymous memory with
UFFDIO_COPY (include/uapi/linux/userfaultfd.h, mm/userfaultfd.c).

The uffd belongs to the target's mm (made there by an injected call, taken with
pidfd_getfd); an ioctl on it from cryo copies from cryo's own memory (``src`` is in the
caller's mm) into pages of the target it allocates and maps directly: no page fault, no
zeroing of a page that is overwritten anyway.  A page already present gives EEXIST.
"""

from __future__ import annotations

import ctypes
import errno
import struct

from cryo.linux import libc
from cryo.linux import structs as S

REGISTER_MODE_MISSING = 1 << 0
COPY_MODE_DONTWAKE = 1 << 0
_IOWR, _IOR = 3, 2


def _io(d: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (0xAA << 8) | nr


class uffdio_copy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]  # fmt: skip


UFFDIO_UNREGISTER = _io(_IOR, 0x01, ctypes.sizeof(S.uffdio_range))
UFFDIO_COPY = _io(_IOWR, 0x03, ctypes.sizeof(uffdio_copy))


def register_missing(fd: int, start: int, length: int) -> None:
    """Register [start, start+length) of the uffd's process in missing mode (EINVAL:
    not a kind of mapping uffd can fill, e.g. a private file mapping)."""
    from cryo.linux.consts import UFFDIO_REGISTER

    libc.ioctl(fd, UFFDIO_REGISTER,
               S.uffdio_register(S.uffdio_range(start, length), REGISTER_MODE_MISSING, 0))


def unregister(fd: int, start: int, length: int) -> None:
    libc.ioctl(fd, UFFDIO_UNREGISTER, S.uffdio_range(start, length))


def copy(fd: int, dst: int, src: int, length: int) -> int:
    """UFFDIO_COPY as far as it goes: returns the bytes copied from the start of
    [dst, dst+length); fewer than ``length`` means the page after them is already
    present (EEXIST), the caller writes it another way and calls again past it.  Other
    errors raise OSError."""
    arg = uffdio_copy(dst, src, length, COPY_MODE_DONTWAKE, 0)
    done, stuck = 0, 0
    while done < length:
        arg.dst, arg.src, arg.len, arg.copy = dst + done, src + done, length - done, 0
        ret = libc._ioctl(fd, UFFDIO_COPY, ctypes.addressof(arg))
        if arg.copy > 0:
            done += arg.copy
        if ret == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EAGAIN and stuck < 100:  # interrupted (mm changing): again
            stuck = 0 if arg.copy > 0 else stuck + 1
            continue
        if err == errno.EEXIST:
            return done
        raise OSError(err, f"UFFDIO_COPY {dst + done:#x}+{length - done:#x}: "
                           f"{errno.errorcode.get(err, err)}")  # fmt: skip
    return done


# -- post-copy (cryo.migrate.lazy): a manager serving the faults of a running process ----

EVENT_PAGEFAULT, EVENT_FORK, EVENT_REMAP, EVENT_REMOVE, EVENT_UNMAP = 0x12, 0x13, 0x14, 0x15, 0x16
FEATURE_EVENT_FORK, FEATURE_EVENT_REMAP, FEATURE_EVENT_REMOVE = 1 << 1, 1 << 2, 1 << 3
FEATURE_EVENT_UNMAP = 1 << 6
MSG_SIZE = 32  # struct uffd_msg


class uffdio_zeropage(ctypes.Structure):
    _fields_ = [("range", S.uffdio_range), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]  # fmt: skip


UFFDIO_WAKE = _io(_IOR, 0x02, ctypes.sizeof(S.uffdio_range))
UFFDIO_ZEROPAGE = _io(_IOWR, 0x04, ctypes.sizeof(uffdio_zeropage))


def copy_wake(fd: int, dst: int, src: int, length: int) -> tuple[int, int]:
    """UFFDIO_COPY that wakes the threads waiting on the pages: (bytes copied, errno of
    where it stopped: 0, EEXIST (a page there already), EAGAIN (the mm is changing: read
    the uffd's events first), ENOENT/ESRCH (unmapped, or the process is gone))."""
    arg = uffdio_copy(dst, src, length, 0, 0)
    ret = libc._ioctl(fd, UFFDIO_COPY, ctypes.addressof(arg))
    done = max(int(arg.copy), 0)
    if ret == 0:
        return length, 0
    return done, ctypes.get_errno()


def zeropage(fd: int, dst: int, length: int) -> int:
    """UFFDIO_ZEROPAGE (waking the waiters): 0 or the errno (EEXIST: there already)."""
    arg = uffdio_zeropage(S.uffdio_range(dst, length), 0, 0)
    if libc._ioctl(fd, UFFDIO_ZEROPAGE, ctypes.addressof(arg)) == 0:
        return 0
    return ctypes.get_errno()


def wake(fd: int, start: int, length: int) -> None:
    libc.ioctl(fd, UFFDIO_WAKE, S.uffdio_range(start, length))


def parse_msgs(data: bytes) -> list[tuple[int, int, int, int]]:
    """struct uffd_msg (32 bytes each): (event, a, b, c): PAGEFAULT (flags, address, 0),
    FORK (the new uffd's fd here, 0, 0), REMAP (from, to, len), REMOVE/UNMAP (start,
    end, 0)."""
    out = []
    for off in range(0, len(data) - MSG_SIZE + 1, MSG_SIZE):
        event = data[off]
        a, b, c = struct.unpack_from("<QQQ", data, off + 8)
        if event == EVENT_FORK:
            a, b, c = a & 0xFFFFFFFF, 0, 0
        out.append((event, a, b, c))
    return out
