"""Image stores: versions of applications, incremental at page granularity (issue 5).

A store holds applications; each checkpoint of an application adds a version.  The
first is full; each later one stores only the pages whose bytes changed since the
previous version (the pages the engine saw written, when it tracked writes, or else
every page, hashed and compared with the previous version's hashes), and a page map per
process (seed 001's control structure) tells where every page is: in this version's file
or an older one's, or zeros.  A restart of any version
reads its pages from every file it refers to, after checking all of them.
docs/store.md has the layout, the format and the figures.

    checkpoint(pid, store, app)          -> (version, DumpResult)
    restart(store, app, version=None)    -> RestoreResult
    describe(store)                      what ``cryo store ls`` prints
    verify(store)                        every checksum of the store
    gc(store, keep_last, keep_every)     delete versions, keeping kept ones restorable
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cryo.errors import CryoError, ImageCorrupt

if TYPE_CHECKING:
    from cryo.engine.dump import DumpResult
    from cryo.engine.restore import RestoreResult
    from cryo.store.inventory import VerifyReport
    from cryo.store.retention import GcReport

log = logging.getLogger(__name__)


def checkpoint(pid: int, store: str, app: str, *, compress: bool = False,
               direct_io: bool = True, track: bool = True,
               **engine: Any) -> tuple[int, DumpResult]:  # fmt: skip
    """Add a new version of application ``app`` to ``store`` (both made if needed);
    returns (version, result).  ``engine`` goes to :func:`cryo.engine.dump.checkpoint`
    (``shell_job``, ``signal_after``, ``progress``, ...).  With ``track`` (the default)
    the engine copies only the pages written since the previous version when it tracked
    them; without, every page is read and compared by its hash (docs/store.md)."""
    from cryo.engine import dump
    from cryo.store.layout import Store, du
    from cryo.store.sink import Untracked, VersionSink, load_previous

    if compress:
        raise CryoError("--compress is not supported with --store: a store keeps pages"
                        " uncompressed, at page granularity")  # fmt: skip
    t0 = time.perf_counter()
    st = Store(store, create=True)
    a = st.app(app, create=True)
    warnings = []
    with a.lock(exclusive=True):
        a.sweep()
        parent = a.latest()
        previous = None
        if parent is not None:
            try:
                previous = load_previous(a, parent)
            except ImageCorrupt as err:
                warnings.append(f"version {parent} is damaged ({err}); this version is full")
        version = a.next_version()

        def make_sink() -> VersionSink | Untracked:  # made where the checkpoint runs
            sink = VersionSink(a, version, previous, parent=parent, direct=direct_io)
            return sink if track else Untracked(sink)

        result = dump.checkpoint(pid, make_sink, direct_io=direct_io, **engine)
        result.stored_bytes = du(a.vdir(version))  # as `cryo store ls` counts it
    result.warnings.extend(warnings)
    result.total_seconds = time.perf_counter() - t0
    log.info("%s version %d: %d bytes stored", app, version, result.stored_bytes)
    return version, result


def memory_of(store: str, app: str, version: int) -> int:
    """Bytes of page data version ``version`` of ``app`` holds, its own and those it
    reads from earlier versions (what a restart writes; `cryo store ls`'s MEMORY)."""
    from cryo.store.layout import Store

    return int(Store(store).app(app).meta(version).info.get("memory", 0))


def restart(store: str, app: str, version: int | None = None, **engine: Any) -> RestoreResult:
    """Restart version ``version`` (the latest by default) of ``app`` from ``store``.
    ``engine`` goes to :func:`cryo.engine.restore.restart`."""
    from cryo.engine import restore
    from cryo.store.layout import Store
    from cryo.store.source import VersionImage

    a = Store(store).app(app)
    lock = a.lock(exclusive=False)
    lock.__enter__()
    try:
        src = VersionImage(a, a.resolve(version), lock)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    try:
        return restore.restart(src, **engine)
    finally:
        src.close()  # (the engine closes it too once it has built the process)


def describe(store: str) -> list[dict[str, Any]]:
    from cryo.store.inventory import describe as _describe

    return _describe(store)


def verify(store: str, app: str | None = None) -> VerifyReport:
    from cryo.store.inventory import verify as _verify

    return _verify(store, app)


def kept_versions(published: list[int], keep_last: int, keep_every: int | None) -> list[int]:
    """Of the versions ``published`` (in order), those a retention keeps: the last
    ``keep_last`` and each that is a multiple of ``keep_every`` (gc; the daemon's jobs;
    the grid's global versions, cryo.grid.coordinator)."""
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
    from cryo.store.retention import gc as _gc

    return _gc(store, keep_last, keep_every, app=app, dry_run=dry_run)


__all__ = ["checkpoint", "describe", "gc", "kept_versions", "memory_of", "restart", "verify"]
