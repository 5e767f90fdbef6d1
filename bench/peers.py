"""cryo beside its peers and this machine's copy bound (issue 16), in one run.

Four workloads: one process with 1 GiB and one with 4 GiB of touched memory, a tree of 17
processes (a parent and 16 children of 64 MiB each) and a small C program.  For each,
``cryo checkpoint --kill`` and ``cryo restart --detach`` as a user runs them (the
command line, Python start-up included), warm and cold: a warm checkpoint runs with
cryo's own files cached, a cold one after ``sync; echo 3 > /proc/sys/vm/drop_caches``; a
warm restart has the image in the page cache (read once before), a cold one starts with
the caches dropped.  Each restarted program is checked to go on (its memory checks
itself) before it is killed.  Medians of ``--rounds`` rounds (3).

Beside each: the copy bound of the same size in the same run (``cp FILE COPY && sync``
with the source cached, the same from cold caches, and ``dd`` with O_DIRECT on both
sides), cryo's frozen time, its peak RSS (the largest of the command and its worker:
wait4's ru_maxrss) and how much the page cache grew.  ``--criu PATH`` adds a CRIU
column: ``criu dump -t PID -D DIR --shell-job`` and ``criu restore -D DIR --shell-job
-d`` on the same workloads.  ``--quick``: one round, 256 and 512 MiB instead of 1 and
4 GiB, 4 children of 16 MiB.  ``--recycle``: before each restart, warm or cold, as much
anonymous memory as the workload holds is touched and freed, so that both get memory
freed a moment before (this VM is slow to touch memory left free a while: recycle()).

Run as root on a quiet machine:  python bench/peers.py [--criu /path/to/criu]
It drops the page cache of the whole machine many times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import build, kill_all
from cryo.linux import libc
from cryo.linux.consts import PR

# the cryo command as bin/cryo (the installed `cryo`) starts itself: the interpreter with
# -S (docs/design.md, "Start-up"); --module: `python -m cryo`
CRYO = [sys.executable, "-S", str(Path(__file__).resolve().parent.parent / "bin" / "cryo")]


@dataclass
class Workload:
    name: str
    exe: str  # a victim of tests/victims, built
    args: list[str]
    mib: int  # memory it holds, for the copy bound
    tree: bool = False


@dataclass
class Run:
    """One command: wall seconds, peak RSS (bytes), page cache growth (bytes), output."""

    wall: float
    rss: int
    cache: int
    out: str
    err: str


@dataclass
class Figures:
    rows: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.rows.setdefault(key, []).append(value)

    def med(self, key: str) -> float | None:
        v = self.rows.get(key)
        return statistics.median(v) if v else None


def cached_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_all(path: Path) -> None:
    """Put every file under ``path`` into the page cache."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.read(16 << 20):
                    pass


def timed(argv: list[str], timeout: float = 600) -> Run:
    """Run ``argv`` with its output in files (no pipe to drain), reaped by wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        before = cached_bytes()
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             close_fds=True)  # fmt: skip
        timer = threading.Timer(timeout, os.kill, (p.pid, signal.SIGKILL))
        timer.start()
        try:
            # ru_maxrss: the largest of the command and the children it waited for
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t
        p.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        r = Run(wall, ru.ru_maxrss * 1024, cached_bytes() - before, out.read(), err.read())
    if code:
        raise SystemExit(f"{' '.join(argv)} failed ({code}): {r.err.strip()}")
    return r


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(FileNotFoundError):
            for t in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    todo.extend(int(x) for x in (t / "children").read_text().split())
    return out


def ticks(out: Path) -> int:
    try:
        return out.read_text().count("tick")
    except FileNotFoundError:
        return 0


def wait_ticks(out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while ticks(out) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{out}: no tick {n} within {timeout} s")
        time.sleep(0.005)
    if "FAIL" in out.read_text():
        raise SystemExit(f"{out}: the program found its state wrong")


def start(w: Workload, out: Path) -> list[int]:
    p = subprocess.Popen([w.exe, str(out), *w.args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)  # fmt: skip
    p.returncode = 0  # reaped by pid (kill_all)
    wait_ticks(out, 2)
    return descendants(p.pid)


class Tool:
    """How one checkpointer dumps (killing the target) and restarts (detached)."""

    name = ""

    def dump(self, pids: list[int], img: Path, tree: bool) -> tuple[Run, float | None]:
        raise NotImplementedError

    def restore(self, img: Path) -> tuple[Run, int]:
        raise NotImplementedError


class Cryo(Tool):
    name = "cryo"

    def dump(self, pids: list[int], img: Path, tree: bool) -> tuple[Run, float | None]:
        scope = ["--tree"] if tree else []
        r = timed([*CRYO, "checkpoint", str(pids[0]), *scope, "-D", str(img), "--kill"])
        m = re.search(r"frozen ([0-9.]+) s", r.err)
        return r, float(m.group(1)) if m else None

    def restore(self, img: Path) -> tuple[Run, int]:
        r = timed([*CRYO, "restart", "-D", str(img), "--detach"])
        return r, int(r.out.split()[-1])


class Criu(Tool):
    name = "criu"

    def __init__(self, path: str) -> None:
        self.path = path

    def dump(self, pids: list[int], img: Path, tree: bool) -> tuple[Run, float | None]:
        img.mkdir()
        r = timed([self.path, "dump", "-t", str(pids[0]), "-D", str(img), "--shell-job"])
        return r, None

    def restore(self, img: Path) -> tuple[Run, int]:
        pidfile = img / "restored.pid"
        r = timed([self.path, "restore", "-D", str(img), "--shell-job", "-d",
                   "--pidfile", str(pidfile)])  # fmt: skip
        return r, int(pidfile.read_text())


def gone(pids: list[int]) -> None:
    kill_all(pids)


def recycle(mib: int) -> None:
    """Touch and free ``mib`` MiB of anonymous memory (MADV_POPULATE_WRITE), so that the
    next allocations get memory freed a moment before.  On this VM, memory left free
    for a second or more is two to three times slower to touch again than memory freed
    just now (4 GiB: 3.5-7 s against 2.0 s, docs/design.md), so a restart right after
    its program was killed (cold, here: after the warm restart's) gets faster memory
    than one after the image was read into the cache (warm): ``--recycle`` gives both
    the same start."""
    # in a process of its own: a child's ru_maxrss starts from its parent's peak (the
    # commands' peak RSS would read as the memory recycled here)
    subprocess.run([sys.executable, "-S", "-c", "import mmap, sys\n"
                    "m = mmap.mmap(-1, int(sys.argv[1]) << 20, flags=mmap.MAP_PRIVATE"
                    " | mmap.MAP_ANONYMOUS)\nm.madvise(getattr(mmap, 'MADV_POPULATE_WRITE', 23))",
                    str(mib)], check=True, close_fds=True)  # fmt: skip


def one_round(tool: Tool, w: Workload, work: Path, fig: Figures, same: bool = False) -> None:
    """Checkpoint warm, restart warm and cold from that image; a checkpoint cold.
    ``same``: memory of the workload's size recycled before each restart."""
    for cold in (False, True):
        out = work / f"{w.name}-{tool.name}-{int(cold)}.txt"
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        img = work / f"{w.name}-{tool.name}.img"
        shutil.rmtree(img, ignore_errors=True)
        pids = start(w, out)
        try:
            if cold:
                drop_caches()
            r, frozen = tool.dump(pids, img, w.tree)
        finally:
            gone(pids)
        key = f"{tool.name} checkpoint {'cold' if cold else 'warm'}"
        fig.add(key, r.wall)
        fig.add(f"{key} rss", r.rss)
        fig.add(f"{key} cache", r.cache)
        if frozen is not None:
            fig.add(f"{key} frozen", frozen)
        if cold:
            shutil.rmtree(img, ignore_errors=True)
            continue
        for rcold in (False, True):
            if rcold:
                drop_caches()
            else:
                read_all(img)
            if same:
                recycle(w.mib)
            seen = ticks(out)
            rr, pid = tool.restore(img)
            try:
                wait_ticks(out, seen + 2)
            finally:
                gone(descendants(pid))
            key = f"{tool.name} restart {'cold' if rcold else 'warm'}"
            fig.add(key, rr.wall)
            fig.add(f"{key} rss", rr.rss)
            fig.add(f"{key} cache", rr.cache)
        shutil.rmtree(img, ignore_errors=True)


def copy_bound(work: Path, mib: int, fig: Figures) -> None:
    """cp + sync (source cached, then cold) and dd with O_DIRECT, of ``mib`` MiB."""
    src, dst = work / "copy-src", work / "copy-dst"
    chunk = os.urandom(1 << 20) * 16
    with open(src, "wb") as f:
        for _ in range(max(1, mib // 16)):
            f.write(chunk)
    read_all(src)

    def run(key: str, argv: list[list[str]], before: Callable[[], None] = os.sync) -> None:
        before()
        t = time.perf_counter()
        for a in argv:
            subprocess.run(a, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fig.add(key, time.perf_counter() - t)
        dst.unlink()

    try:
        run("cp+sync warm", [["cp", str(src), str(dst)], ["sync"]])
        run("cp+sync cold", [["cp", str(src), str(dst)], ["sync"]], drop_caches)
        run("dd O_DIRECT", [["dd", f"if={src}", f"of={dst}", "bs=16M", "iflag=direct",
                             "oflag=direct"]])  # fmt: skip
    finally:
        src.unlink()
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()


def fmt(v: float | None, unit: str = "s") -> str:
    if v is None:
        return "-"
    if unit == "MiB":
        return f"{v / 2**20:.0f}"
    return f"{v:.3f}"


def report(w: Workload, fig: Figures, tools: list[Tool]) -> None:
    names = [t.name for t in tools]
    print(f"\n## {w.name} ({w.mib} MiB)")
    head = ["", *names]
    if "criu" in names:
        head.append("cryo/criu")
    head += ["cp+sync warm", "cp+sync cold", "dd O_DIRECT", "cryo/cp"]
    print(" | ".join(f"{h:>14}" for h in head))
    cp_w, cp_c = fig.med("cp+sync warm"), fig.med("cp+sync cold")
    for what in ("checkpoint warm", "checkpoint cold", "restart warm", "restart cold"):
        vals = [fig.med(f"{n} {what}") for n in names]
        row = [what, *(fmt(v) for v in vals)]
        if "criu" in names:
            c, k = vals[0], vals[names.index("criu")]
            row.append(f"{c / k:.2f}x" if c and k else "-")
        cp = cp_c if what.endswith("cold") else cp_w
        row += [fmt(cp_w), fmt(cp_c), fmt(fig.med("dd O_DIRECT")),
                f"{vals[0] / cp:.2f}x" if vals[0] and cp else "-"]
        print(" | ".join(f"{c:>14}" for c in row))
    for what in ("checkpoint warm", "checkpoint cold", "restart warm", "restart cold"):
        for n in names:  # every round: a median of 3 on a busy machine hides a lot
            each = " ".join(fmt(v) for v in fig.rows.get(f"{n} {what}", []))
            print(f"{n} {what}, each round: {each}")
    print("cp+sync warm, cold, dd O_DIRECT, each round: " + ", ".join(
        " ".join(fmt(v) for v in fig.rows.get(k, []))
        for k in ("cp+sync warm", "cp+sync cold", "dd O_DIRECT")))  # fmt: skip
    for what in ("checkpoint warm", "checkpoint cold"):
        print(f"cryo {what}: frozen {fmt(fig.med(f'cryo {what} frozen'))} s", end="; ")
    print(f"load {os.getloadavg()[0]:.2f}")
    for what in ("checkpoint warm", "checkpoint cold", "restart warm", "restart cold"):
        print(f"cryo {what}: peak RSS {fmt(fig.med(f'cryo {what} rss'), 'MiB')} MiB,"
              f" page cache {(fig.med(f'cryo {what} cache') or 0) / 2**20:+.0f} MiB")  # fmt: skip
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each workload (3)")
    ap.add_argument("--criu", metavar="PATH", help="a criu binary: add its column")
    ap.add_argument("--quick", action="store_true",
                    help="one round of small workloads (shows the benchmark works)")
    ap.add_argument("--only", metavar="NAME", help="only workloads whose name has NAME")
    ap.add_argument("--dir", default=None, help="where images go (default: a temp dir)")
    ap.add_argument("--recycle", action="store_true",
                    help="touch and free the workload's size of memory before each restart"
                         " (warm and cold then start alike: see recycle())")
    ap.add_argument("--module", action="store_true",
                    help="run cryo as python -m cryo (default: as bin/cryo starts itself)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (ptrace, drop_caches)")
    if args.module:
        CRYO[:] = [sys.executable, "-m", "cryo"]
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    # killed by a timeout: the finally blocks still kill the programs it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds = 1 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="cryo-peers-", dir=args.dir))
    tools: list[Tool] = [Cryo()]
    if args.criu:
        tools.append(Criu(args.criu))
    try:
        big, fan, small = build("bigmem", work), build("fanout", work), build("counter", work)
        one, four, kids, each = (256, 512, 4, 16) if args.quick else (1024, 4096, 16, 64)
        workloads = [
            Workload(f"1 process, {one} MiB", big, [str(one)], one),
            Workload(f"1 process, {four} MiB", big, [str(four)], four),
            Workload(f"{kids + 1} processes, {kids} x {each} MiB", fan, [str(kids), str(each)],
                     kids * each, tree=True),
            Workload("small C program", small, [], 1),
        ]
        if args.only:
            workloads = [w for w in workloads if args.only in w.name]
        if sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
            print("warning: PYTHONDONTWRITEBYTECODE is set: each command compiles cryo"
                  " from source (set PYTHONPYCACHEPREFIX and unset it for real figures)")
        print(f"peers: {rounds} round(s), medians; cryo {' '.join(CRYO)};"
              f" criu {args.criu or '(not given)'}; load {os.getloadavg()[0]:.2f}"
              f"{'; memory recycled before each restart' if args.recycle else ''}")
        for w in workloads:
            fig = Figures()
            for _ in range(rounds):
                for tool in tools:
                    one_round(tool, w, work, fig, args.recycle)
                copy_bound(work, w.mib, fig)
            report(w, fig, tools)
        print(f"\nload at the end {os.getloadavg()[0]:.2f} (a busy machine makes every"
              " figure slower; compare within a run)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
