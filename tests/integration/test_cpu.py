"""An image made on a CPU with instruction-set extensions this one lacks is refused at
restart (exit 6, naming them: engine/cpu.py), before anything is made, unless
``--ignore-cpu``; so is one made on a kernel whose vDSO lays its functions out
otherwise, or whose vDSO code differs while a thread was inside it (engine/vdso.py).
Such images are made here by editing the HEAD (and a thread's registers) as a
checkpoint on that CPU or kernel would have written them (the records' checksums made
to hold again, the image then trusted as edited)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import cpu, vdso
from cryo.engine.dump import checkpoint
from cryo.errors import ExitCode
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo

MISSING = sorted(cpu.ISA - set(cpu.here()["flags"]))


def _edited(img: Path, change: Any) -> None:
    """``change(kind, payload)`` applied to every record of the image."""
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    for rec in recs:
        change(rec.kind, rec.payload)
    out = [fmt.Record(r.kind, r.payload, raw=r.kind == R.FDAT) for r in recs]
    (img / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, out))


def _made_on_a_cpu_with(img: Path, flag: str) -> None:
    def change(kind: bytes, payload: Any) -> None:
        if kind == R.HEAD:
            payload["cpu"]["flags"] = sorted([*payload["cpu"]["flags"], flag])

    _edited(img, change)


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


def _refused(v: Victim, img: Path, needle: str) -> None:
    r = run_cryo("restart", "-D", str(img), "--detach", "--trust-image")
    assert r.returncode == ExitCode.IMAGE_INCOMPATIBLE, r.stderr
    assert needle in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")  # nothing made


def test_image_of_a_kernel_whose_vdso_is_laid_out_otherwise(procs: Procs, build: Any,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """clock_gettime at another offset in the image's vDSO: refused (the process's
    pointers into the vDSO would call other code).  Before: restarted, exit 0, with the
    kernel's vDSO at the old address (only the sizes were compared)."""
    v, img = _counter_image(procs, build, tmp_path)

    def change(kind: bytes, payload: Any) -> None:
        if kind == R.HEAD:
            for sym in payload["vdso"]["symbols"]:
                if sym[0] == "clock_gettime":
                    sym[1] += 16

    _edited(img, change)
    _refused(v, img, "places its functions elsewhere than this kernel's")


def test_thread_inside_a_vdso_whose_code_differs(procs: Procs, build: Any,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """Same functions, other code (as the boot's patching for another CPU gives): a
    thread frozen inside the vDSO is refused; with no thread inside, the image restarts
    and runs on."""
    v, img = _counter_image(procs, build, tmp_path)
    assert vdso.here() is not None

    def other_code(kind: bytes, payload: Any) -> None:
        if kind == R.HEAD:
            payload["vdso"]["checksum"] ^= 1

    _edited(img, other_code)
    spare = tmp_path / "spare"
    shutil.copytree(img, spare)
    mm = next(r.payload for r in fmt.read_file(img / "core.img", R.CORE_MAGIC)
              if r.kind == R.MM)  # fmt: skip
    at = next(m["start"] for m in mm["vmas"] if m["path"] == "[vdso]") + 0x40

    def inside(kind: bytes, payload: Any) -> None:
        if kind == R.THRD:
            regs = bytearray(payload["regs"])
            regs[vdso.RIP : vdso.RIP + 8] = at.to_bytes(8, "little")
            payload["regs"] = bytes(regs)

    _edited(img, inside)
    _refused(v, img, "was frozen inside the vDSO, whose code differs")
    last = max(v.oks())
    r = run_cryo("restart", "-D", str(spare), "--detach", "--trust-image")
    assert r.returncode == 0, r.stderr
    Victim(procs.track(int(r.stdout)), v.out).wait_ok_after(last + 3)
