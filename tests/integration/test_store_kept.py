"""The page maps a process that checkpoints the same application again and again keeps
(store/sink.py, ``_KEPT``: the daemon's checkpointers, issue 14): the next checkpoint
reads no pmap.img it wrote or read already, reads again one that changed on disk (gc
rewrites a version's pmap.img atomically), and its versions restart exactly."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from cryo import store
from cryo.image import format as fmt
from cryo.store import layout
from tests.conftest import Procs, Victim, reap

pytestmark = pytest.mark.timeout(120)


def test_pmaps_kept_between_checkpoints(procs: Procs, build: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    v = procs.spawn([build("bigmem"), str(tmp_path / "out.txt"), "16"], tmp_path / "out.txt")
    v.wait_ok_after(1)
    st = str(tmp_path / "store")
    loaded: list[str] = []
    load = layout.VersionMeta.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[layout.VersionMeta], vdir: str, **kw: Any) -> layout.VersionMeta:
        loaded.append(Path(vdir).name)
        return load(cls, vdir, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(layout.VersionMeta, "load", classmethod(counted))
    cores: list[str] = []  # core.img read (the write tracking's token of the last one)
    read_file = fmt.read_file

    def counted_read(path: str, magic: bytes) -> list[fmt.Record]:
        if str(path).endswith("core.img"):
            cores.append(Path(path).parent.name)
        return read_file(path, magic)

    monkeypatch.setattr(fmt, "read_file", counted_read)

    def checkpoint(**kw: Any) -> int:
        loaded.clear()
        cores.clear()
        version, res = store.checkpoint(v.pid, st, "app", scope="process", worker=False,
                                        **kw)  # fmt: skip
        if version > 1:  # the tracking trusted: only the pages written since
            assert res.memory_bytes < 2 << 20
        return version

    for want in (1, 2, 3):
        assert checkpoint() == want
    assert loaded == [], "the versions it wrote and compared with are kept"
    assert cores == [], "the token it recorded is kept"
    # v3's pmap.img written again (as gc does: a new file, atomically): read again
    a = store.layout.Store(st).app("app")
    meta = load(layout.VersionMeta, a.vdir(3), digest=False)
    meta.write()
    assert checkpoint() == 4
    assert loaded == ["v3"]
    # gc in this process, then a version compared with what it left
    (rep,) = store.gc(st, 1, app="app")
    assert rep.kept == [4]
    assert checkpoint(signal_after=signal.SIGKILL) == 5
    reap(v.pid)
    last = max(v.oks())
    r = store.restart(st, "app")
    procs.track(r.pid)
    Victim(r.pid, v.out).wait_ok_after(last + 3)  # it checks its memory every round
    assert not v.fails()
    assert not store.verify(st).problems
