"""``checkpoint()``: a whole checkpoint session (engine/session.py) in one call.

The phases, their order and the drivers that act in each are in engine/session.py and
engine/drivers.py; this module keeps the one-call form callers use.
"""

from __future__ import annotations

from collections.abc import Callable

from cryo.engine.session import CheckpointSession, Destination, DumpResult, memory_budget


def checkpoint(
    pid: int,
    dest: Destination,
    *,
    scope: str = "process",
    force: bool = False,
    compress: bool = False,
    shell_job: bool = False,
    save_files: bool = False,
    signal_after: int = 0,
    direct_io: bool = True,
    progress: Callable[[int, int], None] | None = None,
    freeze_timeout: float | None = None,
    worker: bool = True,
    net: dict[str, bool] | None = None,
) -> DumpResult:
    """Write the complete state of process ``pid`` (and, by ``scope``, its descendants,
    process group or session) into directory ``dest`` (or any Sink, such as a new
    version in a store, or a function that makes one: it is then made in the worker).

    The processes keep running unless ``signal_after`` is given, which is sent to each
    once the image is safely on disk.  On any failure they are left running as before,
    even if the caller is killed meanwhile: the work is done by a worker process that
    outlives it (``worker=False`` does it in this process).  ``direct_io`` writes page
    data with O_DIRECT (shorter freeze, no page cache used); without it the image stays
    cached for a quick restart.  ``freeze_timeout`` bounds how long the targets may stay
    frozen (by default a minute plus 15 s per GiB to copy).  ``net`` takes the socket
    options ``tcp_established``, ``tcp_close`` and ``ext_unix_sk`` (engine/inet.py).
    """
    session = CheckpointSession(pid, dest, worker=worker, scope=scope, force=force,
                                compress=compress, shell_job=shell_job, save_files=save_files,
                                signal_after=signal_after, direct_io=direct_io,
                                progress=progress, freeze_timeout=freeze_timeout,
                                net=net)  # fmt: skip
    return session.run()


__all__ = ["DumpResult", "checkpoint", "memory_budget"]
