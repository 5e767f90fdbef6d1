"""What the resource modules share during one dump or one restore of one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee


@dataclass
class DumpContext:
    pid: int
    tracee: Tracee  # the thread group leader
    inj: Injector  # injects into the leader
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # facts only the task itself can tell, gathered by injected calls (e.g. "brk")
    live: dict[str, Any] = field(default_factory=dict)
    # what several processes share, collected once: see cryo.engine.shared
    shared: Any = None


@dataclass
class RestoreContext:
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
    # what several processes share, made once: see cryo.engine.shared
    shared: Any = None
