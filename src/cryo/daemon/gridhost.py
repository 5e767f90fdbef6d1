"""The grid agent of this host inside cryod (``cryod --grid URL --host NAME``): one host,
one daemon (issue 15).

The agent (:class:`cryo.grid.agent.Agent`, unchanged) runs in a child process of the
daemon that the daemon supervises, not in one of its threads: the agent waits for any
child of its own (it reaps the parts it starts and restores), which in the daemon's
process would take the exit statuses of the daemon's jobs; and its ptrace sessions,
page maps and etcd connections stay out of the daemon's memory.  The child is started
by a thread of the daemon that lives as long as it (its parent-death signal, SIGTERM,
then comes when the daemon dies: a daemon killed takes its agent along, and the one
started again starts a new agent).  An agent that ends is started again (1, 2, 4 ...
30 s later: its host key stays in etcd until its lease expires); the daemon's stop
ends it with SIGTERM, and the agent then revokes its lease (the host leaves the grid
at once).

    python -m cryo.daemon.gridhost --etcd URL --host NAME --store DIR --lease S [--dev IFACE]
                                   [--listen ADDR:PORT --secret-file FILE]

(``--listen`` and ``--secret-file``: the agent takes and sends replicas, as ``cryo grid
agent``'s; ``GridHost(listen=, secret_file=)``.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

log = logging.getLogger("cryo.daemon")
DEFAULT_STORE = "/var/lib/cryo/grid"  # where the parts' images go (the agent's --store)
BACKOFF_MAX = 30.0
STEADY = 60.0  # an agent that ran this long starts again after 1 s


class GridHost:
    """Supervises the agent's child process (a thread of the daemon)."""

    def __init__(self, etcd: str, host: str, store: str, lease: int = 5,
                 output: IO[Any] | None = None, dev: str | None = None,
                 listen: str | None = None, secret_file: str | None = None) -> None:  # fmt: skip
        self.etcd, self.host, self.store, self.lease = etcd, host, os.path.abspath(store), lease
        self.dev = dev  # the interface service addresses go on (cryo grid agent --dev)
        self.listen, self.secret_file = listen, secret_file  # replicas (agent --listen)
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="cryod-grid", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        p = self.proc
        return {"etcd": self.etcd, "host": self.host, "store": self.store,
                "agent_pid": p.pid if p is not None and p.poll() is None else None,
                "starts": self.starts}  # fmt: skip

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "cryo.daemon.gridhost", "--etcd", self.etcd, "--host",
                self.host, "--store", self.store, "--lease", str(self.lease),
                "--parent", str(os.getpid()), *(["--dev", self.dev] if self.dev else []),
                *(["--listen", self.listen] if self.listen else []),
                *(["--secret-file", self.secret_file] if self.secret_file else [])]
        out = self.output if self.output is not None else sys.stderr
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                close_fds=True)  # fmt: skip

    def _supervise(self) -> None:
        from cryo.daemon.server import event

        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    self.proc = self._spawn()
                except OSError as err:
                    log.warning("grid agent", extra={"fields": {"message": str(err)}})
                    self.proc = None
            began = time.monotonic()
            if self.proc is not None:
                self.starts += 1
                event("grid agent started", pid=self.proc.pid, host=self.host,
                      etcd=self.etcd)  # fmt: skip
                code = self.proc.wait()
                if self._stop.is_set():
                    break
                log.warning("grid agent ended", extra={"fields": {
                    "pid": self.proc.pid, "code": code, "host": self.host}})  # fmt: skip
            if time.monotonic() - began > STEADY:
                backoff = 1.0
            self._stop.wait(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the agent (it revokes its lease) and wait for it; SIGKILL after
        ``timeout``."""
        with self._lock:
            self._stop.set()
            p = self.proc
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self._thread.join(timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """The agent's process: dies with the daemon's thread that started it (SIGTERM),
    stops (lease revoked) on SIGTERM."""
    from cryo.errors import CryoError
    from cryo.grid.agent import Agent
    from cryo.grid.etcd import Etcd
    from cryo.linux import libc
    from cryo.linux.consts import PR

    ap = argparse.ArgumentParser(prog="cryod-grid")
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--lease", type=int, default=5)
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--dev")
    ap.add_argument("--listen")
    ap.add_argument("--secret-file")
    args = ap.parse_args(argv)
    stopping = threading.Event()
    agent: Agent | None = None

    def stop(_sig: int, _frame: object) -> None:
        stopping.set()
        if agent is not None:
            agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    libc.prctl(PR.SET_PDEATHSIG, signal.SIGTERM)
    if args.parent and os.getppid() != args.parent:
        return 1  # the daemon died before the signal was armed
    from cryo.daemon.server import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    say = logging.getLogger("cryo.daemon.grid")
    try:
        os.makedirs(args.store, mode=0o700, exist_ok=True)
        from cryo.migrate.auth import read_secret

        secret = read_secret(args.secret_file) if args.secret_file else None
        agent = Agent(Etcd(args.etcd), args.host, args.store, lease=args.lease, dev=args.dev,
                      listen=args.listen, secret=secret)  # fmt: skip
    except CryoError as err:
        say.warning("grid agent cannot start", extra={"fields": {
            "host": args.host, "message": str(err)}})  # fmt: skip
        return 1
    say.info("grid agent registered", extra={"fields": {
        "host": args.host, "pid": os.getpid(), "etcd": args.etcd}})  # fmt: skip
    try:
        if not stopping.is_set():
            agent.serve()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
