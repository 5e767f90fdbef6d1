"""fd kinds restored since issue 9 (they were refused): pidfds, /proc files of processes
of the checkpoint, O_PATH fds on symbolic links, inotify and fanotify with their
watches, epoll sets watching files whose fds were closed, a hugetlb memfd, a memfd
executed with execveat.  Each victim (tests/victims/fdmore.c) checks itself every round
after checkpoint, kill and restart; the one-shot checks run once the test makes the file
"go" (after the restart), and report "done MODE"."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_filestate import _children, _files_shown, cycle, spawn


def declared(img: Path) -> None:
    """Every key the image has is one the schema declares (a mistyped one is refused)."""
    from cryo.image import schema
    from cryo.image.reader import Image

    image = Image(str(img))
    try:
        schema.check(image)
        assert schema.undeclared_keys(image) == []
    finally:
        image.close()


def go(v: Victim, work: Path, mode: str, touch: Any = None) -> None:
    if touch is not None:
        touch()
    (work / "go").write_text("")
    line = v.wait_for(lambda ls: any(x.startswith(("done", "FAIL")) for x in ls), timeout=15)
    assert f"done {mode}" in line, [x for x in line if x.startswith("FAIL")][-5:]
    assert not v.fails()


def test_pidfd_of_a_child_and_of_itself(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A pidfd of its child (readable once it exits, waitid gives its status) and one
    of itself with PIDFD_NONBLOCK name the restored processes; a second child holds the
    very same descriptions again."""
    from cryo.linux import libc

    v = spawn(procs, build, tmp_path, "fdmore", "pidfd")
    kid, holder = sorted(_children(v.pid))
    procs.track(kid)  # (restored with the same pids; killed after the test whatever happens)
    procs.track(holder)
    v = cycle(procs, v, tmp_path / "img", scope="tree")
    declared(tmp_path / "img")
    assert sorted(_children(v.pid)) == [kid, holder]
    assert not v.fails()
    shown = {f.get("pidfd_of") for f in _files_shown(tmp_path / "img")}
    assert {kid, v.pid} <= shown, shown
    pidfds = [int(n) for n in os.listdir(f"/proc/{v.pid}/fd")
              if "Pid:" in Path(f"/proc/{v.pid}/fdinfo/{n}").read_text()]
    assert len(pidfds) == 2
    for fd in pidfds:  # (one pidfd_open each, as before)
        assert libc.kcmp_file(v.pid, fd, holder, fd), fd
    go(v, tmp_path / "work", "pidfd")


def test_pidfd_of_a_process_outside(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A pidfd of a process outside the checkpoint: reopened on that process while it
    is the same; once it has exited the restart fails, naming it, and makes nothing."""
    import subprocess
    import sys

    other = subprocess.Popen(["sleep", "300"], close_fds=True)
    procs.track(other.pid)
    code = (f"import os, sys, time\nfd = os.pidfd_open({other.pid})\n"
            "open(sys.argv[1], 'a').write(f'ready {os.getpid()}\\n')\n"
            "i = 0\nwhile True:\n"
            "    print(f'ok {i}', file=open(sys.argv[1], 'a'), flush=True)\n"
            "    i += 1\n    time.sleep(0.02)\n")  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", code, str(out)], out)
    v.wait_ok_after(1)
    v2 = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    fds = [int(n) for n in os.listdir(f"/proc/{v2.pid}/fd")]
    infos = [Path(f"/proc/{v2.pid}/fdinfo/{n}").read_text() for n in fds]
    assert any(f"Pid:\t{other.pid}\n" in i for i in infos), infos
    os.kill(v2.pid, signal.SIGKILL)
    reap(v2.pid)
    other.kill()
    other.wait()
    r = run_cryo("restart", "-D", str(tmp_path / "img"))
    assert r.returncode == 1 and "no longer the process it was" in r.stderr, r.stderr


def test_proc_files_of_the_tree(procs: Procs, build: Any, tmp_path: Path) -> None:
    """/proc/self/status (with its offset), the directory /proc/self and the child's
    /proc/PID/stat are the restored processes' files."""
    v = spawn(procs, build, tmp_path, "fdmore", "proc")
    (kid,) = _children(v.pid)
    procs.track(kid)
    v = cycle(procs, v, tmp_path / "img", scope="tree")
    declared(tmp_path / "img")
    assert _children(v.pid) == [kid]
    assert not v.fails()
    assert {f.get("proc_of") for f in _files_shown(tmp_path / "img")} >= {v.pid, kid}


def test_proc_files_follow_new_pids(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A second copy restarted while the first runs gets other pids: its /proc files
    are its own processes' (they would name the first copy's if taken by the old pid)."""
    from cryo.engine.restore import restart

    v = spawn(procs, build, tmp_path, "fdmore", "proc")
    (kid,) = _children(v.pid)
    procs.track(kid)
    first = cycle(procs, v, tmp_path / "img", scope="tree")
    declared(tmp_path / "img")
    assert _children(first.pid) == [kid]
    rr = restart(str(tmp_path / "img"), allow_duplicate=True, new_pids=True)
    procs.track(rr.pid)
    procs.pids.extend(_children(rr.pid))
    assert rr.pid != first.pid
    second = Victim(rr.pid, v.out)
    second.wait_ok_after(max(second.oks()) + 10)
    assert not second.fails()


def test_opath_symlink(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = spawn(procs, build, tmp_path, "fdmore", "link")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    assert "link" in {f["kind"] for f in _files_shown(tmp_path / "img")}


def test_inotify_watches_fire_after_restart(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Watches with their wds (1 and 3, wd 2 removed before): events for a file created
    and a file written after the restart come with the right wd."""
    v = spawn(procs, build, tmp_path, "fdmore", "inotify")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    (watch,) = [f["watches"] for f in _files_shown(tmp_path / "img") if f["kind"] == "inotify"]
    assert len(watch) == 2 and watch[0].startswith("wd 1 ") and watch[1].startswith("wd 3 ")
    work = tmp_path / "work"

    def touch() -> None:
        (work / "new").write_text("")
        with open(work / "f", "a") as f:
            f.write("more")

    go(v, work, "inotify", touch)


def test_inotify_with_events_queued_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Events not yet read cannot be queued again: refused, the target untouched."""
    v = spawn(procs, build, tmp_path, "fdmore", "inotify")
    os.kill(v.pid, signal.SIGSTOP)  # it reads its events every round
    try:
        (tmp_path / "work" / "new").write_text("")
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 9, r.stderr
        assert "events not yet read" in r.stderr, r.stderr
        assert not (tmp_path / "img").exists()
    finally:
        os.kill(v.pid, signal.SIGCONT)


def test_fanotify_mark_fires_after_restart(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = spawn(procs, build, tmp_path, "fdmore", "fanotify")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    work = tmp_path / "work"

    def touch() -> None:
        (work / "quiet").write_text("x")  # ignored: no event
        (work / "f2").write_text("x")

    go(v, work, "fanotify", touch)


def test_epoll_watching_a_closed_fd(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The pipe added as an fd since closed (another file has that number now) still
    reports with its data; so does the eventfd now at that number."""
    v = spawn(procs, build, tmp_path, "fdmore", "epoll")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    (ep,) = [f for f in _files_shown(tmp_path / "img") if f["kind"] == "epoll"]
    assert len(ep["hidden_watches"]) == 1 and "pipe:" in ep["hidden_watches"][0], ep


def test_execveat_of_a_restored_memfd(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = spawn(procs, build, tmp_path, "fdmore", "execveat")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    go(v, tmp_path / "work", "execveat")
    assert v.wait_line("exec ok")


def test_hugetlb_memfd_fd_stays_hugetlb(procs: Procs, build: Any, tmp_path: Path,
                                        hugepages: Any) -> None:  # fmt: skip
    """A hugetlb memfd held by an fd only: back on hugetlbfs with its bytes and offset."""
    hugepages(8)
    v = spawn(procs, build, tmp_path, "fdmore", "hugememfd")
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()


THREAD_PIDFD = r"""
import os, select, signal, sys, threading, time
out = sys.argv[1]
def report(line):
    with open(out, "a") as f:
        f.write(line + "\n")
tid = [0]
stop = threading.Event()
def work():
    while not stop.wait(0.01):
        tid[0] = threading.get_native_id()  # its tid now (a restored thread has another)
t = threading.Thread(target=work); t.start()
while not tid[0]:
    time.sleep(0.01)
fd = os.pidfd_open(tid[0], os.O_EXCL)  # PIDFD_THREAD
leader = os.pidfd_open(os.getpid())
report(f"ready {os.getpid()}")
i = 0
while True:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        info = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    bad = []
    if int(info["Pid"]) != tid[0]:
        bad.append(f"pidfd of {info['Pid']}, the thread is {tid[0]}")
    if not int(info["flags"], 8) & os.O_EXCL:
        bad.append(f"not a thread pidfd: flags {info['flags']}")
    if select.select([fd], [], [], 0)[0]:
        bad.append("the thread's pidfd is readable: the thread ended?")
    signal.pidfd_send_signal(fd, 0)
    with open(f"/proc/self/fdinfo/{leader}") as f:
        if f"Pid:\t{os.getpid()}" not in f.read():
            bad.append("leader pidfd")
    report(f"FAIL {bad}" if bad else f"ok {i}")
    i += 1
    time.sleep(0.02)
"""


def test_pidfd_of_a_thread(procs: Procs, tmp_path: Path) -> None:
    """A pidfd of a thread other than the leader (PIDFD_THREAD) is given back on the
    restored thread's new tid, still a thread pidfd, at its fd number."""
    import sys

    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", THREAD_PIDFD, str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    declared(tmp_path / "img")
    assert not v.fails()
    tids = [int(t) for t in os.listdir(f"/proc/{v.pid}/task") if int(t) != v.pid]
    pids = []
    for n in os.listdir(f"/proc/{v.pid}/fd"):
        if os.readlink(f"/proc/{v.pid}/fd/{n}") == "anon_inode:[pidfd]":
            with open(f"/proc/{v.pid}/fdinfo/{n}") as f:
                pids += [int(x.split()[1]) for x in f if x.startswith("Pid:")]
    assert sorted(pids) == sorted([v.pid, *tids]), (pids, tids)


def test_pidfd_of_another_process_s_thread_refused(procs: Procs, tmp_path: Path) -> None:
    """A thread's pidfd held by another process of the tree stays refused by name (the
    holder may be built before the thread exists)."""
    import sys

    code = ("import os, sys, threading, time\nev = threading.Event()\n"
            "t = threading.Thread(target=ev.wait); t.start()\n"
            "fd = os.pidfd_open(t.native_id, os.O_EXCL)\nme = os.getpid()\n"
            "if os.fork() == 0:  # holds the pidfd of its parent's thread\n"
            "    while os.getppid() == me:\n        time.sleep(0.05)\n    os._exit(0)\n"
            "os.close(fd)\n"
            "open(sys.argv[1], 'a').write(f'ready {os.getpid()}\\n')\n"
            "i = 0\nwhile True:\n"
            "    print(f'ok {i}', file=open(sys.argv[1], 'a'), flush=True)\n"
            "    i += 1\n    time.sleep(0.02)\n")  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", code, str(out)], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 9, r.stderr
    assert "pidfd of thread" in r.stderr and "held by another process" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    Victim(v.pid, out).wait_ok_after(max(v.oks()) + 2)


def test_inotify_watch_of_a_file_replaced_fails_the_restart(procs: Procs, build: Any,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """The file a watch watched was replaced by another of that name: watching the new
    one would be wrong; the restart fails, naming it, and makes nothing."""
    v = spawn(procs, build, tmp_path, "fdmore", "inotify")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    f = tmp_path / "work" / "f"
    f.unlink()
    f.write_text("")
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)  # (were it restarted after all)
    assert r.returncode == 1, r.stderr
    assert "inotify watch 3: the file it watched" in r.stderr, r.stderr
    assert "no longer exists" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")


SPECIAL_FS = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
out = open(sys.argv[1], "a", buffering=1)
kind, name = sys.argv[2], sys.argv[3].encode()
if kind == "mqueue":
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.restype = ctypes.c_int
    fd = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)
    assert fd >= 0, ctypes.get_errno()
    assert rt.mq_send(fd, b"hello", 5, 3) == 0
else:
    fd = libc.syscall(447, 0)  # memfd_secret
    assert fd >= 0, ctypes.get_errno()
    os.ftruncate(fd, 4096)
    if kind == "secretmap":  # mapped, the fd closed: only the mapping holds it
        libc.mmap.restype = ctypes.c_void_p  # (Python's mmap would keep a dup of the fd)
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        addr = libc.mmap(None, 4096, 3, 1, fd, 0)  # PROT_READ|PROT_WRITE, MAP_SHARED
        ctypes.memmove(addr, b"secret", 6)
        os.close(fd)
        fd = os.dup(0)
out.write(f"ready {os.getpid()}\n")
n, size = 0, os.fstat(fd).st_size
while True:
    st = os.fstat(fd)  # (a queue's size: what its messages take)
    out.write(f"ok {n}\n" if st.st_size == size else f"FAIL size {st.st_size}\n")
    n += 1
    time.sleep(0.05)
"""


@pytest.mark.parametrize("kind", ["mqueue", "secretmem", "secretmap"])
def test_files_of_the_kernel_s_own_filesystems_refused(procs: Procs, tmp_path: Path,
                                                       kind: str) -> None:  # fmt: skip
    """A POSIX message queue fd and a memfd_secret fd are refused by name, the target
    untouched; so is a mapping of secret memory whose fd was closed.  A queue was saved
    as a plain file named /NAME: the checkpoint exited 0, the restart looked for /NAME
    on the root filesystem, and its messages were not in the image; secret memory no
    other process can read (the mapping failed the checkpoint with ENXIO, exit 1)."""
    import sys

    name = f"/cryo-test-{os.getpid()}"
    out = tmp_path / "out.txt"
    try:
        v = procs.spawn([sys.executable, "-c", SPECIAL_FS, str(out), kind, name], out)
        v.wait_ok_after(1)
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
        assert r.returncode == 9, r.stderr
        assert {"mqueue": "POSIX message queue", "secretmem": "memfd_secret",
                "secretmap": "mapping"}[kind] in r.stderr  # fmt: skip
        assert not (tmp_path / "img").exists()
        v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails()
    finally:
        if kind == "mqueue":
            import ctypes

            ctypes.CDLL("librt.so.1").mq_unlink(name.encode())
