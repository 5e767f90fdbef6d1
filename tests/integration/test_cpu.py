"""An image made on a CPU with instruction-set extensions this one lacks is refused at
restart (exit 6, naming them: engine/cpu.py), before anything is made, unless
``--ignore-cpu``.  Such an image is made here by writing a flag this CPU lacks into its
HEAD, as a checkpoint on that CPU would have (the records' checksums made to hold again,
the image then trusted as edited)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import cpu
from cryo.engine.dump import checkpoint
from cryo.errors import ExitCode
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo

MISSING = sorted(cpu.ISA - set(cpu.here()["flags"]))


def _made_on_a_cpu_with(img: Path, flag: str) -> None:
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    for rec in recs:
        if rec.kind == R.HEAD:
            rec.payload["cpu"]["flags"] = sorted([*rec.payload["cpu"]["flags"], flag])
    out = [fmt.Record(r.kind, r.payload, raw=r.kind == R.FDAT) for r in recs]
    (img / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, out))


def _counter_image(procs: Procs, build: Any, tmp_path: Path) -> tuple[Victim, Path]:
    """A counter checkpointed (killed, reaped) into ``tmp_path``/img."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out)], out)
    v.wait_ok_after(2)
    img = tmp_path / "img"
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    return v, img


@pytest.mark.skipif(not MISSING, reason="this CPU has every extension cryo compares")
def test_image_of_a_cpu_with_more_extensions(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, img = _counter_image(procs, build, tmp_path)
    _made_on_a_cpu_with(img, MISSING[0])
    r = run_cryo("restart", "-D", str(img), "--detach", "--trust-image")
    assert r.returncode == ExitCode.IMAGE_INCOMPATIBLE, r.stderr
    assert f"a CPU with {MISSING[0]}," in r.stderr and "--ignore-cpu" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")  # nothing made
    last = max(v.oks())
    r = run_cryo("restart", "-D", str(img), "--detach", "--trust-image", "--ignore-cpu")
    assert r.returncode == 0, r.stderr
    Victim(procs.track(int(r.stdout)), v.out).wait_ok_after(last + 3)


def test_image_of_this_cpu(procs: Procs, build: Any, tmp_path: Path) -> None:
    """The image's HEAD holds this CPU's flags; restarted here, no refusal."""
    v, img = _counter_image(procs, build, tmp_path)
    head = next(r.payload for r in fmt.read_file(img / "core.img", R.CORE_MAGIC)
                if r.kind == R.HEAD)  # fmt: skip
    assert head["cpu"] == cpu.here()
    last = max(v.oks())
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    Victim(procs.track(int(r.stdout)), v.out).wait_ok_after(last + 3)
