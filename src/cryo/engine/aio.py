"""AIO contexts (io_setup, fs/aio.c): each ring made again where it was, with the
events it holds that the program has not reaped (issue 9).

A context is a struct kioctx in the kernel and a ring the kernel maps into the process
("/[aio] (deleted)", the ring's address being the context's id, aio_context_t).  The
ring shows the completions: a header (the context's index in the process's table, its
size, head and tail, magic and features) and the io_events between head and tail that
io_getevents has not taken.  What the ring does not show is the requests submitted and
not yet completed: an O_DIRECT read on its way, an fsync on the workqueue, an
IOCB_CMD_POLL that waits for its file.  The kernel cannot make those again, so a context
holding one cannot be restored; a context holding none can, exactly.

Telling them apart (a BPF iterator: CAP_BPF, BTF).  A request takes a slot of the
context when it is submitted and gives it back once its event is reaped; the free slots
sit in kioctx.reqs_available and in a per-cpu cache of each CPU, and the events
completed whose slots are not back yet are counted in kioctx.completed_events, so the
requests in flight are ``nr_events - 1 - reqs_available - sum(per-cpu) -
completed_events`` (bpf.per_cpu_offsets gives what turns the per-cpu pointer into each
CPU's copy).  The processes are frozen: nothing submits, and a request in flight can
only complete.  A checkpoint that finds one waits up to WAIT_S for it (disk requests
take milliseconds) and refuses (exit 9) if one is still in flight.  Without BPF every
AIO ring is refused, as before.

At restart, in each process, once its memory is back (stage "protect"): io_setup with
the context's max_reqs, in the order of the indexes (a context for each hole, destroyed
after, so that each comes back at its index), the ring checked to be the same size
(nr_events depends on the number of possible CPUs: another machine's may differ, the
restart then fails, exit 3) and moved to its old address with mremap (the kernel moves
the context's id with it: aio_ring_mremap).  The kernel's tail is moved on by
synchronous empty writes to /dev/null, reaped while the head must follow, then the
events not reaped are written back over those of the writes and the head as it was.
Left as it may differ: how the free slots are spread over the CPUs' caches (no program
sees it, but io_submit's EAGAIN when nearly every slot is taken).

A process whose table has a context with no ring mapped (the program unmapped it), or a
ring mapped with no context (a forked child keeps its parent's ring mapping, not its
contexts), is refused.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import CryoError, Unsupported
from cryo.image import records as R
from cryo.linux import bpf, libc
from cryo.linux.consts import MREMAP, SYS

KIND = b"AIOR"
IO_SETUP, IO_DESTROY, IO_GETEVENTS, IO_SUBMIT = 206, 207, 208, 209
IOCB_CMD_PWRITE = 1
AIO_RING_MAGIC = 0xA10A10A1
_HEADER = struct.Struct("<8I")  # id nr head tail magic compat incompat header_length
EVENT = 32  # struct io_event: data, obj, res, res2
# struct iocb (64 bytes): data, key, rw_flags, lio_opcode, reqprio, fildes, buf, nbytes,
# offset, reserved2, flags, resfd
_IOCB = struct.Struct("<QIiHhIQQqQII")
WAIT_S = 2.0  # how long a checkpoint waits for requests in flight to complete
_CHUNK = 256  # empty writes per io_submit at restart (26 KiB of the scratch area)
_PER_RUN = 5  # contexts read per run of the reader (its 512 bytes)


def _contexts(tid: int) -> list[dict[str, int]]:
    """The AIO contexts of the process of thread ``tid``, as its kioctx_table holds
    them (a BPF reader; Unavailable where there is none)."""
    (mm, table, nr, slots, user_id, max_reqs, nr_events, mmap_size, avail, tail,
     completed, cpu) = bpf.need(
        "task.mm", "mm.ioctx_table", "kt.nr", "kt.table", "kx.user_id", "kx.max_reqs",
        "kx.nr_events", "kx.mmap_size", "kx.reqs_available", "kx.tail",
        "kx.completed_events", "kx.cpu")  # fmt: skip
    rd = bpf.Read
    head = (rd(mm, 8), rd(table, 8, 0), rd(nr, 8, 1))
    data = bpf.read("iter_task", head, tid=tid)
    if len(data) < 24:
        raise CryoError(f"thread {tid}: its AIO contexts could not be read")
    _mm, tbl, count = struct.unpack_from("<QQQ", data)
    count &= 0xFFFFFFFF
    out: list[dict[str, int]] = []
    fields = (user_id, max_reqs, nr_events, mmap_size, avail, tail, completed, cpu)
    for first in range(0, count if tbl else 0, _PER_RUN):
        idx = range(first, min(count, first + _PER_RUN))
        reads: list[bpf.Read] = list(head)
        for i in idx:
            at = len(reads)
            reads.append(rd(slots + 8 * i, 8, 1))  # table->table[i]
            reads += [rd(f, 8, at) for f in fields]
        got = bpf.read("iter_task", tuple(reads), tid=tid)
        v = struct.unpack_from(f"<{len(reads)}Q", got)
        for k, i in enumerate(idx):
            base = 3 + k * (1 + len(fields))
            if not v[base]:
                continue  # (a hole: a context destroyed)
            f = v[base + 1 : base + 1 + len(fields)]
            u32 = [x & 0xFFFFFFFF for x in f]  # (8 bytes read at each: the first 4)
            out.append({"index": i, "addr": f[0], "max_reqs": u32[1], "nr_events": u32[2],
                        "length": f[3], "available": libc.c_int(f[4]), "tail": u32[5],
                        "completed": u32[6], "cpu": f[7]})
    if out:
        offs = bpf.per_cpu_offsets()
        (kc,) = bpf.need("kc.reqs_available")
        cpus = tuple(bpf.Read(c["cpu"] + o + kc, 8, bpf.ABSOLUTE) for c in out for o in offs)
        vals: list[int] = []
        for first in range(0, len(cpus), 60):
            part = cpus[first : first + 60]
            got = bpf.read("iter_task", part, tid=tid)
            vals += [x & 0xFFFFFFFF for x in struct.unpack_from(f"<{len(part)}Q", got)]
        for k, c in enumerate(out):
            cached = sum(vals[k * len(offs) : (k + 1) * len(offs)])
            c["in_flight"] = c["nr_events"] - 1 - c["available"] - cached - c["completed"]
    return out


def collect(ctx: DumpContext) -> None:
    """Driver hook (collect, after memory's): each ring of the process with its context,
    none in flight (waited for up to WAIT_S), or Unsupported naming it."""
    pid = ctx.pid
    rings = {v["start"]: v for v in ctx.records[R.MM]["vmas"] if v["kind"] == "aio"}
    if not rings:
        return  # (this module imported for another process)
    try:
        found = _contexts(pid)
        deadline = time.monotonic() + WAIT_S
        while any(c["in_flight"] for c in found) and time.monotonic() < deadline:
            time.sleep(0.005)  # (frozen: a request can only complete)
            found = _contexts(pid)
    except (bpf.Unavailable, OSError) as err:
        a = min(rings)
        raise Unsupported(f"mapping {a:#x}-{rings[a]['end']:#x}: an AIO ring (io_setup):"
                          f" cryo needs a BPF iterator to see its requests in flight ({err})",
                          pid=pid, resource="AIO context") from err  # fmt: skip
    by_addr = {c["addr"]: c for c in found}
    for c in found:
        v = rings.get(c["addr"])
        if v is None or v["end"] - v["start"] != c["length"]:
            raise Unsupported(f"AIO context {c['addr']:#x}: its ring is not mapped as the"
                              " kernel made it (unmapped or cut): not supported", pid=pid,
                              resource="AIO context")  # fmt: skip
        if c["in_flight"]:
            raise Unsupported(f"AIO context {c['addr']:#x}: {c['in_flight']} request(s) in"
                              f" flight (submitted, not completed after {WAIT_S:g} s): the"
                              " kernel cannot make them again", pid=pid,
                              resource="AIO context")  # fmt: skip
    for a, v in rings.items():
        if a not in by_addr:
            raise Unsupported(f"mapping {a:#x}-{v['end']:#x}: an AIO ring with no context"
                              " of this process (a forked child's copy of its parent's):"
                              " not supported", pid=pid, resource="AIO context")  # fmt: skip
        if v["prot"] != 3 or not v["shared"]:
            raise Unsupported(f"mapping {a:#x}-{v['end']:#x}: an AIO ring whose protection"
                              " was changed: not supported", pid=pid,
                              resource="AIO context")  # fmt: skip
    out = []
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for c in sorted(found, key=lambda c: c["index"]):
            hdr = os.pread(fd, _HEADER.size, c["addr"])
            rid, nr, head, tail, magic, _compat, _incompat, hlen = _HEADER.unpack(hdr)
            if magic != AIO_RING_MAGIC or hlen != _HEADER.size or nr != c["nr_events"] \
                    or tail != c["tail"] or rid != c["index"]:  # fmt: skip
                raise Unsupported(f"AIO context {c['addr']:#x}: its ring's header is not"
                                  " the kernel's (written over by the program)", pid=pid,
                                  resource="AIO context")  # fmt: skip
            h = head % nr
            k = (tail - h) % nr
            events = b"".join(os.pread(fd, EVENT * n, c["addr"] + _HEADER.size + EVENT * at)
                              for at, n in _slots(h, k, nr))  # fmt: skip
            out.append({"addr": c["addr"], "length": c["length"], "index": c["index"],
                        "max_reqs": c["max_reqs"], "nr": nr, "head": head, "tail": tail,
                        "events": events})  # fmt: skip
    finally:
        os.close(fd)
    ctx.records[KIND] = {"pid": pid, "rings": out}


def _slots(h: int, k: int, nr: int) -> list[tuple[int, int]]:
    """The ring's ``k`` event slots from ``h`` on, as (first slot, count) runs: one, or
    two where they wrap past the ring's ``nr``."""
    first = min(k, nr - h)
    return [(h, first), (0, k - first)] if k > first else [(h, k)] if k else []


def mine(ctx: RestoreContext) -> dict[str, Any] | None:
    """This process's AIOR record (optional records are not in ``ctx.records``)."""
    return next((r for r in ctx.image.raw(KIND)
                 if isinstance(r, dict) and r.get("pid") == ctx.old_pid), None)  # fmt: skip


def restore(ctx: RestoreContext) -> None:
    """Driver hook (stage "protect", after memory's): each context made again at its
    index, its ring moved where it was and filled as it was."""
    rec = mine(ctx)
    if rec is None:
        return
    inj = ctx.inj
    want = {r["index"]: r for r in rec["rings"]}
    spare: list[int] = []
    null = -1
    try:
        for index in range(max(want) + 1):
            r = want.get(index)
            f = inj.frame()
            out = f.put(bytes(8))
            inj(IO_SETUP, r["max_reqs"] if r else 1, out, what=" io_setup")
            made = int.from_bytes(inj.read(out, 8), "little")
            if r is None:
                spare.append(made)
                continue
            rid, nr, _h, _t, _m, _c, _i, _hl = _HEADER.unpack(inj.read(made, _HEADER.size))
            if rid != index or nr != r["nr"]:
                inj(IO_DESTROY, made)
                raise CryoError(f"AIO context {r['addr']:#x}: io_setup({r['max_reqs']}) made a"
                                f" ring of {nr} events at index {rid} here, the image's had"
                                f" {r['nr']} at {index} (another number of possible CPUs)")
            if made != r["addr"]:
                inj(SYS.mremap, made, r["length"], r["length"], MREMAP.MAYMOVE | MREMAP.FIXED,
                    r["addr"], what=f" mremap of the AIO ring to {r['addr']:#x}")  # fmt: skip
            if null < 0 and (r["tail"] or r["events"]):
                null = inj(SYS.openat, -100, inj.put_str("/dev/null"), os.O_WRONLY | os.O_CLOEXEC,
                           0, what=" open /dev/null")  # fmt: skip
            _refill(ctx, r, null)
    finally:
        for made in spare:
            inj.raw(IO_DESTROY, made)
        if null >= 0:
            inj.raw(SYS.close, null)


def _refill(ctx: RestoreContext, r: dict[str, Any], null: int) -> None:
    """The ring's head and tail where they were, its unreaped events as they were."""
    inj, addr, nr = ctx.inj, r["addr"], r["nr"]
    h = r["head"] % nr
    k = len(r["events"]) // EVENT
    if (h + k) % nr != r["tail"]:
        raise CryoError(f"AIO context {addr:#x}: the image's ring is inconsistent")
    if not h and not k:
        return  # (as io_setup made it)
    chunk = max(1, min(_CHUNK, r["max_reqs"]))
    f = inj.frame()
    iocbs = b"".join(_IOCB.pack(0, 0, 0, IOCB_CMD_PWRITE, 0, null, 0, 0, 0, 0, 0, 0)
                     for _ in range(chunk))  # fmt: skip
    at = f.put(iocbs)
    ptrs = f.put(b"".join(struct.pack("<Q", at + 64 * i) for i in range(chunk)))
    evbuf = f.reserve(EVENT * chunk)

    def submit(n: int, reap: bool) -> None:
        while n:
            c = min(n, chunk)
            with inj.batch() as b:
                s = b.call(IO_SUBMIT, addr, c, ptrs, what=" io_submit")
                g = b.call(IO_GETEVENTS, addr, c, c, evbuf, 0, what=" io_getevents") \
                    if reap else -1  # fmt: skip
            if b.result(s) != c or (reap and b.result(g) != c):
                raise CryoError(f"AIO context {addr:#x}: its ring could not be filled again")
            n -= c

    submit(h, True)  # head and tail at h, every event reaped
    submit(k, False)  # tail at the image's, k events not reaped
    done = 0
    for at, n in _slots(h, k, nr):
        inj.write(addr + _HEADER.size + EVENT * at, r["events"][EVENT * done : EVENT * (done + n)])
        done += n
    if r["head"] != h:  # (a head the program wrote past the ring's size: as it was)
        inj.write(addr + 8, struct.pack("<I", r["head"]))


def describe(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """``cryo show``: each AIO context, its ring and the events waiting in it."""
    return [{"context": f"{r['addr']:#x}", "max_reqs": r["max_reqs"], "ring_events": r["nr"],
             "unreaped": len(r["events"]) // EVENT} for r in rec["rings"]]  # fmt: skip
