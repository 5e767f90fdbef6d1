"""The destination's staging of the pre-copy rounds (docs/design.md, "Staging on the
destination").

The rounds' pages of a single-process migration are not kept as frames until the stream
ends: each ``PREP`` frame is copied, as it arrives (its tag checked), into a *staging
area* in this process: one private anonymous mapping per eligible mapping of the arming's
layout (sent by the sender in the pid's first ``PREP`` frame), each at an address that
has the mapping's offset in its 2 MiB, high in the address space and clear of the
layout.  The page faults, zeroing and copying of the pages happen here, during the rounds.

At the end of the stream (:class:`StagedSource`), each private anonymous mapping of the
final layout that has pages and lies inside one staged mapping is to be *moved* there
(``Restart.staged``: the restored process is forked from this one, so it inherits the
staging area; memory.map_vmas moves each piece into place with
mremap(MREMAP_MAYMOVE|MREMAP_FIXED): page tables move, no page is copied).  The staged
pages not present at the freeze are dropped first (MADV_DONTNEED); staged pages outside
the moved pieces (the layout changed) become ordinary blocks, written before the final
ones.  The receiver unmaps its own staging area once the process is forked
(:meth:`StagedSource.release_staging`), so the pages are the restored process's alone.

Nothing here for a tree of processes, a --keep copy, KSM merge-any, or mappings of other
kinds (hugetlb, growsdown, MAP_NORESERVE, MAP_DROPPABLE, shared, file): their pages stay
frames and are written as before.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import mmap
from typing import Any

from cryo import procfs
from cryo.engine import memory
from cryo.image import records as R
from cryo.image.sink import PAGE, Runs
from cryo.image.stream import Framer, StreamSource, intersect, normalize, subtract
from cryo.linux import libc
from cryo.linux.consts import MAP, PROT, SYS
from cryo.linux.mm import MADV

log = logging.getLogger(__name__)
BASE = 0x2000_0000_0000  # the staging areas are placed from here up (32 TiB)
TOP = 0x7000_0000_0000  # ... and end below this
TASK_SIZE = 0x7FFF_FFFF_F000
PMD = 2 << 20
_MOVED_OUT = {"dp", "gd", "nr"}  # VmFlags whose mappings are never staged


def stageable(v: dict[str, Any]) -> bool:
    """Can this VMA (an MM record's) be staged and moved into place?"""
    return (v["kind"] == "anon" and not v.get("shared") and not v.get("hugetlb")
            and not _MOVED_OUT & set(v["flags"]))  # fmt: skip


def layout_of(vmas: list[dict[str, Any]]) -> list[list[int]]:
    """What the sender tells the receiver of the arming's layout: [start, end, stageable]."""
    return [[v["start"], v["end"], int(stageable(v))] for v in vmas]


class Stage:
    """One process's staging area here: one mapping per stageable VMA of the arming."""

    def __init__(self, pid: int, layout: Any) -> None:
        self.pid = pid
        self.regions: list[tuple[int, int, int]] = []  # (start, end, address here)
        self.staged: Runs = []  # target pages copied in
        self.bytes = 0
        if not isinstance(layout, list) or not all(
                isinstance(x, list) and len(x) == 3 and all(isinstance(i, int) for i in x)
                and 0 <= x[0] < x[1]
                and (not x[2] or (x[1] <= TASK_SIZE and not (x[0] | x[1]) % PAGE))
                for x in layout):  # fmt: skip
            raise ValueError("a malformed layout")
        busy = sorted([(v.start, v.end) for v in procfs.parse_maps(procfs.read("self", "maps"))]
                      + [(s, e) for s, e, _ in layout])  # fmt: skip
        cursor = BASE
        try:
            for s, e, ok in sorted(layout):
                if not ok:
                    continue
                at = _fit(cursor, s % PMD, e - s, busy)
                got = libc.syscall(SYS.mmap, at, e - s, PROT.READ | PROT.WRITE,
                                   MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0)
                if got != at:  # (a kernel without MAP_FIXED_NOREPLACE)
                    libc.syscall(SYS.munmap, got, e - s)
                    raise OSError(f"staging mapping at {got:#x}, not {at:#x}")
                self.regions.append((s, e, at))
                cursor = at + (e - s) + PAGE
        except BaseException:
            self.release()
            raise
        self.starts = [s for s, _, _ in self.regions]

    def region(self, start: int, end: int) -> tuple[int, int, int] | None:
        """The staged mapping that holds all of [start, end), if one does."""
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and end <= self.regions[i][1]:
            return self.regions[i]
        return None

    def take(self, runs: list[list[int]], data: Any) -> tuple[list[list[int]], bytearray] | None:
        """Copy the pages of ``runs`` (``data``) that fall in the staging area; the
        others returned (runs, their data) for the stream, None if there are none."""
        base = libc.buffer_address(data)
        rest: list[tuple[int, int, int]] = []  # address, length, offset in data
        off = 0
        for start, total in runs:
            a, n = start, total
            while n:
                i = bisect.bisect_right(self.starts, a) - 1
                if i >= 0 and a < self.regions[i][1]:
                    s, e, at = self.regions[i]
                    k = min(n, e - a)
                    ctypes.memmove(at + a - s, base + off, k)
                    self.staged.append([a, k])
                    self.bytes += k
                else:
                    nxt = self.starts[i + 1] if i + 1 < len(self.starts) else a + n
                    k = min(n, nxt - a)
                    rest.append((a, k, off))
                a, off, n = a + k, off + k, n - k
        if not rest:
            return None
        out = bytearray(sum(k for _, k, _ in rest))
        view, pos = memoryview(data), 0
        for _a, k, o in rest:
            out[pos : pos + k] = view[o : o + k]
            pos += k
        return [[a, k] for a, k, _ in rest], out

    def address(self, addr: int) -> int:
        s, _e, at = self.regions[bisect.bisect_right(self.starts, addr) - 1]
        return at + addr - s

    def clear_of(self, layout: list[tuple[int, int]]) -> bool:
        """Does no staged mapping overlap ``layout``?"""
        return not intersect(normalize([[at, e - s] for s, e, at in self.regions]),
                             normalize([[s, e - s] for s, e in layout]))  # fmt: skip

    def release(self) -> None:
        for s, e, at in self.regions:
            with contextlib.suppress(OSError):
                libc.syscall(SYS.munmap, at, e - s)
        self.regions, self.starts = [], []


def _fit(cursor: int, phase: int, size: int, busy: list[tuple[int, int]]) -> int:
    """The lowest address >= ``cursor``, at ``phase`` in its 2 MiB, with ``size`` bytes
    clear of ``busy``."""
    at = cursor - cursor % PMD + phase
    if at < cursor:
        at += PMD
    for s, e in busy:
        if e <= at:
            continue
        if s >= at + size:
            break
        at = e - e % PMD + phase
        if at < e:
            at += PMD
    if at + size > TOP:
        raise OSError("no room for a staging area")
    return at


class StagingFramer:
    """A Framer that copies the root process's ``PREP`` pages into its staging area
    (their tags checked by the framer first) and hands the stream the rest."""

    def __init__(self, framer: Framer, root_pid: Any) -> None:
        self.framer = framer
        self.root_pid = root_pid if isinstance(root_pid, int) else None
        self.stages: dict[int, Stage | None] = {}  # None: frames of it seen unstaged

    def __getattr__(self, name: str) -> Any:
        return getattr(self.framer, name)

    @property
    def staged_bytes(self) -> int:
        return sum(s.bytes for s in self.stages.values() if s is not None)

    def recv(self) -> tuple[bytes, dict[str, Any], Any]:
        while True:
            kind, meta, data = self.framer.recv()
            if kind != b"PREP":
                return kind, meta, data
            st = self._stage(meta)
            runs = meta.get("runs")
            if st is None or not isinstance(runs, list) or not _page_runs(runs, len(data)):
                return kind, meta, data
            rest = st.take(runs, data)
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError):
                    data.close()
            if rest is not None:
                return kind, {**meta, "runs": rest[0]}, rest[1]

    def _stage(self, meta: dict[str, Any]) -> Stage | None:
        tag = meta.get("tag")
        if not (isinstance(tag, list) and tag == ["pid", self.root_pid]):
            return None
        pid = self.root_pid
        assert pid is not None
        if pid not in self.stages:  # its first frame: with the arming's layout, or never
            self.stages[pid] = None
            if "layout" in meta:
                try:
                    self.stages[pid] = Stage(pid, meta["layout"])
                except (OSError, ValueError) as err:
                    log.debug("no staging for %d: %s", pid, err)
        return self.stages[pid]

    def release(self) -> None:
        for s in self.stages.values():
            if s is not None:
                s.release()


def _page_runs(runs: Any, size: int) -> bool:
    return isinstance(runs, list) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)
        and r[1] > 0 and not (r[0] | r[1]) % PAGE and 0 <= r[0] < TASK_SIZE
        for r in runs) and sum(r[1] for r in runs) == size  # fmt: skip


class StagedSource(StreamSource):
    """A stream source whose root process's pre-copy pages are in a staging area:
    ``staged_moves`` (old pid -> [(start, end, address here)]) for ``Restart.staged``."""

    def __init__(self, framer: StagingFramer, **kw: Any) -> None:
        self.stager = framer
        self.staged_moves: dict[int, list[tuple[int, int, int]]] = {}
        self.moved_bytes = 0  # staged pages that the moves put in place
        try:
            super().__init__(framer, **kw)  # type: ignore[arg-type]
        except BaseException:
            framer.release()
            raise
        self.bytes_received += framer.staged_bytes

    def _assemble(self) -> None:
        for pid, st in self.stager.stages.items():
            if st is not None:
                self._place(pid, st)
        super()._assemble()

    def _place(self, pid: int, st: Stage) -> None:
        """The moves of ``pid``, its staged pages not present dropped, and those outside
        the moves made blocks (before every other block: the final ones override them)."""
        present, reset = self._present.get(("pid", pid), ([], True))
        recs = [r for r in self.records.get(R.MM, []) if isinstance(r, dict)
                and r.get("pid") == pid]  # fmt: skip
        trees = self.records.get(R.TREE, [])
        alone = len(trees) == 1 and isinstance(trees[0], dict) and \
            [p.get("pid") for p in trees[0].get("procs", [])] == [pid]  # fmt: skip
        staged = normalize(st.staged)
        moves: list[tuple[int, int, int]] = []
        if not reset and len(recs) == 1 and alone and not recs[0].get("ksm_merge_any") \
                and st.clear_of(memory.layout(recs[0])):  # fmt: skip
            for v in recs[0]["vmas"]:
                if stageable(v) and v.get("data") and st.region(v["start"], v["end"]):
                    moves.append((v["start"], v["end"], st.address(v["start"])))
        keep = [] if reset else intersect(staged, normalize(present))
        moved = normalize([[s, e - s] for s, e, _ in moves])
        for a, n in subtract(intersect(staged, moved), keep):  # dropped since: no page
            libc.syscall(SYS.madvise, st.address(a), n, MADV.DONTNEED)
        left = subtract(keep, moved)
        self.moved_bytes += sum(n for _, n in intersect(keep, moved))
        for block in memory.split_blocks([(a, n) for a, n in left]):
            size = sum(n for _, n in block)
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            off = 0
            for a, n in block:
                ctypes.memmove(libc.buffer_address(buf) + off, st.address(a), n)
                off += n
            self._add({"pid": pid}, block, buf, 0)
        if moves:
            self.staged_moves[pid] = moves
        else:
            st.release()
        log.debug("pid %d: %d bytes staged, %d moves, %d bytes as blocks", pid,
                  sum(n for _, n in staged), len(moves), sum(n for _, n in left))  # fmt: skip

    def release_staging(self) -> None:
        """Unmap this process's staging areas (once the restored process has them)."""
        self.stager.release()

    def close(self) -> None:
        self.release_staging()
        super().close()
