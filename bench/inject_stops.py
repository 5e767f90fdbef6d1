"""Injected system calls and ptrace stops of a checkpoint and a restart (issue 16).

The 17-process tree (a parent and 16 children, 8 MiB each: memory is not the point
here) and one process with 32 threads, checkpointed and restarted in this process (no
worker, so that the counts are this process's), with injected calls in batches
(Injector.batch) and, in the same run, one at a time (CRYO_NO_BATCH=1, every call its
own stop as before); medians of 3 rounds.  ``--stages``: then, for one batched restart of
the tree, the batches and stops of each restore stage and driver, the root apart from
its children (where a restored process still stops).  Run as root:
  python bench/inject_stops.py [--stages]
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import build, kill_all
from cryo.engine import inject, ptrace
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.linux import libc
from cryo.linux.consts import PR
from tree import descendants


def counts() -> dict[str, int]:
    return {**inject.STATS, **ptrace.STATS}


def delta(before: dict[str, int]) -> dict[str, int]:
    now = counts()
    return {k: now[k] - before[k] for k in now}


def wait_ticks(out: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while not out.exists() or out.read_text().count("tick") < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{out} stopped ticking")
        time.sleep(0.005)


def one(argv: list[str], work: Path, scope: str, batching: bool) -> dict[str, float]:
    os.environ["CRYO_NO_BATCH"] = "" if batching else "1"
    out = Path(tempfile.mktemp(suffix=".txt", dir=work))
    p = subprocess.Popen([argv[0], str(out), *argv[1:]], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)  # fmt: skip
    p.returncode = 0
    pids = [p.pid]
    img = out.with_suffix(".img")
    try:
        wait_ticks(out, 1)
        pids = descendants(p.pid)
        c0 = counts()
        t0 = time.perf_counter()
        checkpoint(p.pid, str(img), scope=scope, signal_after=signal.SIGKILL, worker=False)
        dump_s = time.perf_counter() - t0
        dump = delta(c0)
        kill_all(pids)
        c0 = counts()
        t0 = time.perf_counter()
        r = restart(str(img))
        rest_s = time.perf_counter() - t0
        rest = delta(c0)
        pids = list(r.pids.values())
        n = out.read_text().count("tick")
        wait_ticks(out, n + 2)  # it goes on
        return {"procs": len(r.pids), "dump_s": dump_s, "restart_s": rest_s,
                "dump_stops": dump["stops"], "restart_stops": rest["stops"],
                "restart_calls": rest["batched_calls"] + rest["single_calls"],
                "restart_batches": rest["batches"],
                "restart_single": rest["single_calls"]}  # fmt: skip
    finally:
        kill_all(pids)
        shutil.rmtree(img, ignore_errors=True)


def by_stage() -> collections.Counter[tuple[str, str, str, str]]:
    """Wrap the restart's stage walk (session.Restart._stages): what each (stage,
    driver, root or child) costs, counted into the Counter returned."""
    from cryo.engine import drivers as D
    from cryo.engine import session

    got: collections.Counter[tuple[str, str, str, str]] = collections.Counter()

    def stages(ctx: Any, names: tuple[str, ...]) -> None:
        for stage in names:
            for d in D.DRIVERS:
                for per_thread, table in ((False, d.restore), (True, d.restore_thread)):
                    hook: Any = table.get(stage)
                    if hook is None:
                        continue
                    c0 = counts()
                    if per_thread:
                        for trec in ctx.thread_records:
                            hook(ctx, ctx.thread_injector(trec), trec)
                    else:
                        hook(ctx)
                    who = "root" if ctx.proc.get("ppid") not in ctx.pid_map else "child"
                    for k, v in delta(c0).items():
                        got[(stage, d.name, who, k)] += v

    session.Restart._stages = staticmethod(stages)  # type: ignore[method-assign,assignment]
    return got


def main() -> None:
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    stages = "--stages" in sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="cryo-inject-bench-"))
    try:
        fan = build("fanout", work)
        rows = [("17 processes", [fan, "16", "8"], "tree"),
                ("32 threads", [fan, "32", "8", "threads"], "process")]  # fmt: skip
        print(f"{'target':<13} {'calls':>9} {'procs':>5} {'restart calls':>13}"
              f" {'batches':>7} {'single':>6} {'stops':>6} {'restart s':>9}"
              f" {'dump stops':>10} {'dump s':>7}")
        for name, argv, scope in rows:
            for batching in (False, True):
                got = [one(argv, work, scope, batching) for _ in range(3)]
                m = {k: statistics.median(g[k] for g in got) for k in got[0]}
                print(f"{name:<13} {'batched' if batching else 'one each':>9} {m['procs']:>5.0f}"
                      f" {m['restart_calls']:>13.0f} {m['restart_batches']:>7.0f}"
                      f" {m['restart_single']:>6.0f} {m['restart_stops']:>6.0f}"
                      f" {m['restart_s']:>9.3f} {m['dump_stops']:>10.0f} {m['dump_s']:>7.3f}",
                      flush=True)  # fmt: skip
        if stages:
            cost = by_stage()
            one(rows[0][1], work, "tree", True)
            print(f"\n{'stage':<8} {'driver':<14} {'who':<5} {'batches':>7} {'single':>6}"
                  f" {'stops':>6}")
            for key in sorted({k[:3] for k in cost}):
                b, n, st = (cost[(*key, k)] for k in ("batches", "single_calls", "stops"))
                if b or n or st:
                    print(f"{key[0]:<8} {key[1]:<14} {key[2]:<5} {b:>7} {n:>6} {st:>6}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
