"""cryod under load: N jobs of M MiB checkpointed every P seconds for T seconds.

Each job is a victim that counts loop iterations per second (and writes a few pages of
its memory a second, so that incremental versions have something to store).  The same
victims first run without the daemon for B seconds (the baseline), then with it; the
slowdown is the drop of their iterations per second.  Reported, each against the
issue's goal: every due checkpoint and how late it started (within 1 s of its time),
checkpoints lost (due but never taken: none), failures, durations and frozen times,
the victims' slowdown (under 2%), and the daemon's RSS sampled every second (stable:
after the first fifth of the run, it grows by less than 1 MiB and 2%).

    python bench/daemon.py                # the issue's run: 20 jobs, 64 MiB, every 5 s, 300 s
    python bench/daemon.py --quick        # 10 jobs, 16 MiB, every 2 s, 120 s (baseline 15 s)
    python bench/daemon.py --jobs 8 --time 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import kill_all
from cryo.daemon import Client

VICTIM = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* argv: OUT MIB PAGES_PER_S; prints "rate N" each second (iterations in that second) */
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    size_t n = (size_t)atol(argv[2]) << 20, pages = n / 4096;
    double pps = atof(argv[3]);
    unsigned char *p = malloc(n);
    if (!p) return 3;
    memset(p, 0x5a, n);  /* every page its own bytes: none is a page of zeros */
    for (size_t i = 0; i < n; i += 4096) *(size_t *)(p + i) = i;
    FILE *f = fopen(argv[1], "a");
    if (!f) return 4;
    setvbuf(f, NULL, _IOLBF, 0);
    fprintf(f, "ready\n");
    unsigned long long x = 1, acc = 0, iters = 0, last = 0, dirtied = 0;
    double t0 = now(), start = t0;
    size_t page = 0;
    for (;;) {
        for (int k = 0; k < 1024; k++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            acc += x >> 33;
        }
        iters++;
        if ((iters & 63) == 0) {
            double t = now();
            while (dirtied < (t - start) * pps) {  /* a few pages written a second */
                p[page * 4096] += (unsigned char)acc; page = (page + 97) % pages; dirtied++;
            }
            if (t - t0 >= 1.0) {
                struct timespec w; clock_gettime(CLOCK_REALTIME, &w);
                fprintf(f, "rate %llu %.3f\n", iters - last, w.tv_sec + w.tv_nsec / 1e9);
                last = iters; t0 += 1.0;
            }
        }
    }
}
"""


def rates(path: Path, since: float, until: float) -> list[int]:
    out = []
    for line in path.read_text().splitlines():
        w = line.split()
        if w[:1] == ["rate"] and since <= float(w[2]) <= until:
            out.append(int(w[1]))
    return out


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def pss(pids: list[int]) -> int:
    """Proportional set size of ``pids`` together (shared pages counted once)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu(pid: int) -> float:
    """CPU seconds of the daemon, of its children reaped, and of those alive."""
    def stat(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    f = stat(pid)
    ticks = sum(int(x) for x in f[11:15])
    for c in children(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(x) for x in stat(c)[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_verdict(samples: list[tuple[float, int]], seconds: float) -> tuple[bool, str]:
    """Stable: after the first fifth of the run (imports, the first checkpoints, SQLite's
    cache filling), the RSS grows by less than 1 MiB and 2%; the slope by a least-squares
    line over that part."""
    warm = [(t, x) for t, x in samples if t >= seconds / 5] or samples
    first, last, top = warm[0][1], warm[-1][1], max(x for _, x in warm)
    n = len(warm)
    mt, mx = sum(t for t, _ in warm) / n, sum(x for _, x in warm) / n
    var = sum((t - mt) ** 2 for t, _ in warm)
    slope = sum((t - mt) * (x - mx) for t, x in warm) / var if var else 0.0
    growth = top - first
    stable = growth < max(1 << 20, 0.02 * first)
    return stable, (f"{samples[0][1] / 2**20:.1f} at the start, {first / 2**20:.1f} after the"
                    f" first fifth, {last / 2**20:.1f} at the end (max {top / 2**20:.1f}):"
                    f" {growth / 2**20:+.2f} after the warm-up, slope"
                    f" {slope * 60 / 2**20:+.3f} MiB/min")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--time", type=float, default=300.0, help="seconds with the daemon")
    ap.add_argument("--baseline", type=float, default=30.0, help="seconds without it")
    ap.add_argument("--dirty", type=float, default=1.0, help="MiB each job writes a second")
    ap.add_argument("--keep-last", type=int, default=3, help="0: no retention")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--nice", type=int, help="the daemon's nice (cryod --nice; default its"
                    " default)")
    ap.add_argument("--dir", help="where the store and state go (default a new /tmp dir)")
    ap.add_argument("--checkpoint-timeout", type=float, default=120.0, metavar="S",
                    help="cryod --checkpoint-timeout: a hung checkpoint fails (and is"
                    " named below) instead of holding a slot for the rest of the run")
    ap.add_argument("--quick", action="store_true",
                    help="10 jobs of 16 MiB every 2 s for 120 s, 15 s of baseline")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.mib, args.every, args.time, args.baseline = 10, 16, 2.0, 120.0, 15.0

    base = Path(args.dir or tempfile.mkdtemp(prefix="cryod-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    exe = base / "victim"
    (base / "victim.c").write_text(VICTIM)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(base / "victim.c")], check=True)
    pids: list[int] = []
    daemon = None
    try:
        outs = []
        for i in range(args.jobs):
            out = base / f"job{i}.txt"
            outs.append(out)
            p = subprocess.Popen([str(exe), str(out), str(args.mib), str(args.dirty * 256)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, close_fds=True,
                                 start_new_session=True)  # fmt: skip
            p.returncode = 0  # reaped by pid (kill_all)
            pids.append(p.pid)
        while not all(o.exists() and "ready" in o.read_text() for o in outs):
            time.sleep(0.05)
        t_base = time.time() + 1.0
        time.sleep(args.baseline + 1.0)
        t_base_end = time.time()

        sock = str(base / "cryod.sock")
        daemon = subprocess.Popen([sys.executable, "-m", "cryo", "daemon", "--socket", sock,
                                   "--state", str(base / "state"), "--store",
                                   str(base / "store"), "--log", str(base / "cryod.log"),
                                   "--max-concurrent", str(args.max_concurrent),
                                   *(["--nice", str(args.nice)] if args.nice is not None
                                     else []), "--checkpoint-timeout",
                                   f"{args.checkpoint_timeout:g}"],
                                  stdin=subprocess.DEVNULL, close_fds=True,
                                  start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(sock, timeout=5) as c:
                    c.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # jobs added P/N apart: their due times are spread over the period
        with Client(sock, timeout=60) as c:
            for i, pid in enumerate(pids):
                c.add(f"job{i}", pid=pid, every=args.every, keep_last=args.keep_last or None)
                time.sleep(args.every / args.jobs)
        t_start = time.time()
        load0 = os.getloadavg()
        cpu0 = cpu(daemon.pid)
        samples = []  # (seconds since the start, the daemon's RSS), every second
        total = []  # (seconds, PSS of the daemon and its checkpointers)
        while (now := time.time()) < t_start + args.time:
            samples.append((now - t_start, rss(daemon.pid)))
            total.append((now - t_start, pss([daemon.pid, *children(daemon.pid)])))
            time.sleep(min(1.0, max(0.0, t_start + args.time - time.time())))
        t_end = time.time()
        load1 = os.getloadavg()
        cpu1 = cpu(daemon.pid)
        samples.append((t_end - t_start, rss(daemon.pid)))
        total.append((t_end - t_start, pss([daemon.pid, *children(daemon.pid)])))
        nice = os.getpriority(os.PRIO_PROCESS, daemon.pid)
        with Client(sock, timeout=60) as c:
            hist = {j["name"]: c.history(j["name"], limit=100000) for j in c.jobs()}
            jobs = {j["name"]: j for j in c.jobs()}
            frozen = [v["frozen"] for j in jobs for v in c.versions(j) if v["frozen"]]
        with_daemon = [statistics.mean(rates(o, t_start + 1, t_end)) for o in outs]
        baseline = [statistics.mean(rates(o, t_base, t_base_end)) for o in outs]
        after = None
        if args.baseline:
            daemon.kill()
            daemon.wait()
            daemon = None
            t_after = time.time() + 1.0
            time.sleep(args.baseline + 1.0)
            after = [statistics.mean(rates(o, t_after, time.time())) for o in outs]
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        kill_all(pids)

    lateness, lost, failed, taken, secs = [], 0, 0, 0, []
    errors: dict[str, int] = {}  # why checkpoints failed, and how often
    for name, h in hist.items():
        done = [a for a in h if a["kind"] == "checkpoint" and a["due"] is not None]
        failed += sum(a["status"] == "failed" for a in done)
        for a in done:
            if a["status"] == "failed":
                why = f"{a['error']}: {(a['message'] or '')[:120]}"
                errors[why] = errors.get(why, 0) + 1
        ok = [a for a in done if a["status"] == "ok" and a["started"] <= t_end]
        taken += len(ok)
        lateness += [a["started"] - a["due"] for a in ok]
        # the due times, one period apart from the first, that ended 2 s before the end
        first = jobs[name]["created"] + args.every
        due = [k for k in range(int((t_end - first) // args.every) + 1)
               if first + k * args.every < t_end - 2]  # fmt: skip
        got = {round((a["due"] - first) / args.every) for a in ok}
        lost += sum(k not in got for k in due)
    for h in hist.values():
        for a in h:
            if a["status"] == "ok" and a["finished"]:
                secs.append(a["finished"] - a["started"])
    lateness.sort()
    ref = [statistics.mean(x) for x in zip(baseline, after or baseline, strict=True)]
    slow = [(r - d) / r * 100 for r, d in zip(ref, with_daemon, strict=True)]
    late = sum(x > 1.0 for x in lateness)
    import cryo

    print(f"cryo from {os.path.dirname(cryo.__file__)}; load average at the start"
          f" {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at the end"
          f" {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"cryod: {args.jobs} jobs of {args.mib} MiB, every {args.every:g} s, for"
          f" {args.time:g} s (max concurrent {args.max_concurrent}, nice {nice}, keep last"
          f" {args.keep_last},"
          f" {args.dirty:g} MiB/s written by each job)")  # fmt: skip
    print(f"  checkpoints taken        {taken} (failed {failed}; due and not taken: {lost})"
          f"  goal none lost: {'met' if not lost else 'NOT met'}")
    for why, n in sorted(errors.items(), key=lambda x: -x[1])[:5]:
        print(f"    failed {n} x  {why}")
    if frozen:
        print(f"  frozen                   median {statistics.median(frozen) * 1000:.0f} ms,"
              f" max {max(frozen) * 1000:.0f} ms")
    if lateness:
        p = lambda q: lateness[min(len(lateness) - 1, int(q * len(lateness)))]  # noqa: E731
        print(f"  started after due time   median {p(0.5) * 1000:.0f} ms, p99"
              f" {p(0.99) * 1000:.0f} ms, max {lateness[-1] * 1000:.0f} ms;"
              f" {late} later than 1 s  goal all within 1 s:"
              f" {'met' if not late else 'NOT met'}")  # fmt: skip
    if secs:
        print(f"  checkpoint duration      median {statistics.median(secs):.3f} s,"
              f" max {max(secs):.3f} s")
    used = cpu1 - cpu0
    print(f"  cryod's CPU              {used:.1f} s in {t_end - t_start:.0f} s"
          f" ({used / (t_end - t_start) * 100:.1f}% of one CPU, of {os.cpu_count()}):"
          f" {used / max(1, taken) * 1000:.0f} ms per checkpoint taken")
    spent: dict[str, list[float]] = {"checkpoint": [], "gc": []}
    for line in (base / "cryod.log").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("msg") in spent and rec.get("cpu") is not None \
                and t_start <= rec["ts"] <= t_end:  # fmt: skip
            spent[rec["msg"]].append(rec["cpu"])
    if spent["checkpoint"]:
        ck, gcs = spent["checkpoint"], spent["gc"]
        print(f"    in its checkpointers   checkpoint median {statistics.median(ck) * 1000:.0f}"
              f" ms, gc median {statistics.median(gcs or [0]) * 1000:.0f} ms ({len(gcs)}"
              f" ran); the rest ({(used - sum(ck) - sum(gcs)) / max(1, taken) * 1000:.0f} ms"
              " per checkpoint) the daemon's threads and the reading of versions")
    mean_slow = statistics.mean(slow)
    print(f"  victims' iterations/s    baseline {statistics.mean(ref):,.0f}, with cryod"
          f" {statistics.mean(with_daemon):,.0f}: slowdown {mean_slow:.2f}%"
          f" (per job min {min(slow):.2f}%, max {max(slow):.2f}%)  goal under 2%:"
          f" {'met' if mean_slow < 2 else 'NOT met'}")  # fmt: skip
    if after:
        drift = (statistics.mean(after) - statistics.mean(baseline)) / statistics.mean(baseline)
        print(f"  baseline before/after    {statistics.mean(baseline):,.0f} /"
              f" {statistics.mean(after):,.0f} ({drift * 100:+.2f}%: the machine's own noise)")
    stable, text = rss_verdict(samples, args.time)
    print(f"  cryod RSS (MiB)          {text}  goal stable: {'met' if stable else 'NOT met'}")
    stable, text = rss_verdict(total, args.time)
    print(f"  with its checkpointers   PSS {text}  goal stable: {'met' if stable else 'NOT met'}")
    step = max(1, len(samples) // 30)
    print("  cryod RSS series (s:MiB) " + " ".join(
        f"{t:.0f}:{x / 2**20:.1f}" for t, x in samples[::step]))  # fmt: skip
    print(f"  store, state and log in  {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
