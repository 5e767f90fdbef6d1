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

import errno
import json
import logging
import os
import pwd
import resource
import stat
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

    @property
    def root(self) -> bool:
        return self.uid == ROOT


def admit(image: Any, *, trust_image: bool = False, allow_duplicate: bool = False) -> Owner:
    """Check ``image`` (an opened ImageSource) before a restart creates anything: grammar,
    seal, the privilege rule, a copy already running.  Returns the owner."""
    image.check()
    sealed = check_seal(image, trust_image)
    owner = owner_of(image, sealed)
    if not owner.root:
        check_privilege(image, owner)
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


def check_privilege(image: Any, owner: Owner) -> None:
    """Raise AccessDenied unless every privileged act of the restore is one ``owner``
    could do."""
    _credentials(image, owner)
    _task(image, owner)
    need: list[tuple[str, int, str]] = []  # (path, access mode, what) checked as the owner
    _files(image, owner, need)
    _memory(image, owner, need)
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


def _task(image: Any, owner: Owner) -> None:
    for rec in image.raw(b"TASK"):
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


def _files(image: Any, owner: Owner, need: list[tuple[str, int, str]]) -> None:
    fdsc = image.raw(b"FDSC")
    for d in fdsc[0]["descs"] if fdsc else []:
        what = f"fd {d['fd']} of process {d['pid']} ({d['kind']} {d['path']})"
        if d["kind"] not in ("file", "dir", "chr", "fifo"):
            continue
        if d.get("deleted"):
            if d["mode"] & SETID or not stat.S_ISREG(d["mode"]):
                raise _deny(owner, f"{what} would be recreated with mode {d['mode']:o}")
            need.append((_creatable(d["path"]), os.W_OK | os.X_OK, f"{what} recreated in"))
            continue
        need.append((d["path"], _access_of(d["flags"]), f"{what} opened"))
    for rec in image.raw(b"FILE"):
        if rec["root"] != "/":
            raise _deny(owner, f"process {rec['pid']} would be chrooted to {rec['root']}")
        need.append((rec["cwd"], os.X_OK, f"the working directory of {rec['pid']}"))


def _memory(image: Any, owner: Owner, need: list[tuple[str, int, str]]) -> None:
    shmo = image.raw(b"SHMO")
    for o in shmo[0]["objs"] if shmo else []:
        if o["mode"] & SETID:
            raise _deny(owner, f"shared memory object {o['id']} would have mode {o['mode']:o}")
        if o["kind"] == "deleted":
            path = str(o["name"]).removesuffix(" (deleted)")
            need.append((_creatable(path), os.W_OK | os.X_OK,
                         f"shared memory object {o['id']} ({path}) recreated in"))
    segments: dict[int, Any] | None = None
    for rec in image.raw(b"MM  "):
        pid = rec["pid"]
        need.append((rec["exe"], os.X_OK, f"the executable of {pid}"))
        for v in rec["vmas"]:
            what = f"mapping {v['start']:#x} of {pid} ({v['path']})"
            if v["kind"] == "file":
                need.append((v["path"], os.R_OK, f"{what} mapped"))
            elif v["kind"] == "shared-file":
                mode = os.R_OK | (os.W_OK if v["prot"] & PROT_WRITE else 0)
                need.append((v["path"], mode, f"{what} mapped shared"))
            elif v["kind"] == "sysv-shm":
                if segments is None:
                    segments = _live_segments()
                _segment(image, owner, v, segments, what)


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


__all__ = ["Owner", "admit", "check_privilege", "check_seal", "open_as_owner", "owner_of",
           "restarted"]
