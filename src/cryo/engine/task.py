"""The task itself: credentials, resource limits, comm, personality and prctl flags of
the process; per thread, the registrations the kernel keeps (rseq area, robust futex
list, clear_child_tid), the thread's name, and its credentials: uids and gids (real,
effective, saved, fs), supplementary groups, the five capability sets, securebits,
no_new_privs, pdeathsig (the kernel keeps all of these per thread), and the audit
loginuid and sessionid.

Credentials are restored in each thread, as its last privileged step, in an order the
kernel accepts (restore_creds): ids while cryo's capabilities are kept (securebits
SECBIT_NO_SETUID_FIXUP), the inheritable set, the ambient set (before a securebit may
forbid raising it), the bounding set, the securebits, then the permitted and effective
sets; then no_new_privs, pdeathsig and the dumpable flag, which the kernel clears or
resets on a credential change."""

from __future__ import annotations

import errno
import logging
import os
import signal
import struct
from collections.abc import Generator
from typing import Any

from cryo import procfs
from cryo.engine import cgroups, sched, seccomp, sud
from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch, Injector
from cryo.engine.ptrace import Tracee
from cryo.engine.translate import apply as translated
from cryo.engine.tree import TRACE_NEW
from cryo.errors import CryoError, RestoreConflict, Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import (
    _LINUX_CAPABILITY_VERSION_3,
    MEMBARRIER_CMD,
    PR,
    PR_CAP_AMBIENT,
    PTRACE_O,
    RSEQ_FLAG_UNREGISTER,
    SECBIT,
    SECCOMP_MODE,
    SYS,
)

log = logging.getLogger(__name__)
KIND = b"TASK"
_PRCTL_FLAGS = {  # name: (get, set)
    "pdeathsig": (PR.GET_PDEATHSIG, PR.SET_PDEATHSIG),
    "dumpable": (PR.GET_DUMPABLE, PR.SET_DUMPABLE),
    "thp_disable": (PR.GET_THP_DISABLE, PR.SET_THP_DISABLE),
    "child_subreaper": (PR.GET_CHILD_SUBREAPER, PR.SET_CHILD_SUBREAPER),
}
_BY_POINTER = ("pdeathsig", "child_subreaper")  # these getters store through a pointer
PR_MCE_KILL_SET, PR_MCE_KILL_LATE, PR_MCE_KILL_EARLY = 1, 0, 1
PR_TSC_SIGSEGV = 2
ARCH_GET_CPUID, ARCH_SET_CPUID = 0x1011, 0x1012


AUDIT_UNSET = 0xFFFFFFFF  # loginuid and sessionid of a task never logged in


def _ids(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def _audit(pid: int | str, tid: int | str | None = None) -> tuple[int, int] | None:
    """(loginuid, sessionid) of a task; None on a kernel without audit."""
    base = f"/proc/{pid}" if tid is None else f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{base}/loginuid") as f, open(f"{base}/sessionid") as g:
            return int(f.read()), int(g.read())
    except FileNotFoundError:
        return None


def _check_audit(pid: int, tids: list[int]) -> tuple[int, int] | None:
    """The audit loginuid and sessionid of the process, refused when a restore could
    not give them back: the kernel hands out a new sessionid whenever a loginuid is
    written, so a restored task can only inherit the session of the cryo that restarts
    it (checked against this cryo's own), or be set to "never logged in"."""
    got = {_audit(pid, t) for t in tids}
    if len(got) != 1:
        raise Unsupported(f"process {pid}: its threads have different audit sessions"
                          f" ({sorted(x for x in got if x)})", pid=pid,
                          resource="audit session")  # fmt: skip
    mine = _audit("self")
    (value,) = got
    if value is None or value in (mine, (AUDIT_UNSET, AUDIT_UNSET)):
        return value
    raise Unsupported(
        f"process {pid}: audit loginuid {value[0]} and sessionid {value[1]} differ from"
        f" cryo's own ({mine[0] if mine else '-'}, {mine[1] if mine else '-'}); the kernel"
        " gives a restored process a new audit session id: checkpoint it from its own"
        " login session", pid=pid, resource="audit session")  # fmt: skip


def dump(ctx: DumpContext, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Queue hook (drivers.py): process-wide state (credentials are read per thread,
    see dump_thread)."""
    pid = ctx.pid
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    prctl: dict[str, int] = {}
    at: dict[str, int] = {}
    for name, (get, _set) in _PRCTL_FLAGS.items():
        if name in _BY_POINTER:
            at[name] = b.reserve(4)
            b.call(SYS.prctl, get, at[name], 0, 0, 0)
        else:
            prctl[name] = b.call(SYS.prctl, get, 0, 0, 0, 0)
    mdwe = b.call(SYS.prctl, PR.GET_MDWE, 0, 0, 0, 0, may_fail=True)  # (Linux 6.3)
    slots = b.call(SYS.prctl, PR.FUTEX_HASH, FUTEX_HASH_GET_SLOTS, 0, 0, 0,
                   may_fail=True)  # (Linux 6.16)  # fmt: skip
    rings = [b.call(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, spec, 0, may_fail=True)
             for spec in (KEY_SPEC_THREAD_KEYRING, KEY_SPEC_PROCESS_KEYRING,
                          KEY_SPEC_SESSION_KEYRING)]  # fmt: skip
    desc_at = b.reserve(256)
    b.call(SYS_KEYCTL, KEYCTL_DESCRIBE, b.ref(rings[2]), desc_at, 256, may_fail=True)
    # (here, not a stop of its own: one round trip fewer in every checkpoint)
    barriers = b.call(SYS.membarrier, MEMBARRIER_CMD.GET_REGISTRATIONS, 0, 0,
                      may_fail=True)  # fmt: skip
    yield
    _check_keyrings(pid, [b.result(i) for i in rings], b.read(desc_at, 256))
    for name in _PRCTL_FLAGS:
        prctl[name] = int.from_bytes(b.read(at[name], 4), "little") if name in at \
            else b.result(prctl[name])  # fmt: skip
    with open(f"/proc/{pid}/personality") as f:
        personality = int(f.read(), 16)
    audit = _check_audit(pid, sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")))
    return {
        "membarrier": _membarrier_registrations(ctx, b.result(barriers)),
        "pid": pid, "ppid": st.ppid, "pgid": st.pgrp, "sid": st.session,
        "comm": st.comm, "exit_signal": st.exit_signal, "personality": personality,
        "rlimits": procfs.parse_limits(procfs.read(pid, "limits")), "prctl": prctl,
        "audit": list(audit) if audit else None,
        "oom_score_adj": int(procfs.read(pid, "oom_score_adj")),
        "autogroup_nice": _autogroup_nice(pid),
        "cgroups": cgroups.dump(ctx),
        "coredump_filter": int(procfs.read(pid, "coredump_filter"), 16),
        **({"mdwe": b.result(mdwe)} if b.result(mdwe) > 0 else {}),
        **({"futex_slots": b.result(slots)} if b.result(slots) >= 0 else {}),
    }  # fmt: skip


_MEMBARRIER_REGISTER = (MEMBARRIER_CMD.REGISTER_GLOBAL_EXPEDITED,
                        MEMBARRIER_CMD.REGISTER_PRIVATE_EXPEDITED,
                        MEMBARRIER_CMD.REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                        MEMBARRIER_CMD.REGISTER_PRIVATE_EXPEDITED_RSEQ)  # fmt: skip


def _membarrier_registrations(ctx: DumpContext, got: int) -> int:
    """The process's membarrier registrations (the REGISTER_* commands it made), which
    only the process can ask for (MEMBARRIER_CMD_GET_REGISTRATIONS, Linux 6.3: ``got``,
    what it returned in the process).  On an older kernel a registration is seen by the
    barrier it allows (which fails with EPERM unregistered), except
    REGISTER_GLOBAL_EXPEDITED, which nothing shows: refused."""
    inj = ctx.inj
    if got >= 0:
        return got
    if got == -errno.ENOSYS:
        return 0  # no membarrier at all
    supported = inj.raw(SYS.membarrier, MEMBARRIER_CMD.QUERY, 0, 0)
    mask = 0
    for cmd in _MEMBARRIER_REGISTER[1:]:
        if supported > 0 and supported & cmd and \
                inj.raw(SYS.membarrier, cmd >> 1, 0, 0) == 0:  # fmt: skip
            mask |= cmd
    if supported > 0 and supported & MEMBARRIER_CMD.REGISTER_GLOBAL_EXPEDITED:
        raise Unsupported(f"process {ctx.pid}: this kernel does not tell whether it"
                          " registered for global expedited membarriers"
                          " (MEMBARRIER_CMD_GET_REGISTRATIONS needs Linux 6.3)",
                          pid=ctx.pid, resource="membarrier")  # fmt: skip
    return mask


SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEYCTL_DESCRIBE = 250, 0, 6
KEY_SPEC_THREAD_KEYRING, KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING = -1, -2, -3


def _check_keyrings(pid: int, ids: list[int], desc: bytes) -> None:
    """Keyrings are not saved: a restart gets the restarter's session keyring and no
    thread or process keyring.  So a thread or process keyring (keys the process made
    for itself) is refused, and so is a session keyring the process joined by name
    (KEYCTL_JOIN_SESSION_KEYRING) that is not cryo's own; a login session's anonymous
    one ("_ses", "_uid_ses.N") is left to be the restarter's (found by probing: a process
    that had joined a named session keyring came back, exit 0, in cryo's)."""
    thread, process, session = ids
    for what, got in (("a thread keyring", thread), ("a process keyring", process)):
        if got >= 0:
            raise Unsupported(f"process {pid} has {what} (keyctl): keys are not saved",
                              pid=pid, resource="keyrings")  # fmt: skip
    if session < 0:
        return
    try:
        mine = libc.syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
    except OSError:
        mine = -1
    name = desc.split(b"\0", 1)[0].decode(errors="replace").rsplit(";", 1)[-1]
    if session != mine and name != "_ses" and not name.startswith("_uid_ses."):
        raise Unsupported(f"process {pid} joined the session keyring {name!r} (keyctl): it"
                          " would be restored in cryo's, and keys are not saved", pid=pid,
                          resource="keyrings")  # fmt: skip


MAX_NODES = 1024  # bits of the node masks read and given (get/set_mempolicy)


def dump_thread(pid: int, tracee: Tracee, b: Batch) -> Generator[None, Batch, dict[str, Any]]:
    """Per thread, its calls queued in its batch ``b`` (threads.dump): credentials,
    comm, rseq, robust list, clear_child_tid, no_new_privs."""
    tid = tracee.tid
    status = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    tid_at, sig_at = b.reserve(8), b.reserve(4)
    b.call(SYS.prctl, PR.GET_TID_ADDRESS, tid_at, 0, 0, 0)
    b.call(SYS.prctl, PR.GET_PDEATHSIG, sig_at, 0, 0, 0)
    nnp = b.call(SYS.prctl, PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    secbits = b.call(SYS.prctl, PR.GET_SECUREBITS, 0, 0, 0, 0)
    dumpable = b.call(SYS.prctl, PR.GET_DUMPABLE, 0, 0, 0, 0)
    slack = b.call(SYS.prctl, PR.GET_TIMERSLACK, 0, 0, 0, 0)
    mce = b.call(SYS.prctl, PR.MCE_KILL_GET, 0, 0, 0, 0)
    tsc_at = b.reserve(4)
    tsc = b.call(SYS.prctl, PR.GET_TSC, tsc_at, 0, 0, 0, may_fail=True)
    cpuid = b.call(SYS.arch_prctl, ARCH_GET_CPUID, 0, may_fail=True)
    mode_at, nodes_at = b.reserve(8), b.reserve(MAX_NODES // 8)
    pol = b.call(SYS.get_mempolicy, mode_at, nodes_at, MAX_NODES, 0, 0, may_fail=True)
    yield
    raw = b.read(tid_at, sig_at + 4 - tid_at)
    clear_tid = int.from_bytes(raw[:8], "little")
    pdeathsig = int.from_bytes(raw[sig_at - tid_at :], "little")
    extra: dict[str, Any] = {"tsc": int.from_bytes(b.read(tsc_at, 4), "little")} \
        if b.result(tsc) == 0 else {}  # fmt: skip
    mode = int.from_bytes(b.read(mode_at, 4), "little") if b.result(pol) == 0 else 0
    if b.result(cpuid) == 0:  # cpuid faults (ARCH_SET_CPUID 0: SIGSEGV on cpuid)
        extra["cpuid"] = 0
    if mode:  # the thread's NUMA memory policy (set_mempolicy): its mode, flags, nodes
        extra["mempolicy"] = [mode, b.read(nodes_at, MAX_NODES // 8).rstrip(b"\0")]
    rseq = tracee.rseq_configuration()
    with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
        comm = f.read().rstrip(b"\n")
    if tid != pid:
        if _check_thread_shares(pid, tid):
            extra["fs"] = _thread_fs(pid, tid)
        with open(f"/proc/{pid}/task/{tid}/personality") as f, \
                open(f"/proc/{pid}/personality") as g:  # fmt: skip
            own, leaders = int(f.read(), 16), int(g.read(), 16)
        if own != leaders:  # (the kernel keeps it per thread: personality())
            extra["personality"] = own
    return {
        "comm": comm, "clear_tid": clear_tid,
        "rseq": [rseq.rseq_abi_pointer, rseq.rseq_abi_size, rseq.signature],
        "robust_list": list(libc.get_robust_list(tid)),
        "no_new_privs": b.result(nnp),
        "uids": _ids(status["Uid"]), "gids": _ids(status["Gid"]),
        "groups": _ids(status.get("Groups", "")),
        "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "securebits": b.result(secbits),
        "pdeathsig": pdeathsig,
        "dumpable": b.result(dumpable),  # the process's, set last
        "timerslack": b.result(slack), "mce_kill": b.result(mce), **extra,
        **sched.dump_thread(tid), **seccomp.dump_thread(pid, tracee),
        "group_stop": tracee.group_stop,
        **({"sud": cfg} if (cfg := sud.read(tid)) else {}),
    }  # fmt: skip


_NS_OF_THREADS = ("uts", "ipc", "net", "mnt", "cgroup", "user", "time", "pid_for_children",
                  "time_for_children")  # fmt: skip


def _check_thread_shares(pid: int, tid: int) -> bool:
    """A thread that unshared what its process's threads share is refused (exit 9): its
    own fd table (unshare(CLONE_FILES)) or namespace; restored, it would share the
    leader's (found by probing: a thread's own fd was gone, its own hostname the
    host's, exit 0).  True for a thread with a cwd and umask of its own (CLONE_FS, as
    Samba's thread pool gives each worker): :func:`_thread_fs`."""
    what = None
    if not libc.kcmp_same(libc.KCMP_FILES, pid, tid):
        what = "an fd table of its own (unshare(CLONE_FILES))"
    elif not libc.kcmp_same(libc.KCMP_FS, pid, tid):
        return True
    else:
        for ns in _NS_OF_THREADS:
            try:
                mine = os.stat(f"/proc/{pid}/task/{tid}/ns/{ns}").st_ino
                leaders = os.stat(f"/proc/{pid}/ns/{ns}").st_ino
            except FileNotFoundError:
                continue
            if mine != leaders:
                what = f"a {ns} namespace of its own (unshare)"
                break
    if what is not None:
        raise Unsupported(f"thread {tid} of process {pid} has {what}: not supported (its"
                          " threads are restored sharing the process's)", pid=pid,
                          resource="thread")  # fmt: skip
    return False


def _thread_fs(pid: int, tid: int) -> dict[str, Any]:
    """The cwd and umask of a thread that has a cwd, root and umask of its own, given
    back by restore_thread_fs.  Refused: such a thread of a chrooted process, one with a
    root of its own or a deleted cwd, and one sharing its fs_struct with another thread
    but the leader (made again, each would have its own)."""
    base = f"/proc/{pid}/task/{tid}"
    cwd, root = os.readlink(f"{base}/cwd"), os.readlink(f"{base}/root")
    why = None
    if root != "/" or os.readlink(f"/proc/{pid}/root") != "/":
        why = "in a chrooted process, or with a root of its own"
    elif cwd.endswith(" (deleted)"):
        why = "with a deleted cwd"
    else:
        for other in os.listdir(f"/proc/{pid}/task"):
            if int(other) not in (pid, tid) and libc.kcmp_same(libc.KCMP_FS, tid, int(other)):
                why = f"sharing it with thread {other}"
                break
    if why is not None:
        raise Unsupported(f"thread {tid} of process {pid} has a cwd, root and umask of its own"
                          f" (unshare(CLONE_FS)) {why}: not supported", pid=pid,
                          resource="thread")  # fmt: skip
    status = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    return {"cwd": cwd, "umask": int(status.get("Umask", "0022"), 8)}


CLONE_FS = 0x200


def restore_thread_fs(ctx: RestoreContext, inj: Injector, trec: dict[str, Any]) -> None:
    """In a thread that had a cwd and umask of its own (see _thread_fs): unshare(CLONE_FS),
    then its cwd (translated as every path of the restart) and umask."""
    fs = trec.get("fs")
    if not fs:
        return
    cwd = translated(ctx.options, fs["cwd"])
    with inj.batch() as b:
        b.call(SYS.unshare, CLONE_FS, what=" unshare(CLONE_FS)")
        b.call(SYS.chdir, b.put_str(cwd), what=f" chdir {cwd}")
        b.call(SYS.umask, fs["umask"])


def unregister_rseq(tracee: Tracee, inj: Injector) -> None:
    """The restore helper's own rseq area is about to disappear: unregister it first."""
    conf = tracee.rseq_configuration()
    if conf.rseq_abi_pointer:
        with inj.hold() as b:  # (with the first batch of the memory stage)
            b.call(SYS.rseq, conf.rseq_abi_pointer, conf.rseq_abi_size, RSEQ_FLAG_UNREGISTER,
                   conf.signature)  # fmt: skip


READ_IMPLIES_EXEC = 0x0400000


def restore_early(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Before memory: personality (it changes how the kernel lays out mappings), but
    READ_IMPLIES_EXEC, which would add PROT_EXEC to the image's readable mappings as
    they are made (an r-- one came back r-x): set with the rest of the task (restore)."""
    with ctx.inj.hold() as b:
        b.call(SYS.personality, rec["personality"] & ~READ_IMPLIES_EXEC)


def _restore_audit(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """The helper inherited cryo's audit session; the image's, if different, can only be
    "never logged in" (see _check_audit), written from inside the task itself."""
    want = rec.get("audit")
    have = _audit(ctx.pid)
    if want is None or have is None or tuple(want) == have:
        return
    if tuple(want) != (AUDIT_UNSET, AUDIT_UNSET):
        raise RestoreConflict(
            f"process {ctx.old_pid} had audit loginuid {want[0]} and sessionid {want[1]};"
            f" this restart runs in session {have[1]} (loginuid {have[0]}), and the kernel"
            " cannot give a process a chosen session id: restart it from its own login"
            " session", pid=ctx.old_pid, resource="audit session")  # fmt: skip
    inj = ctx.inj
    fd = inj(SYS.open, inj.put_str("/proc/self/loginuid"), os.O_WRONLY)
    try:
        text = str(AUDIT_UNSET).encode()
        ret = inj.raw(SYS.write, fd, inj.put(text), len(text))
    finally:
        inj(SYS.close, fd)
    if ret != len(text):
        raise RestoreConflict(f"process {ctx.old_pid}: its audit loginuid cannot be reset"
                              f" (errno {-ret}); this restart runs in session {have[1]}",
                              pid=ctx.old_pid, resource="audit session")  # fmt: skip


def _autogroup_nice(pid: int | str) -> int | None:
    """The nice value of the process's scheduler autogroup (its session's, shared by the
    processes of the session; kernel.sched_autogroup_enabled), None without one."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def _restore_oom(ctx: RestoreContext, value: int) -> None:
    try:
        with open(f"/proc/{ctx.pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as err:  # lower than the helper's minimum needs CAP_SYS_RESOURCE
        raise RestoreConflict(f"process {ctx.old_pid}: oom_score_adj {value} cannot be set"
                              f" ({err.strerror}): lowering it needs CAP_SYS_RESOURCE",
                              pid=ctx.old_pid, resource="oom_score_adj") from err  # fmt: skip


def restore(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Process-wide: limits, prctl flags and the audit session (ids are set per thread,
    at the end: restore_creds)."""
    _restore_audit(ctx, rec)
    if "oom_score_adj" in rec:
        _restore_oom(ctx, rec["oom_score_adj"])
    if "coredump_filter" in rec:
        with open(f"/proc/{ctx.pid}/coredump_filter", "w") as f:
            f.write(f"{rec['coredump_filter']:#x}")
    nice = rec.get("autogroup_nice")
    if nice is not None and _autogroup_nice(ctx.pid) not in (None, nice):
        with open(f"/proc/{ctx.pid}/autogroup", "w") as f:  # the session's autogroup
            f.write(str(nice))
    inj = ctx.inj
    trecs = getattr(ctx, "thread_records", None)
    if trecs:  # before the threads are made: the seccomp filters they all share
        seccomp.restore_shared(inj, trecs, _options(inj))
    limits: list[tuple[int, str, int, int]] = []
    with inj.hold(room=16 * len(rec["rlimits"])) as b:  # (with the next stop's calls)
        for cmd in _MEMBARRIER_REGISTER:
            if rec.get("membarrier", 0) & cmd:
                b.call(SYS.membarrier, cmd, 0, 0, what=" registering membarriers")
        for res, (soft, hard) in rec["rlimits"].items():
            lim = S.rlimit64(soft, hard)
            limits.append((b.call(SYS.prlimit64, 0, int(res), b.put(libc.struct_bytes(lim)), 0,
                                  may_fail=True), res, soft, hard))  # fmt: skip
        for name, value in rec["prctl"].items():
            _get, set_ = _PRCTL_FLAGS[name]
            if name == "dumpable" and value not in (0, 1):
                continue
            if name == "thp_disable":  # 3: 1 | PR_THP_DISABLE_EXCEPT_ADVISED << 1 (6.18)
                b.call(SYS.prctl, set_, value & 1, value & ~1, 0, 0)  # (found by probing:
                continue  # set as 3, it came back 1, all huge pages off, exit 0)
            b.call(SYS.prctl, set_, value, 0, 0, 0)
        if rec.get("mdwe"):  # (no mapping is made executable after this stage)
            b.call(SYS.prctl, PR.SET_MDWE, rec["mdwe"], 0, 0, 0, what=" PR_SET_MDWE")
        if rec["personality"] & READ_IMPLIES_EXEC:  # (every mapping made: restore_early)
            b.call(SYS.personality, rec["personality"])
    inj.after(lambda: _limits_set(ctx, b, limits))


def _limits_set(ctx: RestoreContext, b: Batch, limits: list[tuple[int, str, int, int]]
                ) -> None:  # fmt: skip
    for i, res, soft, hard in limits:  # (found by probing: a warning only, exit 0, and
        if b.result(i) < 0:  # the process ran with cryo's lower limit)
            import resource as rsrc  # (names only; not imported by a restart that works)

            name = next((n for n in dir(rsrc) if n.startswith("RLIMIT_")
                         and getattr(rsrc, n) == int(res)), str(res))  # fmt: skip
            raise RestoreConflict(f"process {ctx.old_pid}: its resource limit {name} ({soft},"
                                  f" {hard}) cannot be set (errno {-b.result(i)}): raising a"
                                  " hard limit above this cryo's needs CAP_SYS_RESOURCE",
                                  pid=ctx.old_pid, resource="rlimit")  # fmt: skip


FUTEX_HASH_SET_SLOTS, FUTEX_HASH_GET_SLOTS = 1, 2


def restore_futex_hash(ctx: RestoreContext, rec: dict[str, Any]) -> None:
    """Once the threads exist: the process's private futex hash (PR_FUTEX_HASH) of as
    many slots as it had, where the kernel's own sizing (made at the first thread's
    creation) gave it another number; a size the program set comes back so (found by
    probing: 128 slots came back as the default 16, exit 0)."""
    want = rec.get("futex_slots")
    if want is None:
        return
    inj = ctx.inj
    with inj.hold() as b:  # (asked with the next stop's calls)
        k = b.call(SYS.prctl, PR.FUTEX_HASH, FUTEX_HASH_GET_SLOTS, 0, 0, 0, may_fail=True)
    inj.after(lambda: _futex_hash_set(ctx, want, b.result(k)))


def _futex_hash_set(ctx: RestoreContext, want: int, have: int) -> None:
    if have == want:
        return
    got = ctx.inj.raw(SYS.prctl, PR.FUTEX_HASH, FUTEX_HASH_SET_SLOTS, want, 0, 0)
    if got < 0:
        raise RestoreConflict(f"process {ctx.old_pid}: its private futex hash of {want}"
                              f" slots cannot be made again (PR_FUTEX_HASH: errno {-got})",
                              pid=ctx.old_pid, resource="futex hash")  # fmt: skip


def restore_thread(inj: Injector, trec: dict[str, Any]) -> None:
    """In the thread itself: its name and the kernel's registrations."""
    with inj.hold(room=256) as b:  # (with the next stop's calls)
        b.call(SYS.prctl, PR.SET_NAME, b.put(trec["comm"][:15] + b"\0"), 0, 0, 0)
        if trec.get("timerslack"):  # (0: a real-time thread's, which the kernel sets)
            b.call(SYS.prctl, PR.SET_TIMERSLACK, trec["timerslack"], 0, 0, 0)
        if trec.get("mce_kill") in (PR_MCE_KILL_LATE, PR_MCE_KILL_EARLY):
            b.call(SYS.prctl, PR.MCE_KILL, PR_MCE_KILL_SET, trec["mce_kill"], 0, 0)
        if trec.get("tsc") == PR_TSC_SIGSEGV:
            b.call(SYS.prctl, PR.SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0)
        if trec.get("cpuid") == 0:
            b.call(SYS.arch_prctl, ARCH_SET_CPUID, 0, what=" ARCH_SET_CPUID")
        if "personality" in trec:  # a thread's own, other than its process's
            b.call(SYS.personality, trec["personality"])
        if trec.get("mempolicy"):
            mode, nodes = trec["mempolicy"]
            b.call(SYS.set_mempolicy, mode, b.put(nodes.ljust(MAX_NODES // 8, b"\0")),
                   MAX_NODES, what=" set_mempolicy")  # fmt: skip
        head, size = trec["robust_list"]
        if head:
            b.call(SYS.set_robust_list, head, size)
        b.call(SYS.set_tid_address, trec["clear_tid"])
        ptr, size, sig = trec["rseq"]
        if ptr:
            b.call(SYS.rseq, ptr, size, 0, sig)


def _caps(trec: dict[str, Any]) -> dict[str, int]:
    return {k[3:].lower(): int(v, 16) for k, v in trec["caps"].items()}


def _capset(b: Batch, eff: int, prm: int, inh: int) -> None:
    head = S.user_cap_header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (S.user_cap_data * 2)(S.user_cap_data(eff & 0xFFFFFFFF, prm & 0xFFFFFFFF,
                                                 inh & 0xFFFFFFFF),
                                 S.user_cap_data(eff >> 32, prm >> 32, inh >> 32))  # fmt: skip
    b.call(SYS.capset, b.put(bytes(head)), b.put(bytes(data)))


def cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _options(inj: Injector) -> int:
    """The ptrace options of a restored task (traced from birth, it inherited them)."""
    return inj.t.options or int(PTRACE_O.EXITKILL | TRACE_NEW)


def _caps_now(t: Tracee) -> tuple[int, int]:
    """The effective and permitted sets of the stopped thread ``t`` (as capget in it
    would answer), from /proc: no stop for it."""
    with open(f"/proc/{t.pid}/task/{t.tid}/status", "rb") as f:
        status = procfs.parse_status(f.read())
    return int(status["CapEff"], 16), int(status["CapPrm"], 16)


def restore_creds(inj: Injector, trec: dict[str, Any]) -> None:
    """In each thread (raw setres*id calls change the calling thread only), last of the
    privileged steps, in an order the kernel accepts (the helper runs with cryo's full
    capabilities): groups and gids; SECBIT_NO_SETUID_FIXUP so that the uid change keeps
    our capabilities; uids; the inheritable set; ambient capabilities (before a securebit
    may forbid raising them); the bounding set; seccomp filters (while the thread still
    has CAP_SYS_ADMIN; its seccomp suspended while we trace it); the securebits; the
    permitted and effective sets; then no_new_privs, pdeathsig and the dumpable flag (a
    credential change clears them); seccomp strict mode last.
    """
    groups = trec["groups"]
    caps = _caps(trec) if "securebits" in trec else None
    if caps is not None:  # (the uid change below keeps them: SECBIT_NO_SETUID_FIXUP)
        eff, prm = _caps_now(inj.t)
    sc = trec.get("seccomp")
    if sc and sc["mode"] != SECCOMP_MODE.DISABLED:
        # suspended before the filters or strict mode come: the batch routine's own
        # calls after them must not be filtered (nor cryo's later ones)
        inj.t.suspend_seccomp(_options(inj))
    with inj.batch() as b:  # one stop
        b.call(SYS.setgroups, len(groups),
               b.put(struct.pack(f"<{len(groups)}I", *groups) or b"\0"))  # fmt: skip
        r, e, s, fs = trec["gids"]
        b.call(SYS.setresgid, r, e, s)
        b.call(SYS.setfsgid, fs, may_fail=True)  # returns the old fsgid, never an error
        if caps is not None:
            b.call(SYS.prctl, PR.SET_SECUREBITS, SECBIT.NO_SETUID_FIXUP, 0, 0, 0)
        r, e, s, fs = trec["uids"]
        b.call(SYS.setresuid, r, e, s)
        b.call(SYS.setfsuid, fs, may_fail=True)
        if caps is not None:
            _capset(b, eff, prm, caps["inh"])
            b.call(SYS.prctl, PR.CAP_AMBIENT, PR_CAP_AMBIENT.CLEAR_ALL, 0, 0, 0)
            for cap in range(64):
                if caps["amb"] >> cap & 1:
                    b.call(SYS.prctl, PR.CAP_AMBIENT, PR_CAP_AMBIENT.RAISE, cap, 0, 0)
            for cap in range(cap_last_cap() + 1):
                if not caps["bnd"] >> cap & 1:
                    b.call(SYS.prctl, PR.CAPBSET_DROP, cap, 0, 0, 0)
        seccomp.queue_filters(b, trec)
        if caps is not None:
            b.call(SYS.prctl, PR.SET_SECUREBITS, trec["securebits"], 0, 0, 0)
            _capset(b, caps["eff"], caps["prm"], caps["inh"])
        if trec["no_new_privs"]:
            b.call(SYS.prctl, PR.SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if "pdeathsig" in trec:
            b.call(SYS.prctl, PR.SET_PDEATHSIG, trec["pdeathsig"], 0, 0, 0)
        if trec.get("dumpable") in (0, 1):  # 2 (suid_dumpable) cannot be set by prctl
            b.call(SYS.prctl, PR.SET_DUMPABLE, trec["dumpable"], 0, 0, 0)
        seccomp.queue_strict(b, trec)


def _orphaned_pgrp(pid: int) -> bool:
    """POSIX: no member of the process group has a parent in another group of the same
    session."""
    pgid, sid = os.getpgid(pid), os.getsid(pid)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = procfs.parse_stat(procfs.read(int(name), "stat"))
            if st.pgrp != pgid or st.state in ("Z", "X") or st.ppid <= 0:
                continue
            if os.getpgid(st.ppid) != pgid and os.getsid(st.ppid) == sid:
                return False
        except (CryoError, OSError):
            continue
    return True


def describe(rec: dict[str, Any]) -> dict[str, Any]:
    """``cryo show``: the process-wide state of a TASK record."""
    out: dict[str, Any] = {"prctl": rec["prctl"], "personality": f"{rec['personality']:#x}"}
    for key in ("oom_score_adj", "membarrier", "mdwe", "coredump_filter", "futex_slots"):
        if key in rec:
            out[key] = rec[key]
    if rec.get("audit"):
        out["audit"] = {"loginuid": rec["audit"][0], "sessionid": rec["audit"][1]}
    return out


def describe_thread(trec: dict[str, Any]) -> dict[str, Any]:
    """``cryo show``: a thread's credentials, scheduling, seccomp and stop state."""
    out: dict[str, Any] = {"uids": trec["uids"], "gids": trec["gids"], "groups": trec["groups"],
                           "caps": trec["caps"], "no_new_privs": trec["no_new_privs"]}
    for key in ("securebits", "pdeathsig", "dumpable", "timerslack", "mce_kill", "tsc",
                "mempolicy", "cpuid", "fs"):
        if key in trec:
            out[key] = trec[key]
    if "personality" in trec:  # (its own, other than its process's)
        out["personality"] = f"{trec['personality']:#x}"
    out.update(sched.describe(trec))
    sc = seccomp.describe(trec)
    if sc:
        out["seccomp"] = sc
    if trec.get("group_stop"):
        out["stopped"] = signal.Signals(trec["group_stop"]).name
    return out
