"""Memory state beyond the data (issue 9, "Memory"): madvise advice, mlock, NORESERVE,
DROPPABLE, guard pages, mseal, mlockall; mappings of deleted files, /dev/zero and memfd;
hugetlb; refusals (AIO rings).  Each victim checks itself after checkpoint, kill and
restart and reports "ok N" or "FAIL what"."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.engine.show import describe
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_tree import tree_pids


def poke(v: Victim, rounds: int = 1) -> None:
    """One round of checks per SIGUSR1 (tests/victims/rounds.h), each awaited; then wait
    until the victim sleeps in rt_sigsuspend again, holding no /proc file open."""
    for _ in range(rounds):
        last = max(v.oks(), default=-1)
        os.kill(v.pid, signal.SIGUSR1)
        v.wait_ok_after(last)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{v.pid}/syscall").read_text().split()[0] != "130":
        assert time.monotonic() < deadline, "the victim does not go back to sigsuspend"
        time.sleep(0.005)


def cycle(procs: Procs, v: Victim, img: Path, poked: bool = True) -> Victim:
    """Checkpoint ``v`` (killed once the image is written), reap it, restart it; the
    restored victim must pass two more rounds of its own checks (asked for with
    SIGUSR1 when ``poked``)."""
    last = max(v.oks(), default=-1)
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(img))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    if poked:
        poke(new, 2)
    else:
        new.wait_ok_after(last + 2)
    return new


def smaps_flags(pid: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    start = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            start = int(head.split("-")[0], 16)
        elif head == "VmFlags:":
            out[start] = line.split()[1:]
    return out


def test_ksm_merge_any_survives(procs: Procs, build: Any, tmp_path: Path) -> None:
    """PR_SET_MEMORY_MERGE (KSM for every mapping), with one mapping opted out."""
    if not Path("/sys/kernel/mm/ksm").exists():
        pytest.skip("no KSM in this kernel")
    out = tmp_path / "out.txt"
    v = procs.spawn([build("madvise"), str(out), "ksm"], out)
    v.wait_line("ready")
    poke(v, 2)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


@pytest.mark.parametrize("mode", ["regions", "future"])
def test_madvise_state_survives(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("madvise"), str(out), mode], out)
    v.wait_line("ready")
    poke(v, 2)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    # `cryo show` names the state of each mapping
    states = {s for m in describe(str(tmp_path / "img"))["processes"][0]["mappings"]
              for s in m["state"]}  # fmt: skip
    assert {"dontfork", "wipeonfork", "hugepage", "nohugepage", "dontdump", "mergeable",
            "random", "sequential", "locked", "lock-onfault", "noreserve", "droppable",
            "sealed", "guard pages 2"} <= states, states


def test_object_mappings_survive(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Private and shared mappings of a deleted file, private /dev/zero, memfd mapped
    shared and private: data, sharing with the file, names."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "files", str(tmp_path)], out)
    v.wait_line("ready")
    poke(v, 2)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def untouched(v: Victim, poked: bool = False) -> None:
    """The target still runs, untraced, and keeps passing its own checks."""
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0" in status, status
    if poked:
        poke(v, 2)
    else:
        v.wait_ok_after(max(v.oks(), default=-1) + 2)


def test_idle_aio_ring(procs: Procs, build: Any, tmp_path: Path) -> None:
    """An AIO context with nothing in it (refused before session 12) comes back: the
    victim's io_getevents on it goes on returning 0, not EINVAL (engine/aio.py; the
    events and requests in flight: tests/integration/test_aio.py)."""
    from tests.integration.test_aio import _bpf_or_skip

    _bpf_or_skip()
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "aio"], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img", poked=False)
    assert not v.fails()


def _hugetlb_victim(procs: Procs, build: Any, tmp_path: Path, hugepages: Any) -> Victim:
    """mapkinds.c's hugetlb mappings (8 huge pages in the pool), touched."""
    hugepages(8)
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "hugetlb"], out)
    v.wait_line("ready")
    poke(v, 2)
    return v


def test_hugetlb_mappings_survive(procs: Procs, build: Any, tmp_path: Path,
                                  hugepages: Any) -> None:  # fmt: skip
    """MAP_HUGETLB private (one huge page touched of two) and shared, a hugetlb memfd."""
    v = _hugetlb_victim(procs, build, tmp_path, hugepages)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_hugetlb_restart_refused_without_pool(procs: Procs, build: Any, tmp_path: Path,
                                              hugepages: Any) -> None:  # fmt: skip
    """With no huge pages left at restart, a clear error before anything is created."""
    v = _hugetlb_victim(procs, build, tmp_path, hugepages)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    hugepages(0)
    r = run_cryo("restart", "-D", str(tmp_path / "img"))
    assert r.returncode == 1, r.stderr
    assert "huge pages of 2048 kB" in r.stderr, r.stderr


def _pss(pids: list[int]) -> int:
    """Sum of the proportional set sizes of ``pids`` (bytes)."""
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def _cow_tree(procs: Procs, build: Any, tmp_path: Path
              ) -> tuple[Victim, list[int], int, int]:  # fmt: skip
    out = tmp_path / "out.txt"
    v = procs.spawn([build("cowtree"), str(out)], out)
    v.wait_for(lambda ls: sum("child" in x and " ok " in x for x in ls) >= 3, timeout=30)
    v.wait_ok_after(1, timeout=30)
    pids = tree_pids(v.pid)
    assert len(pids) == 4
    for p in pids[1:]:
        procs.track(p)
    before = _pss(pids)
    r = checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    for p in pids:
        reap(p)
    return v, pids, r.memory_bytes, before


def _restart_tree(procs: Procs, v: Victim, tmp_path: Path) -> list[int]:
    lines = len(v.lines())
    rr = restart(str(tmp_path / "img"))
    for p in rr.pids.values():
        procs.track(p)
    new = Victim(rr.pid, v.out)
    for k in (1, 2, 3):  # every child checks its whole region again after the restart
        new.wait_for(lambda ls, k=k: bool(new.fails()) or any(
            x.startswith(f"child {k} ok") for x in ls[lines:]), timeout=30)  # fmt: skip
    new.wait_ok_after(max(new.oks()) + 1, timeout=30)
    assert not new.fails(), new.fails()
    return tree_pids(rr.pid)


def test_cow_pages_saved_once(procs: Procs, build: Any, tmp_path: Path) -> None:
    """32 MiB shared by a parent and 3 children is saved once (with the parent); each
    child saves only the pages it wrote (1 MiB) and the ones its parent rewrote since
    (1 MiB); each process has its own bytes back after the restart."""
    v, pids, saved, _ = _cow_tree(procs, build, tmp_path)
    assert saved < (32 + 3 * 2 + 6) << 20, f"{saved >> 20} MiB saved: pages shared COW saved again"
    img = describe(str(tmp_path / "img"))
    assert [p["pid"] for p in img["processes"]] == pids
    after = _restart_tree(procs, v, tmp_path)
    assert after == pids


def test_cow_tree_uses_no_more_memory(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The restored tree shares its pages again: the sum of Pss is what it was (the
    children's old copies of the 1 MiB their parent rewrote, shared among the three
    before, are one copy each after: 2 MiB more, and some slack)."""
    v, _, _, before = _cow_tree(procs, build, tmp_path)
    after = _restart_tree(procs, v, tmp_path)
    grown = _pss(after) - before
    assert grown < 4 << 20, f"the restored tree uses {grown >> 20} MiB more"


def _use_text_syscall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the orchestrators look for a syscall instruction, use textscan's search
    (the call site to change: see engine/textscan.py)."""
    import sys

    from cryo.engine import textscan

    for name, mod in list(sys.modules.items()):
        if name.startswith("cryo.engine.") and name != "cryo.engine.textscan" and hasattr(
            mod, "find_vdso_syscall"
        ):
            monkeypatch.setattr(mod, "find_vdso_syscall",
                                lambda pid, maps=None: textscan.find_syscall(pid))


def test_no_vdso(procs: Procs, build: Any, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A target that unmapped its vDSO is checkpointed through a syscall instruction of
    its own text, and restored without a vDSO."""
    from cryo.engine import textscan

    out = tmp_path / "out.txt"
    v = procs.spawn([build("novdso"), str(out)], out)
    v.wait_line("ready")
    poke(v, 2)
    addr = textscan.find_syscall(v.pid)
    with open(f"/proc/{v.pid}/mem", "rb") as mem:
        mem.seek(addr)
        assert mem.read(2) == b"\x0f\x05"
    _use_text_syscall(monkeypatch)
    v = cycle(procs, v, tmp_path / "img")
    assert "[vdso]" not in Path(f"/proc/{v.pid}/maps").read_text()


def test_no_vdso_cli(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("novdso"), str(out)], out)
    v.wait_line("ready")
    poke(v, 2)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    untouched(v, poked=True)


def test_userfaultfd_region_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "uffd"], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 9, r.stderr
    assert "userfaultfd" in r.stderr, r.stderr
    untouched(v)


def test_fd_and_mapping_stay_one_file(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "fd+map", str(tmp_path)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img", poked=False)
    assert not v.fails()


def test_sysv_mapping_state_survives(procs: Procs, build: Any, tmp_path: Path) -> None:
    """An attached SysV segment keeps its mlock and madvise state."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "sysv"], out)
    v.wait_line("ready")
    shmids = {int(line.split()[4]) for line in Path(f"/proc/{v.pid}/maps").read_text()
              .splitlines() if "SYSV" in line}  # (its segment's inode is its id)
    try:
        poke(v, 2)
        v = cycle(procs, v, tmp_path / "img")
        assert not v.fails()
    finally:  # the segment outlives the process: removed here
        procs.kill(v.pid)
        for shmid in shmids:
            subprocess.run(["ipcrm", "-m", str(shmid)], check=False, capture_output=True)


def test_shared_address_space_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A parent and a child sharing one address space (CLONE_VM) would come back as two."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("mapkinds"), str(out), "clonevm"], out)
    v.wait_ok_after(1)
    for p in tree_pids(v.pid)[1:]:
        procs.track(p)
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 9, r.stderr
    assert "shares its address space" in r.stderr, r.stderr
    untouched(v)


def test_protection_keys_survive(procs: Procs, build: Any, tmp_path: Path) -> None:
    """x86 protection keys: the allocated set (one key unused), a mapping's key, the
    thread's PKRU rights."""
    if " pku" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("no protection keys on this CPU")
    out = tmp_path / "out.txt"
    v = procs.spawn([build("madvise"), str(out), "pkeys"], out)
    v.wait_line("ready")
    poke(v, 2)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    states = {s for m in describe(str(tmp_path / "img"))["processes"][0]["mappings"]
              for s in m["state"]}  # fmt: skip
    assert "protection key 2" in states, states
