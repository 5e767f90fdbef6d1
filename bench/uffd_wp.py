"""Finding the pages written since the last checkpoint without reading them: userfaultfd
write-protect in asynchronous mode plus PAGEMAP_SCAN (Linux 6.7+), against hashing every
page (what cryo.store does today).  A measurement for docs/store.md; run as root:

    python bench/uffd_wp.py [--mib 1024] [--permille 10]

1. In this process, the kernel mechanism: a buffer with every page written is armed
   (UFFDIO_API with WP_ASYNC and WP_UNPOPULATED, UFFDIO_REGISTER in WP mode,
   UFFDIO_WRITEPROTECT); then, each round, 1% of its pages are written (timed, against
   the same writes unarmed) and one PAGEMAP_SCAN with PM_SCAN_WP_MATCHING returns the
   written pages and protects them again (timed; the pages found must be exactly the ones
   written).  In the same run: per-page xxh3-128 of the whole buffer, and copying only
   the written pages against copying all of them.
2. Inside a running process (tests/victims/incr.c), armed with system calls injected by
   cryo.engine.inject while it is stopped; it then changes 1% of its pages by itself, and
   the pages PAGEMAP_SCAN finds from outside are compared with what it says it changed.
   The written pages are then handed to a store version the way the engine would with
   tracking (VersionSink.select / write_block / inherit / commit, docs/store.md), to
   time the store's share of such a checkpoint (the version holds the region only).
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import xxhash

from cryo import store
from cryo.engine.inject import Injector, find_vdso_syscall
from cryo.engine.ptrace import Tracee
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import (
    PAGE_IS,
    PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
    PR,
    SYS,
    UFFD,
    UFFD_API,
    UFFDIO_API,
    UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_WP,
    UFFDIO_WRITEPROTECT,
    UFFDIO_WRITEPROTECT_MODE_WP,
    SYS_userfaultfd,
)
from cryo.store.layout import Store
from cryo.store.sink import VersionSink, load_previous

PAGE = 4096
FEATURES = UFFD.FEATURE_WP_ASYNC | UFFD.FEATURE_WP_UNPOPULATED
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000


def written(pagemap_fd: int, start: int, end: int, *, protect: bool) -> list[tuple[int, int]]:
    """PAGEMAP_SCAN: the ranges of [start, end) written since they were last protected;
    with ``protect``, protect them again in the same walk."""
    flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if protect else 0)
    return [(s, e) for s, e, _c in libc.pagemap_scan(
        pagemap_fd, start, end, 0, PAGE_IS.WRITTEN, mask=PAGE_IS.WRITTEN, flags=flags)]


def pages_of(ranges: list[tuple[int, int]]) -> set[int]:
    return {a for s, e in ranges for a in range(s, e, PAGE)}


# -- 1: the mechanism, in this process -----------------------------------------------


def in_process(mib: int, permille: int, rounds: int) -> None:
    size = mib << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = libc.buffer_address(buf)
    npages = size // PAGE
    for off in range(0, size, PAGE):
        buf[off] = 1
    rnd = random.Random(1)
    n = npages * permille // 1000

    def write_some() -> tuple[set[int], float]:
        chosen = rnd.sample(range(npages), n)
        t = time.perf_counter()
        for p in chosen:
            buf[p * PAGE + 8] = (buf[p * PAGE + 8] + 1) & 0xFF
        return {base + p * PAGE for p in chosen}, time.perf_counter() - t

    _, plain = write_some()
    t = time.perf_counter()
    uffd = libc.syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD.USER_MODE_ONLY)
    libc.uffd_api(uffd, FEATURES)
    libc.uffd_register_wp(uffd, base, size)
    libc.uffd_writeprotect(uffd, base, size)
    arm = time.perf_counter() - t
    pm = os.open("/proc/self/pagemap", os.O_RDONLY)
    print(f"in-process, {mib} MiB, {permille / 10:g}% of the pages written per round:")
    print(f"  arm (userfaultfd, API, REGISTER, WRITEPROTECT of {mib} MiB): {arm * 1e3:.1f} ms")
    print(f"  {n} writes unarmed: {plain * 1e3:.1f} ms")
    try:
        for r in range(rounds):
            want, took = write_some()
            t = time.perf_counter()
            found = written(pm, base, base + size, protect=True)
            scan = time.perf_counter() - t
            got = pages_of(found)
            t = time.perf_counter()
            again = written(pm, base, base + size, protect=False)
            rescan = time.perf_counter() - t
            print(f"  round {r + 1}: {n} writes armed {took * 1e3:.1f} ms;"
                  f" scan+protect {scan * 1e3:.2f} ms -> {len(got)} pages in {len(found)}"
                  f" ranges ({'exact' if got == want else 'MISMATCH'}); scan again"
                  f" {rescan * 1e3:.2f} ms -> {len(pages_of(again))} pages")  # fmt: skip
        mv = memoryview(buf)
        h = xxhash.xxh3_128_digest
        t = time.perf_counter()
        b"".join([h(mv[i : i + PAGE]) for i in range(0, size, PAGE)])
        hashing = time.perf_counter() - t
        print(f"  for comparison: xxh3-128 of every page {hashing * 1e3:.1f} ms")
        del mv
    finally:
        os.close(pm)
        os.close(uffd)
        buf.close()


# -- 2: inside a running process ---------------------------------------------------


def arm_inside(pid: int, ranges: list[tuple[int, int]]) -> float:
    """userfaultfd + UFFDIO_API/REGISTER/WRITEPROTECT run by the stopped target itself
    (injected); the uffd stays in its fd table.  Returns the seconds it was stopped."""
    t0 = time.perf_counter()
    t = Tracee.seize(pid)
    inj = Injector(t, find_vdso_syscall(pid))
    inj.map_scratch()
    try:
        fd = inj(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD.USER_MODE_ONLY)
        addr = inj.put(libc.struct_bytes(S.uffdio_api(UFFD_API, FEATURES, 0)))
        inj(SYS.ioctl, fd, UFFDIO_API, addr)
        for start, end in ranges:
            span = S.uffdio_range(start, end - start)
            r = S.uffdio_register(span, UFFDIO_REGISTER_MODE_WP, 0)
            inj(SYS.ioctl, fd, UFFDIO_REGISTER, inj.put(libc.struct_bytes(r)))
            w = S.uffdio_writeprotect(span, UFFDIO_WRITEPROTECT_MODE_WP)
            inj(SYS.ioctl, fd, UFFDIO_WRITEPROTECT, inj.put(libc.struct_bytes(w)))
    finally:
        inj.unmap_scratch()
        inj.finish()
        t.park()
        t.detach()
    return time.perf_counter() - t0


def in_target(mib: int, permille: int, rounds: int) -> None:
    victims = Path(__file__).resolve().parent.parent / "tests" / "victims"
    work = Path(tempfile.mkdtemp(prefix="cryo-uffd-"))
    exe = work / "incr"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(victims / "incr.c"), "-lrt"], check=True)
    out = work / "out.txt"
    p = subprocess.Popen([str(exe), str(out), str(mib), str(permille)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # fmt: skip

    def wait(text: str) -> list[str]:
        while True:
            lines = out.read_text().splitlines() if out.exists() else []
            hit = [ln for ln in lines if ln.startswith(text)]
            if hit:
                return hit[-1].split()
            time.sleep(0.005)

    try:
        ready = wait("ready")
        start, size = int(ready[2], 16), int(ready[3])
        st = str(work / "store")
        t0 = time.perf_counter()
        # version 1, by hashing; not armed by the engine (this bench arms it itself)
        store.checkpoint(p.pid, st, "app", track=False)
        first = time.perf_counter() - t0
        stopped = arm_inside(p.pid, [(start, start + size)])
        print(f"inside a process ({mib} MiB region), armed by injected calls:"
              f" stopped {stopped * 1e3:.1f} ms (store version 1 by hashing: {first:.3f} s)")
        app = Store(st).app("app")
        pm = os.open(f"/proc/{p.pid}/pagemap", os.O_RDONLY)
        try:
            for gen in range(1, rounds + 1):
                os.kill(p.pid, signal.SIGUSR1)
                changed = int(wait(f"changed {gen} ")[2])
                wait(f"gen {gen}")
                t = Tracee.seize(p.pid)  # frozen, as for a checkpoint
                try:
                    t0 = time.perf_counter()
                    found = written(pm, start, start + size, protect=True)
                    scan = time.perf_counter() - t0
                    npages = len(pages_of(found))
                    local = mmap.mmap(-1, max(npages, 1) * PAGE)
                    t0 = time.perf_counter()
                    base, off, local_iov, remote = libc.buffer_address(local), 0, [], []
                    for s, e in found:
                        local_iov.append((base + off, e - s))
                        remote.append((s, e - s))
                        off += e - s
                    for i in range(0, len(remote), libc.IOV_MAX):
                        libc.process_vm_readv(p.pid, local_iov[i : i + libc.IOV_MAX],
                                              remote[i : i + libc.IOV_MAX])  # fmt: skip
                    copy = time.perf_counter() - t0
                finally:
                    t.detach()
                share = store_share(app, p.pid, (start, size), found, local)
                local.close()
                print(f"  generation {gen}: it changed {changed} pages; scan+protect"
                      f" {scan * 1e3:.2f} ms found {npages} written pages in {len(found)}"
                      f" ranges; copying them {copy * 1e3:.1f} ms; store {share}")  # fmt: skip
        finally:
            os.close(pm)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def store_share(app: object, pid: int, region: tuple[int, int], found: list[tuple[int, int]],
                data: mmap.mmap) -> str:  # fmt: skip
    """A store version from the written pages only, as the engine would hand them."""
    from cryo.image import records as R

    assert hasattr(app, "latest")
    times = {}
    t = time.perf_counter()
    parent = app.latest()
    prev = load_previous(app, parent)  # type: ignore[arg-type]
    sink = VersionSink(app, app.next_version(), prev, parent=parent)  # type: ignore[arg-type]
    sink.record(R.HEAD, {"arch": os.uname().machine, "root_pid": pid, "pids": [pid]})
    times["prepare"] = time.perf_counter() - t
    present = [[region[0], region[1]]]
    tag = ("pid", pid)
    t = time.perf_counter()
    need = sink.select(tag, present, [[s, e - s] for s, e in found])
    times["select"] = time.perf_counter() - t
    t = time.perf_counter()
    meta = sink.write_block(memoryview(data)[: sum(n for _, n in need)], need)
    sink.inherit(tag, present, need)
    sink.record(R.PBLK, {**meta, "pid": pid})
    times["pages"] = time.perf_counter() - t
    t = time.perf_counter()
    sink.commit()
    times["commit"] = time.perf_counter() - t
    total = sum(times.values())
    parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in times.items())
    return f"{total * 1e3:.1f} ms ({parts}; {sink.new_pages} pages stored)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--permille", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    in_process(args.mib, args.permille, args.rounds)
    in_target(args.mib, args.permille, args.rounds)


if __name__ == "__main__":
    main()
