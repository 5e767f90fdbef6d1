"""Do no harm: a checkpoint that fails leaves the target running as before (not
stopped, not traced, no mapping left) and never leaves a half image; a restart that
fails leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.errors import CryoError, NoSuchProcess
from tests.conftest import Procs, Victim, reap
from tests.integration.test_cli import assert_untouched, children, no_new_children


def big_victim(procs: Procs, build: Any, tmp_path: Path, mib: int) -> Victim:
    v = procs.spawn([build("bigmem"), str(tmp_path / "out.txt"), str(mib)], tmp_path / "out.txt")
    v.wait_ok_after(1, timeout=30)
    return v


def traced(pid: int) -> bool:
    try:
        return "TracerPid:\t0\n" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def kill_once_traced(pid: int, landed: list[bool]) -> None:
    """SIGKILL ``pid`` as soon as a checkpoint holds it (traced): inside the checkpoint."""
    deadline = time.monotonic() + 20
    while not traced(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)
    landed.append(traced(pid))
    os.kill(pid, signal.SIGKILL)


def test_target_dies_during_checkpoint(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = big_victim(procs, build, tmp_path, 1024)
    img = tmp_path / "img"
    landed: list[bool] = []
    killer = threading.Thread(target=kill_once_traced, args=(v.pid, landed))
    killer.start()
    with pytest.raises(NoSuchProcess):
        # --stop keeps it frozen until the image is complete, so the kill lands inside
        checkpoint(v.pid, str(img), signal_after=signal.SIGSTOP)
    killer.join()
    assert landed == [True], "the kill landed before the checkpoint held the target"
    assert not img.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("img")] == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full(procs: Procs, build: Any, tmp_path: Path, tiny_fs: Path) -> None:
    v = big_victim(procs, build, tmp_path, 16)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    with pytest.raises(CryoError, match="No space left"):
        checkpoint(v.pid, str(tiny_fs / "img"))
    assert os.listdir(tiny_fs) == []
    assert_untouched(v, maps)


def test_good_image_survives_failed_replacement(procs: Procs, build: Any, tmp_path: Path,
                                                tiny_fs: Path) -> None:  # fmt: skip
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    checkpoint(v.pid, str(tiny_fs / "img"))
    good = {p.name: p.read_bytes() for p in (tiny_fs / "img").iterdir()}
    big = big_victim(procs, build, tmp_path / "big" if (tmp_path / "big").mkdir() is None
                     else tmp_path, 16)  # fmt: skip
    with pytest.raises(CryoError):
        checkpoint(big.pid, str(tiny_fs / "img"), force=True)
    assert {p.name: p.read_bytes() for p in (tiny_fs / "img").iterdir()} == good
    assert sorted(os.listdir(tiny_fs)) == ["img"]


def cryo_mid_dump(procs: Procs, build: Any, tmp_path: Path, sig: int) -> tuple[Victim, str]:
    v = big_victim(procs, build, tmp_path, 1024)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    img = tmp_path / "img"
    p = subprocess.Popen([sys.executable, "-m", "cryo", "checkpoint", str(v.pid), "-D", str(img)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
    deadline = time.monotonic() + 20

    def writing() -> bool:  # pages are being written: the injected calls are long done
        return any((t / "pages.img").exists() and (t / "pages.img").stat().st_size > 8192
                   for t in tmp_path.glob("img.tmp.*"))  # fmt: skip

    while not writing():
        assert time.monotonic() < deadline, "the checkpoint never started writing pages"
        assert p.poll() is None, "the checkpoint finished before it could be interrupted"
        time.sleep(0.001)
    p.send_signal(sig)
    _, _err = p.communicate(timeout=30)
    assert p.returncode != 0
    return v, maps


def test_sigint_to_cryo(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, maps = cryo_mid_dump(procs, build, tmp_path, signal.SIGINT)
    assert_untouched(v, maps)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("img")] == []


def test_sigkill_to_cryo(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, maps = cryo_mid_dump(procs, build, tmp_path, signal.SIGKILL)
    assert_untouched(v, maps)
    assert not (tmp_path / "img").exists()
    # what the killed cryo left is cleaned by the next checkpoint to the same place
    checkpoint(v.pid, str(tmp_path / "img"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("img")) == ["img"]


def test_failed_restart_leaves_no_process(procs: Procs, build: Any, tmp_path: Path) -> None:
    exe = tmp_path / "counter"
    shutil.copy(build("counter"), exe)
    v = procs.spawn([str(exe), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    exe.write_bytes(exe.read_bytes() + b"\0")  # the binary changed since the checkpoint
    before = children()
    with pytest.raises(CryoError, match="changed since the checkpoint"):
        restart(str(tmp_path / "img"))
    no_new_children(before)
    assert not os.path.exists(f"/proc/{v.pid}") or "Z" in Path(f"/proc/{v.pid}/stat").read_text()


def test_failed_tree_restart_leaves_no_process(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The second process of a tree cannot be rebuilt (its binary changed): the first,
    already built, is killed too; nothing of the tree is left."""
    exe = tmp_path / "counter"
    shutil.copy(build("counter"), exe)
    code = (f"import os,time\npid = os.fork()\nif pid == 0:\n"
            f"  os.execv('{exe}', ['{exe}', '{tmp_path / 'out.txt'}'])\n"
            "time.sleep(600)\n")
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out.txt")
    v.wait_ok_after(2)
    child = int(Path(f"/proc/{v.pid}/task/{v.pid}/children").read_text().split()[0])
    procs.track(child)
    checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    reap(child)
    reap(v.pid)
    exe.write_bytes(exe.read_bytes() + b"\0")
    before = children()
    with pytest.raises(CryoError, match="changed since the checkpoint"):
        restart(str(tmp_path / "img"))
    no_new_children(before)
    for pid in (v.pid, child):
        assert not os.path.exists(f"/proc/{pid}") or " Z" in Path(f"/proc/{pid}/stat").read_text()


def test_sigkill_to_cryo_at_random_moments(procs: Procs, build: Any, tmp_path: Path) -> None:
    """cryo killed outright at any moment of a checkpoint, the injected calls included:
    the target always goes on as it was (the work is done by a worker that cleans up)."""
    import random

    v = big_victim(procs, build, tmp_path, 64)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    seed = int(os.environ.get("CRYO_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"seed {seed} (CRYO_TEST_SEED to repeat)")
    rnd = random.Random(seed)
    moments: dict[str, int] = {"injecting": 0}
    for i in range(30):
        p = subprocess.Popen([sys.executable, "-m", "cryo", "checkpoint", str(v.pid), "-D",
                              str(tmp_path / f"img{i}")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True)  # fmt: skip
        if i % 3 == 0:  # every third: the moment the scratch page of the injected calls is in
            deadline = time.monotonic() + 20
            while Path(f"/proc/{v.pid}/maps").read_text() == maps and p.poll() is None:
                assert time.monotonic() < deadline
            moment = "injecting" if p.poll() is None else "after"
        else:
            time.sleep(rnd.uniform(0.05, 0.35))
            moment = "frozen" if traced(v.pid) else "before or after"
        moments[moment] = moments.get(moment, 0) + 1
        p.kill()
        p.wait()
    print("cryo killed:", moments)
    assert moments["injecting"] >= 5, moments  # the kills did land inside injected calls
    deadline = time.monotonic() + 30
    while list(tmp_path.glob("img*.tmp.*")):  # the workers finish their clean-up
        assert time.monotonic() < deadline, list(tmp_path.glob("img*.tmp.*"))
        time.sleep(0.05)
    time.sleep(0.2)
    assert_untouched(v, maps)
