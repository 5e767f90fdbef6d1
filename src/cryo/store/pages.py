"""The control structure of a store version (seed 001): for every page of a process (or
of a shared memory object), where its bytes are.

A page's bytes are in a *source*: page ``off`` of file ``file`` of version ``version``
(file 0 is the version's ``pages.img``, file k > 0 its ``pages-k.img``, written when gc
merges pages into it), or nowhere: a page of zeros is recorded, never stored.  A source
is packed into one integer, its *key*, ``version << 16 | file``, so that ordering keys
orders sources by version; zeros have the key ``ZERO`` (-1).

In memory a map (:class:`PageMap`) is parallel numpy arrays sorted by page number: page,
source key and offset in the source file.  On disk it is sorted runs of consecutive
pages whose bytes are consecutive in one source (``RUN``, 20 bytes each) plus the table
of the sources they use: a lookup is a binary search (O(log n)), and a restart turns
runs into large vectored writes.

Every stored page has a hash (xxh3-128, seeded per store), kept with the file that holds
it (``PHSH`` record): it is both the page's checksum and what the next checkpoint
compares against to find the pages that did not change.  Bulk work is vectorised with
numpy: a dump hashes each page with one call (about 50 ms per GiB here) and does
everything else per block of 16384 pages, never in a Python loop per page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash
from numpy.typing import NDArray

PAGE = 4096
SHIFT = 12
ZERO = -1  # the key of a page of zeros
FILE_BITS = 16
ZERO_PAGE = bytes(PAGE)

# one run of a map: `count` pages from `page` on, whose bytes are pages `off`... of source
# number `src` in the map's source table (-1: zeros)
RUN = np.dtype([("page", "<i8"), ("count", "<u4"), ("src", "<i4"), ("off", "<u4")])
# one run of a page file's layout: the file's next `count` pages were saved from pages
# `page`... (of whatever process or object); a restart writes them back there in one go
LAYOUT = np.dtype([("page", "<i8"), ("count", "<i8")])

I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
BOOL = NDArray[np.bool_]


def key(version: int, file: int) -> int:
    return version << FILE_BITS | file


def version_of(k: int) -> int:
    return k >> FILE_BITS


def file_of(k: int) -> int:
    return k & ((1 << FILE_BITS) - 1)


def file_name(file: int) -> str:
    return "pages.img" if file == 0 else f"pages-{file}.img"


def data_offset(off: int) -> int:
    """Byte offset of page ``off`` in a page file (after its header page)."""
    return PAGE * (1 + off)


# -- hashing ---------------------------------------------------------------------------


def page_hashes(view: memoryview | bytes | bytearray, seed: int) -> U64:
    """xxh3-128 of each 4 KiB page of ``view``, as an (n, 2) array.

    One call per page is the cost of a strong hash here (~50 ms/GiB, the GIL held);
    hashing the whole buffer at once runs at ~35 GB/s but tells nothing per page."""
    h = xxhash.xxh3_128_digest
    mv = memoryview(view)
    joined = b"".join([h(mv[i : i + PAGE], seed) for i in range(0, len(mv), PAGE)])
    return np.frombuffer(joined, dtype="<u8").reshape(-1, 2)


def zero_hash(seed: int) -> U64:
    return np.frombuffer(xxhash.xxh3_128_digest(ZERO_PAGE, seed), dtype="<u8")


CHUNK = 64  # pages per chunk checksum (256 KiB)


class ChunkSums:
    """xxh3-64 of each run of CHUNK pages of a page file, fed in file order: what a
    restart checks (one call per 256 KiB, the GIL released, two threads)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.sums: list[int] = []
        self._h = xxhash.xxh3_64(seed=seed)
        self._n = 0  # pages in the current chunk

    def add(self, data: memoryview | bytes | bytearray) -> None:
        mv = memoryview(data)
        n, pos = len(mv) // PAGE, 0
        while pos < n:
            take = min(CHUNK - self._n, n - pos)
            self._h.update(mv[pos * PAGE : (pos + take) * PAGE])
            self._n += take
            pos += take
            if self._n == CHUNK:
                self.sums.append(self._h.intdigest())
                self._h.reset()
                self._n = 0

    def finish(self) -> NDArray[np.uint64]:
        if self._n:
            self.sums.append(self._h.intdigest())
            self._h.reset()
            self._n = 0
        return np.asarray(self.sums, dtype="<u8")


def chunk_sums(data: memoryview | bytes | bytearray, seed: int) -> NDArray[np.uint64]:
    """The chunk checksums of whole chunks of pages (the last may be short)."""
    mv = memoryview(data)
    step = CHUNK * PAGE
    h = xxhash.xxh3_64_intdigest
    return np.asarray([h(mv[i : i + step], seed) for i in range(0, len(mv), step)], dtype="<u8")


def hashes_from(data: bytes | memoryview) -> U64:
    if len(data) % 16:
        raise ValueError("hash table length is not a multiple of 16")
    return np.frombuffer(data, dtype="<u8").reshape(-1, 2)


def same_rows(a: U64, b: U64) -> BOOL:
    """Row-wise equality of two (n, 2) hash arrays."""
    return np.asarray((a[:, 0] == b[:, 0]) & (a[:, 1] == b[:, 1]))


# -- runs ------------------------------------------------------------------------------


def ramp(starts: I64, counts: I64) -> I64:
    """[s, s+1, ..., s+c-1 for each (s, c)], concatenated."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(counts) - counts
    return np.asarray(np.repeat(starts.astype(np.int64) - before, counts) + np.arange(total))


def breaks(*step: I64, same: tuple[I64, ...] = ()) -> I64:
    """Indices where runs start (0 included): in a run, each ``step`` column goes up by
    one and each ``same`` column stays the same."""
    n = len(step[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cut = np.zeros(n, dtype=bool)
    cut[0] = True
    for c in step:
        cut[1:] |= np.diff(c) != 1
    for c in same:
        cut[1:] |= np.diff(c) != 0
    return np.flatnonzero(cut)


def extents(values: I64) -> tuple[I64, I64]:
    """(starts, counts) of the runs of consecutive integers in ``values``."""
    at = breaks(values)
    counts = np.diff(np.append(at, len(values)))
    return values[at], counts.astype(np.int64)


def run_pages(runs: list[list[int]] | list[tuple[int, int]] | I64) -> I64:
    """Page numbers of engine runs ([[address, length], ...] or such an array, whole
    pages)."""
    if not len(runs):
        return np.zeros(0, dtype=np.int64)
    arr = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    return ramp(arr[:, 0] >> SHIFT, arr[:, 1] >> SHIFT)


def page_runs(pages: I64) -> list[list[int]]:
    """Engine runs ([[address, length], ...]) of sorted page numbers."""
    starts, counts = extents(pages)
    return np.stack([starts << SHIFT, counts << SHIFT], axis=1).tolist()  # type: ignore[no-any-return]


@dataclass
class PageMap:
    """Where each page of one process (or object) is, sorted by page number."""

    page: I64
    src: I64  # source key, ZERO for a page of zeros
    off: I64  # page index in the source file (0 for zeros)

    @classmethod
    def empty(cls) -> PageMap:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy())

    def __len__(self) -> int:
        return len(self.page)

    def sorted_unique(self) -> bool:
        return bool(len(self.page) < 2 or (np.diff(self.page) > 0).all())

    def lookup(self, pages: I64) -> tuple[I64, BOOL]:
        """For each of ``pages``: its index here (clipped) and whether it is here."""
        if len(self.page) == 0:
            return np.zeros(len(pages), dtype=np.int64), np.zeros(len(pages), dtype=bool)
        if len(pages) == len(self.page) and np.array_equal(pages, self.page):
            return np.arange(len(pages), dtype=np.int64), np.ones(len(pages), dtype=bool)
        idx = np.minimum(np.searchsorted(self.page, pages), len(self.page) - 1)
        return idx.astype(np.int64), np.asarray(self.page[idx] == pages)

    def find(self, runs: list[list[int]]) -> tuple[I64, BOOL]:
        """:meth:`lookup` of the pages of engine runs ([[address, length], ...]), run by
        run: a run whose pages are all here is found with two binary searches."""
        if not runs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        arr = np.asarray(runs, dtype=np.int64).reshape(-1, 2) >> SHIFT
        first = np.searchsorted(self.page, arr[:, 0])
        last = np.searchsorted(self.page, arr[:, 0] + arr[:, 1])
        idx, here = [], []
        for (a, n), i, j in zip(arr.tolist(), first.tolist(), last.tolist(), strict=True):
            if j - i == n:  # (pages here are distinct and sorted: all of them)
                idx.append(np.arange(i, j, dtype=np.int64))
                here.append(np.ones(n, dtype=bool))
            else:
                x, h = self.lookup(np.arange(a, a + n, dtype=np.int64))
                idx.append(x)
                here.append(h)
        return np.concatenate(idx), np.concatenate(here)

    def encode(self) -> tuple[bytes, list[list[int]]]:
        """Runs (``RUN`` records, as bytes) and the source table [[version, file], ...]."""
        # a zero page's offset is 0: a run of zeros continues whatever its offsets
        off_step = np.where(self.src == ZERO, np.arange(len(self.page)), self.off)
        if len(self.off) and self.off.max() >= 1 << 32:
            raise ValueError("a page file of more than 2**32 pages")
        at = breaks(self.page, off_step, same=(self.src,))
        keys = np.unique(self.src[at])  # (few: sorted once per run, not per page)
        table = [[version_of(int(k)), file_of(int(k))] for k in keys if k != ZERO]
        idx = np.searchsorted(keys, self.src[at]) - (1 if len(keys) and keys[0] == ZERO else 0)
        runs = np.zeros(len(at), dtype=RUN)
        runs["page"] = self.page[at]
        runs["count"] = np.diff(np.append(at, len(self.page)))
        runs["src"] = idx
        runs["off"] = np.where(self.src[at] == ZERO, 0, self.off[at])
        return runs.tobytes(), table

    @classmethod
    def decode(cls, data: bytes | memoryview, table: list[list[int]]) -> PageMap:
        """The inverse of :meth:`encode`; raises ValueError on an inconsistent map."""
        if len(data) % RUN.itemsize:
            raise ValueError("runs are not a whole number of records")
        runs = np.frombuffer(data, dtype=RUN)
        counts = runs["count"].astype(np.int64)
        if len(runs) and (counts <= 0).any():
            raise ValueError("a run of no pages")
        src_idx = runs["src"].astype(np.int64)
        if len(runs) and ((src_idx < -1) | (src_idx >= len(table))).any():
            raise ValueError("a run refers to no source")
        keys = np.array([key(v, f) for v, f in table] + [ZERO], dtype=np.int64)
        page = ramp(runs["page"], counts)
        src = np.repeat(keys[src_idx], counts)
        off = ramp(runs["off"].astype(np.int64), counts)
        off[src == ZERO] = 0
        pm = cls(page, src, off)
        if not pm.sorted_unique():
            raise ValueError("runs overlap or are out of order")
        return pm
