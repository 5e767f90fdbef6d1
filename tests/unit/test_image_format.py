"""The framing: records round-trip byte for byte; every kind of damage is detected."""

import io

import pytest

from cryo.errors import ImageCorrupt, ImageIncompatible
from cryo.image import format as fmt

MAGIC = b"CRYOTEST"


def sample() -> bytes:
    return fmt.encode_file(MAGIC, [
        fmt.Record(b"HEAD", {"arch": "x86_64", "n": 1}),
        fmt.Record(b"BLOB", b"\x00\x01" * 1000, raw=True),
        fmt.Record(b"LIST", {"xs": list(range(100)), "b": b"bytes"}),
    ])  # fmt: skip


def test_decode_reencode_is_identical() -> None:
    data = sample()
    recs = list(fmt.read_records(io.BytesIO(data), MAGIC, "t"))
    assert [r.kind for r in recs] == [b"HEAD", b"BLOB", b"LIST"]
    assert fmt.encode_file(MAGIC, recs) == data


@pytest.mark.parametrize("pos", [20, 40, 200, 2100, -12])
def test_flipped_byte_is_caught(pos: int) -> None:
    data = bytearray(sample())
    data[pos] ^= 0x40
    with pytest.raises(ImageCorrupt):
        list(fmt.read_records(io.BytesIO(bytes(data)), MAGIC, "t"))


@pytest.mark.parametrize("cut", [5, 16, 30, 500, 1])
def test_truncation_is_caught(cut: int) -> None:
    data = sample()[:-cut]
    with pytest.raises(ImageCorrupt):
        list(fmt.read_records(io.BytesIO(data), MAGIC, "t"))


def test_version_and_magic() -> None:
    data = bytearray(sample())
    data[8] = fmt.FORMAT_VERSION + 1
    with pytest.raises(ImageIncompatible, match="format version"):
        list(fmt.read_records(io.BytesIO(bytes(data)), MAGIC, "t"))
    with pytest.raises(ImageCorrupt, match="bad magic"):
        list(fmt.read_records(io.BytesIO(sample()), b"CRYOELSE", "t"))


def test_errors_survive_pickling() -> None:
    import pickle

    err = ImageCorrupt("bad", pid=3, resource="pages", path="/x")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.pid, back.resource, back.path) == (
        ImageCorrupt, "bad", 3, "pages", "/x")
