"""SysV semaphore undo lists: refused where they may matter, because nothing shows them.

A ``semop`` with ``SEM_UNDO`` gives the calling task an undo list (shared by the threads
made with CLONE_SYSVSEM, as pthreads are): the adjustments the kernel applies to each
semaphore when the task exits, so that a process killed while it holds a semaphore gives
it back.  No /proc file, no ``semctl`` and no ptrace request reads those adjustments, so
a restored process would come back without them: the original's death applies them
(seen: a process holding a semaphore raised by 2 with SEM_UNDO was checkpointed, exit 0,
and once it was killed the semaphore was back at 0, so that the restored copy held what
it no longer had), and the copy's own exit would give nothing back.

What the kernel does show is whether a task has a list: ``kcmp(KCMP_SYSVSEM)`` compares
two tasks' lists.  But a list holding only zero adjustments cannot be told from one
holding some, and a task also gets an empty one by making a thread with CLONE_SYSVSEM,
as pthread_create does.  What narrows it down is the sets: an adjustment is made by a
successful semop, which sets the set's otime (/proc/sysvipc/sem, in seconds).  So a
process is refused when one of its threads has a list *and* a set of its IPC namespace
(cryo's: engine/namespaces.py refuses others) was operated on since the process
started (otime at or after its start, a second of slack for the rounding); a set never
operated on, or only before the process existed, holds nothing of it.  A list shared
with its parent process (clone with CLONE_SYSVSEM, not a thread) may hold what the
parent did before the child existed, so it is refused whatever the sets' times.  A
multi-threaded process is thus refused while a set it could have used is in use, even
if it never used SEM_UNDO: the only exact answer while the kernel shows nothing more.
Semaphores used without SEM_UNDO by a single-threaded process are not concerned (the
sets themselves are saved apart: ``cryo ipc``).
"""

from __future__ import annotations

import os
from typing import Any

from cryo import procfs
from cryo.errors import Unsupported
from cryo.linux import libc

KCMP_SYSVSEM = 6  # include/uapi/linux/kcmp.h


def _sets() -> list[tuple[str, int]]:
    """(id, otime) of the semaphore sets of cryo's IPC namespace."""
    try:
        with open("/proc/sysvipc/sem", "rb") as f:
            lines = f.read().decode().splitlines()[1:]
    except FileNotFoundError:  # (a kernel without SysV IPC)
        return []
    rows = [line.split() for line in lines]
    return [(r[1], int(r[8])) for r in rows if len(r) > 8]


def _started(pid: int) -> float:
    """When ``pid`` started, in seconds since the epoch."""
    st = procfs.start_time(pid)
    with open("/proc/stat", "rb") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    return btime + (st or 0) / os.sysconf("SC_CLK_TCK")


def check(ctx: Any) -> None:
    """Driver hook (collect, per process): refuse a process any of whose threads has an
    undo list while a semaphore set was operated on since it started, or whose list is
    its parent's (kcmp against a child of cryo's made for it: a fork has none, and cryo
    itself may have one, being multi-threaded)."""
    sets = _sets()
    if not sets:
        return
    since = _started(ctx.pid) - 1
    used = [i for i, otime in sets if otime and otime >= since]
    ppid = procfs.parse_stat(procfs.read(ctx.pid, "stat")).ppid
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the witness: no undo list (fork without CLONE_SYSVSEM)
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        for name in os.listdir(f"/proc/{ctx.pid}/task"):
            tid = int(name)
            if libc.kcmp_same(KCMP_SYSVSEM, child, tid):
                continue  # no list
            who = f"process {ctx.pid}" + (f" (thread {tid})" if tid != ctx.pid else "")
            shared = ppid > 0 and libc.kcmp_same(KCMP_SYSVSEM, tid, ppid)
            if used or shared:
                why = (f"semaphore sets {', '.join(used[:5])} were used since it started"
                       if used else f"its undo list is its parent's ({ppid}, CLONE_SYSVSEM)")
                raise Unsupported(f"{who} may hold SysV semaphore undo adjustments (semop"
                                  f" with SEM_UNDO; {why}): the kernel shows them to no"
                                  " one, so a restored copy could not give its semaphores"
                                  " back when it exits", pid=ctx.pid,
                                  resource="SEM_UNDO")  # fmt: skip
    finally:
        os.close(w)
        os.waitpid(child, 0)
