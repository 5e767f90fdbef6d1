"""CLOCK_MONOTONIC and CLOCK_BOOTTIME never go back across a restart (engine/clocks.py).

A host up for less time than the one a process was checkpointed on (a restart after a
reboot, or on another host) has its clocks behind the process's.  Here the process's
are made 100,000 s ahead of this host's with a time namespace (``unshare --time``), as
such a host's would be; the victim (victims/clocks.c) reads both clocks every 20 ms,
through the vDSO and the system call, and reports any step back, any jump of more than
a minute, and any disagreement of the two; and it keeps a timerfd set with
TFD_TIMER_ABSTIME on CLOCK_MONOTONIC, which must fire neither early nor late."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap

AHEAD = 100_000  # s

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/timens_offsets")
                                or shutil.which("unshare") is None,
                                reason="no time namespaces, or no unshare(1)")  # fmt: skip


def _offsets(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/timens_offsets").read_text().splitlines():
        name, sec, nsec = line.split()
        out[name] = int(sec) + int(nsec) / 1e9
    return out


def _ahead(procs: Procs, build: Any, tmp_path: Path) -> Victim:
    """The victim in a time namespace AHEAD s ahead of ours, in a session of its own."""
    out = tmp_path / "out.txt"
    starter = procs.spawn(["unshare", "--time", "--monotonic", str(AHEAD), "--boottime",
                           str(AHEAD), "--fork", build("clocks"), str(out), "setsid"],
                          out)  # fmt: skip
    line = starter.wait_line("ready")
    v = Victim(procs.track(int(line.split()[1])), out)
    v.wait_ok_after(3)
    return v


def _back(procs: Procs, v: Victim, img: Path) -> Victim:
    """Restart ``img`` of ``v`` (killed, reaped) here: in a time namespace of its own
    whose clocks go on from the image's."""
    last = max(v.oks())
    rr = restart(str(img))
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 200)  # (4 s and more: the timerfd fired again, not late)
    assert any("time namespace of its own" in w for w in rr.warnings), rr.warnings
    off = _offsets(new.pid)
    assert AHEAD - 60 < off["monotonic"] < AHEAD + 60, off
    assert AHEAD - 60 < off["boottime"] < AHEAD + 60, off
    return new


def test_clocks_ahead_of_this_host_go_on(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Checkpointed by a cryo in its time namespace (nsenter -T: its clocks the
    process's), restarted by one in ours, behind by AHEAD s: the clocks go on, read the
    same through the vDSO and the call.  Before engine/clocks.py they went back AHEAD s,
    exit 0.  Then checkpointed from our namespace and restarted again: the same."""
    v = _ahead(procs, build, tmp_path)
    r = subprocess.run(["nsenter", "-t", str(v.pid), "-T", sys.executable, "-m", "cryo",
                        "checkpoint", str(v.pid), "-D", str(tmp_path / "img1"), "--kill"],
                       capture_output=True, text=True, timeout=60, close_fds=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    v = _back(procs, v, tmp_path / "img1")

    checkpoint(v.pid, str(tmp_path / "img2"), signal_after=signal.SIGKILL)
    reap(v.pid)
    v = _back(procs, v, tmp_path / "img2")
    assert not v.fails()


def test_clocks_of_this_boot_stay_in_our_namespace(procs: Procs, build: Any,
                                                   tmp_path: Path) -> None:  # fmt: skip
    """A process of this host's time namespace, restarted on the same boot: its clocks
    are ahead already, so it comes back in ours, no namespace made, no warning."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("clocks"), str(out)], out)
    v.wait_ok_after(3)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    last = max(v.oks())
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    assert not [w for w in rr.warnings if "time namespace" in w], rr.warnings
    assert os.readlink(f"/proc/{rr.pid}/ns/time") == os.readlink("/proc/self/ns/time")
    Victim(rr.pid, out).wait_ok_after(last + 20)


# a parent in our time namespace with a child in one AHEAD s ahead: unshare, fork, and
# back to ours for its own children to come (setns), so only the child's differs
PARENT = f"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
back = os.open("/proc/self/ns/time", os.O_RDONLY)
assert libc.syscall(272, 0x80) == 0  # unshare(CLONE_NEWTIME)
with open("/proc/self/timens_offsets", "w") as f:
    f.write("monotonic {AHEAD} 0\\n")
if os.fork() == 0:
    os.execv(sys.argv[1], sys.argv[1:])
assert libc.setns(back, 0x80) == 0
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("how", ["kids", "another"])
def test_time_namespaces_cryo_cannot_keep_refused(procs: Procs, build: Any, tmp_path: Path,
                                                  how: str) -> None:  # fmt: skip
    """Refused (exit 9), the processes going on: a tree whose processes are in
    different time namespaces (one set of clocks per image), and a process that made
    one for its children to come (unshare --time, the parent of the victim)."""
    out = tmp_path / "out.txt"
    if how == "kids":
        argv = ["unshare", "--time", "--monotonic", str(AHEAD), "--fork", build("clocks"),
                str(out)]  # fmt: skip
        why = "made a time namespace for its children to come"
    else:
        argv = [sys.executable, "-c", PARENT, build("clocks"), str(out)]
        why = "is in another time namespace than process"
    top = procs.spawn(argv, out)
    v = Victim(procs.track(int(top.wait_line("ready").split()[1])), out)
    v.wait_ok_after(3)
    r = subprocess.run([sys.executable, "-m", "cryo", "checkpoint", str(top.pid), "--tree",
                        "-D", str(tmp_path / "img")], capture_output=True, text=True,
                       timeout=60, close_fds=True)  # fmt: skip
    assert r.returncode == 9, r.stderr
    assert why in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    assert "TracerPid:\t0\n" in Path(f"/proc/{v.pid}/status").read_text()
    v.wait_ok_after(max(v.oks()) + 5)
