"""Probes of session 9 (lead): state restored wrong, or refused where it need not be."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_probes_s9_h2 import _spawn, exe  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(120)


def _edit_descs(img: Path, change: Any) -> None:
    """``change(description)`` applied to every open file description of the image."""
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    for rec in recs:
        if rec.kind == R.FDSC:
            for d in rec.payload["descs"]:
                change(d)
    out = [fmt.Record(r.kind, r.payload, raw=r.kind == R.FDAT) for r in recs]
    (img / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, out))


def test_a_copied_file_on_another_machine_with_the_same_device_number(
        procs: Procs, exe: str, tmp_path: Path) -> None:  # noqa: F811  # fmt: skip
    """Another machine's root filesystem often has the same device number (both
    /dev/vda1), and a file copied there (rsync -a: the bytes, the size and the mtime)
    another inode: taken for the same filesystem, the restart refused it as replaced,
    exit 12.  The filesystem is now told by its id too (statfs f_fsid, FDSC `fsid`):
    elsewhere a file is the one of the checkpoint by its size and mtime.  The other
    machine is played by an image whose fsid is another one."""
    v = _spawn(procs, exe, tmp_path, "file")
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    data = tmp_path / "data"
    seen: list[int] = []

    def elsewhere(d: dict[str, Any]) -> None:
        if d.get("path") == str(data):
            seen.append(d["fsid"])
            d["fsid"] ^= 1

    _edit_descs(img, elsewhere)
    assert seen == [os.statvfs(data).f_fsid]
    shutil.copy2(data, tmp_path / "copy")  # as rsync -a copies it: another inode
    os.rename(tmp_path / "copy", data)
    r = run_cryo("restart", "-D", str(img), "--detach", "--trust-image")  # (edited)
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), v.out)
    w.wait_ok_after(max(w.oks()) + 2)
