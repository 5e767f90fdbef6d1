"""Whole applications (issue 3): process trees with pipes carrying data, shared memory,
process groups, zombies, a shell pipeline and a multiprocessing pool, restarted as one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo


def tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        out.append(p)
        for t in Path(f"/proc/{p}/task").iterdir():
            todo.extend(int(x) for x in (t / "children").read_text().split())
    return sorted(out)


def ids(pid: int) -> tuple[int, int, int]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[1]), int(f[2]), int(f[3])  # ppid, pgrp, session


def nspids(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()


def kill_tree(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in pids:
        reap(p)


def cycle(procs: Procs, v: Victim, img: Path) -> tuple[Victim, list[int]]:
    before = tree_pids(v.pid)
    idmap = {p: ids(p) for p in before}
    checkpoint(v.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
    kill_tree(before)
    r = restart(str(img))
    for p in r.pids.values():
        procs.track(p)
    after = tree_pids(r.pid)
    assert after == before, "the same processes, with the same pids"
    assert {p: ids(p) for p in after if p != r.pid} == {p: i for p, i in idmap.items()
                                                        if p != v.pid}  # fmt: skip
    return Victim(r.pid, v.out), after


def test_forking_server(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("forkserver"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(3)
    zombie = int(v.wait_line("ready").split()[4])
    assert "Z" in Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1].split()[0]
    v, pids = cycle(procs, v, tmp_path / "img")
    assert zombie in pids
    v.wait_ok_after(max(v.oks()) + 3)
    os.kill(v.pid, signal.SIGUSR1)  # the restored parent reaps the restored zombie
    assert v.wait_line("reaped") == "reaped 1 1 7"
    last = [x for x in v.lines() if x.startswith("ok")][-1].split()
    assert int(last[2]) > 0 and int(last[2]) <= int(last[3])
    # restart the same image a second time, once the first copy is gone
    kill_tree(tree_pids(v.pid))
    again = restart(str(tmp_path / "img"))
    for p in again.pids.values():
        procs.track(p)
    assert sorted(again.pids.values()) == pids
    v = Victim(again.pid, v.out)
    v.wait_ok_after(max(v.oks()) + 3)
    # checkpoint the restored tree again, restart it again
    v, _ = cycle(procs, v, tmp_path / "img2")
    v.wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()


def test_shell_pipeline_with_data_in_the_pipe(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    py = sys.executable
    cmd = f"{py} {VICTIMS / 'produce.py'} | {py} {VICTIMS / 'consume.py'} {out}"
    v = procs.spawn(["sh", "-c", cmd], out)
    deadline = time.monotonic() + 10
    while len(v.lines()) < 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pids = tree_pids(v.pid)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    assert "3 processes" in r.stderr
    kill_tree(pids)  # (all reaped: a zombie's pid is taken)
    time.sleep(0.2)
    n_before = len(v.lines())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    for p in tree_pids(root):
        procs.track(p)
    while len(v.lines()) < n_before + 300:
        assert time.monotonic() < deadline + 20
        time.sleep(0.01)
    got = [int(x.split()[1]) for x in v.lines()]
    assert got == list(range(len(got))), "every number once, in order, none lost in the pipe"


def test_children_that_come_and_go_during_the_freeze(procs: Procs, tmp_path: Path) -> None:
    """A shell that runs short-lived commands one after the other: a child that ends (or
    execs) while the tree is being seized is looked at again (a zombie, or gone), not
    taken for a reason to fail ("may not be traced", "does not exist": 3 of 80 before).
    Every checkpoint succeeds and the shell goes on; so does the restarted one."""
    count = tmp_path / "count"
    v = procs.spawn(["bash", "-c", f"while :; do /bin/true; echo >> {count}; done"])
    deadline = time.monotonic() + 10
    while not count.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for i in range(80):
        checkpoint(v.pid, str(tmp_path / f"img{i % 2}"), scope="tree", force=True)
    size = count.stat().st_size
    time.sleep(0.2)
    assert count.stat().st_size > size, "the shell goes on"
    done = checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    kill_tree(done.pids)  # (the shell's child of the moment too: its zombie holds its pid)
    r = restart(str(tmp_path / "img"))
    for p in r.pids.values():
        procs.track(p)
    size = count.stat().st_size
    time.sleep(0.3)
    assert count.stat().st_size > size, "the restarted shell goes on"


KNOWS_ITS_CHILD = """
import os, sys, time
out = open(sys.argv[1], "a", buffering=1)
child = os.fork()
if child == 0:
    while True:
        time.sleep(0.05)
i = 0
while True:
    try:
        os.kill(child, 0)
        done, _ = os.waitpid(child, os.WNOHANG)
        print("ok", i, file=out)
    except OSError as err:
        print("FAIL child", child, err, file=out)
    i += 1
    time.sleep(0.02)
"""


def test_a_tree_whose_pids_are_taken_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A parent keeps its child's pid (fork's answer) for kill and waitpid: restarted under
    new pids it would signal whatever has the old one now. With the old pids taken (a copy
    runs), a restart of the tree is refused, exit 10, naming the pid and --new-pids, and
    makes nothing (before: it came back under new pids, exit 0, and the parent's kill
    failed); --new-pids restarts it anyway, as asked."""
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", KNOWS_ITS_CHILD, str(out)], out)
    v.wait_ok_after(2)
    assert len(tree_pids(v.pid)) == 2
    first, pids = cycle(procs, v, tmp_path / "img")

    def copies() -> set[int]:  # processes running the script on this out.txt
        found = set()
        for p in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if str(out).encode() in Path(f"/proc/{p}/cmdline").read_bytes():
                    found.add(int(p))
        return found

    assert copies() == set(pids)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--allow-duplicate")
    if r.returncode == 0:
        procs.track(int(r.stdout))
    assert r.returncode == 10, r.stderr
    assert f"pid {first.pid} is taken" in r.stderr and "know each other's pids" in r.stderr \
        and "--new-pids" in r.stderr, r.stderr  # fmt: skip
    assert copies() == set(pids), "nothing made"
    first.wait_ok_after(max(v.oks()) + 2)
    assert not first.fails()
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--allow-duplicate",
                 "--new-pids")  # fmt: skip
    assert r.returncode == 0, r.stderr
    second = int(r.stdout)
    procs.track(second)
    procs.pids.extend(tree_pids(second))
    assert second != first.pid


@pytest.mark.parametrize(("method", "nprocs", "when"), [
    ("fork", 3, "busy"), ("forkserver", 5, "idle"), ("spawn", 4, "idle")])
def test_multiprocessing_pool(procs: Procs, tmp_path: Path, method: str, nprocs: int,
                              when: str) -> None:  # fmt: skip
    """Under forkserver and spawn the pool's locks are semaphores that the main process
    maps as "/dev/shm/sem.XXXXXX (deleted)" (glibc's sem_open links the file it made to
    its name, then unlinks the first) and the workers by that name: restored as a copy,
    the lock was no longer shared, and a pool checkpointed while a waiting worker held
    its task queue's lock hung at its end, the result never written (found by probing)."""
    out, progress = tmp_path / "out.txt", tmp_path / "progress.txt"
    shm_before, tmp_before = set(os.listdir("/dev/shm")), set(os.listdir("/tmp"))
    try:
        v = procs.spawn([sys.executable, str(VICTIMS / "pool.py"), str(out), str(progress),
                         method, when], out)  # fmt: skip
        if when == "idle":
            v.wait_line("idle", timeout=30)
            time.sleep(0.3)
        deadline = time.monotonic() + 20
        while not progress.exists() or len(progress.read_text().split()) < 60:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pids = tree_pids(v.pid)
        assert len(pids) == nprocs
        checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
        kill_tree(pids)
        r = restart(str(tmp_path / "img"))
        for p in r.pids.values():
            procs.track(p)
        line = Victim(r.pid, out).wait_line("result", timeout=30)
        assert line == f"result {sum(x * x + 1 for x in range(300))} 300"
    finally:
        procs.cleanup()
        for name in set(os.listdir("/dev/shm")) - shm_before:
            if name.startswith("sem.mp-"):  # the pool's (its resource tracker was killed)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/dev/shm/{name}")
        for name in set(os.listdir("/tmp")) - tmp_before:
            if name.startswith("pymp-"):  # the forkserver's socket directory
                shutil.rmtree(f"/tmp/{name}", ignore_errors=True)


def test_anonymous_files_and_socket_pairs(procs: Procs, build: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    v = procs.spawn([build("fdkinds"), str(tmp_path / "out.txt"), str(go),
                     str(tmp_path / "fifo")], tmp_path / "out.txt")
    v.wait_ok_after(3)
    v, pids = cycle(procs, v, tmp_path / "img")
    assert len(pids) == 2
    go.touch()
    v.wait_line("oneshot ok")
    v.wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()


def test_pid_namespace(procs: Procs, build: Any, tmp_path: Path) -> None:
    """`cryo run --pid-ns`: the job is pid 1 of its own pid namespace, so its restart
    always gets every pid back, even while the old processes' pids are still taken."""
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--",
                 build("forkserver"), str(out))
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    v = Victim(root, out)
    v.wait_ok_after(3)
    assert nspids(root)[-1] == "1"
    inner = sorted(int(nspids(p)[-1]) for p in tree_pids(root))
    r = run_cryo("checkpoint", str(root), "-D", str(tmp_path / "img"))  # a cryo run job: --tree
    assert r.returncode == 0, r.stderr
    assert "4 processes" in r.stderr
    os.kill(root, signal.SIGSTOP)  # the first copy keeps every outer pid taken
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", "--must-reuse-pid")
    assert r.returncode == 0, r.stderr
    new_root = procs.track(int(r.stdout))
    assert new_root != root and nspids(new_root)[-1] == "1"
    assert sorted(int(nspids(p)[-1]) for p in tree_pids(new_root)) == inner
    new = Victim(new_root, out)
    seen = len(v.oks())
    new.wait_for(lambda ls: len([x for x in ls if x.startswith("ok")]) > seen + 3)
    assert not new.fails()


def test_pid_namespace_init_alone_and_a_process_inside_one(procs: Procs, build: Any,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """The init of a pid namespace checkpointed as a process (the library's default
    scope) comes back as the init of a new one, threads and all: it came back in cryo's
    namespace, seeing another pid (with its old outer pid taken: "pid N is taken", or a
    clone3 EEXIST for its threads). A process inside a pid namespace, not its init, is
    refused, exit 9, untouched: restored, it would see another pid."""
    from cryo import launch

    out = tmp_path / "out.txt"
    root = procs.track(launch.run([build("threads"), str(out)], pid_ns=True))
    v = Victim(root, out)
    v.wait_ok_after(2)
    assert nspids(root)[-1] == "1" and len(os.listdir(f"/proc/{root}/task")) > 1
    checkpoint(root, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    r = restart(str(tmp_path / "img"))  # (its zombie still holds the outer pid)
    new = procs.track(r.pid)
    assert new != root and nspids(new)[-1] == "1"
    Victim(new, out).wait_ok_after(max(v.oks()) + 3)
    assert not v.fails()
    # a process one level down in a pid namespace of its own
    counter = f"{build('counter')} {tmp_path / 'c.txt'} & wait"  # (sh is its init)
    p = procs.spawn(["unshare", "-p", "-f", "sh", "-c", counter], tmp_path / "c.txt")
    p.wait_ok_after(2)
    pids = tree_pids(p.pid)  # unshare, sh, the counter
    for q in pids:
        procs.track(q)
    (inner,) = [q for q in pids if len(nspids(q)) == 2 and nspids(q)[-1] != "1"]
    r2 = run_cryo("checkpoint", str(inner), "-D", str(tmp_path / "img2"))
    assert r2.returncode == 9 and f"process {inner} is in a pid namespace of its own" \
        in r2.stderr, r2.stderr  # fmt: skip
    assert not (tmp_path / "img2").exists()
    c = Victim(inner, tmp_path / "c.txt")
    c.wait_ok_after(max(c.oks()) + 3)


def test_kill_after_checkpoint_of_a_pid_namespace(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:
    """`cryo checkpoint --kill` of a `cryo run --pid-ns` job with children and threads
    returns (it hung: waiting for the namespace's init, which waits for its children,
    which are dead but traced by cryo), and the restart runs them all again."""
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--",
                 build("fanout"), str(out), "3", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    v = Victim(root, out)
    v.wait_line("tick 2")
    before = tree_pids(root)
    assert len(before) == 4 and nspids(root)[-1] == "1"
    for _ in range(3):  # it hung in about one of three tries
        t = time.monotonic()
        r = run_cryo("checkpoint", str(root), "-D", str(tmp_path / "img"), "--kill",
                     "--force", timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t < 30
        for p in before:
            reap(p)  # killed by the checkpoint: gone
        r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
        assert r.returncode == 0, r.stderr
        root = procs.track(int(r.stdout))
        before = tree_pids(root)
        assert len(before) == 4 and nspids(root)[-1] == "1"
        seen = len(v.lines())
        v = Victim(root, out)
        v.wait_for(lambda ls, seen=seen: len(ls) > seen + 3)  # ticks again
        assert not v.fails()
    kill_tree(before)


def _running(marker: str) -> list[int]:
    """The pids whose command line holds ``marker`` (zombies left out)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if marker.encode() not in Path(f"/proc/{d}/cmdline").read_bytes():
                continue
            if Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(d))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_failed_restart_of_a_pid_namespace_kills_it_all(procs: Procs, build: Any,
                                                       tmp_path: Path) -> None:
    """A restart of a `--pid-ns` job whose last page block is damaged fails once it reads
    it, after its processes were made, and kills them all without waiting forever for
    the namespace's init (which waits for its children, traced by cryo)."""
    from cryo.image import format as fmt
    from cryo.image import records as R

    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--",
                 build("fanout"), str(out), "3", "4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    Victim(root, out).wait_line("tick 2")
    pids = tree_pids(root)
    r = run_cryo("checkpoint", str(root), "-D", str(tmp_path / "img"), "--kill", timeout=60)
    assert r.returncode == 0, r.stderr
    for p in pids:
        reap(p)
    blocks = [x.payload for x in fmt.read_file(tmp_path / "img" / "core.img", R.CORE_MAGIC)
              if x.kind == R.PBLK]  # fmt: skip
    last = blocks[-1]
    with open(tmp_path / "img" / "pages.img", "r+b") as f:
        f.seek(last["offset"] + last["stored"] // 2)
        b = f.read(1)
        f.seek(last["offset"] + last["stored"] // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    t = time.monotonic()
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", timeout=60)
    assert r.returncode == 5, r.stderr  # ImageCorrupt
    assert "checksum" in r.stderr and time.monotonic() - t < 30
    deadline = time.monotonic() + 10
    while _running(str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(str(out)), "no process of the failed restart is left"


def test_unsupported_child_leaves_the_whole_tree_alone(procs: Procs, build: Any,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """One process of the tree holds a TCP listening socket with a connection waiting to
    be accepted: the checkpoint names it, and every process of the tree goes on untouched
    (not stopped, not traced, same mappings)."""
    code = ("import os,socket,sys,time\nif os.fork() == 0:\n"
            "  s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "  socket.create_connection(s.getsockname()).close(); time.sleep(600)\n"
            f"f = open('{tmp_path / 'out.txt'}', 'a', buffering=1)\n"
            "i = 0\nwhile True:\n  f.write(f'tick {i}\\n'); i += 1; time.sleep(0.01)\n")
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out.txt")
    v.wait_ok_after(3)
    pids = tree_pids(v.pid)
    assert len(pids) == 2
    maps = {p: Path(f"/proc/{p}/maps").read_text() for p in pids}
    for p in pids:
        procs.track(p)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 9 and "waiting to be accepted" in r.stderr, r.stderr
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        assert "TracerPid:\t0" in status and "State:\tT" not in status
        assert Path(f"/proc/{p}/maps").read_text() == maps[p]
    v.wait_ok_after(max(v.oks()) + 3)
    assert not (tmp_path / "img").exists()


def test_process_group_scope(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    py = sys.executable
    v = procs.spawn(["sh", "-c", f"{py} {VICTIMS / 'produce.py'} | {py} {VICTIMS / 'consume.py'}"
                     f" {out}"], out)  # fmt: skip
    deadline = time.monotonic() + 10
    while len(v.lines()) < 100:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pids = tree_pids(v.pid)
    r = run_cryo("checkpoint", "--pgid", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    assert "3 processes" in r.stderr
    kill_tree(pids)
    n = len(v.lines())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    for p in tree_pids(procs.track(int(r.stdout))):
        procs.track(p)
    while len(v.lines()) < n + 100:
        assert time.monotonic() < deadline + 20
        time.sleep(0.01)
    got = [int(x.split()[1]) for x in v.lines()]
    assert got == list(range(len(got)))
    r = run_cryo("checkpoint", "--sid", "999999999", "-D", str(tmp_path / "img2"))
    assert r.returncode == 3 and "no process in session 999999999" in r.stderr


def test_shared_fd_table_between_processes_is_refused(procs: Procs, build: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    v = procs.spawn([build("clonefiles"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    kid = int(v.wait_line("ready").split()[2])
    procs.track(kid)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 9 and "share one fd table" in r.stderr, r.stderr
    for p in (v.pid, kid):
        assert "TracerPid:\t0" in Path(f"/proc/{p}/status").read_text()
    v.wait_ok_after(max(v.oks()) + 3)
