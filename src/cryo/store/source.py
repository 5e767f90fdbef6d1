"""A version of an application, read for a restart (an ``ImageSource``).

Its records come from the version's core.img; its page blocks are planned from its page
maps (cryo.store.plan) over the page files of every version it uses.  :meth:`verify`
reads every page any block will write and checks its hash, then keeps every file open
(gc replaces page files, it never rewrites one), so that nothing gc does afterwards can
change what the restart writes.  A restart then reads the blocks ahead into a few reused
buffers (cryo.image.reader.ReadAhead), never through a mapping of the files: its memory
is bounded whatever the version's size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from cryo.errors import ImageCorrupt
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.reader import (
    ImageReader,
    ReadAhead,
    open_nofollow,
    pages_header_ok,
    pread_full,
    run_parallel,
)
from cryo.image.sink import PAGES_HEADER
from cryo.store import pages as P
from cryo.store.layout import App, FileMeta, Sources
from cryo.store.plan import UnitPlan, plan_unit

GATHER = 16384  # pages per gathered block (64 MiB)
VERIFY_CHUNKS = 64  # chunks per read when verifying (16 MiB)


class VersionImage(ReadAhead, ImageReader):
    """Version ``version`` of ``app``, checked and planned; ``lock`` (a context manager
    already entered, or None) is left once the pages are verified and mapped."""

    what = "store version"

    def __init__(self, app: App, version: int,
                 lock: contextlib.AbstractContextManager[None] | None = None) -> None:  # fmt: skip
        self.app = app
        self.version = version
        self._lock = lock
        self._fds: dict[int, int] = {}  # every page file used, open once verified
        self._zeros: list[mmap.mmap] = []
        self._init_read_ahead()
        super().__init__(app.vdir(version), f"application {app.name!r} has no version {version}")
        self.sources = Sources(app)
        meta = self.sources.meta(version)
        self.blocks: list[dict[str, Any]] = []
        self._used: dict[int, P.BOOL] = {}
        self._gathers: list[P.PageMap] = []
        for unit in meta.units:
            self.sources.check(unit, f"store version {self.path}")
            keys = unit.keys()
            layouts = {k: self.sources.file(k).layout for k in keys}
            exclude = None
            if unit.size is not None and unit.size % P.PAGE:
                exclude = np.array([unit.size // P.PAGE], dtype=np.int64)
            plan = plan_unit(unit.map, layouts, keys=keys, exclude=exclude)
            self._add_blocks(unit.tag, unit.size, plan)

    # -- planning ------------------------------------------------------------------

    def _add_blocks(self, tag: tuple[str, int], size: int | None, plan: UnitPlan) -> None:
        base = {tag[0]: tag[1]}
        for k, used in plan.used.items():
            self._used[k] = self._used[k] | used if k in self._used else used
        for nat in plan.natural:  # (in pieces of at most GATHER pages: one buffer each)
            off = nat.off
            for piece in _pieces((nat.runs << P.SHIFT).tolist(), GATHER * P.PAGE):
                self._add(base, piece, nat=(nat.key, off))
                off += sum(n for _, n in piece) // P.PAGE
        g = plan.gather
        for i in range(0, len(g), GATHER):
            part = P.PageMap(g.page[i : i + GATHER], g.src[i : i + GATHER],
                             g.off[i : i + GATHER])  # fmt: skip
            runs = P.page_runs(part.page)
            if size is not None and runs and runs[-1][0] + runs[-1][1] > size:
                runs[-1][1] = size - runs[-1][0]  # an object's last, partial page
            self._gathers.append(part)
            self._add(base, runs, gather=len(self._gathers) - 1)
        zero = plan.stale_zero
        if tag[0] == "pid" and len(plan.zero):
            # a fresh private file mapping holds the file's bytes, not zeros
            mm = self.one(R.MM, tag[1])
            inside = np.zeros(len(plan.zero), dtype=bool)
            try:
                for v in mm["vmas"]:
                    if v["kind"] == "file":
                        s, e = int(v["start"]) >> P.SHIFT, int(v["end"]) >> P.SHIFT
                        inside |= (plan.zero >= s) & (plan.zero < e)
            except (KeyError, TypeError, ValueError) as err:  # (the schema says more, later)
                raise self.corrupt(f"MM record of pid {tag[1]}: {err!r}") from err
            zero = np.union1d(zero, plan.zero[inside])
        if len(zero):
            self._add(base, P.page_runs(zero), zero=True)

    def _add(self, base: dict[str, int], runs: list[list[int]], **how: Any) -> None:
        b = {"index": len(self.blocks), **base, "runs": runs, "raw": sum(n for _, n in runs)}
        b.update({f"_{k}": v for k, v in how.items()})
        self.blocks.append(b)

    # -- the ImageSource protocol --------------------------------------------------

    def sealed_files(self) -> list[tuple[str, list[fmt.Record]]]:
        """core.img, and the pmap.img of this version and of every version whose page
        files it reads (their page hashes are what its pages are checked against)."""
        return [*super().sealed_files(),
                *((os.path.join(m.path, "pmap.img"), m.records)
                  for m in self.sources.metas.values())]  # fmt: skip

    def owner_files(self) -> list[str]:
        return [*super().owner_files(),
                *(os.path.join(m.path, "pmap.img") for m in self.sources.metas.values()),
                *(self.sources.path(k) for k in self._used)]  # fmt: skip

    def verify(self, threads: int = 2) -> None:
        """Check the hash of every page a block will write, from every file; then map
        the files and let go of the store's lock."""
        fds: dict[int, int] = {}
        try:
            for k, used in self._used.items():
                if used.any():
                    fds[k] = self._open_checked(k)
            jobs = [(fds[k], self.sources.file(k), k, start, count)
                    for k, start, count in self._chunks()]  # fmt: skip
            bad = check_chunks(jobs, self.app.store.seed, threads)
            if bad:
                k, where = bad[0]
                raise self.corrupt(f"{where} of {self.sources.path(k)} do not match their"
                                   " checksum", path=self.sources.path(k))  # fmt: skip
            self._fds, fds = fds, {}
        finally:
            for fd in fds.values():
                os.close(fd)
        self._unlock()

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        if "_nat" in b or "_gather" in b:
            buf = bytearray(self._ahead_size(b))
            self._read_ahead(b, memoryview(buf))
            return buf, 0
        if "_zero" in b:
            # an unpopulated anonymous mapping: reading it maps the zero page
            zeros = mmap.mmap(-1, max(b["raw"], P.PAGE), flags=mmap.MAP_PRIVATE)
            self._zeros.append(zeros)
            return zeros, 0
        raise self.corrupt("a block of unknown kind")

    # -- read ahead (ReadAhead): what verify() checked, from the files it keeps open ----

    def _ahead(self, b: dict[str, Any]) -> bool:
        return "_nat" in b or "_gather" in b

    def _ahead_size(self, b: dict[str, Any]) -> int:
        if "_gather" in b:
            return len(self._gathers[b["_gather"]]) * P.PAGE
        return int(b["raw"])

    def _read_ahead(self, b: dict[str, Any], view: memoryview) -> None:
        if "_nat" in b:
            k, off = b["_nat"]
            self._pread(k, view, P.data_offset(off))
            return
        part = self._gathers[b["_gather"]]
        at = P.breaks(part.off, same=(part.src,))
        ends = np.append(at[1:], len(part))
        for s, e in zip(at.tolist(), ends.tolist(), strict=True):
            self._pread(int(part.src[s]), view[s * P.PAGE : e * P.PAGE],
                        P.data_offset(int(part.off[s])))  # fmt: skip

    def _pread(self, k: int, view: memoryview, offset: int) -> None:
        if pread_full(self._fds[k], view, offset) != len(view):
            raise self.corrupt(f"{self.sources.path(k)} is truncated",
                               path=self.sources.path(k))  # fmt: skip

    def close(self) -> None:
        self._close_sides()
        self._close_read_ahead()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for m in self._zeros:
            with contextlib.suppress(BufferError):
                m.close()
        self._zeros.clear()
        self._unlock()

    # -- internals -----------------------------------------------------------------

    def _unlock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def _open_checked(self, k: int) -> int:
        path = self.sources.path(k)
        fm = self.sources.file(k)
        try:
            fd = open_nofollow(path)
        except FileNotFoundError as err:
            raise self.corrupt(f"{path} is missing", path=path) from err
        try:
            check_page_file(fd, path, fm.pages)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _chunks(self) -> Iterator[tuple[int, int, int]]:
        """(file, first chunk, chunks) to check: every chunk holding a page used."""
        for k, used in self._used.items():
            if not used.any():
                continue
            pad = np.zeros(-len(used) % P.CHUNK, dtype=bool)
            chunks = np.concatenate([used, pad]).reshape(-1, P.CHUNK).any(axis=1)
            starts, counts = P.extents(np.flatnonzero(chunks))
            for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
                for i in range(s, s + c, VERIFY_CHUNKS):
                    yield k, i, min(VERIFY_CHUNKS, s + c - i)


def _pieces(runs: list[list[int]], most: int) -> Iterator[list[list[int]]]:
    """``runs`` ([address, length], ...) cut into consecutive pieces of ``most`` bytes
    at most (whole pages)."""
    cur: list[list[int]] = []
    size = 0
    for start, total in runs:
        addr, length = start, total
        while length:
            take = min(length, most - size)
            cur.append([addr, take])
            size, addr, length = size + take, addr + take, length - take
            if size == most:
                yield cur
                cur, size = [], 0
    if cur:
        yield cur


Job = tuple[int, FileMeta, int, int, int]  # fd, file, tag, first chunk, chunks


def check_chunks(jobs: list[Job], seed: int, threads: int = 2, *, pages: bool = False
                 ) -> list[tuple[int, str]]:  # fmt: skip
    """Read chunks of page files and check their checksums (with ``pages``, every page's
    hash too).  Returns (tag, "page N" or "pages N-M") of the first damage of each job.
    Two threads overlap the reads of a cold file; hashing a chunk releases the GIL."""
    bad: list[tuple[int, str]] = []
    work = list(reversed(jobs))
    lock = threading.Lock()

    def run() -> None:
        buf = bytearray(max((j[4] for j in jobs), default=0) * P.CHUNK * P.PAGE)
        while True:
            with lock:
                if not work:
                    return
                fd, fm, tag, c0, nc = work.pop()
            p0, p1 = c0 * P.CHUNK, min((c0 + nc) * P.CHUNK, fm.pages)
            view = memoryview(buf)[: (p1 - p0) * P.PAGE]
            got = pread_full(fd, view, P.data_offset(p0))
            if got != len(view):
                bad.append((tag, f"page {p0 + got // P.PAGE} (truncated)"))
                continue
            diff = np.flatnonzero(P.chunk_sums(view, seed) != fm.chunks[c0 : c0 + nc])
            if pages:
                wrong = ~P.same_rows(P.page_hashes(view, seed), fm.hashes[p0:p1])
                if wrong.any():
                    bad.append((tag, f"page {p0 + int(np.flatnonzero(wrong)[0])}"))
                    continue
            if len(diff):
                first = p0 + int(diff[0]) * P.CHUNK
                bad.append((tag, f"pages {first}-{min(first + P.CHUNK, fm.pages) - 1}"))

    run_parallel(lambda _k: run(), threads)
    return sorted(bad)


def check_page_file(fd: int, path: str, pages: int) -> None:
    """The header and the size of a page file."""
    size = os.fstat(fd).st_size
    if size != P.data_offset(pages):
        raise ImageCorrupt(f"{path} is corrupt: {size} bytes, not {P.data_offset(pages)}",
                           path=path)  # fmt: skip
    if not pages_header_ok(os.pread(fd, PAGES_HEADER.size, 0)):
        raise ImageCorrupt(f"{path} is corrupt: bad header", path=path)
