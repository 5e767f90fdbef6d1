"""AIO contexts (io_setup) come back where they were, with the completions the program
has not reaped (issue 9: before, every AIO ring was refused); a context with a request
still in flight is refused, the target untouched (engine/aio.py, victims/aio.c)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.image.reader import Image
from cryo.linux import bpf
from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_tree import tree_pids

pytestmark = pytest.mark.timeout(120)


def _bpf_or_skip() -> None:
    try:
        bpf.need("iter_task", "kx.cpu", "percpu.runqueues", "percpu.this_cpu_off")
        bpf.per_cpu_offsets()
    except (bpf.Unavailable, OSError) as err:
        pytest.skip(f"no BPF iterator here: {err}")


def _start(procs: Procs, build: Callable[[str], str], tmp_path: Path, mode: str) -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("aio"), str(out), mode, str(tmp_path)], out)
    v.wait_line("ready")
    return v


def _restarted(procs: Procs, v: Victim, img: Path) -> Victim:
    """``v``, checkpointed into ``img`` with --kill, reaped and restarted."""
    reap(v.pid)
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    return Victim(procs.track(int(r.stdout.split()[-1])), v.out)


def _go(procs: Procs, v: Victim, tmp_path: Path) -> Victim:
    """The victim told to check itself ("go"): done, no FAIL line."""
    (tmp_path / "go").touch()
    v.wait_line("done")
    assert not v.fails(), v.fails()
    return v


@pytest.mark.parametrize("kill", [True, False], ids=["restarted", "went-on"])
def test_contexts_come_back_with_unreaped_events(procs: Procs, build: Callable[[str], str],
                                                 tmp_path: Path, kill: bool) -> None:  # fmt: skip
    """Two contexts about a hole at index 1, one holding three completed writes not
    reaped: after a restart (or in the target that went on) the same context ids, the
    same ring headers, the three events as they were and then none; new writes
    complete through both; each is destroyed by its id."""
    _bpf_or_skip()
    v = _start(procs, build, tmp_path, "idle")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), *(["--kill"] if kill else []))
    assert r.returncode == 0, r.stderr
    (rec,) = Image(str(img)).raw(b"AIOR")
    rings = rec["rings"]
    assert [(x["index"], x["max_reqs"], len(x["events"]) // 32) for x in rings] == \
        [(0, 8, 3), (2, 4, 0)], rings  # fmt: skip
    shown = run_cryo("show", str(img))
    assert shown.returncode == 0 and re.search(r"unreaped\W+3", shown.stdout), shown.stdout
    v = _go(procs, _restarted(procs, v, img) if kill else v, tmp_path)
    assert "ok" in v.lines()


def test_a_large_ring_far_along(procs: Procs, build: Callable[[str], str],
                                tmp_path: Path) -> None:  # fmt: skip
    """A context of 4096 requests whose ring went 8,192 events along, 300 more waiting
    that wrap past its end: restarted, the same header and the 300 events in order (the
    kernel's tail moved in batches of empty writes, reaped as the head must follow; the
    events read and written back as two runs)."""
    _bpf_or_skip()
    v = _start(procs, build, tmp_path, "big")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    (rec,) = Image(str(img)).raw(b"AIOR")
    assert len(rec["rings"][0]["events"]) == 300 * 32, rec["rings"][0]["head"]
    _go(procs, _restarted(procs, v, img), tmp_path)


def test_request_in_flight_refused(procs: Procs, build: Callable[[str], str],
                                   tmp_path: Path) -> None:  # fmt: skip
    """A POLL request on an empty pipe never completes: the checkpoint waits for it,
    then refuses, exit 9, naming it; the target untraced, and the request completes
    once the pipe has a byte."""
    _bpf_or_skip()
    v = _start(procs, build, tmp_path, "poll")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9, r.stderr
    assert "in flight" in r.stderr and "AIO context" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists()
    assert "TracerPid:\t0" in Path(f"/proc/{v.pid}/status").read_text()
    (tmp_path / "go").touch()
    v.wait_line("done")
    assert not v.fails(), v.fails()
    assert os.path.exists(f"/proc/{v.pid}")


@pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio")
@pytest.mark.parametrize("how", [["--thread"], ["--numjobs=2"]], ids=["thread", "2-jobs"])
def test_fio_with_libaio_in_flight(procs: Procs, tmp_path: Path, how: list[str]) -> None:
    """fio (Debian's) doing random O_DIRECT reads and writes through libaio, 16 deep, and
    verifying what it wrote ([thread]: its job a thread; [2-jobs]: two job processes, as
    fio forks them, and its own): checkpointed with --kill in the middle (its requests in
    flight complete while it is frozen, and their events wait in the ring), restarted:
    it reaps them, runs to its end, and its verify of every block written finds no
    error (exit 0)."""
    _bpf_or_skip()
    out = tmp_path / "fio.json"
    p = subprocess.Popen(["fio", "--name=t", f"--directory={tmp_path}", "--size=32m",
                          "--rw=randrw", "--bs=4k", "--ioengine=libaio", "--iodepth=16",
                          "--direct=1", "--time_based", "--runtime=4", "--verify=crc32c",
                          "--do_verify=1", *how, "--output-format=json", f"--output={out}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, cwd=tmp_path,
                         start_new_session=True)  # fmt: skip  (its verify state file there)
    procs.track(p.pid)
    time.sleep(1.5)
    pids = tree_pids(p.pid)
    r = run_cryo("checkpoint", str(p.pid), "-D", str(tmp_path / "img"), "--tree", "--kill")
    assert r.returncode == 0, r.stderr
    assert any(rec["rings"] for rec in Image(str(tmp_path / "img")).raw(b"AIOR"))
    p.wait()
    for pid in pids[1:]:  # (the job processes' zombies come to us, a subreaper)
        reap(pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout.split()[-1]))
    _, status = os.waitpid(pid, 0)  # (ours: a subreaper's, once cryo is gone)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    for job in json.loads(out.read_text())["jobs"]:
        assert job["error"] == 0 and job["read"]["total_ios"] and job["write"]["total_ios"], job
