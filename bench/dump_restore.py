"""Dump and restore speed against this machine's copy bound (issue 2's goals).

For processes with 1 GiB and 4 GiB of touched anonymous memory: dump time, freeze time
(how long the target is stopped), restore time, GB/s and image size; in the same run
the time of `cp FILE COPY && sync` for a file of the same size, and the ratios.
Then a small C process: `cryo checkpoint` and `cryo restart` wall time, Python start-up
included.  Run as root:  python bench/dump_restore.py [--sizes 1024,4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build, reap
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


def one_size(exe: str, work: Path, mib: int, direct: bool) -> dict[str, float]:
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
        t = time.perf_counter()
        rr = restart(str(img))
        restore_s = time.perf_counter() - t
        before = out.read_text().count("tick")
        wait_for(out, f"tick {before + 2}")
        assert "FAIL" not in out.read_text()
        reap(rr.pid)
        shutil.rmtree(img)
    finally:
        reap(p.pid)
    cp = copy_bound(work, mib << 20)
    return {"mib": mib, "dump": r.total_seconds, "freeze": r.freeze_seconds,
            "restore": restore_s, "bytes": r.memory_bytes, "image": size, "cp": cp}


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


def report(mib: int, direct: bool, m: dict[str, float]) -> None:
    gb = m["bytes"] / 1e9
    mode = "O_DIRECT" if direct else "cached"
    print(f"{mib:>5}MiB {mode:>9} {m['dump']:>8.3f} {m['freeze']:>9.3f} {m['restore']:>10.3f}"
          f" {gb / m['dump']:>10.2f} {gb / m['restore']:>10.2f} {m['cp']:>10.3f}"
          f" {m['dump'] / m['cp']:>8.2f} {m['restore'] / m['cp']:>8.2f}"
          f" {m['image'] / (mib << 20):>10.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096", help="MiB of touched memory, comma separated")
    ap.add_argument("--runs", type=int, default=2,
                    help="repetitions of each size (the first touches fresh memory of the VM)")
    ap.add_argument("--dir", default=None, help="where images go (default: a temp dir in /tmp)")
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-bench-", dir=args.dir))
    try:
        big = build("bigmem", work)
        small = build("counter", work)
        print(f"{'memory':>8} {'pages':>9} {'dump s':>8} {'freeze s':>9} {'restore s':>10}"
              f" {'dump GB/s':>10}"
              f" {'rest GB/s':>10} {'cp+sync s':>10} {'dump/cp':>8} {'rest/cp':>8}"
              f" {'image/mem':>10}")
        for mib in (int(x) for x in args.sizes.split(",")):
            for direct in (True, False):
                for _ in range(args.runs):
                    report(mib, direct, one_size(big, work, mib, direct))
        ck, rs = small_process(small, work)
        print(f"small C process via the CLI: checkpoint {ck:.3f} s, restart {rs:.3f} s"
              " (Python start-up included)")
        print("goals: dump/cp <= 1.0, restore/cp <= 0.8, image/mem <= 1.02 (+1 MiB),"
              " small process < 0.15 s each")
        print("reference (issue 2): CRIU 4.2 on this VM, 1 GiB: dump 0.33-0.49 s,"
              " restore 0.31-0.34 s, cp 0.44 s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
