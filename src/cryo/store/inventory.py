"""What a store holds (``cryo store ls``) and whether all of it is intact
(``cryo store verify``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryo.errors import CryoError, ImageError
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image import seal
from cryo.store import pages as P
from cryo.store.layout import App, Sources, Store, du
from cryo.store.source import VERIFY_CHUNKS, Job, check_chunks, check_page_file


def describe(store: str) -> list[dict[str, Any]]:
    """Every application with its versions: number, date, memory (the bytes of page data
    a full image would hold), stored bytes, the versions it reads pages from."""
    st = Store(store)
    out = []
    for name in st.apps():
        app = st.app(name)
        versions: list[dict[str, Any]] = []
        for v in app.versions():
            try:
                meta = app.meta(v)
            except ImageError as err:
                versions.append({"version": v, "error": str(err), "stored": du(app.vdir(v))})
                continue
            info = meta.info
            versions.append({
                "version": v,
                "retired": meta.retired or not app.is_published(v),
                "created": info.get("created"),
                "memory": info.get("memory", 0),
                "new": info.get("new", 0),
                "stored": du(app.vdir(v)),
                "needs": sorted({P.version_of(k) for k in meta.source_keys()} - {v}),
                "units": [f"{u.tag[0]} {u.tag[1]}" for u in meta.units],
            })  # fmt: skip
        out.append({"app": name, "versions": versions,
                    "stored": sum(x["stored"] for x in versions)})  # fmt: skip
    return out


@dataclass
class Problem:
    app: str
    version: int | None
    what: str


@dataclass
class VerifyReport:
    apps: int = 0
    versions: int = 0
    files: int = 0
    pages: int = 0
    problems: list[Problem] = field(default_factory=list)


def verify(store: str, app: str | None = None, threads: int = 2) -> VerifyReport:
    """Check every checksum of the store: every record of every file, every stored page
    against its hash, every page map against the files it points into."""
    st = Store(store)
    report = VerifyReport()
    for name in [app] if app else st.apps():
        a = st.app(name)
        report.apps += 1
        with a.lock(exclusive=False):
            _verify_app(a, report, threads)
    return report


def _verify_app(app: App, report: VerifyReport, threads: int) -> None:
    sources = Sources(app)
    key = seal.load_key()  # (None: a user who may not read it; seals are not checked)
    jobs: list[Job] = []
    fds: list[int] = []
    paths: dict[int, str] = {}
    try:
        for v in app.versions():
            report.versions += 1
            try:
                meta = sources.meta(v)
            except ImageError as err:
                report.problems.append(Problem(app.name, v, str(err)))
                continue
            sealed = [(os.path.join(app.vdir(v), "pmap.img"), meta.records)]
            if app.is_published(v):
                try:
                    core = fmt.read_file(os.path.join(app.vdir(v), "core.img"), R.CORE_MAGIC)
                    sealed.append((os.path.join(app.vdir(v), "core.img"), core))
                    _check_side_files(app.vdir(v), core)
                except (ImageError, CryoError) as err:
                    report.problems.append(Problem(app.name, v, str(err)))
            for path, recs in sealed if key is not None else []:
                if (why := seal.problem(recs, key, path)) is not None:
                    report.problems.append(Problem(app.name, v, why))
            for u in meta.units:
                try:
                    sources.check(u, f"version {v} ({u.tag[0]} {u.tag[1]})")
                except ImageError as err:
                    report.problems.append(Problem(app.name, v, str(err)))
            for fm in meta.files.values():
                path = os.path.join(app.vdir(v), fm.name)
                k = P.key(v, fm.id)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    report.problems.append(Problem(app.name, v, f"{path} is missing"))
                    continue
                fds.append(fd)
                try:
                    check_page_file(fd, path, fm.pages)
                except ImageError as err:
                    report.problems.append(Problem(app.name, v, str(err)))
                    continue
                report.files += 1
                report.pages += fm.pages
                paths[k] = path
                nchunks = len(fm.chunks)
                jobs += [(fd, fm, k, c, min(VERIFY_CHUNKS, nchunks - c))
                         for c in range(0, nchunks, VERIFY_CHUNKS)]  # fmt: skip
        for k, where in check_chunks(jobs, app.store.seed, threads, pages=True):
            report.problems.append(Problem(app.name, P.version_of(k), f"{where} of"
                                           f" {paths[k]}: checksum mismatch"))  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    report.problems.sort(key=lambda p: (p.app, p.version or 0))


def _check_side_files(vdir: str, core: list[fmt.Record]) -> None:
    """System V segments saved beside the records (their own checksums)."""
    shmids = {v["shmid"] for rec in core if rec.kind == R.MM
              for v in rec.payload.get("vmas", []) if v.get("kind") == "sysv-shm"}  # fmt: skip
    if shmids:
        from cryo.engine.sysvshm import side_file
        from cryo.ipc import shm

        for shmid in sorted(shmids):
            shm.read(Path(vdir) / side_file(shmid))
