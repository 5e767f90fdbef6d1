"""Saved-object files: what a good one holds, and every way a bad one is refused
(built here with the record writer, so no privileges are needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from cryo.errors import ImageCorrupt, ImageIncompatible, ImageMissing
from cryo.image.format import MappedFile, RecordWriter, encode_file, read_records
from cryo.ipc import Kind, Perm
from cryo.ipc import msg as msgmod
from cryo.ipc import sem as semmod
from cryo.ipc import shm as shmmod
from cryo.ipc.common import header

PERM = Perm(key=0x1234, uid=1, gid=2, cuid=3, cgid=4, mode=0o640)
MSGS = [(1, b""), (2, b"ab"), ((1 << 63) - 1, b"x" * 100)]


def _write(path: Path, magic: bytes, records: list[tuple[bytes, Any, bool]]) -> Path:
    out = io.BytesIO()
    w = RecordWriter(out, magic)
    for kind, payload, raw in records:
        if raw:
            w.write_raw(kind, payload)
        else:
            w.write(kind, payload)
    w.close()
    path.write_bytes(out.getvalue())
    return path


Records = list[tuple[bytes, Any, bool]]


def _msg_records(msgs: list[tuple[int, bytes]] = MSGS, **meta: Any) -> Records:
    m = header(Kind.MSG, 7, PERM, qnum=len(msgs), cbytes=sum(len(t) for _, t in msgs),
               qbytes=16384, msgmax=8192, left_out=[])  # fmt: skip
    m.update(meta)
    return [(b"META", m, False), (b"MSGS", {"first": 0, "msgs": [list(x) for x in msgs]}, False)]


def _sem_records(**meta: Any) -> Records:
    m = header(Kind.SEM, 3, PERM, nsems=3, left_out=[])
    m.update(meta)
    body = {"values": [0, 1, 32767], "pids": [0, 5, 6], "ncnt": [0, 0, 0], "zcnt": [0, 0, 0]}
    return [(b"META", m, False), (b"SEMS", body, False)]


def _shm_records(size: int = 3 * 4096) -> Records:
    m = header(Kind.SHM, 9, PERM, size=size, nattch=0, locked=False, dest=False, left_out=[])
    return [(b"META", m, False), (b"SHMB", b"a" * 4096, True), (b"SHMZ", {"length": 4096}, False),
            (b"SHMB", b"b" * (size - 8192), True)]  # fmt: skip


def test_good_files(tmp_path: Path) -> None:
    mi = msgmod.read(_write(tmp_path / "m", msgmod.MAGIC, _msg_records()))
    assert (mi.id, mi.perm, mi.messages, mi.max_size) == (7, PERM, MSGS, 100)
    si = semmod.read(_write(tmp_path / "s", semmod.MAGIC, _sem_records()))
    assert (si.id, si.values, si.pids) == (3, [0, 1, 32767], [0, 5, 6])
    hi = shmmod.read(_write(tmp_path / "h", shmmod.MAGIC, _shm_records()))
    assert hi.size == 3 * 4096
    assert hi.layout == [(b"SHMB", 0, 4096), (b"SHMZ", 4096, 4096), (b"SHMB", 8192, 4096)]


def test_decode_and_encode_again_byte_for_byte(tmp_path: Path) -> None:
    for magic, records in ((msgmod.MAGIC, _msg_records()), (semmod.MAGIC, _sem_records()),
                           (shmmod.MAGIC, _shm_records())):  # fmt: skip
        data = _write(tmp_path / "f", magic, records).read_bytes()
        again = encode_file(magic, list(read_records(io.BytesIO(data), magic, "f")))
        assert again == data


def test_write_raw_is_write_raw_true() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    RecordWriter(a, b"CRYOTEST").write(b"DATA", b"xyz" * 1000, raw=True)
    RecordWriter(b, b"CRYOTEST").write_raw(b"DATA", memoryview(bytearray(b"xyz" * 1000)))
    assert a.getvalue() == b.getvalue()


def test_read_records_into_a_buffer() -> None:
    out = io.BytesIO()
    w = RecordWriter(out, b"CRYOTEST")
    w.write_raw(b"DATA", b"0123456789")
    w.write(b"META", {"a": 1})
    w.close()
    target = bytearray(16)
    recs = list(read_records(io.BytesIO(out.getvalue()), b"CRYOTEST", "t",
                             into=lambda kind, n: memoryview(target)[2 : 2 + n]))  # fmt: skip
    assert bytes(target) == b"\0\0" + b"0123456789" + b"\0" * 4
    assert recs[1].payload == {"a": 1}


KINDS = [(msgmod, _msg_records), (semmod, _sem_records), (shmmod, _shm_records)]


@pytest.mark.parametrize(("mod", "records"), KINDS)
def test_every_byte_flipped_or_cut_is_refused(tmp_path: Path, mod: Any, records: Any) -> None:
    good = _write(tmp_path / "good", mod.MAGIC, records()).read_bytes()
    bad = tmp_path / "bad"
    # every header byte, then a sample of the rest
    for i in [*range(16), *range(16, len(good), max(1, len(good) // 300))]:
        data = bytearray(good)
        data[i] ^= 0x40
        bad.write_bytes(bytes(data))
        with pytest.raises((ImageCorrupt, ImageIncompatible)):
            mod.read(bad)
    for cut in (0, 1, 15, 16, 17, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(ImageCorrupt, match="corrupt"):
            mod.read(bad)
    bad.write_bytes(good + b"\0")
    with pytest.raises(ImageCorrupt, match="after the end"):
        mod.read(bad)


def test_missing_file(tmp_path: Path) -> None:
    for mod in (msgmod, semmod, shmmod):
        with pytest.raises(ImageMissing):
            mod.read(tmp_path / "nothing")


def test_wrong_magic_kind_and_format(tmp_path: Path) -> None:
    p = _write(tmp_path / "m", semmod.MAGIC, _msg_records())
    with pytest.raises(ImageCorrupt, match="bad magic"):
        msgmod.read(p)
    p = _write(tmp_path / "m", msgmod.MAGIC, _msg_records(kind="sem"))
    with pytest.raises(ImageCorrupt, match="kind"):
        msgmod.read(p)
    p = _write(tmp_path / "m", msgmod.MAGIC, _msg_records(format=99))
    with pytest.raises(ImageIncompatible, match="IPC format 99"):
        msgmod.read(p)


@pytest.mark.parametrize(
    "records",
    [
        _msg_records(qnum=4),  # the header counts more messages than there are
        _msg_records(cbytes=1),
        _msg_records(msgs=[(0, b"type 0 is not a type")]),
        _msg_records(msgs=[(1 << 63, b"too big a type")]),
        _msg_records(key=1 << 40),
        _msg_records(uid="root"),
        [*_msg_records()[:1], (b"MSGS", {"first": 1, "msgs": []}, False)],
        [*_msg_records(), (b"JUNK", {}, False)],
        [*_msg_records(), (b"MSGS", b"raw", True)],
        [(b"MSGS", {"first": 0, "msgs": []}, False)],
    ],
)
def test_bad_msg_contents(tmp_path: Path, records: Any) -> None:
    with pytest.raises(ImageCorrupt):
        msgmod.read(_write(tmp_path / "m", msgmod.MAGIC, records))


@pytest.mark.parametrize(
    "records",
    [
        _sem_records(nsems=4),
        _sem_records(nsems=0),
        [*_sem_records()[:1], (b"SEMS", {"values": [0, 1, 32768], "pids": [0, 0, 0]}, False)],
        [*_sem_records()[:1], (b"SEMS", {"values": [0, 1, -1], "pids": [0, 0, 0]}, False)],
        _sem_records()[:1],
    ],
)
def test_bad_sem_contents(tmp_path: Path, records: Any) -> None:
    with pytest.raises(ImageCorrupt):
        semmod.read(_write(tmp_path / "s", semmod.MAGIC, records))


@pytest.mark.parametrize(
    "records",
    [
        _shm_records()[:-1],  # short of the size
        [*_shm_records(), (b"SHMB", b"more", True)],  # past the size
        [*_shm_records()[:1], (b"SHMZ", {"length": 1 << 40}, False)],
        [*_shm_records()[:1], (b"SHMB", {"not": "raw"}, False)],
        _shm_records()[1:],  # no META
    ],
)
def test_bad_shm_contents(tmp_path: Path, records: Any) -> None:
    with pytest.raises(ImageCorrupt):
        shmmod.read(_write(tmp_path / "h", shmmod.MAGIC, records))


def test_mapped_file_gives_slices_and_sees_truncation(tmp_path: Path) -> None:
    good = _write(tmp_path / "h", shmmod.MAGIC, _shm_records())
    with MappedFile(good) as f:
        recs = list(read_records(f, shmmod.MAGIC, "h"))
        assert isinstance(recs[1].payload, memoryview)
        assert bytes(recs[1].payload) == b"a" * 4096
        del recs
    data = good.read_bytes()
    for cut in (0, 100, len(data) - 5000, len(data) - 1):
        good.write_bytes(data[:cut])
        with MappedFile(good) as f, pytest.raises(ImageCorrupt, match="truncated"):
            list(read_records(f, shmmod.MAGIC, "h"))
