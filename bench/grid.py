"""The grid checkpointer against local checkpoints (issue 15's goals), on a real etcd.

Three parts of SIZE MiB, one per agent: a global checkpoint (cryo grid checkpoint)
against the slowest of the three local checkpoints of the same processes taken alone
(cryo.checkpoint, one after the other), in the same run; and the time from a host's
failure (its agent and part killed) to every part running again (lease expiry, then
cryo grid restart).  Run as root:  python bench/grid.py [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build, kill_all
from cryo.linux import libc
from cryo.linux.consts import PR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cryo(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "cryo", *args], capture_output=True, text=True,
                       timeout=600, check=False)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"cryo {' '.join(args)}: {r.stderr}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lease", type=int, default=2)
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    tmp = Path(tempfile.mkdtemp(prefix="cryo-bench-grid-"))
    procs: list[int] = []
    agents: dict[str, subprocess.Popen[bytes]] = {}
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    etcd = subprocess.Popen(["etcd", "--name", "b", "--data-dir", str(tmp / "etcd"),
                             "--listen-client-urls", url, "--advertise-client-urls", url,
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"b=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.5)
        store = tmp / "store"
        store.mkdir()
        for h in ("h0", "h1", "h2"):
            agents[h] = subprocess.Popen([sys.executable, "-m", "cryo", "grid", "agent",
                                          "--etcd", url, "--host", h, "--store", str(store),
                                          "--lease", str(args.lease)],
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(2)
        exe = build("bigmem", tmp)
        cryo("grid", "run", "--etcd", url, "--app", "b", "--hosts", "h0,h1,h2", "--store",
             str(store), "--", exe, str(tmp / "out-{part}.txt"), str(args.mib))
        time.sleep(3)  # every part has touched its memory
        status = json.loads(cryo("grid", "status", "--etcd", url, "b"))
        pids = [int(p["pid"]) for _, p in sorted(status["parts"].items())]
        procs += pids
        import cryo as lib

        globals_, slowest = [], []
        for i in range(args.rounds):
            t0 = time.perf_counter()
            cryo("grid", "checkpoint", "--etcd", url, "b")
            globals_.append(time.perf_counter() - t0)
            alone = []
            for n, pid in enumerate(pids):
                t0 = time.perf_counter()
                lib.checkpoint(pid, str(tmp / f"alone-{i}-{n}"))
                alone.append(time.perf_counter() - t0)
            slowest.append(max(alone))
            for n in range(3):
                shutil.rmtree(tmp / f"alone-{i}-{n}", ignore_errors=True)
        g, s = statistics.median(globals_), statistics.median(slowest)
        print(f"{args.mib} MiB x 3 parts, {args.rounds} rounds (medians)")
        print(f"  global checkpoint (cryo grid checkpoint, CLI included) {g:.3f} s")
        print(f"  slowest local checkpoint alone (library call)          {s:.3f} s")
        print(f"  ratio {g / s:.2f} (goal <= 1.3)")
        agents["h1"].kill()
        agents["h1"].wait()
        kill_all([pids[1]])
        t0 = time.perf_counter()
        while "h1" in json.loads(cryo("grid", "status", "--etcd", url, "b"))["hosts"]:
            time.sleep(0.05)
        expired = time.perf_counter() - t0
        cryo("grid", "restart", "--etcd", url, "b")
        total = time.perf_counter() - t0
        status = json.loads(cryo("grid", "status", "--etcd", url, "b"))
        procs += [int(p["pid"]) for p in status["parts"].values()]
        print(f"  host failure to running again: {total:.2f} s (lease {args.lease} s,"
              f" expired after {expired:.2f} s; goal <= lease + one restart + 1 s)")
    finally:
        for a in agents.values():
            a.kill()
            a.wait()
        kill_all(procs)
        etcd.kill()
        etcd.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
