"""Deleting versions without breaking the ones kept (``cryo store gc``).

Kept versions are the last ``keep_last`` and, with ``keep_every`` K, every version whose
number is a multiple of K (stable: the same versions stay kept run after run).  A
version that goes is removed with every page file the kept versions no longer read;
one whose files kept versions still read is *retired* (no longer listed or
restartable, its records gone, those files left in place), and a retired version's
files go as soon as no kept version reads them.  That is all gc does in the common case:
it reads the page maps of the kept versions and the first record of the others, never a
page, and writes only the page map of a version it retires.

Files left in place hold dead pages (pages no kept version reads).  A file is
*merged* when few of its pages live: its live pages are copied into a new file of the
oldest kept version that reads them (``pages-K.img``, each page checked against its
hash), every kept version that read them is pointed there, and the file goes.  That
happens to a retired file once at most 1/``SPARSE`` of it lives (so that a job that
rewrites nearly all of its pages does not leave a file per version behind for the few
it did not), and, when the dead pages of the whole application exceed its live ones
(and ``SLACK``, 16 MiB), to the retired files with the smallest share of live pages (at
most half), until the dead pages are at most half the live ones.  So the store holds at
most about twice the pages its kept versions read (plus ``SLACK``), and each page copied
frees at least one (seven, for a sparse file): the copying is paid for by pages that
died, not done again at every gc (it was: the live pages of every small file that went,
so a page was copied again each time the version holding it went, 30-85 ms of CPU a gc
for a 64 MiB job).

Every step leaves every version consistent, in this order: merged files written
(atomically: temporary file, fsync, rename), the kept versions' page maps rewritten
(atomically, oldest first, so a new file is described before it is referred to), then
the versions that go are removed or retired newest first (a version only refers to older
ones, so nothing left refers to what is removed).  gc killed at any moment leaves every
kept version restorable; run it again to finish.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryo.errors import ImageCorrupt
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.sink import PAGES_HEADER
from cryo.store import kept_versions
from cryo.store import pages as P
from cryo.store.layout import App, FileMeta, Sources, Store, VersionMeta, du, remove_version

log = logging.getLogger(__name__)
COPY = 4096  # pages per read while merging (16 MiB)
GAP = 16  # dead pages between two live ones that a merge reads through, not around
SLACK = 4096  # pages (16 MiB): dead pages an application may hold before gc compacts it
SPARSE = 8  # a retired file of which a kept version reads at most 1/SPARSE is copied
_MERGED = re.compile(r"pages-[0-9]+\.img")


@dataclass
class GcReport:
    app: str
    kept: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)  # version directories removed
    retired: list[int] = field(default_factory=list)  # versions retired by this gc
    merged: list[tuple[int, int, int]] = field(default_factory=list)  # (from, into, pages)
    freed: int = 0  # bytes
    live: int = 0  # pages the kept versions read
    stored: int = 0  # pages in the application's files (after this gc)


def gc(store: str, keep_last: int, keep_every: int | None = None, *, app: str | None = None,
       dry_run: bool = False) -> list[GcReport]:  # fmt: skip
    """Delete the versions the policy does not keep, in every application of ``store``
    (or only ``app``)."""
    kept_versions([], keep_last, keep_every)  # check the policy before anything
    st = Store(store)
    out = []
    for name in [app] if app else st.apps():
        a = st.app(name)
        with a.lock(exclusive=True):
            if not dry_run:
                a.sweep()
            out.append(_gc_app(a, keep_last, keep_every, dry_run))
    return out


def _gc_app(app: App, keep_last: int, keep_every: int | None, dry_run: bool) -> GcReport:
    versions = app.versions()
    published = [v for v in versions if app.is_published(v)]
    # the kept versions' maps are read whole; of the others only their first record
    # (what files they have), until one of them must be rewritten
    sources = Sources(app, digest=False)
    report = GcReport(app.name)
    pub = [v for v in published if not sources.meta(v).retired]
    report.kept = kept_versions(pub, keep_last, keep_every)
    kept = set(report.kept)
    info: dict[int, dict[str, Any]] = {}
    for v in versions:
        info[v] = sources.meta(v).info if v in kept else VersionMeta.head(app.vdir(v))
    pages = {P.key(v, int(f[0])): int(f[2]) for v in versions for f in info[v]["files"]}
    if not dry_run:
        _sweep_files(app, info)
    drop = [v for v in versions if v not in kept]
    # which pages of every file the kept versions read, and the oldest that reads each
    live: dict[int, P.BOOL] = {}
    first_user: dict[int, int] = {}
    for v in report.kept:
        for u in sources.meta(v).units:
            pm, refs = u.map, u.keys()
            for k in refs:
                if k not in pages:
                    raise ImageCorrupt(f"store version {app.vdir(v)} is corrupt: it reads"
                                       f" a page file that version {P.version_of(k)} does"
                                       " not have", path=app.vdir(v))  # fmt: skip
                off = pm.off[pm.src == k]
                if len(off) and int(off.max()) >= pages[k]:
                    raise ImageCorrupt(f"store version {app.vdir(v)} is corrupt: a page map"
                                       " points past the end of a page file",
                                       path=app.vdir(v))  # fmt: skip
                live.setdefault(k, np.zeros(pages[k], dtype=bool))[off] = True
                first_user.setdefault(k, v)
    count = {k: int(m.sum()) for k, m in live.items()}
    report.live = sum(count.values())
    stored = sum(pages.values())
    gone_keys = {P.key(d, int(f[0])) for d in drop for f in info[d]["files"]
                 if not count.get(P.key(d, int(f[0])))}  # fmt: skip
    dead = stored - report.live - sum(pages[k] for k in gone_keys)
    # compaction: only under pressure, the emptiest files first, each at most half live
    cands = sorted((count[k] / pages[k], k) for d in drop for k in
                   (P.key(d, int(f[0])) for f in info[d]["files"])
                   if count.get(k) and 2 * count[k] <= pages[k])  # fmt: skip
    copy: list[int] = []
    for share, k in cands:
        if share > 1 / SPARSE and dead <= (report.live // 2 if copy else max(report.live,
                                                                               SLACK)):
            break
        copy.append(k)
        dead -= pages[k] - count[k]
    for k in copy:
        report.merged.append((P.version_of(k), first_user[k], count[k]))
    stays = {d: [int(f[0]) for f in info[d]["files"]
                 if count.get(P.key(d, int(f[0]))) and P.key(d, int(f[0])) not in copy]
             for d in drop}  # fmt: skip
    for d in drop:
        if not stays[d]:
            report.deleted.append(d)
        elif d in published:
            report.retired.append(d)
    report.stored = stored - sum(pages[k] for k in gone_keys) - sum(pages[k] for k in copy) \
        + sum(count[k] for k in copy)  # fmt: skip
    if dry_run or not drop:
        return report
    touched = [d for d in drop if d in report.deleted or d in report.retired
               or stays[d] != [int(f[0]) for f in info[d]["files"]]
               or not info[d].get("retired")]  # fmt: skip
    merges: dict[int, list[int]] = {}  # into version -> file keys
    for k in copy:
        merges.setdefault(first_user[k], []).append(k)
    before = sum(du(app.vdir(v)) for v in {*touched, *merges})
    remap: dict[int, tuple[int, P.I64]] = {}  # old key -> (new key, new offset per old page)
    added: dict[int, FileMeta] = {}
    for into, keys in sorted(merges.items()):
        added[into] = _merge(app, sources, into, sorted(keys), live, remap, report.kept)
    for v in report.kept:  # oldest first: a merged file is described before it is used
        meta = sources.meta(v)
        changed = v in added
        if v in added:
            meta.files[added[v].id] = added[v]
        for u in meta.units:
            refs = u.keys()
            for k in refs:
                if k in remap:
                    new_key, where = remap[k]
                    sel = u.map.src == k
                    u.map.off[sel] = where[u.map.off[sel]]
                    u.map.src[sel] = new_key
                    u.changed()
                    changed = True
        if changed:
            meta.write()
    for d in sorted(touched, reverse=True):  # newest first: nothing left refers to it
        if not stays[d]:
            remove_version(app, d)
        else:
            _retire(app, sources.meta(d), stays[d])
    report.freed = before - sum(du(app.vdir(v)) for v in {*touched, *merges})
    return report


def _merge(app: App, sources: Sources, into: int, keys: list[int], live: dict[int, P.BOOL],
           remap: dict[int, tuple[int, P.I64]], kept: list[int]) -> FileMeta:  # fmt: skip
    """Copy the live pages of files ``keys`` into a new page file of version ``into``, in
    file order (each file read in large reads), checked against their hashes."""
    meta = sources.meta(into)
    fid = max(meta.files, default=0) + 1
    new_key = P.key(into, fid)
    where = {k: np.full(len(live[k]), -1, dtype=np.int64) for k in keys}
    for v in kept:  # the first address a kept version has each page at: its natural one
        for u in sources.meta(v).units:
            for k in set(u.keys()) & set(keys):
                sel = u.map.src == k
                o, pg = u.map.off[sel], u.map.page[sel]
                unset = where[k][o] == -1
                where[k][o[unset]] = pg[unset]
    hashes, layout = [], []
    chunks = P.ChunkSums(app.store.seed)
    path = os.path.join(app.vdir(into), P.file_name(fid))
    at = 0
    with fmt.atomic_file(path) as out:
        out.write(PAGES_HEADER.pack(R.PAGES_MAGIC, fmt.FORMAT_VERSION).ljust(P.PAGE, b"\0"))
        for k in keys:
            offs = np.flatnonzero(live[k])
            table = np.full(len(live[k]), -1, dtype=np.int64)
            table[offs] = at + np.arange(len(offs))
            remap[k] = (new_key, table)
            fm = sources.file(k)
            fd = os.open(sources.path(k), os.O_RDONLY | os.O_CLOEXEC)
            try:
                for first, last in _spans(offs):
                    data = os.pread(fd, (last - first) * P.PAGE, P.data_offset(first))
                    want = offs[(offs >= first) & (offs < last)]
                    rel = want - first
                    if len(data) != (last - first) * P.PAGE:
                        raise ImageCorrupt(f"{sources.path(k)} is corrupt: it is shorter"
                                           " than its pages", path=sources.path(k))  # fmt: skip
                    pages = np.frombuffer(data, dtype=np.uint8).reshape(-1, P.PAGE)[rel]
                    buf = pages.tobytes()
                    if not P.same_rows(P.page_hashes(buf, app.store.seed),
                                       fm.hashes[want]).all():  # fmt: skip
                        raise ImageCorrupt(f"{sources.path(k)} is corrupt: a page gc would"
                                           " keep does not match its checksum",
                                           path=sources.path(k))  # fmt: skip
                    out.write(buf)
                    chunks.add(buf)
                    hashes.append(fm.hashes[want])
                    layout.append(where[k][want])
            finally:
                os.close(fd)
            at += len(offs)
    log.info("merged %d pages into %s", at, path)
    return FileMeta(fid, P.file_name(fid), at, np.concatenate(hashes), np.concatenate(layout),
                    chunks.finish())


def _spans(offs: P.I64) -> list[tuple[int, int]]:
    """[first, last) page ranges to read that cover ``offs`` (sorted): live pages less
    than GAP apart read together, at most COPY pages a read."""
    out: list[tuple[int, int]] = []
    for o in offs.tolist():
        if out and o - out[-1][1] < GAP and o + 1 - out[-1][0] <= COPY:
            out[-1] = (out[-1][0], o + 1)
        else:
            out.append((o, o + 1))
    return out


def _sweep_files(app: App, info: dict[int, dict[str, Any]]) -> None:
    """Remove page files a killed gc wrote but did not get to describe, and its
    temporary files."""
    for v, head in info.items():
        names = {str(f[1]) for f in head["files"]}
        for name in os.listdir(app.vdir(v)):
            lead, _, pid = name.rpartition(".tmp.")  # (the lock is ours: all are stale)
            stale_tmp = lead and pid.isdigit() and int(pid) != os.getpid()
            if stale_tmp or (_MERGED.fullmatch(name) and name not in names):
                os.unlink(os.path.join(app.vdir(v), name))


def _retire(app: App, meta: VersionMeta, files: list[int]) -> None:
    """Version ``meta`` is no longer a version; the page files ``files`` stay."""
    vdir = app.vdir(meta.version)
    core = os.path.join(vdir, "core.img")
    if os.path.exists(core):
        os.unlink(core)  # from here on it is not listed or restartable
        fmt.fsync_dir(vdir)
    meta.info["retired"] = True
    meta.units = []
    meta.files = {fid: meta.files[fid] for fid in files}
    meta.write()
    keep = {"pmap.img"} | {meta.files[fid].name for fid in files}
    for name in os.listdir(vdir):
        if name not in keep:
            os.unlink(os.path.join(vdir, name))
    fmt.fsync_dir(vdir)
