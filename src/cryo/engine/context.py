"""What the resource drivers share during one dump or one restore of one process.

Drivers (engine/drivers.py) do not import each other: what one leaves for another, in a
later phase of the same process, goes here under a documented name.
"""

from __future__ import annotations

import os
import threading
from _queue import SimpleQueue
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee

T = TypeVar("T")


class Early(Generic[T]):
    """A read :func:`background` runs: :meth:`result` waits for it and gives what it
    returned, or raises what it raised (concurrent.futures.Future's, without its import:
    4-5 ms of a small program's checkpoint, docs/design.md "Start-up")."""

    __slots__ = ("_done", "_error", "_fn", "_value")

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn: Callable[[], T] | None = fn
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        fn, self._fn = self._fn, None
        try:
            self._value = fn() if fn is not None else None
        except BaseException as err:  # (handed to whoever asks for the result)
            self._error = err
        finally:
            self._done.set()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


_WORKERS = 4
_queue: SimpleQueue[Early[Any]] | None = None
_idle = 0  # threads of the pool done with their work, not yet handed more
_threads = 0
_POOL_LOCK = threading.Lock()


def _serve(q: SimpleQueue[Early[Any]]) -> None:
    global _idle
    while True:
        job = q.get()
        job._run()
        del job
        with _POOL_LOCK:
            _idle += 1


def background(fn: Callable[[], T]) -> Early[T]:
    """``fn`` run beside the freeze by a thread kept for such reads (the tracer scan,
    /proc/locks), made at the first one in this process: handing it work does not wait
    for a new thread to be scheduled, as Thread.start does (2.1-2.4 ms of the freeze
    each at load 3-4, 0.1-0.2 ms of CPU: bench/daemon_round.py --drivers; a daemon's
    checkpointer makes them once).  As ThreadPoolExecutor(4): a new thread while none
    is idle, up to four; daemon threads (each waits for work, holding nothing)."""
    global _queue, _idle, _threads
    job = Early(fn)
    with _POOL_LOCK:
        if _queue is None:
            _queue = SimpleQueue()
        q = _queue
        start = False
        if _idle:
            _idle -= 1
        elif _threads < _WORKERS:
            _threads += 1
            start = True
        q.put(job)
    if start:
        threading.Thread(target=_serve, args=(q,), name=f"cryo-early-{_threads}",
                         daemon=True).start()  # fmt: skip
    return job


def _forget_pool() -> None:
    """In a forked child: none of the pool's threads is there."""
    global _queue, _idle, _threads, _POOL_LOCK
    _queue, _idle, _threads, _POOL_LOCK = None, 0, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


class DumpContext:
    """What the drivers share about one process during a checkpoint.  (This and
    RestoreContext: plain classes, not dataclasses, which cost every command ~1 ms each
    to make at import: issue 16.)"""

    def __init__(self, pid: int, tracee: Tracee, inj: Injector,
                 options: dict[str, Any] | None = None, warnings: list[str] | None = None,
                 live: dict[str, Any] | None = None, shared: Any = None,
                 records: dict[bytes, Any] | None = None,
                 thread_records: list[dict[str, Any]] | None = None,
                 runs: list[tuple[int, int]] | None = None) -> None:  # fmt: skip
        self.pid = pid
        self.tracee = tracee  # the thread group leader
        self.inj = inj  # injects into the leader
        self.options: dict[str, Any] = {} if options is None else options
        self.warnings: list[str] = [] if warnings is None else warnings
        # facts only the task itself can tell, gathered in the inject phase and used by
        # the same driver in a later phase ("brk", "task", "sigs", "timers", "tracking")
        self.live: dict[str, Any] = {} if live is None else live
        self.shared = shared  # what several processes share, collected once
        # this process's records by kind, and its THRD records (leader first)
        self.records: dict[bytes, Any] = {} if records is None else records
        self.thread_records: list[dict[str, Any]] = [] if thread_records is None \
            else thread_records  # fmt: skip
        # the runs of its memory [address, length] whose pages go into the image
        self.runs: list[tuple[int, int]] = [] if runs is None else runs


class RestoreContext:
    """What the drivers share about one process during a restart."""

    def __init__(self, pid: int, old_pid: int, tracee: Tracee, inj: Injector, image: Any,
                 options: dict[str, Any] | None = None, warnings: list[str] | None = None,
                 threads: dict[int, Tracee] | None = None,
                 tid_map: dict[int, int] | None = None, pid_map: dict[int, int] | None = None,
                 shared: Any = None, records: dict[bytes, Any] | None = None,
                 thread_records: list[dict[str, Any]] | None = None,
                 proc: dict[str, Any] | None = None, pidns: bool = False,
                 injectors: dict[int, Injector] | None = None, area: int = 0,
                 area_size: int = 0, progress: Callable[[int], None] | None = None,
                 live: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.pid = pid  # pid of the restored process
        self.old_pid = old_pid  # pid in the image
        self.tracee = tracee  # its leader thread
        self.inj = inj  # injects into the leader
        self.image = image  # cryo.image.reader.ImageSource
        self.options: dict[str, Any] = {} if options is None else options
        self.warnings: list[str] = [] if warnings is None else warnings
        # threads of this process by their new tid, and old tid -> new tid
        self.threads: dict[int, Tracee] = {} if threads is None else threads
        self.tid_map: dict[int, int] = {} if tid_map is None else tid_map
        # old pid -> new pid for every process of the image
        self.pid_map: dict[int, int] = {} if pid_map is None else pid_map
        self.shared = shared  # what several processes share, made once
        # the process's records by kind, its THRD records (leader first), its TREE entry
        self.records: dict[bytes, Any] = {} if records is None else records
        self.thread_records: list[dict[str, Any]] = [] if thread_records is None \
            else thread_records  # fmt: skip
        self.proc: dict[str, Any] = {} if proc is None else proc
        self.pidns = pidns  # restored into a new pid namespace
        # new tid -> injector of that thread; the restorer area every process has
        self.injectors: dict[int, Injector] = {} if injectors is None else injectors
        self.area = area
        self.area_size = area_size
        # called with the number of bytes of pages written, as they are
        self.progress = progress
        # what a stage leaves for a later stage of the same driver ("fixup", "written")
        self.live: dict[str, Any] = {} if live is None else live

    def thread_injector(self, trec: dict[str, Any]) -> Injector:
        return self.injectors[self.tid_map[trec["tid"]]]
