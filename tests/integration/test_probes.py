"""Kernel-visible state found by probing (issue 9, docs/state-coverage.md: "found by
probing"): each victim sets one piece of state, is checkpointed, killed and restarted,
and checks itself every round ("ok N" or "FAIL what"); what cannot be restored is
refused (exit 9 naming it) with the target untouched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo
from tests.integration.test_procstate import build_threaded, cycle, refused_untouched


def test_locks_on_sockets_pipes_and_their_takers(procs: Procs, build: Any,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """flocks on both ends of a unix socket pair, on an unbound unix datagram socket, on
    a TCP socket, a pipe and a file, an OFD lock on a unix socket and a POSIX lock on a
    TCP socket come back, each as fdinfo shows it, an flock naming its taker.  Before:
    the unix sockets' flocks and OFD lock were lost (restart exit 0), and every flock
    named the restarting cryo, a process gone, as its taker."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("sklocks"), str(out), str(tmp_path / "file")], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_local_descriptor_table(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The LDT's entries come back byte for byte, and a segment register that names one
    of them (%es) with them.  Before: no LDT after the restart, exit 0 (and %es 0)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("ldt"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_absolute_timerfd(procs: Procs, build: Any, tmp_path: Path) -> None:
    """timerfds set with TFD_TIMER_ABSTIME (CLOCK_REALTIME with TFD_TIMER_CANCEL_ON_SET,
    and CLOCK_MONOTONIC) keep their flags and their expiry across a restart 1.5 s after
    the checkpoint.  Before: made relative again, without flags (CANCEL_ON_SET lost: a
    change of the clock no longer cancels them), expiring later by the time away."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("tfdabs"), str(out)], out)
    v.wait_ok_after(1)
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    time.sleep(1.5)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    Victim(rr.pid, out).wait_ok_after(last + 2)


def test_dnotify_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A directory watched with dnotify (F_NOTIFY) is refused: exit 9 naming it, no
    image, and the process still gets its signal each round.  Before: restart exit 0,
    and no signal came any more."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("dnotify"), str(out)], out)
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "dnotify")


def test_cpu_clock_timers(procs: Procs, tmp_path: Path) -> None:
    """POSIX timers on the process's and on its thread's CPU-time clock keep firing
    after a restart.  Before: the checkpoint exited 0 and the restart refused the image
    as corrupt (exit 5: TIMR clock -6 out of range)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "cputimers"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_thread_cpu_clock_timer_of_several_threads_refused(procs: Procs,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """In a process of two threads, a timer on the calling thread's CPU clock is refused
    (exit 9 naming it, no image, the target goes on): which thread's clock is not shown,
    and made again by the restart it would count another thread's time."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "cputimers"), str(out), "threads"], out)
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "CPU-time clock")


def test_packet_pipes(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A pipe made with O_DIRECT and a FIFO given it keep packet mode and their queued
    packets, each read alone.  Before: the restart failed (EINVAL: an open of a pipe
    with O_DIRECT), and the packets would have come back as one stream."""
    out, go = tmp_path / "out.txt", tmp_path / "go"
    v = procs.spawn([build("packets"), str(out), str(tmp_path / "fifo"), str(go)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    go.touch()
    v.wait_line("packets read")
    assert not v.fails()


def test_calls_interrupted_by_the_freeze_go_on(procs: Procs, tmp_path: Path) -> None:
    """epoll_wait(-1), epoll_pwait, recv with SO_RCVTIMEO, semtimedop and sigtimedwait,
    which PTRACE_INTERRUPT makes fail with EINTR (no ERESTART* code), go on waiting
    after a checkpoint that lets the process run, and after a restart.  Before: each
    returned EINTR, a signal-less process's event loop seeing an error it cannot get."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "eintr"), str(out)], out)
    sem = v.wait_line("sem ").split()[1]
    try:
        v.wait_ok_after(2)
        checkpoint(v.pid, str(tmp_path / "img0"))
        v.wait_ok_after(max(v.oks()) + 3)
        v = cycle(procs, v, tmp_path / "img")
        v.wait_ok_after(max(v.oks()) + 3)
    finally:
        subprocess.run(["ipcrm", "-s", sem], check=False, capture_output=True)


def test_processes_sharing_cwd_root_umask_refused(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """A parent and a child made with CLONE_FS (one cwd, root and umask, not threads):
    the checkpoint of the tree is refused (exit 9 naming CLONE_FS), no image, and they
    go on sharing.  Before: exit 0 with a warning, restored as two copies (the child no
    longer saw the parent's umask)."""
    from cryo.errors import ExitCode

    out, img = tmp_path / "out.txt", tmp_path / "img"
    v = procs.spawn([build("sharedfs"), str(out)], out)
    procs.track(int(v.wait_line("child ").split()[1]))
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "CLONE_FS" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)


def test_packet_socket_bound_to_no_interface(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A packet socket never bound (all interfaces) comes back and sees traffic.  Before:
    the checkpoint exited 0 and the restart failed: its name's empty interface was bound
    to (ENODEV)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("pktsock"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def _amx(tmp_path: Path) -> str:
    with open("/proc/cpuinfo") as f:
        if " amx_tile" not in f.read():
            pytest.skip("no AMX on this CPU")
    exe = tmp_path / "amx"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-mamx-tile", "-o", str(exe),
                    str(VICTIMS / "amx.c")], check=True)  # fmt: skip
    return str(exe)


def test_amx_permission_asked_again(procs: Procs, tmp_path: Path) -> None:
    """A process that asked for AMX and released its tiles gets the permission again
    after a restart, and its tile instructions work.  Before: restored without it (exit
    0), its next tile instruction was fatal; with tiles in use the restart failed (EINVAL
    from PTRACE_SETREGSET)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([_amx(tmp_path), str(out), "release"], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_amx_tiles_holding_data_refused(procs: Procs, tmp_path: Path) -> None:
    """A thread whose AMX tiles hold data is refused (exit 9 naming them, no image, the
    target goes on): the kernel makes room for them at a thread's first use only."""
    out = tmp_path / "out.txt"
    v = procs.spawn([_amx(tmp_path), str(out), "hold"], out)
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "AMX tiles")


def test_absolute_posix_timers(procs: Procs, build: Any, tmp_path: Path) -> None:
    """CLOCK_REALTIME POSIX timers set with TIMER_ABSTIME (a one-shot an hour away and
    a periodic one of 50 ms) keep their wall-clock expiry across a restart 1.5 s after
    the checkpoint; a relative one next to them stays relative (``cryo show``: the two
    absolute, with their expiry).  Before: made relative again, exit 0, both later by
    the time away (the periodic one 30 ticks behind)."""
    from cryo.engine.show import describe

    out, img = tmp_path / "out.txt", tmp_path / "img"
    v = procs.spawn([build("posixabs"), str(out)], out)
    v.wait_ok_after(4)
    last = max(v.oks())
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    timers = describe(str(img))["processes"][0]["timers"]
    assert [("absolute" in t, t["interval"]) for t in sorted(timers, key=lambda t: t["id"])] == \
        [(True, 0.0), (True, 0.05), (False, 0.0)], timers  # fmt: skip
    time.sleep(1.5)
    rr = restart(str(img))
    procs.track(rr.pid)
    Victim(rr.pid, out).wait_ok_after(last + 3)


def test_realtime_posix_timer_of_unknown_kind_refused(procs: Procs, build: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """An armed SIGEV_NONE CLOCK_REALTIME timer (never in the kernel's hrtimer lists, so
    whether it is absolute cannot be seen) is refused: exit 9 naming TIMER_ABSTIME, no
    image, the target goes on with its absolute timers."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("posixabs"), str(out), "none"], out)
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "TIMER_ABSTIME")


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK")
def test_jvm_perf_data_file_put_back(procs: Procs, tmp_path: Path) -> None:
    """A JVM's /tmp/hsperfdata_USER/PID (its own, mapped shared, written as it runs) is
    saved with the image and put back as it was: the image restarts a second time after
    the restored JVM wrote its counters there (its dirty pages written back with fsync,
    as the kernel does every 30 s, its next write moves the mtime), and after the file
    was deleted (as a starting JVM deletes a dead pid's).  Before: the second restart
    failed, exit 12 (FileChanged), and the third (the mapped file missing)."""
    subprocess.run(["javac", "-d", str(tmp_path), str(VICTIMS / "JvmWork.java")],
                   check=True, timeout=120)  # fmt: skip
    out, img = tmp_path / "out.txt", str(tmp_path / "img")
    v = procs.spawn(["java", "-Xmx256m", "-cp", str(tmp_path), "JvmWork", str(out)], out)
    v.wait_ok_after(2, timeout=30)
    maps = Path(f"/proc/{v.pid}/maps").read_text().splitlines()
    perf = next(Path(line.split()[-1]) for line in maps if "/hsperfdata_" in line)
    checkpoint(v.pid, img, signal_after=signal.SIGKILL)
    reap(v.pid)
    saved = perf.stat().st_mtime_ns
    for how in ("written", "deleted", "again"):
        rr = restart(img)
        procs.track(rr.pid)
        v = Victim(rr.pid, out)
        v.wait_ok_after(max(v.oks()) + 1, timeout=20)
        if how == "written":
            fd = os.open(perf, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            deadline = time.monotonic() + 20
            while perf.stat().st_mtime_ns == saved and time.monotonic() < deadline:
                time.sleep(0.1)
            assert perf.stat().st_mtime_ns != saved, "the JVM wrote nothing"
        reap(rr.pid)
        if how == "deleted":
            perf.unlink()
    perf.unlink()  # (the killed JVM's, as a JVM exiting removes its own)
    assert not v.fails()


def test_epoll_ready_lists(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Edge-triggered, one-shot and exclusive epoll watches whose files hold data keep
    their ready lists: an edge already taken is not given again, a fired one-shot watch
    stays disarmed, an edge queued and not yet taken is given once (victims/epollet.c),
    through a checkpoint that lets it run and a restart.  Before: each watch whose file
    had data came back with one more event (a ready file added again is queued) and the
    one-shot watch armed again, exit 0."""
    out, go = tmp_path / "out.txt", tmp_path / "go"
    v = procs.spawn([build("epollet"), str(out), str(go)], out)
    v.wait_ok_after(2)
    checkpoint(v.pid, str(tmp_path / "img0"))
    v.wait_ok_after(max(v.oks()) + 2)
    v = cycle(procs, v, tmp_path / "img")
    go.touch()
    v.wait_line("ep2 ok")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_tracer_of_a_process_outside_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process that ptraces another (its child, here, outside the checkpoint) is
    refused: exit 9 naming ptrace, no image, and it goes on interrupting and resuming its
    tracee.  Before: exit 0; restored, a tracer traces nothing (strace -p alike)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("tracer"), str(out)], out)
    from cryo.errors import ExitCode

    procs.track(int(v.wait_line("child ").split()[1]))
    v.wait_ok_after(1)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "--process", "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "ptrace" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs sqlite3")
def test_sqlite3_shell_mid_transaction_in_wal_mode(procs: Procs, tmp_path: Path) -> None:
    """The sqlite3 shell, reading its commands from a FIFO the test writes, in WAL mode
    and inside a transaction (a row inserted, not committed: in its own cache), is
    checkpointed, killed and restarted; the transaction then goes on and commits, and
    the database holds every row and passes its integrity check."""
    fifo, db, out = tmp_path / "in", tmp_path / "db.sqlite", tmp_path / "out.txt"
    os.mkfifo(fifo)
    sh = procs.spawn(["sh", "-c", f'exec sqlite3 "{db}" < "{fifo}" > "{out}" 2>&1'], out)
    w = os.open(fifo, os.O_WRONLY)
    try:
        os.write(w, b"PRAGMA journal_mode=WAL;\nCREATE TABLE t(x);\nINSERT INTO t VALUES(1);\n"
                 b"BEGIN;\nINSERT INTO t VALUES(2);\nSELECT 'in', count(*) FROM t;\n")
        Victim(sh.pid, out).wait_line("in|2")
        checkpoint(sh.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
        reap(sh.pid)
        rr = restart(str(tmp_path / "img"))
        procs.track(rr.pid)
        os.write(w, b"INSERT INTO t VALUES(3);\nCOMMIT;\nSELECT 'rows', group_concat(x) FROM t;\n")
        Victim(rr.pid, out).wait_line("rows|1,2,3")
    finally:
        os.close(w)
    reap(rr.pid)
    check = "SELECT group_concat(x) FROM t; PRAGMA integrity_check;"
    r = subprocess.run(["sqlite3", str(db), check], capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["1,2,3", "ok"], r


def test_asyncio_server_keeps_its_clients(procs: Procs, tmp_path: Path) -> None:
    """An asyncio server with three clients connected (each connection's count in its
    handler coroutine, the total in the server) is checkpointed with its connections
    (--tcp-established), killed and restarted; each client goes on on its connection,
    its count and the total where they were, and a new client is served."""
    import socket
    import sys

    out, img = tmp_path / "out.txt", tmp_path / "img"
    v = procs.spawn([sys.executable, str(VICTIMS / "asyncsrv.py"), str(out)], out)
    port = int(v.wait_line("port ").split()[1])
    conns = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
    files = [c.makefile("rw") for c in conns]

    def ask(f: Any, msg: str) -> str:
        f.write(msg + "\n")
        f.flush()
        return str(f.readline().strip())

    try:
        assert [ask(f, "a") for f in files] == ["1 1 a", "1 2 a", "1 3 a"]
        r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--tcp-established", "--kill")
        assert r.returncode == 0, r.stderr
        reap(v.pid)
        r = run_cryo("restart", "-D", str(img), "--detach", "--tcp-established")
        assert r.returncode == 0, r.stderr
        procs.track(v.pid)
        assert [ask(f, "b") for f in files] == ["2 4 b", "2 5 b", "2 6 b"]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            assert ask(c.makefile("rw"), "new") == "1 7 new"
    finally:
        for c in conns:
            c.close()
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        for line in tables.stdout.splitlines():  # (the image's lock, if a step failed)
            if f"cryo-image-{v.pid}-" in line:
                subprocess.run(["nft", "delete", "table", *line.split()[1:]], check=False)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (Debian's nginx-light)")
def test_nginx_master_and_workers(procs: Procs, tmp_path: Path) -> None:
    """nginx, a master and two workers sharing its listening socket, checkpointed as a
    tree, killed and restarted: it serves, reloads on SIGHUP (new workers, the old ones
    reaped by the master), starts a new worker when one is killed, and quits on SIGQUIT."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "index.html").write_text("hello\n")
    t = str(tmp_path)
    temps = " ".join(f"{k}_temp_path {t}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"user root; worker_processes 2; daemon off; master_process on; pid {t}/nginx.pid;\n"
        f"error_log {t}/error.log; events {{ worker_connections 64; }}\n"
        f"http {{ access_log {t}/access.log; {temps}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {t}/html; }} }}\n")  # fmt: skip

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
            return str(r.read().decode())

    def wait(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    v = procs.spawn(["nginx", "-c", f"{t}/nginx.conf", "-p", t])
    wait(lambda: len(_children(v.pid)) == 2, "two workers")
    workers = _children(v.pid)
    for w in workers:
        procs.track(w)
    assert get() == "hello\n"
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", f"{t}/img", "--kill")
    assert r.returncode == 0, r.stderr
    for pid in (*workers, v.pid):
        reap(pid)
    r = run_cryo("restart", "-D", f"{t}/img", "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(v.pid)
    assert sorted(_children(v.pid)) == sorted(workers)
    assert [get() for _ in range(4)] == ["hello\n"] * 4
    os.kill(v.pid, signal.SIGHUP)  # reload: new workers, the old ones reaped
    wait(lambda: len(_children(v.pid)) == 2 and not set(_children(v.pid)) & set(workers),
         "new workers after SIGHUP")  # fmt: skip
    for w in _children(v.pid):
        procs.track(w)
    assert get() == "hello\n"
    one = _children(v.pid)[0]
    os.kill(one, signal.SIGKILL)
    wait(lambda: len(_children(v.pid)) == 2 and one not in _children(v.pid), "a new worker")
    for w in _children(v.pid):
        procs.track(w)
    assert get() == "hello\n"
    os.kill(v.pid, signal.SIGQUIT)
    wait(lambda: not os.path.exists(f"/proc/{v.pid}") or _state(v.pid) == "Z", "nginx quits")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
