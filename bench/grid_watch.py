"""How soon `cryo grid watch` asks a restart once a host's lease is gone (issue 15).

A real etcd on loopback (started here), three host keys under leases of their own and
an application of three parts with a committed version, as agents would leave them,
but no agents: coordinator.watch runs in a thread of this process, host h1's lease is
revoked, and the time until the restart key appears is taken (etcd's watch of the
hosts, the watcher's reads, its planning and its write). The agents' side of a restart
and the lease's own expiry are bench/grid.py's.

Run:  python bench/grid_watch.py [--trials 10]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    # (the watchers go on waiting for parts that no agent restores: what they say of
    # the hosts revoked after each trial, and of etcd's end, is not the figure's)
    logging.getLogger("cryo.grid").setLevel(logging.CRITICAL)
    from cryo.grid import coordinator as C
    from cryo.grid import keys as K
    from cryo.grid.etcd import Etcd, EtcdUnavailable

    tmp = Path(tempfile.mkdtemp(prefix="cryo-bench-gridwatch-"))
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    etcd_p = subprocess.Popen(["etcd", "--name", "w", "--data-dir", str(tmp / "etcd"),
                               "--listen-client-urls", url, "--advertise-client-urls", url,
                               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                               "--initial-cluster", f"w=http://127.0.0.1:{peer}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stops: list[threading.Event] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                e = Etcd(url)
                break
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        took = []
        for _ in range(args.trials):
            app = f"w{uuid.uuid4().hex[:8]}"
            leases = {h: e.lease(30) for h in ("h0", "h1", "h2")}
            for h, lease in leases.items():
                e.put(K.host(h), {"host": h}, lease=lease)
            e.put(K.app(app), {"app": app, "replicas": 0})
            for n in range(3):
                e.put(K.part(app, n), {"part": n, "host": f"h{n}", "pid": 100 + n,
                                       "state": "running", "epoch": 0})  # fmt: skip
            e.put(K.committed(app), {"version": 1,
                                     "images": {str(n): f"/none/{n}" for n in range(3)},
                                     "hosts": {str(n): f"h{n}" for n in range(3)},
                                     "replicas": {}})  # fmt: skip
            stop = threading.Event()
            stops.append(stop)
            # (the watcher then waits for parts that no agent restores: it is left so)
            threading.Thread(target=C.watch, args=(Etcd(url), app, None, stop),
                             daemon=True).start()  # fmt: skip
            time.sleep(1.0)  # (its watch of the hosts is made)
            t0 = time.perf_counter()
            leases["h1"].revoke()
            while e.get(K.restart(app)) is None:
                if time.perf_counter() - t0 > 30:
                    raise SystemExit("no restart was asked within 30 s")
                time.sleep(0.0005)
            took.append(time.perf_counter() - t0)
            stop.set()
            for h in ("h0", "h2"):
                leases[h].revoke()
            e.delete_tree(K.app(app))
        print(f"a host's key deleted to the restart asked, {args.trials} trials: median"
              f" {statistics.median(took) * 1000:.1f} ms (min {min(took) * 1000:.1f}, max"
              f" {max(took) * 1000:.1f})")  # fmt: skip
    finally:
        for stop in stops:
            stop.set()
        etcd_p.kill()
        etcd_p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
