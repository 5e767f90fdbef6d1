"""Pseudo-terminals with both ends in the checkpoint (issue 11): a tree holding a pty
master and a session on its slave, restored with the same terminal settings, window
size, packet mode, controlling terminal and foreground process group."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim, checked_after, run_cryo
from tests.integration.test_tree import kill_tree, tree_pids

VICTIMS = Path(__file__).parent.parent / "victims"


def test_pty_pair_in_tree(procs: Procs, tmp_path: Path) -> None:
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptypair.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_ok_after(5)
    pids = tree_pids(v.pid)
    assert len(pids) == 3
    r = run_cryo("checkpoint", str(v.pid), "--tree", "-D", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    kill_tree(pids)
    seen = max(v.oks())
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    for p in pids:
        procs.track(p)
    v = Victim(v.pid, v.out)
    v.wait_ok_after(seen + 5)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
    assert v.wait_line("leader", timeout=20) == "leader good"
    v.wait_ok_after(max(v.oks()) + 5)


@pytest.mark.parametrize("kill", [True, False])
def test_canonical_lines_waiting(procs: Procs, tmp_path: Path, kill: bool) -> None:
    """Input waiting on a pty in canonical mode: each complete line is read alone after
    the restart as before (a newline, the EOL character, EOF, an empty EOF line, a
    newline typed after ^V), and the line being typed is still open: written back raw,
    the lines ran together and the line being typed came back as one a read returned
    whole (found by probing).  Without --kill the running program sees the same."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptylines.py"), str(tmp_path / "out"),
                     str(go)], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    checked_after(procs, tmp_path, v, go, kill, timeout=20)


def test_terminal_outside_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A slave whose master is not in the checkpoint: refused by name (exit 9)."""
    master, slave = os.openpty()
    try:
        v = procs.spawn([sys.executable, "-c", "import time; time.sleep(600)"],
                        tmp_path / "out", stdin=slave)  # fmt: skip
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 9 and "whose master is outside" in r.stderr, r.stderr
    finally:
        os.close(master)
        os.close(slave)


# -- --shell-job: a full-screen program on the caller's terminal ----------------------

# A shell in miniature: the session leader of a terminal starts the job in a process
# group of its own, in the foreground (the job does its own tcsetpgrp, so that it never
# reads from the background), and waits for it.
_SHELL = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execvp(sys.argv[1], sys.argv[1:])
os.waitpid(pid, 0)
"""


def _take_terminal() -> None:  # in the child: the slave (fd 0) as controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A pseudo-terminal the test made: the slave is a new session's controlling
    terminal, whatever the master receives is kept (read by a thread)."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.seen += data

    def start(self, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                cwd=cwd, close_fds=True, start_new_session=True,
                                preexec_fn=_take_terminal)  # noqa: PLW1509  # fmt: skip

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def wait_for(self, text: bytes, since: int = 0, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if text in self.seen[since:]:
                    return
            time.sleep(0.02)
        with self.lock:
            tail = bytes(self.seen[since:][-600:])
        raise AssertionError(f"{text!r} not on the terminal; it shows {tail!r}")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)
        self.reader.join(timeout=5)


def _job_of(shell: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError(f"{shell} started no job")


def _wait_state(pid: int, states: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if st in states:
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid} never got into state {states}")


def _lflag(fd: int) -> int:
    return int(termios.tcgetattr(fd)[3])


def _verase(fd: int) -> bytes:
    return bytes(termios.tcgetattr(fd)[6][termios.VERASE])


def _checkpoint_job(procs: Procs, tmp_path: Path, argv: list[str], ready: bytes,
                    keys: bytes = b"", typed: bytes = b"") -> tuple[Path, int]:  # fmt: skip
    """``argv`` started as a foreground job on a terminal, ``keys`` typed once it shows
    ``ready``; checkpointed with --shell-job and killed.  The image and the job's pid."""
    term = Terminal()
    try:
        shell = term.start([sys.executable, "-c", _SHELL, *argv], tmp_path)
        procs.track(shell.pid)
        job = procs.track(_job_of(shell.pid))
        term.wait_for(ready)
        if keys:
            mark = term.mark()
            term.type(keys)
            term.wait_for(typed, since=mark)
        time.sleep(0.3)  # back in its read of the keyboard
        assert os.tcgetpgrp(term.master) == job
        img = tmp_path / "img"
        r = run_cryo("checkpoint", str(job), "-D", str(img))
        assert r.returncode == 9 and "terminal" in r.stderr, r.stderr  # not without it
        assert not (img / "core.img").exists()
        r = run_cryo("checkpoint", str(job), "-D", str(img), "--shell-job", "--kill")
        assert r.returncode == 0, r.stderr
        shell.wait(timeout=20)
    finally:
        term.close()
    return img, job


def test_shell_job_vim(procs: Procs, tmp_path: Path) -> None:
    """vim restarted with --shell-job on another terminal: it gets the foreground and its
    raw mode back, redraws, goes to the background and back with ^Z (the caller's
    terminal, with its own settings, in between), accepts input and saves the file; the
    caller's settings are back after it exits."""
    if shutil.which("vim") is None:
        pytest.skip("vim is not installed")
    text = tmp_path / "notes.txt"
    text.write_text("first line\n")
    img, job = _checkpoint_job(procs, tmp_path, ["vim", "-u", "NONE", "-i", "NONE", "-N",
                                                 "-n", str(text)], b"first line",
                               b"ggOalpha\x1b", b"alpha")  # fmt: skip
    term = Terminal()
    try:
        attrs = termios.tcgetattr(term.slave)  # the caller's own: ^H to erase
        attrs[6][termios.VERASE] = b"\x08"
        termios.tcsetattr(term.slave, termios.TCSANOW, attrs)
        mark = term.mark()
        cryo = term.start([sys.executable, "-m", "cryo", "restart", "-D", str(img),
                           "--shell-job"], tmp_path)  # fmt: skip
        procs.track(cryo.pid)
        term.wait_for(b"restarted", since=mark)
        pid = _job_of(cryo.pid)
        procs.track(pid)
        assert pid == job
        term.wait_for(b"alpha", since=mark)  # the SIGWINCH: vim drew its screen again
        term.wait_for(b"first line", since=mark)
        assert os.tcgetpgrp(term.master) == pid  # the foreground, in a group of its own
        assert os.getpgid(pid) == pid and os.getsid(pid) == cryo.pid
        assert not _lflag(term.slave) & (termios.ICANON | termios.ECHO)  # raw, as saved
        term.type(b"\x1a")  # ^Z: vim stops, the caller gets its terminal, cryo stops
        _, status = os.waitpid(cryo.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        _wait_state(pid, "T")
        assert os.tcgetpgrp(term.master) == cryo.pid
        assert _verase(term.slave) == b"\x08" and _lflag(term.slave) & termios.ICANON
        mark = term.mark()
        os.kill(cryo.pid, signal.SIGCONT)  # fg
        term.wait_for(b"alpha", since=mark)
        assert os.tcgetpgrp(term.master) == pid
        term.type(b"Gobeta\x1b")
        term.wait_for(b"beta", since=mark)
        term.type(b":wq\r")
        assert cryo.wait(timeout=30) == 0
        assert text.read_text() == "alpha\nfirst line\nbeta\n"
        assert _verase(term.slave) == b"\x08" and _lflag(term.slave) & termios.ICANON
    finally:
        term.close()


def test_shell_job_less_on_dev_tty(procs: Procs, tmp_path: Path) -> None:
    """less reads its keys from /dev/tty (fd 3 or above, not stdio): with --shell-job
    that fd is the caller's terminal after a restart; less takes keys from it."""
    if shutil.which("less") is None:
        pytest.skip("less is not installed")
    text = tmp_path / "lines.txt"
    text.write_text("".join(f"line {i:03}\n" for i in range(1, 201)))
    img, job = _checkpoint_job(procs, tmp_path, ["less", str(text)], b"line 001")
    term = Terminal()
    try:
        mark = term.mark()
        cryo = term.start([sys.executable, "-m", "cryo", "restart", "-D", str(img),
                           "--shell-job"], tmp_path)  # fmt: skip
        procs.track(cryo.pid)
        term.wait_for(b"restarted", since=mark)
        pid = procs.track(_job_of(cryo.pid))
        assert pid == job
        mine = os.fstat(term.slave).st_rdev
        on_it = [n for n in os.listdir(f"/proc/{pid}/fd") if int(n) > 2
                 and os.stat(f"/proc/{pid}/fd/{n}").st_rdev in (mine, os.makedev(5, 0))]
        assert on_it, os.listdir(f"/proc/{pid}/fd")  # its keyboard: this terminal
        assert os.tcgetpgrp(term.master) == pid
        time.sleep(0.3)
        term.type(b"G")  # the end of the file, drawn on this terminal
        term.wait_for(b"line 200", since=mark)
        term.type(b"q")
        assert cryo.wait(timeout=30) == 0
        assert _lflag(term.slave) & termios.ICANON
    finally:
        term.close()


# -- a terminal multiplexer: tmux with two panes ---------------------------------------


def test_tmux_two_panes(procs: Procs, tmp_path: Path) -> None:
    """A tmux server (on a private socket) with a pane running sh and one running vi,
    checkpointed as a tree and killed: after the restart both panes read the same
    (capture-pane), the shell runs a command typed into it, vi takes an edit and saves."""
    if shutil.which("tmux") is None or shutil.which("vi") is None:
        pytest.skip("tmux or vi is not installed")
    sock = tmp_path / "tmux.sock"
    text = tmp_path / "f.txt"
    text.write_text("hello file\n")

    def tmux(*args: str) -> str:
        r = subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=20, close_fds=True,
                           stdin=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def panes() -> list[str]:
        return [tmux("capture-pane", "-p", "-t", p) for p in ("%0", "%1")]

    def wait_pane(pane: int, text: str) -> None:
        deadline = time.monotonic() + 20
        while text not in panes()[pane]:
            assert time.monotonic() < deadline, f"{text!r} not in pane {pane}: {panes()}"
            time.sleep(0.05)

    tmux("new-session", "-d", "-x", "80", "-y", "24", "sh")
    server = procs.track(int(tmux("display", "-p", "#{pid}")))
    try:
        tmux("split-window", "-v", f"vi -n {text}")
        for p in tree_pids(server):
            procs.track(p)
        tmux("send-keys", "-t", "%0", "echo one", "Enter")
        wait_pane(0, "one\n")
        wait_pane(1, "hello file")
        time.sleep(0.5)  # every process back in its wait
        before = panes()
        pids = tree_pids(server)
        assert len(pids) == 3
        r = run_cryo("checkpoint", str(server), "--tree", "-D", str(tmp_path / "img"),
                     "--kill")  # fmt: skip
        assert r.returncode == 0, r.stderr
        kill_tree(pids)
        r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
        assert r.returncode == 0, r.stderr
        assert tree_pids(server) == pids
        assert panes() == before
        tmux("send-keys", "-t", "%0", "echo two", "Enter")
        wait_pane(0, "two\n")
        tmux("send-keys", "-t", "%1", "Goadded", "Escape", ":wq", "Enter")
        deadline = time.monotonic() + 20
        while text.read_text() != "hello file\nadded\n":
            assert time.monotonic() < deadline, text.read_text()
            time.sleep(0.05)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True,
                       timeout=20, close_fds=True)  # fmt: skip


_TTY_JOB = """
import os, sys, termios, time, tty
fd = os.open("/dev/tty", os.O_RDWR)
old = termios.tcgetattr(fd)
tty.setraw(fd)
os.write(fd, b"ready\\r\\n")
key = os.read(fd, 1)
raw = not termios.tcgetattr(fd)[3] & termios.ICANON
os.write(fd, b"got " + key + (b" raw" if raw else b" cooked") + b"\\r\\n")
termios.tcsetattr(fd, termios.TCSADRAIN, old)
"""


def test_shell_job_dev_tty(procs: Procs, tmp_path: Path) -> None:
    """A job that reads its keys from /dev/tty (fd 3, not stdio), in raw mode: restarted
    with --shell-job it holds /dev/tty again (the file, not the terminal by name), on
    the caller's terminal, still raw, and reads a key typed there."""
    img, job = _checkpoint_job(procs, tmp_path, [sys.executable, "-c", _TTY_JOB], b"ready")
    term = Terminal()
    try:
        mark = term.mark()
        cryo = term.start([sys.executable, "-m", "cryo", "restart", "-D", str(img),
                           "--shell-job"], tmp_path)  # fmt: skip
        procs.track(cryo.pid)
        term.wait_for(b"restarted", since=mark)
        pid = procs.track(_job_of(cryo.pid))
        assert pid == job
        assert os.readlink(f"/proc/{pid}/fd/3") == "/dev/tty"
        assert os.stat(f"/proc/{pid}/fd/3").st_rdev == os.makedev(5, 0)
        assert not _lflag(term.slave) & termios.ICANON
        term.type(b"k")
        term.wait_for(b"got k raw", since=mark)
        assert cryo.wait(timeout=30) == 0
        assert _lflag(term.slave) & termios.ICANON
    finally:
        term.close()
