"""A new version of an application, written as the engine dumps (a ``Sink``).

The engine hands the pages it saves (every page, or with write tracking only those
written since the previous version, see :meth:`VersionSink.select`), block by block, to
:meth:`VersionSink.write_block` (in its writer thread).  Each page is hashed; a page
whose hash is the one the previous version has at the same address is not stored again
but referred to where the previous version finds it; a page of zeros is recorded as
such; the other pages are written to this version's ``pages.img``, identical pages of a
block once.  Nothing of the engine's
PBLK records is kept: the version's page maps (``pmap.img``) replace them.

The version is written into ``.vN.tmp.PID`` and published by renaming it to ``vN`` once
every file is fsync'd: a checkpoint killed at any moment leaves earlier versions as they
were, and its remains are removed by the next checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from cryo.errors import InternalError
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.sink import ImageWriter, Tag, Tracking
from cryo.store import pages as P
from cryo.store.layout import App, FileMeta, HashTable, Sources, Unit, VersionMeta

log = logging.getLogger(__name__)
NEW = -2  # a page not seen before: to be stored
PART = 4096  # pages hashed at a time (16 MiB), the previous part being written meanwhile
TRAK = b"TRAK"  # (engine/dirty.py's KIND: the write tracking's token of each process)
ASYNC_PAGES = 256  # fewer pages to store are written at once, without the I/O thread


@dataclass
class _Block:
    """What one block of the dump became: per page, where its bytes are now."""

    page: P.I64
    src: P.I64
    off: P.I64




# The pmap.img of the versions the last checkpoint of each application compared with,
# and of the version it wrote, as loaded (or written) in this process, with the identity
# of the file they came from: a process that checkpoints the same applications again and
# again (the daemon's checkpointers) reads only those that changed since (gc rewrites a
# version's pmap.img atomically: a new file).  Read-only once kept; bounded by KEEP_BYTES.
_Kept = dict[int, tuple[tuple[int, ...], VersionMeta]]  # version -> (identity, meta)
_KEPT: dict[str, tuple[int, _Kept]] = {}  # app path -> (bytes, its metas)
KEEP_BYTES = 64 << 20


# the write tracking's records (TRAK) of the last version each application got from
# this process: the next checkpoint's look for its token reads no core.img
_TRACKS: dict[str, tuple[int, tuple[int, ...] | None, list[Any]]] = {}


def _identity(vdir: str, name: str = "pmap.img") -> tuple[int, ...] | None:
    try:
        st = os.stat(os.path.join(vdir, name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kept(app: App) -> _Kept:
    """The metas kept of ``app`` whose pmap.img is still the one they came from."""
    _, got = _KEPT.pop(app.path, (0, {}))
    return {v: (ident, meta) for v, (ident, meta) in got.items()
            if _identity(app.vdir(v)) == ident}  # fmt: skip


def _keep(app: App, kept: _Kept, metas: dict[int, VersionMeta]) -> None:
    """Keep ``metas`` as the application's set (the most recent one; the identity of
    those in ``kept`` known), the oldest sets dropped beyond KEEP_BYTES."""
    out: _Kept = {}
    for v, meta in metas.items():
        ident = kept[v][0] if v in kept and kept[v][1] is meta else _identity(app.vdir(v))
        if ident is not None:
            out[v] = (ident, meta)
    _KEPT.pop(app.path, None)
    _KEPT[app.path] = (sum(_size(m) for _, m in out.values()), out)
    total = sum(n for n, _ in _KEPT.values())
    for path in list(_KEPT):
        if total <= KEEP_BYTES:
            break
        total -= _KEPT.pop(path)[0]


def _size(meta: VersionMeta) -> int:
    """Bytes the arrays of ``meta`` hold (about)."""
    return sum(f.hashes.nbytes + f.layout.nbytes + f.chunks.nbytes
               for f in meta.files.values()) + sum(u.nbytes() for u in meta.units)  # fmt: skip


def load_previous(app: App, version: int) -> dict[Tag, HashTable]:
    """The page maps of ``version`` and where their pages' hashes are, for the next
    checkpoint to compare against (their seals are not checked here: no digest)."""
    kept = _kept(app)
    sources = Sources(app, {v: m for v, (_, m) in kept.items()}, digest=False)
    out = {}
    for unit in sources.meta(version).units:
        sources.check(unit, f"store version {app.vdir(version)}")
        out[unit.tag] = sources.hashes(unit)
    used = {version, *(P.version_of(int(k)) for t in out.values() for k in t.keys)}
    _keep(app, kept, {v: m for v, m in sources.metas.items() if v in used})
    return out


class VersionSink(ImageWriter):
    """Writes version ``version`` of ``app``; ``previous`` are the page maps (with hashes)
    of the version it is compared with (none: a full version)."""

    wants_checksum = False  # pages are hashed one by one here; the engine need not
    runs_as_arrays = True  # select's ``written`` may be an (n, 2) array (engine/dirty.py)

    def __init__(self, app: App, version: int, previous: dict[Tag, HashTable] | None,
                 *, parent: int | None = None, direct: bool = True) -> None:  # fmt: skip
        self.app = app
        self.version = version
        self.seed = app.store.seed
        self._zero = P.zero_hash(self.seed)
        self._prev = previous or {}
        self._parent = parent if previous is not None else None
        self._key = P.key(version, 0)
        tmp = os.path.join(app.path, f".v{version}.tmp.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        try:
            os.chmod(tmp, 0o700)
            super().__init__(app.vdir(version), tmp, direct=direct)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.tracking: Tracking | None = self
        self._stored_pages = 0  # pages in pages.img
        self._blocks: list[_Block] = []
        self._file_hashes: list[P.U64] = []
        self._chunks = P.ChunkSums(self.seed)
        self._io: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._file_layout: list[P.I64] = []
        self._units: dict[tuple[str, int], list[int]] = {}
        self._root: int | None = None
        self._sizes: dict[int, int] = {}
        self._tracks: list[Any] | None = []  # its TRAK records
        self.written_pages = 0  # pages handed to us
        self.new_pages = 0  # pages stored (after zeros and identical pages)

    # -- the Sink protocol ---------------------------------------------------------

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        if kind == R.PBLK:  # the engine's account of a block we stored: whose it is
            self._assign(payload)
            return
        if kind == R.HEAD:
            self._root = int(payload["root_pid"])
        if kind == TRAK and self._tracks is not None:
            if raw or not isinstance(payload, dict):
                self._tracks = None  # (not kept: read back from core.img)
            else:
                self._tracks.append(dict(payload))
        if kind == b"SHMO" and isinstance(payload, dict):
            self._sizes = {int(o["id"]): int(o["size"]) for o in payload.get("objs", [])}
        super().record(kind, payload, raw=raw)

    def write_block(self, data: memoryview, runs: list[list[int]],
                    csum: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Hash, compare and store one block (the engine's writer thread).

        The block goes in parts: while the pages one part stores are written (by our own
        I/O thread, the GIL released), the next part is hashed."""
        data, arr = _whole_pages(data, runs)
        page = P.run_pages(arr)
        n = len(page)
        src = np.full(n, NEW, dtype=np.int64)
        off = np.zeros(n, dtype=np.int64)
        h = np.zeros((n, 2), dtype="<u8")  # (kept only for the pages stored)
        stored = 0
        try:
            for s in range(0, n, PART):
                e = min(n, s + PART)
                keep = self._decide(data, page, s, e, src, off, h)
                if len(keep):
                    self._store(data, page, h, keep)
                    stored += len(keep) * P.PAGE
        finally:
            self._drain()  # the engine reuses the buffer once we return
        self.written_pages += n
        self._blocks.append(_Block(page, src, off))
        return {"index": len(self._blocks) - 1, "raw": n * P.PAGE, "stored": stored}

    def _decide(self, data: memoryview, page: P.I64, s: int, e: int, src: P.I64, off: P.I64,
                h: P.U64) -> P.I64:  # fmt: skip
        """Pages s..e of the block: where their bytes are (``src``, ``off``, ``h`` filled
        in); returns the indices of the pages to store (identical ones once)."""
        h[s:e] = P.page_hashes(data[s * P.PAGE : e * P.PAGE], self.seed)
        part = slice(s, e)
        pg, hh = page[part], h[part]
        psrc, poff = src[part], off[part]  # views: written through
        # the same bytes at the same page in the previous version: refer to them (the
        # hash identifies the content, whichever process of that version held it)
        for table in self._prev.values():
            prev = table.map
            idx, here = prev.lookup(pg)
            look = np.flatnonzero((psrc == NEW) & here)
            hit = look[P.same_rows(table.at(idx[look]), hh[look])]
            psrc[hit] = prev.src[idx[hit]]
            poff[hit] = prev.off[idx[hit]]
        cand = np.flatnonzero((psrc == NEW) & P.same_rows(hh, np.broadcast_to(self._zero,
                                                                               hh.shape)))
        if len(cand):
            words = np.frombuffer(data[s * P.PAGE : e * P.PAGE], dtype="<u8").reshape(
                e - s, P.PAGE // 8)
            psrc[cand[~words[cand].any(axis=1)]] = P.ZERO
        new = np.flatnonzero(psrc == NEW)
        if not len(new):
            return new
        # identical pages are stored once, in block order
        rows = np.ascontiguousarray(hh[new]).view(np.dtype((np.void, 16))).ravel()
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        order = np.argsort(first)
        slot = np.empty(len(first), dtype=np.int64)
        slot[order] = self._stored_pages + np.arange(len(first))
        psrc[new] = self._key
        poff[new] = slot[inverse.ravel()]
        return np.asarray(s + new[first[order]])

    def _store(self, data: memoryview, page: P.I64, h: P.U64, keep: P.I64) -> None:
        """Append pages ``keep`` of the block to pages.img (large parts asynchronously)."""
        mv = memoryview(data)
        starts, counts = P.extents(keep)
        iov = [mv[a * P.PAGE : (a + c) * P.PAGE]
               for a, c in zip(starts.tolist(), counts.tolist(), strict=True)]
        pos = P.data_offset(self._stored_pages)
        self._file_hashes.append(h[keep])
        self._file_layout.append(page[keep])
        self._stored_pages += len(keep)
        self.new_pages += len(keep)
        if len(keep) >= ASYNC_PAGES:
            if self._io is None:
                self._io = ThreadPoolExecutor(1, thread_name_prefix="cryo-store-io")
            self._pending.append(self._io.submit(self._write, iov, pos))
        else:
            self._drain()  # in file order, for the chunk checksums
            self._write(iov, pos)

    def _shutdown(self) -> None:
        try:
            self._drain()
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        errors = []
        for f in pending:
            try:
                f.result()
            except BaseException as err:  # re-raised below, once all are done
                errors.append(err)
        if errors:
            raise errors[0]

    def commit(self) -> None:
        self._shutdown()
        units = self._unit_maps()
        hashes = (np.concatenate(self._file_hashes) if self._file_hashes
                  else np.zeros((0, 2), dtype="<u8"))  # fmt: skip
        layout = (np.concatenate(self._file_layout) if self._file_layout
                  else np.zeros(0, dtype=np.int64))  # fmt: skip
        info = {"version": self.version, "app": self.app.name, "created": time.time(),
                "parent": self._parent, "retired": False,
                "memory": sum(len(u.map) for u in units) * P.PAGE,
                "new": self._stored_pages * P.PAGE}  # fmt: skip
        meta = VersionMeta(self.tmp, self.version, info, units)
        meta.files[0] = FileMeta(0, "pages.img", self._stored_pages, hashes, layout,
                                 self._chunks.finish())
        meta.write(atomic=False)  # (the whole directory is published at once)
        self._finish(P.data_offset(self._stored_pages))
        os.rename(self.tmp, self.path)  # the version exists from here on
        fmt.fsync_dir(self.app.path)
        self.stored_bytes = sum(os.path.getsize(os.path.join(self.path, n))
                                for n in os.listdir(self.path))  # fmt: skip
        # what the next checkpoint's load_previous would read back: this version and
        # those it refers to, kept (as if loaded: the path, the maps it wrote)
        meta.path = self.path
        kept = _kept(self.app)  # (a superset of those it refers to: the next load keeps
        metas = {v: m for v, (_, m) in kept.items()}  # only the versions it used)
        metas[self.version] = meta
        _keep(self.app, kept, metas)
        _TRACKS.pop(self.app.path, None)
        if self._tracks is not None:
            _TRACKS[self.app.path] = (self.version, _identity(self.path, "core.img"),
                                      self._tracks)  # fmt: skip

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._shutdown()
        self._discard()

    # -- for the engine's write tracking (docs/store.md) ---------------------------

    def previous_records(self, kind: bytes) -> list[Any]:
        """The records of ``kind`` of the version this one is compared with (the engine
        finds there the token of the write tracking it armed then)."""
        if self._parent is None:
            return []
        vdir = self.app.vdir(self._parent)
        got = _TRACKS.get(self.app.path)
        if kind == TRAK and got is not None and got[0] == self._parent and got[1] is not None \
                and got[1] == _identity(vdir, "core.img"):  # fmt: skip
            return [dict(p) for p in got[2]]
        core = os.path.join(vdir, "core.img")
        return [r.payload for r in fmt.read_file(core, R.CORE_MAGIC) if r.kind == kind]

    def select(self, tag: Tag, present: list[list[int]], written: list[list[int]] | None
               ) -> list[list[int]]:  # fmt: skip
        """The runs of process (or object) ``tag`` the engine must copy when it knows
        which pages were ``written`` since the previous version: those, and present pages
        the previous version of ``tag`` does not have.  The others are unchanged."""
        table = self._prev.get(tag)
        if written is None or table is None:
            return present
        have = P.run_pages(present)
        # the present pages the previous version lacks, and (only pages present: one
        # written and dropped since holds nothing to copy) those written; marked in place
        # by binary searches in the sorted present pages, where intersect1d and union1d
        # sorted them again with the written ones (1.0 of 1.3 ms a round for 1,288
        # written pages of 16,384)
        need = ~table.map.find(present)[1]
        got = P.run_pages(written)
        if len(have) > 1 and not (np.diff(have) > 0).all():  # (runs out of order: sorted)
            return P.page_runs(np.union1d(np.intersect1d(got, have), have[need]))
        if len(got) and len(have):
            at = np.minimum(np.searchsorted(have, got), len(have) - 1)
            need[at[have[at] == got]] = True
        return P.page_runs(have[need])

    def inherit(self, tag: Tag, present: list[list[int]], copied: list[list[int]]) -> None:
        """The pages of ``present`` the engine did not copy (``copied`` is what
        :meth:`select` returned) are those of the previous version of ``tag``."""
        have = P.run_pages(present)
        done = P.run_pages(copied)
        mask = np.ones(len(have), dtype=bool)
        if len(done) and len(have):
            at = np.minimum(np.searchsorted(have, done), len(have) - 1)
            mask[at[have[at] == done]] = False
        if not mask.any():
            return
        table = self._prev.get(tag)
        if table is None:
            raise InternalError(f"{tag[0]} {tag[1]}: pages taken as unchanged, and no"
                                " previous version of it")  # fmt: skip
        idx, here = table.map.find(present)  # (a search per run, not per page)
        if not here[mask].all():
            raise InternalError(f"{tag[0]} {tag[1]}: pages taken as unchanged that the"
                                " previous version does not have")  # fmt: skip
        idx = idx[mask]
        prev = table.map
        self._blocks.append(_Block(prev.page[idx], prev.src[idx], prev.off[idx]))
        self._units.setdefault(tag, []).append(len(self._blocks) - 1)

    # -- internals -----------------------------------------------------------------

    def _write(self, iov: list[memoryview], pos: int) -> None:
        """Write ``iov`` at ``pos`` of pages.img with vectored writes (O_DIRECT when we
        can); feeds the chunk checksums, so calls must come in file order."""
        for piece in iov:
            self._chunks.add(piece)
        self._write_pages(iov, pos)

    def _assign(self, meta: dict[str, Any]) -> None:
        """A PBLK of the engine: block ``index`` belongs to its pid (or object)."""
        i = meta.get("index")
        if not isinstance(i, int) or not 0 <= i < len(self._blocks):
            raise InternalError(f"PBLK record of no block we stored: {meta}")
        if "obj" in meta:
            tag = ("obj", int(meta["obj"]))
        elif "pid" in meta:
            tag = ("pid", int(meta["pid"]))
        elif self._root is not None:  # an engine without tags: one process
            tag = ("pid", self._root)
        else:
            raise InternalError("PBLK before HEAD")
        self._units.setdefault(tag, []).append(i)

    def _unit_maps(self) -> list[Unit]:
        assigned = sorted(i for lst in self._units.values() for i in lst)
        if assigned != list(range(len(self._blocks))):
            raise InternalError("blocks stored without a PBLK record (or twice)")
        units = []
        for tag, idx in self._units.items():
            bl = [self._blocks[i] for i in idx]
            page = np.concatenate([b.page for b in bl])
            src = np.concatenate([b.src for b in bl])
            off = np.concatenate([b.off for b in bl])
            if len(page) > 1 and not (np.diff(page) > 0).all():  # (blocks come in order)
                order = np.argsort(page, kind="stable")
                page, src, off = page[order], src[order], off[order]
            pm = P.PageMap(page, src, off)
            if not pm.sorted_unique():
                raise InternalError(f"{tag[0]} {tag[1]}: a page saved twice")
            size = self._sizes.get(tag[1]) if tag[0] == "obj" else None
            units.append(Unit(tag, pm, size))
        return units


def _whole_pages(data: memoryview, runs: list[list[int]]) -> tuple[memoryview, P.I64]:
    """Page data and runs (as an (n, 2) array) in whole pages.  The last run of a shared
    object may end inside a page (its size): that page is padded with zeros, and the
    object's size cuts it again at restart."""
    arr = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if not (arr & (P.PAGE - 1)).any():  # (one test for the 1,300 runs of a round)
        return data, arr
    out = bytearray()
    fixed = []
    pos = 0
    for start, length in runs:
        if start % P.PAGE:
            raise InternalError(f"page data at {start:#x}, not at a page boundary")
        chunk = data[pos : pos + length]
        pos += length
        pad = -length % P.PAGE
        out += chunk
        out += bytes(pad)
        fixed.append([start, length + pad])
    return memoryview(out), np.asarray(fixed, dtype=np.int64).reshape(-1, 2)


class Untracked:
    """A version sink without the write-tracking calls: the engine reads every page and
    the sink compares them all by hash (and nothing is armed for the next version)."""

    wants_checksum = False
    tracking: Tracking | None = None

    def __init__(self, sink: VersionSink) -> None:
        self._sink = sink
        self.path = sink.path
        self.stored_bytes = 0

    def side_file(self, name: str) -> IO[bytes]:
        return self._sink.side_file(name)

    def has_side(self, name: str) -> bool:
        return self._sink.has_side(name)

    def side_path(self, name: str) -> str:  # (deprecated: side_file)
        return self._sink.side_path(name)

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        self._sink.record(kind, payload, raw=raw)

    def write_block(self, data: memoryview, runs: list[list[int]],
                    csum: int | None = None) -> dict[str, Any]:  # fmt: skip
        return self._sink.write_block(data, runs, csum)

    def commit(self) -> None:
        self._sink.commit()
        self.stored_bytes = self._sink.stored_bytes

    def abort(self) -> None:
        self._sink.abort()
