"""Files deleted while open ("ghost" files): one file however many descriptions or
processes have it open, with its holes, owner, mode and times.

Dump: the first description of a deleted inode (matched by device and inode) saves its
contents once, into a side file of the image ``ghost-ID``: only the data ranges
(SEEK_DATA/SEEK_HOLE; any error but ENXIO, "no more data", fails the checkpoint rather
than truncating the file), copied in blocks of 1 MiB, so that a file of any size is
never held in memory.  Its FDSC entry keeps the ranges (``extents``), the side file
(``ghost``), ``uid``, ``gid``, ``atime_ns`` and ``mtime_ns``; every other description
of the inode names the same ``ghost``.  (Its ``blob`` names an empty FDAT record, for
readers of the older form, where the blob held the whole contents.)

Restore: before the descriptions are opened, each ghost is made once: created under its
old name when that is free (else in the temporary directory), the size set, each range
written back at its offset (the holes stay holes), then owner, mode and times set, and
an anchor fd opened on it before it is unlinked again; every description of it is then
opened through /proc/self/fd/ANCHOR: one inode, shared again by construction.  Its user
extended attributes and POSIX ACLs are saved and set again (any other xattr is refused
at checkpoint), and its inode flags that chattr sets (S, i, a, d, A: FS_IOC_GETFLAGS),
once every description is open (an append-only file cannot be opened for writing without
O_APPEND); the other flags a user may set (c, j, C, ...) are refused.  A file made with
open(DIR, O_TMPFILE) (its flags keep __O_TMPFILE) is made again so, in its directory,
and is its first description itself: linkat can still give it a name, as before (a
file created and unlinked cannot be linked again); one made with O_EXCL too, or linked
and unlinked since (its inode not I_LINKABLE: :func:`check_linkable`), with O_EXCL.

A memfd comes back as a memfd (memfd_create) of the same name, filled the same way,
then sealed with the seals it had (F_GET_SEALS at dump, F_ADD_SEALS last); a hugetlb
memfd (on hugetlbfs: its st_blksize is its huge page size) again with MFD_HUGETLB and
that page size, filled through a shared mapping (hugetlbfs has no write()).  Its first
read-write description is the memfd made itself (memfd_create's file, which does not
count as a writer of the inode: execveat of it works as it did); the others are
reopened through /proc/self/fd as any ghost.

A ghost that a process of the checkpoint also maps is saved as that mapping's shared
memory object instead (engine/shmem.py) and reopened from it: the fd and the mapping
share one file again.

A deleted FIFO is made again with mkfifo, opened and unlinked; its descriptions are
opened through that one.  A deleted directory (empty: rmdir removed it), a deleted
working directory and a deleted character device node are made again the same way
(:func:`make_nodes`: mkdir or mknod where they were if the name is free, else under a
temporary name beside it; owner, mode, times and the device number kept; an O_PATH
anchor opened, then rmdir or unlink, and the times of the directory they were made in
put back): the process sees an unlinked node again, one inode for its descriptions and
its cwd.  A device node only in an image of root's (image/trust.py: mknod makes any
device); a user's deleted directory only where the user may create one.

Refused by name at checkpoint (the kernel gives no way to recreate them unlinked and
shared): a file unlinked from the name it was opened by but still linked elsewhere,
deleted sockets (bind makes a new one; the old one's peers would not see it) and
deleted block devices.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from cryo.errors import CryoError, ImageCorrupt, Unsupported
from cryo.linux import libc
from cryo.procfs import DELETED

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MEMFD = "/memfd:"
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL = 0x1
MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB = 0x1, 0x2, 0x4
MFD_HUGE_SHIFT = 26
PAGE = 4096
O_NOATIME = 0o1000000
SEEK_DATA, SEEK_HOLE = 3, 4


def extents(fd: int, size: int, what: str = "") -> list[list[int]]:
    """The data ranges [offset, length] of the file open on ``fd`` up to ``size``."""
    out: list[list[int]] = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break  # no data after pos
            raise CryoError(f"{what}: cannot find its data (SEEK_DATA at {pos}):"
                            f" {err.strerror}") from err  # fmt: skip
        if data >= size:
            break
        try:
            hole = os.lseek(fd, data, SEEK_HOLE)
        except OSError as err:
            raise CryoError(f"{what}: cannot find its holes (SEEK_HOLE at {data}):"
                            f" {err.strerror}") from err  # fmt: skip
        end = min(hole, size)
        out.append([data, end - data])
        pos = end
    return out


def refuse_special(target: str, fmt: int) -> str | None:
    """Why a deleted fd that is not a regular file cannot be saved, or None (a FIFO, a
    directory and a character device are made again: :func:`describe_node`)."""
    if not target.endswith(DELETED) or fmt in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFDIR,
                                               stat.S_IFCHR):  # fmt: skip
        return None
    what = {stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device",
            stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}.get(fmt, "special file")
    return f"deleted {what} {target.removesuffix(DELETED)} is not supported"


def describe(pid: int, fd: int, target: str, st: os.stat_result,
             ghosts: dict[tuple[int, int], str], blobs: list[bytes], first_id: int
             ) -> dict[str, Any]:  # fmt: skip
    """The FDSC fields of a description of a deleted regular file."""
    name = target.removesuffix(DELETED)
    if st.st_nlink != 0:
        raise Unsupported(f"fd {fd}: {name} was unlinked but the file still has"
                          f" {st.st_nlink} other link(s); not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    key = (st.st_dev, st.st_ino)
    fields: dict[str, Any] = {"path": name, "deleted": True, "uid": st.st_uid,
                              "gid": st.st_gid, "atime_ns": st.st_atime_ns,
                              "mtime_ns": st.st_mtime_ns}  # fmt: skip
    if name.startswith(MEMFD):
        fields["memfd"] = {"name": name[len(MEMFD):], "seals": _seals(pid, fd)}
        if st.st_blksize > PAGE:  # on hugetlbfs (MFD_HUGETLB): its huge page size
            fields["hugetlb"] = st.st_blksize
    if key in ghosts:
        fields["ghost"] = ghosts[key]
        fields["blob"] = _empty(blobs)
        return fields
    ghosts[key] = fields["ghost"] = f"ghost-{first_id}"
    fields["blob"] = _empty(blobs)
    fields["source"] = [pid, fd]  # read at write time (dropped from the record then)
    attrs = _xattrs(pid, fd, name)
    if attrs:
        fields["xattrs"] = attrs
    iflags = _inode_flags(pid, fd, name)
    if iflags:
        fields["iflags"] = iflags
    return fields


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # linux/fs.h (an int, in fact)
# chattr's S, i, a, d, A (FS_SYNC_FL, IMMUTABLE, APPEND, NODUMP, NOATIME): made again
IFLAGS_KEPT = 0x8 | 0x10 | 0x20 | 0x40 | 0x80
# the other flags a user sets (s u c j t D T C P m x F: FS_SECRM_FL, UNRM, COMPR,
# JOURNAL_DATA, NOTAIL, DIRSYNC, TOPDIR, NOCOW, PROJINHERIT, NOCOMP, DAX, CASEFOLD):
# refused; the rest (extents, inline data, ...) are the filesystem's own
IFLAGS_REFUSED = (0x1 | 0x2 | 0x4 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x800000
                  | 0x20000000 | 0x400 | 0x2000000 | 0x40000000)  # fmt: skip


def _inode_flags(pid: int, fd: int, name: str) -> int:
    """A deleted file's inode flags that chattr sets (FS_IOC_GETFLAGS; found by probing:
    a deleted file made append-only, no-dump and no-atime came back without them, exit
    0); 0 where its filesystem has none."""
    try:
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise CryoError(f"fd {fd} of {pid}: deleted file {name}: {err.strerror}", pid=pid,
                        resource=f"fd {fd}") from err  # fmt: skip
    try:
        flags: int = struct.unpack("<i", fcntl.ioctl(f, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
    except OSError as err:
        if err.errno in (errno.ENOTTY, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
            return 0
        raise CryoError(f"fd {fd} of {pid}: the inode flags of deleted file {name}:"
                        f" {err.strerror}", pid=pid, resource=f"fd {fd}") from err  # fmt: skip
    finally:
        os.close(f)
    if flags & IFLAGS_REFUSED:
        raise Unsupported(f"fd {fd}: deleted file {name} has inode flags"
                          f" {flags & IFLAGS_REFUSED:#x} (FS_IOC_GETFLAGS): not supported"
                          " (only chattr's S, i, a, d and A are made again)", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    return flags & IFLAGS_KEPT


_XATTRS_KEPT = ("system.posix_acl_access", "system.posix_acl_default")


def _xattrs(pid: int, fd: int, name: str) -> list[list[Any]]:
    """A deleted file's extended attributes, [name, value] each: user ones and POSIX
    ACLs (its owner may set them again); any other (security.*, trusted.*: a label,
    file capabilities) is refused (found by probing: a deleted file's user xattr was
    gone after the restart, exit 0)."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        names = os.listxattr(path)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise CryoError(f"fd {fd} of {pid}: the extended attributes of deleted file {name}:"
                        f" {err.strerror}", pid=pid, resource=f"fd {fd}") from err  # fmt: skip
    out: list[list[Any]] = []
    for attr in sorted(names):
        if not attr.startswith("user.") and attr not in _XATTRS_KEPT:
            raise Unsupported(f"fd {fd}: deleted file {name} has the extended attribute"
                              f" {attr}: not supported (only user ones and POSIX ACLs are"
                              " made again)", pid=pid, resource=f"fd {fd}")  # fmt: skip
        out.append([attr, os.getxattr(path, attr)])
    return out


O_TMPFILE_FLAG = 0o20000000  # __O_TMPFILE, in the flags of a file made by open(O_TMPFILE)


def is_tmpfile(d: dict[str, Any]) -> bool:
    """A file made by open(DIR, O_TMPFILE) (fdinfo's flags keep __O_TMPFILE): made again
    so at restart, it can still be given a name with linkat, as before."""
    return bool(int(d["flags"]) & O_TMPFILE_FLAG) and not d.get("memfd")


def check_linkable(descs: list[dict[str, Any]]) -> None:
    """Checkpoint, every process collected: whether each deleted file made with O_TMPFILE
    may still be given a name (``unlinkable`` where not: made with O_EXCL, or linked
    and unlinked since), made again so at restart (O_EXCL).  open() drops O_EXCL from
    f_flags; only the inode's I_LINKABLE state keeps it, which a BPF iterator over the
    fd table reads (cryo.linux.bpf; a linkat to find out would name the file and clear
    the state for good).  Where that cannot be read (no BTF, no CAP_BPF), refused:
    restored linkable, an O_EXCL file could be named (found by probing, exit 0)."""
    by_inode: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for d in descs:
        if d["kind"] == "file" and d.get("deleted") and is_tmpfile(d) and "obj" not in d:
            by_inode.setdefault((d["dev"], d["ino"]), []).append(d)
    if not by_inode:
        return
    from cryo.linux import bpf

    states: dict[int, dict[int, int]] = {}
    for same in by_inode.values():
        d = same[0]
        try:
            bit = bpf.linkable_bit()
            if d["pid"] not in states:
                states[d["pid"]] = bpf.inode_states(d["pid"])
        except bpf.Unavailable as err:
            raise Unsupported(f"fd {d['fd']}: deleted file {d['path']} made with O_TMPFILE:"
                              " whether linkat may still name it (O_EXCL) cannot be read"
                              f" here ({err.strerror}); not supported", pid=d["pid"],
                              resource=f"fd {d['fd']}") from err  # fmt: skip
        state = states[d["pid"]].get(d["fd"])
        if state is None:
            raise CryoError(f"fd {d['fd']} of {d['pid']}: not in its fd table (BPF"
                            " task_file)", pid=d["pid"])  # fmt: skip
        if not state & bit:
            for e in same:
                e["unlinkable"] = True


def _seals(pid: int, fd: int) -> int:
    """A memfd's seals (F_GET_SEALS on a duplicate of its fd)."""
    pidfd = libc.pidfd_open(pid)
    try:
        mine = libc.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        return int(fcntl.fcntl(mine, F_GET_SEALS))
    except OSError as err:
        raise Unsupported(f"fd {fd}: cannot read the seals of this memfd: {err.strerror}",
                          pid=pid, resource=f"fd {fd}") from err
    finally:
        os.close(mine)


def use_objects(descs: list[dict[str, Any]], objects: Any) -> None:
    """Once every process was collected: a ghost that is also mapped is saved as that
    shared memory object (engine/shmem.py saves its pages once); its descriptions are
    reopened from the object at restart (:func:`reopen_objects`): one file again."""
    for d in descs:
        if not d.get("deleted") or "obj" in d:
            continue
        obj = objects.lookup(d["dev"], d["ino"])
        if obj is None:
            continue
        if d.get("memfd") and d["memfd"]["seals"] & F_SEAL_WRITE:
            raise Unsupported(f"fd {d['fd']}: memfd {d['memfd']['name']} is mapped shared and"
                              " sealed F_SEAL_WRITE: not supported (its mappings would be"
                              " made again through a writable file, which the seal forbids)",
                              pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip
        d["obj"] = obj
        d.pop("source", None)
        d.pop("ghost", None)
        d.pop("extents", None)


def reopen_objects(descs: list[dict[str, Any]], opened: Any, objects: Any) -> None:
    """After the shared memory objects are made: each description saved as one (opened
    on /dev/null so far) becomes a new open of that object, on the same fd number."""
    for d in descs:
        if "obj" not in d or d["id"] not in opened.fds:
            continue
        flags = int(d["flags"]) & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
                                    | os.O_CLOEXEC | 0o20000)  # fmt: skip
        new = objects.reopen(d["obj"], flags)
        try:
            memfd = d.get("memfd")
            if memfd is not None and memfd["seals"]:  # (F_SEAL_SEAL alone too: unsealable)
                try:
                    _add_seals(new, memfd["seals"] & ~_late_seals(memfd["seals"]))
                except OSError as err:
                    raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot seal memfd"
                                    f" {memfd['name']} again: {err.strerror}") from err
            for attr, value in d.get("xattrs", []):  # (a deleted file's, see _xattrs)
                os.setxattr(new, attr, value)
            os.lseek(new, d["pos"], os.SEEK_SET)
            os.dup2(new, opened.fds[d["id"]], inheritable=False)
        finally:
            os.close(new)


F_SEAL_WRITE, F_SEAL_FUTURE_WRITE = 0x8, 0x10


def _late_seals(seals: int) -> int:
    """The seals of a mapped memfd given only once its processes' mappings are made
    (:func:`seal_late`): a write seal forbids the shared writable mapping of
    F_SEAL_FUTURE_WRITE's (found by probing: the restart failed, EPERM from the
    mapping's mmap), and F_SEAL_SEAL, which ends the sealing, goes with them."""
    write = seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)
    return write | (seals & F_SEAL_SEAL) if write else 0


def _add_seals(fd: int, seals: int) -> None:
    have = fcntl.fcntl(fd, F_GET_SEALS)  # (once per inode: a second description finds
    if seals & ~have:  # them there)
        fcntl.fcntl(fd, F_ADD_SEALS, seals & ~have)


def seal_late(descs: list[dict[str, Any]], opened: Any) -> None:
    """Once every process is built (its mappings made), before any runs: the write
    seals (and F_SEAL_SEAL) of each mapped memfd on an fd of its description; each
    ghost's inode flags (:func:`_set_inode_flags`)."""
    _set_inode_flags(descs)
    for d in descs:
        memfd = d.get("memfd")
        if "obj" not in d or memfd is None or d["id"] not in opened.fds:
            continue
        late = _late_seals(memfd["seals"])
        if late:
            try:
                _add_seals(opened.fds[d["id"]], late)
            except OSError as err:
                raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot seal memfd"
                                f" {memfd['name']} again: {err.strerror}") from err


def _set_inode_flags(descs: list[dict[str, Any]]) -> None:
    """A ghost's inode flags, set on its anchor once all its descriptions are open (an
    append-only or immutable file could not be opened for writing, nor its times set)."""
    done: set[str] = set()
    for d in descs:
        want, anchor = int(d.get("iflags", 0)), d.get("_anchor")
        if not want or anchor is None or d["ghost"] in done:
            continue
        done.add(d["ghost"])
        try:
            have = struct.unpack("<i", fcntl.ioctl(anchor, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
            if want & ~have:
                fcntl.ioctl(anchor, FS_IOC_SETFLAGS, struct.pack("<iI", have | want, 0))
        except OSError as err:
            raise CryoError(f"deleted file {d['path']}: cannot give it its inode flags"
                            f" {want:#x} again (FS_IOC_SETFLAGS): {err.strerror}") from err


def check_mapped(descs: list[dict[str, Any]], pids: set[int]) -> None:
    """A ghost also mapped shared by a process of the checkpoint that is not saved as
    its shared memory object (use_objects) is refused: the fd and the mapping would come
    back as two files, each blind to the other's writes."""
    ghosts = {(os.major(d["dev"]), os.minor(d["dev"]), d["ino"]): d for d in descs
              if d.get("ghost")}  # fmt: skip
    if not ghosts:
        return
    for pid in sorted(pids):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or parts[1][3] != "s":
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                d = ghosts.get((major, minor, int(parts[4])))
                if d is not None:
                    raise Unsupported(f"fd {d['fd']}: {d['path']} (deleted) is also mapped"
                                      f" shared by process {pid}; the fd and the mapping"
                                      " would be restored as two files: not supported",
                                      pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def describe_node(pid: int, fd: int, target: str, st: os.stat_result) -> dict[str, Any]:
    """The FDSC fields of a description of a deleted directory or character device
    (``{}`` for one that is not deleted): made again at restart (:func:`make_nodes`),
    one inode for all its descriptions (those of the same device and inode).  A deleted
    directory is empty (rmdir) and has no link left; a device node unlinked but still
    linked elsewhere is refused, as a regular file is."""
    if not target.endswith(DELETED):
        return {}
    name = target.removesuffix(DELETED)
    if st.st_nlink != 0:
        raise Unsupported(f"fd {fd}: {name} was unlinked but the file still has"
                          f" {st.st_nlink} other link(s); not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    return {"path": name, "deleted": True, "node": True, **_attrs(st)}


def _attrs(st: os.stat_result) -> dict[str, Any]:
    out = {"uid": st.st_uid, "gid": st.st_gid, "atime_ns": st.st_atime_ns,
           "mtime_ns": st.st_mtime_ns}  # fmt: skip
    if stat.S_ISCHR(st.st_mode):
        out["rdev"] = st.st_rdev
    return out


def describe_cwd(pid: int) -> dict[str, Any] | None:
    """A deleted working directory (its path ends with " (deleted)"): the FILE record's
    ``cwd_deleted``, made again at restart as a deleted directory is; None if it still
    has a link (a name that ends so)."""
    st = os.stat(f"/proc/{pid}/cwd")
    if st.st_nlink != 0:
        return None
    return {"dev": st.st_dev, "ino": st.st_ino, "mode": st.st_mode, **_attrs(st)}


def make_nodes(descs: list[dict[str, Any]], files: list[dict[str, Any]],
               translate: Callable[[str], str], root_image: bool,
               on_exit: Callable[[Callable[[], None]], None]) -> None:  # fmt: skip
    """Restart, before the descriptions are opened: each deleted directory or device
    node of ``descs`` and each deleted working directory of the FILE records ``files``
    made once (one inode for all that had the same one), as :func:`_make_node` does;
    their ``_anchor`` is the O_PATH fd in cryo through which they are opened (closed
    when the restart ends).  A device node only for an image of root's (mknod makes any
    device: trust.py refuses it in a user's image; checked here again)."""
    made: dict[tuple[int, int], int] = {}
    items = [(d, (d["dev"], d["ino"])) for d in descs if d.get("node")]
    items += [(dict(f["cwd_deleted"], path=f["cwd"], kind="dir", id=f"cwd-{f['pid']}"),
               (f["cwd_deleted"]["dev"], f["cwd_deleted"]["ino"]))
              for f in files if f.get("cwd_deleted")]  # fmt: skip
    cwd_of = {f"cwd-{f['pid']}": f for f in files if f.get("cwd_deleted")}
    for d, key in items:
        if d["kind"] not in ("dir", "chr") or (d["kind"] == "chr") != ("rdev" in d):
            raise ImageCorrupt(f"deleted {d['kind']} {d['path']}: only a directory or a"
                               " character device (with its rdev) is made again so")
        if stat.S_IFMT(d["mode"]) != (stat.S_IFDIR if d["kind"] == "dir" else stat.S_IFCHR):
            raise ImageCorrupt(f"deleted {d['kind']} {d['path']}: mode {d['mode']:o}")
        if key not in made:
            if d["kind"] == "chr" and not root_image:
                raise CryoError(f"deleted device node {d['path']}: only an image of root's"
                                " may make a device again", path=d["path"])  # fmt: skip
            made[key] = fd = _make_node(d, translate(d["path"]))
            on_exit(_closer(fd))
        if str(d["id"]) in cwd_of:
            cwd_of[str(d["id"])]["cwd_deleted"]["_anchor"] = made[key]
        else:
            d["_anchor"] = made[key]


def _make_node(d: dict[str, Any], path: str) -> int:
    """A deleted directory or character device made again: where it was when that name
    is free (so /proc shows the same path, " (deleted)"), else under a free temporary
    name in the same directory (in the temporary directory if that is gone too).  Made
    root's and 0700 (0600) through an fd of that directory, an O_PATH anchor opened on
    it (checked to be the node just made), removed at once (rmdir, unlink: no one can
    put anything in it or swap it meanwhile), then its owner, mode and times set through
    the anchor and the times of the directory it was made in put back.  Returns the
    anchor."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        import tempfile  # (not at the top: 3 ms of a checkpoint's start-up)

        parent = tempfile.gettempdir()
    name = os.path.basename(path)
    if os.path.lexists(path) or os.path.dirname(path) != parent:
        name = f".cryo-{d['kind']}-{os.getpid()}-{d['id']}"
    is_dir = d["kind"] == "dir"
    what = f"deleted {'directory' if is_dir else 'device node'} {d['path']}"
    try:
        pfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CryoError(f"{what}: cannot open {parent}: {err.strerror}", path=d["path"]) from err
    try:
        return _make_in(d, pfd, name, is_dir, what)
    finally:
        os.close(pfd)


def _make_in(d: dict[str, Any], pfd: int, name: str, is_dir: bool, what: str) -> int:
    before = os.stat(pfd)
    remove = functools.partial(os.rmdir if is_dir else os.unlink, name, dir_fd=pfd)
    try:
        if is_dir:
            os.mkdir(name, 0o700, dir_fd=pfd)
        else:
            os.mknod(name, stat.S_IFCHR | 0o600, d["rdev"], dir_fd=pfd)
    except OSError as err:
        raise CryoError(f"{what}: cannot make it again: {err.strerror}", path=d["path"]) from err
    fd = -1
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
                     | (os.O_DIRECTORY if is_dir else 0), dir_fd=pfd)  # fmt: skip
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != (0o700 if is_dir else 0o600) \
                or (not is_dir and (not stat.S_ISCHR(st.st_mode) or st.st_rdev != d["rdev"])):
            raise CryoError(f"{what}: {name} was replaced as it was made again",
                            path=d["path"])  # fmt: skip
        remove()
        via = f"/proc/self/fd/{fd}"  # (an O_PATH fd: the inode itself, unlinked now)
        os.chown(via, d["uid"], d["gid"])
        os.chmod(via, stat.S_IMODE(d["mode"]))
        os.utime(via, ns=(d["atime_ns"], d["mtime_ns"]))
        os.utime(f"/proc/self/fd/{pfd}", ns=(before.st_atime_ns, before.st_mtime_ns))
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            remove()  # (if it is still there, and ours: a replacement would not be empty)
        if isinstance(err, OSError):
            raise CryoError(f"{what}: cannot make it again: {err.strerror}",
                            path=d["path"]) from err  # fmt: skip
        raise
    return fd


def cwd_path(rec: dict[str, Any]) -> str | None:
    """The path a process with a deleted working directory chdir()s to (cryo's anchor
    of the directory made again: the process is root's still, the file stage comes
    before its credentials), or None."""
    gone = rec.get("cwd_deleted")
    if gone is None:
        return None
    return f"/proc/{os.getpid()}/fd/{gone['_anchor']}"


def describe_fifo(target: str, blobs: list[bytes]) -> dict[str, Any]:
    """A FIFO deleted while open: made again (mkfifo) and unlinked at restart."""
    if not target.endswith(DELETED):
        return {}
    return {"path": target.removesuffix(DELETED), "deleted": True, "blob": _empty(blobs)}


def make_fifo(d: dict[str, Any], path: str) -> int:
    """A deleted FIFO made again: created where it was when that is free (else in the
    temporary directory), opened, unlinked; returns the fd (read and write)."""
    if not os.path.isdir(os.path.dirname(path)) or os.path.lexists(path):
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f".cryo-fifo-{os.getpid()}-{d['id']}")
    os.mkfifo(path, 0o600)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    finally:
        os.unlink(path)
    try:
        if (d.get("uid", os.geteuid()), d.get("gid", os.getegid())) != (os.geteuid(),
                                                                       os.getegid()):
            os.fchown(fd, d["uid"], d["gid"])
        os.fchmod(fd, stat.S_IMODE(d["mode"]))
        if "mtime_ns" in d:
            os.utime(fd, ns=(d["atime_ns"], d["mtime_ns"]))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _empty(blobs: list[bytes]) -> int:
    if b"" in blobs:
        return blobs.index(b"")
    blobs.append(b"")
    return len(blobs) - 1


def write(sink: Any, descs: list[dict[str, Any]]) -> None:
    """Each ghost's data ranges into its side file, in blocks (the processes are still
    frozen: the file cannot change meanwhile)."""
    for d in descs:
        source = d.pop("source", None)
        if source is None:
            continue
        pid, fd = source
        what = f"fd {fd} of {pid} (deleted file {d['path']})"
        try:
            src = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | O_NOATIME)
        except PermissionError:
            src = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
        try:
            d["extents"] = runs = extents(src, d["size"], what)
            pre = preallocated(src)
            if pre:
                d["prealloc"] = pre
            with sink.side_file(d["ghost"]) as out:
                for off, length in runs:
                    _copy(src, off, length, out.write, what)
        finally:
            os.close(src)
        log.debug("%s: %d bytes in %d ranges", what, sum(n for _, n in runs), len(runs))


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNWRITTEN = 0x1, 0x800
_FIEMAP_BATCH = 256
SYS_FALLOCATE, FALLOC_FL_KEEP_SIZE = 285, 0x1


def preallocated(fd: int) -> list[list[int]]:
    """The ranges [offset, length] of the file open on ``fd`` that fallocate reserved
    and nothing wrote yet (FIEMAP's unwritten extents, past its end too: KEEP_SIZE),
    which SEEK_DATA takes for holes; [] where the filesystem has no FIEMAP (found by
    probing: a deleted file's 1 MiB fallocate'd came back as a hole, st_blocks 8 for
    2048, and its space no longer reserved)."""
    out: list[list[int]] = []
    start = 0
    while True:
        head = struct.pack("=QQIIII", start, (1 << 64) - 1 - start, 0, 0, _FIEMAP_BATCH, 0)
        buf = bytearray(head + bytes(56 * _FIEMAP_BATCH))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return []
            raise
        mapped = struct.unpack_from("=I", buf, 20)[0]
        last = False
        for i in range(mapped):
            logical, _phys, length = struct.unpack_from("=QQQ", buf, 32 + 56 * i)
            flags = struct.unpack_from("=I", buf, 32 + 56 * i + 40)[0]
            if flags & FIEMAP_EXTENT_UNWRITTEN:
                if out and out[-1][0] + out[-1][1] == logical:
                    out[-1][1] += length
                else:
                    out.append([logical, length])
            start = logical + length
            last = last or bool(flags & FIEMAP_EXTENT_LAST)
        if last or mapped < _FIEMAP_BATCH:
            return out


def _copy(src: int, off: int, length: int, put: Callable[[bytes], Any], what: str) -> None:
    end = off + length
    while off < end:
        chunk = os.pread(src, min(CHUNK, end - off), off)
        if not chunk:
            raise CryoError(f"{what}: shorter than its size while saved")
        put(chunk)
        off += len(chunk)


# -- restore ---------------------------------------------------------------------------


def prepare(descs: list[dict[str, Any]], image: Any, translate: Callable[[str], str],
            on_exit: Callable[[Callable[[], None]], None]) -> None:  # fmt: skip
    """Make every ghost of the image once; each description of it gets ``_anchor``, the
    fd in cryo to open it through (closed when the restart ends)."""
    made: dict[str, int] = {}
    names: dict[str, str] = {}
    for d in descs:
        name = d.get("ghost")
        if not d.get("deleted") or name is None:
            continue
        if name not in made:
            first = next((x for x in descs if x.get("ghost") == name and "extents" in x), None)
            if first is None:
                raise ImageCorrupt(f"deleted file {d['path']}: no description saves {name}")
            # a description opened with O_NOFOLLOW (shm_open's) must be opened by a real
            # path, not through /proc/self/fd's link: the name is kept until then
            nofollow = any(x.get("ghost") == name and int(x["flags"]) & os.O_NOFOLLOW
                           for x in descs)  # fmt: skip
            keep: list[str] | None = [] if nofollow else None
            made[name] = fd = _make(first, image.side_file(name), translate(first["path"]),
                                    keep)  # fmt: skip
            on_exit(_closer(fd))
            if keep:
                if not names:  # (once: if open_all did not get to it)
                    on_exit(lambda: unlink_names(descs))
                names[name] = keep[0]
        d["_anchor"] = made[name]
        if name in names:
            d["_name"] = names[name]


def nofollow_path(d: dict[str, Any], flags: int) -> str | None:
    """The kept name to open a ghost's description by, for one with O_NOFOLLOW."""
    return d.get("_name") if flags & os.O_NOFOLLOW else None


def unlink_names(descs: list[dict[str, Any]]) -> None:
    """The ghosts' names kept for the O_NOFOLLOW opens gone again (once every
    description is open, before any process runs)."""
    for d in descs:
        name = d.pop("_name", None)
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _closer(fd: int) -> Callable[[], None]:
    def close() -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    return close


def _make(d: dict[str, Any], data: BinaryIO, path: str, keep: list[str] | None = None) -> int:
    """The ghost made again (filled, its owner, mode, times); its name unlinked at once,
    or, with ``keep``, left for the caller (its path appended to ``keep``)."""
    import tempfile

    memfd = d.get("memfd")
    huge = int(d.get("hugetlb", 0))
    if memfd is not None:  # a memfd again, of the same name; sealed once filled
        seals = int(memfd["seals"])
        flags = MFD_CLOEXEC | (0 if seals == F_SEAL_SEAL else MFD_ALLOW_SEALING)
        if huge:  # on hugetlbfs again, with its page size
            flags |= MFD_HUGETLB | ((huge.bit_length() - 1) << MFD_HUGE_SHIFT)
        try:
            fd = os.memfd_create(memfd["name"], flags)
        except OSError as err:
            raise CryoError(f"memfd {memfd['name']}: cannot make it again"
                            f"{' on hugetlbfs' if huge else ''}: {err.strerror}") from err
    elif is_tmpfile(d):  # (an O_TMPFILE file: linkat can name it; one made and unlinked
        where = os.path.dirname(path)  # cannot be, ENOENT: found by probing)
        access = os.O_WRONLY if int(d["flags"]) & 0o3 == os.O_WRONLY else os.O_RDWR
        try:
            excl = os.O_EXCL if d.get("unlinkable") else 0  # (never to be named)
            fd = os.open(where if os.path.isdir(where) else tempfile.gettempdir(),
                         os.O_TMPFILE | access | excl | os.O_CLOEXEC, 0o600)  # fmt: skip
        except OSError as err:
            raise CryoError(f"deleted file {d['path']} (O_TMPFILE): cannot make it again in"
                            f" {where}: {err.strerror}") from err  # fmt: skip
    else:
        if not os.path.isdir(os.path.dirname(path)) or os.path.lexists(path):
            path = os.path.join(tempfile.gettempdir(),
                                f".cryo-deleted-{os.getpid()}-{d['id']}")  # fmt: skip
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
    try:
        if memfd is None and not is_tmpfile(d):
            if keep is None:
                os.unlink(path)  # from here on it is ours alone, as it was the program's
            else:
                keep.append(path)
        os.ftruncate(fd, d["size"])
        if huge:  # (hugetlbfs has no write(): through a shared mapping)
            _fill_mapped(fd, d, data)
        for start, length in d.get("prealloc", []):  # (reserved, unwritten: KEEP_SIZE)
            libc.syscall(SYS_FALLOCATE, fd, FALLOC_FL_KEEP_SIZE, start, length)
        for start, length in [] if huge else d["extents"]:
            done = 0
            while done < length:
                chunk = data.read(min(CHUNK, length - done))
                if not chunk:
                    raise ImageCorrupt(f"deleted file {d['path']}: its side file is short")
                os.pwrite(fd, chunk, start + done)
                done += len(chunk)
        if (d["uid"], d["gid"]) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, d["uid"], d["gid"])
            except PermissionError as err:
                raise CryoError(f"deleted file {d['path']}: cannot give it its owner"
                                f" {d['uid']}:{d['gid']}: {err.strerror}") from err  # fmt: skip
        os.fchmod(fd, stat.S_IMODE(d["mode"]))
        for attr, value in d.get("xattrs", []):  # (after the mode: an ACL sets group bits)
            os.setxattr(fd, attr, value)
        os.utime(fd, ns=(d["atime_ns"], d["mtime_ns"]))
        if memfd is not None and memfd["seals"] not in (0, F_SEAL_SEAL):
            fcntl.fcntl(fd, F_ADD_SEALS, memfd["seals"])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fill_mapped(fd: int, d: dict[str, Any], data: BinaryIO) -> None:
    import mmap

    if not d["size"]:
        return
    try:
        m = mmap.mmap(fd, d["size"], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as err:
        raise CryoError(f"memfd {d['memfd']['name']}: {d['size']} bytes of huge pages:"
                        f" {err.strerror} (is the pool big enough?)") from err
    try:
        for start, length in d["extents"]:
            done = 0
            while done < length:
                chunk = data.read(min(CHUNK, length - done))
                if not chunk:
                    raise ImageCorrupt(f"deleted file {d['path']}: its side file is short")
                m[start + done : start + done + len(chunk)] = chunk
                done += len(chunk)
    finally:
        m.close()


def own_file(d: dict[str, Any]) -> int | None:
    """For the first description of a memfd opened read-write: the memfd made itself (a
    duplicate of its anchor), not a reopening of it, as memfd_create gave it: one that
    does not count as a writer of the inode (so execveat of it works, as it did).  For
    the first of an O_TMPFILE file, the file made with O_TMPFILE."""
    anchor = d.get("_anchor")
    if anchor is None or "extents" not in d:
        return None
    if is_tmpfile(d):  # the O_TMPFILE file made, its flags (F_GETFL) as the program's
        return os.dup(anchor)
    if not d.get("memfd") or d["flags"] & 0o3 != os.O_RDWR:
        return None
    return os.dup(anchor)


def show(d: dict[str, Any]) -> dict[str, Any]:
    """What `cryo show` says of a deleted file, a memfd or a namespace fd."""
    out: dict[str, Any] = {}
    if d.get("memfd"):
        out["memfd"] = d["memfd"]["name"]
        out["seals"] = d["memfd"]["seals"]
        if d.get("hugetlb"):
            out["hugetlb"] = d["hugetlb"]
    if "extents" in d:
        out["data"] = sum(n for _, n in d["extents"])  # the rest are holes
    if d.get("prealloc"):
        out["preallocated"] = sum(n for _, n in d["prealloc"])
    if d.get("xattrs"):
        out["xattrs"] = [name for name, _ in d["xattrs"]]
    if d.get("iflags"):  # (as lsattr names them)
        out["inode_flags"] = "".join(c for bit, c in ((0x8, "S"), (0x10, "i"), (0x20, "a"),
                                                      (0x40, "d"), (0x80, "A"))
                                     if d["iflags"] & bit)  # fmt: skip
    if d.get("flags", 0) & O_TMPFILE_FLAG:
        out["tmpfile"] = "unlinkable (O_EXCL)" if d.get("unlinkable") else True
    if "obj" in d:
        out["object"] = d["obj"]
    if d.get("node") and "rdev" in d:  # a deleted device node, made again
        out["rdev"] = f"{os.major(d['rdev'])}:{os.minor(d['rdev'])}"
    if d.get("ns"):
        out["namespace"] = f"{d['ns']}:[{d['nsino']}]"
    return out


def open_path(d: dict[str, Any]) -> str | None:
    """The path to open a description of a ghost by, once prepare() made it (for one
    saved as a shared memory object, a stand-in until reopen_objects())."""
    if "obj" in d:
        return os.devnull
    anchor = d.get("_anchor")
    return None if anchor is None else f"/proc/self/fd/{anchor}"
