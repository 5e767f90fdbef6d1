"""A server with 1,000 established TCP connections against the same server with none
(issue 11's goal: under 2x): checkpoint (--tcp-established, then killed) and restart
times, and how long a connection stays silent: one of the clients pings the server
every millisecond; its longest gap between two answers spans the checkpoint, the kill
and the restart.  Everything runs in a network namespace of its own, removed at the
end.  Each round runs both configurations in turn; the last lines are the medians of
the rounds and their ratios against the goal, then the best round of each
configuration (the one other work on the machine slowed least) and their ratio.
``--before SRC`` (another tree's ``src``) measures that tree's cryo in the same run, in
turn with this one's (``--after``, by default this tree's): each tree in a process of
its own that imports it (PYTHONPATH), both in the namespace, round after round, and
the figures of both trees side by side.  A first round of each is not counted (the
modules it imports).  ``--phases``: where the time goes instead: the checkpoint in this
process (``worker=False``), the CPU time of this thread in each function of
:data:`PHASES` (each call timed, nested ones inside their callers), median of the
rounds, with none and with the connections, and the difference a connection.  Run as
root:

    python bench/tcp.py [CONNECTIONS] [ROUNDS] [--before OLD/src] [--phases]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

# --phases: the functions timed (module:qualified name; two spaces of indent a level of
# the calls, for the table), at checkpoint and at restart
PHASES = {
    "checkpoint": """
cryo.engine.session:Checkpoint.prepare
cryo.engine.session:Checkpoint.freeze
cryo.engine.session:Checkpoint.collect
  cryo.engine.session:Checkpoint._inject
    cryo.engine.epollready:dump
  cryo.engine.inet:lock_connections
    cryo.engine.inet:tcp_table
    cryo.engine.netlock:Lock.add
    cryo.engine.inet:hold
      cryo.engine.inet:_dup_held
      cryo.engine.inet:_read_repair
  cryo.engine.files:dump
    cryo.engine.files:_read_at
    cryo.engine.inet:describe
      cryo.engine.inet:options
      cryo.engine.inet:_urgent
cryo.engine.session:Checkpoint.write
cryo.engine.session:Checkpoint.commit
cryo.engine.session:Checkpoint.resume
  cryo.engine.inet:let_go_held
cryo.procfs:fd_links
""",
    "restart": """
cryo.engine.session:Restart.validate
  cryo.image.schema:check
cryo.engine.session:Restart.prepare_shared
  cryo.engine.files:open_all
    cryo.engine.inet:open_socket
cryo.engine.session:Restart.build_tree
cryo.engine.session:Restart.build_processes
  cryo.engine.anonfds:register
cryo.engine.session:Restart.finalize
cryo.engine.session:Restart.let_go
  cryo.engine.inet:started
""",
}
_spent: dict[str, float] = {}


def _timed(spec: str) -> None:
    """Wrap function ``spec`` (module:Class.name) so that each call adds the CPU time of
    this thread it took to ``_spent[spec]``."""
    import importlib

    mod, _, name = spec.partition(":")
    owner: object = importlib.import_module(mod)
    *path, last = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    fn = getattr(owner, last)

    def timed(*args: object, **kwargs: object) -> object:
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[spec] = _spent.get(spec, 0.0) + time.thread_time() - t

    setattr(owner, last, timed)


def _specs() -> list[tuple[str, int, str]]:
    """(phase, indent, spec) of :data:`PHASES`, in order."""
    return [(phase, (len(line) - len(line.lstrip())) // 2, line.strip())
            for phase, text in PHASES.items() for line in text.splitlines() if line.strip()]

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


def run(n: int, work: Path, phases: bool = False) -> dict[str, float]:
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
    _spent.clear()
    t0, u0 = time.perf_counter(), cpu()
    r = checkpoint(p.pid, str(img), signal_after=signal.SIGKILL, net=net, worker=not phases)
    t1, u1 = time.perf_counter(), cpu()
    spent = {f"checkpoint {k}": v for k, v in _spent.items()}
    p.wait()
    _spent.clear()
    t2, u2 = time.perf_counter(), cpu()
    rr = restart(str(img), net=net)
    t3, u3 = time.perf_counter(), cpu()
    spent.update({f"restart {k}": v for k, v in _spent.items()})
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
            "silent": max(gaps) if gaps else 0.0, "checkpoint_cpu": u1 - u0,
            "restart_cpu": u3 - u2, **spent}  # fmt: skip


def cpu() -> float:
    """CPU time of this process and its children waited for (the checkpoint's worker);
    the probe's thread's with it, a few ms a second."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), \
        resource.getrusage(resource.RUSAGE_CHILDREN)  # fmt: skip
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def show(label: str, m: dict[str, float]) -> str:
    silent = f"{m['silent']:.3f} s" if m["silent"] else "- (no connection to probe)"
    return (f"  {label:>16}: checkpoint {m['checkpoint']:.3f} s (frozen {m['frozen']:.3f} s,"
            f" CPU {m['checkpoint_cpu']:.3f} s), restart {m['restart']:.3f} s (CPU"
            f" {m['restart_cpu']:.3f} s), silent {silent}")


SRC = Path(__file__).resolve().parent.parent / "src"


def serve() -> None:
    """--serve: the measurements of one tree (the cryo this process imports), asked on
    stdin (a number of connections a line), answered as JSON lines on stdout."""
    import cryo

    print(f"measuring {Path(cryo.__file__).parent}", file=sys.stderr, flush=True)
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    timed = False
    with tempfile.TemporaryDirectory(prefix="cryo-bench-tcp-") as tmp:
        for line in sys.stdin:
            n, *how = line.split()
            if how and not timed:
                for spec in {spec for _phase, _indent, spec in _specs()}:
                    _timed(spec)
                timed = True
            print(json.dumps(run(int(n), Path(tmp), phases=bool(how))), flush=True)


class Tree:
    """A process measuring one tree's cryo (:func:`serve`)."""

    def __init__(self, src: str) -> None:
        env = dict(os.environ, PYTHONPATH=src)
        self.p = subprocess.Popen([sys.executable, __file__, "--serve"], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdin is not None and self.p.stdout is not None
        self.stdin, self.stdout = self.p.stdin, self.p.stdout

    def run(self, n: int, phases: bool = False) -> dict[str, float]:
        self.stdin.write(f"{n}{' phases' if phases else ''}\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring process of {n} connections failed")
        out: dict[str, float] = json.loads(line)
        return out

    def close(self) -> None:
        self.stdin.close()
        self.p.wait()


def summary(label: str, n: int, bases: list[dict[str, float]],
            manys: list[dict[str, float]]) -> None:  # fmt: skip
    rounds = len(bases)
    if label:
        print(f"== {label}")
    med = {k: statistics.median(m[k] for m in bases) for k in bases[0] if " " not in k}
    medn = {k: statistics.median(m[k] for m in manys) for k in manys[0] if " " not in k}
    print(f"median of {rounds} rounds:")
    print(show("no connections", med))
    print(show(f"{n} connections", medn))
    for what in ("checkpoint", "restart"):
        ratio = statistics.median(b[what] and m[what] / b[what] for b, m in zip(bases, manys,
                                                                              strict=True))
        cpu_ratio = statistics.median(b[f"{what}_cpu"] and m[f"{what}_cpu"] / b[f"{what}_cpu"]
                                      for b, m in zip(bases, manys, strict=True))
        print(f"  {what} ratio {ratio:.2f} (median of the rounds' ratios; goal < 2:"
              f" {'met' if ratio < 2 else 'not met'}); of CPU time {cpu_ratio:.2f}")
    # the best round of each: what other work on the machine inflated least
    best = {k: min(m[k] for m in bases) for k in bases[0] if " " not in k}
    bestn = {k: min(m[k] for m in manys) for k in manys[0] if " " not in k}
    print(f"best of {rounds} rounds:")
    print(show("no connections", best))
    print(show(f"{n} connections", bestn))
    print(f"  ratio of the best: checkpoint {bestn['checkpoint'] / best['checkpoint']:.2f},"
          f" restart {bestn['restart'] / best['restart']:.2f} (goal < 2)")
    if any(" " in k for k in manys[0]):
        show_phases(n, bases, manys)


def show_phases(n: int, bases: list[dict[str, float]], manys: list[dict[str, float]]) -> None:
    """--phases: each timed function's CPU time (this thread's), median of the rounds."""
    print(f"CPU time of this thread in each function (ms, median of {len(bases)} rounds;"
          " worker=False):")
    print(f"  {'':44} {'none':>7} {n:>7}   us/connection")
    last = ""
    for phase, indent, spec in _specs():
        if phase != last:
            print(f"  {phase}:")
            last = phase
        key = f"{phase} {spec}"
        a = statistics.median(b.get(key, 0.0) for b in bases) * 1e3
        b = statistics.median(m.get(key, 0.0) for m in manys) * 1e3
        mod, name = spec.split(":")
        label = "  " * (indent + 1) + (name if mod.endswith(".session") else
                                       f"{mod.rsplit('.', 1)[1]}.{name}")
        print(f"  {label:44} {a:7.2f} {b:7.2f}   {(b - a) * 1e3 / max(n, 1):6.1f}")


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("connections", type=int, nargs="?", default=1000)
    ap.add_argument("rounds", type=int, nargs="?", default=3)
    ap.add_argument("--before", metavar="SRC", help="another tree's src, measured in turn")
    ap.add_argument("--after", metavar="SRC", default=str(SRC), help="the tree measured")
    ap.add_argument("--phases", action="store_true",
                    help="where the time goes: the checkpoint in process, functions timed")
    args = ap.parse_args()
    n, rounds = args.connections, args.rounds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 256)), hard))
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    name = f"cryo-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    srcs = {"after": args.after} if args.before is None else {"before": args.before,
                                                              "after": args.after}
    bases: dict[str, list[dict[str, float]]] = {t: [] for t in srcs}
    manys: dict[str, list[dict[str, float]]] = {t: [] for t in srcs}
    trees: dict[str, Tree] = {}
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        setns(fd)  # this (single-threaded) process, its worker and nft: in the namespace
        os.close(fd)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        for t, src in srcs.items():  # (each in the namespace: it inherits it)
            trees[t] = Tree(str(Path(src).resolve()))
        for rnd in range(rounds + 1):  # (round 0: the imports, not counted)
            for t, tree in trees.items():
                base = tree.run(0, args.phases)
                many = tree.run(n, args.phases)
                if not rnd:
                    continue
                bases[t].append(base)
                manys[t].append(many)
                print(f"round {rnd}{f' ({t})' if len(trees) > 1 else ''}:")
                print(show("no connections", base))
                print(show(f"{n} connections", many))
                print(f"  ratio: checkpoint {many['checkpoint'] / base['checkpoint']:.2f},"
                      f" restart {many['restart'] / base['restart']:.2f} (goal < 2)")
    finally:
        for tree in trees.values():
            with contextlib.suppress(OSError):
                tree.close()
        with contextlib.suppress(OSError):
            subprocess.run(["ip", "netns", "del", name], check=False)
    for t in srcs:
        summary(t if len(srcs) > 1 else "", n, bases[t], manys[t])
    if len(srcs) == 2:  # the same configuration of the two trees, round by round
        print(f"after/before, median of the {rounds} rounds' pairs:")
        for label, runs in (("no connections", bases), (f"{n} connections", manys)):
            pairs = list(zip(runs["before"], runs["after"], strict=True))
            ratios = {k: statistics.median(a[k] / b[k] for b, a in pairs)
                      for k in ("checkpoint", "checkpoint_cpu", "restart", "restart_cpu")}
            print(f"  {label:>16}: " + ", ".join(f"{k.replace('_cpu', ' CPU')} {v:.2f}"
                                                 for k, v in ratios.items()))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
