"""Files: open file descriptions (regular files, directories, character devices, pipes
and FIFOs with the data in flight, files deleted while open), each process's fd table,
cwd, root and umask.

Dump: every fd of every process is matched against the descriptions seen so far
(kcmp): a description shared by several fds or processes (dup, fork) is saved once, as
an entry of the FDSC record; each process's FILE record maps its fds to descriptions.

Restore: cryo itself opens every description once, on fds above any the image uses,
before the first process is created, so that every process of the tree inherits them;
each process then dup2()s the ones it had to their numbers and closes the rest.  Shared
descriptions are thus shared again: one offset, one set of flags, one pipe.  With
--shell-job, fds 0-2 that are a terminal, a pipe, a socket or an unlinked file are given
the restarter's own stdio.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any

from cryo import procfs
from cryo.engine import anonfds, dirty, sockets
from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError, Unsupported
from cryo.linux import libc
from cryo.linux.consts import SYS

log = logging.getLogger(__name__)
KIND = b"FILE"
DESC_KIND = b"FDSC"
O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC = 0o100, 0o200, 0o400, 0o1000
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
F_SETFD = 2
FD_CLOEXEC = 1
MAX_DELETED = 1 << 30  # contents of a deleted file kept in the image, at most
MAX_PIPE = 1 << 24


def _kind_of(target: str, st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISCHR(st.st_mode):
        if target.startswith(("/dev/pts/", "/dev/tty")) or target == "/dev/console":
            return "tty"
        return "chr"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("anon_inode:"):
        return "anon_inode"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    return "other"


_WHAT = {"anon_inode": "anonymous inode", "other": "special file"}


@dataclass
class Descriptions:
    """Open file descriptions of the whole checkpoint, each saved once."""

    descs: list[dict[str, Any]] = field(default_factory=list)
    seen: list[tuple[int, int]] = field(default_factory=list)  # (pid, fd) of each desc
    blobs: list[bytes] = field(default_factory=list)  # FDAT records
    unix: dict[int, dict[str, Any]] | None = None  # sock_diag's view, asked once

    def find(self, pid: int, fd: int, kind: str, st: os.stat_result) -> int | None:
        for i, d in enumerate(self.descs):
            if d["kind"] == kind and d["ino"] == st.st_ino and d["dev"] == st.st_dev:
                p0, fd0 = self.seen[i]
                if libc.kcmp_file(p0, fd0, pid, fd):
                    return i
        return None


def dump(ctx: DumpContext, descs: Descriptions) -> dict[str, Any]:
    pid = ctx.pid
    shell_job = bool(ctx.options.get("shell_job"))
    table: list[dict[str, Any]] = []
    try:
        names = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as err:
        raise CryoError(f"process {pid} vanished", pid=pid) from err
    for fd in names:
        target = procfs.readlink(pid, f"fd/{fd}")
        if dirty.is_ours(fd, target):
            continue  # the write tracking cryo armed (engine/dirty.py): not the program's
        info = procfs.parse_fdinfo(procfs.read(pid, f"fdinfo/{fd}"))
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        kind = _kind_of(target, st)
        if shell_job and fd <= 2 and (kind in ("tty", "pipe", "socket")
                                      or (kind == "file" and st.st_nlink == 0)):
            kind = "stdio"  # a shell job's stdio belongs to whoever restarts it
        elif kind == "socket":
            what = _socket_kind(pid, st.st_ino)
            if what != "UNIX":
                raise Unsupported(f"fd {fd}: {what} socket is not supported ({target})",
                                  pid=pid, resource=f"fd {fd}")  # fmt: skip
            kind = "unix"
        elif kind == "anon_inode" and anonfds.kind_of(target):
            kind = anonfds.kind_of(target) or kind
        elif kind in _WHAT:
            raise Unsupported(f"fd {fd}: {_WHAT[kind]} is not supported ({target})",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        elif kind == "tty":
            raise Unsupported(f"fd {fd}: terminal {target}; use --shell-job to hand the"
                              " restored process the caller's terminal",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        index = descs.find(pid, fd, kind, st)
        if index is None:
            index = len(descs.descs)
            descs.descs.append(_describe(pid, fd, kind, target, info, st, descs))
            descs.seen.append((pid, fd))
        table.append({"fd": fd, "desc": index, "cloexec": bool(info.flags & O_CLOEXEC)})
    status = procfs.parse_status(procfs.read(pid, "status"))
    return {
        "pid": pid,
        "fds": table,
        "cwd": procfs.readlink(pid, "cwd"),
        "root": procfs.readlink(pid, "root"),
        "umask": int(status.get("Umask", "0022"), 8),
    }


def _describe(pid: int, fd: int, kind: str, target: str, info: procfs.FdInfo,
              st: os.stat_result, descs: Descriptions) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": len(descs.descs), "kind": kind, "path": target, "pos": info.pos,
        "flags": info.flags & ~O_CLOEXEC, "ino": st.st_ino, "dev": st.st_dev,
        "mode": st.st_mode, "size": st.st_size, "fd": fd, "pid": pid,
    }  # fmt: skip
    if kind in anonfds.KINDS.values():
        d.update(anonfds.describe(kind, procfs.read(pid, f"fdinfo/{fd}"), pid, fd))
    if kind == "unix":
        if descs.unix is None:
            descs.unix = sockets.unix_sockets()
        d.update(sockets.describe(pid, fd, st.st_ino, descs.unix))
    if kind == "file" and st.st_nlink == 0:
        if st.st_size > MAX_DELETED:
            raise Unsupported(f"fd {fd}: deleted file {target} is larger than 1 GiB",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
            d["blob"] = len(descs.blobs)
            descs.blobs.append(f.read())
        d["path"] = target.removesuffix(" (deleted)")
        d["deleted"] = True
    return d


def check_shared_tables(pids: list[int]) -> list[str]:
    """Separate processes sharing one fd table (clone with CLONE_FILES but not a thread)
    cannot be restored that way yet: refuse, rather than split the table silently.  A
    shared fs_struct (CLONE_FS: cwd, root, umask) is restored as copies: a warning."""
    warnings = []
    for i, a in enumerate(pids):
        for b in pids[i + 1 :]:
            if libc.kcmp_same(libc.KCMP_FILES, a, b):
                raise Unsupported(f"processes {a} and {b} share one fd table (CLONE_FILES),"
                                  " which is not supported yet", pid=b,
                                  resource="fd table")  # fmt: skip
            if libc.kcmp_same(libc.KCMP_FS, a, b):
                warnings.append(f"processes {a} and {b} share cwd/root/umask (CLONE_FS);"
                                " they are restored as copies")  # fmt: skip
    return warnings


def dump_pipes(descs: Descriptions, shell_job: bool) -> None:
    """Copy, without consuming it, the data waiting in each pipe and FIFO (tee)."""
    done: set[tuple[int, int]] = set()
    for d in descs.descs:
        if d["kind"] not in ("pipe", "fifo") or (d["dev"], d["ino"]) in done:
            continue
        done.add((d["dev"], d["ino"]))
        readers = [e for e in descs.descs if (e["dev"], e["ino"]) == (d["dev"], d["ino"])
                   and e["flags"] & O_ACCMODE in (os.O_RDONLY, os.O_RDWR)]  # fmt: skip
        if not readers:
            if d["kind"] == "pipe":
                raise Unsupported(f"fd {d['fd']} of {d['pid']}: the read end of {d['path']} is"
                                  " outside the checkpoint", pid=d["pid"],
                                  resource=f"fd {d['fd']}")  # fmt: skip
            continue
        r = readers[0]
        pidfd = libc.pidfd_open(r["pid"])
        try:
            mine = libc.pidfd_getfd(pidfd, r["fd"])
        finally:
            os.close(pidfd)
        try:
            size = fcntl.fcntl(mine, fcntl.F_GETPIPE_SZ)
            d_data = _peek(mine, size)
        finally:
            os.close(mine)
        for e in descs.descs:
            if (e["dev"], e["ino"]) == (d["dev"], d["ino"]):
                e["pipe_size"] = size
        d["data"] = d_data
        log.debug("pipe %s: %d bytes in flight", d["path"], len(d_data))


def _peek(fd: int, size: int) -> bytes:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, max(size, 4096))
        try:
            n = libc.tee(fd, w, size)
        except BlockingIOError:
            return b""  # nothing in the pipe
        out = b""
        while len(out) < n:
            out += os.read(r, n - len(out))
        return out
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

    def close(self) -> None:
        for fd in [*self.fds.values(), *self.anchors]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.anchors.clear()


def open_all(descs: list[dict[str, Any]], blobs: list[bytes], tables: list[dict[str, Any]],
             options: dict[str, Any]) -> Opened:  # fmt: skip
    """Open every description in cryo, on fds above every fd number the image uses."""
    top = max([e["fd"] for t in tables for e in t["fds"]] + [2])
    opened = Opened(base=max(top + 1, 10))
    pipes: dict[tuple[int, int], tuple[int, int]] = {}
    by_ino = {d["ino"]: d for d in descs if d["kind"] == "unix"}
    pairs: dict[int, int] = {}
    try:
        for d in descs:
            if d["kind"] == "unix":
                fd = sockets.open_pair(d, by_ino.get(d["peer"]), pairs)
                _set_flags(fd, d["flags"])
            else:
                fd = _open_one(d, blobs, options, pipes, opened)
            high = fcntl.fcntl(fd, fcntl.F_DUPFD, opened.base)
            if fd not in (0, 1, 2) or d["kind"] != "stdio":
                os.close(fd)
            opened.fds[d["id"]] = high
        for r, w in pipes.values():
            os.close(r)
            os.close(w)
    except BaseException:
        opened.close()
        raise
    return opened


def _translate(path: str, options: dict[str, Any]) -> str:
    table: dict[str, str] = options.get("translate") or {}
    for prefix, new in table.items():
        old = prefix.rstrip("/")
        if path == old or path.startswith(old + "/"):
            return new + path[len(old) :]
    return path


def _open_one(d: dict[str, Any], blobs: list[bytes], options: dict[str, Any],
              pipes: dict[tuple[int, int], tuple[int, int]], opened: Opened) -> int:  # fmt: skip
    kind = d["kind"]
    flags = d["flags"] & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC)
    if kind == "stdio":
        return int(d["fd"])  # our own stdio, dup'ed up by the caller
    if kind in anonfds.KINDS.values():
        return anonfds.open_desc(d)
    if kind == "pipe":
        key = (d["dev"], d["ino"])
        if key not in pipes:
            r, w = os.pipe()
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, d.get("pipe_size", 65536))
            if d.get("data"):
                os.write(w, d["data"])
            pipes[key] = (r, w)
        end = pipes[key][0 if flags & O_ACCMODE == os.O_RDONLY else 1]
        fd = os.open(f"/proc/self/fd/{end}", flags & ~O_NONBLOCK | os.O_NONBLOCK)
        _set_flags(fd, flags)
        return fd
    path = _translate(d["path"], options)
    if kind == "fifo":
        key = (d["dev"], d["ino"])
        if key not in pipes:
            anchor = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            opened.anchors.append(anchor)
            if d.get("data"):
                os.write(anchor, d["data"])
            pipes[key] = (os.dup(anchor), os.dup(anchor))
        fd = os.open(path, flags | os.O_NONBLOCK)
        _set_flags(fd, flags)
        return fd
    created = None
    if d.get("deleted"):
        path = created = _materialize(d, blobs[d["blob"]])
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot reopen {path}: {err.strerror}",
                        resource=f"fd {d['fd']}", path=path) from err  # fmt: skip
    finally:
        if created:
            os.unlink(created)
    if kind == "file" and not flags & O_PATH:
        os.lseek(fd, d["pos"], os.SEEK_SET)
    return fd


def _set_flags(fd: int, flags: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_ACCMODE)


def _materialize(d: dict[str, Any], data: bytes) -> str:
    """Recreate the contents of a file deleted while open; returns a path to open."""
    path = str(d["path"])
    if not os.path.isdir(os.path.dirname(path)) or os.path.exists(path):
        path = os.path.join(tempfile.gettempdir(), f".cryo-deleted-{os.getpid()}-{d['id']}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(d["mode"]))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def restore_fds(ctx: RestoreContext, rec: dict[str, Any], opened: Opened) -> None:
    """Give the process its fds (inherited from cryo on high numbers), close the rest."""
    inj = ctx.inj
    wanted = {e["fd"] for e in rec["fds"]}
    for e in rec["fds"]:
        inj(SYS.dup2, opened.fds[e["desc"]], e["fd"])
        inj(SYS.fcntl, e["fd"], F_SETFD, FD_CLOEXEC if e["cloexec"] else 0)
    lo = 0
    for fd in sorted(wanted):
        if fd > lo:
            inj(SYS.close_range, lo, fd - 1, 0)
        lo = fd + 1
    inj(SYS.close_range, lo, 0xFFFFFFFF, 0)


def restore_fs(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    if rec["root"] != "/":
        inj(SYS.chroot, inj.put_str(rec["root"]), what=f" chroot {rec['root']}")
    inj(SYS.chdir, inj.put_str(rec["cwd"]), what=f" chdir {rec['cwd']}")
    inj(SYS.umask, rec["umask"])


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
        out.append(item)
    return out
