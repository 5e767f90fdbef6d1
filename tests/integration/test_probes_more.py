"""More kernel-visible state found by probing (issue 9, docs/state-coverage.md: "found by
probing", session 7): victims/probemore.c sets one piece of state per mode (in its main
thread and, where the kernel keeps it per thread, in a second thread with another
value), is checkpointed, killed and restarted, and checks itself every round ("ok N" or
"FAIL what"); what cannot be restored is refused (exit 9 naming it), the target
untouched.  A mode whose kernel feature is missing here (or that needs a capability the
tests lack) reports "skip ..." and checks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_procstate import cycle, refused_untouched


def _spawn(procs: Procs, build: Any, tmp_path: Path, mode: str) -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("probemore"), str(out), mode, str(tmp_path)], out)
    if mode in ("shmfile", "devzero", "exitsig"):  # (its child is killed at the end too)
        procs.track(int(v.wait_line("child ").split()[1]))
    v.wait_ok_after(1)
    return v


# each of these came back right on the code they were added to (no defect found): they
# keep it so
RESTORED = {
    "rseq": "glibc's rseq area, length and signature registered again in each thread",
    "altstack": "sigaltstack address, size and flags (SS_AUTODISARM) per thread",
    "personality": "ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC, and PROT_READ maps r-x",
    "rlimits": "all 16 resource limits, each its own soft and hard value",
    "nofile": "RLIMIT_NOFILE (64, 128): the restart's own fds do not need more",
    "subreaper": "PR_SET_CHILD_SUBREAPER",
    "keepcaps": "PR_SET_KEEPCAPS in the main thread, cleared in the other",
    "thp": "PR_SET_THP_DISABLE",
    "ioflusher": "PR_SET_IO_FLUSHER (skips without CAP_SYS_RESOURCE)",
    "spec": "PR_SET_SPECULATION_CTRL (skips where the CPU has no prctl control)",
    "anonname": "PR_SET_VMA_ANON_NAME (skips without CONFIG_ANON_VMA_NAME)",
    "fsgs": "arch_prctl GS base per thread, read through %gs",
    "fpu": "MXCSR and x87 control word, each thread its own",
    "robust": "robust futex list of each thread",
    "tidaddr": "set_tid_address (PR_GET_TID_ADDRESS); a thread exiting after the restart"
               " is joined",
    "uclamp": "sched_setattr utilisation clamps (skips without CONFIG_UCLAMP_TASK)",
    "pipesz": "F_SETPIPE_SZ of two pipes",
    "signalfd": "a signalfd's mask, O_NONBLOCK, FD_CLOEXEC, and a signal read through it",
    "mremap": "a region moved by mremap, one split by mprotect, the brk and its bytes",
    "nocldwait": "SIGCHLD with SA_NOCLDWAIT: a child that exits leaves no zombie",
    "mm": "/proc/self/auxv, cmdline, environ, exe and the mm fields of /proc/self/stat",
    "kmsgw": "/dev/kmsg open for writing only (reopened: a writer keeps no position)",
    "sigwait": "threads in sigsuspend, ppoll, pselect6, epoll_pwait with masks of their own:"
               " each one's own mask blocked again after each return",
    "deadline": "a thread under SCHED_DEADLINE (1 ms every 20 ms), the other SCHED_OTHER",
    "truncmap": "a file mapped shared and truncated to its first page: that page's data, and"
                " SIGBUS past the end",
    "memfdnoexec": "a memfd made with MFD_NOEXEC_SEAL: F_SEAL_EXEC, its mode without x",
    "nestedepoll": "an epoll watching an epoll watching a pipe with data: both report",
    "manyvmas": "20000 one-page mappings, every other one read-only, their bytes",
    "avx": "ymm0-15 and x87 st0 of each thread, its own pattern, held across a raw syscall",
    "clocks": "periodic POSIX timers and timerfds on CLOCK_BOOTTIME, CLOCK_TAI and the alarm"
              " clocks (those this kernel allows): each still fires, clock and interval kept",
    "lockghost": "a deleted file with an flock on one description, an OFD lock on another",
    "uname26": "personality UNAME26: uname() says 2.6.x",
    "lowmap": "a mapping at 0x10000, just above mmap_min_addr, with its bytes",
    "appendghost": "a deleted file open O_APPEND: each write lands at its end",
    "rsequnreg": "a thread that unregistered glibc's rseq area is not registered again",
}


@pytest.mark.parametrize("mode", sorted(RESTORED))
def test_state_restored(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    """Each mode's state (RESTORED) is the same after the restart, checked by the
    process itself every round, in both threads where the kernel keeps it per thread."""
    v = _spawn(procs, build, tmp_path, mode)
    v = cycle(procs, v, tmp_path / "img")
    (tmp_path / "go").touch()  # (tidaddr: the thread exits, and is joined)
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    if mode == "tidaddr":
        v.wait_line("joined")


def test_restart_that_cannot_give_a_hard_limit_fails(procs: Procs, build: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    """A restart by a cryo whose own hard RLIMIT_NOFILE is below the image's (no
    CAP_SYS_RESOURCE to raise it) fails naming the limit, exit 10, no process left; a
    restart that can goes on.  Before: exit 0 with a warning, the process running with
    the lower limit."""
    import resource

    from cryo.errors import ExitCode

    v = _spawn(procs, build, tmp_path, "thp")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("this session's hard RLIMIT_NOFILE is too low")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", preexec_fn=lower)
    assert r.returncode == ExitCode.CONFLICT, r.stderr
    assert "RLIMIT_NOFILE" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    Victim(rr.pid, v.out).wait_ok_after(max(v.oks()) + 2)


def test_mapped_file_with_a_newline_in_its_name(procs: Procs, build: Any,
                                                tmp_path: Path) -> None:  # fmt: skip
    """A file whose name holds a newline and a backslash ("a\\nb\\\\012c"), mapped privately
    and open, comes back: its bytes through the mapping and the fd, the fd's link.
    Before: the name was taken as /proc/PID/maps writes it ("\\012" for the newline):
    the restart failed, PathMissing, after the checkpoint exited 0 (with this name's
    backslash, the checkpoint itself failed, FileNotFoundError)."""
    v = _spawn(procs, build, tmp_path, "nlname")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_fd_flags_and_an_offset_past_the_end(procs: Procs, build: Any, tmp_path: Path) -> None:
    """O_APPEND, O_NOATIME, O_DIRECT, O_NONBLOCK, O_SYNC and O_DSYNC on one file each,
    FD_CLOEXEC on every other one, an O_PATH fd on /dev/null, and an fd whose offset
    lies past the end of its file (as lseek allows) come back as they were.  Before: the
    restart refused the image (exit 12, FileChanged: "shorter than the offset") though
    the file had not changed since the checkpoint."""
    v = _spawn(procs, build, tmp_path, "fdflags")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_interval_timers_keep_their_time(procs: Procs, build: Any, tmp_path: Path) -> None:
    """ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF (1000-2000 s away, intervals of 3, 7
    and 9 s) keep their intervals exactly and their time left never grows, through two
    restarts.  Before: VIRTUAL and PROF came back a tick later each time (the kernel adds
    one when they are set), exit 0: 1000.004 s left before, 1000.008 s after."""
    v = _spawn(procs, build, tmp_path, "itimers")
    v = cycle(procs, v, tmp_path / "img")
    v = cycle(procs, v, tmp_path / "img2")
    assert not v.fails()


def test_futex_hash_of_its_own_size(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A private futex hash of 128 slots set with PR_FUTEX_HASH comes back with 128
    (PR_FUTEX_HASH_GET_SLOTS each round).  Before: the default the kernel gives a
    process at its first thread (16 here), exit 0."""
    from cryo.engine.show import describe

    v = _spawn(procs, build, tmp_path, "futexhash")
    if any(x.startswith("skip") for x in v.lines()):
        pytest.skip("no PR_FUTEX_HASH in this kernel")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    assert describe(str(tmp_path / "img"))["processes"][0]["task"]["futex_slots"] == 128


def _tree_cycle(procs: Procs, v: Victim, child: int, img: Path, rounds: int) -> Victim:
    """``v`` and its ``child`` checkpointed as a tree, killed, reaped, restarted; the
    restored ``v`` once it went ``rounds`` rounds on."""
    last = max(v.oks())
    checkpoint(v.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
    reap(v.pid)
    reap(child)
    rr = restart(str(img))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + rounds)
    return new


def test_child_with_another_exit_signal(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A child cloned with SIGUSR1 as its exit signal, exiting after the restart of the
    two: the parent gets SIGUSR1, not SIGCHLD, and reaps it (waitpid __WALL, status
    42)."""
    v = _spawn(procs, build, tmp_path, "exitsig")
    child = int(v.wait_line("child ").split()[1])
    v = _tree_cycle(procs, v, child, tmp_path / "img", 2)
    (tmp_path / "go").touch()
    v.wait_line("reaped")
    v.wait_ok_after(max(v.oks()) + 1)
    assert not v.fails()


def test_thread_of_its_own_personality(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A thread whose personality (kept per thread) is ADDR_NO_RANDOMIZE, its process's
    leader's 0: each its own after the restart.  Before: the thread came back with the
    leader's, exit 0."""
    from cryo.engine.show import describe

    v = _spawn(procs, build, tmp_path, "threadpers")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    threads = describe(str(tmp_path / "img"))["processes"][0]["threads"]
    assert [t.get("personality") for t in threads] == [None, "0x40000"]


def test_thread_of_its_own_cwd_and_umask(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A thread that unshared its cwd, root and umask (unshare(CLONE_FS), as Samba's
    thread pool gives each worker) keeps its own cwd (a subdirectory) and umask (077)
    after the restart, the leader its own (the directory, 022).  Before: restored
    sharing the leader's, exit 0 (later: refused, exit 9)."""
    from cryo.engine.show import describe

    v = _spawn(procs, build, tmp_path, "threadfs")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    threads = describe(str(tmp_path / "img"))["processes"][0]["threads"]
    assert [t.get("fs") for t in threads] == [None, {"cwd": f"{tmp_path}/sub", "umask": 0o77}]


def _restarted_then_go(procs: Procs, build: Any, tmp_path: Path, mode: str, line: str,
                       rounds: int) -> None:  # fmt: skip
    """``mode`` restarted once, then told to go on (the file go): it reports ``line``,
    goes ``rounds`` more rounds, and nothing failed."""
    v = cycle(procs, _spawn(procs, build, tmp_path, mode), tmp_path / "img")
    (tmp_path / "go").touch()
    v.wait_line(line)
    v.wait_ok_after(max(v.oks()) + rounds)
    assert not v.fails()


def test_thread_inside_a_handler_on_its_alternate_stack(procs: Procs, build: Any,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """A thread checkpointed inside a signal handler running on its alternate stack
    (SS_ONSTACK) is still there after the restart, then returns from it; its stack is
    armed again (flags 0), the program goes on."""
    _restarted_then_go(procs, build, tmp_path, "onaltstack", "handler returned", 2)


@pytest.mark.parametrize("mode,needle", [
    ("threadfiles", "an fd table of its own (unshare(CLONE_FILES))"),
    ("threaduts", "a uts namespace of its own")])  # fmt: skip
def test_thread_that_unshared_refused(procs: Procs, build: Any, tmp_path: Path, mode: str,
                                      needle: str) -> None:  # fmt: skip
    """A thread that unshared its fd table or its UTS namespace from its process is
    refused: exit 9 naming it, no image, the thread goes on with its own.  Before:
    restored sharing the leader's, exit 0 (the thread's own fd was gone; its hostname
    was the host's)."""
    v = _spawn(procs, build, tmp_path, mode)
    refused_untouched(v, tmp_path / "img", needle)


@pytest.mark.parametrize("mode,needle", [("iouring", "io_uring"), ("perf", "perf_event"),
                                         ("bpf", "bpf-map")])  # fmt: skip
def test_kernel_object_fds_refused(procs: Procs, build: Any, tmp_path: Path, mode: str,
                                   needle: str) -> None:  # fmt: skip
    """An io_uring, a perf_event and a bpf map fd are refused: exit 9 naming the fd's
    kind, no image, the process still holds its fd and goes on."""
    v = _spawn(procs, build, tmp_path, mode)
    refused_untouched(v, tmp_path / "img", needle)


def test_process_whose_main_thread_exited_refused(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """A process whose main thread called pthread_exit while another thread runs (its
    leader a zombie thread) is refused: exit 9 naming it, no image, the thread goes on.
    Before: exit 3, 'process N is a zombie' (as if it had ended)."""
    v = _spawn(procs, build, tmp_path, "leaderexit")
    refused_untouched(v, tmp_path / "img", "its main thread has exited")


def test_inotify_watch_of_a_deleted_file_refused(procs: Procs, build: Any,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """An inotify watch on a file deleted since (still open, so still there) is refused:
    exit 9 naming the deleted file, no image, the watch still reports each write.
    Before: the checkpoint exited 0 and the restart failed (ESTALE: the file made again
    is another inode, which the watch's handle does not open)."""
    v = _spawn(procs, build, tmp_path, "inotifyghost")
    refused_untouched(v, tmp_path / "img", "watched (deleted), a deleted file")


@pytest.mark.parametrize("mode,dev,needle", [
    ("tun", "/dev/net/tun", "/dev/net/tun (10:200) is not supported"),
    ("dmalatency", "/dev/cpu_dma_latency", "/dev/cpu_dma_latency (10:259) is not supported"),
    ("kmsg", "/dev/kmsg", "/dev/kmsg open for reading")])  # fmt: skip
def test_character_devices_with_state_refused(procs: Procs, build: Any, tmp_path: Path, mode: str,
                                              dev: str, needle: str) -> None:  # fmt: skip
    """A character device whose open file holds state of its own is refused: exit 9
    naming it, no image, the process goes on with its device.  Before: reopened by name,
    exit 0, and each came back without it: /dev/net/tun detached from its tap interface
    (TUNGETIFF EBADFD), /dev/cpu_dma_latency without its PM QoS request (a read gave
    2000000000, not 7), /dev/kmsg read from its first record again."""
    if not Path(dev).exists():
        pytest.skip(f"no {dev} here")
    v = _spawn(procs, build, tmp_path, mode)
    refused_untouched(v, tmp_path / "img", needle)


def test_o_tmpfile_file_can_still_be_linked(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A file made with open(DIR, O_TMPFILE) comes back as one: once the restart is done
    the program gives it a name with linkat and reads its data back there.  Before: the
    restart failed, ENOTDIR, after the checkpoint had exited 0 (its description was
    reopened with its O_TMPFILE flags, O_DIRECTORY among them); and a file made again
    by creat and unlink, as other deleted files are, cannot be linked (ENOENT)."""
    _restarted_then_go(procs, build, tmp_path, "tmpfile", "linked", 1)
    assert (tmp_path / "linked").read_bytes() == b"tmpfile data"


def _xattr_victim(procs: Procs, build: Any, tmp_path: Path, mode: str, kind: str) -> Victim:
    v = _spawn(procs, build, tmp_path, mode)
    if any(x.startswith("skip") for x in v.lines()):
        pytest.skip(f"no {kind} xattrs on this filesystem")
    return v


@pytest.mark.parametrize("mode", ["xattr", "xattrmapped"])
def test_deleted_file_keeps_its_user_xattrs(procs: Procs, build: Any, tmp_path: Path,
                                            mode: str) -> None:  # fmt: skip
    """A file deleted while open keeps its user extended attribute (fgetxattr each
    round); so does one also mapped shared (saved as its shared memory object: its data
    through the mapping and the fd too).  Before: made again without it (ENODATA), exit
    0."""
    v = _xattr_victim(procs, build, tmp_path, mode, "user")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_deleted_file_with_a_trusted_xattr_refused(procs: Procs, build: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A deleted file with a trusted.* extended attribute is refused: exit 9 naming it,
    no image, the process goes on (only user attributes and POSIX ACLs are made
    again)."""
    v = _xattr_victim(procs, build, tmp_path, "xattrtrusted", "trusted")
    refused_untouched(v, tmp_path / "img", "extended attribute trusted.cryo")


def test_mapped_memfd_with_write_seals(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A memfd mapped shared and writable, then sealed F_SEAL_FUTURE_WRITE | GROW |
    SHRINK: after the restart the mapping still writes (read() sees each round's value),
    the seals are the same and a new writable mapping is refused.  Before: the restart
    failed after the checkpoint exited 0, first sealing its object (EPERM: made without
    MFD_ALLOW_SEALING), then, sealed before the mappings were made, at the mapping's
    mmap (EPERM)."""
    v = _spawn(procs, build, tmp_path, "memfdseal")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_mapped_memfd_with_f_seal_write_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A memfd mapped shared (read-only, through a read-only open) and sealed
    F_SEAL_WRITE is refused: exit 9 naming it, no image, the process goes on.  Before:
    the checkpoint exited 0 and the restart failed (EPERM, then EBUSY: its mappings are
    made again through a writable file, which the seal forbids)."""
    v = _spawn(procs, build, tmp_path, "memfdwseal")
    refused_untouched(v, tmp_path / "img", "sealed F_SEAL_WRITE")


def test_deleted_file_keeps_its_preallocated_space(procs: Procs, build: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A deleted file with 1 MiB reserved by fallocate and 4 bytes written keeps its
    size, data and st_blocks.  Before: the reserved range came back as a hole (st_blocks
    8 instead of 2048 on ext4, whose SEEK_DATA skips unwritten extents), exit 0."""
    from cryo.engine.show import describe

    v = _spawn(procs, build, tmp_path, "fallocghost")
    if any(x.startswith("skip") for x in v.lines()):
        pytest.skip("no fallocate on this filesystem")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    files = describe(str(tmp_path / "img"))["processes"][0]["files"]
    assert any(f.get("preallocated") for f in files), files


def test_pty_slave_in_exclusive_mode(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A pseudo-terminal pair whose slave is in exclusive mode (TIOCEXCL) keeps it
    (TIOCGEXCL each round).  Before: the restart made it again without, exit 0."""
    v = _spawn(procs, build, tmp_path, "ptyexcl")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_deleted_exe_is_its_exe_again(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process whose binary was deleted while it runs (as a package upgrade leaves a
    daemon) has that binary as its exe after the restart: /proc/PID/exe names it
    "(deleted)" and reads its bytes.  Before: its exe was the restarting cryo's python,
    exit 0 (a re-exec of /proc/self/exe would have run python)."""
    import shutil

    exe = tmp_path / "probemore"
    shutil.copy(build("probemore"), exe)
    blob = exe.read_bytes()
    out = tmp_path / "out.txt"
    v = procs.spawn([str(exe), str(out), "thp", str(tmp_path)], out)
    v.wait_ok_after(1)
    exe.unlink()
    v = cycle(procs, v, tmp_path / "img")
    assert os.readlink(f"/proc/{v.pid}/exe") == f"{exe} (deleted)"
    with open(f"/proc/{v.pid}/exe", "rb") as f:
        assert f.read() == blob
    assert not v.fails()


def test_memfd_exe_is_its_exe_again(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process run from a memfd (fexecve, as runc runs itself): /proc/PID/exe is that
    memfd again after the restart.  Before: cryo's python, exit 0."""
    import sys

    out = tmp_path / "out.txt"
    code = ("import os, sys; fd = os.memfd_create('probemore', os.MFD_CLOEXEC);"
            f" os.write(fd, open({build('probemore')!r}, 'rb').read());"
            " os.execve(fd, sys.argv[1:], {})")
    v = procs.spawn([sys.executable, "-c", code, "probemore", str(out), "thp", str(tmp_path)],
                    out)  # fmt: skip
    v.wait_ok_after(1)
    assert os.readlink(f"/proc/{v.pid}/exe") == "/memfd:probemore (deleted)"
    v = cycle(procs, v, tmp_path / "img")
    assert os.readlink(f"/proc/{v.pid}/exe") == "/memfd:probemore (deleted)"
    assert not v.fails()


def test_robust_and_pi_mutexes_across_a_restart(procs: Procs, build: Any,
                                                tmp_path: Path) -> None:  # fmt: skip
    """A thread holding a robust mutex and a PI mutex at the checkpoint, another waiting
    on the PI one (FUTEX_LOCK_PI): after the restart the holder unlocks the PI one and
    exits holding the robust one; the waiter gets the PI one, then EOWNERDEAD (the
    restored thread's robust list and its tid in the futex words)."""
    v = _spawn(procs, build, tmp_path, "ownerdead")
    v = cycle(procs, v, tmp_path / "img")
    (tmp_path / "go").touch()
    v.wait_line("ownerdead")
    assert not v.fails()


def test_pty_whose_index_is_taken(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A pty pair whose old index is taken at restart: the restart fails, exit 10,
    naming /dev/pts/N, nothing made; with --new-pids (new_pids=True) it comes back under
    another index; once the index is free, under its own.  Before: another index with a
    log line only, exit 0 (the program's terminal renamed)."""
    import fcntl
    import struct

    from cryo.errors import RestoreConflict

    v = _spawn(procs, build, tmp_path, "ptyexcl")
    index = int(v.wait_line("pty ").split()[1].rsplit("/", 1)[1])
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    held: list[int] = []
    try:
        for _ in range(256):  # take the old index (the kernel gives the lowest free one)
            fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
            held.append(fd)
            got = struct.unpack("i", fcntl.ioctl(fd, 0x80045430, b"\0" * 4))[0]
            if got >= index:
                break
        if got != index:
            pytest.skip(f"/dev/pts/{index} was taken by another process meanwhile")
        with pytest.raises(RestoreConflict, match=f"/dev/pts/{index} is taken"):
            restart(str(tmp_path / "img"))
        assert not os.path.exists(f"/proc/{v.pid}")
        rr = restart(str(tmp_path / "img"), new_pids=True)
        procs.track(rr.pid)
        Victim(rr.pid, v.out).wait_ok_after(max(v.oks()) + 2)
        assert not Victim(rr.pid, v.out).fails()
    finally:
        for fd in held:
            os.close(fd)


@pytest.mark.parametrize("mode", ["shmfile", "devzero"])
def test_shm_file_mapped_by_parent_and_child(procs: Procs, build: Any, tmp_path: Path,
                                             mode: str) -> None:  # fmt: skip
    """A /dev/shm file, or /dev/zero, mapped shared by a process and its child: each
    writes its counter there and sees the other's move, after the restart of the two."""
    v = _spawn(procs, build, tmp_path, mode)
    shm = Path(v.wait_line("shm ").split()[1])
    child = int(v.wait_line("child ").split()[1])
    try:
        v = _tree_cycle(procs, v, child, tmp_path / "img", 4)
        assert not v.fails()
    finally:
        if mode == "shmfile":
            shm.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", ["cwdbind", "rootbind"])
def test_cwd_on_a_bind_mount(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    """A working directory, or a root (chroot), reached through a bind mount: the same
    directory, mount id (and getcwd) after the restart."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").touch()
    subprocess.run(["mount", "--bind", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    try:
        v = _spawn(procs, build, tmp_path, mode)
        v = cycle(procs, v, tmp_path / "img")
        assert not v.fails()
    finally:
        procs.cleanup()
        subprocess.run(["umount", str(tmp_path / "b")], check=True)


def test_a_thread_whose_own_cwd_is_gone_is_refused_before_anything_is_made(
        procs: Procs, build: Any, tmp_path: Path) -> None:  # fmt: skip
    """The restart checks a thread's own cwd (unshare(CLONE_FS)) up front, as it checks
    its process's: gone, the restart fails naming it before a process is made, and
    `cryo files` lists it.  Before: only the processes' cwds were checked; the thread's
    chdir failed half-way through the restore."""
    from cryo.engine.translate import PathMissing

    v = _spawn(procs, build, tmp_path, "threadfs")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    listed = run_cryo("show", "--files", str(tmp_path / "img"))
    assert f"{tmp_path}/sub" in listed.stdout, listed.stdout
    os.rename(tmp_path / "sub", tmp_path / "moved")
    with pytest.raises(PathMissing, match=f"working directory of thread .* {tmp_path}/sub"):
        restart(str(tmp_path / "img"))
    assert not os.path.exists(f"/proc/{v.pid}")
    os.rename(tmp_path / "moved", tmp_path / "sub")
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    Victim(rr.pid, v.out).wait_ok_after(max(v.oks()) + 2)


def _exe_unmapped(procs: Procs, tmp_path: Path, mode: str) -> Victim:
    """victims/exeunmap.c: a process that unmapped its executable (and, in mode
    "deleted", unlinked it), running on from a library."""
    src = str(Path(__file__).parent.parent / "victims" / "exeunmap.c")
    exe, lib = tmp_path / "exeunmap", tmp_path / "libexeunmap.so"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-DLAUNCHER", "-o", str(exe), src],
                   check=True)  # fmt: skip
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-Wl,-z,now", "-o",
                    str(lib), src], check=True)  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([str(exe), str(out), mode, str(lib)], out)
    v.wait_ok_after(1)
    assert v.lines()[0].startswith("unmapped ") and v.lines()[0] != "unmapped 0", v.lines()
    return v


def test_an_executable_no_mapping_maps(procs: Procs, tmp_path: Path) -> None:
    """A process that unmapped its executable (as packers and loaders do) keeps its exe
    through a restart: /proc/self/exe names it, and nothing maps it."""
    v = cycle(procs, _exe_unmapped(procs, tmp_path, "kept"), tmp_path / "img")
    assert not v.fails()


def test_a_deleted_executable_no_mapping_maps_is_refused(procs: Procs, tmp_path: Path) -> None:
    """Deleted as well, the executable has nothing to be made again from: refused (exit 9
    naming it), the target untouched; with --save-files its copy stands in.  Before: the
    restored process's exe was cryo's python, exit 0."""
    v = _exe_unmapped(procs, tmp_path, "deleted")
    refused_untouched(v, tmp_path / "img", "is deleted and no mapping maps it")
    checkpoint(v.pid, str(tmp_path / "img2"), signal_after=signal.SIGKILL, save_files=True)
    reap(v.pid)
    rr = restart(str(tmp_path / "img2"))
    procs.track(rr.pid)
    assert os.readlink(f"/proc/{rr.pid}/exe").endswith("-exeunmap (deleted)")


def _held_in_vfork(procs: Procs, build: Any, tmp_path: Path) -> tuple[Victim, int]:
    """victims/vforknovm.c: the parent held in state D by its CLONE_VFORK child."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("vforknovm"), str(out)], out)
    kid = int(v.wait_line("child ").split()[1])
    procs.track(kid)
    return v, kid


def _let_go_then_runs(v: Victim, kid: int) -> None:
    """Not traced, not stopped: the child killed, the parent's clone returns and it runs."""
    assert procs_status(v.pid)["TracerPid"] == "0"
    os.kill(kid, signal.SIGKILL)
    v.wait_line("back")
    v.wait_ok_after(2)


def procs_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_a_thread_held_in_the_kernel_is_refused_before_it_is_seized(
        procs: Procs, build: Any, tmp_path: Path) -> None:  # fmt: skip
    """A parent waiting in state D for its clone(CLONE_VFORK) child (no CLONE_VM: the
    vfork check by address space does not see it) is refused after 2 s, exit 9 naming
    where it waits, never seized.  Before: `cryo checkpoint` never returned, and the
    target stayed traced by cryo's worker after cryo was killed."""
    v, kid = _held_in_vfork(procs, build, tmp_path)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--tree", timeout=30)
    assert r.returncode == 9, r.stderr
    assert "is held in the kernel (state D" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    _let_go_then_runs(v, kid)


def test_the_freeze_bound_holds_while_a_thread_does_not_stop(
        procs: Procs, build: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Were such a thread seized (it entered the wait just after it was looked at), the
    watchdog still bounds the freeze: the seize's wait for its stop is interrupted, the
    checkpoint fails, and the worker that traced it ends, which lets it go.  Before: the
    watchdog was armed only once every thread had stopped, and its signal was put off
    for as long as the seize waited, which was for ever."""
    from cryo.engine import tree
    from cryo.engine.session import FreezeTimeout

    monkeypatch.setattr(tree, "_refuse_held_in_kernel", lambda pid, tid: None)
    v, kid = _held_in_vfork(procs, build, tmp_path)
    with pytest.raises(FreezeTimeout):
        checkpoint(v.pid, str(tmp_path / "img"), scope="tree", freeze_timeout=1.5)
    assert not (tmp_path / "img").exists()
    _let_go_then_runs(v, kid)
