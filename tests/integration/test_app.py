"""Applications that take part in their checkpoints (cryo.app, seed 003): callbacks
that see CONTINUED after a checkpoint and RESTARTED after a restart, in thread and
signal context; a veto; critical sections waited for or refused (non-blocking); memory
left out; saved files put back; a program checkpointing itself; the requester's
staged and non-blocking calls."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest

import cryo
from cryo.errors import CheckpointRefused, ExitCode
from cryo.image import format as fmt
from cryo.image import records as R
from tests.conftest import Procs, Victim, run_cryo

VICTIM = Path(__file__).parent.parent / "victims" / "appcb.py"


def start(procs: Procs, tmp_path: Path, mode: str, arg: str = "") -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, str(VICTIM), str(out), mode, *([arg] if arg else [])], out)
    v.wait_line("ready ", timeout=20)
    v.wait_ok_after(1)
    return v


def assert_running(v: Victim) -> None:
    """Not traced, not stopped, going on (its callbacks' threads change its mappings, so
    unlike assert_untouched the maps are not compared)."""
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0" in status
    assert "State:\tT" not in status and "State:\tt" not in status
    v.wait_ok_after(max(v.oks()) + 3)


def lines_with(v: Victim, prefix: str) -> list[str]:
    return [x for x in v.lines() if x.startswith(prefix)]


def restart_detached(procs: Procs, img: Path) -> int:
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    return procs.track(int(r.stdout.split()[-1]))


@pytest.mark.parametrize("mode", ["plain", "signal"])
def test_callback_continues_then_restarts(procs: Procs, tmp_path: Path, mode: str) -> None:
    v = start(procs, tmp_path, mode)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img))
    assert r.returncode == 0, r.stderr
    v.wait_line("callback CONTINUED")
    start_line = lines_with(v, "callback start")[0]
    assert f"target={v.pid}" in start_line and "scope=process" in start_line
    assert f"main={1 if mode == 'signal' else 0}" in start_line
    v.wait_ok_after(max(v.oks()) + 2)  # it goes on
    n = max(v.oks())
    procs.kill(v.pid)
    pid = restart_detached(procs, img)
    got = v.wait_line("callback RESTARTED", timeout=20)
    assert f"old={v.pid} new={pid} pid={pid}" in got, got
    assert f"host={socket.gethostname()}" in got
    # (the image's HEAD holds the host's addresses where an agent asked: the same host)
    old_addrs, new_addrs = got.split(" addrs=")[1].split(">")
    assert old_addrs == new_addrs, got
    Victim(pid, v.out).wait_ok_after(n + 2)
    assert not v.fails()


def test_veto_fails_the_checkpoint_and_harms_nothing(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "veto")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.REFUSED, r.stderr
    assert "not now, says the program" in r.stderr
    assert not (tmp_path / "img").exists()
    assert_running(v)


def test_critical_sections(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "critical")
    v.wait_line("enter 2")
    # non-blocking while inside a section: refused at once
    t0 = time.monotonic()
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "nb"), "--nonblocking")
    if r.returncode == 0:  # it landed in the 50 ms between two sections: try once more
        v.wait_line(f"enter {max(int(x.split()[1]) for x in lines_with(v, 'enter ')) + 1}")
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "nb2"), "--nonblocking")
    assert r.returncode == ExitCode.REFUSED, r.stderr
    assert "critical section" in r.stderr
    assert time.monotonic() - t0 < 10
    # blocking: waits for the end of the section; the checkpoint falls between two
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    v.wait_line("callback CONTINUED")
    seq = [x for x in v.lines() if x.startswith(("enter", "leave", "callback start"))]
    i = seq.index(next(x for x in seq if x.startswith("callback start")))
    assert i == 0 or seq[i - 1].startswith("leave"), seq[max(0, i - 3) : i + 2]
    assert i + 1 == len(seq) or seq[i + 1].startswith("enter")
    v.wait_ok_after(max(v.oks()) + 2)


def test_advised_memory_comes_back_as_zeros(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "advise")
    v.wait_line("buffer AB")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img))
    assert r.returncode == 0, r.stderr
    # no page of the range is in the image
    recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
    (appx,) = [r.payload for r in recs if r.kind == b"APPX"]
    ((first, length),) = appx["dropped"]
    assert length >= (4 << 20) - 8192
    for r in recs:
        if r.kind == R.PBLK and r.payload.get("pid") == v.pid:
            for a, n in r.payload["runs"]:
                assert a + n <= first or first + length <= a, "a dropped page was saved"
    procs.kill(v.pid)
    pid = restart_detached(procs, img)
    got = v.wait_line("callback RESTARTED", timeout=20)
    dropped = re.search(r"dropped=\[\((\d+), (\d+)\)\]", got)
    assert dropped and int(dropped.group(2)) >= (4 << 20) - 8192, got
    v.wait_line("buffer zero")
    Victim(pid, v.out).wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_saved_file_put_back(procs: Procs, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    f = tmp_path / "scratch.bin"
    f.write_bytes(data)
    v = start(procs, tmp_path, "saved", str(f))
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img))
    assert r.returncode == 0, r.stderr
    procs.kill(v.pid)
    f.unlink()
    pid = restart_detached(procs, img)
    assert f.read_bytes() == data
    f.write_bytes(b"changed since")  # a file that differs is put back too
    procs.kill(pid)
    pid = restart_detached(procs, img)
    assert f.read_bytes() == data
    Victim(pid, v.out).wait_ok_after(max(v.oks()) + 2)


def test_checkpoint_self(procs: Procs, tmp_path: Path) -> None:
    img = tmp_path / "img"
    v = start(procs, tmp_path, "self", str(img))
    v.wait_line("self CONTINUED", timeout=30)
    assert (img / "core.img").exists()
    procs.kill(v.pid)
    pid = restart_detached(procs, img)
    got = v.wait_line("self RESTARTED", timeout=20)
    assert f"pid={pid}" in got
    Victim(pid, v.out).wait_ok_after(max(v.oks()) + 2)


def test_checkpoint_self_that_fails_says_why(tmp_path: Path) -> None:
    """checkpoint_self into a directory that holds an image already: RuntimeError with
    cryo's own message, and the program goes on; nothing of cryo's is left open or on
    disk (its stderr went to a file of its own, removed)."""
    import subprocess

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "core.img").touch()
    code = (
        "import os, cryo.app as cr\n"
        "try:\n"
        f"    cr.checkpoint_self({str(tmp_path / 'img')!r})\n"
        "except RuntimeError as e:\n"
        "    print('raised', e)\n"
        "print('fds', len(os.listdir('/proc/self/fd')))\n"
    )
    before = set(os.listdir("/tmp"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, close_fds=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "raised checkpoint_self: no checkpoint was taken" in r.stdout, (r.stdout, r.stderr)
    assert "already holds an image" in r.stdout, r.stdout
    # 0-2, the agent's socket and listdir's own: no pipe or log of cryo's left open
    assert "fds 5" in r.stdout, r.stdout
    assert not {f for f in set(os.listdir("/tmp")) - before if f.startswith("cryo-self-")}


def test_checkpoint_self_gives_up_after_its_timeout(tmp_path: Path) -> None:
    """checkpoint_self(timeout=1) while a critical section holds the checkpoint off (cryo
    would wait 30 s for it): cryo is killed after 1 s, RuntimeError says so, no image is
    written, and the program goes on, not stopped or traced, with no cryo left."""
    import subprocess

    img = tmp_path / "img"
    code = (
        "import os, threading, time, cryo.app as cr\n"
        "inside = threading.Event()\n"
        "def hold():\n"
        "    with cr.critical():\n"
        "        inside.set(); time.sleep(8)\n"
        "threading.Thread(target=hold, daemon=True).start(); inside.wait()\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    cr.checkpoint_self({str(img)!r}, timeout=1)\n"
        "except RuntimeError as e:\n"
        "    print('raised', e)\n"
        "print('after %.1f' % (time.monotonic() - t))\n"
        "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print('tracer', st['TracerPid'].strip())\n"
        "me = f'checkpoint\\0{os.getpid()}\\0'.encode()\n"
        "def cmd(p):\n"
        "    try: return open(f'/proc/{p}/cmdline', 'rb').read()\n"
        "    except OSError: return b''\n"
        "print('cryo left', sum(me in cmd(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    before = set(os.listdir("/tmp"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, close_fds=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "did not finish within 1 s" in r.stdout, (r.stdout, r.stderr)
    after = float(r.stdout.split("after ", 1)[1].split()[0])
    assert 1.0 <= after < 6.0, r.stdout  # the timeout, then the grace, not cryo's 30 s
    assert "tracer 0" in r.stdout, r.stdout
    assert "cryo left 0" in r.stdout, r.stdout
    assert not (img / "core.img").exists()
    assert not {f for f in set(os.listdir("/tmp")) - before if f.startswith("cryo-self-")}


def test_staged_prepare_write_resume(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "plain")
    handle = cryo.prepare(v.pid)
    assert lines_with(v, "callback start"), "callbacks run in prepare"
    n = len(v.oks())
    time.sleep(0.3)
    assert len(v.oks()) == n, "frozen after prepare"
    r = handle.write(str(tmp_path / "img"))
    assert r.pids == [v.pid]
    assert not lines_with(v, "callback CONTINUED"), "held until resume"
    handle.resume()
    v.wait_line("callback CONTINUED")
    v.wait_ok_after(max(v.oks()) + 2)


def test_staged_prepare_abort(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "plain")
    handle = cryo.prepare(v.pid)
    handle.abort()
    v.wait_line("callback FAILED")
    assert_running(v)


def test_start_checkpoint_and_poll(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "plain")
    h = cryo.start_checkpoint(v.pid, str(tmp_path / "img"))
    assert h.poll(60) > 0
    assert h.result().pids == [v.pid]
    bad = cryo.start_checkpoint(v.pid, str(tmp_path / "img"))  # already there
    assert bad.poll(60) < 0
    with pytest.raises(cryo.ImageExists):
        bad.result()
    v.wait_ok_after(max(v.oks()) + 2)


def test_nonblocking_from_the_library(procs: Procs, tmp_path: Path) -> None:
    v = start(procs, tmp_path, "critical")
    v.wait_line("enter 2")
    refused = 0
    for i in range(10):  # (some land in the 50 ms between two sections)
        try:
            cryo.checkpoint(v.pid, str(tmp_path / f"img{i}"), nonblocking=True)
        except CheckpointRefused:
            refused += 1
        if refused == 2:
            break
    assert refused == 2
    v.wait_ok_after(max(v.oks()) + 2)


@pytest.fixture(scope="module")
def c_victim(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/victims/appcb.c built against the cryo.h the package installs."""
    import subprocess

    flags = subprocess.run([sys.executable, "-m", "cryo.app", "--cflags"], check=True,
                           capture_output=True, text=True).stdout.split()
    exe = tmp_path_factory.mktemp("cvictim") / "appcb"
    subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", *flags, "-o",
                    str(exe), str(VICTIM.with_suffix(".c"))], check=True)  # fmt: skip
    return str(exe)


def start_c(procs: Procs, tmp_path: Path, exe: str, mode: str) -> Victim:
    out = tmp_path / "out.txt"
    v = procs.spawn([exe, str(out), mode], out)
    v.wait_line("ready ", timeout=20)
    v.wait_ok_after(1)
    return v


def test_c_program_continues_then_restarts(procs: Procs, tmp_path: Path, c_victim: str) -> None:
    v = start_c(procs, tmp_path, c_victim, "plain")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img))
    assert r.returncode == 0, r.stderr
    v.wait_line("callback CONTINUED")
    assert f"target={v.pid} scope=process" in lines_with(v, "callback start")[0]
    procs.kill(v.pid)
    pid = restart_detached(procs, img)
    got = v.wait_line("callback RESTARTED", timeout=20)
    assert f"old={v.pid} new={pid} pid={pid}" in got, got
    Victim(pid, v.out).wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_c_program_veto_and_critical(procs: Procs, tmp_path: Path, c_victim: str) -> None:
    v = start_c(procs, tmp_path, c_victim, "veto")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == ExitCode.REFUSED, r.stderr
    assert "aborted by the application" in r.stderr
    assert_running(v)
    (tmp_path / "second").mkdir()
    w = start_c(procs, tmp_path / "second", c_victim, "critical")
    w.wait_line("enter 2")
    refused = 0
    for i in range(10):  # (some land in the 50 ms between two sections)
        r = run_cryo("checkpoint", str(w.pid), "-D", str(tmp_path / f"nb{i}"), "--nonblocking")
        refused += r.returncode == ExitCode.REFUSED
        if refused == 2:
            break
    assert refused == 2
    r = run_cryo("checkpoint", str(w.pid), "-D", str(tmp_path / "img2"))
    assert r.returncode == 0, r.stderr
    w.wait_line("callback CONTINUED")
    assert_running(w)
