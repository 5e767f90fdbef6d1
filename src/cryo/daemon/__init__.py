"""cryod, the system checkpointer (issue 14): jobs checkpointed periodically into a
store, with retention, restarted after a crash or a reboot, for root and for users who
manage their own processes through the socket.

- :mod:`cryo.daemon.protocol`: every message, the framing (docs/protocol.md, "Daemon");
- :mod:`cryo.daemon.client`: :class:`Client`, the same calls from Python;
- :mod:`cryo.daemon.state`: the SQLite state (jobs, versions, attempts);
- :mod:`cryo.daemon.server`: the socket, authorization (SO_PEERCRED), the operations;
- :mod:`cryo.daemon.scheduler`: periodic checkpoints, the watch over processes;
- :mod:`cryo.daemon.metrics`: the Prometheus text endpoint.
"""

from cryo.daemon.client import Client

__all__ = ["Client"]
