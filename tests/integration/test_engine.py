"""Each kind of state survives checkpoint, kill and restart (CRIU zdtm style): the
victim checks itself every round and reports "ok N" or "FAIL what"."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap


def cycle(procs: Procs, v: Victim, img: Path, **restart_kw: Any) -> Victim:
    """Checkpoint ``v`` (killing it once the image is written), reap it, restart it."""
    last = max(v.oks(), default=-1)
    r = checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    assert r.memory_bytes > 0
    reap(v.pid)
    rr = restart(str(img), **restart_kw)
    procs.track(rr.pid)
    assert rr.pid == v.pid, "the old pid was free, the restart must get it back"
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 1)
    return new


CASES = {
    "counter": [],
    "regs": [],
    "misc": [],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_survives(procs: Procs, build: Any, tmp_path: Path, name: str) -> None:
    v = procs.spawn([build(name), str(tmp_path / "out.txt"), *CASES[name]], tmp_path / "out.txt")
    v.wait_ok_after(2)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_memory_survives(procs: Procs, build: Any, tmp_path: Path) -> None:
    mapped = tmp_path / "mapped.bin"
    mapped.write_bytes(b"F" * 3 * 4096)
    v = procs.spawn([build("memory"), str(tmp_path / "out.txt"), str(mapped)], tmp_path / "out.txt")
    v.wait_ok_after(1, timeout=30)
    before = (tmp_path / "maps-before").write_text(Path(f"/proc/{v.pid}/maps").read_text())
    assert before
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    # the same mappings at the same addresses (the vDSO and vvar included)
    def layout(text: str) -> list[tuple[str, str, str]]:
        return [(ln.split()[0], ln.split()[1], ln.split()[-1] if len(ln.split()) > 5 else "")
                for ln in text.splitlines()]
    after = Path(f"/proc/{v.pid}/maps").read_text()
    assert layout((tmp_path / "maps-before").read_text()) == layout(after)


def test_files_survive(procs: Procs, build: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    v = procs.spawn([build("files"), str(tmp_path / "out.txt"), str(work)], tmp_path / "out.txt")
    v.wait_ok_after(2)
    v = cycle(procs, v, tmp_path / "img")
    rounds = (work / "append.log").read_text().splitlines()
    assert rounds[-1].startswith("round")


def test_signals_survive(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("signals"), str(tmp_path / "out.txt"), "12"], tmp_path / "out.txt")
    v.wait_ok_after(2)
    v = cycle(procs, v, tmp_path / "img")
    # after round 12 it takes the queued real-time signals, with their values, in order
    line = v.wait_line("queued")
    assert line == "queued 1234 5678 1"


@pytest.mark.parametrize("call", ["sleep", "clock"])
def test_interrupted_nanosleep_resumes(procs: Procs, build: Any, tmp_path: Path,
                                       call: str) -> None:  # fmt: skip
    """A two-second nanosleep (clock_nanosleep) checkpointed one second in sleeps only
    the second left after the restart, not two again."""
    v = procs.spawn([build("syscalls"), str(tmp_path / "out.txt"), call], tmp_path / "out.txt")
    v.wait_line("before 1", timeout=5)
    time.sleep(1.0)
    last = max(v.oks(), default=-1)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    procs.track(restart(str(tmp_path / "img")).pid)
    t0 = time.monotonic()
    v.wait_ok_after(last, timeout=5)  # "ok" of the interrupted round
    assert not v.fails()
    slept = time.monotonic() - t0
    assert 0.5 < slept < 1.6, f"the restored sleep took {slept:.2f} s, not the 1 s left"


def test_interrupted_pause_resumes(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("syscalls"), str(tmp_path / "out.txt"), "pause"], tmp_path / "out.txt")
    v.wait_line("before 0")
    time.sleep(0.1)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    pid = procs.track(restart(str(tmp_path / "img")).pid)
    time.sleep(0.2)
    assert "ok 0" not in v.lines(), "pause() must still be waiting after the restart"
    os.kill(pid, signal.SIGUSR1)
    v.wait_line("ok 0")
    v.wait_line("before 1")


def test_checkpoint_leaves_target_running(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    for i in range(2):  # twice in a row, to two images
        checkpoint(v.pid, str(tmp_path / f"img{i}"))
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0" in status
    assert "State:\tS" in status or "State:\tR" in status
    v.wait_ok_after(max(v.oks()) + 3)


def test_restart_twice_and_checkpoint_restored(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    first = cycle(procs, v, tmp_path / "img")
    # restart the same image again after killing the first copy
    reap(first.pid)
    again = restart(str(tmp_path / "img"))
    procs.track(again.pid)
    again_v = Victim(again.pid, v.out)
    again_v.wait_ok_after(max(v.oks()) + 1)
    # and checkpoint the restored process, and restart that
    third = cycle(procs, again_v, tmp_path / "img-of-restored")
    assert not third.fails()
