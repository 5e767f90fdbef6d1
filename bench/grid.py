"""The grid checkpointer against local checkpoints (issue 15's goals), on a real etcd.

Three parts of SIZE MiB, one per agent (agents on this host, each with a store of its
own; with --replicas N each part's image is streamed to N other agents over loopback
TCP, cryo.grid.replica; without, the stores count as shared):

- a global checkpoint, until every part runs again (coordinator.checkpoint in this
  process, then the parts let go), against the slowest of the three local checkpoints
  of the same processes taken alone (cryo.checkpoint, one after the other), and against
  the three local checkpoints taken at once (what the grid does, without etcd): the
  first ratio is the goal (<= 1.3), the second how much of it is the machine (three
  dumps sharing its cores and disk) and not the coordination; and against the grid's
  own work without etcd: the three parts prepared at once (cryo.prepare in threads
  that outlive the call, as the agents' do), written, held until the last is written,
  then let go; and the same with early release (each written once every part is
  collected, a barrier of threads, and let go once its own pages are read): the
  grid's protocol without etcd, agents or waking; and, with part 2 prepared
  ``--late`` seconds after the others (a part whose callbacks or collect take longer),
  that protocol with each part written once every part is collected against each
  written at once and let go once every part is collected (cryo.prepare's
  ``release_gate``, as the agents do since session 10), alternated.  The parts' frozen time is shown
  beside the local checkpoints' (a local one lets its target go once its pages are in
  memory, before they are written; so does a part, once every part is frozen and
  collected: early release), and the same
  rounds asked with ``hold`` (each part held until the decision, as before), alternated
  with them in the same run: the round until every part runs, and the longest a part
  was held, sampled from /proc;
- where a global checkpoint's time goes, from the round's records in etcd: until the
  round was written (the election, the application's keys read), until every agent
  saw it (etcd's watch, then one read of every application's keys), the freeze, the
  image, the replicas, the decision, the resume; and the same through the command line
  (cryo grid checkpoint, Python's start-up included);
- the time from a host's failure (its agent and part killed) to every part running
  again (coordinator.watch, as `cryo grid watch` runs it: the lease's expiry, then the
  restart), against the lease plus one local restart of one part alone plus 1 s (the
  goal).

Every timed step begins on a quiet disk: the agents have removed the older versions a
commit retires, and the bench its own images, then everything is synced (an ext4
mounted with ``discard`` commits those deletes' discards with the next journal commit,
which an fsync then waits for: etcd's own writes, and a checkpoint's). ``--etcd-dir``
puts etcd's data elsewhere (``/dev/shm``: etcd on a disk of its own, as etcd's
documentation asks of a deployment; by default beside the stores, on the same disk).

Run as root:  python bench/grid.py [--mib 256] [--rounds 3] [--lease 2] [--replicas 0]
                                   [--etcd-dir DIR] [--late 0.3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import build, kill_all
from cryo.linux import libc
from cryo.linux.consts import PR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cryo_cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "cryo", *args], capture_output=True, text=True,
                       timeout=600, check=False)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"cryo {' '.join(args)}: {r.stderr}")
    return r.stdout


def let_go(pids: list[int], timeout: float = 60) -> None:
    """Wait until no pid is traced or stopped any more."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            status = Path(f"/proc/{pid}/status").read_text()
            if "TracerPid:\t0\n" in status and "State:\tt" not in status:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"part {pid} is still held")
            time.sleep(0.01)


class Sampler:
    """How long each of ``pids`` is held (traced or stopped), read from /proc every
    2 ms by a thread of its own while the ``with`` block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.spans: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = time.perf_counter()
            for pid in self.pids:
                status = Path(f"/proc/{pid}/status").read_text()
                if "TracerPid:\t0\n" not in status or "State:\tt" in status:
                    span = self.spans.setdefault(pid, [now, now])
                    span[1] = now

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def longest(self) -> float:
        return max((b - a for a, b in self.spans.values()), default=0.0)


def quiesce(stores: list[Path], timeout: float = 30) -> None:
    """The disk quiet before a timed step: every agent has retired the versions older
    than its newest (a commit's cleanup), then everything is synced."""
    deadline = time.monotonic() + timeout
    for store in stores:
        while len(list(store.glob("*/v[0-9]*"))) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    os.sync()


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lease", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=0)
    ap.add_argument("--etcd-dir", default=None, help="etcd's data (default: beside the"
                    " stores, on the same disk)")  # fmt: skip
    ap.add_argument("--late", type=float, default=0.3, help="seconds part 2 is prepared"
                    " late in the early-write comparison (0: none)")  # fmt: skip
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    import cryo as lib
    from cryo.grid import coordinator as C
    from cryo.grid import keys as K
    from cryo.grid.etcd import Etcd, EtcdUnavailable

    tmp = Path(tempfile.mkdtemp(prefix="cryo-bench-grid-"))
    procs: list[int] = []
    agents: dict[str, subprocess.Popen[bytes]] = {}
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    etcd_dir = Path(tempfile.mkdtemp(prefix="cryo-bench-etcd-", dir=args.etcd_dir)) \
        if args.etcd_dir else tmp / "etcd"  # fmt: skip
    etcd_p = subprocess.Popen(["etcd", "--name", "b", "--data-dir", str(etcd_dir),
                               "--listen-client-urls", url, "--advertise-client-urls", url,
                               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                               "--initial-cluster", f"b=http://127.0.0.1:{peer}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                etcd = Etcd(url)
                break
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        stores = {h: tmp / f"store-{h}" for h in ("h0", "h1", "h2")}
        secret = tmp / "grid.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(24).hex().encode())
        os.close(fd)
        for h, store in stores.items():
            agents[h] = subprocess.Popen([sys.executable, "-m", "cryo", "grid", "agent",
                                          "--etcd", url, "--host", h, "--store", str(store),
                                          "--lease", str(args.lease), "--listen",
                                          f"127.0.0.1:{free_port()}", "--secret-file",
                                          str(secret)],
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        while len(C.live_hosts(etcd)) < 3:
            time.sleep(0.05)
        exe = build("bigmem", tmp)
        C.run(etcd, "b", ["h0", "h1", "h2"], [exe, str(tmp / "out-{part}.txt"), str(args.mib)],
              str(tmp), replicas=args.replicas)  # fmt: skip
        pids = [int(p["pid"]) for _, p in sorted(C.parts_of(etcd, "b").items())]
        procs += pids
        for n in range(3):  # every part has touched its memory
            while "ready" not in (tmp / f"out-{n}.txt").read_text(errors="replace") \
                    if (tmp / f"out-{n}.txt").exists() else True:  # fmt: skip
                time.sleep(0.05)
        globals_, clis, slowest, parallel, staged = [], [], [], [], []
        early: list[float] = []  # staged, early release: the grid's protocol without etcd
        late: dict[bool, list[float]] = {False: [], True: []}  # part 2 late; written at once
        frozen_alone: list[float] = []  # the slowest local checkpoint's freeze
        frozen_par: list[float] = []  # the longest freeze of the three at once
        # the threads of the staged baseline live as long as the run: a checkpoint's
        # worker dies with the thread that forked it (as in the agent)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=3)

        def prepare_and_write(pid: int, dest: str, gate: threading.Barrier | None = None) -> Any:
            # (as the agents ask; with ``gate``, as for early release: every part
            # frozen and collected before any is written, each let go once its pages
            # are read)
            h = lib.prepare(pid, net={"tcp_established": True}, scope="tree",
                            hold=gate is None)  # fmt: skip
            try:
                if gate is not None:
                    gate.wait(60)
                h.write(dest)
            except BaseException:
                h.abort()
                raise
            return h

        def prepare_write_gated(pid: int, dest: str, gate: threading.Barrier) -> Any:
            # (as the agents do since session 10: the image written at once, the part
            # held once its pages are read until every part is collected)
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                h = lib.prepare(pid, net={"tcp_established": True}, scope="tree",
                                hold=False, release_gate=r)  # fmt: skip
                out: list[BaseException] = []

                def write() -> None:
                    try:
                        h.write(dest)
                    except BaseException as err:
                        out.append(err)

                th = threading.Thread(target=write)
                th.start()
                try:
                    gate.wait(60)
                    os.write(w, b"g")
                except BaseException:
                    os.write(w, b"n")
                    raise
                finally:
                    th.join()
                if out:
                    h.abort()
                    raise out[0]
                return h
            finally:
                os.close(r)
                os.close(w)

        def staged_round(dest: str, gate: threading.Barrier | None = None,
                         late: float = 0.0, write_at_once: bool = False) -> float:
            t0 = time.perf_counter()

            def one(n: int, pid: int) -> Any:
                if n == 2 and late:  # (a part whose callbacks or collect take longer)
                    time.sleep(late)
                if write_at_once:
                    assert gate is not None
                    return prepare_write_gated(pid, f"{dest}-{n}", gate)
                return prepare_and_write(pid, f"{dest}-{n}", gate)

            futures = [pool.submit(one, n, pid) for n, pid in enumerate(pids)]
            concurrent.futures.wait(futures)
            failed = [f.exception() for f in futures if f.exception() is not None]
            for f in futures:  # every part let go: resumed, or aborted if one failed
                if f.exception() is not None:
                    continue
                if failed:
                    f.result().abort()
                else:
                    f.result().resume()
            if failed:
                raise SystemExit(f"a staged local checkpoint failed: {failed[0]!r}")
            let_go(pids)
            return time.perf_counter() - t0
        phases: dict[str, list[float]] = {k: [] for k in ("setup", "seen", "prepare", "wait",
                                                          "write", "cut", "replicas", "decide",
                                                          "resume")}  # fmt: skip
        frozen: list[float] = []  # from the round's start to the last part let go
        sampled: list[float] = []  # the longest a part was seen held (early release)
        own: list[float] = []  # the longest a part's worker says it froze it
        held_g: list[float] = []  # rounds asked with hold (let go at the decision)
        held_sampled: list[float] = []
        for i in range(args.rounds):
            # the same round with the parts held until the decision (as before early
            # release), before or after the other in turn
            quiet = list(stores.values())
            if i % 2 == 0:
                quiesce(quiet)
                with Sampler(pids) as sam:
                    t0 = time.perf_counter()
                    C.checkpoint(etcd, "b", hold=True)
                    let_go(pids)
                    held_g.append(time.perf_counter() - t0)
                held_sampled.append(sam.longest())
            quiesce(quiet)
            with Sampler(pids) as sam:
                t0, w0 = time.perf_counter(), time.time()
                v = C.checkpoint(etcd, "b")
                t_commit = time.perf_counter()
                let_go(pids)
                t_run = time.perf_counter()
            sampled.append(sam.longest())
            if i % 2 == 1:
                quiesce(quiet)
                with Sampler(pids) as sam:
                    t0_ = time.perf_counter()
                    C.checkpoint(etcd, "b", hold=True)
                    let_go(pids)
                    held_g.append(time.perf_counter() - t0_)
                held_sampled.append(sam.longest())
            globals_.append(t_run - t0)
            r = etcd.get(K.round_("b", v)) or {}
            votes = [x for _, x in etcd.prefix(K.votes("b", v))]
            times = [x["times"] for x in votes]
            phases["setup"].append(r["created"] - w0)  # election, the application read
            phases["seen"].append(max(t["seen"] for t in times) - r["created"])
            for k in ("prepare", "wait", "write", "replicas"):
                phases[k].append(max(t[k] for t in times))
            own.append(max(t["frozen"] for t in times))
            written = max(t["seen"] + t["prepare"] + t["wait"] + t["write"] for t in times)
            # (early release: each part goes on once every part is collected and its
            # own pages are read, before the decision)
            frozen.append(max(t["seen"] + t["prepare"] + t["wait"] for t in times)
                          - r["created"])  # fmt: skip
            if "cut" in r:  # (replicas: the parts go on at the cut, then send them)
                resumed = max(t["resumed"] for t in times)
                phases["cut"].append(resumed - written)
                ends = [t["resumed"] + t["replicas"] for t in times]
                phases["decide"].append(r["decided"] - max(ends))
            else:
                phases["decide"].append(r["decided"] - written)
            phases["resume"].append(t_run - t_commit)
            quiesce(quiet)
            t0 = time.perf_counter()
            cryo_cli("grid", "checkpoint", "--etcd", url, "b")
            let_go(pids)
            clis.append(time.perf_counter() - t0)
            alone = []
            quiesce(quiet)
            for n, pid in enumerate(pids):
                if n:  # (the one kept for the restart below: the last round's part 1)
                    if i < args.rounds - 1 or n - 1 != 1:
                        shutil.rmtree(tmp / f"alone-{i}-{n - 1}", ignore_errors=True)
                    quiesce(quiet)
                t0 = time.perf_counter()
                res = lib.checkpoint(pid, str(tmp / f"alone-{i}-{n}"))
                alone.append(time.perf_counter() - t0)
                if alone[-1] == max(alone):
                    frozen_one = res.freeze_seconds
            slowest.append(max(alone))
            frozen_alone.append(frozen_one)
            quiesce(quiet)
            t0 = time.perf_counter()
            handles = [lib.start_checkpoint(pid, str(tmp / f"par-{i}-{n}"))
                       for n, pid in enumerate(pids)]  # fmt: skip
            frozen_par.append(max(h_.result().freeze_seconds for h_ in handles))
            parallel.append(time.perf_counter() - t0)
            for n in range(3):
                shutil.rmtree(tmp / f"par-{i}-{n}", ignore_errors=True)
            quiesce(quiet)
            staged.append(staged_round(str(tmp / f"staged-{i}")))
            for n in range(3):
                shutil.rmtree(tmp / f"staged-{i}-{n}", ignore_errors=True)
            quiesce(quiet)
            early.append(staged_round(str(tmp / f"early-{i}"), threading.Barrier(3)))
            if args.late:  # one part late: written once all are collected, or at once
                for at_once in ((False, True) if i % 2 == 0 else (True, False)):
                    for n in range(3):
                        shutil.rmtree(tmp / f"late-{i}-{n}", ignore_errors=True)
                    quiesce(quiet)
                    late[at_once].append(staged_round(str(tmp / f"late-{i}"),
                                                      threading.Barrier(3), args.late,
                                                      write_at_once=at_once))  # fmt: skip
            for n in range(3):
                if i < args.rounds - 1 or n != 1:  # one alone image kept for the restart
                    shutil.rmtree(tmp / f"alone-{i}-{n}", ignore_errors=True)
                shutil.rmtree(tmp / f"par-{i}-{n}", ignore_errors=True)
                shutil.rmtree(tmp / f"staged-{i}-{n}", ignore_errors=True)
                shutil.rmtree(tmp / f"early-{i}-{n}", ignore_errors=True)
                shutil.rmtree(tmp / f"late-{i}-{n}", ignore_errors=True)
        pool.shutdown()
        g, s, par, stg = med(globals_), med(slowest), med(parallel), med(staged)
        print(f"{args.mib} MiB x 3 parts, {args.rounds} rounds (medians), replicas"
              f" {args.replicas}, lease {args.lease} s; the three hosts share this machine's"
              f" {os.cpu_count()} CPUs and disk (load {os.getloadavg()[0]:.1f})")
        print(f"  global checkpoint, until every part runs (library)  {g:.3f} s")
        print(f"  slowest local checkpoint alone                      {s:.3f} s")
        print(f"  three local checkpoints at once (no etcd)           {par:.3f} s")
        print(f"  three prepared at once, written, then let go (no etcd) {stg:.3f} s")
        print(f"  the same, each written once all are collected and let go once its pages"
              f" are read (early release, no etcd) {med(early):.3f} s")
        print(f"  ratio global/slowest alone {g / s:.2f} (goal <= 1.3);"
              f" global/three at once {g / par:.2f}; global/three prepared {g / stg:.2f};"
              f" global/early release without etcd {g / med(early):.2f}")
        if args.late:
            print(f"  part 2 prepared {args.late:.2f} s late (no etcd; rounds alternated):"
                  f" each written once all are collected {med(late[False]):.3f} s, each"
                  f" written at once and let go once all are collected (the agents' since"
                  f" session 10) {med(late[True]):.3f} s")  # fmt: skip
        waking = sum(med(phases[k]) for k in ("setup", "seen", "decide", "resume"))
        print(f"  coordination: global - three at once {g - par:.3f} s, of which etcd and"
              f" waking (setup + seen + decide + resume) {waking:.3f} s")
        print(f"  cryo grid checkpoint (command line, until running)  {med(clis):.3f} s")
        print(f"  early release against parts held until the decision, rounds alternated:"
              f" global until running {g:.3f} s / held {med(held_g):.3f} s; the longest a"
              f" part was held (sampled every 2 ms) {med(sampled):.3f} s / held"
              f" {med(held_sampled):.3f} s")
        print(f"  parts frozen (early release): the longest a part's worker froze it"
              f" {med(own):.3f} s; from the round until the last was collected and began"
              f" its pages {med(frozen):.3f} s; the slowest local checkpoint alone froze its"
              f" part {med(frozen_alone):.3f} s, the three at once {med(frozen_par):.3f} s")
        print("  where the global checkpoint's time goes (slowest part of each phase):")
        for k, xs in phases.items():
            print(f"    {k:9s} {med(xs):.3f} s")
        # -- a host fails ----------------------------------------------------------
        last = tmp / f"alone-{args.rounds - 1}-1"
        t0 = time.perf_counter()
        rr = lib.restart(str(last), allow_duplicate=True, new_pids=True)  # (it runs too)
        one_restart = time.perf_counter() - t0
        kill_all([rr.pid])
        shutil.rmtree(last, ignore_errors=True)
        before = C.parts_of(etcd, "b")
        stop = threading.Event()  # the watcher: cryo grid watch, in a thread of ours
        watcher = threading.Thread(target=C.watch, args=(Etcd(url), "b", None, stop),
                                   daemon=True)  # fmt: skip
        watcher.start()
        time.sleep(1)  # (its watch of the hosts is set up)
        agents["h1"].kill()
        agents["h1"].wait()
        kill_all([pids[1]])
        t0 = time.perf_counter()
        while etcd.get(K.restart("b")) is None:
            if time.perf_counter() - t0 > 120:
                raise SystemExit("no restart was asked within 120 s")
            time.sleep(0.01)
        expired = time.perf_counter() - t0
        while True:
            parts = C.parts_of(etcd, "b")
            epoch = int((etcd.get(K.restart("b")) or {}).get("epoch", 1))
            if all(p.get("epoch") == epoch and p["state"] == "running"
                   for p in parts.values()):  # fmt: skip
                break
            if time.perf_counter() - t0 > 120:
                raise SystemExit(f"the parts did not all run again within 120 s: {parts}")
            time.sleep(0.01)
        total = time.perf_counter() - t0
        asked = float((etcd.get(K.restart("b")) or {}).get("asked", 0))
        pt = [p["times"] for p in parts.values() if p.get("times")]
        print(f"    until each agent saw the restart {max(t['seen'] for t in pt) - asked:.3f} s,"
              f" its parts killed and its lock {max(t['kill'] for t in pt):.3f} s, restored"
              f" {max(t['restore'] for t in pt):.3f} s (slowest host)")
        if epoch != 1:
            print(f"  (the restart was planned {epoch} times: a host's lease expired while"
                  " it was busy, or a host failed during the restart)")
        stop.set()
        watcher.join()
        procs += [int(p["pid"]) for p in parts.values()]
        moved = {n: p["host"] for n, p in parts.items() if p["host"] != before[n]["host"]}
        print(f"  host failure to running again {total:.2f} s: lease expired and restart"
              f" asked after {expired:.2f} s, restart {total - expired:.2f} s (parts moved:"
              f" {moved}); one local restart alone {one_restart:.2f} s; goal <="
              f" {args.lease + one_restart + 1:.2f} s")
    finally:
        for a in agents.values():
            a.kill()
            a.wait()
        kill_all(procs)
        etcd_p.kill()
        etcd_p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(etcd_dir, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
