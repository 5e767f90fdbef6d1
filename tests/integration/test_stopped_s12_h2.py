"""A stopped process is restored stopped where it stopped (issue 9, "Job control";
session 12 h2): a thread stopped inside pause or sigsuspend is stopped inside it again
(/proc/PID/task/TID/syscall names the call, SigBlk is the call's mask), whether its
parent is outside the restart (test_probes_s11_h3::test_stopped) or in it (here); with a
signal that came while it was stopped, it stops as before and takes the signal once
continued; a call that a stop and a continue end with EINTR ends so."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration import test_probes_s11_h3 as probes

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> str:
    return probes._exe("procstate_s11_h3", tmp_path_factory.mktemp("procstate_s12_h2"))


def _state(pid: int, sub: str = "") -> str:
    return probes._text(probes._read(f"/proc/{pid}/{sub}stat")).rpartition(")")[2].split()[0]


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while any(_state(pid, f"task/{t}/") != "T" for t in os.listdir(f"/proc/{pid}/task")):
        assert time.monotonic() < deadline, "not stopped"  # (every thread: the stop done)
        time.sleep(0.01)


def test_stopped_child_in_pause(procs: Procs, victim: str, tmp_path: Path) -> None:
    """The victim's child (in pause) stopped by SIGSTOP, its parent running: every /proc
    file of both as before (the child inside pause, with its mask), the child goes on
    once continued and its parent checks itself."""
    v = probes._start(procs, victim, tmp_path, "child")
    kids = [p for p in probes.tree(v.pid)[1:] if _state(p) != "Z"]
    assert len(kids) == 1, kids
    for p in probes.tree(v.pid)[1:]:
        procs.track(p)
    _stop(kids[0])
    before, after, new = probes.cycle(procs, v.pid, tmp_path / "img", 0.3, True, "--tree")
    d = probes.diff(before, after)
    assert not d, "\n".join(d)
    child = [p for p in probes.tree(new)[1:] if _state(p) != "Z"]
    assert [_state(p) for p in child] == ["T"]
    assert probes._text(probes._read(f"/proc/{child[0]}/syscall")).split()[0] == str(34)  # pause
    os.kill(child[0], signal.SIGCONT)
    deadline = time.monotonic() + 10
    while _state(child[0]) == "T":
        assert time.monotonic() < deadline, "not continued"
        time.sleep(0.01)
    probes._check(Victim(new, v.out), new)


def test_stopped_with_a_signal_pending(procs: Procs, victim: str, tmp_path: Path
                                       ) -> None:  # fmt: skip
    """A SIGUSR1 sent while the victim was stopped stays pending: restored stopped, it
    takes the signal once continued (its handler checks the process and reports)."""
    v = probes._start(procs, victim, tmp_path, "prctl")
    _stop(v.pid)
    n = len(v.oks())
    os.kill(v.pid, signal.SIGUSR1)
    time.sleep(0.1)
    assert len(v.oks()) == n  # (pending, not taken)
    _before, after, new = probes.cycle(procs, v.pid, tmp_path / "img")
    assert after[f"pid {new}/stat:state"] == "T"
    assert int(after[f"pid {new}/status:ShdPnd"], 16) & 1 << (signal.SIGUSR1 - 1)
    time.sleep(0.2)
    assert len(Victim(new, v.out).oks()) == n  # (still stopped)
    os.kill(new, signal.SIGCONT)
    Victim(new, v.out).wait_for(lambda ls: len(Victim(new, v.out).oks()) > n or bool(v.fails()))
    assert not v.fails(), v.fails()


def test_a_wait_that_a_continue_ends_with_eintr(procs: Procs, build: Any, tmp_path: Path
                                                ) -> None:  # fmt: skip
    """victims/stopwait_s12_h2.c waits in epoll_wait(-1), which a stop and a continue end
    with EINTR (signal(7)): restored stopped, once continued it gets that EINTR ("eintr
    0"), as it would have; before, the call ran again (cryo took the EINTR for its own
    interrupt's) and nothing came."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("stopwait_s12_h2"), str(out)], out)
    v.wait_line("ready")
    time.sleep(0.1)
    _stop(v.pid)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    new = procs.track(int(r.stdout))
    time.sleep(0.2)
    assert _state(new) == "T"
    assert not [x for x in v.lines() if x.startswith("eintr")]
    os.kill(new, signal.SIGCONT)
    v.wait_for(lambda ls: "eintr 0" in ls or bool(v.fails()), timeout=5)
    assert not v.fails(), v.fails()
    os.kill(new, signal.SIGUSR1)  # (and it goes on waiting)
    v.wait_for(lambda ls: "ok 0" in ls or bool(v.fails()), timeout=5)
    assert not v.fails(), v.fails()


def test_a_thread_stopped_in_sigsuspend_while_its_leader_is_in_a_futex(
        procs: Procs, build: Any, tmp_path: Path) -> None:  # fmt: skip
    """victims/stopjoin_s12_h2.c: the leader in pthread_join (futex), the other thread
    in sigsuspend, stopped: the other thread is back inside sigsuspend, stopped, with the
    call's mask (before, it stopped before it entered the call again: the whole process
    stopped as before, its leader not in sigsuspend or pause); the leader stops before
    it enters its futex again (its /proc syscall "-1"); continued, the process goes on."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("stopjoin_s12_h2"), str(out)], out)
    v.wait_line("ready")
    time.sleep(0.2)
    _stop(v.pid)
    before, after, new = probes.cycle(procs, v.pid, tmp_path / "img")
    leader = {f"pid {new}/syscall$": "the leader stops before it enters its futex again",
              f"pid {new}/task/{new}/syscall$": "as pid/syscall"}  # fmt: skip
    d = probes.diff(before, after, leader)
    assert not d, "\n".join(d)
    worker = [t for t in os.listdir(f"/proc/{new}/task") if int(t) != new]
    assert probes._text(probes._read(f"/proc/{new}/task/{worker[0]}/syscall")).split()[0] == "130"
    os.kill(new, signal.SIGCONT)
    os.kill(new, signal.SIGUSR1)
    v.wait_for(lambda ls: "ok 0" in ls or bool(v.fails()), timeout=5)
