"""engine/memory.py's _read_many: a block of many runs (scattered pages) read from a
process (this one: process_vm_readv of one's own memory needs no privilege), each run at
its offset in the buffer, runs in a mapping marked unreadable read through /proc/PID/mem;
and a short process_vm_readv finished there."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from cryo.engine import memory
from cryo.linux import libc

PAGE = mmap.PAGESIZE


@pytest.fixture
def source() -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, 9000 * PAGE)
    for k in range(9000):  # each page says which it is
        m[k * PAGE : k * PAGE + 8] = k.to_bytes(8, "little")
    return m, libc.buffer_address(m)


def _runs(base: int, n: int) -> list[list[int]]:
    # every other page, lengths of 1-3 pages (runs of a periodic checkpoint's kind)
    out, at = [], 0
    for k in range(n):
        length = (k % 3 + 1) * PAGE
        out.append([base + at, length])
        at += length + PAGE
    return out


def _check(buf: mmap.mmap, runs: list[list[int]], base: int) -> None:
    off = 0
    for addr, length in runs:
        for p in range(0, length, PAGE):
            want = (addr - base + p) // PAGE
            assert int.from_bytes(buf[off + p : off + p + 8], "little") == want
        off += length


@pytest.mark.parametrize("n", [memory.MANY_RUNS, 1500, 2100])  # (over IOV_MAX: in parts)
@pytest.mark.parametrize("unreadable", [False, True])
def test_read_many(source: tuple[mmap.mmap, int], n: int, unreadable: bool) -> None:
    _m, base = source
    runs = _runs(base, n)
    total = sum(length for _, length in runs)
    buf = mmap.mmap(-1, total)
    # (runs 10-29 and the last ones "unreadable": read through /proc/PID/mem instead)
    bad = [(runs[10][0], runs[30][0]), (runs[-5][0], runs[-1][0] + runs[-1][1])]
    fd = os.open(f"/proc/{os.getpid()}/mem", os.O_RDONLY)
    try:
        got = memory._read_many(os.getpid(), fd, buf, runs, bad if unreadable else [])
    finally:
        os.close(fd)
    assert got == total
    _check(buf, runs, base)


def test_read_many_finishes_a_short_read(source: tuple[mmap.mmap, int]) -> None:
    """A run in a page process_vm_readv cannot read (PROT_NONE here; a mapping without
    read permission in a target) ends the call short: the rest through /proc/PID/mem."""
    _m, base = source
    runs = _runs(base, 200)
    target = runs[120][0]
    mprotect = ctypes.CDLL(None, use_errno=True).mprotect
    mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert mprotect(target, PAGE, 0) == 0  # PROT_NONE
    total = sum(length for _, length in runs)
    buf = mmap.mmap(-1, total)
    fd = os.open(f"/proc/{os.getpid()}/mem", os.O_RDONLY)
    try:
        assert memory._read_many(os.getpid(), fd, buf, runs, []) == total
    finally:
        os.close(fd)
    mprotect(target, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    _check(buf, runs, base)
