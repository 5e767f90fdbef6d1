"""The ways pages can go into a restored process, measured apart (issue 16), beside the
copy bound of the same run (`cp FILE COPY && sync` of the same size).

A child maps SIZE of fresh anonymous memory and stops; the pages of a SIZE file go into
it by each way, warm (the file read once before) and cold (the file dropped from the
page cache).  Run as root:  python bench/restart_paths.py [--mib 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import xxhash

from cryo.linux import libc, uffd
from cryo.linux.consts import UFFD, SYS_userfaultfd
from dump_restore import copy_bound, set_cache

BLOCK = 64 << 20
MADV_POPULATE_WRITE = 23


class Child:
    """A forked child holding ``size`` bytes of fresh memory; it runs ``how`` on it when
    told (``populate``: MADV_POPULATE_WRITE; ``read``/``read-direct``: preadv of the file
    into it, as a restorer inside the process would) and reports the seconds."""

    def __init__(self, size: int, path: Path, how: str = "") -> None:
        self.size = size
        r, w = os.pipe()
        r2, w2 = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(r)
            os.close(w2)
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            ufd = -1
            if how == "uffd":  # what an injected call makes in a restored process
                ufd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK
                                   | UFFD.USER_MODE_ONLY)  # fmt: skip
            os.write(w, f"{libc.buffer_address(m)} {ufd}".encode())
            os.read(r2, 1)
            t = time.perf_counter()
            if how == "populate":
                m.madvise(MADV_POPULATE_WRITE, 0, size)
            elif how.startswith("read"):
                fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if how == "read-direct" else 0))
                view, off = memoryview(m), 0
                while off < size:
                    off += os.preadv(fd, [view[off : off + BLOCK]], off)
            os.write(w, repr(time.perf_counter() - t).encode())
            time.sleep(600)
            os._exit(0)
        os.close(w)
        os.close(r2)
        self.r, self.w = r, w2
        addr, ufd = os.read(r, 64).split()
        self.addr, self.ufd = int(addr), int(ufd)

    def run(self) -> float:
        os.write(self.w, b"g")
        return float(os.read(self.r, 64))

    def end(self) -> None:
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.r)
        os.close(self.w)


def from_buffers(path: Path, size: int, populate: bool, threads: bool,
                 use_uffd: bool = False, part: int = BLOCK) -> str:  # fmt: skip
    """pread into reused 64 MiB buffers (or ``part``), xxh3, process_vm_writev into the
    child; with ``threads`` a thread reads and checks the next block meanwhile; with
    ``use_uffd`` UFFDIO_COPY through the child's userfaultfd instead (what a restart
    does now: 4 MiB parts, UFFDIO_COPY, a thread reading ahead)."""
    c = Child(size, path, "populate" if populate else ("uffd" if use_uffd else ""))
    pop = c.run()
    ufd = -1
    if use_uffd:
        ufd = libc.fd_of(c.pid, c.ufd)
        libc.uffd_api(ufd, 0)
        uffd.register_missing(ufd, c.addr, size)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0x8000)
    t0 = time.perf_counter()  # (making the buffers counts: a restart makes them too)
    bufs = [mmap.mmap(-1, part, flags=flags) for _ in range(3 if threads else 1)]
    fd = os.open(path, os.O_RDONLY)
    spent = {"read": 0.0, "hash": 0.0, "write": 0.0}

    def read(off: int, buf: mmap.mmap) -> None:
        t = time.perf_counter()
        os.preadv(fd, [memoryview(buf)], off)
        t1 = time.perf_counter()
        xxhash.xxh3_64_intdigest(buf)
        spent["read"] += t1 - t
        spent["hash"] += time.perf_counter() - t1

    offs = list(range(0, size, part))
    ahead: threading.Thread | None = None
    if not threads:
        read(0, bufs[0])
    else:
        ahead = threading.Thread(target=read, args=(0, bufs[0]))
        ahead.start()
    for i, off in enumerate(offs):
        buf = bufs[i % len(bufs)]
        if ahead is not None:
            ahead.join()
            ahead = None
            if i + 1 < len(offs):
                nxt = bufs[(i + 1) % len(bufs)]
                ahead = threading.Thread(target=read, args=(offs[i + 1], nxt))
                ahead.start()
        elif i:
            read(off, buf)
        t = time.perf_counter()
        if use_uffd:
            if uffd.copy(ufd, c.addr + off, libc.buffer_address(buf), part) != part:
                raise RuntimeError("UFFDIO_COPY stopped short")
        else:
            local = [(libc.buffer_address(buf), part)]
            libc.process_vm_writev(c.pid, local, [(c.addr + off, part)])
        spent["write"] += time.perf_counter() - t
    if use_uffd:
        uffd.unregister(ufd, c.addr, size)
        os.close(ufd)
    total = time.perf_counter() - t0
    os.close(fd)
    c.end()
    extra = f", populate first {pop:.3f}" if populate else ""
    how = "UFFDIO_COPY" if use_uffd else "process_vm_writev"
    return (f"{total:.3f} s (read {spent['read']:.3f}, xxh3 {spent['hash']:.3f},"
            f" {how} {spent['write']:.3f}{extra})")


def in_child(path: Path, size: int, direct: bool) -> str:
    c = Child(size, path, "read-direct" if direct else "read")
    took = c.run()
    c.end()
    return f"{took:.3f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    size = args.mib << 20
    work = Path(tempfile.mkdtemp(prefix="cryo-restart-paths-"))
    try:
        path = work / "pages"
        chunk = os.urandom(1 << 20) * 64
        with open(path, "wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
        for r in range(args.rounds):
            print(f"-- round {r + 1}, {args.mib} MiB; cp+sync {copy_bound(work, size):.3f} s")
            for warm in (True, False):
                temp = "warm" if warm else "cold"
                ways = [
                    ("pread, xxh3, process_vm_writev, one thread", "buffers", False, False),
                    ("the same, reading ahead in a thread", "buffers", False, True),
                    ("the same, target populated first", "buffers", True, True),
                    ("the same, UFFDIO_COPY instead", "uffd", False, True),
                    ("the same in 4 MiB parts (cryo)", "uffd4", False, True),
                    ("4 MiB parts, process_vm_writev", "pvw4", False, True),
                    ("preadv by the target itself (no check)", "child", False, False),
                    ("O_DIRECT preadv by the target itself", "child", True, False),
                ]
                for name, kind, a, b in ways:
                    set_cache(path, warm)
                    got = in_child(path, size, a) if kind == "child" else from_buffers(
                        path, size, a, b, kind.startswith("uffd"),
                        4 << 20 if kind.endswith("4") else BLOCK)  # fmt: skip
                    print(f"{temp} {name:<46} {got}", flush=True)
            c = Child(size, path, "populate")
            print(f"faulting in {args.mib} MiB of fresh memory (MADV_POPULATE_WRITE):"
                  f" {c.run():.3f} s")
            c.end()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
