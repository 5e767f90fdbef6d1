"""The same image restarted by two versions of cryo in turn (issue 16): before/after
figures of one run, whatever the load does meanwhile.

A target (bench/tree.py's fanout or bigmem) is checkpointed once; then, round after
round, each version restarts it warm (image in the page cache) and cold (dropped), in a
fresh interpreter timed from before ``import cryo.engine.restore``; the restored program
must go on (two ticks, no FAIL) before it is killed.  Medians of the wall time and of
the CPU time of the restarting interpreter (all its threads, start-up included), which
the other work on a busy machine changes less than the wall time.  Run as root:
  python bench/restart_ab.py --before /path/to/old/src [--tree | --mib 1024] [--rounds 4]
(an old tree: ``git archive COMMIT | tar -x -C DIR``, then DIR/src).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build, kill_all
from cryo.engine.dump import checkpoint
from cryo.linux import libc
from cryo.linux.consts import PR
from restart_paths import set_cache
from tree import descendants

CHILD = ("import time, json, os, sys\nt = time.perf_counter()\n"
         "from cryo.engine.restore import restart\nr = restart(sys.argv[1])\n"
         "c = os.times()\n"
         "print(json.dumps({'s': time.perf_counter() - t, 'cpu': c.user + c.system,"
         " 'pids': list(r.pids.values())}))\n")  # fmt: skip


def restart_with(src: str, img: Path, out: Path, pyc: Path) -> tuple[float, float]:
    """Wall seconds of one restart by ``src`` and the CPU seconds of its interpreter
    (all its threads, start-up included)."""
    env = dict(os.environ, PYTHONPATH=src, PYTHONPYCACHEPREFIX=str(pyc))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # (compiling every time is not cryo's cost)
    res = subprocess.run([sys.executable, "-c", CHILD, str(img)], capture_output=True,
                         text=True, env=env, timeout=300, close_fds=True)  # fmt: skip
    if res.returncode:
        raise SystemExit(f"restart by {src} failed: {res.stderr[-2000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    try:
        n = out.read_text().count("tick")
        deadline = time.monotonic() + 30
        while out.read_text().count("tick") < n + 2:
            if time.monotonic() > deadline:
                raise SystemExit(f"the program restarted by {src} does not go on")
            time.sleep(0.01)
        if "FAIL" in out.read_text():
            raise SystemExit(f"the program restarted by {src} found its memory wrong")
    finally:
        kill_all([int(p) for p in got["pids"]])
    return float(got["s"]), float(got["cpu"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the src directory of the old version")
    ap.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--tree", action="store_true", help="17 processes, 16 x 64 MiB")
    ap.add_argument("--mib", type=int, default=1024, help="one process of MIB (1024)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-restart-ab-"))
    out = work / "out.txt"
    argv, scope = (([build("fanout", work), str(out), "16", "64"], "tree") if args.tree
                   else ([build("bigmem", work), str(out), str(args.mib)], "process"))
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    p.returncode = 0  # reaped by kill_all
    pids = [p.pid]
    res: dict[str, list[tuple[float, float]]] = {}
    try:
        while not (out.exists() and "tick 1" in out.read_text()):
            time.sleep(0.01)
        pids = descendants(p.pid)
        img = work / "img"
        checkpoint(p.pid, str(img), scope=scope, signal_after=signal.SIGKILL)
        kill_all(pids)
        versions = {"before": args.before, "after": args.after}
        for name, src in versions.items():  # uncounted: each compiles its bytecode once
            restart_with(src, img, out, work / f"pyc-{name}")
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                for warm in (True, False):
                    set_cache(img / "pages.img", warm)
                    key = f"{name} {'warm' if warm else 'cold'}"
                    res.setdefault(key, []).append(
                        restart_with(versions[name], img, out, work / f"pyc-{name}"))
    finally:
        kill_all(pids)
        shutil.rmtree(work, ignore_errors=True)
    what = "17 processes, 16 x 64 MiB" if args.tree else f"1 process, {args.mib} MiB"
    print(f"{what}: {args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    for key in ("before warm", "after warm", "before cold", "after cold"):
        wall, cpu = [w for w, _ in res[key]], [c for _, c in res[key]]
        each = " ".join(f"{x:.3f}" for x in wall)
        print(f"  {key:<12} median {statistics.median(wall):.3f} s ({each}),"
              f" CPU {statistics.median(cpu):.3f} s")


if __name__ == "__main__":
    main()
