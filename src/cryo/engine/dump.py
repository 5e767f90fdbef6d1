"""The requester's API (seed 003, 6.4): ``checkpoint()``, a whole checkpoint session
(engine/session.py) in one call; ``start_checkpoint()``, the same without waiting
(``handle.poll(timeout)``, ``handle.result()``); ``prepare()``, a staged checkpoint for a
coordinated one: the callbacks run and the processes are frozen, then
``handle.write(dest)`` and ``handle.resume()``, or ``handle.abort()``.

The phases, their order and the drivers that act in each are in engine/session.py and
engine/drivers.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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
    no_callbacks: bool = False,
    nonblocking: bool = False,
    callback_timeout: float = 30.0,
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

    Applications that use cryo.app are asked first: their callbacks run (not with
    ``no_callbacks``), within ``callback_timeout`` seconds; a checkpoint asked while one
    is inside a critical section waits for its end, or with ``nonblocking`` fails at
    once (CheckpointRefused, as when a callback aborts it).
    """
    session = CheckpointSession(pid, dest, worker=worker, scope=scope, force=force,
                                compress=compress, shell_job=shell_job, save_files=save_files,
                                signal_after=signal_after, direct_io=direct_io,
                                progress=progress, freeze_timeout=freeze_timeout,
                                net=net, no_callbacks=no_callbacks, nonblocking=nonblocking,
                                callback_timeout=callback_timeout)  # fmt: skip
    return session.run()


class CheckpointHandle:
    """A checkpoint running in the background (``start_checkpoint``)."""

    def __init__(self, pid: int, dest: Destination, options: dict[str, Any]) -> None:
        self._done = threading.Event()
        self._result: DumpResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(pid, dest, options),
                                        name="cryo-checkpoint", daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self, pid: int, dest: Destination, options: dict[str, Any]) -> None:
        try:
            self._result = checkpoint(pid, dest, **options)
        except BaseException as err:  # handed to whoever asks for the result
            self._error = err
        finally:
            self._done.set()

    def poll(self, timeout: float | None = None) -> int:
        """As the seed's checkpoint_poll: positive once done, 0 if ``timeout`` seconds
        passed first (None: wait), negative if the checkpoint failed."""
        if not self._done.wait(timeout):
            return 0
        return -1 if self._error is not None else 1

    def result(self, timeout: float | None = None) -> DumpResult:
        """The checkpoint's result (waiting for it); raises its error if it failed."""
        self._done.wait(timeout)
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise TimeoutError("the checkpoint is still running")
        return self._result


def start_checkpoint(pid: int, dest: Destination, **options: Any) -> CheckpointHandle:
    """Start a checkpoint (the options of :func:`checkpoint`) and return at once."""
    return CheckpointHandle(pid, dest, options)


class StagedCheckpoint:
    """A coordinated checkpoint's handle (``prepare``): the callbacks have run and the
    processes are frozen (for at most ``freeze_timeout``); then :meth:`write` the image
    and :meth:`resume` them, or :meth:`abort`: they go on exactly as before."""

    def __init__(self, session: CheckpointSession) -> None:
        self._session = session
        self.result: DumpResult | None = None

    def write(self, dest: Destination) -> DumpResult:
        self._session.write(dest)
        self.result = self._session.commit()
        return self.result

    def resume(self) -> DumpResult:
        self.result = self._session.resume()
        return self.result

    def abort(self) -> None:
        self._session.abort()


def prepare(pid: int, *, hold: bool = True, **options: Any) -> StagedCheckpoint:
    """Seed 003's sys_checkpoint_prepare: run the applications' callbacks and freeze
    the processes (the options of :func:`checkpoint`, but for ``dest``).  With
    ``hold=False``, :meth:`StagedCheckpoint.write` lets them go as soon as their pages
    are in cryo's buffers (as a local checkpoint does), before the image is written;
    ``resume()`` or ``abort()`` still ends the checkpoint (an abort then only discards
    what the sink holds uncommitted).  ``release_gate`` (an fd, a pipe's read end)
    holds them, their pages read, until one byte comes there: ``b"g"`` lets them go,
    anything else fails the write (a coordinated checkpoint that writes each part at
    once and lets none go before every part is frozen: grid/agent.py)."""
    session = CheckpointSession(pid, None, hold=hold, **options)
    try:
        session.prepare()
        session.freeze()
        session.collect()
    except BaseException:
        session.close()
        raise
    return StagedCheckpoint(session)


__all__ = ["CheckpointHandle", "DumpResult", "StagedCheckpoint", "checkpoint",
           "memory_budget", "prepare", "start_checkpoint"]
