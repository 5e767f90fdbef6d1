"""One job's rounds as cryod's checkpointer runs them: checkpoint, gc, versions.

A 64 MiB victim of bench/daemon.py (writing MiB/s), checkpointed into a store every
P seconds in this process as a daemon's checkpointer does (``worker=False``, the
engine preloaded by a first round not counted), then gc by ``--keep-last`` and the
reading of the versions (the daemon's ``sync``).  Per phase: CPU time (ours) and wall
time; the victim's frozen time; with ``--profile FILE`` a cProfile of the counted
rounds (``python -m pstats FILE``).  ``--code DIR`` runs another tree's src (for a
before/after in one run: ``git archive HEAD src | tar -x -C DIR``).  ``--groups``: the
checkpoint's CPU (its own thread) split into the store's calls, the calls that are
mostly the kernel's work (/proc reads, PAGEMAP_SCAN, process_vm_readv, ptrace, ioctl),
the injected batches' Python and the engine's own Python (the rest), each function
exclusive of the others (``--wrap MOD:FUNC`` adds one); without cProfile's cost per
Python call, which makes code of many small calls look 3 times its share.

    python bench/daemon_round.py                       # 24 rounds, 1 s apart, 5 MiB/s
    python bench/daemon_round.py --rounds 40 --profile /tmp/round.prof
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--dirty", type=float, default=5.0, help="MiB the job writes a second")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--keep-last", type=int, default=3)
    ap.add_argument("--gc-every", type=int, default=1,
                    help="gc (and the versions read) after every N-th round only")
    ap.add_argument("--profile", help="cProfile of the counted rounds into this file")
    ap.add_argument("--code", help="a src directory to import cryo from")
    ap.add_argument("--label", default="")
    ap.add_argument("--phases", action="store_true", help="CPU per phase of the checkpoint")
    ap.add_argument("--drivers", action="store_true",
                    help="CPU, wall, ptrace stops and injected calls per driver hook")
    ap.add_argument("--syscalls", action="store_true",
                    help="cryo's system calls a round (perf stat on this process)")
    ap.add_argument("--groups", action="store_true",
                    help="the checkpoint's CPU: store, kernel-heavy calls, batches, the rest")
    ap.add_argument("--wrap", action="append", default=[], metavar="MOD:FUNC",
                    help="with --groups: one more function (cryo.engine.memory:dump)")
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
    per_hook = hook_profiler(counting) if args.drivers else None
    in_checkpoint = [False]  # (--groups counts the checkpoint's calls, not gc's)
    per_fn = fn_profiler(in_checkpoint, GROUPS + [(w, "--wrap") for w in args.wrap]) \
        if args.groups else None  # fmt: skip
    own: list[float] = []  # the checkpoint's CPU in its own thread, a round
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
    perf = None
    syscalls = 0
    try:
        while not (out.exists() and "ready" in out.read_text()):
            time.sleep(0.05)
        for r in range(args.rounds + 2):
            counting[0] = r >= 2
            if r == 2 and args.syscalls:
                perf = start_perf(base / "perf.txt")
            if r == 2 and args.profile:
                import cProfile

                prof = cProfile.Profile(time.thread_time)  # (CPU, this thread)
                prof.enable()
            t_next = time.monotonic() + args.every

            def timed(name: str, fn, *a, count: bool = r >= 2, **kw):  # type: ignore[no-untyped-def]
                c0, w0 = time.process_time(), time.perf_counter()
                v = fn(*a, **kw)
                if count:
                    phases[name].append((time.process_time() - c0, time.perf_counter() - w0))
                return v

            t0 = time.thread_time()
            in_checkpoint[0] = r >= 2
            _, res = timed("checkpoint", cstore.checkpoint, p.pid, store, "job",
                           scope="process", worker=False)  # fmt: skip
            in_checkpoint[0] = False
            if r >= 2:
                own.append(time.thread_time() - t0)
            if r >= 2:
                frozen.append(res.freeze_seconds)
            if r % args.gc_every == args.gc_every - 1:
                (rep,) = timed("gc", cstore.gc, store, args.keep_last, None, app="job")
                if r >= 2:
                    copied.append(sum(n for _, _, n in rep.merged))
                timed("versions", OPS["versions"], store, "job")
            time.sleep(max(0.0, t_next - time.monotonic()))
        if perf is not None:
            syscalls = stop_perf(perf, base / "perf.txt")
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        a = Store(store).app("job")
        dirs = a.versions()
        size = sum(du(a.vdir(v)) for v in dirs)
    finally:
        if perf is not None and perf.poll() is None:
            perf.kill()
            perf.wait()
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
              f" {statistics.median(wall):6.1f}, max {max(wall):6.1f}"
              f"{f'; {sum(cpu) / args.rounds:.1f} ms a round' if args.gc_every > 1 else ''}")
    print(f"  frozen     median {statistics.median(frozen) * 1000:.1f} ms, max"
          f" {max(frozen) * 1000:.1f}")
    for label, x in spent.items():
        print(f"  {label:22s} {x / args.rounds * 1000:6.1f} ms of CPU a round")
    if args.syscalls:
        print(f"  syscalls   {syscalls / args.rounds:.0f} a round (cryo's threads: checkpoint,"
              f" gc, versions, the sleep between rounds)")
    if per_hook is not None:
        print_hooks(per_hook, args.rounds)
    if per_fn is not None:
        print_groups(per_fn, own, args.rounds)
    print(f"  gc copied  {sum(copied)} pages in {sum(1 for c in copied if c)} of"
          f" {len(copied)} rounds (max {max(copied)} in one)")
    print(f"  store      {len(dirs)} version directories, {size / 2**20:.1f} MiB on disk"
          f" for {args.mib} MiB of memory")
    return 0


def hook_profiler(counting: list[bool]) -> dict[str, list[float]]:
    """Wrap every checkpoint hook of every driver, and the session's own steps around
    them, to add up per label: CPU of the calling thread, wall, ptrace stops, batches of
    injected calls, single injected calls, and times called; exclusive of nested labels
    (a driver's hook that calls a wrapped step is charged without it)."""
    from cryo.engine import drivers as D
    from cryo.engine import inject, ptrace, scratchlog, session, sud, textscan, tree

    acc: dict[str, list[float]] = {}
    stack: list[list[float]] = []  # per open label: what its nested labels took

    def now() -> list[float]:
        return [time.thread_time(), time.perf_counter(), ptrace.STATS["stops"],
                inject.STATS["batches"], inject.STATS["single_calls"], 0.0]

    def stepped(label, g):  # type: ignore[no-untyped-def]
        """A queue hook's generator, each of its steps counted under ``label``."""
        step = wrap(label, next)
        sent = wrap(label, lambda g, v: g.send(v))
        try:
            got = step(g)
            while True:
                got = sent(g, (yield got))
        except StopIteration as done:
            return done.value

    def wrap(label: str, fn):  # type: ignore[no-untyped-def]
        def profiled(*a, **kw):  # type: ignore[no-untyped-def]
            out = once(*a, **kw)
            return stepped(label, out) if isinstance(out, types.GeneratorType) else out

        def once(*a, **kw):  # type: ignore[no-untyped-def]
            if not counting[0]:
                return fn(*a, **kw)
            t0 = now()
            stack.append([0.0] * 6)
            try:
                return fn(*a, **kw)
            finally:
                nested = stack.pop()
                t1 = now()
                total = [t1[i] - t0[i] for i in range(5)] + [1.0]
                row = acc.setdefault(label, [0.0] * 6)
                for i in range(6):
                    row[i] += total[i] - (nested[i] if i < 5 else 0.0)
                if stack:
                    for i in range(5):
                        stack[-1][i] += total[i]

        return profiled

    hooks = ("queue", "queue_thread", "inject", "inject_thread", "collect", "shared", "write",
             "written", "records", "before_freeze", "after_checkpoint", "thaw")  # fmt: skip
    new = []
    for d in D.DRIVERS:
        changes = {h: wrap(f"{d.name}.{h}", getattr(d, h)) for h in hooks
                   if getattr(d, h, None)}  # (an older tree's drivers: --code)
        new.append(d.replace(**changes) if changes else d)
    D.DRIVERS = tuple(new)
    for mod, name, label in (
            (tree, "freeze", "session: tree.freeze"), (tree, "let_go", "session: tree.let_go"),
            (tree, "check_groups", "session: tree.check_groups"),
            (session.files, "check_shared_tables", "session: files.check_shared_tables"),
            (textscan, "find_syscall", "session: textscan.find_syscall"),
            (sud, "check", "session: sud.check"), (scratchlog, "sweep", "session: scratchlog"),
            (scratchlog, "choose", "session: scratchlog"),
            (scratchlog, "note", "session: scratchlog"),
            (scratchlog, "forget", "session: scratchlog"),
            (inject.Batch, "run", "session: batches run"),
            (inject.Injector, "map_scratch", "session: map_scratch"),
            (inject.Injector, "unmap_scratch", "session: unmap_scratch"),
            (inject.Injector, "finish", "session: injector finish"),
            (session.memory, "copy_pages", "session: memory.copy_pages"),
            (session.Checkpoint, "_head", "session: HEAD record"),
            (session.Checkpoint, "prepare", "phase prepare (rest)"),
            (session.Checkpoint, "freeze", "phase freeze (rest)"),
            (session.Checkpoint, "collect", "phase collect (rest)"),
            (session.Checkpoint, "write", "phase write (rest)"),
            (session.Checkpoint, "commit", "phase commit (the sink's)"),
            (session.Checkpoint, "resume", "phase resume (rest)")):  # fmt: skip
        if hasattr(mod, name):  # (Batch.run: not in an older tree, --code)
            setattr(mod, name, wrap(label, getattr(mod, name)))
    ptrace.Tracee.park = wrap("session: park", ptrace.Tracee.park)  # type: ignore[method-assign]
    import threading

    run = threading.Thread.run

    def thread_run(self: threading.Thread) -> None:  # the CPU of the other threads
        c0 = time.thread_time()
        try:
            run(self)
        finally:
            if counting[0]:
                row = acc.setdefault(f"thread {self.name.split('_')[0]}", [0.0] * 6)
                row[0] += time.thread_time() - c0
                row[5] += 1

    threading.Thread.run = thread_run  # type: ignore[method-assign]
    from cryo.engine import locks, threads

    for mod in (threads, locks):  # the reads beside the freeze, in the kept pool thread
        real, name = mod.background, "thread (pool) " + mod.__name__.rsplit(".", 1)[-1]

        def background(fn, real=real, label=name):  # type: ignore[no-untyped-def]
            def timed() -> object:
                c0 = time.thread_time()
                try:
                    return fn()
                finally:
                    if counting[0]:
                        row = acc.setdefault(label, [0.0] * 6)
                        row[0] += time.thread_time() - c0
                        row[5] += 1

            return real(timed)

        mod.background = background  # type: ignore[attr-defined]
    return acc


def print_hooks(acc: dict[str, list[float]], rounds: int) -> None:
    print(f"  {'a round, exclusive of nested rows':38s} {'CPU ms':>7s} {'wall ms':>8s}"
          f" {'stops':>6s} {'batches':>7s} {'singles':>7s} {'calls':>5s}")
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])
    tot = [0.0] * 6
    for label, v in rows:
        tot = [a + b for a, b in zip(tot, v, strict=True)]
        print(f"  {label:38s} {v[0] / rounds * 1000:7.2f} {v[1] / rounds * 1000:8.2f}"
              f" {v[2] / rounds:6.1f} {v[3] / rounds:7.1f} {v[4] / rounds:7.1f}"
              f" {v[5] / rounds:5.1f}")
    print(f"  {'total':38s} {tot[0] / rounds * 1000:7.2f} {tot[1] / rounds * 1000:8.2f}"
          f" {tot[2] / rounds:6.1f} {tot[3] / rounds:7.1f} {tot[4] / rounds:7.1f}")


# (function, group) for --groups: none of them a generator (only its making would count)
GROUPS = [(f"cryo.store.sink:{f}", "store") for f in (
    "load_previous", "VersionSink.__init__", "VersionSink.previous_records",
    "VersionSink.record", "VersionSink.select", "VersionSink.write_block",
    "VersionSink.inherit", "VersionSink.commit")] + [
    ("cryo.store.layout:Store.__init__", "store"), ("cryo.store.layout:App.sweep", "store"),
    ("cryo.store.layout:App.lock", "store"), ("cryo.store.layout:du", "store")] + [
    (f"cryo.{f}", "kernel") for f in (
        "procfs:read", "linux.libc:pagemap_scan", "linux.libc:ioctl",
        "linux.libc:process_vm_readv_raw", "linux.libc:process_vm_readv",
        "linux.libc:process_vm_writev", "linux.libc:ptrace", "engine.ptrace:Tracee.wait_stop",
        "engine.memory:_swapped_not_markers")] + [
    ("cryo.engine.inject:Batch.call", "batches"), ("cryo.engine.inject:Injector.run_batch",
                                                   "batches")]  # fmt: skip


def fn_profiler(counting: list[bool], fns: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """Wrap each "module:Qual.name" of ``fns``: CPU of the calling thread, exclusive of
    the other wrapped functions it calls, and calls, added up per function."""
    import importlib
    import threading

    acc: dict[str, list[Any]] = {}
    local = threading.local()  # each thread's stack of open calls

    def wrap(label: str, fn):  # type: ignore[no-untyped-def]
        def timed(*a, **kw):  # type: ignore[no-untyped-def]
            if not counting[0]:
                return fn(*a, **kw)
            stack = local.__dict__.setdefault("stack", [])
            t0 = time.thread_time()
            stack.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                nested = stack.pop()
                dt = time.thread_time() - t0
                acc[label][1] += dt - nested
                acc[label][2] += 1
                if stack:
                    stack[-1] += dt

        return timed

    for name, group in fns:
        mod, _, qual = name.partition(":")
        owner: Any = importlib.import_module(mod)
        *path, last = qual.split(".")
        for part in path:
            owner = getattr(owner, part)
        if getattr(owner, last, None) is None:  # (an older tree's: --code)
            continue
        acc[name] = [group, 0.0, 0]
        setattr(owner, last, wrap(name, getattr(owner, last)))
    return acc


def print_groups(acc: dict[str, list[Any]], own: list[float], rounds: int) -> None:
    total = sum(own) / rounds * 1000
    print(f"  the checkpoint's own thread: {total:.2f} ms of CPU a round (mean; the"
          " other threads apart)")
    groups: dict[str, float] = {}
    for name, (group, t, n) in sorted(acc.items(), key=lambda kv: -kv[1][1]):
        groups[group] = groups.get(group, 0.0) + t / rounds * 1000
        if t:
            print(f"    {group:8s} {name:48s} {t / rounds * 1000:6.2f} ms {n / rounds:6.1f}"
                  " calls")
    rest = total - sum(groups.values())
    print("    by group: " + ", ".join(f"{g} {x:.2f} ms" for g, x in groups.items())
          + f", the engine's own Python (the rest) {rest:.2f} ms")


def start_perf(out: Path) -> subprocess.Popen[bytes]:
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                             str(os.getpid()), "-o", str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)  # (attached)
    return perf


def stop_perf(perf: subprocess.Popen[bytes], out: Path) -> int:
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=10)
    for line in out.read_text().splitlines():
        if "raw_syscalls:sys_enter" in line:
            return int(line.split(",")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
