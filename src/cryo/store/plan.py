"""How a restart writes the pages of one process (or object) of a version: few, large
writes straight from the mapped page files.

The pages of a version come from several files (its own and older versions').  A page
file was written in address order, so the pages a version still uses from it are long
stretches of the file, broken by the pages later versions replaced.  Writing each
stretch on its own would cost one block (and one system call) per gap; instead a
*natural* block writes a whole stretch of the file to the addresses its pages were saved
from, gaps included, when every page of a gap goes to an address whose final bytes come
from a later file: files are written oldest first, so the later file writes over the
stale page (or, for a page that became zeros, a write of zeros at the end).  Pages no
natural block covers (a page stored once for several addresses,
say) are *gathered*: copied into a buffer, written last.  Pages of zeros are only written
where the fresh mapping is not already zeros (private file mappings).

This relies on the engine writing blocks in list order, one after the other, as
``cryo.engine.memory.write_pages`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cryo.store import pages as P

BRIDGE = 16  # stale pages worth writing to join two stretches (cheaper than a block)


@dataclass
class Natural:
    key: int  # the file
    off: int  # first page of the stretch in the file
    count: int
    runs: P.I64  # (n, 2): [page, count] rows, where the stretch's pages go


@dataclass
class UnitPlan:
    natural: list[Natural] = field(default_factory=list)  # in key order
    gather: P.PageMap = field(default_factory=P.PageMap.empty)  # written from copies
    zero: P.I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stale_zero: P.I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # must be
    # written with zeros: a natural block wrote stale bytes there
    used: dict[int, P.BOOL] = field(default_factory=dict)  # file pages read, per file

    def pages_written(self) -> int:
        return sum(n.count for n in self.natural) + len(self.gather)


def plan_unit(target: P.PageMap, layouts: Mapping[int, P.I64], *,
              keys: list[int] | None = None, exclude: P.I64 | None = None,
              bridge: int = BRIDGE) -> UnitPlan:  # fmt: skip
    """Plan the writes of ``target``; ``layouts[key]`` is the natural page of each page
    of file ``key`` (where it was saved from); ``keys`` the files ``target`` refers to,
    if known.  Pages in ``exclude`` are gathered."""
    plan = UnitPlan()
    covered = np.zeros(len(target), dtype=bool)
    zeroed = np.zeros(len(target), dtype=bool)
    if keys is None:
        keys = [int(k) for k in np.unique(target.src) if k != P.ZERO]
    for k in sorted(keys):
        lay = layouts[k]
        n = len(lay)
        idx, here = target.lookup(lay)
        if exclude is not None and len(exclude):
            here &= ~np.isin(lay, exclude)
        tk, to = target.src[idx], target.off[idx]
        exact = here & (tk == k) & (to == np.arange(n))
        # the final bytes come from a file written after this one, or are zeros
        later = here & ((tk > k) | (tk == P.ZERO))
        ex = np.flatnonzero(exact)
        used = np.zeros(n, dtype=bool)
        plan.used[k] = used
        if not len(ex):
            continue
        segment = np.cumsum(~(exact | later))  # pages that must not be written split
        join = (np.diff(ex) - 1 <= bridge) & (segment[ex[1:]] == segment[ex[:-1]])
        starts = ex[np.concatenate([[True], ~join])]
        ends = ex[np.concatenate([~join, [True]])] + 1
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            first, counts = P.extents(lay[s:e])
            plan.natural.append(Natural(k, s, e - s, np.stack([first, counts], axis=1)))
            used[s:e] = True
        covered[idx[ex]] = True
        zeroed[idx[used & here & (tk == P.ZERO)]] = True
    rest = np.flatnonzero(~covered & (target.src != P.ZERO))
    plan.gather = P.PageMap(target.page[rest], target.src[rest], target.off[rest])
    for k in np.unique(plan.gather.src).tolist():
        plan.used[k][plan.gather.off[plan.gather.src == k]] = True
    plan.zero = target.page[target.src == P.ZERO]
    plan.stale_zero = target.page[zeroed]
    return plan


def simulate(plan: UnitPlan, read: Mapping[int, bytes]) -> dict[int, bytes]:
    """The bytes each page ends up with if the plan's writes are done in order (tests):
    ``read[key]`` is the data of file ``key`` (pages only, no header).  Pages of zeros
    not written are left out (a fresh anonymous mapping holds zeros)."""
    mem: dict[int, bytes] = {}
    for nat in plan.natural:
        data = read[nat.key]
        i = nat.off
        for page, count in nat.runs.tolist():
            for j in range(count):
                mem[page + j] = data[(i + j) * P.PAGE : (i + j + 1) * P.PAGE]
            i += count
    for page, k, off in zip(plan.gather.page.tolist(), plan.gather.src.tolist(),
                            plan.gather.off.tolist(), strict=True):  # fmt: skip
        mem[page] = read[k][off * P.PAGE : (off + 1) * P.PAGE]
    for page in plan.stale_zero.tolist():
        mem[page] = P.ZERO_PAGE
    return mem
