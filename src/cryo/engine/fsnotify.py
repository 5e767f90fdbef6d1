"""inotify and fanotify instances with their watches (marks).

Dump: /proc/PID/fdinfo lists each watch: an inotify watch by its wd, the inode (ino,
sdev), its mask and a file handle (``f_handle``); a fanotify mark by its object (an
inode as above, a mount by ``mnt_id``, a filesystem by ``sdev``), its mark flags, mask
and ignored mask.  The watched inode's path is looked up from the handle at dump
(open_by_handle_at on a mount of that device, the working directory of a thread of
cryo's: no open of the mount's root, which a watch of it would see; then /proc/self/fd),
for ``cryo show`` and as a fallback.  Refused by name: events queued and not yet read
(FIONREAD on a duplicate: the kernel gives no way to queue them again), a watch whose
object the handle does not open (a filesystem without file handles), fanotify groups of
the permission classes (events read but not answered cannot be seen), and mount marks of
mounts that no longer have a mount point.

Restart, in cryo before any process exists (as any description): a new instance with
the same flags; each watched object opened by its handle (the very inode, on a mount
of its device; if that device is here and the handle no longer opens, the inode is
gone: the restart fails), else (another machine) by its path, which must be the same
kind of file; then watched through /proc/self/fd/N.  An inotify watch keeps its wd:
the kernel hands them out one after another, so the wds skipped are taken and given
back first, every watch added meanwhile with IN_DELETE_SELF alone; once the IN_IGNORED
of the wds given back are read off (nothing else can be queued then), each watch is
given its mask, and a fanotify group its marks, only once every process is built
(:func:`arm`, a ``started`` hook; the objects kept open, O_PATH, till then): what the
restart itself does to watched files (it opens and maps them, reads a saved copy, makes
a ghost) queues no event the processes would read.  A watch whose object cannot be
found fails the restart, naming it, before anything is made.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import re
import stat
import struct
import termios
import threading
from typing import Any

from cryo.errors import CryoError, Unsupported
from cryo.linux import fdcalls, libc
from cryo.linux.consts import SYS

INOTIFY = "anon_inode:inotify"
FANOTIFY = "anon_inode:[fanotify]"
O_NONBLOCK = 0o4000
O_LARGEFILE = 0o100000
FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_CLASS_BITS = 0xC  # FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT
FAN_MARK_ADD, FAN_MARK_IGNORED_MASK = 0x1, 0x20
FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x10, 0x100
FAN_MARK_IGNORE = 0x400
MAX_WD = 1 << 20  # the wds given back to reach a watch's wd, at most
_KV = re.compile(r"([a-z_-]+):(\S*)")


def _fields(line: str) -> dict[str, str]:
    return dict(_KV.findall(line))


def _dev(sdev: str) -> int:
    n = int(sdev, 16)
    return os.makedev(n >> 20, n & 0xFFFFF)  # the kernel's dev_t (MINORBITS 20)


def _mounts(pid: int | str = "self") -> list[tuple[int, int, str]]:
    """(mount id, device, mount point) of each mount seen by ``pid``."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            parts = line.split()
            major, minor = (int(x) for x in parts[2].split(":"))
            point = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            out.append((int(parts[0]), os.makedev(major, minor), point))
    return out


def _mount_fd(dev: int) -> int:
    """An fd on the root of a mount of device ``dev`` (for open_by_handle_at)."""
    for _mid, d, point in _mounts():
        if d == dev:
            with contextlib.suppress(OSError):  # (not O_PATH: open_by_handle_at refuses it)
                return os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    raise FileNotFoundError(errno.ENOENT, f"no mount of device {os.major(dev)}:{os.minor(dev)}")


def _by_handle(mark: dict[str, Any]) -> int:
    """The watched inode, opened O_PATH by its handle; OSError if it cannot be."""
    mfd = _mount_fd(mark["dev"])
    try:
        fd = fdcalls.open_by_handle_at(mfd, mark["htype"], mark["handle"],
                                       os.O_PATH | os.O_CLOEXEC)  # fmt: skip
    finally:
        os.close(mfd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (mark["dev"], mark["ino"]):
        os.close(fd)
        raise FileNotFoundError(errno.ESTALE, "the handle opens another inode")
    return fd


def _mark(fields: dict[str, str]) -> dict[str, Any]:
    """An inode mark as fdinfo shows it: the inode, and the handle that reopens it."""
    m: dict[str, Any] = {"ino": int(fields["ino"], 16), "dev": _dev(fields["sdev"])}
    if "f_handle" in fields:
        m["htype"] = int(fields["fhandle-type"], 16)
        m["handle"] = bytes.fromhex(fields["f_handle"])
    return m


CLONE_FS = 0x200


def _by_handle_quietly(mark: dict[str, Any]) -> int:
    """:func:`_by_handle` without an open of the mount's root (which queues IN_OPEN and
    IN_CLOSE_NOWRITE on a watch of that root: found by probing, the checkpoint refused
    its own events, exit 9): open_by_handle_at(AT_FDCWD) in a thread of cryo's whose
    working directory, its own (unshare CLONE_FS), is a mount of the device (chdir opens
    nothing).  One such thread serves every look-up of the process (a thread each cost
    60-110 us more a watch)."""
    global _QUIET
    if _QUIET is None or _QUIET[0] != os.getpid():  # (none yet, or made before a fork)
        _QUIET = (os.getpid(), queue.SimpleQueue())
        threading.Thread(target=_serve, args=(_QUIET[1],), name="cryo-handles",
                         daemon=True).start()  # fmt: skip
    reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _QUIET[1].put((mark, reply))
    got = reply.get()
    if isinstance(got, OSError):
        raise got
    fd = int(got)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (mark["dev"], mark["ino"]):
        os.close(fd)
        raise FileNotFoundError(errno.ESTALE, "the handle opens another inode")
    return fd


_QUIET: tuple[int, queue.SimpleQueue[Any]] | None = None


def _serve(requests: queue.SimpleQueue[Any]) -> None:
    """The look-up thread: its own working directory, moved to a mount of each mark's
    device (the last one kept)."""
    here = None
    failed: OSError | None = None
    try:
        libc.syscall(SYS.unshare, CLONE_FS)
    except OSError as e:
        failed = e
    while True:
        mark, reply = requests.get()
        if failed is not None:
            reply.put(failed)
            continue
        last: OSError = FileNotFoundError(errno.ENOENT, "no mount of its device")
        for _mid, d, point in ([(0, here[0], here[1])] if here and here[0] == mark["dev"]
                               else []) + _mounts():  # fmt: skip
            if d != mark["dev"]:
                continue
            try:
                if here != (d, point):
                    os.chdir(point)
                    here = (d, point)
                reply.put(fdcalls.open_by_handle_at(-100, mark["htype"], mark["handle"],
                                                    os.O_PATH | os.O_CLOEXEC))  # fmt: skip
                break
            except OSError as e:
                last, here = e, None
        else:
            reply.put(last)


def _find_path(m: dict[str, Any], where: str, pid: int, fd: int) -> None:
    """Check at dump that the handle opens the watched inode, and name it."""
    if "handle" not in m:
        raise Unsupported(f"fd {fd}: {where} watches inode {m['ino']} of a filesystem"
                          " without file handles: it could not be found again",
                          pid=pid, resource=f"fd {fd}")  # fmt: skip
    try:
        ofd = _by_handle_quietly(m)
    except OSError as err:
        raise Unsupported(f"fd {fd}: {where} watches inode {m['ino']} that its handle does"
                          f" not open ({err.strerror}): it could not be found again",
                          pid=pid, resource=f"fd {fd}") from err  # fmt: skip
    try:
        m["path"] = os.readlink(f"/proc/self/fd/{ofd}")
        m["fmt"] = stat.S_IFMT(os.fstat(ofd).st_mode)
        gone = os.fstat(ofd).st_nlink == 0
    finally:
        os.close(ofd)
    if gone or m["path"].endswith(" (deleted)"):  # (found by probing: the restart failed)
        raise Unsupported(f"fd {fd}: {where} watches {m['path']}, a deleted file: not"
                          " supported (it is made again at restart as another inode, which"
                          " the watch's handle does not open)", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip


def _queued(pid: int, fd: int, what: str) -> None:
    mine = libc.fd_of(pid, fd)
    try:
        n = int.from_bytes(fcntl.ioctl(mine, termios.FIONREAD, b"\0" * 4), "little")
    finally:
        os.close(mine)
    if n:
        raise Unsupported(f"fd {fd}: {what} has {n} bytes of events not yet read (they"
                          " cannot be queued again)", pid=pid, resource=f"fd {fd}")


def describe_inotify(pid: int, fd: int, fdinfo: bytes) -> dict[str, Any]:
    watches = []
    for line in fdinfo.decode(errors="surrogateescape").splitlines():
        if not line.startswith("inotify "):
            continue
        f = _fields(line)
        m = _mark(f)
        m["wd"] = int(f["wd"], 16)
        m["mask"] = int(f["mask"], 16)
        if m["wd"] > MAX_WD:
            raise Unsupported(f"fd {fd}: inotify watch wd {m['wd']} is beyond what the restart"
                              f" can reach ({MAX_WD})", pid=pid, resource=f"fd {fd}")
        _find_path(m, f"inotify watch {m['wd']}", pid, fd)
        watches.append(m)
    _queued(pid, fd, "inotify")
    return {"watches": sorted(watches, key=lambda m: int(m["wd"]))}


def describe_fanotify(pid: int, fd: int, fdinfo: bytes) -> dict[str, Any]:
    text = fdinfo.decode(errors="surrogateescape")
    group: dict[str, str] = {}
    marks = []
    mounts = {mid: point for mid, _d, point in _mounts(pid)}
    for line in text.splitlines():
        if not line.startswith("fanotify "):
            continue
        f = _fields(line)
        if "event-flags" in f:
            group = f
            continue
        m: dict[str, Any] = {"mflags": int(f["mflags"], 16), "mask": int(f["mask"], 16),
                             "ignored": int(f["ignored_mask"], 16)}  # fmt: skip
        if "ino" in f:
            m.update(_mark(f), on="inode")
            _find_path(m, "fanotify mark", pid, fd)
        elif "mnt_id" in f:
            mid = int(f["mnt_id"], 16)
            if mid not in mounts:
                raise Unsupported(f"fd {fd}: fanotify marks mount {mid}, which has no mount"
                                  " point now", pid=pid, resource=f"fd {fd}")  # fmt: skip
            m.update(on="mount", path=mounts[mid])
        elif "sdev" in f:
            dev = _dev(f["sdev"])
            points = [p for _i, d, p in _mounts(pid) if d == dev]
            if not points:
                raise Unsupported(f"fd {fd}: fanotify marks a filesystem without a mount",
                                  pid=pid, resource=f"fd {fd}")  # fmt: skip
            m.update(on="filesystem", dev=dev, path=points[0])
        else:
            raise Unsupported(f"fd {fd}: fanotify mark of a kind not supported ({line})",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        marks.append(m)
    flags = int(group.get("flags", "0"), 16)
    if flags & FAN_CLASS_BITS:
        raise Unsupported(f"fd {fd}: fanotify group of a permission class (flags {flags:#x}):"
                          " events read and not yet answered cannot be seen", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    _queued(pid, fd, "fanotify")
    return {"fan_flags": flags,  # (FAN_CLOEXEC and FAN_NONBLOCK too: fdinfo shows them)
            "event_flags": int(group.get("event-flags", "0"), 16), "marks": marks}


# -- restart ---------------------------------------------------------------------------


def _reopen(m: dict[str, Any], where: str, translate: Any) -> int:
    """The watched inode, O_PATH: by its handle; on another machine (no mount of its
    device) by its path, the same kind of file.  On its device, a handle that no longer
    opens means the inode is gone: watching another file of that name would be wrong."""
    try:
        return _by_handle(m)
    except OSError as err:
        if any(d == m["dev"] for _i, d, _p in _mounts()):
            raise CryoError(f"{where}: the file it watched ({m.get('path') or m['ino']}) no"
                            f" longer exists ({err.strerror})", path=m.get("path")) from err
    path = translate(m["path"]) if m.get("path") else None
    if path is not None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            if stat.S_IFMT(os.fstat(fd).st_mode) == m.get("fmt"):
                return fd
            os.close(fd)
    raise CryoError(f"{where}: the file it watched ({m.get('path') or 'inode ' + str(m['ino'])})"
                    " cannot be found", path=path)  # fmt: skip


IN_DELETE_SELF, IN_IGNORED = 0x400, 0x8000


def open_inotify(d: dict[str, Any], translate: Any, o: Any = None) -> int:
    """The instance again, each watch at its wd: first every watch with IN_DELETE_SELF
    alone, the wds in between taken and given back (their IN_IGNORED events read off:
    nothing else can be queued then), then each given its mask: in a restart (``o``,
    files.py's Opening), not here but by :func:`arm` once every process is built, so
    that the restart's own opens, reads and mappings of watched files queue no event
    (the watched objects, O_PATH, kept open till then among ``o``'s anchors)."""
    fd = fdcalls.inotify_init1(O_NONBLOCK | os.O_CLOEXEC)
    objs: list[int] = []
    try:
        pads: set[int] = set()
        for m in d["watches"]:
            where = f"fd {d['fd']} of {d['pid']}: inotify watch {m['wd']}"
            obj = _reopen(m, where, translate)
            objs.append(obj)
            for _ in range(MAX_WD + 1):
                wd = fdcalls.inotify_add_watch(fd, f"/proc/self/fd/{obj}", IN_DELETE_SELF)
                if wd >= m["wd"]:
                    break
                fdcalls.inotify_rm_watch(fd, wd)  # a wd skipped, given back
                pads.add(wd)
            if wd != m["wd"]:
                raise CryoError(f"{where}: the kernel gave wd {wd}")
        _drain(fd, pads, d)
        if o is None:
            _arm_inotify(fd, d, objs)
        fcntl.fcntl(fd, fcntl.F_SETFL, d["flags"] & O_NONBLOCK)
    except BaseException:
        os.close(fd)
        for obj in objs:
            os.close(obj)
        raise
    _later(o, d, objs)
    return fd


KEEP = "fsnotify"  # in the restart's keep: [(description, objects)] for arm()


def _later(o: Any, d: dict[str, Any], objs: list[int]) -> None:
    """Keep the description's watched objects for arm() (closed with the restart's
    descriptions), or close them (not a restart)."""
    if o is None:
        for obj in objs:
            os.close(obj)
        return
    o.opened.anchors.extend(objs)
    o.keep.setdefault(KEEP, []).append((d, objs))


def _arm_inotify(fd: int, d: dict[str, Any], objs: list[int]) -> None:
    for m, obj in zip(d["watches"], objs, strict=True):
        if fdcalls.inotify_add_watch(fd, f"/proc/self/fd/{obj}", m["mask"]) != m["wd"]:
            raise CryoError(f"fd {d['fd']} of {d['pid']}: inotify watch {m['wd']} moved")


def arm(rs: Any) -> None:
    """Driver hook (started: every process built, none let go yet): every inotify
    watch its mask, every fanotify group its marks (cryo's fd of the description is the
    processes' too), with no open of any file on the way.  Before (found by probing),
    the restart's own open of a file the process maps queued IN_OPEN on the restored
    watch, and a fanotify mark of a mount or a filesystem saw whatever the restart
    touched there."""
    from cryo.engine.translate import apply as translated

    for d, objs in rs.shared.keep.pop(KEEP, []):
        fd = rs.shared.opened.fds[d["id"]]
        if d["kind"] == "fanotify":
            _mark_fanotify(fd, d, objs, lambda p: translated(rs.options, p))
        else:
            _arm_inotify(fd, d, objs)


def _drain(fd: int, pads: set[int], d: dict[str, Any]) -> None:
    """Read off the IN_IGNORED events of the wds given back (and only those)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        pos = 0
        while pos + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from("<iIII", data, pos)
            if wd not in pads or not mask & IN_IGNORED:
                raise CryoError(f"fd {d['fd']} of {d['pid']}: a file inotify watch {wd} watches"
                                " was deleted while the restart made the watch")  # fmt: skip
            pos += 16 + length


def open_fanotify(d: dict[str, Any], translate: Any, o: Any = None) -> int:
    """The group again, and its marks: in a restart (``o``) by :func:`arm` once every
    process is built (see open_inotify), each marked inode found here."""
    event_flags = d["event_flags"] & ~O_LARGEFILE
    # with the group's own flags: made with FAN_CLOEXEC and FAN_NONBLOCK, fdinfo showed
    # "fanotify flags:3" for 2 (found by probing, exit 0); cryo's fd is close-on-exec
    fd = fdcalls.fanotify_init(d["fan_flags"], event_flags)
    if not d["fan_flags"] & FAN_CLOEXEC:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    objs: list[int] = []
    try:
        for m in d["marks"]:
            if m["on"] == "inode":
                objs.append(_reopen(m, f"fd {d['fd']} of {d['pid']}: fanotify mark on"
                                       f" {m.get('path')}", translate))  # fmt: skip
            else:
                path = translate(m["path"])
                if not os.path.exists(path):
                    raise CryoError(f"fd {d['fd']} of {d['pid']}: fanotify mark on {path}:"
                                    " not found", path=path)  # fmt: skip
        if o is None:
            _mark_fanotify(fd, d, objs, translate)
        fcntl.fcntl(fd, fcntl.F_SETFL, d["flags"] & O_NONBLOCK)
    except BaseException:
        os.close(fd)
        for obj in objs:
            os.close(obj)
        raise
    _later(o, d, objs)
    return fd


def _mark_fanotify(fd: int, d: dict[str, Any], objs: list[int], translate: Any) -> None:
    """Add the marks of group ``fd``, its marked inodes ``objs`` (O_PATH, in order)."""
    inodes = iter(objs)
    paths = [f"/proc/self/fd/{next(inodes)}" if m["on"] == "inode" else translate(m["path"])
             for m in d["marks"]]  # fmt: skip
    # the oldest first: fdinfo lists a group's marks newest first (each new one at the
    # head of its list); added in that order, they were listed reversed (exit 0)
    for m, path in reversed(list(zip(d["marks"], paths, strict=True))):
        where = f"fd {d['fd']} of {d['pid']}: fanotify mark on {m.get('path')}"
        kind = {"inode": 0, "mount": FAN_MARK_MOUNT,
                "filesystem": FAN_MARK_FILESYSTEM}[m["on"]]  # fmt: skip
        try:
            flags = FAN_MARK_ADD | kind | (m["mflags"] & ~FAN_MARK_IGNORE)
            if m["mask"]:
                fdcalls.fanotify_mark(fd, flags, m["mask"], -100, path)
            if m["ignored"]:
                ign = FAN_MARK_IGNORE if m["mflags"] & FAN_MARK_IGNORE else \
                    FAN_MARK_IGNORED_MASK  # fmt: skip
                fdcalls.fanotify_mark(fd, flags | ign, m["ignored"], -100, path)
        except OSError as err:
            raise CryoError(f"{where}: {err.strerror}") from err


def show(d: dict[str, Any]) -> dict[str, Any]:
    """What `cryo show` says of an inotify or fanotify instance: its watches."""
    if d["kind"] == "inotify":
        return {"watches": [f"wd {m['wd']} {m.get('path', m['ino'])} mask {m['mask']:#x}"
                            for m in d["watches"]]}  # fmt: skip
    if d["kind"] == "fanotify":
        return {"watches": [f"{m['on']} {m.get('path')} mask {m['mask']:#x}"
                            + (f" ignored {m['ignored']:#x}" if m["ignored"] else "")
                            for m in d["marks"]]}  # fmt: skip
    return {}
