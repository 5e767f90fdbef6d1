"""A stream image: a checkpoint as framed messages over a socket or a pipe, and a restart
from them, held in memory (no file at rest on either side).  docs/design.md, "Migration".

Every message is one frame::

    frame   := kind[4] length:u64 hlen:u32 meta[hlen] data[length - 4 - hlen] tag[32]
    tag     := HMAC-SHA256(key, seq:u64 || kind || length || hlen || meta || data)

``meta`` is one msgpack map, ``data`` the bulk bytes (page data, a record's body, a side
file).  ``seq`` counts the frames of one direction from 0, so a frame cannot be dropped,
repeated or moved unnoticed.  ``key`` is the direction's session key when the peers share
a secret (cryo.migrate.auth), else a public constant: the tag is then a plain SHA-256
checksum.  Either way the tags are chained (``t' = SHA-256(t || tag)``) into a
*transcript*, and the sender's SEAL frame holds this host's image seal (cryo.image.seal)
over the transcript before it, so a stream read without a shared secret (a pipe, ssh)
is admitted like a directory image: by the host key, or ``--trust-image``.

What a checkpoint sends, in order (frames from cryo.migrate's pre-copy first, if any)::

    PREP {round, tag, runs} + pages      pages copied while the process ran (pre-copy)
    ROND {round, pages, bytes, seconds}  the end of a pre-copy round
    RECD {kind, raw} + body              one record, as in core.img (body: msgpack or raw)
    INHR {tag, present, reset}           the pages of ``tag`` present at the freeze: the
                                         pre-copy pages kept are those among them
                                         (``reset``: none, everything is in PAGE frames)
    PAGE {index, runs} + pages           a page block of the frozen process (its PBLK
                                         record, sent after, says whose it is)
    SIDF {name} + bytes                  a side file
    SEAL {mac, key}                      the host seal over the transcript before it
    END  {frames}                        the number of frames before it
    ABRT {why}                           (instead of END: the checkpoint failed)

The receiver assembles the page blocks: the pre-copy blocks, oldest round first, cut to
the pages still present, then the final blocks; a restart writes blocks in list order, so
a later copy of a page overrides an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import mmap
import os
import socket
import struct
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import IO, Any, cast

from cryo.errors import CryoError, ImageCorrupt
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image import seal
from cryo.image.reader import ImageReader
from cryo.image.sink import PAGE, RESERVED, Runs, Tracking, side_record

MAGIC = b"CRYOSTRM"
VERSION = 1
UNKEYED = b"cryo-stream-v1: no shared secret"
_HDR = struct.Struct("<4sQI")  # kind, length (hlen + meta + data), hlen
_SEQ = struct.Struct("<Q")
TAG_SIZE = 32
MAX_META = 64 << 20
MAX_FRAME = 1 << 31
BIG = 1 << 16  # data at least this large is received into an mmap (page-aligned)


class StreamError(CryoError):
    """The connection failed: closed, reset, timed out."""


class Channel:
    """Bytes both ways: a connected socket, or a pair of fds (pipes, stdio)."""

    def __init__(self, sock: socket.socket | None = None, rfd: int = -1, wfd: int = -1,
                 name: str = "stream") -> None:  # fmt: skip
        self.sock, self.rfd, self.wfd, self.name = sock, rfd, wfd, name
        self.sent = 0
        self.received = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            if self.sock is not None:
                self.sock.sendall(view)
            else:
                while view:
                    n = os.write(self.wfd, view)
                    view = view[n:]
        except (OSError, TimeoutError) as err:
            raise StreamError(f"{self.name}: cannot send: {_why(err)}") from err
        self.sent += len(data)

    def readinto(self, view: memoryview) -> None:
        """Fill ``view`` exactly (StreamError at the end of the stream)."""
        view = view.cast("B")
        got = 0
        try:
            while got < len(view):
                if self.sock is not None:
                    n = self.sock.recv_into(view[got:])
                else:
                    n = os.readv(self.rfd, [view[got:]])
                if n == 0:
                    raise StreamError(f"{self.name}: the connection was closed")
                got += n
        except (OSError, TimeoutError) as err:
            raise StreamError(f"{self.name}: cannot receive: {_why(err)}") from err
        self.received += got

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        for fd in {self.rfd, self.wfd} - {-1}:
            with contextlib.suppress(OSError):
                os.close(fd)


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return err.strerror or str(err) if isinstance(err, OSError) else str(err)


class Framer:
    """Frames both ways over one channel, each authenticated with its direction's key
    and sequence number; the tags of each direction chained into its transcript."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.send_key = self.recv_key = UNKEYED
        self.keyed = False
        self._sseq = self._rseq = 0
        self.sent_transcript = self.recv_transcript = b"\0" * 32
        self.before_last = self.recv_transcript  # the receive transcript before the last frame
        self.frames_received = 0
        self._lock = threading.Lock()

    @property
    def frames_sent(self) -> int:
        return self._sseq

    def set_keys(self, send_key: bytes, recv_key: bytes) -> None:
        self.send_key, self.recv_key, self.keyed = send_key, recv_key, True

    def _mac(self, key: bytes, seq: int, head: bytes) -> Any:
        h = hmac.new(key, digestmod=hashlib.sha256)
        h.update(_SEQ.pack(seq))
        h.update(head)
        return h

    def send(self, kind: bytes, meta: dict[str, Any],
             data: bytes | bytearray | memoryview = b"") -> None:  # fmt: skip
        m = fmt.pack(meta)
        head = _HDR.pack(kind, 4 + len(m) + len(data), len(m))
        with self._lock:
            h = self._mac(self.send_key, self._sseq, head)
            h.update(m)
            if len(data):
                h.update(data)
            tag = h.digest()
            self.channel.write(head + m)
            if len(data):
                self.channel.write(data)
            self.channel.write(tag)
            self._sseq += 1
            self.sent_transcript = hashlib.sha256(self.sent_transcript + tag).digest()

    def recv(self) -> tuple[bytes, dict[str, Any], bytes | bytearray | mmap.mmap]:
        """The next frame: (kind, meta, data), its tag checked (ImageCorrupt if not)."""
        head = bytearray(_HDR.size)
        self.channel.readinto(memoryview(head))
        kind, length, hlen = _HDR.unpack(head)
        if hlen > MAX_META or length > MAX_FRAME or hlen + 4 > length:
            raise ImageCorrupt(f"{self.channel.name}: frame {self._rseq} is malformed"
                               f" (length {length}, meta {hlen})")  # fmt: skip
        m = bytearray(hlen)
        self.channel.readinto(memoryview(m))
        size = length - 4 - hlen
        data: bytearray | mmap.mmap
        if size >= BIG:
            data = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            data = bytearray(size)
        if size:
            self.channel.readinto(memoryview(data))
        tag = bytearray(TAG_SIZE)
        self.channel.readinto(memoryview(tag))
        h = self._mac(self.recv_key, self._rseq, bytes(head))
        h.update(m)
        if size:
            h.update(data)
        if not hmac.compare_digest(h.digest(), bytes(tag)):
            why = ("tampered with, or sent with another secret" if self.keyed
                   else "damaged")  # fmt: skip
            raise ImageCorrupt(f"{self.channel.name}: frame {self._rseq}"
                               f" ({fmt.kind_name(kind)}) does not authenticate:"
                               f" {why}")  # fmt: skip
        self._rseq += 1
        self.frames_received += 1
        self.before_last = self.recv_transcript
        self.recv_transcript = hashlib.sha256(self.recv_transcript + bytes(tag)).digest()
        try:
            meta = fmt.unpack(bytes(m))
        except Exception as err:
            raise ImageCorrupt(f"{self.channel.name}: frame {self._rseq - 1}: {err}") from err
        if not isinstance(meta, dict):
            raise ImageCorrupt(f"{self.channel.name}: frame {self._rseq - 1} has no meta map")
        return kind, meta, data

    def expect(self, *kinds: bytes) -> dict[str, Any]:
        kind, meta, _ = self.recv()
        if kind not in kinds:
            if kind == b"FAIL":
                raise remote_error(meta)
            raise ImageCorrupt(f"{self.channel.name}: {fmt.kind_name(kind)} where"
                               f" {' or '.join(fmt.kind_name(k) for k in kinds)} was expected")
        meta["_kind"] = kind
        return meta


def remote_error(meta: dict[str, Any]) -> CryoError:
    """The error a peer reported in a FAIL frame, with its exit code."""
    err = CryoError(f"the other side: {meta.get('error', 'failed')}")
    code = meta.get("code")
    if isinstance(code, int) and 0 < code < 256:
        err.exit_code = code
    return err


# -- run lists ---------------------------------------------------------------------------


def normalize(runs: Runs) -> Runs:
    """Sorted, merged [[address, length], ...]."""
    out: Runs = []
    for a, n in sorted((int(a), int(n)) for a, n in runs if n > 0):
        if out and a <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], a + n - out[-1][0])
        else:
            out.append([a, n])
    return out


def intersect(a: Runs, b: Runs) -> Runs:
    """The parts of sorted, merged runs ``a`` that lie in sorted, merged ``b``."""
    out: Runs = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][0] + a[i][1], b[j][0] + b[j][1])
        if s < e:
            out.append([s, e - s])
        if a[i][0] + a[i][1] < b[j][0] + b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Runs, b: Runs) -> Runs:
    """The parts of sorted, merged ``a`` not in sorted, merged ``b``."""
    out: Runs = []
    j = 0
    for s0, n in a:
        s, e = s0, s0 + n
        while j < len(b) and b[j][0] + b[j][1] <= s:
            j += 1
        k = j
        while s < e and k < len(b) and b[k][0] < e:
            if b[k][0] > s:
                out.append([s, b[k][0] - s])
            s = max(s, b[k][0] + b[k][1])
            k += 1
        if s < e:
            out.append([s, e - s])
    return out


def pieces(runs: Runs, keep: Runs) -> list[tuple[int, int, int]]:
    """(address, length, offset in the data) of the parts of a block's ``runs`` (in data
    order) that lie in sorted, merged ``keep``."""
    import bisect

    starts = [a for a, _ in keep]
    out = []
    off = 0
    for a, n in runs:
        e = a + n
        k = max(bisect.bisect_right(starts, a) - 1, 0)
        while k < len(keep) and keep[k][0] < e:
            s2, e2 = max(a, keep[k][0]), min(e, keep[k][0] + keep[k][1])
            if s2 < e2:
                out.append((s2, e2 - s2, off + s2 - a))
            k += 1
        off += n
    return out


# -- the sink ----------------------------------------------------------------------------


class StreamSink:
    """The engine's Sink that sends a checkpoint over ``framer`` (see the module doc).

    ``on_commit`` runs once everything is sent (the migration waits there for the other
    side's answer); ``tracking``: a pre-copy's (cryo.migrate.precopy)."""

    wants_checksum = False

    def __init__(self, framer: Framer, *, path: str = "stream",
                 tracking: Tracking | None = None,
                 on_commit: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.framer = framer
        self.path = path
        self.stored_bytes = 0
        self.tracking = tracking
        self.on_commit = on_commit
        self.blocks = 0
        self._offset = PAGE
        self._sides: dict[str, io.BytesIO] = {}

    def side_file(self, name: str) -> IO[bytes]:
        if not name or "/" in name or name.startswith(".") or name in RESERVED \
                or name in self._sides:  # fmt: skip
            raise CryoError(f"bad or repeated side file name {name!r}")
        f = _Side()
        self._sides[name] = f
        return cast("IO[bytes]", f)

    def has_side(self, name: str) -> bool:
        return name in self._sides

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        body = bytes(payload) if raw else fmt.pack(payload)
        self.framer.send(b"RECD", {"kind": kind, "raw": raw}, body)

    def write_block(self, data: memoryview, runs: Runs,
                    csum: int | None = None) -> dict[str, Any]:  # fmt: skip
        if csum is None:
            csum = fmt.checksum(data)
        self.framer.send(b"PAGE", {"index": self.blocks, "runs": runs}, data)
        meta = {"index": self.blocks, "offset": self._offset, "stored": len(data),
                "raw": len(data), "codec": "none", "csum": csum, "runs": runs}  # fmt: skip
        self._offset += (len(data) + PAGE - 1) // PAGE * PAGE
        self.blocks += 1
        self.stored_bytes += len(data)
        return meta

    def commit(self) -> None:
        self.record(b"MADE", {"uid": os.geteuid(), "gid": os.getegid()})
        for name, f in self._sides.items():
            data = f.getvalue()
            self.framer.send(b"SIDF", {"name": name}, data)
            h = fmt.content_hash()
            h.update(data)
            self.record(b"SIDE", side_record(name, len(data), h.digest()))
        sealer = seal.sealer()
        if sealer is not None:
            self.framer.send(fmt.SEAL, sealer(self.framer.sent_transcript))
        self.framer.send(fmt.END, {"frames": self.framer.frames_sent})
        if self.on_commit is not None:
            self.on_commit()

    def abort(self) -> None:
        with contextlib.suppress(CryoError, OSError):
            self.framer.send(b"ABRT", {"why": "the checkpoint failed"})


class _Side(io.BytesIO):
    """A side file kept in memory until commit (its writer's close keeps the data:
    spmf writes each saved file in a ``with``)."""

    def close(self) -> None:
        pass


# -- the source --------------------------------------------------------------------------


class StreamSource(ImageReader):
    """The engine's ImageSource for a stream, received whole into memory first: every
    frame authenticated on arrival, then the records read and the page blocks assembled.

    ``authenticated``: the frames were keyed with a secret both sides proved they hold
    (cryo.migrate.auth), which vouches for the image in place of this host's seal."""

    what = "stream image"

    def __init__(self, framer: Framer, *, path: str = "stream", authenticated: bool = False,
                 on_frame: Callable[[bytes, dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.authenticated = authenticated
        self.core_records: list[fmt.Record] = []
        self.records: dict[bytes, list[Any]] = defaultdict(list)
        self._sides: dict[str, IO[bytes]] = {}
        self.running_claim: Any = None
        self._side_data: dict[str, bytes] = {}
        self._prep: list[tuple[tuple[str, int], Runs, Any]] = []
        self._final: dict[int, tuple[Runs, Any]] = {}
        self._present: dict[tuple[str, int], tuple[Runs, bool]] = {}
        self._data: list[tuple[Any, int]] = []
        self.blocks: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.bytes_received = 0
        self.keep_data = False  # close() keeps the pages (for a copy written after)
        self._receive(framer, on_frame)
        self.head = self._check_head()
        self._assemble()

    def _receive(self, framer: Framer,
                 on_frame: Callable[[bytes, dict[str, Any]], None] | None) -> None:  # fmt: skip
        while True:
            kind, meta, data = framer.recv()
            self.bytes_received += len(data)
            if on_frame is not None:
                on_frame(kind, meta)
            if kind == b"RECD":
                rkind, raw = meta.get("kind"), bool(meta.get("raw"))
                if not isinstance(rkind, bytes) or len(rkind) != 4:
                    raise self.corrupt("a record without a kind")
                payload = bytes(data) if raw else fmt.unpack(bytes(data))
                self.core_records.append(fmt.Record(rkind, payload, raw))
                if rkind != R.PBLK:
                    self.records[rkind].append(payload)
                else:
                    self._pblk(payload)
            elif kind == b"PREP":
                tag = _tag(meta.get("tag"))
                self._prep.append((tag, self._runs(meta, data), data))
            elif kind == b"PAGE":
                index = meta.get("index")
                if not isinstance(index, int) or index in self._final:
                    raise self.corrupt("a page block without its index, or twice")
                self._final[index] = (self._runs(meta, data), data)
            elif kind == b"INHR":
                present = normalize(_checked_runs(meta.get("present"), self))
                self._present[_tag(meta.get("tag"))] = (present, bool(meta.get("reset")))
            elif kind == b"ROND":
                self.rounds.append(meta)
            elif kind == b"SIDF":
                name = meta.get("name")
                if not isinstance(name, str) or name in self._side_data:
                    raise self.corrupt("a side file without a name, or twice")
                self._side_data[name] = bytes(data)
            elif kind == fmt.SEAL:
                self.core_records.append(fmt.Record(fmt.SEAL, meta, digest=framer.before_last))
            elif kind == fmt.END:
                if meta.get("frames") != framer.frames_received - 1:
                    raise self.corrupt("frames are missing")
                return
            elif kind == b"ABRT":
                raise StreamError(f"{self.path}: the sender gave up: {meta.get('why')}")
            elif kind == b"FAIL":
                raise remote_error(meta)
            else:
                raise self.corrupt(f"unknown frame {fmt.kind_name(kind)}")

    def _runs(self, meta: dict[str, Any], data: Any) -> Runs:
        runs = _checked_runs(meta.get("runs"), self)
        if sum(n for _, n in runs) != len(data):
            raise self.corrupt("a page block's runs do not add up to its data")
        return runs

    def _pblk(self, rec: Any) -> None:
        if not isinstance(rec, dict) or not isinstance(rec.get("index"), int):
            raise self.corrupt("a PBLK record without its index")
        self.records[b"_PBLK"].append(rec)

    def _assemble(self) -> None:
        """Pre-copy blocks (cut to the pages present at the freeze), then final blocks."""
        for tag, runs, data in self._prep:
            present, reset = self._present.get(tag, ([], True))
            if reset:
                continue
            kept = pieces(runs, present)
            if sum(n for _, n, _ in kept) == len(data):
                self._add({tag[0]: tag[1]}, runs, data, 0)
                continue
            for cut, off, size in _contiguous(kept):  # a block cut: its pieces, in place
                self._add({tag[0]: tag[1]}, [list(r) for r in cut], data, off, size)
        for rec in self.records.pop(b"_PBLK", []):
            got = self._final.pop(rec["index"], None)
            if got is None:
                raise self.corrupt(f"pages block {rec['index']} is missing")
            runs, data = got
            if runs != rec.get("runs") or rec.get("raw") != len(data):
                raise self.corrupt(f"pages block {rec['index']} does not match its record")
            self._add({k: rec[k] for k in ("pid", "obj") if k in rec}, runs, data, 0)
        if self._final:
            raise self.corrupt(f"pages block {min(self._final)} has no PBLK record")

    def _add(self, tag: dict[str, int], runs: Runs, data: Any, off: int,
             size: int | None = None) -> None:  # fmt: skip
        raw = len(data) - off if size is None else size
        i = len(self.blocks)
        self.blocks.append({"index": i, "offset": PAGE, "stored": raw, "raw": raw,
                            "codec": "none", "csum": 0, "runs": runs, **tag})  # fmt: skip
        self._data.append((data, off))

    # -- ImageSource ---------------------------------------------------------------------

    def verify(self) -> None:
        """Every frame was authenticated on arrival; the blocks add up."""
        for b in self.blocks:
            if sum(n for _, n in b["runs"]) != b["raw"]:
                raise self.corrupt(f"pages block {b['index']} runs do not add up")

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        data, off = self._data[b["index"]]
        if isinstance(data, bytes):  # (a writable buffer for ctypes)
            data = bytearray(data)
            self._data[b["index"]] = (data, off)
        return data, off

    def side_file(self, name: str) -> IO[bytes]:
        if name in self._sides:
            f = self._sides[name]
            f.seek(0)
            return f
        sides = {s.get("name"): s for s in self.raw(b"SIDE") if isinstance(s, dict)}
        if name not in self._side_data or name not in sides:
            raise self.corrupt(f"side file {name} is missing")
        data = self._side_data[name]
        h = fmt.content_hash()
        h.update(data)
        want = sides[name]
        if len(data) != want.get("size") or not isinstance(want.get("digest"), bytes) \
                or not hmac.compare_digest(h.digest(), want["digest"]):  # fmt: skip
            raise self.corrupt(f"side file {name} does not match its digest")
        fd = os.memfd_create(f"cryo-side:{name}", os.MFD_CLOEXEC)
        f = os.fdopen(fd, "w+b")
        f.write(data)
        f.flush()
        f.seek(0)
        self._sides[name] = f
        return f

    def sealed_files(self) -> list[tuple[str, list[fmt.Record]]]:
        if self.authenticated:  # the shared secret vouches for every frame
            return []
        return [(self.path, self.core_records)]

    def owner_files(self) -> list[str]:
        return []

    def identity(self) -> str:
        """Which checkpoint this is (cryo.image.running): its host, time and processes."""
        h = self.head
        text = f"stream\0{h.get('hostname')}\0{h.get('created')!r}\0{h.get('pids')}"
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def keep(self, path: str, *, force: bool = False) -> str:
        """Write a directory image of what was received (``cryo receive --keep``)."""
        from cryo.image.sink import DirSink

        sink = DirSink(path, force=force)
        try:
            for rec in self.core_records:
                if rec.kind not in (R.PBLK, b"MADE", b"SIDE", fmt.SEAL):
                    sink.record(rec.kind, rec.payload, raw=rec.raw)
            for name, data in self._side_data.items():
                with sink.side_file(name) as f:
                    f.write(data)
            for b in self.blocks:
                data, off = self._data[b["index"]]
                meta = sink.write_block(memoryview(data)[off : off + b["raw"]], b["runs"])
                meta.update({k: b[k] for k in ("pid", "obj") if k in b})
                sink.record(R.PBLK, meta)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        return sink.path

    def close(self) -> None:
        self._close_sides()
        if self.keep_data:
            return
        for data, _ in self._data:
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError):
                    data.close()
        self._data.clear()
        for _, _, data in self._prep:
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError, ValueError):
                    data.close()
        self._prep.clear()


def _tag(t: Any) -> tuple[str, int]:
    if isinstance(t, list | tuple) and len(t) == 2 and t[0] in ("pid", "obj") \
            and isinstance(t[1], int):  # fmt: skip
        return (str(t[0]), int(t[1]))
    raise ImageCorrupt(f"a bad page tag {t!r}")


def _checked_runs(runs: Any, src: StreamSource) -> Runs:
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and x >= 0
                                                        for x in r) for r in runs):
        raise src.corrupt("malformed runs")
    return cast("Runs", runs)


def _contiguous(kept: list[tuple[int, int, int]]) -> list[tuple[list[tuple[int, int]], int, int]]:
    """Group pieces whose data follow one another: (runs, data offset, size)."""
    out: list[tuple[list[tuple[int, int]], int, int]] = []
    for a, n, off in kept:
        if out and out[-1][1] + out[-1][2] == off:
            runs, start, size = out[-1]
            runs.append((a, n))
            out[-1] = (runs, start, size + n)
        else:
            out.append(([(a, n)], off, n))
    return out
