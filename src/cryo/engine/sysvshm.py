"""System V shared memory attached to a process (seed 001).

A segment lives apart from the tasks that attach it: it is saved once per image, whole
(with cryo.ipc's shm format, as a side file ``sysvshm-<id>.bin``), and at restart the
process attaches to it again at the same address.  The segment is found by its key if
one with that key is alive (it outlived the process, or another restored process made
it already: "the first process sets up the segment, the others link to it"); otherwise
it is recreated from the image, with its old id when that id is free.  The shmid may
change: nothing in the process depends on it once attached.  A segment that was marked
for removal (IPC_RMID while attached: SHM_DEST, its key IPC_PRIVATE) is marked so again
once every process has attached it (:func:`mark_removed`), so that it goes with the
last detach as it would have, instead of outliving the restored processes.
"""

from __future__ import annotations

import logging
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError
from cryo.linux.consts import PAGE_SIZE, PROT, SYS

log = logging.getLogger(__name__)
SHM_RDONLY = 0o10000
SHM_EXEC = 0o100000
IPC_RMID = 0


def side_file(shmid: int) -> str:
    return f"sysvshm-{shmid}.bin"


def attached(vmas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in vmas if v["kind"] == "sysv-shm"]


def dump(ctx: DumpContext, vmas: list[dict[str, Any]], sink: Any) -> None:
    """Save every segment the process has attached into the image, once per image: a
    segment another process of the image attached too is in the sink already."""
    for shmid in sorted({v["shmid"] for v in attached(vmas)}):
        name = side_file(shmid)
        if sink.has_side(name):
            continue
        from cryo.ipc import shm  # only needed by processes using SysV shm

        try:
            with sink.side_file(name) as f:
                shm.save(shmid, f)
        except CryoError as err:
            raise CryoError(f"SysV shm segment {shmid} attached by {ctx.pid}: {err}",
                            pid=ctx.pid, resource=f"shm {shmid}") from err  # fmt: skip


def check(image: Any, vmas: list[dict[str, Any]]) -> dict[int, Any]:
    """Read and check every saved segment of ``image`` (before anything is created).

    The segment is read through the file the image opened and checked (its fd, kept open
    until the image is closed), so that ensure() loads those very bytes."""
    ids = sorted({v["shmid"] for v in attached(vmas)})
    if not ids:
        return {}
    from pathlib import Path

    from cryo.ipc import shm

    out = {}
    for shmid in ids:
        f = image.side_file(side_file(shmid))
        out[shmid] = shm.read(Path(f"/proc/self/fd/{f.fileno()}"))
    return out


def ensure(saved: dict[int, Any], created: list[int]) -> dict[int, int]:
    """Find or recreate each segment; returns {saved shmid: live shmid}.  Segments this
    call creates are appended to ``created`` (removed again if the restart fails)."""
    if not saved:
        return {}
    from cryo.ipc import live, shm

    segments = live("shm")
    out: dict[int, int] = {}
    for shmid, image in saved.items():
        key = image.perm.key
        same_key = [o for o in segments if key != 0 and o.key == key]
        same_id = [o for o in segments if o.id == shmid and o.key == key and o.size == image.size]
        if same_key:
            out[shmid] = same_key[0].id
        elif same_id:
            out[shmid] = shmid
        else:
            loaded = shm.load(image)
            created.append(loaded.id)
            out[shmid] = loaded.id
        log.debug("shm %d (key %#x) -> %d", shmid, key, out[shmid])
    return out


def attach(ctx: RestoreContext, vmas: list[dict[str, Any]], ids: dict[int, int]) -> None:
    """shmat each segment at its old address (once per attach), then set protections."""
    inj = ctx.inj
    done: set[int] = set()
    for v in attached(vmas):
        base = v["start"] - v["pgoff"] * PAGE_SIZE
        if base not in done:
            group = [w for w in attached(vmas)
                     if w["shmid"] == v["shmid"] and w["start"] - w["pgoff"] * PAGE_SIZE == base]
            flags = 0 if any(w["prot"] & PROT.WRITE for w in group) else SHM_RDONLY
            if any(w["prot"] & PROT.EXEC for w in group):
                flags |= SHM_EXEC
            got = inj(SYS.shmat, ids[v["shmid"]], base, flags, what=f" shmat {v['shmid']}")
            if got != base:
                raise CryoError(f"shm {v['shmid']} attached at {got:#x}, not {base:#x}")
            done.add(base)
        want = v["prot"]
        inj(SYS.mprotect, v["start"], v["end"] - v["start"], want)


def mark_removed(saved: dict[int, Any], ids: dict[int, int]) -> None:
    """Restart, every process built: IPC_RMID again for the segments that were marked
    for removal at the checkpoint (attached now, they go with the last detach)."""
    if not saved:  # (most images: cryo.linux.sysv not imported, 1 ms)
        return
    from cryo.linux import sysv

    for shmid, image in saved.items():
        if image.meta.get("dest") and shmid in ids:
            sysv.shmctl(ids[shmid], IPC_RMID)
            log.debug("shm %d (now %d) marked for removal again", shmid, ids[shmid])


def remove(created: list[int]) -> None:
    """Undo :func:`ensure` after a failed restart."""
    from cryo.linux import sysv

    for shmid in created:
        try:
            sysv.shmctl(shmid, IPC_RMID)
        except OSError as err:  # pragma: no cover (someone removed it already)
            log.warning("could not remove shm %d: %s", shmid, err)
