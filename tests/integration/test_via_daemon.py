"""``cryo --via-daemon`` / CRYO_DAEMON (issue 16): the thin client (cryo.cli.thin) has a
real cryod run the command (daemon/commands.py).  A C program is checkpointed and
restarted through it and checks its own state; the exit codes of a refusal (9) and of a
taken pid (10) come back as the command's; stdout and stderr are the caller's; signals
reach a restart that waits; a caller that is not root is refused by the daemon and runs
the command itself; with no daemon the command runs here."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cryo.daemon import protocol as P
from cryo.errors import ExitCode
from tests.conftest import Procs, Victim, reap
from tests.integration import test_daemon
from tests.integration.test_daemon import Cryod

pytestmark = pytest.mark.timeout(180)
cryod, user = test_daemon.cryod, test_daemon.user  # (fixtures)

BIN = str(Path(__file__).resolve().parents[2] / "bin" / "cryo")


def thin(d: Cryod, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``cryo ARGS`` as bin/cryo starts itself, through daemon ``d``."""
    env = kw.pop("env", None) or dict(os.environ, CRYO_DAEMON=d.socket)
    return subprocess.run([sys.executable, "-S", BIN, *args], capture_output=True, text=True,
                          timeout=60, close_fds=True, env=env, **kw)  # fmt: skip


def commands(d: Cryod) -> list[dict[str, Any]]:
    """The daemon's log lines of command requests."""
    out = []
    for line in d.log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "request" and rec.get("op") == "command":
            out.append(rec)
    return out


def server_of(d: Cryod, procs: Procs) -> int:
    with d.client() as c:
        pid = int(c.ping()["commands"])
    procs.track(pid)  # (killed with the daemon; its zombie comes to us)
    return pid


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_checkpoint_and_restart_through_the_daemon(cryod: Callable[..., Cryod], build: Any,
                                                   procs: Procs, tmp_path: Path) -> None:
    d = cryod()
    server = server_of(d, procs)
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out), "5"], out=out)
    v.wait_ok_after(2)
    img = tmp_path / "img"
    # (a relative -D: the caller's cwd is the command's)
    r = thin(d, "checkpoint", str(v.pid), "-D", "img", "--kill", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"checkpoint of {v.pid} -> " in r.stderr  # (the caller's stderr)
    assert img.is_dir()
    assert [c["ok"] for c in commands(d)] == [True]
    reap(v.pid)
    last = max(v.oks())
    r = thin(d, "restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == v.pid  # (the caller's stdout)
    procs.track(v.pid)
    Victim(v.pid, out).wait_ok_after(last + 3)
    # its parent was the daemon's child, gone: now the command server, which reaps it
    deadline = time.monotonic() + 10
    while ppid(v.pid) != server and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ppid(v.pid) == server
    # show, through the daemon too: JSON on our stdout
    r = thin(d, "show", str(img), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["processes"][0]["pid"] == v.pid
    # the same output as the command run here, in the caller's environment (TZ, not the
    # daemon's)
    env = dict(os.environ, TZ="Asia/Kathmandu")
    env.pop("CRYO_DAEMON", None)
    here = subprocess.run([sys.executable, "-S", BIN, "show", str(img)], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip
    r = thin(d, "show", str(img), env=dict(env, CRYO_DAEMON=d.socket))
    assert (r.returncode, r.stdout, r.stderr) == (0, here.stdout, here.stderr)
    assert len(commands(d)) == 4


def test_exit_codes_come_back(cryod: Callable[..., Cryod], build: Any, procs: Procs,
                              tmp_path: Path) -> None:
    d = cryod()
    server_of(d, procs)
    out = tmp_path / "out.txt"
    # a pipe whose reader is outside the checkpoint (ours): refused, exit 9, untouched
    rd, wr = os.pipe()
    try:
        v = procs.spawn([build("counter"), str(out), "5"], out=out, pass_fds=(wr,))
    finally:
        os.close(wr)
    v.wait_ok_after(2)
    r = thin(d, "checkpoint", str(v.pid), "-D", str(tmp_path / "refused"), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "outside the checkpoint" in r.stderr
    v.wait_ok_after(max(v.oks()) + 3)  # (it goes on)
    os.close(rd)
    # a restart whose pid is taken (the original runs): exit 10, nothing made
    w = procs.spawn([build("counter"), str(tmp_path / "w.txt"), "5"], out=tmp_path / "w.txt")
    w.wait_ok_after(2)
    r = thin(d, "checkpoint", str(w.pid), "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    r = thin(d, "restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == ExitCode.CONFLICT, r.stderr
    assert f"pid {w.pid} is taken" in r.stderr
    w.wait_ok_after(max(w.oks()) + 3)
    # a bad command line: argparse's exit 2 and its message, as the command's here
    r = thin(d, "checkpoint", "-D", "x")
    here = subprocess.run([sys.executable, "-S", BIN, "checkpoint", "-D", "x"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (r.returncode, r.stderr) == (here.returncode, here.stderr) == (2, here.stderr)
    assert "which process?" in r.stderr or "error:" in r.stderr, r.stderr
    assert [c["ok"] for c in commands(d)] == [True] * 4


def test_a_waiting_restart_gets_our_signals(cryod: Callable[..., Cryod], build: Any,
                                            procs: Procs, tmp_path: Path) -> None:
    d = cryod()
    server_of(d, procs)
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out), "5"], out=out)
    v.wait_ok_after(2)
    img = str(tmp_path / "img")
    assert thin(d, "checkpoint", str(v.pid), "-D", img, "--kill").returncode == 0
    reap(v.pid)
    last = max(v.oks())
    env = dict(os.environ, CRYO_DAEMON=d.socket)
    client = subprocess.Popen([sys.executable, "-S", BIN, "restart", "-D", img], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              close_fds=True)  # fmt: skip
    procs.track(v.pid)
    try:
        Victim(v.pid, out).wait_ok_after(last + 3)
        assert client.poll() is None  # (it waits for the restored counter)
        client.send_signal(signal.SIGTERM)  # -> the daemon's child -> the counter
        _, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 128 + signal.SIGTERM, err
    reap(v.pid)


def test_a_user_is_refused_and_runs_it_alone(cryod: Callable[..., Cryod], build: Any,
                                             procs: Procs, tmp_path: Path,
                                             user: pwd.struct_passwd) -> None:  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="cryod-", dir="/tmp"))  # (the user reaches it)
    os.chmod(base, 0o755)
    try:
        _refused_as(user, cryod(base=base), procs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _refused_as(user: pwd.struct_passwd, d: Cryod, procs: Procs) -> None:
    server_of(d, procs)
    from cryo.cli import thin as client

    child = os.fork()
    if child == 0:  # pragma: no cover (in the child, as the user)
        code = 70
        try:
            os.setgroups([])
            os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
            os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
            os.chdir("/")
            # the message itself: refused, exit 4 in the reply, nothing run
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(d.socket)
                cwd = os.open("/", os.O_PATH)
                P.send_fds(s, P.request("command", argv=["show", "/"], env={}, umask=0o22),
                           [0, 1, 2, cwd])  # fmt: skip
                reply = P.recv(s)
            assert reply["ok"] is False and reply["exit_code"] == ExitCode.ACCESS_DENIED, reply
            # the thin client: not taken (None), so `cryo` runs it itself, as the user
            os.environ["CRYO_DAEMON"] = d.socket
            code = 0 if client.run(["show", "/"]) is None else 1
        except BaseException as err:
            print(f"as user: {err!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, st = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(st) == 0
    refused = commands(d)
    assert [(c["ok"], c["error"], c["uid"]) for c in refused] == \
        [(False, "AccessDenied", user.pw_uid)] * 2  # fmt: skip


def test_no_daemon_the_command_runs_here(build: Any, procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out), "5"], out=out)
    v.wait_ok_after(2)
    env = dict(os.environ, CRYO_DAEMON=str(tmp_path / "nobody.sock"))
    r = subprocess.run([sys.executable, "-S", BIN, "-v", "checkpoint", str(v.pid), "-D",
                        str(tmp_path / "img"), "--kill"], capture_output=True, text=True,
                       timeout=60, close_fds=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "the command runs here" in r.stderr and "checkpoint of" in r.stderr
    reap(v.pid)
    last = max(v.oks())
    r = subprocess.run([sys.executable, "-S", BIN, "--via-daemon", "restart", "-D",
                        str(tmp_path / "img"), "--detach"], capture_output=True, text=True,
                       timeout=60, close_fds=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    Victim(v.pid, out).wait_ok_after(last + 3)


def tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(x for x in f if x.startswith("TracerPid:")).split()[1])


def test_an_interrupted_checkpoint_lets_it_go(cryod: Callable[..., Cryod], build: Any,
                                              procs: Procs, tmp_path: Path) -> None:
    # the daemon's child checkpoints in itself (no worker: daemon/commands.py _as_worker);
    # the client's ^C while the target is held stops it at a safe point: exit 130, the
    # target let go as it was, its memory checked by itself
    d = cryod()
    server_of(d, procs)
    out = tmp_path / "out.txt"
    v = procs.spawn([build("bigmem"), str(out), "384"], out=out)
    v.wait_line("ready", timeout=60)
    v.wait_ok_after(1)
    env = dict(os.environ, CRYO_DAEMON=d.socket)
    client = subprocess.Popen([sys.executable, "-S", BIN, "checkpoint", str(v.pid), "-D",
                               str(tmp_path / "img"), "--compress"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while tracer(v.pid) == 0 and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err.decode()
    deadline = time.monotonic() + 10
    while tracer(v.pid) != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracer(v.pid) == 0
    v.wait_ok_after(max(v.oks()) + 3, timeout=30)
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())


def test_the_daemon_refuses_what_it_would_not_run_right(cryod: Callable[..., Cryod],
                                                        procs: Procs) -> None:
    # each refused before anything runs (an error reply: the client runs it itself)
    d = cryod()
    server_of(d, procs)

    def ask(argv: list[str], nfds: int = 4) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(d.socket)
            cwd = os.open("/", os.O_PATH)
            try:
                P.send_fds(s, P.request("command", argv=argv, env={}, umask=0o22),
                           [0, 1, 2, cwd][:nfds])  # fmt: skip
            finally:
                os.close(cwd)
            reply = P.recv(s)
        assert isinstance(reply, dict)
        return reply

    for argv, error in ((["job", "checkpoint", "x"], "Usage"), (["run", "--", "true"], "Usage"),
                        (["restart", "-D", "/x", "--shell-job"], "Usage")):  # fmt: skip
        reply = ask(argv)
        assert (reply["ok"], reply["error"]) == (False, error), reply
    reply = ask(["show", "/x"], nfds=3)
    assert (reply["ok"], reply["error"]) == (False, "ProtocolError"), reply
    assert [c["ok"] for c in commands(d)] == [False] * 4


def test_another_namespace_is_refused_once_and_run_here(cryod: Callable[..., Cryod],
                                                        procs: Procs, tmp_path: Path) -> None:
    # root in a mount namespace of its own: the daemon would read other files; refused,
    # and bin/cryo runs it itself (one request, not one more from cryo.cli)
    d = cryod()
    server_of(d, procs)
    env = dict(os.environ, CRYO_DAEMON=d.socket)
    env.pop("CRYO_DAEMON_SOCKET", None)
    r = subprocess.run(["unshare", "-m", sys.executable, "-S", BIN, "-v", "show",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=60,
                       env=env)  # fmt: skip
    assert r.returncode == ExitCode.IMAGE_MISSING, r.stderr
    assert "did not take the command (AccessDenied" in r.stderr and "mnt namespace" in r.stderr
    assert [(c["ok"], c["error"]) for c in commands(d)] == [(False, "AccessDenied")]
    # the same through python -m cryo (cryo.cli.console offers it itself)
    r = subprocess.run(["unshare", "-m", sys.executable, "-m", "cryo", "--via-daemon", "show",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, CRYO_DAEMON_SOCKET=d.socket))  # fmt: skip
    assert r.returncode == ExitCode.IMAGE_MISSING, r.stderr
    assert [(c["ok"], c["error"]) for c in commands(d)] == [(False, "AccessDenied")] * 2


def spares(server: int) -> list[int]:
    """The command server's children that are interpreters (not restored programs)."""
    exe = os.path.realpath(sys.executable)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ppid(int(name)) == server and os.path.realpath(f"/proc/{name}/exe") == exe:
                    found.append(int(name))
            except OSError:
                continue
    return found


def test_a_spare_child_runs_the_next_command(cryod: Callable[..., Cryod], build: Any,
                                             procs: Procs, tmp_path: Path) -> None:
    # the command server keeps a child forked ahead (its own session already), which takes
    # the next command; another after each command; one killed before it had a command:
    # the commands still run (each in a child forked for it), and no more spares
    d = cryod()
    server = server_of(d, procs)
    deadline = time.monotonic() + 10
    while not spares(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    (first,) = spares(server)
    assert os.getsid(first) == first
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out), "5"], out=out)
    v.wait_ok_after(2)
    img = tmp_path / "img"
    r = thin(d, "checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    last = max(v.oks())
    while (spares(server) in ([], [first])) and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    (second,) = spares(server)
    assert second != first and not os.path.exists(f"/proc/{first}")
    os.kill(second, signal.SIGKILL)  # (the daemon's, which this test started)
    while os.path.exists(f"/proc/{second}") and time.monotonic() < deadline + 20:
        time.sleep(0.01)
    r = thin(d, "restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(v.pid)
    Victim(v.pid, out).wait_ok_after(last + 3)
    time.sleep(0.3)
    assert spares(server) == []
