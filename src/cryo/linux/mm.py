"""Memory-management constants and calls the memory engine needs beyond consts.py/libc.py
(x86_64 values; include/uapi/asm-generic/mman-common.h, include/uapi/linux/mman.h,
include/uapi/linux/prctl.h, arch/x86/entry/syscalls/syscall_64.tbl)."""

from __future__ import annotations

import enum
import os
import struct

from cryo.linux.consts import IntEnumBase, IntFlagBase, fast_enum


@fast_enum(enum.IntEnum)
class MADV(IntEnumBase):
    """madvise() advice (include/uapi/asm-generic/mman-common.h)."""

    NORMAL = 0
    RANDOM = 1
    SEQUENTIAL = 2
    DONTNEED = 4
    DONTFORK = 10
    DOFORK = 11
    MERGEABLE = 12
    UNMERGEABLE = 13
    HUGEPAGE = 14
    NOHUGEPAGE = 15
    DONTDUMP = 16
    DODUMP = 17
    WIPEONFORK = 18
    KEEPONFORK = 19
    POPULATE_READ = 22
    POPULATE_WRITE = 23
    COLLAPSE = 25
    GUARD_INSTALL = 102
    GUARD_REMOVE = 103


@fast_enum(enum.IntFlag)
class MLOCK(IntFlagBase):
    ONFAULT = 0x01


@fast_enum(enum.IntFlag)
class MCL(IntFlagBase):
    CURRENT = 1
    FUTURE = 2
    ONFAULT = 4


@fast_enum(enum.IntFlag)
class MAPX(IntFlagBase):
    """mmap flags that consts.MAP lacks (include/uapi/linux/mman.h, asm-generic)."""

    DROPPABLE = 0x08
    NORESERVE = 0x4000
    HUGETLB = 0x40000


MAP_HUGE_SHIFT = 26
MFD_HUGETLB = 0x0004


@fast_enum(enum.IntEnum)
class SYSX(IntEnumBase):
    """System calls the memory engine injects that consts.SYS lacks."""

    mlockall = 151
    io_setup = 206
    io_destroy = 207
    mlock2 = 325
    pkey_mprotect = 329
    pkey_alloc = 330
    pkey_free = 331
    memfd_create = 319
    mseal = 462


PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68
PKEYS = 16  # x86: protection keys 0-15, 0 the default of every mapping
PR_SET_VMA = 0x53564D41
PR_SET_VMA_ANON_NAME = 0

# /proc/PID/pagemap entries (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_GUARD_REGION = 1 << 58
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63


def huge_flag(page_size: int) -> int:
    """MAP_HUGETLB | MAP_HUGE_<size>: log2 of the page size in bits 26-31."""
    return MAPX.HUGETLB | ((page_size.bit_length() - 1) << MAP_HUGE_SHIFT)


def pagemap_entries(fd: int, start: int, end: int, page: int = 4096) -> list[int]:
    """The raw 64-bit /proc/PID/pagemap entries of the pages in [start, end)."""
    n = (end - start) // page
    out: list[int] = []
    off = (start // page) * 8
    while n:
        take = min(n, 1 << 16)
        data = os.pread(fd, take * 8, off)
        if len(data) != take * 8:
            raise OSError(0, f"short read of pagemap at {off:#x}")
        out.extend(struct.unpack(f"<{take}Q", data))
        off += take * 8
        n -= take
    return out


def hugepages_available(page_size: int) -> int:
    """Huge pages of ``page_size`` that a new mapping may still reserve here."""
    base = f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB"
    try:
        with open(f"{base}/free_hugepages") as f:
            free = int(f.read())
        with open(f"{base}/resv_hugepages") as f:
            return free - int(f.read())
    except OSError:  # no pool of this size
        return 0
