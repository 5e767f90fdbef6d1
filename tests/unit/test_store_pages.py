"""The store's page maps and restart plans, on synthetic data (no privileges)."""

from __future__ import annotations

import numpy as np
import pytest

from cryo.store import pages as P
from cryo.store.plan import plan_unit, simulate


def pm(page: list[int], src: list[int], off: list[int]) -> P.PageMap:
    a = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return P.PageMap(a(page), a(src), a(off))


def test_key_packs_version_and_file_in_order() -> None:
    assert P.key(3, 0) < P.key(3, 1) < P.key(4, 0)
    assert (P.version_of(P.key(7, 5)), P.file_of(P.key(7, 5))) == (7, 5)
    assert P.file_name(0) == "pages.img" and P.file_name(2) == "pages-2.img"
    assert P.data_offset(0) == 4096


def test_ramp_extents_breaks() -> None:
    starts = np.array([10, 20, 5], dtype=np.int64)
    counts = np.array([2, 3, 1], dtype=np.int64)
    assert P.ramp(starts, counts).tolist() == [10, 11, 20, 21, 22, 5]
    s, c = P.extents(np.array([1, 2, 3, 7, 8, 2], dtype=np.int64))
    assert s.tolist() == [1, 7, 2] and c.tolist() == [3, 2, 1]
    a = np.array([0, 1, 2, 3], dtype=np.int64)
    b = np.array([5, 5, 6, 6], dtype=np.int64)
    assert P.breaks(a, same=(b,)).tolist() == [0, 2]
    assert P.run_pages([[0x1000, 0x2000], [0x10000, 0x1000]]).tolist() == [1, 2, 16]
    assert P.page_runs(np.array([1, 2, 16], dtype=np.int64)) == [[0x1000, 0x2000],
                                                                 [0x10000, 0x1000]]


def test_map_encodes_to_few_runs_and_back() -> None:
    v1, v2 = P.key(1, 0), P.key(2, 0)
    m = pm([100, 101, 102, 103, 104, 105, 200, 201, 300],
           [v1, v1, v2, v1, P.ZERO, P.ZERO, v1, v1, v2],
           [0, 1, 0, 3, 0, 0, 4, 5, 1])
    runs, table = m.encode()
    assert table == [[1, 0], [2, 0]]
    arr = np.frombuffer(runs, dtype=P.RUN)
    assert len(runs) == len(arr) * 20
    assert arr["page"].tolist() == [100, 102, 103, 104, 200, 300]
    assert arr["count"].tolist() == [2, 1, 1, 2, 2, 1]
    back = P.PageMap.decode(runs, table)
    for col in ("page", "src", "off"):
        assert getattr(back, col).tolist() == getattr(m, col).tolist()


def test_identical_pages_stored_once_break_runs() -> None:
    k = P.key(1, 0)
    m = pm([1, 2, 3], [k, k, k], [0, 0, 0])  # one stored page for three addresses
    runs, table = m.encode()
    assert len(np.frombuffer(runs, dtype=P.RUN)) == 3
    assert P.PageMap.decode(runs, table).off.tolist() == [0, 0, 0]


def test_decode_refuses_inconsistent_maps() -> None:
    good = np.zeros(2, dtype=P.RUN)
    good["page"], good["count"], good["src"] = [1, 10], [2, 1], [0, 0]
    P.PageMap.decode(good.tobytes(), [[1, 0]])
    for field, value in (("src", 3), ("count", 0), ("page", 2)):
        bad = good.copy()
        bad[1][field] = value
        with pytest.raises(ValueError):
            P.PageMap.decode(bad.tobytes(), [[1, 0]])
    with pytest.raises(ValueError):
        P.PageMap.decode(good.tobytes()[:-1], [[1, 0]])


def test_page_hashes_are_seeded_and_find_zeros() -> None:
    data = bytearray(3 * P.PAGE)
    data[P.PAGE + 5] = 1
    h = P.page_hashes(data, 42)
    assert h.shape == (3, 2)
    z = np.broadcast_to(P.zero_hash(42), h.shape)
    assert P.same_rows(h, z).tolist() == [True, False, True]
    assert not P.same_rows(P.page_hashes(data, 43), h).any()


def test_lookup() -> None:
    m = pm([2, 5, 9], [1, 1, 1], [0, 1, 2])
    idx, here = m.lookup(np.array([5, 6, 9, 100, 0], dtype=np.int64))
    assert here.tolist() == [True, False, True, False, False]
    assert idx[here].tolist() == [1, 2]
    assert P.PageMap.empty().lookup(np.array([1], dtype=np.int64))[1].tolist() == [False]


# -- restart plans ---------------------------------------------------------------------


def chain(rng: np.random.Generator, pages: int, versions: int, churn: float
          ) -> tuple[list[P.PageMap], dict[int, bytes], dict[int, np.ndarray]]:  # fmt: skip
    """A made-up history: version 1 stores every page, each later version a random
    ``churn`` of them (some zeros), in address order as a dump would.  Returns each
    version's map, every file's bytes and layout."""
    files: dict[int, bytes] = {}
    layouts: dict[int, np.ndarray] = {}
    maps = []
    page = np.arange(1000, 1000 + pages, dtype=np.int64)
    src = np.full(pages, P.key(1, 0), dtype=np.int64)
    off = np.arange(pages, dtype=np.int64)
    files[P.key(1, 0)] = rng.bytes(pages * P.PAGE)
    layouts[P.key(1, 0)] = page.copy()
    maps.append(P.PageMap(page.copy(), src.copy(), off.copy()))
    for v in range(2, versions + 1):
        changed = np.flatnonzero(rng.random(pages) < churn)
        zero = changed[rng.random(len(changed)) < 0.1]
        stored = np.setdiff1d(changed, zero)
        k = P.key(v, 0)
        src[zero], off[zero] = P.ZERO, 0
        src[stored], off[stored] = k, np.arange(len(stored))
        files[k] = rng.bytes(len(stored) * P.PAGE)
        layouts[k] = page[stored]
        maps.append(P.PageMap(page.copy(), src.copy(), off.copy()))
    return maps, files, layouts


def expected(m: P.PageMap, files: dict[int, bytes]) -> dict[int, bytes]:
    return {p: files[k][o * P.PAGE : (o + 1) * P.PAGE] for p, k, o in
            zip(m.page.tolist(), m.src.tolist(), m.off.tolist(), strict=True) if k != P.ZERO}


def check(got: dict[int, bytes], m: P.PageMap, files: dict[int, bytes]) -> None:
    """Every page has its bytes; zero pages are zeros or left alone; nothing else."""
    want = expected(m, files)
    zero = set(m.page[m.src == P.ZERO].tolist())
    assert {p: b for p, b in got.items() if p not in zero} == want
    assert all(got[p] == P.ZERO_PAGE for p in zero if p in got)


@pytest.mark.parametrize("churn", [0.01, 0.2, 0.6])
def test_plan_writes_every_page_right(churn: float) -> None:
    rng = np.random.default_rng(int(churn * 100))
    maps, files, layouts = chain(rng, 3000, 8, churn)
    for m in maps:
        plan = plan_unit(m, layouts)
        check(simulate(plan, files), m, files)
        # few blocks: stretches of files, not a block per gap
        assert len(plan.natural) <= 1 + 2 * len(np.unique(m.src)) + (churn * 3000 * 8 // 16)
        for k, used in plan.used.items():
            assert len(used) == len(layouts[k])


def test_plan_with_low_churn_is_few_large_writes() -> None:
    rng = np.random.default_rng(7)
    maps, files, layouts = chain(rng, 20000, 10, 0.01)
    plan = plan_unit(maps[-1], layouts)
    check(simulate(plan, files), maps[-1], files)
    oldest = [n for n in plan.natural if n.key == P.key(1, 0)]
    assert len(oldest) <= 3  # version 1 in one or two stretches, gaps written over
    assert len(plan.gather) == 0
    written = plan.pages_written()
    assert written <= 1.12 * 20000


def test_plan_gathers_pages_stored_for_other_addresses() -> None:
    k = P.key(1, 0)
    files = {k: b"".join(bytes([i]) * P.PAGE for i in range(4))}
    layouts = {k: np.array([10, 11, 12, 13], dtype=np.int64)}
    # page 20 has the bytes saved for page 11; 12 and 13 hold page 10's (stored once)
    m = pm([10, 11, 12, 13, 20], [k, k, k, k, k], [0, 1, 0, 0, 1])
    plan = plan_unit(m, layouts)
    check(simulate(plan, files), m, files)
    assert sorted(plan.gather.page.tolist()) == [12, 13, 20]


def test_plan_never_writes_stale_bytes_over_zeros_or_absent_pages() -> None:
    k1, k2 = P.key(1, 0), P.key(2, 0)
    files = {k1: b"".join(bytes([i + 1]) * P.PAGE for i in range(7)), k2: b"\x77" * P.PAGE}
    layouts = {k1: np.arange(100, 107, dtype=np.int64), k2: np.array([103], dtype=np.int64)}
    # 101 became zeros, 103 changed (version 2), 106 went away
    m = pm([100, 101, 102, 103, 104, 105], [k1, P.ZERO, k1, k2, k1, k1], [0, 0, 2, 0, 4, 5])
    plan = plan_unit(m, layouts)
    check(simulate(plan, files), m, files)
    touched = {p for n in plan.natural for s, c in n.runs.tolist() for p in range(s, s + c)}
    assert 106 not in touched
    assert {101, 103} <= touched  # stale bytes, written again afterwards
    assert plan.stale_zero.tolist() == [101]
    assert len([n for n in plan.natural if n.key == k1]) == 1


def test_plan_exclude_gathers_a_page() -> None:
    k = P.key(1, 0)
    files = {k: b"".join(bytes([i]) * P.PAGE for i in range(3))}
    layouts = {k: np.array([0, 1, 2], dtype=np.int64)}
    m = pm([0, 1, 2], [k, k, k], [0, 1, 2])
    plan = plan_unit(m, layouts, exclude=np.array([2], dtype=np.int64))
    assert plan.gather.page.tolist() == [2]
    check(simulate(plan, files), m, files)


def test_chunk_sums_streamed_in_any_pieces_match() -> None:
    rng = np.random.default_rng(3)
    data = rng.bytes(150 * P.PAGE)
    whole = P.chunk_sums(data, 5)
    assert len(whole) == 3  # 64 + 64 + 22 pages
    cs = P.ChunkSums(5)
    at = 0
    for n in (1, 63, 2, 70, 14):
        cs.add(data[at * P.PAGE : (at + n) * P.PAGE])
        at += n
    assert cs.finish().tolist() == whole.tolist()
    assert P.chunk_sums(data, 6).tolist() != whole.tolist()


def test_find_runs_is_lookup() -> None:
    m = pm([2, 3, 4, 7, 9, 10], [1] * 6, list(range(6)))
    runs = [[2 << 12, 3 << 12], [6 << 12, 2 << 12], [9 << 12, 3 << 12]]
    idx, here = m.find(runs)
    want_idx, want_here = m.lookup(P.run_pages(runs))
    assert here.tolist() == want_here.tolist() == [True, True, True, False, True, True,
                                                   True, False]
    assert idx[here].tolist() == want_idx[want_here].tolist()
    assert m.find([])[0].tolist() == []
