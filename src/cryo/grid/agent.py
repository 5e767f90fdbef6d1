"""The grid agent of one host: registered in etcd under a lease it keeps alive, it
starts the parts assigned to its host, takes part in global checkpoints (prepare,
write, vote; then resume, or abort and discard) and restarts parts when told to.

    cryo grid agent --etcd URL --host NAME --store DIR [--lease S] [--dev IFACE]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from typing import Any

from cryo.errors import CryoError
from cryo.grid import hostnet
from cryo.grid import keys as K
from cryo.grid.coordinator import GRACE, resolve_stale
from cryo.grid.etcd import Etcd

log = logging.getLogger(__name__)


class Agent:
    """One host's agent.  ``dev`` names the interface that service addresses go on (by
    default the one in each address's subnet)."""

    def __init__(self, etcd: Etcd, host: str, store: str, lease: int = 5,
                 dev: str | None = None) -> None:  # fmt: skip
        self.etcd, self.host, self.store = etcd, host, os.path.abspath(store)
        self.ttl, self.dev = lease, dev
        os.makedirs(self.store, mode=0o700, exist_ok=True)
        self.lease = etcd.lease(lease)
        if not etcd.create(K.host(host), self._record(), lease=self.lease):
            self.lease.revoke()
            raise CryoError(f"host {host} has an agent already")
        self.held: dict[tuple[str, int, int], tuple[Any, list[str]]] = {}  # (app, V, part)
        self.running: dict[tuple[str, int], int] = {}  # (app, part) -> pid
        self.epochs: dict[str, int] = {}
        self.locked: dict[str, tuple[int, float]] = {}  # app -> (epoch, until)
        self.kv: dict[str, dict[str, Any]] = {}  # what etcd holds, as a step began
        self.stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep_alive, daemon=True)
        self._keeper.start()

    def _record(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "store": self.store,
                "started": time.time()}  # fmt: skip

    def _keep_alive(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):
                if self.lease.refresh() > 0:
                    continue
                # the lease expired (this process was starved, or etcd unreachable for
                # longer than it): the host counted as failed and its parts may run
                # elsewhere now; it registers again, and the next restart's epoch
                # kills what it still runs of theirs
                log.warning("host %s: its lease expired; registered again", self.host)
                self.lease = self.etcd.lease(self.ttl)
                self.etcd.create(K.host(self.host), self._record(), lease=self.lease)

    def close(self) -> None:
        self.stop.set()
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

        # the other parts' votes do not concern us: they would only wake every agent
        # while the parts are being written
        wake = threading.Event()
        end = self.etcd.watch(K.ROOT, wake, ignore=lambda key: "/votes/" in key)
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
        # every application's keys in one request: what this step acts on
        self.kv = dict(self.etcd.prefix(f"{K.ROOT}apps/"))
        for key, app in list(self.kv.items()):
            if key.count("/") != 3:  # /cryo/apps/APP only
                continue
            name = app["app"]
            self._restarts(name, app)
            self._starts(name, app)
            self._rounds(name, app)
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

    # -- a global checkpoint ---------------------------------------------------------
    def _rounds(self, app: str, record: dict[str, Any]) -> None:
        mine = self._mine(app)
        for key, r in self._prefix(K.rounds(app)):
            if "/votes/" in key:
                continue
            v = int(r["version"])
            if r["state"] == K.PREPARE:
                if time.time() > r["deadline"] + GRACE:
                    # its coordinator died: anyone may abort it now
                    resolve_stale(self.etcd, app, now=time.time() - GRACE)
                    continue
                for n, p in mine.items():
                    if n not in r.get("parts", [n]) or (app, v, n) in self.held:
                        continue
                    if self._get(K.vote(app, v, n)) is not None:
                        continue
                    self.etcd.put(K.vote(app, v, n), self._prepare(app, record, r, n, p))
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
        for (a, hv, n), (handle, paths) in list(self.held.items()):  # round vanished
            if a == app and self._get(K.round_(app, hv)) is None:
                del self.held[(a, hv, n)]
                handle.abort()
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)

    def _prepare(self, app: str, record: dict[str, Any], r: dict[str, Any], n: int,
                 p: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Prepare part ``n`` for round ``r``: freeze it (its connections locked), write
        its image and the replicas; the vote."""
        import cryo

        v = int(r["version"])
        image = os.path.join(self.store, app, f"v{v}", f"part{n}")
        vote: dict[str, Any] = {"part": n, "ok": False, "image": image, "host": self.host}
        paths: list[str] = []
        try:
            want = int(record.get("replicas", 0))
            targets = self._replica_hosts(n, want) if want else {}
            left = max(1.0, r["deadline"] - time.time())
            t0 = time.time()
            handle = cryo.prepare(int(p["pid"]), freeze_timeout=left + GRACE + 10,
                                  net={"tcp_established": True})  # fmt: skip
            try:
                t1 = time.time()
                os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
                paths.append(image)
                handle.write(image)
                t2 = time.time()
                vote["replicas"] = {}
                for h, store in targets.items():
                    dst = os.path.join(store, app, f"v{v}", f"part{n}")
                    paths.append(dst)
                    replicate(image, dst)
                    vote["replicas"][h] = dst
                # when it began (etcd's view of the round came at "seen"), how long
                # the freeze, the image and the replicas took: for status and profiles
                vote["times"] = {"seen": round(t0, 4), "prepare": round(t1 - t0, 4),
                                 "write": round(t2 - t1, 4),
                                 "replicas": round(time.time() - t2, 4)}  # fmt: skip
            except BaseException:
                handle.abort()
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)
                raise
            self.held[(app, v, n)] = (handle, paths)
            vote["ok"] = True
        except (CryoError, OSError) as err:
            vote["reason"] = str(err)
        return vote

    def _replica_hosts(self, n: int, want: int) -> dict[str, str]:
        """``want`` live hosts other than this one (spread by part number) and their
        stores."""
        from cryo.grid.coordinator import live_hosts

        others = sorted((h, rec) for h, rec in live_hosts(self.etcd).items() if h != self.host)
        if len(others) < want:
            raise CryoError(f"{want} replicas wanted, but only {len(others)} other hosts live")
        picked = [others[(n + i) % len(others)] for i in range(want)]
        out = {}
        for h, rec in picked:
            if not rec.get("store"):
                raise CryoError(f"host {h}'s agent names no store for replicas")
            out[h] = str(rec["store"])
        return out

    def _retire(self, app: str, v: int) -> None:
        """Version ``v`` committed: this host's older images and replicas go."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(os.path.join(self.store, app)):
                if name.startswith("v") and name[1:].isdigit() and int(name[1:]) < v:
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


def restore_all(images: dict[int, str]) -> dict[int, int | str]:
    """Restart every image at once (one forked process each when there are several, so
    that a host taking over a failed host's part restores it beside its own): the pid
    of each, or why it failed.  The restored processes come back to us (a child
    subreaper) when the process that restored them exits."""
    import cryo

    net = {"tcp_established": True}
    if len(images) == 1:
        (n, image), = images.items()
        try:
            return {n: cryo.restart(image, net=net).pid}
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
                    out: dict[str, Any] = {"pid": cryo.restart(image, net=net).pid}
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


def replicate(image: str, dst: str) -> None:
    """A copy of image directory ``image`` at ``dst`` (written aside, then renamed): the
    hosts' shared view of the file system, each file copied by the kernel."""
    tmp = f"{dst}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    shutil.copytree(image, tmp, copy_function=shutil.copy2, symlinks=True)
    os.replace(tmp, dst)
