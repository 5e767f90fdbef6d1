"""The checkpoint's fingerprints of privately mapped files (engine/changed.py), old and
new in the same run.

The new collect reads the bytes through the process's mappings (/proc/PID/mem) and
only stats the file; the old one (``--old PATH``, a changed.py of an earlier commit,
e.g. from ``git show REV:src/cryo/engine/changed.py``) opens and reads each file.  Two
targets, stopped (SIGSTOP) while they are read: a python3 (its interpreter and
libraries, small) and a C program mapping a file of ``--mib`` MiB privately (every
other page touched, so that half the pages are not faulted in yet: the new read faults
them in).  Each round drops changed.py's cache of fingerprints first (a first
checkpoint; the page cache warm for both); medians of ``--rounds`` (old and new
alternate), and the first round of each (the new one's faults the untouched pages in;
later ones find them).  Run as root:
    python bench/fingerprints.py --old /tmp/changed_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from cryo import procfs
from cryo.linux import libc
from cryo.linux.consts import PAGE_IS

MAPPER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    size_t n = strtoul(argv[2], 0, 10) << 20;
    volatile char *p = mmap(0, n, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return 1;
    long s = 0;
    for (size_t i = 0; i < n; i += 8192) s += p[i];
    printf("ready %ld\n", s);
    fflush(stdout);
    pause();
    return 0;
}
"""


class Ctx:
    """What collect reads of the memory driver's: the mappings and the runs it saves
    (in a private file mapping the pages not the file's), found here, not timed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        vmas = procfs.parse_smaps_flags(procfs.read(pid, "smaps"))
        self.records: dict[bytes, Any] = {b"MM  ": {"vmas": [
            {"start": v.start, "end": v.end, "pgoff": v.offset, "path": v.path,
             "prot": v.prot, "kind": "file" if v.path.startswith("/") and not v.shared
             else "other"} for v in vmas]}}  # fmt: skip
        self.runs: list[tuple[int, int]] = []
        pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            for v in self.records[b"MM  "]["vmas"]:
                if v["kind"] == "file":
                    self.runs += [(s, e - s) for s, e, c in libc.pagemap_scan(
                        pm, v["start"], v["end"], PAGE_IS.PRESENT | PAGE_IS.SWAPPED,
                        PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.FILE)
                        if not c & PAGE_IS.FILE]  # fmt: skip
        finally:
            os.close(pm)


def load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one(mod: ModuleType, pid: int) -> tuple[float, int]:
    """One first checkpoint's collect: (seconds, bytes hashed)."""
    mod._SEEN.clear()
    ctx = Ctx(pid)
    t = time.perf_counter()
    mod.collect(ctx)
    took = time.perf_counter() - t
    return took, sum(n for f in ctx.records[mod.KIND]["files"] for _o, n in f["ranges"])


def timed(old: ModuleType, new: ModuleType, pid: int, rounds: int) -> list[list[float]]:
    """Rounds of old then new, alternating: [[old seconds...], [new...], [old bytes,
    new bytes]]."""
    out: list[list[float]] = [[], [], [0, 0]]
    for _ in range(rounds):
        for i, mod in enumerate((old, new)):
            t, n = one(mod, pid)
            out[i].append(t)
            out[2][i] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="an earlier engine/changed.py")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    from cryo.engine import changed as new

    old = load(a.old, "changed_old")
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        with open(data, "wb") as f:
            f.write(os.urandom(1 << 20) * a.mib)
        src, exe = Path(d) / "m.c", Path(d) / "m"
        src.write_text(MAPPER)
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
        py = subprocess.Popen([sys.executable, "-c", "import time, json, ssl; time.sleep(600)"],
                              close_fds=True)  # fmt: skip
        mp = subprocess.Popen([str(exe), str(data), str(a.mib)], stdout=subprocess.PIPE,
                              close_fds=True)  # fmt: skip
        try:
            assert mp.stdout is not None and mp.stdout.readline().startswith(b"ready")
            time.sleep(0.5)
            print(f"load {os.getloadavg()[0]:.2f}")
            for what, p in (("python3", py), (f"{a.mib} MiB mapped", mp)):
                os.kill(p.pid, signal.SIGSTOP)
                try:
                    # old first: its reads fill the page cache for both
                    ts_old, ts_new, (n_old, n_new) = timed(old, new, p.pid, a.rounds)
                finally:
                    os.kill(p.pid, signal.SIGCONT)
                f_old, f_new = ts_old[0], ts_new[0]
                t_old, t_new = statistics.median(ts_old), statistics.median(ts_new)
                print(f"{what}: old {t_old * 1e3:.1f} ms ({int(n_old) >> 10} KiB hashed), new"
                      f" {t_new * 1e3:.1f} ms ({int(n_new) >> 10} KiB hashed), new/old"
                      f" {t_new / t_old:.2f}; first rounds (the new one faults pages in):"
                      f" old {f_old * 1e3:.1f} ms, new {f_new * 1e3:.1f} ms")
        finally:
            for p in (py, mp):
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
