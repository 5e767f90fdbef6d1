"""NUMA memory policies of mappings (mbind), saved and set again.

A mapping can have a memory policy of its own, set with ``mbind`` (OpenBLAS does it for
its buffers, so every numpy program has one: "local"; numactl users bind or interleave
a program's large arrays); the thread's policy (``set_mempolicy``) is engine/task.py's.
Every mapping is asked, inside the process, ``get_mempolicy(MPOL_F_ADDR)`` at its start,
which answers the mapping's own policy only (MPOL_DEFAULT where it has none, whatever
the task's): first the mode alone, for all of them in one batch, then, for those with
one, the mode with its flags and the node mask as the program gave it for the static
and relative kinds.  (/proc/PID/numa_maps shows the policies too, but walks every page
to count them per node: 13-15 ms of the freeze for 1 GiB resident, where the batch of
a few dozen mappings is one stop.)
Those with one are kept in TASK["vma_policies"], and the restart gives each to
``mbind`` once the mappings are made and before any page is written, so that the pages
are placed as before.  A policy on shared memory (shmem, SysV) is the object's, and is
set again the same way from any process that maps it.

A child forked with copy-on-write memory (engine/cow.py) keeps mappings of its parent,
with their policies: those it did not have itself are set back to none (MPOL_DEFAULT,
over the whole mapping) before its own are given.  Before this module, a mapping with a
policy of its own was refused (exit 9), and with it every numpy program.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch
from cryo.linux.consts import SYS

SYS_MBIND = 237
MPOL_DEFAULT = 0
MPOL_F_ADDR = 2  # get_mempolicy: the policy of the mapping at addr
MAX_NODES = 1024  # bits of the node masks read and given
MASK = MAX_NODES // 8
CHUNK = 32  # mappings asked their node masks per batch (their buffers in the scratch area)
MODES = 2048  # mappings asked their mode alone per batch (8 bytes each in the scratch area)
ROOM = 16384  # of the scratch area left for the other drivers' calls in the process's batch


def _modes(ctx: DumpContext, todo: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The mappings of ``todo`` with a policy of their own (the mode alone asked, into
    one buffer read back at once)."""
    out: list[tuple[int, int]] = []
    for i in range(0, len(todo), MODES):
        with ctx.inj.batch() as b:
            read = _queue_modes(b, todo[i : i + MODES])
        out.extend(read())
    return out


def _queue_modes(b: Batch, todo: list[tuple[int, int]]) -> Callable[[], list[tuple[int, int]]]:
    """The mode of each mapping of ``todo`` asked in ``b`` (into one buffer); then
    those with a policy of their own."""
    modes = b.reserve(8 * len(todo))
    calls = [b.call(SYS.get_mempolicy, modes + 8 * k, 0, 0, start, MPOL_F_ADDR,
                    may_fail=True) for k, (start, _end) in enumerate(todo)]  # fmt: skip

    def read() -> list[tuple[int, int]]:
        got = b.read(modes, 8 * len(todo))
        # (a call that failed: no NUMA support, or no mapping at start: [vsyscall])
        return [vma for k, (vma, c) in enumerate(zip(todo, calls, strict=True))
                if b.result(c) >= 0 and int.from_bytes(got[8 * k : 8 * k + 4], "little")
                != MPOL_DEFAULT]  # fmt: skip

    return read


def dump(ctx: DumpContext, b: Batch) -> Generator[None, Batch, None]:
    """Queue hook (after the task driver's): the mappings' own policies into
    TASK["vma_policies"] as [[start, end, mode, nodes]], when there are any.  The modes
    are asked in the process's batch where their buffer leaves room for the other
    drivers' (``ROOM``), else in batches of their own."""
    vmas = [(v.start, v.end) for v in procfs.parse_maps(procfs.read(ctx.pid, "maps"))]
    queued = _queue_modes(b, vmas) if b.room() - 8 * len(vmas) >= ROOM else None
    yield
    todo = queued() if queued else _modes(ctx, vmas)
    if not todo:
        return
    inj = ctx.inj
    out: list[list[Any]] = []
    for i in range(0, len(todo), CHUNK):
        part = todo[i : i + CHUNK]
        with inj.batch() as pb:
            asked = []
            for start, end in part:
                m, n = pb.reserve(8), pb.reserve(MASK)
                c = pb.call(SYS.get_mempolicy, m, n, MAX_NODES, start, MPOL_F_ADDR,
                           may_fail=True)  # fmt: skip
                asked.append((start, end, m, n, c))
        for start, end, m, n, c in asked:
            if pb.result(c) < 0:
                continue  # (no NUMA support: no policy to keep)
            mode = int.from_bytes(pb.read(m, 4), "little")
            if mode != MPOL_DEFAULT:
                out.append([start, end, mode, pb.read(n, MASK).rstrip(b"\0")])
    if out:
        ctx.records[b"TASK"]["vma_policies"] = out


def restore(ctx: RestoreContext) -> None:
    """Restore hook (memory stage, the mappings made, no page written yet): a forked
    child's mappings kept from its parent back to no policy of their own (those where
    the parent has one: ``ctx.live["parent_policies"]``, its saved ones, given to it
    before the child's fork), then each saved one given again."""
    pols = ctx.records[b"TASK"].get("vma_policies") or []
    mm = ctx.records[b"MM  "]
    runs = (mm.get("cow") or {}).get("runs") or []
    own = {p[0] for p in pols}
    theirs = (getattr(ctx, "live", None) or {}).get("parent_policies")
    kept = [(v["start"], v["end"]) for v in mm["vmas"] if v["start"] not in own
            and any(a < v["end"] and v["start"] < a + n for a, n in runs)
            and (theirs is None or any(s < v["end"] and v["start"] < e
                                       for s, e, *_ in theirs))]  # fmt: skip
    calls = [(start, end, MPOL_DEFAULT, b"") for start, end in kept] + \
        [tuple(p) for p in pols]  # fmt: skip
    for i in range(0, len(calls), CHUNK):  # (held: memory.write_pages runs them first)
        with ctx.inj.hold(room=CHUNK * MASK) as b:
            for start, end, mode, nodes in calls[i : i + CHUNK]:
                mask = b.put(nodes.ljust(MASK, b"\0")) if nodes else 0
                b.call(SYS_MBIND, start, end - start, mode, mask, MAX_NODES if nodes else 0,
                       0, what=f" mbind of {start:x}")  # fmt: skip
