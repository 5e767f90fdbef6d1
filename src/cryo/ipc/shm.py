"""Shared memory segments: saved through a read-only attach, loaded through a read-write one.

File ``shm<id>_v<version>.bin``, magic ``CRYOSHM\\0``::

    META  {format, kind: "shm", id, key, uid, gid, cuid, cgid, mode, saved_at, kernel,
           size, nattch, cpid, lpid, atime, dtime, ctime, locked, dest, left_out}
    then, covering the segment in order, chunks of at most CHUNK bytes:
    SHMB  raw bytes of the next chunk
    SHMZ  {length}: the next ``length`` bytes are zero and were never touched (a hole)

Bytes are copied in chunks, never page by page in Python: each chunk is copied out of the
segment into one reused buffer (so the checksum and the bytes written agree even while
other processes write to the segment), then checksummed and written.  Holes (pages never
touched, known from mincore when the system has no swap) are neither read, which would
allocate them, nor written, and stay holes after a load.  The load reads each chunk straight
into the new segment.  Writers of the segment should be stopped for a consistent copy.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Generator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from cryo.errors import CryoError, ImageCorrupt, ImageMissing
from cryo.image.format import (
    MappedFile,
    Record,
    RecordWriter,
    kind_name,
    raw_checksum,
    read_records,
)
from cryo.ipc.common import (
    Image,
    Loaded,
    Ops,
    Perm,
    check_header,
    clear_the_way,
    create_with_id,
    has_swap,
    header,
    meta_int,
    read_sysctl,
    translate,
)
from cryo.ipc.kinds import Kind
from cryo.linux import sysv

log = logging.getLogger(__name__)

KIND = Kind.SHM
MAGIC = b"CRYOSHM\x00"
META = b"META"
SHMB = b"SHMB"
SHMZ = b"SHMZ"
CHUNK = 64 << 20
HOLE_MIN = 256 << 10  # smaller holes are written as zeros
PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = bytes(i & 1 for i in range(256))  # mincore: bit 0 of each byte

LEFT_OUT = [
    "processes attached to the segment (nattch): they are not attached again",
    "shm_cpid, shm_lpid, shm_atime, shm_dtime, shm_ctime: the load sets its own",
    "SHM_HUGETLB and SHM_NORESERVE: the kernel does not show them; loaded as plain memory",
]


def _stat_any(index: int) -> int:
    return sysv.shmctl(index, sysv.SHM_CMD.STAT_ANY, sysv.shmid64_ds())


def _rmid(ipc_id: int) -> None:
    sysv.shmctl(ipc_id, sysv.IPC_CMD.RMID)


def _busy(ipc_id: int) -> str | None:
    try:
        n = int(sysv.shm_stat(ipc_id).shm_nattch)
    except OSError:
        return None
    return f"{n} process(es) still attach it; its id is free once they detach" if n else None


OPS = Ops(KIND, _stat_any, lambda key: sysv.shmget(key, 0, 0), _rmid, _busy)


# ---------------------------------------------------------------------------------------------
# save


def save(ipc_id: int, f: IO[bytes]) -> dict[str, Any]:
    """Write the segment ``ipc_id`` to ``f``; return its META."""
    try:
        return _save(ipc_id, f)
    except OSError as err:
        raise translate(err, KIND, ipc_id) from err


def _save(ipc_id: int, f: IO[bytes]) -> dict[str, Any]:
    ds = sysv.shm_stat(ipc_id)
    size, mode = int(ds.shm_segsz), int(ds.shm_perm.mode)
    left_out = list(LEFT_OUT)
    if ds.shm_nattch:
        left_out.append(f"at save time {ds.shm_nattch} process(es) were attached")
    if mode & sysv.SHM.DEST:
        left_out.append("the segment was marked for removal (SHM_DEST): it is loaded as a live"
                        " segment")  # fmt: skip
    meta = header(
        KIND, ipc_id, Perm.from_kernel(ds.shm_perm), size=size, nattch=int(ds.shm_nattch),
        cpid=int(ds.shm_cpid), lpid=int(ds.shm_lpid), atime=int(ds.shm_atime),
        dtime=int(ds.shm_dtime), ctime=int(ds.shm_ctime), locked=bool(mode & sysv.SHM.LOCKED),
        dest=bool(mode & sysv.SHM.DEST), left_out=left_out,
    )  # fmt: skip
    w = RecordWriter(f, MAGIC)
    w.write(META, meta)
    writer = _Writer(w, min(CHUNK, size))
    try:
        with sysv.shm_attached(ipc_id, size, readonly=True) as (addr, view):
            copier = _Copier(writer, view, addr, size)
            for off in range(0, size, CHUNK):
                copier.chunk(off, min(CHUNK, size - off))
            del copier
    finally:
        writer.stop()
    writer.check()
    w.close()
    return meta


_Item = tuple[bytes | None, Any, "int | None", "memoryview | None"]


class _Writer:
    """Writes the records from a second thread, so that copying (and checksumming) the
    next chunk overlaps writing this one: the write releases the GIL.  Two buffers go
    round: one is filled while the other is written, then it comes back."""

    def __init__(self, w: RecordWriter, size: int, buffers: int = 2) -> None:
        self.w = w
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(buffers):
            self.free.put(memoryview(bytearray(size)))
        self.todo: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cryo-shm-writer", daemon=True)
        self.thread.start()

    def buffer(self) -> memoryview:
        self.check()
        return self.free.get()

    def raw(self, kind: bytes, data: memoryview, release: memoryview | None = None) -> None:
        """Checksum ``data`` (a slice of a buffer) here, write it there, then give
        ``release`` back."""
        self.todo.put((kind, data, raw_checksum(kind, data), release))

    def record(self, kind: bytes, payload: Any) -> None:
        self.todo.put((kind, payload, None, None))

    def release(self, buf: memoryview) -> None:
        self.todo.put((None, None, None, buf))

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            kind, payload, csum, buf = item
            try:
                if self.error is None and kind is not None:
                    if csum is not None:
                        self.w.write_raw(kind, payload, csum=csum)
                    else:
                        self.w.write(kind, payload)
            except BaseException as err:  # handed to the copier by check()
                self.error = err
            finally:
                if buf is not None:
                    self.free.put(buf)

    def stop(self) -> None:
        self.todo.put(None)
        self.thread.join()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


class _Copier:
    """Copies a segment out chunk by chunk: data into SHMB records, holes into SHMZ."""

    def __init__(self, writer: _Writer, view: memoryview, addr: int, size: int) -> None:
        self.writer, self.view, self.addr = writer, view, addr
        self.zeros: memoryview | None = None
        self.present = _present(addr, size)

    def chunk(self, off: int, n: int) -> None:
        p0, p1 = off // PAGE, (off + n + PAGE - 1) // PAGE
        present = self.present
        if present is None or present.find(0, p0, p1) < 0:  # every page is there
            buf = self.writer.buffer()
            _populate(self.addr + off, n)
            buf[:n] = self.view[off : off + n]
            self.writer.raw(SHMB, buf[:n], release=buf)
        elif present.find(1, p0, p1) < 0:  # no page is there
            self.writer.record(SHMZ, {"length": n})
        else:
            self.sparse(present, off, n)

    def sparse(self, present: bytes, off: int, n: int) -> None:
        """The pages that are there, zeros for small holes, SHMZ records for large ones."""
        buf, view = self.writer.buffer(), self.view
        if self.zeros is None:
            self.zeros = memoryview(bytes(len(buf)))
        p0, p1 = off // PAGE, (off + n + PAGE - 1) // PAGE
        start = 0  # where the data not yet written begins, in the chunk
        i = p0
        while i < p1:
            j = _find(present, 0, i, p1)  # pages [i, j) are there
            a, b = i * PAGE - off, min(j * PAGE - off, n)
            _populate(self.addr + off + a, b - a)
            buf[a:b] = view[off + a : off + b]
            k = _find(present, 1, j, p1)  # pages [j, k) are not
            a, b = j * PAGE - off, min(k * PAGE - off, n)
            if b - a >= HOLE_MIN:
                if a > start:
                    self.writer.raw(SHMB, buf[start:a])
                self.writer.record(SHMZ, {"length": b - a})
                start = b
            else:
                buf[a:b] = self.zeros[: b - a]
            i = k
        if n > start:
            self.writer.raw(SHMB, buf[start:n])
        self.writer.release(buf)


def _find(present: bytes, value: int, start: int, end: int) -> int:
    i = present.find(value, start, end)
    return end if i < 0 else i


def _present(addr: int, size: int) -> bytes | None:
    """One byte per page, 1 when the page exists, or None when that cannot be known.

    With swap, a page that is swapped out is not "in core" yet holds data: then every page
    is read.  Without, a page that is not in core was never touched and reads as zero.
    """
    if has_swap():
        return None
    try:
        return sysv.mincore(addr, size, PAGE).translate(_PRESENT)
    except OSError:
        return None


def _populate(addr: int, length: int) -> None:
    """Fault a run of existing pages in with one call, not one page fault per page."""
    if length <= 0:
        return
    start = addr - addr % PAGE
    with suppress(OSError):  # an older kernel: the copy faults the pages in itself
        sysv.madvise(start, addr + length - start, sysv.MADV.POPULATE_READ)


# ---------------------------------------------------------------------------------------------
# read and check


@dataclass
class ShmImage(Image):
    size: int
    layout: list[tuple[bytes, int, int]]  # (SHMB or SHMZ, offset, length)


def _scan(f: IO[bytes] | MappedFile, name: str, size: int | None,
          into_data: Callable[[int, int], memoryview] | None
          ) -> tuple[dict[str, Any], list[tuple[bytes, int, int]]]:  # fmt: skip
    """Walk the records: check order, kinds and lengths; ``into_data(off, n)``, if given,
    is the buffer each SHMB lands in.  Returns META and the layout."""
    meta: dict[str, Any] | None = None
    layout: list[tuple[bytes, int, int]] = []
    off = total = 0

    def check(n: int) -> None:
        if n == 0 or n > CHUNK or off + n > total:
            raise ImageCorrupt(f"image {name} is corrupt: {n} bytes at {off} of {total}",
                               path=name)  # fmt: skip

    def into(kind: bytes, n: int) -> memoryview | None:
        if meta is None or kind != SHMB or into_data is None:
            return None
        check(n)
        return into_data(off, n)

    records = cast("Generator[Record, None, None]", read_records(f, MAGIC, name, into=into))
    try:
        for rec in records:
            if meta is None:
                if rec.kind != META:
                    raise ImageCorrupt(f"image {name} is corrupt: no META record", path=name)
                meta = check_header(rec.payload, KIND, name)
                total = meta_int(meta, "size", name, lo=1)
                if size is not None and total != size:
                    raise ImageCorrupt(f"image {name} changed while it was loaded", path=name)
                continue
            if rec.kind == SHMB and rec.raw:
                n = len(rec.payload)
            elif rec.kind == SHMZ and isinstance(rec.payload, dict) and not rec.raw:
                n = meta_int(rec.payload, "length", name, lo=1, hi=CHUNK)
            else:
                raise ImageCorrupt(f"image {name} is corrupt: unexpected record"
                                   f" {kind_name(rec.kind)}", path=name)  # fmt: skip
            check(n)
            layout.append((rec.kind, off, n))
            off += n
            del rec
    finally:
        records.close()  # drops the generator's reference to the last buffer
    if meta is None:
        raise ImageCorrupt(f"image {name} is corrupt: no META record", path=name)
    if off != total:
        raise ImageCorrupt(f"image {name} is corrupt: {off} of {total} bytes", path=name)
    return meta, layout


def read(path: Path) -> ShmImage:
    """Read a saved segment through, checking every record; keep only META and the layout.

    The file is mapped, so that checking a chunk costs its checksum and no copy.  (A file
    of the store truncated by someone else during this pass would kill the process with
    SIGBUS; nothing is created yet then.)
    """
    name = str(path)
    try:
        with MappedFile(path) as f:
            meta, layout = _scan(f, name, None, None)
    except FileNotFoundError as err:
        raise ImageMissing(f"no image at {path}", path=name) from err
    return ShmImage(KIND, path, meta, Perm.from_meta(meta, name), int(meta["size"]), layout)


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": meta.get("size"), "attached at save": meta.get("nattch"),
            "locked": meta.get("locked"), "marked for removal": meta.get("dest")}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# load


def check_fits(image: ShmImage) -> None:
    shmmax = int(read_sysctl("shmmax"))
    if image.size > shmmax:
        raise CryoError(f"{image.path}: a segment of {image.size} bytes is larger than"
                        f" kernel.shmmax={shmmax} in this IPC namespace",
                        resource=f"shm {image.id}")  # fmt: skip


def load(image: ShmImage, *, replace: bool = False) -> Loaded:
    check_fits(image)
    want, size = image.id, image.size
    try:
        notes = clear_the_way(OPS, want, image.perm.key, replace=replace)
        new = create_with_id(OPS, want, image.perm, lambda key, fl: sysv.shmget(key, size, fl))
    except OSError as err:
        raise translate(err, KIND, want) from err
    try:
        _fill(new, image)
        if image.meta.get("locked"):
            try:
                sysv.shmctl(new, sysv.SHM_CMD.LOCK)
            except OSError as err:
                notes.append(f"SHM_LOCK failed: {err.strerror}")
        ds = sysv.shm_stat(new)
        image.perm.apply(ds.shm_perm)
        sysv.shmctl(new, sysv.IPC_CMD.SET, ds)
    except BaseException as err:
        _rmid(new)
        if isinstance(err, OSError):
            raise translate(err, KIND, new) from err
        raise
    if image.meta.get("dest"):
        notes.append("the segment was marked for removal when saved; it is loaded live")
    return Loaded(KIND, new, image.perm.key, notes=notes)


def _fill(ipc_id: int, image: ShmImage) -> None:
    """Read the data chunks straight into the segment, checking them again.

    A second thread allocates the pages of the next chunks (MADV_POPULATE_WRITE, one call
    per chunk, holes left alone) while this one reads: both release the GIL.
    """
    name = str(image.path)
    regions = [(off, n) for kind, off, n in image.layout if kind == SHMB]
    with sysv.shm_attached(ipc_id, image.size, readonly=False) as (addr, view):
        populator = _Populator(addr, regions)
        index = 0

        def into(off: int, n: int) -> memoryview:
            nonlocal index
            if index >= len(regions) or regions[index] != (off, n):
                raise ImageCorrupt(f"image {name} changed while it was loaded", path=name)
            populator.wait(index)
            index += 1
            return view[off : off + n]

        try:
            with open(image.path, "rb") as f:
                _, layout = _scan(f, name, image.size, into)
        finally:
            populator.stop()
    if layout != image.layout:
        raise ImageCorrupt(f"image {name} changed while it was loaded", path=name)


class _Populator:
    """Allocates the pages of ``regions``, from two more threads (zeroing new pages costs
    more than reading the file into them)."""

    THREADS = 2

    def __init__(self, addr: int, regions: list[tuple[int, int]]) -> None:
        self.addr, self.regions = addr, regions
        self.done = [False] * len(regions)
        self.stopping = False
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._run, args=(k,), name="cryo-shm-populate", daemon=True)
            for k in range(self.THREADS)
        ]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        try:
            for i in range(k, len(self.regions), self.THREADS):
                if self.stopping:
                    break
                off, n = self.regions[i]
                start = self.addr + off - off % PAGE
                with suppress(OSError):  # an older kernel: the reads fault the pages in
                    sysv.madvise(start, self.addr + off + n - start, sysv.MADV.POPULATE_WRITE)
                with self.cond:
                    self.done[i] = True
                    self.cond.notify_all()
        finally:
            with self.cond:
                for i in range(k, len(self.regions), self.THREADS):
                    self.done[i] = True
                self.cond.notify_all()

    def wait(self, index: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.done[index])

    def stop(self) -> None:
        self.stopping = True
        for t in self.threads:
            t.join()
