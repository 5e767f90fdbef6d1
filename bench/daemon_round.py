"""One job's rounds as cryod's checkpointer runs them: checkpoint, gc, versions.

A 64 MiB victim of bench/daemon.py (writing MiB/s), checkpointed into a store every
P seconds in this process as a daemon's checkpointer does (``worker=False``, the
engine preloaded by a first round not counted), then gc by ``--keep-last`` and the
reading of the versions (the daemon's ``sync``).  Per phase: CPU time (ours) and wall
time; the victim's frozen time; with ``--profile FILE`` a cProfile of the counted
rounds (``python -m pstats FILE``).  ``--code DIR`` runs another tree's src (for a
before/after in one run: ``git archive HEAD src | tar -x -C DIR``).

    python bench/daemon_round.py                       # 24 rounds, 1 s apart, 5 MiB/s
    python bench/daemon_round.py --rounds 40 --profile /tmp/round.prof
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--dirty", type=float, default=5.0, help="MiB the job writes a second")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--keep-last", type=int, default=3)
    ap.add_argument("--profile", help="cProfile of the counted rounds into this file")
    ap.add_argument("--code", help="a src directory to import cryo from")
    ap.add_argument("--label", default="")
    ap.add_argument("--phases", action="store_true", help="CPU per phase of the checkpoint")
    args = ap.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    sys.path.insert(1, str(HERE))
    import cryo
    import cryo.preload
    from benchlib import kill_all
    from cryo import store as cstore
    from cryo.daemon.runner import OPS
    from cryo.store.layout import Store, du
    from daemon import VICTIM

    cryo.preload.preload()  # as the daemon does before it forks its checkpointers
    spent: dict[str, float] = {}  # CPU seconds (the whole process's) in each phase
    counting = [False]
    if args.phases:
        from cryo.engine import session
        from cryo.store import sink

        def wrap(owner: object, name: str, label: str) -> None:
            real = getattr(owner, name)

            def timed_phase(*a, **kw):  # type: ignore[no-untyped-def]
                c0 = time.process_time()
                try:
                    return real(*a, **kw)
                finally:
                    if counting[0]:
                        spent[label] = spent.get(label, 0.0) + time.process_time() - c0

            setattr(owner, name, timed_phase)

        for name in ("prepare", "freeze", "collect", "write", "release", "commit", "resume"):
            wrap(session.Checkpoint, name, f"engine {name}")
        wrap(sink, "load_previous", "store load_previous")
        for name in ("select", "inherit", "commit"):
            wrap(sink.VersionSink, name, f"store {name}")
    base = Path(tempfile.mkdtemp(prefix="cryo-round-", dir="/var/tmp"))
    (base / "victim.c").write_text(VICTIM)
    exe = base / "victim"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(base / "victim.c")], check=True)
    out = base / "job.txt"
    p = subprocess.Popen([str(exe), str(out), str(args.mib), str(args.dirty * 256)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    p.returncode = 0  # (reaped by kill_all)
    store = str(base / "store")
    phases: dict[str, list[tuple[float, float]]] = {"checkpoint": [], "gc": [],
                                                    "versions": []}  # fmt: skip
    frozen: list[float] = []
    copied: list[int] = []  # pages gc copied, each round
    prof = None
    try:
        while not (out.exists() and "ready" in out.read_text()):
            time.sleep(0.05)
        for r in range(args.rounds + 2):
            counting[0] = r >= 2
            if r == 2 and args.profile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            t_next = time.monotonic() + args.every

            def timed(name: str, fn, *a, count: bool = r >= 2, **kw):  # type: ignore[no-untyped-def]
                c0, w0 = time.process_time(), time.perf_counter()
                v = fn(*a, **kw)
                if count:
                    phases[name].append((time.process_time() - c0, time.perf_counter() - w0))
                return v

            _, res = timed("checkpoint", cstore.checkpoint, p.pid, store, "job",
                           scope="process", worker=False)  # fmt: skip
            if r >= 2:
                frozen.append(res.freeze_seconds)
            (rep,) = timed("gc", cstore.gc, store, args.keep_last, None, app="job")
            if r >= 2:
                copied.append(sum(n for _, _, n in rep.merged))
            timed("versions", OPS["versions"], store, "job")
            time.sleep(max(0.0, t_next - time.monotonic()))
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        a = Store(store).app("job")
        dirs = a.versions()
        size = sum(du(a.vdir(v)) for v in dirs)
    finally:
        kill_all([p.pid])
        shutil.rmtree(base, ignore_errors=True)  # (the store: ~80 MiB a run)
    load = os.getloadavg()
    print(f"{args.label or cryo.__file__}: {args.rounds} rounds of a {args.mib} MiB job"
          f" writing {args.dirty:g} MiB/s, every {args.every:g} s, keep {args.keep_last}"
          f" (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    for name, xs in phases.items():
        cpu = [x[0] * 1000 for x in xs]
        wall = [x[1] * 1000 for x in xs]
        print(f"  {name:10s} CPU median {statistics.median(cpu):6.1f} ms, mean"
              f" {statistics.mean(cpu):6.1f}, max {max(cpu):6.1f};  wall median"
              f" {statistics.median(wall):6.1f}, max {max(wall):6.1f}")
    print(f"  frozen     median {statistics.median(frozen) * 1000:.1f} ms, max"
          f" {max(frozen) * 1000:.1f}")
    for label, x in spent.items():
        print(f"  {label:22s} {x / args.rounds * 1000:6.1f} ms of CPU a round")
    print(f"  gc copied  {sum(copied)} pages in {sum(1 for c in copied if c)} of"
          f" {len(copied)} rounds (max {max(copied)} in one)")
    print(f"  store      {len(dirs)} version directories, {size / 2**20:.1f} MiB on disk"
          f" for {args.mib} MiB of memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
