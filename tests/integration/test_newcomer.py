"""The command line a newcomer meets (issue 12, section 4): --version, bad command lines
exit 2, a checkpoint that cannot write its image says why, corruption named in words,
`cryo show` checks the image and names system calls, the store's sizes are the
checkpoint's, and the README's demo shows the job going on from where it stopped."""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

import cryo
from cryo.cli.fmt import human
from cryo.errors import ExitCode
from tests.conftest import Procs, Victim, reap, run_cryo

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def counter(procs: Procs, build: Any, tmp_path: Path) -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out)], out)
    v.wait_ok_after(2)
    return v


@pytest.fixture
def image(procs: Procs, build: Any, tmp_path: Path) -> Path:
    v = counter(procs, build, tmp_path)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    return img


def test_version() -> None:
    r = run_cryo("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cryo {cryo.__version__}"


@pytest.mark.parametrize(("args", "says"), [
    (["checkpoint", "-D", "/tmp/x"], "which process?"),
    (["checkpoint", "1", "--pgid", "1", "-D", "/tmp/x"], "either PID or --pgid"),
    (["run"], "which program?"),
    (["run", "--"], "which program?"),
    (["checkpoint", "1", "--store", "/tmp/s"], "--store needs --app"),
    (["restart", "--store", "/tmp/s"], "--store needs --app"),
    (["restart", "-D", "/tmp/x", "--app", "a"], "--app goes with --store"),
    (["restart", "-D", "/tmp/x", "--version", "2"], "--version goes with --store"),
    (["restart", "-D", "/tmp/x", "--translate", "nothing"], "OLD=NEW"),
    (["checkpoint"], "-D/--images-dir"),  # argparse's own
    (["checkpoint", "1", "-D", ""], "an empty path is no directory"),
])  # fmt: skip
def test_bad_command_lines_exit_2(args: list[str], says: str) -> None:
    r = run_cryo(*args)
    assert r.returncode == ExitCode.USAGE, (r.returncode, r.stderr)
    assert says in r.stderr, r.stderr


def test_checkpoint_where_no_image_can_be_written(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    v = counter(procs, build, tmp_path)
    (tmp_path / "file").write_text("")
    for dest, says in ((tmp_path / "no" / "such" / "img", f"{tmp_path}/no/such does not exist"),
                       (tmp_path / "file" / "img", f"{tmp_path}/file is not a directory"),
                       (Path("/proc/cryo-img"), "cannot write the image /proc/cryo-img in"
                        " /proc: No such file or directory")):  # fmt: skip
        r = run_cryo("checkpoint", str(v.pid), "-D", str(dest))
        assert r.returncode not in (0, ExitCode.INTERNAL), r.stderr
        assert says in r.stderr, r.stderr
    n = max(v.oks())
    v.wait_ok_after(n + 2)  # it went on, untouched


def _record_at(core: bytes, kind: bytes) -> int:
    """Offset of the first record of ``kind`` in core.img (after its 16-byte header)."""
    pos = 16
    while pos < len(core):
        k, _flags, length = struct.unpack_from("<4sIQ", core, pos)
        if k == kind:
            return pos
        pos += 16 + length + 8
    raise AssertionError(f"no {kind!r} record")


def test_corruption_names_the_record_kind_in_words(image: Path) -> None:
    core = image / "core.img"
    data = bytearray(core.read_bytes())
    at = _record_at(bytes(data), b"THRD")
    data[at + 16 + 40] ^= 0xFF
    core.write_bytes(bytes(data))
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT
    assert re.search(r"record \d+ \(THRD\) checksum mismatch", r.stderr), r.stderr
    assert "b'" not in r.stderr
    core.write_bytes(bytes(data[: at + 16 + 100]))  # cut inside the record
    r = run_cryo("show", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT
    assert re.search(r"truncated in record \d+ \(THRD\)", r.stderr) and "b'" not in r.stderr


def test_show_checks_page_checksums(image: Path) -> None:
    with open(image / "pages.img", "r+b") as f:
        f.seek(4096 + 100)
        b = f.read(1)
        f.seek(4096 + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    r = run_cryo("show", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT
    assert "pages block 0 checksum mismatch" in r.stderr and not r.stdout
    r = run_cryo("show", str(image), "--no-verify")
    assert r.returncode == 0 and "process " in r.stdout, r.stderr


def test_show_names_system_calls(image: Path) -> None:
    r = run_cryo("show", str(image))
    assert r.returncode == 0, r.stderr
    assert "in clock_nanosleep()" in r.stdout
    regs = json.loads(run_cryo("show", str(image), "--json").stdout)["processes"][0]
    assert regs["registers"]["syscall"] == 230
    assert regs["registers"]["syscall_name"] == "clock_nanosleep"


def _summary(stderr: str) -> tuple[str, str]:
    m = re.search(r": (\S+ \S+) of memory(?: \(\S+ \S+ read\))?, (\S+ \S+) stored", stderr)
    assert m, stderr
    return m.group(1), m.group(2)


def test_store_sizes_are_the_checkpoints(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = counter(procs, build, tmp_path)
    st = tmp_path / "store"
    lines = []
    for _ in range(2):
        r = run_cryo("checkpoint", str(v.pid), "--store", str(st), "--app", "job")
        assert r.returncode == 0, r.stderr
        lines.append(_summary(r.stderr))
        v.wait_ok_after(max(v.oks()) + 2)
    versions = json.loads(run_cryo("store", "ls", str(st), "--json").stdout)[0]["versions"]
    assert [(human(x["memory"]), human(x["stored"])) for x in versions] == lines
    table = run_cryo("store", "ls", str(st)).stdout
    for (memory, stored), row in zip(lines, table.splitlines()[1:3], strict=True):
        assert memory in row and stored in row, (row, memory, stored)


def test_demo(tmp_path: Path, procs: Procs) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    import subprocess

    r = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], capture_output=True,
                       text=True, timeout=90, env=env, close_fds=True)  # fmt: skip
    for pid in re.findall(r"(?:pid|restarted as pid) (\d+)\n", r.stdout):
        procs.track(int(pid))  # (killed by the demo; reaped here)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing lost, nothing done twice" in r.stdout
    after = r.stdout.split("where it stopped:")[1].split("(step")[0]
    steps = [int(x) for x in re.findall(r"step +(\d+) ", after)]
    assert len(steps) >= 2 and steps == list(range(steps[0], steps[0] + len(steps))), after
    work = re.search(r"(/tmp/cryo-demo\.\w+)", r.stdout)
    assert work and not os.path.exists(work.group(1))  # it cleaned up after itself


def test_image_summary_counts_its_whole_directory(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    v = counter(procs, build, tmp_path)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--save-files")
    assert r.returncode == 0, r.stderr
    on_disk = sum(os.stat(img / n).st_blocks * 512 for n in os.listdir(img))
    assert _summary(r.stderr)[1] == human(on_disk)  # the saved files included
