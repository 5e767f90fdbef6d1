"""Benchmark of cryo.ipc: save and load of a big message queue and of a big segment.

Runs in its own IPC namespace (it unshares one at start; the objects die with it) and in a
temporary store that it removes.  For each operation it prints the time and MB/s, and the
time to copy the same number of bytes with plain file I/O (write + fsync of a file of the
same size) measured in the same run, with the ratio.  Target: shm save and load within
1.5x of the plain copy.

    python bench/ipc.py [--messages 100000] [--shm-mib 1024] [--repeat 3] [--dir DIR]

Needs root (a new IPC namespace, *_next_id).  The queue save is quadratic in the kernel:
msgrcv(MSG_COPY) finds message i by walking i messages (ipc/msg.c: find_msg), and there is
no other way to read a queue without emptying it.  Each step of that walk is a cache miss
when the messages are big and spread out: 100,000 messages of 0..8192 bytes took 519 s
to save on the 2-cpu test VM, against 58 s for messages of 0..256 bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cryo.ipc
from cryo.linux import sysv

MiB = 1 << 20
CHUNK = 64 * MiB


def plain_copy(path: Path, size: int) -> float:
    """Write ``size`` bytes (from memory, in 64 MiB writes) to a new file and fsync it."""
    buf = memoryview(random.Random(1).randbytes(min(CHUNK, size)))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, buf[: min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def plain_read(path: Path, size: int) -> float:
    """Read a file of ``size`` bytes (just written, so from the page cache)."""
    buf = memoryview(random.Random(1).randbytes(min(CHUNK, size)))
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(buf[: min(left, len(buf))])
    into = bytearray(len(buf))
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(into):
            pass
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def fill_segment(shmid: int, size: int) -> None:
    block = random.Random(2).randbytes(CHUNK)
    with sysv.shm_attached(shmid, size, readonly=False) as (_, view):
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            view[off : off + n] = block[:n]


def fill_queue(q: int, count: int, max_size: int) -> int:
    """``count`` messages of 5 types, of sizes 0..max_size (both ends included)."""
    rng = random.Random(3)
    buf = sysv.MsgBuffer(max_size)
    sizes = sorted({0, 1, 16, 64, max_size // 4, max_size // 2, max_size})
    total = 0
    for i in range(count):
        n = rng.choice(sizes)
        sysv.msgsnd(q, 1 + i % 5, rng.randbytes(n), sysv.IPC.NOWAIT, buf)
        total += n
    return total


Row = tuple[str, int, float, float]


def bench_shm(store: Path, scratch: Path, mib: int, repeat: int) -> list[Row]:
    """Runs alternate (plain copy, save, load) so that the disk's ups and downs hit all
    three alike; the medians are compared."""
    size = mib * MiB
    shmid = sysv.shmget(0x5BE7C4, size, sysv.IPC.CREAT | 0o600)
    fill_segment(shmid, size)
    saves, loads, copies, reads = [], [], [], []
    for _ in range(repeat):
        copies.append(plain_copy(scratch, size))
        t0 = time.perf_counter()
        saved = cryo.ipc.save("shm", shmid, store=store)
        saves.append(time.perf_counter() - t0)
        sysv.shmctl(shmid, sysv.IPC_CMD.RMID)
        t0 = time.perf_counter()
        cryo.ipc.load("shm", shmid, saved.version, store=store)
        loads.append(time.perf_counter() - t0)
        shutil.rmtree(saved.path.parent)
        reads.append(plain_read(scratch, size))
    sysv.shmctl(shmid, sysv.IPC_CMD.RMID)
    copy = statistics.median(copies)
    for what, times in (("plain copy", copies), ("shm save", saves), ("shm load", loads)):
        print(f"  {what:<10} runs: {' '.join(f'{t:.3f}' for t in times)} s")
    return [
        (f"shm save, {mib} MiB segment", size, statistics.median(saves), copy),
        (f"shm load, {mib} MiB segment", size, statistics.median(loads), copy),
        ("  (plain read of a file that size, page cache)", size, statistics.median(reads), copy),
    ]


def bench_msg(store: Path, scratch: Path, count: int, max_size: int) -> list[Row]:
    Path("/proc/sys/kernel/msgmnb").write_text(str(1 << 30))  # room for them all
    q = sysv.msgget(0x5BE7C5, sysv.IPC.CREAT | 0o600)
    total = fill_queue(q, count, max_size)
    t0 = time.perf_counter()
    saved = cryo.ipc.save("msg", q, store=store)
    save = time.perf_counter() - t0
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    t0 = time.perf_counter()
    cryo.ipc.load("msg", q, store=store)
    load = time.perf_counter() - t0
    assert sysv.msg_stat(q).msg_qnum == count
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    copy = plain_copy(scratch, saved.size)
    return [
        (f"msg save, {count:,} messages, {total / MiB:.0f} MiB", saved.size, save, copy),
        (f"msg load, {count:,} messages", saved.size, load, copy),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--msg-max-size", type=int, default=256,
                    help="messages of 0..N bytes (8192 makes the save about 15x slower: see"
                    " docs/ipc.md)")  # fmt: skip
    ap.add_argument("--shm-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7, help="runs of the shm bench (median)")
    ap.add_argument("--dir", type=Path, default=None, help="where the store goes (a tmp dir)")
    ap.add_argument("--skip-msg", action="store_true")
    ap.add_argument("--skip-shm", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/ipc.py needs root (its own IPC namespace)", file=sys.stderr)
        return 2
    sysv.unshare_ipc()
    top = Path(tempfile.mkdtemp(prefix="cryo-ipc-bench-", dir=args.dir))
    try:
        store, scratch = top / "store", top / "plain.bin"
        print(f"cryo ipc bench: kernel {platform.release()}, {os.cpu_count()} cpus, store {top}")
        rows = [] if args.skip_shm else bench_shm(store, scratch, args.shm_mib, args.repeat)
        if not args.skip_msg:
            rows += bench_msg(store, scratch, args.messages, args.msg_max_size)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print(f"{'operation':<46} {'MB':>8} {'time':>9} {'MB/s':>8} {'plain copy':>11} {'ratio':>7}")
    for name, nbytes, t, copy in rows:
        print(f"{name:<46} {nbytes / 1e6:>8.1f} {t:>8.3f}s {nbytes / 1e6 / t:>8.0f}"
              f" {copy:>10.3f}s {t / copy:>6.2f}x")  # fmt: skip
    print("plain copy: write + fsync of a new file of the same size on the same disk, measured"
          " alternately with the shm runs (medians)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
