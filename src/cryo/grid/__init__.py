"""The grid checkpointer (seed 003) on etcd: applications whose parts run on several
hosts, checkpointed together in one consistent global version (two phases, decided by
one etcd transaction) and restarted from it when a host fails.

    agent       one per host (cryo grid agent): starts, checkpoints and restarts parts
    coordinator run, checkpoint, restart, status, watch: what `cryo grid` calls
    keys        the etcd keys and values (docs/protocol.md, "Grid")
    etcd        the client (etcd3gw, over etcd's HTTP/JSON gateway)
    Grid        the same from Python (below)
"""

from __future__ import annotations

from typing import Any


class Grid:
    """The grid from Python, as ``cryo grid`` does it, on the etcd at ``url``
    (coordinator's calls on one client; each a thin call: see there)::

        g = Grid("http://127.0.0.1:2379")
        g.run("sim", ["h0", "h1", "h2"], ["./sim", "--part", "{part}"], keep_last=3)
        v = g.checkpoint("sim")             # the global version committed
        g.restart("sim", version=v)         # every part from it (a kept one)
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        from cryo.grid.etcd import Etcd

        self.etcd = Etcd(url, timeout=timeout)

    @staticmethod
    def _keep(last: int | None, every: int | None) -> dict[str, Any] | None:
        return None if last is None and every is None else {"last": last or 1, "every": every}

    def run(self, app: str, hosts: list[str], cmd: list[str], store: str = "", *,
            services: list[str] | None = None, replicas: int = 0,
            keep_last: int | None = None, keep_every: int | None = None,
            timeout: float = 30.0) -> dict[int, dict[str, Any]]:  # fmt: skip
        """One part of ``cmd`` per host; the parts once every one runs."""
        from cryo.grid import coordinator

        return coordinator.run(self.etcd, app, hosts, cmd, store, timeout, services, replicas,
                               keep=self._keep(keep_last, keep_every))  # fmt: skip

    def adopt(self, app: str, parts: list[tuple[str, int]], store: str = "", *,
              services: list[str] | None = None, replicas: int = 0,
              keep_last: int | None = None, keep_every: int | None = None,
              timeout: float = 30.0) -> dict[int, dict[str, Any]]:  # fmt: skip
        """Processes that run already, ``(host, pid)`` each, taken as the parts."""
        from cryo.grid import coordinator

        return coordinator.adopt(self.etcd, app, parts, store, services, replicas, timeout,
                                 keep=self._keep(keep_last, keep_every))  # fmt: skip

    def checkpoint(self, app: str, timeout: float = 60.0) -> int:
        """One consistent global checkpoint: its version (RoundFailed: aborted)."""
        from cryo.grid import coordinator

        return coordinator.checkpoint(self.etcd, app, timeout=timeout)

    def status(self, app: str) -> dict[str, Any]:
        from cryo.grid import coordinator

        return coordinator.status(self.etcd, app)

    def restart(self, app: str, version: int | None = None,
                timeout: float = 60.0) -> dict[int, dict[str, Any]]:  # fmt: skip
        """Every part from ``version`` (a kept one; default the last committed)."""
        from cryo.grid import coordinator

        return coordinator.restart(self.etcd, app, version, timeout)

    def keep(self, app: str, last: int = 1, every: int | None = None) -> None:
        """The versions ``app`` keeps from its next commit on."""
        from cryo.grid import coordinator

        coordinator.set_retention(self.etcd, app, {"last": last, "every": every})

    def watch(self, app: str, every: float | None, stop: Any = None) -> None:
        """Periodic global checkpoints and restarts after host failures until ``stop``
        (a threading.Event) is set."""
        from cryo.grid import coordinator

        coordinator.watch(self.etcd, app, every, stop)
