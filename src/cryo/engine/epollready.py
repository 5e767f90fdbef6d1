"""The ready lists of epoll instances with edge-triggered or one-shot watches.

An epoll's interest list is made again by adding each watch (engine/anonfds.py); adding
a watch whose file is ready queues it.  That is right for a level-triggered watch (it
reports for as long as its file is ready) but not for an edge-triggered one whose edge
the program already took (its file still holding data it has not read): restored, it
reported once more, a second edge that never happened.  No interface shows which watches
wait on an epoll's ready list (fdinfo lists the interest list only).

So the checkpoint asks the epoll itself, inside the frozen process: ``epoll_wait`` with
a zero timeout returns exactly the watches a wait of the program's would get now (each
file polled again: a watch queued whose file is no longer ready is dropped by the kernel
as the program's own wait would drop it), in their order; it takes them off the ready
list, so each edge-triggered or one-shot watch it returned is queued again at once with
EPOLL_CTL_MOD and its own events (which polls the file and queues it, ready; it re-arms
a one-shot watch), or, for an EPOLLEXCLUSIVE one (which MOD refuses), deleted and added
again; level-triggered watches put themselves back.  The process goes on with the same
ready list (its order aside: the edge-triggered ones now last).  The restart, once the
interest list is filled, empties the new ready list the same way and queues again just
the edge-triggered and one-shot watches that were ready at the checkpoint, in their
order.  Record EPRD, one per process that has such an epoll: each epoll's fd and its
ready watches ``[fd, events, data]``.

Only an epoll whose watches all carry different ``data`` (the program tells its events
apart by it: an fd or a pointer) and whose edge-triggered and one-shot watches are all
reachable by the fd they were added with (kcmp; not a watch of a file since closed) is
handled; another comes back as before (one more event for a ready edge-triggered watch,
which a reader that reads until EAGAIN takes as a spurious wakeup).  A file whose data
comes back after the "files" stage (TCP queues are filled later) may still give one.

Not yet safe against every death of cryo: the ready list is taken in one batch of
injected calls and given back in the next (which watches to queue again depends on what
the first returned); a cryo killed between the two leaves the process without those
edges (an event loop waiting for them would wait on).  The window is the time between
two batches, microseconds; no test aims at it.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Injector
from cryo.image import records as R
from cryo.linux import fdcalls
from cryo.linux.consts import SYS

KIND = b"EPRD"
EPOLLEXCLUSIVE, EPOLLONESHOT, EPOLLET = 1 << 28, 1 << 30, 1 << 31
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
_EVENT = 12  # struct epoll_event, packed on x86_64
_MAX = 2048  # events per epoll_wait (24 KiB of the scratch area)
_PER_BATCH = 1024  # watches queued again per batch
_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")


def dump(ctx: DumpContext) -> None:
    """Driver hook (inject): each epoll with edge-triggered or one-shot watches asked
    (the fd table as drivers._holds_epoll read it in this freeze; read here when it did
    not run, this module imported already, and left for the inet and files drivers)."""
    pid = ctx.pid
    if "fd_links" not in ctx.live:
        ctx.live["fd_links"] = procfs.fd_links(pid)
    links = ctx.live["fd_links"][1]
    epolls = []
    for ep in sorted(fd for fd, t in links.items() if t == "anon_inode:[eventpoll]"):
        watches = _watches(pid, ep)
        if watches is None:
            continue
        ready = _take_ready(ctx.inj, ep, watches)
        epolls.append({"fd": ep, "ready": ready})
    if epolls:
        ctx.records[KIND] = {"pid": pid, "epolls": epolls}


def _watches(pid: int, ep: int) -> list[tuple[int, int, int]] | None:
    """The epoll's watches ``(fd, events, data)`` if it has an edge-triggered or armed
    one-shot one and can be handled (see the module's note), else None."""
    try:
        with open(f"/proc/{pid}/fdinfo/{ep}") as f:
            text = f.read()
    except OSError:
        return None
    watches: list[tuple[int, int, int, int]] = []
    seen: dict[int, int] = {}
    for m in _TFD.finditer(text):
        tfd, events, data = int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)
        seen[tfd] = seen.get(tfd, 0) + 1
        watches.append((tfd, events, data, seen[tfd] - 1))
    edge = [w for w in watches if w[1] & EPOLLET or (w[1] & EPOLLONESHOT and w[1] & 0xFFFF)]
    if not edge or len({w[2] for w in watches}) != len(watches):
        return None
    for tfd, _events, _data, toff in edge:
        try:
            if not fdcalls.kcmp_epoll_tfd(pid, tfd, pid, ep, tfd, toff):
                return None
        except OSError:
            return None
    return [(tfd, events, data) for tfd, events, data, _toff in watches]


def _drain(inj: Injector, ep: int) -> list[int]:
    """Take every watch off the epoll's ready list (a zero timeout): their data, in order."""
    got: list[int] = []
    while True:
        with inj.batch() as b:
            buf = b.reserve(_MAX * _EVENT)
            i = b.call(SYS.epoll_wait, ep, buf, _MAX, 0, what=f" epoll_wait {ep}")
        n = b.result(i)
        raw = b.read(buf, n * _EVENT) if n > 0 else b""
        got += [struct.unpack_from("<IQ", raw, k * _EVENT)[1] for k in range(max(n, 0))]
        if n < _MAX:
            return got


def _queue(inj: Injector, ep: int, ready: list[list[int]]) -> None:
    """Queue these watches again, in order (MOD polls the file and queues it, ready)."""
    for at in range(0, len(ready), _PER_BATCH):  # (their events fill the scratch area)
        _queue_part(inj, ep, ready[at : at + _PER_BATCH])


def _queue_part(inj: Injector, ep: int, ready: list[list[int]]) -> None:
    with inj.batch() as b:
        for tfd, events, data in ready:
            ev = b.put(struct.pack("<IQ", events & 0xFFFFFFFF, data))
            if events & EPOLLEXCLUSIVE:  # (MOD refuses it)
                b.call(SYS.epoll_ctl, ep, EPOLL_CTL_DEL, tfd, 0, what=f" epoll_ctl {ep} del {tfd}")
                b.call(SYS.epoll_ctl, ep, EPOLL_CTL_ADD, tfd, ev, what=f" epoll_ctl {ep} add {tfd}")
            else:
                b.call(SYS.epoll_ctl, ep, EPOLL_CTL_MOD, tfd, ev, what=f" epoll_ctl {ep} mod {tfd}")


def _take_ready(inj: Injector, ep: int, watches: list[tuple[int, int, int]]) -> list[list[int]]:
    by_data = {data: (tfd, events) for tfd, events, data in watches}
    ready = []
    for data in _drain(inj, ep):
        tfd, events = by_data[data]
        if events & (EPOLLET | EPOLLONESHOT):
            ready.append([tfd, events, data])
    _queue(inj, ep, ready)  # the process's ready list as it was
    return ready


def mine(ctx: RestoreContext) -> dict[str, Any] | None:
    """This process's EPRD record (optional records are not in ``ctx.records``)."""
    return next((r for r in ctx.image.raw(KIND)
                 if isinstance(r, dict) and r.get("pid") == ctx.old_pid), None)  # fmt: skip


def restore(ctx: RestoreContext) -> None:
    """Driver hook (stage "files", after the interest lists are filled): each epoll's
    ready list emptied, then its edge-triggered and one-shot watches that were ready
    queued again."""
    rec = mine(ctx)
    if rec is None:
        return
    table = {e["fd"]: e["desc"] for e in ctx.records[R.FILE]["fds"]}
    for e in rec["epolls"]:
        d = ctx.shared.descs[table[e["fd"]]] if e["fd"] in table else {}
        if not d.get("registered"):
            continue  # (filled by another process, later: left as it comes)
        _drain(ctx.inj, e["fd"])
        _queue(ctx.inj, e["fd"], e["ready"])
