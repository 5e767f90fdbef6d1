"""A store on disk: applications, their versions, and the files of a version.

    STORE/cryo-store.img          magic CRYOSTOR: {format, created, seed}
    STORE/APP/.lock               flock: checkpoint and gc exclusive, restart/verify shared
    STORE/APP/vN/                 version N, published by renaming .vN.tmp.PID
        core.img                  the records of the processes (no PBLK)
        pmap.img                  magic CRYOPMAP: VERS, then PMAP per process/object, PHSH per file
        pages.img                 the pages this version stored (header page, 4 KiB pages)
        pages-K.img               pages gc merged into this version
        sysvshm-ID.bin            side files of the engine
    STORE/APP/.vN.tmp.PID/        a version being written (removed once PID is gone)
    STORE/APP/.vN.del.PID/        a version being deleted by gc

A version without core.img is *retired*: gc removed it, but later versions still read
pages from its files.  docs/store.md describes the records.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cryo.errors import CryoError, ImageCorrupt, ImageIncompatible, ImageMissing
from cryo.image import format as fmt
from cryo.image import seal
from cryo.store import pages as P

STORE_MAGIC = b"CRYOSTOR"
PMAP_MAGIC = b"CRYOPMAP"
MARKER = "cryo-store.img"
STOR = b"STOR"
VERS = b"VERS"
PMAP = b"PMAP"
PHSH = b"PHSH"
STORE_FORMAT = 1
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_TEMP_DIR = re.compile(r"\.v([1-9][0-9]*)\.(tmp|del)\.([0-9]+)")


def check_app_name(name: str) -> str:
    if not _APP_NAME.fullmatch(name):
        raise CryoError(f"bad application name {name!r}: letters, digits and ._+- only,"
                        " not starting with a punctuation mark")  # fmt: skip
    return name


class Store:
    """A store directory.  ``create`` makes it (and its marker) if needed."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        self.path = os.path.abspath(path)
        marker = os.path.join(self.path, MARKER)
        if not os.path.exists(marker):
            if not create:
                what = "does not exist" if not os.path.exists(self.path) else "is not a store"
                raise ImageMissing(f"no store at {self.path} ({what})", path=self.path)
            self._create(marker)
        recs = fmt.read_file(marker, STORE_MAGIC)
        head = recs[0].payload if recs and recs[0].kind == STOR else None
        if not isinstance(head, dict) or not isinstance(head.get("seed"), int):
            raise ImageCorrupt(f"store {self.path} is corrupt: bad {MARKER}", path=marker)
        if head.get("format") != STORE_FORMAT:
            raise ImageIncompatible(f"store {self.path} has format {head.get('format')};"
                                    f" this cryo reads format {STORE_FORMAT}",
                                    path=marker)  # fmt: skip
        self.seed: int = head["seed"]

    def _create(self, marker: str) -> None:
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise CryoError(f"directory {parent} does not exist", path=parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path, 0o700)
        if not os.path.isdir(self.path):
            raise CryoError(f"{self.path} is not a directory", path=self.path)
        if any(not n.startswith(".") for n in os.listdir(self.path)):
            raise CryoError(f"{self.path} is not empty and not a store", path=self.path)
        # written aside, then linked into place: two first checkpoints racing agree on
        # one seed (link fails for the second, which reads the first's)
        tmp = f"{marker}.tmp.{os.getpid()}"
        with fmt.open_private(tmp, replace_stale=True) as f:
            w = fmt.RecordWriter(f, STORE_MAGIC)
            w.write(STOR, {"format": STORE_FORMAT, "created": time.time(),
                           "seed": secrets.randbits(64)})  # fmt: skip
            w.close()
            os.fsync(f.fileno())
        try:
            os.link(tmp, marker)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        fmt.fsync_dir(self.path)

    def apps(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path)
                      if _APP_NAME.fullmatch(n)
                      and os.path.isdir(os.path.join(self.path, n)))  # fmt: skip

    def app(self, name: str, *, create: bool = False) -> App:
        check_app_name(name)
        path = os.path.join(self.path, name)
        if not os.path.isdir(path):
            if not create:
                raise ImageMissing(f"no application {name!r} in store {self.path}", path=path)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            fmt.fsync_dir(self.path)
        return App(self, name, path)


@dataclass
class App:
    store: Store
    name: str
    path: str

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Writers (checkpoint, gc) one at a time; readers wait for gc."""
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def vdir(self, version: int) -> str:
        return os.path.join(self.path, f"v{version}")

    def versions(self) -> list[int]:
        """Every version directory, published or retired, in order."""
        out = []
        for n in os.listdir(self.path):
            m = _VERSION_DIR.fullmatch(n)
            if m and os.path.isdir(os.path.join(self.path, n)):
                out.append(int(m.group(1)))
        return sorted(out)

    def published(self) -> list[int]:
        return [v for v in self.versions() if self.is_published(v)]

    def is_published(self, version: int) -> bool:
        return os.path.exists(os.path.join(self.vdir(version), "core.img"))

    def latest(self) -> int | None:
        pub = self.published()
        return pub[-1] if pub else None

    def resolve(self, version: int | None) -> int:
        """The version a restart means: ``version``, or the latest."""
        if version is None:
            latest = self.latest()
            if latest is None:
                raise ImageMissing(f"application {self.name!r} has no version", path=self.path)
            return latest
        if not self.is_published(version):
            have = ", ".join(str(v) for v in self.published()) or "none"
            raise ImageMissing(f"application {self.name!r} has no version {version}"
                               f" (versions: {have})", path=self.vdir(version))  # fmt: skip
        return version

    def next_version(self) -> int:
        used = self.versions()
        for n in os.listdir(self.path):
            m = _TEMP_DIR.fullmatch(n)
            if m and m.group(2) == "del":
                used.append(int(m.group(1)))
        return max(used, default=0) + 1

    def sweep(self) -> list[str]:
        """Remove what a killed cryo left: version directories half written or half
        deleted.  Called with the exclusive lock held: no other writer is at work, so
        whatever is not ours is stale (whether or not its pid is in use again).
        Returns what was removed."""
        gone = []
        for n in os.listdir(self.path):
            m = _TEMP_DIR.fullmatch(n)
            if m and int(m.group(3)) != os.getpid():
                shutil.rmtree(os.path.join(self.path, n), ignore_errors=True)
                gone.append(n)
        return gone

    def meta(self, version: int, *, digest: bool = True) -> VersionMeta:
        return VersionMeta.load(self.vdir(version), digest=digest)


@dataclass
class FileMeta:
    """A page file of a version: its pages' hashes and where they were saved from."""

    id: int
    name: str
    pages: int
    hashes: P.U64
    layout: P.I64  # natural page of each file page
    chunks: NDArray[np.uint64]  # checksum of each CHUNK pages

    def record(self) -> dict[str, Any]:
        starts, counts = P.extents(self.layout)
        lay = np.zeros(len(starts), dtype=P.LAYOUT)
        lay["page"], lay["count"] = starts, counts
        return {"file": self.id, "hashes": self.hashes.tobytes(), "layout": lay.tobytes(),
                "chunks": self.chunks.tobytes()}


class Unit:
    """The page map of one process (``("pid", N)``) or shared object (``("obj", N)``).
    A map read from disk is decoded when first used (a restart needs only its own)."""

    def __init__(self, tag: tuple[str, int], pmap: P.PageMap | None = None,
                 size: int | None = None, *,
                 rec: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.tag = tag
        self.size = size  # an object's size: its last page may be partial
        self._map = pmap
        self._rec = rec

    @property
    def map(self) -> P.PageMap:
        if self._map is None:
            assert self._rec is not None
            try:
                self._map = P.PageMap.decode(self._rec["runs"], self._rec["sources"])
                if len(self._map) != self._rec["pages"]:
                    raise ValueError(f"{len(self._map)} pages, not {self._rec['pages']}")
            except (KeyError, TypeError, ValueError) as err:
                raise ImageCorrupt(f"page map of {self.tag[0]} {self.tag[1]} is corrupt:"
                                   f" {err}") from err  # fmt: skip
        return self._map

    def keys(self) -> list[int]:
        """The sources it refers to (zeros aside), in order."""
        if self._rec is not None:
            return sorted(P.key(int(v), int(f)) for v, f in self._rec["sources"])
        return [int(k) for k in np.unique(self.map.src) if k != P.ZERO]

    def changed(self) -> None:
        """Its map was changed in place: what was read from disk no longer holds."""
        self.map  # noqa: B018 (decoded first)
        self._rec = None

    def pages(self) -> int:
        return int(self._rec["pages"]) if self._rec is not None else len(self.map)

    def nbytes(self) -> int:
        """Bytes its map takes in memory (decoded, or as read)."""
        if self._map is not None:
            return int(self._map.page.nbytes + self._map.src.nbytes + self._map.off.nbytes)
        return len(self._rec["runs"]) if self._rec is not None else 0

    def record(self) -> dict[str, Any]:
        runs, table = self.map.encode()
        rec: dict[str, Any] = {self.tag[0]: self.tag[1], "sources": table, "runs": runs,
                               "pages": len(self.map),
                               "zero": int((self.map.src == P.ZERO).sum())}  # fmt: skip
        if self.size is not None:
            rec["size"] = self.size
        return rec


@dataclass
class VersionMeta:
    """pmap.img of a version: what it is, its page maps and its page files."""

    path: str
    version: int
    info: dict[str, Any]
    units: list[Unit] = field(default_factory=list)
    files: dict[int, FileMeta] = field(default_factory=dict)
    records: list[fmt.Record] = field(default_factory=list)  # as read (its SEAL: trust)

    @property
    def retired(self) -> bool:
        return bool(self.info.get("retired"))

    def source_keys(self) -> set[int]:
        """Every source key the units refer to."""
        out: set[int] = set()
        for u in self.units:
            out.update(u.keys())
        return out

    def unit(self, tag: tuple[str, int]) -> Unit | None:
        return next((u for u in self.units if u.tag == tag), None)

    @classmethod
    def load(cls, vdir: str, *, digest: bool = True) -> VersionMeta:
        """pmap.img of ``vdir``; without ``digest`` its seal's digest is not computed
        (every record's checksum still is): for gc and the next checkpoint, which do not
        verify seals (a BLAKE2b pass over the file, 10 ms a round for a 64 MiB job)."""
        path = os.path.join(vdir, "pmap.img")
        name = os.path.basename(vdir)
        try:
            if digest:
                recs = fmt.read_file(path, PMAP_MAGIC)
            else:
                with open(path, "rb") as f:
                    recs = list(fmt.read_records(f, PMAP_MAGIC, path))
        except FileNotFoundError as err:
            raise ImageCorrupt(f"store version {vdir} is corrupt: pmap.img is missing",
                               path=path) from err  # fmt: skip
        except ImageMissing as err:
            raise ImageCorrupt(f"store version {vdir} is corrupt: pmap.img is missing",
                               path=path) from err  # fmt: skip
        if not recs or recs[0].kind != VERS:
            raise ImageCorrupt(f"store version {vdir} is corrupt: no VERS record", path=path)
        info = recs[0].payload
        try:
            version = int(info["version"])
            if name != f"v{version}":
                raise ValueError(f"it says version {version}")
            meta = cls(vdir, version, info, records=recs)
            declared = {int(f[0]): (str(f[1]), int(f[2])) for f in info["files"]}
            for rec in recs[1:]:
                p = rec.payload
                if rec.kind == PMAP:
                    tag = ("pid", int(p["pid"])) if "pid" in p else ("obj", int(p["obj"]))
                    if not isinstance(p["runs"], bytes) or not isinstance(p["sources"], list):
                        raise ValueError(f"bad page map of {tag}")
                    meta.units.append(Unit(tag, None, p.get("size"), rec=p))
                elif rec.kind == PHSH:
                    fid = int(p["file"])
                    fname, npages = declared[fid]
                    hashes = P.hashes_from(p["hashes"])
                    lay = np.frombuffer(p["layout"], dtype=P.LAYOUT)
                    layout = P.ramp(lay["page"], lay["count"])
                    chunks = np.frombuffer(p["chunks"], dtype="<u8")
                    if len(hashes) != npages or len(layout) != npages \
                            or len(chunks) != -(-npages // P.CHUNK):  # fmt: skip
                        raise ValueError(f"file {fname} has {npages} pages but {len(hashes)}"
                                         f" hashes, {len(layout)} places and {len(chunks)}"
                                         " chunk checksums")  # fmt: skip
                    meta.files[fid] = FileMeta(fid, fname, npages, hashes, layout, chunks)
            if set(meta.files) != set(declared):
                raise ValueError("hashes of a page file are missing")
        except (KeyError, TypeError, ValueError) as err:
            raise ImageCorrupt(f"store version {vdir} is corrupt: pmap.img: {err}",
                               path=path) from err  # fmt: skip
        return meta

    @staticmethod
    def head(vdir: str) -> dict[str, Any]:
        """The VERS record of ``vdir`` alone (checked), without reading the rest: what gc
        needs of a version it keeps neither reads (its files: ``info["files"]``)."""
        path = os.path.join(vdir, "pmap.img")
        try:
            with open(path, "rb") as f:
                first = next(fmt.read_records(f, PMAP_MAGIC, path), None)
        except FileNotFoundError as err:
            raise ImageCorrupt(f"store version {vdir} is corrupt: pmap.img is missing",
                               path=path) from err  # fmt: skip
        info = first.payload if first is not None and first.kind == VERS else None
        try:
            if not isinstance(info, dict) or f"v{int(info['version'])}" != os.path.basename(vdir):
                raise ValueError("no VERS record of this version")
            for f in info["files"]:
                int(f[0]), str(f[1]), int(f[2])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ImageCorrupt(f"store version {vdir} is corrupt: pmap.img: {err}",
                               path=path) from err  # fmt: skip
        return info

    def write(self, *, atomic: bool = True) -> None:
        """(Re)write pmap.img: atomically, or (into a version not published yet) in
        place, fsync'd."""
        self.info["files"] = [[f.id, f.name, f.pages] for f in sorted(self.files.values(),
                                                                      key=lambda f: f.id)]
        path = os.path.join(self.path, "pmap.img")
        with fmt.atomic_file(path) if atomic else fmt.open_private(path) as f:
            w = fmt.RecordWriter(f, PMAP_MAGIC, seal=seal.sealer())
            w.write(VERS, self.info)
            for u in self.units:
                w.write(PMAP, u.record())
            for fm in sorted(self.files.values(), key=lambda f: f.id):
                w.write(PHSH, fm.record())
            w.close()
            if not atomic:
                os.fsync(f.fileno())


class Sources:
    """The page files of an application's versions, loaded when first needed."""

    def __init__(self, app: App, metas: dict[int, VersionMeta] | None = None, *,
                 digest: bool = True) -> None:  # fmt: skip
        self.app = app
        self.metas: dict[int, VersionMeta] = dict(metas or {})
        self._digest = digest  # (seals verified from these metas need it)

    def meta(self, version: int) -> VersionMeta:
        if version not in self.metas:
            if not os.path.isdir(self.app.vdir(version)):
                raise ImageCorrupt(f"store application {self.app.path} is corrupt: version"
                                   f" {version} is referred to but missing",
                                   path=self.app.vdir(version))  # fmt: skip
            self.metas[version] = self.app.meta(version, digest=self._digest)
        return self.metas[version]

    def file(self, k: int) -> FileMeta:
        v, fid = P.version_of(k), P.file_of(k)
        fm = self.meta(v).files.get(fid)
        if fm is None:
            raise ImageCorrupt(f"store application {self.app.path} is corrupt: version {v}"
                               f" has no {P.file_name(fid)}", path=self.app.vdir(v))  # fmt: skip
        return fm

    def path(self, k: int) -> str:
        return os.path.join(self.app.vdir(P.version_of(k)), self.file(k).name)

    def check(self, unit: Unit, what: str) -> None:
        """Every page of ``unit`` points into a file that has it."""
        keys = np.asarray(unit.keys(), dtype=np.int64)
        limits = np.array([self.file(int(k)).pages for k in keys], dtype=np.int64)
        pm = unit.map
        nz = pm.src != P.ZERO
        src = pm.src[nz]
        kidx = np.minimum(np.searchsorted(keys, src), max(len(keys) - 1, 0))
        if len(src) and ((keys[kidx] != src) | (pm.off[nz] >= limits[kidx])).any():
            raise ImageCorrupt(f"{what} is corrupt: a page map points past the end of a page"
                               " file", path=self.app.path)  # fmt: skip

    def hashes(self, unit: Unit) -> HashTable:
        """Where to find the hash of any page of ``unit``: the files that hold them."""
        keys = np.asarray(unit.keys(), dtype=np.int64)
        tables = [self.file(int(k)).hashes for k in keys]
        base = np.concatenate([[0], np.cumsum([len(t) for t in tables])]).astype(np.int64)
        zero = P.zero_hash(self.app.store.seed).reshape(1, 2)
        return HashTable(unit.map, keys, base, np.concatenate([*tables, zero]))


@dataclass
class HashTable:
    """The hashes of the pages of a map, gathered from its files when asked for."""

    map: P.PageMap
    keys: P.I64
    base: P.I64  # first row of each key's hashes in ``table``
    table: P.U64  # every hash of every file the map refers to, then the zero page's

    def at(self, idx: P.I64) -> P.U64:
        """The hashes of pages ``idx`` (indices in the map)."""
        src, off = self.map.src[idx], self.map.off[idx]
        kidx = np.minimum(np.searchsorted(self.keys, src), max(len(self.keys) - 1, 0))
        return np.asarray(self.table[np.where(src == P.ZERO, self.base[-1],
                                              self.base[kidx] + off)])  # fmt: skip


def du(path: str) -> int:
    """Bytes a directory's files take on disk."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(path):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(path, n))
                total += st.st_blocks * 512
    return total


def remove_version(app: App, version: int) -> None:
    """Make version ``version`` disappear at once (rename), then delete its files."""
    gone = os.path.join(app.path, f".v{version}.del.{os.getpid()}")
    os.rename(app.vdir(version), gone)
    fmt.fsync_dir(app.path)
    shutil.rmtree(gone, ignore_errors=True)
