"""Probes of session 9 (lead): state restored wrong, or refused where it need not be."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo, spawn_mode
from tests.integration.test_probes_s9_h2 import exe  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(120)


def _edit_descs(img: Path, change: Any) -> None:
    """``change(description)`` applied to every open file description of the image."""
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    for rec in recs:
        if rec.kind == R.FDSC:
            for d in rec.payload["descs"]:
                change(d)
    out = [fmt.Record(r.kind, r.payload, raw=r.kind == R.FDAT) for r in recs]
    (img / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, out))


def test_a_copied_file_on_another_machine_with_the_same_device_number(
        procs: Procs, exe: str, tmp_path: Path) -> None:  # noqa: F811  # fmt: skip
    """Another machine's root filesystem often has the same device number (both
    /dev/vda1), and a file copied there (rsync -a: the bytes, the size and the mtime)
    another inode: taken for the same filesystem, the restart refused it as replaced,
    exit 12.  The filesystem is now told by its id too (statfs f_fsid, FDSC `fsid`):
    elsewhere a file is the one of the checkpoint by its size and mtime.  The other
    machine is played by an image whose fsid is another one."""
    v = spawn_mode(procs, exe, tmp_path, "file")
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    data = tmp_path / "data"
    seen: list[int] = []

    def elsewhere(d: dict[str, Any]) -> None:
        if d.get("path") == str(data):
            seen.append(d["fsid"])
            d["fsid"] ^= 1

    _edit_descs(img, elsewhere)
    assert seen == [os.statvfs(data).f_fsid]
    shutil.copy2(data, tmp_path / "copy")  # as rsync -a copies it: another inode
    os.rename(tmp_path / "copy", data)
    r = run_cryo("restart", "-D", str(img), "--detach", "--trust-image")  # (edited)
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), v.out)
    w.wait_ok_after(max(w.oks()) + 2)


FAST_TIMER = r"""
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
static volatile long ticks;
static void tick(int s) { (void)s; ticks++; }
int main(int argc, char **argv) {
    struct sigaction sa = {0};
    sa.sa_handler = tick;
    sigaction(SIGRTMIN, &sa, NULL);
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN;
    timer_t t;
    timer_create(CLOCK_MONOTONIC, &sev, &t);
    struct itimerspec its = {{0, 1000000}, {0, 1000000}};  /* every 1 ms */
    timer_settime(t, 0, &its, NULL);
    FILE *f = fopen(argv[1], "a");
    setvbuf(f, NULL, _IOLBF, 0);
    for (long round = 0;; round++) {
        long t0 = ticks;
        struct timespec ts = {0, 50000000};
        while (nanosleep(&ts, &ts)) {}
        if (ticks > t0) fprintf(f, "ok %ld\n", round);
        else fprintf(f, "FAIL no tick\n");
    }
    (void)argc;
}
"""


def test_a_fast_periodic_timer_whose_signal_comes_during_the_freeze(
        procs: Procs, tmp_path: Path) -> None:  # fmt: skip
    """A periodic POSIX timer (1 ms) whose signal, handled and not blocked, comes while
    the process is frozen: it is pending then, only because the process does not run.
    Refused as a timer whose blocked signal waits (its periods not shown), most
    checkpoints of such a process failed, exit 9 (1 in 15 with a 30 ms timer).  Every
    checkpoint is taken, and the restored process ticks on."""
    import subprocess

    src, binary = tmp_path / "fast.c", tmp_path / "fast"
    src.write_text(FAST_TIMER)
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src), "-lrt"], check=True)
    out = tmp_path / "out.txt"
    v = procs.spawn([str(binary), str(out)], out)
    v.wait_ok_after(2)
    for i in range(5):
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / f"img{i}"))
        assert r.returncode == 0, r.stderr
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), out)
    w.wait_ok_after(max(w.oks()) + 3)
    assert not w.fails()


MANY_FDS = r"""
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(1200)]
pipes = [os.pipe() for _ in range(100)]
for r, w in pipes:
    os.write(w, b"x" * 10)
with open(sys.argv[1], "w") as f:
    f.write("ready\n")
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
bad = sum(os.read(r, 100) != b"x" * 10 for r, w in pipes)
alive = sum(os.path.exists(f"/proc/self/fd/{fd}") for fd in fds)
with open(sys.argv[1], "a") as f:
    f.write(f"checked {bad} {alive} {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}\n")
time.sleep(600)
"""


def test_many_fds_and_the_usual_soft_limit(procs: Procs, tmp_path: Path) -> None:
    """1,400 fds (1,200 descriptions of /dev/null, each its own, and 100 pipes holding
    data), restarted by a cryo whose soft RLIMIT_NOFILE is the usual 1,024: cryo opens
    every description above the image's highest fd, so it needs twice as many; the
    restart failed, "Too many open files", and finding which fds share a description
    compared every new fd with every one before it (kcmp: 8,000 such fds held the
    target frozen past the watchdog's minute).  Now cryo raises its soft limit as far
    as its hard one allows, or says what it would need."""
    import resource
    import sys

    (tmp_path / "v.py").write_text(MANY_FDS)
    out, go = tmp_path / "out", tmp_path / "go"
    v = procs.spawn([sys.executable, str(tmp_path / "v.py"), str(out), str(go)], out)
    v.wait_line("ready")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def usual() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                 preexec_fn=usual)  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", preexec_fn=usual)
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), out)
    go.touch()
    assert w.wait_line("checked", timeout=20) == "checked 0 1200 4096"
