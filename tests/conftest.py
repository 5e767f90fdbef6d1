"""Shared test helpers: victims compiled with gcc, spawned with close_fds in their own
session, and always killed and reaped by pid.  The test process is a child subreaper,
so restored and orphaned processes come back to it and are reaped here too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cryo.linux import libc
from cryo.linux.consts import PR

VICTIMS = Path(__file__).parent / "victims"


def pytest_configure(config: pytest.Config) -> None:
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # (reaped as we read: ESRCH)
        return True


def reap(pid: int, timeout: float = 10.0) -> None:
    """Kill ``pid`` (one we started) and wait until it is gone from /proc."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got = 0
            if not os.path.exists(f"/proc/{pid}"):
                return
        if got == pid and not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not go away")


class Victim:
    """A process under test writing report lines to ``out``."""

    def __init__(self, pid: int, out: Path, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.out = out
        self.popen = popen

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines() if self.out.exists() else []

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if pred(lines):
                return lines
            if time.monotonic() > deadline:
                tail = "\n".join(lines[-10:])
                raise AssertionError(f"timed out waiting on pid {self.pid}; output tail:\n{tail}")
            time.sleep(0.01)

    def wait_line(self, prefix: str, timeout: float = 10.0) -> str:
        lines = self.wait_for(lambda ls: any(x.startswith(prefix) for x in ls), timeout)
        return next(x for x in lines if x.startswith(prefix))

    def oks(self) -> list[int]:
        return [int(x.split()[1]) for x in self.lines() if x.startswith(("ok ", "tick "))]

    def fails(self) -> list[str]:
        return [x for x in self.lines() if x.startswith("FAIL")]

    def wait_ok_after(self, n: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda ls: bool(self.fails()) or any(
            x.startswith(("ok ", "tick ")) and int(x.split()[1]) > n for x in ls), timeout)
        assert not self.fails(), self.fails()


class Procs:
    """Tracks every pid a test started or restored; all are killed and reaped after it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pids: list[int] = []

    def track(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def spawn(self, argv: list[str], out: Path | None = None, **kw: object) -> Victim:
        out = out or self.tmp / f"out-{len(self.pids)}.txt"
        log = open(self.tmp / f"stdio-{len(self.pids)}.log", "ab")  # noqa: SIM115
        opts: dict[str, object] = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log,
                                   "close_fds": True, "start_new_session": True, **kw}
        p = subprocess.Popen(argv, **opts)  # type: ignore[call-overload]
        log.close()
        p.returncode = 0  # we reap it ourselves, by pid (see reap())
        self.track(p.pid)
        return Victim(p.pid, out, p)

    def kill(self, pid: int) -> None:
        reap(pid)

    def cleanup(self) -> None:
        # a tracer goes before the process it traces; every process is killed before any
        # is waited for, so that a child's zombie is not left waiting on a live parent.
        # The descendants of those it tracked go too (theirs: nginx's workers restored
        # with other pids than the test tracked were left running after a failed test)
        extra = [d for pid in self.pids for d in _descendants(pid) if d not in self.pids]
        for pid in [*reversed(self.pids), *extra]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in reversed(self.pids):
            reap(pid)
        for pid in extra:  # (orphans of the killed: ours to reap, as a child subreaper)
            with contextlib.suppress(AssertionError):
                reap(pid, timeout=2)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (its threads' children, theirs, ...)."""
    out: list[int] = []
    todo, seen = [pid], {pid}
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in seen:
                    seen.add(k)
                    out.append(k)
                    todo.append(k)
    return out


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def hugepages() -> Iterator[Callable[[int], None]]:
    """Resize the pool of 2 MiB huge pages for the test (skipped if the kernel will not
    give that many); the pool is put back as it was."""
    knob = Path("/proc/sys/vm/nr_hugepages")
    old = knob.read_text()

    def resize(n: int) -> None:
        knob.write_text(str(n))
        if int(knob.read_text()) < n:
            pytest.skip(f"cannot get {n} huge pages")

    yield resize
    knob.write_text(old)


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Compile tests/victims/NAME.c once per session; returns the binary's path."""
    out = tmp_path_factory.mktemp("victims")
    cache: dict[str, str] = {}

    def _build(name: str) -> str:
        if name not in cache:
            exe = out / name
            subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                            str(VICTIMS / f"{name}.c"), "-lrt"], check=True)  # fmt: skip
            cache[name] = str(exe)
        return cache[name]

    return _build


def run_cryo(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the cryo command line as a user would."""
    return subprocess.run([sys.executable, "-m", "cryo", *args], capture_output=True,
                          text=True, timeout=timeout, close_fds=True, **kw)  # type: ignore[call-overload]


def spawn_mode(procs: Procs, exe: str, tmp_path: Path, mode: str) -> Victim:
    """A probe victim (``EXE OUT MODE DIR``: one piece of state set per mode, then a
    check each round, "ok N" or "FAIL what") started and seen to run."""
    out = tmp_path / "out.txt"
    v = procs.spawn([exe, str(out), mode, str(tmp_path)], out)
    v.wait_line("ready")
    v.wait_ok_after(1)
    return v


def cli_cycle(procs: Procs, pid: int, img: Path, *checkpoint_args: str) -> int:
    """As a user would: ``cryo checkpoint PID -D IMG --kill ARGS``, the process reaped,
    then ``cryo restart -D IMG --detach``; the restored pid, tracked."""
    r = run_cryo("checkpoint", str(pid), "-D", str(img), "--kill", *checkpoint_args)
    assert r.returncode == 0, r.stderr
    reap(pid)
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    return procs.track(int(r.stdout))


def checked_after(procs: Procs, tmp_path: Path, v: Victim, go: Path, kill: bool,
                  timeout: float = 20) -> None:  # fmt: skip
    """A victim that checks its own state once ``go`` exists ("checked good" or what it
    found): checkpointed into ``tmp_path``/img, with ``kill`` killed and restarted as a
    user would (cli_cycle), else left to go on; then told to check."""
    if kill:
        v = Victim(cli_cycle(procs, v.pid, tmp_path / "img"), v.out)
    else:
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr
    go.touch()
    assert v.wait_line("checked", timeout=timeout) == "checked good"


def restart_later(procs: Procs, v: Victim, img: Path, caught: float = 1.5,
                  away: float = 0.5) -> tuple[Victim, float]:  # fmt: skip
    """``caught`` s after now, ``v`` checkpointed into ``img`` and killed, reaped, and
    restarted ``away`` s later (in-process): the restored victim, tracked, and the time
    it was gone (s), from the checkpoint's start to the restart's end."""
    from cryo.engine.dump import checkpoint
    from cryo.engine.restore import restart

    time.sleep(caught)
    t_dead = time.monotonic()
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    time.sleep(away)
    rr = restart(str(img))
    dead = time.monotonic() - t_dead
    procs.track(rr.pid)
    return Victim(rr.pid, v.out), dead


def counter_of_its_own(procs: Procs, build: Callable[[str], str], tmp_path: Path
                       ) -> tuple[Path, Victim]:  # fmt: skip
    """counter.c run from a copy of its binary in ``tmp_path`` (for a test to change),
    checkpointed into ``tmp_path``/img and killed (reaped: its zombie would hold its
    pid): the copy and the victim."""
    import shutil

    from cryo.engine.dump import checkpoint

    exe = tmp_path / "counter"
    shutil.copy(build("counter"), exe)
    v = procs.spawn([str(exe), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    return exe, v
