"""Kernel-visible state probed in session 8 (issue 9, docs/state-coverage.md: "found by
probing, session 8"): victims/probes8.c sets one piece of state per mode (in a process,
its second thread, or its children), is checkpointed (with its children where it has
some), killed and restarted, and checks itself every round ("ok N", a child "cok PID N",
or "FAIL what"); what cannot be restored is refused (exit 9 naming it), the target
untouched."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_procstate import build_threaded, cycle

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("probes8"), "probes8")


def _children(v: Victim, which: str = "child ") -> list[int]:
    """The children that report rounds of their own (or with ``which`` "other ", those
    that do not: a zombie, a vfork child)."""
    return sorted({int(x.split()[1]) for x in v.lines() if x.startswith(which)})


def _child_rounds(v: Victim, pid: int) -> int:
    return max((int(x.split()[2]) for x in v.lines() if x.startswith(f"cok {pid} ")), default=-1)


def _spawn(procs: Procs, exe: str, tmp_path: Path, mode: str, kids: int = 0) -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([exe, str(out), mode, str(tmp_path)], out)
    try:
        v.wait_line("ready")  # (a child that reports no rounds is named before it)
        if kids:
            v.wait_for(lambda _: len(_children(v)) >= kids)
        v.wait_ok_after(1)
    finally:  # (killed at the end, even if it came up wrong)
        for pid in [*_children(v), *_children(v, "other ")]:
            procs.track(pid)
    return v


def _refused(v: Victim, img: Path, needle: str, *args: str) -> None:
    """``cryo checkpoint PID --kill ARGS`` is refused: exit 9 naming ``needle``, no image,
    and the target goes on checking itself."""
    from cryo.errors import ExitCode

    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill", *args)
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert needle in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


# single processes whose state came back right (no defect found): they keep it so
SINGLE = {
    "sigign": "SIGUSR2 and SIGRTMIN+4 blocked, ignored and pending: the process's and the"
              " thread's own",
    "opathdir": "an O_PATH fd on a directory, used by openat",
    "sysfs": "a sysfs file's offset, the cgroup directory and cgroup.procs open",
    "highfd": "fds 900 and 901 with RLIMIT_NOFILE lowered to 64 afterwards",
    "epollflags": "epoll watches with EPOLLRDHUP, EPOLLPRI, EPOLLWAKEUP, EPOLLOUT | EPOLLERR",
    "rtorder": "real-time signals of one number queued with values to the process and to a"
               " thread: each taken by its own thread, in order, values kept",
}

# after go, the line each of these writes once its last step is right
LAST_STEP = {"inotifyflags": "oneshot", "widowpipe": "eof", "zombie": "reaped",
             "subreaped": "reaped", "vfork": "vforkdone", "pidfdzombie": "reaped",
             "pipeeof": "eof", "zombieleader": "reaped", "rtorder": "rtdone"}


@pytest.mark.parametrize("mode", sorted(SINGLE))
def test_state_restored(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """Each SINGLE mode's state is the same after the restart, checked by the process
    itself every round, in both threads."""
    v = _spawn(procs, exe, tmp_path, mode)
    _go_on(cycle(procs, v, tmp_path / "img"), tmp_path, mode)


def _go_on(v: Victim, tmp_path: Path, mode: str) -> None:
    """The restored ``v`` told to take its last step (the file go): it reports it, goes
    two more rounds, and nothing failed."""
    (tmp_path / "go").touch()
    if mode in LAST_STEP:
        v.wait_line(LAST_STEP[mode])
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def _tree_cycle(procs: Procs, v: Victim, tmp_path: Path) -> Victim:
    """``v`` and its children checkpointed as a tree, killed, reaped, restarted; each
    process goes on checking itself (the children's own rounds too)."""
    kids = _children(v)
    v.wait_for(lambda _: all(_child_rounds(v, k) >= 1 for k in kids) or bool(v.fails()))
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    before = {k: _child_rounds(v, k) for k in kids}
    for pid in [v.pid, *kids, *_children(v, "other ")]:
        reap(pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 3, timeout=20)
    new.wait_for(lambda _: all(_child_rounds(new, k) > before[k] + 3 for k in kids)
                 or bool(new.fails()), timeout=20)  # fmt: skip
    assert not new.fails()
    return new


TREE = {
    "shm3": (2, "shared anonymous memory of three processes at different offsets (one"
                " without page 0, one with pages moved by mremap): each sees the others'"
                " counters"),
    "dupflock": (1, "an flock on one description shared by parent and child (kcmp)"),
    "ofdposix": (1, "the parent's OFD lock and its child's POSIX lock on one file"),
    "zombie": (0, "a zombie child seen with waitid WNOWAIT, reaped after the restart"),
    "subreaped": (1, "a grandchild reparented to the subreaper, reaped after the restart"),
    "sessions": (3, "a child leading its group, a grandchild its session, and one in it"),
    "pidfdzombie": (0, "a pidfd of a zombie child: POLLIN, then waitid(P_PIDFD) its status"),
    "pipeeof": (1, "a pipe read by the parent, written by its child: EOF and POLLHUP once"
                   " the child exits after the restart"),
    "zombieleader": (1, "a process group whose leader is a zombie, its member a grandchild"),
    "sigchld": (0, "a SIGCHLD handler that ran once for a zombie child runs no more"),
    "fownchild": (1, "a pipe whose O_ASYNC signal owner (F_SETOWN, F_SETSIG) is the child"),
    "uidchild": (1, "a child of other uids, gids, groups and capabilities than its parent"),
}


@pytest.mark.parametrize("mode", sorted(TREE))
def test_tree_state_restored(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """Each TREE mode's processes come back with their state, each checking its own."""
    v = _spawn(procs, exe, tmp_path, mode, TREE[mode][0])
    _go_on(_tree_cycle(procs, v, tmp_path), tmp_path, mode)


def test_inotify_watch_flags(procs: Procs, exe: str, tmp_path: Path) -> None:
    """inotify watches made with IN_ONESHOT, with IN_MASK_ADD (two masks merged) and with
    IN_EXCL_UNLINK keep their masks and flags; the one-shot watch gives one IN_MODIFY for
    two writes after the restart, then IN_IGNORED."""
    v = _spawn(procs, exe, tmp_path, "inotifyflags")
    v = cycle(procs, v, tmp_path / "img")
    (tmp_path / "go").touch()
    v.wait_line("oneshot")
    assert not v.fails()


def test_pipes_with_an_end_closed(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A pipe whose read end is closed still gives EPIPE; one whose write end is closed
    with "abc" queued gives POLLIN | POLLHUP, then "abc" and EOF."""
    v = _spawn(procs, exe, tmp_path, "widowpipe")
    v = cycle(procs, v, tmp_path / "img")
    (tmp_path / "go").touch()
    v.wait_line("eof")
    assert not v.fails()


def test_signal_owner_of_a_process_group(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A pipe with O_ASYNC, F_SETSIG and F_SETOWN_EX F_OWNER_PGRP (its process group):
    each write still signals the process, the owner still the group."""
    v = _spawn(procs, exe, tmp_path, "fownpgrp")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_pdeathsig_of_each_thread_with_the_parent_outside(procs: Procs, exe: str,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """PR_SET_PDEATHSIG of each thread (SIGUSR2, SIGWINCH), the parent outside the
    checkpoint: each thread's own after the restart."""
    v = _spawn(procs, exe, tmp_path, "pdeath")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_vfork_child_not_yet_execd_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A process whose main thread waits in vfork for a child that has not exec'd (the
    child shares its memory; another thread of the parent reports the rounds): refused
    (exit 9 naming vfork), alone or with its child, the two untouched (the child exits
    when told, the parent's vfork returns).  Before: the checkpoint never returned (the
    waiting thread never stops for PTRACE_INTERRUPT), the parent held."""
    from cryo.errors import Unsupported

    v = _spawn(procs, exe, tmp_path, "vfork")
    for i, scope in enumerate(("--tree", "--process")):
        _refused(v, tmp_path / f"img{i}", "vfork", scope)
    with pytest.raises(Unsupported, match="vfork"):
        checkpoint(v.pid, str(tmp_path / "img2"), scope="tree", signal_after=signal.SIGKILL)
    v.wait_ok_after(max(v.oks()) + 2)
    (tmp_path / "go").touch()
    v.wait_line("vforkdone")
    assert not v.fails()


def test_ptrace_inside_the_tree_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A parent that PTRACE_SEIZEs its child, interrupting and resuming it each round,
    checkpointed with it: refused, exit 9 naming ptrace, no image, the two go on (the
    parent still traces the child, each checks itself).  Before: exit 4 ("may not be
    traced, already traced by" the parent), which says the tree cannot be taken, not
    that ptrace inside it is what is not restored."""
    v = _spawn(procs, exe, tmp_path, "ptracechild", 1)
    kid = _children(v)[0]
    _refused(v, tmp_path / "img", "(ptrace)", "--tree")
    n = _child_rounds(v, kid)
    v.wait_for(lambda _: _child_rounds(v, kid) > n + 2)
    assert not v.fails()


def test_pipe_whose_writer_is_outside_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A pipe whose read end the process holds and whose write end only a process
    outside the checkpoint holds: refused (exit 9 naming the pipe), the target untouched
    (it still reads what the writer sends).  Before: exit 0, restored on a pipe of its
    own with no writer: the writer's next write failed (EPIPE), the process read EOF."""
    r, w = os.pipe()
    try:
        out = tmp_path / "out.txt"
        v = procs.spawn([exe, str(out), "pipein", str(tmp_path), str(r)], out,
                        pass_fds=(r,))  # fmt: skip
        os.close(r)
        v.wait_ok_after(1)
        _refused(v, tmp_path / "img", "write end of pipe:")
        os.write(w, b"late")
        v.wait_line("read late")
    finally:
        os.close(w)


def test_nanosleep_of_a_process_stopped_by_sigstop(procs: Procs, exe: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A thread in nanosleep (1.5 s) when the process is stopped by SIGSTOP, checkpointed
    stopped, restarted stopped and continued: the sleep returns 0 (ERESTART_RESTARTBLOCK
    taken up again), never early, and the next ones too."""
    import time

    v = _spawn(procs, exe, tmp_path, "sleepstop")
    v.wait_line("slept 0", timeout=20)
    time.sleep(0.5)  # (inside the next sleep)
    os.kill(v.pid, signal.SIGSTOP)
    v.wait_for(lambda _: Path(f"/proc/{v.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
               == "T")  # fmt: skip
    n = len([x for x in v.lines() if x.startswith("slept ")])
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    os.kill(rr.pid, signal.SIGCONT)
    v.wait_for(lambda ls: len([x for x in ls if x.startswith("slept ")]) >= n + 2
               or bool(v.fails()), timeout=20)  # fmt: skip
    assert not v.fails()


def test_fifo_kept_open_by_a_writer_outside(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A FIFO the process reads, with "abc" waiting, whose writer (this test) is outside
    the checkpoint and keeps it open: after the restart the process reads "abc" once,
    then what the writer sent since ("XY").  Before: "abcabcXY", exit 0 (the FIFO lived
    on with its bytes, and the restart wrote the saved ones into it again)."""
    v = _spawn(procs, exe, tmp_path, "fifoin")
    w = os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(w, b"abc")
        v = cycle(procs, v, tmp_path / "img")
        os.write(w, b"XY")
        (tmp_path / "go").touch()
        v.wait_line("fifo ")
        v.wait_ok_after(max(v.oks()) + 2)
        assert [x for x in v.lines() if x.startswith("fifo ")] == ["fifo abcXY"]
    finally:
        os.close(w)


def test_no_inotify_event_from_cryo_itself(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A file the process holds open and maps privately, watched by its own inotify:
    neither a checkpoint that lets it run nor a restart may make events on it.  Before:
    cryo's hash of the mapped bytes (engine/changed.py) opened and read the file,
    IN_OPEN, IN_ACCESS and IN_CLOSE_NOWRITE, which the running process read and a
    checkpoint refused (exit 9); and the restart's open of the file to map it queued
    IN_OPEN on the restored watch.  Now the bytes are read through the process's
    mappings, and the restored watches get their masks once every process is built
    (engine/fsnotify.py arm)."""
    v = _spawn(procs, exe, tmp_path, "inotifyquiet")
    checkpoint(v.pid, str(tmp_path / "img0"))
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_sigchld_of_a_stop_comes_once(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A SIGCHLD handler (SA_SIGINFO) that ran once for its child's stop (SIGSTOP)
    checkpointed with it runs no more after the restart.  Before: the restored child
    stopped again once let go, after its parent (task.stop_after_restore), and the
    handler ran a second time (CLD_STOPPED twice); now the child stops while cryo holds
    its parent, which the SIGCHLD is taken back from (engine/jobctl.py)."""
    v = _spawn(procs, exe, tmp_path, "sigchldstop")
    v = _tree_cycle(procs, v, tmp_path)
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
