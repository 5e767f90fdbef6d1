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

import os
import re
import select
import struct
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Injector
from cryo.errors import RestoreConflict, Unsupported
from cryo.image import records as R
from cryo.linux import fdcalls, libc
from cryo.linux.consts import SYS

KIND = b"EPRD"
EPOLLEXCLUSIVE, EPOLLONESHOT, EPOLLET = 1 << 28, 1 << 30, 1 << 31
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
_EVENT = 12  # struct epoll_event, packed on x86_64
_MAX = 2048  # events per epoll_wait (24 KiB of the scratch area)
_PER_BATCH = 1024  # watches queued again per batch
_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")
# a watch with EPOLLET (1 << 31) or EPOLLONESHOT (1 << 30): fs/eventpoll.c prints events
# with "%8x", so such a value has 8 digits, the first 4 or more
_EDGE = re.compile(r"events:\s*[4-9a-f][0-9a-f]{7}\s")


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
        off = _disarmed(pid, ep, watches)
        ready = _take_ready(ctx.inj, ep, watches)
        epolls.append({"fd": ep, "ready": ready, **({"disarmed": off} if off else {})})
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
    if _EDGE.search(text) is None:  # (level-triggered watches only: none parsed)
        return None
    watches: list[tuple[int, int, int, int]] = []
    seen: dict[int, int] = {}
    for m in _TFD.finditer(text):
        tfd, events, data = int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)
        seen[tfd] = seen.get(tfd, 0) + 1
        watches.append((tfd, events, data, seen[tfd] - 1))
    edge = [w for w in watches if w[1] & EPOLLET or w[1] & EPOLLONESHOT]
    if not edge:
        return None
    if len({w[2] for w in watches}) != len(watches):
        if any(w[1] & EPOLLONESHOT and not w[1] & _EVENTS for w in watches):
            raise Unsupported(f"fd {ep}: an epoll with a one-shot watch that fired (disarmed)"
                              " and watches of the same data: the restart could not tell"
                              " which event disarms it", pid=pid,
                              resource=f"fd {ep}")  # fmt: skip
        return None
    for tfd, events, _data, toff in edge:
        try:
            reachable = fdcalls.kcmp_epoll_tfd(pid, tfd, pid, ep, tfd, toff)
        except OSError:
            reachable = False
        if not reachable and not events & _EVENTS and events & EPOLLONESHOT:
            raise Unsupported(f"fd {ep}: its one-shot watch of fd {tfd} fired (disarmed), and"
                              f" fd {tfd} is no longer the file it watches", pid=pid,
                              resource=f"fd {ep}")  # fmt: skip
        if not reachable:
            return None
    return [(tfd, events, data) for tfd, events, data, _toff in watches]


_EVENTS = 0xFFFF  # the event bits of a watch (the rest: EPOLLET, ONESHOT, WAKEUP, ...)
_ALL = 0x27C7  # IN PRI OUT RDNORM RDBAND WRNORM WRBAND MSG RDHUP


def _disarmed(pid: int, ep: int, watches: list[tuple[int, int, int]]) -> list[list[int]]:
    """The one-shot watches that fired and were not rearmed: the kernel left them their
    flags only (ep_send_events), and reports nothing for them; any watch added or
    modified is armed for EPOLLERR and EPOLLHUP at least, so the restart disarms them the
    kernel's way, by an event taken (restore).  That needs their file ready for some
    event (as a connected socket with room to write is): one ready for none (an empty
    pipe's read end, an idle listener) is refused (found by probing: restored, such a
    watch reported the hang-up of its pipe, which the program's own never would, so two
    threads could take one fd, exit 0)."""
    out = []
    for tfd, events, data in watches:
        if not events & EPOLLONESHOT or events & _EVENTS:
            continue
        try:
            mine = libc.fd_of(pid, tfd)
        except OSError as err:
            raise Unsupported(f"fd {ep}: its disarmed one-shot watch of fd {tfd} cannot be"
                              f" looked at ({err.strerror})", pid=pid,
                              resource=f"fd {ep}") from err  # fmt: skip
        try:
            p = select.poll()
            p.register(mine, _ALL)
            ready = bool(p.poll(0))
        finally:
            os.close(mine)
        if not ready:
            raise Unsupported(f"fd {ep}: its one-shot watch of fd {tfd} fired and is disarmed,"
                              " and its file is ready for no event: the restart cannot"
                              " disarm it again (an epoll arms every watch it is given for"
                              " EPOLLERR and EPOLLHUP)", pid=pid,
                              resource=f"fd {ep}")  # fmt: skip
        out.append([tfd, events, data])
    return out


def _disarm(ctx: RestoreContext, ep: int, off: list[list[int]]) -> None:
    """Arm each watch for every event (its file is ready for one: queued at once) before
    the ready list is drained, which disarms it as it did the program's."""
    with ctx.inj.batch() as b:
        for tfd, events, data in off:
            ev = b.put(struct.pack("<IQ", (events | _ALL) & 0xFFFFFFFF, data))
            b.call(SYS.epoll_ctl, ep, EPOLL_CTL_MOD, tfd, ev, what=f" epoll_ctl {ep} mod {tfd}")


def _check_disarmed(ctx: RestoreContext, ep: int, off: list[list[int]]) -> None:
    with open(f"/proc/{ctx.pid}/fdinfo/{ep}") as f:
        now = {int(m.group(1)): int(m.group(2), 16) for m in _TFD.finditer(f.read())}
    for tfd, events, _data in off:
        if now.get(tfd) != events:
            raise RestoreConflict(f"process {ctx.old_pid}: fd {ep}: its one-shot watch of fd"
                                  f" {tfd} cannot be disarmed again (its file is ready for no"
                                  f" event now; events {now.get(tfd, 0):#x})",
                                  pid=ctx.old_pid, resource=f"fd {ep}")  # fmt: skip


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
        if e.get("disarmed"):
            _disarm(ctx, e["fd"], e["disarmed"])
        _drain(ctx.inj, e["fd"])
        if e.get("disarmed"):
            _check_disarmed(ctx, e["fd"], e["disarmed"])
        _queue(ctx.inj, e["fd"], e["ready"])
