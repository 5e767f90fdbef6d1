"""A small program's whole ``cryo checkpoint`` and ``cryo restart`` (issue 16: each at most
0.08 s, start-up included), and against another tree of cryo in the same run.

tests/victims/counter.c (1 MiB of heap, one file open, its stdio on /dev/null) is
checkpointed with ``--kill`` and restarted with ``--detach``, over and over; each
restarted counter is checked to go on before the next round.  Each command is timed
from outside, as a user runs it: wall time around the whole process, its CPU time (user
+ system, with its worker's: wait4) from the kernel.  ``--before SRC`` (another tree's
``src``) runs every command of the other tree in turn with this one's (A B A B ...,
on the same counter), and prints the ratios pair by pair.  ``--cmd``: how cryo is
started (default ``python -m cryo``; ``cryo`` for the console script on PATH; with
``bin/cryo`` in it, each tree's own bin/cryo where it has one).
Beside them: ``python -c pass`` and ``python -S -c pass`` on the same machine, and the
engine's own time as the command reports it.  ``--daemon`` starts a cryod of the tree
measured (its own socket, state and store) and adds, in the same rounds and on the same
counter, the commands run through it by the thin client (``python -S bin/cryo`` with
CRYO_DAEMON set: cryo.cli.thin); their CPU is the client's and the daemon's child's
(with its worker: what the daemon's command server collected when it reaped it); with
``--before`` too, a cryod of each tree, in turn.

    python bench/startup.py [--rounds 20] [--before /path/to/old/src] [--daemon]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build, kill_all
from cryo.daemon import Client
from cryo.linux import libc
from cryo.linux.consts import PR

SRC = Path(__file__).resolve().parent.parent / "src"
BIN = Path(__file__).resolve().parent.parent / "bin" / "cryo"


def children_cpu(pid: int) -> float:
    """CPU seconds of the reaped children of ``pid`` (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def start_daemon(work: Path, src: str, name: str = "d"
                 ) -> tuple[subprocess.Popen[bytes], str, int]:  # fmt: skip
    """A cryod of tree ``src`` on ``work``/``name``: the process, its socket, its command
    server's pid."""
    d = work / name
    d.mkdir()
    sock = str(d / "s.sock")
    p = subprocess.Popen([sys.executable, "-m", "cryo", "daemon", "--socket", sock,
                          "--state", str(d / "state"), "--store", str(d / "store"),
                          "--log", str(d / "log")], env=dict(os.environ, PYTHONPATH=src),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(sock, timeout=5) as c:
                server = c.ping().get("commands")
            if not server:
                raise SystemExit("this cryod runs no commands (no command server)")
            return p, sock, int(server)
        except SystemExit:
            p.kill()
            raise
        except Exception:
            if time.monotonic() > deadline or p.poll() is not None:
                p.kill()
                raise SystemExit("cryod did not start") from None
            time.sleep(0.05)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one command (with every child it waited for), stderr."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, close_fds=True)
    err = p.stderr.read().decode() if p.stderr else ""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)}: exit {p.returncode}\n{err}")
    return wall, ru.ru_utime + ru.ru_stime, err


def wait_ticks(out: Path, after: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        ticks = [int(x.split()[1]) for x in lines if x.startswith("tick ")]
        if any(x.startswith("FAIL") for x in lines):
            raise SystemExit(f"the counter failed: {lines[-3:]}")
        if ticks and ticks[-1] > after:
            return ticks[-1]
        time.sleep(0.005)
    raise SystemExit("the restarted counter does not go on")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--before", metavar="SRC", help="another tree's src, run in turn")
    ap.add_argument("--after", metavar="SRC", default=str(SRC),
                    help="the tree measured (default: this one's)")
    ap.add_argument("--cmd", default=f"{sys.executable} -m cryo", help="how cryo is run")
    ap.add_argument("--dir", default=None, help="where images go (default: a temporary one)")
    ap.add_argument("--gap", type=float, default=0.0, metavar="S",
                    help="seconds idle before each command (a daemon's spare child is"
                    " forked while it is idle)")
    ap.add_argument("--daemon", action="store_true",
                    help="also the commands run through a cryod by the thin client")
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)  # the restarted counters come back to us
    load0 = os.getloadavg()
    cmd = shlex.split(args.cmd)
    trees = {"after": str(Path(args.after).resolve())}
    if args.before:
        trees = {"before": str(Path(args.before).resolve()), **trees}
    work = Path(tempfile.mkdtemp(prefix="cryo-startup-", dir=args.dir))
    pids: list[int] = []
    fig: dict[str, list[float]] = {}
    daemons: list[subprocess.Popen[bytes]] = []
    servers: dict[str, int] = {}  # way -> its cryod's command server
    # (a tree's own bin/cryo, when cryo is started by one: its start-up is the tree's)
    ways = {name: ([str(Path(src).parent / "bin" / "cryo") if Path(a).resolve() == BIN and
                    (Path(src).parent / "bin" / "cryo").exists() else a for a in cmd],
                   {"PYTHONPATH": src}) for name, src in trees.items()}  # fmt: skip
    try:
        if args.daemon:  # (with --before, a cryod of each tree)
            for tree, way in (("before", "before via cryod"), ("after", "via cryod")):
                if tree in trees:
                    daemon, sock, servers[way] = start_daemon(work, trees[tree], tree)
                    daemons.append(daemon)
                    ways[way] = ([sys.executable, "-S", str(BIN)],
                                 {"PYTHONPATH": trees[tree], "CRYO_DAEMON": sock})
        exe = build("counter", work)
        out = work / "out.txt"
        p = subprocess.Popen([exe, str(out), "5"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True)  # fmt: skip
        pid = p.pid
        pids.append(pid)
        tick = wait_ticks(out, 0)
        image = work / "image"
        for rnd in range(args.rounds + 1):  # the first round is not counted (warm-up)
            for name, (start, extra) in ways.items():
                env = dict(os.environ, **extra)
                shutil.rmtree(image, ignore_errors=True)
                for what, argv in (
                        ("checkpoint", [*start, "checkpoint", str(pid), "-D", str(image),
                                        "--kill"]),
                        ("restart", [*start, "restart", "-D", str(image), "--detach"])):
                    server = servers.get(name, 0)
                    time.sleep(args.gap)
                    before = children_cpu(server) if server else 0.0
                    wall, cpu, err = timed(argv, env)
                    if server:  # (the daemon's child: reaped before it answered)
                        cpu += children_cpu(server) - before
                    if what == "checkpoint":  # killed: its zombie is ours (a subreaper)
                        gone_by = time.monotonic() + 5
                        while os.path.exists(f"/proc/{pid}") and time.monotonic() < gone_by:
                            with contextlib.suppress(ChildProcessError):
                                os.waitpid(pid, os.WNOHANG)
                            time.sleep(0.001)
                    own = re.search(r" in ([0-9.]+) s|, ([0-9.]+) s \(", err)
                    if rnd:
                        fig.setdefault(f"{name} {what} wall", []).append(wall)
                        fig.setdefault(f"{name} {what} cpu", []).append(cpu)
                        if own:
                            fig.setdefault(f"{name} {what} own", []).append(
                                float(own.group(1) or own.group(2)))
                tick = wait_ticks(out, tick)
        base = {}
        for label, argv in (("python -c pass", [sys.executable, "-c", "pass"]),
                            ("python -S -c pass", [sys.executable, "-S", "-c", "pass"])):
            runs = [timed(argv, dict(os.environ)) for _ in range(max(args.rounds, 5))]
            base[label] = (statistics.median(r[0] for r in runs),
                           statistics.median(r[1] for r in runs))
    finally:
        kill_all(pids)
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"startup: {args.rounds} rounds, medians; cryo as {shlex.join(cmd)}; load average"
          f" {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at the start,"
          f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        print("warning: PYTHONDONTWRITEBYTECODE is set: each command may compile cryo")
    names = list(ways)
    head = ["", *[f"{n} wall" for n in names], *[f"{n} CPU" for n in names]]
    ratios = [(a, b) for a, b in (("after", "before"), ("via cryod", "before via cryod"))
              if b in names]  # fmt: skip
    head += [f"wall {a}/{b} (median of pairs)" for a, b in ratios]
    head += [f"{n} engine's own" for n in names if n != "before"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for what in ("checkpoint", "restart"):
        row = [f"`cryo {what}`"]
        row += [f"{statistics.median(fig[f'{n} {what} wall']):.3f} s" for n in names]
        row += [f"{statistics.median(fig[f'{n} {what} cpu']):.3f} s" for n in names]
        for a, b in ratios:
            pairs = [x / y for x, y in zip(fig[f"{a} {what} wall"], fig[f"{b} {what} wall"],
                                           strict=True)]  # fmt: skip
            row.append(f"{statistics.median(pairs):.2f}")
        for n in names:
            if n != "before":
                own = fig.get(f"{n} {what} own")
                row.append(f"{statistics.median(own):.3f} s" if own else "-")
        print("| " + " | ".join(row) + " |")
    if args.daemon:
        for what in ("checkpoint", "restart"):
            walls = fig[f"via cryod {what} wall"]
            wall = statistics.median(walls)
            under = sum(w <= 0.08 for w in walls)
            print(f"via cryod, cryo {what}: {wall:.3f} s wall (median; slowest {max(walls):.3f} s,"
                  f" {under} of {len(walls)} rounds at most 0.08 s):"
                  f" {'met' if wall <= 0.08 else 'not met'} against 0.08 s")
    for label, (wall, cpu) in base.items():
        print(f"{label}: {wall:.3f} s wall, {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
