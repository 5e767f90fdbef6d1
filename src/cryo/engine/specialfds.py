"""Special files an fd may hold: namespace files (/proc/PID/ns/*), pidfds, and /proc
files of processes.

A namespace fd (its link reads ``net:[4026531833]``) is saved by its type and inode and
reopened at restart from a process that is in that very namespace (cryo itself first);
a namespace that no longer exists fails the restart with its name.

A pidfd (fdinfo ``Pid:``) of a process of the checkpoint, and an fd on a /proc file of
one (``/proc/PID/status``, ``/proc/PID/maps``, the directory ``/proc/PID``, ...), are
*late* descriptions: they can only be opened once that process exists again, so cryo
opens them (pidfd_open of its new pid; the path with its new pid) once every process is
made, and each process holding one takes it with an injected pidfd_getfd from cryo
(through a pidfd of cryo it inherited), at the fd number it had: a description shared by
several fds or processes stays one.  A pidfd of a process outside the checkpoint is
reopened on that process only if it is still the one (same pid and start time); so is a
/proc file of an outside process.

A pidfd of a thread other than a leader (pidfd_open with PIDFD_THREAD, or of its tid),
held only by that thread's own process, is late too, later still: the threads are made
after the fds, so it is opened (pidfd_open of the thread's new tid) and put at its fd
number (pidfd_getfd, dup3) in the "timers" stage, once that process's threads exist.
Refused by name: a pidfd of a process already reaped (``Pid: -1``) or not in our pid
namespace; a thread's pidfd held by another process (processes are built one after the
other: the thread may not exist yet when the holder takes its fds); a /proc file of a
thread other than a leader.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from typing import Any

from cryo import procfs
from cryo.errors import CryoError, Unsupported
from cryo.linux import fdcalls

_NS = re.compile(r"^(cgroup|ipc|mnt|net|pid|time|user|uts):\[(\d+)\]$")
PROC_PID = re.compile(r"^/proc/(\d+)(?:/|$)")


def is_ns(target: str) -> bool:
    return _NS.match(target) is not None


def describe_ns(target: str) -> dict[str, Any]:
    m = _NS.match(target)
    assert m is not None
    return {"ns": m.group(1), "nsino": int(m.group(2)), "path": f"/proc/self/ns/{m.group(1)}"}


def find_ns(d: dict[str, Any]) -> str:
    """A path that opens the namespace of ``d`` (cryo's own, else some process's)."""
    kind, ino = d["ns"], d["nsino"]
    names = [f"/proc/self/ns/{kind}"]
    if kind in ("pid", "time"):
        names.append(f"/proc/self/ns/{kind}_for_children")
    for name in names:
        with contextlib.suppress(OSError):
            if os.stat(name).st_ino == ino:
                return name
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        name = f"/proc/{pid}/ns/{kind}"
        with contextlib.suppress(OSError):
            if os.stat(name).st_ino == ino:
                return name
    raise CryoError(f"fd {d['fd']} of process {d['pid']}: the namespace {kind}:[{ino}] it"
                    " held no longer exists", pid=d["pid"], resource=f"fd {d['fd']}")


PIDFD = "anon_inode:[pidfd]"
PIDFD_FLAGS = os.O_NONBLOCK | fdcalls.PIDFD_THREAD


def _start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[22 - 3])  # field 22


def describe_pidfd(pid: int, fd: int, fdinfo: bytes) -> dict[str, Any]:
    kv = procfs.parse_fdinfo(fdinfo).extra
    target = int(kv.get("Pid", "0"))
    if target == -1:
        raise Unsupported(f"fd {fd}: pidfd of a process that has exited and was reaped (a"
                          " pidfd of it cannot be made again)", pid=pid, resource=f"fd {fd}")
    if target == 0:
        raise Unsupported(f"fd {fd}: pidfd of a process outside our pid namespace", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    return {"target": target, "start": _start(target)}


def check_proc(descs: list[dict[str, Any]], pids: set[int],
               zombies: frozenset[int] = frozenset()) -> None:  # fmt: skip
    """Once every process is collected: pidfds and /proc files of the checkpoint's own
    processes become late descriptions (opened once they exist again); those of their
    threads other than the leader are refused; /proc files of other processes keep the
    start time of that process (reopened only on the same one).  A pidfd of one of its
    ``zombies`` is late too: the zombie-to-be exists until the restart's last stage."""
    for d in descs:
        if d["kind"] == "pidfd":
            target = int(d["target"])
            if target in pids or target in zombies:
                _late(d, pids, "a pidfd of a process of the checkpoint")
                continue
            owner = _process_of(target, pids)
            if owner is not None:  # a thread's: opened once the threads exist
                _late(d, pids, f"a pidfd of thread {target}")
                d["thread_of"] = owner
            continue
        m = PROC_PID.match(str(d.get("path", "")))
        if m is None or d["kind"] not in ("file", "dir"):
            continue
        target = int(m.group(1))
        if target in pids:
            _late(d, pids, f"{d['path']}, a /proc file of a process of the checkpoint,")
            d["proc"] = {"pid": target, "rest": d["path"][m.end(1):], "kind": d["kind"]}
            d["kind"] = "proc"
            continue
        _refuse_thread(d, target, pids, f"{d['path']} is a /proc file of thread {target}")
        d["start"] = _start(target)


def _late(d: dict[str, Any], pids: set[int], what: str) -> None:
    if d["pid"] not in pids:  # (one cryo holds: in flight on a unix socket)
        raise Unsupported(f"{what} in flight on a unix socket is not supported (it can be"
                          " made only once that process exists)", resource="fd in flight")
    d["late"] = True


def _process_of(tid: int, pids: set[int]) -> int | None:
    """The process of the checkpoint ``tid`` is a thread of, if any."""
    for p in pids:
        if os.path.exists(f"/proc/{p}/task/{tid}"):
            return p
    return None


def check_thread_pidfds(session: Any) -> None:
    """Driver hook, once for all processes (after files.dump_shared): a thread's pidfd
    held by a process other than that thread's own is refused (see the module's text)."""
    descs = session.shared.descs.descs
    for c in session.contexts:
        for e in c.records[b"FILE"]["fds"]:
            d = descs[e["desc"]]
            if "thread_of" in d and d["thread_of"] != c.pid:
                raise Unsupported(f"fd {e['fd']}: pidfd of thread {d['target']} of process"
                                  f" {d['thread_of']}, held by another process (its threads"
                                  " are made after that process's fds): only the thread's own"
                                  " process's is supported", pid=c.pid,
                                  resource=f"fd {e['fd']}")  # fmt: skip


def restore_thread_pidfds(ctx: Any) -> None:
    """Stage "timers", once the process's threads exist: each pidfd of one of its threads
    opened by cryo on the thread's new tid and put at its fd number."""
    inj = ctx.inj
    opened = ctx.shared.opened
    mine = [e for e in ctx.records[b"FILE"]["fds"] if "thread_of" in ctx.shared.descs[e["desc"]]]
    if not mine:
        return
    # the pidfd of cryo the process inherited is closed by now (files.restore_fds): one
    # of its own, for pidfd_getfd (it is still root's: its credentials come later)
    low = inj(SYS_PIDFD_OPEN, os.getpid(), 0, what=" pidfd_open of cryo")
    try:  # above every fd number of the image (it could take a free one of theirs)
        me = inj(SYS_FCNTL, low, F_DUPFD_CLOEXEC, opened.base, what=" F_DUPFD of cryo's pidfd")
    finally:
        inj(SYS_CLOSE, low)
    try:
        for e in mine:
            d = ctx.shared.descs[e["desc"]]
            if d["id"] not in opened.late:
                tid = ctx.tid_map[int(d["target"])]
                opened.late[d["id"]] = fdcalls.pidfd_open(tid, d["flags"] & PIDFD_FLAGS)
            src = inj(SYS_PIDFD_GETFD, me, opened.late[d["id"]], 0,
                      what=f" pidfd_getfd of fd {e['fd']}")  # fmt: skip
            if src == e["fd"]:  # (its number was free: the lowest)
                inj(SYS_FCNTL, src, F_SETFD, 1 if e["cloexec"] else 0)
                continue
            inj(SYS_DUP3, src, e["fd"], os.O_CLOEXEC if e["cloexec"] else 0,
                what=f" dup3 to fd {e['fd']}")  # fmt: skip
            inj(SYS_CLOSE, src)
    finally:
        inj(SYS_CLOSE, me)


SYS_CLOSE, SYS_FCNTL, SYS_DUP3, SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 3, 72, 292, 434, 438
F_SETFD, F_DUPFD_CLOEXEC = 2, 1030


def _refuse_thread(d: dict[str, Any], tid: int, pids: set[int], what: str) -> None:
    for p in pids:
        if os.path.exists(f"/proc/{p}/task/{tid}"):
            raise Unsupported(f"fd {d['fd']}: {what} of process {p}, which is part of the"
                              " checkpoint: only a thread group leader's is supported",
                              pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def same_process(d: dict[str, Any], pid: int, what: str) -> None:
    """At restart: ``pid`` is still the process it was at checkpoint (its start time)."""
    if d.get("start") is None or _start(pid) != d["start"]:
        raise CryoError(f"fd {d['fd']} of process {d['pid']}: {what} of process {pid}, which"
                        " is no longer the process it was at checkpoint (it exited, or its pid"
                        " was reused)", pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def open_pidfd(d: dict[str, Any]) -> int:
    """A pidfd of a process outside the checkpoint: the same process still."""
    target = int(d["target"])
    try:
        fd = fdcalls.pidfd_open(target, d["flags"] & PIDFD_FLAGS)
    except OSError:
        same_process(d, target, "pidfd")
        raise
    try:
        same_process(d, target, "pidfd")
        signal.pidfd_send_signal(fd, 0)  # still alive after the check: not reused since
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_late(d: dict[str, Any], pid_map: dict[int, int]) -> int:
    """In cryo, once every process exists: a late description of ``d`` (its processes
    by their new pids)."""
    if d["kind"] == "pidfd":
        return fdcalls.pidfd_open(pid_map[int(d["target"])], d["flags"] & PIDFD_FLAGS)
    p = d["proc"]
    path = f"/proc/{pid_map[int(p['pid'])]}{p['rest']}"
    flags = d["flags"] & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | 0o20000)
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as err:
        raise CryoError(f"fd {d['fd']} of process {d['pid']}: cannot reopen {path}:"
                        f" {err.strerror}", resource=f"fd {d['fd']}", path=path) from err
    if d["pos"] and not flags & os.O_PATH:
        os.lseek(fd, d["pos"], os.SEEK_SET)
    return fd


def show(d: dict[str, Any]) -> dict[str, Any]:
    if d["kind"] == "pidfd" and "thread_of" in d:
        return {"pidfd_of": d["target"], "thread_of": d["thread_of"]}
    if d["kind"] == "pidfd":
        return {"pidfd_of": d["target"]}
    if d["kind"] == "proc":
        return {"proc_of": d["proc"]["pid"]}
    return {}
