"""Memory: the mappings (VMAs) with address, size, protection and flags, the pages that
hold data, the mm fields (code/data/brk/stack/args/env, auxv, exe file), and the vDSO.

Dump: PAGEMAP_SCAN tells, per VMA, which pages exist (present or swapped) and whether
they still are the file's pages; only anonymous data is saved: every touched page of a
private anonymous mapping, the copied-on-write pages of a private file mapping, the
present pages of a shared anonymous mapping.  Pages move in large vectored calls
(process_vm_readv into block buffers) while a writer thread stores earlier blocks.

Restore: the helper's own mappings are unmapped, the vDSO/vvar are moved to the old
addresses, every VMA is mapped again (files by path), the pages are written from the
few buffers each block is read into in parts (a thread reads the next part meanwhile; a
block is checked with its last part), or, for a process that forks no child in the
restart, by two worker threads that read, check and write its blocks while the next
processes are made (:class:`Fills`), with UFFDIO_COPY into fresh private anonymous
mappings and process_vm_writev elsewhere, then protections and mm fields are set.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import errno
import functools
import itertools
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from cryo import procfs
from cryo.engine import cow, locks, shmem
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch, Injector, syscall_error
from cryo.engine.translate import apply as translated
from cryo.engine.translate import changed_how
from cryo.errors import CryoError, FileChanged, ImageIncompatible, InternalError, Unsupported
from cryo.image.format import checksum
from cryo.linux import libc, uffd
from cryo.linux import structs as S
from cryo.linux.consts import (
    MAP,
    MREMAP,
    PAGE_IS,
    PAGE_SIZE,
    PR,
    PR_SET_MM_MAP,
    PROT,
    SYS,
    UFFD,
    SYS_userfaultfd,
)
from cryo.linux.mm import (
    MADV,
    MAPX,
    MCL,
    MLOCK,
    PKEYS,
    PR_SET_MEMORY_MERGE,
    PR_SET_VMA,
    PR_SET_VMA_ANON_NAME,
    SYSX,
    huge_flag,
    hugepages_available,
)
from cryo.procfs import DELETED

log = logging.getLogger(__name__)
O_NOATIME = 0o1000000  # open a mapped file without moving its atime
KIND = b"MM  "
SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]")
SKIPPED = ("[vsyscall]", "[uprobes]")
BLOCK = 64 << 20  # bytes of page data per block
_ANON_NAMES = ("", "[heap]", "[stack]")
KCMP_VM = 1
AIO_RING = "/[aio] (deleted)"  # an io_setup() context's ring
SECRETMEM = "/secretmem (deleted)"  # memfd_secret()
HUGETLB_ANON = "/anon_hugepage (deleted)"  # MAP_HUGETLB | MAP_ANONYMOUS
# VmFlags (smaps) that map to an madvise() advice, restored after mapping
_MADVISE = {"dc": MADV.DONTFORK, "wf": MADV.WIPEONFORK, "hg": MADV.HUGEPAGE,
            "nh": MADV.NOHUGEPAGE, "dd": MADV.DONTDUMP, "mg": MADV.MERGEABLE,
            "rr": MADV.RANDOM, "sr": MADV.SEQUENTIAL}  # fmt: skip
# VmFlags named in `cryo show` and what they stand for
STATE_NAMES = {"dc": "dontfork", "wf": "wipeonfork", "hg": "hugepage", "nh": "nohugepage",
               "dd": "dontdump", "mg": "mergeable", "rr": "random", "sr": "sequential",
               "lo": "locked", "lf": "lock-onfault", "nr": "noreserve", "dp": "droppable",
               "sl": "sealed", "ht": "hugetlb"}  # fmt: skip
_SCAN_RET = (PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.FILE | PAGE_IS.PFNZERO
             | PAGE_IS.GUARD | PAGE_IS.HUGE)  # fmt: skip


def _same_mm(pid: int, other: int) -> bool:
    """Do the two processes share one address space (kcmp KCMP_VM; False where the
    other cannot be compared: gone, or not in cryo's pid namespace)?"""
    try:
        return libc.kcmp_same(KCMP_VM, pid, other)
    except OSError:
        return False


def _classify(v: procfs.Vma) -> str:
    path = v.path
    if path in SPECIAL:
        return "special"
    if path in SKIPPED or path.startswith("/memfd:cryo-wp:"):  # engine/dirty.py's own
        return "skip"
    if path == AIO_RING:
        return "aio"
    if path == SECRETMEM:  # (no other process can read it: not even with ptrace)
        return "unsupported"
    if not v.shared:
        if path in _ANON_NAMES or path.startswith("[anon:") or path == HUGETLB_ANON:
            return "anon"
        if path.startswith("/") and not path.endswith(" (deleted)"):
            return "file"
        if shmem.private_kind(path):  # a deleted file or a memfd, mapped private
            return "shmem"
    else:
        if path.startswith("/SYSV"):
            return "sysv-shm"
        if shmem.kind_of(path, True):
            return "shmem"
        if path.startswith("/") and not path.endswith(" (deleted)"):
            return "shared-file"
    return "unsupported"


PM_SWAP = 1 << 62
SWP_PTE_MARKER = 31  # the last swap type (1 << MAX_SWAPFILES_SHIFT) - 1: a PTE marker


def _swapped_not_markers(pm: int, start: int, end: int) -> list[tuple[int, int]]:
    """The pages of a "swapped" PAGEMAP_SCAN region that hold data: not PTE markers.  A
    uffd-wp marker (the write tracking's, on a page never populated: WP_UNPOPULATED) is
    a swap entry too; taken for a swapped page it was saved as a page of zeros, and the
    restore made it resident (and a PROT_NONE mapping writable for the while: VM_ACCOUNT)."""
    import numpy as np

    n = (end - start) // PAGE_SIZE
    raw = os.pread(pm, n * 8, start // PAGE_SIZE * 8)
    ent = np.frombuffer(raw, dtype=np.uint64)
    data = ~(((ent & np.uint64(PM_SWAP)) != 0) & ((ent & np.uint64(0x1F)) == SWP_PTE_MARKER))
    if data.all():
        return [(start, end)]
    edges = np.flatnonzero(np.diff(np.concatenate(([False], data, [False])).astype(np.int8)))
    return [(start + int(a) * PAGE_SIZE, start + int(b) * PAGE_SIZE)
            for a, b in zip(edges[::2], edges[1::2], strict=True)]  # fmt: skip


def _wanted(kind: str, cats: int) -> bool:
    """Does a PAGEMAP_SCAN region of this VMA kind hold data we must save?  (A guard
    page shows as swapped: it is a marker, not data.)"""
    if cats & PAGE_IS.GUARD:
        return False
    if kind == "anon":
        return not cats & PAGE_IS.PFNZERO
    # a private mapping of a file or object: only the pages copied on write
    return kind in ("file", "shmem") and not cats & PAGE_IS.FILE


# -- dump ------------------------------------------------------------------------------


def _real_path(pid: int, v: procfs.Vma) -> procfs.Vma:
    """A mapped file's name as it is: /proc/PID/maps writes a newline in it as "\\012"
    (and a backslash as itself, so the text cannot be told apart), its map_files link
    gives the name itself (found by probing: a file with a newline in its name was
    looked for under the escaped one, the restart failed PathMissing after the
    checkpoint exited 0)."""
    if v.path.endswith(DELETED) and v.path.startswith("/") and v.path not in _KERNEL_FILES \
            and not v.path.startswith(("/memfd:", "/SYSV")):  # fmt: skip
        return _linked_elsewhere(pid, v)
    if "\\012" not in v.path or not v.path.startswith("/"):
        return v
    try:
        return v._replace(path=os.readlink(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}"))
    except OSError:
        return v


_KERNEL_FILES = (AIO_RING, SECRETMEM, HUGETLB_ANON, "/dev/zero (deleted)")


def _linked_elsewhere(pid: int, v: procfs.Vma) -> procfs.Vma:
    """A "(deleted)" file that still has a link: glibc's sem_open makes a semaphore as
    /dev/shm/sem.XXXXXX, maps it, links it to its name and unlinks the first, so the
    process that made it maps "sem.XXXXXX (deleted)" and the others the same file by its
    name (Python's multiprocessing locks under forkserver and spawn).  Saved as a deleted
    file, it came back as a copy of its own, the semaphore no longer shared with the
    processes that opened it by name: a restored multiprocessing pool hung on its lock
    at exit (found by probing).  The mapping is that of the file's other name, looked
    for in the directory it was made in; one that cannot be found is refused."""
    st = os.stat(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}")
    if st.st_nlink == 0:
        return v
    where = os.path.dirname(v.path)
    with contextlib.suppress(OSError), os.scandir(where) as it:
        for e in it:
            if e.inode() == st.st_ino:
                with contextlib.suppress(OSError):
                    if e.stat(follow_symlinks=False).st_dev == st.st_dev:
                        return v._replace(path=e.path)
    raise Unsupported(f"mapping {v.start:#x}-{v.end:#x} of {v.path}: the file was unlinked"
                      f" from that name but still has {st.st_nlink} link(s), not in {where};"
                      " restored as a copy it would no longer be shared with them: not"
                      " supported", pid=pid, resource="memory")  # fmt: skip


def dump(ctx: DumpContext, objects: shmem.Objects) -> tuple[dict[str, Any],
                                                            list[tuple[int, int]]]:  # fmt: skip
    """Describe the address space; returns the MM record and the page runs to save.
    Shared memory objects go to ``objects``, whose data is saved once for all."""
    pid = ctx.pid
    vmas = [_real_path(pid, v) for v in procfs.parse_smaps_flags(procfs.read(pid, "smaps"))]
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    brk = ctx.live["brk"]
    runs: list[tuple[int, int]] = []
    out: list[dict[str, Any]] = []
    armed = any(v.path.startswith("/memfd:cryo-wp:") for v in vmas)  # dirty.py's uffd
    for v in vmas:
        _refuse(pid, v, armed)
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for v in vmas:
            kind = _classify(v)
            if kind == "unsupported":
                raise Unsupported(f"mapping {v.start:#x}-{v.end:#x} of {v.path or 'anonymous'}"
                                  f" ({v.perms}) is not supported", pid=pid,
                                  resource="memory")  # fmt: skip
            ent: dict[str, Any] = {"start": v.start, "end": v.end, "prot": v.prot,
                                   "shared": v.shared, "kind": kind, "path": v.path,
                                   "pgoff": v.offset, "flags": list(v.flags)}  # fmt: skip
            if kind == "sysv-shm":  # the inode of a SysV mapping is its shmid
                ent["shmid"] = v.inode
                ent["key"] = int(v.path[5:13], 16)
            if kind == "shmem":
                ent["obj"] = objects.add(pid, v, shmem.kind_of(v.path, True) or "anon")
                if not v.shared:
                    ent["file"] = objects.stat(ent["obj"])
            if kind in ("file", "shared-file"):
                fst = os.stat(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}")
                ent["file"] = [fst.st_dev, fst.st_ino, fst.st_size, fst.st_mtime_ns]
            if v.pkey:  # x86 memory protection key
                ent["pkey"] = v.pkey
            if "ht" in v.flags:  # hugetlb: its page size, to map it again as such
                ent["hugetlb"] = v.page_size
            if "gu" in v.flags:  # a mapping that may hold guard pages (PTE markers)
                ent["guards"] = _guards(pm, v.start, v.end)
            if kind in ("anon", "file") or (kind == "shmem" and not v.shared):
                nbytes = 0
                zeros: list[list[int]] = []
                thp: list[list[int]] = []
                for s0, e0, cats in libc.pagemap_scan(pm, v.start, v.end,
                                                      PAGE_IS.PRESENT | PAGE_IS.SWAPPED,
                                                      _SCAN_RET):  # fmt: skip
                    if kind == "anon" and cats & PAGE_IS.PFNZERO and cats & PAGE_IS.PRESENT:
                        zeros.append([s0, e0 - s0])  # read, never written: mapped again
                    elif kind == "anon" and cats & PAGE_IS.HUGE and cats & PAGE_IS.PRESENT \
                            and "ht" not in v.flags:  # a transparent huge page: collapsed
                        if thp and thp[-1][0] + thp[-1][1] == s0:
                            thp[-1][1] += e0 - s0
                        else:
                            thp.append([s0, e0 - s0])
                    if not _wanted(kind, cats):
                        continue
                    pieces = [(s0, e0)] if cats & PAGE_IS.PRESENT else \
                        _swapped_not_markers(pm, s0, e0)  # fmt: skip
                    for s, e in pieces:
                        if runs and runs[-1][0] + runs[-1][1] == s:
                            runs[-1] = (runs[-1][0], runs[-1][1] + e - s)
                        else:
                            runs.append((s, e - s))
                        nbytes += e - s
                ent["data"] = nbytes
                if zeros:
                    ent["zeros"] = zeros
                if thp:
                    ent["thp"] = thp
            out.append(ent)
    finally:
        os.close(pm)
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read()
    # pages still shared copy-on-write with the parent (dumped before us) are its pages
    cow_rec = None
    # a parent outside the checkpoint too (found by probing: restored, the process got a
    # memory of its own, the parent's writes no longer seen, exit 0)
    if st.ppid > 0 and _same_mm(pid, st.ppid):
        raise Unsupported(f"process {pid} shares its address space with its parent"
                          f" {st.ppid} (clone with CLONE_VM, or vfork): not supported",
                          pid=pid, resource="memory")  # fmt: skip
    siblings: list[list[int]] = []
    if st.ppid in objects.mm_pids:
        runs, inherited = cow.split(pid, st.ppid, runs)
        if inherited:
            cow_rec = {"from": st.ppid, "runs": inherited}
        # and those it shares with a sibling only (the parent rewrote its copy)
        runs, siblings = cow.split_siblings(pid, runs, [
            (p, r, starts) for p, (pp, r, starts) in objects.mm_own.items() if pp == st.ppid])
    objects.mm_pids.add(pid)
    own = sorted(runs)
    objects.mm_own[pid] = (st.ppid, own, [a for a, _ in own])
    rec = {
        "pid": pid, "vmas": out, "auxv": auxv,
        "mlockall": int(ctx.live.get("mlockall", 0)), "ksm_merge_any": _ksm_merge_any(pid),
        **({"pkeys": ctx.live["pkeys"]} if ctx.live.get("pkeys") else {}),
        **({"cow": cow_rec} if cow_rec else {}),
        **({"cow_siblings": siblings} if siblings else {}),
        "exe": procfs.readlink(pid, "exe"),
        "mm": {"start_code": st.start_code, "end_code": st.end_code,
               "start_data": st.start_data, "end_data": st.end_data,
               "start_brk": st.start_brk, "brk": brk, "start_stack": st.start_stack,
               "arg_start": st.arg_start, "arg_end": st.arg_end,
               "env_start": st.env_start, "env_end": st.env_end},
    }  # fmt: skip
    _check_exe(ctx, rec)
    return rec, runs


def _check_exe(ctx: DumpContext, rec: dict[str, Any]) -> None:
    """A deleted executable that no mapping maps (a program that unmapped its own image,
    as packers and loaders do) has nothing to be made again from (_deleted_exe_object):
    restored, the process's exe was cryo's python, exit 0 (found by probing).  Refused,
    unless --save-files keeps its bytes (spmf.py: it comes back as the saved copy,
    deleted)."""
    exe = rec["exe"]
    if (exe.endswith(" (deleted)") and not ctx.options.get("save_files")
            and not any(v.get("path") == exe and "obj" in v for v in rec["vmas"])):  # fmt: skip
        raise Unsupported(f"the executable of process {ctx.pid}, {exe}, is deleted and no"
                          " mapping maps it: nothing would make it again (--save-files"
                          " keeps a copy of it in the image)", pid=ctx.pid,
                          resource="executable")  # fmt: skip


# VmFlags that no system call can give a mapping back, refused before anything is done
_REFUSED = {
    "ss": "a shadow stack (x86 user shadow stacks) is not supported",
    "um": "it is registered with a userfaultfd (missing mode): not supported",
    "ui": "it is registered with a userfaultfd (minor mode): not supported",
}


def _refuse(pid: int, v: procfs.Vma, armed: bool) -> None:
    """Refuse a mapping whose state cryo cannot restore, naming it."""
    why = next((msg for f, msg in _REFUSED.items() if f in v.flags), None)
    if why is None and "uw" in v.flags and not armed:
        why = "it is registered with a userfaultfd (write-protect mode): not supported"
    if why is None and {"pf", "io"} & set(v.flags) and v.path not in SPECIAL + SKIPPED:
        why = "it maps device memory (VM_PFNMAP/VM_IO): not supported"
    if why:
        raise Unsupported(f"mapping {v.start:#x}-{v.end:#x} of {v.path or 'anonymous'}: {why}",
                          pid=pid, resource="memory")  # fmt: skip


def _ksm_merge_any(pid: int) -> bool:
    """PR_SET_MEMORY_MERGE: shown only in /proc/PID/ksm_stat (absent without KSM)."""
    try:
        return b"ksm_merge_any: yes" in procfs.read(pid, "ksm_stat")
    except (CryoError, OSError):
        return False


def _guards(pm: int, start: int, end: int) -> list[list[int]]:
    """[address, length] runs of the guard pages (MADV_GUARD_INSTALL) in [start, end)."""
    out: list[list[int]] = []
    for s, e, _cats in libc.pagemap_scan(pm, start, end, PAGE_IS.GUARD, PAGE_IS.GUARD):
        if out and out[-1][0] + out[-1][1] == s:
            out[-1][1] += e - s
        else:
            out.append([s, e - s])
    return out


def dump_brk(ctx: DumpContext, b: Batch) -> Generator[None, Batch, None]:
    """Queue hook (drivers.py).  brk(0) returns the current break: only the task can
    tell.  And mlockall's MCL_FUTURE, which no /proc file shows: the scratch mapping,
    mapped just now by an injected mmap, is locked (VmFlags lo, lf) if and only if the
    mm's default flags lock every new mapping.  That takes smaps, which walks every
    page (10-15 ms for 1 GiB resident): read only when the status's VmLck says some
    mapping is locked (with MCL_FUTURE, the scratch is)."""
    scratch = ctx.inj.scratch
    brk = b.call(SYS.brk, 0)  # (with the protection keys, in the process's batch)
    pkeys = _allocated_pkeys(b, scratch) if scratch and _has_pku() else {}
    yield
    ctx.live["brk"] = b.result(brk)
    ctx.live["pkeys"] = [k for k, i in pkeys.items() if b.result(i) == 0]
    ctx.live["mlockall"] = 0
    locked = procfs.parse_status(procfs.read(ctx.pid, "status")).get("VmLck", "0 kB")
    if not scratch or locked == "0 kB":
        return
    for v in procfs.parse_smaps_flags(procfs.read(ctx.pid, "smaps")):
        if scratch and v.start <= scratch < v.end and "lo" in v.flags:
            ctx.live["mlockall"] = MCL.FUTURE | (MCL.ONFAULT if "lf" in v.flags else 0)


@functools.cache
def _has_pku() -> bool:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return " pku" in line
    return False


def _allocated_pkeys(b: Batch, scratch: int) -> dict[int, int]:
    """The protection keys the process has allocated (pkey_alloc), used by a mapping or
    not: no /proc file lists them, but pkey_mprotect() of our scratch page with a key
    fails with EINVAL exactly when the key is not allocated.  Queued in ``b`` (one stop,
    not one single-stepped call per key); returns {key: index of its call}: allocated
    if that call returned 0.  The scratch goes back to key 0 (always allocated) last;
    nothing of the process changes."""
    prot = PROT.READ | PROT.WRITE
    keys = {k: b.call(SYSX.pkey_mprotect, scratch, PAGE_SIZE, prot, k, may_fail=True)
            for k in range(1, PKEYS)}  # fmt: skip
    b.call(SYSX.pkey_mprotect, scratch, PAGE_SIZE, prot, 0, what="pkey_mprotect(key 0)")
    return keys


def split_blocks(runs: list[tuple[int, int]], block: int = BLOCK) -> Iterator[list[list[int]]]:
    cur: list[list[int]] = []
    size = 0
    for start, total in runs:
        if total and size + total < block:  # (most runs: a few pages written here and there)
            cur.append([start, total])
            size += total
            continue
        addr, length = start, total
        while length:
            take = min(length, block - size)
            cur.append([addr, take])
            size += take
            addr += take
            length -= take
            if size == block:
                yield cur
                cur, size = [], 0
    if cur:
        yield cur


@dataclass
class CopyStats:
    """What a copy of pages took: bytes, seconds frozen, seconds in all."""

    bytes: int = 0
    read_seconds: float = 0.0  # how long the target had to stay frozen for its pages
    total_seconds: float = 0.0


RING = 4  # block buffers in flight between the reader and the writer


class BufferPool:
    """Block buffers: up to ``limit`` bytes of them; reused once the writer is done.

    Measured here (bench/dump_restore.py): allocating a fresh, zeroed buffer for every
    block costs more than the writer needs to free one, so a small ring is both the
    shorter freeze and the shorter dump when the disk keeps up."""

    def __init__(self, limit: int, size: int = BLOCK) -> None:
        self.free: list[mmap.mmap] = []
        self.limit = max(limit, 2 * BLOCK)
        self.allocated = 0
        # a checkpoint with little to copy (tracked, pre-copied) need not populate 64 MiB
        self.size = max(PAGE_SIZE, min(size, BLOCK))
        self.cv = threading.Condition()

    def get(self) -> mmap.mmap:
        with self.cv:
            while not self.free and self.allocated + self.size > self.limit:
                self.cv.wait()
            if self.free:
                return self.free.pop()
            self.allocated += self.size
        if self.size <= KEEP:
            with _KEPT_LOCK:
                if _KEPT and len(_KEPT[-1]) >= self.size:
                    return _KEPT.pop()
            size = -(-self.size // KEEP_STEP) * KEEP_STEP  # (kept: reused at sizes near)
        else:
            size = self.size
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                         | getattr(mmap, "MAP_POPULATE", 0x8000))  # fmt: skip

    def put(self, buf: mmap.mmap) -> None:
        with self.cv:
            self.free.append(buf)
            self.cv.notify()

    def keep(self) -> None:
        """Done: one small buffer stays populated for this process's next copy (a
        periodic checkpoint copies the few MiB written since the last: mapping and
        populating a fresh buffer was 2-4 ms of its freeze), the others are unmapped."""
        with self.cv:
            free, self.free = self.free, []
        with _KEPT_LOCK:
            for buf in free:
                gone: mmap.mmap | None = buf
                if len(buf) <= KEEP and (not _KEPT or len(buf) > len(_KEPT[0])):
                    gone = _KEPT.pop() if _KEPT else None
                    _KEPT.append(buf)
                if gone is not None:
                    with contextlib.suppress(BufferError):  # (else unmapped once unused)
                        gone.close()


KEEP = 16 << 20  # a block buffer this size or smaller is kept for the next copy
KEEP_STEP = 1 << 20  # kept buffers' sizes are multiples of this
_KEPT: list[mmap.mmap] = []  # at most one
_KEPT_LOCK = threading.Lock()


@dataclass
class Source:
    """Page data to save: runs of one process's memory, or of a shared object's file."""

    tag: dict[str, int]  # {"pid": pid} or {"obj": id}: goes into each PBLK record
    runs: list[tuple[int, int]]
    read: Callable[[mmap.mmap, list[list[int]]], int]
    close: Callable[[], None] = lambda: None


def process_source(pid: int, runs: list[tuple[int, int]],
                   vmas: list[dict[str, Any]]) -> Source:  # fmt: skip
    unreadable = [(v["start"], v["end"]) for v in vmas if not v["prot"] & PROT.READ]
    mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    return Source({"pid": pid}, runs,
                  lambda buf, block: _read_block(pid, mem_fd, buf, block, unreadable),
                  lambda: os.close(mem_fd))  # fmt: skip


def object_source(obj_id: int, fd: int, runs: list[tuple[int, int]]) -> Source:
    def read(buf: mmap.mmap, block: list[list[int]]) -> int:
        off = 0
        for start, length in block:
            _pread_full(fd, memoryview(buf)[off : off + length], start)
            off += length
        return off

    return Source({"obj": obj_id}, runs, read, lambda: os.close(fd))


def copy_pages(sources: list[Source],
               store: Callable[[memoryview, list[list[int]], int | None], dict[str, Any]],
               *, buffer_limit: int, progress: Callable[[int], None] | None = None,
               on_read_done: Callable[[], None] | None = None, checksums: bool = True,
               ) -> tuple[list[dict[str, Any]], CopyStats]:  # fmt: skip
    """Read every source block by block; a writer thread hands each to ``store`` (a
    single block: this thread, once it is read).

    ``on_read_done`` runs as soon as every page is in our buffers (the targets may go).
    With ``checksums`` each block's checksum is computed here and handed to ``store``.
    Returns the PBLK records in order, each tagged with its source.
    """
    stats = CopyStats()
    t0 = time.perf_counter()
    largest = max((sum(n for _, n in src.runs) for src in sources), default=0)
    pool = BufferPool(min(buffer_limit, RING * BLOCK), size=largest)
    q: queue.Queue[tuple[mmap.mmap, int, list[list[int]], int | None, dict[str, int]] | None]
    q = queue.Queue()
    metas: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    def write(item: tuple[mmap.mmap, int, list[list[int]], int | None, dict[str, int]]
              ) -> None:  # fmt: skip
        buf, size, block_runs, csum, tag = item
        try:
            if not failure:
                meta = store(memoryview(buf)[:size], block_runs, csum)
                meta.update(tag)
                metas.append(meta)
                if progress:
                    progress(size)
        except BaseException as err:
            failure.append(err)
        finally:
            pool.put(buf)

    def writer() -> None:
        while (item := q.get()) is not None:
            write(item)

    th: threading.Thread | None = None
    done = False
    try:
        blocks = [(src, b) for src in sources for b in split_blocks(src.runs)]
        # one block (a small program's memory) is written here, after its read as the
        # writer would: no thread to start and join (Thread.start waits until the new
        # thread runs: a wait for a CPU on a loaded machine, in every small checkpoint)
        put = write
        if len(blocks) > 1:
            th = threading.Thread(target=writer, name="cryo-writer", daemon=True)
            th.start()
            put = q.put
        for i, (src, block_runs) in enumerate(blocks):
            if failure:
                break
            buf = pool.get()
            size = src.read(buf, block_runs)
            stats.bytes += size
            if i == len(blocks) - 1:
                # every page is in our buffers: the targets go before the writer takes
                # the last block (hashing it, it held the GIL through each system call
                # of the release, one switch interval each: milliseconds of the freeze)
                stats.read_seconds = time.perf_counter() - t0
                done = True
                if on_read_done and not failure:
                    on_read_done()
            # the reader has time to spare while the writer waits on the disk
            csum = checksum(memoryview(buf)[:size]) if checksums else None
            put((buf, size, block_runs, csum, src.tag))
        if not done:
            stats.read_seconds = time.perf_counter() - t0
            if on_read_done and not failure:
                on_read_done()
    finally:
        if th is not None:
            q.put(None)
            th.join()
        pool.keep()
        for src in sources:
            src.close()
    if failure:
        raise failure[0]
    stats.total_seconds = time.perf_counter() - t0
    return metas, stats


def _read_block(pid: int, mem_fd: int, buf: mmap.mmap, runs: list[list[int]],
                unreadable: list[tuple[int, int]]) -> int:  # fmt: skip
    if len(runs) >= MANY_RUNS:
        return _read_many(pid, mem_fd, buf, runs, unreadable)
    base = libc.buffer_address(buf)
    off = 0
    batch_local: list[tuple[int, int]] = []
    batch_remote: list[tuple[int, int]] = []
    batch_off = 0

    def flush() -> None:
        if not batch_local:
            return
        want = sum(n for _, n in batch_local)
        got = libc.process_vm_readv(pid, batch_local, batch_remote)
        if got != want:  # a page we may not read directly: /proc/PID/mem can
            _read_mem(mem_fd, buf, batch_off + got, batch_remote, got)
        batch_local.clear()
        batch_remote.clear()

    for addr, length in runs:
        if any(s <= addr < e for s, e in unreadable):
            flush()
            _pread_full(mem_fd, memoryview(buf)[off : off + length], addr)
        else:
            if not batch_local:
                batch_off = off
            batch_local.append((base + off, length))
            batch_remote.append((addr, length))
            if len(batch_local) == libc.IOV_MAX:
                flush()
        off += length
    flush()
    return off


MANY_RUNS = 64  # runs in a block from which the iovecs are made as arrays, not one by one


def _read_many(pid: int, mem_fd: int, buf: mmap.mmap, runs: list[list[int]],
               unreadable: list[tuple[int, int]]) -> int:  # fmt: skip
    """_read_block for a block of many runs (the scattered pages a periodic checkpoint
    copies: 1,300 runs were 3-5 ms of its freeze gathered one by one): the iovecs made
    as arrays of the standard library (array 'Q'), IOV_MAX at a time; a run in a mapping
    we may not read directly through /proc/PID/mem, as there.  Not numpy: as fast here
    (the kernel's copy is the cost: 0.73 ms for 1,300 runs, 24 ms for 20,000, both
    ways), while its import costs a one-shot worker 35 ms of CPU and OpenBLAS's threads,
    which spin waiting for work, some 100 ms more (bench/tcp.py, issue 11)."""
    lens = [n for _, n in runs]
    offs = list(itertools.accumulate(lens, initial=0))
    base = libc.buffer_address(buf)
    bad = None
    if unreadable:  # bounds s0 e0 s1 e1 ...: a run starts in one where its index is odd
        bounds = sorted(itertools.chain.from_iterable(unreadable))
        odd = [bisect.bisect_right(bounds, a) & 1 for a, _ in runs]
        bad = odd if any(odd) else None
    i, n = 0, len(runs)
    while i < n:
        j = n
        if bad is not None:  # a stretch of runs all readable directly, or all not
            j = i + 1
            while j < n and bad[j] == bad[i]:
                j += 1
            if bad[i]:
                for k in range(i, j):
                    _pread_full(mem_fd, memoryview(buf)[offs[k] : offs[k + 1]], runs[k][0])
                i = j
                continue
        for c in range(i, j, libc.IOV_MAX):
            d = min(j, c + libc.IOV_MAX)
            remote = array.array("Q", itertools.chain.from_iterable(runs[c:d]))
            local = array.array("Q", remote)  # (the lengths; the addresses set below)
            local[0::2] = array.array("Q", [base + o for o in offs[c:d]])
            got = libc.process_vm_readv_raw(pid, local.buffer_info()[0],
                                            remote.buffer_info()[0], d - c)  # fmt: skip
            if got != offs[d] - offs[c]:  # a page we may not read directly: /proc/PID/mem can
                _read_mem(mem_fd, buf, offs[c] + got,
                          [(x, m) for x, m in runs[c:d]], got)  # fmt: skip
        i = j
    return offs[-1]


def _read_mem(mem_fd: int, buf: mmap.mmap, buf_off: int, remote: list[tuple[int, int]],
              skip: int) -> None:  # fmt: skip
    """Finish a short process_vm_readv through /proc/PID/mem, from byte ``skip`` on."""
    for addr, length in remote:
        if skip >= length:
            skip -= length
            continue
        _pread_full(mem_fd, memoryview(buf)[buf_off : buf_off + length - skip], addr + skip)
        buf_off += length - skip
        skip = 0


def _pread_full(fd: int, view: memoryview, addr: int) -> None:
    while view:
        n = os.preadv(fd, [view], addr)
        if n <= 0:
            raise CryoError(f"cannot read memory at {addr:#x}")
        view, addr = view[n:], addr + n


# -- restore ---------------------------------------------------------------------------


_specials: dict[str, int] = {}  # own_specials() as last read


def own_specials() -> dict[str, int]:
    """Sizes of this kernel's vDSO and vvar mappings (same in every process)."""
    got = {v.path: v.size for v in procfs.parse_maps(procfs.read("self", "maps"))
           if v.path in SPECIAL}  # fmt: skip
    _specials.clear()
    _specials.update(got)
    return got


def check(rec: dict[str, Any]) -> None:
    check_hugepages(_hugetlb_private(rec))
    # (what an earlier process's check read: our maps are ~300 lines, 1-2 ms to parse,
    # once per process of an image; a size that differs is read again before it counts)
    here = dict(_specials) or own_specials()
    for v in rec["vmas"]:
        if v["kind"] == "special" and here.get(v["path"]) != v["end"] - v["start"]:
            here = own_specials()  # read again: one restart of a JVM's image saw no
        if v["kind"] == "special" and here.get(v["path"]) != v["end"] - v["start"]:  # [vvar]
            raise ImageIncompatible(
                f"the image's {v['path']} is {v['end'] - v['start']} bytes, this kernel's is"
                f" {here.get(v['path'])}: restoring on another kernel is not supported yet"
            )


def _hugetlb_private(rec: dict[str, Any]) -> dict[int, int]:
    """Huge pages, by size, that the private hugetlb mappings of a process reserve."""
    need: dict[int, int] = {}
    for v in rec["vmas"]:
        size = v.get("hugetlb")
        if size and v["kind"] == "anon" and "nr" not in v["flags"]:
            need[size] = need.get(size, 0) + (v["end"] - v["start"]) // size
    return need


def check_hugepages(need: dict[int, int]) -> None:
    """Refuse a restart for which this machine's huge page pool is too small, before
    anything is created."""
    for size, n in need.items():
        have = hugepages_available(size)
        if n > have:
            raise CryoError(f"the image needs {n} huge pages of {size >> 10} kB and {have}"
                            " are free here (raise /proc/sys/vm/nr_hugepages or"
                            f" /sys/kernel/mm/hugepages/hugepages-{size >> 10}kB/nr_hugepages)",
                            resource="hugetlb")  # fmt: skip


def free_area(*layouts: list[tuple[int, int]], size: int, low: int = 0x10000000) -> int:
    """An address range of ``size`` bytes free in every layout."""
    busy = sorted(r for layout in layouts for r in layout)
    addr = low
    for s, e in busy:
        if e <= addr:
            continue
        if s >= addr + size:
            break
        addr = (e + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if addr + size > 0x7FFFFFFFF000:
        raise InternalError("no free address range for the restorer")
    return addr


TASK_SIZE = 0x7FFFFFFFF000


def unmap_helper(ctx: RestoreContext, keep: tuple[int, int],
                 also: list[tuple[int, int]] | tuple[()] = (),
                 specials: tuple[dict[str, Any], int] | None = None,
                 into: Batch | None = None) -> None:  # fmt: skip
    """Unmap everything of the helper but ``keep``, ``also`` (the mappings a child
    inherits from its restored parent: :func:`inherit_from_parent`) and the vDSO/vvar:
    one munmap per gap between them (unmapping a range with holes in it is fine).  With
    ``specials`` (the MM record and a free address), the vDSO and vvar are then moved to
    where the image had them in the same stop (:func:`move_specials`).  The calls go in
    a batch of their own, or at the end of ``into`` (map_vmas' first: one stop less).
    A root forked by cryo has cryo's vDSO and vvar: its maps are not read again."""
    maps = ctx.live.get("helper_maps") or procfs.parse_maps(procfs.read(ctx.pid, "maps"))
    inherited = (getattr(ctx, "live", None) or {}).get("inherited_ranges", [])
    kept = sorted([keep, *also, *inherited, *staged_sources(ctx)]
                  + [(v.start, v.end) for v in maps if v.path in SPECIAL])  # fmt: skip
    lo = PAGE_SIZE
    with contextlib.nullcontext(into) if into is not None else ctx.inj.batch() as bt:
        # one stop (a gap over the restorer would run on its own)
        for start, end in kept:
            if start > lo:
                bt.call(SYS.munmap, lo, start - lo)
            lo = max(lo, end)
        if lo < TASK_SIZE:
            bt.call(SYS.munmap, lo, TASK_SIZE - lo)
        if specials is not None:  # (the munmaps left them where they are in maps)
            _move_specials(bt, {v.path: v for v in maps if v.path in SPECIAL}, *specials)


def staged_sources(ctx: RestoreContext) -> list[tuple[int, int]]:
    """Where the pieces staged for this process are in the helper (cryo.migrate.stage:
    ``ctx.live["staged"]``, [(start, end, address)]): kept until map_vmas moves them."""
    staged = (getattr(ctx, "live", None) or {}).get("staged", ())
    return [(at, at + e - s) for s, e, at in staged]


def move_specials(ctx: RestoreContext, rec: dict[str, Any], temp: int) -> None:
    """Move the helper's vDSO and vvar to where the image had them (through ``temp``)."""
    cur = {v.path: v for v in procfs.parse_maps(procfs.read(ctx.pid, "maps"))
           if v.path in SPECIAL}  # fmt: skip
    with ctx.inj.batch() as bt:  # one stop: neither range is the restorer's
        _move_specials(bt, cur, rec, temp)


def _move_specials(bt: Batch, cur: dict[str, procfs.Vma], rec: dict[str, Any], temp: int
                   ) -> None:  # fmt: skip
    want = {v["path"]: v for v in rec["vmas"] if v["kind"] == "special"}
    off = temp
    staged: dict[str, int] = {}
    for path, v in cur.items():
        if path not in want:
            bt.call(SYS.munmap, v.start, v.size)
            continue
        bt.call(SYS.mremap, v.start, v.size, v.size, MREMAP.MAYMOVE | MREMAP.FIXED, off)
        staged[path] = off
        off += v.size
    for path, addr in staged.items():
        w = want[path]
        bt.call(SYS.mremap, addr, w["end"] - w["start"], w["end"] - w["start"],
                MREMAP.MAYMOVE | MREMAP.FIXED, w["start"])  # fmt: skip


def inherit_from_parent(ctx: RestoreContext, rec: dict[str, Any],
                        parent_rec: dict[str, Any]) -> list[tuple[int, int]]:  # fmt: skip
    """For a child forked from its restored parent once the parent's pages are written
    (and before the parent's protect()): which of its mappings it keeps as inherited,
    sharing the parent's pages copy-on-write.  Call it before :func:`unmap_helper`
    (which then keeps them: they are in ``ctx.live``); map_vmas() leaves them in place
    (only dropping the parent's pages the child did not have) and write_pages() writes
    only the child's own pages.  Needs a context with ``live`` (the session's)."""
    live: dict[str, Any] = ctx.live
    inherited = rec.get("cow")
    if inherited and inherited["from"] != parent_rec["pid"]:
        inherited = None
    sib = _siblings(ctx)  # (the pages it shares with its siblings, held by the parent)
    kept = sib[1].get(ctx.old_pid, []) if sib is not None and parent_rec["pid"] in sib[2] \
        else []  # fmt: skip
    if not inherited and not kept:
        return []
    vmas = cow.inherited_vmas(rec, parent_rec)
    ranges: list[tuple[int, int]] = [(v["start"], v["end"]) for v in vmas]
    kept = cow.within(kept, ranges)
    mine = [*(inherited["runs"] if inherited else ()), *kept]
    live["inherited"] = {v["start"]: cow.foreign_runs(v, [], mine) for v in vmas}
    live["sibling_kept"] = kept
    live["inherited_ranges"] = ranges
    live["cow_inherited"] = True
    if parent_rec.get("ksm_merge_any") and not rec.get("ksm_merge_any"):
        ctx.inj(SYS.prctl, PR_SET_MEMORY_MERGE, 0, 0, 0, 0)  # inherited by fork
    return ranges


def map_vmas(ctx: RestoreContext, rec: dict[str, Any],
             first: Callable[[Batch], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """mmap every VMA of the image; those that receive data are writable for now.
    Returns the VMAs whose protection must be set afterwards.  The calls go in one
    batch (one ptrace stop), the mapped files opened as they come.  ``first`` queues
    calls that must come before the mappings (unmap_helper's) into the first batch,
    after the files' opens."""
    inj = ctx.inj
    before = [first] if first is not None else []
    fds: dict[str, int] = {}
    fixup: list[dict[str, Any]] = []
    free_keys = _restore_pkeys(ctx, rec.get("pkeys", []))
    merge_any = bool(rec.get("ksm_merge_any"))
    live = getattr(ctx, "live", None) or {}
    inherited: dict[int, list[tuple[int, int]]] = live.get("inherited", {})
    staged = {s: (e, at) for s, e, at in live.get("staged", ())}
    try:
        # first (their paths go through the scratch, as the batch's own buffers do)
        _open_mapped(ctx, [v for v in rec["vmas"] if v["kind"] in ("file", "shared-file")
                           and v["start"] not in inherited], fds, before)  # fmt: skip
        held = [v for v in rec["vmas"] if v.get("locks") and v["path"] in fds]
        with inj.batch() as bt:
            while before:  # (no file to open: here)
                before.pop()(bt)
            for k in free_keys:  # (may fail: a CPU without protection keys)
                bt.call(SYSX.pkey_free, k, may_fail=True)
            _map_all(ctx, rec, bt, fds, fixup, inherited, merge_any, staged)
            if not held:  # the files are mapped: closed in the same stop
                for fd in fds.values():
                    bt.call(SYS.close, fd, may_fail=True)
            # the userfaultfd the pages will go through (_Filler.open), made in this stop
            made = _Filler.wanted(ctx, rec, live.get("inherited_ranges", []))
            uffd_call = bt.call(SYS_userfaultfd, _UFFD_FLAGS, may_fail=True) if made else -1
        if uffd_call >= 0:
            live["uffd"] = bt.result(uffd_call)
        if not held:
            fds.clear()
        for v in held:  # a lock only the mapping held, on its description (locks.py)
            locks.take_through_mapping(inj, fds[v["path"]], v)
    finally:
        if fds:
            with inj.batch() as bt:
                for fd in fds.values():
                    bt.call(SYS.close, fd, may_fail=True)
    return fixup


def _map_all(ctx: RestoreContext, rec: dict[str, Any], bt: Batch, fds: dict[str, int],
             fixup: list[dict[str, Any]], inherited: dict[int, list[tuple[int, int]]],
             merge_any: bool, staged: dict[int, tuple[int, int]]) -> None:  # fmt: skip
    """map_vmas' calls, queued in ``bt`` (the mapped files are open in ``fds``).  A VMA
    in ``staged`` (start -> (end, address)) is moved from where its pages were staged
    (the rounds of a migration, cryo.migrate.stage): page tables move, no page is copied."""
    if merge_any:  # every VMA mapped from now on is mergeable (the others are unmerged)
        bt.call(SYS.prctl, PR_SET_MEMORY_MERGE, 1, 0, 0, 0, what=" PR_SET_MEMORY_MERGE")
    prev: dict[str, Any] | None = None  # the anonymous VMA mapped just before, if any
    for v in rec["vmas"]:
        kind = v["kind"]
        last, prev = prev, None
        if kind == "sysv-shm" and (_after_pages(v) or _MADVISE.keys() & set(v["flags"])):
            fixup.append(v)  # sysvshm.attach maps it; its advice and lock in protect()
        if kind in ("special", "skip", "sysv-shm", "aio"):  # sysvshm.attach maps sysv-shm,
            # aio.restore an AIO ring
            continue
        size = v["end"] - v["start"]
        prot = v["prot"]
        if v.get("data"):
            prot |= PROT.READ | PROT.WRITE
        vflags = v["flags"]
        if v["start"] in inherited:  # there already, with the parent's pages
            bt.call(SYS.mprotect, v["start"], size, prot)
            for addr, length in inherited[v["start"]]:  # pages the child did not have
                bt.call(SYS.madvise, addr, length, MADV.DONTNEED)
            if prot != v["prot"] or _after_pages(v):
                fixup.append(v)
            continue
        flags = MAP.FIXED | (MAP.SHARED if v["shared"] else MAP.PRIVATE)
        if "nr" in vflags:
            flags |= MAPX.NORESERVE
        if "dp" in vflags:  # MAP_DROPPABLE is a mapping type of its own
            flags = (flags & ~MAP.PRIVATE) | MAPX.DROPPABLE
        if kind == "shmem":  # the object's fd was inherited from cryo
            bt.call(SYS.mmap, v["start"], size, prot, flags, ctx.shared.objects.fds[v["obj"]],
                    v["pgoff"], what=f" mmap {v['path']}")  # fmt: skip
        elif kind in ("file", "shared-file"):
            bt.call(SYS.mmap, v["start"], size, prot, flags, fds[v["path"]], v["pgoff"],
                    what=f" mmap {v['path']}")  # fmt: skip
        elif v["start"] in staged and staged[v["start"]][0] == v["end"] and kind == "anon":
            at = staged[v["start"]][1]
            bt.call(SYS.mremap, at, size, size, MREMAP.MAYMOVE | MREMAP.FIXED, v["start"],
                    what=f" mremap {at:#x} to {v['start']:#x}")  # fmt: skip
            if prot != PROT.READ | PROT.WRITE:  # (staged read-write)
                bt.call(SYS.mprotect, v["start"], size, prot)
        else:
            flags |= MAP.ANONYMOUS
            if "gd" in v["flags"]:
                flags |= MAP.GROWSDOWN
            if v.get("hugetlb"):
                flags |= huge_flag(v["hugetlb"])
            if (last is not None and _would_merge(last, v)) or _accounted(v, prot):
                _map_apart(bt, v, prot, flags)
            else:
                bt.call(SYS.mmap, v["start"], size, prot, flags, -1, 0,
                        what=f" mmap {v['start']:#x}")  # fmt: skip
            if not v["shared"] and not v.get("hugetlb") and "gd" not in v["flags"]:
                prev = v
        name = _anon_name(v["path"])
        if name is not None:  # PR_SET_VMA_ANON_NAME (CONFIG_ANON_VMA_NAME)
            bt.call(SYS.prctl, PR_SET_VMA, PR_SET_VMA_ANON_NAME, v["start"], size,
                    bt.put_str(name), what=f" PR_SET_VMA_ANON_NAME {v['path']}")  # fmt: skip
        for flag in vflags:
            if flag in _MADVISE:
                bt.call(SYS.madvise, v["start"], size, _MADVISE[flag],
                        what=f" {_MADVISE[flag].name} {v['start']:#x}")  # fmt: skip
        if merge_any and "mg" not in vflags:
            bt.call(SYS.madvise, v["start"], size, MADV.UNMERGEABLE)
        if prot != v["prot"] or _after_pages(v):
            fixup.append(v)


def _would_merge(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Would the kernel merge anonymous VMA ``b``, mapped right after ``a``, into it?
    Two such VMAs were kept apart by what /proc does not show (their pgoff, their
    anon_vma: a VMA moved there by mremap, as glibc's realloc and the JVM do)."""
    return (a["end"] == b["start"] and a["prot"] == b["prot"] and a["flags"] == b["flags"]
            and a["path"] == b["path"] and not b["shared"] and not b.get("hugetlb")
            and "gd" not in b["flags"])  # fmt: skip


def _accounted(v: dict[str, Any], prot: int) -> bool:
    """Is private anonymous VMA ``v`` charged as committed memory (VM_ACCOUNT, "ac")
    though it is mapped without PROT_WRITE?  A mapping made writable is, and keeps it
    when made read-only or PROT_NONE once it has an anon_vma (a page was written: a
    JVM's stack guard pages); mapped so directly it is not (found by probing: "ac"
    lost, exit 0; the commit charge, Committed_AS, is what overcommit 2 limits).  Mapped
    as _map_apart does (writable, a page written, then its protection), it keeps it."""
    return "ac" in v["flags"] and not prot & PROT.WRITE and not v["shared"] \
        and not v.get("hugetlb") and "gd" not in v["flags"]  # fmt: skip


def _map_apart(bt: Batch, v: dict[str, Any], prot: int, flags: int) -> None:
    """Map anonymous VMA ``v`` so that it stays a VMA of its own, as it was (found by
    probing: two adjacent VMAs of a JVM and of python3 came back as one, exit 0): mapped
    where the kernel likes, one page of it written (MADV_POPULATE_WRITE: it gets an
    anon_vma of its own, and mremap keeps its pgoff then), moved into place, that page
    dropped again.  Neither its anon_vma nor its pgoff is the neighbour's: no merge."""
    size = v["end"] - v["start"]
    k = bt.call(SYS.mmap, 0, size, PROT.READ | PROT.WRITE, flags & ~MAP.FIXED, -1, 0,
                what=f" mmap for {v['start']:#x}")  # fmt: skip
    bt.call(SYS.madvise, bt.ref(k), PAGE_SIZE, MADV.POPULATE_WRITE,
            what=f" MADV_POPULATE_WRITE for {v['start']:#x}")  # fmt: skip
    bt.call(SYS.mremap, bt.ref(k), size, size, MREMAP.MAYMOVE | MREMAP.FIXED, v["start"],
            what=f" mremap to {v['start']:#x}")  # fmt: skip
    bt.call(SYS.madvise, v["start"], PAGE_SIZE, MADV.DONTNEED)
    if prot != PROT.READ | PROT.WRITE:
        bt.call(SYS.mprotect, v["start"], size, prot)


def _restore_pkeys(ctx: RestoreContext, want: list[int]) -> list[int]:
    """Allocate exactly the protection keys of the image: pkey_alloc() gives the lowest
    free key, so every key up to the highest wanted is taken and the others given back.
    (The PKRU rights pkey_alloc sets in this thread are overwritten with the saved
    registers.)  Where none is wanted, the keys to free are returned, for the caller's
    next batch."""
    inj = ctx.inj
    if not (getattr(ctx, "live", None) or {}).get("cow_inherited"):
        if not want:
            return []  # a helper forked from cryo has no keys
    elif not want:  # a process forked from a restored parent has its keys: all freed
        return list(range(1, PKEYS))
    with inj.batch() as bt:  # a process forked from a restored parent has its keys
        for k in range(1, PKEYS):
            if k not in want:
                bt.call(SYSX.pkey_free, k, may_fail=True)
    extra = []
    while want and (k := inj.raw(SYSX.pkey_alloc, 0, 0)) < max(want):
        if k < 0:
            raise CryoError(f"cannot allocate protection keys {want} here: {os.strerror(-k)}",
                            pid=ctx.pid, resource="pkeys")  # fmt: skip
        if k not in want:
            extra.append(k)
    for k in extra:
        inj(SYSX.pkey_free, k)
    return []


def _anon_name(path: str) -> str | None:
    """The name an anonymous mapping was given with PR_SET_VMA_ANON_NAME, if any."""
    for prefix in ("[anon:", "[anon_shmem:"):
        if path.startswith(prefix) and path.endswith("]"):
            return path[len(prefix) : -1]
    return None


_OPEN_BATCH = 32 << 10  # bytes of paths per batch of opens (the scratch holds 52 KiB)


def _open_mapped(ctx: RestoreContext, vmas: list[dict[str, Any]], fds: dict[str, int],
                 before: list[Callable[[Batch], None]] | None = None) -> None:  # fmt: skip
    """Open the file of each of ``vmas`` (once per path) in the process, into ``fds``
    (path -> fd): every file checked here first, then opened in batches, without moving
    its atime where the process may (O_NOATIME needs to own the file, or CAP_FOWNER:
    EPERM, opened again without it).  A file that cannot be opened raises, named; the
    files opened before it are in ``fds`` (the caller closes them).  The first batch also
    runs the calls ``before`` queues (taken from the list), after its opens."""
    todo: list[tuple[str, int]] = []  # (path, flags), checked
    for v in vmas:
        path = translated(ctx.options, v["path"])  # --translate, or a saved copy (spmf.py)
        if v["path"] in fds or any(v["path"] == p for p, _f in todo):
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError as err:
            raise CryoError(f"mapped file {path} no longer exists", path=path) from err
        _dev, _ino, size, mtime = v["file"]  # (a private mapping's bytes: changed.py's check)
        if v["kind"] == "shared-file" and (st.st_size, st.st_mtime_ns) != (size, mtime) \
                and not ctx.options.get("ignore_changed"):  # fmt: skip
            raise FileChanged(f"mapped file {path} changed since the checkpoint"
                              f" ({changed_how((size, mtime), st)}; --ignore-changed-files)",
                              path=path)  # fmt: skip
        flags = (2 if v["shared"] and v["prot"] & PROT.WRITE else 0) | locks.mapped_open_flags(v)
        todo.append((v["path"], flags))
    again: list[tuple[str, int]] = []
    for noatime in (O_NOATIME, 0):
        chunk: list[tuple[str, int]] = []
        size = 0
        for i, (vpath, flags) in enumerate(todo):
            chunk.append((vpath, flags))
            size += len(vpath.encode(errors="surrogateescape")) + 32
            if size < _OPEN_BATCH and i + 1 < len(todo):
                continue
            with ctx.inj.batch() as bt:
                calls = [bt.call(SYS.openat, -100, bt.put_str(translated(ctx.options, p)),
                                 f | noatime, 0, may_fail=True) for p, f in chunk]  # fmt: skip
                while before:
                    before.pop()(bt)
            for (p, f), k in zip(chunk, calls, strict=True):
                fd = bt.result(k)
                if fd >= 0:
                    fds[p] = fd
                elif fd == -errno.EPERM and noatime:
                    again.append((p, f))
                else:
                    raise _open_failed(ctx, SYS.openat, fd, translated(ctx.options, p))
            chunk, size = [], 0
        todo, again = again, []
        if not todo:
            break


def _open_failed(ctx: RestoreContext, nr: int, ret: int, path: str) -> OSError:
    return syscall_error(nr, ret, ctx.inj.t.tid, f" open {path}")


def live_of(ctx: RestoreContext) -> dict[str, Any]:
    return getattr(ctx, "live", None) or {}


def write_pages(ctx: RestoreContext, progress: Callable[[int], None] | None = None) -> int:
    """Write every block of the process, each from a buffer it was just read into and
    checked (the image's :meth:`stream_blocks`: the next block is read while this one is
    written), or from where the image holds it (``block_data``).  Pages of fresh private
    anonymous mappings go in with UFFDIO_COPY (:class:`_Filler`), the others with
    process_vm_writev."""
    total = 0
    unstage_early(ctx)  # (its parent's own pages back where this was the last to keep theirs)
    mine = [b for b in ctx.image.blocks if b.get("pid") == ctx.old_pid]
    stream = getattr(ctx.image, "stream_blocks", None)
    blocks: Generator[tuple[dict[str, Any], object, int, int, int], None, None] = (
        stream(mine) if stream is not None
        else ((b, *ctx.image.block_data(b), 0, b["raw"]) for b in mine))  # fmt: skip
    rec = ctx.image.one(KIND, ctx.old_pid)
    live = getattr(ctx, "live", None) or {}
    lazy = live.get("lazy")
    if lazy is not None:  # (before any block: their mappings are not the filler's)
        _register_lazy(ctx, rec, lazy)
    filler = _Filler.open(ctx, rec, live.get("inherited_ranges", []),
                          sum(n for b in mine for _, n in b["runs"]))
    ctx.inj.flush()  # the calls held (NUMA policies, the uffd's close) before any page
    fills: Fills | None = live.get("fills")
    skip = [(a, a + n) for a, n in live.get("sibling_kept", ())]  # (inherited: the same)
    if fills is not None:  # (the pages it shares with its parent: wait_fill's)
        blocks.close()
        ctx.live["fill"] = fills.submit(ctx.pid, filler, mine, skip)  # protect() waits
        return 0
    try:
        parts = _Parts()
        with contextlib.closing(blocks):
            for b, owner, offset, start, length in blocks:
                base = libc.buffer_address(owner) + offset
                runs = parts.runs(b, start, length)
                n = _write_runs(ctx.pid, filler, runs, base, skip)
                del owner
                total += n
                if progress:
                    progress(n)
    finally:
        if filler is not None:
            filler.close()
    for inherited in _inherited_runs(rec, live):  # shared with the parent: its blocks
        n = cow.write_inherited(ctx, inherited)  # (or with a sibling: the sibling's)
        total += n
        if progress:
            progress(n)
    _hold_for_children(ctx)
    return total


_Plan = tuple[dict[int, list[tuple[int, int, int, int]]], dict[int, list[tuple[int, int]]],
              set[int], dict[int, list[tuple[int, int, int]]]]


def _siblings(ctx: RestoreContext) -> _Plan | None:
    """cow.sibling_plan of the image (made once per restart), the parents that hold
    their children's shared pages now, and the ranges to put back in a parent once a
    child is made (that child's old pid: [(parent, address, length)]); None without the
    session's shared state."""
    keep = getattr(getattr(ctx, "shared", None), "keep", None)
    if not isinstance(keep, dict):
        return None
    got: _Plan | None = keep.get("cow_siblings")
    if got is None:
        got = keep["cow_siblings"] = (*cow.sibling_plan(ctx.image), set(), {})
    return got


def _hold_for_children(ctx: RestoreContext) -> None:
    """Once a parent's pages are written, before its children are forked: the pages its
    children share among them only (cow.sibling_plan) written over its own, from the
    blocks of the sibling that saved them, so that every child forked now inherits them
    (and keeps them: inherit_from_parent); its own put back once all are forked
    (:func:`unstage`), or once the last child that keeps them is made, where a child
    made later takes its own (:func:`unstage_early`).  Not in a process whose pages
    come from elsewhere too (post-copy, staged)."""
    live = live_of(ctx)
    if live.get("lazy") is not None or live.get("staged") or live.get("fills") is not None:
        return
    sib = _siblings(ctx)
    if sib is None or ctx.old_pid not in sib[0]:
        return
    by: dict[int, list[list[int]]] = {}
    for a, n, s, _w in sib[0][ctx.old_pid]:
        by.setdefault(s, []).append([a, n])
    for s, runs in by.items():
        cow.write_inherited(ctx, {"from": s, "runs": runs})
    sib[2].add(ctx.old_pid)
    live["cow_unstage"] = [[a, n] for a, n, _s, w in sib[0][ctx.old_pid] if not w]
    for a, n, _s, w in sib[0][ctx.old_pid]:
        if w:
            sib[3].setdefault(w, []).append((ctx.old_pid, a, n))


def unstage_early(ctx: RestoreContext) -> None:
    """A process just made (its pages' stage, before the next process is forked): the
    ranges its parent held for the children made so far, that a child made next takes
    from the parent as its own, put back in the parent (cow.sibling_plan's ``last``)."""
    sib = _siblings(ctx)
    todo = sib[3].pop(ctx.old_pid, None) if sib is not None else None
    by: dict[int, list[list[int]]] = {}
    for parent, a, n in todo or ():
        by.setdefault(parent, []).append([a, n])
    for parent, runs in by.items():
        where = SimpleNamespace(pid=ctx.pid_map[parent], image=ctx.image)
        cow.write_inherited(where, {"from": parent, "runs": runs})


def unstage(ctx: RestoreContext) -> None:
    """Every child forked (protect's start): a parent that held its children's shared
    pages (:func:`_hold_for_children`) writes its own there again, from its blocks: it
    gets a copy of its own, the children keep theirs, shared among them.  (And those
    that :func:`unstage_early` did not put back, had the child it waited for never come:
    a parent is never left with its children's pages.)"""
    runs = live_of(ctx).pop("cow_unstage", None) or []
    sib = _siblings(ctx)
    if sib is not None and ctx.old_pid in sib[2]:
        for child, left in list(sib[3].items()):
            runs += [[a, n] for parent, a, n in left if parent == ctx.old_pid]
            sib[3][child] = [x for x in left if x[0] != ctx.old_pid]
    if runs:
        cow.write_inherited(ctx, {"from": ctx.old_pid, "runs": runs})


def _write_runs(pid: int, filler: _Filler | None, runs: list[list[int]], base: int,
                skip: list[tuple[int, int]]) -> int:  # fmt: skip
    """Write one block's data (at ``base`` here) to its runs, but for the ranges of
    ``skip`` (pages it keeps, shared, from its parent); the bytes of the block used."""
    def write(part: list[list[int]], at: int) -> int:
        return filler.write(part, at) if filler is not None else _write_block(pid, part, at)

    if not skip or not any(a < e and s < a + n for a, n in runs for s, e in skip):
        return write(runs, base)
    off = 0
    for a, n in runs:
        for pa, pn in cow.outside([[a, n]], skip):
            write([[pa, pn]], base + off + pa - a)
        off += n
    return off


def _inherited_runs(rec: dict[str, Any], live: dict[str, Any]) -> list[dict[str, Any]]:
    """The pages a child shares with its parent that write_pages writes from the
    parent's blocks (those outside the mappings it keeps inherited), and those it shares
    with a sibling, from the sibling's blocks (those it does not keep inherited: the
    parent held them, cow.sibling_plan): [{"from": pid, "runs": runs}]."""
    out = []
    inherited = rec.get("cow")
    if inherited and live.get("cow_inherited"):  # only those outside inherited mappings
        inherited = {"from": inherited["from"],
                     "runs": cow.outside(inherited["runs"], live["inherited_ranges"])}
    if inherited and inherited["runs"]:
        out.append(inherited)
    kept = [(a, a + n) for a, n in live.get("sibling_kept", ())]
    by: dict[int, list[list[int]]] = {}
    for s, a, n in rec.get("cow_siblings") or ():
        by.setdefault(s, []).append([a, n])
    for s, runs in by.items():
        rest = cow.outside(runs, kept)
        if rest:
            out.append({"from": s, "runs": rest})
    return out


FILL_PART = 4 << 20  # bytes of a block read, checked and given at a time by a Fills worker


class _Fill:
    """One process's pages, filled by a :class:`Fills` worker."""

    def __init__(self, pid: int, filler: _Filler | None, blocks: list[dict[str, Any]]
                 ) -> None:  # fmt: skip
        self.pid, self.filler = pid, filler
        self.left = len(blocks)  # blocks not yet filled
        self.lock = threading.Condition()  # notified at each part and at the end
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.written = 0
        self.skip: list[tuple[int, int]] = []  # ranges not written (write_pages' skip)


class Fills:
    """The pages of a tree's leaf processes (those that fork no child in the restart,
    so no child needs their pages first), filled by two worker threads while cryo
    forks and maps the next processes: each worker reads a block of pages.img in parts
    into a buffer of its own, checks it (xxh3 over the parts, the last part checks the
    block, as the image's reading thread does) and gives each part to the process with
    its userfaultfd (:class:`_Filler`) at once, while the part is still in the CPU's
    cache.  The userfaultfd is made (injected calls) before the job is handed over;
    :func:`protect` waits for the job, and raises its error.  Two processes' pages go
    in at once on two cores, and each byte goes through the cache once instead of
    across two threads (docs/design.md, "A tree's restart, stop by stop")."""

    WORKERS = 2  # (0: none, every block read ahead by the image's thread)
    # the workers' nice above the main thread's: when both could run, the main thread
    # (forking and mapping the next process, which the workers then fill) goes first
    NICE = 5

    def __init__(self, image: Any) -> None:
        self.image = image
        self.jobs: queue.Queue[tuple[_Fill, dict[str, Any]] | None] = queue.Queue()
        self.stop = threading.Event()
        self.idle = threading.Condition()
        self.running = 0
        self.threads: list[threading.Thread] = []

    @staticmethod
    def usable(image: Any) -> bool:
        """Can this image's blocks be read in parts from several threads, and is it
        worth it?  Not for an image on the disk: two workers reading two places at once
        made the 17-process tree's cold restart slower (1.14 s against 0.99 s), where
        the disk, not the copy, is what the restart waits for."""
        return Fills.WORKERS > 0 and bool(getattr(image, "defer_pages", False)) \
            and callable(getattr(image, "read_checked_part", None)) \
            and bool(image.cached())  # fmt: skip

    @staticmethod
    def takes(blocks: list[dict[str, Any]]) -> bool:
        """Can the workers fill these blocks of a process, in any order?  Not compressed
        ones, and not blocks that write a page twice: a pre-copy image's later rounds
        write again the pages that changed, and the last block must be the one that
        stays (written in block order, as :func:`write_pages` does)."""
        if not blocks or any(b.get("codec") != "none" for b in blocks):
            return False
        runs = sorted((a, a + n) for b in blocks for a, n in b["runs"])
        return all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(runs))

    def submit(self, pid: int, filler: _Filler | None, blocks: list[dict[str, Any]],
               skip: list[tuple[int, int]] | None = None) -> _Fill:  # fmt: skip
        job = _Fill(pid, filler, blocks)
        job.skip = skip or []
        log.debug("pid %d: %d blocks of pages by the fill workers", pid, len(blocks))
        with self.idle:
            self.running += 1
        if not self.threads:
            self.threads = [threading.Thread(target=self._work, name=f"cryo-fill-{k}",
                                             daemon=True) for k in range(self.WORKERS)]
            for t in self.threads:
                t.start()
        for b in blocks:  # (a process's blocks shared by the workers)
            self.jobs.put((job, b))
        return job

    def drain(self) -> None:
        """No job runs when this returns (before cryo forks: a fork must not copy a
        thread in the middle of its work)."""
        with self.idle:
            while self.running:
                self.idle.wait()

    def close(self) -> None:
        """Stop the workers (a job not begun fails) and wait for them."""
        self.stop.set()
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()
        self.threads = []

    def _work(self) -> None:
        if Fills.NICE:  # (relative to the restart's own: cryod runs at -10)
            tid = threading.get_native_id()
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid,
                               min(19, os.getpriority(os.PRIO_PROCESS, tid) + Fills.NICE))
        buf = mmap.mmap(-1, FILL_PART, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                        | getattr(mmap, "MAP_POPULATE", 0x8000))  # fmt: skip
        with contextlib.suppress(OSError):  # a helper forked by a restart needs none
            buf.madvise(getattr(mmap, "MADV_DONTFORK", 10))
        try:
            while (item := self.jobs.get()) is not None:
                job, b = item
                try:
                    if job.error is None:
                        self._fill(job, b, buf)
                except BaseException as err:  # raised by protect(), in the main thread
                    job.error = job.error or err
                finally:
                    with job.lock:
                        job.left -= 1
                        last = not job.left
                    if last:
                        self._finish(job)
        finally:
            with contextlib.suppress(BufferError):  # (a failed part's view is in its error)
                buf.close()

    def _finish(self, job: _Fill) -> None:
        try:
            if job.filler is not None:
                job.filler.close()
        except OSError as err:
            job.error = job.error or err
        finally:
            with job.lock:
                job.done.set()
                job.lock.notify_all()
            with self.idle:
                self.running -= 1
                self.idle.notify_all()

    def _fill(self, job: _Fill, b: dict[str, Any], buf: mmap.mmap) -> None:
        base = libc.buffer_address(buf)
        parts = _Parts()
        state: list[Any] = []
        size = int(b["stored"])
        for start in range(0, size, FILL_PART):
            if self.stop.is_set():
                raise CryoError("restart stopped before the pages were filled")
            n = min(FILL_PART, size - start)
            self.image.read_checked_part(b, memoryview(buf)[:n], start, state)
            runs = parts.runs(b, start, n)
            n = _write_runs(job.pid, job.filler, runs, base, job.skip)
            with job.lock:
                job.written += n
                job.lock.notify_all()


def wait_fill(ctx: RestoreContext) -> None:
    """Wait for the pages of a process handed to :class:`Fills` (write_pages), then
    write those it shares with its parent (from the parent's blocks, here)."""
    job: _Fill | None = live_of(ctx).pop("fill", None)
    if job is None:
        return
    told = 0
    while ctx.progress:  # the caller's progress part by part, from this thread
        with job.lock:
            while job.written == told and not job.done.is_set():
                job.lock.wait()
            written, over = job.written, job.done.is_set()
        if written > told:
            ctx.progress(written - told)
            told = written
        if over:
            break
    job.done.wait()
    if job.error is not None:
        raise job.error
    n = job.written
    for inherited in _inherited_runs(ctx.image.one(KIND, ctx.old_pid), ctx.live):
        n += cow.write_inherited(ctx, inherited)
    ctx.live["written"] = ctx.live.get("written", 0) + n
    if ctx.progress and n > told:
        ctx.progress(n - told)


class _Parts:
    """The runs of a part of a block (bytes [start, start+length) of its data)."""

    def __init__(self) -> None:
        self.index = -1
        self.ends: list[int] = []

    def runs(self, b: dict[str, Any], start: int, length: int) -> list[list[int]]:
        runs: list[list[int]] = b["runs"]
        if start == 0 and length == b["raw"]:
            return runs
        if self.index != b["index"]:
            self.index, self.ends, end = b["index"], [], 0
            for _a, n in runs:
                end += n
                self.ends.append(end)
        i = bisect.bisect_right(self.ends, start)
        stop, out = start + length, []
        while i < len(runs) and start < stop:
            addr, n = runs[i]
            first = self.ends[i] - n  # the run's first byte in the block
            take = min(self.ends[i], stop) - start
            out.append([addr + start - first, take])
            start += take
            i += 1
        return out


def _register_lazy(ctx: RestoreContext, rec: dict[str, Any], lazy: dict[str, Any]) -> None:
    """Post-copy (cryo.migrate.lazy): the mappings of the pages that are not in the image
    yet (``lazy["runs"]``) registered in a userfaultfd of the process (missing mode, with
    its fork, remap, remove and unmap events), handed to ``lazy["start"]`` to be served
    from now on (every later stage may touch them).  Made by an injected call while the
    process still has cryo's credentials (the "creds" stage is later), not user-mode
    only: a fault in the kernel (a read() into such a page) must wait for the page too,
    not get a zero page."""
    from cryo.image.stream import intersect, normalize

    runs = normalize(lazy["runs"])
    want = []
    for v in rec["vmas"]:
        if not intersect(runs, [[v["start"], v["end"] - v["start"]]]):
            continue
        if v["kind"] != "anon" or v.get("shared") or v.get("hugetlb") or \
                {"lo", "lf", "dp", "wf"} & set(v["flags"]):  # fmt: skip
            raise CryoError(f"lazy pages in mapping {v['start']:#x}-{v['end']:#x}, which"
                            " cannot be filled lazily", pid=ctx.pid)  # fmt: skip
        want.append((v["start"], v["end"]))
    inside = normalize([[s, e - s] for s, e in want])
    if sum(n for _, n in intersect(runs, inside)) != sum(n for _, n in runs):
        raise CryoError("lazy pages outside every private anonymous mapping", pid=ctx.pid)
    low = ctx.inj.raw(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if low < 0:
        raise CryoError(f"no userfaultfd for the lazy pages: {os.strerror(-low)}", pid=ctx.pid)
    try:
        fd = libc.fd_of(ctx.pid, low)
    finally:
        ctx.inj.raw(SYS.close, low)
    try:
        libc.uffd_api(fd, lazy["features"])
        for start, end in want:
            uffd.register_missing(fd, start, end - start)
    except BaseException:
        os.close(fd)
        raise
    ctx.live["lazy_ranges"] = want
    lazy["start"](fd, want, ctx.pid)  # (the fd is the pager's now)


UFFD_MIN = 4 << 20  # below this many bytes of pages, the uffd's set-up is not worth it
_UFFD_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK | UFFD.USER_MODE_ONLY


class _Filler:
    """Writes blocks into a restored process through a userfaultfd of its own: its
    fresh private anonymous mappings are registered (missing mode), their pages given
    with UFFDIO_COPY (the kernel allocates each page and copies into it: no page fault,
    no zeroing of a page overwritten anyway, about twice as fast as process_vm_writev
    into fresh memory, bench/restart_paths.py); every other page with process_vm_writev.
    A page already present there (EEXIST) is written with process_vm_writev.

    The uffd is made by an injected ``userfaultfd()``, taken with pidfd_getfd and closed
    in the process at once; :meth:`close` unregisters every range and closes cryo's
    copy, so nothing of it is left in the process (no ``um`` VmFlag, no fd)."""

    def __init__(self, pid: int, fd: int, ranges: list[tuple[int, int]]) -> None:
        self.pid, self.fd, self.ranges = pid, fd, ranges
        self.starts = [a for a, _ in ranges]
        self.copied = self.written = self.present = 0  # bytes, bytes, pages

    @staticmethod
    def _want(ctx: RestoreContext, rec: dict[str, Any], inherited: list[tuple[int, int]],
              nbytes: int) -> list[tuple[int, int]]:  # fmt: skip
        """The ranges worth registering (none: not worth a uffd's set-up)."""
        kept = {a for a, _ in inherited} | {s for s, _e, _at in live_of(ctx).get("staged", ())} \
            | {s for s, _e in live_of(ctx).get("lazy_ranges", ())}  # fmt: skip
        want = [(v["start"], v["end"]) for v in rec["vmas"]
                if v["kind"] == "anon" and v.get("data") and not v.get("hugetlb")
                and "dp" not in v["flags"] and v["start"] not in kept
                and not v.get("thp")]  # (written, its first fault maps a huge page)  # fmt: skip
        if nbytes < UFFD_MIN or sum(e - s for s, e in want) < UFFD_MIN:
            return []
        return want

    @classmethod
    def wanted(cls, ctx: RestoreContext, rec: dict[str, Any],
               inherited: list[tuple[int, int]]) -> bool:  # fmt: skip
        """Will :meth:`open` want a uffd (map_vmas then makes it in its own stop)?  Not
        for post-copy (its own uffd comes first) nor where the image holds no blocks."""
        live = live_of(ctx)
        blocks = getattr(ctx.image, "blocks", None)
        if "lazy" in live or not blocks or not hasattr(ctx, "live"):
            return False
        nbytes = sum(n for b in blocks if b.get("pid") == ctx.old_pid for _, n in b["runs"])
        return bool(cls._want(ctx, rec, inherited, nbytes))

    @classmethod
    def open(cls, ctx: RestoreContext, rec: dict[str, Any], inherited: list[tuple[int, int]],
             nbytes: int) -> _Filler | None:  # fmt: skip
        """None when there is nothing worth registering or the process cannot have a
        uffd (then everything goes through process_vm_writev).  The process's uffd is
        the one map_vmas made, or made here; closed in the process at once, or, for a
        process whose pages :class:`Fills` writes (it forks no child), in protect's
        stop."""
        live = live_of(ctx)
        made = live.pop("uffd", None)
        want = cls._want(ctx, rec, inherited, nbytes)
        if not want:
            if made is not None and made >= 0:
                with ctx.inj.hold() as b:  # (write_pages flushes before the first page)
                    b.call(SYS.close, made, may_fail=True)
            return None
        low = ctx.inj.raw(SYS_userfaultfd, _UFFD_FLAGS) if made is None else made
        if low < 0:
            log.debug("pid %d: no userfaultfd (%s): process_vm_writev", ctx.pid,
                      os.strerror(-low))  # fmt: skip
            return None
        later = "fills" in live  # (no child of it is forked before protect)
        try:
            fd = libc.fd_of(ctx.pid, low)
        except OSError:
            later = False
            return None
        finally:
            if later:
                live["uffd_close"] = low
            else:
                with ctx.inj.hold() as b:  # (write_pages flushes before the first page)
                    b.call(SYS.close, low, may_fail=True)
        ranges: list[tuple[int, int]] = []
        try:
            libc.uffd_api(fd, 0)
            for start, end in sorted(want):
                try:
                    uffd.register_missing(fd, start, end - start)
                except OSError as err:  # a mapping uffd cannot fill: process_vm_writev
                    log.debug("pid %d: %#x-%#x not registered: %s", ctx.pid, start, end, err)
                    continue
                ranges.append((start, end))
        except BaseException:
            cls(ctx.pid, fd, ranges).close()
            raise
        return cls(ctx.pid, fd, ranges)

    def write(self, runs: list[list[int]], base: int) -> int:
        """Write one block's data (at ``base`` here) to its runs."""
        off = 0
        other: list[list[int]] = []  # [remote, length, local] for process_vm_writev
        for start, total in runs:
            addr, length = start, total
            while length:
                i = bisect.bisect_right(self.starts, addr) - 1
                if i >= 0 and addr < self.ranges[i][1]:  # in a registered range
                    n = min(length, self.ranges[i][1] - addr)
                    self._copy(addr, base + off, n)
                else:
                    nxt = self.starts[i + 1] if i + 1 < len(self.starts) else addr + length
                    n = min(length, nxt - addr)
                    other.append([addr, n, base + off])
                addr += n
                off += n
                length -= n
        for i in range(0, len(other), libc.IOV_MAX):
            chunk = other[i : i + libc.IOV_MAX]
            want = sum(n for _, n, _ in chunk)
            got = libc.process_vm_writev(self.pid, [(b, n) for _, n, b in chunk],
                                         [(a, n) for a, n, _ in chunk])  # fmt: skip
            if got != want:
                raise CryoError(f"short write of pages into {self.pid}: {got} of {want}")
            self.written += got
        return off

    def _copy(self, dst: int, src: int, length: int) -> None:
        while length:
            done = uffd.copy(self.fd, dst, src, length)
            self.copied += done
            dst, src, length = dst + done, src + done, length - done
            if length:  # a page already there (EEXIST): it is written, not given
                got = libc.process_vm_writev(self.pid, [(src, PAGE_SIZE)], [(dst, PAGE_SIZE)])
                if got != PAGE_SIZE:
                    raise CryoError(f"short write of pages into {self.pid}: {got}")
                self.present += 1
                self.written += PAGE_SIZE
                dst, src, length = dst + PAGE_SIZE, src + PAGE_SIZE, length - PAGE_SIZE

    def close(self) -> None:
        log.debug("pid %d: %d bytes by UFFDIO_COPY, %d by process_vm_writev (%d pages"
                  " already present)", self.pid, self.copied, self.written, self.present)
        try:
            for start, end in self.ranges:
                with contextlib.suppress(OSError):  # closing the uffd unregisters anyway
                    uffd.unregister(self.fd, start, end - start)
        finally:
            os.close(self.fd)


def _write_block(pid: int, runs: list[list[int]], base: int) -> int:
    """Write one block's data (at ``base`` here) to its runs in ``pid``."""
    off = 0
    for i in range(0, len(runs), libc.IOV_MAX):
        chunk = runs[i : i + libc.IOV_MAX]
        local = []
        for _addr, length in chunk:
            local.append((base + off, length))
            off += length
        want = sum(n for _, n in local)
        got = libc.process_vm_writev(pid, local, [(a, n) for a, n in chunk])
        if got != want:
            raise CryoError(f"short write of pages into {pid}: {got} of {want}")
    return off


def _after_pages(v: dict[str, Any]) -> bool:
    """Does this VMA have state to set once its pages are written?"""
    return bool(v.get("guards") or v.get("pkey") or v.get("zeros") or v.get("thp")) or \
        bool({"lo", "sl"} & set(v["flags"]))  # fmt: skip


def protect(ctx: RestoreContext, fixup: list[dict[str, Any]]) -> None:
    """Once the pages are written: protections, then guard pages (refused by the kernel
    on a locked VMA), then mlock (it populates the pages, so after the data), then mseal
    (it forbids any later change).  The same stop opens the exe file restore_mm sets."""
    wait_fill(ctx)  # (its pages handed to Fills' workers: all in first)
    unstage(ctx)  # (every child forked: a parent's own pages where it held its children's)
    rec = getattr(ctx, "records", {}).get(KIND)
    exe = _exe_to_open(ctx, rec) if rec is not None and hasattr(ctx, "live") else None
    low = live_of(ctx).pop("uffd_close", None)  # (_Filler.open's, left for this stop)
    # held for the next stop, restore_mm's too: the exe's fd, which PR_SET_MM_MAP takes
    # in its struct, is put on a number known now (above every fd the process has)
    fixed = _free_fd(ctx.pid) if exe is not None else -1
    with ctx.inj.hold(room=len(exe.encode(errors="surrogateescape")) + 32 if exe else 0
                      ) as bt:  # fmt: skip
        if low is not None:
            bt.call(SYS.close, low, may_fail=True)
        _zero_pages(bt, fixup, live_of(ctx).get("lazy_ranges", ()))
        _huge_pages(bt, fixup, live_of(ctx).get("lazy_ranges", ()))
        _protect_all(bt, fixup)
        if exe is not None:
            k = bt.call(SYS.openat, -100, bt.put_str(exe), 0, 0, what=f" open {exe}")
            bt.call(SYS_DUP3, bt.ref(k), fixed, os.O_CLOEXEC, what=f" dup3 of {exe}")
            bt.call(SYS.close, bt.ref(k))
    if exe is not None:
        ctx.live["exe_fd"] = (exe, fixed)


SYS_DUP3 = 292


def _zero_pages(bt: Batch, fixup: list[dict[str, Any]], lazy: Any) -> None:
    """The pages of an anonymous mapping that were read and never written map the
    kernel's shared zero page: no data is saved for them, and they are mapped again by a
    read fault (MADV_POPULATE_READ), before the protections are set (found by probing:
    they came back not mapped at all, mincore and the pagemap saying so, exit 0).  Not
    in a mapping of lazy pages (its faults are the pager's), nor where the mapping is not
    readable (no read fault maps a page there: left unmapped)."""
    for v in fixup:
        if not v.get("zeros") or (not v["prot"] & PROT.READ and not v.get("data")) or any(
                s <= v["start"] < e for s, e in lazy):  # fmt: skip
            continue
        for addr, length in v["zeros"]:
            bt.call(SYS.madvise, addr, length, MADV.POPULATE_READ,
                    what=f" MADV_POPULATE_READ {addr:#x}")  # fmt: skip


def _huge_pages(bt: Batch, fixup: list[dict[str, Any]], lazy: Any) -> None:
    """Where transparent huge pages mapped an anonymous mapping, its pages, written
    back one by one, are collapsed into huge pages again (MADV_COLLAPSE, Linux 6.1; the
    data is copied into them: found by probing, smaps said AnonHugePages 4096 kB before
    and 0 kB after, exit 0).  Where the kernel cannot (no huge page free: EAGAIN, ENOMEM)
    the small pages hold the same data: logged by the batch, not an error."""
    for v in fixup:
        if not v.get("thp") or any(s <= v["start"] < e for s, e in lazy):
            continue
        for addr, length in v["thp"]:
            bt.call(SYS.madvise, addr, length, MADV.COLLAPSE, may_fail=True,
                    what=f" MADV_COLLAPSE {addr:#x}")  # fmt: skip


def _free_fd(pid: int) -> int:
    """An fd number above every one process ``pid`` has, and above the one the open
    held with it gets (the lowest free, at most one past the highest: dup3 onto its own
    number is EINVAL, which failed every restart of a process whose fds had no gap):
    free until the calls held now run (they run before any other call that could open
    one)."""
    return max((int(n) for n in os.listdir(f"/proc/{pid}/fd")), default=2) + 2


def _protect_all(bt: Batch, fixup: list[dict[str, Any]]) -> None:
    for v in fixup:
        start, size = v["start"], v["end"] - v["start"]
        if v["kind"] == "sysv-shm":  # attached after map_vmas: its advice now
            for flag in v["flags"]:
                if flag in _MADVISE:
                    bt.call(SYS.madvise, start, size, _MADVISE[flag],
                            what=f" {_MADVISE[flag].name} {start:#x}")  # fmt: skip
        if v.get("data") and v["prot"] != v["prot"] | PROT.READ | PROT.WRITE:
            bt.call(SYS.mprotect, start, size, v["prot"])
        if v.get("pkey"):
            bt.call(SYSX.pkey_mprotect, start, size, v["prot"], v["pkey"],
                    what=f" pkey_mprotect {start:#x} key {v['pkey']}")  # fmt: skip
    # mlock populates, so after the data; the VMAs locked without guard pages first, so
    # that their lock parts them from a neighbour that gets guard pages (found by probing:
    # locked after, a locked VMA next to an unlocked one with guard pages came back with
    # that one's sticky VM_MAYBE_GUARD, "gu", and so did the rest of it, exit 0)
    _mlock(bt, [v for v in fixup if "lo" in v["flags"] and not v.get("guards")])
    for v in fixup:  # once every VMA has its protection: a neighbour still writable
        # would be merged with it for the while, and given its sticky VM_MAYBE_GUARD ("gu")
        for addr, length in v.get("guards", ()):
            bt.call(SYS.madvise, addr, length, MADV.GUARD_INSTALL,
                    what=f" MADV_GUARD_INSTALL {addr:#x}")  # fmt: skip
    # (guard pages cannot be installed in a locked VMA: one that has both is locked last)
    _mlock(bt, [v for v in fixup if "lo" in v["flags"] and v.get("guards")])
    for v in fixup:
        if "sl" in v["flags"]:
            bt.call(SYSX.mseal, v["start"], v["end"] - v["start"], 0,
                    what=f" mseal {v['start']:#x}")  # fmt: skip


def _mlock(bt: Batch, vmas: list[dict[str, Any]]) -> None:
    for v in vmas:
        start, size = v["start"], v["end"] - v["start"]
        bt.call(SYSX.mlock2, start, size, MLOCK.ONFAULT if "lf" in v["flags"] else 0,
                what=f" mlock2 {start:#x}")  # fmt: skip


def restore_mm(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """PR_SET_MM_MAP: mm fields, auxv and exe file in one call (no CAP_SYS_RESOURCE)."""
    inj = ctx.inj
    mm = rec["mm"]
    m = S.prctl_mm_map()
    for k, val in mm.items():
        setattr(m, k, val)
    auxv = rec["auxv"]
    frame = inj.frame()  # the exe's path
    exe_fd = stale = -1
    opened = (getattr(ctx, "live", None) or {}).pop("exe_fd", None)  # by protect()
    exe = _exe_to_open(ctx, rec)
    if opened is not None and opened[0] == exe:
        exe_fd = opened[1]
    else:
        stale = opened[1] if opened is not None else -1  # (closed below)
        if exe is not None:
            exe_fd = inj(SYS.openat, -100, frame.put_str(exe), 0, 0, what=f" open {exe}")
        elif (obj := _deleted_exe_object(ctx, rec)) is not None:  # (a duplicate: the
            exe_fd = inj(SYS.fcntl, obj, F_DUPFD_CLOEXEC, 0,  # object's fd stays)
                         what=" dup the deleted exe")  # fmt: skip
    m.exe_fd = exe_fd & 0xFFFFFFFF
    future = rec.get("mlockall", 0)
    # held for the next stop (the files stage's): the exe's fd closed whether the prctl
    # failed or not; the struct and its auxv in the held calls' area
    with inj.hold(room=libc.sizeof(m) + len(auxv) + 32) as bt:
        at = bt.reserve(libc.sizeof(m))
        m.auxv = bt.put(auxv)
        m.auxv_size = len(auxv)
        inj.write(at, libc.struct_bytes(m))
        calls = [(bt.call(SYS.prctl, PR.SET_MM, PR_SET_MM_MAP, at, libc.sizeof(m), 0,
                          may_fail=True), " PR_SET_MM_MAP")]  # fmt: skip
        for fd in (exe_fd, stale):
            if fd >= 0:
                bt.call(SYS.close, fd, may_fail=True)
        if future:  # MCL_FUTURE: only mappings made from now on (each has its own lock)
            calls.append((bt.call(SYSX.mlockall, future, may_fail=True), " mlockall"))
    inj.after(lambda: _mm_set(inj, bt, calls))


def _mm_set(inj: Injector, bt: Batch, calls: list[tuple[int, str]]) -> None:
    for k, what in calls:
        if -4096 < bt.result(k) < 0:
            raise syscall_error(bt.calls[k][0], bt.result(k), inj.t.tid, what)


def _exe_to_open(ctx: RestoreContext, rec: dict[str, Any]) -> str | None:
    """The exe file PR_SET_MM_MAP sets (its path here), or None: a deleted one, or the
    helper runs the same binary already (a Python target): its exe_file is kept."""
    exe = translated(ctx.options, rec["exe"])  # --translate, or a saved copy (spmf.py)
    if exe.endswith(" (deleted)") or not os.path.exists(exe) or _same_file(
            f"/proc/{ctx.pid}/exe", exe):  # fmt: skip
        return None
    return exe


F_DUPFD_CLOEXEC = 1030


def _deleted_exe_object(ctx: RestoreContext, rec: dict[str, Any]) -> int | None:
    """A deleted exe (a binary replaced or removed while it runs, as a package upgrade
    leaves a daemon): its private mappings made it a shared memory object of kind
    "deleted", made again and unlinked at restart, whose fd the process inherited; that
    file is its exe again, "(deleted)" in /proc/PID/exe as before (found by probing: the
    restored process's exe was cryo's python, exit 0, and a re-exec of /proc/self/exe
    would have run python)."""
    if not rec["exe"].endswith(" (deleted)"):
        return None
    for v in rec["vmas"]:
        if v.get("path") == rec["exe"] and "obj" in v:
            return int(ctx.shared.objects.fds[v["obj"]])
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def describe_state(v: dict[str, Any]) -> list[str]:
    """The kernel state of a VMA beyond its protection, named for `cryo show`."""
    out = [STATE_NAMES[f] for f in v["flags"] if f in STATE_NAMES and f != "ht"]
    if v.get("hugetlb"):
        out.append(f"hugetlb {v['hugetlb'] >> 10} kB")
    if v.get("pkey"):
        out.append(f"protection key {v['pkey']}")
    guards = v.get("guards")
    if guards:
        out.append(f"guard pages {sum(n for _, n in guards) // PAGE_SIZE}")
    if v.get("zeros"):
        out.append(f"zero pages {sum(n for _, n in v['zeros']) // PAGE_SIZE}")
    if v.get("thp"):
        out.append(f"huge pages {sum(n for _, n in v['thp']) >> 21}")
    return out


def layout(rec: dict[str, Any]) -> list[tuple[int, int]]:
    return [(v["start"], v["end"]) for v in rec["vmas"]]
