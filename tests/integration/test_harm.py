"""Do no harm: a checkpoint that fails leaves the target running as before (not
stopped, not traced, no mapping left) and never leaves a half image; a restart that
fails leaves no process behind."""

from __future__ import annotations

import contextlib
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
from cryo.image.reader import Image
from tests.conftest import Procs, Victim, counter_of_its_own, gone, reap, run_cryo
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
    exe, v = counter_of_its_own(procs, build, tmp_path)
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
    for pid in (v.pid, child):  # not even a zombie: the restart reaped what it made
        assert not os.path.exists(f"/proc/{pid}"), Path(f"/proc/{pid}/stat").read_text()


def _pc(pid: int) -> int | None:
    """The user instruction pointer of a stopped task (the last field of
    /proc/PID/syscall), None while it runs."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return None
    return int(fields[-1], 16) if len(fields) > 1 else None


def _scratch(maps: str, before: str) -> tuple[int, int] | None:
    """The mapping a checkpoint added to the target (its scratch area), if any."""
    old = set(before.splitlines())
    for line in maps.splitlines():
        if line not in old and line.split()[-1] == "0":  # anonymous
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo, hi
    return None


def _vdso(maps: str) -> tuple[int, int]:
    line = next(x for x in maps.splitlines() if x.endswith("[vdso]"))
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    return lo, hi


def _scratch_chunk(mem: Any, lo: int) -> bool:
    """64 KiB at ``lo``: cryo's scratch, with its routine, or as mapped (zeros: the
    mmap ran as cryo died)."""
    from cryo.engine.inject import BATCH_CODE, BATCH_REGION, SCRATCH_SIZE

    mem.seek(lo)
    data = mem.read(SCRATCH_SIZE)
    at = SCRATCH_SIZE - BATCH_REGION
    return data[at : at + len(BATCH_CODE)] == BATCH_CODE or not data.strip(b"\0")


def left_scratch(pid: int, maps: str, before: str) -> list[str]:
    """The mappings in ``maps`` that ``before`` lacks and that are not a scratch area
    of cryo's left by a killed checkpoint (anonymous, 64 KiB, cryo's batch routine at
    its end, or untouched): all that the death of cryo may leave."""
    from cryo.engine.inject import SCRATCH_SIZE

    old = set(before.splitlines())
    extra = []
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps.splitlines():
            if line in old:
                continue
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if (hi - lo) % SCRATCH_SIZE == 0 and line.split()[-1] == "0":  # (or several,
                ends = range(lo + SCRATCH_SIZE, hi + 1, SCRATCH_SIZE)  # merged into one)
                if all(_scratch_chunk(mem, e - SCRATCH_SIZE) for e in ends):
                    continue
            extra.append(line)
    return extra + [x for x in old if x not in maps.splitlines()]


def kill_cryo_at_random_moments(v: Victim, tmp_path: Path, tries: int, seed: int,
                                log: Any = print, before: str | None = None
                                ) -> dict[str, int]:  # fmt: skip
    """``tries`` checkpoints of ``v``, each killed outright with its worker (SIGKILL to
    its process group: the tracer dies), at a moment chosen by ``seed``: every other one
    once its injected calls run (the target stopped with its instruction pointer in
    cryo's scratch area: a batch running or stopped at its end), the others at a random
    time once it holds the target, or from its start.  After each, the target must go
    on as it was, untraced, with no mapping but possibly the scratch area left.
    Returns where the kills landed."""
    import random

    rnd = random.Random(seed)
    if before is None:  # (the maps before the first of several calls: scratch areas
        before = Path(f"/proc/{v.pid}/maps").read_text()  # left by a call may merge)
    vdso = _vdso(before)
    moments: dict[str, int] = {}
    for i in range(tries):
        maps0 = Path(f"/proc/{v.pid}/maps").read_text()
        p = subprocess.Popen([sys.executable, "-m", "cryo", "checkpoint", str(v.pid), "-D",
                              str(tmp_path / f"img{i}")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True,
                             start_new_session=True)  # fmt: skip
        moment = "before or after"
        if i % 2 == 0:  # inside the injected calls
            deadline = time.monotonic() + 20
            spins = rnd.randrange(0, 4)  # (polls seeing it inside before the kill)
            while p.poll() is None and time.monotonic() < deadline:
                scratch = _scratch(Path(f"/proc/{v.pid}/maps").read_text(), maps0)
                pc = _pc(v.pid) if scratch else None
                if pc is not None and scratch[0] <= pc < scratch[1]:  # type: ignore[index]
                    if spins == 0:
                        moment = "in a batch"
                        break
                    spins -= 1
        else:  # once it holds the target (every fourth: from its start), a random time
            deadline = time.monotonic() + 20
            while i % 4 == 1 and not traced(v.pid) and p.poll() is None:
                assert time.monotonic() < deadline
            time.sleep(rnd.uniform(0.0, 0.15 if i % 4 == 1 else 0.4))
            pc = _pc(v.pid)
            moment = "frozen" if traced(v.pid) else "before or after"
            if pc is not None and vdso[0] <= pc < vdso[1]:
                moment = "in a single call"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        moments[moment] = moments.get(moment, 0) + 1
        deadline = time.monotonic() + 10
        while traced(v.pid):  # the worker's death lets it go
            assert time.monotonic() < deadline, f"try {i}: still traced"
            time.sleep(0.01)
        time.sleep(0.05)
        maps = Path(f"/proc/{v.pid}/maps").read_text()
        assert os.path.exists(f"/proc/{v.pid}") and not gone(v.pid), \
            f"try {i} ({moment}): the target died, seed {seed}"  # fmt: skip
        assert left_scratch(v.pid, maps, before) == [], f"try {i} ({moment}): seed {seed}"
        status = Path(f"/proc/{v.pid}/status").read_text()
        assert "State:\tT" not in status and "State:\tt" not in status, f"try {i}"
        for t in tmp_path.glob(f"img{i}*"):
            shutil.rmtree(t, ignore_errors=True)
        v.wait_ok_after(max(v.oks()) + 1)
        assert not v.fails(), f"try {i} ({moment}): seed {seed}"
    log(f"cryo and its worker killed: {moments}")
    return moments


def test_sigkill_to_cryo_at_random_moments(procs: Procs, build: Any, tmp_path: Path) -> None:
    """cryo and its worker (the tracer) killed outright at any moment of a checkpoint,
    the injected calls included: the target always goes on as it was.  Seeded
    (CRYO_TEST_SEED repeats a run); bench/harm_soak.py runs many more."""
    v = big_victim(procs, build, tmp_path, 64)
    seed = int(os.environ.get("CRYO_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"seed {seed} (CRYO_TEST_SEED to repeat)")
    moments: dict[str, int] = {}
    before = Path(f"/proc/{v.pid}/maps").read_text()
    for round_ in range(6):  # 16 tries, more (up to 96) until 6 kills landed in a batch
        got = kill_cryo_at_random_moments(v, tmp_path, 16, seed + round_, before=before)
        moments = {k: moments.get(k, 0) + got.get(k, 0) for k in {*moments, *got}}
        if moments.get("in a batch", 0) >= 6:
            break
    print(moments)
    assert moments.get("in a batch", 0) >= 6, moments  # the kills did land inside
    # what the killed checkpoints left (their scratch areas) the next one removes: each
    # try's checkpoint removed the last one's; one more aimed in a batch leaves one now
    for k in range(16):
        if Path(f"/proc/{v.pid}/maps").read_text() != before:
            break
        kill_cryo_at_random_moments(v, tmp_path, 1, seed + 100 + k, before=before)
    assert Path(f"/proc/{v.pid}/maps").read_text() != before
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "last"))
    assert r.returncode == 0, r.stderr
    assert Path(f"/proc/{v.pid}/maps").read_text() == before
    from cryo.engine import scratchlog

    assert not [n for n in os.listdir(scratchlog.LEDGER) if n.startswith(f"{v.pid}-")]
    image = Image(str(tmp_path / "last"))
    try:
        vmas = [x for rec in image.raw(b"MM  ") for x in rec["vmas"]]
    finally:
        image.close()
    assert not [x for x in vmas if x["prot"] == 7 and not x.get("path")]  # (nor the image)
