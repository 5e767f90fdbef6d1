"""Trust and privilege: what a restart may do with an image (docs/design.md, "Trust and
privilege").  :func:`admit` is the one place the rule is enforced, before anything is
created:

1. every record fits the image grammar (cryo.image.schema);
2. the image's seals verify with this host's key (cryo.image.seal), or the caller said
   ``trust_image``; a restart by root of an image whose seal does not verify is refused
   (ImageUntrusted, exit 11);
3. the image grants no privilege its owner lacked.  The owner is the less privileged of
   the image files' owner and the uid that made the checkpoint (its MADE record, else
   the real uid of its root process).  Root restoring root's own image keeps full
   power; for any other owner every process runs as that user (uids, gids, groups),
   with no capability, every file it opens or maps is one that user may open that way,
   files the restart creates (deleted files, shared memory objects) are made where that
   user may create files and never setuid or setgid, System V segments are ones that
   user may attach (or recreated as that user's), limits are no higher than cryo's own;
4. the image is not running already where a second copy would share what the first
   one writes (cryo.image.running), unless ``allow_duplicate``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import resource
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryo.asuser import run_as
from cryo.errors import AccessDenied, ImageUntrusted
from cryo.image import running, seal

log = logging.getLogger(__name__)
ROOT = 0
O_ACCMODE, O_PATH = 0o3, 0o10000000
SETID = stat.S_ISUID | stat.S_ISGID
PROT_WRITE = 2


@dataclass
class Owner:
    """Who an image belongs to, and what that user may have."""

    uid: int
    gid: int = 0  # primary group
    gids: set[int] = field(default_factory=set)  # primary and supplementary groups
    why: str = ""
    # mapped files and executables a copy saved in the image (--save-files) may stand
    # in for: checked once the restart knows which it opens (check_deferred)
    # (path, as translated when admitted, access mode, what)
    deferred: list[tuple[str, str, int, str]] = field(default_factory=list)

    @property
    def root(self) -> bool:
        return self.uid == ROOT


def admit(image: Any, *, trust_image: bool = False, allow_duplicate: bool = False,
          translate: Callable[[str], str] | None = None) -> Owner:  # fmt: skip
    """Check ``image`` (an opened ImageSource) before a restart creates anything: grammar,
    seal, the privilege rule, a copy already running.  Returns the owner.  ``translate``
    is the restart's path translation (--translate): the rule applies to the paths
    actually opened and created, not to the ones the image names."""
    image.check()
    sealed = check_seal(image, trust_image)
    owner = owner_of(image, sealed)
    if not owner.root:
        check_privilege(image, owner, translate)
    running.check(image, allow_duplicate=allow_duplicate)
    image.owner = owner  # for what the restore creates (files.py: made as the owner's)
    return owner


def restarted(image: Any, pid: int) -> None:
    """To be called once a restart of ``image`` has succeeded, before the image is
    closed: its root process is ``pid`` (cryo.image.running's marker)."""
    running.mark(image, pid)


def check_seal(image: Any, trust_image: bool) -> bool:
    """True when every sealed file of ``image`` verifies.  Otherwise, for root (or a
    user who can read the key) refused unless ``trust_image``."""
    key = seal.load_key()
    if key is None and os.geteuid() != ROOT:
        return False  # a user's own restart: the kernel and the rule below bound it
    problems = [p for name, recs in image.sealed_files()
                if (p := seal.problem(recs, key, name)) is not None]  # fmt: skip
    if not problems:
        return True
    if trust_image:
        log.warning("%s; restarting it anyway (--trust-image)", problems[0])
        return False
    raise ImageUntrusted(f"{problems[0]}: refusing to restart it (--trust-image restarts it"
                         " all the same, within its owner's privileges)",
                         path=image.path)  # fmt: skip


def _file_owner(image: Any) -> int:
    uids = set()
    for path in image.owner_files():
        try:
            uids.add(os.stat(path, follow_symlinks=False).st_uid)
        except FileNotFoundError:
            continue
    users = uids - {ROOT}
    if len(users) > 1:
        raise AccessDenied(f"image {image.path}: its files belong to several users"
                           f" ({sorted(users)}): refusing to restart it", path=image.path)
    return users.pop() if users else ROOT


def _recorded_uid(image: Any, sealed: bool) -> int:
    made = [r for r in image.raw(b"MADE") if isinstance(r, dict)]
    if made and isinstance(made[0].get("uid"), int):
        return int(made[0]["uid"])
    tree = image.raw(b"TREE")[0]
    root = tree["root"]
    for t in image.raw(b"THRD"):
        if t["pid"] == root and t["tid"] == root:
            return int(t["uids"][0])
    return ROOT if sealed else -1


def owner_of(image: Any, sealed: bool) -> Owner:
    """The less privileged of the files' owner and the uid the checkpoint recorded."""
    files = _file_owner(image)
    recorded = _recorded_uid(image, sealed)
    if recorded < 0:
        recorded = files
    if ROOT not in (files, recorded) and files != recorded:
        raise AccessDenied(f"image {image.path} belongs to uid {files} but was made by uid"
                           f" {recorded}: refusing to restart it", path=image.path)
    uid = files if files != ROOT else recorded
    why = "its files' owner" if files != ROOT else "the uid that made it"
    if uid == ROOT:
        return Owner(ROOT, why="root's image")
    gid, gids = _groups(uid, image)
    return Owner(uid, gid, gids, why)


def _groups(uid: int, image: Any) -> tuple[int, set[int]]:
    """The primary group of ``uid`` and all its groups."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:  # a uid without a passwd entry: the group of its files only
        gid = os.stat(image.owner_files()[0], follow_symlinks=False).st_gid
        return gid, {gid}
    return pw.pw_gid, {pw.pw_gid, *os.getgrouplist(pw.pw_name, pw.pw_gid)}


def _deny(owner: Owner, what: str, path: str | None = None) -> AccessDenied:
    return AccessDenied(f"the image belongs to uid {owner.uid} ({owner.why}): {what};"
                        " refusing to restart it", path=path)  # fmt: skip


# -- the rule for an owner who is not root ----------------------------------------------


def check_privilege(image: Any, owner: Owner,
                    translate: Callable[[str], str] | None = None) -> None:  # fmt: skip
    """Raise AccessDenied unless every privileged act of the restore is one ``owner``
    could do.  Paths are checked as ``translate`` makes them (the ones opened)."""
    tr = translate or _same
    _credentials(image, owner)
    _task(image, owner)
    need: list[tuple[str, int, str]] = []  # (path, access mode, what) checked as the owner
    _files(image, owner, need, tr)
    _sockets(image, owner, need, tr)
    _memory(image, owner, need, tr)
    _saved_files(image, owner, need, tr)
    _check_access(owner, need)


def _same(path: str) -> str:
    return path


def check_deferred(owner: Owner, opened: Callable[[str], str]) -> None:
    """Once the restart has extracted the copies saved in the image (--save-files) and
    knows which path it opens for each mapped file and executable (``opened``, the
    translation they added to included): those it opens from where they are, not from a
    copy, checked as the owner.  A copy holds only bytes of the image itself, made never
    set-id in a directory of the restart's: nothing to check."""
    if owner.root or not owner.deferred:
        return
    need = [(then, mode, what) for path, then, mode, what in owner.deferred
            if opened(path) == then]  # fmt: skip
    _check_access(owner, need)


def _credentials(image: Any, owner: Owner) -> None:
    for t in image.raw(b"THRD"):
        who = f"thread {t['tid']} of process {t['pid']}"
        if any(u != owner.uid for u in t["uids"]):
            raise _deny(owner, f"{who} would run as uids {t['uids']}")
        if any(g not in owner.gids for g in [*t["gids"], *t["groups"]]):
            raise _deny(owner, f"{who} would have gids {t['gids']} and groups {t['groups']},"
                        f" not only the owner's {sorted(owner.gids)}")  # fmt: skip
        for name, value in t["caps"].items():
            if name != "CapBnd" and int(value, 16):
                raise _deny(owner, f"{who} would have capabilities ({name} {value})")
        sched = t.get("sched")
        if isinstance(sched, dict):  # real-time policies and raised priorities need
            if sched.get("policy") in (1, 2, 6):  # CAP_SYS_NICE: FIFO, RR, DEADLINE
                raise _deny(owner, f"{who} would have real-time policy {sched['policy']}")
            if sched.get("nice", 0) < os.getpriority(os.PRIO_PROCESS, 0):
                raise _deny(owner, f"{who} would have nice {sched['nice']}")
        if isinstance(t.get("ioprio"), int) and t["ioprio"] >> 13 == 1:  # IOPRIO_CLASS_RT
            raise _deny(owner, f"{who} would have real-time I/O priority")


CLOCK_ALARMS = {8: "CLOCK_REALTIME_ALARM", 9: "CLOCK_BOOTTIME_ALARM"}  # CAP_WAKE_ALARM
RLIMIT_MEMLOCK = 8


def _task(image: Any, owner: Owner) -> None:
    limits = {rec["pid"]: rec["rlimits"] for rec in image.raw(b"TASK")}
    for rec in image.raw(b"MM  "):  # mlock'ed by root: no more than the owner's limit
        locked = sum(v["end"] - v["start"] for v in rec["vmas"] if "lo" in v["flags"])
        soft = limits.get(rec["pid"], {}).get(RLIMIT_MEMLOCK, [0, 0])[0]
        if locked and soft < (1 << 63) and locked > soft:
            raise _deny(owner, f"process {rec['pid']} would have {locked} bytes locked in"
                        f" memory, above its RLIMIT_MEMLOCK {soft} (CAP_IPC_LOCK)")  # fmt: skip
    for rec in image.raw(b"TIMR"):
        for t in rec["posix"]:
            if t["clock"] in CLOCK_ALARMS:
                raise _deny(owner, f"process {rec['pid']} would have a POSIX timer on"
                            f" {CLOCK_ALARMS[t['clock']]} (CAP_WAKE_ALARM)")  # fmt: skip
    fdsc = image.raw(b"FDSC")
    for d in fdsc[0]["descs"] if fdsc else []:
        if d["kind"] == "timerfd" and d.get("clockid") in CLOCK_ALARMS:
            raise _deny(owner, f"fd {d['fd']} of process {d['pid']} would be a timerfd on"
                        f" {CLOCK_ALARMS[d['clockid']]} (CAP_WAKE_ALARM)")  # fmt: skip
    for rec in image.raw(b"TASK"):
        nice = rec.get("autogroup_nice")
        if isinstance(nice, int) and nice < os.getpriority(os.PRIO_PROCESS, 0):
            raise _deny(owner, f"process {rec['pid']} would have autogroup nice {nice}")
        for res, (soft, hard) in rec["rlimits"].items():
            mine = resource.getrlimit(int(res))[1]
            if _above(hard, mine) or _above(soft, hard):
                raise _deny(owner, f"process {rec['pid']} would have limit {res} at"
                            f" ({soft}, {hard}), above cryo's own hard limit")  # fmt: skip
        adj = rec.get("oom_score_adj")
        if isinstance(adj, int) and adj < _own_oom_score_adj():
            raise _deny(owner, f"process {rec['pid']} would have oom_score_adj {adj}")


def _above(a: int, b: int) -> bool:
    inf = resource.RLIM_INFINITY
    a = inf if a >= (1 << 63) else a
    b = inf if b >= (1 << 63) else b
    if b == inf:
        return False
    return a == inf or a > b


def _own_oom_score_adj() -> int:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except OSError:
        return 0


def _access_of(flags: int) -> int:
    acc = flags & O_ACCMODE
    if flags & O_PATH:
        return os.F_OK
    return {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)


def _creatable(path: str) -> str:
    """Where a file recreated at ``path`` is made (its directory, as the engine falls
    back to the temporary directory when it is not there)."""
    parent = os.path.dirname(path)
    return parent if os.path.isdir(parent) else "/tmp"


def _files(image: Any, owner: Owner, need: list[tuple[str, int, str]],
           tr: Callable[[str], str]) -> None:  # fmt: skip
    fdsc = image.raw(b"FDSC")
    for d in fdsc[0]["descs"] if fdsc else []:
        what = f"fd {d['fd']} of process {d['pid']} ({d['kind']} {d['path']})"
        if d["kind"] in ("inotify", "fanotify"):
            _watches(owner, d, what, need, tr)
            continue
        if d["kind"] == "proc":
            _proc_file(owner, d, what)
            continue
        if d["kind"] not in ("file", "dir", "chr", "fifo"):
            continue
        if d.get("ns"):
            _namespace(owner, d, what)
            continue
        if d.get("deleted"):
            _recreated(owner, d, what, need, tr)
            continue
        need.append((tr(d["path"]), _access_of(d["flags"]), f"{what} opened"))
    for rec in image.raw(b"FILE"):
        if rec["root"] != "/":
            raise _deny(owner, f"process {rec['pid']} would be chrooted to {rec['root']}")
        if rec.get("cwd_deleted"):  # made again, as a deleted directory is
            _recreated(owner, {**rec["cwd_deleted"], "kind": "dir", "path": rec["cwd"]},
                       f"the deleted working directory {rec['cwd']} of {rec['pid']}", need,
                       tr)  # fmt: skip
            continue
        need.append((tr(rec["cwd"]), os.X_OK, f"the working directory of {rec['pid']}"))
    for t in image.raw(b"THRD"):  # a thread's own (unshare(CLONE_FS))
        if t.get("fs"):
            need.append((tr(t["fs"]["cwd"]), os.X_OK,
                         f"the working directory of thread {t['tid']} of {t['pid']}"))


def _recreated(owner: Owner, d: dict[str, Any], what: str, need: list[tuple[str, int, str]],
               tr: Callable[[str], str]) -> None:  # fmt: skip
    """A file deleted while open, made again by the restart: a regular file, a memfd, a
    FIFO or a directory, never set-id, the owner's own (its uid, one of its groups), made where the
    owner may create files (a memfd needs no directory)."""
    mode = d["mode"]
    fifo = d["kind"] == "fifo"
    want = {"fifo": stat.S_ISFIFO, "dir": stat.S_ISDIR}.get(d["kind"], stat.S_ISREG)
    if mode & SETID or not want(mode):  # (never a device: mknod makes any device)
        raise _deny(owner, f"{what} would be recreated with mode {mode:o}")
    uid, gid = d.get("uid", owner.uid), d.get("gid", owner.gid)
    if uid != owner.uid or gid not in owner.gids:
        raise _deny(owner, f"{what} would be recreated owned by {uid}:{gid}, not by the"
                    f" owner (uid {owner.uid}, groups {sorted(owner.gids)})")  # fmt: skip
    if "obj" in d or (not fifo and isinstance(d.get("memfd"), dict)):
        return  # reopened from its shared memory object, or a memfd: no directory
    need.append((_creatable(tr(d["path"])), os.W_OK | os.X_OK, f"{what} recreated in"))


PROC_LINKS = {"root", "cwd", "exe", "fd", "map_files"}  # lead out of /proc, anywhere


def _proc_file(owner: Owner, d: dict[str, Any], what: str) -> None:
    """A /proc file of a process of the image is opened by root once that process exists
    again (the owner's own process): never through its magic links (root, cwd, exe, fd,
    map_files), which would open any file as root."""
    parts = str(d["proc"]["rest"]).split("/")
    if PROC_LINKS & set(parts) or ".." in parts:
        raise _deny(owner, f"{what} would be opened by root through /proc/PID"
                    f"{d['proc']['rest']}")  # fmt: skip


FAN_FID_BITS = 0x1E00  # FAN_REPORT_FID, _DIR_FID, _NAME, _TARGET_FID


def _watches(owner: Owner, d: dict[str, Any], what: str, need: list[tuple[str, int, str]],
             tr: Callable[[str], str]) -> None:  # fmt: skip
    """inotify watches and fanotify marks are added by root on inodes opened by their
    file handle (CAP_DAC_READ_SEARCH): for another owner only on a file its path names
    (that very inode, here) and the owner may read, as inotify_add_watch asks; a
    fanotify group only of the kind a user may make (notification class, reporting
    file ids), with inode marks only."""
    if d["kind"] == "fanotify":
        flags = d.get("fan_flags", 0)
        if flags & ~FAN_FID_BITS or not flags & FAN_FID_BITS:
            raise _deny(owner, f"{what} would be a fanotify group with flags {flags:#x},"
                        " which only root may make")  # fmt: skip
    for m in [*d.get("watches", []), *d.get("marks", [])]:
        if m.get("on", "inode") != "inode":
            raise _deny(owner, f"{what} would watch a whole {m['on']} (CAP_SYS_ADMIN)")
        path = m.get("path")
        if not path:
            raise _deny(owner, f"{what} would watch inode {m['ino']} by its handle only")
        path = tr(path)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (m["dev"], m["ino"]):
            raise _deny(owner, f"{what} would watch inode {m['ino']}, which is not {path}")
        need.append((path, os.R_OK, f"{what} watches"))


def _namespace(owner: Owner, d: dict[str, Any], what: str) -> None:
    """A namespace fd is reopened by root from any process in that namespace: for
    another owner, only the namespaces cryo (and so the restored processes) is in."""
    kind, ino = d["ns"], d["nsino"]
    for name in (kind, f"{kind}_for_children"):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/self/ns/{name}").st_ino == ino:
                return
    raise _deny(owner, f"{what} would be the namespace {kind}:[{ino}], which the restored"
                " processes are not in")  # fmt: skip


def _memory(image: Any, owner: Owner, need: list[tuple[str, int, str]],
            tr: Callable[[str], str]) -> None:  # fmt: skip
    shmo = image.raw(b"SHMO")
    for o in shmo[0]["objs"] if shmo else []:
        if o["mode"] & SETID:
            raise _deny(owner, f"shared memory object {o['id']} would have mode {o['mode']:o}")
        if not owner.root and "uid" in o and (o["uid"] != owner.uid
                                              or o["gid"] not in owner.gids):
            raise _deny(owner, f"shared memory object {o['id']} would be owned by"
                        f" {o['uid']}:{o['gid']}")  # fmt: skip
        if o["kind"] == "deleted":
            path = tr(str(o["name"]).removesuffix(" (deleted)"))
            need.append((_creatable(path), os.W_OK | os.X_OK,
                         f"shared memory object {o['id']} ({path}) recreated in"))
    saved = {f["path"] for r in image.raw(b"SPMF") for f in r["files"]}
    segments: dict[int, Any] | None = None

    def mapped(path: str, mode: int, what: str) -> None:
        if path.removesuffix(" (deleted)") in saved:  # a copy may stand in: decided later
            owner.deferred.append((path, tr(path), mode, what))
        else:
            need.append((tr(path), mode, what))

    for rec in image.raw(b"MM  "):
        pid = rec["pid"]
        mapped(rec["exe"], os.X_OK, f"the executable of {pid}")
        for v in rec["vmas"]:
            what = f"mapping {v['start']:#x} of {pid} ({v['path']})"
            if any(lk["kind"] == "ofd" and lk["mode"] == "WRITE" for lk in v.get("locks", ())):
                # its file opened for writing, to take the lock again (engine/locks.py)
                need.append((tr(v["path"]), os.R_OK | os.W_OK, f"{what} write-locked (OFD)"))
            if v["kind"] == "file":
                mapped(v["path"], os.R_OK, f"{what} mapped")
            elif v["kind"] == "shared-file":
                mode = os.R_OK | (os.W_OK if v["prot"] & PROT_WRITE else 0)
                need.append((tr(v["path"]), mode, f"{what} mapped shared"))
            elif v["kind"] == "sysv-shm":
                if segments is None:
                    segments = _live_segments()
                _segment(image, owner, v, segments, what)


def _saved_files(image: Any, owner: Owner, need: list[tuple[str, int, str]],
                 tr: Callable[[str], str]) -> None:  # fmt: skip
    """Files a cryo.app agent saved are put back (written, replaced) by the restart:
    only where the owner may write them."""
    for rec in image.raw(b"APPX"):
        for f in rec["files"]:
            path = tr(f["path"])
            what = f"saved file {path} of process {rec['pid']} put back"
            need.append((os.path.dirname(path) or "/", os.W_OK | os.X_OK, f"{what} in"))
            if os.path.lexists(path):
                need.append((path, os.W_OK, what))
                _may_unlink(owner, path, what)


def _may_unlink(owner: Owner, path: str, what: str) -> None:
    """The restart replaces or unlinks ``path`` (as root): in a sticky directory (/tmp)
    only a file of the owner's (access() does not say so)."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        parent = os.lstat(os.path.dirname(path) or "/")
        if parent.st_mode & stat.S_ISVTX and owner.uid not in (st.st_uid, parent.st_uid):
            raise _deny(owner, f"{what}: {path} belongs to uid {st.st_uid} in a sticky"
                        " directory", path)  # fmt: skip


# -- sockets: made by root, so checked here -----------------------------------------------

SO_PRIORITY, SO_MARK, IP_TRANSPARENT, TCP_CONGESTION = 12, 36, 19, 13
SOL_SOCKET, SOL_IP, SOL_TCP = 1, 0, 6
AF_INET, AF_INET6, AF_PACKET, AF_NETLINK = 2, 10, 17, 16
IPPROTO_ICMP, IPPROTO_ICMPV6 = 1, 58
NETLINK_NONROOT_RECV = {0, 15, 16}  # ROUTE, KOBJECT_UEVENT, GENERIC: groups for anyone


def _sysctl(name: str, default: str) -> str:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return default


def _sockets(image: Any, owner: Owner, need: list[tuple[str, int, str]],
             tr: Callable[[str], str]) -> None:  # fmt: skip
    """What the restart does as root for a socket, only where the owner could: bind a
    unix socket where the owner may create files (and remove the socket file there only
    if the owner may), connect to a unix socket outside the image only for datagrams
    the owner may send there (a stream or seqpacket server would see root's
    credentials), no raw or packet socket, no port below the unprivileged ones, no
    netlink group only root may join, no option only root may set."""
    from cryo.engine.translate import unix_path

    fdsc = image.raw(b"FDSC")
    for d in fdsc[0]["descs"] if fdsc else []:
        what = f"fd {d['fd']} of process {d['pid']} ({d['kind']} socket)"
        if d["kind"] == "unix":
            name = unix_path(d, "name")
            if name and not d.get("unlinked"):
                path = tr(name)
                need.append((os.path.dirname(path) or "/", os.W_OK | os.X_OK,
                             f"{what} bound to {path} in"))  # fmt: skip
                _may_unlink(owner, path, f"{what} bound")
            for key in ("peercred", "connect_cred"):  # made with these creds (SO_PEERCRED)
                cred = d.get(key)
                if cred and not (cred[1] == owner.uid and cred[2] in owner.gids
                                 and set(cred[3]) <= owner.gids):  # fmt: skip
                    raise _deny(owner, f"{what} would carry the credentials uid {cred[1]},"
                                f" gid {cred[2]}, groups {cred[3]} (SO_PEERCRED)")
            if d.get("external"):
                if d.get("sotype") != "dgram":
                    raise _deny(owner, f"{what} would be connected by root to"
                                f" {d.get('peer_name')!r} outside the image (its server would"
                                " see root's credentials)")  # fmt: skip
                peer = unix_path(d, "peer_name")
                if peer:
                    need.append((tr(peer), os.W_OK, f"{what} connected to"))
        elif d["kind"] == "inet":
            _inet(owner, d, what)
        if d["kind"] in ("unix", "inet"):
            _socket_options(owner, d, what)


def _inet(owner: Owner, d: dict[str, Any], what: str) -> None:
    family, sotype, proto = d.get("family"), d.get("sotype"), d.get("proto")
    if family == AF_PACKET or sotype == "raw":
        raise _deny(owner, f"{what} would be a raw or packet socket (CAP_NET_RAW)")
    if family in (AF_INET, AF_INET6) and proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        lo, hi = (int(x) for x in _sysctl("net/ipv4/ping_group_range", "1 0").split())
        if not any(lo <= g <= hi for g in owner.gids):
            raise _deny(owner, f"{what} would be an ICMP socket, which its groups may not"
                        " open (net.ipv4.ping_group_range)")  # fmt: skip
    if family in (AF_INET, AF_INET6) and proto not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        start = int(_sysctl("net/ipv4/ip_unprivileged_port_start", "1024"))
        local = d.get("local")
        port = local[1] if isinstance(local, list) and len(local) > 1 else 0
        if isinstance(port, int) and 0 < port < start:
            raise _deny(owner, f"{what} would have port {port}, below the unprivileged ports"
                        f" ({start})")  # fmt: skip
    if family == AF_NETLINK and d.get("groups") and proto not in NETLINK_NONROOT_RECV:
        raise _deny(owner, f"{what} would join netlink groups {d['groups']} of protocol"
                    f" {proto}, which only root may join")  # fmt: skip
    t = d.get("tcp")
    if isinstance(t, dict):
        most = max(int(_sysctl("net/core/wmem_max", "212992")),
                   int(_sysctl("net/core/rmem_max", "212992")),
                   *(int(x) for x in (_sysctl("net/ipv4/tcp_wmem", "4096 16384 4194304")
                                      + " " + _sysctl("net/ipv4/tcp_rmem",
                                                      "4096 131072 6291456")).split()))
        for key, queue in (("sndbuf", "sendq"), ("rcvbuf", "recvq")):
            if t[key] > 2 * max(most, len(t[queue])):
                raise _deny(owner, f"{what} would have {key} {t[key]} (forced by root)")


def _socket_options(owner: Owner, d: dict[str, Any], what: str) -> None:
    allowed = set(_sysctl("net/ipv4/tcp_allowed_congestion_control", "reno cubic").split())
    for level, opt, raw in d.get("opts", []):
        value = int.from_bytes(raw[:4], "little", signed=True) if len(raw) >= 4 else 0
        if (level, opt) == (SOL_SOCKET, SO_MARK) and value:
            bad = f"SO_MARK {value} (CAP_NET_ADMIN)"
        elif (level, opt) == (SOL_SOCKET, SO_PRIORITY) and not 0 <= value <= 6:
            bad = f"SO_PRIORITY {value} (CAP_NET_ADMIN)"
        elif (level, opt) == (SOL_IP, IP_TRANSPARENT) and value:
            bad = "IP_TRANSPARENT (CAP_NET_ADMIN)"
        elif (level, opt) == (SOL_TCP, TCP_CONGESTION):
            algo = bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
            if algo in allowed:
                continue
            bad = f"TCP_CONGESTION {algo} (not in net.ipv4.tcp_allowed_congestion_control)"
        else:
            continue
        raise _deny(owner, f"{what} would have {bad}")


def _live_segments() -> dict[int, Any]:
    from cryo.ipc import live

    return {o.key: o for o in live("shm") if o.key != 0}


def _segment(image: Any, owner: Owner, v: dict[str, Any], segments: dict[int, Any],
             what: str) -> None:  # fmt: skip
    o = segments.get(v["key"])
    write = bool(v["prot"] & PROT_WRITE)
    if o is not None:  # attached to the live segment with that key
        if owner.uid in (o.uid, o.cuid):
            bits = (o.mode >> 6) & 0o7
        elif o.gid in owner.gids:
            bits = (o.mode >> 3) & 0o7
        else:
            bits = o.mode & 0o7
        if not bits & 0o4 or (write and not bits & 0o2):
            raise _deny(owner, f"{what} would attach System V segment key {v['key']:#x}"
                        f" of uid {o.uid} (mode {o.mode & 0o777:o})")  # fmt: skip
        return
    from cryo.engine.sysvshm import side_file
    from cryo.ipc import shm

    f = image.side_file(side_file(v["shmid"]))
    perm = shm.read(_fd_path(f)).perm  # recreated with the owner and creator it saved
    if perm.uid != owner.uid or perm.cuid != owner.uid:
        raise _deny(owner, f"{what} would recreate System V segment {v['shmid']} owned by"
                    f" uid {perm.uid}")  # fmt: skip


def _fd_path(f: Any) -> Any:
    from pathlib import Path

    return Path(f"/proc/self/fd/{f.fileno()}")


def _check_access(owner: Owner, need: list[tuple[str, int, str]]) -> None:
    """Check each (path, mode) as the owner would (in a child that is that user:
    permissions on the whole path, ACLs, mounts), all at once."""
    if not need:
        return
    import json  # (a user's restart only: 2 ms of a root's start-up, docs/design.md)

    def attempt() -> bytes:
        for i, (path, mode, _what) in enumerate(need):
            if not os.access(path, mode):
                return json.dumps([i, errno.EACCES if os.path.lexists(path)
                                   else errno.ENOENT]).encode()  # fmt: skip
        return b"null"

    out = run_as(owner.uid, owner.gid, owner.gids, attempt)
    try:
        bad = json.loads(out if out is not None else b"")
    except ValueError as err:
        raise AccessDenied(f"the files of the image could not be checked as uid {owner.uid}:"
                           " refusing to restart it") from err  # fmt: skip
    if bad is None:
        return
    path, mode, what = need[bad[0]]
    how = "".join(c for c, m in (("r", os.R_OK), ("w", os.W_OK), ("x", os.X_OK)) if mode & m)
    raise _deny(owner, f"{what} {path}: {os.strerror(bad[1])} for that user (access"
                f" {how or 'exists'})", path)  # fmt: skip


def open_as_owner(owner: Owner, requests: list[tuple[str, int, int]]) -> list[int]:
    """Open each (path, flags, mode) as ``owner``: in a child that has become that user,
    the fds handed back (SCM_RIGHTS).  What the restore then holds is what the owner
    could open, whatever changed since :func:`admit` looked (a link swapped in), and a
    file it creates is the owner's.  For root, opened here.  Raises the first OSError."""
    if owner.root:
        out: list[int] = []
        try:
            for path, flags, mode in requests:
                out.append(os.open(path, flags | os.O_CLOEXEC, mode))
        except BaseException:
            for fd in out:
                os.close(fd)
            raise
        return out
    import json
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.setgroups(sorted(owner.gids))
            os.setresgid(owner.gid, owner.gid, owner.gid)
            os.setresuid(owner.uid, owner.uid, owner.uid)
            for path, flags, mode in requests:
                try:
                    fd = os.open(path, flags | os.O_CLOEXEC, mode)
                except OSError as err:
                    theirs.sendall(json.dumps([err.errno or errno.EIO]).encode().ljust(16))
                    break
                socket.send_fds(theirs, [b"0".ljust(16)], [fd])
                os.close(fd)
        finally:
            os._exit(0)
    theirs.close()
    got: list[int] = []
    try:
        for path, _flags, _mode in requests:
            msg, fds, _f, _a = socket.recv_fds(ours, 16, 1)
            if fds:
                got.append(fds[0])
                continue
            code = json.loads(msg.decode().strip() or "[5]")[0] if msg else errno.EIO
            raise OSError(code, os.strerror(code), path)
    except BaseException:
        for fd in got:
            os.close(fd)
        raise
    finally:
        ours.close()
        os.waitpid(pid, 0)
    return got


__all__ = ["Owner", "admit", "check_deferred", "check_privilege", "check_seal",
           "open_as_owner", "owner_of", "restarted"]
