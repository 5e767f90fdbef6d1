"""Semaphore sets: saved with GETALL (one atomic read of every value), loaded with SETVAL.

File ``sem<id>_v<version>.bin``, magic ``CRYOSEM\\0``::

    META  {format, kind: "sem", id, key, uid, gid, cuid, cgid, mode, saved_at, kernel,
           nsems, otime, ctime, left_out}
    SEMS  {values: [semval...], pids: [sempid...], ncnt: [semncnt...], zcnt: [semzcnt...]}

``sempid`` (the last process to change a semaphore) is set by the kernel to whoever calls
SETVAL; the load sets each value from a short-lived child that has the saved pid (clone3
with set_tid) when that pid is free in this pid namespace, and from itself otherwise.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryo.errors import CryoError, ImageCorrupt
from cryo.image.format import RecordWriter, read_file
from cryo.ipc.common import (
    Image,
    Loaded,
    Ops,
    Perm,
    check_header,
    clear_the_way,
    create_with_id,
    header,
    meta_int,
    semmsl,
    translate,
)
from cryo.ipc.kinds import Kind
from cryo.linux import sysv
from cryo.linux.libc import clone3

log = logging.getLogger(__name__)

KIND = Kind.SEM
MAGIC = b"CRYOSEM\x00"
META = b"META"
SEMS = b"SEMS"

LEFT_OUT = [
    "processes waiting on the set (sempending): their count is kept below, not the waits",
    "SEM_UNDO adjustments of processes (semundo): the kernel offers no way to read them",
    "sem_otime and sem_ctime: the load sets its own",
]


def _stat_any(index: int) -> int:
    return sysv.semctl(index, 0, sysv.SEM.STAT_ANY, sysv.semid64_ds())


def _rmid(ipc_id: int) -> None:
    sysv.semctl(ipc_id, 0, sysv.IPC_CMD.RMID)


OPS = Ops(KIND, _stat_any, lambda key: sysv.semget(key, 0, 0), _rmid)


# ---------------------------------------------------------------------------------------------
# save


def save(ipc_id: int, f: IO[bytes]) -> dict[str, Any]:
    """Write the state of set ``ipc_id`` to ``f``; return its META."""
    try:
        ds = sysv.sem_stat(ipc_id)
        n = int(ds.sem_nsems)
        values = sysv.sem_getall(ipc_id, n)
        pids = [sysv.semctl(ipc_id, i, sysv.SEM.GETPID) for i in range(n)]
        ncnt = [sysv.semctl(ipc_id, i, sysv.SEM.GETNCNT) for i in range(n)]
        zcnt = [sysv.semctl(ipc_id, i, sysv.SEM.GETZCNT) for i in range(n)]
    except OSError as err:
        raise translate(err, KIND, ipc_id) from err
    left_out = list(LEFT_OUT)
    if any(ncnt) or any(zcnt):
        left_out.append(f"at save time {sum(ncnt)} waits for an increase and {sum(zcnt)}"
                        " waits for zero were pending")  # fmt: skip
    meta = header(KIND, ipc_id, Perm.from_kernel(ds.sem_perm), nsems=n,
                  otime=int(ds.sem_otime), ctime=int(ds.sem_ctime), left_out=left_out)  # fmt: skip
    w = RecordWriter(f, MAGIC)
    w.write(META, meta)
    w.write(SEMS, {"values": values, "pids": pids, "ncnt": ncnt, "zcnt": zcnt})
    w.close()
    return meta


# ---------------------------------------------------------------------------------------------
# read and check


@dataclass
class SemImage(Image):
    values: list[int]
    pids: list[int]


def _int_list(p: dict[str, Any], key: str, n: int, hi: int, name: str) -> list[int]:
    v = p.get(key)
    if (
        not isinstance(v, list)
        or len(v) != n
        or not all(isinstance(x, int) and 0 <= x <= hi for x in v)
    ):
        raise ImageCorrupt(f"image {name} is corrupt: bad {key}", path=name)
    return v


def read(path: Path) -> SemImage:
    name = str(path)
    records = read_file(path, MAGIC)
    if len(records) != 2 or records[0].kind != META or records[1].kind != SEMS:
        raise ImageCorrupt(f"image {name} is corrupt: expected META and SEMS records", path=name)
    meta = check_header(records[0].payload, KIND, name)
    perm = Perm.from_meta(meta, name)
    n = meta_int(meta, "nsems", name, lo=1, hi=1 << 16)
    p = records[1].payload
    if not isinstance(p, dict):
        raise ImageCorrupt(f"image {name} is corrupt: bad SEMS record", path=name)
    values = _int_list(p, "values", n, sysv.SEMVMX, name)
    pids = _int_list(p, "pids", n, (1 << 31) - 1, name)
    return SemImage(KIND, path, meta, perm, values, pids)


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    return {"semaphores": meta.get("nsems")}


# ---------------------------------------------------------------------------------------------
# load


def check_fits(image: SemImage) -> None:
    limit = semmsl()
    if len(image.values) > limit:
        raise CryoError(
            f"{image.path}: {len(image.values)} semaphores, more than kernel.sem's"
            f" semmsl={limit} in this IPC namespace",
            resource=f"sem {image.id}",
        )


def load(image: SemImage, *, replace: bool = False) -> Loaded:
    check_fits(image)
    want, n = image.id, len(image.values)
    try:
        notes = clear_the_way(OPS, want, image.perm.key, replace=replace)
        new = create_with_id(OPS, want, image.perm, lambda key, fl: sysv.semget(key, n, fl))
    except OSError as err:
        raise translate(err, KIND, want) from err
    try:
        notes += _set_values(new, image.values, image.pids)
        ds = sysv.sem_stat(new)
        image.perm.apply(ds.sem_perm)
        sysv.semctl(new, 0, sysv.IPC_CMD.SET, ds)
    except BaseException as err:
        _rmid(new)
        if isinstance(err, OSError):
            raise translate(err, KIND, new) from err
        raise
    return Loaded(KIND, new, image.perm.key, notes=notes)


def _set_values(semid: int, values: list[int], pids: list[int]) -> list[str]:
    """Set every value; each from a process with its saved sempid when that pid is free."""
    me = os.getpid()
    mine: list[tuple[int, int]] = []
    by_pid: dict[int, list[tuple[int, int]]] = {}
    for i, (v, pid) in enumerate(zip(values, pids, strict=True)):
        if pid == 0 and v == 0:
            continue  # never set: sempid stays 0
        if pid in (0, me):
            mine.append((i, v))
        else:
            by_pid.setdefault(pid, []).append((i, v))
    notes = []
    for pid, items in by_pid.items():
        why = _set_as(pid, semid, items)
        if why:
            mine.extend(items)
            notes.append(f"sempid {pid} of {len(items)} semaphore(s) not restored: {why}")
    for i, v in mine:
        sysv.semctl(semid, i, sysv.SEM.SETVAL, v)
    return notes


def _set_as(pid: int, semid: int, items: list[tuple[int, int]]) -> str | None:
    """SETVAL ``items`` from a child whose pid is ``pid``; why not, or None when done."""
    try:
        child = clone3(pid)
    except OSError as err:
        if err.errno == errno.EEXIST:
            return "the pid is in use"
        return os.strerror(err.errno or 0)
    if child == 0:  # pragma: no cover (the child; coverage does not follow it)
        code = 0
        try:
            for i, v in items:
                sysv.semctl(semid, i, sysv.SEM.SETVAL, v)
        except BaseException:  # the child only reports by its exit code
            code = 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "the child failed"
    return None
