"""Files: open file descriptions (regular files, directories, character devices, pipes
and FIFOs with the data in flight, files deleted while open), each process's fd table,
cwd, root and umask.

Dump: every fd of every process is matched against the descriptions seen so far
(kcmp): a description shared by several fds or processes (dup, fork) is saved once, as
an entry of the FDSC record; each process's FILE record maps its fds to descriptions.

Restore: cryo itself opens every description once, on fds above any the image uses,
before the first process is created, so that every process of the tree inherits them;
each process then dup3()s the ones it had to their numbers and closes the rest.  Shared
descriptions are thus shared again: one offset, one set of flags, one pipe.  A *late*
description (a pidfd or /proc file of a process of the checkpoint: engine/specialfds.py)
is opened by cryo only once every process exists, and each process that holds it takes
it with an injected pidfd_getfd, through a pidfd of cryo it inherited.  An epoll's
watches added through fds since closed are added again with those fd numbers on
temporary fds before the rest is closed (engine/anonfds.py).  With
--shell-job, fds 0-2 that are a terminal, a pipe, a socket or an unlinked file are given
the restarter's own stdio.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import select
import stat
import struct
from _socket import AF_INET, AF_INET6, AF_UNIX  # (socket.py: 3 ms of start-up more)
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from cryo import procfs
from cryo.engine import anonfds, changed, dirty, ghosts, locks, specialfds
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.translate import apply as translated
from cryo.engine.translate import changed_how
from cryo.errors import CryoError, FileChanged, ImageCorrupt, Unsupported
from cryo.lazy import lazy
from cryo.linux import fdcalls, libc
from cryo.linux.consts import SYS

if TYPE_CHECKING:
    from cryo.engine import appchannel, fsnotify, inet, sockets, tty
else:  # imported once a process has such an fd (docs/design.md, "Start-up")
    appchannel, fsnotify = lazy("cryo.engine.appchannel"), lazy("cryo.engine.fsnotify")
    inet, sockets = lazy("cryo.engine.inet"), lazy("cryo.engine.sockets")
    tty = lazy("cryo.engine.tty")

log = logging.getLogger(__name__)
KIND = b"FILE"
DESC_KIND = b"FDSC"
DATA_KIND = b"FDAT"
O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC = 0o100, 0o200, 0o400, 0o1000
O_NONBLOCK = 0o4000
O_ASYNC = 0o20000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
F_SETFD = 2
FD_CLOEXEC = 1
MAX_DELETED = 1 << 30  # contents of a deleted file kept in the image, at most
MAX_PIPE = 1 << 24


class Found(NamedTuple):
    """One fd of one process, as the dump finds it.  (This and FdKind: named tuples, not
    dataclasses, which cost every command 0.5-1.4 ms each to make: issue 16.)"""

    pid: int
    fd: int
    target: str  # the /proc/PID/fd link
    st: os.stat_result
    # the sockets of its network namespace: inode -> (family, unix address as
    # /proc/net/unix shows it), read once per namespace (None: ask the socket itself)
    sockets: dict[int, tuple[int, str]] | None = None
    info: bytes = b""  # its /proc/PID/fdinfo, as read once (b"": not read)
    links: dict[int, str] | None = None  # the process's fd table: fd -> link

    @property
    def fmt(self) -> int:
        return stat.S_IFMT(self.st.st_mode)


@dataclass
class Opening:
    """What the restore of every description shares while cryo opens them."""

    blobs: list[bytes]
    options: dict[str, Any]
    opened: Opened
    unix: dict[int, dict[str, Any]]  # unix sockets of the image by inode
    pipes: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    ends: set[int] = field(default_factory=set)  # pipe ends handed out as they are
    pairs: dict[int, int] = field(default_factory=dict)
    keep: dict[str, Any] = field(default_factory=dict)  # for later stages (the session's)
    # files the restart itself put back (saved with cryo.app, the JVM's hsperf file):
    # the image's bytes in a new inode, not a file replaced since
    put_back: frozenset[str] = frozenset()


class FdKind(NamedTuple):
    """One kind of open file description: how the dump recognizes it, what its FDSC entry
    holds beyond the common fields, and how the restore opens it again.  A kind with a
    ``refuse`` message is recognized only to be refused by name (exit 9)."""

    name: str
    match: Callable[[Found], bool]
    describe: Callable[[Found, procfs.FdInfo, Descriptions], dict[str, Any]] | None = None
    open: Callable[[dict[str, Any], Opening], int] | None = None
    refuse: Callable[[Found], str] | None = None
    in_flight: bool = False  # data waiting in it is copied (tee) and written back


_SPECIAL_FS = {fdcalls.MQUEUE_MAGIC: "POSIX message queue (mq_open)",
               fdcalls.SECRETMEM_MAGIC: "memfd_secret() file"}


def _special_fs(f: Found) -> str | None:
    """What a regular file on a filesystem of the kernel's own is (a POSIX message
    queue, a memfd_secret), or None: reopened by its name, as a file, a queue would lose
    its messages and its attributes (and be looked for on the root filesystem), and
    secret memory cannot be read by anyone but its owner."""
    if f.fmt != stat.S_IFREG or os.major(f.st.st_dev) != 0:  # (those have no disk)
        return None
    try:
        return _SPECIAL_FS.get(fdcalls.fs_type(f"/proc/{f.pid}/fd/{f.fd}"))
    except OSError:
        return None


def _is_tty(f: Found) -> bool:
    return f.fmt == stat.S_IFCHR and (f.target.startswith(("/dev/pts/", "/dev/tty"))
                                      or f.target == "/dev/console")  # fmt: skip


# every name tty.is_pty takes (/dev/ptmx, /dev/pts/ptmx, /dev/pts/N, /dev/tty) begins so:
# another character device (/dev/null, /dev/urandom ...) is not asked, and tty (2.5 ms
# to import, termios with it) stays out of a small program's checkpoint
_PTY_NAMES = ("/dev/pt", "/dev/tty")


def _is_pty(f: Found) -> bool:
    return f.fmt == stat.S_IFCHR and f.target.startswith(_PTY_NAMES) \
        and tty.is_pty(f.target, f.pid)  # fmt: skip


def _is_socket(f: Found) -> bool:
    return f.target.startswith("socket:")


def _anon(name: str) -> Callable[[Found], bool]:
    return lambda f: f.target.startswith("anon_inode:") and anonfds.kind_of(f.target) == name


def _describe_file(f: Found, _info: procfs.FdInfo, descs: Descriptions) -> dict[str, Any]:
    if specialfds.is_ns(f.target):
        return specialfds.describe_ns(f.target)
    if f.st.st_nlink != 0 and not f.target.endswith(procfs.DELETED):
        return _identity(f)
    return ghosts.describe(f.pid, f.fd, f.target, f.st, descs.ghosts, descs.blobs,
                           len(descs.descs))  # fmt: skip


def _identity(f: Found) -> dict[str, Any]:
    """What tells, at restart, that the file reopened by its name is the one the fd had
    (:func:`_same_file`): its mtime (with its size, already in the description) and its
    file handle (name_to_handle_at: inode and generation numbers on ext4, xfs, btrfs,
    tmpfs; none on filesystems without one)."""
    out: dict[str, Any] = {"mtime_ns": f.st.st_mtime_ns}
    handle = fdcalls.name_to_handle_at(-100, f"/proc/{f.pid}/fd/{f.fd}",
                                       fdcalls.AT_SYMLINK_FOLLOW)  # fmt: skip
    if handle is not None:
        out["handle"] = handle
        with contextlib.suppress(OSError):  # (with dev: which filesystem it was on)
            out["fsid"] = os.statvfs(f"/proc/{f.pid}/fd/{f.fd}").f_fsid
    return out


def _same_file(d: dict[str, Any], fd: int, path: str, options: dict[str, Any]) -> None:
    """The regular file reopened by name for ``d`` is the file it was, or FileChanged
    (exit 12; --ignore-changed-files restarts anyway).  A file renamed over it or
    deleted and made again under its name, as long or longer, was reopened silently
    before: the program went on with another file.  On the filesystem it was on (same
    device number and filesystem id, statfs f_fsid: another machine's root filesystem
    has the same device number, and a copy of the file there another inode; the path
    not translated), it must be the same inode, and where a file
    handle was saved the same handle (an inode number the filesystem gave again to a
    new file has another generation); it may have been written since (a log another
    run appended to is still the program's file).  Elsewhere (another machine) no
    number is stable: it must have the size and mtime it had (CRIU's rule for regular
    files: criu/files-reg.c compares the size and mode); a copy the user named with
    --translate, the size it had (its mtime is the copy's).  A
    file of a filesystem without file handles (/proc, /sys: their inode numbers and
    mtimes are made at each lookup) is reopened by its name as before."""
    if "handle" not in d or changed.ignored(options):
        return  # (or an image of before: no identity saved)
    st = os.fstat(fd)
    why = None
    if st.st_dev == d["dev"] and path == d["path"] and d.get("fsid", -1) in (
            -1, os.fstatvfs(fd).f_fsid):  # fmt: skip
        if st.st_ino != d["ino"]:
            why = f"another file now (inode {st.st_ino}, was {d['ino']})"
        elif "handle" in d and (handle := fdcalls.name_to_handle_at(
                fd, "", fdcalls.AT_EMPTY_PATH)) is not None and handle != d["handle"]:
            why = "another file now (its inode number given again to a new file)"
    elif path != d["path"] and st.st_size != d["size"]:  # (a copy the user put there
        # and named with --translate: its mtime is the copy's, unless cp -p made it)
        why = f"not the file of the checkpoint (its size was {d['size']}, it is" \
            f" {st.st_size} now; translated, only its size can tell)"  # fmt: skip
    elif path == d["path"] and (st.st_size, st.st_mtime_ns) != (d["size"], d["mtime_ns"]):
        how = changed_how((d["size"], d["mtime_ns"]), st)
        why = f"not the file of the checkpoint ({how}; on another filesystem only its size" \
            " and mtime can tell)"  # fmt: skip
    if why is not None:
        raise FileChanged(f"fd {d['fd']} of process {d['pid']}: {path} is {why}: it was"
                          " replaced since the checkpoint; --ignore-changed-files restarts"
                          " anyway", pid=d["pid"], resource=f"fd {d['fd']}",
                          path=path)  # fmt: skip


def _describe_unix(f: Found, _info: procfs.FdInfo, descs: Descriptions) -> dict[str, Any]:
    if descs.unix is None:
        descs.unix = sockets.unix_sockets()
    return sockets.describe(f.pid, f.fd, f.st.st_ino, descs.unix,
                            lambda fd: _describe_held(fd, descs))


def _describe_held(fd: int, descs: Descriptions) -> int:
    """The description of a file cryo holds (one that was in flight on a unix socket),
    as any process's: matched with those seen (kcmp), or added."""
    me = os.getpid()
    found = Found(me, fd, os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd))
    k = kind_of(found, False)
    if k.refuse is not None:
        raise Unsupported(f"a file descriptor in flight on a unix socket: {k.refuse(found)}",
                          resource="fd in flight")  # fmt: skip
    index = descs.find(me, fd, k.name, found.st)
    if index is None:
        info = procfs.parse_fdinfo(procfs.read("self", f"fdinfo/{fd}"))
        index = descs.add(_describe(found, k, info, descs), me, fd)
    return index


def _fdinfo(f: Found) -> bytes:
    return f.info or procfs.read(f.pid, f"fdinfo/{f.fd}")


def _describe_anon(f: Found, _info: procfs.FdInfo, _descs: Descriptions) -> dict[str, Any]:
    return anonfds.describe(anonfds.kind_of(f.target) or "", _fdinfo(f), f.pid, f.fd,
                            f.links)  # fmt: skip


def _is_family(*families: int) -> Callable[[Found], bool]:
    def match(f: Found) -> bool:
        if not _is_socket(f):
            return False
        known = f.sockets.get(f.st.st_ino) if f.sockets is not None else None
        return (known[0] if known is not None
                else inet.family_of(f.pid, f.fd, f.st.st_ino)) in families  # fmt: skip

    return match


AGENT_NAME = "@cryo-app/"  # a cryo.app agent's abstract address, as /proc/net/unix shows it
_NET_TABLES = (("unix", AF_UNIX), ("udp", AF_INET), ("udp6", AF_INET6))


def socket_table(pid: int) -> dict[int, tuple[int, str]]:
    """inode -> (family, unix address) of the unix and UDP sockets of the network
    namespace of ``pid`` (one read of /proc/PID/net/* instead of a question to each);
    the TCP ones of each process come from the inet driver's table (inet.tcp_sockets)."""
    out: dict[int, tuple[int, str]] = {}
    for name, family in _NET_TABLES:
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if family == AF_UNIX:
                        if len(parts) >= 7:
                            out[int(parts[6])] = (family, parts[7] if len(parts) > 7 else "")
                    elif len(parts) >= 10:
                        out[int(parts[9])] = (family, "")
        except (OSError, ValueError):
            continue
    out.pop(0, None)  # (sockets being set up show inode 0)
    return out


def _describe_inet(f: Found, _info: procfs.FdInfo, _descs: Descriptions) -> dict[str, Any]:
    return inet.describe(f.pid, f.fd, f.st.st_ino)


def _open_inet(d: dict[str, Any], o: Opening) -> int:
    fd = inet.open_socket(d, o.options)
    if d["flags"] & ~O_ACCMODE:  # (a new socket's are O_RDWR: a blocking one's already)
        _set_flags(fd, d["flags"])
    return fd


def _describe_pty(f: Found, _info: procfs.FdInfo, _descs: Descriptions) -> dict[str, Any]:
    return tty.describe(f.pid, f.fd, f.target)


def _open_pty(d: dict[str, Any], _o: Opening) -> int:
    fd = tty.open_desc(d, d["flags"])
    _set_flags(fd, d["flags"])
    return fd


def _open_unix(d: dict[str, Any], o: Opening) -> int:
    fd = sockets.open_socket(d, o.unix, o.pairs, o.options)
    _set_flags(fd, d["flags"])
    return fd


@dataclass
class Descriptions:
    """Open file descriptions of the whole checkpoint, each saved once."""

    descs: list[dict[str, Any]] = field(default_factory=list)
    seen: list[tuple[int, int]] = field(default_factory=list)  # (pid, fd) of each desc
    blobs: list[bytes] = field(default_factory=list)  # FDAT records
    ghosts: dict[tuple[int, int], str] = field(default_factory=dict)  # deleted files saved
    unix: dict[int, dict[str, Any]] | None = None  # sock_diag's view, asked once
    nets: dict[int, dict[int, tuple[int, str]]] = field(default_factory=dict)  # by netns
    # (kind, dev, ino) -> the descriptions of that file, in kcmp's order: only those are
    # compared, by a binary search (8,000 fds each opening /dev/null were 32 million
    # kcmp calls one after the other, a freeze past the watchdog's minute: found by
    # probing; CRIU sorts them the same way)
    by_file: dict[tuple[str, int, int], list[int]] = field(default_factory=dict)
    _last: tuple[Any, ...] = ()  # (key, pid, fd, where it goes) of the last miss

    def _search(self, key: tuple[str, int, int], pid: int, fd: int) -> tuple[int | None, int]:
        """The description that ``fd`` of ``pid`` is, or None and where it would go."""
        group = self.by_file.get(key, [])
        lo, hi = 0, len(group)
        while lo < hi:
            mid = (lo + hi) // 2
            p0, fd0 = self.seen[group[mid]]
            order = libc.kcmp_order(p0, fd0, pid, fd)
            if order == 0:
                return group[mid], mid
            if order == 1:
                lo = mid + 1
            else:
                hi = mid
        return None, lo

    def find(self, pid: int, fd: int, kind: str, st: os.stat_result) -> int | None:
        key = (kind, st.st_dev, st.st_ino)
        found, at = self._search(key, pid, fd)
        self._last = (key, pid, fd, at)
        return found

    def add(self, d: dict[str, Any], pid: int, fd: int) -> int:
        """A new description (``d["id"]`` its index), first seen as ``fd`` of ``pid``."""
        index = d["id"] = len(self.descs)
        self.descs.append(d)
        self.seen.append((pid, fd))
        key = (d["kind"], d["dev"], d["ino"])
        at = self._last[3] if self._last[:3] == (key, pid, fd) else self._search(key, pid,
                                                                                 fd)[1]
        self.by_file.setdefault(key, []).insert(at, index)
        self._last = ()
        return index


def _is_socket_link(target: str) -> bool:
    return target.startswith("socket:")


def _sockets(pid: int, descs: Descriptions) -> dict[int, tuple[int, str]] | None:
    try:
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    if ns not in descs.nets:
        descs.nets[ns] = socket_table(pid)
    return descs.nets[ns]


def dump(ctx: DumpContext, descs: Descriptions) -> dict[str, Any]:
    pid = ctx.pid
    try:  # (its fd and fdinfo directories, each opened once: no path walk per fd)
        fd_dir = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError) as err:
        raise CryoError(f"process {pid} vanished", pid=pid) from err
    try:
        info_dir = os.open(f"/proc/{pid}/fdinfo", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError) as err:
        os.close(fd_dir)
        raise CryoError(f"process {pid} vanished", pid=pid) from err
    try:
        return _dump(ctx, descs, fd_dir, info_dir)
    finally:
        os.close(fd_dir)
        os.close(info_dir)


def _read_at(pid: int, dir_fd: int, name: str, one_read: bool = False) -> bytes:
    """A /proc file of ``pid`` by its name in the directory ``dir_fd``; ``one_read``: a
    seq_file of one record (a socket's fdinfo), whose read returns less than asked only
    at its end (fs/seq_file.c)."""
    try:
        f = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, ProcessLookupError) as err:
        raise CryoError(f"process {pid} vanished", pid=pid) from err
    try:
        data = os.read(f, _FDINFO_MAX)
        if one_read and len(data) < _FDINFO_MAX:
            return data
        chunks = [data]
        while chunk := os.read(f, 1 << 16):  # (to the end: a read may come back short)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(f)


def _dump(ctx: DumpContext, descs: Descriptions, fd_dir: int, info_dir: int
          ) -> dict[str, Any]:  # fmt: skip
    pid = ctx.pid
    shell_job = bool(ctx.options.get("shell_job"))
    table: list[dict[str, Any]] = []
    # the fd table as the inet driver read it in this freeze, or read now
    names, links = ctx.live.pop("fd_links", (None, {}))
    if names is None:
        try:
            names = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError as err:
            raise CryoError(f"process {pid} vanished", pid=pid) from err
    net: dict[int, tuple[int, str]] | None = None  # its netns's sockets, read once
    raw_infos: dict[int, bytes] = ctx.live.setdefault("fdinfo", {})  # (for locks.collect)
    for fd in names:
        name = str(fd)
        target = links.get(fd)
        if target is None:
            try:
                target = links[fd] = os.readlink(name, dir_fd=fd_dir)
            except (FileNotFoundError, ProcessLookupError) as err:
                raise CryoError(f"process {pid} or its fd {fd} does not exist",
                                pid=pid) from err  # fmt: skip
        if dirty.is_ours(pid, fd, target):
            continue  # the write tracking cryo armed (engine/dirty.py): not the program's
        if _is_socket_link(target):
            raw = raw_infos[fd] = _read_at(pid, info_dir, name, one_read=True)
            info = _fdinfo_head(raw)
            held = inet.held_fd(int(target[8:-1]))  # (cryo's duplicate: the same file)
            st = os.fstat(held) if held is not None else os.stat(name, dir_fd=fd_dir)
        else:
            raw = raw_infos[fd] = _read_at(pid, info_dir, name)
            info = procfs.parse_fdinfo(raw)
            st = os.stat(name, dir_fd=fd_dir)
        if _is_socket_link(target) and net is None:
            net = _sockets(pid, descs) or {}
            net.update(inet.tcp_sockets(pid))  # (read by the inet driver already)
        found = Found(pid, fd, target, st, net if _is_socket_link(target) else None, raw,
                      links)  # fmt: skip
        k = kind_of(found, shell_job)
        if k in (_STDIO, _CTTY) and _is_tty(found) and _inner_terminal(pid, found, ctx):
            k = kind_of(found, False)  # (a pair of the checkpoint: not the job's terminal)
        if k.refuse is not None:
            raise Unsupported(f"fd {fd}: {k.refuse(found)}", pid=pid, resource=f"fd {fd}")
        kind = k.name
        index = descs.find(pid, fd, kind, st)
        if index is None:
            index = descs.add(_describe(found, k, info, descs), pid, fd)
        table.append({"fd": fd, "desc": index, "cloexec": bool(info.flags & O_CLOEXEC)})
    cwd = procfs.readlink(pid, "cwd")
    gone = ghosts.describe_cwd(pid) if cwd.endswith(procfs.DELETED) else None
    for what in ("root",) if gone else ("cwd", "root"):
        where = procfs.readlink(pid, what)
        if where.endswith(procfs.DELETED):
            raise Unsupported(f"the {'working' if what == 'cwd' else 'root'} directory of"
                              f" process {pid}, {where}, was deleted; not supported", pid=pid,
                              resource=what, path=where)  # fmt: skip
    status = procfs.parse_status(procfs.read(pid, "status"))
    return {
        "pid": pid,
        "fds": table,
        "cwd": cwd.removesuffix(procfs.DELETED) if gone else cwd,
        **({"cwd_deleted": gone} if gone else {}),
        "root": procfs.readlink(pid, "root"),
        "umask": int(status.get("Umask", "0022"), 8),
    }


_FDINFO_MAX = 1 << 12


def _fdinfo_head(raw: bytes) -> procfs.FdInfo:
    """A socket's fdinfo: its pos, flags, mnt_id and ino lines, all its describe needs
    (the socket kinds read nothing else of it; ``extra`` is left empty), or parsed
    whole if it is not in that shape."""
    lines = raw.split(b"\n", 4)
    if len(lines) > 4 and lines[0][:4] == b"pos:" and lines[1][:6] == b"flags:" and \
            lines[2][:7] == b"mnt_id:" and lines[3][:4] == b"ino:":  # fmt: skip
        return procfs.FdInfo(int(lines[0][4:]), int(lines[1][6:], 8), int(lines[2][7:]),
                             int(lines[3][4:]), {})  # fmt: skip
    return procfs.parse_fdinfo(raw)


def _describe(f: Found, k: FdKind, info: procfs.FdInfo, descs: Descriptions
              ) -> dict[str, Any]:  # fmt: skip
    d: dict[str, Any] = {
        "id": len(descs.descs), "kind": k.name, "path": f.target, "pos": info.pos,
        "flags": info.flags & ~O_CLOEXEC, "ino": f.st.st_ino, "dev": f.st.st_dev,
        "mode": f.st.st_mode, "size": f.st.st_size, "fd": f.fd, "pid": f.pid,
    }  # fmt: skip
    if k.describe is not None:
        d.update(k.describe(f, info, descs))
    return d


def collect(ctx: DumpContext) -> None:
    """Driver hook: the FILE record of the process, its descriptions added to the
    session's (each saved once)."""
    ctx.records[KIND] = dump(ctx, ctx.shared.descs)


def dump_shared(session: Any) -> None:
    """Driver hook, once for all processes: the data in flight in pipes and FIFOs."""
    dump_pipes(session.shared.descs, session.shell_job)
    specialfds.check_proc(session.shared.descs.descs, {c.pid for c in session.contexts},
                          frozenset(p.pid for p in session.procs.values() if p.zombie))
    anonfds.find_hidden(session.shared.descs.descs, session.shared.descs.seen)
    ghosts.use_objects(session.shared.descs.descs, session.shared.objects)
    ghosts.check_mapped(session.shared.descs.descs, {c.pid for c in session.contexts})
    ghosts.check_linkable(session.shared.descs.descs)


def shared_records(session: Any) -> list[tuple[bytes, Any, bool]]:
    descs: Descriptions = session.shared.descs
    ghosts.write(session.sink, descs.descs)  # before the FDSC record: it adds their extents
    return [(DESC_KIND, {"descs": descs.descs}, False),
            *((DATA_KIND, blob, True) for blob in descs.blobs)]


def check_shared_tables(pids: list[int]) -> list[str]:
    """Separate processes sharing one fd table (clone with CLONE_FILES but not a thread)
    or one fs_struct (CLONE_FS: cwd, root, umask) cannot be restored that way yet:
    refuse, rather than split them silently (restored as copies, with a warning, exit 0,
    a chdir or umask of one no longer reached the other)."""
    warnings: list[str] = []  # (none left: kept for the callers)
    for i, a in enumerate(pids):
        for b in pids[i + 1 :]:
            if libc.kcmp_same(libc.KCMP_FILES, a, b):
                raise Unsupported(f"processes {a} and {b} share one fd table (CLONE_FILES),"
                                  " which is not supported yet", pid=b,
                                  resource="fd table")  # fmt: skip
            if libc.kcmp_same(libc.KCMP_FS, a, b):
                raise Unsupported(f"processes {a} and {b} share one cwd, root and umask"
                                  " (CLONE_FS), which is not supported yet", pid=b,
                                  resource="fs_struct")  # fmt: skip
    return warnings


def dump_pipes(descs: Descriptions, shell_job: bool) -> None:
    """Copy, without consuming it, the data waiting in each pipe and FIFO (tee)."""
    ends: dict[tuple[int, int], list[dict[str, Any]]] = {}  # every end of each pipe
    for d in descs.descs:
        if KINDS[d["kind"]].in_flight and not d["flags"] & O_PATH:  # (O_PATH: no end)
            ends.setdefault((d["dev"], d["ino"]), []).append(d)
    for same in ends.values():
        d = same[0]
        readers = [e for e in same if e["flags"] & O_ACCMODE in (os.O_RDONLY, os.O_RDWR)]
        if not readers and d["kind"] != "pipe":
            continue
        r = readers[0] if readers else d
        pidfd = libc.pidfd_open(r["pid"])
        try:
            mine = libc.pidfd_getfd(pidfd, r["fd"])
        finally:
            os.close(pidfd)
        packets = any(e["flags"] & O_DIRECT for e in same)
        try:
            if d["kind"] == "pipe":
                _other_end_closed(same, readers, mine)
            if not readers:  # (no reader anywhere: one, while the process is frozen, peeks)
                reader = os.open(f"/proc/self/fd/{mine}", os.O_RDONLY | os.O_NONBLOCK
                                 | os.O_CLOEXEC)  # fmt: skip
                os.close(mine)
                mine = reader
            size = fcntl.fcntl(mine, fcntl.F_GETPIPE_SZ)
            d_data, sizes = _peek(mine, size)
        finally:
            os.close(mine)
        for e in same:
            e["pipe_size"] = size
        d["data"] = d_data
        if packets and sizes:  # a packet pipe (O_DIRECT): each read gave one packet
            d["packets"] = sizes
        log.debug("pipe %s: %d bytes in flight", d["path"], len(d_data))


def _other_end_closed(same: list[dict[str, Any]], readers: list[dict[str, Any]], mine: int
                      ) -> None:  # fmt: skip
    """A pipe with no write end (or no read end) in the checkpoint is restored with that
    end closed, which is right only where no process holds it: the kernel shows that on
    the end held (``mine``, a duplicate of it), POLLHUP on a read end once no writer is
    left, POLLERR on a write end once no reader is.  Held by a process outside (a
    producer piping into the process, still running): refused."""
    if readers and any(e["flags"] & O_ACCMODE in (os.O_WRONLY, os.O_RDWR) for e in same):
        return
    d = same[0]
    end, bit = ("write", select.POLLHUP) if readers else ("read", select.POLLERR)
    p = select.poll()
    p.register(mine, 0)
    if not any(ev & bit for _, ev in p.poll(0)):
        raise Unsupported(f"fd {d['fd']} of {d['pid']}: the {end} end of {d['path']} is"
                          " outside the checkpoint", pid=d["pid"],
                          resource=f"fd {d['fd']}")  # fmt: skip


def _peek(fd: int, size: int) -> tuple[bytes, list[int]]:
    """The bytes in the pipe, and what each read of them gave (tee keeps each buffer's
    packet flag: a read of a packet pipe's copy gives one packet)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, max(size, 4096))
        try:
            n = libc.tee(fd, w, size)
        except BlockingIOError:
            return b"", []  # nothing in the pipe
        out, sizes = b"", []
        while len(out) < n:
            got = os.read(r, n - len(out))
            out += got
            sizes.append(len(got))
        return out, sizes
    finally:
        os.close(r)
        os.close(w)


def _socket_kind(pid: int, ino: int) -> str:
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix", "raw", "netlink"):
        try:
            with open(f"/proc/{pid}/net/{proto}") as f:
                if any(str(ino) in line.split() for line in f):
                    return {"tcp6": "TCP", "udp6": "UDP"}.get(proto, proto.upper())
        except OSError:
            continue
    return "a"


# -- restore ---------------------------------------------------------------------------


@dataclass
class Opened:
    """The descriptions cryo opened for a restart: desc id -> fd in cryo."""

    fds: dict[int, int] = field(default_factory=dict)
    base: int = 0
    anchors: list[int] = field(default_factory=list)
    # a pidfd of cryo, inherited by every process: each takes a late description with
    # pidfd_getfd through it; and the late descriptions, opened once every process exists
    me: int = -1
    late: dict[int, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in [*self.fds.values(), *self.anchors, *self.late.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.anchors.clear()
        self.late.clear()


def _room_for_fds(need: int) -> None:
    """cryo's soft RLIMIT_NOFILE raised towards ``need`` (up to its hard limit): every
    description is opened in cryo above the highest fd number the image uses, so a
    process with 600 fds needs 1,200 (the usual soft limit is 1,024: such a restart
    failed, "Too many open files"); the restored processes get their own limits back
    (task driver)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY
                                                    else min(need, hard), hard))  # fmt: skip


def open_all(descs: list[dict[str, Any]], blobs: list[bytes], tables: list[dict[str, Any]],
             options: dict[str, Any], keep: dict[str, Any] | None = None,
             put_back: frozenset[str] = frozenset()) -> Opened:  # fmt: skip
    """Open every description in cryo, on fds above every fd number the image uses;
    what a kind must keep for a later stage goes into ``keep``; ``put_back``: the paths
    of files the restart put back from the image (:class:`Opening`)."""
    top = max([e["fd"] for t in tables for e in t["fds"]] + [2]
              + [w[0] for d in descs for w in d.get("hidden", ())])  # fmt: skip
    opened = Opened(base=max(top + 1, 10))
    o = Opening(blobs, options, opened, {d["ino"]: d for d in descs if d["kind"] == "unix"},
                keep=keep if keep is not None else {}, put_back=put_back)
    need = opened.base + 2 * len(descs) + 64
    _room_for_fds(need)
    try:
        for d in descs:
            k = KINDS.get(d["kind"])
            if k is None or k.open is None:
                raise ImageCorrupt(f"fd {d['fd']} of {d['pid']}: unknown kind {d['kind']!r}")
            if d.get("late") or d["kind"] == "unix":
                continue  # opened once its process exists (restore_fds; a unix socket:
                # engine/sockets.py makes it then, from the process that made it)
            try:
                fd = k.open(d, o)
                high = fcntl.fcntl(fd, fcntl.F_DUPFD, opened.base)
            except OSError as err:
                if err.errno != errno.EMFILE:
                    raise
                raise CryoError(f"the image's processes hold {len(descs)} open file"
                                f" descriptions and fds up to {top}: cryo needs about"
                                f" {need} fds to make them, and its limit is"
                                f" {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} (the"
                                " hard RLIMIT_NOFILE: ulimit -Hn)") from err  # fmt: skip
            if fd not in (0, 1, 2) or k is not _STDIO:
                os.close(fd)
            opened.fds[d["id"]] = high
        for r, w in o.pipes.values():
            os.close(r)
            os.close(w)
        if any(d.get("late") or d["kind"] == "unix" for d in descs):
            me = os.pidfd_open(os.getpid())
            opened.me = fcntl.fcntl(me, fcntl.F_DUPFD, opened.base)
            os.close(me)
            opened.anchors.append(opened.me)
    except BaseException:
        opened.close()
        raise
    return opened


def prepare(rs: Any) -> None:
    """Driver hook, before any process exists: every description opened once by cryo,
    inherited by every process of the restart."""
    plan = rs.plan
    rs.shared.descs = plan.descs
    ghosts.prepare(plan.descs, rs.image, lambda p: _translate(p, rs.options), rs.on_exit)
    owner = rs.options.get("owner")
    ghosts.make_nodes(plan.descs, [r[KIND] for r in plan.procs.values()],
                      lambda p: _translate(p, rs.options), owner is None or owner.root,
                      rs.on_exit)  # fmt: skip
    from cryo.engine.drivers import APPX, HSPF  # (not appchannel, hsperf: lazy)

    put_back = frozenset(f["path"] for kind in (APPX, HSPF) for r in rs.image.raw(kind)
                         for f in r.get("files", ()))  # fmt: skip
    try:
        rs.shared.opened = opened = open_all(plan.descs, plan.blobs,
                                             [r[KIND] for r in plan.procs.values()],
                                             rs.options, rs.shared.keep, put_back)  # fmt: skip
    finally:
        ghosts.unlink_names(plan.descs)  # (kept for O_NOFOLLOW opens)
    rs.on_exit(opened.close)


def _translate(path: str, options: dict[str, Any]) -> str:
    return translated(options, path)  # one translation for every path (engine/translate.py)


def _open_flags(d: dict[str, Any]) -> int:
    """The flags to open a description with; O_ASYNC is set afterwards with F_SETFL (an
    open() with O_ASYNC marks the file without registering it: no signal ever comes)."""
    flags = int(d["flags"]) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC | O_ASYNC)
    if flags & ghosts.O_TMPFILE_FLAG:  # a file made with O_TMPFILE, reopened: a file now
        flags &= ~os.O_TMPFILE
    return flags


def _open_pipe(d: dict[str, Any], o: Opening) -> int:
    flags = _open_flags(d)
    key = (d["dev"], d["ino"])
    if key not in o.pipes:
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, d.get("pipe_size", 65536))
        if d.get("packets"):  # a packet pipe's data (O_DIRECT): written back packet by packet
            fcntl.fcntl(w, fcntl.F_SETFL, O_DIRECT)
            at = 0
            for n in d["packets"]:
                os.write(w, d["data"][at : at + n])
                at += n
        elif d.get("data"):
            os.write(w, d["data"])
        o.pipes[key] = (r, w)
    end = o.pipes[key][0 if flags & O_ACCMODE == os.O_RDONLY else 1]
    if not flags & O_LARGEFILE and flags & O_ACCMODE != os.O_RDWR and end not in o.ends:
        # the description pipe2 made (the only one without O_LARGEFILE, which every open
        # forces: reopened, F_GETFL showed 0100000 more, exit 0): that end itself
        o.ends.add(end)
        fd = os.dup(end)
    else:  # (an open with O_DIRECT fails on a pipe: F_SETFL gives it, packet mode, below)
        fd = os.open(f"/proc/self/fd/{end}", flags & ~(O_NONBLOCK | O_DIRECT) | os.O_NONBLOCK)
    _set_flags(fd, flags)
    return fd


def _open_fifo(d: dict[str, Any], o: Opening) -> int:
    flags = _open_flags(d)
    path = _translate(d["path"], o.options)
    if flags & O_PATH and not d.get("deleted"):  # the FIFO's inode, neither end of it
        return os.open(path, flags)
    key = (d["dev"], d["ino"])
    if key not in o.pipes:
        anchor = ghosts.make_fifo(d, path) if d.get("deleted") else \
            os.open(path, os.O_RDWR | os.O_NONBLOCK)  # fmt: skip
        o.opened.anchors.append(anchor)
        if d.get("data") and not d.get("deleted") and (held := _queued(anchor)):
            # the FIFO lived on, kept open by a process outside: its bytes are still in it
            # (and what that process wrote since); written again, they would come twice
            log.info("FIFO %s holds %d bytes already: its data is not written again", path,
                     held)  # fmt: skip
        elif d.get("data"):
            if d.get("packets"):  # (O_DIRECT: packet by packet)
                fcntl.fcntl(anchor, fcntl.F_SETFL, O_DIRECT | os.O_NONBLOCK)
            at = 0
            for n in d.get("packets") or [len(d["data"])]:
                os.write(anchor, d["data"][at : at + n])
                at += n
            if "mtime_ns" in d:  # (a write to a FIFO sets its mtime: put it back)
                os.utime(anchor, ns=(d["atime_ns"], d["mtime_ns"]))
        o.pipes[key] = (os.dup(anchor), os.dup(anchor))
    if d.get("deleted"):  # every description of it opened through the one made
        path = f"/proc/self/fd/{o.pipes[key][0]}"
    fd = os.open(path, flags & ~O_DIRECT | os.O_NONBLOCK)  # (O_DIRECT: F_SETFL's)
    _set_flags(fd, flags)
    return fd


def _queued(fd: int) -> int:
    """The bytes waiting in the pipe or FIFO of ``fd`` (FIONREAD)."""
    buf = bytearray(4)
    fcntl.ioctl(fd, 0x541B, buf)  # FIONREAD
    return int.from_bytes(buf, "little")


def _open_path(d: dict[str, Any], o: Opening) -> int:
    """A file, directory or device, by its path (a deleted file recreated first)."""
    flags = _open_flags(d)
    path = _translate(d["path"], o.options)
    created = None
    if d.get("ns"):
        path = specialfds.find_ns(d)
    elif d.get("deleted") and (kept := ghosts.nofollow_path(d, flags)):
        path = kept  # (the inode checked below)
    elif d.get("deleted") and ghosts.open_path(d):
        path = str(ghosts.open_path(d))
    elif d.get("deleted"):
        path = created = _materialize({**d, "path": path}, o.blobs[d["blob"]])
    owner = o.options.get("owner")  # the image's owner (cryo.image.trust)
    own = ghosts.own_file(d) if d.get("deleted") else None
    try:
        if own is not None:  # the memfd itself, as memfd_create gave it
            fd = own
            _set_flags(fd, flags)
        elif owner is not None and not owner.root and not created and not d.get("ns"):
            from cryo.image import trust  # opened as the owner: what it may open, even if
            fd = trust.open_as_owner(owner, [(path, flags, 0)])[0]  # a link was swapped in
        else:
            fd = os.open(path, flags)
    except OSError as err:
        raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot reopen {path}: {err.strerror}",
                        resource=f"fd {d['fd']}", path=path) from err  # fmt: skip
    finally:
        if created:
            os.unlink(created)
    try:
        _same_object(d, fd, path)
    except BaseException:
        os.close(fd)
        raise
    if d["kind"] == "file" and not d.get("deleted") and not d.get("ns") and \
            d["path"] not in o.put_back:  # fmt: skip
        try:
            _same_file(d, fd, path, o.options)
        except BaseException:
            os.close(fd)
            raise
    if d["kind"] == "file" and not flags & O_PATH and not d.get("ns"):
        if not d.get("deleted"):
            try:
                changed.check_offset(d, fd, path, o.options)
            except BaseException:
                os.close(fd)
                raise
        os.lseek(fd, d["pos"], os.SEEK_SET)
    if d["kind"] == "dir" and d["pos"] and not flags & O_PATH and not d.get("deleted"):
        os.lseek(fd, d["pos"], os.SEEK_SET)  # a readdir in progress (the fs's own cookie)
    if d["flags"] & O_ASYNC and not flags & O_PATH:
        _set_flags(fd, int(d["flags"]))
    return fd


def _same_object(d: dict[str, Any], fd: int, path: str) -> None:
    """What was reopened by name is what the description was: a symbolic link is one
    still; a /proc file of a process outside the checkpoint is that same process's."""
    if d["kind"] == "link" and not stat.S_ISLNK(os.fstat(fd).st_mode):
        raise CryoError(f"fd {d['fd']} of {d['pid']}: {path} is no longer a symbolic link",
                        resource=f"fd {d['fd']}", path=path)  # fmt: skip
    if "start" in d and d["kind"] in ("file", "dir"):
        m = specialfds.PROC_PID.match(path)
        if m is not None:
            specialfds.same_process(d, int(m.group(1)), path)


def _set_flags(fd: int, flags: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_ACCMODE)


def _materialize(d: dict[str, Any], data: bytes) -> str:
    """Recreate the contents of a file deleted while open; returns a path to open."""
    path = str(d["path"])
    if not os.path.isdir(os.path.dirname(path)) or os.path.exists(path):
        import tempfile  # (not at the top: 3 ms of a checkpoint's start-up)

        path = os.path.join(tempfile.gettempdir(), f".cryo-deleted-{os.getpid()}-{d['id']}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(d["mode"]))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def restore_fds(ctx: RestoreContext, rec: dict[str, Any], opened: Opened) -> None:
    """Give the process its fds (inherited from cryo on high numbers, given in one batch
    of dup3 calls; a late one taken from cryo), register the hidden watches of its
    epolls, close the rest."""
    inj = ctx.inj
    descs: list[dict[str, Any]] = ctx.shared.descs
    wanted = {e["fd"]: e for e in rec["fds"]}
    late = []
    with inj.hold() as b:  # (with the next stop's calls: dup3 sets or clears close-on-exec too)
        for e in rec["fds"]:
            if "thread_of" in descs[e["desc"]]:
                continue  # a thread's pidfd: once the threads exist (specialfds.py)
            src = opened.fds.get(e["desc"])
            if src is None:
                late.append(e)
            else:
                b.call(SYS_DUP3, src, e["fd"], O_CLOEXEC if e["cloexec"] else 0,
                       what=f" dup3 {src} {e['fd']}")  # fmt: skip
    for e in late:  # pidfd_getfd from cryo, onto a temporary fd (the lowest free)
        src = _take_late(ctx, opened, descs[e["desc"]])
        if src == e["fd"]:
            inj(SYS.fcntl, e["fd"], F_SETFD, FD_CLOEXEC if e["cloexec"] else 0)
            continue
        inj(SYS_DUP3, src, e["fd"], O_CLOEXEC if e["cloexec"] else 0)
        inj(SYS.close, src)
    for d in descs:
        if d["kind"] == "epoll" and d.get("hidden") and d["pid"] == ctx.old_pid:
            _register_hidden(ctx, d, opened, descs, wanted)
    with inj.hold() as b:
        lo = 0
        for fd in sorted(wanted):
            if fd > lo:
                b.call(SYS.close_range, lo, fd - 1, 0)
            lo = fd + 1
        b.call(SYS.close_range, lo, 0xFFFFFFFF, 0)


SYS_PIDFD_GETFD = 438
SYS_DUP3 = 292
F_DUPFD_CLOEXEC = 1030
EPOLL_CTL_ADD = 1


def _take_late(ctx: RestoreContext, opened: Opened, d: dict[str, Any]) -> int:
    """A late description (engine/specialfds.py) in the process, on a free fd: opened in
    cryo the first time a process asks for it (every process exists by now)."""
    if d["id"] not in opened.late:
        opened.late[d["id"]] = specialfds.open_late(d, ctx.pid_map)
    return int(ctx.inj(SYS_PIDFD_GETFD, opened.me, opened.late[d["id"]], 0,
                       what=f" pidfd_getfd of fd {d['fd']}"))  # fmt: skip


def _register_hidden(ctx: RestoreContext, d: dict[str, Any], opened: Opened,
                     descs: list[dict[str, Any]], wanted: dict[int, dict[str, Any]]
                     ) -> None:  # fmt: skip
    """The watches of an epoll whose fd was closed after it was added (the file held by
    another fd): added with that fd number on a temporary fd, as it was, then closed
    (or the file now at that number put back)."""
    inj = ctx.inj
    ep = opened.fds[d["id"]]  # the epoll as every process inherited it
    for tfd, events, data, index in d["hidden"]:
        src = opened.fds.get(index)
        took = src is None
        if src is None:
            src = _take_late(ctx, opened, descs[index])
        saved = inj(SYS.fcntl, tfd, F_DUPFD_CLOEXEC, opened.base) if tfd in wanted else None
        inj(SYS.dup2, src, tfd)
        ev = struct.pack("<IQ", events & 0xFFFFFFFF, data)
        inj(SYS.epoll_ctl, ep, EPOLL_CTL_ADD, tfd, inj.put(ev),
            what=f" epoll_ctl {d['fd']} add {tfd} (closed since)")  # fmt: skip
        if saved is not None:
            inj(SYS.dup2, saved, tfd)
            inj(SYS.close, saved)
            inj(SYS.fcntl, tfd, F_SETFD, FD_CLOEXEC if wanted[tfd]["cloexec"] else 0)
        else:
            inj(SYS.close, tfd)
        if took:
            inj(SYS.close, src)


def restore_fs(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    root, cwd = _translate(rec["root"], ctx.options), _translate(rec["cwd"], ctx.options)
    # the cwd first: its path is as seen from our root (/proc/PID/cwd), not from the
    # process's; chroot() leaves the cwd where it is
    cwd = ghosts.cwd_path(rec) or cwd  # a deleted one: made again (ghosts.make_nodes)
    with inj.hold(room=len(cwd.encode(errors="surrogateescape")) + len(root.encode(
            errors="surrogateescape")) + 32) as b:  # (with the next stop's calls)  # fmt: skip
        b.call(SYS.chdir, b.put_str(cwd), what=f" chdir {cwd}")
        if rec["root"] != "/":
            b.call(SYS.chroot, b.put_str(root), what=f" chroot {root}")
        b.call(SYS.umask, rec["umask"])


def describe(rec: dict[str, Any], descs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    first: dict[int, int] = {}
    for e in rec["fds"]:
        d = descs[e["desc"]]
        item = {"fd": e["fd"], "kind": d["kind"], "path": d["path"], "pos": d["pos"],
                "flags": f"{d['flags']:#o}", "desc": e["desc"]}  # fmt: skip
        if e["desc"] in first:
            item["same_as"] = first[e["desc"]]
        else:
            first[e["desc"]] = e["fd"]
        if d.get("deleted"):
            item["deleted"] = True
        if d.get("data"):
            item["in_flight"] = len(d["data"])
        item.update(locks.describe(d))
        item.update(ghosts.show(d))
        item.update(fsnotify.show(d))
        item.update(specialfds.show(d))
        item.update(sockets.show(d))
        if d.get("hidden"):
            item["hidden_watches"] = [f"fd {w[0]} (closed since): {descs[w[3]]['path']}"
                                      for w in d["hidden"]]  # fmt: skip
        out.append(item)
    return out


# -- the fd kinds ----------------------------------------------------------------------

def _is_agent(listening: bool) -> Callable[[Found], bool]:
    def match(f: Found) -> bool:
        if not _is_socket(f):
            return False
        known = f.sockets.get(f.st.st_ino) if f.sockets is not None else None
        if known is not None and not (known[0] == AF_UNIX
                                      and known[1].startswith(AGENT_NAME)):  # fmt: skip
            return False  # (no socket to duplicate and ask)
        key = (f.pid, f.fd, f.st.st_ino)  # (asked once per socket for both kinds)
        if key not in _AGENTS:
            if len(_AGENTS) > 100_000:
                _AGENTS.clear()
            _AGENTS[key] = appchannel.agent_socket(f.pid, f.fd)
        found = _AGENTS[key]
        return found is not None and found[1] == listening

    return match


_AGENTS: dict[tuple[int, int, int], tuple[bytes, bool] | None] = {}


# Character devices reopened by name (kind "chr"): those whose open file holds nothing
# of its own but its offset and flags (CRIU alike takes the memory devices and refuses
# the rest).  Any other keeps state no interface reads back: a tap interface attached
# with TUNSETIFF, a FUSE connection, a PM QoS request written to /dev/cpu_dma_latency, a
# grab of an input device; reopened, each came back detached or empty, exit 0 (found by
# probing).  Memory devices (null, zero, full, random, urandom, mem, port, kmsg for
# writing: /dev/kmsg read keeps a record sequence number that cannot be read back),
# misc devices whose fd only makes others (kvm, loop-control, device-mapper and btrfs
# control, hwrng), the CPU msr and cpuid devices (read at an offset).
MEM_MAJOR, MISC_MAJOR, KMSG_MINOR = 1, 10, 11
_STATELESS_MISC = {183, 232, 234, 236, 237}  # hwrng, kvm, btrfs-control, mapper, loop
_STATELESS_MAJOR = {202, 203}  # /dev/cpu/N/msr, /dev/cpu/N/cpuid


def _stateful_chr(f: Found) -> str | None:
    """Why the character device of ``f`` cannot be reopened by name, or None."""
    if f.fmt != stat.S_IFCHR:
        return None
    major, minor = os.major(f.st.st_rdev), os.minor(f.st.st_rdev)
    if major == MEM_MAJOR:
        if minor != KMSG_MINOR or \
                procfs.parse_fdinfo(_fdinfo(f)).flags & O_ACCMODE == os.O_WRONLY:  # fmt: skip
            return None
        return f"{f.target} open for reading (its read position, a record sequence" \
            " number, cannot be read back)"  # fmt: skip
    if (major == MISC_MAJOR and minor in _STATELESS_MISC) or major in _STATELESS_MAJOR:
        return None
    return f"character device {f.target} ({major}:{minor}) is not supported (what its open" \
        " file holds, such as a tun interface, a FUSE connection or a PM QoS request," \
        " cannot be read back)"  # fmt: skip


def _describe_node(f: Found, _info: procfs.FdInfo, _descs: Descriptions) -> dict[str, Any]:
    return ghosts.describe_node(f.pid, f.fd, f.target, f.st)  # deleted: made again


def _describe_agent(f: Found, _info: procfs.FdInfo, _descs: Descriptions) -> dict[str, Any]:
    return appchannel.describe_socket(f.pid, f.fd)


_ANON = [FdKind(name, _anon(name), _describe_anon, lambda d, o: anonfds.open_desc(d, o.options))
         for name in anonfds.KINDS.values()]  # fmt: skip

# In the order the dump tries them; the first that matches is the fd's kind.
FD_KINDS: tuple[FdKind, ...] = (
    FdKind("special-fs", lambda f: _special_fs(f) is not None,
           refuse=lambda f: f"{_special_fs(f)} {f.target} is not supported"),
    FdKind("deleted", lambda f: ghosts.refuse_special(f.target, f.fmt) is not None,
           refuse=lambda f: str(ghosts.refuse_special(f.target, f.fmt))),
    FdKind("file", lambda f: f.fmt == stat.S_IFREG, _describe_file, _open_path),
    # an O_PATH|O_NOFOLLOW fd on a symbolic link: reopened so (the restart's path check,
    # engine/translate.py, would follow it: _same_object checks it is a link still)
    FdKind("link", lambda f: f.fmt == stat.S_IFLNK, open=_open_path),
    FdKind("dir", lambda f: f.fmt == stat.S_IFDIR, _describe_node, _open_path),
    FdKind("pty", _is_pty, _describe_pty, _open_pty),
    FdKind("tty", _is_tty, refuse=lambda f: f"terminal {f.target}; use --shell-job to hand"
           " the restored process the caller's terminal"),
    FdKind("chrdev", lambda f: _stateful_chr(f) is not None,
           refuse=lambda f: str(_stateful_chr(f))),
    FdKind("chr", lambda f: f.fmt == stat.S_IFCHR, _describe_node, _open_path),
    FdKind("pipe", lambda f: f.target.startswith("pipe:"), open=_open_pipe, in_flight=True),
    # the two sockets of a cryo.app agent, before every other unix socket
    FdKind("app_listen", _is_agent(listening=True), _describe_agent,
           lambda d, _o: appchannel.open_listener(d)),
    FdKind("app_conn", _is_agent(listening=False), _describe_agent,
           lambda d, o: appchannel.open_connection(d, o.keep)),
    FdKind("unix", _is_family(AF_UNIX), _describe_unix, _open_unix),
    FdKind("inet", lambda f: _is_socket(f) and _is_family(*inet.FAMILIES)(f), _describe_inet,
           _open_inet),  # (inet's families read from a socket on: it is imported then)
    FdKind("socket", _is_socket, refuse=lambda f: f"{_socket_kind(f.pid, f.st.st_ino)} socket"
           f" is not supported ({f.target})"),
    *_ANON,
    FdKind("pidfd", lambda f: f.target == specialfds.PIDFD,
           lambda f, _i, _d: specialfds.describe_pidfd(f.pid, f.fd, _fdinfo(f)),
           lambda d, _o: specialfds.open_pidfd(d)),
    FdKind("inotify", lambda f: f.target == fsnotify.INOTIFY,
           lambda f, _i, _d: fsnotify.describe_inotify(f.pid, f.fd, _fdinfo(f)),
           lambda d, o: fsnotify.open_inotify(d, lambda p: _translate(p, o.options), o)),
    FdKind("fanotify", lambda f: f.target == fsnotify.FANOTIFY,
           lambda f, _i, _d: fsnotify.describe_fanotify(f.pid, f.fd, _fdinfo(f)),
           lambda d, o: fsnotify.open_fanotify(d, lambda p: _translate(p, o.options), o)),
    FdKind("anon_inode", lambda f: f.target.startswith("anon_inode:"),
           refuse=lambda f: f"anonymous inode is not supported ({f.target})"),
    FdKind("fifo", lambda f: f.fmt == stat.S_IFIFO, lambda f, _i, d: {
        "atime_ns": f.st.st_atime_ns, "mtime_ns": f.st.st_mtime_ns, "uid": f.st.st_uid,
        "gid": f.st.st_gid, **ghosts.describe_fifo(f.target, d.blobs)}, _open_fifo,
        in_flight=True),
    FdKind("other", lambda _f: True, refuse=lambda f: f"special file is not supported"
           f" ({f.target})"),
)
# a /proc file of a process of the checkpoint (a "file" or "dir" at dump, made late by
# specialfds.check_proc): opened once that process exists
_PROC = FdKind("proc", lambda _f: False, open=lambda d, _o: -1)
# a shell job's stdio (fds 0-2 on a terminal, pipe, socket or deleted file) belongs to
# whoever restarts it: given the restarter's own
_STDIO = FdKind("stdio", lambda f: f.fd <= 2 and (
    _is_tty(f) or f.target.startswith(("pipe:", "socket:"))
    or (f.fmt == stat.S_IFREG and f.st.st_nlink == 0)), open=lambda d, _o: int(d["fd"]))
# any other fd of a shell job on its controlling terminal (/dev/tty, as less and top open
# it): opened again on the restarter's terminal (engine/tty.py)
_CTTY = FdKind("ctty", lambda f: tty.on_job_terminal(f.pid, f.fmt, f.st.st_rdev),
               open=lambda d, _o: tty.open_job_terminal(d))
KINDS = {k.name: k for k in (*FD_KINDS, _STDIO, _CTTY, _PROC)}
_INET_KIND = KINDS["inet"]


_INET_KNOWN = (AF_INET, AF_INET6)  # the families the socket table knows


def _inner_terminal(pid: int, f: Found, ctx: DumpContext) -> bool:
    """A shell job's fd on the controlling terminal of a session inside the checkpoint
    (bash under script(1), on script's own pty): that terminal is not the job's, which
    --shell-job hands over; found by probing: the restart gave bash the caller's
    terminal, and script relayed nothing."""
    with open(f"/proc/{pid}/stat", "rb") as st:
        fields = st.read().rsplit(b")", 1)[1].split()
    sid, tty_nr = int(fields[3]), int(fields[4])
    return tty_nr != 0 and f.st.st_rdev in (tty_nr, os.makedev(5, 0)) and \
        ctx.shared is not None and sid in ctx.shared.procs  # fmt: skip


def kind_of(f: Found, shell_job: bool) -> FdKind:
    if shell_job:
        for k in (_STDIO, _CTTY):
            if k.match(f):
                return k
    elif f.sockets is not None and stat.S_ISSOCK(f.st.st_mode):
        # a TCP or UDP socket the namespace's table knows: every kind before "inet"
        # asks for another file type, another link, or (agents, unix) another family
        known = f.sockets.get(f.st.st_ino)
        if known is not None and known[0] in _INET_KNOWN and _is_socket(f):
            return _INET_KIND
    return next(k for k in FD_KINDS if k.match(f))
