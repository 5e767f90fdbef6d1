"""The grid agent of one host: registered in etcd under a lease it keeps alive, it
starts the parts assigned to its host, takes part in global checkpoints (prepare,
write, vote; then resume, or abort and discard) and restarts parts when told to.

    cryo grid agent --etcd URL --host NAME --store DIR [--lease S] [--dev IFACE]
                    [--listen ADDR:PORT --secret-file FILE]

With ``--listen`` it takes the replicas of other hosts' parts (cryo.grid.replica: the
migration's authenticated stream, keyed with the grid's shared secret) into its store,
and sends its own parts' replicas the same way.

**Fencing.**  A host whose lease may have expired must not run its parts on: once it
expires they are restarted elsewhere.  A thread of the agent watches the lease: when
no refresh has succeeded for ``lease - FENCE_MARGIN`` seconds (less a quarter of the
lease if that is less; before etcd can expire it: the lease's time counts from the
refresh's arrival there, later than its sending here), every part it runs is stopped
(SIGSTOP) and every TCP packet from or to their service addresses dropped (an
nftables table ``cryo-fence-APP``).  When etcd answers
again: if the lease lives, the parts go on; if it is gone, they are killed silently,
their service addresses removed, their records marked ``fenced`` where no restart has
taken them elsewhere yet (``grid watch`` restarts them), and only then does the host
register again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cryo.errors import CryoError
from cryo.grid import hostnet
from cryo.grid import keys as K
from cryo.grid.coordinator import GRACE, resolve_stale
from cryo.grid.etcd import Etcd

log = logging.getLogger(__name__)
FENCE_MARGIN = 0.75  # seconds before the lease could expire that parts are stopped
CANCELLED = "its write failed"  # why Gate.wait returned when its cancel was set


class Agent:
    """One host's agent.  ``dev`` names the interface that service addresses go on (by
    default the one in each address's subnet)."""

    def __init__(self, etcd: Etcd, host: str, store: str, lease: int = 5,
                 dev: str | None = None, listen: str | None = None,
                 secret: bytes | None = None) -> None:  # fmt: skip
        from cryo.grid.replica import ReplicaServer

        self.etcd, self.host, self.store = etcd, host, os.path.abspath(store)
        self.ttl, self.dev, self.secret = lease, dev, secret
        os.makedirs(self.store, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self.received: dict[tuple[str, int], list[str]] = {}  # replicas taken, by round
        self.replicas: ReplicaServer | None = None
        if listen is not None:
            if secret is None:
                raise CryoError("agent --listen needs the grid's shared secret (--secret-file)")
            self.replicas = ReplicaServer(listen, secret, self.store, self._received)
        # the lease's own client: its requests time out before the fence is due
        self._keeper_etcd = Etcd(etcd.url, timeout=max(0.5, lease / 3))
        self.lease = self._keeper_etcd.lease(lease)
        self.alive_at = time.monotonic()  # when the last refresh that succeeded was sent
        if not etcd.create(K.host(host), self._record(), lease=self.lease):
            self.lease.revoke()
            if self.replicas is not None:
                self.replicas.close()
            raise CryoError(f"host {host} has an agent already")
        self.held: dict[tuple[str, int, int], tuple[Any, list[str]]] = {}  # (app, V, part)
        self.cut: dict[tuple[str, int, int], list[str]] = {}  # let go at the cut: images
        self.running: dict[tuple[str, int], int] = {}  # (app, part) -> pid
        self.epochs: dict[str, int] = {}
        self.locked: dict[str, tuple[int, float]] = {}  # app -> (epoch, until)
        self.kv: dict[str, dict[str, Any]] = {}  # what etcd holds, as a step began
        self.fenced: dict[tuple[str, int], int] = {}  # parts stopped: lease in doubt
        # the rounds' keys as the watch of every grid key brings them (votes too; they
        # do not wake the loop), for the gates of early release: (app, V) -> events
        self._round_events: dict[tuple[str, int], list[tuple[str, int, Any]]] = {}
        self._gates: dict[tuple[str, int], Gate] = {}
        self._events_lock = threading.Lock()
        self._gate_etcd: Etcd | None = None  # the gates' client (made once, then kept)
        self._gate_lock = threading.Lock()  # (its requests, one at a time)
        # the threads that prepare a host's parts at once: they live as long as the
        # agent, for a checkpoint's worker dies with the thread that forked it
        # (PR_SET_PDEATHSIG), and a part stays held by it after its vote
        self._preparers = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="cryo-grid-prepare")
        self.stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep_alive, daemon=True)
        self._keeper.start()
        self._fence = threading.Thread(target=self._fence_watch, daemon=True)
        self._fence.start()

    def _record(self) -> dict[str, Any]:
        rec = {"host": self.host, "pid": os.getpid(), "store": self.store,
               "started": time.time()}  # fmt: skip
        if self.replicas is not None:
            rec["replica"] = self.replicas.address
        return rec

    def _keep_alive(self) -> None:
        from cryo.grid.etcd import EtcdUnavailable

        while not self.stop.wait(self.ttl / 3 if not self.fenced else 0.1):
            sent = time.monotonic()
            try:
                ttl = self.lease.refresh()
            except Exception as err:  # (unreachable: the fence watch counts the time)
                log.debug("host %s: lease not refreshed: %s", self.host, err)
                continue
            if ttl > 0:
                with self._lock:
                    self.alive_at = sent
                if self.fenced:
                    self._unfence(kill=False)
                continue
            # the lease expired (etcd unreachable for longer than it, or this process
            # starved): the host counted as failed and its parts may run elsewhere now.
            # They are killed first, then the host registers again.
            log.warning("host %s: its lease expired; its parts are killed, the host"
                        " registers again", self.host)  # fmt: skip
            self._fence_parts()
            self._unfence(kill=True)
            with contextlib.suppress(EtcdUnavailable):
                self.lease = self._keeper_etcd.lease(self.ttl)
                self._keeper_etcd.create(K.host(self.host), self._record(), lease=self.lease)
                with self._lock:
                    self.alive_at = sent

    # -- fencing -----------------------------------------------------------------------
    def _fence_watch(self) -> None:
        while not self.stop.wait(0.05):
            with self._lock:
                doubt = time.monotonic() - self.alive_at > \
                    self.ttl - min(FENCE_MARGIN, self.ttl / 4)  # fmt: skip
            if doubt and set(self.running) - set(self.fenced):
                if not self.fenced:
                    log.warning("host %s: no news from etcd for %.1f s; its parts are"
                                " stopped until its lease is known", self.host,
                                time.monotonic() - self.alive_at)  # fmt: skip
                self._fence_parts()

    def _fence_parts(self) -> None:
        """Stop every part this host runs and drop its service addresses' packets.  A
        part held by a checkpoint (traced) is not signalled: a stop signal pending in
        it would be saved in its image; it is stopped once let go (the fence watch
        tries again), and killed with the others if the lease is gone."""
        with self._lock:
            for key, pid in list(self.running.items()):
                if key in self.fenced or _traced(pid):
                    continue
                for p in hostnet.tree(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGSTOP)
                self.fenced[key] = pid
            for app in {a for a, _ in self.fenced}:
                addrs = self._services(app, [n for a, n in self.fenced if a == app])
                with contextlib.suppress(CryoError):
                    hostnet.lock(app, addrs, kind="fence")

    def _services(self, app: str, parts: list[int]) -> list[str]:
        services = (self.kv.get(K.app(app)) or {}).get("services") or []
        return [services[n] for n in parts if n < len(services)]

    def _unfence(self, kill: bool) -> None:
        """The lease is known again: alive (``kill`` False), the fenced parts go on;
        gone, they are killed silently, their service addresses removed and their
        records marked ``fenced`` unless a restart took them elsewhere already."""
        with self._lock:  # (cleared once done: no step meanwhile)
            fenced = dict(self.fenced)
            if kill:  # (held ones too)
                fenced = {**self.running, **fenced}
        for (app, n), pid in fenced.items():
            if not kill:
                for p in hostnet.tree(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGCONT)
                continue
            self.running.pop((app, n), None)
            hostnet.kill_silently(pid)
            for addr in self._services(app, [n]):
                with contextlib.suppress(CryoError):
                    hostnet.remove_service(addr)
            with contextlib.suppress(CryoError):
                key = K.part(app, n)
                raw = self._keeper_etcd.get_raw(key)
                rec = K.decode(raw)
                if raw is not None and rec and rec.get("host") == self.host \
                        and rec.get("pid") == pid:  # fmt: skip
                    self._keeper_etcd.swap(key, raw, {**rec, "state": "fenced", "pid": None})
        for app in {a for a, _ in fenced}:
            with contextlib.suppress(CryoError):
                hostnet.unlock(app, kind="fence")
        with self._lock:
            for done in fenced:
                self.fenced.pop(done, None)
        if kill:
            log.warning("host %s: parts %s killed (fenced)", self.host, sorted(fenced))

    def close(self) -> None:
        self.stop.set()
        self._preparers.shutdown(wait=False)
        if self.replicas is not None:
            self.replicas.close()
        with contextlib.suppress(Exception):
            self.lease.revoke()

    # -- the loop ----------------------------------------------------------------------
    def serve(self, poll: float = 0.25, reap_all: bool = True) -> None:
        """Take part until :meth:`close` (or ``stop`` is set): woken by etcd's watch of
        every key of the grid, and every ``poll`` seconds in any case.  ``reap_all``
        reaps every child of this process (a process of its own); without it only the
        parts it started or restored (inside a daemon that reaps its own children)."""
        from cryo.linux import libc
        from cryo.linux.consts import PR

        libc.prctl(PR.SET_CHILD_SUBREAPER, 1)  # restored parts come back to us
        import cryo.engine.dump
        import cryo.engine.restore  # noqa: F401  (now, not in the first round)

        # the other parts' votes do not wake the loop (they would wake every agent
        # while the parts are being written): they go to the gates of early release
        wake = threading.Event()
        end = self.etcd.watch(K.ROOT, wake, seen=self._saw, quiet=lambda key: "/votes/" in key)
        try:
            while not self.stop.is_set():
                wake.clear()
                try:
                    self.step()
                except CryoError as err:
                    log.warning("%s", err)
                self._reap(reap_all)
                wake.wait(poll)
        finally:
            end()

    def step(self) -> None:
        if self.fenced:  # nothing is done until the lease is known again
            return
        # every application's keys in one request: what this step acts on
        self.kv = dict(self.etcd.prefix(f"{K.ROOT}apps/"))
        # an application that is gone (an adoption undone, or its adopter died half-way
        # and its lease took its keys): its parts are forgotten, left running as they are
        for a, n in [k for k in self.running if K.app(k[0]) not in self.kv]:
            log.info("host %s: part %d of %s forgotten (the application is gone)",
                     self.host, n, a)  # fmt: skip
            del self.running[(a, n)]
        for key, app in list(self.kv.items()):
            if key.count("/") != 3:  # /cryo/apps/APP only
                continue
            name = app["app"]
            self._restarts(name, app)
            self._starts(name, app)
            self._adopts(name, app)
            self._rounds(name, app)
            self._replicas_decided(name)
            self._unlock(name)

    def _get(self, key: str) -> dict[str, Any] | None:
        return self.kv.get(key)

    def _prefix(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]

    def _mine(self, app: str) -> dict[int, dict[str, Any]]:
        out = {}
        for k, p in self._prefix(K.parts(app)):
            if p.get("host") == self.host:
                out[int(k.rsplit("/", 1)[1])] = p
        return out

    def _starts(self, app: str, record: dict[str, Any]) -> None:
        from cryo.launch import run

        services = record.get("services") or []
        for n, p in self._mine(app).items():
            if p["state"] != "starting" or p.get("pid"):
                continue
            subst = {"{part}": str(n), "{addrs}": ",".join(services),
                     "{addr}": services[n] if n < len(services) else ""}  # fmt: skip
            cmd = []
            for arg in record["cmd"]:
                for k, v in subst.items():
                    arg = arg.replace(k, v)  # noqa: PLW2901
                cmd.append(arg)
            # the part's output: in the application's store if it has one (every host
            # sees it: a part that moves goes on writing there), else in this host's
            out = os.path.join(record.get("store") or self.store, app, f"part{n}.log")
            os.makedirs(os.path.dirname(out), mode=0o700, exist_ok=True)
            try:
                if n < len(services):
                    hostnet.add_service(services[n], self.dev)
                pid = run(cmd, out)
            except CryoError as err:
                self.etcd.put(K.part(app, n), {**p, "state": "failed", "reason": str(err)})
                continue
            self.running[(app, n)] = pid
            self.etcd.put(K.part(app, n), {**p, "pid": pid, "state": "running", "epoch": 0})

    # -- adoption (grid adopt) ---------------------------------------------------------
    def _adopts(self, app: str, record: dict[str, Any]) -> None:
        """The parts ``grid adopt`` gave this host (state ``adopting``): each taken
        (``running``, epoch 0) or refused with why (``refused``, its error's class), by
        a compare-and-swap on the record as read, under the adoption's lease: an
        adoption undone meanwhile (its keys deleted) takes nothing here."""
        services = record.get("services") or []
        for n, p in self._mine(app).items():
            if p.get("state") != "adopting":
                continue
            raw, lease = K.encode(p).encode(), p.get("lease")
            try:
                pid = int(p["pid"])
                self._adoptable(app, pid, int(p.get("uid", -1)),
                                services[n] if n < len(services) else None)  # fmt: skip
            except CryoError as err:
                self.etcd.swap(K.part(app, n), raw, {**p, "state": "refused", "reason": str(err),
                                                     "error": type(err).__name__}, lease=lease)
                continue
            if self.etcd.swap(K.part(app, n), raw, {**p, "state": "running", "epoch": 0},
                              lease=lease):  # fmt: skip
                self.running[(app, n)] = pid
                log.info("host %s: process %d adopted as part %d of %s", self.host, pid, n, app)

    def _adoptable(self, app: str, pid: int, uid: int, service: str | None) -> None:
        """Process ``pid`` may become a part: it runs here (not a zombie), belongs to
        ``uid`` (its real, effective, saved and file system uids; and it runs no setgid
        program; any process, for root), is not this agent or one of its ancestors and shares
        no process with a part this host runs; its service address is on this host."""
        from cryo import errors

        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ValueError):
            status = {}
        if pid <= 0 or not status or status.get("State", "").split()[:1] in (["Z"], ["X"]):
            raise errors.NoSuchProcess(f"no process {pid} on host {self.host}", pid=pid)
        # (as the daemon's job_add: every uid its owner's, and no setgid program)
        uids = {int(x) for x in status["Uid"].split()}
        if uid != 0 and (uids != {uid} or len(set(status["Gid"].split())) != 1):
            raise errors.AccessDenied(f"process {pid} on host {self.host} is not the"
                                      f" caller's (uids {sorted(uids)}, not {uid}, or"
                                      " setgid)", pid=pid)  # fmt: skip
        if os.getpid() in hostnet.tree(pid):
            raise errors.AccessDenied(f"process {pid} is host {self.host}'s grid agent or one"
                                      " of its ancestors", pid=pid)  # fmt: skip
        mine = set(hostnet.tree(pid))
        for (a, n), q in self.running.items():
            if q in mine or pid in hostnet.tree(q):
                raise errors.RestoreConflict(f"process {pid} on host {self.host} is (in) part"
                                             f" {n} of {a} already", pid=pid)  # fmt: skip
        if service is not None and not hostnet.has_address(service):
            raise CryoError(f"service address {service} of {app} is not on host {self.host}"
                            " (a part adopted with --services binds to its own)")  # fmt: skip

    # -- a global checkpoint ---------------------------------------------------------
    def _rounds(self, app: str, record: dict[str, Any]) -> None:
        mine = self._mine(app)
        for key, r in self._prefix(K.rounds(app)):
            if "/votes/" in key:
                continue
            v = int(r["version"])
            if r["state"] in (K.PREPARE, K.CUT) and time.time() > r["deadline"] + GRACE:
                # its coordinator died: anyone may abort it now
                resolve_stale(self.etcd, app, now=time.time() - GRACE)
                continue
            if r["state"] == K.CUT:  # every part is written: ours go on, then replicas
                let_go = []
                for (a, hv, n), (handle, paths) in list(self.held.items()):
                    if a != app or hv != v:
                        continue
                    del self.held[(a, hv, n)]
                    handle.resume()
                    self.cut[(a, hv, n)] = paths
                    let_go.append(n)
                for n in let_go:  # (every one runs again before any replica is sent)
                    vote = self._get(K.vote(app, v, n)) or {}
                    self.etcd.put(K.vote(app, v, n), self._replicate(app, record, r, n, vote))
                continue
            if r["state"] == K.PREPARE:
                if time.time() > r["deadline"] + GRACE:
                    # its coordinator died: anyone may abort it now
                    resolve_stale(self.etcd, app, now=time.time() - GRACE)
                    continue
                todo = {n: p for n, p in mine.items() if n in r.get("parts", [n])
                        and (app, v, n) not in self.held
                        and self._get(K.vote(app, v, n)) is None}  # fmt: skip
                for n, vote in self._prepare_all(app, record, r, todo):
                    self.etcd.put(K.vote(app, v, n), vote)
            else:
                for (a, hv, n), (handle, paths) in list(self.held.items()):
                    if a != app or hv != v:
                        continue
                    del self.held[(a, hv, n)]
                    if r["state"] == K.COMMITTED:
                        handle.resume()
                        self._retire(app, v)
                    else:
                        handle.abort()
                        for path in paths:
                            shutil.rmtree(path, ignore_errors=True)
                for (a, hv, n), paths in list(self.cut.items()):  # (running since the cut)
                    if a != app or hv != v:
                        continue
                    del self.cut[(a, hv, n)]
                    if r["state"] == K.COMMITTED:
                        self._retire(app, v)
                    else:
                        for path in paths:
                            shutil.rmtree(path, ignore_errors=True)
        for (a, hv, n), (handle, paths) in list(self.held.items()):  # round vanished
            if a == app and self._get(K.round_(app, hv)) is None:
                del self.held[(a, hv, n)]
                handle.abort()
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)
        committed = (self._get(K.committed(app)) or {}).get("version")
        for (a, hv, n), paths in list(self.cut.items()):
            if a == app and self._get(K.round_(app, hv)) is None:
                del self.cut[(a, hv, n)]
                if hv != committed:
                    for path in paths:
                        shutil.rmtree(path, ignore_errors=True)

    def _saw(self, key: str, revision: int, value: dict[str, Any] | None) -> None:
        """A change under the grid's keys, from the watch: a round's (its state or a
        vote) goes to that round's gate, or is kept for one made later (of the last
        few rounds of each application)."""
        at = key.rfind("/rounds/")
        if at < 0 or not key.startswith(f"{K.ROOT}apps/"):
            return
        app = key[len(f"{K.ROOT}apps/"):at]
        try:
            v = int(key[at + len("/rounds/"):].split("/", 1)[0])
        except ValueError:
            return
        with self._events_lock:
            gate = self._gates.get((app, v))
            if gate is None:
                self._round_events.setdefault((app, v), []).append((key, revision, value))
                old = sorted(x for x in self._round_events if x[0] == app)[:-4]
                for x in old:
                    del self._round_events[x]
        if gate is not None:
            gate.seen(key, revision, value)

    def _gate(self, app: str, v: int) -> Gate:
        """Round ``v``'s gate: what etcd held of it at this step's read, then every
        change the watch brought, from before the gate too."""
        if self._gate_etcd is None:
            self._gate_etcd = Etcd(self.etcd.url)
        restart = (self._get(K.restart(app)) or {}).get("epoch")
        gate = Gate(self._gate_etcd, app, v, epoch=restart, done=lambda: self._ungate(app, v),
                    client_lock=self._gate_lock)  # fmt: skip
        for key, value in self._prefix(K.round_(app, v)):
            if key == K.round_(app, v) or key.startswith(K.votes(app, v)):
                gate.seen(key, 0, value)
        with self._events_lock:
            early = self._round_events.pop((app, v), [])
            self._gates[(app, v)] = gate
        for event in early:
            gate.seen(*event)
        return gate

    def _ungate(self, app: str, v: int) -> None:
        with self._events_lock:
            self._gates.pop((app, v), None)

    def _prepare_all(self, app: str, record: dict[str, Any], r: dict[str, Any],
                     todo: dict[int, dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every part of ``todo`` prepared for round ``r`` at once (in the agent's
        threads for it, when this host runs several: each waits on its own
        checkpoint's worker), each part's vote given as soon as it is written."""
        from cryo.grid.coordinator import live_hosts

        want = int(record.get("replicas", 0))
        live = live_hosts(self.etcd) if want and todo else {}
        # (the round's votes and state, watched from now: the parts are written once
        # every part of the round is frozen and collected)
        gate = None if r.get("hold") or not todo else self._gate(app, int(r["version"]))
        try:
            if len(todo) <= 1:
                for n, p in todo.items():
                    yield n, self._prepare(app, record, r, n, p, live, gate)
                return
            futures = {self._preparers.submit(self._prepare, app, record, r, n, p, live,
                                              gate): n for n, p in todo.items()}  # fmt: skip
            for f in concurrent.futures.as_completed(futures):
                n = futures[f]
                try:
                    yield n, f.result()
                except Exception as err:  # (never without a vote)
                    yield n, {"part": n, "ok": False, "host": self.host, "reason": repr(err)}
        finally:
            if gate is not None:
                gate.close()

    def _prepare(self, app: str, record: dict[str, Any], r: dict[str, Any], n: int,
                 p: dict[str, Any], live: dict[str, dict[str, Any]],
                 gate: Gate | None = None) -> dict[str, Any]:  # fmt: skip
        """Prepare part ``n`` for round ``r``: freeze it (its connections locked) and
        collect its state; with a ``gate`` (the round's default, **early release**) say
        so (a vote ``collected``) and wait until every part of the round has, then
        write its image, which lets it go once its pages are in memory; without (a
        round asked with ``hold``) write it at once, the part held until the decision.
        The replicas go at the cut.  Returns the vote (``written``)."""
        import cryo

        v = int(r["version"])
        image = os.path.join(self.store, app, f"v{v}", f"part{n}")
        vote: dict[str, Any] = {"part": n, "ok": False, "image": image, "host": self.host}
        paths: list[str] = []
        try:
            want = int(record.get("replicas", 0))
            targets = self._replica_hosts(n, want, live) if want else {}
            left = max(1.0, r["deadline"] - time.time())
            t0 = time.time()
            # (early release: the part's worker, forked by prepare, waits at this pipe
            # before it lets the part go)
            release = os.pipe2(os.O_CLOEXEC) if gate is not None else None
            try:
                # (the part is a process tree: its root and every descendant, frozen
                # together)
                handle = cryo.prepare(int(p["pid"]), scope="tree", hold=gate is None,
                                      freeze_timeout=left + GRACE + 10,
                                      net={"tcp_established": True},
                                      release_gate=release[0] if release else None)  # fmt: skip
                try:
                    t1 = time.time()
                    os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
                    paths.append(image)
                    if release is not None:
                        assert gate is not None
                        result, t2 = self._write_gated(handle, image, gate, release[1], r,
                                                       n, vote, t0, t1)  # fmt: skip
                    else:
                        t2 = time.time()
                        result = handle.write(image)
                except BaseException:
                    with contextlib.suppress(CryoError):  # (a failed write ended it)
                        handle.abort()
                    raise
            finally:
                for fd in release or ():
                    os.close(fd)
            try:
                t3 = time.time()
                # the replicas go once every part is written (the round's cut): the vote
                # says so
                vote["replicas"] = {}
                vote["replicated"] = not targets
                if (app, n) in self.fenced:  # stopped by the fence as it was seized:
                    # its image would restore it stopped
                    raise CryoError(f"part {n} was fenced during its checkpoint")
                # when it began (etcd's view of the round came at "seen"), how long
                # the freeze and collect, the wait for the other parts', the image and
                # the replicas took, how long the part was frozen when let go early
                vote["times"] = {"seen": round(t0, 4), "prepare": round(t1 - t0, 4),
                                 "wait": round(t2 - t1, 4), "write": round(t3 - t2, 4),
                                 "replicas": 0.0}  # fmt: skip
                if gate is not None:
                    vote["times"]["frozen"] = round(result.freeze_seconds, 4)
            except BaseException:
                handle.abort()
                raise
            self.held[(app, v, n)] = (handle, paths)
            vote["ok"] = True
            vote["phase"] = "written"
        except (CryoError, OSError) as err:
            vote["reason"] = str(err)
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
        return vote

    def _write_gated(self, handle: Any, image: str, gate: Gate, release: int,
                     r: dict[str, Any], n: int, vote: dict[str, Any], t0: float,
                     t1: float) -> tuple[Any, float]:  # fmt: skip
        """Early release of part ``n``, frozen and collected: its vote ``collected``,
        then its image written at once, in a thread of its own, while this one waits
        until every part of the round has voted so; the part's worker holds it once
        its pages are read until the release pipe says go (b"g", or no: let go
        unwritten).  The write's result, and when the gate opened."""
        app = gate.app
        # no part may go on before every part's state is collected: a part let go
        # earlier could send what another's image then records as received while its
        # own image does not record it as sent
        gate.vote(n, {**vote, "ok": True, "phase": "collected", "image": None,
                      "times": {"seen": round(t0, 4), "prepare": round(t1 - t0, 4)}})
        hosts = {int(k.rsplit("/", 1)[1]): str(x.get("host"))
                 for k, x in self._prefix(K.parts(app))}  # fmt: skip
        done = threading.Event()
        out: dict[str, Any] = {}

        def write() -> None:
            try:
                out["result"] = handle.write(image)
            except BaseException as err:  # (handed to the waiting thread)
                out["error"] = err
            finally:
                done.set()
                gate.event.set()

        writer = threading.Thread(target=write, name=f"cryo-grid-write-{n}", daemon=True)
        writer.start()
        why: str | None = "the wait for the other parts failed"
        try:
            why = gate.wait(r.get("parts") or [n], r["deadline"], hosts, cancel=done)
        finally:
            opened = time.time()
            os.write(release, b"n" if why is not None else b"g")
            writer.join()
        if "error" in out and why in (None, CANCELLED):
            raise out["error"]  # (its write failed first)
        if why is not None:
            raise CryoError(f"part {n} let go unwritten: {why}")
        return out["result"], opened

    def _replicate(self, app: str, record: dict[str, Any], r: dict[str, Any], n: int,
                   vote: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Round ``r`` is cut (every part written; ours runs again): part ``n``'s image
        streamed to its replica hosts; its vote again, ``replicated`` or a no."""
        from cryo.grid import replica

        v = int(r["version"])
        t0 = time.time()
        out = {**vote, "replicas": {}, "replicated": False}
        try:
            targets = self._replica_hosts(n, int(record.get("replicas", 0)))
            assert self.secret is not None
            for h, to in targets.items():  # (what a host keeps of an aborted round it
                out["replicas"][h] = replica.send(  # removes itself)
                    vote["image"], to, self.secret, app, v, n,
                    timeout=max(5.0, r["deadline"] + GRACE - time.time()))
            out["replicated"] = True
        except (CryoError, OSError, KeyError) as err:
            out.update(ok=False, reason=f"replicas: {err}")
        times = dict(vote.get("times") or {})
        times.update(resumed=round(t0, 4), replicas=round(time.time() - t0, 4))
        out["times"] = times
        return out

    def _replica_hosts(self, n: int, want: int,
                       live: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
        """``want`` live hosts other than this one that take replicas (spread by part
        number) and their agents' addresses (of the ``live`` hosts if given, else as
        etcd says now)."""
        from cryo.grid.coordinator import live_hosts

        if live is None:
            live = live_hosts(self.etcd)
        if self.secret is None:
            raise CryoError(f"{want} replicas wanted, but this host's agent has no shared"
                            " secret to send them with (--secret-file)")  # fmt: skip
        others = sorted((h, rec) for h, rec in live.items()
                        if h != self.host and rec.get("replica"))  # fmt: skip
        if len(others) < want:
            raise CryoError(f"{want} replicas wanted, but only {len(others)} other live hosts"
                            " take replicas (agent --listen)")  # fmt: skip
        picked = [others[(n + i) % len(others)] for i in range(want)]
        return {h: str(rec["replica"]) for h, rec in picked}

    def _received(self, app: str, version: int, path: str) -> None:
        with self._lock:
            self.received.setdefault((app, version), []).append(path)

    def _replicas_decided(self, app: str) -> None:
        """The replicas this host took of rounds now decided: kept if committed (and
        the older versions retired), removed if aborted or forgotten uncommitted."""
        with self._lock:
            mine = [(v, paths) for (a, v), paths in self.received.items() if a == app]
        committed = (self._get(K.committed(app)) or {}).get("version")
        for v, paths in mine:
            r = self._get(K.round_(app, v))
            state = r.get("state") if r else (K.COMMITTED if v == committed else K.ABORTED)
            if state in (K.PREPARE, K.CUT):
                continue
            with self._lock:
                self.received.pop((app, v), None)
            if state == K.COMMITTED:
                self._retire(app, v)
            else:
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)

    def _retire(self, app: str, v: int) -> None:
        """Version ``v`` committed: this host's older images and replicas go, but those
        of the versions the application keeps (``committed``'s "kept", and the version
        committed now: after a restart of an older one it may be below ``v``)."""
        committed = self._get(K.committed(app)) or {}
        keep = {int(x) for x in committed.get("kept") or {}}
        if "version" in committed:
            keep.add(int(committed["version"]))
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(os.path.join(self.store, app)):
                if name.startswith("v") and name[1:].isdigit() and int(name[1:]) < v \
                        and int(name[1:]) not in keep:  # fmt: skip
                    shutil.rmtree(os.path.join(self.store, app, name), ignore_errors=True)

    # -- a restart ---------------------------------------------------------------------
    def _restarts(self, app: str, record: dict[str, Any]) -> None:

        cmd = self._get(K.restart(app))
        if cmd is None or cmd["epoch"] <= self.epochs.get(app, 0):
            return
        epoch = int(cmd["epoch"])
        self.epochs[app] = epoch
        services: list[str] = record.get("services") or []
        parts = {int(k.rsplit("/", 1)[1]): p for k, p in self._prefix(K.parts(app))}
        todo = [int(n) for n, h in cmd["assign"].items() if h == self.host
                and parts.get(int(n), {}).get("epoch") != epoch]  # fmt: skip
        old = {n: int(pid) for (a, n), pid in self.running.items() if a == app}
        for n, p in parts.items():  # what runs here of an earlier epoch
            if p.get("host") == self.host and p.get("pid") and p.get("epoch") != epoch:
                old.setdefault(n, int(p["pid"]))
        if not todo and not old:
            return
        t0 = time.time()
        if services:
            hostnet.lock(app, services)
            self.locked[app] = (epoch, time.monotonic() + 120)
        for n, pid in old.items():  # rolled back (or moved away): gone without a word
            self.running.pop((app, n), None)
            hostnet.kill_silently(pid)
            if n < len(services) and cmd["assign"].get(str(n)) != self.host:
                with contextlib.suppress(CryoError):
                    hostnet.remove_service(services[n])
        images = {}
        for n in sorted(todo):
            s = str(n)
            image = cmd["images"][s]
            if cmd.get("hosts", {}).get(s) != self.host:
                image = cmd.get("replicas", {}).get(s, {}).get(self.host, image)
            images[n] = image
            if n < len(services):
                hostnet.add_service(services[n], self.dev)
        t1 = time.time()
        restored = restore_all(images)
        times = {"seen": round(t0, 4), "kill": round(t1 - t0, 4),
                 "restore": round(time.time() - t1, 4)}  # fmt: skip
        for n, got in restored.items():
            if isinstance(got, str):
                self.etcd.put(K.part(app, n), {"part": n, "host": self.host, "pid": None,
                                               "state": "failed", "reason": got,
                                               "epoch": epoch})  # fmt: skip
                continue
            self.running[(app, n)] = got
            self.etcd.put(K.part(app, n), {"part": n, "host": self.host, "pid": got,
                                           "state": "running", "epoch": epoch,
                                           "image": images[n], "times": times})  # fmt: skip

    def _unlock(self, app: str) -> None:
        """The restart lock goes once every part runs at its epoch (or after two
        minutes, when some part never will)."""
        if app not in self.locked:
            return
        epoch, until = self.locked[app]
        parts = [p for _, p in self._prefix(K.parts(app))]
        done = all(p.get("epoch") == epoch and p["state"] in ("running", "failed")
                   for p in parts)  # fmt: skip
        if done or time.monotonic() > until:
            hostnet.unlock(app)
            del self.locked[app]

    def _reap(self, reap_all: bool = True) -> None:
        if not reap_all:
            for pid in list(self.running.values()):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            return
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


class Gate:
    """One round's votes and state as seen by this host's agent while its parts are
    frozen (early release): what its step read, then what the agent's watch of every
    grid key brings (:meth:`seen`); read again when no event came for 0.25 s (a watch
    is made some moments after it is asked for, and a stream that breaks is not made
    again).  Its client is the agent's gates' own (the parts' threads share it, under a
    lock)."""

    def __init__(self, etcd: Etcd, app: str, version: int, epoch: Any = None,
                 done: Callable[[], None] | None = None,
                 client_lock: threading.Lock | None = None) -> None:  # fmt: skip
        self.app, self.version, self.etcd = app, version, etcd
        self.epoch = epoch  # the application's restart epoch at the step's read
        self.event = threading.Event()
        self._lock = threading.Lock()  # what it saw
        self._client = client_lock or threading.Lock()  # the client's requests
        self._votes: dict[int, tuple[int, dict[str, Any] | None]] = {}
        self._state: tuple[int, str] | None = None
        self._done = done

    def seen(self, key: str, revision: int, value: dict[str, Any] | None) -> None:
        with self._lock:
            if key.startswith(K.votes(self.app, self.version)):
                n = int(key.rsplit("/", 1)[1])
                if revision >= self._votes.get(n, (0, None))[0]:
                    self._votes[n] = (revision, value)
            elif key == K.round_(self.app, self.version) and (
                    self._state is None or revision >= self._state[0]):  # fmt: skip
                self._state = (revision, (value or {}).get("state", "gone"))
        self.event.set()

    def vote(self, n: int, vote: dict[str, Any]) -> None:
        with self._client:
            self.etcd.put(K.vote(self.app, self.version, n), vote)
        self.seen(K.vote(self.app, self.version, n), 0, vote)  # (ours: at once)

    def wait(self, parts: list[int], deadline: float, hosts: dict[int, str] | None = None,
             cancel: threading.Event | None = None) -> str | None:  # fmt: skip
        """None once every part of ``parts`` has voted yes (collected or written); else
        why not: a no vote, the round decided or gone, its deadline passed, the host of
        a part that has not voted gone (``hosts``: each part's), a restart asked (its
        parts would wait for the deadline, and this agent's restart with them); checked
        in etcd every 0.25 s; ``cancel`` set (:data:`CANCELLED`: the part's write
        failed; whoever sets it sets :attr:`event` too)."""
        woken = True
        checked = time.monotonic()
        while True:
            self.event.clear()
            if cancel is not None and cancel.is_set():
                return CANCELLED
            if time.monotonic() - checked > 0.25:
                with self._client:
                    live = {k.rsplit("/", 1)[1] for k, _ in self.etcd.prefix(K.hosts())}
                    now = (self.etcd.get(K.restart(self.app)) or {}).get("epoch")
                checked = time.monotonic()
                if now != self.epoch:
                    return "a restart was asked"
                with self._lock:
                    voted = {n for n, (_, x) in self._votes.items() if x is not None}
                gone = sorted({(hosts or {}).get(n, "") for n in parts if n not in voted}
                              - live - {""})  # fmt: skip
                if hosts and gone:
                    return f"host {', '.join(gone)} is gone"
            if not woken:
                with self._client:
                    got = self.etcd.prefix_revisions(K.round_(self.app, self.version))
                for key, revision, value in got:
                    self.seen(key, revision, value)
                if not any(k == K.round_(self.app, self.version) for k, _, _ in got):
                    self.seen(K.round_(self.app, self.version), 1 << 62, None)
            with self._lock:
                votes = {n: x for n, (_, x) in self._votes.items() if x is not None}
                state = self._state[1] if self._state is not None else None
            no = [x for x in votes.values() if not x.get("ok")]
            if no:
                return f"part {no[0].get('part')} voted no: {no[0].get('reason')}"
            if state is not None and state != K.PREPARE:
                return f"the round is {state}"
            if all(n in votes for n in parts):
                return None
            if time.time() > deadline:
                return "the round's deadline passed before every part was collected"
            woken = self.event.wait(0.25)

    def close(self) -> None:
        if self._done is not None:
            self._done()


def _traced(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "TracerPid:\t0\n" not in f.read()
    except FileNotFoundError:
        return False


def restore_all(images: dict[int, str]) -> dict[int, int | str]:
    """Restart every image at once (one forked process each when there are several, so
    that a host taking over a failed host's part restores it beside its own): the pid
    of each, or why it failed.  The restored processes come back to us (a child
    subreaper) when the process that restored them exits."""
    import cryo

    kw: dict[str, Any] = {"net": {"tcp_established": True},
                          "new_pids": None}  # (a lone thread may take a new pid)  # fmt: skip
    if len(images) == 1:
        (n, image), = images.items()
        try:
            return {n: cryo.restart(image, **kw).pid}
        except CryoError as err:
            return {n: str(err)}
    kids = {}
    for n, image in images.items():
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (a child)
            code = 0
            try:
                os.close(r)
                try:
                    out: dict[str, Any] = {"pid": cryo.restart(image, **kw).pid}
                except CryoError as err:
                    out = {"error": str(err)}
                os.write(w, json.dumps(out).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        kids[n] = (pid, r)
    done: dict[int, int | str] = {}
    for n, (pid, r) in kids.items():
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        try:
            got = json.loads(data)
            done[n] = int(got["pid"]) if "pid" in got else str(got["error"])
        except (ValueError, KeyError):
            done[n] = f"the process restoring part {n} died"
    return done
