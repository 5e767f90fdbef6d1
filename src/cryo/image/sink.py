"""Where an image goes: a directory (written atomically) or, later, a stream.

A sink takes metadata records, side files and blocks of page data; :meth:`commit` makes
the image durable and visible at once, :meth:`abort` leaves no trace.  A directory image
is ``core.img`` (framed records, sealed) plus ``pages.img`` (a header page, then page
blocks at 4 KiB-aligned offsets, so that restore can map it and hand it to
process_vm_writev) plus side files.  :class:`ImageWriter` is what the two directory
sinks (:class:`DirSink` here, the store's ``VersionSink``) share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from cryo.errors import CryoError, ImageExists, translate_oserror
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image import seal
from cryo.linux import libc

if TYPE_CHECKING:
    import zstandard

PAGE = 4096
PAGES_HEADER = struct.Struct("<8sI")
RESERVED = ("core.img", "pages.img", "pmap.img")
Tag = tuple[str, int]  # ("pid", N) or ("obj", N): whose pages
Runs = list[list[int]]  # [[address, length], ...]


def is_image_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "core.img"))


class Tracking(Protocol):
    """A sink that knows the previous checkpoint (a store's version) and can take only
    the pages written since then (docs/store.md)."""

    def previous_records(self, kind: bytes) -> list[Any]: ...
    def select(self, tag: Tag, present: Runs, written: Runs | None) -> Runs: ...
    def inherit(self, tag: Tag, present: Runs, need: Runs) -> None: ...


class Sink(Protocol):
    """Where a checkpoint goes: a directory (:class:`DirSink`), a version of a store, or
    (later) a stream.  Called in this order: side_file/record any number of times,
    write_block from the writer thread, record(PBLK) for each block, then commit; abort
    on any failure, which must leave no trace.

    ``wants_checksum``: the engine computes each block's checksum (while the processes
    are frozen) and hands it to write_block; a sink that hashes pages itself says False.
    ``tracking``: write tracking against a previous checkpoint, or None."""

    path: str
    stored_bytes: int
    wants_checksum: bool
    tracking: Tracking | None

    def side_file(self, name: str) -> IO[bytes]: ...
    def has_side(self, name: str) -> bool: ...
    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None: ...
    def write_block(self, data: memoryview, runs: Runs,
                    csum: int | None = None) -> dict[str, Any]: ...  # fmt: skip
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class _SideFile:
    """A side file being written: hashed as it goes, for its SIDE record (sealed)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = fmt.content_hash()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._f.write(data)
        self.hash.update(memoryview(data)[:n])
        self.size += n
        return n

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> _SideFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def side_record(name: str, size: int, digest: bytes) -> dict[str, Any]:
    return {"name": name, "size": size, "digest": digest}


# Page data written through the page cache goes in writes of this size: the kernel sizes
# the page cache's folios by the write (ext4's large folios), and on this VM, whose free
# memory of 2 MiB blocks and more goes back to its host after a few seconds (free page
# reporting, order 9), large folios come from that memory and their first touch is a
# host fault each: 1 GiB written by dd after 8 s idle took 9.3-10 s in writes of 4 or 64
# MiB, 5.1 s of 1 MiB, 1.1-1.6 s of 16-256 KiB (docs/design.md, "Where a checkpoint's
# time goes")
CACHED_WRITE = 256 << 10


class ImageWriter:
    """A directory being written: ``core.img`` (sealed with this host's key), ``pages.img``
    (header page; page data written with O_DIRECT when asked and possible) and side
    files, all 0600 in a 0700 directory ``tmp`` that the subclass publishes."""

    wants_checksum = True
    tracking: Tracking | None = None

    def __init__(self, path: str, tmp: str, *, direct: bool) -> None:
        self.path = path
        self.tmp = tmp
        self.stored_bytes = 0
        self._sides: dict[str, _SideFile] = {}
        self._core_f = fmt.open_private(os.path.join(tmp, "core.img"))
        self.core = fmt.RecordWriter(self._core_f, R.CORE_MAGIC, seal=seal.sealer())
        pages = os.path.join(tmp, "pages.img")
        self._pages_fd = fmt.create_private(pages)
        os.write(self._pages_fd,
                 PAGES_HEADER.pack(R.PAGES_MAGIC, fmt.FORMAT_VERSION).ljust(PAGE, b"\0"))
        # direct: page data goes to the disk without a copy into the page cache; faster
        # to write, but a restart right after then reads it from the disk (docs/design.md)
        self._direct_fd = -1
        if direct:
            with contextlib.suppress(OSError):
                self._direct_fd = os.open(pages, os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW)

    # -- the Sink protocol (shared part) -------------------------------------------

    def side_file(self, name: str) -> IO[bytes]:
        """A new file of a resource module's own in the image (fsync'd at commit)."""
        if not name or "/" in name or name.startswith(".") or name in RESERVED \
                or name in self._sides:  # fmt: skip
            raise CryoError(f"bad or repeated side file name {name!r}")
        f = _SideFile(fmt.open_private(os.path.join(self.tmp, name)))
        self._sides[name] = f
        return cast("IO[bytes]", f)  # (a file as far as its writers care)

    def has_side(self, name: str) -> bool:
        return name in self._sides

    def side_path(self, name: str) -> str:  # (deprecated: side_file)
        return os.path.join(self.tmp, name)

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        self.core.write(kind, payload, raw=raw)

    # -- for the subclasses --------------------------------------------------------

    def _write_pages(self, iov: list[memoryview], pos: int) -> None:
        """Write ``iov`` at ``pos`` of pages.img (O_DIRECT if open and the filesystem
        takes it, else through the page cache, starting its writeback at once)."""
        first = pos
        if self._direct_fd < 0:  # (the page cache: in small writes, see CACHED_WRITE)
            for view in iov:
                for off in range(0, len(view), CACHED_WRITE):
                    part = view[off : off + CACHED_WRITE]
                    done = 0
                    while done < len(part):
                        n = os.pwrite(self._pages_fd, part[done:], pos + done)
                        if n <= 0:
                            raise OSError(errno.EIO, "short write to pages.img")
                        done += n
                    pos += len(part)
            libc.sync_file_range(self._pages_fd, first, pos - first)
            return
        for i in range(0, len(iov), libc.IOV_MAX):
            chunk = iov[i : i + libc.IOV_MAX]
            want = sum(len(c) for c in chunk)
            done = 0
            while done < want:
                fd = self._direct_fd if self._direct_fd >= 0 else self._pages_fd
                try:
                    n = os.pwritev(fd, _skip(chunk, done), pos + done)
                except OSError as err:
                    if fd != self._direct_fd or err.errno != errno.EINVAL:
                        raise
                    self._close_direct()  # unaligned (a padded partial page), or the
                    continue  # filesystem refuses O_DIRECT: the page cache then
                if n <= 0:
                    raise OSError(errno.EIO, "short write to pages.img")
                done += n
            pos += want
        if self._direct_fd < 0:  # start writeback now; the fsync at commit waits less
            libc.sync_file_range(self._pages_fd, first, pos - first)

    def _finish(self, pages_size: int, before_seal: Callable[[], None] | None = None) -> None:
        """Everything durable in ``tmp``: SIDE records, core.img sealed, pages.img cut to
        ``pages_size``, side files, the directory itself."""
        self.core.write(b"MADE", {"uid": os.geteuid(), "gid": os.getegid()})
        for name, f in self._sides.items():
            if not f.closed:
                f.close()
            self.core.write(b"SIDE", side_record(name, f.size, f.hash.digest()))
        if before_seal is not None:
            before_seal()
        self.core.close()
        self._core_f.flush()
        # every change made before the first fsync: where one journal commit carries
        # them all (ext4), the fsyncs after it find little left to do
        os.ftruncate(self._pages_fd, pages_size)
        os.fsync(self._core_f.fileno())
        self._core_f.close()
        os.fsync(self._pages_fd)  # (one for the file: its O_DIRECT writes and its size)
        self._close_direct()
        os.close(self._pages_fd)
        self._pages_fd = -1
        for name in self._sides:
            fd = os.open(os.path.join(self.tmp, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fmt.fsync_dir(self.tmp)

    def _close_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1

    def _discard(self) -> None:
        """Close everything and remove ``tmp`` (abort)."""
        for f in self._sides.values():
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError):
            self._core_f.close()
        if self._pages_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pages_fd)
            self._pages_fd = -1
        self._close_direct()
        import shutil  # (not on a checkpoint's path: with tempfile, 3 ms to import)

        shutil.rmtree(self.tmp, ignore_errors=True)


def disk_usage(path: str) -> int:
    """Bytes the files of directory ``path`` take on the disk (its whole image)."""
    total = 0
    for name in os.listdir(path):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(os.path.join(path, name), follow_symlinks=False).st_blocks * 512
    return total


def _skip(chunk: list[memoryview], n: int) -> list[memoryview]:
    """``chunk`` without its first ``n`` bytes (after a short write)."""
    out = []
    for c in chunk:
        if n >= len(c):
            n -= len(c)
            continue
        out.append(c[n:])
        n = 0
    return out


def _remove_stale(path: str) -> None:
    """Remove what a cryo killed half-way left beside ``path`` (``path.tmp.PID.XXX``,
    ``path.old.PID``)."""
    parent, base = os.path.split(path)
    for name in os.listdir(parent or "."):
        for what in ("tmp", "old"):
            prefix = f"{base}.{what}."
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix) :].split(".")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                full = os.path.join(parent, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    import shutil

                    shutil.rmtree(full, ignore_errors=True)


def _mkdtemp(prefix: str, parent: str) -> str:
    """A new directory ``parent/prefix<random>`` of mode 0700 (tempfile.mkdtemp's,
    without importing tempfile, shutil and random on every checkpoint)."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return os.path.abspath(path)
    raise FileExistsError(errno.EEXIST, "no unused name for a temporary directory", parent)


class DirSink(ImageWriter):
    """Writes an image into ``<dir>.tmp.<pid>.<random>`` (mkdtemp) and renames it to
    ``dir`` on commit."""

    def __init__(self, path: str, *, force: bool = False, compress: bool = False,
                 direct: bool = False) -> None:  # fmt: skip
        path = os.path.abspath(path)
        if os.path.lexists(path):
            if os.path.islink(path):
                raise ImageExists(f"{path} is a symbolic link", path=path)
            if is_image_dir(path):
                if not force:
                    raise ImageExists(
                        f"{path} already holds an image (use --force to replace it)",
                        path=path,
                    )
            elif not os.path.isdir(path) or os.listdir(path):
                raise ImageExists(f"{path} exists and is not an empty directory",
                                  path=path)  # fmt: skip
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            why = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise CryoError(f"cannot write the image {path}: {parent} {why}", path=parent)
        try:  # (a read-only or special filesystem, no permission, no space: say so)
            _remove_stale(path)
            tmp = _mkdtemp(f"{os.path.basename(path)}.tmp.{os.getpid()}.", parent)
        except OSError as err:
            raise translate_oserror(err, resource=f"cannot write the image {path} in {parent}",
                                    path=parent) from err  # fmt: skip
        try:
            os.chmod(tmp, 0o700)
            super().__init__(path, tmp, direct=direct and not compress)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.compress = compress
        self.pages_off = PAGE
        self.blocks = 0
        self._zstd: zstandard.ZstdCompressor | None = None
        if compress:  # (imported only then: 2-5 ms of every checkpoint's start-up)
            import zstandard

            self._zstd = zstandard.ZstdCompressor(level=1)

    def write_block(self, data: memoryview, runs: Runs,
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
        self._write_pages([memoryview(stored)], off)
        self.pages_off = off + (len(stored) + PAGE - 1) // PAGE * PAGE
        self.stored_bytes += len(stored)
        meta = {"index": self.blocks, "offset": off, "stored": len(stored), "raw": raw_len,
                "codec": codec, "csum": csum, "runs": runs}  # fmt: skip
        self.blocks += 1
        return meta

    def commit(self) -> None:
        self._finish(self.pages_off)
        old = None
        if os.path.exists(self.path):
            old = f"{self.path}.old.{os.getpid()}"
            os.rename(self.path, old)
        os.rename(self.tmp, self.path)
        fmt.fsync_dir(os.path.dirname(self.path))
        if old:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        self.stored_bytes = disk_usage(self.path)  # side files too, as a store counts it

    def abort(self) -> None:
        self._discard()
