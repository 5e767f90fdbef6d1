"""State only the kernel's own structures hold, read with a BPF iterator (issue 9, session
10, h1; engine/restartblock.py, linux/bpf.py).

A thread in poll(pipe, 3000 ms), FUTEX_WAIT with a relative 3 s, or a relative nanosleep
or clock_nanosleep of 3 s without ``rem`` (victims/restartblock_s10.c), checkpointed with
--kill ~1.5 s in and restarted: its call returns after 3 s of its own CLOCK_MONOTONIC
time minus the time it was dead, with its own result (before: the whole 3 s again after
the restart, 4.5 s)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.errors import Unsupported
from cryo.image.reader import Image
from cryo.linux import bpf
from tests.conftest import Procs, Victim, restart_later
from tests.integration.test_procstate import build_threaded

pytestmark = pytest.mark.timeout(120)

# mode -> (the result it must return: ret, errno)
CALLS = {"poll": (0, 0), "futex": (-1, 110), "nanosleep": (0, 0), "clock_nanosleep": (0, 0)}


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("restartblock"), "restartblock_s10")


def _bpf_or_skip() -> None:
    try:  # (the code before this change has no bpf.need: its layout then)
        getattr(bpf, "need", lambda *_: bpf.layout())("task.restart_block", "iter_task")
    except bpf.Unavailable as err:
        pytest.skip(f"no BPF iterator here: {err}")


@pytest.mark.parametrize("mode", list(CALLS))
def test_sleep_keeps_its_time_left(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    _bpf_or_skip()
    out = tmp_path / "out.txt"
    v = procs.spawn([exe, str(out), mode], out)
    v.wait_line("ready")
    v, dead = restart_later(procs, v, tmp_path / "img")
    line = v.wait_line("done", timeout=10)
    m = re.fullmatch(r"done (\S+) ret=(-?\d+) errno=(\d+) ms=(\d+)", line)
    assert m, line
    assert (int(m[2]), int(m[3])) == CALLS[mode], line
    own = int(m[4]) / 1000 - dead  # its own time in the call, the dead time taken out
    assert 2.85 < own < 3.4, f"{line}: {own:.3f} s of its own (dead {dead:.3f} s)"
    assert not v.fails()
    (rec,) = Image(str(tmp_path / "img")).raw(b"THRD")
    assert 1.2e9 < rec["restart"]["left_ns"] < 1.6e9, rec["restart"]


@pytest.fixture(scope="module")
def cloneio(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("cloneio"), "cloneio_s10")


def test_shared_io_context_refused(procs: Procs, cloneio: str, tmp_path: Path) -> None:
    """A child made with clone(CLONE_IO) shares its parent's I/O context (its I/O priority
    with it): refused by name, exit 9, the tree running on (before: checkpointed, and
    restarted with two I/O contexts).  A child made by fork, its priority copied into an
    I/O context of its own, is checkpointed and restarted."""
    _bpf_or_skip()
    for mode in ("own", "shared"):
        out = tmp_path / f"{mode}.txt"
        v = procs.spawn([cloneio, str(out), mode], out)
        child = Victim(0, Path(f"{out}.child"))
        v.wait_ok_after(2)
        child.wait_ok_after(2)
        procs.track(int(Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split()[0]))
        img = str(tmp_path / f"img-{mode}")
        if mode == "own":
            checkpoint(v.pid, img, scope="tree")
            v.wait_ok_after(max(v.oks()) + 3)
            child.wait_ok_after(max(child.oks()) + 3)
            continue
        with pytest.raises(Unsupported, match=r"I/O context .*CLONE_IO") as err:
            checkpoint(v.pid, img, scope="tree")
        assert err.value.exit_code == 9
        v.wait_ok_after(max(v.oks()) + 3)
        child.wait_ok_after(max(child.oks()) + 3)
