"""Versions written and read through the store's Sink and ImageSource with made-up
processes (no privileges): what the engine would do, block by block."""

from __future__ import annotations

import os
import platform
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cryo.errors import CryoError, ImageCorrupt, ImageMissing, InternalError
from cryo.image import records as R
from cryo.store import pages as P
from cryo.store import retention
from cryo.store.inventory import describe, verify
from cryo.store.layout import App, Store, check_app_name
from cryo.store.retention import gc, kept_versions
from cryo.store.sink import VersionSink, load_previous
from cryo.store.source import VersionImage

PID = 4242
Memory = dict[tuple[str, int], dict[int, bytes]]  # unit -> page -> bytes


def dump(app: App, mem: Memory, *, block_pages: int = 64, tags: bool = True,
         sizes: dict[int, int] | None = None, vmas: list[dict[str, Any]] | None = None,
         ) -> tuple[int, VersionSink]:  # fmt: skip
    """One checkpoint of ``mem`` as the engine makes it: records, then each unit's pages
    in address order, in blocks, then a PBLK per block (tagged by a newer engine)."""
    parent = app.latest()
    prev = load_previous(app, parent) if parent else None
    version = app.next_version()
    sink = VersionSink(app, version, prev, parent=parent, direct=False)
    pids = sorted(n for kind, n in mem if kind == "pid")
    sink.record(R.HEAD, {"arch": platform.machine(), "root_pid": pids[0], "pids": pids})
    for pid in pids:
        sink.record(R.MM, {"pid": pid, "vmas": vmas or []})
    if sizes:
        sink.record(b"SHMO", {"objs": [{"id": i, "size": n} for i, n in sizes.items()]})
    metas = []
    for unit in sorted(mem):
        pages = sorted(mem[unit])
        for i in range(0, len(pages), block_pages):
            chunk = pages[i : i + block_pages]
            data = b"".join(mem[unit][p] for p in chunk)
            runs = P.page_runs(np.asarray(chunk, dtype=np.int64))
            if unit[0] == "obj" and sizes and chunk[-1] == max(mem[unit]):
                cut = sizes[unit[1]] - chunk[-1] * P.PAGE  # the object ends in this page
                data = data[: len(data) - P.PAGE + cut]
                runs[-1][1] -= P.PAGE - cut
            meta = sink.write_block(memoryview(bytearray(data)), runs, None)
            if tags:
                meta[unit[0]] = unit[1]
            metas.append(meta)
    for meta in metas:
        sink.record(R.PBLK, meta)
    sink.commit()
    return version, sink


def restore(app: App, version: int) -> Memory:
    """What a restart of ``version`` writes, block by block, in order."""
    img = VersionImage(app, version)
    try:
        img.verify()
        out: Memory = defaultdict(dict)
        for b in img.blocks:
            owner, off = img.block_data(b)
            view = memoryview(owner)  # type: ignore[arg-type]
            unit = ("pid", b["pid"]) if "pid" in b else ("obj", b["obj"])
            for addr, length in b["runs"]:
                data = bytes(view[off : off + length])
                off += P.PAGE if length % P.PAGE else length
                for i in range(0, length, P.PAGE):
                    out[unit][(addr + i) >> P.SHIFT] = data[i : i + P.PAGE]
            del view, owner
        return out
    finally:
        img.close()


def assert_restores(app: App, version: int, mem: Memory) -> None:
    got = restore(app, version)
    for unit, pages in mem.items():
        have = got.get(unit, {})
        for p, data in pages.items():
            if data.strip(b"\0"):
                assert have.get(p) == data, f"{unit} page {p}"
            else:
                assert have.get(p, data) == data  # zeros: left alone or written as zeros
        assert set(have) <= set(pages)
    assert set(got) <= set(mem)


def rand_pages(rng: np.random.Generator, pages: list[int]) -> dict[int, bytes]:
    return {p: rng.bytes(P.PAGE) for p in pages}


@pytest.fixture
def app(tmp_path: Path) -> App:
    return Store(str(tmp_path / "store"), create=True).app("demo", create=True)


def test_full_version_stores_pages_once_and_zeros_not_at_all(app: App) -> None:
    rng = np.random.default_rng(1)
    mem = {("pid", PID): rand_pages(rng, list(range(100, 400)))}
    for p in range(200, 220):
        mem[("pid", PID)][p] = P.ZERO_PAGE
    same = rng.bytes(P.PAGE)
    for p in range(300, 310):
        mem[("pid", PID)][p] = same
    v, sink = dump(app, mem)
    assert v == 1
    assert sink.new_pages == 300 - 20 - 9
    assert os.path.getsize(os.path.join(app.vdir(1), "pages.img")) == P.data_offset(271)
    assert_restores(app, 1, mem)


def test_incremental_versions_store_only_changes_and_all_restore(app: App) -> None:
    rng = np.random.default_rng(2)
    cur = rand_pages(rng, list(range(1000, 3000)))
    history = []
    for v in range(1, 9):
        if v > 1:
            for p in rng.choice(sorted(cur), 40, replace=False).tolist():
                cur[p] = rng.bytes(P.PAGE)
            for p in rng.choice(sorted(cur), 5, replace=False).tolist():
                cur[p] = P.ZERO_PAGE
            cur.update(rand_pages(rng, [5000 + v]))  # a new page
            cur.pop(1000 + v, None)  # a page gone
        got, sink = dump(app, {("pid", PID): dict(cur)})
        assert got == v
        if v > 1:
            assert sink.new_pages <= 41
        history.append(dict(cur))
    for v, mem in enumerate(history, 1):
        assert_restores(app, v, {("pid", PID): mem})
    info = describe(app.store.path)[0]["versions"]
    assert [x["needs"] for x in info][:3] == [[], [1], [1, 2]]
    assert all(x["new"] <= 41 * P.PAGE for x in info[1:])
    assert not verify(app.store.path).problems


def test_engine_without_tags_means_one_process(app: App) -> None:
    rng = np.random.default_rng(3)
    mem = {("pid", PID): rand_pages(rng, list(range(10, 50)))}
    dump(app, mem, tags=False)
    assert_restores(app, 1, mem)


def test_processes_and_objects_each_have_a_map(app: App) -> None:
    rng = np.random.default_rng(4)
    shared_addr = list(range(100, 140))  # a forked child: same addresses, other bytes
    mem: Memory = {("pid", 10): rand_pages(rng, shared_addr),
                   ("pid", 11): rand_pages(rng, shared_addr),
                   ("obj", 0): rand_pages(rng, list(range(9)))}  # fmt: skip
    sizes = {0: 8 * P.PAGE + 100}  # the object's last page is partial
    mem[("obj", 0)][8] = mem[("obj", 0)][8][:100] + bytes(P.PAGE - 100)
    dump(app, mem, sizes=sizes)
    mem[("pid", 11)][105] = rng.bytes(P.PAGE)
    mem[("obj", 0)][3] = rng.bytes(P.PAGE)
    _, sink = dump(app, mem, sizes=sizes)
    assert sink.new_pages == 2
    meta = app.meta(2)
    assert [u.tag for u in meta.units] == [("obj", 0), ("pid", 10), ("pid", 11)]
    assert meta.unit(("obj", 0)).size == sizes[0]  # type: ignore[union-attr]
    got = restore(app, 2)
    assert got[("obj", 0)][8] == mem[("obj", 0)][8][:100]  # cut at the object's size
    del mem[("obj", 0)][8]
    got[("obj", 0)].pop(8)
    for unit in mem:
        assert got[unit] == mem[unit]


def test_zero_pages_of_file_mappings_are_written(app: App) -> None:
    rng = np.random.default_rng(5)
    mem = {("pid", PID): rand_pages(rng, [16, 17, 18])}
    mem[("pid", PID)][17] = P.ZERO_PAGE
    vmas = [{"start": 16 << 12, "end": 19 << 12, "kind": "file"}]
    dump(app, mem, vmas=vmas)
    got = restore(app, 1)
    assert got[("pid", PID)] == mem[("pid", PID)]


def test_versions_restore_after_gc(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random histories, random policies: every kept version still restores."""
    monkeypatch.setattr(retention, "SLACK", 100)  # (compacted under pressure: copied)
    rng = np.random.default_rng(6)
    cur = rand_pages(rng, list(range(1500)))
    history: dict[int, dict[int, bytes]] = {}
    for v in range(1, 13):
        if v > 1:
            churn = 0.6 if v in (5, 6) else 0.02  # versions before 5 become mostly stale
            for p in np.flatnonzero(rng.random(1500) < churn).tolist():
                cur[p] = rng.bytes(P.PAGE)
        dump(app, {("pid", PID): dict(cur)}, block_pages=200)
        history[v] = dict(cur)
    size_before = sum(x["stored"] for x in describe(app.store.path)[0]["versions"])
    (r,) = gc(app.store.path, keep_last=2, keep_every=4, dry_run=True)
    assert r.kept == [4, 8, 11, 12] and app.published() == list(range(1, 13))
    (r,) = gc(app.store.path, keep_last=2, keep_every=4)
    assert r.kept == [4, 8, 11, 12]
    assert app.published() == [4, 8, 11, 12]
    assert r.retired or r.deleted
    assert not verify(app.store.path).problems
    for v in r.kept:
        assert_restores(app, v, {("pid", PID): history[v]})
    size_after = sum(x["stored"] for x in describe(app.store.path)[0]["versions"])
    assert size_after < size_before
    (r,) = gc(app.store.path, keep_last=1)
    assert r.merged  # (dead pages outnumber live ones: compacted)
    assert r.stored <= 2 * r.live + retention.SLACK
    assert app.published() == [12]
    assert_restores(app, 12, {("pid", PID): history[12]})
    assert not verify(app.store.path).problems
    # and a new version after gc still finds the old pages
    _, sink = dump(app, {("pid", PID): history[12]})
    assert sink.new_pages == 0
    assert_restores(app, 13, {("pid", PID): history[12]})


def test_gc_keeps_a_mostly_used_file_in_place(app: App) -> None:
    """A file kept versions still read mostly stays where it is; one of which they read
    at most an eighth is copied (merged) into the version that reads it, and goes."""
    rng = np.random.default_rng(8)
    cur = rand_pages(rng, list(range(400)))
    dump(app, {("pid", PID): dict(cur)})
    for p in range(0, 400, 5):  # 80 pages, then 75 of them again
        cur[p] = rng.bytes(P.PAGE)
    dump(app, {("pid", PID): dict(cur)})
    for p in range(25, 400, 5):
        cur[p] = rng.bytes(P.PAGE)
    dump(app, {("pid", PID): dict(cur)})
    (r,) = gc(app.store.path, keep_last=1)
    assert r.retired == [1] and r.deleted == [2]
    assert r.merged == [(2, 3, 5)]
    assert sorted(os.listdir(app.vdir(1))) == ["pages.img", "pmap.img"]
    assert app.published() == [3]
    assert_restores(app, 3, {("pid", PID): cur})
    assert [x["retired"] for x in describe(app.store.path)[0]["versions"]] == [True, False]
    assert not verify(app.store.path).problems


def test_policy() -> None:
    assert kept_versions([1, 2, 3, 4, 5, 6, 7], 2, 3) == [3, 6, 7]
    assert kept_versions([5, 9], 1, None) == [9]
    with pytest.raises(CryoError):
        kept_versions([1], 0, None)
    with pytest.raises(CryoError):
        kept_versions([1], 1, 0)


def corrupt(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_damage_is_found_before_anything_is_written(app: App) -> None:
    rng = np.random.default_rng(9)
    mem = {("pid", PID): rand_pages(rng, list(range(100)))}
    dump(app, mem)
    mem[("pid", PID)][50] = rng.bytes(P.PAGE)
    dump(app, mem)
    corrupt(os.path.join(app.vdir(1), "pages.img"), P.data_offset(7) + 99)
    with pytest.raises(ImageCorrupt, match=r"pages 0-63 of .*v1/pages\.img do not match"):
        restore(app, 2)
    problems = verify(app.store.path).problems
    assert len(problems) == 1 and "page 7 of" in problems[0].what
    corrupt(os.path.join(app.vdir(1), "pages.img"), P.data_offset(7) + 99)  # repaired
    assert_restores(app, 2, mem)
    corrupt(os.path.join(app.vdir(2), "pmap.img"), 40)
    with pytest.raises(ImageCorrupt):
        restore(app, 2)
    assert verify(app.store.path).problems
    corrupt(os.path.join(app.vdir(2), "pmap.img"), 40)
    with open(os.path.join(app.vdir(1), "pages.img"), "r+b") as f:
        f.truncate(P.data_offset(99))
    with pytest.raises(ImageCorrupt, match="bytes, not"):
        restore(app, 2)
    os.unlink(os.path.join(app.vdir(1), "pages.img"))
    with pytest.raises(ImageCorrupt, match="missing"):
        restore(app, 2)


def test_missing_things(tmp_path: Path, app: App) -> None:
    with pytest.raises(ImageMissing):
        Store(str(tmp_path / "nothing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ImageMissing):
        Store(str(tmp_path / "plain"))
    (tmp_path / "plain" / "file").write_text("x")
    with pytest.raises(CryoError, match="not empty"):
        Store(str(tmp_path / "plain"), create=True)
    with pytest.raises(ImageMissing):
        app.store.app("other")
    with pytest.raises(ImageMissing):
        app.resolve(None)
    dump(app, {("pid", PID): {1: b"x" * P.PAGE}})
    assert app.resolve(None) == 1
    with pytest.raises(ImageMissing, match="no version 3"):
        app.resolve(3)
    for bad in ("", ".hidden", "a/b", "x" * 200, "-x"):
        with pytest.raises(CryoError):
            check_app_name(bad)


def test_a_killed_checkpoint_leaves_nothing_behind(app: App) -> None:
    rng = np.random.default_rng(10)
    mem = {("pid", PID): rand_pages(rng, list(range(50)))}
    dump(app, mem)
    sink = VersionSink(app, 2, load_previous(app, 1), parent=1, direct=False)
    sink.write_block(memoryview(bytearray(rng.bytes(P.PAGE))), [[0, P.PAGE]])
    sink.abort()
    assert sorted(os.listdir(app.path)) == ["v1"]
    # what a cryo killed with SIGKILL leaves: removed by the next writer (which holds
    # the lock: even a directory named after a pid in use again is stale)
    os.mkdir(os.path.join(app.path, ".v2.tmp.999999999"))
    os.mkdir(os.path.join(app.path, ".v2.tmp.1"))
    os.mkdir(os.path.join(app.path, ".v1.del.7"))
    mine = os.path.join(app.path, f".v3.tmp.{os.getpid()}")
    os.mkdir(mine)
    assert sorted(app.sweep()) == [".v1.del.7", ".v2.tmp.1", ".v2.tmp.999999999"]
    assert app.published() == [1]
    os.rmdir(mine)
    assert app.next_version() == 2


def test_seed_is_per_store(tmp_path: Path) -> None:
    a = Store(str(tmp_path / "a"), create=True)
    b = Store(str(tmp_path / "b"), create=True)
    assert a.seed != b.seed
    assert Store(str(tmp_path / "a")).seed == a.seed


def test_write_tracking_interface(app: App) -> None:
    """An engine that knows the written pages hands only those (docs/store.md)."""
    rng = np.random.default_rng(11)
    mem = rand_pages(rng, list(range(64)))
    other = rand_pages(rng, list(range(64)))  # a second process, same addresses
    dump(app, {("pid", PID): dict(mem), ("pid", PID + 1): dict(other)})
    sink = VersionSink(app, 2, load_previous(app, 1), parent=1, direct=False)
    sink.record(R.HEAD, {"arch": platform.machine(), "root_pid": PID, "pids": [PID]})
    present = [[0, 70 * P.PAGE]]  # pages 64-69 are new
    mem[3] = rng.bytes(P.PAGE)
    mem.update(rand_pages(rng, list(range(64, 70))))
    tag = ("pid", PID)
    need = sink.select(tag, present, [[3 * P.PAGE, P.PAGE]])
    assert need == [[3 * P.PAGE, P.PAGE], [64 * P.PAGE, 6 * P.PAGE]]
    assert sink.select(("pid", 99), present, [[0, P.PAGE]]) == present  # no previous
    assert sink.select(tag, present, None) == present  # not tracked: everything
    metas = []
    for addr, length in need:
        pages = range(addr >> 12, (addr + length) >> 12)
        data = bytearray(b"".join(mem[p] for p in pages))
        metas.append(sink.write_block(memoryview(data), [[addr, length]]))
    sink.inherit(tag, present, need)
    for m in metas:
        sink.record(R.PBLK, {**m, "pid": PID})
    with pytest.raises(InternalError):  # another process's pages are not "unchanged"
        sink.inherit(("pid", PID + 2), present, [])
    sink.record(b"TRAK", {"pid": PID, "token": 1234})
    sink.commit()
    assert sink.new_pages == 7
    assert_restores(app, 2, {("pid", PID): mem})
    after = VersionSink(app, 3, load_previous(app, 2), parent=2, direct=False)
    assert after.previous_records(b"TRAK") == [{"pid": PID, "token": 1234}]
    after.abort()


class Stop(Exception):
    pass


def test_gc_stopped_after_any_step_leaves_kept_versions_whole(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:  # fmt: skip
    """gc interrupted after each of its steps (merged file written, a map rewritten, a
    version removed or retired): kept versions still restore, and gc again finishes."""
    rng = np.random.default_rng(12)
    base = Store(str(tmp_path / "base"), create=True).app("demo", create=True)
    cur = rand_pages(rng, list(range(600)))
    history = {}
    for v in range(1, 8):
        if v > 1:
            churn = 0.5 if v == 4 else 0.03
            for p in np.flatnonzero(rng.random(600) < churn).tolist():
                cur[p] = rng.bytes(P.PAGE)
        dump(base, {("pid", PID): dict(cur)}, block_pages=100)
        history[v] = dict(cur)
    monkeypatch.setattr(retention, "SLACK", 50)  # (so that gc copies: a merge step)
    monkeypatch.setattr(retention, "SPARSE", 2)
    steps = [(retention, "_merge"), (retention.VersionMeta, "write"),
             (retention, "remove_version"), (retention, "_retire")]  # fmt: skip
    for stop_at in range(1, 30):
        root = tmp_path / f"run{stop_at}"
        shutil.copytree(tmp_path / "base", root)
        calls = [0]
        with monkeypatch.context() as m:
            for owner, name in steps:
                real = getattr(owner, name)

                def counted(*a: Any, _real: Any = real, _calls: list[int] = calls,
                            _stop: int = stop_at, **kw: Any) -> Any:  # fmt: skip
                    _calls[0] += 1
                    if _calls[0] == _stop:
                        raise Stop
                    return _real(*a, **kw)

                m.setattr(owner, name, counted)
            try:
                (r,) = gc(str(root), keep_last=2, keep_every=3)
                finished = True
            except Stop:
                finished = False
        app = Store(str(root)).app("demo")
        assert not verify(str(root)).problems, stop_at
        for v in (3, 6, 7):
            assert_restores(app, v, {("pid", PID): history[v]})
        (r,) = gc(str(root), keep_last=2, keep_every=3)
        assert app.published() == [3, 6, 7]
        assert not verify(str(root)).problems
        for v in (3, 6, 7):
            assert_restores(app, v, {("pid", PID): history[v]})
        if finished:
            assert stop_at > 5, stop_at  # stopped after each step before this run
            assert r.merged or stop_at > 1
            break
    else:
        raise AssertionError("gc never finished")
