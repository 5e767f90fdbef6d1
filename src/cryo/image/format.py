"""Framing of cryo files: a file header, then checksummed records.  See docs/image-format.md.

    file    := FILE_HEADER record* END-record
    FILE_HEADER := magic[8] version:u32le flags:u32le        (16 bytes)
    record  := kind[4] flags:u32le length:u64le payload[length] xxh3_64:u64le
               (the checksum covers kind, flags, length and payload)

Payloads are msgpack maps (flag RAW clear) or raw bytes (flag RAW set).  The last
record of every file is ``END `` whose payload counts the records before it, so a
truncated file is always detected.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

import msgpack
import xxhash

from cryo.errors import ImageCorrupt, ImageIncompatible, ImageMissing

FORMAT_VERSION = 1
_FILE_HEADER = struct.Struct("<8sII")
_REC_HEADER = struct.Struct("<4sIQ")
_CSUM = struct.Struct("<Q")
FLAG_RAW = 1
END = b"END "
MAX_RECORD = 1 << 34  # sanity bound on a record's length (16 GiB)


def checksum(data: bytes | memoryview) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True)
class Record:
    kind: bytes
    payload: Any  # decoded msgpack object, or bytes when raw
    raw: bool = False


def encode_record(kind: bytes, payload: Any, *, raw: bool = False) -> bytes:
    assert len(kind) == 4
    body = bytes(payload) if raw else pack(payload)
    head = _REC_HEADER.pack(kind, FLAG_RAW if raw else 0, len(body))
    h = xxhash.xxh3_64(head)
    h.update(body)
    return head + body + _CSUM.pack(h.intdigest())


def raw_checksum(kind: bytes, data: bytes | bytearray | memoryview) -> int:
    """The checksum that ends a raw record of ``kind`` holding ``data``."""
    h = xxhash.xxh3_64(_REC_HEADER.pack(kind, FLAG_RAW, len(data)))
    h.update(data)
    return int(h.intdigest())


def encode_file(magic: bytes, records: list[Record]) -> bytes:
    out = io.BytesIO()
    w = RecordWriter(out, magic)
    for rec in records:
        w.write(rec.kind, rec.payload, raw=rec.raw)
    w.close()
    return out.getvalue()


class RecordWriter:
    """Writes a framed file to a binary stream (a file or a socket's makefile)."""

    def __init__(self, stream: IO[bytes], magic: bytes) -> None:
        assert len(magic) == 8
        self.stream = stream
        self.count = 0
        stream.write(_FILE_HEADER.pack(magic, FORMAT_VERSION, 0))

    def write(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        self.stream.write(encode_record(kind, payload, raw=raw))
        self.count += 1

    def write_raw(
        self, kind: bytes, data: bytes | bytearray | memoryview, *, csum: int | None = None
    ) -> None:
        """Same bytes as ``write(kind, data, raw=True)``, without copying ``data``.

        ``csum``, if given, is ``raw_checksum(kind, data)`` computed beforehand (in another
        thread, say, while this one writes the previous record).
        """
        assert len(kind) == 4
        head = _REC_HEADER.pack(kind, FLAG_RAW, len(data))
        if csum is None:
            csum = raw_checksum(kind, data)
        self.stream.write(head)
        self.stream.write(data)
        self.stream.write(_CSUM.pack(csum))
        self.count += 1

    def close(self) -> None:
        self.stream.write(encode_record(END, {"records": self.count}))
        self.stream.flush()


class MappedFile:
    """A file mapped read-only and read like a binary stream, for ``read_records``: the
    bodies of raw records are then slices of the mapping (no copy), valid until close().

    A file truncated while it is mapped raises SIGBUS on access: map only files that are
    replaced by rename, never rewritten (as every file cryo writes with atomic_file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._map = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        self.pos = 0

    def read_view(self, n: int) -> memoryview:
        end = min(self.pos + n, len(self._view))
        view = self._view[self.pos : end]
        self.pos = end
        return view

    def read(self, n: int = -1) -> bytes:
        return self.read_view(len(self._view) if n < 0 else n).tobytes()

    def readinto(self, buf: memoryview) -> int:
        view = self.read_view(len(buf))
        buf[: len(view)] = view
        return len(view)

    def close(self) -> None:
        """Unmap, unless record payloads still point into the mapping (then the GC will)."""
        self._view.release()
        if self._map is not None:
            with suppress(BufferError):
                self._map.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Stream = IO[bytes] | MappedFile


def _read_exact(stream: Stream, n: int, what: str, name: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ImageCorrupt(f"image {name} is corrupt: truncated in {what}", path=name)
    return data


def _readinto_exact(stream: Stream, buf: memoryview, what: str, name: str) -> None:
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])  # type: ignore[union-attr]
        if not n:
            raise ImageCorrupt(f"image {name} is corrupt: truncated in {what}", path=name)
        got += n


RawInto = Callable[[bytes, int], "memoryview | None"]


def read_records(
    stream: Stream, magic: bytes, name: str, *, into: RawInto | None = None
) -> Iterator[Record]:
    """Yield the records of a framed file, checking every checksum; END is not yielded.

    ``into(kind, length)`` may return a writable buffer of ``length`` bytes for the body
    of a raw record (the record's payload is then that buffer, checked), or None for a new
    bytes object.  It lets bulk data land in place, or in one reused buffer, without a copy;
    the buffer holds unchecked bytes if the record's checksum turns out wrong.  From a
    MappedFile, raw bodies that no ``into`` takes are slices of the mapping.
    """
    head = stream.read(_FILE_HEADER.size)
    if len(head) != _FILE_HEADER.size:
        raise ImageCorrupt(f"image {name} is corrupt: truncated header", path=name)
    got_magic, version, flags = _FILE_HEADER.unpack(head)
    if got_magic != magic:
        raise ImageCorrupt(f"image {name} is corrupt: bad magic {got_magic!r}", path=name)
    if version != FORMAT_VERSION:
        raise ImageIncompatible(
            f"image {name} has format version {version}; this cryo reads version {FORMAT_VERSION}",
            path=name,
        )
    if flags != 0:  # the header is not covered by a checksum: accept nothing unknown
        raise ImageCorrupt(f"image {name} is corrupt: header flags {flags:#x}", path=name)
    index = 0
    while True:
        rhead = _read_exact(stream, _REC_HEADER.size, f"record {index} header", name)
        kind, flags, length = _REC_HEADER.unpack(rhead)
        if length > MAX_RECORD:
            raise ImageCorrupt(
                f"image {name} is corrupt: record {index} length {length}", path=name
            )
        target = into(kind, length) if into is not None and flags & FLAG_RAW else None
        body: bytes | memoryview
        if target is not None:
            assert len(target) == length
            _readinto_exact(stream, target, f"record {index} ({kind!r})", name)
            body = target
        elif flags & FLAG_RAW and isinstance(stream, MappedFile):
            body = stream.read_view(length)
            if len(body) != length:
                raise ImageCorrupt(f"image {name} is corrupt: truncated in record {index}"
                                   f" ({kind!r})", path=name)  # fmt: skip
        else:
            body = _read_exact(stream, length, f"record {index} ({kind!r})", name)
        (want,) = _CSUM.unpack(_read_exact(stream, _CSUM.size, f"record {index} checksum", name))
        h = xxhash.xxh3_64(rhead)
        h.update(body)
        if h.intdigest() != want:
            raise ImageCorrupt(
                f"image {name} is corrupt: record {index} ({kind.decode(errors='replace')})"
                " checksum mismatch",
                path=name,
            )
        raw = bool(flags & FLAG_RAW)
        try:
            payload = body if raw else unpack(body)
        except (ValueError, msgpack.ExtraData) as err:  # pragma: no cover (checksum first)
            raise ImageCorrupt(f"image {name} is corrupt: record {index}: {err}") from err
        if kind == END:
            if not isinstance(payload, dict) or payload.get("records") != index:
                raise ImageCorrupt(f"image {name} is corrupt: record count mismatch", path=name)
            if stream.read(1):
                raise ImageCorrupt(f"image {name} is corrupt: data after the end", path=name)
            return
        yield Record(kind, payload, raw)
        index += 1


def read_file(path: str | os.PathLike[str], magic: bytes) -> list[Record]:
    try:
        with open(path, "rb") as f:
            return list(read_records(f, magic, os.fspath(path)))
    except FileNotFoundError as err:
        raise ImageMissing(f"no image at {path}", path=os.fspath(path)) from err


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file: fsync, rename, fsync the directory.

    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    f = open(tmp, "wb")  # noqa: SIM115  (closed below on every path)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")
    except BaseException:
        f.close()
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
