"""Whole applications against one process (issues 3 and 16).

16 processes of 64 MiB each, and one process with 32 threads: checkpoint, freeze and
restore times (from a cold image and a warm one, with the restart's peak RSS and the
page cache's growth: bench/dump_restore.py's measured_restart); in the same run one
process holding the same total memory (1 GiB); the tree should cost at most 1.3 x the
single process.  Run as root:  python bench/tree.py

``--phases [ROUNDS]``: instead, where the 17-process tree's warm restart goes (issue 16,
docs/design.md "Where a tree's restart goes, session 12"): one checkpoint, then ROUNDS
(5) restarts in this process, each timed by phase (the session's, the fill workers'
pread, xxh3 and UFFDIO_COPY, wall and thread CPU) with its stops and injected calls.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import build, kill_all
from cryo.engine.dump import checkpoint
from cryo.linux import libc
from cryo.linux.consts import PR
from dump_restore import measured_restart, set_cache


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


def timed_phases() -> collections.Counter[str]:
    """Wrap the restart's phases and the fill workers' calls: their wall seconds, and
    "NAME cpu" their thread's CPU seconds, summed over threads into the Counter."""
    from cryo.engine import memory, session
    from cryo.image import reader

    got: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def g(*a: Any, **k: Any) -> Any:
            t, c = time.perf_counter(), time.thread_time()
            try:
                return f(*a, **k)
            finally:
                with lock:
                    got[name] += time.perf_counter() - t
                    got[name + " cpu"] += time.thread_time() - c
        return g

    for m in ("validate", "build_tree", "build_processes", "finalize"):
        setattr(session.Restart, m, timed(m, getattr(session.Restart, m)))
    memory.wait_fill = timed("wait_fill", memory.wait_fill)  # type: ignore[assignment]
    memory._write_runs = timed("UFFDIO_COPY", memory._write_runs)  # type: ignore[assignment]
    reader.Image._read_stored = timed("pread", reader.Image._read_stored)  # type: ignore[method-assign]
    reader.Image.read_checked_part = timed(  # type: ignore[method-assign]
        "pread+xxh3", reader.Image.read_checked_part)
    work = memory.Fills._work

    def worker(self: Any) -> None:
        try:
            work(self)
        finally:
            with lock:
                got["workers cpu"] += time.thread_time()
    memory.Fills._work = worker  # type: ignore[method-assign]
    return got


def phases(rounds: int) -> None:
    from cryo.engine import inject, ptrace
    from cryo.engine.restore import restart

    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    got = timed_phases()
    work = Path(tempfile.mkdtemp(prefix="cryo-tree-phases-"))
    out, img = work / "tree.txt", work / "tree.img"
    pids: list[int] = []
    try:
        p = subprocess.Popen([build("fanout", work), str(out), "16", "64"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        p.returncode = 0
        pids = [p.pid]

        def ticks(n: int) -> None:
            deadline = time.monotonic() + 60
            while not out.exists() or out.read_text().count("tick") < n:
                if time.monotonic() > deadline:
                    raise SystemExit("the tree does not tick")
                time.sleep(0.005)

        ticks(1)
        pids = descendants(p.pid)
        checkpoint(p.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
        kill_all(pids)
        cols = ["wall", "cpu", "validate", "build_tree", "build_processes", "wait_fill",
                "finalize", "workers cpu", "UFFDIO_COPY cpu", "pread cpu", "xxh3 cpu"]
        print("seconds; " + ", ".join(cols) + "; stops, batches, calls")
        for _ in range(rounds):
            set_cache(img, True)
            got.clear()
            c0 = {**inject.STATS, **ptrace.STATS}
            t, c = time.perf_counter(), os.times()
            r = restart(str(img))
            got["wall"] = time.perf_counter() - t
            got["cpu"] = sum(os.times()[:2]) - c.user - c.system
            pids = list(r.pids.values())
            n = {k: v - c0[k] for k, v in {**inject.STATS, **ptrace.STATS}.items()}
            ticks(out.read_text().count("tick") + 2)  # it goes on
            if "FAIL" in out.read_text():
                raise SystemExit("the restarted tree found its memory wrong")
            kill_all(pids)
            got["xxh3 cpu"] = got["pread+xxh3 cpu"] - got["pread cpu"]
            print(" ".join(f"{got[k]:.3f}" for k in cols),
                  f"; {n['stops']} {n['batches']} {n['batched_calls'] + n['single_calls']}",
                  flush=True)  # fmt: skip
    finally:
        kill_all(pids)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if "--phases" in sys.argv[1:]:
        rest = sys.argv[sys.argv.index("--phases") + 1 :]
        phases(int(rest[0]) if rest and rest[0].isdigit() else 5)
        return
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
