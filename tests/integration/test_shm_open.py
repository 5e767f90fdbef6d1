"""A POSIX shared memory file that its program unlinked while it holds it (shm_open,
shm_unlink, as MPI transports such as UCX do), by an fd only or also mapped shared: the
fd was opened with O_NOFOLLOW (shm_open's), which F_GETFL shows.  The restart opens the
file it makes again by its name before unlinking it (a reopen through /proc/self/fd
fails with O_NOFOLLOW: ELOOP, which failed every such restart) and leaves nothing in
/dev/shm."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import Procs, cli_cycle

VICTIM = r"""
import fcntl, mmap, os, sys, time
out, go, mode = sys.argv[1:4]
name = f"/dev/shm/cryo-test-nofollow-{os.getpid()}"
fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
os.write(fd, b"x" * 8192)
m = mmap.mmap(fd, 8192) if mode == "mapped" else None
os.unlink(name)
flags = fcntl.fcntl(fd, fcntl.F_GETFL)
open(out, "w").write("ready\n")
while not os.path.exists(go):
    time.sleep(0.01)
bad = []
if fcntl.fcntl(fd, fcntl.F_GETFL) != flags:
    bad.append(f"flags {oct(fcntl.fcntl(fd, fcntl.F_GETFL))} not {oct(flags)}")
if os.pread(fd, 8192, 0) != b"x" * 8192:
    bad.append("content")
if m is not None:
    os.pwrite(fd, b"y", 5)
    if m[5:6] != b"y":
        bad.append("the mapping and the fd apart")
if os.fstat(fd).st_nlink != 0 or os.path.exists(name):
    bad.append("linked again")
open(out, "a").write("checked " + ("; ".join(bad) or "good") + "\n")
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["mapped", "fd"])
def test_unlinked_shm_open_file(procs: Procs, tmp_path: Path, mode: str) -> None:
    (tmp_path / "victim.py").write_text(VICTIM)
    out, go = tmp_path / "out", tmp_path / "go"
    v = procs.spawn([sys.executable, str(tmp_path / "victim.py"), str(out), str(go), mode], out)
    v.wait_line("ready")
    shm_before = set(os.listdir("/dev/shm"))
    cli_cycle(procs, v.pid, tmp_path / "img")
    assert set(os.listdir("/dev/shm")) <= shm_before
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
