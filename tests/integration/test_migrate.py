"""Migration (issue 13): stream images, `cryo migrate` / `cryo receive` between two
"hosts" (network namespaces joined by a veth pair, each with its own mount namespace and
its own /tmp), pre-copy, a cut connection, a wrong secret."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.image import records as R
from cryo.image.reader import Image
from cryo.image.stream import Channel, Framer, StreamSink, StreamSource
from tests.conftest import Procs, Victim, reap
from tests.hosts import Hosts

VOLATILE = {R.HEAD, R.PBLK, b"MADE", b"SIDE", b"SEAL", b"END "}


def _stream_checkpoint(pid: int, **kw: Any) -> StreamSource:
    """Checkpoint ``pid`` into a stream over a socketpair, received into memory."""
    a, b = socket.socketpair()
    got: list[Any] = []

    def receive() -> None:
        try:
            got.append(StreamSource(Framer(Channel(b, name="test stream")), path="test"))
        except BaseException as err:
            got.append(err)

    th = threading.Thread(target=receive)
    th.start()
    try:
        checkpoint(pid, lambda: StreamSink(Framer(Channel(a, name="test stream"))), **kw)
    finally:
        a.close()
        th.join(30)
        b.close()
    if isinstance(got[0], BaseException):
        raise got[0]
    src: StreamSource = got[0]
    return src


def _pages(image: Any) -> dict[int, bytes]:
    out = {}
    for b in image.blocks:
        buf, off = image.block_data(b)
        view = memoryview(buf)
        for a, n in b["runs"]:
            for p in range(0, n, 4096):
                out[a + p] = bytes(view[off + p : off + p + 4096])
            off += n
    return out


def test_stream_image_same_as_directory(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process asleep between two checkpoints: the stream holds the same records as
    the directory image (but HEAD's time and the per-image records) and the same pages."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt"), "600000"],
                    tmp_path / "out.txt")
    v.wait_line("tick 0")
    checkpoint(v.pid, str(tmp_path / "warm"))  # from here it sleeps in restart_syscall
    checkpoint(v.pid, str(tmp_path / "img"))
    src = _stream_checkpoint(v.pid)
    img = Image(str(tmp_path / "img"))
    try:
        def records(recs: list[Any]) -> list[tuple[bytes, Any]]:
            return [(r.kind, r.payload) for r in recs if r.kind not in VOLATILE]

        assert records(src.core_records) == records(img.core_records)
        assert src.head["pids"] == img.head["pids"]
        img.verify()
        src.verify()
        # (below its stack pointer the stack holds what cryo's injected calls left; the
        # kernel itself writes the thread's rseq area, cpu_id, whenever it moves to
        # another CPU between the two checkpoints)
        stack = [(m["start"], m["end"]) for m in img.raw(R.MM)[0]["vmas"]
                 if m["path"] == "[stack]"]  # fmt: skip
        rseq = {t["rseq"][0] & ~0xFFF for t in img.raw(R.THRD) if t["rseq"][0]}
        a, b = _pages(src), _pages(img)
        assert a.keys() == b.keys()
        assert {k for k in a if a[k] != b[k]} <= {k for k in a for s, e in stack
                                                   if s <= k < e} | rseq  # fmt: skip
    finally:
        img.close()
        src.close()


def test_restart_from_stream(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Checkpoint into a stream, kill, restart from the stream held in memory: it goes on."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    src = _stream_checkpoint(v.pid, signal_after=signal.SIGKILL)
    last = max(v.oks())
    reap(v.pid)
    rr = restart(src)
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 1)
    assert not new.fails()


WRITER = """
import sys, time
f = open(sys.argv[1], "w")  # written at its own offset: cryo.image.running counts it
i = 0
while True:
    f.write(f"tick {i}\\n"); f.flush(); i += 1; time.sleep(0.02)
"""


def test_restart_from_stream_file_open_for_writing(procs: Procs, tmp_path: Path) -> None:
    """A stream has no core.img: its identity for the "already running" check is its own."""
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", WRITER, str(out)], out)
    v.wait_ok_after(2)
    src = _stream_checkpoint(v.pid, signal_after=signal.SIGKILL)
    last = max(v.oks())
    reap(v.pid)
    rr = restart(src)
    procs.track(rr.pid)
    Victim(rr.pid, out).wait_ok_after(last + 1)


def test_stream_tampered_frame_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """One byte of a page block changed in flight: its frame does not authenticate
    (exit 5), nothing is restarted; unchanged, the same bytes restart."""
    from cryo.errors import ImageCorrupt

    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    path = tmp_path / "stream.bin"  # a stream written to a file, as to a pipe
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        checkpoint(v.pid, lambda: StreamSink(Framer(Channel(wfd=fd, name="file"))))
    finally:
        os.close(fd)
    data = bytearray(path.read_bytes())
    at = data.index(b"PAGE") + 4096  # inside the first page block's data
    data[at] ^= 1
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))

    def read(p: Path) -> StreamSource:
        rfd = os.open(p, os.O_RDONLY)
        try:
            return StreamSource(Framer(Channel(rfd=rfd, name=p.name)), path=str(p))
        finally:
            os.close(rfd)

    with pytest.raises(ImageCorrupt, match="does not authenticate"):
        read(bad)
    src = read(path)
    src.verify()
    src.close()
    v.wait_ok_after(max(v.oks()) + 1)


# -- two hosts on this machine -----------------------------------------------------------

SECRET = "k3Yq9mJx2N8vR4tP7wL5sB1cF6hD0gZa"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts()
    try:
        h.setup()
        yield h
    finally:
        h.teardown()
    assert not os.path.exists(f"/run/netns/{h.ns['A']}")
    assert not os.path.exists(f"/run/netns/{h.ns['B']}")


PORT = 7707


def _secret(hosts: Hosts, text: str = SECRET, name: str = "secret") -> str:
    path = hosts.shared / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def _receiver(procs: Procs, hosts: Hosts, secret: str, *extra: str) -> Victim:
    """`cryo receive --once` on host B; its stdout (the restored pid) into a file."""
    out = hosts.shared / f"recv-{len(procs.pids)}.out"
    err = hosts.shared / f"recv-{len(procs.pids)}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen(hosts.argv("B", sys.executable, "-m", "cryo", "receive",
                                        "--listen", f"{hosts.addr['B']}:{PORT}",
                                        "--secret-file", secret, "--once", *extra),
                             stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, close_fds=True,
                             start_new_session=True)  # fmt: skip
    p.returncode = 0
    procs.track(p.pid)
    v = Victim(p.pid, err, p)
    v.wait_line("listening on", timeout=30)
    return v


def _migrate(hosts: Hosts, pid: int, secret: str, *extra: str,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return hosts.run("A", sys.executable, "-m", "cryo", "migrate", str(pid), "--to",
                     f"{hosts.addr['B']}:{PORT}", "--secret-file", secret, *extra,
                     timeout=timeout)  # fmt: skip


def _spawn_on_a(procs: Procs, hosts: Hosts, argv: list[str], out: Path) -> Victim:
    """A target on host A, its stdio on a file both hosts see (nsenter execs it: the
    same pid)."""
    log = hosts.shared / f"stdio-{len(procs.pids)}.log"
    with open(log, "ab") as f:
        p = subprocess.Popen(hosts.argv("A", *argv), stdin=subprocess.DEVNULL, stdout=f,
                             stderr=f, close_fds=True, start_new_session=True)  # fmt: skip
    p.returncode = 0
    procs.track(p.pid)
    v = Victim(p.pid, out, p)
    v.wait_line("ready", timeout=60)
    return v


def _migr_on_a(procs: Procs, build: Any, hosts: Hosts, *args: str, ok: int = 1,
               timeout: float = 10) -> Victim:  # fmt: skip
    """tests/victims/migr.c (``args``: MIB PAGES_PER_S [CHECK_MS]) on host A, checking
    itself: its "ok" lines past ``ok``."""
    exe = shutil.copy(build("migr"), hosts.shared / "migr")
    out = hosts.shared / "out.txt"
    v = _spawn_on_a(procs, hosts, [str(exe), str(out), *args], out)
    v.wait_ok_after(ok, timeout=timeout)
    return v


def _on(hosts: Hosts, h: str, pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == hosts.ns_inode(h, "net") and \
        os.stat(f"/proc/{pid}/ns/mnt").st_ino == hosts.ns_inode(h, "mnt")  # fmt: skip


def _untouched(v: Victim) -> None:
    """The source after a failed migration: running, not traced, checking itself."""
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "TracerPid:\t0\n" in status, status
    v.wait_ok_after(max(v.oks(), default=-1) + 2, timeout=30)
    state = status.split("State:\t")[1][0]
    assert state in "RS", state


def _clean_b(hosts: Hosts, receiver: Victim) -> None:
    """Nothing left on B: no process in its network namespace, nothing in its /tmp."""
    reap(receiver.pid, timeout=30)
    deadline = time.monotonic() + 10
    while hosts.pids("B") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hosts.pids("B") == []
    left = [x for x in hosts.run("B", "ls", "-A", "/tmp").stdout.split()
            if x != hosts.repo_top]  # (the repository, bound in when it lives under /tmp)
    assert left == [], left


def _migrated(procs: Procs, hosts: Hosts, v: Victim, receiver: Victim,
              res: subprocess.CompletedProcess[str]) -> Victim:  # fmt: skip
    assert res.returncode == 0, res.stderr
    new_pid = int(res.stdout.split()[-1])
    procs.track(new_pid)
    assert _on(hosts, "B", new_pid)
    reap(receiver.pid, timeout=30)  # --once: it is done (the process is ours now)
    deadline = time.monotonic() + 10
    while not gone_from(v.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone_from(v.pid), "the source must be killed once the process runs on B"
    return Victim(new_pid, v.out)


def gone_from(pid: int) -> bool:
    from tests.conftest import gone

    return gone(pid)


def test_migrate_c_target(procs: Procs, build: Any, hosts: Hosts) -> None:
    v = _migr_on_a(procs, build, hosts, "64", "200")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    last = max(v.oks())
    res = _migrate(hosts, v.pid, secret)
    assert "round 1:" in res.stderr and "downtime" in res.stderr, res.stderr
    new = _migrated(procs, hosts, v, rcv, res)
    new.wait_ok_after(last + 3, timeout=30)
    assert not new.fails()


@pytest.mark.parametrize("how", ["pre-copy", "lazy"])
def test_migrate_python_target(procs: Procs, hosts: Hosts, how: str) -> None:
    """A Python program: every tick's line depends on its objects, a generator and the
    random module; the lines go on after the migration exactly where they stopped (with
    --lazy: its heap arriving as it runs)."""
    script = Path(__file__).parent.parent / "victims" / "pystate.py"
    source = hosts.shared / "source.txt"
    source.write_text("".join(f"line {i}\n" for i in range(50)))
    out = hosts.shared / "py.txt"
    v = _spawn_on_a(procs, hosts, [sys.executable, str(script), str(out), str(source)], out)
    v.wait_line("tick 5")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret, *(["--lazy"] if how == "lazy" else []))
    assert how != "lazy" or "every page there" in res.stderr, res.stderr
    n = len(v.lines())
    new = _migrated(procs, hosts, v, rcv, res)
    new.wait_for(lambda ls: len(ls) > n + 5, timeout=30)
    ticks = [ln for ln in new.lines() if ln.startswith("tick ")]
    assert [int(t.split()[1]) for t in ticks] == list(range(len(ticks)))
    a, b = 0, 1
    for t in ticks:  # fib= is the generator's state
        assert f" fib={a} " in t, t
        a, b = b, a + b


def test_migrate_hard_writer(procs: Procs, build: Any, hosts: Hosts) -> None:
    """A target rewriting its pages as fast as it can: the rounds stop when what is
    written stops shrinking, the final freeze sends the rest, every page is right."""
    v = _migr_on_a(procs, build, hosts, "64", "-1", "500", ok=0)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    last = max(v.oks())
    res = _migrate(hosts, v.pid, secret)
    assert "round 2:" in res.stderr, res.stderr
    new = _migrated(procs, hosts, v, rcv, res)
    new.wait_ok_after(last + 2, timeout=60)
    assert not new.fails()


def _runtime(pid: int) -> int:
    """Nanoseconds pid has run on a CPU (/proc/PID/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def test_migrate_keep_copy_restartable(procs: Procs, build: Any, hosts: Hosts) -> None:
    """`cryo migrate --keep DIR`: the destination keeps a copy of the image in DIR (B's
    own /tmp, not A's), which restarts there later, from the moment of the migration."""
    v = _migr_on_a(procs, build, hosts, "16", "100")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret, "--keep", "/tmp/kept")
    deadline = time.monotonic() + 60  # --once: it ends once the copy is written (after
    while not gone_from(rcv.pid) and time.monotonic() < deadline:  # the answer)
        time.sleep(0.05)
    assert "kept a copy in /tmp/kept" in rcv.out.read_text(), rcv.out.read_text()
    new = _migrated(procs, hosts, v, rcv, res)
    at_migration = max(new.oks())
    new.wait_ok_after(at_migration + 2, timeout=30)
    kept = hosts.run("B", "ls", "/tmp/kept")
    assert kept.returncode == 0 and "core.img" in kept.stdout.split(), kept
    assert hosts.run("A", "ls", "/tmp/kept").returncode != 0  # on the destination only
    later = max(new.oks())
    reap(new.pid)
    reap(v.pid)  # (the killed source's zombie, our child, holds the pid the copy takes back)
    r = hosts.run("B", sys.executable, "-m", "cryo", "restart", "-D", "/tmp/kept", "--detach")
    assert r.returncode == 0, r.stderr
    again = int(r.stdout.split()[-1])
    procs.track(again)
    assert _on(hosts, "B", again)
    v2 = Victim(again, v.out)
    v2.wait_ok_after(later + 2, timeout=30)
    assert not v2.fails()
    # it went back to the migration's moment: an "ok" at most the one printed then
    oks = v2.oks()
    back = [oks[i] for i in range(1, len(oks)) if oks[i] < oks[i - 1]]
    assert back and back[-1] <= at_migration + 1, (at_migration, back)
    reap(again)
    assert hosts.run("B", "rm", "-rf", "/tmp/kept").returncode == 0


def test_migrate_leave_running_clone(procs: Procs, build: Any, hosts: Hosts) -> None:
    """`--leave-running`: the source is let go once the copy runs on B (a clone): both
    run, neither is traced or stopped, both go on checking their pages."""
    v = _migr_on_a(procs, build, hosts, "16", "100")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret, "--leave-running")
    assert res.returncode == 0, res.stderr
    assert "left running here" in res.stderr, res.stderr
    clone = int(res.stdout.split()[-1])
    procs.track(clone)
    reap(rcv.pid, timeout=30)
    assert _on(hosts, "B", clone) and _on(hosts, "A", v.pid)
    before = {p: _runtime(p) for p in (v.pid, clone)}
    n = len(v.oks())
    v.wait_for(lambda ls: len([x for x in ls if x.startswith("ok ")]) > n + 6, timeout=30)
    for pid in (v.pid, clone):
        status = Path(f"/proc/{pid}/status").read_text()
        assert "TracerPid:\t0\n" in status, status
        assert status.split("State:\t")[1][0] in "RS", status
        assert _runtime(pid) > before[pid], f"{pid} does not run"
    assert not v.fails()


def test_wrong_secret_refused(procs: Procs, build: Any, hosts: Hosts) -> None:
    """Another secret: refused (exit 11) on both sides before anything is frozen."""
    v = _migr_on_a(procs, build, hosts, "16", "100", ok=0)
    rcv = _receiver(procs, hosts, _secret(hosts))
    res = _migrate(hosts, v.pid, _secret(hosts, "another secret, 32 bytes of it..", "other"))
    assert res.returncode == 11, res.stderr
    assert "wrong secret" in res.stderr, res.stderr
    assert _exit_status(rcv.pid) == 11
    assert "does not hold the shared secret" in rcv.out.read_text()
    _untouched(v)
    _clean_b(hosts, rcv)


def _cut_migration(hosts: Hosts, v: Victim, secret: str, cut: Callable[[], None],
                   *extra: str) -> str:  # fmt: skip
    """`cryo migrate` of ``v`` from A to B (``extra`` options), ``cut`` while it runs: the
    migration fails (neither exit 0 nor a bug's 70); what it printed."""
    mig = subprocess.Popen(hosts.argv("A", sys.executable, "-m", "cryo", "migrate",
                                      str(v.pid), "--to", f"{hosts.addr['B']}:{PORT}",
                                      "--secret-file", secret, "--timeout", "5", *extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           close_fds=True)  # fmt: skip
    try:
        cut()
        _, err = mig.communicate(timeout=120)
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
    assert mig.returncode not in (0, 70), err
    return err


@pytest.mark.parametrize("how", ["kill-receiver", "drop-link"])
def test_connection_cut(procs: Procs, build: Any, hosts: Hosts, how: str) -> None:
    """The connection cut in the middle of the pre-copy: the migration fails, the source
    goes on untouched, host B is left with nothing."""
    v = _migr_on_a(procs, build, hosts, "512", "100", ok=0, timeout=60)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret, "--timeout", "5")

    def cut() -> None:
        deadline = time.monotonic() + 60
        while _rss(rcv.pid) < 64 << 20:  # the receiver holds 64 MiB of the pages: cut
            assert time.monotonic() < deadline, "the receiver got nothing"
            time.sleep(0.01)
        if how == "kill-receiver":
            os.kill(rcv.pid, signal.SIGKILL)
        else:
            hosts.sh("ip", "-n", hosts.ns["A"], "link", "set", hosts.veth["A"], "down")

    err = _cut_migration(hosts, v, secret, cut)
    assert "round 1:" not in err or "final" not in err, err
    _untouched(v)
    _clean_b(hosts, rcv)


def _exit_status(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    raise AssertionError(f"{pid} did not exit")


def _rss(pid: int) -> int:
    """The resident memory of ``pid`` and its children (nsenter's child included)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for ln in Path(f"/proc/{p}/status").read_text().splitlines():
                if ln.startswith("VmRSS:"):
                    total += int(ln.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


def test_restart_fails_on_b(procs: Procs, hosts: Hosts) -> None:
    """A file the target has open is in A's own /tmp, not on B: B's restart fails, says
    why, leaves nothing; the source goes on."""
    script = Path(__file__).parent.parent / "victims" / "pystate.py"
    hosts.run("A", "sh", "-c", "seq 100 > /tmp/only-on-a.txt")
    out = hosts.shared / "py.txt"
    v = _spawn_on_a(procs, hosts, [sys.executable, str(script), str(out),
                                   "/tmp/only-on-a.txt"], out)  # fmt: skip
    v.wait_line("tick 2")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret)
    assert res.returncode not in (0, 70), res.stderr
    assert "/tmp/only-on-a.txt" in res.stderr, res.stderr
    n = len(v.lines())
    v.wait_for(lambda ls: len(ls) > n + 3, timeout=30)
    assert "TracerPid:\t0\n" in Path(f"/proc/{v.pid}/status").read_text()
    _clean_b(hosts, rcv)


# -- a local checkpoint with pre-copy (cryo checkpoint --pre-copy) ------------------------


def test_checkpoint_pre_copy_restarts(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Rounds while the target writes, a short final freeze, then a restart of the
    directory image: every page holds its version."""
    from cryo.migrate import checkpoint_pre_copy

    out = tmp_path / "out.txt"
    v = procs.spawn([build("migr"), str(out), "64", "500"], out)
    v.wait_ok_after(0)
    r, rounds, _arm = checkpoint_pre_copy(v.pid, str(tmp_path / "img"),
                                         signal_after=signal.SIGKILL)  # fmt: skip
    assert len(rounds) >= 2 and rounds[0].bytes >= 64 << 20
    assert r.memory_bytes < 16 << 20  # the final freeze copied only what was written
    last = max(v.oks())
    reap(v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    new = Victim(rr.pid, out)
    new.wait_ok_after(last + 2, timeout=30)
    assert not new.fails()


class _Generations:
    """tests/victims/incr.c: its memory changes by generations (SIGUSR1: next) between
    the rounds, and a process restored from it checks every byte against the last
    generation (SIGUSR2: check)."""

    def __init__(self, procs: Procs, build: Any, tmp_path: Path) -> None:
        mapped = tmp_path / "mapped.bin"
        mapped.write_bytes(b"F" * 8 * 4096)
        self.out = tmp_path / "out.txt"
        self.v = procs.spawn([build("incr"), str(self.out), "16", "20", str(mapped)], self.out)
        self.v.wait_line("ready", timeout=30)
        self.gen = 0

    def next(self) -> None:
        self.gen += 1
        start = len(self.v.lines())
        os.kill(self.v.pid, signal.SIGUSR1)
        self.v.wait_for(lambda ls: f"gen {self.gen}" in ls[start:], timeout=30)

    def check(self, pid: int) -> None:
        new = Victim(pid, self.out)
        start = len(new.lines())
        os.kill(pid, signal.SIGUSR2)
        lines = new.wait_for(lambda ls: any(x.startswith(("ok ", "FAIL")) for x in ls[start:]),
                             timeout=60)  # fmt: skip
        assert f"ok {self.gen}" in lines[start:], lines[start:]


def test_checkpoint_pre_copy_unmapped_meanwhile(procs: Procs, build: Any,
                                                tmp_path: Path) -> None:  # fmt: skip
    """Between the rounds the target unmaps a region, drops pages (MADV_DONTNEED) and
    changes others (tests/victims/incr.c): the image holds exactly its last state."""
    from cryo.migrate import checkpoint_pre_copy

    g = _Generations(procs, build, tmp_path)

    def between(rnd: Any) -> None:  # a new generation after each of the first rounds
        if rnd.number <= 3:
            g.next()

    _r, rounds, _ = checkpoint_pre_copy(g.v.pid, str(tmp_path / "img"), report=between,
                                        max_rounds=4, signal_after=signal.SIGKILL)  # fmt: skip
    assert g.gen >= 2, rounds
    reap(g.v.pid)
    rr = restart(str(tmp_path / "img"))
    procs.track(rr.pid)
    g.check(rr.pid)


FAKE_SSH = """#!/bin/sh
# ssh -T -o BatchMode=yes [-p PORT] HOST CMD...: runs CMD here (a stand-in for sshd)
while [ $# -gt 0 ]; do
    case "$1" in -T) shift ;; -o|-p) shift 2 ;; *) shift; break ;; esac
done
exec "$@"
"""


def _fake_ssh(tmp_path: Path) -> str:
    """A PATH whose ssh runs its command here, and whose cryo is this one."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(FAKE_SSH)
    (bindir / "ssh").chmod(0o755)
    (bindir / "cryo").write_text(f"#!/bin/sh\nexec {sys.executable} -m cryo \"$@\"\n")
    (bindir / "cryo").chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}"


@pytest.mark.parametrize("how", ["pre-copy", "lazy"])
def test_migrate_over_stdio(procs: Procs, build: Any, tmp_path: Path, how: str) -> None:
    """--to ssh://host: `cryo receive --stdio` at the other end of ssh's pipes (here a
    stand-in for ssh that runs it locally); no secret: the frames are checksummed and
    the host seal over them verified.  --lazy: its pages come over the pipes too."""
    path = _fake_ssh(tmp_path)
    out = tmp_path / "out.txt"
    v = procs.spawn([build("migr"), str(out), "16", "100"], out)
    v.wait_ok_after(0)
    last = max(v.oks())
    env = {**os.environ, "PATH": path}
    res = subprocess.run([sys.executable, "-m", "cryo", "migrate", str(v.pid), "--to",
                          "ssh://root@elsewhere", *(["--lazy"] if how == "lazy" else [])],
                         capture_output=True, text=True, timeout=180, env=env,
                         close_fds=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert how != "lazy" or "every page there" in res.stderr, res.stderr
    new_pid = int(res.stdout.split()[-1])
    procs.track(new_pid)
    assert new_pid != v.pid  # (the same host: the old pid was still taken)
    deadline = time.monotonic() + 10
    while not gone_from(v.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone_from(v.pid)
    new = Victim(new_pid, out)
    new.wait_ok_after(last + 2, timeout=30)
    assert not new.fails()


# -- the rounds' pages staged on the destination (cryo.migrate.stage) --------------------


@pytest.mark.parametrize("staging", [True, False])
def test_migrate_staged_exact(procs: Procs, build: Any, hosts: Hosts, staging: bool) -> None:
    """The rounds' pages staged on B and moved into place: the process there has the
    source's mappings exactly (addresses, protections, names, VmFlags: advice, locks,
    MAP_NORESERVE, MAP_DROPPABLE, guard pages, seals; tests/victims/madvise.c checks its
    own) and its data."""
    from tests.integration.test_memstate import poke, smaps_flags

    exe = shutil.copy(build("madvise"), hosts.shared / "madvise")
    out = hosts.shared / "madvise.txt"
    v = _spawn_on_a(procs, hosts, [str(exe), str(out), "regions"], out)
    poke(v, 2)
    maps = Path(f"/proc/{v.pid}/maps").read_text()
    flags = smaps_flags(v.pid)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret, *(() if staging else ("--no-staging",)))
    res = _migrate(hosts, v.pid, secret, "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    assert (got["staged_bytes"] > 0) == staging, got  # (0 before staging)
    new = _migrated(procs, hosts, v, rcv, subprocess.CompletedProcess(
        res.args, 0, str(got["pid"]), res.stderr))  # fmt: skip
    assert Path(f"/proc/{new.pid}/maps").read_text() == maps
    # (the write tracking's uffd-wp markers on pages never populated were once saved as
    # pages of zeros: they came back resident, and PROT_NONE mappings with VM_ACCOUNT)
    assert smaps_flags(new.pid) == flags
    start = len(new.lines())
    os.kill(new.pid, signal.SIGUSR1)  # one round of its checks (tests/victims/rounds.h)
    new.wait_for(lambda ls: any(x.startswith(("ok ", "FAIL")) for x in ls[start:]), timeout=30)
    time.sleep(0.5)  # (the rest of the round's lines)
    fails = [x for x in new.lines()[start:] if x.startswith("FAIL")]
    assert not fails, fails


def test_migrate_staged_layout_changes(procs: Procs, build: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Between the rounds the target unmaps a region and maps it again, drops pages
    (MADV_DONTNEED) and changes others (tests/victims/incr.c): of the pages staged on the
    destination, only those still present are kept, a changed page's last copy wins,
    and the process there holds exactly its last state."""
    from cryo.migrate import migrate

    monkeypatch.setenv("PATH", _fake_ssh(tmp_path))
    g = _Generations(procs, build, tmp_path)

    def between(line: str) -> None:  # a new generation after each of the first rounds
        if line.startswith("round ") and int(line.split()[1].rstrip(":")) <= 3:
            g.next()

    r = migrate(g.v.pid, "ssh://root@elsewhere", report=between, max_rounds=4)
    procs.track(r.pid)
    assert g.gen >= 2 and r.staged_bytes >= 16 << 20, r
    deadline = time.monotonic() + 10
    while not gone_from(g.v.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    g.check(r.pid)


def _no_uffd_left(pid: int) -> None:
    """Nothing of the lazy phase left in the process: no userfaultfd, no `um` VmFlag."""
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert "anon_inode:[userfaultfd]" not in fds, fds
    flags = [ln for ln in Path(f"/proc/{pid}/smaps").read_text().splitlines()
             if ln.startswith("VmFlags:") and " um" in ln]  # fmt: skip
    assert flags == [], flags


def test_migrate_lazy(procs: Procs, build: Any, hosts: Hosts) -> None:
    """Post-copy: the process runs on B before its 256 MiB are there (its own check of
    every page, every 100 ms, faults them in), every page holds its version, the source is
    killed once all are in, and nothing of the lazy phase is left in the process."""
    v = _migr_on_a(procs, build, hosts, "256", "500", "100")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    last = max(v.oks())
    res = _migrate(hosts, v.pid, secret, "--lazy", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout.splitlines()[-1])
    assert r["lazy"] and r["rounds"] == [], r
    assert r["lazy_bytes"] >= 256 << 20, r  # (the region's pages came after it ran)
    assert 0 < r["downtime"] < r["all_pages_seconds"], r
    assert "every page there" in res.stderr, res.stderr
    new = _migrated(procs, hosts, v, rcv, _with_stdout(res, str(r["pid"])))
    new.wait_ok_after(last + 3, timeout=30)
    assert not new.fails()
    _no_uffd_left(new.pid)


def _with_stdout(res: subprocess.CompletedProcess[str],
                 out: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.CompletedProcess(res.args, res.returncode, out, res.stderr)


@pytest.mark.parametrize("victim", ["migr", "lazyops"])
def test_lazy_connection_cut(procs: Procs, build: Any, hosts: Hosts, victim: str) -> None:
    """The link dropped while the process runs on B and its pages are still coming: B
    kills its copy, and the children it forked meanwhile (lazyops.c forks every 200 ms),
    and leaves nothing; the source (frozen with everything) goes on."""
    if victim == "migr":
        v = _migr_on_a(procs, build, hosts, "768", "100", "200", ok=0, timeout=60)
    else:
        exe = shutil.copy(build("lazyops"), hosts.shared / "lazyops")
        out = hosts.shared / "lazyops.txt"
        v = _spawn_on_a(procs, hosts, [str(exe), str(out), "512"], out)
        v.wait_ok_after(0, timeout=60)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret, "--timeout", "5")

    def cut() -> None:
        rcv.wait_for(lambda ls: any("its pages follow" in x for x in ls), timeout=60)
        hosts.sh("ip", "-n", hosts.ns["A"], "link", "set", hosts.veth["A"], "down")

    _cut_migration(hosts, v, secret, cut, "--lazy", "--process")  # (lazyops forks)
    _untouched(v)
    assert not v.fails()
    _clean_b(hosts, rcv)


def test_migrate_lazy_fork_remap_remove(procs: Procs, build: Any, hosts: Hosts) -> None:
    """During the lazy phase the process forks children that check its memory (each gets
    a uffd of its own: its missing pages come too), moves a mapping with mremap (its
    missing pages follow it), drops pages with MADV_DONTNEED (they must read zero, not
    come back from the source) and read()s into a missing page (a fault in the kernel):
    every check passes, on B, and nothing of the lazy phase is left."""
    exe = shutil.copy(build("lazyops"), hosts.shared / "lazyops")
    out = hosts.shared / "lazyops.txt"
    v = _spawn_on_a(procs, hosts, [str(exe), str(out), "256"], out)
    v.wait_ok_after(0, timeout=60)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    last = max(v.oks())
    res = _migrate(hosts, v.pid, secret, "--lazy", "--json", "--process")  # (it forks)
    assert res.returncode == 0, (res.stderr, rcv.lines())
    r = json.loads(res.stdout.splitlines()[-1])
    new = _migrated(procs, hosts, v, rcv, _with_stdout(res, str(r["pid"])))
    new.wait_ok_after(last + 3, timeout=60)
    assert not new.fails(), new.fails()
    _no_uffd_left(new.pid)
