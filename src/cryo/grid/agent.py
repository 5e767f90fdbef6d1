"""The grid agent of one host: registered in etcd under a lease it keeps alive, it
starts the parts assigned to its host, takes part in global checkpoints (prepare,
write, vote; then resume, or abort and discard) and restarts parts when told to.

    cryo grid agent --etcd URL --host NAME --store DIR [--lease S]
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any

from cryo.errors import CryoError
from cryo.grid import keys as K
from cryo.grid.coordinator import GRACE, resolve_stale
from cryo.grid.etcd import Etcd

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, etcd: Etcd, host: str, store: str, lease: int = 5) -> None:
        self.etcd, self.host, self.store = etcd, host, os.path.abspath(store)
        self.ttl = lease
        self.lease = etcd.lease(lease)
        if not etcd.create(K.host(host), {"host": host, "pid": os.getpid(),
                                          "started": time.time()}, lease=self.lease):  # fmt: skip
            self.lease.revoke()
            raise CryoError(f"host {host} has an agent already")
        self.held: dict[tuple[str, int, int], tuple[Any, str]] = {}  # (app, V, part)
        self.running: dict[tuple[str, int], int] = {}  # (app, part) -> pid
        self.epochs: dict[str, int] = {}
        self.stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep_alive, daemon=True)
        self._keeper.start()

    def _keep_alive(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):
                self.lease.refresh()

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self.lease.revoke()

    # -- the loop ----------------------------------------------------------------------
    def serve(self, poll: float = 0.05) -> None:
        from cryo.linux import libc
        from cryo.linux.consts import PR

        libc.prctl(PR.SET_CHILD_SUBREAPER, 1)  # restored parts come back to us
        while not self.stop.is_set():
            try:
                self.step()
            except CryoError as err:
                log.warning("%s", err)
            self._reap()
            time.sleep(poll)

    def step(self) -> None:
        for key, app in self.etcd.prefix(f"{K.ROOT}apps/"):
            if key.count("/") != 3:  # /cryo/apps/APP only
                continue
            name = app["app"]
            self._restarts(name)
            self._starts(name, app)
            self._rounds(name)

    def _mine(self, app: str) -> dict[int, dict[str, Any]]:
        out = {}
        for k, p in self.etcd.prefix(K.parts(app)):
            if p.get("host") == self.host:
                out[int(k.rsplit("/", 1)[1])] = p
        return out

    def _starts(self, app: str, record: dict[str, Any]) -> None:
        from cryo.launch import run

        for n, p in self._mine(app).items():
            if p["state"] != "starting" or p.get("pid"):
                continue
            cmd = [a.replace("{part}", str(n)) for a in record["cmd"]]
            out = os.path.join(self.store, app, f"part{n}.log")
            os.makedirs(os.path.dirname(out), mode=0o700, exist_ok=True)
            try:
                pid = run(cmd, out)
            except CryoError as err:
                self.etcd.put(K.part(app, n), {**p, "state": "failed", "reason": str(err)})
                continue
            self.running[(app, n)] = pid
            self.etcd.put(K.part(app, n), {**p, "pid": pid, "state": "running", "epoch": 0})

    def _rounds(self, app: str) -> None:
        import cryo

        mine = self._mine(app)
        for key, r in self.etcd.prefix(K.rounds(app)):
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
                    if self.etcd.get(K.vote(app, v, n)) is not None:
                        continue
                    image = os.path.join(self.store, app, f"v{v}", f"part{n}")
                    vote: dict[str, Any] = {"part": n, "ok": False, "image": image}
                    try:
                        left = max(1.0, r["deadline"] - time.time())
                        handle = cryo.prepare(int(p["pid"]), freeze_timeout=left + GRACE + 10)
                        try:
                            os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
                            handle.write(image)
                        except BaseException:
                            handle.abort()
                            raise
                        self.held[(app, v, n)] = (handle, image)
                        vote["ok"] = True
                    except CryoError as err:
                        vote["reason"] = str(err)
                    self.etcd.put(K.vote(app, v, n), vote)
            else:
                for (a, hv, n), (handle, image) in list(self.held.items()):
                    if a != app or hv != v:
                        continue
                    del self.held[(a, hv, n)]
                    if r["state"] == K.COMMITTED:
                        handle.resume()
                    else:
                        handle.abort()
                        shutil.rmtree(image, ignore_errors=True)
        for (a, hv, n), (handle, image) in list(self.held.items()):  # round vanished
            if a == app and self.etcd.get(K.round_(app, hv)) is None:
                del self.held[(a, hv, n)]
                handle.abort()
                shutil.rmtree(image, ignore_errors=True)

    def _restarts(self, app: str) -> None:
        import cryo

        cmd = self.etcd.get(K.restart(app))
        if cmd is None or cmd["epoch"] <= self.epochs.get(app, 0):
            return
        self.epochs[app] = cmd["epoch"]
        parts = {int(k.rsplit("/", 1)[1]): p for k, p in self.etcd.prefix(K.parts(app))}
        for n_s, host in cmd["assign"].items():
            n = int(n_s)
            now = parts.get(n, {})
            pid = self.running.pop((app, n), None) or (
                now.get("pid") if now.get("host") == self.host else None)
            if pid:  # the part as it runs now: rolled back (or moved away)
                _kill(int(pid))
            if host != self.host:
                continue
            try:
                r = cryo.restart(cmd["images"][n_s])
            except CryoError as err:
                self.etcd.put(K.part(app, n), {"part": n, "host": self.host, "pid": None,
                                               "state": "failed", "reason": str(err),
                                               "epoch": cmd["epoch"]})  # fmt: skip
                continue
            self.running[(app, n)] = r.pid
            self.etcd.put(K.part(app, n), {"part": n, "host": self.host, "pid": r.pid,
                                           "state": "running", "epoch": cmd["epoch"]})  # fmt: skip

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (or a zombie its parent will reap)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
