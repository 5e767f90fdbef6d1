"""Dump and restore speed against this machine's copy bound (issues 2 and 16).

For processes with 1 GiB and 4 GiB of touched anonymous memory: dump time, freeze time
(how long the target is stopped), restore time from a cold image (its files dropped from
the page cache) and from a warm one (read once before), GB/s and image size; the
restart's peak RSS (VmHWM of the process that ran it) and how much the page cache grew
during it; in the same run the time of `cp FILE COPY && sync` for a file of the same
size, and dd of the same size as the pages go (O_DIRECT in 64 MiB writes, or through
the page cache in 256 KiB writes and an fsync), and the ratios.  Then a small C
process: `cryo checkpoint` and `cryo restart` wall time, Python start-up included.
Rows say how page data went: O_DIRECT (the default) or through the page cache
(``--page-cache``).  Run as root:
python bench/dump_restore.py [--sizes 1024,4096] [--modes direct,page-cache] [--dump-only]
(``--dump-only``: checkpoints alone, no restarts)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build, kill_all, reap
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.linux import libc
from cryo.linux.consts import PR


def wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {text!r} in {path}")
        time.sleep(0.01)


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def copy_bound(work: Path, size: int) -> float:
    """Seconds for `cp f g && sync` of a file of ``size`` bytes (source cached, as the
    target's memory is)."""
    src, dst = work / "copy-src", work / "copy-dst"
    chunk = os.urandom(1 << 20) * 64
    with open(src, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    took = time.perf_counter() - t
    src.unlink()
    dst.unlink()
    return took


def dd_bound(work: Path, size: int, direct: bool) -> float:
    """Seconds for dd of ``size`` bytes of a cached source into a new file, as the
    checkpoint writes its pages: ``oflag=direct`` in 64 MiB writes, or through the page
    cache in 256 KiB writes (sink.CACHED_WRITE) with ``conv=fsync``."""
    src, dst = work / "dd-src", work / "dd-dst"
    chunk = os.urandom(1 << 20) * 64
    with open(src, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    subprocess.run(["sync"], check=True)
    how = ["bs=64M", "oflag=direct"] if direct else ["bs=256k", "conv=fsync"]
    t = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", *how, "status=none"], check=True)
    took = time.perf_counter() - t
    src.unlink()
    dst.unlink()
    return took


def cached_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def set_cache(img: Path, warm: bool) -> None:
    """The image's files (or the one file ``img``) in the page cache (read once), or none
    of them (written back, then dropped: only these files, not the whole machine's)."""
    os.sync()
    for p in [img] if img.is_file() else sorted(img.rglob("*")):
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            if warm:
                while os.read(fd, 1 << 24):
                    pass
            else:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measured_restart(img: Path, warm: bool) -> dict[str, float]:
    """Restart ``img`` in a forked child (whose restored processes come back to us, the
    subreaper): seconds, the child's peak RSS, the page cache's growth, the pids."""
    set_cache(img, warm)
    before = cached_kib()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        code = 0
        try:
            libc.prctl(PR.SET_CHILD_SUBREAPER, 0)
            t = time.perf_counter()
            rr = restart(str(img))
            took = time.perf_counter() - t
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            os.write(w, json.dumps({"seconds": took, "hwm_mib": hwm,
                                    "pids": list(rr.pids.values())}).encode())  # fmt: skip
        except BaseException as err:  # reported by the parent
            os.write(w, json.dumps({"error": repr(err)}).encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = json.loads(f.read() or b"{}")
    os.waitpid(child, 0)
    if "error" in got or not got:
        raise SystemExit(f"restart of {img} failed: {got.get('error')}")
    got["cache_mib"] = (cached_kib() - before) / 1024
    return dict(got)


def one_size(exe: str, work: Path, mib: int, direct: bool,
             restarts: bool = True) -> dict[str, float]:  # fmt: skip
    out = Path(tempfile.mktemp(prefix=f"out-{mib}-", suffix=".txt", dir=work))
    p = subprocess.Popen([exe, str(out), str(mib)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)
    p.returncode = 0  # reaped by pid below
    try:
        wait_for(out, "tick 1")
        img = out.with_suffix(".img")
        subprocess.run(["sync"], check=True)
        r = checkpoint(p.pid, str(img), signal_after=signal.SIGKILL, direct_io=direct)
        reap(p.pid)
        size = du(img)
        nan = {"seconds": float("nan"), "hwm_mib": 0.0, "cache_mib": 0.0}
        got: dict[str, dict[str, float]] = {"cold": nan, "warm": nan}
        for warm in (False, True) if restarts else ():
            m = got["warm" if warm else "cold"] = measured_restart(img, warm)
            try:
                before = out.read_text().count("tick")
                wait_for(out, f"tick {before + 2}")
                assert "FAIL" not in out.read_text()
            finally:
                kill_all([int(x) for x in m.pop("pids")])  # type: ignore[attr-defined]
        shutil.rmtree(img)
    finally:
        reap(p.pid)
    cp = copy_bound(work, mib << 20)
    dd = dd_bound(work, mib << 20, direct)
    c, w = got["cold"], got["warm"]
    return {"mib": mib, "dump": r.total_seconds, "freeze": r.freeze_seconds,
            "cold": c["seconds"], "warm": w["seconds"],
            "hwm": max(c["hwm_mib"], w["hwm_mib"]), "cache": c["cache_mib"],
            "bytes": r.memory_bytes, "image": size, "cp": cp, "dd": dd}  # fmt: skip


def small_process(exe: str, work: Path) -> tuple[float, float]:
    out = work / "small.txt"
    p = subprocess.Popen([exe, str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    p.returncode = 0
    try:
        wait_for(out, "tick 1")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cryo", "checkpoint", str(p.pid), "-D",
                        str(work / "small-img"), "--kill"], check=True, capture_output=True)
        ck = time.perf_counter() - t
        reap(p.pid)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cryo", "restart", "-D",
                            str(work / "small-img"), "--detach"], check=True,
                           capture_output=True, text=True)
        rs = time.perf_counter() - t
        reap(int(r.stdout))
    finally:
        reap(p.pid)
    return ck, rs


HEADER = (f"{'memory':>8} {'pages':>9} {'dump s':>8} {'freeze s':>9} {'cold s':>7}"
          f" {'warm s':>7} {'dump GB/s':>10} {'warm GB/s':>10} {'cp+sync s':>10} {'dump/cp':>8}"
          f" {'cold/cp':>8} {'warm/cp':>8} {'warm/cold':>9} {'RSS MiB':>8} {'cache MiB':>9}"
          f" {'image/mem':>10} {'dd s':>7} {'dump/dd':>8}")  # fmt: skip


def report(mib: int, direct: bool, m: dict[str, float]) -> None:
    gb = m["bytes"] / 1e9
    mode = "O_DIRECT" if direct else "pagecache"
    print(f"{mib:>5}MiB {mode:>9} {m['dump']:>8.3f} {m['freeze']:>9.3f} {m['cold']:>7.3f}"
          f" {m['warm']:>7.3f} {gb / m['dump']:>10.2f} {gb / m['warm']:>10.2f} {m['cp']:>10.3f}"
          f" {m['dump'] / m['cp']:>8.2f} {m['cold'] / m['cp']:>8.2f} {m['warm'] / m['cp']:>8.2f}"
          f" {m['warm'] / m['cold']:>9.2f} {m['hwm']:>8.0f} {m['cache']:>9.0f}"
          f" {m['image'] / (mib << 20):>10.4f} {m['dd']:>7.3f} {m['dump'] / m['dd']:>8.2f}",
          flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096", help="MiB of touched memory, comma separated")
    ap.add_argument("--runs", type=int, default=2,
                    help="repetitions of each size (the first touches fresh memory of the VM)")
    ap.add_argument("--dir", default=None, help="where images go (default: a temp dir in /tmp)")
    ap.add_argument("--modes", default="direct,page-cache",
                    help="how page data is written: direct (O_DIRECT, the default of cryo)"
                         " and/or page-cache (--page-cache), comma separated")  # fmt: skip
    ap.add_argument("--dump-only", action="store_true",
                    help="checkpoints only: no restarts (their columns then say nan)")
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-bench-", dir=args.dir))
    try:
        big = build("bigmem", work)
        small = build("counter", work)
        print(HEADER)
        for mib in (int(x) for x in args.sizes.split(",")):
            for mode in args.modes.split(","):
                if mode not in ("direct", "page-cache"):
                    raise SystemExit(f"unknown mode {mode!r}: direct or page-cache")
                for _ in range(args.runs):
                    direct = mode == "direct"
                    report(mib, direct, one_size(big, work, mib, direct,
                                                 restarts=not args.dump_only))
        ck, rs = small_process(small, work)
        print(f"small C process via the CLI: checkpoint {ck:.3f} s, restart {rs:.3f} s"
              " (Python start-up included)")
        print("goals: dump/cp <= 1.0, restore/cp <= 0.8, image/mem <= 1.02 (+1 MiB),"
              " small process < 0.15 s each; warm/cold <= 1.0, RSS <= 256 MiB,"
              " cache growth ~0 (issue 16)")
        print("reference (issue 16): CRIU 4.2 on this VM, 1 GiB: restore warm ~0.57 x cp+sync"
              " of the same run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
