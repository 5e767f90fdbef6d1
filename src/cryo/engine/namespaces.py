"""Namespaces: a process is saved as part of the namespaces cryo itself runs in, and a
restart makes it again in the restarting cryo's.  So a process in a UTS, IPC, network,
cgroup, time or user namespace other than the checkpointing cryo's is refused (exit 9,
naming the namespace): restored, it would find the host's hostname instead of its own
(seen here: a process that unshared its UTS namespace and set its hostname came back,
exit 0, with the host's), other IPC objects and interfaces, other clock offsets, or
other privileges.  Run cryo inside them instead (`nsenter -t PID -a cryo ...`, or
`ip netns exec NAME cryo ...`), as the daemon and `cryo receive` are for their hosts.

Pid namespaces are the tree's business (a `cryo run --pid-ns` job is made again in a
new one); mount namespaces are not compared: every path a restart needs is checked
before anything is made, and `ip netns exec` gives each command a mount namespace of
its own that differs only in /sys.
"""

from __future__ import annotations

import os
from typing import Any

from cryo.errors import Unsupported

KINDS = ("user", "uts", "ipc", "net", "cgroup", "time")


def _ino(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:  # (a kernel without that kind)
        return None
    return st.st_dev, st.st_ino


def same(pid: int, kind: str) -> bool:
    """Is ``pid`` in cryo's own namespace of ``kind`` (or has the kernel none of it)?"""
    mine, theirs = _ino(f"/proc/self/ns/{kind}"), _ino(f"/proc/{pid}/ns/{kind}")
    return mine is None or theirs is None or mine == theirs


def check(ctx: Any) -> None:
    """Driver hook (collect, per process): refuse a process in a namespace of another
    kind than pid and mount that is not cryo's own."""
    for kind in KINDS:
        if not same(ctx.pid, kind):
            link = os.readlink(f"/proc/{ctx.pid}/ns/{kind}")
            raise Unsupported(f"process {ctx.pid} is in a {kind} namespace ({link}) other"
                              f" than cryo's: it would be restored in cryo's; run cryo"
                              f" inside it (nsenter -t {ctx.pid} ...)", pid=ctx.pid,
                              resource=f"{kind} namespace")  # fmt: skip
