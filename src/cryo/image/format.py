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

import _operator
import io
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack
import xxhash

from cryo.errors import ImageCorrupt, ImageIncompatible, ImageMissing

# hashlib's BLAKE2b and hmac's compare_digest, taken from the modules that define them:
# importing hashlib or hmac loads OpenSSL's _hashlib, 2-4 ms of a small command's start
# that nothing of an image needs (issue 16; docs/design.md "Start-up")
try:
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover (an interpreter built without it)
    from hashlib import blake2b as _blake2b
blake2b = _blake2b
compare_digest = _operator._compare_digest  # (what hmac.compare_digest falls back to)

FORMAT_VERSION = 1
_FILE_HEADER = struct.Struct("<8sII")
_REC_HEADER = struct.Struct("<4sIQ")
_CSUM = struct.Struct("<Q")
FLAG_RAW = 1
END = b"END "
SEAL = b"SEAL"  # the last record before END: a keyed MAC of all before it (cryo.image.seal)
MAX_RECORD = 1 << 34  # sanity bound on a record's length (16 GiB)


def checksum(data: bytes | memoryview) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True)
class Record:
    """One record of an image file: its kind and payload."""

    kind: bytes
    payload: Any  # decoded msgpack object, or bytes when raw
    raw: bool = False
    # of a SEAL record as read: the BLAKE2b digest of every byte of the file before it
    digest: bytes | None = field(default=None, compare=False)


def kind_name(kind: bytes) -> str:
    """A record kind as messages name it: ``THRD``, ``MM`` (bytes that are not printable
    ASCII as escapes, so that a corrupt kind still reads)."""
    text = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in kind.decode("latin-1"))
    return text.rstrip() or repr(kind)


def content_hash() -> Any:
    """The unkeyed hash a seal covers: BLAKE2b-256 of the file up to the SEAL record."""
    return blake2b(digest_size=32)


Sealer = Callable[[bytes], Any]  # digest of the file so far -> the SEAL record's payload


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

    def __init__(self, stream: IO[bytes], magic: bytes, *, seal: Sealer | None = None) -> None:
        """With ``seal``, everything written is hashed and close() writes a SEAL record
        (``seal(digest)`` is its payload) before END."""
        assert len(magic) == 8
        self.stream = stream
        self.count = 0
        self._seal = seal
        self._hash = content_hash() if seal is not None else None
        self._put(_FILE_HEADER.pack(magic, FORMAT_VERSION, 0))

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        self.stream.write(data)
        if self._hash is not None:
            self._hash.update(data)

    def write(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        self._put(encode_record(kind, payload, raw=raw))
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
        self._put(head)
        self._put(data)
        self._put(_CSUM.pack(csum))
        self.count += 1

    def close(self) -> None:
        if self._seal is not None and self._hash is not None:
            self.stream.write(encode_record(SEAL, self._seal(self._hash.digest())))
            self.count += 1
            self._seal = self._hash = None
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
    stream: Stream, magic: bytes, name: str, *, into: RawInto | None = None,
    digest: bool = False,
) -> Iterator[Record]:
    """Yield the records of a framed file, checking every checksum; END is not yielded.

    ``into(kind, length)`` may return a writable buffer of ``length`` bytes for the body
    of a raw record (the record's payload is then that buffer, checked), or None for a new
    bytes object.  It lets bulk data land in place, or in one reused buffer, without a copy;
    the buffer holds unchecked bytes if the record's checksum turns out wrong.  From a
    MappedFile, raw bodies that no ``into`` takes are slices of the mapping.

    With ``digest``, a SEAL record comes with the digest of every byte before it (see
    :func:`content_hash`); a SEAL is always the last record before END.
    """
    hasher = content_hash() if digest else None
    sealed = False
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
    if hasher is not None:
        hasher.update(head)
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
            _readinto_exact(stream, target, f"record {index} ({kind_name(kind)})", name)
            body = target
        elif flags & FLAG_RAW and isinstance(stream, MappedFile):
            body = stream.read_view(length)
            if len(body) != length:
                raise ImageCorrupt(f"image {name} is corrupt: truncated in record {index}"
                                   f" ({kind_name(kind)})", path=name)  # fmt: skip
        else:
            body = _read_exact(stream, length, f"record {index} ({kind_name(kind)})", name)
        (want,) = _CSUM.unpack(_read_exact(stream, _CSUM.size, f"record {index} checksum", name))
        h = xxhash.xxh3_64(rhead)
        h.update(body)
        if h.intdigest() != want:
            raise ImageCorrupt(
                f"image {name} is corrupt: record {index} ({kind_name(kind)})"
                " checksum mismatch",
                path=name,
            )
        if sealed and kind != END:
            raise ImageCorrupt(f"image {name} is corrupt: record {index} after the seal",
                               path=name)  # fmt: skip
        before = None
        if hasher is not None:
            before = hasher.digest() if kind == SEAL else None
            hasher.update(rhead)
            hasher.update(body)
            hasher.update(_CSUM.pack(want))
        raw = bool(flags & FLAG_RAW)
        try:
            payload = body if raw else unpack(body)
        except Exception as err:  # a sealed edit can hold any bytes: no payload may crash us
            raise ImageCorrupt(f"image {name} is corrupt: record {index}: {err}",
                               path=name) from err  # fmt: skip
        if kind == END:
            if not isinstance(payload, dict) or payload.get("records") != index:
                raise ImageCorrupt(f"image {name} is corrupt: record count mismatch", path=name)
            if stream.read(1):
                raise ImageCorrupt(f"image {name} is corrupt: data after the end", path=name)
            return
        if kind == SEAL:
            sealed = True
            yield Record(kind, payload, raw, digest=before)
        else:
            yield Record(kind, payload, raw)
        index += 1


def read_file(path: str | os.PathLike[str], magic: bytes) -> list[Record]:
    """Every record of a framed file (a SEAL with its digest)."""
    try:
        with open(path, "rb") as f:
            return list(read_records(f, magic, os.fspath(path), digest=True))
    except FileNotFoundError as err:
        raise ImageMissing(f"no image at {path}", path=os.fspath(path)) from err


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: str | os.PathLike[str], *, replace_stale: bool = False) -> int:
    """A new file at ``path``, mode 0600 whatever the umask, never through a symbolic
    link and never an existing file (O_EXCL); with ``replace_stale`` an existing entry
    (a file left by a killed cryo, or a link planted there) is removed first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        if not replace_stale:
            raise
        os.unlink(path)  # (removes a link itself, never what it points to)
        fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: str | os.PathLike[str], *, replace_stale: bool = False) -> IO[bytes]:
    """:func:`create_private` as a buffered binary file."""
    return os.fdopen(create_private(path, replace_stale=replace_stale), "wb")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file (0600, see :func:`create_private`): fsync,
    rename, fsync the directory.

    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    f = open_private(tmp, replace_stale=True)
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
