"""File locks: POSIX record locks (F_SETLK), OFD locks (F_OFD_SETLK), flock and leases,
held again after a restart by the same owner; and a file's signal owner (F_SETOWN,
F_SETSIG) and O_ASYNC.

Dump: each fd's /proc/PID/fdinfo "lock:" lines name the locks taken through its open
file description, by their owner: a POSIX lock belongs to the process (only its own are
shown), an OFD lock, a flock or a lease to the description (shown in every process that
has it).  They are kept on the description in FDSC: ``locks`` (OFD and flock, once per
description), ``posix`` (per process and fd), ``lease``.  /proc/locks is then read once:
a lock on a file a process of the checkpoint maps, that no fd of the checkpoint shows,
is held through the mapping only (the fd closed, the file mapped: JVMs do this); cryo
cannot give a restored mapping its lock back, so it refuses it by name.  A lease that is
being broken, a delegation, or a lock of a kind not listed here is refused too.

The owner of each description (F_GETOWN_EX) and its signal (F_GETSIG) are read by cryo
on a duplicate of the fd (pidfd_getfd); an owner outside the checkpoint is refused.

Restore: OFD locks are taken by cryo on its own fd of the description, before any
process exists (every process inherits the description and the lock with it), or, for
a description cryo makes late (a unix socket), once it has made it; so are flocks whose
taker is not in the image.  A flock is taken again by the process that took it (its fd
in place, the "files" stage): /proc/locks and fdinfo show the taker's pid.
POSIX locks and leases are taken by their process, with injected fcntl calls, once its
fds are in place (the "files" stage; a POSIX lock is the process's, a lease signals the
process that took it).  The signal owner is set by injected F_SETOWN_EX calls in the
"creds" stage, once the process has its own credentials again (the kernel checks the
setter's credentials when it sends the signal); F_SETSIG by cryo on its fd; O_ASYNC is
set again by the process itself so that the kernel's si_fd is its own fd number.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
from typing import Any, NamedTuple

from cryo.engine import ghosts
from cryo.engine.context import DumpContext, Early, RestoreContext, background
from cryo.engine.inject import Injector
from cryo.errors import CryoError, Unsupported
from cryo.image import records as R
from cryo.linux import libc
from cryo.linux.consts import SYS

log = logging.getLogger(__name__)

# <asm-generic/fcntl.h>
F_SETFL = 4
F_SETLK = 6
F_SETOWN = 8
F_GETOWN = 9
F_SETSIG = 10
F_GETSIG = 11
F_SETOWN_EX = 15
F_GETOWN_EX = 16
F_OFD_SETLK = 37
F_SETLEASE = 1024
F_GETLEASE = 1025
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
O_ASYNC = 0o20000
SEEK_SET = 0
MODES = {"READ": F_RDLCK, "WRITE": F_WRLCK}
FILE_KIND = b"FILE"


class Lock(NamedTuple):
    """One line of /proc/locks or of an fdinfo's "lock:" lines (fs/locks.c,
    lock_get_status): ``1: POSIX  ADVISORY  WRITE 1234 fe:00:2147599 5 14``.  (A named
    tuple, not a dataclass: made at every command's import, issue 16.)"""

    kind: str  # POSIX, OFDLCK, FLOCK, LEASE, DELEG, ...
    state: str  # ADVISORY, MANDATORY; for a lease ACTIVE, BREAKING, BREAKER
    mode: str  # READ, WRITE, UNLCK
    pid: int  # -1 for OFD locks
    dev: tuple[int, int]  # major, minor
    ino: int
    start: int
    end: int | None  # None: to the end of the file ("EOF")

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.mode, self.pid, self.dev, self.ino, self.start, self.end)

    def __str__(self) -> str:
        end = "EOF" if self.end is None else str(self.end)
        return f"{self.kind} {self.mode} {self.start}-{end}"


def parse_lock(line: str) -> Lock | None:
    """One lock line (without the "lock:" prefix of fdinfo); None for a blocked waiter
    ("->") or a line that is not a lock."""
    words = line.split()
    if words and words[0].endswith(":"):
        words = words[1:]
    if not words or words[0] == "->" or len(words) < 7:
        return None
    kind, state, mode, pid_s, where, start_s, end_s = words[:7]
    if not pid_s.lstrip("-").isdigit() or not start_s.isdigit():
        return None
    parts = where.split(":")
    if len(parts) != 3:
        return None
    return Lock(kind, state, mode, int(pid_s), (int(parts[0], 16), int(parts[1], 16)),
                int(parts[2]), int(start_s), None if end_s == "EOF" else int(end_s))  # fmt: skip


def parse_fdinfo_locks(data: bytes) -> list[Lock]:
    out = []
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("lock:"):
            lk = parse_lock(line[len("lock:"):])
            if lk is not None:
                out.append(lk)
    return out


def parse_proc_locks(data: bytes) -> list[Lock]:
    return [lk for line in data.decode(errors="replace").splitlines()
            if (lk := parse_lock(line)) is not None]  # fmt: skip


def _refuse(pid: int, fd: int | None, what: str) -> Unsupported:
    res = f"fd {fd}" if fd is not None else "file lock"
    return Unsupported(f"{res}: {what}" if fd is not None else what, pid=pid, resource=res)


# -- dump ------------------------------------------------------------------------------


def collect(ctx: DumpContext) -> None:
    """Driver hook, after files.collect: the locks and the signal owner of every fd."""
    rec = ctx.records[FILE_KIND]
    descs = ctx.shared.descs.descs
    seen: set[tuple[Any, ...]] = ctx.live.setdefault("locks_seen", set())
    owners_done: set[int] = set()
    try:  # one pidfd for all the process's fds (the owners are read on duplicates)
        pidfd: int | None = libc.pidfd_open(ctx.pid)
    except OSError:
        pidfd = None
    try:
        _collect(ctx, rec, descs, seen, owners_done, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _collect(ctx: DumpContext, rec: dict[str, Any], descs: list[dict[str, Any]],
             seen: set[tuple[Any, ...]], owners_done: set[int], pidfd: int | None) -> None:
    infos: dict[int, bytes] = ctx.live.pop("fdinfo", {})  # (as files.dump read them)
    for e in rec["fds"]:
        fd = e["fd"]
        d = descs[e["desc"]]
        if d["kind"] == "stdio":
            continue
        info = infos.get(fd)
        if info is None:
            try:
                with open(f"/proc/{ctx.pid}/fdinfo/{fd}", "rb") as f:
                    info = f.read()
            except FileNotFoundError as err:
                raise CryoError(f"process {ctx.pid} vanished", pid=ctx.pid) from err
        if b"lock:" in info:
            for lk in parse_fdinfo_locks(info):
                seen.add(lk.key)
                _keep(ctx.pid, fd, d, lk)
        if e["desc"] not in owners_done and "owner" not in d:
            owners_done.add(e["desc"])
            _owner(ctx.pid, fd, d, pidfd, _held_fd(d))


def _held_fd(d: dict[str, Any]) -> int | None:
    """cryo's own duplicate of a TCP connection the inet driver holds (engine/inet.py),
    or None: its owner is read on it instead of on a duplicate made for that."""
    if d["kind"] != "inet" or "tcp" not in d:
        return None
    from cryo.engine import inet  # (imported already: it described the connection)

    held = inet.HELD.get(d["ino"])
    return held.sock.fileno() if held is not None else None


def _keep(pid: int, fd: int, d: dict[str, Any], lk: Lock) -> None:
    path = d["path"]
    if lk.mode not in MODES:
        raise _refuse(pid, fd, f"{lk.kind} {lk.mode} lock on {path} is not supported")
    item = {"mode": lk.mode, "start": lk.start, "end": lk.end}
    if lk.kind == "POSIX":
        entry = {"pid": pid, "fd": fd, **item}
        have = d.setdefault("posix", [])
        if not any(x["pid"] == pid and (x["mode"], x["start"], x["end"]) == (
                lk.mode, lk.start, lk.end) for x in have):  # fmt: skip
            have.append(entry)
    elif lk.kind in ("OFDLCK", "FLOCK"):
        entry = {"kind": "ofd" if lk.kind == "OFDLCK" else "flock", **item}
        if lk.kind == "FLOCK":  # (the process that took it: /proc/locks and fdinfo show it)
            entry["pid"] = lk.pid
        have = d.setdefault("locks", [])
        if entry not in have:
            have.append(entry)
    elif lk.kind == "LEASE":
        if lk.state != "ACTIVE":
            raise _refuse(pid, fd, f"a lease on {path} is being broken ({lk.state}); it"
                          " cannot be restored in that state")  # fmt: skip
        d.setdefault("lease", {"mode": lk.mode, "pid": pid, "fd": fd})
    else:
        raise _refuse(pid, fd, f"{lk.kind} lock on {path} is not supported")


def _owner(pid: int, fd: int, d: dict[str, Any], pidfd: int | None,
           held: int | None = None) -> None:  # fmt: skip
    """The description's signal owner and signal, read on a duplicate of the fd (through
    ``pidfd``, the process's; None: it could not be opened, the process is gone), or on
    ``held``, cryo's duplicate of it already."""
    if held is not None:
        _read_owner(held, d)
        return
    if pidfd is None:
        return
    try:
        mine = libc.pidfd_getfd(pidfd, fd)
    except OSError:
        return  # some files cannot be duplicated: they have no owner worth keeping
    try:
        _read_owner(mine, d)
    finally:
        os.close(mine)


def _read_owner(mine: int, d: dict[str, Any]) -> None:
    try:
        raw = fcntl.fcntl(mine, F_GETOWN_EX, bytes(8))
        otype, opid = struct.unpack("ii", raw)
        sig = fcntl.fcntl(mine, F_GETSIG)
    except OSError:
        return
    if opid:
        d["owner"] = {"type": otype, "pid": opid, "nspid": _nspid(opid, otype)}
    if sig:
        d["sig"] = sig


def _nspid(pid: int, otype: int) -> int:
    """``pid`` as its own innermost pid namespace sees it."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:") and otype != F_OWNER_PGRP:
                return int(line.split()[-1])
            if line.startswith("NSpgid:") and otype == F_OWNER_PGRP:
                return int(line.split()[-1])
    return pid


def _maps(pid: int) -> dict[tuple[tuple[int, int], int], str]:
    """The files a process maps: (dev, ino) -> path."""
    out: dict[tuple[tuple[int, int], int], str] = {}
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[4] == "0":
                continue
            major, minor = parts[3].split(":")
            out[((int(major, 16), int(minor, 16)), int(parts[4]))] = parts[5].strip()
    return out


def read_table_early(ctx: DumpContext) -> None:
    """Driver hook (inject, every process frozen): /proc/locks read in a thread, for
    :func:`check_shared`.  Its seq_file takes fs/locks.c's file_rwsem for writing, which
    waits for an RCU grace period unless one just passed (10-25 ms here): that wait now
    goes on while the rest of the freeze does.  The processes are frozen, so the table
    cannot change for their locks before check_shared reads the result."""
    if "locks" in ctx.shared.early:
        return

    def read() -> bytes:
        with open("/proc/locks", "rb") as f:
            return f.read()

    ctx.shared.early["locks"] = background(read)


def _proc_locks(early: Early[bytes] | None) -> bytes:
    if early is not None:
        with contextlib.suppress(Exception):
            return early.result()
    with open("/proc/locks", "rb") as f:  # (no early read, or it failed: once more)
        return f.read()


def check_shared(session: Any) -> None:
    """Driver hook, once for all processes: a lock only a mapping holds is kept on that
    mapping (:func:`_through_mapping`); a signal owner outside the checkpoint is refused."""
    contexts: list[DumpContext] = session.contexts
    pids = {c.pid for c in contexts}
    seen: set[tuple[Any, ...]] = set()
    for c in contexts:
        seen |= c.live.pop("locks_seen", set())
    maps = {c.pid: _maps(c.pid) for c in contexts}
    table = parse_proc_locks(_proc_locks(session.shared.early.pop("locks", None)))
    for lk in table:
        users = [c for c in contexts if (lk.dev, lk.ino) in maps[c.pid]]
        if not users or lk.key in seen or not (lk.pid in pids or lk.pid == -1):
            continue
        _through_mapping(users, pids, lk, maps[users[0].pid][(lk.dev, lk.ino)])
    groups = {os.getpgid(p) for p in pids if _alive(p)}
    for d in session.shared.descs.descs:
        owner = d.get("owner")
        if owner is None:
            continue
        if d["kind"] == "dir":
            # F_NOTIFY makes its caller the directory's owner, and nothing else gives a
            # directory one a use: dnotify, whose events no kernel interface shows
            raise _refuse(d["pid"], d["fd"], f"the directory {d['path']} has a signal owner"
                          " (F_SETOWN): a dnotify registration (F_NOTIFY), whose events"
                          " cannot be read back, is not supported")  # fmt: skip
        inside = owner["pid"] in (groups if owner["type"] == F_OWNER_PGRP else pids)
        if not inside and owner["type"] != F_OWNER_TID:
            raise _refuse(d["pid"], d["fd"], f"the signal owner of {d['path']} (F_SETOWN"
                          f" {owner['pid']}) is outside the checkpoint")  # fmt: skip
        if owner["type"] == F_OWNER_TID and not _thread_of(owner["pid"], pids):
            raise _refuse(d["pid"], d["fd"], f"the signal owner of {d['path']} (thread"
                          f" {owner['pid']}) is outside the checkpoint")  # fmt: skip


def _through_mapping(users: list[DumpContext], pids: set[int], lk: Lock, path: str) -> None:
    """``lk``, on a file that ``users`` map, is shown by no fd of the checkpoint: it is
    held by an open file description that only a mapping keeps (its fd closed: JVMs do
    this), or by a process outside the checkpoint.  An flock or an OFD lock belongs to
    the description, which lives on as the mapping's vm_file: it is kept on the first
    VMA of that file, and the restore takes it again on the fd the mapping is made
    from, before that fd is closed (memory.map_vmas).  A POSIX lock cannot outlive the
    close of its fd (filp_close drops the process's POSIX locks on the file), and a
    lease is not restored this way: both are refused.  So is a lock no mapping can be
    told to hold: the file mapped by several processes, or by one outside (whose own
    fds do not show the lock)."""
    c = users[0]
    if lk.kind not in ("FLOCK", "OFDLCK") or lk.mode not in MODES:
        raise _refuse(c.pid, None, f"{lk} lock on {path} is held through a mapping only (its"
                      " fd was closed); only an flock or an OFD lock can be: not supported")
    if len(users) > 1:
        raise _refuse(c.pid, None, f"{lk} lock on {path} is held through a mapping only, and"
                      f" processes {sorted(u.pid for u in users)} map the file: which mapping"
                      " holds it cannot be told: not supported")  # fmt: skip
    if lk.kind == "FLOCK" and lk.pid != c.pid:
        raise _refuse(c.pid, None, f"{lk} lock on {path}, held through a mapping only, was"
                      f" taken by process {lk.pid}, not by the process that maps it:"
                      " not supported")  # fmt: skip
    outside = _outside_holder(lk, pids)
    if outside is False:
        return  # an fd of a process outside the checkpoint shows it: not ours
    if outside is not True:
        raise _refuse(c.pid, None, f"{lk} lock on {path} is held through a mapping only, and"
                      f" process {outside} outside the checkpoint maps the file too: which"
                      " mapping holds it cannot be told: not supported")  # fmt: skip
    for v in c.records[R.MM]["vmas"]:
        st = v.get("file")
        if v["kind"] in ("file", "shared-file") and st and st[1] == lk.ino \
                and (os.major(st[0]), os.minor(st[0])) == lk.dev:  # fmt: skip
            v.setdefault("locks", []).append({"kind": "ofd" if lk.kind == "OFDLCK" else "flock",
                                              "mode": lk.mode, "start": lk.start,
                                              "end": lk.end})  # fmt: skip
            return
    raise _refuse(c.pid, None, f"{lk} lock on {path} is held through a mapping only, of a"
                  " file that is not mapped from its path (deleted?): not supported")


def _outside_holder(lk: Lock, pids: set[int]) -> bool | int:
    """Whether processes outside ``pids`` (and cryo) hold ``lk``'s file: False if one of
    their fds shows the lock (it is theirs), the pid of one that maps the file, else True
    (the lock is the checkpoint's).  A process whose /proc files even root may not read
    (another user namespace's init, under some sandboxes) is not looked at."""
    me = {os.getpid(), os.getppid()}
    mapper: int | None = None
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in pids or int(name) in me:
            continue
        pid = int(name)
        with contextlib.suppress(PermissionError):  # (one cryo may not read: not seen)
            if mapper is None and (lk.dev, lk.ino) in _maps(pid):
                mapper = pid
        with contextlib.suppress(OSError), os.scandir(f"/proc/{pid}/fd") as it:
            for ent in it:
                with contextlib.suppress(OSError):
                    st = os.stat(ent.path)
                    if st.st_ino != lk.ino or (os.major(st.st_dev), os.minor(st.st_dev)) \
                            != lk.dev:  # fmt: skip
                        continue
                    with open(f"/proc/{pid}/fdinfo/{ent.name}", "rb") as f:
                        if lk.key in {x.key for x in parse_fdinfo_locks(f.read())}:
                            return False
    return True if mapper is None else mapper


def take_through_mapping(inj: Injector, fd: int, v: dict[str, Any]) -> None:
    """memory.map_vmas' hook: the locks of mapping ``v`` taken by the process on ``fd``,
    the fd its mappings of the file are made from (their open file description), before
    it is closed: the mapping then holds them, as before."""
    for lk in v.get("locks", []):
        if lk["kind"] == "flock":
            op = (fcntl.LOCK_SH if lk["mode"] == "READ" else fcntl.LOCK_EX) | fcntl.LOCK_NB
            err = inj.raw(SYS.flock, fd, op)
        else:
            err = inj.raw(SYS.fcntl, fd, F_OFD_SETLK,
                          inj.put(_flock_struct(lk["mode"], lk["start"], lk["end"])))
        if err < 0:
            busy = -err in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
            why = "another process holds a conflicting lock" if busy else os.strerror(-err)
            raise CryoError(f"mapping {v['start']:#x} of {v['path']}: cannot take the"
                            f" {lk['kind']} {lk['mode']} lock it held again: {why}",
                            resource="memory", path=v["path"])  # fmt: skip


def mapped_open_flags(v: dict[str, Any]) -> int:
    """O_RDWR where a mapping's OFD write lock needs its description open for writing
    (fcntl_setlk: F_WRLCK needs FMODE_WRITE; it had it, it took the lock), else 0."""
    if any(lk["kind"] == "ofd" and lk["mode"] == "WRITE" for lk in v.get("locks", [])):
        return os.O_RDWR
    return 0


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _thread_of(tid: int, pids: set[int]) -> bool:
    return any(os.path.exists(f"/proc/{p}/task/{tid}") for p in pids)


# -- restore ---------------------------------------------------------------------------


def _flock_struct(mode: str, start: int, end: int | None) -> bytes:
    """struct flock (x86_64): short l_type, l_whence; off_t l_start, l_len; pid_t l_pid."""
    length = 0 if end is None else end - start + 1
    return struct.pack("<hh4xqqi4x", MODES[mode], SEEK_SET, start, length, 0)


def prepare(rs: Any) -> None:
    """Driver hook, after files.prepare and shmem's: the descriptions of deleted files
    that are also mapped reopened from their shared memory object (ghosts.py); then OFD
    locks, flocks and F_SETSIG taken by cryo on its own fd of each description, before
    any process inherits it."""
    opened = rs.shared.opened
    try:
        ghosts.reopen_objects(rs.shared.descs, opened, rs.shared.objects)
    finally:  # (their names were kept for the reopens: shmem.Made.reopen)
        rs.shared.objects.unlink_names()
    flockers = rs.shared.keep["flockers"] = set(rs.plan.procs)
    for d in rs.shared.descs:
        fd = opened.fds.get(d["id"])
        if fd is None:
            continue  # (a late one, a unix socket: once cryo has made it, in restore)
        _take(d, fd, flockers)
        if d.get("sig"):
            fcntl.fcntl(fd, F_SETSIG, d["sig"])


def _take(d: dict[str, Any], fd: int, flockers: set[int]) -> None:
    """The OFD locks and flocks of description ``d``, taken by cryo on ``fd``, its own;
    but a flock taken by a process of the image (``flockers``), which takes it again
    itself (:func:`restore`): the kernel shows the taker's pid."""
    for lk in d.get("locks", []):
        if lk["kind"] == "flock" and lk.get("pid") in flockers:
            continue
        try:
            if lk["kind"] == "flock":
                fcntl.flock(fd, (fcntl.LOCK_SH if lk["mode"] == "READ" else fcntl.LOCK_EX)
                            | fcntl.LOCK_NB)  # fmt: skip
            else:
                fcntl.fcntl(fd, F_OFD_SETLK, _flock_struct(lk["mode"], lk["start"],
                                                             lk["end"]))  # fmt: skip
        except OSError as err:
            raise _conflict(d, f"{lk['kind']} {lk['mode']}", err) from err


def _conflict(d: dict[str, Any], what: str, err: OSError) -> CryoError:
    busy = err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    why = "another process holds a conflicting lock" if busy else err.strerror
    return CryoError(f"fd {d['fd']} of {d['pid']}: cannot take the {what} lock on"
                     f" {d['path']} again: {why}", pid=d["pid"], resource=f"fd {d['fd']}",
                     path=d["path"])  # fmt: skip


def restore(ctx: RestoreContext) -> None:
    """Stage "files", after the fds are in place: the OFD locks and flocks of the
    descriptions cryo made late (unix sockets), the process's POSIX locks, its leases,
    and O_ASYNC set again by the process itself."""
    inj = ctx.inj
    opened = ctx.shared.opened
    flockers: set[int] = ctx.shared.keep.get("flockers", set())
    taken: set[int] = set()
    for e in ctx.records[FILE_KIND]["fds"]:
        d = ctx.shared.descs[e["desc"]]
        if d.get("locks") and d["pid"] == ctx.old_pid and d["id"] not in opened.fds:
            # a description made late (a unix socket, a /proc file of the tree): cryo
            # has its fd only now; lost before, the restart exiting 0 without the lock
            fd = opened.late.get(d["id"])
            if fd is None:
                raise CryoError(f"fd {d['fd']} of {d['pid']}: its {d['locks'][0]['kind']}"
                                " lock cannot be taken again: cryo holds no fd of it",
                                pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip
            _take(d, fd, flockers)
        for lk in d.get("locks", []):
            if lk["kind"] != "flock" or lk.get("pid") != ctx.old_pid or d["id"] in taken:
                continue
            taken.add(d["id"])  # the flock this process took, taken by it again
            op = (fcntl.LOCK_SH if lk["mode"] == "READ" else fcntl.LOCK_EX) | fcntl.LOCK_NB
            err = inj.raw(SYS.flock, e["fd"], op)
            if err < 0:
                raise _conflict(d, f"flock {lk['mode']}", OSError(-err, os.strerror(-err)))
        for lk in d.get("posix", []):
            if lk["pid"] != ctx.old_pid or lk["fd"] != e["fd"]:
                continue
            try:
                inj(SYS.fcntl, e["fd"], F_SETLK, inj.put(_flock_struct(
                    lk["mode"], lk["start"], lk["end"])), what=f" F_SETLK fd {e['fd']}")
            except OSError as err:
                raise _conflict(d, f"POSIX {lk['mode']}", err) from err
        lease = d.get("lease")
        if lease and lease["pid"] == ctx.old_pid and lease["fd"] == e["fd"]:
            try:
                inj(SYS.fcntl, e["fd"], F_SETLEASE, MODES[lease["mode"]],
                    what=f" F_SETLEASE fd {e['fd']}")  # fmt: skip
            except OSError as err:
                raise _conflict(d, f"lease {lease['mode']}", err) from err
        if d["flags"] & O_ASYNC and d["kind"] != "stdio":
            flags = d["flags"] & ~0o3 & 0xFFFFFFFF
            inj(SYS.fcntl, e["fd"], F_SETFL, flags & ~O_ASYNC)
            inj(SYS.fcntl, e["fd"], F_SETFL, flags, what=f" F_SETFL O_ASYNC fd {e['fd']}")


def restore_owner(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    """Stage "creds", in the leader once its own credentials are back (the task driver
    sets them first): F_SETOWN_EX of each description this process saw first."""
    if trec["tid"] != ctx.old_pid:
        return
    done: set[int] = set()
    for e in ctx.records[FILE_KIND]["fds"]:
        d = ctx.shared.descs[e["desc"]]
        owner = d.get("owner")
        if owner is None or d["pid"] != ctx.old_pid or e["desc"] in done:
            continue
        done.add(e["desc"])
        if ctx.pidns:
            target = owner["nspid"]
        elif owner["type"] == F_OWNER_TID:
            target = _new_tid(ctx, owner["pid"])
        else:
            target = ctx.pid_map.get(owner["pid"], owner["pid"])
        inj(SYS.fcntl, e["fd"], F_SETOWN_EX, inj.put(struct.pack("ii", owner["type"], target)),
            what=f" F_SETOWN_EX fd {e['fd']}")  # fmt: skip


def _new_tid(ctx: RestoreContext, tid: int) -> int:
    if tid in ctx.tid_map:
        return ctx.tid_map[tid]
    return ctx.pid_map.get(tid, tid)


def describe(d: dict[str, Any]) -> dict[str, Any]:
    """What `cryo show` says of a description's locks and owner."""
    out: dict[str, Any] = {}
    names = [f"{x['kind']} {x['mode']}" for x in d.get("locks", [])]
    names += [f"posix {x['mode']} {x['start']}-{'EOF' if x['end'] is None else x['end']}"
              f" (pid {x['pid']})" for x in d.get("posix", [])]  # fmt: skip
    if d.get("lease"):
        names.append(f"lease {d['lease']['mode']}")
    if names:
        out["locks"] = names
    if d.get("owner"):
        out["owner"] = d["owner"]["pid"]
    if d.get("sig"):
        out["sig"] = d["sig"]
    return out
