"""The process tree: which processes and threads a checkpoint takes (its scope), freezing
them all together, and at restart creating them again with their pids, parents,
sessions and process groups (zombies included).

Scopes (seed 003's cr_scope): "process" (one process with all its threads), "tree" (a
process and all its descendants), "pgid" and "sid" (every process of a process group or
session).  Freezing seizes and interrupts every thread of every process, then looks
again for children forked meanwhile, until nothing new turns up: the image is one
consistent moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryo import procfs
from cryo.engine.context import RestoreContext
from cryo.engine.inject import HELD_SIZE, HoldingInjector, Injector, find_vdso_syscall
from cryo.engine.ptrace import Tracee
from cryo.errors import AccessDenied, CryoError, NoSuchProcess, RestoreConflict, Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import CLONE, PAGE_SIZE, PR, PTRACE_O, SYS

if TYPE_CHECKING:
    from cryo.engine import execlayout
else:  # (a restart's: a checkpoint never needs it)
    from cryo.lazy import lazy

    execlayout = lazy("cryo.engine.execlayout")

log = logging.getLogger(__name__)
KIND = b"TREE"
SCOPES = ("process", "tree", "pgid", "sid")
TRACE_NEW = PTRACE_O.TRACEFORK | PTRACE_O.TRACEVFORK | PTRACE_O.TRACECLONE
RESTORER_SIZE = 80 * 1024  # restart: `syscall; int3`, scratch and held calls' buffers
WALL = 0x40000000  # __WALL: wait for threads too


class Proc:
    """A process of the checkpoint, as its tree was read.  (This and Made: plain
    classes, not dataclasses, which cost every command ~1 ms each to make: issue 16.)"""

    def __init__(self, pid: int, ppid: int, pgid: int, sid: int, zombie: bool = False,
                 exit_code: int = 0, exit_signal: int = 17) -> None:  # fmt: skip
        self.pid, self.ppid, self.pgid, self.sid = pid, ppid, pgid, sid
        self.zombie, self.exit_code, self.exit_signal = zombie, exit_code, exit_signal
        self.threads: list[int] = []
        self.tracees: dict[int, Tracee] = {}
        self.nspid = 0  # the pid in its own (innermost) pid namespace
        self.nsdepth = 1  # how many pid namespaces deep from cryo's (1: cryo's own)
        self.nstids: list[int] = []
        self.task: dict[str, Any] | None = None  # a zombie's: _zombie_task

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, ppid={self.ppid}, zombie={self.zombie})"

    @property
    def leader(self) -> Tracee:
        return self.tracees[self.pid]

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "pgid": self.pgid, "sid": self.sid,
                "zombie": self.zombie, "exit_code": self.exit_code,
                "exit_signal": self.exit_signal, "threads": self.threads,
                "nspid": self.nspid or self.pid, "nstids": self.nstids or self.threads,
                **({"task": self.task} if self.task else {})}  # fmt: skip


def _stat(pid: int) -> procfs.Stat | None:
    try:
        return procfs.parse_stat(procfs.read(pid, "stat"))
    except NoSuchProcess:
        return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError):  # gone: ESRCH while being reaped
        pass
    return out


def refuse_children(pid: int, how: str) -> None:
    """Refuse (exit 9) to take ``pid`` alone when it has children, named with ``how`` to
    say what: alone, it would be restarted without them."""
    kids = children(pid)
    if kids:
        shown = ", ".join(map(str, kids[:8])) + (", ..." if len(kids) > 8 else "")
        raise Unsupported(f"process {pid} has children ({shown}): alone, it would be"
                          f" restarted without them; {how}", pid=pid,
                          resource="children")  # fmt: skip


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def members(target: int, scope: str) -> list[int]:
    """The pids of the scope, parents before children."""
    if scope == "process":
        pids = [target]
    elif scope == "tree":
        pids, todo = [], [target]
        while todo:
            p = todo.pop(0)
            pids.append(p)
            todo.extend(sorted(children(p)))
    elif scope in ("pgid", "sid"):
        pids = []
        for p in sorted(_all_pids()):
            st = _stat(p)
            if st and (st.pgrp if scope == "pgid" else st.session) == target and p != os.getpid():
                pids.append(p)
        pids = _parents_first(pids)
    else:
        raise CryoError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
    if not pids or _stat(pids[0]) is None:
        what = {"process": "process", "tree": "process", "pgid": "process group",
                "sid": "session"}[scope]  # fmt: skip
        raise NoSuchProcess(f"{what} {target} does not exist" if scope in ("process", "tree")
                            else f"no process in {what} {target}", pid=target)  # fmt: skip
    if os.getpid() in pids:
        raise CryoError("cryo cannot checkpoint itself", pid=os.getpid())
    st = _stat(target)
    if scope in ("process", "tree") and st is not None and st.state in ("Z", "X"):
        try:
            threads = len(os.listdir(f"/proc/{target}/task"))
        except OSError:
            threads = 0
        if threads > 1:  # (its leader exited, pthread_exit in main: found by probing)
            raise Unsupported(f"process {target}: its main thread has exited while its"
                              f" {threads - 1} other thread(s) run (pthread_exit in main):"
                              " not supported (a leader cannot be made again as a zombie)",
                              pid=target, resource="thread")  # fmt: skip
        raise NoSuchProcess(f"process {target} is a zombie", pid=target)
    return pids


def scope_members(session: Any) -> list[int]:
    """The pids of a checkpoint's scope as its prepare phase found them, for the hooks
    that run before the freeze (the freeze walks the scope again, as it stops it)."""
    got = session.shared.early.get("members")
    return list(got) if got is not None else members(session.pid, session.scope)


def _parents_first(pids: list[int]) -> list[int]:
    ppid = {p: (st.ppid if (st := _stat(p)) else 0) for p in pids}
    out: list[int] = []
    seen: set[int] = set()

    def visit(p: int) -> None:
        if p in seen:
            return
        seen.add(p)
        if ppid[p] in ppid:
            visit(ppid[p])
        out.append(p)

    for p in pids:
        visit(p)
    return out


def _refuse_vfork_parent(pid: int) -> None:
    """A process whose child shares its address space (vfork, or clone with CLONE_VM)
    cannot be restored so (two processes, one memory), and a thread of it waiting in
    vfork for the child to exec or exit never stops for PTRACE_INTERRUPT: the freeze
    would wait for it forever, the rest held.  Refused before it is seized."""
    for kid in children(pid):
        with contextlib.suppress(OSError):
            if libc.kcmp_same(_KCMP_VM, pid, kid):
                raise Unsupported(f"process {pid} shares its address space with its child"
                                  f" {kid} (vfork, not yet exec'd, or clone with CLONE_VM):"
                                  " not supported", pid=pid, resource="memory")  # fmt: skip


_KCMP_VM = 1  # (linux/kcmp.h)
# how long a thread in uninterruptible sleep (state D: a disk read, usually a moment) is
# waited for before it is seized; one still there is refused
HELD_BOUND = 2.0
PF_IO_WORKER = 0x10  # a task's flag: a kernel thread of io_uring (include/linux/sched.h)


def _refuse_held_in_kernel(pid: int, tid: int) -> None:
    """A thread held in the kernel in a wait that a signal does not end (state D: the
    parent of a clone with CLONE_VFORK but not CLONE_VM, until the child execs or exits;
    a hung NFS or FUSE call) would not stop for PTRACE_INTERRUPT, and, seized, could not
    be let go until it stopped: the freeze would wait for it, the rest held (found by
    probing: `cryo checkpoint` never returned, the target still traced after it was
    killed).  Such a thread is waited for before it is seized, up to :data:`HELD_BOUND`,
    then refused (exit 9, naming where it waits), nothing of it touched.

    An io_uring thread of the process (an SQPOLL ring's iou-sqp, an io-wq worker's
    iou-wrk) is refused at once: it stops for ptrace but never returns to user space, so
    an injected call in it never ended, the target held for ever (node with
    UV_USE_IO_URING=1, session 10), and io_uring itself is not supported."""
    deadline = 0.0
    while True:
        try:
            st = procfs.parse_stat(procfs.read(pid, f"task/{tid}/stat"))
        except NoSuchProcess:
            return  # (gone: the seize tells)
        if st.flags & PF_IO_WORKER:
            raise Unsupported(f"thread {tid} of process {pid} ({st.comm}) is a kernel thread"
                              " of io_uring (an SQPOLL ring's or an io-wq worker): io_uring"
                              " is not supported", pid=pid, resource="io_uring")  # fmt: skip
        state = st.state
        if state != "D":
            return
        now = time.monotonic()
        if not deadline:
            deadline = now + HELD_BOUND
        elif now > deadline:
            try:
                with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                    where = f.read().strip() or "?"
            except OSError:
                where = "?"
            raise Unsupported(f"thread {tid} of process {pid} is held in the kernel (state D,"
                              f" in {where}) for more than {HELD_BOUND:g} s: a vfork'd child"
                              " that has not exec'd, or a hung NFS or FUSE call; it would not"
                              " stop for the freeze", pid=pid, resource="thread")  # fmt: skip
        time.sleep(0.001)


def _refuse_traced_inside(pid: int, pids: list[int]) -> None:
    """A thread traced by a process of the checkpoint (a parent that ptraces its child,
    a debugger taken with its inferior): the relation is not restored, refused by name
    rather than found out by the seize (exit 4, "already traced")."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return  # (gone: the seize tells)
    for tid in tids:
        tgid = 0
        with contextlib.suppress(OSError, CryoError, KeyError, ValueError):
            tracer = int(procfs.parse_status(procfs.read(int(tid), "status"))
                         .get("TracerPid", "0"))  # fmt: skip
            if tracer:
                tgid = int(procfs.parse_status(procfs.read(tracer, "status"))["Tgid"])
        if tgid in pids:
            raise Unsupported(f"thread {tid} of process {pid} is traced by process {tgid}"
                              " of the checkpoint (ptrace): not supported", pid=pid,
                              resource="ptrace")  # fmt: skip


def freeze(target: int, scope: str) -> dict[int, Proc]:
    """Seize and stop every thread of every process of the scope; on failure, let go."""
    procs: dict[int, Proc] = {}
    try:
        while True:
            pids = members(target, scope) if not procs or scope != "process" else [target]
            new = False
            for pid in pids:
                p = procs.get(pid)
                if p is None:
                    st = _stat(pid)
                    if st is None:
                        continue
                    p = Proc(pid, st.ppid, st.pgrp, st.session, exit_signal=st.exit_signal)
                    procs[pid] = p
                    new = True
                    if st.state in ("Z", "X"):
                        p.zombie = True
                        p.exit_code = _exit_code(pid)
                        p.task = _zombie_task(pid)
                        _refuse_seccomp_death(p)
                        continue
                if p.zombie:
                    continue
                if not p.tracees:
                    _refuse_vfork_parent(pid)
                    _refuse_traced_inside(pid, pids)
                try:
                    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
                except (FileNotFoundError, ProcessLookupError):
                    tids = []
                ended = False
                for tid in tids:
                    if tid not in p.tracees:
                        _refuse_held_in_kernel(pid, tid)
                        try:
                            p.tracees[tid] = Tracee.seize(pid, tid)
                        except (NoSuchProcess, AccessDenied):
                            if not _thread_ended(pid, tid):
                                raise
                            if tid != pid:
                                continue  # a thread that ended as we seized it
                            if pid == target or _tasks(pid) > 1:
                                raise
                            ended = True  # a process of the tree ending as we seized it:
                            break  # looked at again (a zombie, or gone) in the next round
                        new = True
                if ended:
                    _let_go_one(procs.pop(pid))
                    new = True
                    continue
                # the leader first (the threads' tids may be lower: pids wrap)
                p.threads = sorted(p.tracees, key=lambda t: (t != pid, t))
            # a process that went away meanwhile: drop it
            for pid in [q for q in procs if q not in pids]:
                _let_go_one(procs.pop(pid))
            if not new:
                break
        for p in procs.values():  # ids read again now that nothing moves
            st = _stat(p.pid)
            if st is not None:
                ids = ns_ids(p.pid)
                p.nspid, p.nsdepth = (ids[-1], len(ids)) if ids else (p.pid, 1)
            if st is not None and not p.zombie:
                p.ppid, p.pgid, p.sid = st.ppid, st.pgrp, st.session
                p.nstids = [nspid(p.pid, t) for t in p.threads]
                for tid, t in p.tracees.items():  # (before a call resumes any task)
                    t.note_pending(shared=tid == p.pid)
        return procs
    except BaseException:
        let_go(procs)
        raise


def _thread_ended(pid: int, tid: int) -> bool:
    """Is thread ``tid`` of ``pid`` gone or exiting (ptrace refuses an exiting task)?
    Threads come and go all the time in some programs (glibc's SIGEV_THREAD timers
    start one per expiry)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in (b"Z", b"X")


def _tasks(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def ns_ids(pid: int, tid: int | None = None) -> list[int]:
    """The task's id in cryo's pid namespace and in each one below it (NSpid)."""
    name = f"task/{tid}/status" if tid is not None else "status"
    return [int(x) for x in procfs.parse_status(procfs.read(pid, name)).get("NSpid",
                                                                            "").split()]


def nspid(pid: int, tid: int | None = None) -> int:
    """The task's id in its own pid namespace (the last NSpid field)."""
    ids = ns_ids(pid, tid)
    return ids[-1] if ids else (tid or pid)


def _zombie_task(pid: int) -> dict[str, Any] | None:
    """What /proc shows of a zombie's task, made again by finish_zombie (found by
    probing: a zombie came back named python3, with cryo's signal dispositions, root's
    ids and capabilities and no seccomp filter, exit 0)."""
    try:
        status = procfs.parse_status(procfs.read(pid, "status"))
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().rstrip(b"\n")
    except (CryoError, OSError):
        return None  # (reaped meanwhile)
    ids = [[int(x) for x in status.get(k, "").split()] for k in ("Uid", "Gid", "Groups")]
    data = procfs.read(pid, "stat")
    fields = data[data.rindex(b")") + 2 :].split()  # field N is fields[N - 3]
    nice, prio, policy = int(fields[16]), int(fields[37]), int(fields[38])
    sched = [policy, nice, prio]  # (SCHED_DEADLINE: its parameters are cleared at exit)
    return {"comm": comm, "sched": sched,
            **({"seccomp": int(status["Seccomp"])} if status.get("Seccomp") in ("1", "3")
               else {}),
            "timerslack": int(procfs.read(pid, "timerslack_ns")),
            "rlimits": procfs.parse_limits(procfs.read(pid, "limits")),
            "uids": ids[0], "gids": ids[1], "groups": ids[2],
            "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
            "no_new_privs": int(status.get("NoNewPrivs", "0")),
            "blocked": int(status["SigBlk"], 16), "ignored": int(status["SigIgn"], 16),
            "caught": int(status["SigCgt"], 16),
            "filters": int(status.get("Seccomp_filters", "0"))
            if status.get("Seccomp") in ("2", "3") else 0}  # fmt: skip


def _refuse_seccomp_death(p: Proc) -> None:
    """A zombie whose seccomp mode is 3 (dead: the kernel's mark of a task seccomp
    killed) came back so only from the two deaths that give it: a call strict mode
    forbids (SIGKILL, no filter) or a filter's kill (SIGSYS, filters): another is
    refused."""
    st, task = p.exit_code, p.task or {}
    if task.get("seccomp") != 3:
        return
    sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else 0
    if (sig, bool(task["filters"])) not in ((signal.SIGKILL, False), (signal.SIGSYS, True)):
        raise Unsupported(f"zombie {p.pid}, which seccomp killed, ended with wait status"
                          f" {st:#x}: not a death seccomp gives, it cannot be made again",
                          pid=p.pid, resource="seccomp")  # fmt: skip


def _exit_code(pid: int) -> int:
    """The wait status a zombie will report (field 52 of stat)."""
    data = procfs.read(pid, "stat")
    return int(data[data.rindex(b")") + 2 :].split()[49])


def _let_go_one(p: Proc) -> None:
    for t in p.tracees.values():
        if t.attached:
            try:
                t.detach()
            except OSError as err:  # pragma: no cover (died meanwhile)
                log.warning("could not detach from %d: %s", t.tid, err)


def let_go(procs: dict[int, Proc]) -> None:
    """Every process let go: the group-stopped ones first, each back in its stop before
    any other runs (found by probing: a parent let go first saw its stopped child in
    /proc as "t", still traced, or "R", on its way back into the stop)."""
    stopped = [p for p in procs.values() if not p.zombie and p.pid in p.tracees
               and p.tracees[p.pid].group_stop]  # fmt: skip
    for p in stopped:
        _let_go_one(p)
    deadline = time.monotonic() + 1.0
    while stopped and time.monotonic() < deadline and not all(
            _stopped_again(p) for p in stopped):  # fmt: skip
        time.sleep(0.0005)
    for p in procs.values():
        if p not in stopped:
            _let_go_one(p)


def _stopped_again(p: Proc) -> bool:
    try:
        return all(procfs.parse_stat(procfs.read(p.pid, f"task/{t}/stat")).state == "T"
                   for t in p.tracees)  # fmt: skip
    except (CryoError, OSError):
        return True  # (gone: nothing to wait for)


def collect_dead(procs: dict[int, Proc], timeout: float = 30.0) -> None:
    """After SIGKILL: collect each traced thread's death, so that none lingers traced by
    us.  In whatever order the kernel reports them: the init of a pid namespace does not
    finish dying until every process of its namespace is reaped, and those are traced by
    us too, so waiting for any one task first could wait forever (it did, for a
    `cryo run --pid-ns` job with children).  Tasks that are still not dead after
    ``timeout`` seconds (stuck in the kernel) are left, with a warning."""
    import time

    left = {tid: t for p in procs.values() for tid, t in p.tracees.items() if t.attached}
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while left:
        for tid in list(left):
            try:
                got, status = os.waitpid(tid, WALL | os.WNOHANG)
            except ChildProcessError:  # reaped already (a thread, with its group)
                got, status = tid, 0
            if got == tid and not os.WIFSTOPPED(status):  # (a stop reported late: again)
                left.pop(tid).attached = False
        if not left:
            return
        if time.monotonic() > deadline:
            log.warning("tasks %s did not die within %.0f s of SIGKILL", sorted(left), timeout)
            for t in left.values():
                t.attached = False
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def record(procs: dict[int, Proc], target: int, scope: str) -> dict[str, Any]:
    """The TREE record; ``pidns`` when the root is the init of its own pid namespace (as
    `cryo run --pid-ns` makes it, whatever the scope): the restart then makes a new
    namespace, where every pid is free.  A process in any other pid namespace than
    cryo's (or, under such a root, than the root's) is refused: it would come back
    seeing other pids."""
    root = procs.get(target)  # (the init of its own pid namespace: pid 1 there)
    pidns = root is not None and root.nsdepth > 1 and root.nspid == 1
    for p in procs.values():  # (a restart makes every process in cryo's pid namespace,
        if p.zombie or p.nsdepth <= 1 + pidns:  # or the root's in a new one as its init)
            continue
        where = "a pid namespace below its root's" if pidns else "a pid namespace of its own"
        raise Unsupported(f"process {p.pid} is in {where} (its pid there {p.nspid}): restored,"
                          " it would see another pid; checkpoint the init of that namespace"
                          " (with --tree) instead", pid=p.pid,
                          resource="pid namespace")  # fmt: skip
    return {"root": target, "scope": scope, "pidns": pidns,
            "procs": [p.record() for p in procs.values()]}  # fmt: skip


# -- restore ---------------------------------------------------------------------------


def creation_order(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Parents before children, children by pid; roots (parent outside) first."""
    by_pid = {p["pid"]: p for p in rec["procs"]}
    kids: dict[int, list[int]] = {}
    roots = []
    for p in rec["procs"]:
        if p["ppid"] in by_pid:
            kids.setdefault(p["ppid"], []).append(p["pid"])
        else:
            roots.append(p["pid"])
    out: list[dict[str, Any]] = []

    def visit(pid: int) -> None:
        out.append(by_pid[pid])
        for k in sorted(kids.get(pid, [])):
            visit(k)

    for r in sorted(roots):
        visit(r)
    return out


def check_groups(rec: dict[str, Any], shell_job: bool) -> None:
    """Every process group and session must be led by a process of the image (or be the
    caller's, for a shell job): the kernel cannot make a group without its leader."""
    pids = {p["pid"] for p in rec["procs"]}
    roots = [p for p in rec["procs"] if p["ppid"] not in pids]
    for p in rec["procs"]:
        if p["sid"] not in pids and not shell_job and p["sid"] != roots[0]["sid"]:
            raise Unsupported(f"process {p['pid']} is in session {p['sid']}, whose leader is"
                              " not in the checkpoint", pid=p["pid"], resource="session")
        if p["pgid"] not in pids and p["pgid"] != roots[0]["pgid"]:
            raise Unsupported(f"process {p['pid']} is in process group {p['pgid']}, whose"
                              " leader is not in the checkpoint", pid=p["pid"],
                              resource="process group")  # fmt: skip


def new_child(parent_pid: int, known: set[int]) -> int:
    """The pid, as we see it, of the child ``parent_pid`` just made (in another pid
    namespace clone3 returns the child's pid there)."""
    for p in children(parent_pid):
        if p not in known:
            return p
    raise CryoError(f"the child of {parent_pid} is nowhere to be seen")


def new_thread(pid: int, known: set[int]) -> int:
    for t in sorted(int(x) for x in os.listdir(f"/proc/{pid}/task")):
        if t not in known:
            return t
    raise CryoError(f"the new thread of {pid} is nowhere to be seen")


def pids_free(rec: dict[str, Any]) -> bool:
    if rec.get("pidns"):
        return True  # a new namespace: every pid is free
    return all(not os.path.exists(f"/proc/{t}") for p in rec["procs"]
               for t in (p["threads"] or [p["pid"]]))  # fmt: skip


def need_free(rec: dict[str, Any], why: str | None = None) -> None:
    """Fail (RestoreConflict, exit 10) naming the first pid of ``rec`` that is taken;
    ``why``: why new pids would not do."""
    for p in rec["procs"]:
        for t in p["threads"] or [p["pid"]]:
            if os.path.exists(f"/proc/{t}"):
                msg = f"pid {t} is taken; cannot restore with the same pids"
                if why:
                    msg += (f": {why}, so under new ones it would go wrong without a sign"
                            " (--new-pids restarts it anyway)")
                raise RestoreConflict(msg, pid=t)


def pids_matter(rec: dict[str, Any], lone_ok: bool = False) -> str | None:
    """Why the processes of ``rec`` cannot be given new pids without harm, or None
    (``lone_ok``: one process of one thread may).  A parent keeps its children's pids
    (fork's answer, for waitpid and kill), a thread library its threads' ids
    (pthread_kill, the owner of a PI or robust mutex): under new ones a signal goes to
    whatever has the old pid now.  A lone process keeps its own often enough: asyncio's
    running loop is found only by the pid that set it (restarted under another,
    asyncio.sleep fails with "no running event loop"), PostgreSQL signals and checks
    its MyProcPid, and a pid file names it."""
    live = [p for p in rec["procs"] if not p["zombie"]]
    if len(live) > 1:
        return f"its {len(live)} processes know each other's pids"
    if live and len(live[0]["threads"] or ()) > 1:
        return f"process {live[0]['pid']}'s {len(live[0]['threads'])} threads know their ids"
    if lone_ok:
        return None
    return "a process may keep its own (asyncio's event loop, a server's pid file)"


def own_actions() -> dict[int, bytes]:
    """This process's action of every signal (as rt_sigaction gives them to a restore
    helper forked now): signals.restore_actions leaves those the image has alike."""
    buf = ctypes.create_string_buffer(32)
    out = {}
    for sig in range(1, 65):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        libc.syscall(SYS.rt_sigaction, sig, 0, ctypes.addressof(buf), 8)
        out[sig] = buf.raw
    return out


def spawn_helper(want_pid: int | None, new_pidns: bool = False,
                 timens: tuple[int, int] | None = None,
                 plan: execlayout.Plan | None = None) -> int:  # fmt: skip
    """Fork a child that stops itself under our trace; with ``want_pid``, as that pid;
    with ``new_pidns`` as pid 1 of a new pid namespace; with ``timens`` in a new time
    namespace whose (monotonic, boottime) clocks are that far ahead of ours
    (engine/clocks.py); with ``plan``, stopped once it exec'd with that layout
    (engine/execlayout.py)."""
    fd = execlayout.stub_fd() if plan is not None else -1
    if timens is not None:
        from cryo.engine import clocks

        return clocks.fork_in_timens(timens, want_pid, CLONE.NEWPID if new_pidns else 0,
                                     plan)  # fmt: skip
    if new_pidns:
        child = libc.clone3(None, CLONE.NEWPID)
    else:
        child = libc.clone3(want_pid) if want_pid is not None else os.fork()
    if child == 0:  # the child: become traceable and stop; we take it from there
        execlayout.become(plan, fd)
    return child


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


class Made:
    """A process being built: its leader under our control."""

    def __init__(self, rec: dict[str, Any], pid: int, tracee: Tracee, inj: Injector) -> None:
        self.rec, self.pid, self.tracee, self.inj = rec, pid, tracee, inj
        self.ctx: RestoreContext | None = None
        # its session and group are the image's (_ids): a child inherits
        self.ids_kept = False
        # the layout exec gave its address space (engine/execlayout.py), and whether it
        # was exec'd for it (then it inherited no mapping from its parent)
        self.layout: execlayout.Layout | None = None
        self.execd = False
        # a root forked by cryo: cryo's maps then, where its vDSO and vvar are
        # (unmap_helper)
        self.forked_maps: list[procfs.Vma] | None = None


def kill_made(made: dict[int, Made]) -> None:
    """Undo :func:`build`: every process made so far killed, and every one of their
    threads we trace collected (threads first, each leader last, as the kernel reports
    them: a leader's death waits for its traced threads to be reaped).  We are a child
    subreaper meanwhile, so that the processes a killed restored parent leaves come to
    us and are reaped here, not left as zombies holding their pids for an init that
    may never reap them."""
    buf = bytearray(4)
    was = 0
    with contextlib.suppress(OSError):
        libc.prctl(PR.GET_CHILD_SUBREAPER, libc.buffer_address(buf))
        was = int.from_bytes(buf, "little")
    with contextlib.suppress(OSError):
        libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    try:
        for m in reversed(list(made.values())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.pid, signal.SIGKILL)
        for m in reversed(list(made.values())):
            tids = [t for t in (m.ctx.threads if m.ctx is not None else ()) if t != m.pid]
            for tid in [*tids, m.pid]:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(tid, WALL)
        _reap_orphans([m.pid for m in made.values()])
    finally:
        if not was:
            with contextlib.suppress(OSError):
                libc.prctl(PR.SET_CHILD_SUBREAPER, 0)


def _reap_orphans(pids: list[int], bound: float = 5.0) -> None:
    """Reap those of ``pids`` that came to us (their restored parent died first); wait
    at most ``bound`` seconds for the ones still on their way."""
    deadline = time.monotonic() + bound
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG | WALL)[0] == pid:
                    left.discard(pid)
                continue
            except ChildProcessError:
                pass
            try:  # not ours (yet): gone, or a zombie of a parent still dying
                st = procfs.parse_stat(procfs.read(pid, "stat"))
            except (OSError, NoSuchProcess):
                left.discard(pid)
                continue
            if st.ppid not in (os.getpid(), *left):
                left.discard(pid)  # someone else's to reap (outside what we made)
        if left:
            if time.monotonic() > deadline:
                log.warning("processes %s of a failed restart were not reaped", sorted(left))
                return
            time.sleep(0.005)


def build(rec: dict[str, Any], made: dict[int, Made], reuse: bool, shell_job: bool,
          area: int, born: Callable[[Injector, int], None] | None = None,
          timens: tuple[int, int] | None = None,
          own: list[procfs.Vma] | None = None,
          tasks: dict[int, dict[str, Any]] | None = None) -> None:  # fmt: skip
    """Create every process of TREE record ``rec``, parents first, with ids, sessions and
    groups.  Each gets the restorer area at ``area``: a root forked by cryo maps it,
    every other process inherits it from the restored parent that forks it.  A root is
    forked into a time namespace ``timens`` ahead of ours if given (engine/clocks.py).
    ``own``: cryo's maps, which a root forked by cryo (not through a time namespace) has
    (its vDSO is found there, its specials noted: Made.specials), read once.  ``tasks``:
    the TASK records by old pid; a process whose exec-time layout is not the one it
    would inherit is exec'd for it (engine/execlayout.py)."""
    for p in creation_order(rec):
        old = p["pid"]
        parent = made.get(p["ppid"])
        plan = execlayout.plan((tasks or {}).get(old))
        inherits = execlayout.own() if parent is None else parent.layout
        execd = plan is not None and plan.layout != inherits
        if parent is None:  # a root: forked by cryo
            # (its actions are cryo's: none differs, but through a time namespace's fork)
            acts = own_actions() if timens is None and not execd else None
            try:
                child = spawn_helper(old if reuse else None, bool(rec.get("pidns")), timens,
                                     plan if execd else None)  # fmt: skip
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
                raise RestoreConflict(f"pid {old} was taken meanwhile", pid=old) from err
            t = Tracee.adopt_traceme_child(child, TRACE_NEW)
            maps = own if timens is None and not execd else None
            hinj = HoldingInjector(t, find_vdso_syscall(child, maps))
            hinj.born_actions = acts
            made[old] = m = Made(p, child, t, hinj)
            m.forked_maps = maps
            m.inj.map_scratch(RESTORER_SIZE, addr=area, exe=True)
            m.inj.write(area, b"\x0f\x05\xcc")  # syscall; int3
            executable = (m.inj.scratch_known or (0, 0, None))[2]
        else:  # forked by its restored parent
            pinj = parent.inj
            args = S.clone_args()
            args.exit_signal = p["exit_signal"]
            frame = pinj.frame()
            if reuse:
                args.set_tid = frame.put(struct.pack("<i", p["nspid"]))
                args.set_tid_size = 1
            pinj.born = None
            pinj(SYS.clone3, frame.put(bytes(args)), len(bytes(args)),
                 what=f" clone3 for {old}")  # fmt: skip
            # (its fork event said which; else the one child of it not made before: a
            # restored parent, stopped, forks no other)
            child = pinj.born if pinj.born is not None else \
                new_child(parent.pid, {x.pid for x in made.values()})  # fmt: skip
            t = Tracee(child)
            t.attached = True  # traced from birth (PTRACE_O_TRACEFORK)
            t.wait_stop()
            hinj = HoldingInjector(t, area)  # (its actions its parent's: none once set)
            hinj.born_actions = getattr(parent.inj, "born_actions", None)
            made[old] = m = Made(p, child, t, hinj)
            executable = (parent.inj.scratch_known or (0, 0, None))[2]  # (its mapping)
            if execd and plan is not None:  # (the exec takes its parent's mappings away)
                m.inj.scratch, m.inj.scratch_size = area + PAGE_SIZE, RESTORER_SIZE - PAGE_SIZE \
                    - HELD_SIZE  # fmt: skip
                t.options = parent.tracee.options  # (inherited: EXITKILL, no guard)
                execlayout.exec_child(t, m.inj, plan, execlayout.stub_fd(), area, t.options)
                m.inj = HoldingInjector(t, find_vdso_syscall(child))
                m.inj.map_scratch(RESTORER_SIZE, addr=area, exe=True)
                m.inj.write(area, b"\x0f\x05\xcc")  # syscall; int3
                executable = (m.inj.scratch_known or (0, 0, None))[2]
        m.layout = plan.layout if execd and plan is not None else inherits
        m.execd = execd
        m.inj.syscall_addr = area
        # (the held calls' buffers after the scratch area: inject.HoldingInjector)
        m.inj.scratch, m.inj.scratch_size = area + PAGE_SIZE, RESTORER_SIZE - PAGE_SIZE - HELD_SIZE
        if executable is not None:  # (inside the area map_scratch mapped: no maps read)
            m.inj.scratch_known = (m.inj.scratch, m.inj.scratch_size, executable)
        _ids(m, made, shell_job, root=parent is None)
        if born is not None:  # (its session is its own now; it has no child yet)
            born(m.inj, old)


def _ids(m: Made, made: dict[int, Made], shell_job: bool, root: bool) -> None:
    """Session and process group, set right after birth, before any child is made.  A
    child forked by a restored parent whose session and group are the image's, and
    which had the same, has them already (no stop)."""
    rec, inj = m.rec, m.inj
    old = rec["pid"]
    parent = None if root else made.get(rec["ppid"])
    same = parent is not None and parent.ids_kept and \
        (parent.rec["sid"], parent.rec["pgid"]) == (rec["sid"], rec["pgid"])  # fmt: skip
    if rec["sid"] == old:
        if not (root and shell_job):
            inj(SYS.setsid)
            m.ids_kept = rec["pgid"] == old
        return
    if same:
        m.ids_kept = True
    elif rec["pgid"] == old:
        inj(SYS.setpgid, 0, 0)
        m.ids_kept = parent is not None and parent.ids_kept and parent.rec["sid"] == rec["sid"]
    elif rec["pgid"] in made and not root:  # the leader's pid as the process sees it
        leader = made[rec["pgid"]]
        inj(SYS.setpgid, 0, nspid(leader.pid))
        m.ids_kept = parent is not None and parent.ids_kept and parent.rec["sid"] == rec["sid"]


SECCOMP_SET_MODE_FILTER = 1
SCHED_DEADLINE = 6
PR_SET_SECCOMP, SECCOMP_MODE_STRICT = 22, 1
_ALLOW = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW
# a filter that kills the thread at getppid, allowing every other call (a zombie that a
# filter killed: finish_zombie makes that call last; not getpid, which the batch
# routine's end calls)
_KILL_GETPPID = b"".join((struct.pack("<HBBI", 0x20, 0, 0, 0),  # ld [nr]
                          struct.pack("<HBBI", 0x15, 0, 1, SYS.getppid),  # jeq getppid
                          struct.pack("<HBBI", 0x06, 0, 0, 0),  # ret SECCOMP_RET_KILL_THREAD
                          _ALLOW))  # fmt: skip


def _zombie_task_restore(inj: Injector, task: dict[str, Any], area: int, sig: int) -> None:
    """In a zombie-to-be, before it exits: its name, timer slack, resource limits,
    scheduling policy,
    nice value and real-time priority, its signal dispositions (a caught
    signal's handler is an address of the restorer's area: no handler of a zombie ever
    runs, and none can be read back), its mask, as many seccomp filters as it had (each
    allows every call: a zombie's filters cannot be read, only counted), then its ids
    and capabilities (task.restore_creds; securebits 0: a zombie's are not shown)."""
    from cryo.engine import task as taskmod  # (task imports tree)

    with inj.batch() as b:  # one stop
        b.call(SYS.prctl, PR.SET_NAME, b.put(task["comm"][:15] + b"\0"), 0, 0, 0)
        for n in range(1, 65):
            if n in (signal.SIGKILL, signal.SIGSTOP):
                continue
            bit = 1 << (n - 1)
            handler = 1 if task["ignored"] & bit else area if task["caught"] & bit else 0
            b.call(SYS.rt_sigaction, n, b.put(struct.pack("<QQQQ", handler, 0, 0, 0)), 0, 8,
                   may_fail=True)  # fmt: skip
        if task.get("timerslack"):
            b.call(SYS.prctl, PR.SET_TIMERSLACK, task["timerslack"], 0, 0, 0)
        for res, (soft, hard) in (task.get("rlimits") or {}).items():  # (a hard limit above
            b.call(SYS.prlimit64, 0, int(res), b.put(struct.pack("<QQ", soft, hard)), 0,
                   may_fail=True)  # cryo's needs CAP_SYS_RESOURCE: left)  # fmt: skip
        if task.get("sched"):  # (before its ids: a real-time policy needs CAP_SYS_NICE)
            policy, nice, prio = task["sched"]
            attr = S.sched_attr(size=ctypes.sizeof(S.sched_attr), sched_policy=policy,
                                sched_nice=nice, sched_priority=prio)  # fmt: skip
            if policy == SCHED_DEADLINE:  # (a zombie shows none of its parameters: a
                # reservation of a ten-thousandth of a CPU, within any admission limit)
                attr.sched_runtime, attr.sched_deadline = 100_000, 1_000_000_000
                attr.sched_period = 1_000_000_000
            b.call(SYS.sched_setattr, 0, b.put(bytes(attr)), 0, what=" sched_setattr")
        mask = task["blocked"] & ~(1 << (sig - 1) if sig else 0)
        b.call(SYS.rt_sigprocmask, 2, b.put(mask.to_bytes(8, "little")), 0, 8)  # SETMASK
        if task["filters"]:
            prog = b.put(_ALLOW)
            fprog = b.put(struct.pack("<HxxxxxxQ", 1, prog))
            dead = task.get("seccomp") == 3  # (the last filter kills its last call)
            for _ in range(task["filters"] - dead):
                b.call(SYS.seccomp, SECCOMP_SET_MODE_FILTER, 0, fprog)
            if dead:
                prog = b.put(_KILL_GETPPID)
                b.call(SYS.seccomp, SECCOMP_SET_MODE_FILTER, 0,
                       b.put(struct.pack("<HxxxxxxQ", len(_KILL_GETPPID) // 8, prog)))
    taskmod.restore_creds(inj, {"uids": task["uids"], "gids": task["gids"],
                                "groups": task["groups"], "caps": task["caps"],
                                "securebits": 0, "no_new_privs": task["no_new_privs"]})


def _core_dump_again(m: Made, task: dict[str, Any], area: int, hard: int
                     ) -> Callable[[], None]:  # fmt: skip
    """A zombie whose wait status says it dumped core (WCOREDUMP: its parent may look)
    dumps one again, small and thrown away: every mapping but the restorer's area
    unmapped (a zombie has no memory to show), its core limit its hard one, dumpable
    (its ids, set again, had cleared it), in a directory of cryo's owned by its fs ids,
    removed once it is dead (the cleanup returned).  Only where this host's core_pattern
    is a plain file name (not a pipe to a crash handler, not a path elsewhere): else the
    restart fails, naming it."""
    import shutil
    import tempfile

    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if not pattern or pattern.startswith("|") or "/" in pattern:
        raise CryoError(f"zombie {m.rec['pid']} dumped core, and this host's core_pattern"
                        f" ({pattern!r}) would hand a core made again to something else:"
                        " its wait status cannot be made again here")  # fmt: skip
    where = tempfile.mkdtemp(prefix="cryo-core-")
    try:
        if task:
            os.chown(where, task["uids"][3], task["gids"][3])
        inj = m.inj
        with inj.batch() as b:
            b.call(SYS.chdir, b.put_str(where))
            b.call(SYS.prlimit64, 0, 4, b.put(struct.pack("<QQ", hard, hard)), 0)
            b.call(SYS.prctl, PR.SET_DUMPABLE, 1, 0, 0, 0)
        top = (1 << 47) - PAGE_SIZE  # (below it, every user mapping but the restorer's)
        inj(SYS.munmap, 0, area)
        inj(SYS.munmap, area + RESTORER_SIZE, top - area - RESTORER_SIZE)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise

    def cleanup() -> None:
        try:
            wait_dead(m.pid)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    return cleanup


def _kill_when_strict(pid: int, sig: int) -> Callable[[], None]:
    """Once let go: ``sig`` to ``pid`` as soon as its status shows strict mode (its own
    prctl done, its reads spinning)."""

    def kill() -> None:
        deadline = time.monotonic() + 5
        while "Seccomp:\t1" not in procfs.read(pid, "status").decode(errors="replace"):
            if time.monotonic() > deadline:
                raise CryoError(f"process {pid}, a zombie-to-be, did not take strict mode")
            time.sleep(0.0005)
        os.kill(pid, sig)

    return kill


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until the zombie-to-be ``pid``, let go, is a zombie (its exit takes microseconds:
    the bound is for a host that does not run it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _stat(pid)
        if st is None or st.state in ("Z", "X"):
            return
        time.sleep(0.0005)
    log.warning("process %d, let go to exit, is not a zombie yet", pid)


def finish_zombie(m: Made, area: int) -> list[Callable[[], None]]:
    """Let a zombie-to-be go straight into exit_group (or a fatal signal) with the
    status its parent will collect; returns what to do, in order, once it is let go."""
    status = m.rec["exit_code"]
    inj = m.inj
    task = m.rec.get("task") or {}
    if task:
        _zombie_task_restore(inj, task, area,
                             os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)  # fmt: skip
    regs = S.user_regs_struct.from_buffer_copy(inj.saved)
    regs.rip = area
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF
    mode = task.get("seccomp")
    after: list[Callable[[], None]] = []
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:  # (whose action cannot be changed: EINVAL)
            inj(SYS.rt_sigaction, sig, inj.put(bytes(32)), 0, 8)  # SIG_DFL
        limits = task.get("rlimits") or {}
        core = limits.get(4) or limits.get("4") or (0, 0)  # (its hard limit kept)
        if os.WCOREDUMP(status) and core[1]:
            cleanup = _core_dump_again(m, task, area, core[1])
        else:
            cleanup = None
            inj(SYS.prlimit64, 0, 4, inj.put(struct.pack("<QQ", 0, core[1])), 0)  # no core
        me = nspid(m.pid)  # the call runs in the process: its pid as it sees it
        regs.rax, regs.rdi, regs.rsi, regs.rdx = SYS.tgkill, me, me, sig
    else:
        cleanup = None
        regs.rax, regs.rdi = SYS.exit_group, os.WEXITSTATUS(status) if os.WIFEXITED(status) \
            else 0  # fmt: skip
    if mode == 3 and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
        regs.rax = SYS.getppid  # (its last filter kills it there)
    elif mode in (1, 3):
        # seccomp's strict mode, taken by the zombie-to-be's own code as its last act but
        # one (no injected call can follow: the batch routine's stop signal is a call
        # strict mode answers with SIGKILL); then: exit, which strict mode allows; for a
        # death by SIGKILL in mode 3 a call it forbids (getpid: mode 3 and SIGKILL, as
        # the kernel leaves a task it killed); for a death by a signal in mode 1, reads
        # of fd -1 over and over until cryo sends that signal (_kill_when_strict)
        mov = struct.pack("<BIBIBI", 0xB8, SYS.prctl, 0xBF, PR_SET_SECCOMP, 0xBE,
                          SECCOMP_MODE_STRICT) + b"\x0f\x05"  # prctl(PR_SET_SECCOMP, 1)
        if os.WIFEXITED(status):
            tail = struct.pack("<BIBI", 0xB8, SYS.exit, 0xBF, os.WEXITSTATUS(status))
            tail += b"\x0f\x05\xcc"
        elif mode == 3:
            tail = struct.pack("<BI", 0xB8, SYS.getpid) + b"\x0f\x05\xcc"
        else:  # read(-1, 0, 0); jmp back to it
            tail = struct.pack("<BIBI", 0xB8, SYS.read, 0xBF, 0xFFFFFFFF) + b"\x0f\x05\xeb\xf2"
            after.append(_kill_when_strict(m.pid, os.WTERMSIG(status)))
        inj.write(area + 16, mov + tail)  # (the restorer's first page, after syscall; int3)
        regs.rip = area + 16
    inj.finish(regs)
    return [*after, *([cleanup] if cleanup else [])]
