"""VersionSink.select (the pages a tracked checkpoint copies) against its definition:
the present pages written since the previous version, and the present pages that version
lacks, in address order; whatever the runs look like (made-up processes, no privileges)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from cryo.image import records as R
from cryo.store import pages as P
from cryo.store.layout import App, Store
from cryo.store.sink import VersionSink, load_previous

pytestmark = pytest.mark.timeout(120)
PID = 4343


def runs_of(pages: list[int]) -> list[list[int]]:
    return P.page_runs(np.asarray(sorted(set(pages)), dtype=np.int64)) if pages else []


def pages_of(runs: list[list[int]]) -> list[int]:
    return [p for a, n in runs for p in range(a >> P.SHIFT, (a + n) >> P.SHIFT)]


@pytest.fixture
def app(tmp_path: Path) -> App:
    return Store(str(tmp_path / "store"), create=True).app("demo", create=True)


def first_version(app: App, pages: list[int]) -> None:
    """Version 1 of process PID: ``pages`` (each its own bytes)."""
    sink = VersionSink(app, 1, None, direct=False)
    sink.record(R.HEAD, {"arch": platform.machine(), "root_pid": PID, "pids": [PID]})
    sink.record(R.MM, {"pid": PID, "vmas": []})
    runs = runs_of(pages)
    data = bytearray(b"".join(p.to_bytes(8, "little") * (P.PAGE // 8)
                              for p in pages_of(runs)))  # fmt: skip
    meta = sink.write_block(memoryview(data), runs, None)
    sink.record(R.PBLK, {**meta, "pid": PID})
    sink.commit()


@pytest.mark.parametrize("seed", range(12))
def test_select_is_written_and_new_present_pages(app: App, seed: int) -> None:
    rng = np.random.default_rng(seed)
    space = 3000  # pages
    before = sorted(set(rng.choice(space, int(rng.integers(1, 1500)), replace=False).tolist()))
    first_version(app, before)
    sink = VersionSink(app, 2, load_previous(app, 1), parent=1, direct=False)
    try:
        now = set(rng.choice(space, int(rng.integers(0, 2000)), replace=False).tolist())
        present = runs_of(sorted(now))
        if seed % 3 == 1:  # runs split in two (pages of two mappings side by side)
            present = [piece for a, n in present for piece in (
                [[a, P.PAGE], [a + P.PAGE, n - P.PAGE]] if n > P.PAGE else [[a, n]])]
        if seed % 4 == 2:  # out of address order (the engine gives them in order; the
            present = present[::-1]  # sink must not depend on it)
        # written: mostly present pages, some gone since (written, then dropped)
        wrote = set(rng.choice(space, int(rng.integers(0, 400)), replace=False).tolist())
        written = runs_of(sorted(wrote))
        need = sink.select(("pid", PID), present, written)
        want = sorted((now & wrote) | (now - set(before)))
        assert pages_of(need) == want  # in order, each once
        assert need == runs_of(want)  # whole runs
        assert sink.select(("pid", PID), present, None) == present  # not tracked
        assert sink.select(("pid", PID + 1), present, written) == present  # no previous
    finally:
        sink.abort()


def test_select_with_nothing_present_or_written(app: App) -> None:
    first_version(app, [5, 6, 7])
    sink = VersionSink(app, 2, load_previous(app, 1), parent=1, direct=False)
    try:
        tag = ("pid", PID)
        assert sink.select(tag, [], [[5 << P.SHIFT, P.PAGE]]) == []
        assert sink.select(tag, [[5 << P.SHIFT, 3 * P.PAGE]], []) == []
        assert sink.select(tag, [[4 << P.SHIFT, 4 * P.PAGE]], []) == [[4 << P.SHIFT, P.PAGE]]
        assert sink.select(tag, [[5 << P.SHIFT, 3 * P.PAGE]],
                           [[7 << P.SHIFT, 2 * P.PAGE]]) == [[7 << P.SHIFT, P.PAGE]]
    finally:
        sink.abort()
