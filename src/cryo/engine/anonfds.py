"""Anonymous-inode files: eventfd (counter and semaphore mode), signalfd (its mask),
timerfd (clock, remaining time, interval) and epoll (its interest list).

Each is described from /proc/PID/fdinfo at dump and made again by cryo at restart, as
any open file description (see files.py).  An epoll instance's interest list names fds
of the process that registered them, so it is filled by that process, with injected
epoll_ctl calls, once its fd table is back.
"""

from __future__ import annotations

import logging
import os
import re
import select
import struct
from typing import Any

from cryo.engine.context import RestoreContext
from cryo.errors import Unsupported
from cryo.linux import libc
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


def describe(kind: str, fdinfo: bytes, pid: int, fd: int) -> dict[str, Any]:
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
        return {"clockid": int(kv["clockid"]), "ticks": int(kv["ticks"]),
                "settime_flags": int(kv["settime flags"], 8),
                "value": list(value), "interval": list(interval)}  # fmt: skip
    if kind == "epoll":
        for tfd, ino, sdev in _TFD_FILE.findall(text):
            _check_target(pid, fd, int(tfd), int(ino, 16), int(sdev, 16))
        return {"watch": [[int(t), int(e, 16), int(d, 16)] for t, e, d in _TFD.findall(text)]}
    raise Unsupported(f"fd {fd}: {kind} is not supported", pid=pid, resource=f"fd {fd}")


def _check_target(pid: int, fd: int, tfd: int, ino: int, sdev: int) -> None:
    """An epoll watch names the file it watches by the fd it was added with; that fd may
    have been closed since (the file kept alive by a duplicate) or reused for another
    file.  The restart registers watches by fd number: refuse what it would get wrong."""
    dev = os.makedev(sdev >> 20, sdev & 0xFFFFF)  # the kernel's dev_t (MINORBITS 20)
    try:
        st = os.stat(f"/proc/{pid}/fd/{tfd}")
    except FileNotFoundError:
        st = None
    if st is None or (st.st_ino, st.st_dev) != (ino, dev):
        now = "closed" if st is None else "now another file"
        raise Unsupported(f"fd {fd}: epoll watches a file added as fd {tfd}, which is {now}"
                          " (the file is held by a duplicate): not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip


def open_desc(d: dict[str, Any]) -> int:
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
        if value != (0, 0):
            libc.timerfd_settime(fd, 0, (d["interval"][0], d["interval"][1]), value)
        return fd
    if kind == "epoll":
        ep = select.epoll()
        fd = os.dup(ep.fileno())
        ep.close()
        return fd
    raise Unsupported(f"{kind} is not supported")


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
        for tfd, events, data in d["watch"]:
            if tfd not in mine:
                ctx.warnings.append(f"epoll fd {e['fd']}: fd {tfd} is gone; not watched")
                continue
            ev = struct.pack("<IQ", events & 0xFFFFFFFF, data)
            inj(SYS.epoll_ctl, e["fd"], EPOLL_CTL_ADD, tfd, inj.put(ev),
                what=f" epoll_ctl {e['fd']} add {tfd}")  # fmt: skip
        d["registered"] = True
