"""The command line as a user runs it: run, checkpoint, show, restart; every bad input
gets its own message and exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.errors import ExitCode
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, reap, run_cryo


def start_counter(procs: Procs, build: Any, tmp_path: Path) -> Victim:
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--output", str(tmp_path / "run.log"), "--", build("counter"), str(out))
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(2)
    return v


def test_run_checkpoint_show_restart(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = start_counter(procs, build, tmp_path)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    assert "frozen" in r.stderr and "GB/s" in r.stderr
    reap(v.pid)
    last = max(v.oks())

    shown = run_cryo("show", str(img))
    assert shown.returncode == 0, shown.stderr
    assert f"process {v.pid} (counter)" in shown.stdout
    assert "[heap]" in shown.stdout and "[vdso]" in shown.stdout
    data = json.loads(run_cryo("show", str(img), "--json").stdout)
    proc = data["processes"][0]
    assert proc["pid"] == v.pid and proc["comm"] == "counter"
    assert any(f["path"] == str(v.out) for f in proc["files"])
    assert proc["registers"]["syscall"] == 230  # clock_nanosleep

    pidfile = tmp_path / "pid"
    r = run_cryo("restart", "-D", str(img), "--detach", "--pidfile", str(pidfile))
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(pidfile.read_text()))
    assert pid == v.pid and int(r.stdout) == pid
    v.wait_ok_after(last + 3)
    # the restored process is in its own session, as `cryo run` made it
    st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(st[2]) == pid and int(st[3]) == pid  # pgrp, session


def test_restart_in_foreground_returns_exit_status(procs: Procs, tmp_path: Path) -> None:
    # the program ends (status 7) once told to: not after a time, which a loaded machine's
    # start-up of cryo could outlast
    flag, out = tmp_path / "end", tmp_path / "out.txt"
    code = (f"import os,sys,time\nwith open({str(out)!r}, 'a') as f: f.write('up\\n')\n"
            f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\nsys.exit(7)\n")
    v = procs.spawn([sys.executable, "-c", code], out)
    v.wait_line("up")
    assert run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"),
                    "--kill").returncode == 0
    reap(v.pid)
    r = subprocess.Popen([sys.executable, "-m", "cryo", "restart", "-D", str(tmp_path / "img")],
                         stderr=subprocess.PIPE, text=True, close_fds=True)  # fmt: skip
    try:
        time.sleep(0.5)
        assert r.poll() is None, "the restart waits for its process"
        flag.touch()
        _, err = r.communicate(timeout=60)
    finally:
        if r.poll() is None:
            r.kill()
            r.wait()
    assert r.returncode == 7, err


def test_compressed_image(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = start_counter(procs, build, tmp_path)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--compress", "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    last = max(v.oks())
    info = json.loads(run_cryo("show", str(tmp_path / "img"), "--json").stdout)["image"]
    assert info["stored"] < info["memory"] / 4  # a megabyte of 'h' compresses well
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    v.wait_ok_after(last + 2)


def test_help_documents_exit_codes() -> None:
    r = run_cryo("--help")
    for code, _text in ExitCode.TABLE:
        assert f"{code:>3}  " in r.stdout


# -- bad input -------------------------------------------------------------------------

def test_no_such_pid(tmp_path: Path) -> None:
    r = run_cryo("checkpoint", "999999999", "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.NO_SUCH_PROCESS
    assert "does not exist" in r.stderr
    assert not (tmp_path / "img").exists()


def test_pid_that_may_not_be_traced(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = start_counter(procs, build, tmp_path)
    tracer = procs.spawn([sys.executable, "-c",
                          "import sys,time\nfrom cryo.linux import libc\n"
                          f"libc.ptrace(0x4206, {v.pid}, 0, 0)\nprint('x', flush=True)\n"
                          "time.sleep(60)\n"], stdout=subprocess.PIPE)  # fmt: skip
    assert tracer.popen is not None and tracer.popen.stdout is not None
    assert tracer.popen.stdout.readline().strip() == b"x"
    tracer.popen.stdout.close()
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.ACCESS_DENIED, r.stderr
    assert f"already traced by pid {tracer.pid}" in r.stderr


def test_image_exists_needs_force(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = start_counter(procs, build, tmp_path)
    img = str(tmp_path / "img")
    assert run_cryo("checkpoint", str(v.pid), "-D", img).returncode == 0
    r = run_cryo("checkpoint", str(v.pid), "-D", img)
    assert r.returncode == ExitCode.IMAGE_EXISTS and "--force" in r.stderr
    assert run_cryo("checkpoint", str(v.pid), "-D", img, "--force").returncode == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["img", "out.txt", "run.log"]), \
        "no temporary directory may be left behind"  # fmt: skip


@pytest.fixture
def image(procs: Procs, build: Any, tmp_path: Path) -> Path:
    v = start_counter(procs, build, tmp_path)
    img = tmp_path / "img"
    assert run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill").returncode == 0
    reap(v.pid)
    return img


def no_new_children(before: set[int]) -> None:
    me = os.getpid()
    kids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[1]) == me and stat[0] != "Z":
                kids.add(int(d))
    assert kids <= before, f"left behind: {kids - before}"


def children() -> set[int]:
    me = os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    out.add(int(d))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def test_missing_image(tmp_path: Path) -> None:
    r = run_cryo("restart", "-D", str(tmp_path / "nothing"))
    assert r.returncode == ExitCode.IMAGE_MISSING and "no image" in r.stderr


def test_corrupt_pages(image: Path) -> None:
    before = children()
    with open(image / "pages.img", "r+b") as f:
        f.seek(4096 + 100)
        b = f.read(1)
        f.seek(4096 + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT
    assert "pages block 0 checksum mismatch" in r.stderr
    no_new_children(before)


def test_truncated_core(image: Path) -> None:
    core = image / "core.img"
    core.write_bytes(core.read_bytes()[:-20])
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT and "truncated" in r.stderr


def test_truncated_pages(image: Path) -> None:
    pages = image / "pages.img"
    pages.write_bytes(pages.read_bytes()[:8192])
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_CORRUPT and "truncated" in r.stderr


def test_other_format_version(image: Path) -> None:
    core = image / "core.img"
    data = bytearray(core.read_bytes())
    data[8:12] = (fmt.FORMAT_VERSION + 1).to_bytes(4, "little")
    core.write_bytes(bytes(data))
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_INCOMPATIBLE and "format version" in r.stderr


def test_other_architecture(image: Path) -> None:
    recs = fmt.read_file(image / "core.img", R.CORE_MAGIC)
    head = dict(recs[0].payload, arch="aarch64")
    recs[0] = fmt.Record(R.HEAD, head)
    (image / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, recs))
    r = run_cryo("restart", "-D", str(image))
    assert r.returncode == ExitCode.IMAGE_INCOMPATIBLE and "aarch64" in r.stderr


def test_must_reuse_pid_conflict(procs: Procs, image: Path, build: Any) -> None:
    old = json.loads(run_cryo("show", str(image), "--json").stdout)["processes"][0]["pid"]
    first = run_cryo("restart", "-D", str(image), "--detach")
    assert first.returncode == 0
    assert procs.track(int(first.stdout)) == old
    r = run_cryo("restart", "-D", str(image), "--must-reuse-pid")
    assert r.returncode == ExitCode.CONFLICT and f"pid {old} is taken" in r.stderr
    # nor without it (the default): the process might keep its pid
    r = run_cryo("restart", "-D", str(image), "--detach")
    assert r.returncode == ExitCode.CONFLICT and f"pid {old} is taken" in r.stderr \
        and "--new-pids" in r.stderr, r.stderr  # fmt: skip
    # --new-pids: a new pid, beside the first copy
    second = run_cryo("restart", "-D", str(image), "--detach", "--new-pids")
    assert second.returncode == 0, second.stderr
    assert procs.track(int(second.stdout)) != old


def test_unsupported_resource_leaves_target_alone(procs: Procs, tmp_path: Path) -> None:
    # an established TCP connection: refused unless --tcp-established says what to do
    code = ("import socket,time,os\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n"
            "c=socket.create_connection(s.getsockname())\na,_=s.accept()\n"
            f"f=open('{tmp_path}/out.txt','a',buffering=1)\nf.write('ready\\n')\n"
            "i=0\nwhile True:\n  f.write(f'tick {i}\\n'); i+=1; time.sleep(0.01)\n")
    v = procs.spawn([sys.executable, "-c", code], tmp_path / "out.txt")
    v.wait_ok_after(3)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "TCP connection" in r.stderr and "--tcp-established" in r.stderr, r.stderr
    assert_untouched(v, maps)
    assert not (tmp_path / "img").exists()


def assert_untouched(v: Victim, maps: str) -> None:
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0" in status
    assert "State:\tT" not in status and "State:\tt" not in status
    assert Path(f"/proc/{v.pid}/maps").read_text() == maps, "a mapping was left behind"
    v.wait_ok_after(max(v.oks()) + 3)


def test_signal_option(procs: Procs, build: Any, tmp_path: Path) -> None:
    v = start_counter(procs, build, tmp_path)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--stop")
    assert r.returncode == 0
    deadline = time.monotonic() + 5
    while "State:\tT" not in Path(f"/proc/{v.pid}/status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(v.pid, signal.SIGCONT)
    v.wait_ok_after(max(v.oks()) + 2)


def test_real_image_reencodes_byte_for_byte(image: Path) -> None:
    data = (image / "core.img").read_bytes()
    recs = fmt.read_file(image / "core.img", R.CORE_MAGIC)
    assert {r.kind for r in recs} >= {R.HEAD, R.TREE, R.TASK, R.MM, R.THRD, R.SIGS, R.FILE,
                                      R.FDSC, R.PBLK}
    assert fmt.encode_file(R.CORE_MAGIC, recs) == data


def test_shell_job_read_restarts_on_callers_stdio(procs: Procs, tmp_path: Path) -> None:
    """A program reading its stdin (a pipe from the caller) is checkpointed while blocked
    in read(); restarted with --shell-job it reads and writes the new caller's stdio."""
    code = ("import sys,os\nos.write(1, b'ready\\n')\n"
            "for line in sys.stdin:\n  os.write(1, b'echo ' + line.encode())\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, close_fds=True, start_new_session=True)
    procs.track(p.pid)
    assert p.stdin is not None and p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    p.stdin.write(b"one\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"echo one\n"
    time.sleep(0.1)  # blocked in read(0) now
    img = str(tmp_path / "img")
    r = run_cryo("checkpoint", str(p.pid), "-D", img)
    assert r.returncode == ExitCode.UNSUPPORTED and "pipe" in r.stderr
    r = run_cryo("checkpoint", str(p.pid), "-D", img, "--shell-job", "--kill")
    assert r.returncode == 0, r.stderr
    p.wait()
    p.stdin.close()
    p.stdout.close()
    restored = subprocess.run([sys.executable, "-m", "cryo", "restart", "-D", img,
                               "--shell-job"], input=b"two\nthree\n", capture_output=True,
                              timeout=30, close_fds=True)  # fmt: skip
    assert restored.stdout == b"echo two\necho three\n", restored.stderr
    assert restored.returncode == 0


def test_process_with_children_needs_a_scope(procs: Procs, tmp_path: Path) -> None:
    """A process with a child, given without a scope, is refused (exit 9, naming the
    child and both scopes; no image, both untouched): alone it would come back without
    it.  --process takes it alone as asked, --tree with its child."""
    out = tmp_path / "out"
    code = ("import os, sys, time\n"
            "kid = os.fork()\n"
            "if kid == 0:\n  time.sleep(600)\n"
            f"open({str(out)!r}, 'w').write(f'kid {{kid}}\\n')\n"
            "time.sleep(600)\n")  # fmt: skip
    v = procs.spawn([sys.executable, "-c", code], out)
    kid = int(v.wait_line("kid").split()[1])
    procs.track(kid)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert str(kid) in r.stderr and "--tree" in r.stderr and "--process" in r.stderr
    assert not (tmp_path / "img").exists()
    for pid in (v.pid, kid):
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "S"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "alone"), "--process")
    assert r.returncode == 0, r.stderr
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "both"), "--tree")
    assert r.returncode == 0 and "2 processes" in r.stderr, r.stderr
