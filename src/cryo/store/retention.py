"""Deleting versions without breaking the ones kept (``cryo store gc``).

Kept versions are the last ``keep_last`` and, with ``keep_every`` K, every version whose
number is a multiple of K (stable: the same versions stay kept run after run).  For each
page file of a version that goes, what the kept versions still read from it decides:

- nothing: the file goes;
- at least half of its pages, and more than ``SMALL`` (16 MiB): the file stays where it
  is, and its version is *retired* (no longer listed or restartable, its records gone;
  its pages stay for later versions);
- otherwise: those pages are copied ("merged") into a new file of the oldest kept
  version that reads them (``pages-K.img``), and every kept version that read them is
  pointed there; then the file goes.  Copied pages are checked against their hashes.

So the store never holds more than about twice the bytes its kept versions need.

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

import numpy as np

from cryo.errors import CryoError, ImageCorrupt
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.sink import PAGES_HEADER
from cryo.store import pages as P
from cryo.store.layout import App, FileMeta, Sources, Store, VersionMeta, du, remove_version

log = logging.getLogger(__name__)
COPY = 4096  # pages per read while merging
SMALL = 4096  # pages: fewer live pages than this are copied rather than kept in place
_MERGED = re.compile(r"pages-[0-9]+\.img")


@dataclass
class GcReport:
    app: str
    kept: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)  # files stay for later versions
    merged: list[tuple[int, int, int]] = field(default_factory=list)  # (from, into, pages)
    freed: int = 0  # bytes


def kept_versions(published: list[int], keep_last: int, keep_every: int | None) -> list[int]:
    if keep_last < 1:
        raise CryoError("gc must keep at least the last version (--keep-last 1 or more)")
    if keep_every is not None and keep_every < 1:
        raise CryoError("--keep-every takes a positive number")
    kept = set(published[-keep_last:])
    if keep_every:
        kept |= {v for v in published if v % keep_every == 0}
    return sorted(kept)


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
    before = sum(du(app.vdir(v)) for v in app.versions())
    sources = Sources(app)
    versions = app.versions()
    metas = {v: sources.meta(v) for v in versions}
    if not dry_run:
        _sweep_files(app, metas)
    published = [v for v in versions if app.is_published(v) and not metas[v].retired]
    report = GcReport(app.name, kept=kept_versions(published, keep_last, keep_every))
    drop = [v for v in versions if v not in report.kept]
    if not drop:
        return report
    gone = set(drop)
    # which pages of the files of versions that go do kept versions still read
    live: dict[int, P.BOOL] = {}
    first_user: dict[int, int] = {}
    for v in report.kept:
        for u in metas[v].units:
            sources.check(u, f"store version {app.vdir(v)}")
            for k in np.unique(u.map.src).tolist():
                if k == P.ZERO or P.version_of(k) not in gone:
                    continue
                mask = live.setdefault(k, np.zeros(sources.file(k).pages, dtype=bool))
                mask[u.map.off[u.map.src == k]] = True
                first_user.setdefault(k, v)
    keep_files: dict[int, list[int]] = {}
    merges: dict[int, list[int]] = {}  # into version -> file keys
    for d in drop:
        keep_files[d] = []
        for fid, fm in metas[d].files.items():
            k = P.key(d, fid)
            n = int(live[k].sum()) if k in live else 0
            if n == 0:
                continue
            if 2 * n >= fm.pages and n > SMALL:
                keep_files[d].append(fid)
            else:
                merges.setdefault(first_user[k], []).append(k)
                report.merged.append((d, first_user[k], n))
    for d in drop:
        (report.retired if keep_files[d] else report.deleted).append(d)
    if dry_run:
        return report
    remap: dict[int, tuple[int, P.I64]] = {}  # old key -> (new key, new offset per old page)
    added: dict[int, FileMeta] = {}
    for into, keys in sorted(merges.items()):
        fm = _merge(app, sources, metas, report.kept, into, sorted(keys), live, remap)
        added[into] = fm
    for v in report.kept:  # oldest first: a merged file is described before it is used
        meta = metas[v]
        changed = v in added
        if v in added:
            meta.files[added[v].id] = added[v]
        for u in meta.units:
            for k in np.unique(u.map.src).tolist():
                if k in remap:
                    new_key, where = remap[k]
                    sel = u.map.src == k
                    u.map.off[sel] = where[u.map.off[sel]]
                    u.map.src[sel] = new_key
                    u.changed()
                    changed = True
        if changed:
            meta.write()
    for d in sorted(drop, reverse=True):  # newest first: nothing left refers to it
        if not keep_files[d]:
            remove_version(app, d)
            continue
        _retire(app, metas[d], keep_files[d])
    report.freed = before - sum(du(app.vdir(v)) for v in app.versions())
    return report


def _merge(app: App, sources: Sources, metas: dict[int, VersionMeta], kept: list[int],
           into: int, keys: list[int], live: dict[int, P.BOOL],
           remap: dict[int, tuple[int, P.I64]]) -> FileMeta:  # fmt: skip
    """Copy the live pages of files ``keys`` into a new page file of version ``into``,
    in the order of the addresses kept versions have them at."""
    fid = max(metas[into].files, default=0) + 1
    new_key = P.key(into, fid)
    src_key, src_off, nat = [], [], []
    for k in keys:
        offs = np.flatnonzero(live[k])
        where = np.full(len(live[k]), -1, dtype=np.int64)
        for v in kept:  # the first address a kept version has each page at
            for u in metas[v].units:
                sel = u.map.src == k
                o, pg = u.map.off[sel], u.map.page[sel]
                unset = where[o] == -1
                where[o[unset]] = pg[unset]
        src_key.append(np.full(len(offs), k, dtype=np.int64))
        src_off.append(offs)
        nat.append(where[offs])
    keys_a, offs_a, nat_a = (np.concatenate(x) for x in (src_key, src_off, nat))
    order = np.argsort(nat_a, kind="stable")
    keys_a, offs_a, nat_a = keys_a[order], offs_a[order], nat_a[order]
    for k in keys:
        table = np.full(len(live[k]), -1, dtype=np.int64)
        sel = keys_a == k
        table[offs_a[sel]] = np.flatnonzero(sel)
        remap[k] = (new_key, table)
    hashes = np.zeros((len(keys_a), 2), dtype="<u8")
    chunks = P.ChunkSums(app.store.seed)
    path = os.path.join(app.vdir(into), P.file_name(fid))
    fds = {k: os.open(sources.path(k), os.O_RDONLY | os.O_CLOEXEC) for k in keys}
    try:
        with fmt.atomic_file(path) as out:
            out.write(PAGES_HEADER.pack(R.PAGES_MAGIC, fmt.FORMAT_VERSION).ljust(P.PAGE, b"\0"))
            at = P.breaks(offs_a, same=(keys_a,))
            ends = np.append(at[1:], len(keys_a))
            for s, e in zip(at.tolist(), ends.tolist(), strict=True):
                k = int(keys_a[s])
                for i in range(s, e, COPY):
                    n = min(COPY, e - i)
                    first = int(offs_a[i])
                    data = os.pread(fds[k], n * P.PAGE, P.data_offset(first))
                    want = sources.file(k).hashes[first : first + n]
                    if len(data) != n * P.PAGE or not P.same_rows(
                            P.page_hashes(data, app.store.seed), want).all():  # fmt: skip
                        raise ImageCorrupt(f"{sources.path(k)} is corrupt: a page gc would"
                                           " keep does not match its checksum",
                                           path=sources.path(k))  # fmt: skip
                    out.write(data)
                    chunks.add(data)
                    hashes[i : i + n] = want
    finally:
        for fd in fds.values():
            os.close(fd)
    log.info("merged %d pages into %s", len(keys_a), path)
    return FileMeta(fid, P.file_name(fid), len(keys_a), hashes, nat_a, chunks.finish())


def _sweep_files(app: App, metas: dict[int, VersionMeta]) -> None:
    """Remove page files a killed gc wrote but did not get to describe, and its
    temporary files."""
    for v, meta in metas.items():
        names = {f.name for f in meta.files.values()}
        for name in os.listdir(app.vdir(v)):
            head, _, pid = name.rpartition(".tmp.")  # (the lock is ours: all are stale)
            stale_tmp = head and pid.isdigit() and int(pid) != os.getpid()
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
