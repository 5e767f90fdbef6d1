"""What the resource drivers share during one dump or one restore of one process.

Drivers (engine/drivers.py) do not import each other: what one leaves for another, in a
later phase of the same process, goes here under a documented name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

T = TypeVar("T")
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def background(fn: Callable[[], T]) -> Future[T]:
    """``fn`` run beside the freeze by a thread kept for such reads (the tracer scan,
    /proc/locks), made at the first one in this process: handing it work does not wait
    for a new thread to be scheduled, as Thread.start does (2.1-2.4 ms of the freeze
    each at load 3-4, 0.1-0.2 ms of CPU: bench/daemon_round.py --drivers; a daemon's
    checkpointer makes them once)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor  # (not a restart's: 1.5 ms)

            _POOL = ThreadPoolExecutor(4, thread_name_prefix="cryo-early")
        return _POOL.submit(fn)


def _forget_pool() -> None:
    """In a forked child: none of the pool's threads is there."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


@dataclass
class DumpContext:
    """What the drivers share about one process during a checkpoint."""

    pid: int
    tracee: Tracee  # the thread group leader
    inj: Injector  # injects into the leader
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # facts only the task itself can tell, gathered in the inject phase and used by the
    # same driver in a later phase ("brk", "task", "sigs", "timers", "tracking")
    live: dict[str, Any] = field(default_factory=dict)
    # what several processes share, collected once: the session's Shared
    shared: Any = None
    # this process's records by kind, and its THRD records (leader first)
    records: dict[bytes, Any] = field(default_factory=dict)
    thread_records: list[dict[str, Any]] = field(default_factory=list)
    # the runs of its memory [address, length] whose pages go into the image
    runs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class RestoreContext:
    """What the drivers share about one process during a restart."""

    pid: int  # pid of the restored process
    old_pid: int  # pid in the image
    tracee: Tracee  # its leader thread
    inj: Injector  # injects into the leader
    image: Any  # cryo.image.reader.ImageSource
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # threads of this process by their new tid, and old tid -> new tid
    threads: dict[int, Tracee] = field(default_factory=dict)
    tid_map: dict[int, int] = field(default_factory=dict)
    # old pid -> new pid for every process of the image
    pid_map: dict[int, int] = field(default_factory=dict)
    # what several processes share, made once: the restart session's Shared
    shared: Any = None
    # the process's records by kind, its THRD records (leader first), its TREE entry
    records: dict[bytes, Any] = field(default_factory=dict)
    thread_records: list[dict[str, Any]] = field(default_factory=list)
    proc: dict[str, Any] = field(default_factory=dict)
    pidns: bool = False  # restored into a new pid namespace
    # new tid -> injector of that thread; the restorer area every process has
    injectors: dict[int, Injector] = field(default_factory=dict)
    area: int = 0
    area_size: int = 0
    # called with the number of bytes of pages written, as they are
    progress: Callable[[int], None] | None = None
    # what a stage leaves for a later stage of the same driver ("fixup", "written")
    live: dict[str, Any] = field(default_factory=dict)

    def thread_injector(self, trec: dict[str, Any]) -> Injector:
        return self.injectors[self.tid_map[trec["tid"]]]
