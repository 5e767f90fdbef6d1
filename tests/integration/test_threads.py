"""Threads survive: every thread's registers, TLS, signal mask, name and tid, threads
blocked in futex, nanosleep or poll resuming (issue 3)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import VICTIMS, Procs, Victim, reap


def _tids(pid: int) -> list[int]:
    return sorted(int(t) for t in Path(f"/proc/{pid}/task").iterdir() for t in [t.name])


def _names(pid: int) -> list[str]:
    return sorted(Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in _tids(pid))


def cycle(procs: Procs, v: Victim, img: Path, **kw: Any) -> Victim:
    last = max(v.oks(), default=-1)
    tids, names = _tids(v.pid), _names(v.pid)
    r = checkpoint(v.pid, str(img), signal_after=signal.SIGKILL, **kw)
    assert r.threads == len(tids)
    reap(v.pid)
    rr = restart(str(img))
    procs.track(rr.pid)
    assert rr.pid == v.pid
    assert _tids(rr.pid) == tids, "every thread gets its tid back"
    assert _names(rr.pid) == names
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 2, timeout=20)
    return new


def test_eight_pthreads(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = procs.spawn([build("threads"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1, timeout=20)
    v = cycle(procs, v, tmp_path / "img")
    v = cycle(procs, v, tmp_path / "img2")  # and once more, from the restored process
    assert not v.fails()


def test_python_threads(procs: Procs, tmp_path: Path) -> None:
    v = procs.spawn([sys.executable, str(VICTIMS / "pythreads.py"), str(tmp_path / "out.txt")],
                    tmp_path / "out.txt")
    v.wait_ok_after(5, timeout=20)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


LOW_THREAD = r"""
import os, sys, threading, time
out = open(sys.argv[1], "a", buffering=1)
count = [0]
def work():
    while True:
        count[0] += 1
        time.sleep(0.005)
# the next pid below ours: the thread's tid comes out lower than its leader's, as after
# the pids wrapped around (pid_max)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(os.getpid() - 40))
t = threading.Thread(target=work, daemon=True)
t.start()
time.sleep(0.05)
out.write(f"ready {os.getpid()} {t.native_id}\n")
n = 0
while True:
    c = count[0]
    time.sleep(0.05)
    out.write(f"ok {n}\n" if count[0] > c else "FAIL the thread stopped\n")
    n += 1
"""


def test_thread_with_a_lower_tid_than_its_leader(procs: Procs, tmp_path: Path) -> None:
    """pids wrap (pid_max is 32768 on many machines): a thread may have a lower tid than
    its process.  The image lists the leader first all the same (it used to sort the
    tids, and the restart refused its own image as corrupt)."""
    out = tmp_path / "out.txt"
    for _ in range(5):  # (another process may take the pids below ours first)
        v = procs.spawn([sys.executable, "-c", LOW_THREAD, str(out)], out)
        v.wait_ok_after(1, timeout=20)
        tids = _tids(v.pid)
        if tids[0] < v.pid:
            break
        procs.kill(v.pid)
        out.unlink()
    assert tids[0] < v.pid, tids
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
