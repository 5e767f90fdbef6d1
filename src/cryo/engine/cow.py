"""Pages shared copy-on-write between a parent and its children (issue 9, "Memory").

A child forked from its parent shares every private page with it until one of them
writes it.  At a dump, a page of the child that the kernel backs with the same page
frame as the parent's page at the same address (the PFN of /proc/PID/pagemap, which
root can read) is that page: it is saved once, with the parent, and the child's MM
record lists it as inherited::

    "cow": {"from": <parent pid>, "runs": [[address, length], ...]}

Restore, two ways:

- by copy (what the orchestrator does today): the child's inherited runs are written
  from its parent's page blocks (its grandparent's, if the parent inherited them too):
  :func:`write_inherited`.  The image is smaller; the restored pages are not shared.
- by inheritance (CRIU's way, which keeps the restored tree as small as the original):
  the child is forked from its restored parent once the parent's pages are written and
  before its protections, locks, guards and seals are set (and before its fd table is
  replaced: the child still needs cryo's descriptions); ``memory.inherit_from_parent``
  picks the mappings the child keeps as they are (:func:`inherited_vmas`: same range,
  kind and advice), ``memory.unmap_helper`` keeps them, ``memory.map_vmas`` drops from
  them the parent's pages the child did not have (:func:`foreign_runs`) and
  ``memory.write_pages`` writes only the child's own pages (and, from the blocks, the
  shared pages of mappings it did not inherit).  The orchestrator decides the order:
  per process in creation order, create it (forked by its parent), then its stages up
  to writing pages; once every process is made, the rest (protect, restore_mm, files,
  ...).  Checked with a prototype orchestrator on tests/victims/cowtree.c: the sum of
  Pss went from 36 to 38 MiB (by copy: 128 MiB).

Pages the children share among them only (their parent rewrote its copy after the
forks): a child's page with the same page frame as a sibling's dumped before it, at the
same address, is saved once, with that sibling, and listed in the child's MM record as
``"cow_siblings": [[sibling, address, length], ...]`` (:func:`split_siblings`).  At
restart the parent, once its own pages are written, writes those over them (from the
sibling's blocks) before its children are forked, and writes its own back once every
child is forked (memory._hold_for_children, memory.unstage), or as soon as the last
child that keeps them is made where a child made later shares the parent's own page
there (memory.unstage_early): each child forked between keeps them inherited, the
sibling that saved them does not write them again (:func:`sibling_plan`).
tests/integration/test_cow_s12_h2.py, the tree's Pss before the checkpoint and after
the restart: victims/cowtree.c 36.3 and 36.3 MiB (38.3 after, before this),
cowtree.c late (a child forked after the rewrite) 37.3 and 37.4 MiB (40.5).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where it is used: a small checkpoint starts faster
    import numpy as np

from cryo.linux import libc
from cryo.linux.mm import PM_PFN_MASK, PM_PRESENT

log = logging.getLogger(__name__)
PAGE = 4096
KIND = b"MM  "
_READ = 1 << 16  # pagemap entries per read


def _entries(fd: int, addr: int, length: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    import numpy as np

    n = length // PAGE
    out = np.empty(n, dtype=np.uint64)
    done = 0
    while done < n:
        take = min(_READ, n - done)
        data = os.pread(fd, take * 8, (addr // PAGE + done) * 8)
        if len(data) != take * 8:
            raise OSError(0, f"short read of pagemap at {addr + done * PAGE:#x}")
        out[done : done + take] = np.frombuffer(data, dtype="<u8")
        done += take
    return out


def split(pid: int, parent: int, runs: list[tuple[int, int]]
          ) -> tuple[list[tuple[int, int]], list[list[int]]]:  # fmt: skip
    """Split ``runs`` (pages of ``pid`` to save) into the pages it must save itself and
    those it shares, copy-on-write, with ``parent`` (the same page frame at the same
    address).  Without the right to read page frames (not root), nothing is shared."""
    if not runs:
        return runs, []
    import numpy as np

    own: list[tuple[int, int]] = []
    cow: list[list[int]] = []
    cfd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        pfd = os.open(f"/proc/{parent}/pagemap", os.O_RDONLY)
    except OSError:
        os.close(cfd)
        return runs, []
    present, pfn = np.uint64(PM_PRESENT), np.uint64(PM_PFN_MASK)
    try:
        for addr, length in runs:
            c = _entries(cfd, addr, length)
            p = _entries(pfd, addr, length)
            cf = c & pfn
            shared = ((c & present) != 0) & ((p & present) != 0) & (cf != 0) & (cf == (p & pfn))
            cuts = np.flatnonzero(np.diff(shared.astype(np.int8))) + 1
            bounds = [0, *cuts.tolist(), len(shared)]
            for a, b in itertools.pairwise(bounds):
                piece = (addr + a * PAGE, (b - a) * PAGE)
                if shared[a]:
                    if cow and cow[-1][0] + cow[-1][1] == piece[0]:
                        cow[-1][1] += piece[1]
                    else:
                        cow.append([piece[0], piece[1]])
                else:
                    own.append(piece)
    finally:
        os.close(cfd)
        os.close(pfd)
    return own, cow


PM_EXCLUSIVE = 1 << 56  # pagemap: the page is mapped once (PM_MMAP_EXCLUSIVE)
Sibling = tuple[int, list[tuple[int, int]], list[int]]  # pid, its saved runs, their starts


def split_siblings(pid: int, runs: list[tuple[int, int]], earlier: list[Sibling]
                   ) -> tuple[list[tuple[int, int]], list[list[int]]]:  # fmt: skip
    """Split ``runs`` (pages of ``pid`` to save, those shared with its parent taken out)
    into the pages it must save itself and those it shares, copy-on-write, with a
    sibling dumped before it (``earlier``: pid, the runs it saved itself, their starts):
    the same page frame at the same address, in that sibling's saved runs (the first
    such sibling: a page that two siblings share with a third is saved by the first).
    Pages the parent rewrote after the forks, that its children share among them only.
    Only pages mapped more than once (not PM_MMAP_EXCLUSIVE) are looked for; returns
    the runs to save and [[sibling, address, length], ...]."""
    if not runs or not earlier:
        return runs, []
    import numpy as np

    present, pfn = np.uint64(PM_PRESENT), np.uint64(PM_PFN_MASK)
    excl = np.uint64(PM_EXCLUSIVE)
    own: list[tuple[int, int]] = []
    shared: list[list[int]] = []
    fds: dict[int, int] = {}
    try:
        cfd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return runs, []
    try:
        for addr, length in runs:
            c = _entries(cfd, addr, length)
            cf = c & pfn
            left = ((c & present) != 0) & ((c & excl) == 0) & (cf != 0)
            if not left.any():
                own.append((addr, length))
                continue
            src = np.full(len(c), -1, dtype=np.int32)
            for k, (spid, sruns, starts) in enumerate(earlier):
                if not left.any():
                    break
                for i0, i1 in _spans(left):
                    lo, hi = addr + i0 * PAGE, addr + i1 * PAGE
                    j = max(bisect.bisect_right(starts, lo) - 1, 0)
                    while j < len(sruns) and sruns[j][0] < hi:
                        s, e = max(sruns[j][0], lo), min(sruns[j][0] + sruns[j][1], hi)
                        j += 1
                        if s >= e:
                            continue
                        fd = fds.get(spid)
                        if fd is None:
                            try:
                                fd = fds[spid] = os.open(f"/proc/{spid}/pagemap", os.O_RDONLY)
                            except OSError:
                                fd = fds[spid] = -1
                        if fd < 0:
                            break
                        a, b = (s - addr) // PAGE, (e - addr) // PAGE
                        theirs = _entries(fd, s, e - s)
                        m = left[a:b] & ((theirs & present) != 0) & ((theirs & pfn) == cf[a:b])
                        src[a:b][m] = k
                        left[a:b] &= ~m
            cuts = np.flatnonzero(np.diff(src)) + 1
            for a, b in itertools.pairwise([0, *cuts.tolist(), len(src)]):
                k, piece = int(src[a]), (addr + a * PAGE, (b - a) * PAGE)
                if k < 0:
                    own.append(piece)
                elif shared and shared[-1][0] == earlier[k][0] and \
                        shared[-1][1] + shared[-1][2] == piece[0]:  # fmt: skip
                    shared[-1][2] += piece[1]
                else:
                    shared.append([earlier[k][0], *piece])
    finally:
        os.close(cfd)
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
    return own, shared


def _spans(mask: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """The [start, end) index ranges where ``mask`` is true."""
    import numpy as np

    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(),
                    strict=True))  # fmt: skip


# -- restore: by copy -------------------------------------------------------------------


class _Index:
    """Where the page data of each process of an image is: sorted (address, length,
    block, offset in block) per pid."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.by_pid: dict[int, list[tuple[int, int, int, int]]] = {}
        self.starts: dict[int, list[int]] = {}
        for i, b in enumerate(image.blocks):
            if "pid" not in b:
                continue
            off = 0
            for a, n in b["runs"]:
                self.by_pid.setdefault(b["pid"], []).append((a, n, i, off))
                off += n
        for pid, ents in self.by_pid.items():
            ents.sort()
            self.starts[pid] = [e[0] for e in ents]

    def find(self, pid: int, addr: int, length: int
             ) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]]]:  # fmt: skip
        """Pieces of [addr, addr + length) in ``pid``'s blocks: (address, length, block,
        offset in the block's data), and the pieces it does not hold."""
        ents = self.by_pid.get(pid, [])
        starts = self.starts.get(pid, [])
        found: list[tuple[int, int, int, int]] = []
        missing: list[tuple[int, int]] = []
        pos, end = addr, addr + length
        k = max(bisect.bisect_right(starts, pos) - 1, 0)
        while pos < end:
            if k < len(ents) and ents[k][0] + ents[k][1] <= pos:
                k += 1
                continue
            if k >= len(ents) or ents[k][0] >= end:
                missing.append((pos, end - pos))
                break
            a, n, i, off = ents[k]
            if a > pos:
                missing.append((pos, a - pos))
                pos = a
                continue
            take = min(a + n, end) - pos
            found.append((pos, take, i, off + pos - a))
            pos += take
        return found, missing


def write_inherited(ctx: Any, cow: dict[str, Any]) -> int:
    """Write a restored child's inherited pages from its ancestors' page blocks, one
    block at a time (each read and checked once, through the image's few buffers)."""
    index = _Index(ctx.image)
    pieces: dict[int, list[tuple[int, int, int]]] = {}  # block -> (address, length, offset)
    todo = [(cow["from"], a, n) for a, n in cow["runs"]]
    seen: set[int] = set()
    while todo:
        pid, a, n = todo.pop()
        found, missing = index.find(pid, a, n)
        for addr, length, i, off in found:
            pieces.setdefault(i, []).append((addr, length, off))
        up = ctx.image.one(KIND, pid).get("cow") if missing and pid not in seen else None
        if up:  # what the ancestor inherited itself is in its own ancestor's blocks
            seen.add(pid)
            for ma, mn in missing:
                todo.extend((up["from"], a, n) for a, n in _inside([[ma, mn]], up["runs"]))
        # the rest is in no block: a page of zeros that an image leaves out of an anonymous
        # mapping (a store does), and that our fresh mapping reads as zeros already
    keys = sorted(pieces)
    blocks = [ctx.image.blocks[i] for i in keys]
    stream = getattr(ctx.image, "stream_blocks", None)
    data = stream(blocks) if stream is not None else (
        (b, *ctx.image.block_data(b), 0, b["raw"]) for b in blocks)  # fmt: skip
    total = 0
    try:
        where = {id(ctx.image.blocks[i]): i for i in keys}
        for b, owner, base, start, size in data:  # a block, or a part of it
            here = libc.buffer_address(owner) + base
            del owner
            todo_b = [(addr + s - off, e - s, s - start)
                      for addr, length, off in pieces[where[id(b)]]
                      if (s := max(off, start)) < (e := min(off + length, start + size))]
            for k in range(0, len(todo_b), libc.IOV_MAX):
                part = todo_b[k : k + libc.IOV_MAX]
                local = [(here + off, length) for _a, length, off in part]
                remote = [(addr, length) for addr, length, _o in part]
                want = sum(n for _, n in local)
                got = libc.process_vm_writev(ctx.pid, local, remote)
                if got != want:
                    from cryo.errors import CryoError

                    raise CryoError(f"short write of inherited pages into {ctx.pid}:"
                                    f" {got} of {want}")  # fmt: skip
                total += got
    finally:
        data.close()
    return total


# -- restore: by inheritance (for an orchestrator that forks children late) -------------


def inherited_vmas(rec: dict[str, Any], parent_rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The child's private anonymous VMAs that it can take as they are from a parent
    forked after its pages were written: the same range, kind and protection in both,
    and not kept from children by the kernel (DONTFORK) or wiped (WIPEONFORK)."""
    theirs = {(v["start"], v["end"]): v for v in parent_rec["vmas"]}
    out = []
    for v in rec["vmas"]:
        p = theirs.get((v["start"], v["end"]))
        if p is None or v["kind"] != p["kind"] or v["shared"] or p["shared"]:
            continue
        # private anonymous, or private mappings of the same file at the same offset
        # (the pages the child did not copy are dropped back to the file's)
        if v["kind"] != "anon" and not (v["kind"] == "file" and v["path"] == p["path"]
                                        and v["pgoff"] == p["pgoff"]
                                        and v.get("file") == p.get("file")):  # fmt: skip
            continue
        mine, its = set(v["flags"]) & _FORK_STATE, set(p["flags"]) & _FORK_STATE
        # the same advice in both (there is no madvise back to "neither hg nor nh"), no
        # hugetlb (a private huge page's copy on write may fail in the child)
        if mine == its and not {"dc", "wf", "dp", "ht"} & mine:
            out.append(v)
    return out


# VmFlags a fork copies into the child's mapping, that a restored child must have as its own
_FORK_STATE = frozenset({"dc", "wf", "hg", "nh", "dd", "mg", "rr", "sr", "nr", "dp", "ht", "gd"})


def _inside(runs: list[list[int]], others: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``runs`` that some run of ``others`` covers."""
    out: list[tuple[int, int]] = []
    for a, n in runs:
        for b, m in others:
            s, e = max(a, b), min(a + n, b + m)
            if s < e:
                out.append((s, e - s))
    return out


def outside(runs: list[list[int]], ranges: list[tuple[int, int]]) -> list[list[int]]:
    """The parts of ``runs`` outside every [start, end) of ``ranges``."""
    out: list[list[int]] = []
    spans = sorted(ranges)
    for a, n in runs:
        pos, end = a, a + n
        for s, e in spans:
            if e <= pos or s >= end:
                continue
            if s > pos:
                out.append([pos, s - pos])
            pos = max(pos, e)
            if pos >= end:
                break
        if pos < end:
            out.append([pos, end - pos])
    return out


def foreign_runs(vma: dict[str, Any], own: list[tuple[int, int]],
                 cow: list[list[int]]) -> list[tuple[int, int]]:  # fmt: skip
    """Ranges of an inherited VMA that hold the parent's pages and not the child's:
    to be dropped (MADV_DONTNEED) in the child before it writes its own pages."""
    keep = sorted((a, a + n) for a, n in [*own, *cow]
                  if a < vma["end"] and a + n > vma["start"])  # fmt: skip
    out: list[tuple[int, int]] = []
    pos = vma["start"]
    for ks, ke in keep:
        s, e = max(ks, vma["start"]), min(ke, vma["end"])
        if s > pos:
            out.append((pos, s - pos))
        pos = max(pos, e)
    if pos < vma["end"]:
        out.append((pos, vma["end"] - pos))
    return out


# -- restore: pages the children share among them (their parent holds them a while) ----


def sibling_plan(image: Any) -> tuple[dict[int, list[tuple[int, int, int, int]]],
                                      dict[int, list[tuple[int, int]]]]:  # fmt: skip
    """Where a parent holds, while its children are forked, the pages they share among
    them only (MM ``cow_siblings``: it rewrote its own copy after the forks): per
    parent (old pid), [(address, length, sibling whose blocks hold them, last)], and per
    child the ranges of those it keeps as inherited.  The parent writes its own pages
    back once every child is forked (memory.unstage: ``last`` 0) or, where a child of
    it takes the parent's own page at that address (its ``cow`` runs: a child forked
    after the rewrite), as soon as ``last``, the last child that keeps them, is made:
    the children are made in the order of tree.creation_order, and such a range is held
    only when every child that keeps it comes before every child that takes the
    parent's page there (else those taken ranges are not held).  Held only where the
    parent's blocks hold its own page and the sibling's the shared one; where two
    siblings' pages meet at an address, the first's.  The rest is copied, one per
    child, as before (correct, not shared)."""
    from cryo.engine import tree
    from cryo.image import records as R

    trees = image.raw(R.TREE)
    ppid = {p["pid"]: p["ppid"] for p in (trees[0]["procs"] if trees else [])}
    recs = {r["pid"]: r for r in image.raw(KIND) if isinstance(r, dict)}
    wanted: dict[int, list[tuple[int, int, int]]] = {}
    for pid, r in recs.items():
        for s, a, n in r.get("cow_siblings") or ():
            if ppid.get(pid) in recs and ppid.get(s) == ppid.get(pid):
                wanted.setdefault(ppid[pid], []).append((a, a + n, s))
    if not wanted:
        return {}, {}
    order = {p["pid"]: k for k, p in enumerate(tree.creation_order(trees[0]))}
    index = _Index(image)
    plan: dict[int, list[tuple[int, int, int, int]]] = {}
    for parent, items in wanted.items():
        merged: list[list[int]] = []
        end = 0
        for a, e, s in sorted(items):
            if merged and a < end and merged[-1][2] == s:
                merged[-1][1] = max(merged[-1][1], e)
                end = max(end, e)
                continue
            start = max(a, end)  # (another sibling's pages there: the first's)
            if start < e:
                merged.append([start, e, s])
                end = e
        kids = [pid for pid in recs if ppid.get(pid) == parent]
        taken = {pid: [(a, a + n) for a, n in recs[pid]["cow"]["runs"]] for pid in kids
                 if (recs[pid].get("cow") or {}).get("from") == parent}  # fmt: skip
        out: list[tuple[int, int, int, int]] = []
        for a0, e0, s in merged:
            shares = {pid: [(x, x + n) for t, x, n in recs[pid].get("cow_siblings") or ()
                            if t == s and x < e0 and a0 < x + n] for pid in kids}  # fmt: skip
            cuts = sorted({a0, e0, *(b for rs in [*shares.values(), *taken.values()]
                                     for x, y in rs for b in (x, y) if a0 < b < e0)})
            for a, e in itertools.pairwise(cuts):  # (who keeps it, who takes the parent's)
                members = [s, *(pid for pid, rs in shares.items()
                                if any(x < e and a < y for x, y in rs))]  # fmt: skip
                takers = [pid for pid, rs in taken.items() if any(x < e and a < y for x, y in rs)]
                last = max(members, key=lambda m: order.get(m, -1))
                if not takers:
                    when = 0
                elif order.get(last, -1) < min(order.get(t, -1) for t in takers):
                    when = last  # (put back before the first taker is forked)
                else:
                    continue
                for pa, pn, *_ in index.find(parent, a, e - a)[0]:
                    out.extend((sa, sn, s, when) for sa, sn, *_ in index.find(s, pa, pn)[0])
        if out:
            plan[parent] = out
    keep: dict[int, list[tuple[int, int]]] = {}
    for parent, held in plan.items():
        for s in {s for _a, _n, s, _w in held}:
            keep.setdefault(s, []).extend((a, n) for a, n, t, _w in held if t == s)
        for pid, r in recs.items():
            if ppid.get(pid) != parent:
                continue
            for s, a, n in r.get("cow_siblings") or ():
                keep.setdefault(pid, []).extend(_inside(
                    [[a, n]], [[ha, hn] for ha, hn, t, _w in held if t == s]))
    return plan, {pid: sorted(k) for pid, k in keep.items() if k}


def within(runs: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``runs`` inside some [start, end) of ``ranges``."""
    return _inside([[a, n] for a, n in runs], [[s, e - s] for s, e in ranges])
