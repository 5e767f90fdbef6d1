"""Special files an fd may hold: namespace files (/proc/PID/ns/*), O_PATH fds on
symbolic links, and /proc files of processes.

A namespace fd (its link reads ``net:[4026531833]``) is saved by its type and inode and
reopened at restart from a process that is in that very namespace (cryo itself first);
a namespace that no longer exists fails the restart with its name.  /proc files of a
process of the checkpoint (``/proc/PID/status``, ``/proc/PID/maps``, ...) would be
reopened before that process exists, on another process: refused at checkpoint, by
name.  /proc files of other processes are reopened by name, as any file.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from cryo.errors import CryoError, Unsupported

_NS = re.compile(r"^(cgroup|ipc|mnt|net|pid|time|user|uts):\[(\d+)\]$")
_PROC = re.compile(r"^/proc/(\d+)(?:/|$)")


def is_ns(target: str) -> bool:
    return _NS.match(target) is not None


def describe_ns(target: str) -> dict[str, Any]:
    m = _NS.match(target)
    assert m is not None
    return {"ns": m.group(1), "nsino": int(m.group(2)), "path": f"/proc/self/ns/{m.group(1)}"}


def find_ns(d: dict[str, Any]) -> str:
    """A path that opens the namespace of ``d`` (cryo's own, else some process's)."""
    kind, ino = d["ns"], d["nsino"]
    names = [f"/proc/self/ns/{kind}"]
    if kind in ("pid", "time"):
        names.append(f"/proc/self/ns/{kind}_for_children")
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(name).st_ino == ino:
                return name
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        name = f"/proc/{pid}/ns/{kind}"
        with contextlib.suppress(OSError):
            if os.stat(name).st_ino == ino:
                return name
    raise CryoError(f"fd {d['fd']} of process {d['pid']}: the namespace {kind}:[{ino}] it"
                    " held no longer exists", pid=d["pid"], resource=f"fd {d['fd']}")


def check_proc(descs: list[dict[str, Any]], pids: set[int]) -> None:
    """Refuse /proc files of the checkpoint's own processes (and their threads)."""
    for d in descs:
        m = _PROC.match(str(d.get("path", "")))
        if m is None:
            continue
        pid = int(m.group(1))
        if pid in pids or any(os.path.exists(f"/proc/{p}/task/{pid}") for p in pids):
            raise Unsupported(f"fd {d['fd']}: {d['path']} is a /proc file of process {pid},"
                              " which is part of the checkpoint: not supported", pid=d["pid"],
                              resource=f"fd {d['fd']}", path=d["path"])  # fmt: skip
