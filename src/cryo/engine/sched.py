"""Scheduling, per thread as the kernel keeps it: policy (SCHED_OTHER, BATCH, IDLE,
FIFO, RR, DEADLINE) with its priority, flags (SCHED_FLAG_RESET_ON_FORK) and deadline
parameters, the nice value (kept even under a real-time policy), utilization clamps, CPU
affinity and I/O priority.  All read and set from outside with the thread's tid
(sched_getattr, sched_getaffinity, ioprio_get), so no injected call is needed; they are
set as the very last step of a thread's restore, so that an idle or real-time policy
never slows or races the restore itself."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from cryo.errors import RestoreConflict
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import IOPRIO_WHO_PROCESS, SCHED, SCHED_FLAG, SYS

log = logging.getLogger(__name__)
_NICE_SET = (SCHED.OTHER, SCHED.BATCH)  # the policies whose sched_setattr sets the nice value
_UCLAMP_DEFAULT = ((0, 1024), (0, 0))  # (0, 0): a kernel without CONFIG_UCLAMP_TASK


def sched_getattr(tid: int) -> S.sched_attr:
    attr = S.sched_attr()
    libc.syscall(SYS.sched_getattr, tid, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    return attr


def sched_setattr(tid: int, attr: S.sched_attr) -> None:
    attr.size = ctypes.sizeof(attr)
    libc.syscall(SYS.sched_setattr, tid, ctypes.addressof(attr), 0)


def dump_thread(tid: int) -> dict[str, Any]:
    a = sched_getattr(tid)
    return {"sched": {
        # sched_getattr shows the nice value of fair policies only
        "policy": a.sched_policy, "flags": a.sched_flags,
        "nice": os.getpriority(os.PRIO_PROCESS, tid),
        "priority": a.sched_priority, "runtime": a.sched_runtime,
        "deadline": a.sched_deadline, "period": a.sched_period,
        "util": [a.sched_util_min, a.sched_util_max],
    }, "affinity": sorted(os.sched_getaffinity(tid)),
        "ioprio": libc.syscall(SYS.ioprio_get, IOPRIO_WHO_PROCESS, tid)}  # fmt: skip


def restore_thread(tid: int, trec: dict[str, Any]) -> None:
    """From cryo, on the restored thread ``tid``: affinity, I/O priority, nice, policy."""
    if "affinity" in trec:  # (each of the three is optional in the image on its own)
        try:
            os.sched_setaffinity(tid, trec["affinity"])
        except OSError as err:
            raise RestoreConflict(f"thread {trec['tid']}: CPU affinity {trec['affinity']}"
                                  f" cannot be set here ({err.strerror}); this machine has"
                                  f" CPUs {sorted(os.sched_getaffinity(0))}", pid=trec["pid"],
                                  resource="cpu affinity") from err  # fmt: skip
    if "ioprio" in trec:
        libc.syscall(SYS.ioprio_set, IOPRIO_WHO_PROCESS, tid, trec["ioprio"])
    if "sched" not in trec:
        return
    s = trec["sched"]
    if s["policy"] not in _NICE_SET:  # idle and real-time tasks keep a nice value for later
        sched_setattr(tid, S.sched_attr(sched_policy=SCHED.OTHER, sched_nice=s["nice"]))
    a = S.sched_attr(sched_policy=s["policy"], sched_flags=s["flags"], sched_nice=s["nice"],
                     sched_priority=s["priority"], sched_runtime=s["runtime"],
                     sched_deadline=s["deadline"], sched_period=s["period"])  # fmt: skip
    if tuple(s["util"]) not in _UCLAMP_DEFAULT:
        a.sched_flags |= SCHED_FLAG.UTIL_CLAMP_MIN | SCHED_FLAG.UTIL_CLAMP_MAX
        a.sched_util_min, a.sched_util_max = s["util"]
    sched_setattr(tid, a)


def describe(trec: dict[str, Any]) -> dict[str, Any]:
    if "sched" not in trec:
        return {}
    s = trec["sched"]
    pol = SCHED(s["policy"]).name if s["policy"] in SCHED._value2member_map_ else s["policy"]
    return {"sched": f"{pol} prio {s['priority']} nice {s['nice']}"
                     + (" reset-on-fork" if s["flags"] & SCHED_FLAG.RESET_ON_FORK else ""),
            "affinity": trec.get("affinity"), "ioprio": trec.get("ioprio")}  # fmt: skip
