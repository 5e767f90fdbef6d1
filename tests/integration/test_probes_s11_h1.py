"""Probes of session 11 (h1): terminals as a user runs them (issues 11 and 9), what a
restart gave back different, each in the smallest program that shows it."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import VICTIMS, Procs, checked_after, run_cryo
from tests.integration.test_tree import kill_tree, tree_pids
from tests.integration.test_tty import (
    _SHELL,
    Terminal,
    _checkpoint_job,
    _job_of,
    _lflag,
    _wait_state,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
@pytest.mark.parametrize("mode", ["ixon", "tco", "pktnone", "pktstop", "pktstart",
                                  "pktdostop", "pktflush"])  # fmt: skip
def test_pty_flow_stop_and_packet_status(procs: Procs, tmp_path: Path, mode: str,
                                         kill: bool) -> None:  # fmt: skip
    """A pty's output stopped by ^S (^Q goes on) or by tcflow (only TCOON does), and the
    control status a packet-mode master has not read yet, come back as they were, and a
    checkpoint of the running program leaves them so: the copy of the queues (raw
    settings for a moment) started a terminal stopped with ^S (even a refused checkpoint
    did), the restart lost a tcflow's stop, and the master's next read returned a
    TIOCPKT_DOSTOP of cryo's making, or none where one was pending."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptyflow_s11_h1.py"), str(tmp_path / "out"),
                     str(go), mode], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    checked_after(procs, tmp_path, v, go, kill, timeout=20)


def test_refused_checkpoint_leaves_a_stopped_terminal_stopped(procs: Procs, tmp_path: Path
                                                              ) -> None:  # fmt: skip
    """A checkpoint refused (exit 9: a pipe whose other end is outside) after the pty
    was read leaves its ^S stop as it was (it started it: the raw settings of the copy)."""
    go = tmp_path / "go"
    r, w = os.pipe()
    try:
        v = procs.spawn([sys.executable, str(VICTIMS / "ptyflow_s11_h1.py"),
                         str(tmp_path / "out"), str(go), "ixon"], tmp_path / "out",
                        pass_fds=(r,))  # fmt: skip
        v.wait_line("ready")
        res = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert res.returncode == 9 and "pipe" in res.stderr, res.stderr
    finally:
        os.close(r)
        os.close(w)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"


# -- a tmux server with interactive programs, as a user leaves them ---------------------

_VMIN = """
import os, sys, termios, time
a = termios.tcgetattr(0)
a[3] &= ~(termios.ICANON | termios.ECHO)
a[6][termios.VMIN], a[6][termios.VTIME] = 3, 0  # 3 bytes, no timer
termios.tcsetattr(0, termios.TCSANOW, a)
os.write(1, b"vmin ready\\r\\n")
while True:
    data = os.read(0, 100)
    os.write(1, b"got %r\\r\\n" % data)
    if data.startswith(b"q"):
        break
"""

_PENDING = """
import os, sys, termios, time
a = termios.tcgetattr(0)
a[3] &= ~(termios.ICANON | termios.ECHO)
termios.tcsetattr(0, termios.TCSANOW, a)
os.write(1, b"pending ready\\r\\n")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
data = os.read(0, 100)
os.write(1, b"read %r\\r\\n" % data)
time.sleep(600)
"""


_TICKS = """
import itertools, time
for n in itertools.count():
    print("tick", n)
    time.sleep(0.05)
"""


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tty_state(path: str) -> dict[str, object]:
    """What the kernel shows of a slave: termios (c_line too), window size, bytes
    waiting to be read, line discipline, exclusive mode."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return {"termios": fcntl.ioctl(fd, termios.TCGETS, b"\0" * 60),
                "winsize": fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8),
                "inq": struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0],
                "ldisc": struct.unpack("i", fcntl.ioctl(fd, termios.TIOCGETD, b"\0" * 4))[0],
                "excl": struct.unpack("i", fcntl.ioctl(fd, 0x80045440, b"\0" * 4))[0]}
    finally:
        os.close(fd)


def _procs_state(pids: list[int]) -> dict[int, tuple[str, ...]]:
    """Each process's state (stopped or not), process group, session, terminal,
    foreground group of its terminal, and command line."""
    out = {}
    for p in pids:
        f = _stat(p)
        cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = f[0] if f[0] in "Tt" else "going"  # (S or R: a poll loop wakes)
        out[p] = (state, f[2], f[3], f[4], f[5], cmd)
    return out


def test_tmux_interactive_programs(procs: Procs, tmp_path: Path) -> None:
    """A tmux server (private socket) with a window each for: vim with a modified
    buffer and an operator pending (d), less on a long file at an offset, top, python3
    -i with a line half typed (readline), python3 -S -i with one half typed in the
    canonical buffer, bash with a job in the background (sleep) and one stopped by
    SIGTTIN (cat &), a program reading with VMIN with one byte of three typed, one
    with noncanonical input waiting, a window whose size a program set (stty), and a
    program printing ticks whose output was stopped with ^S (^Q lets it go on after).
    Checkpointed as a tree with --kill and restarted: every process with the same
    state, group, session and terminal, every pane's terminal the same (termios,
    window size, bytes waiting, line discipline) and reading the same (capture-pane;
    top's clock aside); then each finishes what it was doing."""
    for prog in ("tmux", "vim", "less", "top", "bash"):
        if shutil.which(prog) is None:
            pytest.skip(f"{prog} is not installed")
    sock = tmp_path / "tmux.sock"
    text = tmp_path / "edit.txt"
    text.write_text("one\ntwo\nthree\n")
    long = tmp_path / "long.txt"
    long.write_text("".join(f"row {i:04}\n" for i in range(1, 2001)))
    go = tmp_path / "go"
    env = {**os.environ, "TERM": "xterm", "HOME": str(tmp_path), "PS1": "$ ",
           "INPUTRC": "/dev/null", "PYTHONSTARTUP": ""}  # fmt: skip

    def tmux(*args: str) -> str:
        r = subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=20, close_fds=True,
                           stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    windows = {"vim": f"vim -u NONE -i NONE -N -n {text}", "less": f"less {long}",
               "top": "top -d 1", "pyrl": f"{sys.executable} -i -q",
               "pycanon": f"{sys.executable} -S -i -q",
               "bash": "env PS1='$ ' bash --norc --noprofile -i",
               "vmin": f"{sys.executable} -c '{_VMIN}'",
               "pending": f"{sys.executable} -c '{_PENDING}' {go}",
               "size": "sh -c 'stty rows 17 cols 61; exec cat'",
               "flow": f"{sys.executable} -u -c '{_TICKS}'"}  # fmt: skip

    def capture(w: str) -> str:
        return tmux("capture-pane", "-p", "-t", f"s:{w}")

    def wait_for(w: str, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while what not in capture(w):
            assert time.monotonic() < deadline, f"{what!r} not in {w}: {capture(w)!r}"
            time.sleep(0.05)

    def keys(w: str, *k: str) -> None:
        tmux("send-keys", "-t", f"s:{w}", *k)

    first, *rest = windows
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "s", "-n", first, windows[first])
    server = procs.track(int(tmux("display", "-p", "#{pid}")))
    try:
        for w in rest:
            tmux("new-window", "-d", "-n", w, windows[w])
        for p in tree_pids(server):
            procs.track(p)
        wait_for("vim", "three")
        keys("vim", "ggAX", "Escape", "j", "d")  # modified; d waits for its motion
        wait_for("less", "row 0001")
        keys("less", "100g")
        wait_for("less", "row 0100")
        wait_for("top", "PID")
        wait_for("pyrl", ">>>")
        keys("pyrl", "x = 6 *")
        wait_for("pyrl", "x = 6 *")
        wait_for("pycanon", ">>>")
        keys("pycanon", "y = 7 *")
        wait_for("pycanon", "y = 7 *")
        wait_for("bash", "$")
        keys("bash", "sleep 100 &", "Enter")
        wait_for("bash", "[1]")
        keys("bash", "cat &", "Enter")
        wait_for("bash", "[2]")
        keys("bash", "jobs", "Enter")
        wait_for("bash", "Stopped")
        wait_for("vmin", "vmin ready")
        keys("vmin", "a")
        wait_for("pending", "pending ready")
        keys("pending", "zz")
        wait_for("flow", "tick 3")
        keys("flow", "C-s")  # its output stopped: the ticks wait in its write
        time.sleep(1.5)  # every process back in its read; top drawn again
        pids = tree_pids(server)
        for p in pids:
            procs.track(p)
        ttys = {w: tmux("display", "-p", "-t", f"s:{w}", "#{pane_tty}").strip()
                for w in windows}  # fmt: skip
        screens = {w: capture(w) for w in windows if w != "top"}
        before = (_procs_state(pids), {w: _tty_state(t) for w, t in ttys.items()})
        assert before[1]["pending"]["inq"] == 2 and before[1]["vmin"]["inq"] == 0, before[1]
        assert struct.unpack("HHHH", before[1]["size"]["winsize"])[:2] == (17, 61)
        r = run_cryo("checkpoint", str(server), "--tree", "-D", str(tmp_path / "img"),
                     "--kill")  # fmt: skip
        assert r.returncode == 0, r.stderr
        kill_tree(pids)
        r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
        assert r.returncode == 0, r.stderr
        assert tree_pids(server) == pids
        time.sleep(1.5)
        after = (_procs_state(pids), {w: _tty_state(t) for w, t in ttys.items()})
        assert after[0] == before[0]
        for w in windows:
            assert after[1][w] == before[1][w], w
        assert {w: capture(w) for w in screens} == screens
        wait_for("top", "PID")
        assert capture("flow") == screens["flow"]  # still stopped
        # each goes on from where it was
        last = max(int(w) for w in screens["flow"].split() if w.isdigit())
        keys("flow", "C-q")
        wait_for("flow", f"tick {last + 5}")
        keys("vim", "d")  # dd: "two" deleted
        keys("vim", ":wq", "Enter")
        keys("less", "G")
        wait_for("less", "row 2000")
        keys("pyrl", " 7", "Enter", "print(x)", "Enter")
        wait_for("pyrl", "42")
        keys("pycanon", " 6", "Enter", "print(y)", "Enter")
        wait_for("pycanon", "42")
        keys("bash", "jobs", "Enter")
        wait_for("bash", "Running")
        keys("bash", "fg %2", "Enter")
        keys("bash", "meow", "Enter")
        wait_for("bash", "meow\nmeow")
        keys("vmin", "bc")
        wait_for("vmin", "got b'abc'")
        go.touch()
        wait_for("pending", "read b'zz'")
        keys("top", "q")
        deadline = time.monotonic() + 20
        while text.read_text() != "oneX\nthree\n":
            assert time.monotonic() < deadline, text.read_text()
            time.sleep(0.05)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=20, close_fds=True)  # fmt: skip


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
def test_vmin_read_with_bytes_of_it_typed(procs: Procs, tmp_path: Path, kill: bool) -> None:
    """A noncanonical read waiting for VMIN 3 bytes with one typed: the freeze's
    interrupt makes it return that byte alone (a signal would, and cryo's is none);
    the byte goes back into the terminal's input and the read runs again, so that it
    returns all three once the others are typed, after a restart or a checkpoint."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptyvmin_s11_h1.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    pids = tree_pids(v.pid)
    for p in pids:
        procs.track(p)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(img), *(["--kill"] * kill))
    assert r.returncode == 0, r.stderr
    if kill:
        kill_tree(pids)
        r = run_cryo("restart", "-D", str(img), "--detach")
        assert r.returncode == 0, r.stderr
        assert tree_pids(v.pid) == pids
    time.sleep(0.3)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"


# -- --shell-job: interactive programs on the caller's terminal --------------------------


def _restart_on(term: Terminal, img: Path, tmp_path: Path, procs: Procs, job: int
                ) -> subprocess.Popen[bytes]:  # fmt: skip
    mark = term.mark()
    cryo = term.start([sys.executable, "-m", "cryo", "restart", "-D", str(img), "--shell-job"],
                      tmp_path)  # fmt: skip
    procs.track(cryo.pid)
    term.wait_for(b"restarted", since=mark)
    assert procs.track(_job_of(cryo.pid)) == job
    return cryo


def _finish_typed(procs: Procs, img: Path, tmp_path: Path, job: int, typed: bytes,
                  expect: bytes) -> None:  # fmt: skip
    """The shell job of ``img`` restarted on a new terminal: ``typed`` typed there, the
    job ends well and ``expect`` shows."""
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        mark = term.mark()
        term.type(typed)
        assert cryo.wait(timeout=30) == 0
        term.wait_for(expect, since=mark)
    finally:
        term.close()


def test_shell_job_top(procs: Procs, tmp_path: Path) -> None:
    """top restarted with --shell-job draws its screen again on the new terminal, in
    its raw mode, and quits on q, the caller's terminal as it was."""
    if shutil.which("top") is None:
        pytest.skip("top is not installed")
    img, job = _checkpoint_job(procs, tmp_path, ["top", "-d", "1"], b"PID")
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        term.wait_for(b"PID")  # (its redraw may come before the restart's line is read)
        assert not _lflag(term.slave) & termios.ICANON
        term.type(b"q")
        assert cryo.wait(timeout=30) == 0
        assert _lflag(term.slave) & termios.ICANON
    finally:
        term.close()


def test_shell_job_python_readline_line_half_typed(procs: Procs, tmp_path: Path) -> None:
    """python3 -i (readline: the half-typed line is the program's own) restarted with
    --shell-job: the rest of the line typed on the new terminal completes it."""
    img, job = _checkpoint_job(procs, tmp_path, [sys.executable, "-i", "-q"], b">>> ",
                               b"x = 6 *", b"x = 6 *")  # fmt: skip
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        mark = term.mark()
        term.type(b" 7\r")
        term.type(b"print(x + 0)\r")
        term.wait_for(b"42", since=mark)
        term.type(b"\x04")
        assert cryo.wait(timeout=30) == 0
    finally:
        term.close()


def test_shell_job_bash_with_jobs(procs: Procs, tmp_path: Path) -> None:
    """An interactive bash with a job in the background (sleep) and one stopped by
    SIGTTIN (cat &), restarted with --shell-job: jobs lists both, fg gives cat the
    terminal (its group, in cryo's session now), cat echoes a line, ^D ends it, and
    bash exits."""
    env = ["env", "PS1=$ ", "INPUTRC=/dev/null", "bash", "--norc", "--noprofile", "-i"]
    term_keys = b"sleep 100 &\rcat &\rsleep 0.5; jobs\r"
    term = Terminal()
    try:
        shell = term.start([sys.executable, "-c", _SHELL, *env], tmp_path)
        procs.track(shell.pid)
        job = procs.track(_job_of(shell.pid))
        term.wait_for(b"$ ")
        term.type(term_keys)
        term.wait_for(b"Stopped")
        time.sleep(0.3)
        pids = tree_pids(job)
        for k in pids:
            procs.track(k)
        img = tmp_path / "img"
        r = run_cryo("checkpoint", str(job), "--tree", "-D", str(img), "--shell-job", "--kill")
        assert r.returncode == 0, r.stderr
        kill_tree(pids)
        shell.wait(timeout=20)
    finally:
        term.close()
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        kids = [int(k) for k in Path(f"/proc/{job}/task/{job}/children").read_text().split()]
        for k in kids:
            procs.track(k)
        assert len(kids) == 2
        mark = term.mark()
        term.type(b"jobs\r")
        term.wait_for(b"Running", since=mark)
        term.wait_for(b"Stopped", since=mark)
        term.type(b"fg %2\r")
        cat = next(k for k in kids if Path(f"/proc/{k}/cmdline").read_bytes() == b"cat\0")
        deadline = time.monotonic() + 20
        while os.tcgetpgrp(term.master) != cat:  # (typed before, bash would read it)
            assert time.monotonic() < deadline, "fg did not give cat the terminal"
            time.sleep(0.02)
        term.type(b"meow\r")
        term.wait_for(b"meow\r\nmeow", since=mark)
        term.type(b"\x04")
        time.sleep(0.3)
        term.type(b"kill %1; exit\r")
        assert cryo.wait(timeout=30) == 0
    finally:
        term.close()


def test_shell_job_canonical_line_half_typed(procs: Procs, tmp_path: Path) -> None:
    """A program reading a line from its terminal (canonical mode: the half-typed line
    waits in the kernel's buffer, not the program's) restarted with --shell-job: the
    rest of the line typed on the new terminal completes it."""
    prog = "import os; os.write(1, b'? '); print(eval(os.read(0, 100)))"
    img, job = _checkpoint_job(procs, tmp_path, [sys.executable, "-c", prog], b"? ",
                               b"7 *", b"7 *")  # fmt: skip
    _finish_typed(procs, img, tmp_path, job, b" 6\n", b"42")


_TYPEAHEAD = """
import os, sys, termios, time, tty
if sys.argv[1] != "canon":
    tty.setraw(0)
if sys.argv[1] == "vmin":
    a = termios.tcgetattr(0)
    a[6][termios.VMIN] = 3
    termios.tcsetattr(0, termios.TCSANOW, a)
os.write(1, b"ready\\r\\n")
while sys.argv[1] != "vmin" and not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
reads = [os.read(0, 100)]
if sys.argv[1] == "canon":
    reads.append(os.read(0, 100))
os.write(1, b"reads %r\\r\\n" % reads)
"""


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
@pytest.mark.parametrize("mode", ["canon", "raw", "vmin"])
def test_shell_job_typed_ahead(procs: Procs, tmp_path: Path, mode: str, kill: bool) -> None:
    """Keys typed on a shell job's terminal that it has not read yet (it is in the
    foreground, busy): a complete line and half of the next in canonical mode, keys in
    raw mode, one of the three bytes a read waiting for VMIN 3 had taken (the freeze
    ended that read: the byte goes back, and is then the job's input like any other).
    After a checkpoint it reads them as before; restarted with --shell-job
    on another terminal, it reads them there (they were lost: the restart gave it the
    caller's terminal and nothing of the old one's input, exit 0)."""
    go = tmp_path / "go"
    keys, rest = {"canon": (b"one\ntw", b"o\n"), "raw": (b"abc", b""),
                  "vmin": (b"a", b"bc")}[mode]  # (vmin: a read of 3 waiting, one typed)
    want = b"reads [b'one\\n', b'two\\n']" if mode == "canon" else b"reads [b'abc']"
    term = Terminal()
    try:
        shell = term.start([sys.executable, "-c", _SHELL, sys.executable, "-c", _TYPEAHEAD,
                            mode, str(go)], tmp_path)  # fmt: skip
        procs.track(shell.pid)
        job = procs.track(_job_of(shell.pid))
        term.wait_for(b"ready")
        time.sleep(0.2)  # (its settings made)
        term.type(keys)
        time.sleep(0.3)
        img = tmp_path / "img"
        r = run_cryo("checkpoint", str(job), "-D", str(img), "--shell-job",
                     *(["--kill"] * kill))  # fmt: skip
        assert r.returncode == 0, r.stderr
        if not kill:
            mark = term.mark()
            go.touch()
            term.type(rest)
            term.wait_for(want, since=mark)
            shell.wait(timeout=20)
            return
        shell.wait(timeout=20)
    finally:
        term.close()
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        mark = term.mark()
        go.touch()
        term.type(rest)
        term.wait_for(want, since=mark)
        assert cryo.wait(timeout=30) == 0
    finally:
        term.close()


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
def test_pty_speeds_and_locks(procs: Procs, tmp_path: Path, kill: bool
                                              ) -> None:  # fmt: skip
    """victims/ptymisc_s11_h1.py: a slave's speeds set with TCSETS2 (BOTHER) and its
    locked termios bits (TIOCSLCKTRMIOS) come back as they were: TCGETS has no speeds
    (the restart gave 38400 back) and nothing read the locks (gone, exit 0)."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptymisc_s11_h1.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    checked_after(procs, tmp_path, v, go, kill, timeout=20)


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
@pytest.mark.parametrize("mode", ["raw", "canon"])
def test_pty_queues_larger_than_the_line_discipline(procs: Procs, tmp_path: Path, mode: str,
                                                    kill: bool) -> None:  # fmt: skip
    """victims/ptybig_s11_h1.py: more than 4 KiB waiting each way, nobody reading: every
    byte comes back, in order (the refill lost all but what one write took and what the
    line discipline holds: 4 KB of 18 of the input, half of the output, exit 0)."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptybig_s11_h1.py"), str(tmp_path / "out"),
                     str(go), mode], tmp_path / "out")  # fmt: skip
    sizes = v.wait_line("ready").split()[1:]
    assert all(int(n) > 8192 for n in sizes), sizes
    checked_after(procs, tmp_path, v, go, kill, timeout=30)


def test_tmux_with_a_client_attached_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A tmux server with a client attached from a terminal outside the checkpoint:
    refused by name (exit 9: the server holds the client's terminal, passed to it over
    its socket, whose master is outside), the server and the client going on as before
    (a key typed in the client reaches the pane)."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sock = tmp_path / "tmux.sock"
    env = {**os.environ, "TERM": "xterm", "HOME": str(tmp_path)}

    def tmux(*args: str) -> str:
        r = subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=20, close_fds=True,
                           stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "s", "cat")
    server = procs.track(int(tmux("display", "-p", "#{pid}")))
    term = Terminal()
    client = term.start(["tmux", "-S", str(sock), "attach", "-t", "s"], tmp_path)
    procs.track(client.pid)
    try:
        for p in tree_pids(server):
            procs.track(p)
        deadline = time.monotonic() + 20
        while "1" not in tmux("display", "-p", "#{session_attached}"):
            assert time.monotonic() < deadline, "the client did not attach"
            time.sleep(0.05)
        r = run_cryo("checkpoint", str(server), "--tree", "-D", str(tmp_path / "img"))
        assert r.returncode == 9, r.stderr
        assert "whose master is outside" in r.stderr, r.stderr
        assert "--shell-job to hand" not in r.stderr, r.stderr  # (it would not help)
        mark = term.mark()
        term.type(b"hello\r")
        term.wait_for(b"hello", since=mark)
        deadline = time.monotonic() + 20
        while "hello" not in tmux("capture-pane", "-p", "-t", "s"):
            assert time.monotonic() < deadline, tmux("capture-pane", "-p", "-t", "s")
            time.sleep(0.05)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=20, close_fds=True)  # fmt: skip
        client.wait(timeout=20)
        term.close()


def test_shell_job_script_with_bash(procs: Procs, tmp_path: Path) -> None:
    """script(1) run from a shell, an interactive bash on its pty: checkpointed as a
    tree with --shell-job (script's own terminal handed over, its pair kept) and
    restarted on another terminal, bash is on script's pty still and runs what is typed
    there, through script (bash's fds 0-2 and 255 were given the caller's terminal too:
    it read the keys itself, script waited for ever, exit 0)."""
    if shutil.which("script") is None:
        pytest.skip("script is not installed")
    argv = ["script", "-q", "-c", "env PS1='$ ' INPUTRC=/dev/null bash --norc --noprofile -i",
            "/dev/null"]  # fmt: skip
    term = Terminal()
    try:
        shell = term.start([sys.executable, "-c", _SHELL, *argv], tmp_path)
        procs.track(shell.pid)
        job = procs.track(_job_of(shell.pid))
        term.wait_for(b"$ ")
        term.type(b"echo one\r")
        term.wait_for(b"one\r\n")
        time.sleep(0.3)
        pids = tree_pids(job)
        for k in pids:
            procs.track(k)
        img = tmp_path / "img"
        r = run_cryo("checkpoint", str(job), "--tree", "-D", str(img), "--shell-job", "--kill")
        assert r.returncode == 0, r.stderr
        kill_tree(pids)
        shell.wait(timeout=20)
    finally:
        term.close()
    term = Terminal()
    try:
        cryo = _restart_on(term, img, tmp_path, procs, job)
        for k in pids:
            procs.track(k)
        bash = next(k for k in pids if Path(f"/proc/{k}/cmdline").read_bytes()[:5] == b"bash\0")
        mine = os.fstat(term.slave).st_rdev
        assert os.stat(f"/proc/{bash}/fd/0").st_rdev != mine  # script's pty, not this
        mark = term.mark()
        term.type(b"echo $((6 * 7))\r")
        term.wait_for(b"42", since=mark)
        term.type(b"exit\r")
        assert cryo.wait(timeout=30) == 0
    finally:
        term.close()


def test_tmux_more_interactive_programs(procs: Procs, tmp_path: Path) -> None:
    """More programs in tmux windows, each with a line half typed (or mid-page), as a
    user leaves them: node's REPL (raw mode, its own line editing), sqlite3, bc, ed
    (canonical lines), ipython3 (prompt_toolkit), watch, man at an offset.  After
    --kill and a restart every pane reads the same (watch's clock aside) and each
    finishes its line as if nothing happened."""
    progs = {"node": "node", "sqlite": "sqlite3", "bc": "bc -q", "ed": "ed -p '*'",
             "ipy": "ipython3 --no-banner --colors=NoColor --simple-prompt",
             "watch": "watch -n 1 date +%s%N", "man": "man ls"}  # fmt: skip
    windows = {w: c for w, c in progs.items() if shutil.which(c.split()[0])}
    if shutil.which("tmux") is None or len(windows) < 3:
        pytest.skip("tmux or the programs are not installed")
    sock = tmp_path / "tmux.sock"
    env = {**os.environ, "TERM": "xterm", "HOME": str(tmp_path), "MANPAGER": "less",
           "PAGER": "less", "NODE_NO_READLINE": "", "INPUTRC": "/dev/null"}  # fmt: skip

    def tmux(*args: str) -> str:
        r = subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=20, close_fds=True,
                           stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def capture(w: str) -> str:
        return tmux("capture-pane", "-p", "-t", f"s:{w}")

    def wait_for(w: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while what not in capture(w):
            assert time.monotonic() < deadline, f"{what!r} not in {w}: {capture(w)!r}"
            time.sleep(0.05)

    def keys(w: str, *k: str) -> None:
        tmux("send-keys", "-t", f"s:{w}", *k)

    first, *rest = windows
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "s", "-n", first, windows[first])
    server = procs.track(int(tmux("display", "-p", "#{pid}")))
    ready = {"node": ">", "sqlite": "sqlite>", "bc": "", "ed": "*", "ipy": "In [1]:",
             "watch": "Every", "man": "LS"}  # fmt: skip
    half = {"node": "6 *", "sqlite": "select 6 *", "bc": "6 *", "ipy": "6 *"}
    try:
        for w in rest:
            tmux("new-window", "-d", "-n", w, windows[w])
        for w in windows:
            wait_for(w, ready[w])
        if "ed" in windows:
            keys("ed", "a", "Enter", "line one", "Enter", ".", "Enter", ",p")
            wait_for("ed", ",p")
        if "man" in windows:
            keys("man", "40g")
        for w, text in half.items():
            if w in windows:
                time.sleep(0.5)
                keys(w, text)
                wait_for(w, text)
        time.sleep(1.5)
        pids = tree_pids(server)
        for p in pids:
            procs.track(p)
        screens = {w: capture(w) for w in windows if w != "watch"}
        watcher = int(tmux("display", "-p", "-t", "s:watch", "#{pane_pid}")) \
            if "watch" in windows else 0  # fmt: skip
        passing = {p for p in pids if int(_stat(p)[1]) == watcher}  # (watch's commands)
        r = run_cryo("checkpoint", str(server), "--tree", "-D", str(tmp_path / "img"),
                     "--kill", timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        kill_tree(pids)
        r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach", timeout=120)
        assert r.returncode == 0, r.stderr
        assert set(pids) - passing <= set(tree_pids(server))
        time.sleep(1)
        assert {w: capture(w) for w in screens} == screens
        for w in half:
            if w in windows:
                keys(w, " 7\\;" if w == "sqlite" else " 7", "Enter")  # (tmux: a ; ends a command)
                wait_for(w, "42")
        if "ed" in windows:
            keys("ed", "Enter")
            wait_for("ed", ",p*\nline one")  # (the half-typed command, ended, ran)
        if "watch" in windows:
            before = capture("watch")
            deadline = time.monotonic() + 20
            while capture("watch") == before:
                assert time.monotonic() < deadline, "watch does not go on"
                time.sleep(0.2)
        if "man" in windows:
            keys("man", "G")
            wait_for("man", "(END)")
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=20, close_fds=True)  # fmt: skip


def test_shell_job_stopped_in_the_background(procs: Procs, tmp_path: Path) -> None:
    """vim stopped with ^Z in an interactive bash (stopped, in the background, the
    shell's settings on the terminal), checkpointed with --shell-job and restarted on
    another terminal: cryo stops with it (the caller's shell sees a stopped job); when
    cryo is continued in the foreground (fg), vim gets the terminal, redraws, takes an
    edit and saves."""
    if shutil.which("vim") is None:
        pytest.skip("vim is not installed")
    text = tmp_path / "notes.txt"
    text.write_text("first line\n")
    term = Terminal()
    try:
        bash = term.start(["env", "PS1=$ ", "INPUTRC=/dev/null", "bash", "--norc",
                           "--noprofile", "-i"], tmp_path)  # fmt: skip
        procs.track(bash.pid)
        term.wait_for(b"$ ")
        term.type(f"vim -u NONE -i NONE -N -n {text}\r".encode())
        term.wait_for(b"first line")
        vim = procs.track(_job_of(bash.pid))
        time.sleep(0.3)
        term.type(b"ggOalpha\x1b")
        term.wait_for(b"alpha")
        time.sleep(0.3)
        term.type(b"\x1a")
        _wait_state(vim, "T")
        assert os.tcgetpgrp(term.master) == bash.pid
        r = run_cryo("checkpoint", str(vim), "-D", str(tmp_path / "img"), "--shell-job",
                     "--kill")  # fmt: skip
        assert r.returncode == 0, r.stderr
        term.type(b"exit\r")
        time.sleep(0.3)
        term.type(b"exit\r")
        bash.wait(timeout=20)
    finally:
        term.close()
    term = Terminal()
    try:
        mark = term.mark()
        cryo = term.start([sys.executable, "-m", "cryo", "restart", "-D", str(tmp_path / "img"),
                           "--shell-job"], tmp_path)  # fmt: skip
        procs.track(cryo.pid)
        term.wait_for(b"restarted", since=mark)
        assert procs.track(_job_of(cryo.pid)) == vim
        _, status = os.waitpid(cryo.pid, os.WUNTRACED)  # stopped with it
        assert os.WIFSTOPPED(status)
        mark = term.mark()
        os.kill(cryo.pid, signal.SIGCONT)  # fg (cryo has the terminal's foreground)
        term.wait_for(b"alpha", since=mark)
        assert os.tcgetpgrp(term.master) == vim
        term.type(b"Gobeta\x1b:wq\r")
        assert cryo.wait(timeout=30) == 0
        assert text.read_text() == "alpha\nfirst line\nbeta\n"
    finally:
        term.close()
