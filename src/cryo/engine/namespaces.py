"""Namespaces: a process is saved as part of the namespaces cryo itself runs in, and a
restart makes it again in the restarting cryo's.  So a process in a UTS, IPC, network,
cgroup or user namespace other than the checkpointing cryo's is refused (exit 9,
naming the namespace): restored, it would find the host's hostname instead of its own
(seen here: a process that unshared its UTS namespace and set its hostname came back,
exit 0, with the host's), other IPC objects and interfaces, or other privileges.  A
time namespace is engine/clocks.py's: its clocks are saved as the process reads them,
and the restart gives it a namespace of its own where cryo's would be behind; only
processes of one checkpoint in different time namespaces, or a namespace made for a
process's children to come (unshare(CLONE_NEWTIME)), are refused.  Run cryo inside
the others instead (`nsenter -t PID -a cryo ...`, or `ip netns exec NAME cryo ...`), as
the daemon and `cryo receive` are for their hosts.

Pid namespaces are the tree's business (a `cryo run --pid-ns` job is made again in a
new one).  A mount namespace other than cryo's is compared by what it shows, not by
its identity: `ip netns exec` gives each command a mount namespace of its own, with the
same mounts.  One whose mounts differ from cryo's (a service's private /tmp, a tmpfs
of its own) is refused: restored in cryo's, the process would open the host's files
of the same names (seen: a process in a mount namespace with a tmpfs of its own came
back, exit 0, reading the host's file where its own had been).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from cryo import procfs
from cryo.errors import Unsupported

KINDS = ("user", "uts", "ipc", "net", "cgroup")


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


def _mounts(pid: int | str) -> Counter[tuple[str, ...]]:
    """The mounts ``pid`` sees, each as (device, root, mount point, options, type,
    source, superblock options): /proc/PID/mountinfo without the mount ids and the
    propagation fields, which differ between copies of one table."""
    out: Counter[tuple[str, ...]] = Counter()
    for line in procfs.read(pid, "mountinfo").decode(errors="surrogateescape").splitlines():
        f = line.split(" ")
        try:
            sep = f.index("-", 6)
        except ValueError:
            continue
        out[(f[2], f[3], f[4], f[5], *f[sep + 1 : sep + 4])] += 1
    return out


def check_mounts(pid: int) -> None:
    """Refuse ``pid`` if it is in a mount namespace that shows other mounts than cryo's."""
    if same(pid, "mnt"):
        return
    theirs, mine = _mounts(pid), _mounts("self")
    if theirs == mine:
        return
    only = sorted(theirs - mine) or sorted(mine - theirs)
    where = "its own" if theirs - mine else "cryo's alone"
    dev, _root, point, _opts, fstype, source = only[0][:6]
    raise Unsupported(f"process {pid} is in a mount namespace whose mounts differ from"
                      f" cryo's ({point}: {fstype} {source}, device {dev}, is {where}): it"
                      f" would be restored in cryo's and open other files; run cryo inside"
                      f" it (nsenter -t {pid} -m ...)", pid=pid,
                      resource="mount namespace")  # fmt: skip


def check(ctx: Any) -> None:
    """Driver hook (collect, per process): refuse a process in a namespace of another
    kind than pid that is not cryo's own (a mount namespace: one that shows other
    mounts)."""
    check_mounts(ctx.pid)
    check_time(ctx)
    for kind in KINDS:
        if not same(ctx.pid, kind):
            link = os.readlink(f"/proc/{ctx.pid}/ns/{kind}")
            raise Unsupported(f"process {ctx.pid} is in a {kind} namespace ({link}) other"
                              f" than cryo's: it would be restored in cryo's; run cryo"
                              f" inside it (nsenter -t {ctx.pid} ...)", pid=ctx.pid,
                              resource=f"{kind} namespace")  # fmt: skip


def check_time(ctx: Any) -> None:
    """Refuse a process whose time namespace is not the first checked process's (one set
    of clocks per image: HEAD["clocks"]), or whose namespace for its children is
    another (made by unshare(CLONE_NEWTIME): its children to come would get offsets
    that the restart does not know)."""
    pid = ctx.pid
    mine, kids = _ino(f"/proc/{pid}/ns/time"), _ino(f"/proc/{pid}/ns/time_for_children")
    if mine is None:
        return  # (a kernel without time namespaces)
    if kids != mine:
        raise Unsupported(f"process {pid} made a time namespace for its children to come"
                          " (unshare(CLONE_NEWTIME)): its offsets would be lost", pid=pid,
                          resource="time namespace")  # fmt: skip
    first = ctx.shared.early.setdefault("time namespace", (pid, mine))
    if first[1] != mine:
        raise Unsupported(f"process {pid} is in another time namespace than process"
                          f" {first[0]} ({os.readlink(f'/proc/{pid}/ns/time')}): an image"
                          " has one set of clocks", pid=pid,
                          resource="time namespace")  # fmt: skip
