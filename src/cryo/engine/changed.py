"""Files that changed between a checkpoint and its restart.

A restart reopens the program's files by name; if one of them changed meanwhile the
program would go on with state that no longer matches it (an offset past the end of a
truncated file; a mapping whose unsaved pages are now other bytes).  Such a restart is
refused with :class:`FileChanged` (exit 12) before any process is created, unless the
user says ``--ignore-changed-files`` (restart option ``ignore_changed``, which
memory.py and translate.py read too; ``ignore_changed_files`` is taken as well).

For mapped files, what the image assumes is the file's bytes: the pages of a private
file mapping that the image does not hold are read from the file at restart.  So the
checkpoint (driver ``fingerprints``, :func:`collect`) records for every file a process
maps privately its size, mtime, ELF build-id when it has one, and a hash (xxh3-128) of
the bytes its mappings cover that the image does not hold (the pages copied on write,
swapped or guarded are the image's: left out; ranges merged); record kind ``MAPF``, one
per process.  No page of the process is faulted in for it (session 10: reading every
such byte through its mappings made its rss grow to the whole of each file mapped, and
read the files into the page cache): the pages it has in memory (PAGEMAP's present
bit) are read through its mappings (process_vm_readv; /proc/PID/mem for a mapping
without PROT_READ), which is its page cache page, what the restart would read; the
others from the file itself, opened through its map_files link (the very inode mapped)
with O_NOATIME and mapped in cryo, and the pages of it that were not in the page cache
before (mincore) dropped from it again (POSIX_FADV_DONTNEED) once hashed.  That open
and the close queue IN_OPEN and IN_CLOSE_NOWRITE (fsnotify_open in vfs_open; the reads
are page faults of cryo's, which notify no one): where a process of the checkpoint
holds an inotify or fanotify fd, whose watches would see them (found by probing in
session 9: such a checkpoint refused its own events, exit 9, and a running process saw
them), the pages are read through the process's mappings as before, faulted in (its
rss grows; the page cache holds them either way).  Watches of processes outside the
checkpoint see cryo's open as they would any reader's.  The restart (:func:`check_all`,
a ``prepare`` hook, once the saved files were extracted, before the paths are checked
and anything is made, so before the restored watches exist) hashes the same ranges of
the file it will map (translated) and refuses with FileChanged (exit 12) when they
differ, even with the same size and mtime.  Files mapped shared are the program's data
shared with others: only their size and mtime are compared (memory.py).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import mmap
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import xxhash

from cryo import procfs
from cryo.errors import ExitCode, FileChanged
from cryo.linux import libc

FILE_CHANGED = ExitCode.FILE_CHANGED
PAGE = 4096
CHUNK = 1 << 20
O_NOATIME = 0o1000000
KIND = b"MAPF"
DELETED = procfs.DELETED


def ignored(options: dict[str, Any]) -> bool:
    return bool(options.get("ignore_changed_files") or options.get("ignore_changed"))


def check_offset(d: dict[str, Any], fd: int, path: str, options: dict[str, Any]) -> None:
    """A regular file reopened for an fd whose saved offset lies past its end now, and
    that is shorter than it was at the checkpoint (an offset already past the end then,
    as lseek allows, is the program's own: found by probing, such a restart was refused
    with the file unchanged)."""
    if ignored(options):
        return
    size = os.fstat(fd).st_size
    if d["pos"] > size and size < d.get("size", d["pos"]):
        raise FileChanged(f"fd {d['fd']} of process {d['pid']}: {path} is {size} bytes now,"
                          f" shorter than the offset {d['pos']} saved at the checkpoint (it"
                          " changed since); --ignore-changed-files restarts anyway",
                          pid=d["pid"], resource=f"fd {d['fd']}", path=path)  # fmt: skip


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | O_NOATIME | os.O_CLOEXEC)
    except PermissionError:  # O_NOATIME: only the owner (or CAP_FOWNER) may ask
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def build_id(fd: int) -> bytes | None:
    """The GNU build-id of an ELF file (its PT_NOTE segments), or None."""
    return _build_id(lambda n, off: os.pread(fd, n, off))


def _build_id(pread: Callable[[int, int], bytes]) -> bytes | None:
    """The GNU build-id of the ELF file whose bytes ``pread(n, offset)`` gives (fewer
    where it cannot: then None, as for a file that is not ELF or has no build-id)."""
    head = pread(64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None  # not a 64-bit little-endian ELF file
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    table = pread(phentsize * phnum, phoff)
    for i in range(min(phnum, len(table) // max(phentsize, 1))):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", table,
                                                                          i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        notes = pread(min(p_filesz, 1 << 16), p_offset)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
            name_end = pos + 12 + ((namesz + 3) & ~3)
            desc_end = name_end + ((descsz + 3) & ~3)
            if notes[pos + 12 : pos + 12 + namesz] == b"GNU\0" and ntype == 3 \
                    and name_end + descsz <= len(notes):  # fmt: skip
                return notes[name_end : name_end + descsz]
            pos = desc_end
    return None


def _merged(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return out


def _hash(fd: int, ranges: list[list[int]]) -> bytes:
    """xxh3-128 of the bytes of ``ranges``, read 1 MiB at a time (never page by page;
    not through a mapping: a file truncated meanwhile would kill us with SIGBUS)."""
    h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for off, n in ranges:
        pos, end = off, off + n
        while pos < end:
            got = os.preadv(fd, [view[: min(CHUNK, end - pos)]], pos)
            if not got:
                break  # (past the end: the size tells)
            h.update(view[:got])
            pos += got
    return bytes(h.digest())


def fingerprint(path: str, ranges: list[list[int]] | None = None) -> dict[str, Any]:
    """What a checkpoint records of a mapped file: its size, mtime, ELF build-id, and a
    hash of the bytes of ``ranges`` ([offset, length], the whole file by default)."""
    fd = _open(path)
    try:
        return _fingerprint(fd, ranges)
    finally:
        os.close(fd)


def _fingerprint(fd: int, ranges: list[list[int]] | None) -> dict[str, Any]:
    st = os.fstat(fd)
    ranges = _merged([[o, max(0, min(o + n, st.st_size) - o)] for o, n in ranges
                      if o < st.st_size]) if ranges is not None else [[0, st.st_size]]  # fmt: skip
    out: dict[str, Any] = {"size": st.st_size, "mtime": st.st_mtime_ns, "ranges": ranges,
                           "hash": _hash(fd, ranges)}  # fmt: skip
    bid = build_id(fd)
    if bid is not None:
        out["build_id"] = bid
    return out


def check_fingerprint(path: str, saved: dict[str, Any], options: dict[str, Any],
                      what: str) -> None:  # fmt: skip
    """At restart, before anything is created: the file at ``path`` is the one the image
    mapped (FileChanged otherwise, unless --ignore-changed-files)."""
    if ignored(options):
        return
    why = differs(path, saved)
    if why is not None:
        raise FileChanged(f"{what}: {path} changed since the checkpoint ({why});"
                          " --ignore-changed-files restarts anyway", path=path)  # fmt: skip


def differs(path: str, saved: dict[str, Any]) -> str | None:
    """How the file at ``path`` differs from ``saved`` (its fingerprint), or None."""
    try:
        fd = _open(path)
    except OSError as err:
        return f"cannot open it: {err.strerror}"
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
               tuple(tuple(r) for r in saved["ranges"]))  # fmt: skip
        now = _SEEN.get(key)
        if now is None:
            now = _SEEN[key] = _fingerprint(fd, saved["ranges"])
    finally:
        os.close(fd)
    if "build_id" in saved and saved["build_id"] != now.get("build_id"):
        return "its ELF build-id differs"  # (none taken: its ELF header was not mapped)
    if saved["size"] != now["size"]:
        return f"its size was {saved['size']}, it is {now['size']} now"
    if saved["hash"] != now["hash"]:
        same = " (same size and mtime)" if saved["mtime"] == now["mtime"] else ""
        return f"the bytes it maps differ{same}"
    return None


# (dev, ino, size, mtime, ctime, ranges) -> fingerprint: the processes of a tree map the
# same libraries; hashed once (a write changes mtime and ctime)
_SEEN: dict[tuple[Any, ...], dict[str, Any]] = {}


# -- the driver ------------------------------------------------------------------------


def collect(ctx: Any) -> None:
    """Driver hook (collect, after the memory driver's, the process frozen): the
    fingerprint of every file the process maps privately (record MAPF), its bytes read
    through the process's mappings, the file itself only stat'ed (no fsnotify event)."""
    pid = ctx.pid
    by_file: dict[str, list[dict[str, Any]]] = {}
    for v in ctx.records[b"MM  "]["vmas"]:
        if v["kind"] != "file" or v["path"].endswith(DELETED) or not v["path"].startswith("/"):
            continue
        by_file.setdefault(v["path"], []).append(v)
    files = []
    held = _held(ctx)
    mem = _Mem(pid, by_file=not _watching(ctx))
    try:
        for path, vmas in by_file.items():
            try:
                st = os.stat(f"/proc/{pid}/map_files/{vmas[0]['start']:x}-{vmas[0]['end']:x}")
            except OSError:
                continue  # (memory.py refuses what it cannot map again)
            segs = _cover([p for v in vmas for p in _file_pages(v, st.st_size, held)])
            ranges = _merged([[off, n] for off, n, _a, _r in segs])
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   tuple(tuple(r) for r in ranges))  # fmt: skip
            fp = _SEEN.get(key)
            if fp is None:
                if len(_SEEN) > 4096:
                    _SEEN.clear()
                mem.file = f"/proc/{pid}/map_files/{vmas[0]['start']:x}-{vmas[0]['end']:x}"
                fp = _SEEN[key] = _from_memory(mem, segs, ranges, st)
                mem.close_file()
            files.append({"path": path, **fp})
    finally:
        mem.close()
    ctx.records[KIND] = {"pid": pid, "files": files}


Seg = tuple[int, int, int, bool]  # file offset, length, address, mapped with PROT_READ


def _held(ctx: Any) -> tuple[list[int], list[int]]:
    """The pages the image holds (the memory driver's runs: in a private file mapping
    the pages copied on write, or swapped; and those shared copy-on-write with the
    parent, its pages, or with a sibling, the sibling's) and the guard pages, which no
    one reads: (starts, ends) of merged runs, in order."""
    mm = ctx.records[b"MM  "]
    runs = [*ctx.runs, *((a, n) for a, n in (mm.get("cow") or {}).get("runs", ())),
            *((a, n) for _s, a, n in mm.get("cow_siblings", ())),  # (a sibling's pages)
            *((a, n) for v in mm["vmas"] for a, n in v.get("guards", ()))]  # fmt: skip
    starts: list[int] = []
    ends: list[int] = []
    for a, n in sorted(runs):
        if ends and a <= ends[-1]:
            ends[-1] = max(ends[-1], a + n)
        else:
            starts.append(a)
            ends.append(a + n)
    return starts, ends


def _file_pages(v: dict[str, Any], size: int, held: tuple[list[int], list[int]]) -> list[Seg]:
    """The runs of the mapping ``v`` whose bytes a restart reads from the file (the
    pages the image does not hold: ``held``), within the file's ``size``."""
    start, end, off, readable = v["start"], v["end"], v["pgoff"], bool(v["prot"] & 1)
    end = min(end, start + max(0, size - off))
    if end <= start:
        return []
    starts, ends = held
    out: list[Seg] = []
    pos = start
    i = bisect.bisect_right(ends, start)  # the first held run that ends after start
    while i < len(starts) and starts[i] < end:
        if starts[i] > pos:
            out.append((off + pos - start, starts[i] - pos, pos, readable))
        pos = max(pos, ends[i])
        i += 1
    if pos < end:
        out.append((off + pos - start, end - pos, pos, readable))
    return out


def _cover(pieces: list[Seg]) -> list[Seg]:
    """The union of ``pieces``, as runs in order of file offset that do not overlap,
    each read at an address that maps it (the file mapped twice: either mapping's page
    is the file's)."""
    out: list[Seg] = []
    done = -1
    for off, n, addr, readable in sorted(pieces):
        end = off + n
        if end <= done:
            continue
        begin = max(off, done)
        out.append((begin, end - begin, addr + begin - off, readable))
        done = end
    return out


def _watching(ctx: Any) -> bool:
    """Does a process of the checkpoint hold an inotify or fanotify fd (whose watches an
    open and a read of a mapped file by cryo could reach)?  Looked at once a checkpoint."""
    shared = ctx.shared
    got = getattr(shared, "_fsnotify_held", None)
    if got is None:
        procs = getattr(shared, "procs", None) or {}
        pids = [p.pid for p in procs.values() if not p.zombie] or [ctx.pid]
        got = False
        live = getattr(ctx, "live", {}).get("fd_links")  # (this process's, read in this
        # freeze already: drivers._holds_epoll; one readlink per fd, not two)
        for pid in pids:
            try:
                links = live[1] if live is not None and pid == ctx.pid else \
                    procfs.fd_links(pid)[1]  # fmt: skip
            except OSError:
                got = True  # (not known: as if it did)
                break
            if any(x in ("anon_inode:inotify", "anon_inode:[fanotify]") for x in links.values()):
                got = True
                break
        setattr(shared, "_fsnotify_held", got)  # noqa: B010
    return bool(got)


class _Mem:
    """Reads of a process's mapped file pages without faulting any in: the pages the
    process has in memory (PAGEMAP's present bit) through its mappings, with
    process_vm_readv (pages pinned in batches, copied once), or /proc/PID/mem for a
    mapping without PROT_READ (FOLL_FORCE; it copies a page at a time through a page
    of its own: 2.3x slower); the others from the file (``file``: its map_files link),
    mapped in cryo, where ``by_file``, and the pages that this brought into the page
    cache dropped from it again (POSIX_FADV_DONTNEED).  Not ``by_file`` (a process of
    the checkpoint holds an inotify or fanotify fd, whose watches cryo's open would
    reach): through the process's mappings, which faults them in (its rss grows)."""

    def __init__(self, pid: int, by_file: bool = True) -> None:
        self.pid, self.fd, self.by_file = pid, -1, by_file
        self.pagemap = self.fd_file = -1
        self.file = ""  # the file of the mapping being read (map_files link)
        self._map: mmap.mmap | None = None  # the file mapped in cryo, read-only
        self._cached = b""  # its pages in the page cache (mincore): b"1" or b"0" each
        self._loaded: list[tuple[int, int]] = []  # (first page, end page) read in by cryo

    def present(self, addr: int, n: int) -> bytes:
        """For each page of [addr, addr + n), b"1" if it is in the process's memory
        (PAGEMAP's bit 63: the top bit of each entry's last byte), else b"0"."""
        first, end = addr // PAGE, (addr + n + PAGE - 1) // PAGE
        try:
            if self.pagemap < 0:
                self.pagemap = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            raw = os.pread(self.pagemap, 8 * (end - first), 8 * first)
        except OSError:
            raw = b""
        if len(raw) != 8 * (end - first):
            return b"1" * (end - first)  # (not known: read as before)
        return raw[7::8].translate(_TOP_BIT)

    def read_seg(self, off: int, addr: int, view: memoryview, local: int,
                 readable: bool) -> int:  # fmt: skip
        """Bytes of the file at ``off``, mapped at ``addr``, read into ``view`` (at
        address ``local``): fewer, or 0, where nothing is there."""
        n = len(view)
        if not self.by_file or not self.file:
            return self.read(addr, view, local, readable)
        here = self.present(addr, n)
        base = addr - addr % PAGE
        done = 0
        for a, b, resident in _runs(here):
            lo, hi = max(addr, base + a * PAGE) - addr, min(addr + n, base + b * PAGE) - addr
            part = view[lo:hi]
            if resident:  # (through its mapping: no fault)
                got = self.read(addr + lo, part, local + lo, readable)
            else:
                got = self._from_file(off + lo, part)
            done += got
            if got < hi - lo:
                break
        return done

    def _from_file(self, off: int, view: memoryview) -> int:
        m = self._mapped()
        if m is None:
            return 0
        n = max(0, min(len(view), len(m) - off))
        first, end = off // PAGE, (off + n + PAGE - 1) // PAGE
        self._loaded += [(first + a, first + b)  # (brought in: dropped at close_file)
                         for a, b, cached in _runs(self._cached[first:end]) if not cached]
        view[:n] = memoryview(m)[off : off + n]
        return n

    def _mapped(self) -> mmap.mmap | None:
        if self._map is None:
            try:
                fd = os.open(self.file, os.O_RDONLY | O_NOATIME | os.O_CLOEXEC)
            except OSError:
                self.by_file = False
                return None
            try:
                size = os.fstat(fd).st_size
                if not size:
                    os.close(fd)
                    return None
                self.fd_file = fd
                # (private and writable for ctypes to take its address; never written)
                self._map = mmap.mmap(fd, size, mmap.MAP_PRIVATE,
                                      mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
                arr = (ctypes.c_char * size).from_buffer(self._map)
                addr = ctypes.addressof(arr)
                del arr
                self._cached = libc.mincore(addr, size, PAGE).translate(_LOW_BIT)
            except OSError:
                os.close(fd)
                self.fd_file = -1
                self._map = None
                return None
        return self._map

    def close_file(self) -> None:
        """The file let go; the pages cryo's reads brought into the page cache dropped."""
        if self._map is not None:
            self._map.close()
            self._map = None
            fd = self.fd_file
            for first, end in self._loaded:  # (pages the page cache did not hold)
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, first * PAGE, (end - first) * PAGE,
                                     os.POSIX_FADV_DONTNEED)  # fmt: skip
            os.close(fd)
            self.fd_file = -1
        self._loaded, self._cached, self.file = [], b"", ""

    def read(self, addr: int, view: memoryview, local: int, readable: bool) -> int:
        """Bytes read into ``view`` (at address ``local``) from ``addr``: fewer, or 0,
        where nothing is there (the file cut short meanwhile: EFAULT, EIO)."""
        try:
            if readable:
                return libc.process_vm_readv(self.pid, [(local, len(view))],
                                             [(addr, len(view))])  # fmt: skip
            if self.fd < 0:
                self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            return os.preadv(self.fd, [view], addr)
        except OSError:
            return 0

    def close(self) -> None:
        self.close_file()
        for name in ("fd", "pagemap"):
            if getattr(self, name) >= 0:
                os.close(getattr(self, name))
                setattr(self, name, -1)


# a byte per page (PAGEMAP entry's last byte, mincore's) as b"1" or b"0"
_TOP_BIT = bytes(b"01"[x >> 7] for x in range(256))
_LOW_BIT = bytes(b"01"[x & 1] for x in range(256))
_RUN = re.compile(rb"1+|0+")


def _runs(flags: bytes) -> list[tuple[int, int, bool]]:
    """The runs of equal flags (b"1" or b"0" a page): (start, end, set) each, in order
    (a regular expression's scan: no loop over pages in Python)."""
    return [(m.start(), m.end(), flags[m.start()] == 0x31) for m in _RUN.finditer(flags)]


def _from_memory(mem: _Mem, segs: list[Seg], ranges: list[list[int]],
                 st: os.stat_result) -> dict[str, Any]:  # fmt: skip
    """The fingerprint of a mapped file whose bytes ``segs`` are read from the process's
    memory, 1 MiB at a time."""
    h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    local = ctypes.addressof((ctypes.c_char * CHUNK).from_buffer(buf))
    for off, n, addr, readable in segs:
        pos, end = addr, addr + n
        while pos < end:
            got = mem.read_seg(off + pos - addr, pos, view[: min(CHUNK, end - pos)], local,
                               readable)  # fmt: skip
            if not got:
                break  # (the hash then differs from the file's: refused at restart)
            h.update(view[:got])
            pos += got

    def pread(n: int, off: int) -> bytes:
        for o, k, addr, readable in segs:  # (the ELF header and notes: the first mapping)
            if o <= off < o + k:
                m = min(n, o + k - off, CHUNK)
                return bytes(view[: mem.read_seg(off, addr + off - o, view[:m], local,
                                                 readable)])  # fmt: skip
        return b""

    out: dict[str, Any] = {"size": st.st_size, "mtime": st.st_mtime_ns, "ranges": ranges,
                           "hash": bytes(h.digest())}  # fmt: skip
    bid = _build_id(pread)
    if bid is not None:
        out["build_id"] = bid
    return out


def saved(image: Any) -> dict[str, list[dict[str, Any]]]:
    """The image's fingerprints by path."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in image.raw(KIND):
        for f in rec["files"]:
            out.setdefault(f["path"], []).append(f)
    return out


def check_all(rs: Any) -> None:
    """Driver hook (prepare, once the saved files are out): every file the restart maps
    privately is the one the image assumed (FileChanged, exit 12, before anything is
    made, unless --ignore-changed-files)."""
    if ignored(rs.options):
        return
    from cryo.engine.translate import apply as translated

    done: set[tuple[str, Any]] = set()
    for path, fps in saved(rs.image).items():
        new = translated(rs.options, path)
        if not os.path.exists(new):
            continue  # (missing: the path check says so, with --translate)
        for fp in fps:
            key = (new, fp["hash"])
            if key in done:
                continue
            done.add(key)
            check_fingerprint(new, fp, rs.options, "mapped file")


def describe(v: Any) -> dict[str, Any]:
    """cryo show: each mapped file's fingerprint."""
    rec = v.records.get(KIND)
    if rec is None:
        return {}
    return {"mapped_files": [{"path": f["path"], "size": f["size"],
                              "hashed": sum(n for _, n in f["ranges"]),
                              **({"build_id": f["build_id"].hex()} if "build_id" in f else {})}
                             for f in rec["files"]]}  # fmt: skip
