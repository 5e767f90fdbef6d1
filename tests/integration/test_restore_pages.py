"""The restart's page path (issue 16): one pass over the image, each block checked as it
is read, the processes kept until every block is; memory bounded whatever the image's
size; a cold image leaves the page cache as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cryo import store
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.errors import ImageCorrupt
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim
from tests.integration.test_tree import kill_tree, tree_pids

REPO = Path(__file__).resolve().parents[2]


def _blocks(img: Path) -> list[dict[str, Any]]:
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    return [r.payload for r in recs if r.kind == R.PBLK]


def _flip(img: Path, offset: int) -> None:
    with open(img / "pages.img", "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _alive(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            out.append(p)
    return out


def test_corrupt_last_block_found_late_leaves_no_process(procs: Procs, build: Any,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """The last block of the last process is damaged: the restart has made the processes
    and written their other pages by the time it reads it, and leaves none of them."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("fanout"), str(out), "3", "16"], out)
    v.wait_line("ready")
    pids = tree_pids(v.pid)
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), scope="tree", signal_after=signal.SIGKILL)
    kill_tree(pids)
    blocks = _blocks(img)
    last_pid = max(pids)  # created last (children by pid)
    last = max((b for b in blocks if b.get("pid") == last_pid), key=lambda b: b["index"])
    _flip(img, last["offset"] + last["stored"] // 2)
    written: list[int] = []
    with pytest.raises(ImageCorrupt, match=f"pages block {last['index']} checksum mismatch"):
        restart(str(img), progress=lambda done, _total: written.append(done))
    assert written and written[-1] > 0, "found after other processes' pages were written"
    assert not _alive(pids), "every process made is gone"
    left = [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not left, f"not reaped by the failed restart: {left}"  # (zombies hold pids)
    _flip(img, last["offset"] + last["stored"] // 2)  # repaired: it restarts
    r = restart(str(img))
    for p in r.pids.values():
        procs.track(p)
    assert sorted(r.pids.values()) == pids
    Victim(r.pid, out).wait_ok_after(max(Victim(r.pid, out).oks(), default=0) + 2)


def _restart_in_child(img: Path) -> dict[str, Any]:
    """Restart ``img`` from a fresh interpreter; its peak RSS and the restored pid."""
    code = ("import json, resource, sys\n"
            "from cryo.engine.restore import restart\n"
            "r = restart(sys.argv[1])\n"
            "print(json.dumps({'pid': r.pid, 'hwm_kib':"
            " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    res = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True,
                         text=True, env=env, timeout=120, close_fds=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _cached_pages(path: Path) -> int:
    res = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(res.stdout.split()[0]) // 4096


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_restart_memory_bounded_cache_left_alone(procs: Procs, build: Any, tmp_path: Path,
                                                warm: bool) -> None:  # fmt: skip
    """512 MiB restored with far less than 512 MiB of cryo's own memory (the image is
    read through a few buffers, never mapped whole); a cold image is not left in the
    page cache, a warm one stays there."""
    out = tmp_path / "out.txt"
    mib = 512
    v = procs.spawn([build("bigmem"), str(out), str(mib)], out)
    v.wait_line("tick 1")
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    pages = img / "pages.img"
    size = pages.stat().st_size
    fd = os.open(pages, os.O_RDONLY)
    try:
        if warm:
            while os.read(fd, 1 << 24):
                pass
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    before = _cached_pages(pages)
    got = _restart_in_child(img)
    procs.track(got["pid"])
    restored = Victim(got["pid"], out)
    restored.wait_ok_after(max(restored.oks(), default=0) + 2)
    assert got["hwm_kib"] * 1024 < 300 << 20, f"peak RSS {got['hwm_kib']} KiB"
    after = _cached_pages(pages)
    if warm:
        assert after >= size // 4096 - 16, (before, after)
    else:
        assert after <= before + 64, (before, after)  # (a few pages: header, readahead)


def test_store_restart_memory_is_bounded(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A store version's pages go through the same few buffers (they were read through a
    mapping of every page file it uses: a restart needed the version's size again)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("bigmem"), str(out), "512"], out)
    v.wait_line("tick 1")
    st = tmp_path / "store"
    store.checkpoint(v.pid, str(st), "app", signal_after=signal.SIGKILL)
    code = ("import json, resource, sys\n"
            "from cryo import store\n"
            "r = store.restart(sys.argv[1], 'app')\n"
            "print(json.dumps({'pid': r.pid, 'hwm_kib':"
            " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    res = subprocess.run([sys.executable, "-c", code, str(st)], capture_output=True,
                         text=True, env=env, timeout=120, close_fds=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    procs.track(got["pid"])
    restored = Victim(got["pid"], out)
    restored.wait_ok_after(max(restored.oks(), default=0) + 2)
    assert got["hwm_kib"] * 1024 < 300 << 20, f"peak RSS {got['hwm_kib']} KiB"
