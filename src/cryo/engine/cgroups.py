"""Control groups: each process comes back in the cgroups it was in.

A restored process is forked by cryo (or by its restored parent) and so starts in
cryo's cgroups; restored so, a process of a cgroup with its own limits came back, exit
0, in cryo's (found by probing: /proc/PID/cgroup showed another path).  The checkpoint
records /proc/PID/cgroup (per hierarchy: cgroup v1 controllers, named ones, v2); the
restart moves each process, right after it is made and before its memory is filled (so
that its pages are charged there) and before its children are forked (they inherit
it), into each cgroup where that differs from the one it was born in: by writing its
pid to ``cgroup.procs`` of that cgroup under the hierarchy's mount in cryo's mount
namespace.  A cgroup that is gone is made again (mkdir: its limits are the parent's
defaults, as CRIU's ``--manage-cgroups=soft``) for an image of root's; for another
user's image the restart fails instead (cryo makes nothing the owner could not, and
a cgroup owner may not always move a process; docs/design.md, "Trust and privilege"),
as it does when a hierarchy of a cgroup to enter is not mounted here (processes
already in their cgroups need no mount: `ip netns exec` gives a /sys without them).
Threads are moved with their process (cgroup.procs); threads of one process in
different cgroups are refused at checkpoint.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from cryo.errors import CryoError, Unsupported

# at restart: old pid -> its lines; the owner (None: root), the mounts by hierarchy key
_want: dict[int, list[list[str]]] = {}
_state: dict[str, Any] = {}


def read(pid: int, tid: int | None = None) -> list[list[str]]:
    """[[hierarchy id, controllers, path], ...] as /proc/PID/cgroup lists them."""
    name = f"/proc/{pid}/task/{tid}/cgroup" if tid is not None else f"/proc/{pid}/cgroup"
    with open(name) as f:
        return [line.rstrip("\n").split(":", 2) for line in f if line.strip()]


def dump(ctx: Any) -> list[list[str]]:
    """The process's cgroups (the TASK record's ``cgroups``); refused: threads in
    different cgroups."""
    mine = read(ctx.pid)
    for tid in os.listdir(f"/proc/{ctx.pid}/task"):
        if int(tid) != ctx.pid and read(ctx.pid, int(tid)) != mine:
            raise Unsupported(f"process {ctx.pid}: thread {tid} is in other cgroups than its"
                              " process", pid=ctx.pid, resource="cgroups")  # fmt: skip
    return mine


def _mounts() -> dict[str, str]:
    """Mount point of each hierarchy in cryo's mount namespace, by the key /proc/PID/cgroup
    uses ("" for v2, "memory", "cpu,cpuacct", "name=systemd", ...)."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, rest = pre.split(), post.split()
            if len(rest) < 3 or len(fields) < 5 or fields[3] != "/":
                continue  # (a bind mount of a sub-cgroup says nothing of the root)
            if rest[0] == "cgroup2":
                out.setdefault("", fields[4])
            elif rest[0] == "cgroup":
                opts = rest[2].split(",")
                keys = [o for o in opts if o not in ("rw", "ro", "nosuid", "nodev",
                                                     "noexec", "relatime", "clone_children",
                                                     "xattr", "noprefix", "cpuset_v2_mode")
                        and not o.startswith("release_agent=")]  # fmt: skip
                out.setdefault(",".join(sorted(keys)), fields[4])
    return out


def _key(controllers: str) -> str:
    return ",".join(sorted(controllers.split(","))) if controllers else ""


def prepare(rs: Any) -> None:
    """Restart, before any process exists: what each process needs, checked."""
    from cryo.image import records as R

    _want.clear()
    owner = rs.options.get("owner")
    # None for root's image, else the owner's (uid, gids); the mounts once one is needed
    _state["owner"] = None if owner is None or getattr(owner, "uid", 0) == 0 else \
        (owner.uid, set(getattr(owner, "gids", ())))  # fmt: skip
    _state["mounts"] = None
    for old, recs in rs.plan.procs.items():
        lines = recs[R.TASK].get("cgroups")
        if not lines:
            continue
        _want[old] = lines
    rs.on_exit(_want.clear)


def _owner_may_enter(where: str, owner: tuple[int, set[int]]) -> bool:
    """May the owner write the cgroup's cgroup.procs (a delegated cgroup)?"""
    st = os.stat(os.path.join(where, "cgroup.procs"))
    uid, gids = owner
    return bool((st.st_uid == uid and st.st_mode & 0o200) or (st.st_gid in gids and
                st.st_mode & 0o020) or st.st_mode & 0o002)  # fmt: skip


def born(inj: Any, old_pid: int) -> None:
    """A process just made (its children not yet): into its cgroups."""
    lines = _want.get(old_pid)
    if not lines:
        return
    pid = inj.t.pid
    now = {_key(c): p for _i, c, p in read(pid)}
    for _id, ctrl, path in lines:
        key = _key(ctrl)
        if now.get(key) == path:
            continue
        if _state["mounts"] is None:
            _state["mounts"] = _mounts()
        base = _state["mounts"].get(key)
        if base is None:  # (`ip netns exec`, say, mounts a /sys of its own, without them)
            raise CryoError(f"process {old_pid} was in cgroup {path} ({ctrl or 'v2'}), of a"
                            " hierarchy not mounted here")  # fmt: skip
        where = os.path.join(base, path.lstrip("/"))
        owner = _state["owner"]
        if not os.path.isdir(where):
            if owner is not None:
                raise CryoError(f"process {old_pid}: cgroup {path} ({ctrl or 'v2'}) does"
                                " not exist here")  # fmt: skip
            os.makedirs(where, exist_ok=True)
        elif owner is not None and not _owner_may_enter(where, owner):
            raise CryoError(f"process {old_pid}: the image's owner may not move a process"
                            f" into cgroup {path} ({ctrl or 'v2'})")  # fmt: skip
        try:
            with open(os.path.join(where, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError as err:
            raise CryoError(f"process {old_pid}: cannot enter cgroup {path}"
                            f" ({ctrl or 'v2'}): {os.strerror(err.errno or errno.EIO)}"
                            ) from err  # fmt: skip
