"""Probes of session 10 (h7): real programs checkpointed mid-work as a user would (issue
9), their output and end compared with an uninterrupted run; what they found, each in
the smallest program that shows it: io_uring's SQPOLL thread, and unix socket files
(screen's sessions)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.errors import ExitCode
from tests.conftest import VICTIMS, Procs, Victim, cli_cycle, reap, run_cryo, spawn_mode

pytestmark = pytest.mark.timeout(120)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.parametrize("mode", ["sqpoll", "ring", "closed"])
def test_io_uring_refused_its_target_untouched(procs: Procs, build: Callable[[str], str],
                                               tmp_path: Path, mode: str) -> None:  # fmt: skip
    """node with UV_USE_IO_URING=1 (libuv's io_uring, an SQPOLL ring among them): the
    checkpoint never returned, the target held stopped for ever (the freeze seized the
    ring's kernel thread, iou-sqp-PID, which stops for ptrace but never returns to user
    space: the first call injected in it never ended, and the watchdog waits for an
    injected call to end), and the worker outlived the killed command.  Now refused
    before anything is seized, exit 9 naming io_uring, the target going on untraced.  A
    plain ring, with its fd or by its mapping alone, was and is refused by its mapping."""
    v = spawn_mode(procs, build("iouring_s10"), tmp_path, mode)
    t0 = time.monotonic()
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), timeout=30)
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "io_uring" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())
    st = _status(v.pid)
    assert st["TracerPid"] == "0" and st["State"][0] in "SR", st
    v.wait_ok_after(max(v.oks()) + 3)


def _sockfile(path: Path) -> tuple[int, int, int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns


def test_socket_files_keep_their_mode_owner_and_times(procs: Procs, tmp_path: Path) -> None:
    """screen(1) run detached, checkpointed with --kill and restarted: `screen -ls` said
    "(Unknown)" and `screen -S NAME -X` "No screen session found", because the restart
    bound the socket again on a new file of cryo's umask (0755, now's times) where
    screen had made it 0600 (detached; 0700 attached).  Now a unix socket's file has the
    mode, owner and times it had (what a bind cannot give back: its inode and ctime)."""
    d = tmp_path / "d"
    d.mkdir()
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, str(VICTIMS / "sockfile_s10.py"), str(out), str(d)], out)
    v.wait_line("ready")
    v.wait_ok_after(1)
    before = {name: _sockfile(d / name) for name in ("srv", "rel")}
    assert before["srv"][:3] == (stat.S_IFSOCK | 0o640, 1234, 5678)
    pid = cli_cycle(procs, v.pid, tmp_path / "img")
    v = Victim(pid, out)
    v.wait_ok_after(max(v.oks()) + 3)
    assert {name: _sockfile(d / name) for name in ("srv", "rel")} == before
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(d / "srv"))
        assert c.recv(4) == b"pong"


@pytest.mark.skipif(shutil.which("screen") is None, reason="needs screen")
def test_detached_screen_session(procs: Procs, tmp_path: Path) -> None:
    """The real program: a detached screen session with a shell, checkpointed with
    --kill and restarted, is found by `screen -X` and runs what is typed into it."""
    sockdir = tmp_path / "screens"
    sockdir.mkdir(mode=0o700)
    env = {**os.environ, "SCREENDIR": str(sockdir)}
    name = f"cryo-h7-{os.getpid()}"
    r = run_cryo("run", "--", "screen", "-D", "-m", "-S", name, "bash", "--norc", env=env)
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))

    def typed(line: str, path: Path) -> str:
        subprocess.run(["screen", "-S", name, "-X", "stuff", f"{line} > {path}\n"],
                       env=env, check=True, timeout=10, capture_output=True)  # fmt: skip
        deadline = time.monotonic() + 10
        while not path.exists() or not path.read_text().endswith("\n"):
            assert time.monotonic() < deadline, f"{line!r}: nothing written"
            time.sleep(0.05)
        return path.read_text()

    deadline = time.monotonic() + 10
    while not list(sockdir.iterdir()):
        assert time.monotonic() < deadline, "no screen socket"
        time.sleep(0.05)
    assert typed("echo before", tmp_path / "before") == "before\n"
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        shells = [int(x) for x in f.read().split()]
    r = run_cryo("checkpoint", str(pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    for p in [pid, *shells]:  # (its shell, killed too, is ours to reap: we are its reaper)
        reap(p)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    procs.pids.extend(shells)
    assert typed("echo $((6 * 7))", tmp_path / "after") == "42\n"
    ls = subprocess.run(["screen", "-ls"], env=env, capture_output=True, text=True,
                        timeout=10).stdout  # fmt: skip
    assert f"{pid}.{name}" in ls and "(Detached)" in ls, ls
