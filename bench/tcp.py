"""A server with 1,000 established TCP connections against the same server with none
(issue 11's goal: under 2x): checkpoint (--tcp-established, then killed) and restart
times, and how long a connection stays silent: one of the clients pings the server
every millisecond; its longest gap between two answers spans the checkpoint, the kill
and the restart.  Everything runs in a network namespace of its own, removed at the
end.  Each round runs both configurations in turn; the last lines are the medians of
the rounds and their ratios against the goal, then the best round of each
configuration (the one other work on the machine slowed least) and their ratio.  Run
as root: python bench/tcp.py [CONNECTIONS] [ROUNDS]
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.linux import libc
from cryo.linux.consts import PR
from cryo.linux.net import setns

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 7777))
srv.listen(4096)
srv.setblocking(False)
sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is srv:
            c, _ = srv.accept()
            sel.register(c, selectors.EVENT_READ)
            continue
        data = s.recv(4096)
        if data:
            s.sendall(data)
        else:
            sel.unregister(s)
            s.close()
"""


def connect() -> socket.socket:
    for _ in range(200):
        try:
            return socket.create_connection(("127.0.0.1", 7777))
        except ConnectionRefusedError:
            time.sleep(0.01)
    raise RuntimeError("the server does not answer")


def run(n: int, work: Path) -> dict[str, float]:
    p = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)  # fmt: skip
    with connect() as c:  # it listens and answers (accepted: nothing left waiting)
        c.sendall(b"up")
        assert c.recv(16) == b"up"
    time.sleep(0.1)  # and has closed its side
    clients = [connect() for _ in range(n)]
    for c in clients:  # every connection has carried data
        c.sendall(b"hello")
        assert c.recv(16) == b"hello"
    gaps: list[float] = []
    stop = threading.Event()

    def probe(c: socket.socket) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            c.sendall(b"p")
            if c.recv(16) != b"p":
                raise RuntimeError("the probe's connection broke")
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            time.sleep(0.001)

    t = threading.Thread(target=probe, args=(clients[0],)) if clients else None
    if t:
        t.start()
        time.sleep(0.2)
    img = work / f"img-{n}"
    net = {"tcp_established": True}
    t0 = time.perf_counter()
    r = checkpoint(p.pid, str(img), signal_after=signal.SIGKILL, net=net)
    t1 = time.perf_counter()
    p.wait()
    t2 = time.perf_counter()
    rr = restart(str(img), net=net)
    t3 = time.perf_counter()
    if t:
        time.sleep(0.3)
        stop.set()
        t.join()
    for c in clients[1:]:
        c.sendall(b"again")
        assert c.recv(16) == b"again"
    for c in clients:
        c.close()
    os.kill(rr.pid, signal.SIGKILL)
    os.waitpid(rr.pid, 0)
    shutil.rmtree(img)
    return {"checkpoint": t1 - t0, "frozen": r.freeze_seconds, "restart": t3 - t2,
            "silent": max(gaps) if gaps else 0.0}  # fmt: skip


def show(label: str, m: dict[str, float]) -> str:
    silent = f"{m['silent']:.3f} s" if m["silent"] else "- (no connection to probe)"
    return (f"  {label:>16}: checkpoint {m['checkpoint']:.3f} s (frozen {m['frozen']:.3f} s),"
            f" restart {m['restart']:.3f} s, silent {silent}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 256)), hard))
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    name = f"cryo-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    bases: list[dict[str, float]] = []
    manys: list[dict[str, float]] = []
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        setns(fd)  # this (single-threaded) process, its worker and nft: in the namespace
        os.close(fd)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="cryo-bench-tcp-") as tmp:
            for rnd in range(1, rounds + 1):
                base = run(0, Path(tmp))
                many = run(n, Path(tmp))
                bases.append(base)
                manys.append(many)
                print(f"round {rnd}:")
                print(show("no connections", base))
                print(show(f"{n} connections", many))
                print(f"  ratio: checkpoint {many['checkpoint'] / base['checkpoint']:.2f},"
                      f" restart {many['restart'] / base['restart']:.2f} (goal < 2)")
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["ip", "netns", "del", name], check=False)
    med = {k: statistics.median(m[k] for m in bases) for k in bases[0]}
    medn = {k: statistics.median(m[k] for m in manys) for k in manys[0]}
    print(f"median of {rounds} rounds:")
    print(show("no connections", med))
    print(show(f"{n} connections", medn))
    for what in ("checkpoint", "restart"):
        ratio = statistics.median(b[what] and m[what] / b[what] for b, m in zip(bases, manys,
                                                                              strict=True))
        print(f"  {what} ratio {ratio:.2f} (median of the rounds' ratios; goal < 2:"
              f" {'met' if ratio < 2 else 'not met'})")
    # the best round of each: what other work on the machine inflated least
    best = {k: min(m[k] for m in bases) for k in bases[0]}
    bestn = {k: min(m[k] for m in manys) for k in manys[0]}
    print(f"best of {rounds} rounds:")
    print(show("no connections", best))
    print(show(f"{n} connections", bestn))
    print(f"  ratio of the best: checkpoint {bestn['checkpoint'] / best['checkpoint']:.2f},"
          f" restart {bestn['restart'] / best['restart']:.2f} (goal < 2)")


if __name__ == "__main__":
    main()
