"""Semaphore sets and shared memory segments saved and loaded for real, each scenario in
its own IPC namespace."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

import cryo.ipc
from cryo.errors import ImageCorrupt, RestoreConflict
from cryo.ipc import shm as shmmod
from cryo.linux import sysv

from .ipc_ns import in_new_ipc_ns, join, root_ns_objects, spawn, stop

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _nothing_leaks() -> Iterator[None]:
    before = root_ns_objects()
    yield
    assert root_ns_objects() == before


# ---------------------------------------------------------------------------------------------
# semaphores


def _sem_save(store: Path) -> dict[str, object]:
    sysv.semctl(sysv.semget(0, 1, 0o600), 0, sysv.IPC_CMD.RMID)  # the set gets id != 0
    s = sysv.semget(0x5E5, 250, sysv.IPC.CREAT | 0o640)
    rng = random.Random(4)
    values = [rng.randrange(sysv.SEMVMX + 1) for _ in range(250)]
    values[0], values[1], values[249] = 0, sysv.SEMVMX, 1
    sysv.sem_setall(s, values)
    # two processes that are gone by the load leave their pids as sempid of sems 10 and 20
    workers = []
    for num in (10, 20):

        def bump(num: int = num) -> None:
            sysv.semop(s, [(num, 1, 0)])

        workers.append(spawn(bump))
    for w in workers:
        assert join(w) == 0
    pids = [sysv.semctl(s, i, sysv.SEM.GETPID) for i in range(250)]
    assert (pids[10], pids[20], pids[5]) == (*workers, os.getpid())
    values[10] += 1
    values[20] += 1
    # one process waits for sem 0 to go up: a pending wait, seen but not saved
    waiter = spawn(lambda: sysv.semop(s, [(0, -1, 0)]))
    deadline = time.monotonic() + 10
    while sysv.semctl(s, 0, sysv.SEM.GETNCNT) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ds = sysv.sem_stat(s)
    ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode = 99, 98, 0o606
    sysv.semctl(s, 0, sysv.IPC_CMD.SET, ds)
    try:
        saved = cryo.ipc.save("sem", s, store=store)
    finally:
        stop(waiter, signal.SIGKILL)
    assert saved.version == 1
    assert sysv.sem_getall(s, 250) == values  # untouched
    desc = cryo.ipc.show("sem", s, store=store)
    assert desc.counts["semaphores"] == 250
    assert any("1 waits for an increase" in x for x in desc.left_out)
    assert any("SEM_UNDO" in x for x in desc.left_out)
    return {"id": s, "values": values, "pids": pids}


def _sem_load(store: Path, saved: dict[str, object]) -> None:
    s = saved["id"]
    assert isinstance(s, int)
    loaded = cryo.ipc.load("sem", s, store=store)
    assert loaded.id == s
    assert sysv.sem_getall(s, 250) == saved["values"]
    p = sysv.sem_stat(s).sem_perm
    assert (p.key, p.uid, p.gid, p.mode & 0o777) == (0x5E5, 99, 98, 0o606)
    pids = saved["pids"]
    assert isinstance(pids, list)
    # each sempid is restored (by a child with that pid), unless the pid is taken again
    # (then a note says so): here the two workers' and the saving process's pids
    for num, pid in enumerate(pids):
        if not [n for n in loaded.notes if f"sempid {pid} " in n]:
            assert sysv.semctl(s, num, sysv.SEM.GETPID) == pid
    assert len({sysv.semctl(s, num, sysv.SEM.GETPID) for num in range(250)}) >= 2
    with pytest.raises(RestoreConflict):
        cryo.ipc.load("sem", s, store=store)
    assert cryo.ipc.load("sem", s, store=store, replace=True).id == s


def test_250_semaphores_values_sempids_owner(tmp_path: Path) -> None:
    saved = in_new_ipc_ns(_sem_save, tmp_path)
    in_new_ipc_ns(_sem_load, tmp_path, saved)


# ---------------------------------------------------------------------------------------------
# shared memory


def _pattern(size: int) -> bytes:
    return random.Random(size).randbytes(size)


SEG = 256 * MiB
BLOCK = _pattern(MiB)


def _hole(off: int) -> bool:
    return 128 * MiB <= off < 192 * MiB or 200 * MiB <= off < 210 * MiB


def _expected_mib(off: int) -> bytes:
    """The segment's content, MiB by MiB: data but for two holes, a lone page in one."""
    piece = bytearray(MiB) if _hole(off) else bytearray(BLOCK)
    if off == 205 * MiB:
        piece[:5] = b"alone"
    if off == SEG - MiB:
        piece[-3:] = b"end"
    return bytes(piece)


def _expected_digest() -> str:
    h = xxhash.xxh3_128()
    for off in range(0, SEG, MiB):
        h.update(_expected_mib(off))
    return h.hexdigest()


def _shm_save(store: Path) -> dict[str, object]:
    size = SEG
    m = sysv.shmget(0x5A5, size, sysv.IPC.CREAT | 0o660)
    with sysv.shm_attached(m, size, readonly=False) as (_, view):
        for off in range(0, size, MiB):  # write the holes' pages only where data is
            piece = _expected_mib(off)
            if not _hole(off):
                view[off : off + MiB] = piece
        view[205 * MiB : 205 * MiB + 5] = b"alone"
    digest = _expected_digest()
    ds = sysv.shm_stat(m)
    ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode = 7, 8, 0o640
    sysv.shmctl(m, sysv.IPC_CMD.SET, ds)
    # a process attached at save time
    r, w = os.pipe()

    def attach() -> None:
        sysv.shmat(m, 0, sysv.SHM.RDONLY)
        os.write(w, b"1")
        time.sleep(60)

    holder = spawn(attach)
    assert os.read(r, 1) == b"1"
    try:
        saved = cryo.ipc.save("shm", m, store=store)
        with sysv.shm_attached(m, size, readonly=True) as (_, view):
            assert xxhash.xxh3_128_hexdigest(view) == digest  # untouched
        desc = cryo.ipc.show("shm", m, store=store)
        assert desc.counts["bytes"] == size
        assert desc.counts["attached at save"] == 1
        # a segment still attached keeps its id after IPC_RMID: --replace says so
        with pytest.raises(RestoreConflict, match="attach"):
            cryo.ipc.load("shm", m, store=store, replace=True)
    finally:
        stop(holder)
        os.close(r)
        os.close(w)
    assert cryo.ipc.live("shm") == []  # removed once the holder is gone
    # the holes were not written: the file is smaller than the segment
    assert saved.size < size - 64 * MiB
    return {"id": m, "digest": digest}


def _shm_load(store: Path, saved: dict[str, object]) -> None:
    m = saved["id"]
    assert isinstance(m, int)
    size = SEG
    loaded = cryo.ipc.load("shm", m, store=store)
    assert loaded.id == m
    ds = sysv.shm_stat(m)
    p = ds.shm_perm
    assert (p.key, p.uid, p.gid, p.mode & 0o777) == (0x5A5, 7, 8, 0o640)
    assert ds.shm_segsz == size
    # the holes stayed holes: less than the whole segment is resident (before reading it)
    (live,) = cryo.ipc.live("shm")
    assert live.extra["rss"] <= size - 64 * MiB
    with sysv.shm_attached(m, size, readonly=True) as (_, view):
        assert xxhash.xxh3_128_hexdigest(view) == saved["digest"]


def test_256_mib_segment(tmp_path: Path) -> None:
    saved = in_new_ipc_ns(_shm_save, tmp_path)
    in_new_ipc_ns(_shm_load, tmp_path, saved)


def _shm_locked_and_small(store: Path) -> None:
    m = sysv.shmget(0, 5000, 0o600)  # not a multiple of the page size
    with sysv.shm_attached(m, 5000, readonly=False) as (_, view):
        view[:] = bytes(range(256)) * 19 + bytes(136)
        want = bytes(view)
    sysv.shmctl(m, sysv.SHM_CMD.LOCK)
    cryo.ipc.save("shm", m, store=store)
    sysv.shmctl(m, sysv.IPC_CMD.RMID)
    cryo.ipc.load("shm", m, store=store)
    assert sysv.shm_stat(m).shm_perm.mode & sysv.SHM.LOCKED
    with sysv.shm_attached(m, 5000, readonly=True) as (_, view):
        assert bytes(view) == want


def test_small_locked_segment(tmp_path: Path) -> None:
    in_new_ipc_ns(_shm_locked_and_small, tmp_path)


def _shm_changed_between_reads(store: Path) -> None:
    m = sysv.shmget(0, 4 * MiB, 0o600)
    with sysv.shm_attached(m, 4 * MiB, readonly=False) as (_, view):
        view[:] = _pattern(4 * MiB)
    saved = cryo.ipc.save("shm", m, store=store)
    sysv.shmctl(m, sysv.IPC_CMD.RMID)
    image = shmmod.read(saved.path)
    # the file is damaged after it was checked, before the bytes are copied in
    data = bytearray(saved.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.path.write_bytes(bytes(data))
    with pytest.raises(ImageCorrupt):
        shmmod.load(image)
    assert cryo.ipc.live("shm") == []  # removed again


def test_segment_half_loaded_is_removed(tmp_path: Path) -> None:
    in_new_ipc_ns(_shm_changed_between_reads, tmp_path)
