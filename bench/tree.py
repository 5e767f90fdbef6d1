"""Whole applications against one process (issues 3 and 16).

16 processes of 64 MiB each, and one process with 32 threads: checkpoint, freeze and
restore times (from a cold image and a warm one, with the restart's peak RSS and the
page cache's growth: bench/dump_restore.py's measured_restart); in the same run one
process holding the same total memory (1 GiB); the tree should cost at most 1.3 x the
single process.  Run as root:  python bench/tree.py
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import build, kill_all
from cryo.engine.dump import checkpoint
from cryo.linux import libc
from cryo.linux.consts import PR
from dump_restore import measured_restart


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(FileNotFoundError):
            for t in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(x) for x in (t / "children").read_text().split())
    return out


def measure(argv: list[str], work: Path, name: str, scope: str) -> dict[str, float]:
    out = Path(tempfile.mktemp(prefix=f"{name}-", suffix=".txt", dir=work))
    p = subprocess.Popen([*argv[:1], str(out), *argv[1:]], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)  # fmt: skip
    p.returncode = 0
    pids: list[int] = [p.pid]
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and "tick 1" in out.read_text()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} never got ready")
            time.sleep(0.01)
        pids = descendants(p.pid)
        img = out.with_suffix(".img")
        r = checkpoint(p.pid, str(img), scope=scope, signal_after=signal.SIGKILL)
        kill_all(pids)
        got = {}
        for warm in (False, True):
            m = got[warm] = measured_restart(img, warm)
            pids = [int(x) for x in m.pop("pids")]  # type: ignore[attr-defined]
            n = out.read_text().count("tick")
            while out.read_text().count("tick") < n + 2:
                time.sleep(0.005)
            kill_all(pids)
        shutil.rmtree(img)
        return {"dump": r.total_seconds, "freeze": r.freeze_seconds,
                "cold": got[False]["seconds"], "restore": got[True]["seconds"],
                "hwm": max(g["hwm_mib"] for g in got.values()),
                "cache": got[False]["cache_mib"],
                "procs": len(r.pids), "threads": r.threads, "bytes": r.memory_bytes}  # fmt: skip
    finally:
        kill_all(pids)


def main() -> None:
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-tree-bench-"))
    try:
        fan, big = build("fanout", work), build("bigmem", work)
        rows = [
            ("16 x 64 MiB", [fan, "16", "64"], "tree"),
            ("1 x 1 GiB", [big, "1024"], "process"),
            ("32 threads", [fan, "32", "64", "threads"], "process"),
            ("1 x 64 MiB", [big, "64"], "process"),
        ]
        print(f"{'target':<13} {'procs':>5} {'threads':>7} {'memory':>8} {'dump s':>8}"
              f" {'freeze s':>9} {'cold s':>7} {'warm s':>7} {'RSS MiB':>8} {'cache MiB':>9}")
        got = {}
        for _ in range(2):  # the first round touches fresh memory of the VM
            for name, argv, scope in rows:
                got[name] = m = measure(argv, work, name.replace(" ", ""), scope)
                print(f"{name:<13} {m['procs']:>5} {m['threads']:>7}"
                      f" {m['bytes'] / 2**20:>7.0f}M {m['dump']:>8.3f} {m['freeze']:>9.3f}"
                      f" {m['cold']:>7.3f} {m['restore']:>7.3f} {m['hwm']:>8.0f}"
                      f" {m['cache']:>9.0f}", flush=True)
        t, s = got["16 x 64 MiB"], got["1 x 1 GiB"]
        th, one = got["32 threads"], got["1 x 64 MiB"]
        print(f"tree / single process (same memory): dump {t['dump'] / s['dump']:.2f}x,"
              f" restore warm {t['restore'] / s['restore']:.2f}x, cold {t['cold'] / s['cold']:.2f}x"
              " (goal <= 1.3x; CRIU 0.68x, issue 16)")
        print(f"32 threads / 1 thread (64 MiB): dump {th['dump'] / one['dump']:.2f}x,"
              f" restore {th['restore'] / one['restore']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
