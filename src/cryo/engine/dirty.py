"""Write tracking between the checkpoints of a store (issue 5): which pages a process
wrote since its last checkpoint, without reading them.

This kernel has no soft-dirty bits.  Instead, at a checkpoint into a store, the process
is given a userfaultfd in write-protect, asynchronous mode (UFFD_FEATURE_WP_ASYNC: a
write to a protected page just marks it written, no fault handler is involved), with
every private anonymous mapping registered and protected.  At the next checkpoint one
PAGEMAP_SCAN per mapping (PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING) returns the pages written
since and protects them again in the same walk; PM_SCAN_CHECK_WPASYNC makes the scan
fail on a mapping that is not registered (mapped since), whose present pages then all
count as written.

The arming is named: a one-page mapping of a memfd called ``cryo-wp:<token>:<fd>`` (its
name shows in /proc/PID/maps; kept out of fork children with MADV_DONTFORK, left out of
every image, like the uffd itself).  Each
checkpoint gives it a new token and records it (TRAK); the next one trusts the scan only
if the process still carries the token of the version it is compared with.  A restored
process, a child, or a checkpoint that failed after renaming: no match, so the store
falls back to comparing page hashes, and tracking starts again.

What stays in the process between checkpoints: that mapping and the uffd on a high fd
(a child forked meanwhile inherits the fd, not the mapping: it is left out of images too).
"""

from __future__ import annotations

import array
import logging
import os
from dataclasses import dataclass
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext
from cryo.engine.inject import Injector, syscall_error
from cryo.linux import libc
from cryo.linux.consts import (
    MADV_DONTFORK,
    MAP,
    PAGE_IS,
    PAGE_SIZE,
    PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
    PROT,
    SYS,
    UFFD,
    SYS_userfaultfd,
)

log = logging.getLogger(__name__)
KIND = b"TRAK"
PREFIX = "cryo-wp:"
MAPPED = f"/memfd:{PREFIX}"
SYS_memfd_create, SYS_ftruncate, MFD_CLOEXEC = 319, 77, 1
F_DUPFD_CLOEXEC = 1030
HIGH_FD = 1000
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000


@dataclass
class Tracking:
    """A process's write tracking (its uffd and token) in this checkpoint."""

    pid: int
    token: str  # the new token, recorded by this checkpoint
    fd: int  # the uffd, in the process
    trusted: bool  # the process carried the token of the version compared with
    fresh: bool  # armed by this checkpoint

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "token": self.token}


def find(pid: int) -> tuple[str | None, int | None, int | None]:
    """(token, uffd fd, address of the token mapping) of a tracked process."""
    for v in procfs.parse_maps(procfs.read(pid, "maps")):
        if v.path.startswith(MAPPED):
            token, _, fd = v.path[len(MAPPED) :].removesuffix(" (deleted)").partition(":")
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                    return token, int(fd), v.start
            except (OSError, ValueError):
                pass
            return None, None, v.start
    return None, None, None


def is_ours(pid: int, fd: int, target: str) -> bool:
    """Is this fd a write-tracking uffd cryo made: the one the process's token mapping
    names, or the same description inherited from an ancestor that was tracked when it
    forked (the token mapping is MADV_DONTFORK, the fd is not)?  Cryo's live at HIGH_FD
    and above; any other userfaultfd, at whatever fd, is the program's own."""
    if fd < HIGH_FD or target != "anon_inode:[userfaultfd]":
        return False
    start = pid
    for _ in range(64):  # up the ancestors that may have passed it on
        _, own, _ = find(pid)
        if own is not None and (own == fd if pid == start else _same(start, fd, pid, own)):
            return True
        try:
            pid = procfs.parse_stat(procfs.read(pid, "stat")).ppid
        except OSError:
            return False
        if pid <= 1:
            return False
    return False


def _same(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    try:
        return libc.kcmp_file(pid1, fd1, pid2, fd2)
    except OSError:
        return False


def prepare(ctx: DumpContext, previous_token: str | None) -> Tracking:
    """In the frozen process, with injected calls: make the uffd if there is none, and
    name the arming with a new token."""
    inj = ctx.inj
    token, fd, addr = find(ctx.pid)
    new = os.urandom(8).hex()  # (secrets.token_hex: its import brings hmac and OpenSSL)
    fresh = fd is None
    if addr is not None and fd is not None:
        _rename(inj, addr, f"{PREFIX}{new}:{fd}")
        return Tracking(ctx.pid, new, fd, token == previous_token, False)
    if addr is not None:  # the old name goes; a new one is made below
        inj(SYS.munmap, addr, PAGE_SIZE)
    if fd is None:
        low = inj(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD.USER_MODE_ONLY,
                  what=" userfaultfd")  # fmt: skip
        fd = inj(SYS.fcntl, low, F_DUPFD_CLOEXEC, HIGH_FD)
        inj(SYS.close, low)
    mfd = inj(SYS_memfd_create, inj.put_str(f"{PREFIX}{new}:{fd}"), MFD_CLOEXEC)
    try:
        inj(SYS_ftruncate, mfd, PAGE_SIZE)
        addr = inj(SYS.mmap, 0, PAGE_SIZE, PROT.READ, MAP.SHARED, mfd, 0)
        inj(SYS.madvise, addr, PAGE_SIZE, MADV_DONTFORK)
    finally:
        inj(SYS.close, mfd)
    return Tracking(ctx.pid, new, fd, not fresh and token == previous_token, fresh)


def _rename(inj: Injector, addr: int, name: str) -> None:
    """A new token for a process armed already, in one batch (one stop, not six): a memfd
    of the new name mapped over the old one's page (MAP_FIXED: the old mapping goes in
    the same call), kept out of forks again, its fd closed whatever failed.  A failure
    after the mapping leaves a name no version records: the next checkpoint does not
    trust the scan (as after any checkpoint that failed once it had renamed)."""
    with inj.batch() as b:
        mfd = b.call(SYS_memfd_create, b.put_str(name), MFD_CLOEXEC, what=" memfd_create")
        steps = [b.call(SYS_ftruncate, b.ref(mfd), PAGE_SIZE, may_fail=True),
                 b.call(SYS.mmap, addr, PAGE_SIZE, PROT.READ, MAP.SHARED | MAP.FIXED,
                        b.ref(mfd), 0, may_fail=True),
                 b.call(SYS.madvise, addr, PAGE_SIZE, MADV_DONTFORK, may_fail=True)]
        b.call(SYS.close, b.ref(mfd), may_fail=True)
    for i, nr in zip(steps, (SYS_ftruncate, SYS.mmap, SYS.madvise), strict=True):
        if -4096 < b.result(i) < 0:
            raise syscall_error(nr, b.result(i), inj.t.tid, " (the write-tracking token)")


def written(tr: Tracking, vmas: list[dict[str, Any]], present: list[tuple[int, int]],
            as_array: bool = False) -> Any:  # fmt: skip
    """The runs of ``present`` written since the last checkpoint (None: unknown, save
    them all); every private anonymous mapping is protected again for the next one.
    ``as_array``: the runs as an (n, 2) int64 array, in address order (for a sink that
    makes arrays of them: a list of 1,300 scattered pages is 1,300 lists made, then
    read back into an array)."""
    uffd = libc.fd_of(tr.pid, tr.fd)
    pm = os.open(f"/proc/{tr.pid}/pagemap", os.O_RDONLY)
    out: list[list[int]] = []
    parts: list[tuple[array.array[int] | None, list[list[int]]]] = []  # (as_array)
    try:
        if tr.fresh:
            libc.uffd_api(uffd, UFFD.FEATURE_WP_ASYNC | UFFD.FEATURE_WP_UNPOPULATED)
        for v in vmas:
            start, end = v["start"], v["end"]
            if v["kind"] != "anon":
                if v["kind"] == "file":  # copied-on-write pages: not tracked, all count
                    out.extend(_within(present, start, end))
                continue
            if tr.trusted:
                try:
                    # written, and there: a page written and then dropped (its PTE
                    # cleared, marker and all) reads "written", and holds nothing
                    words = libc.pagemap_scan_words(
                        pm, start, end, PAGE_IS.PRESENT | PAGE_IS.SWAPPED, PAGE_IS.WRITTEN,
                        mask=PAGE_IS.WRITTEN, flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                    )  # fmt: skip
                except OSError:
                    out.extend(_within(present, start, end))  # mapped since: not tracked
                else:
                    if as_array:  # (the lists before it, then its regions: in order)
                        parts.append((words, out))
                        out = []
                    else:
                        got = words.tolist()
                        out += [[s, e - s] for s, e in zip(got[0::3], got[1::3], strict=True)]
                    continue
            _arm(uffd, start, end)
    finally:
        os.close(pm)
        os.close(uffd)
    if not tr.trusted:
        return None
    if not as_array:
        return out
    import numpy as np

    pieces = []
    for regions, before in [*parts, (None, out)]:
        if before:
            pieces.append(np.asarray(before, dtype=np.int64).reshape(-1, 2))
        if regions:
            w = np.frombuffer(regions, dtype=np.uint64).reshape(-1, 3)[:, :2].astype(np.int64)
            w[:, 1] -= w[:, 0]
            pieces.append(w)
    return np.concatenate(pieces) if pieces else np.zeros((0, 2), dtype=np.int64)


def _arm(uffd: int, start: int, end: int) -> None:
    try:
        libc.uffd_register_wp(uffd, start, end - start)
        libc.uffd_writeprotect(uffd, start, end - start)
    except OSError as err:  # a mapping the kernel will not track: its pages always count
        log.debug("no write tracking for %#x-%#x: %s", start, end, err)


def _within(runs: list[tuple[int, int]], start: int, end: int) -> list[list[int]]:
    out = []
    for a, n in runs:
        s, e = max(a, start), min(a + n, end)
        if s < e:
            out.append([s, e - s])
    return out
