"""Where an image goes: a directory (written atomically) or, later, a stream.

A sink takes metadata records and blocks of page data; :meth:`commit` makes the image
durable and visible at once, :meth:`abort` leaves no trace.  A directory image is
``core.img`` (framed records) plus ``pages.img`` (a header page, then page blocks at
4 KiB-aligned offsets, so that restore can map it and hand it to process_vm_writev).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
from typing import Any, Protocol

import zstandard

from cryo.errors import CryoError, ImageExists
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.linux import libc

PAGE = 4096
PAGES_HEADER = struct.Struct("<8sI")


def is_image_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "core.img"))


class Sink(Protocol):
    """Where a checkpoint goes: a directory (:class:`DirSink`), a version of a store, or
    (later) a stream.  Called in this order: side_path/record any number of times,
    write_block from the writer thread, record(PBLK) for each block, then commit; abort on
    any failure, which must leave no trace."""

    path: str
    stored_bytes: int
    # optional: ``wants_checksum = False`` spares the reader the block checksums it would
    # otherwise compute (while the processes are frozen) and hand to write_block

    def side_path(self, name: str) -> str: ...
    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None: ...
    def write_block(self, data: memoryview, runs: list[list[int]],
                    csum: int | None = None) -> dict[str, Any]: ...  # fmt: skip
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def _remove_stale(path: str) -> None:
    """Remove what a cryo killed half-way left beside ``path`` (``path.tmp.PID``)."""
    parent, base = os.path.split(path)
    for name in os.listdir(parent or "."):
        head, _, pid = name.rpartition(".")
        if head in (f"{base}.tmp", f"{base}.old") and pid.isdigit() \
                and not os.path.exists(f"/proc/{pid}"):  # fmt: skip
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


class DirSink:
    """Writes an image into ``<dir>.tmp.<pid>`` and renames it to ``dir`` on commit."""

    def __init__(self, path: str, *, force: bool = False, compress: bool = False,
                 direct: bool = False) -> None:  # fmt: skip
        self.path = os.path.abspath(path)
        if os.path.exists(self.path):
            if is_image_dir(self.path):
                if not force:
                    raise ImageExists(
                        f"{self.path} already holds an image (use --force to replace it)",
                        path=self.path,
                    )
            elif not os.path.isdir(self.path) or os.listdir(self.path):
                raise ImageExists(f"{self.path} exists and is not an empty directory",
                                  path=self.path)  # fmt: skip
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise CryoError(f"directory {parent} does not exist", path=parent)
        _remove_stale(self.path)
        self.tmp = f"{self.path}.tmp.{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.mkdir(self.tmp, 0o700)
        self.compress = compress
        self._core = open(os.path.join(self.tmp, "core.img"), "wb")  # noqa: SIM115
        self.core = fmt.RecordWriter(self._core, R.CORE_MAGIC)
        self._pages_fd = os.open(os.path.join(self.tmp, "pages.img"),
                                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # fmt: skip
        header = PAGES_HEADER.pack(R.PAGES_MAGIC, fmt.FORMAT_VERSION).ljust(PAGE, b"\0")
        os.write(self._pages_fd, header)
        # direct: page blocks (page-aligned buffers, page-aligned offsets) go to the disk
        # without a copy into the page cache; faster to write, but a restart right after
        # then reads them from the disk (docs/design.md has the figures)
        self._direct_fd = -1
        if direct and not compress:
            try:
                self._direct_fd = os.open(os.path.join(self.tmp, "pages.img"),
                                          os.O_WRONLY | os.O_DIRECT)  # fmt: skip
            except OSError:
                self._direct_fd = -1
        self.pages_off = PAGE
        self.blocks = 0
        self.stored_bytes = 0
        self._zstd = zstandard.ZstdCompressor(level=1) if compress else None

    def side_path(self, name: str) -> str:
        """Where a resource module may write a file of its own into the image."""
        return os.path.join(self.tmp, name)

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        self.core.write(kind, payload, raw=raw)

    def write_block(self, data: memoryview, runs: list[list[int]],
                    csum: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Store one block of page data; called from the writer thread.  Returns its PBLK.

        ``csum`` is the checksum of ``data`` when the caller has it already."""
        raw_len = len(data)
        if self._zstd is not None:
            stored: bytes | memoryview = self._zstd.compress(data)
            codec = "zstd"
            csum = fmt.checksum(stored)
        else:
            stored, codec = data, "none"
            if csum is None:
                csum = fmt.checksum(stored)
        off = self.pages_off
        fd = self._direct_fd if self._direct_fd >= 0 else self._pages_fd
        view = memoryview(stored)
        while view:
            try:
                n = os.pwrite(fd, view, off + (len(stored) - len(view)))
            except OSError as err:
                if fd != self._direct_fd or err.errno != errno.EINVAL:
                    raise
                fd = self._pages_fd  # the filesystem refuses O_DIRECT after all
                self._close_direct()
                continue
            view = view[n:]
        if fd == self._pages_fd:
            # start the writeback now, so that it overlaps the copying of the next blocks
            libc.sync_file_range(self._pages_fd, off, len(stored))
        self.pages_off = off + (len(stored) + PAGE - 1) // PAGE * PAGE
        self.stored_bytes += len(stored)
        meta = {"index": self.blocks, "offset": off, "stored": len(stored), "raw": raw_len,
                "codec": codec, "csum": csum, "runs": runs}  # fmt: skip
        self.blocks += 1
        return meta

    def commit(self) -> None:
        self.core.close()
        self._core.flush()
        os.fsync(self._core.fileno())
        self._core.close()
        if self._direct_fd >= 0:
            os.fsync(self._direct_fd)
            self._close_direct()
        os.ftruncate(self._pages_fd, self.pages_off)
        os.fsync(self._pages_fd)
        os.close(self._pages_fd)
        fmt.fsync_dir(self.tmp)
        old = None
        if os.path.exists(self.path):
            old = f"{self.path}.old.{os.getpid()}"
            os.rename(self.path, old)
        os.rename(self.tmp, self.path)
        fmt.fsync_dir(os.path.dirname(self.path))
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def _close_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1

    def abort(self) -> None:
        for close in (self._core.close, lambda: os.close(self._pages_fd), self._close_direct):
            with contextlib.suppress(OSError):
                close()
        shutil.rmtree(self.tmp, ignore_errors=True)
