"""Reading a directory image: every record and every page block is checked before use."""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import threading
from collections import defaultdict
from typing import Any, Protocol

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
    def verify(self) -> None: ...
    def block_data(self, b: dict[str, Any]) -> tuple[object, int]: ...
    def side_path(self, name: str) -> str: ...
    def close(self) -> None: ...


class Image:
    """A directory image (docs/image-format.md)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        core = os.path.join(self.path, "core.img")
        if not os.path.isdir(self.path):
            raise ImageMissing(f"no image at {self.path}", path=self.path)
        if not os.path.exists(core):
            raise ImageMissing(f"{self.path} holds no image (no core.img)", path=self.path)
        self.records: dict[bytes, list[Any]] = defaultdict(list)
        for rec in fmt.read_file(core, R.CORE_MAGIC):
            self.records[rec.kind].append(rec.payload)
        heads = self.records.get(R.HEAD)
        if not heads:
            raise ImageCorrupt(f"image {self.path} is corrupt: no HEAD record", path=self.path)
        self.head: dict[str, Any] = heads[0]
        if self.head.get("arch") != platform.machine():
            raise ImageIncompatible(
                f"image {self.path} is for {self.head.get('arch')}, this machine is"
                f" {platform.machine()}",
                path=self.path,
            )
        self.blocks: list[dict[str, Any]] = self.records.get(R.PBLK, [])
        self._pages: mmap.mmap | None = None
        self._dctx = zstandard.ZstdDecompressor()

    def one(self, kind: bytes, pid: int) -> dict[str, Any]:
        for payload in self.records.get(kind, []):
            if payload.get("pid") == pid:
                return dict(payload)
        raise ImageCorrupt(f"image {self.path} is corrupt: no {kind.decode().strip()} record"
                           f" for pid {pid}", path=self.path)  # fmt: skip

    def raw(self, kind: bytes) -> list[Any]:
        return list(self.records.get(kind, []))

    @property
    def pages(self) -> mmap.mmap:
        if self._pages is None:
            path = os.path.join(self.path, "pages.img")
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as err:
                raise ImageCorrupt(f"image {self.path} is corrupt: pages.img is missing",
                                   path=self.path) from err  # fmt: skip
            try:
                size = os.fstat(fd).st_size
                if size < 4096:
                    raise ImageCorrupt(f"image {self.path} is corrupt: pages.img is truncated",
                                       path=self.path)  # fmt: skip
                # a private writable mapping: never written, but it lets ctypes take its address
                self._pages = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            finally:
                os.close(fd)
            magic, version = PAGES_HEADER.unpack_from(self._pages, 0)
            if magic != R.PAGES_MAGIC or version != fmt.FORMAT_VERSION:
                raise ImageCorrupt(f"image {self.path} is corrupt: bad pages.img header",
                                   path=self.path)  # fmt: skip
        return self._pages

    def verify(self, threads: int = 2) -> None:
        """Check every page block's bounds and checksum (records were checked on reading).

        Blocks are read and hashed by ``threads`` threads: on a cold image the reads
        overlap, which measured faster than one sequential pass."""
        pages = self.pages
        for b in self.blocks:
            if b["offset"] + b["stored"] > len(pages):
                raise ImageCorrupt(
                    f"image {self.path} is corrupt: pages block {b['index']} is truncated",
                    path=self.path,
                )
        bad: list[int] = []
        fd = os.open(os.path.join(self.path, "pages.img"), os.O_RDONLY)

        def work(k: int) -> None:
            # large reads into a private buffer: on a cold image this is the fastest way
            # in (mmap faults read a little at a time), and it leaves the page cache warm
            # for the process_vm_writev that follows
            buf = bytearray(max((b["stored"] for b in self.blocks), default=0))
            for b in self.blocks[k::threads]:
                view = memoryview(buf)[: b["stored"]]
                got = 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], b["offset"] + got)
                    if n <= 0:
                        break
                    got += n
                if got != len(view) or fmt.checksum(view) != b["csum"]:
                    bad.append(b["index"])

        pool = [threading.Thread(target=work, args=(k,)) for k in range(1, threads)]
        for t in pool:
            t.start()
        work(0)
        for t in pool:
            t.join()
        os.close(fd)
        if bad:
            raise ImageCorrupt(
                f"image {self.path} is corrupt: pages block {min(bad)} checksum mismatch",
                path=self.path,
            )
        for b in self.blocks:
            if sum(r[1] for r in b["runs"]) != b["raw"]:
                raise ImageCorrupt(f"image {self.path} is corrupt: pages block {b['index']}"
                                   " runs do not add up", path=self.path)  # fmt: skip

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        """Where the raw bytes of block ``b`` are: a writable buffer (keep it alive while
        they are used) and the offset of the block's first byte in it."""
        if b["codec"] == "none":
            return self.pages, b["offset"]
        if b["codec"] == "zstd":
            view = memoryview(self.pages)[b["offset"] : b["offset"] + b["stored"]]
            return bytearray(self._dctx.decompress(view, max_output_size=b["raw"])), 0
        raise ImageIncompatible(f"image {self.path}: unknown codec {b['codec']}")

    def side_path(self, name: str) -> str:
        """A file a resource module stored beside the records (see Sink.side_path)."""
        return os.path.join(self.path, name)

    def close(self) -> None:
        if self._pages is not None:
            with contextlib.suppress(BufferError):
                self._pages.close()
            self._pages = None
