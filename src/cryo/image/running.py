"""Is this image running already?  One image restarted twice at once would have two
copies share what one of them owns: its System V segments (attached by key), the files
it writes at its own offsets (opened for writing without O_APPEND, or mapped shared and
writable).  Such a second restart is refused ("image DIR is already running as pid N",
RestoreConflict, exit 10) unless the caller asks for a duplicate; an image that shares
none of these restarts as often as asked.

A restart that succeeds leaves a marker ``/run/cryo/running/<id>`` (the image's
identity: its real path and core.img's device and inode) holding the restored root's pid
and start time; it counts while that process lives.  From :func:`check` to the end of the
restart the marker's lock is held, so two restarts racing see each other.  Markers of
processes that ended are removed by the next restart that looks (:func:`prune`), each
under its lock taken without waiting, so a restart holding one is never disturbed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any

from cryo import procfs
from cryo.errors import RestoreConflict
from cryo.image import format as fmt

RUN_DIR = "/run/cryo/running"
O_ACCMODE, O_APPEND, O_PATH = 0o3, 0o2000, 0o10000000
PROT_WRITE = 2


def identity(image: Any) -> str:
    if hasattr(image, "identity"):  # an image with no file (a stream): its own
        return str(image.identity())
    core = os.path.join(image.path, "core.img")
    st = os.stat(core)
    text = f"{os.path.realpath(image.path)}\0{st.st_dev}\0{st.st_ino}"
    return fmt.blake2b(text.encode(), digest_size=16).hexdigest()


def shared_state(image: Any) -> list[str]:
    """What two copies of ``image`` running at once would share."""
    out = []
    for rec in image.raw(b"MM  "):
        for v in rec["vmas"]:
            if v["kind"] == "sysv-shm":
                out.append(f"System V segment key {v['key']:#x} (process {rec['pid']})")
            elif v["kind"] == "shared-file" and v["prot"] & PROT_WRITE:
                out.append(f"{v['path']} mapped shared and writable (process {rec['pid']})")
    fdsc = image.raw(b"FDSC")
    for d in fdsc[0]["descs"] if fdsc else []:
        if d["kind"] == "file" and not d.get("deleted") and not d["flags"] & O_PATH \
                and d["flags"] & O_ACCMODE and not d["flags"] & O_APPEND:  # fmt: skip
            out.append(f"{d['path']} open for writing at its own offset (fd {d['fd']} of"
                       f" {d['pid']})")  # fmt: skip
    return out


def _who(path: str) -> int | None:
    """The pid a marker names, if that process still runs."""
    import json  # (only where an image has a marker: 2 ms of start-up)

    try:
        with open(path) as f:
            m = json.load(f)
        pid, start = int(m["pid"]), int(m["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if procfs.start_time(pid) == start else None


class Claim:
    """The lock on one image's marker, held until the restart ends (close)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def mark(self, pid: int) -> None:
        start = procfs.start_time(pid)
        if start is None:
            return
        import json

        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": pid, "start": start}, f)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _locked(path: str, *, wait: bool = True) -> int | None:
    """``path``.lock opened and locked, and still the file at that path once locked (a
    pruner may have removed it meanwhile: then again); None if busy and not ``wait``."""
    while True:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            st = os.stat(f"{path}.lock", follow_symlinks=False)
        except FileNotFoundError:
            st = None
        mine = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


def prune(run_dir: str = RUN_DIR) -> list[str]:
    """Remove the markers (and their locks) of restarts whose process ended; returns
    the identities removed."""
    gone: list[str] = []
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return gone
    for ident in sorted({n.split(".", 1)[0] for n in names}):
        path = os.path.join(run_dir, ident)
        fd = _locked(path, wait=False)
        if fd is None:  # a restart holds it now
            continue
        try:
            if _who(path) is not None:
                continue
            for n in names:  # a marker half written by a restart that died (ID.PID)
                if n.startswith(f"{ident}.") and n[len(ident) + 1 :].isdigit() \
                        and procfs.start_time(int(n[len(ident) + 1 :])) is None:  # fmt: skip
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(run_dir, n))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.unlink(f"{path}.lock")  # (under its lock: see _locked)
            gone.append(ident)
        finally:
            os.close(fd)
    return gone


def check(image: Any, *, allow_duplicate: bool = False) -> None:
    """Refuse a second copy of a running image that would share state with the first;
    otherwise hold the image's marker lock until ``image.close()`` (see :func:`mark`)."""
    shared = shared_state(image)
    if not shared:
        return
    try:
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        path = os.path.join(RUN_DIR, identity(image))
        prune(RUN_DIR)
        fd = _locked(path)
    except OSError:  # not root: no markers (the restart is this user's business)
        return
    assert fd is not None
    claim = Claim(path, fd)
    pid = _who(path)
    if pid is not None and not allow_duplicate:
        claim.close()
        raise RestoreConflict(f"image {image.path} is already running as pid {pid} (both"
                              f" would share {shared[0]}); --allow-duplicate restarts a"
                              " second copy", pid=pid, path=image.path)  # fmt: skip
    image.running_claim = claim


def mark(image: Any, pid: int) -> None:
    """After a restart of ``image`` succeeded: its root process is ``pid``."""
    claim = getattr(image, "running_claim", None)
    if claim is not None:
        with contextlib.suppress(OSError):
            claim.mark(pid)


def release(image: Any) -> None:
    claim = getattr(image, "running_claim", None)
    if claim is not None:
        claim.close()
        image.running_claim = None
