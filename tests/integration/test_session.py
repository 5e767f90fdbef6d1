"""The checkpoint session stepped through by a library caller: staged phases, abort from
any phase, the watchdog that bounds a freeze, a caller killed at any moment, and a
caller whose signal mask and handlers the library leaves alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint as cryo_checkpoint
from cryo.engine.restore import restart
from cryo.engine.session import CheckpointSession, FreezeTimeout
from cryo.errors import CryoError
from tests.conftest import Procs, Victim
from tests.integration.test_cli import assert_untouched

PHASES = ("prepare", "freeze", "collect", "write", "commit")


def counter(procs: Procs, build: Any, tmp_path: Path) -> Victim:
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    return v


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text().split("State:\t")[1][0]


def test_staged_checkpoint_holds_until_resume(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = counter(procs, build, tmp_path)
    s = CheckpointSession(v.pid, str(tmp_path / "img"), hold=True)
    for phase in PHASES:
        getattr(s, phase)()
    # held: no progress while the image is committed and the caller has not resumed
    n = len(v.oks())
    time.sleep(0.3)
    assert len(v.oks()) == n, "the target ran while held"
    assert "TracerPid:\t0" not in Path(f"/proc/{v.pid}/status").read_text()
    r = s.resume()
    assert r.pids == [v.pid] and r.freeze_seconds >= 0.3
    v.wait_ok_after(max(v.oks()) + 2)
    procs.kill(v.pid)
    got = restart(str(tmp_path / "img"))
    procs.track(got.pid)
    Victim(got.pid, v.out).wait_ok_after(max(v.oks()) + 2)


@pytest.mark.parametrize("last", PHASES)
def test_abort_from_any_phase_leaves_the_target(procs: Procs, build: Any, tmp_path: Path,
                                                last: str) -> None:  # fmt: skip
    v = counter(procs, build, tmp_path)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    img = tmp_path / "img"
    s = CheckpointSession(v.pid, str(img), hold=True)
    for phase in PHASES[: PHASES.index(last) + 1]:
        getattr(s, phase)()
    s.abort()
    assert_untouched(v, maps)
    # before the commit nothing is left; after it, the image stays (it is good)
    assert img.exists() == (last == "commit")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("img.")] == []


def test_phases_out_of_order_are_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = counter(procs, build, tmp_path)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    s = CheckpointSession(v.pid, str(tmp_path / "img"))
    s.prepare()
    with pytest.raises(CryoError, match="cannot follow"):
        s.collect()  # freeze skipped: refused, and the session is over
    s.close()
    assert_untouched(v, maps)


def frozen(procs: Procs, build: Any, tmp_path: Path) -> tuple[Victim, str, CheckpointSession]:
    """A target frozen by a staged session whose watchdog allows half a second."""
    v = counter(procs, build, tmp_path)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    s = CheckpointSession(v.pid, str(tmp_path / "img"), hold=True, freeze_timeout=0.5)
    s.prepare()
    s.freeze()
    return v, maps, s


def test_watchdog_lets_a_held_target_go(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, maps, s = frozen(procs, build, tmp_path)
    t0 = time.monotonic()
    time.sleep(1.0)  # the caller dawdles past the bound
    with pytest.raises(FreezeTimeout):
        s.collect()
    s.close()
    assert time.monotonic() - t0 < 5
    assert_untouched(v, maps)
    assert not (tmp_path / "img").exists()


def test_watchdog_fires_while_the_worker_waits(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The bound holds even when nobody calls the session: the worker itself lets go."""
    v, maps, s = frozen(procs, build, tmp_path)
    n = len(v.oks())
    deadline = time.monotonic() + 5
    while len(v.oks()) <= n + 2:  # it runs again without any call from us
        assert time.monotonic() < deadline, "the target was held past the watchdog"
        time.sleep(0.05)
    with pytest.raises(CryoError):
        s.collect()
    s.close()
    assert_untouched(v, maps)


CALLER = textwrap.dedent("""
    import signal, sys
    import cryo
    seen = {}
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
              signal.getsignal(signal.SIGUSR1), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    print("go", flush=True)
    r = cryo.checkpoint(int(sys.argv[1]), sys.argv[2], signal_after=int(sys.argv[3]))
    after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
             signal.getsignal(signal.SIGUSR1), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    print("same" if before == after else f"changed {before} {after}", r.pids, flush=True)
""")


def test_library_leaves_the_callers_signals_alone(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    v = counter(procs, build, tmp_path)
    out = subprocess.run([sys.executable, "-c", CALLER, str(v.pid), str(tmp_path / "img"), "0"],
                         capture_output=True, text=True, timeout=60, close_fds=True)
    assert out.returncode == 0, out.stderr
    assert f"same [{v.pid}]" in out.stdout, out.stdout
    assert (tmp_path / "img" / "core.img").exists()


@pytest.mark.parametrize("delay", [0.02, 0.05, 0.1, 0.2, 0.4])
def test_library_caller_killed_mid_checkpoint(procs: Procs, build: Any, tmp_path: Path,
                                              delay: float) -> None:  # fmt: skip
    """A Python program calling cryo.checkpoint() is SIGKILLed at some moment of a
    checkpoint that keeps the target frozen (--stop): the worker lets the target go."""
    v = procs.spawn([build("bigmem"), str(tmp_path / "out.txt"), "256"], tmp_path / "out.txt")
    v.wait_ok_after(1, timeout=30)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    img = tmp_path / "img"
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(v.pid), str(img),
                               str(int(signal.SIGSTOP))],
                              stdout=subprocess.PIPE, text=True, close_fds=True)  # fmt: skip
    assert caller.stdout is not None
    assert caller.stdout.readline().strip() == "go"
    time.sleep(delay)
    caller.kill()
    caller.wait()
    caller.stdout.close()
    deadline = time.monotonic() + 20
    while True:  # the worker finishes the step in hand, lets go and exits
        status = Path(f"/proc/{v.pid}/status").read_text()
        if "TracerPid:\t0" in status:
            break
        assert time.monotonic() < deadline, "the target is still traced"
        time.sleep(0.02)
    if state(v.pid) == "T":  # the checkpoint was complete: --stop was carried out
        assert (img / "core.img").exists()
        os.kill(v.pid, signal.SIGCONT)
    else:
        assert Path(f"/proc/{v.pid}/maps").read_text() == maps
    v.wait_ok_after(max(v.oks()) + 2)
    deadline = time.monotonic() + 10  # (the worker removes its temporary image after it
    while [p for p in tmp_path.iterdir() if p.name.startswith("img.")]:  # let go)
        assert time.monotonic() < deadline, list(tmp_path.iterdir())
        time.sleep(0.02)


def test_restart_failing_after_threads_were_made(
    procs: Procs, build: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart that fails once the threads exist (here a driver's stage raises just
    after them) returns with the error, and leaves no process and no traced thread."""
    from cryo.engine import drivers

    v = procs.spawn([build("threads"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    img = tmp_path / "img"
    cryo_checkpoint(v.pid, str(img))
    procs.kill(v.pid)

    def boom(ctx: Any) -> None:
        assert len(ctx.threads) > 1  # the threads are there
        raise CryoError("a stage failed after the threads were made")

    table = [d.replace(restore={**d.restore, "timers": boom})
             if d.name == "timers" else d for d in drivers.DRIVERS]  # fmt: skip
    monkeypatch.setattr(drivers, "DRIVERS", tuple(table))
    t0 = time.monotonic()
    with pytest.raises(CryoError, match="after the threads were made"):
        restart(str(img))
    assert time.monotonic() - t0 < 30
    assert not Path(f"/proc/{v.pid}").exists() or state(v.pid) in "ZX"
    assert traced_by_us() == [], "a traced process or thread was left"


def traced_by_us() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"TracerPid:\t{os.getpid()}\n" in (p / "status").read_text():
                    out.append(int(p.name))
            except OSError:  # gone meanwhile
                pass
    return out


def test_group_led_from_outside_refused_at_checkpoint(procs: Procs, build: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """A process of the checkpoint in a process group whose leader is not in it (nor the
    root's group) cannot be rebuilt: the checkpoint says so (exit 9) and leaves the tree
    running, instead of writing an image that no restart could use."""
    code = ("import os,time\nb=os.fork()\nif b==0:\n  os.setpgid(0,0)\n  time.sleep(600)\n"
            "time.sleep(0.2)\na=os.fork()\nif a==0:\n  x=os.fork()\n  if x==0:\n"
            f"    os.setpgid(0,b)\n    os.execv('{build('counter')}', ['c',"
            f" '{tmp_path / 'out.txt'}'])\n  time.sleep(600)\ntime.sleep(600)\n")
    top = procs.spawn([sys.executable, "-c", code], tmp_path / "out.txt")
    Victim(top.pid, tmp_path / "out.txt").wait_ok_after(2)
    b, a = (int(x) for x in Path(f"/proc/{top.pid}/task/{top.pid}/children").read_text().split())
    x = int(Path(f"/proc/{a}/task/{a}/children").read_text().split()[0])
    for pid in (b, a, x):
        procs.track(pid)
    c = Victim(x, tmp_path / "out.txt")
    r = subprocess.run([sys.executable, "-m", "cryo", "checkpoint", str(a), "--tree", "-D",
                        str(tmp_path / "img")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    assert "process group" in r.stderr and "leader" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    for pid in (a, x):
        assert "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text()
    c.wait_ok_after(max(c.oks()) + 2)
