"""What the three kinds share: the owner and mode of an object, the namespace's sysctls,
creating an object under a chosen id, conflicts, and the translation of OS errors.

Everything here acts on the IPC namespace of the calling process.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryo.errors import (
    CryoError,
    ImageCorrupt,
    ImageIncompatible,
    RestoreConflict,
    translate_oserror,
)
from cryo.ipc.kinds import Kind
from cryo.linux import sysv
from cryo.linux.consts import SYS
from cryo.linux.libc import syscall

log = logging.getLogger(__name__)

SYSCTL = Path("/proc/sys/kernel")
# The limits of an IPC namespace (ipc/ipc_sysctl.c), saved with a set by ``save --all``.
NS_SYSCTLS = ("msgmax", "msgmnb", "msgmni", "sem", "shmmax", "shmall", "shmmni",
              "shm_rmid_forced")  # fmt: skip
FORMAT = 1  # version of the META payloads; the framing has its own version (image/format.py)


LIMITS = {
    Kind.MSG: "kernel.msgmni",
    Kind.SEM: "kernel.sem: semmni, semmns",
    Kind.SHM: "kernel.shmmni, kernel.shmall",
}


class NoSuchObject(CryoError):
    """The IPC object asked for does not exist in this IPC namespace."""


def read_sysctl(name: str) -> str:
    return (SYSCTL / name).read_text().strip()


def write_sysctl(name: str, value: str | int) -> None:
    try:
        (SYSCTL / name).write_text(f"{value}\n")
    except OSError as err:
        raise translate_oserror(err, resource=f"sysctl kernel.{name}",
                                path=str(SYSCTL / name)) from err  # fmt: skip


def read_ns_sysctls() -> dict[str, str]:
    out = {}
    for name in NS_SYSCTLS:
        with suppress(OSError):
            out[name] = read_sysctl(name)
    return out


def ipcmni_shift() -> int:
    """ipc/util.h: ids are ``seq << shift | index``; the shift is 24 with ipcmni_extend."""
    try:
        cmdline = Path("/proc/cmdline").read_text().split()
    except OSError:
        return sysv.IPCMNI_SHIFT
    return 24 if "ipcmni_extend" in cmdline else sysv.IPCMNI_SHIFT


def id_index(ipc_id: int) -> int:
    return ipc_id & ((1 << ipcmni_shift()) - 1)


def semmsl() -> int:
    """The most semaphores in one set (first field of kernel.sem)."""
    return int(read_sysctl("sem").split()[0])


CAP_SYS_RESOURCE = 24  # include/uapi/linux/capability.h


def has_swap() -> bool:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()
    except OSError:
        return True  # unknown: assume there is
    return len(lines) > 1


# ---------------------------------------------------------------------------------------------
# owner and mode


@dataclass(frozen=True)
class Perm:
    """struct ipc64_perm as saved: the key, owner, creator and mode of an object."""

    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int

    @classmethod
    def from_kernel(cls, p: sysv.ipc64_perm) -> Perm:
        return cls(int(p.key), int(p.uid), int(p.gid), int(p.cuid), int(p.cgid), int(p.mode))

    def to_meta(self) -> dict[str, int]:
        return {"key": self.key, "uid": self.uid, "gid": self.gid, "cuid": self.cuid,
                "cgid": self.cgid, "mode": self.mode}  # fmt: skip

    @classmethod
    def from_meta(cls, meta: dict[str, Any], name: str) -> Perm:
        vals = [meta_int(meta, k, name) for k in ("key", "uid", "gid", "cuid", "cgid", "mode")]
        if not -(1 << 31) <= vals[0] < (1 << 31):
            raise ImageCorrupt(f"image {name} is corrupt: key {vals[0]}", path=name)
        return cls(*vals)

    def apply(self, p: sysv.ipc64_perm) -> None:
        """Fill what IPC_SET changes: uid, gid and the low 9 bits of the mode."""
        p.uid = self.uid
        p.gid = self.gid
        p.mode = self.mode & 0o777


def meta_int(meta: dict[str, Any], key: str, name: str, *, lo: int | None = None,
             hi: int | None = None) -> int:  # fmt: skip
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ImageCorrupt(f"image {name} is corrupt: field {key!r} is {v!r}", path=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ImageCorrupt(f"image {name} is corrupt: field {key!r} = {v} out of range",
                           path=name)  # fmt: skip
    return v


def check_header(meta: Any, kind: Kind, name: str) -> dict[str, Any]:
    """The first record of every file: a map with format, kind and the object's id."""
    if not isinstance(meta, dict):
        raise ImageCorrupt(f"image {name} is corrupt: no header", path=name)
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise ImageIncompatible(f"image {name} has IPC format {fmt}; this cryo reads {FORMAT}",
                                path=name)  # fmt: skip
    if meta.get("kind") != kind.value:
        raise ImageCorrupt(f"image {name} is corrupt: kind {meta.get('kind')!r}", path=name)
    meta_int(meta, "id", name, lo=0, hi=(1 << 31) - 1)
    return meta


# ---------------------------------------------------------------------------------------------
# errors


def translate(err: OSError, kind: Kind, ipc_id: int) -> CryoError:
    """Turn an OSError of a call on object ``ipc_id`` into cryo's tree."""
    what = f"{kind.value} {ipc_id}"
    if err.errno in (errno.EINVAL, errno.EIDRM, errno.ENOENT):
        return NoSuchObject(f"no {kind.noun} with id {ipc_id} in this IPC namespace"
                            f" ({os.strerror(err.errno or 0)})", resource=what)  # fmt: skip
    return translate_oserror(err, resource=what)


# ---------------------------------------------------------------------------------------------
# creating an object under a chosen id


@dataclass(frozen=True)
class Ops:
    """The calls that differ between kinds, for the generic steps below."""

    kind: Kind
    stat_any: Callable[[int], int]  # index -> id of the object there (OSError if none)
    get_key: Callable[[int], int]  # key -> id of the object with that key (OSError if none)
    rmid: Callable[[int], None]
    busy: Callable[[int], str | None] = lambda _id: None  # why removing it leaves the index taken

    @property
    def next_id_sysctl(self) -> str:
        return f"{self.kind.value}_next_id"

    def holder(self, index: int) -> int | None:
        try:
            return self.stat_any(index)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.EIDRM):
                return None
            raise

    def by_key(self, key: int) -> int | None:
        if key == sysv.IPC_PRIVATE:
            return None
        try:
            return self.get_key(key)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            if err.errno == errno.EACCES:  # it exists, we may not open it
                return -1
            raise


def clear_the_way(ops: Ops, want_id: int, key: int, *, replace: bool) -> list[str]:
    """Refuse (RestoreConflict) or, with ``replace``, remove what holds ``want_id`` or ``key``."""
    notes: list[str] = []
    noun = ops.kind.noun
    for _ in range(2):  # a second pass sees what the first removal could not free
        taken = ops.holder(id_index(want_id))
        keyed = ops.by_key(key)
        if taken is None and keyed is None:
            return notes
        if not replace:
            if taken is not None:
                same = "" if taken == want_id else f" (index of id {want_id} held by id {taken})"
                raise RestoreConflict(
                    f"{noun} id {want_id} is in use{same}; remove it or load with --replace",
                    resource=f"{ops.kind.value} {want_id}",
                )
            raise RestoreConflict(
                f"key {key:#x} is in use by {noun} {keyed}; remove it or load with --replace",
                resource=f"{ops.kind.value} {want_id}",
            )
        for victim in {v for v in (taken, keyed) if v is not None and v >= 0}:
            why = ops.busy(victim)
            ops.rmid(victim)
            notes.append(f"replaced {noun} {victim}")
            if why and victim == taken:
                raise RestoreConflict(
                    f"{noun} {victim} was marked for removal but its id stays taken: {why}",
                    resource=f"{ops.kind.value} {want_id}",
                )
        if keyed == -1:
            raise RestoreConflict(f"key {key:#x} is in use by a {noun} we may not open",
                                  resource=f"{ops.kind.value} {want_id}")  # fmt: skip
    raise RestoreConflict(f"{noun} id {want_id} or key {key:#x} stays in use",
                          resource=f"{ops.kind.value} {want_id}")  # fmt: skip


@contextmanager
def as_creator(uid: int, gid: int) -> Iterator[None]:
    """Run the block with effective ids uid/gid in this thread only, when we are root.

    The creator (cuid, cgid) of an object is whoever creates it; IPC_SET cannot change it.
    The raw setresuid/setresgid syscalls change the calling thread alone (glibc's wrappers
    would change every thread).  Capabilities come back with euid 0.
    """
    euid, egid = os.geteuid(), os.getegid()
    if euid != 0 or (uid, gid) == (euid, egid):
        yield
        return
    syscall(SYS.setresgid, -1, gid, -1)
    try:
        syscall(SYS.setresuid, -1, uid, -1)
        try:
            yield
        finally:
            syscall(SYS.setresuid, -1, euid, -1)
    finally:
        syscall(SYS.setresgid, -1, egid, -1)


def create_with_id(ops: Ops, want_id: int, perm: Perm, create: Callable[[int, int], int]) -> int:
    """Create an object that gets id ``want_id``: ``create(key, flags)`` is the *get call.

    It is created with mode 0 (only privileged processes may use it until the caller's
    final IPC_SET) by its saved creator when we may, through ``<kind>_next_id``.
    """
    flags = sysv.IPC.CREAT | sysv.IPC.EXCL
    write_sysctl(ops.next_id_sysctl, want_id)
    try:
        with as_creator(perm.cuid, perm.cgid):
            try:
                new = create(perm.key, flags)
            except OSError as err:
                what = f"{ops.kind.value} {want_id}"
                if err.errno == errno.EEXIST:
                    raise RestoreConflict(
                        f"key {perm.key:#x} was taken during the load", resource=what
                    ) from err
                if err.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise CryoError(
                        f"no room for another {ops.kind.noun} in this IPC namespace"
                        f" ({LIMITS[ops.kind]}): {err.strerror}",
                        resource=what,
                    ) from err
                raise translate_oserror(err, resource=what) from err
    finally:
        with suppress(CryoError):
            if read_sysctl(ops.next_id_sysctl) != "-1":
                write_sysctl(ops.next_id_sysctl, -1)
    if new != want_id:
        with suppress(OSError):
            ops.rmid(new)
        raise RestoreConflict(f"asked the kernel for {ops.kind.noun} id {want_id}, got {new}"
                              " (the index was taken during the load)",
                              resource=f"{ops.kind.value} {want_id}")  # fmt: skip
    log.debug("created %s %d (key %#x)", ops.kind.noun, new, perm.key & 0xFFFFFFFF)
    return new


# ---------------------------------------------------------------------------------------------
# what the kind modules hand back


@dataclass
class Image:
    """A saved version, read and fully checked: nothing in it is left to validate."""

    kind: Kind
    path: Path
    meta: dict[str, Any]
    perm: Perm

    @property
    def id(self) -> int:
        return int(self.meta["id"])


@dataclass
class Loaded:
    """An object recreated by a load."""

    kind: Kind
    id: int
    key: int
    version: int | None = None
    notes: list[str] = field(default_factory=list)


def header(kind: Kind, ipc_id: int, perm: Perm, **fields: Any) -> dict[str, Any]:
    """The META record every file starts with."""
    return {"format": FORMAT, "kind": kind.value, "id": ipc_id, **perm.to_meta(),
            "saved_at": time.time(), "kernel": os.uname().release, **fields}  # fmt: skip
