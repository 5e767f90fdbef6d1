"""The address-space layout exec computes from the personality and RLIMIT_STACK (issue 9,
session 10 h2: engine/execlayout.py).  victims/layout_s10.c checks itself every round
(the personality word, where mmap(NULL) puts four sizes and a MAP_32BIT page, how far
brk grows, its maps), and prints that probe; an uninterrupted twin started the same way
prints the same one."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap
from tests.integration.test_procstate import cycle

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("layout_s10") / "layout_s10"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out),
                    str(VICTIMS / "layout_s10.c")], check=True)  # fmt: skip
    return str(out)


def _start(procs: Procs, exe: str, where: Path, mode: str) -> Victim:
    where.mkdir()
    out = where / "out.txt"
    v = procs.spawn([exe, str(out), mode, str(where)], out)
    v.wait_line("ready")
    v.wait_ok_after(1)
    return v


def _probe(v: Victim) -> str:
    return [x for x in v.lines() if x.startswith("probe ")][-1]


@pytest.mark.parametrize("mode", ["norand", "legacy", "unlimited", "bigstack"])
def test_layout_computed_at_exec(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """setarch -R (gdb's, rr's default), setarch -L -R, and -R under an unlimited or a
    512 MiB ulimit -s: restored, mmap(NULL) of 4 KiB to 1 GiB, MAP_32BIT and brk go where
    they went before and where they go in a twin never checkpointed.  Before, they went
    where cryo's own layout (randomized, top-down, an 8 MiB stack's gap) put them
    ("FAIL probe", exit 0)."""
    twin = _start(procs, exe, tmp_path / "b", mode)
    v = _start(procs, exe, tmp_path / "a", mode)
    assert _probe(v).split()[1:] == _probe(twin).split()[1:]
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    assert _probe(v) == _probe(twin)


def test_read_implies_exec_set_after_the_exec(procs: Procs, exe: str, tmp_path: Path) -> None:
    """READ_IMPLIES_EXEC set with personality() after the exec, a PROT_READ mapping made
    before it (r--) and one after (r-x): each comes back with its own permissions."""
    v = cycle(procs, _start(procs, exe, tmp_path / "a", "rie"), tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_child_with_a_layout_of_its_own(procs: Procs, exe: str, tmp_path: Path) -> None:
    """An ordinary parent whose child execs itself under ADDR_NO_RANDOMIZE (a shell that
    runs setarch -R, gdb and its inferior), checkpointed as a tree: the child, forked
    again by its restored parent, is exec'd for its own layout, and probes as its twin."""
    trees = []
    for side in ("b", "a"):
        parent = _start(procs, exe, tmp_path / side, "tree")
        kid = int(parent.wait_line("child ").split()[1])
        procs.track(kid)
        child = Victim(kid, tmp_path / side / "child.txt")
        child.wait_ok_after(1)
        trees.append((parent, child))
    (_, twin), (parent, child) = trees
    last = max(child.oks())
    checkpoint(parent.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    reap(parent.pid)
    reap(child.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    child.wait_ok_after(last + 2)
    parent.wait_ok_after(max(parent.oks()) + 2)
    assert not child.fails() and not parent.fails()
    assert _probe(child) == _probe(twin)


def test_ordinary_process_keeps_the_fast_path(procs: Procs, exe: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A process whose layout is cryo's (no personality, the same ulimit -s) and its
    child are forked as before, never exec'd: the stub is not even made."""
    from cryo.engine import execlayout  # (new in session 10)

    assert execlayout.plan({"personality": 0, "rlimits": {3: (8 << 20, 2**64 - 1)}}) \
        .layout == execlayout.layout_of(0, 8 << 20)  # fmt: skip

    def no_stub() -> int:
        raise AssertionError("an ordinary process was exec'd for its layout")

    monkeypatch.setattr(execlayout, "stub_fd", no_stub)
    v = _start(procs, exe, tmp_path / "a", "rie")  # (rie: no exec, an ordinary layout)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
