"""AIO contexts (io_setup) come back where they were, with the completions the program
has not reaped (issue 9: before, every AIO ring was refused); a context with a request
still in flight is refused, the target untouched (engine/aio.py, victims/aio.c)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cryo.image.reader import Image
from cryo.linux import bpf
from tests.conftest import Procs, Victim, reap, run_cryo

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
    if kill:
        reap(v.pid)
        r = run_cryo("restart", "-D", str(img), "--detach")
        assert r.returncode == 0, r.stderr
        v = Victim(procs.track(int(r.stdout.split()[-1])), v.out)
    (tmp_path / "go").touch()
    v.wait_line("done")
    assert not v.fails(), v.fails()
    assert "ok" in v.lines()


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
