"""The task itself: credentials, resource limits, comm, personality and prctl flags of
the process; per thread, the registrations the kernel keeps (rseq area, robust futex
list, clear_child_tid) and the thread's name."""

from __future__ import annotations

import logging
import struct
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Injector
from cryo.engine.ptrace import Tracee
from cryo.errors import Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import PR, RSEQ_FLAG_UNREGISTER, SYS

log = logging.getLogger(__name__)
KIND = b"TASK"
_PRCTL_FLAGS = {  # name: (get, set)
    "pdeathsig": (PR.GET_PDEATHSIG, PR.SET_PDEATHSIG),
    "dumpable": (PR.GET_DUMPABLE, PR.SET_DUMPABLE),
    "thp_disable": (PR.GET_THP_DISABLE, PR.SET_THP_DISABLE),
    "child_subreaper": (PR.GET_CHILD_SUBREAPER, PR.SET_CHILD_SUBREAPER),
}
_BY_POINTER = ("pdeathsig", "child_subreaper")  # these getters store through a pointer


def _ids(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def dump(ctx: DumpContext) -> dict[str, Any]:
    """Process-wide state (credentials are read per thread, see dump_thread)."""
    pid, inj = ctx.pid, ctx.inj
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    status = procfs.parse_status(procfs.read(pid, "status"))
    if status.get("Seccomp", "0") != "0":
        raise Unsupported(f"process {pid} runs under a seccomp filter, which is not supported",
                          pid=pid, resource="seccomp")  # fmt: skip
    prctl: dict[str, int] = {}
    for name, (get, _set) in _PRCTL_FLAGS.items():
        if name in _BY_POINTER:
            inj(SYS.prctl, get, inj.scratch, 0, 0, 0)
            prctl[name] = int.from_bytes(inj.read(inj.scratch, 4), "little")
        else:
            prctl[name] = inj(SYS.prctl, get, 0, 0, 0, 0)
    with open(f"/proc/{pid}/personality") as f:
        personality = int(f.read(), 16)
    return {
        "pid": pid, "ppid": st.ppid, "pgid": st.pgrp, "sid": st.session,
        "comm": st.comm, "exit_signal": st.exit_signal, "personality": personality,
        "rlimits": procfs.parse_limits(procfs.read(pid, "limits")), "prctl": prctl,
    }  # fmt: skip


def dump_thread(pid: int, tracee: Tracee, inj: Injector) -> dict[str, Any]:
    """Per thread: credentials, comm, rseq, robust list, clear_child_tid, no_new_privs."""
    tid = tracee.tid
    status = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    inj(SYS.prctl, PR.GET_TID_ADDRESS, inj.scratch, 0, 0, 0)
    clear_tid = int.from_bytes(inj.read(inj.scratch, 8), "little")
    rseq = tracee.rseq_configuration()
    with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
        comm = f.read().rstrip(b"\n")
    return {
        "comm": comm, "clear_tid": clear_tid,
        "rseq": [rseq.rseq_abi_pointer, rseq.rseq_abi_size, rseq.signature],
        "robust_list": list(libc.get_robust_list(tid)),
        "no_new_privs": inj(SYS.prctl, PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        "uids": _ids(status["Uid"]), "gids": _ids(status["Gid"]),
        "groups": _ids(status.get("Groups", "")),
        "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    }  # fmt: skip


def unregister_rseq(tracee: Tracee, inj: Injector) -> None:
    """The restore helper's own rseq area is about to disappear: unregister it first."""
    conf = tracee.rseq_configuration()
    if conf.rseq_abi_pointer:
        inj(SYS.rseq, conf.rseq_abi_pointer, conf.rseq_abi_size, RSEQ_FLAG_UNREGISTER,
            conf.signature)  # fmt: skip


def restore_early(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Before memory: personality (it changes how the kernel lays out mappings)."""
    ctx.inj(SYS.personality, rec["personality"])


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Process-wide: limits and prctl flags (ids are set when the tree is built)."""
    inj = ctx.inj
    for res, (soft, hard) in rec["rlimits"].items():
        lim = S.rlimit64(soft, hard)
        ret = inj.raw(SYS.prlimit64, 0, int(res), inj.put(libc.struct_bytes(lim)), 0)
        if ret < 0:
            ctx.warnings.append(f"rlimit {res} ({soft}, {hard}) not restored: errno {-ret}")
    for name, value in rec["prctl"].items():
        _get, set_ = _PRCTL_FLAGS[name]
        if name == "dumpable" and value not in (0, 1):
            continue
        inj(SYS.prctl, set_, value, 0, 0, 0)


def restore_thread(inj: Injector, trec: dict[str, Any]) -> None:
    """In the thread itself: its name and the kernel's registrations."""
    inj(SYS.prctl, PR.SET_NAME, inj.put(trec["comm"][:15] + b"\0"), 0, 0, 0)
    head, size = trec["robust_list"]
    if head:
        inj(SYS.set_robust_list, head, size)
    inj(SYS.set_tid_address, trec["clear_tid"])
    ptr, size, sig = trec["rseq"]
    if ptr:
        inj(SYS.rseq, ptr, size, 0, sig)


def restore_creds(inj: Injector, trec: dict[str, Any]) -> None:
    """In each thread (raw setres*id calls change the calling thread only), last of the
    privileged steps: groups, then gids, then uids, then no_new_privs."""
    groups = trec["groups"]
    inj(SYS.setgroups, len(groups), inj.put(struct.pack(f"<{len(groups)}I", *groups) or b"\0"))
    r, e, s, _fs = trec["gids"]
    inj(SYS.setresgid, r, e, s)
    r, e, s, _fs = trec["uids"]
    inj(SYS.setresuid, r, e, s)
    if trec["no_new_privs"]:
        inj(SYS.prctl, PR.SET_NO_NEW_PRIVS, 1, 0, 0, 0)
