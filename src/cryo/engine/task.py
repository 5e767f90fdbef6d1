"""The task itself: ids (pid, pgid, sid), credentials, resource limits, comm,
personality, prctl flags, and the registrations the kernel keeps for a thread
(rseq area, robust futex list, clear_child_tid)."""

from __future__ import annotations

import logging
import struct
from typing import Any

from cryo import procfs
from cryo.engine.context import DumpContext, RestoreContext
from cryo.errors import Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import PR, RSEQ_FLAG_UNREGISTER, SYS

log = logging.getLogger(__name__)
KIND = b"TASK"
_PRCTL_FLAGS = {  # name: (get, set)
    "pdeathsig": (PR.GET_PDEATHSIG, PR.SET_PDEATHSIG),
    "dumpable": (PR.GET_DUMPABLE, PR.SET_DUMPABLE),
    "no_new_privs": (PR.GET_NO_NEW_PRIVS, PR.SET_NO_NEW_PRIVS),
    "thp_disable": (PR.GET_THP_DISABLE, PR.SET_THP_DISABLE),
    "child_subreaper": (PR.GET_CHILD_SUBREAPER, PR.SET_CHILD_SUBREAPER),
}


def _ids(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def dump(ctx: DumpContext) -> dict[str, Any]:
    pid, inj = ctx.pid, ctx.inj
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    status = procfs.parse_status(procfs.read(pid, "status"))
    if status.get("Seccomp", "0") != "0":
        raise Unsupported(f"process {pid} runs under a seccomp filter, which is not supported",
                          pid=pid, resource="seccomp")  # fmt: skip
    prctl: dict[str, int] = {}
    for name, (get, _set) in _PRCTL_FLAGS.items():
        if name in {"pdeathsig", "child_subreaper"}:
            inj(SYS.prctl, get, inj.scratch, 0, 0, 0)
            prctl[name] = int.from_bytes(inj.read(inj.scratch, 4), "little")
        else:
            prctl[name] = inj(SYS.prctl, get, 0, 0, 0, 0)
    inj(SYS.prctl, PR.GET_TID_ADDRESS, inj.scratch, 0, 0, 0)
    clear_tid = int.from_bytes(inj.read(inj.scratch, 8), "little")
    rseq = ctx.tracee.rseq_configuration()
    robust = libc.get_robust_list(pid)
    with open(f"/proc/{pid}/personality") as f:
        personality = int(f.read(), 16)
    return {
        "pid": pid, "tid": pid, "ppid": st.ppid, "pgid": st.pgrp, "sid": st.session,
        "comm": st.comm, "exit_signal": st.exit_signal, "personality": personality,
        "uids": _ids(status["Uid"]), "gids": _ids(status["Gid"]),
        "groups": _ids(status.get("Groups", "")),
        "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "rlimits": procfs.parse_limits(procfs.read(pid, "limits")),
        "prctl": prctl, "clear_tid": clear_tid,
        "rseq": [rseq.rseq_abi_pointer, rseq.rseq_abi_size, rseq.signature],
        "robust_list": list(robust),
    }  # fmt: skip


def unregister_rseq(ctx: RestoreContext) -> None:
    """The restore helper's own rseq area is about to disappear: unregister it first."""
    conf = ctx.tracee.rseq_configuration()
    if conf.rseq_abi_pointer:
        ctx.inj(SYS.rseq, conf.rseq_abi_pointer, conf.rseq_abi_size, RSEQ_FLAG_UNREGISTER,
                conf.signature)  # fmt: skip


def restore_early(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Before memory: personality (it changes how the kernel lays out mappings)."""
    ctx.inj(SYS.personality, rec["personality"])


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    inj = ctx.inj
    if rec["sid"] == rec["pid"] and not ctx.options.get("shell_job"):
        inj(SYS.setsid)
    elif rec["pgid"] == rec["pid"]:
        inj(SYS.setpgid, 0, 0)
    inj(SYS.prctl, PR.SET_NAME, inj.put(rec["comm"].encode()[:15] + b"\0"), 0, 0, 0)
    for res, (soft, hard) in rec["rlimits"].items():
        lim = S.rlimit64(soft, hard)
        ret = inj.raw(SYS.prlimit64, 0, int(res), inj.put(libc.struct_bytes(lim)), 0)
        if ret < 0:
            ctx.warnings.append(f"rlimit {res} ({soft}, {hard}) not restored: errno {-ret}")
    for name, value in rec["prctl"].items():
        _get, set_ = _PRCTL_FLAGS[name]
        if name == "no_new_privs" and not value:
            continue
        if name == "dumpable" and value not in (0, 1):
            continue
        inj(SYS.prctl, set_, value, 0, 0, 0)
    head, size = rec["robust_list"]
    if head:
        inj(SYS.set_robust_list, head, size)
    inj(SYS.set_tid_address, rec["clear_tid"])
    ptr, size, sig = rec["rseq"]
    if ptr:
        inj(SYS.rseq, ptr, size, 0, sig)


def restore_creds(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Last of the privileged steps: groups, then gids, then uids."""
    inj = ctx.inj
    groups = rec["groups"]
    inj(SYS.setgroups, len(groups), inj.put(struct.pack(f"<{len(groups)}I", *groups) or b"\0"))
    r, e, s, _fs = rec["gids"]
    inj(SYS.setresgid, r, e, s)
    r, e, s, _fs = rec["uids"]
    inj(SYS.setresuid, r, e, s)
