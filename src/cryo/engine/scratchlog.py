"""Where cryo's scratch mappings are, so that one left behind by a killed checkpoint is
removed by the next.

A checkpoint maps a 64 KiB scratch area (readable, writable, executable for the batch
routine) in each target and unmaps it before letting go.  If every cryo process dies in
between (SIGKILL to the process group, the OOM killer), the target goes on unharmed
(engine/guard.py) but keeps that mapping.  So the address is chosen before the mmap (a
free range with a free page on each side, so that it can merge with nothing) and written
in the ledger ``/run/cryo/scratch/PID-START-ADDR`` first, removed once unmapped: nothing
is mapped that the ledger does not name.  The next checkpoint of that process
(:func:`sweep`, with the process frozen and before its own scratch is mapped) unmaps
every range its ledger names that is still an anonymous private mapping of that size,
and forgets entries of processes that are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

from cryo import procfs
from cryo.linux.consts import PAGE_SIZE

log = logging.getLogger(__name__)
LEDGER = "/run/cryo/scratch"
TOP = 0x7FFFFFFFF000


def _maps(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, path) of each mapping."""
    out = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            x = line.split(None, 5)
            lo, hi = (int(a, 16) for a in x[0].split("-"))
            out.append((lo, hi, x[1], x[5] if len(x) > 5 else ""))
    return out


def choose(pid: int, size: int) -> int:
    """A free range of ``size`` bytes in ``pid`` with a free page on each side, in the
    mmap area: the highest below the first mapping under the stack (the stack's room to
    grow is left alone), where the kernel itself would put it; 0 if none."""
    vmas = _maps(pid)
    stack = next((lo for lo, _hi, _p, path in vmas if path == "[stack]"), TOP)
    below = [(lo, hi) for lo, hi, _p, _path in vmas if hi <= stack]
    if not below:
        return 0
    top = below[-1][0]
    for lo, hi in reversed(below[:-1]):
        if top - hi >= size + 2 * PAGE_SIZE:
            return top - PAGE_SIZE - size
        top = min(top, lo)
    return 0


def _entry(pid: int, addr: int) -> str | None:
    start = procfs.start_time(pid)
    return None if start is None else os.path.join(LEDGER, f"{pid}-{start}-{addr:x}")


def note(pid: int, addr: int, size: int) -> str | None:
    """Before mapping ``size`` bytes at ``addr`` in ``pid``: the ledger entry (its path),
    or None where there is no ledger (not root)."""
    path = _entry(pid, addr)
    if path is None:
        return None
    try:
        os.makedirs(LEDGER, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        os.write(fd, str(size).encode())
    finally:
        os.close(fd)
    return path


def forget(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def left(pid: int) -> list[tuple[str, int, int]]:
    """(ledger entry, address, size) of the scratch areas a killed checkpoint left in
    ``pid`` and that are still mapped as cryo mapped them; entries of processes gone
    (another start time) are removed."""
    try:
        names = os.listdir(LEDGER)
    except FileNotFoundError:
        return []
    start = procfs.start_time(pid)
    vmas: list[tuple[int, int, str, str]] | None = None
    out = []
    for name in names:
        try:
            p, s, a = name.split("-")
            epid, estart, addr = int(p), int(s), int(a, 16)
        except ValueError:
            continue
        path = os.path.join(LEDGER, name)
        if procfs.start_time(epid) != estart:  # that process is gone
            forget(path)
            continue
        if epid != pid or estart != start:
            continue
        try:
            with open(path, "rb") as f:
                size = int(f.read() or b"0")
        except (OSError, ValueError):
            size = 0
        if vmas is None:
            vmas = _maps(pid)
        if size and (addr, addr + size) in {(lo, hi) for lo, hi, perms, vpath in vmas
                                            if perms in ("rwxp", "rw-p") and not vpath} \
                and _looks_like_scratch(pid, addr, size):  # fmt: skip
            out.append((path, addr, size))
        else:  # unmapped meanwhile (or never mapped: the mmap did not run)
            forget(path)
    return out


def _looks_like_scratch(pid: int, addr: int, size: int) -> bool:
    """The end of the range holds cryo's batch routine, or nothing yet (zeros): a mapping
    the program made there since would hardly look so (the exact bounds and permissions
    were checked already)."""
    from cryo.engine.inject import BATCH_CODE, BATCH_REGION

    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return False
    try:
        data = os.pread(fd, BATCH_REGION, addr + size - BATCH_REGION)
    except OSError:
        return False
    finally:
        os.close(fd)
    return data.startswith(BATCH_CODE) or not data.strip(b"\0")


def sweep(pid: int, munmap: Callable[[int, int], object]) -> int:
    """Unmap (with ``munmap``, a call injected in the frozen ``pid``) the scratch areas
    killed checkpoints left in it; returns how many."""
    n = 0
    for path, addr, size in left(pid):
        munmap(addr, size)
        log.info("pid %d: removed the scratch area %#x-%#x a killed checkpoint left",
                 pid, addr, addr + size)  # fmt: skip
        forget(path)
        n += 1
    return n
