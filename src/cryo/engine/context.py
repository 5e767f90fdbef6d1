"""What the resource modules share during one dump or one restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee


@dataclass
class DumpContext:
    pid: int
    tracee: Tracee
    inj: Injector
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # raw records of files deleted while open: (record payload bytes)
    blobs: list[bytes] = field(default_factory=list)
    # facts only the task itself can tell, gathered by injected calls (e.g. "brk")
    live: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreContext:
    pid: int  # pid of the restored process
    old_pid: int  # pid in the image
    tracee: Tracee
    inj: Injector
    image: Any  # cryo.image.reader.Image
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # fds in the new process holding the caller's stdio for --shell-job: {0: fd, 1: fd, 2: fd}
    stdio: dict[int, int] = field(default_factory=dict)
