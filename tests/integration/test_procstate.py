"""Process state of issue 9 survives checkpoint, kill and restart, or the checkpoint
refuses it: credentials, scheduling, job control, seccomp, signals and timers.  Each
victim checks its own state every round and reports "ok N" or "FAIL what"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cryo.engine.dump import checkpoint as _checkpoint
from cryo.engine.restore import restart
from cryo.errors import Unsupported
from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo


def checkpoint(pid: int, dest: str, **kw: Any) -> Any:
    """cryo's checkpoint, taken again where it was refused, untouched, for a periodic
    timer's signal pending while no thread waits for it (timers.check_pending: its
    overrun count cannot be kept), as a timer of 300 us finds glibc's SIGEV_THREAD
    helper busy starting the last expiry's thread in about one checkpoint in three:
    a refusal that is right: the test takes the checkpoint again."""
    for _ in range(20):
        try:
            return _checkpoint(pid, dest, **kw)
        except Unsupported as err:
            if "has its signal" not in str(err) or "pending" not in str(err):
                raise
            time.sleep(0.005)
    return _checkpoint(pid, dest, **kw)


def cycle(procs: Procs, v: Victim, img: Path, **restart_kw: Any) -> Victim:
    """Checkpoint ``v`` (killing it once the image is written), reap it, restart it;
    the restored process must report two more good rounds."""
    last = max(v.oks(), default=-1)
    checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
    reap(v.pid)
    rr = restart(str(img), **restart_kw)
    procs.track(rr.pid)
    assert rr.pid == v.pid
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 2)
    return new


def checkpoints_then_cycle(procs: Procs, v: Victim, tmp_path: Path) -> Victim:
    """Four checkpoints that let ``v`` run on (each followed by two good rounds, no
    failure), then :func:`cycle`; the restored victim, two more good rounds done."""
    for i in range(4):
        checkpoint(v.pid, str(tmp_path / f"img{i}"))
        v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails(), i
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    return v


def refused_untouched(v: Victim, img: Path, needle: str) -> None:
    """``cryo checkpoint --kill`` of ``v`` is refused: exit 9 naming ``needle``, no
    image, and the target goes on checking itself."""
    from cryo.errors import ExitCode

    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert needle in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def build_threaded(tmp_path: Path, name: str) -> str:
    exe = tmp_path / name
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                    str(VICTIMS / f"{name}.c"), "-lrt", "-lpthread"], check=True)  # fmt: skip
    return str(exe)


def test_credentials(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "creds"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    status = Path(f"/proc/{v.pid}/status").read_text()
    assert "Uid:\t1000\t1001\t1002\t1000" in status
    assert not v.fails()


def test_scheduling(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "sched"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


@pytest.mark.parametrize("mode", ["filters", "strict"])
def test_seccomp(procs: Procs, tmp_path: Path, mode: str) -> None:
    """Filters (inherited, TSYNC'd, a thread's own; one kills on rt_sigaction, which cryo
    injects) and strict mode survive, and the checkpoint never kills the target."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "seccomp"), str(out), mode], out)
    v.wait_ok_after(1)
    checkpoint(v.pid, str(tmp_path / "img0"))  # the target keeps running, unharmed
    v.wait_ok_after(max(v.oks()) + 1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    if mode == "filters":  # the threads share their first filters again: TSYNC works
        (tmp_path / "out.txt.tsync").touch()
        v.wait_line("tsync ok")
        v.wait_ok_after(max(v.oks()) + 2)
        assert not v.fails()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("how", ["", "tstp"])
def test_job_control_and_pdeathsig_in_a_tree(procs: Procs, build: Any, tmp_path: Path,
                                             how: str) -> None:  # fmt: skip
    """A stopped child is restored stopped, its parent collects that stop and then the
    continue, and a zombie killed by a signal; pdeathsig comes from the restored parent."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("family"), str(out), how], out)
    _, parent, a, b, c = v.wait_line("ready").split()
    a_pid, b_pid = int(a), int(b)
    assert _state(int(c)) == "Z"
    v.wait_ok_after(1)
    checkpoint(v.pid, str(tmp_path / "img0"), scope="tree")  # and the tree goes on as it was
    assert _state(a_pid) == "T"
    v.wait_ok_after(max(v.oks()) + 1)
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), scope="tree", signal_after=signal.SIGKILL)
    for p in (b_pid, a_pid, v.pid, int(c)):
        reap(p)
    r = restart(str(tmp_path / "img"))
    for p in r.pids.values():
        procs.track(p)
    assert sorted(r.pids.values()) == sorted([v.pid, a_pid, b_pid, int(c)])
    v = Victim(r.pid, out)
    v.wait_ok_after(last + 2)
    assert _state(a_pid) == "T", "the stopped child is stopped again"
    os.kill(v.pid, signal.SIGUSR1)
    sig = signal.SIGTSTP if how else signal.SIGSTOP
    assert v.wait_line("waited stopped") == f"waited stopped 1 {sig}"
    assert v.wait_line("waited continued") == "waited continued 1"
    assert v.wait_line("zombie") == f"zombie 1 {signal.SIGTERM}", "a zombie that died by a signal"
    v.wait_line("a continued")
    os.kill(v.pid, signal.SIGKILL)
    v.wait_line("pdeath")
    assert not v.fails()
    assert parent


def test_stopped_process_restored_stopped(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("counter"), str(out)], out)
    v.wait_ok_after(1)
    os.kill(v.pid, signal.SIGSTOP)
    while _state(v.pid) != "T":
        time.sleep(0.01)
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    r = restart(str(tmp_path / "img"))
    procs.track(r.pid)
    time.sleep(0.3)
    assert _state(r.pid) == "T"
    assert max(v.oks()) <= last + 1
    os.kill(r.pid, signal.SIGCONT)
    Victim(r.pid, out).wait_ok_after(last + 2)


@pytest.mark.parametrize("hold", ["", "hold", "ignore"])
def test_signals_and_thread_timers(procs: Procs, tmp_path: Path, hold: str) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "sigtimers"), str(out), hold], out)
    v.wait_ok_after(1)
    checkpoint(v.pid, str(tmp_path / "img0"))  # and it goes on with every action intact
    v.wait_ok_after(max(v.oks()) + 1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


def test_timer_signals_that_arrive_while_cryo_holds_the_threads(procs: Procs, tmp_path: Path
                                                                ) -> None:  # fmt: skip
    """Timers every 300 us, so that their signals arrive while cryo holds the threads
    (in the injected calls of each checkpoint and of the restart): each is given back
    with its own siginfo.  Sent again with tgkill, glibc's SIGEV_THREAD helper took its
    SIGTIMER for a cancellation and exited (the timer stopped, or the process was
    killed by signal 32), and a thread timer's signal came without its si_value."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build_threaded(tmp_path, "sigtimers"), str(out), "", "300"], out)
    v.wait_ok_after(1)
    v = checkpoints_then_cycle(procs, v, tmp_path)


def test_signals_and_thread_timers_in_a_pid_namespace(procs: Procs, tmp_path: Path) -> None:
    """In a `cryo run --pid-ns` job, pending signals and thread timers are given the
    pids the job sees, not cryo's."""
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--",
                 build_threaded(tmp_path, "sigtimers"), str(out), "hold")  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(1)
    last = max(v.oks())
    # not --kill: a pid-namespace init killed by cryo sometimes hangs tree.collect_dead
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--stop")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(last + 2)
    assert not v.fails()


def test_membarrier_registrations(procs: Procs, build: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    v = procs.spawn([build("membarrier"), str(out)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()


_LOGIN = """
import os, signal, subprocess, sys, time
open("/proc/self/loginuid", "w").write("1000")  # a new audit session, for us and children
from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
exe, out, img = sys.argv[1:]
v = subprocess.Popen([exe, out], close_fds=True, start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
while not os.path.exists(out) or "tick 1" not in open(out).read():
    time.sleep(0.01)
checkpoint(v.pid, img, signal_after=signal.SIGKILL)
v.wait()
print(restart(img).pid, open("/proc/self/sessionid").read())
"""


def test_audit_session(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process of another audit session than cryo's is refused (the kernel gives a
    restored process a new session id); in cryo's own session it comes back in it."""
    out = tmp_path / "out.txt"
    login = "import os, sys; open('/proc/self/loginuid', 'w').write('1000'); " \
            "os.execv(sys.argv[1], sys.argv[1:])"  # fmt: skip
    v = procs.spawn([sys.executable, "-c", login, build("counter"), str(out)], out)
    v.wait_ok_after(1)
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img0"))
    assert r.returncode == 9 and "audit" in r.stderr, r.stderr
    v.wait_ok_after(max(v.oks()) + 1)  # untouched
    reap(v.pid)
    out2 = tmp_path / "out2.txt"
    r2 = subprocess.run([sys.executable, "-c", _LOGIN, build("counter"), str(out2),
                         str(tmp_path / "img")], capture_output=True, text=True,
                        timeout=60, close_fds=True)  # fmt: skip
    assert r2.returncode == 0, r2.stderr
    pid, session = (int(x) for x in r2.stdout.split())
    procs.track(pid)
    assert Path(f"/proc/{pid}/loginuid").read_text() == "1000"
    assert int(Path(f"/proc/{pid}/sessionid").read_text()) == session
    Victim(pid, out2).wait_ok_after(max(Victim(pid, out2).oks()) + 1)


@pytest.mark.parametrize("where", ["main", "thread"])
def test_landlock_domain_refused(procs: Procs, build: Any, tmp_path: Path, where: str) -> None:
    """A Landlock domain cannot be read back: a confined thread (the main one, or only
    a second one) is refused, exit 9 naming it, no image, the target untouched and
    still confined (it checks each round that it may not mkdir).  Restored, it ran
    unconfined, and the restart exited 0."""
    out, d = tmp_path / "out.txt", tmp_path / "d"
    d.mkdir()
    v = procs.spawn([build("landlock"), str(out), where, str(d)], out)
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "confined by Landlock")


def test_no_new_privs_without_a_landlock_domain_restores(procs: Procs, build: Any,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """no_new_privs alone (a thread that could enter a domain, and did not) is no
    reason to refuse: restored, with no_new_privs, and free to mkdir."""
    out, d = tmp_path / "out.txt", tmp_path / "d"
    d.mkdir()
    v = procs.spawn([build("landlock"), str(out), "nnp", str(d)], out)
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img")
    assert "NoNewPrivs:\t1" in Path(f"/proc/{v.pid}/status").read_text()
    assert not v.fails()


UTS_VICTIM = r"""
import os, socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
out.write(f"ready {os.getpid()}\n")
n = 0
while True:
    name = socket.gethostname()
    out.write(f"ok {n}\n" if name == "cryo-uts-test" else f"FAIL hostname {name}\n")
    n += 1
    time.sleep(0.05)
"""


def test_process_in_a_namespace_of_its_own(procs: Procs, tmp_path: Path) -> None:
    """A process in a UTS namespace of its own (its own hostname) is refused, exit 9
    naming it, target untouched: restored, it came back with the host's hostname, exit 0.
    Checkpointed and restarted by a cryo inside that namespace, it keeps it."""
    out = tmp_path / "out.txt"
    v = procs.spawn(["unshare", "--uts", "sh", "-c",
                     f"hostname cryo-uts-test && exec {sys.executable} -c '{UTS_VICTIM}' {out}"],
                    out)  # fmt: skip
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "uts namespace")
    inside = ["nsenter", "-t", str(v.pid), "-u", sys.executable, "-m", "cryo"]
    r = subprocess.run([*inside, "checkpoint", str(v.pid), "-D", str(tmp_path / "img"),
                        "--kill"], capture_output=True, text=True, timeout=60, close_fds=True)
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    last = max(v.oks())
    r = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname cryo-uts-test && exec "
                        f"{sys.executable} -m cryo restart -D {tmp_path / 'img'} --detach"],
                       capture_output=True, text=True, timeout=60, close_fds=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = Victim(procs.track(int(r.stdout)), out)
    v.wait_ok_after(last + 2)
    assert not v.fails()


MNT_VICTIM = """
import os, sys, time
out, where, mounted = open(sys.argv[1], "a", buffering=1), sys.argv[2], sys.argv[3] == "1"
f = open(os.path.join(where, "own.txt"), "w+")
f.write("mine")
f.flush()
i = 0
while True:
    f.seek(0)
    ok = f.read() == "mine" and os.path.ismount(where) == mounted
    print("ok" if ok else "FAIL", i, file=out)
    i += 1
    time.sleep(0.02)
"""


def test_mount_namespace_with_mounts_of_its_own(procs: Procs, tmp_path: Path) -> None:
    """A process in a mount namespace with a tmpfs of its own is refused, exit 9 naming
    the mount, target untouched: restored in cryo's namespace it came back, exit 0,
    reading a file of the host's of the same name, its mount gone. One whose namespace
    shows the same mounts as cryo's (what `ip netns exec` gives each command) is
    checkpointed and restarted as before."""
    where = tmp_path / "mnt"
    where.mkdir()
    out = tmp_path / "out.txt"
    v = procs.spawn(["unshare", "-m", "--propagation", "private", "sh", "-c",
                     f"mount -t tmpfs cryo-test {where} && exec {sys.executable} -c"
                     f" '{MNT_VICTIM}' {out} {where} 1"], out)  # fmt: skip
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", f"mount namespace whose mounts differ from"
                      f" cryo's ({where}: tmpfs cryo-test")  # fmt: skip
    procs.kill(v.pid)
    out2 = tmp_path / "out2.txt"
    v = procs.spawn(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                     MNT_VICTIM, str(out2), str(where), "0"], out2)  # fmt: skip
    v.wait_ok_after(1)
    v = cycle(procs, v, tmp_path / "img2")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_prctl_state_of_each_thread(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Each thread's timer slack, machine-check kill policy, PR_SET_TSC and NUMA memory
    policy, and the process's MDWE and coredump filter, come back (each thread its own):
    restored, all were lost and the restart exited 0 (found by probing)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("prctls"), str(out)], out)
    v.wait_ok_after(1)
    checkpoint(v.pid, str(tmp_path / "img0"))  # and it goes on as it was
    v.wait_ok_after(max(v.oks()) + 1)
    v = cycle(procs, v, tmp_path / "img")
    assert Path(f"/proc/{v.pid}/timerslack_ns").read_text().strip() == "123457"
    assert not v.fails()


CGROUP_VICTIM = r"""
import os, sys, time
out = open(sys.argv[1], "a", buffering=1)
want = sys.argv[2]
while want not in open("/proc/self/cgroup").read():  # (the test moves it there)
    time.sleep(0.01)
out.write(f"ready {os.getpid()}\n")
n = 0
while True:
    mine = open("/proc/self/cgroup").read()
    out.write(f"ok {n}\n" if want in mine else f"FAIL cgroups {mine!r}\n")
    n += 1
    time.sleep(0.05)
"""


def _cgroup_mount() -> tuple[str, str]:
    """A hierarchy to make a test cgroup in: cgroup v2's mount (a child with no
    controllers enabled may hold processes), else v1's pids; and its /proc key."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" - ") for line in f]
    for pre, post in mounts:
        if post.split()[0] == "cgroup2" and pre.split()[3] == "/":
            return pre.split()[4], ""
    for pre, post in mounts:
        if post.split()[0] == "cgroup" and "pids" in post.split()[2].split(","):
            return pre.split()[4], "pids"
    pytest.skip("no cgroup hierarchy to test with")


def test_cgroup_membership(procs: Procs, tmp_path: Path) -> None:
    """A process comes back in its cgroup (it came back in cryo's, exit 0), and in
    one made again when it was removed meanwhile (an image of root's)."""
    mount, key = _cgroup_mount()
    name = f"cryo-test-{os.getpid()}"
    cg = Path(mount) / name
    cg.mkdir()
    try:
        out = tmp_path / "out.txt"
        v = procs.spawn([sys.executable, "-c", CGROUP_VICTIM, str(out), f":/{name}\n"])
        (cg / "cgroup.procs").write_text(str(v.pid))
        v.out = out
        v.wait_ok_after(1)
        checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
        reap(v.pid)
        cg.rmdir()  # gone: made again by the restart
        last = max(v.oks())
        rr = restart(str(tmp_path / "img"))
        procs.track(rr.pid)
        v = Victim(rr.pid, out)
        v.wait_ok_after(last + 2)
        assert not v.fails()
        assert str(rr.pid) in (cg / "cgroup.procs").read_text().split()
        procs.kill(rr.pid)
        reap(rr.pid)
    finally:
        deadline = time.monotonic() + 10
        while cg.exists():
            try:
                cg.rmdir()
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    assert key in ("", "pids")


def test_syscall_user_dispatch(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A thread's syscall user dispatch comes back (restored, its calls were no longer
    sent to SIGSYS, exit 0); a thread whose selector blocks system calls at the freeze
    is refused untouched (cryo's own calls would have been sent to it as SIGSYS)."""

    out = tmp_path / "out.txt"
    v = procs.spawn([build("sud"), str(out), "allow"], out)
    v.wait_ok_after(1)
    checkpoint(v.pid, str(tmp_path / "img0"))  # and it goes on as it was
    v.wait_ok_after(max(v.oks()) + 1)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    out2 = tmp_path / "out2.txt"
    b = procs.spawn([build("sud"), str(out2), "block"], out2)
    b.wait_ok_after(1)
    refused_untouched(b, tmp_path / "img2", "syscall user dispatch")  # (it spins on)


KEYRING_VICTIM = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
out = open(sys.argv[1], "a", buffering=1)
if sys.argv[2] == "session":
    ring = libc.syscall(250, 1, sys.argv[3].encode())  # KEYCTL_JOIN_SESSION_KEYRING
else:
    ring = libc.syscall(250, 0, -2, 1)  # KEYCTL_GET_KEYRING_ID, process keyring, create
assert ring > 0, ctypes.get_errno()
out.write(f"ready {os.getpid()}\n")
n = 0
while True:
    now = libc.syscall(250, 0, -3 if sys.argv[2] == "session" else -2, 0)
    out.write(f"ok {n}\n" if now == ring else f"FAIL keyring {now} not {ring}\n")
    n += 1
    time.sleep(0.05)
"""


@pytest.mark.parametrize("kind", ["session", "process"])
def test_keyrings_of_its_own_refused(procs: Procs, tmp_path: Path, kind: str) -> None:
    """Keyrings are not saved: a process that joined a named session keyring, or made a
    process keyring, is refused, exit 9, the target untouched (restored, it found
    itself in cryo's session keyring, exit 0)."""
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", KEYRING_VICTIM, str(out), kind,
                     f"cryo-test-{os.getpid()}"], out)  # fmt: skip
    v.wait_ok_after(1)
    refused_untouched(v, tmp_path / "img", "keyring")


@pytest.mark.parametrize("catch", ["", "catch"])
def test_signals_from_another_process_keep_their_sender(procs: Procs, build: Any,
                                                        tmp_path: Path, catch: str) -> None:
    """A process of uid 1000 sends kill(), tgkill() and sigqueue() signals without pause
    to a target of its uid whose SA_SIGINFO handler checks each one's si_code, si_pid,
    si_uid and si_value, through checkpoints and a restart: those that arrive while cryo
    holds the target (its injected calls) are given back with the sender's siginfo.
    Sent again by cryo with tgkill, a kill()'s and a tgkill()'s came as cryo's (si_pid
    cryo's, si_uid 0, SI_TKILL).  "catch": the target ignores no signal (none can carry
    another's siginfo: each carries its own)."""
    exe = build("siginfo")
    out, pidfile = tmp_path / "out.txt", tmp_path / "sender"
    v = procs.spawn([exe, str(out), str(pidfile), catch], out)
    sender = procs.spawn([exe, "send", str(v.pid)])
    (tmp_path / "sender.tmp").write_text(str(sender.pid))
    (tmp_path / "sender.tmp").rename(pidfile)
    v.wait_ok_after(1)
    v = checkpoints_then_cycle(procs, v, tmp_path)
    last = v.lines()[-1].split()
    assert all(int(n) > 0 for n in last[2:]), last  # every kind of signal came
