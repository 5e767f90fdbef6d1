"""The repository layout and numbering (no privileges needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryo.errors import ImageMissing
from cryo.ipc import Kind, Store
from cryo.ipc.repo import DEFAULT_ROOT


def test_layout_is_seed_000s(tmp_path: Path) -> None:
    st = Store(tmp_path)
    assert st.path(Kind.MSG, 32768, 3) == tmp_path / "msgq/32768/3/msgq32768_v3.bin"
    assert st.path(Kind.SEM, 0, 1) == tmp_path / "sem/0/1/sem0_v1.bin"
    assert st.path(Kind.SHM, 7, 12) == tmp_path / "shm/7/12/shm7_v12.bin"
    assert st.set_path(2) == tmp_path / "sets/2/set2.bin"


def test_root_from_argument_environment_or_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRYO_STORE", raising=False)
    assert Store().root == DEFAULT_ROOT == Path("/var/lib/cryo")
    monkeypatch.setenv("CRYO_STORE", str(tmp_path / "env"))
    assert Store().root == tmp_path / "env"
    assert Store(tmp_path / "arg").root == tmp_path / "arg"


def _complete(st: Store, kind: Kind, ipc_id: int) -> int:
    v = st.new_version(kind, ipc_id)
    st.path(kind, ipc_id, v).write_bytes(b"x" * v)
    return v


def test_versions_increase_and_incomplete_ones_are_not_listed(tmp_path: Path) -> None:
    st = Store(tmp_path)
    assert [_complete(st, Kind.MSG, 0) for _ in range(3)] == [1, 2, 3]
    incomplete = st.new_version(Kind.MSG, 0)  # a save in progress, or one that died
    assert incomplete == 4
    assert st.versions(Kind.MSG, 0) == [1, 2, 3]
    assert st.latest(Kind.MSG, 0) == 3
    assert _complete(st, Kind.MSG, 0) == 5  # never reuses a number
    assert st.existing(Kind.MSG, 0, None) == (5, st.path(Kind.MSG, 0, 5))
    assert st.versions(Kind.SEM, 0) == []
    # the kind directories are private: saved objects hold other users' data
    assert (tmp_path / "msgq").stat().st_mode & 0o777 == 0o700


def test_missing(tmp_path: Path) -> None:
    st = Store(tmp_path)
    with pytest.raises(ImageMissing, match="no saved version of semaphore set 5"):
        st.latest(Kind.SEM, 5)
    _complete(st, Kind.SEM, 5)
    with pytest.raises(ImageMissing, match=r"no version 2 .*saved versions: 1\)"):
        st.existing(Kind.SEM, 5, 2)


def test_entries_and_discard(tmp_path: Path) -> None:
    st = Store(tmp_path)
    _complete(st, Kind.SHM, 9)
    _complete(st, Kind.MSG, 1)
    n = st.new_set()
    st.set_path(n).write_bytes(b"set")
    got = [(e.kind, e.id, e.version, e.size) for e in st.entries()]
    assert got == [(Kind.MSG, 1, 1, 1), (Kind.SHM, 9, 1, 1), (None, 1, 1, 3)]
    v = st.new_version(Kind.SEM, 4)
    st.discard(st.path(Kind.SEM, 4, v))
    assert not (tmp_path / "sem" / "4").exists()


def test_kind_names() -> None:
    assert [Kind.parse(t) for t in ("msg", "msgq", "SEM", "shm")] == [
        Kind.MSG, Kind.MSG, Kind.SEM, Kind.SHM,
    ]  # fmt: skip
    assert Kind.MSG.dirname == "msgq"
    with pytest.raises(ValueError, match="unknown IPC kind"):
        Kind.parse("pipe")
