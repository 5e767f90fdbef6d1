"""Anonymous-inode files: eventfd (counter and semaphore mode), signalfd (its mask),
timerfd (clock, remaining time, interval) and epoll (its interest list).

Each is described from /proc/PID/fdinfo at dump and made again by cryo at restart, as
any open file description (see files.py).  An epoll instance's interest list names fds
of the process that registered them, so it is filled by that process, with injected
epoll_ctl calls, once its fd table is back.  A watch added through an fd since closed
(the file held by another fd: kcmp(KCMP_EPOLL_TFD) tells, as CRIU does) names the
description it watches (``hidden``); files.restore_fds adds it with that same fd number
on a temporary fd, then closes it (or puts back the file now at that number).
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import os
import re
import select
import struct
import time
from typing import Any

from cryo.engine import clocks
from cryo.engine.context import RestoreContext
from cryo.errors import Unsupported
from cryo.linux import fdcalls, libc
from cryo.linux.consts import SYS

log = logging.getLogger(__name__)
KINDS = {"anon_inode:[eventfd]": "eventfd", "anon_inode:[signalfd]": "signalfd",
         "anon_inode:[timerfd]": "timerfd", "anon_inode:[eventpoll]": "epoll"}  # fmt: skip
_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")
_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")
_TFD_FILE = re.compile(r"tfd:\s*(\d+)\s.*?ino:([0-9a-f]+)\s+sdev:([0-9a-f]+)")
EPOLL_CTL_ADD = 1
EFD_SEMAPHORE = 1
O_NONBLOCK = 0o4000


def kind_of(target: str) -> str | None:
    return KINDS.get(target)


TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2

def describe(kind: str, fdinfo: bytes, pid: int, fd: int,
             links: dict[int, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The FDSC fields of an anonymous-inode file from its fdinfo (``links``: the
    process's fd table as read in this freeze, fd -> link, if the caller has it)."""
    text = fdinfo.decode()
    kv = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
    if kind == "eventfd":
        return {"count": int(kv["eventfd-count"], 16),
                "semaphore": kv.get("eventfd-semaphore", "0") == "1"}  # fmt: skip
    if kind == "signalfd":
        return {"sigmask": int(kv["sigmask"], 16)}
    if kind == "timerfd":
        value = tuple(int(x) for x in _PAIR.findall(kv["it_value"])[0])
        interval = tuple(int(x) for x in _PAIR.findall(kv["it_interval"])[0])
        clockid, flags = int(kv["clockid"]), int(kv["settime flags"], 8)
        out: dict[str, Any] = {"clockid": clockid, "ticks": int(kv["ticks"]),
                               "settime_flags": flags, "value": list(value),
                               "interval": list(interval)}  # fmt: skip
        if flags & TFD_TIMER_ABSTIME and value != (0, 0):
            # fdinfo shows the time left: an absolute timer keeps its expiry on its clock
            # (now, the process frozen), so that a later restart fires it then, not later
            # (on the process's clock: its time namespace may be ahead of cryo's)
            t = time.clock_gettime_ns(clockid) + value[0] * 10**9 + value[1] + \
                clocks.on_clock(clockid, clocks.shift(pid))  # fmt: skip
            out["deadline"] = [t // 10**9, t % 10**9]
        return out
    if kind == "epoll":
        return _describe_epoll(pid, fd, text, links)
    raise Unsupported(f"fd {fd}: {kind} is not supported", pid=pid, resource=f"fd {fd}")


def _describe_epoll(pid: int, fd: int, text: str, links: dict[int, str] | None = None
                    ) -> dict[str, Any]:  # fmt: skip
    """An epoll's interest list.  A watch names its file by the fd it was added with;
    that fd may have been closed since (the file kept alive by a duplicate) or reused
    for another file: kcmp(KCMP_EPOLL_TFD) tells.  A watch whose fd is still its file
    is registered again by that fd (``watch``); the others (``hidden``) are matched
    with the descriptions of the checkpoint once every process is collected
    (:func:`find_hidden`).  A socket has one open file description only (its inode's
    sock->file: no open() of it makes another), so a watch whose inode is the socket's
    at fd tfd now (``links``, fdinfo's ino and sdev) is that fd's file without a kcmp
    (which costs 10-20 us: a server's thousand connections)."""
    watch, hidden = [], []
    count: dict[int, int] = {}
    for line in text.splitlines():
        m = _TFD.search(line)
        if m is None:
            continue
        tfd, events, data = int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)
        toff = count.get(tfd, 0)  # the how-manieth watch added with that fd number
        count[tfd] = toff + 1
        f = _TFD_FILE.search(line)
        if f is not None and links is not None and _is_socket_at(links.get(tfd), f):
            same = True
        else:
            try:
                same = fdcalls.kcmp_epoll_tfd(pid, tfd, pid, fd, tfd, toff)
            except OSError:  # (EBADF: no fd tfd now)
                same = False
        if same:
            watch.append([tfd, events, data])
        elif f is None:
            raise Unsupported(f"fd {fd}: epoll watches a file added as fd {tfd} that is"
                              " closed now, and fdinfo does not name it", pid=pid,
                              resource=f"fd {fd}")  # fmt: skip
        else:
            sdev = int(f.group(3), 16)
            hidden.append([tfd, events, data, int(f.group(2), 16),
                           os.makedev(sdev >> 20, sdev & 0xFFFFF), toff])  # fmt: skip
    out: dict[str, Any] = {"watch": watch}
    if hidden:
        out["hidden"] = hidden
    return out


_sockfs_dev: list[int] = []  # the st_dev of every socket inode (sockfs), once known


def _is_socket_at(link: str | None, f: re.Match[str]) -> bool:
    """Whether a watch's file (fdinfo's ino and sdev: ``f``) is the socket at ``link``."""
    if link is None or not link.startswith("socket:[") or int(link[8:-1]) != int(f.group(2), 16):
        return False
    if not _sockfs_dev:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)  # (socket.py not imported)
        try:
            _sockfs_dev.append(os.fstat(s.fileno()).st_dev)
        finally:
            s.close()
    sdev = int(f.group(3), 16)  # (the kernel's dev_t: major << 20 | minor)
    return os.makedev(sdev >> 20, sdev & 0xFFFFF) == _sockfs_dev[0]


def find_hidden(descs: list[dict[str, Any]], seen: list[tuple[int, int]]) -> None:
    """Once every process is collected: the file of each hidden watch of an epoll is one
    of the checkpoint's descriptions (kcmp with each of the same inode); its index
    replaces the inode.  A file no process of the checkpoint holds is refused."""
    by_inode: dict[tuple[int, int], list[int]] = {}
    for i, d in enumerate(descs):
        by_inode.setdefault((d["dev"], d["ino"]), []).append(i)
    for d in descs:
        if d["kind"] != "epoll" or not d.get("hidden") or len(d["hidden"][0]) != 6:
            continue
        out = []
        for tfd, events, data, ino, dev, toff in d["hidden"]:
            for i in by_inode.get((dev, ino), ()):
                p0, fd0 = seen[i]
                with contextlib.suppress(OSError):
                    if fdcalls.kcmp_epoll_tfd(p0, fd0, d["pid"], d["fd"], tfd, toff):
                        out.append([tfd, events, data, i])
                        break
            else:
                raise Unsupported(f"fd {d['fd']}: epoll watches a file added as fd {tfd},"
                                  " since closed, that no fd of the checkpoint holds (inode"
                                  f" {ino}): not supported", pid=d["pid"],
                                  resource=f"fd {d['fd']}")  # fmt: skip
        d["hidden"] = out


def open_desc(d: dict[str, Any], options: dict[str, Any]) -> int:
    """Make the file again in cryo (the interest list of an epoll comes later)."""
    kind, nonblock = d["kind"], d["flags"] & O_NONBLOCK
    if kind == "eventfd":
        fd = os.eventfd(0, (os.EFD_SEMAPHORE if d["semaphore"] else 0) | nonblock)
        if d["count"]:
            os.eventfd_write(fd, d["count"])
        return fd
    if kind == "signalfd":
        return libc.signalfd(d["sigmask"], nonblock)
    if kind == "timerfd":
        fd = libc.timerfd_create(d["clockid"], nonblock)
        value = (int(d["value"][0]), int(d["value"][1]))
        if d["ticks"] and value == (0, 0):
            value = (0, 1)  # expirations not yet read: let it expire again at once
        flags = d.get("settime_flags", 0) & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)
        if value != (0, 0) and "deadline" in d and flags & TFD_TIMER_ABSTIME:
            # (past: it fires at once, its missed intervals counted as ticks)
            # its expiry on the process's clock, set from cryo's: the restored processes'
            # may be ahead (a time namespace of their own: engine/clocks.py)
            at = d["deadline"][0] * 10**9 + d["deadline"][1] - clocks.on_clock(
                d["clockid"], options.get("clock_shift") or (0, 0))  # fmt: skip
            at = max(at, 1)  # (past: at once)
            libc.timerfd_settime(fd, flags, (d["interval"][0], d["interval"][1]),
                                 (at // 10**9, at % 10**9))  # fmt: skip
        elif value != (0, 0):
            libc.timerfd_settime(fd, 0, (d["interval"][0], d["interval"][1]), value)
        return fd
    if kind == "epoll":
        ep = select.epoll()
        fd = os.dup(ep.fileno())
        ep.close()
        return fd
    raise Unsupported(f"{kind} is not supported")


EPOLL_EVENT = 12  # struct epoll_event, packed on x86_64
WATCHES_PER_BATCH = 1024  # their events in one buffer of the scratch area


def register(ctx: RestoreContext, table: list[dict[str, Any]],
             descs: list[dict[str, Any]]) -> None:  # fmt: skip
    """Fill the interest list of each epoll this process registered fds in."""
    inj = ctx.inj
    mine = {e["fd"] for e in table}
    for e in table:
        d = descs[e["desc"]]
        if d["kind"] != "epoll" or d.get("registered"):
            continue
        if d["pid"] != ctx.old_pid:
            continue  # the process that registered them fills it
        watch = []
        for tfd, events, data in d["watch"]:
            if tfd not in mine:
                ctx.warnings.append(f"epoll fd {e['fd']}: fd {tfd} is gone; not watched")
                continue
            watch.append((tfd, struct.pack("<IQ", events & 0xFFFFFFFF, data)))
        for at in range(0, len(watch), WATCHES_PER_BATCH):  # one stop per batch, not per fd
            part = watch[at : at + WATCHES_PER_BATCH]
            with inj.batch() as b:
                evs = b.put(b"".join(ev for _, ev in part))
                for k, (tfd, _ev) in enumerate(part):
                    b.call(SYS.epoll_ctl, e["fd"], EPOLL_CTL_ADD, tfd, evs + k * EPOLL_EVENT,
                           what=f" epoll_ctl {e['fd']} add {tfd}")  # fmt: skip
        d["registered"] = True
