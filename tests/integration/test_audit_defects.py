"""Defects of issue 9's review that no test covered (docs/state-coverage.md): each test
here fails on the code the defect was found in.

- side files of a directory image (attached SysV segments) are fsync'd at commit;
- SEEK_DATA errors other than ENXIO fail the dump of a deleted file and of a shared
  memory object instead of being taken for "no more data" (silent truncation);
- a program's own userfaultfd at fd 1000 or above is saved or refused, not dropped as
  if it were cryo's write tracking."""

from __future__ import annotations

import errno
import mmap
import os
import platform
import subprocess
from pathlib import Path

import pytest

from cryo.errors import CryoError
from tests.conftest import Procs, Victim, reap, run_cryo


def test_side_files_are_fsynced_at_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:  # fmt: skip
    from cryo.image import records as R
    from cryo.image.sink import DirSink

    monkeypatch.setenv("CRYO_KEY_FILE", str(tmp_path / "key" / "image.key"))
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sink = DirSink(str(tmp_path / "img"))
    sink.record(R.HEAD, {"arch": platform.machine(), "root_pid": 1, "pids": [1]})
    with sink.side_file("sysvshm-7.bin") as f:
        f.write(b"segment bytes")
    with sink.side_file("ghost-3") as f:
        f.write(b"deleted file bytes")
    sink.commit()
    img = tmp_path / "img"
    for name in ("sysvshm-7.bin", "ghost-3", "core.img", "pages.img"):
        assert (img / name).stat().st_ino in synced, f"{name} was not fsync'd"


def _failing_seek(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how == 3:  # SEEK_DATA
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)


def test_seek_data_error_fails_a_deleted_files_dump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryo.engine import ghosts

    f = tmp_path / "f"
    f.write_bytes(b"x" * 10000)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert ghosts.extents(fd, 10000) == [[0, 10000]]
        _failing_seek(monkeypatch)
        with pytest.raises(CryoError, match="SEEK_DATA"):
            ghosts.extents(fd, 10000, "fd 3 of 1")
    finally:
        os.close(fd)


def test_seek_data_error_fails_a_shared_objects_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryo.engine.shmem import Objects

    fd = os.memfd_create("audit")
    os.write(fd, b"y" * 8192)
    m = mmap.mmap(fd, 8192, flags=mmap.MAP_SHARED)
    try:
        from cryo.linux import libc

        start = libc.buffer_address(m)
        obj = {"where": [os.getpid(), start, start + 8192], "size": 8192}
        got, runs = Objects().data_ranges(obj)
        os.close(got)
        assert runs == [(0, 8192)]
        _failing_seek(monkeypatch)
        with pytest.raises(OSError) as err:
            Objects().data_ranges(obj)
        assert err.value.errno == errno.EIO
    finally:
        m.close()
        os.close(fd)


UFFD = r"""
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    int u = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API};
    if (u < 0 || ioctl(u, UFFDIO_API, &api) || dup2(u, 1000) != 1000) {
        fprintf(out, "FAIL setup\n");
        return 1;
    }
    close(u);
    for (int i = 0;; i++) {
        char link[64] = "";
        ssize_t n = readlink("/proc/self/fd/1000", link, sizeof link - 1);
        if (n < 0 || strcmp(link, "anon_inode:[userfaultfd]"))
            fprintf(out, "FAIL fd 1000 is no longer my userfaultfd\n");
        else
            fprintf(out, "ok %d\n", i);
        usleep(50000);
    }
}
"""


def test_programs_own_userfaultfd_at_fd_1000(procs: Procs, tmp_path: Path) -> None:
    """A program's userfaultfd (no region registered) at fd 1000: the checkpoint saves it
    or refuses it by name (exit 9); it must not restart without it."""
    src = tmp_path / "uffd.c"
    src.write_text(UFFD)
    exe = tmp_path / "uffd"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = tmp_path / "out.txt"
    v = procs.spawn([str(exe), str(out)], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    if r.returncode == 9:
        assert "userfaultfd" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    last = max(v.oks())
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    new = Victim(procs.track(int(r.stdout)), out)
    new.wait_ok_after(last + 2)
