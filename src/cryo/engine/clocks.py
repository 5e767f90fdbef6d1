"""The clocks a restart could turn back: CLOCK_MONOTONIC and CLOCK_BOOTTIME.

They count from the host's boot, so a process restarted after a reboot, or on another
host up for less time, would see them go backwards: a program's deadlines, rate limits
and timeouts (Go's runtime, the JVM, asyncio, any `clock_gettime` loop) would be wrong
by hours.  So the checkpoint keeps, in HEAD["clocks"], the two clocks as the process
reads them (through its time namespace's offsets) and the wall clock, at the moment it
was frozen; and when the restarting host's clocks are behind, the tree is restarted in a
time namespace of its own whose offsets make both clocks go on from where they were,
plus the wall-clock time the image waited (never back, and on by as long as the process
was away, as they would have on one host).  On the same boot they are ahead already: the
process stays in cryo's time namespace, as before.

A process in a time namespace other than cryo's is taken the same way: its clocks are
read through its namespace's offsets, and the restart gives a namespace of its own only
where cryo's clocks would be behind.  What is refused (engine/namespaces.py): processes
of one checkpoint in different time namespaces (there is one set of clocks per image),
and a process or thread whose namespace for its children is another
(``unshare(CLONE_NEWTIME)`` before a fork: the children to come would get offsets the
restart does not know).

The namespace is made by a short-lived child of cryo (``unshare``, then the offsets
written to its ``timens_offsets`` before any process is in it) that forks the root with
CLONE_PARENT, so that the root is cryo's child as usual and cryo's own threads keep their
namespace for their children.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from cryo.errors import CryoError
from cryo.linux import libc
from cryo.linux.consts import CLONE

CLONE_NEWTIME = 0x80
SYS_UNSHARE = 272
NS = 10**9


def _offsets(path: str) -> tuple[int, int]:
    """(monotonic, boottime) offsets in ns of a timens_offsets file (0, 0 without one)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:  # (a kernel without time namespaces)
        return 0, 0
    off = {"monotonic": 0, "boottime": 0}
    for line in text.splitlines():
        name, sec, nsec = line.split()
        off[name] = int(sec) * NS + int(nsec)
    return off["monotonic"], off["boottime"]


def _own() -> tuple[int, int]:
    """cryo's clocks: (monotonic, boottime) in ns, as it reads them."""
    return (time.clock_gettime_ns(time.CLOCK_MONOTONIC),
            time.clock_gettime_ns(time.CLOCK_BOOTTIME))  # fmt: skip


def shift(pid: int) -> tuple[int, int]:
    """How far process ``pid``'s CLOCK_MONOTONIC and CLOCK_BOOTTIME are ahead of cryo's,
    in ns (the difference of their time namespaces' offsets: namespaces.check made sure
    the process's namespace is the one its file shows)."""
    pm, pb = _offsets(f"/proc/{pid}/timens_offsets")
    cm, cb = _offsets("/proc/self/timens_offsets")
    return pm - cm, pb - cb


# the clocks a time namespace shifts: CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM
_SHIFTED = {1: 0, 7: 1, 9: 1}


def on_clock(clockid: int, by: tuple[int, int]) -> int:
    """The part of a (monotonic, boottime) shift ``by`` that applies to ``clockid``."""
    k = _SHIFTED.get(clockid)
    return 0 if k is None else by[k]


def view(pid: int) -> dict[str, int]:
    """HEAD["clocks"]: the process's CLOCK_MONOTONIC and CLOCK_BOOTTIME now, and the wall
    clock, in ns."""
    sm, sb = shift(pid)
    m, b = _own()
    return {"monotonic": m + sm, "boottime": b + sb, "realtime": time.time_ns()}


def restart_shift(saved: dict[str, int] | None) -> tuple[int, int] | None:
    """How far ahead of cryo's the restored processes' CLOCK_MONOTONIC and CLOCK_BOOTTIME
    must be (in ns) for clocks read as ``saved`` (HEAD["clocks"]) to go on: the shift of
    the time namespace the restart makes for them, or None when cryo's own are not
    behind (no namespace)."""
    if not saved:
        return None
    m, b = _own()
    if m >= saved["monotonic"] and b >= saved["boottime"]:
        return None  # (the same boot, or a host up for longer: the clocks go on)
    away = max(0, time.time_ns() - saved["realtime"])
    return saved["monotonic"] + away - m, saved["boottime"] + away - b


def _line(name: str, off: int) -> str:
    sec, nsec = divmod(off, NS)  # (floor: nsec in [0, 1e9), as the kernel wants it)
    return f"{name} {sec} {nsec}\n"


def fork_in_timens(by: tuple[int, int], set_tid: int | None, flags: int,
                   plan: Any = None) -> int:  # fmt: skip
    """fork() into a new time namespace whose clocks are ahead of cryo's ``by`` (its
    offsets cryo's plus those); the child (pid ``set_tid`` if given; clone ``flags``)
    calls PTRACE_TRACEME and stops itself, as tree.spawn_helper's does, and is cryo's
    child.  Returns its pid; an OSError of the clone (EEXIST: the pid is taken) is
    raised as such.  ``plan``: as tree.spawn_helper's (engine/execlayout.py)."""
    from cryo.engine import execlayout

    fd = execlayout.stub_fd() if plan is not None else -1
    cm, cb = _offsets("/proc/self/timens_offsets")
    offsets = cm + by[0], cb + by[1]
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:  # the go-between: the namespace, then the root as its sibling
        child, err = -1, 0
        try:
            os.close(r)
            libc.syscall(SYS_UNSHARE, CLONE_NEWTIME)
            with open("/proc/self/timens_offsets", "w") as f:
                f.write(_line("monotonic", offsets[0]) + _line("boottime", offsets[1]))
            try:
                child = libc.clone3(set_tid, flags | CLONE.PARENT)
            except OSError as e:
                child, err = 0, e.errno or 0
            if child == 0 and not err:  # the root: traced by cryo, its parent
                execlayout.become(plan, fd)
        except BaseException as e:  # (unshare or the offsets refused)
            child, err = -1, getattr(e, "errno", 0) or 0
        try:
            os.write(w, struct.pack("<ii", child, err))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 8)
    finally:
        os.close(r)
        os.waitpid(mid, 0)
    if len(data) != 8:
        raise CryoError("could not make a time namespace for the restart: its helper died")
    child, err = struct.unpack("<ii", data)
    if child == 0:
        raise OSError(err, os.strerror(err))
    if child < 0:
        raise CryoError("could not make a time namespace for the restart (offsets"
                        f" monotonic {offsets[0]} ns, boottime {offsets[1]} ns):"
                        f" {os.strerror(err) if err else 'unknown error'}")  # fmt: skip
    return int(child)


def describe(saved: dict[str, Any] | None) -> dict[str, Any]:
    """For cryo show: the clocks as the process read them when it was frozen."""
    if not saved:
        return {}
    return {"clocks": {"monotonic": saved["monotonic"] / NS, "boottime": saved["boottime"] / NS}}
