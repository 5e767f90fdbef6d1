"""File state beyond the fd table (issue 9, "Files"): locks, signal owners, deleted
files, times, changed files, memfd, special fds.  Each victim checks itself after
checkpoint, kill and restart and reports "ok N" or "FAIL what"; what the kernel offers no
way to restore is refused at checkpoint (exit 9) with the target untouched."""

from __future__ import annotations

import fcntl
import mmap
import os
import signal
import struct
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, counter_of_its_own, reap, run_cryo

F_OFD_SETLK = 37


def cycle(procs: Procs, v: Victim, img: Path, scope: str = "process") -> Victim:
    """Checkpoint ``v`` (killed once the image is written), reap it, restart it; the
    restored victim must pass two more rounds of its own checks."""
    kids = _children(v.pid)
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL, scope=scope)
    reap(v.pid)
    for k in kids:
        reap(k)
    # counted once the target is dead: rounds it ran between a count taken earlier and
    # the freeze would pass for the restored process's
    last = max(v.oks(), default=-1)
    rr = restart(str(img))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 2)
    return new


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _files_shown(img: Path) -> list[dict[str, Any]]:
    """The open files `cryo show` lists for the image's first process."""
    from cryo.engine.show import describe

    return list(describe(str(img))["processes"][0]["files"])


def untouched(v: Victim) -> None:
    """The target still runs, untraced, and keeps passing its own checks."""
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0" in status, status
    v.wait_ok_after(max(v.oks(), default=-1) + 2)


def refused(v: Victim, tmp_path: Path, *words: str) -> None:
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 9, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    untouched(v)


def spawn(procs: Procs, build: Any, tmp_path: Path, victim: str, *args: str) -> Victim:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = tmp_path / "out.txt"
    v = procs.spawn([build(victim), str(out), *args, str(work)], out)
    v.wait_ok_after(1)
    return v


# -- locks -----------------------------------------------------------------------------


def test_locks_held_again(procs: Procs, build: Any, tmp_path: Path) -> None:
    """POSIX record locks, an OFD lock, flocks and a lease are the restored process's."""
    v = spawn(procs, build, tmp_path, "locks", "held")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    shown = [f.get("locks") for f in _files_shown(tmp_path / "img")]
    assert [f"posix WRITE 5-14 (pid {v.pid})", f"posix READ 1000-EOF (pid {v.pid})"] in shown
    assert ["lease WRITE"] in shown and ["flock WRITE"] in shown, shown
    text = run_cryo("show", str(tmp_path / "img")).stdout  # the text output names them too
    assert f"locks=[posix WRITE 5-14 (pid {v.pid}), posix READ 1000-EOF" in text, text
    assert "locks=[lease WRITE]" in text and "locks=[flock WRITE]" in text, text
    work = tmp_path / "work"
    # seen from another process: the POSIX lock is the restored process's
    fd = os.open(work / "a.dat", os.O_RDWR)
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("<hh4xqqi4x", fcntl.F_WRLCK, 0, 5, 1, 0))
        l_type, _, _, _, l_pid = struct.unpack("<hh4xqqi4x", got)
        assert (l_type, l_pid) == (fcntl.F_WRLCK, v.pid)
    finally:
        os.close(fd)
    fd = os.open(work / "c.dat", os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_posix_locks_of_a_tree(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A parent and its child each hold their own POSIX lock through one description."""
    v = spawn(procs, build, tmp_path, "locks", "tree")
    v = cycle(procs, v, tmp_path / "img", scope="tree")
    (kid,) = _children(v.pid)
    procs.track(kid)
    assert not v.fails()
    fd = os.open(tmp_path / "work" / "t.dat", os.O_RDWR)
    try:
        for start, owner in ((0, v.pid), (10, kid)):
            got = fcntl.fcntl(fd, fcntl.F_GETLK,
                              struct.pack("<hh4xqqi4x", fcntl.F_WRLCK, 0, start, 1, 0))
            assert struct.unpack("<hh4xqqi4x", got)[4] == owner
    finally:
        os.close(fd)


def _proc_locks(path: Path) -> list[list[str]]:
    """The lines of /proc/locks on ``path``'s inode, split."""
    ino = os.stat(path).st_ino
    return [w[1:] for line in Path("/proc/locks").read_text().splitlines()
            if (w := line.split()) and len(w) > 5 and w[5].endswith(f":{ino}")]  # fmt: skip


@pytest.mark.parametrize("kind", ["flock", "ofd"])
def test_lock_through_mapping_held_again(procs: Procs, build: Any, tmp_path: Path,
                                         kind: str) -> None:  # fmt: skip
    """A lock held only through a mapping (flock or OFD lock taken, file mapped, fd
    closed: a JVM's): held again by the restored mapping, which goes on writing."""
    v = spawn(procs, build, tmp_path, "locks", "mapped" if kind == "flock" else "mapped-ofd")
    work = tmp_path / "work"
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    from cryo.engine.show import describe

    maps = {m["path"]: m for m in describe(str(tmp_path / "img"))["processes"][0]["mappings"]}
    if kind == "flock":  # /proc/locks: the restored process's flock
        assert maps[str(work / "m.dat")].get("locks") == ["flock WRITE"], maps
        assert [w[:4] for w in _proc_locks(work / "m.dat")] == [
            ["FLOCK", "ADVISORY", "WRITE", str(v.pid)]]
    else:
        assert maps[str(work / "m.dat")].get("locks") == ["ofd WRITE"], maps
        assert [w[:4] for w in _proc_locks(work / "p.dat")] == [
            ["OFDLCK", "ADVISORY", "WRITE", "-1"]]
    # no fd of the restored process is on the files: the mapping holds the lock
    assert not any(os.path.realpath(f"/proc/{v.pid}/fd/{n}").startswith(str(work))
                   for n in os.listdir(f"/proc/{v.pid}/fd"))  # fmt: skip
    fd = os.open(work / "m.dat", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            if kind == "flock":
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("<hh4xqqi4x", fcntl.F_RDLCK, 0, 50, 1, 0))
        os.kill(v.pid, signal.SIGKILL)  # the lock was the restored process's: it goes with it
        reap(v.pid)
        if kind == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("<hh4xqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    finally:
        os.close(fd)
    assert not _proc_locks(work / "p.dat")


def test_lock_through_mapping_of_two_processes_refused(procs: Procs, build: Any,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """The file is mapped by a process outside the checkpoint too: which mapping holds the
    lock cannot be told, so it is refused."""
    v = spawn(procs, build, tmp_path, "locks", "mapped")
    with open(tmp_path / "work" / "m.dat", "rb") as f:
        other = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
    try:
        refused(v, tmp_path, "FLOCK WRITE", "m.dat", "held through a mapping only",
                "outside the checkpoint maps the file")
    finally:
        other.close()


def test_signal_owner_and_async(procs: Procs, build: Any, tmp_path: Path) -> None:
    """F_SETOWN (process and thread), F_SETSIG and O_ASYNC: the signal still comes."""
    v = spawn(procs, build, tmp_path, "locks", "owner")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_lock_conflict_at_restart_is_an_error(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A lock someone else took meanwhile: the restart fails and says why."""
    v = spawn(procs, build, tmp_path, "locks", "held")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    fd = os.open(tmp_path / "work" / "c.dat", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        r = run_cryo("restart", "-D", str(tmp_path / "img"))
        assert r.returncode == 1, r.stderr
        assert "another process holds a conflicting lock" in r.stderr, r.stderr
    finally:
        os.close(fd)


# -- deleted files ---------------------------------------------------------------------


def test_deleted_file_kept_whole(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Holes, owner, mode and times of a deleted file; two descriptions of one deleted
    file, and a child holding a third, still share one inode."""
    v = spawn(procs, build, tmp_path, "ghost", "ghost")
    v = cycle(procs, v, tmp_path / "img", scope="tree")
    procs.pids.extend(_children(v.pid))
    assert not v.fails()
    assert not list((tmp_path / "work").iterdir()), "the recreated files are unlinked again"


def test_deleted_file_larger_than_1_gib(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A 3 GiB sparse deleted file: saved by its data ranges, sparse again."""
    v = spawn(procs, build, tmp_path, "ghost", "big")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    assert sum(f.stat().st_size for f in (tmp_path / "img").iterdir()) < 64 << 20


def test_deleted_file_open_and_mapped_is_one_file(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """Written through the mapping, read through the fd: the same file after restart."""
    v = spawn(procs, build, tmp_path, "ghost", "mapped")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_deleted_fifo_with_data(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = spawn(procs, build, tmp_path, "ghost", "fifo")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    assert not list((tmp_path / "work").iterdir())


def test_memfd_comes_back_as_memfd(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = spawn(procs, build, tmp_path, "ghost", "memfd")
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    assert {f.get("memfd") for f in _files_shown(tmp_path / "img")} >= {"cryo-test", "plain"}


@pytest.mark.parametrize("mode", ["dir", "cwd", "cwd-alone", "device"])
def test_deleted_directory_and_device_made_again(procs: Procs, build: Any, tmp_path: Path,
                                                 mode: str) -> None:  # fmt: skip
    """A directory deleted while open or as the cwd, a device node deleted while open:
    made again where they were, with their mode, owner and times, and removed: the
    process sees an unlinked node again (nlink 0, "... (deleted)", getcwd ENOENT), one
    inode for its descriptions and its cwd; the directory they were in keeps its mtime."""
    v = spawn(procs, build, tmp_path, "ghost", mode)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    gone = str(tmp_path / "work" / "gone")
    links = [os.readlink(f"/proc/{v.pid}/fd/{n}") for n in os.listdir(f"/proc/{v.pid}/fd")]
    want = {"dir": 2, "cwd": 2, "cwd-alone": 0, "device": 2}[mode]
    assert links.count(f"{gone} (deleted)") == want, links
    if mode.startswith("cwd"):
        assert os.readlink(f"/proc/{v.pid}/cwd") == f"{gone} (deleted)"
    assert not os.path.lexists(gone) and os.listdir(tmp_path / "work") == []
    shown = run_cryo("show", str(tmp_path / "img")).stdout
    if mode.startswith("cwd"):
        assert f"{gone} (deleted)" in shown, shown
    if mode == "device":
        assert "rdev=1:3" in shown, shown


# -- files changed since the checkpoint ------------------------------------------------


def test_file_shorter_than_its_offset_refused_at_restart(procs: Procs, build: Any,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """data.txt (offset 1234 and on) truncated after the checkpoint: exit 12, nothing
    created; the restart option ignore_changed_files restarts it anyway."""
    from cryo.engine.changed import FileChanged
    from cryo.engine.session import Restart

    v = spawn(procs, build, tmp_path, "files")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    os.truncate(tmp_path / "work" / "data.txt", 100)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)  # (were it restarted after all)
    assert r.returncode == 12, r.stderr
    assert "data.txt is 100 bytes now, shorter than the offset" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")
    with pytest.raises(FileChanged):
        restart(str(tmp_path / "img"))
    session = Restart(str(tmp_path / "img"))
    session.options["ignore_changed"] = True
    rr = session.run()
    procs.track(rr.pid)
    assert os.path.exists(f"/proc/{rr.pid}")


# -- special fds -----------------------------------------------------------------------


READDIR = r"""
import os, sys, time
d = sys.argv[2]
for i in range(40):
    open(os.path.join(d, f"entry-{i:02}"), "w").close()
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
if libc.syscall(217, fd, buf, 256) <= 0:  # getdents64: the first few entries only
    sys.exit(3)
pos = os.lseek(fd, 0, os.SEEK_CUR)
def rest():  # the names a readdir from here still gives (on a duplicate: the offset stays)
    dup = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY)
    os.lseek(dup, pos, os.SEEK_SET)
    names = []
    while (n := libc.syscall(217, dup, buf, 256)) > 0:
        off = 0
        while off < n:
            reclen = int.from_bytes(buf.raw[off + 16:off + 18], "little")
            names.append(buf.raw[off + 19:off + reclen].split(b"\0")[0])
            off += reclen
    os.close(dup)
    return sorted(names)
want = rest()
out = open(sys.argv[1], "a", buffering=1)
out.write(f"ready {os.getpid()}\n")
i = 0
while True:
    now = os.lseek(fd, 0, os.SEEK_CUR)
    out.write(f"ok {i}\n" if now == pos and rest() == want else f"FAIL offset {now}, not {pos}\n")
    i += 1
    time.sleep(0.02)
"""


def test_directory_offset_kept(procs: Procs, tmp_path: Path) -> None:
    """A directory read part way (getdents64) keeps its offset: the readdir goes on
    where it was, giving the entries it had not given yet."""
    import sys

    out = tmp_path / "out.txt"
    d = tmp_path / "d"
    d.mkdir()
    v = procs.spawn([sys.executable, "-c", READDIR, str(out), str(d)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


@pytest.mark.parametrize("mode", ["ns", "opath", "chroot", "link", "proc", "pidfd", "inotify",
                                  "epoll"])  # fmt: skip
def test_special_fds_survive(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    """Namespace fds (the same namespaces), an O_PATH fd on a directory, a chrooted
    process (its root and its cwd inside it); an O_PATH fd on a symbolic link, its own
    /proc/self/status, a pidfd of itself, an inotify watch, an epoll watching a pipe
    through a closed fd (they were refused; tests/integration/test_fdkinds.py checks
    what each holds after the restart)."""
    v = spawn(procs, build, tmp_path, "special", mode)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


@pytest.mark.parametrize("names", [
    ("r.txt", "w.txt", "f"),
    ("m.txt",),
])  # fmt: skip
def test_times_of_files_unchanged(procs: Procs, build: Any, tmp_path: Path,
                                  names: tuple[str, ...]) -> None:  # fmt: skip
    """Checkpoint and restart neither read nor write the program's files: atime and
    mtime stay (atime older than mtime, so that any read would move it): files open
    read-only and read-write, a FIFO with data in flight, a mapped file."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("r.txt", "w.txt", "m.txt"):
        (work / name).write_bytes(b"x" * 8192)
    os.mkfifo(work / "f")
    v = spawn(procs, build, tmp_path, "special", "times")
    for name in names:
        os.utime(work / name, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    before = {n: (os.stat(work / n).st_atime_ns, os.stat(work / n).st_mtime_ns) for n in names}
    v = cycle(procs, v, tmp_path / "img")
    after = {n: (os.stat(work / n).st_atime_ns, os.stat(work / n).st_mtime_ns) for n in names}
    assert after == before


def test_sqlite_wal_keeps_its_lock(procs: Procs, tmp_path: Path) -> None:
    """SQLite in WAL mode with an exclusive lock: after a restart, another connection
    still finds the database locked, and the program goes on writing it."""
    import sqlite3
    import sys

    from tests.conftest import VICTIMS

    out, db = tmp_path / "out.txt", tmp_path / "db.sqlite"
    v = procs.spawn([sys.executable, str(VICTIMS / "sqlitewal.py"), str(out), str(db)], out)
    v.wait_ok_after(2)

    def locked() -> bool:
        con = sqlite3.connect(db, timeout=0)
        try:
            con.execute("SELECT count(*) FROM t").fetchone()
            return False
        except sqlite3.OperationalError as err:
            return "locked" in str(err)
        finally:
            con.close()

    assert locked()
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    assert locked(), "the restored program lost its lock on the database"


def test_mapped_file_with_other_bytes_refused_at_restart(procs: Procs, build: Any,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """m.txt, mapped privately, rewritten after the checkpoint with other bytes of the
    same size and its mtime put back: exit 12 (its pages would be read from the new
    bytes), nothing created; --ignore-changed-files restarts it; with --save-files the
    copy in the image is used."""
    from cryo.engine.show import describe

    work = tmp_path / "work"
    work.mkdir()
    for name in ("r.txt", "w.txt", "m.txt"):
        (work / name).write_bytes(b"x" * 8192)
    os.mkfifo(work / "f")
    v = spawn(procs, build, tmp_path, "special", "times")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    checkpoint_saved = tmp_path / "saved"
    reap(v.pid)
    mapped = [m for m in describe(str(tmp_path / "img"))["processes"][0]["mapped_files"]
              if m["path"].endswith("/m.txt")]
    assert mapped == [{"path": str(work / "m.txt"), "size": 8192, "hashed": 4096}], mapped
    st = (work / "m.txt").stat()
    with open(work / "m.txt", "r+b") as f:
        f.seek(100)
        f.write(b"y")
    os.utime(work / "m.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)  # (were it restarted after all)
    assert r.returncode == 12, r.stderr
    assert "m.txt changed since the checkpoint (the bytes it maps differ (same size and" \
        " mtime))" in r.stderr, r.stderr  # fmt: skip
    assert not os.path.exists(f"/proc/{v.pid}")
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--ignore-changed-files")
    assert r.returncode == 0, r.stderr
    os.kill(v.pid, signal.SIGKILL)
    reap(v.pid)
    # a checkpoint that saved the file: the copy is used (the original differs)
    with open(work / "m.txt", "r+b") as f:
        f.seek(100)
        f.write(b"x")
    os.utime(work / "m.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "out.txt"
    out.unlink()
    v = spawn(procs, build, tmp_path, "special", "times")
    checkpoint(v.pid, str(checkpoint_saved), signal_after=signal.SIGKILL, save_files=True)
    reap(v.pid)
    with open(work / "m.txt", "r+b") as f:
        f.seek(100)
        f.write(b"y")
    os.utime(work / "m.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    last = max(v.oks(), default=-1)
    rr = restart(str(checkpoint_saved))
    procs.track(rr.pid)
    Victim(rr.pid, v.out).wait_ok_after(last + 2)


def test_executable_touched_since_the_checkpoint_restarts(procs: Procs, build: Any,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """A privately mapped file whose mtime changed but whose bytes did not (touch, a
    package reinstalled with the same bytes) is the file the image assumed: the restart
    goes on (before: exit 1, "changed since the checkpoint (size 16504 -> 16504)")."""
    exe, v = counter_of_its_own(procs, build, tmp_path)
    last = max(v.oks())
    os.utime(exe, ns=(exe.stat().st_atime_ns, exe.stat().st_mtime_ns + 10**9))
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)
    assert r.returncode == 0, r.stderr
    v.wait_ok_after(last + 2)


SHARED_MAP = """
import mmap, os, sys, time
out = open(sys.argv[1], "a", buffering=1)
fd = os.open(sys.argv[2], os.O_RDWR)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
m[0:5] = b"hello"
i = 0
while True:
    print("ok", i, file=out) if m[0:5] in (b"hello", b"HELLO") else print("FAIL", m[0:5], file=out)
    i += 1
    time.sleep(0.02)
"""


def test_shared_mapping_of_a_changed_file_is_exit_12(procs: Procs, tmp_path: Path) -> None:
    """A file mapped shared holds its data itself, not the image: one modified since the
    checkpoint (same size, new mtime) would come back as the process never saw it, so
    the restart refuses, exit 12 (before: exit 1, naming --save-files, which saves no
    shared mapping), nothing made; --ignore-changed-files restarts on the file as it is."""
    import sys

    data, out = tmp_path / "data", tmp_path / "out.txt"
    data.write_bytes(b"\0" * 4096)
    v = procs.spawn([sys.executable, "-c", SHARED_MAP, str(out), str(data)], out)
    v.wait_ok_after(2)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    with open(data, "r+b") as f:
        f.write(b"HELLO")
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)  # (were it restarted after all)
    assert r.returncode == 12, r.stderr
    assert f"{data} changed since the checkpoint (same size, modified since (mtime))" \
        in r.stderr and "--ignore-changed-files" in r.stderr, r.stderr  # fmt: skip
    assert not os.path.exists(f"/proc/{v.pid}")
    last = max(v.oks())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--ignore-changed-files")
    assert r.returncode == 0, r.stderr
    v.wait_ok_after(last + 2)


def test_mapped_file_of_another_size_is_exit_12(procs: Procs, build: Any,
                                                tmp_path: Path) -> None:  # fmt: skip
    """A mapped file grown since the checkpoint is a changed file too (exit 12)."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("r.txt", "w.txt", "m.txt"):
        (work / name).write_bytes(b"x" * 8192)
    os.mkfifo(work / "f")
    v = spawn(procs, build, tmp_path, "special", "times")
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    with open(work / "m.txt", "ab") as f:
        f.write(b"more")
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    procs.track(v.pid)
    assert r.returncode == 12, r.stderr
    assert "m.txt changed since the checkpoint (its size was 8192, it is 8196 now)" in r.stderr
