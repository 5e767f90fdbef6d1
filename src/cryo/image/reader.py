"""Reading an image: every record and every page block is checked before use.

:class:`ImageReader` is what the two readers share (the directory :class:`Image` here,
the store's ``VersionImage``): core.img read and indexed, the head checked, records by
kind and pid, side files checked against their sealed digest, the schema
(cryo.image.schema), and the helpers of their verify passes.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import platform
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import IO, Any, Protocol

import zstandard

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
        if head.get("arch") != platform.machine():
            raise ImageIncompatible(f"{self.what} {self.path} is for {head.get('arch')},"
                                    f" this machine is {platform.machine()}",
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
                    or not hmac.compare_digest(h.digest(), want["digest"]):  # fmt: skip
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


class Image(ImageReader):
    """A directory image (docs/image-format.md)."""

    def __init__(self, path: str) -> None:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise ImageMissing(f"no image at {path}", path=path)
        super().__init__(path, f"{path} holds no image (no core.img)")
        self.blocks: list[dict[str, Any]] = self.records.get(R.PBLK, [])
        self._pages: mmap.mmap | None = None
        self._dctx = zstandard.ZstdDecompressor()

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
        """Check every page block's bounds and checksum (records were checked on reading).

        Blocks are read and hashed by ``threads`` threads: on a cold image the reads
        overlap, which measured faster than one sequential pass."""
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
        they are used) and the offset of the block's first byte in it."""
        if b["codec"] == "none":
            return self.pages, b["offset"]
        if b["codec"] == "zstd":
            view = memoryview(self.pages)[b["offset"] : b["offset"] + b["stored"]]
            try:
                data = self._dctx.decompress(view, max_output_size=b["raw"])
            except zstandard.ZstdError as err:
                raise self.corrupt(f"pages block {b['index']}: {err}") from err
            if len(data) != b["raw"]:
                raise self.corrupt(f"pages block {b['index']} holds {len(data)} bytes,"
                                   f" not {b['raw']}")  # fmt: skip
            return bytearray(data), 0
        raise ImageIncompatible(f"image {self.path}: unknown codec {b['codec']}")

    def close(self) -> None:
        self._close_sides()
        if self._pages is not None:
            with contextlib.suppress(BufferError):
                self._pages.close()
            self._pages = None
