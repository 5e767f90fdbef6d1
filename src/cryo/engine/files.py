"""Files: the fd table (regular files, directories, character devices, files deleted
while open), shared open file descriptions, cwd, root and umask.

An open file description shared by several fds is opened once and dup'ed, so the fds
keep sharing one offset.  With --shell-job, fds 0-2 that are a terminal, a pipe, a socket
or an unlinked file are given the caller's stdio instead.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError, Unsupported
from cryo.linux import libc
from cryo.linux.consts import SYS

KIND = b"FILE"
O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC = 0o100, 0o200, 0o400, 0o1000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
F_SETFD, F_SETFL = 2, 4
FD_CLOEXEC = 1
MAX_DELETED = 1 << 30  # contents of a deleted file kept in the image, at most


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


_WHAT = {
    "pipe": "pipe", "socket": "socket", "anon_inode": "anonymous inode", "fifo": "FIFO",
    "other": "special file",
}  # fmt: skip


def dump(ctx: DumpContext) -> dict[str, Any]:
    pid = ctx.pid
    shell_job = bool(ctx.options.get("shell_job"))
    fds: list[dict[str, Any]] = []
    try:
        names = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as err:
        raise CryoError(f"process {pid} vanished", pid=pid) from err
    for fd in names:
        target = procfs.readlink(pid, f"fd/{fd}")
        info = procfs.parse_fdinfo(procfs.read(pid, f"fdinfo/{fd}"))
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        kind = _kind_of(target, st)
        ent: dict[str, Any] = {
            "fd": fd, "kind": kind, "path": target, "pos": info.pos, "flags": info.flags,
            "cloexec": bool(info.flags & O_CLOEXEC), "ino": st.st_ino, "dev": st.st_dev,
            "mode": st.st_mode, "size": st.st_size,
        }  # fmt: skip
        if shell_job and fd <= 2 and (kind in ("tty", "pipe", "socket")
                                      or (kind == "file" and st.st_nlink == 0)):
            # a shell job's stdio belongs to whoever restarts it
            ent["kind"] = "stdio"
        elif kind in _WHAT:
            what = f"{_socket_kind(pid, st.st_ino)} socket" if kind == "socket" else _WHAT[kind]
            raise Unsupported(f"fd {fd}: {what} is not supported ({target})",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        elif kind == "tty":
            raise Unsupported(f"fd {fd}: terminal {target}; use --shell-job to hand the"
                              " restored process the caller's terminal",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        elif kind == "file" and st.st_nlink == 0:
            if st.st_size > MAX_DELETED:
                raise Unsupported(f"fd {fd}: deleted file {target} is larger than 1 GiB",
                                  pid=pid, resource=f"fd {fd}")  # fmt: skip
            with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                ent["blob"] = len(ctx.blobs)
                ctx.blobs.append(f.read())
            ent["path"] = target.removesuffix(" (deleted)")
            ent["deleted"] = True
        # fds sharing one open file description with an earlier fd
        for prev in fds:
            if prev["kind"] == ent["kind"] and prev["ino"] == ent["ino"] \
                    and libc.kcmp_file(pid, prev["fd"], pid, fd):  # fmt: skip
                ent["same_as"] = prev.get("same_as", prev["fd"])
                break
        fds.append(ent)
    status = procfs.parse_status(procfs.read(pid, "status"))
    return {
        "pid": pid,
        "fds": fds,
        "cwd": procfs.readlink(pid, "cwd"),
        "root": procfs.readlink(pid, "root"),
        "umask": int(status.get("Umask", "0022"), 8),
    }


def _socket_kind(pid: int, ino: int) -> str:
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix", "raw", "netlink"):
        try:
            with open(f"/proc/{pid}/net/{proto}") as f:
                if any(f" {ino} " in line or line.endswith(f" {ino}") for line in f):
                    return {"tcp6": "TCP", "udp6": "UDP"}.get(proto, proto.upper())
        except OSError:
            continue
    return "a"


def restore_fs(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    if rec["root"] != "/":
        inj(SYS.chroot, inj.put_str(rec["root"]), what=f" chroot {rec['root']}")
    inj(SYS.chdir, inj.put_str(rec["cwd"]), what=f" chdir {rec['cwd']}")
    inj(SYS.umask, rec["umask"])


def stash_stdio(ctx: RestoreContext) -> None:
    """Keep the caller's stdio (inherited by the restore helper) on high fds."""
    for fd in (0, 1, 2):
        ctx.stdio[fd] = ctx.inj(SYS.fcntl, fd, 1030, 1000 + fd)  # F_DUPFD_CLOEXEC


def _materialize_deleted(ctx: RestoreContext, ent: dict[str, Any]) -> str:
    """Recreate the contents of a file deleted while open; returns a path to open."""
    data = ctx.image.raw(b"FDAT")[ent["blob"]]
    path = str(ent["path"])
    if not os.path.isdir(os.path.dirname(path)) or os.path.exists(path):
        path = os.path.join(tempfile.gettempdir(), f".cryo-deleted-{ctx.pid}-{ent['fd']}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(ent["mode"]))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def restore_fds(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    keep = set(ctx.stdio.values())
    # close everything the helper inherited, except the stash
    for lo, hi in _ranges_without(keep):
        inj(SYS.close_range, lo, hi, 0)
    wanted = {e["fd"] for e in rec["fds"]}
    for ent in rec["fds"]:
        fd = ent["fd"]
        if "same_as" in ent:
            src = ent["same_as"]
        elif ent["kind"] == "stdio":
            src = ctx.stdio[fd]
        else:
            src = _open(ctx, ent)
        if src != fd:
            if fd in keep:  # move our stash out of the way first
                raise CryoError(f"fd {fd} collides with the restore's own stdio copy")
            inj(SYS.dup2, src, fd)
            if "same_as" not in ent and ent["kind"] != "stdio":
                inj(SYS.close, src)
        inj(SYS.fcntl, fd, F_SETFD, FD_CLOEXEC if ent["cloexec"] else 0)
    for fd in keep:
        inj(SYS.close, fd)
    for fd in (0, 1, 2):
        if fd not in wanted:
            inj.raw(SYS.close, fd)


def _ranges_without(keep: set[int]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for k in sorted(keep):
        if k > lo:
            out.append((lo, k - 1))
        lo = k + 1
    out.append((lo, 0xFFFFFFFF))
    return out


def _open(ctx: RestoreContext, ent: dict[str, Any]) -> int:
    inj = ctx.inj
    path = ent["path"]
    created = None
    if ent.get("deleted"):
        path = created = _materialize_deleted(ctx, ent)
    flags = ent["flags"] & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC)
    translate = ctx.options.get("translate") or {}
    for old, new in translate.items():
        if path == old or path.startswith(old.rstrip("/") + "/"):
            path = new + path[len(old.rstrip("/")) :] if path != old else new
    try:
        newfd = inj(SYS.openat, -100, inj.put_str(path), flags, 0, what=f" open {path}")
    except OSError as err:
        raise CryoError(f"fd {ent['fd']}: cannot reopen {path}: {err.strerror}",
                        resource=f"fd {ent['fd']}", path=path) from err  # fmt: skip
    finally:
        if created:
            os.unlink(created)
    if ent["kind"] == "file" and not flags & O_PATH:
        inj(SYS.lseek, newfd, ent["pos"], 0)
    return newfd


def describe(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"fd": e["fd"], "kind": e["kind"], "path": e["path"], "pos": e["pos"],
         "flags": f"{e['flags']:#o}", **({"same_as": e["same_as"]} if "same_as" in e else {}),
         **({"deleted": True} if e.get("deleted") else {})}
        for e in rec["fds"]
    ]  # fmt: skip
