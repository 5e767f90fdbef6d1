"""Landlock domains: refused at checkpoint (exit 9).

A thread that called landlock_restrict_self() is confined by rules the kernel never
shows again: no /proc file, syscall or fdinfo reads a domain back, so a restart would
run the process unconfined (seen here: a process denied mkdir before the checkpoint
could mkdir after it, and the restart exited 0).  So a confined thread is refused, by
name, before anything is written.

Telling whether a thread is confined: Landlock denies a confined task every ptrace
access check against a task outside its domain (security/landlock/task.c), kcmp()
included.  So a *witness* is made, a process in no domain whose ids are the thread's
real ones, with no capability the thread lacks, dumpable, in the thread's pid namespace
(so that the thread can name it); then ``kcmp(self, witness, KCMP_VM)`` is run inside
the thread: EPERM means a domain.  Only threads that could have a domain are asked: the
kernel requires no_new_privs, or CAP_SYS_ADMIN, of a thread that enters one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
from collections.abc import Generator
from typing import Any

from cryo import procfs
from cryo.engine import namespaces, tree
from cryo.errors import Unsupported
from cryo.linux import libc
from cryo.linux import structs as S
from cryo.linux.consts import PR, SYS
from cryo.linux.fdcalls import SYS_KCMP

KCMP_VM = 1
CAP_SYS_ADMIN = 21
_CAP_V3 = 0x20080522
_CLONE_NEWPID = 0x20000000


def could_be_confined(pid: int, tid: int, st: dict[str, str] | None = None) -> bool:
    """(``st``: the thread's status, parsed, if read already)"""
    if st is None:
        st = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    return st.get("NoNewPrivs", "0").strip() == "1" or \
        bool(int(st.get("CapEff", "0"), 16) >> CAP_SYS_ADMIN & 1)  # fmt: skip


class Witness:
    """A process in no Landlock domain, with ``tid``'s real uid, gid and groups and at
    most its permitted capabilities, in its pid namespace; killed by :meth:`close`."""

    def __init__(self, pid: int, tid: int) -> None:
        from cryo.linux.net import setns  # (the witness's own: not on a fast path)

        st = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
        uid, gid = int(st["Uid"].split()[0]), int(st["Gid"].split()[0])
        groups = [int(g) for g in st.get("Groups", "").split()]
        prm = int(st.get("CapPrm", "0"), 16)
        r, w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        ns = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        first = os.fork()
        if first == 0:  # pragma: no cover (in the child)
            try:
                os.close(r)
                os.close(self.go_w)
                libc.prctl(PR.SET_PDEATHSIG, signal.SIGKILL)
                setns(ns, _CLONE_NEWPID)  # (its children are born in the target's)
                child = os.fork()
                if child == 0:
                    try:
                        libc.prctl(PR.SET_PDEATHSIG, signal.SIGKILL)
                        os.setgroups(groups)
                        os.setresgid(gid, gid, gid)
                        if uid == 0:
                            _drop_to(prm)
                        else:  # (which leaves it no capability)
                            os.setresuid(uid, uid, uid)
                        libc.prctl(PR.SET_DUMPABLE, 1)
                        os.write(w, b"r")
                    except BaseException:
                        os._exit(1)  # (the caller reads the end of the pipe)
                    os.read(self.go_r, 1)  # until we are told (or our parent dies)
                    os._exit(0)
                os.write(w, str(child).encode().rjust(16))
                os.close(w)  # (only the witness holds it now)
                os.read(self.go_r, 1)
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            finally:
                os._exit(0)
        os.close(ns)
        os.close(w)
        os.close(self.go_r)
        self.first = first
        try:
            got = b""
            while len(got) < 17:
                chunk = os.read(r, 17 - len(got))
                if not chunk:
                    raise OSError(errno.ESRCH, "the Landlock witness did not start")
                got += chunk
        except BaseException:
            self.close()
            raise
        finally:
            os.close(r)
        order = got.index(b"r")  # ("r" and the pid may come in either order)
        self.pid = int((got[:order] + got[order + 1 :]).strip())
        self.nspid = tree.nspid(self.pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.go_w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.first, 0)


def _drop_to(prm: int) -> None:
    """Keep only capabilities in ``prm`` (effective = permitted = ``prm``)."""
    head = S.user_cap_header(_CAP_V3, 0)
    data = (S.user_cap_data * 2)(S.user_cap_data(prm & 0xFFFFFFFF, prm & 0xFFFFFFFF, 0),
                                 S.user_cap_data(prm >> 32, prm >> 32, 0))  # fmt: skip
    libc.syscall(SYS.capset, ctypes.addressof(head), ctypes.addressof(data))


CAP_SYS_PTRACE = 19
# witnesses made during this checkpoint, by (pid namespace, uid, gid, groups, caps): one
# serves every thread with those ids; closed once every process is collected (release,
# the "shared" hook, or at thaw on an abort): one left in the pid namespace of a job
# that --kill then ends would keep its init from dying (zap_pid_ns_processes waits for
# it: test_kill_after_checkpoint_of_a_pid_namespace waited 30 s)
_witnesses: dict[tuple[Any, ...], Witness] = {}


def _cryo_may_witness(pid: int, st: dict[str, str]) -> bool:
    """May cryo itself be the witness: would the thread, were it in no domain, pass the
    ptrace access check on cryo (a root thread, with CAP_SYS_PTRACE or at least cryo's
    permitted capabilities, in cryo's pid and user namespaces)?  Saves forking one for
    every root process, frozen meanwhile."""
    if st["Uid"].split()[0] != "0" or st["Gid"].split()[0] != "0":
        return False
    eff, prm, cryo_prm = int(st["CapEff"], 16), int(st["CapPrm"], 16), _my_permitted()
    if not (eff >> CAP_SYS_PTRACE & 1 or prm & cryo_prm == cryo_prm):
        return False
    return namespaces.same(pid, "pid") and namespaces.same(pid, "user")


@functools.cache
def _my_permitted() -> int:
    """cryo's permitted capabilities (read once: they do not change)."""
    return int(procfs.parse_status(procfs.read(os.getpid(), "status"))["CapPrm"], 16)


def _witness(pid: int, tid: int, st: dict[str, str]) -> Witness:
    key = (os.stat(f"/proc/{pid}/ns/pid").st_ino, st["Uid"].split()[0], st["Gid"].split()[0],
           st.get("Groups", ""), st.get("CapPrm", ""))  # fmt: skip
    w = _witnesses.get(key)
    if w is None:
        w = _witnesses[key] = Witness(pid, tid)
    return w


def release(_session: Any = None) -> None:
    """Driver hook (shared, and thaw): the checkpoint's witnesses go."""
    for w in _witnesses.values():
        w.close()
    _witnesses.clear()


def check_thread(ctx: Any, t: Any, b: Any) -> Generator[None, Any, None]:
    """Driver hook (queue_thread, its kcmp in the thread's batch ``b``): refuse a
    thread confined by Landlock."""
    st = procfs.parse_status(procfs.read(ctx.pid, f"task/{t.tid}/status"))
    if not could_be_confined(ctx.pid, t.tid, st):
        return
    me = tree.nspid(ctx.pid)
    mine = b.call(SYS_KCMP, me, os.getpid(), KCMP_VM, 0, 0, may_fail=True) \
        if _cryo_may_witness(ctx.pid, st) else None  # fmt: skip
    yield
    tinj = b.inj
    ret = -errno.EPERM if mine is None else b.result(mine)
    if ret == -errno.EPERM:  # (or made sure of with a witness of its own ids)
        ret = tinj.raw(SYS_KCMP, me, _witness(ctx.pid, t.tid, st).nspid, KCMP_VM, 0, 0)
    # (in another user namespace the witness, in ours, needs a capability there: EPERM
    # then says nothing about Landlock)
    if ret == -errno.EPERM and namespaces.same(ctx.pid, "user"):
        raise Unsupported(f"thread {t.tid} is confined by Landlock (landlock_restrict_self):"
                          " the kernel never shows its rules again, so a restart would run"
                          " it unconfined", pid=ctx.pid, resource="landlock")  # fmt: skip
    if ret < 0:
        raise Unsupported(f"thread {t.tid}: cannot tell whether it is confined by Landlock"
                          f" (kcmp: {os.strerror(-ret)})", pid=ctx.pid,
                          resource="landlock")  # fmt: skip
