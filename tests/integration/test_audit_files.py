"""File state of issue 9 that no test covered (docs/state-coverage.md): deleted files
the kernel gives no way to recreate unlinked are refused at checkpoint by name (exit 9),
the target untouched, never restored as something else."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cryo.errors import ExitCode
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration import test_security as sec
from tests.integration.test_security import arena  # noqa: F401 (the fixture)

TARGET = r"""
import os, stat, sys, time
d, mode = sys.argv[1], sys.argv[2]
out = open(os.path.join(d, "out.txt"), "a", buffering=1)
path = os.path.join(d, "victim")
if mode == "device":
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of its own
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
else:  # "linked": unlinked from the name it was opened by, still linked elsewhere
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"data")
    os.link(path, os.path.join(d, "other-name"))
    os.unlink(path)
i = 0
while True:
    ok = os.fstat(fd).st_ino > 0
    out.write(f"ok {i}\n" if ok else "FAIL fd\n"); i += 1
    time.sleep(0.05)
"""


@pytest.mark.parametrize(("mode", "words"), [("linked", "1 other link(s)")])
def test_deleted_file_the_kernel_cannot_recreate_is_refused(
        procs: Procs, tmp_path: Path, mode: str, words: str) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", TARGET, str(tmp_path), mode], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9, (r.returncode, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    Victim(v.pid, out).wait_ok_after(max(v.oks()) + 2)  # untouched, not killed
    assert os.path.exists(f"/proc/{v.pid}")


MAPPED_MEMFD = r"""
import mmap, os, sys, time
d = sys.argv[1]
out = open(os.path.join(d, "out.txt"), "a", buffering=1)
fd = os.memfd_create("mapped")
os.ftruncate(fd, 8192)
os.fchmod(fd, 0o600)
m = mmap.mmap(fd, 8192, flags=mmap.MAP_SHARED)
m[:5] = b"hello"
i = 0
while True:
    st = os.fstat(fd)
    bad = [] if st.st_mode & 0o7777 == 0o600 else [f"mode {st.st_mode & 0o7777:o}"]
    bad += [] if m[:5] == b"hello" and os.pread(fd, 5, 0) == b"hello" else ["data"]
    out.write(f"ok {i}\n" if not bad else f"FAIL {' '.join(bad)}\n"); i += 1
    time.sleep(0.05)
"""


def test_mapped_memfd_keeps_its_mode(procs: Procs, tmp_path: Path) -> None:
    """A memfd both mapped shared and open (saved as a shared memory object) keeps its
    mode (fchmod 0600) across a restart, with its data."""
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", MAPPED_MEMFD, str(tmp_path)], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    last = max(v.oks())
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    Victim(procs.track(int(r.stdout)), out).wait_ok_after(last + 2)


# -- deleted directories and device nodes in a user's image (the privilege rule) --------


@pytest.mark.parametrize("what", ["dir", "cwd", "dir in root's directory",
                                  "cwd in root's directory", "device", "device as a file"])
def test_users_deleted_directory_and_device(procs: Procs, arena: Path,  # noqa: F811
                                            what: str) -> None:  # fmt: skip
    """A user's image may have a deleted directory made again where the user may create
    one (and it is the user's, unlinked); not in a directory only root may write to, and
    never a device node (mknod makes any device): exit 4, nothing made."""
    img = sec.user_image(procs, arena)
    home, vault = arena / "home", arena / "vault"
    vault.mkdir(mode=0o700)
    common = {"deleted": True, "node": True, "uid": sec.UID, "gid": sec.UID,
              "atime_ns": 1_100_000_000 * 10**9, "mtime_ns": 1_000_000_000 * 10**9}
    path = (vault if "root" in what else home) / "gone"
    if what.startswith("device"):  # (as a file: a regular file's kind and mode, an rdev)
        path = home / "null"
        fields = {"kind": "chr", "mode": 0o20600, "flags": os.O_RDWR, "rdev": os.makedev(1, 3)}
        if what == "device as a file":
            fields.update(kind="file", mode=0o100600)
    else:
        fields = {"kind": "dir", "mode": 0o40750, "flags": os.O_RDONLY | os.O_DIRECTORY}

    def change(recs: dict[bytes, list[Any]]) -> None:
        if what.startswith("cwd"):  # its working directory, deleted
            frec = recs[R.FILE][0]
            frec["cwd"] = str(path)
            frec["cwd_deleted"] = {"dev": 1, "ino": 1, "mode": 0o40750, "uid": sec.UID,
                                   "gid": sec.UID, "atime_ns": common["atime_ns"],
                                   "mtime_ns": common["mtime_ns"]}  # fmt: skip
        else:
            sec._add_desc(recs, 76, path=str(path), **common, **fields)

    sec.edit_as_user(img, change)
    r = sec.restart(img, "--trust-image")
    if what == "cwd":
        assert r.returncode == 0, r.stderr
        pid = procs.track(int(r.stdout))
        assert os.readlink(f"/proc/{pid}/cwd") == f"{path} (deleted)"
        st = os.stat(f"/proc/{pid}/cwd")
        assert (st.st_mode, st.st_nlink, st.st_uid) == (0o40750, 0, sec.UID)
        lines = (home / "out.txt").read_text().count("tick ")
        sec.wait_ticks(home / "out.txt", lines + 2)  # it goes on, in its deleted cwd
        return
    if what == "dir":
        assert r.returncode == 0, r.stderr
        pid = procs.track(int(r.stdout))
        assert os.readlink(f"/proc/{pid}/fd/76") == f"{path} (deleted)"
        st = os.stat(f"/proc/{pid}/fd/76")
        assert (st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_mtime_ns) == (
            0o40750, 0, sec.UID, sec.UID, 1_000_000_000 * 10**9)
        assert not path.exists()
        return
    if what == "device as a file":  # never a device, whatever its kind says
        assert r.returncode == ExitCode.IMAGE_CORRUPT, (r.returncode, r.stderr)
        assert "(node) must be a deleted directory" in r.stderr, r.stderr
    else:
        assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
        assert ("recreated with mode" if what == "device" else "recreated in") in r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not path.exists() and os.listdir(vault) == []


def test_users_write_lock_through_a_mapping_needs_write_access(
        procs: Procs, arena: Path) -> None:  # noqa: F811  # fmt: skip
    """An OFD write lock held through a mapping is taken again on the file opened for
    writing: in a user's image, only on a file the user may write (a library of root's,
    mapped read-only, is refused: exit 4, nothing made)."""
    img = sec.user_image(procs, arena)

    def change(recs: dict[bytes, list[Any]]) -> None:
        v = next(v for v in recs[R.MM][0]["vmas"] if v["kind"] == "file"
                 and os.stat(v["path"]).st_uid == 0)  # fmt: skip
        v["locks"] = [{"kind": "ofd", "mode": "WRITE", "start": 0, "end": None}]

    sec.edit_as_user(img, change)
    before = sec._children()
    r = sec.restart(img, "--trust-image")
    assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
    assert "write-locked (OFD)" in r.stderr and f"uid {sec.UID}" in r.stderr, r.stderr
    assert sec._children() == before
