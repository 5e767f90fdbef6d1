"""Reading an image: every record and every page block is checked before use.

:class:`ImageReader` is what the two readers share (the directory :class:`Image` here,
the store's ``VersionImage``): core.img read and indexed, the head checked, records by
kind and pid, side files checked against their sealed digest, the schema
(cryo.image.schema), and the helpers of their verify passes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable
from typing import IO, Any, Protocol

import xxhash

from cryo.errors import ImageCorrupt, ImageIncompatible, ImageMissing
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.sink import PAGES_HEADER


class ImageSource(Protocol):
    """What a restart reads: a directory image (:class:`Image`) or a version of a store."""

    path: str
    head: dict[str, Any]
    blocks: list[dict[str, Any]]

    def one(self, kind: bytes, pid: int) -> dict[str, Any]: ...
    def raw(self, kind: bytes) -> list[Any]: ...
    def check(self) -> None: ...
    def verify(self) -> None: ...
    def block_data(self, b: dict[str, Any]) -> tuple[object, int]: ...
    def side_file(self, name: str) -> IO[bytes]: ...
    def side_path(self, name: str) -> str: ...
    def sealed_files(self) -> list[tuple[str, list[fmt.Record]]]: ...
    def owner_files(self) -> list[str]: ...
    def close(self) -> None: ...


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes at ``offset`` (fewer only at the end of the file)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def run_parallel(work: Callable[[int], None], threads: int) -> None:
    """``work(k)`` for k in 0..threads-1, k = 0 in this thread; every thread is joined,
    and the first exception of any of them is raised (a worker that dies must fail the
    whole pass, never leave its share unchecked)."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as err:  # re-raised below
            errors.append(err)

    pool = [threading.Thread(target=run, args=(k,)) for k in range(1, threads)]
    for t in pool:
        t.start()
    run(0)
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def pages_header_ok(head: bytes | memoryview) -> bool:
    """The header page of a page file (pages.img, pages-K.img) of this format."""
    if len(head) < PAGES_HEADER.size:
        return False
    return PAGES_HEADER.unpack_from(head, 0) == (R.PAGES_MAGIC, fmt.FORMAT_VERSION)


def open_nofollow(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


class ImageReader:
    """The records of an image directory's core.img, checked and indexed."""

    what = "image"  # how messages name it

    def __init__(self, path: str, missing: str) -> None:
        self.path = path
        core = os.path.join(path, "core.img")
        if not os.path.exists(core):
            raise ImageMissing(missing, path=path)
        self.core_records = fmt.read_file(core, R.CORE_MAGIC)
        self.records: dict[bytes, list[Any]] = defaultdict(list)
        for rec in self.core_records:
            self.records[rec.kind].append(rec.payload)
        self.head = self._check_head()
        self._sides: dict[str, IO[bytes]] = {}
        self.running_claim: Any = None  # cryo.image.running: held until close()

    def _check_head(self) -> dict[str, Any]:
        """The HEAD record of ``self.records``, of this machine's architecture."""
        heads = self.records.get(R.HEAD)
        if not heads or not isinstance(heads[0], dict):
            raise self.corrupt("no HEAD record")
        head: dict[str, Any] = heads[0]
        machine = os.uname().machine  # (platform.machine(), without importing platform)
        if head.get("arch") != machine:
            raise ImageIncompatible(f"{self.what} {self.path} is for {head.get('arch')},"
                                    f" this machine is {machine}",
                                    path=self.path)  # fmt: skip
        return head

    def corrupt(self, why: str, path: str | None = None) -> ImageCorrupt:
        return ImageCorrupt(f"{self.what} {self.path} is corrupt: {why}", path=path or self.path)

    def one(self, kind: bytes, pid: int) -> dict[str, Any]:
        for payload in self.records.get(kind, []):
            if isinstance(payload, dict) and payload.get("pid") == pid:
                return dict(payload)
        raise self.corrupt(f"no {kind.decode(errors='replace').strip()} record for pid {pid}")

    def raw(self, kind: bytes) -> list[Any]:
        return list(self.records.get(kind, []))

    def check(self) -> None:
        """Every record against the image grammar (cryo.image.schema): types, ranges,
        references between records.  Before any record is used."""
        from cryo.image import schema

        schema.check(self)

    # -- side files ----------------------------------------------------------------

    def side_file(self, name: str) -> IO[bytes]:
        """A side file of the image, open for reading, checked against the digest its
        SIDE record holds (sealed with core.img); kept open until close()."""
        if name in self._sides:
            f = self._sides[name]
            f.seek(0)
            return f
        sides = {s.get("name"): s for s in self.raw(b"SIDE") if isinstance(s, dict)}
        if sides and name not in sides:
            raise self.corrupt(f"side file {name} is not part of it")
        path = os.path.join(self.path, name)
        try:
            f = os.fdopen(open_nofollow(path), "rb")
        except FileNotFoundError as err:
            raise self.corrupt(f"side file {name} is missing") from err
        except OSError as err:
            raise self.corrupt(f"side file {name}: {err.strerror}") from err
        if name in sides:
            h = fmt.content_hash()
            size = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
            want = sides[name]
            if size != want.get("size") or not isinstance(want.get("digest"), bytes) \
                    or not fmt.compare_digest(h.digest(), want["digest"]):  # fmt: skip
                f.close()
                raise self.corrupt(f"side file {name} does not match its digest")
            f.seek(0)
        self._sides[name] = f
        return f

    def side_path(self, name: str) -> str:
        """A path that reads the checked side file (its open fd: nothing can swap it)."""
        return f"/proc/self/fd/{self.side_file(name).fileno()}"

    # -- trust (cryo.image.trust) ----------------------------------------------------

    def sealed_files(self) -> list[tuple[str, list[fmt.Record]]]:
        """Every framed file the restart trusts, with its records as read."""
        return [(os.path.join(self.path, "core.img"), self.core_records)]

    def owner_files(self) -> list[str]:
        """The files whose owner is the image's owner (cryo.image.trust)."""
        return [os.path.join(self.path, "core.img")]

    def _close_sides(self) -> None:
        from cryo.image import running

        running.release(self)
        for f in self._sides.values():
            with contextlib.suppress(OSError):
                f.close()
        self._sides.clear()


# a block, a buffer, where in it the part's first byte is, the part's first byte in the
# block's raw data and its length (a whole block: 0 and b["raw"])
BlockData = tuple[dict[str, Any], object, int, int, int]
POOL = 3  # buffers of a deferred image: read ahead, being written, spare
# A block is read, checked and handed over in parts of this size: the buffers stay in the
# CPU's cache from the read to the check to the copy into the process (a warm 1 GiB read,
# xxh3 and UFFDIO_COPY in one thread: 0.50 s in 4 MiB parts, 0.73 s in 64 MiB ones), and
# three buffers of it are quick to populate (3 x 64 MiB took 0.07-0.13 s).  The process
# a part goes into stays frozen until the last part's checksum is checked.
PART = 4 << 20


class _Pool:
    """Reusable block buffers, at most ``count`` of ``size`` bytes, made on first use
    (touched once: fresh memory is slow to fault in on this VM, reused memory is not)."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, max(size, mmap.PAGESIZE)
        self.free: list[mmap.mmap] = []
        self.made: list[mmap.mmap] = []
        self.cv = threading.Condition()

    def get(self, stop: threading.Event) -> mmap.mmap | None:
        with self.cv:
            while not self.free and len(self.made) >= self.count and not stop.is_set():
                self.cv.wait()
            if stop.is_set():
                return None
            if self.free:
                return self.free.pop()
            buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                            | getattr(mmap, "MAP_POPULATE", 0x8000))  # fmt: skip
            with contextlib.suppress(OSError):  # a helper forked by a restart needs none
                buf.madvise(getattr(mmap, "MADV_DONTFORK", 10))
            self.made.append(buf)
            return buf

    def put(self, buf: mmap.mmap) -> None:
        with self.cv:
            self.free.append(buf)
            self.cv.notify_all()

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def close(self) -> None:
        for buf in self.made:
            with contextlib.suppress(BufferError):
                buf.close()
        self.made.clear()
        self.free.clear()


class ReadAhead:
    """Blocks read ahead by a thread into a few reused buffers, in the order a restart
    will write them (what both readers share: the directory :class:`Image` and the
    store's ``VersionImage``).  A subclass says which blocks go that way and how one is
    read (and checked); the others are ``block_data``'s."""

    blocks: list[dict[str, Any]]

    def _init_read_ahead(self) -> None:
        self._pool: _Pool | None = None
        # the blocks a reader thread reads ahead (expect), in the order they will be used
        self._plan: collections.deque[int] = collections.deque()
        # the parts not yet read: (block, first byte, the block's running checksum state)
        self._todo: collections.deque[tuple[dict[str, Any], int, list[Any]]] = (
            collections.deque())
        self._ready: queue.Queue[tuple[mmap.mmap | None, BaseException | None, int, int]] = (
            queue.Queue())
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def _ahead(self, b: dict[str, Any]) -> bool:
        """Is block ``b`` read ahead (else by block_data when it is asked for)?"""
        return False

    def _ahead_size(self, b: dict[str, Any]) -> int:
        return int(b["raw"])

    def _read_ahead(self, b: dict[str, Any], view: memoryview) -> None:
        raise NotImplementedError

    def _part_size(self, b: dict[str, Any]) -> int:
        """How much of block ``b`` is read ahead at a time (by default all of it)."""
        return self._ahead_size(b)

    def _read_part(self, b: dict[str, Any], view: memoryview, start: int,
                   state: list[Any]) -> None:  # fmt: skip
        """Read bytes [start, start + len(view)) of block ``b`` into ``view`` (``state``:
        what the block's parts share, empty at its first); the last part checks the
        whole block.  By default, a part is the whole block."""
        self._read_ahead(b, view)

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        raise NotImplementedError

    def _buffers(self) -> _Pool:
        if self._pool is None:
            size = max((min(self._part_size(b), self._ahead_size(b)) for b in self.blocks
                        if self._ahead(b)), default=0)  # fmt: skip
            self._pool = _Pool(POOL, (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE)
        return self._pool

    def expect(self, blocks: Iterable[dict[str, Any]]) -> None:
        """The order in which the caller will ask for ``blocks`` (:meth:`stream_blocks`):
        from the first one asked for, a thread reads and checks them ahead into the
        pool's few buffers while the caller writes the ones before (across processes
        too).  A block asked for out of that order is read there and then.  Call
        :meth:`pause` before forking: a fork must not copy a thread in the middle of
        its work (the child could inherit a lock held forever)."""
        self._stop_reader()
        plan = [b for b in blocks if self._ahead(b)]
        self._plan = collections.deque(b["index"] for b in plan)
        self._todo = collections.deque((b, 0, []) for b in plan)

    def pause(self) -> None:
        """No reader thread runs when this returns (what it read ahead stays ready); the
        next :meth:`stream_blocks` starts it again."""
        if self._reader is not None:
            self._stop.set()
            if self._pool is not None:
                self._pool.wake()
            self._reader.join()
            self._reader = None

    def _start_reader(self) -> None:
        pool = self._buffers()
        q, todo = self._ready, self._todo
        stop = self._stop = threading.Event()

        def reader() -> None:
            while todo:
                buf = pool.get(stop)
                if buf is None:
                    return
                b, start, state = todo.popleft()
                n = min(self._part_size(b), self._ahead_size(b) - start)
                if start + n < self._ahead_size(b):  # the next part first in line
                    todo.appendleft((b, start + n, state))
                try:
                    self._read_part(b, memoryview(buf)[:n], start, state)
                except BaseException as err:  # handed to the caller with its block
                    pool.put(buf)
                    todo.clear()
                    q.put((None, err, 0, 0))
                    return
                q.put((buf, None, start, n))

        self._reader = threading.Thread(target=reader, name="cryo-pages", daemon=True)
        self._reader.start()

    def stream_blocks(self, blocks: Iterable[dict[str, Any]]
                      ) -> Generator[BlockData, None, None]:  # fmt: skip
        """The data of ``blocks`` in order, part after part (:data:`BlockData`; a block
        read ahead comes in parts of :meth:`_part_size`, the others whole), the buffer
        valid until the next part is asked for.  A part's bytes are checked only with
        its block's last part: the caller must not let anyone use them before (a
        restart keeps its processes frozen until every block is checked)."""
        for b in blocks:
            if self._plan and self._plan[0] == b["index"]:
                self._plan.popleft()
                size, got = self._ahead_size(b), 0
                while got < size or not got:
                    if self._reader is None and self._todo:  # (first use, after a pause)
                        self._start_reader()
                    buf, err, start, n = self._ready.get()
                    if err is not None:
                        self._plan.clear()
                        raise err
                    assert buf is not None and start == got
                    try:
                        yield b, buf, 0, start, n
                    finally:
                        self._buffers().put(buf)
                    got += n
                    if not n:
                        break
            else:
                owner, off = self.block_data(b)
                yield b, owner, off, 0, int(b["raw"])
                del owner

    def _stop_reader(self) -> None:
        self.pause()
        while not self._ready.empty():
            buf, _err, _start, _n = self._ready.get_nowait()
            if buf is not None and self._pool is not None:
                self._pool.put(buf)
        self._plan.clear()
        self._todo.clear()

    def _close_read_ahead(self) -> None:
        self._stop_reader()
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _mostly_uncached(fd: int) -> bool | None:
    """Is less than 90% of the file in the page cache (None: cachestat cannot tell)?"""
    from cryo.linux.fdcalls import cached_pages

    try:
        have = cached_pages(fd)
    except OSError:
        return None
    return have < 0.9 * (os.fstat(fd).st_size // mmap.PAGESIZE)


class Image(ReadAhead, ImageReader):
    """A directory image (docs/image-format.md).

    With ``defer_pages`` (what a restart uses) :meth:`verify` checks only where the page
    blocks are; each block is read and its checksum checked when it is used
    (:meth:`stream_blocks`, :meth:`block_data`), and :meth:`verify_rest` checks those
    no one used.  The data goes through a few reused buffers, never a mapping of
    pages.img: one pass over the image, and memory bounded whatever its size."""

    def __init__(self, path: str, *, defer_pages: bool = False) -> None:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise ImageMissing(f"no image at {path}", path=path)
        super().__init__(path, f"{path} holds no image (no core.img)")
        self.blocks: list[dict[str, Any]] = self.records.get(R.PBLK, [])
        self._pages: mmap.mmap | None = None
        self._zstd: Any = None  # the decompressor, made for the first compressed block
        self.defer_pages = defer_pages
        self._fd = -1  # pages.img, of a deferred image
        # some of it was not in the page cache: leave none of it there (None: not known
        # yet; asked of cachestat(2) once, else found by a read the cache could not give)
        self._cold: bool | None = None
        self._checked: set[int] = set()  # indices of the blocks read and checked
        self._init_read_ahead()

    def _dctx(self) -> Any:
        if self._zstd is None:
            self._zstd = _zstandard().ZstdDecompressor()
        return self._zstd

    def owner_files(self) -> list[str]:
        return [*super().owner_files(), os.path.join(self.path, "pages.img")]

    @property
    def pages(self) -> mmap.mmap:
        if self._pages is None:
            path = os.path.join(self.path, "pages.img")
            try:
                fd = open_nofollow(path)
            except FileNotFoundError as err:
                raise self.corrupt("pages.img is missing") from err
            try:
                size = os.fstat(fd).st_size
                if size < 4096:
                    raise self.corrupt("pages.img is truncated")
                # a private writable mapping: never written, but it lets ctypes take its address
                self._pages = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            finally:
                os.close(fd)
            if not pages_header_ok(self._pages[: PAGES_HEADER.size]):
                raise self.corrupt("bad pages.img header")
        return self._pages

    def verify(self, threads: int = 2) -> None:
        """Check every page block's bounds and checksum (records were checked on reading);
        of a deferred image, only the bounds (the checksums when the blocks are read).

        Blocks are read and hashed by ``threads`` threads: on a cold image the reads
        overlap, which measured faster than one sequential pass."""
        if self.defer_pages:
            self._verify_bounds()
            return
        pages = self.pages
        for b in self.blocks:
            if b["offset"] + b["stored"] > len(pages):
                raise self.corrupt(f"pages block {b['index']} is truncated")
        bad: list[int] = []
        fd = open_nofollow(os.path.join(self.path, "pages.img"))

        def work(k: int) -> None:
            # large reads into a private buffer: on a cold image this is the fastest way
            # in (mmap faults read a little at a time), and it leaves the page cache warm
            # for the process_vm_writev that follows
            buf = bytearray(max((b["stored"] for b in self.blocks), default=0))
            for b in self.blocks[k::threads]:
                view = memoryview(buf)[: b["stored"]]
                got = pread_full(fd, view, b["offset"])
                if got != len(view) or fmt.checksum(view) != b["csum"]:
                    bad.append(b["index"])

        try:
            run_parallel(work, threads)
        except OSError as err:
            raise self.corrupt(f"pages.img cannot be read: {err.strerror}") from err
        finally:
            os.close(fd)
        if bad:
            raise self.corrupt(f"pages block {min(bad)} checksum mismatch")
        for b in self.blocks:
            if sum(r[1] for r in b["runs"]) != b["raw"]:
                raise self.corrupt(f"pages block {b['index']} runs do not add up")

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        """Where the raw bytes of block ``b`` are: a writable buffer (keep it alive while
        they are used) and the offset of the block's first byte in it.  Of a deferred
        image, a new buffer read from pages.img and checked."""
        if self.defer_pages:
            buf = bytearray(b["stored"])
            self._read_checked(b, memoryview(buf))
            return self._decoded(b, buf), 0
        if b["codec"] == "none":
            return self.pages, b["offset"]
        if b["codec"] == "zstd":
            view = memoryview(self.pages)[b["offset"] : b["offset"] + b["stored"]]
            zstandard = _zstandard()
            try:
                data = self._dctx().decompress(view, max_output_size=b["raw"])
            except zstandard.ZstdError as err:
                raise self.corrupt(f"pages block {b['index']}: {err}") from err
            if len(data) != b["raw"]:
                raise self.corrupt(f"pages block {b['index']} holds {len(data)} bytes,"
                                   f" not {b['raw']}")  # fmt: skip
            return bytearray(data), 0
        raise ImageIncompatible(f"image {self.path}: unknown codec {b['codec']}")

    # -- a deferred image: each block read and checked when it is used -------------------

    def _verify_bounds(self) -> None:
        path = os.path.join(self.path, "pages.img")
        try:
            self._fd = fd = open_nofollow(path)
        except FileNotFoundError as err:
            raise self.corrupt("pages.img is missing") from err
        size = os.fstat(fd).st_size
        if size < 4096:
            raise self.corrupt("pages.img is truncated")
        if not pages_header_ok(os.pread(fd, PAGES_HEADER.size, 0)):
            raise self.corrupt("bad pages.img header")
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for b in self.blocks:
            if b["offset"] + b["stored"] > size:
                raise self.corrupt(f"pages block {b['index']} is truncated")
            if sum(r[1] for r in b["runs"]) != b["raw"]:
                raise self.corrupt(f"pages block {b['index']} runs do not add up")
            if b["codec"] not in ("none", "zstd"):
                raise ImageIncompatible(f"image {self.path}: unknown codec {b['codec']}")

    def _read_checked(self, b: dict[str, Any], view: memoryview) -> None:
        """Read block ``b`` (its stored bytes) into ``view`` and check its checksum."""
        self._read_stored(b, view, b["offset"])
        if fmt.checksum(view) != b["csum"]:
            raise self.corrupt(f"pages block {b['index']} checksum mismatch")
        self._checked.add(b["index"])

    def _read_stored(self, b: dict[str, Any], view: memoryview, off: int) -> None:
        """Read ``len(view)`` bytes of block ``b`` at ``off`` in pages.img.

        What the page cache holds is copied from it (RWF_NOWAIT); the rest is read from
        the disk and dropped from the cache again, so that a cold image leaves the page
        cache as it was (a restart needs the restored memory, not the image's too)."""
        fd, n = self._fd, len(view)
        if self._cold is None:
            self._cold = _mostly_uncached(fd)
        try:
            cached = os.preadv(fd, [view], off, os.RWF_NOWAIT)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                raise self.corrupt(f"pages.img cannot be read: {err.strerror}") from err
            cached = 0
        got = cached
        if cached < n:
            # (a page the kernel marked for read-ahead also stops a RWF_NOWAIT read: only
            # cachestat's count says whether the image was in the cache)
            if self._cold is None:
                self._cold = True
            try:
                got += pread_full(fd, view[cached:], off + cached)
            except OSError as err:
                raise self.corrupt(f"pages.img cannot be read: {err.strerror}") from err
        if self._cold:  # (read ahead by the kernel, or read now: both from the disk)
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        if got != n:
            raise self.corrupt(f"pages block {b['index']} is truncated")

    def _ahead(self, b: dict[str, Any]) -> bool:
        return self.defer_pages and b["codec"] == "none"

    def _ahead_size(self, b: dict[str, Any]) -> int:
        return int(b["stored"])

    def _read_ahead(self, b: dict[str, Any], view: memoryview) -> None:
        self._read_checked(b, view)

    def _part_size(self, b: dict[str, Any]) -> int:
        return PART

    def _read_part(self, b: dict[str, Any], view: memoryview, start: int,
                   state: list[Any]) -> None:  # fmt: skip
        if start == 0 and len(view) == b["stored"]:
            self._read_checked(b, view)
            return
        self._read_stored(b, view, b["offset"] + start)
        if not state:  # the same digest as fmt.checksum's of the whole block
            state.append(xxhash.xxh3_64())
        state[0].update(view)
        if start + len(view) == b["stored"]:
            if state[0].intdigest() != b["csum"]:
                raise self.corrupt(f"pages block {b['index']} checksum mismatch")
            self._checked.add(b["index"])

    def cached(self) -> bool:
        """Is pages.img (of a deferred image, once validated) in the page cache, as far
        as cachestat(2) can tell?  (What a cold restart reads, it drops again.)"""
        if self._fd < 0:
            return False
        if self._cold is None:
            self._cold = _mostly_uncached(self._fd)
        return self._cold is False

    def read_checked_part(self, b: dict[str, Any], view: memoryview, start: int,
                          state: list[Any]) -> None:  # fmt: skip
        """Bytes [start, start + len(view)) of block ``b`` (stored uncompressed) read
        into ``view``; ``state`` is what the block's parts share (empty at the first), and
        its last part checks the block (ImageCorrupt).  Safe from any thread: the
        restart's Fills workers read leaf processes' blocks so (engine/memory.py)."""
        self._read_part(b, view, start, state)

    def _decoded(self, b: dict[str, Any], stored: bytearray) -> bytearray:
        if b["codec"] == "none":
            return stored
        zstandard = _zstandard()
        try:
            data = self._dctx().decompress(stored, max_output_size=b["raw"])
        except zstandard.ZstdError as err:
            raise self.corrupt(f"pages block {b['index']}: {err}") from err
        if len(data) != b["raw"]:
            raise self.corrupt(f"pages block {b['index']} holds {len(data)} bytes,"
                               f" not {b['raw']}")  # fmt: skip
        return bytearray(data)

    def verify_rest(self) -> None:
        """Every block no one has read yet, read and checked (a restart lets its
        processes go only once every block of the image has been checked)."""
        self._stop_reader()
        for b in self.blocks:
            if self.defer_pages and b["index"] not in self._checked:
                self.block_data(b)

    def close(self) -> None:
        self._close_sides()
        self._stop_reader()
        if self._fd >= 0:
            if self._cold:  # what the kernel read ahead of the last block too
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(self._fd)
            self._fd = -1
        self._close_read_ahead()
        if self._pages is not None:
            with contextlib.suppress(BufferError):
                self._pages.close()
            self._pages = None


def _zstandard() -> Any:
    """zstandard, imported for the first compressed block (it imports platform: 3-4 ms
    of every restart of an uncompressed image)."""
    import zstandard

    return zstandard
