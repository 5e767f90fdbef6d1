"""Pure parts of the memory engine's state handling: smaps parsing of VmFlags and
KernelPageSize, the copy-on-write helpers (engine/cow.py), `cryo show` names."""

from __future__ import annotations

from typing import Any

from cryo import procfs
from cryo.engine import cow, memory
from cryo.linux.mm import MAPX, huge_flag

SMAPS = b"""\
7f0000000000-7f0000400000 rw-p 00000000 00:10 1234                       /anon_hugepage (deleted)
Size:               4096 kB
KernelPageSize:     2048 kB
VmFlags: rd wr mr mw me de ht
7f0000400000-7f0000404000 rw-p 00000000 00:00 0
KernelPageSize:        4 kB
VmFlags: rd wr mr mw me lo lf ac
"""


def test_smaps_page_size_and_flags() -> None:
    huge, locked = procfs.parse_smaps_flags(SMAPS)
    assert huge.page_size == 2 << 20 and "ht" in huge.flags
    assert huge.path == "/anon_hugepage (deleted)"
    assert locked.page_size == 4096 and locked.flags[-3:] == ("lo", "lf", "ac")


def test_huge_flag() -> None:
    assert huge_flag(2 << 20) == MAPX.HUGETLB | (21 << 26)
    assert huge_flag(1 << 30) == MAPX.HUGETLB | (30 << 26)


def _vma(start: int, end: int, flags: list[str], **kw: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "prot": 3, "shared": False, "kind": "anon",
            "path": "", "pgoff": 0, "flags": ["rd", "wr", *flags], **kw}  # fmt: skip


def test_inherited_vmas() -> None:
    parent = {"pid": 1, "vmas": [_vma(0x1000, 0x9000, []), _vma(0x10000, 0x20000, ["hg"]),
                                 _vma(0x30000, 0x31000, ["wf"]), _vma(0x40000, 0x41000, [])]}
    child = {"pid": 2, "vmas": [_vma(0x1000, 0x9000, ["lo"]), _vma(0x10000, 0x20000, []),
                                _vma(0x30000, 0x31000, ["wf"]), _vma(0x40000, 0x42000, [])]}
    # same range and advice only (a lock is the child's own, set later)
    assert [v["start"] for v in cow.inherited_vmas(child, parent)] == [0x1000]


def test_foreign_runs() -> None:
    v = _vma(0x1000, 0x9000, [])
    assert cow.foreign_runs(v, [], [[0x2000, 0x1000], [0x4000, 0x2000]]) == [
        (0x1000, 0x1000), (0x3000, 0x1000), (0x6000, 0x3000)]
    assert cow.foreign_runs(v, [(0x1000, 0x8000)], []) == []


class _Image:
    def __init__(self) -> None:
        self.buf = bytearray(b"a" * 4096 + b"b" * 8192)
        self.blocks = [{"pid": 7, "runs": [[0x5000, 4096], [0x9000, 8192]]}]

    def block_data(self, b: dict[str, Any]) -> tuple[object, int]:
        return self.buf, 0


def test_index_find() -> None:
    index = cow._Index(_Image())
    found, missing = index.find(7, 0x4000, 0x8000)
    # (address, length, block, offset of those bytes in the block's data)
    assert found == [(0x5000, 0x1000, 0, 0), (0x9000, 0x2000, 0, 4096)]
    assert missing == [(0x4000, 0x1000), (0x6000, 0x3000), (0xB000, 0x1000)]
    assert index.find(8, 0x5000, 0x1000) == ([], [(0x5000, 0x1000)])


def test_describe_state() -> None:
    v = _vma(0, 0x400000, ["lo", "lf", "dp", "sl", "ht"], hugetlb=2 << 20,
             guards=[[0x1000, 0x2000]])  # fmt: skip
    assert memory.describe_state(v) == ["locked", "lock-onfault", "droppable", "sealed",
                                        "hugetlb 2048 kB", "guard pages 2"]  # fmt: skip


def test_outside() -> None:
    runs = [[0x1000, 0x3000], [0x8000, 0x1000], [0xA000, 0x1000]]
    assert cow.outside(runs, [(0x2000, 0x3000), (0x8000, 0x9000)]) == [
        [0x1000, 0x1000], [0x3000, 0x1000], [0xA000, 0x1000]]
    assert cow.outside(runs, []) == runs


def test_reopen_is_the_same_file() -> None:
    import os

    from cryo.engine import shmem

    made = shmem.Made()
    made.fds[0] = os.memfd_create("t")
    try:
        fd = made.reopen(0, os.O_RDWR | os.O_TRUNC)
        os.write(fd, b"x")
        os.close(fd)
        assert os.pread(made.fds[0], 1, 0) == b"x"
    finally:
        made.close()
