"""Incremental checkpoints into a store against full images (issue 5's goals).

A process with 1 GiB of touched anonymous memory (tests/victims/incr.c) is checkpointed
into a store; then, ten times, 1% of its pages change and it is checkpointed again (the
engine copies only the pages written since the previous version: write tracking); then,
``--hashed`` more times, without tracking (every page read and compared by its hash).
For each version: wall time of ``cryo.store.checkpoint``, how long the process was
frozen, bytes stored, bytes of metadata (core.img + pmap.img), and the bytes that
changed.  In the same run: a full checkpoint of the same process into a directory image,
and restart times of version 10 and of the full image, both with their files dropped
from the page cache (cold) and again cached (warm).
Run as root:  python bench/incremental.py [--mib 1024] [--hashed 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import build, reap
from cryo import store
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.linux import libc
from cryo.linux.consts import PR
from cryo.store.sink import VersionSink


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_line(path: Path, start: int, want: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for ln in lines(path)[start:]:
            if ln.startswith("FAIL"):
                raise SystemExit(f"victim: {ln}")
            if ln.startswith(want):
                return ln
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {want!r} in {path}")
        time.sleep(0.005)


def drop_cache(paths: list[Path]) -> None:
    """Evict these files from the page cache (written back first)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_of(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def size_of(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def timed_restart(out: Path, what: str, src: str | tuple[str, str, int],
                  cold_files: list[Path], cold: bool) -> float:  # fmt: skip
    if cold:
        drop_cache(cold_files)
    start = len(lines(out))
    t = time.perf_counter()
    r = store.restart(*src) if isinstance(src, tuple) else restart(src)
    took = time.perf_counter() - t
    os.kill(r.pid, signal.SIGUSR2)  # the restored process checks every byte it holds
    wait_line(out, start, "ok ", timeout=300)
    reap(r.pid)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB of touched memory")
    ap.add_argument("--permille", type=int, default=10, help="pages changed per version (‰)")
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--hashed", type=int, default=3, help="more versions without tracking")
    ap.add_argument("--runs", type=int, default=2, help="restarts of each kind (best taken)")
    ap.add_argument("--dir", default=None, help="where images go (default: a temp dir in /tmp)")
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-incr-", dir=args.dir))
    hashing = [0.0]
    write_block = VersionSink.write_block

    def timed_block(self: VersionSink, *a: object, **kw: object) -> object:
        t = time.perf_counter()
        try:
            return write_block(self, *a, **kw)  # type: ignore[arg-type]
        finally:
            hashing[0] += time.perf_counter() - t

    VersionSink.write_block = timed_block  # type: ignore[assignment,method-assign]
    pid = 0
    try:
        exe = build("incr", work)
        out = work / "out.txt"
        p = subprocess.Popen([exe, str(out), str(args.mib), str(args.permille)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        p.returncode = 0  # reaped by pid
        pid = p.pid
        wait_line(out, 0, "ready")
        st = str(work / "store")
        mem = args.mib << 20
        print(f"{args.mib} MiB touched, {args.permille / 10:g}% of the pages changed per"
              " version; sink = time in VersionSink.write_block (hash, compare, write)")
        print(f"{'version':>7} {'method':>7} {'time s':>7} {'frozen s':>8} {'sink s':>7}"
              f" {'changed':>10} {'stored':>10} {'stored/chg':>10} {'metadata':>9}"
              f" {'meta/mem':>8}")
        gen = 0
        rows: dict[str, list[tuple[float, int, int, int]]] = {"tracked": [], "hashed": []}
        for version in range(1, args.versions + args.hashed + 1):
            method = "full" if version == 1 else "tracked" if version <= args.versions \
                else "hashed"  # fmt: skip
            changed = mem
            if version > 1:
                gen += 1
                start = len(lines(out))
                os.kill(pid, signal.SIGUSR1)
                changed = int(wait_line(out, start, f"changed {gen} ").split()[2]) * 4096
                wait_line(out, start, f"gen {gen}")
            subprocess.run(["sync"], check=True)
            hashing[0] = 0.0
            t = time.perf_counter()
            got, r = store.checkpoint(pid, st, "app", track=method != "hashed")
            took = time.perf_counter() - t
            vdir = Path(st) / "app" / f"v{got}"
            new = (vdir / "pages.img").stat().st_size - 4096
            meta = size_of(files_of(vdir)) - new
            if method != "full":
                rows[method].append((took, new, changed, meta))
            print(f"{got:>7} {method:>7} {took:>7.3f} {r.freeze_seconds:>8.3f} {hashing[0]:>7.3f}"
                  f" {changed / 2**20:>8.2f}Mi {new / 2**20:>8.2f}Mi {new / changed:>10.3f}"
                  f" {meta / 2**10:>7.1f}Ki {meta / mem:>8.4%}", flush=True)
        img = work / "full.img"
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        full = checkpoint(pid, str(img))
        full_s = time.perf_counter() - t
        full_size = size_of(files_of(img))
        print(f"{'image':>7} {'full':>7} {full_s:>7.3f} {full.freeze_seconds:>8.3f} {'':>7}"
              f" {'':>10} {full_size / 2**20:>8.2f}Mi")
        reap(pid)
        for method, incr in rows.items():
            if not incr:
                continue
            times = sorted(x[0] for x in incr)
            worst_size = max(x[1] / x[2] for x in incr)
            worst_meta = max(x[3] for x in incr) / mem
            print(f"{method} versions: time {times[0]:.3f}-{times[-1]:.3f} s (median"
                  f" {times[len(times) // 2]:.3f}) = {times[0] / full_s:.0%}-"
                  f"{times[-1] / full_s:.0%} of the full checkpoint (goal <= 30%);"
                  f" stored <= {worst_size:.3f} x changed (goal <= 1.1);"
                  f" metadata <= {worst_meta:.3%} of memory (goal <= 0.5%)")
        last = args.versions
        store_files = files_of(Path(st) / "app")
        for cold in (True, False):
            inc = min(timed_restart(out, "store", (st, "app", last), store_files, cold)
                      for _ in range(args.runs))  # fmt: skip
            ful = min(timed_restart(out, "full", str(img), files_of(img), cold)
                      for _ in range(args.runs))  # fmt: skip
            kind = "cold" if cold else "warm"
            print(f"restart ({kind} cache): version {last} {inc:.3f} s, full image {ful:.3f} s,"
                  f" ratio {inc / ful:.2f} (goal <= 1.2)", flush=True)
    finally:
        VersionSink.write_block = write_block  # type: ignore[method-assign]
        if pid:
            reap(pid)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
