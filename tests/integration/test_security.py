"""An image is not a licence (issue 10): an unprivileged user who can write an image
edits it and root restarts it; symbolic link attacks on the files cryo writes; a second
copy of a running image; and a fuzz of every record kind of a real image.

The user is an unused uid (no passwd entry): the test becomes it in forked children
(setresuid).  Seals use a key made for the test ($CRYO_KEY_FILE)."""

from __future__ import annotations

import copy
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.errors import CryoError, ExitCode
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image import seal
from tests.conftest import Procs, Victim, reap, run_cryo

SRC = Path(__file__).parents[2] / "src"
USER_PY = "/usr/bin/python3"  # (the test's own Python may be where the user cannot reach)
TICKER = ("import os,sys,time\nf=open(sys.argv[1],sys.argv[2] if len(sys.argv)>2 else 'a',"
          "buffering=1)\ni=0\nwhile True:\n  f.write(f'tick {i}\\n'); f.flush(); i+=1;"
          " time.sleep(0.02)\n")  # fmt: skip
REFUSED = {ExitCode.ACCESS_DENIED, ExitCode.IMAGE_CORRUPT, ExitCode.IMAGE_INCOMPATIBLE,
           ExitCode.IMAGE_MISSING, ExitCode.CONFLICT, ExitCode.UNTRUSTED,
           ExitCode.FILE_CHANGED,  # (an edited fingerprint: the file no longer matches it)
           ExitCode.ERROR}  # fmt: skip


def _unused_uid() -> int:
    rng = random.Random(os.getpid())
    while True:
        uid = rng.randrange(40000, 60000)
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        if not any(Path(f"/proc/{p}").stat().st_uid == uid
                   for p in os.listdir("/proc") if p.isdigit()
                   and Path(f"/proc/{p}").exists()):  # fmt: skip
            return uid


UID = _unused_uid()


@pytest.fixture(autouse=True)
def test_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[Path]:  # fmt: skip
    """Images of these tests are sealed with a key of their own."""
    path = tmp_path_factory.mktemp("key") / "image.key"
    monkeypatch.setenv("CRYO_KEY_FILE", str(path))
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    seal._cache.clear()
    yield path
    seal._cache.clear()


@pytest.fixture
def arena() -> Iterator[Path]:
    """A directory both root and the user reach: ``home`` is the user's."""
    d = Path(tempfile.mkdtemp(prefix="cryo-sec-", dir="/tmp"))
    d.chmod(0o755)
    home = d / "home"
    home.mkdir(mode=0o700)
    os.chown(home, UID, UID)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def become_user() -> None:
    os.setgroups([])
    os.setresgid(UID, UID, UID)
    os.setresuid(UID, UID, UID)


def as_user(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a child that is the user; it must succeed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            become_user()
            fn()
            code = 0
        except BaseException as err:  # (reported by the exit status)
            print(f"as user: {err!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def wait_ticks(out: Path, n: int = 3, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            ticks = [int(x.split()[1]) for x in out.read_text().splitlines()
                     if x.startswith("tick ")]  # fmt: skip
            if len(ticks) >= n:
                return max(ticks)
        time.sleep(0.02)
    raise AssertionError(f"no ticks in {out}")


def status_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def user_process(procs: Procs, code: str, *args: str, cwd: Path) -> int:
    """Start Python ``code`` as the user, in its own session; its pid (tracked)."""
    p = subprocess.Popen([USER_PY, "-c", code, *args], cwd=cwd,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=become_user)  # noqa: PLW1509  # fmt: skip
    p.returncode = 0
    return procs.track(p.pid)


def wait_ready(out: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (out.exists() and out.read_text().startswith("ready")):
        assert time.monotonic() < deadline, "the user's target did not get ready"
        time.sleep(0.02)


def users_image(pid: int, img: Path) -> Path:
    """Checkpoint the user's ``pid`` into ``img`` (killed after) and give the image to
    the user, as a copy the user made, or a checkpoint of their own, would be."""
    r = run_cryo("checkpoint", str(pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(pid)
    for path in [img, *img.iterdir()]:
        os.chown(path, UID, UID)
    return img


def user_image(procs: Procs, arena: Path, mode: str = "a") -> Path:
    """The user's ticker, checkpointed by root into the user's directory; the image is
    the user's (as a copy the user made, or a checkpoint of their own, would be)."""
    home = arena / "home"
    out = home / "out.txt"
    pid = user_process(procs, TICKER, str(out), mode, cwd=home)
    wait_ticks(out)
    return users_image(pid, home / "img")


def edit_as_user(img: Path, change: Callable[[dict[bytes, list[Any]]], None]) -> None:
    """The user rewrites core.img with ``change`` and checksums that hold again (the keyed
    seal, which the user cannot make, is left as it was)."""

    def edit() -> None:
        recs = fmt.read_file(img / "core.img", R.CORE_MAGIC)
        by: dict[bytes, list[Any]] = {}
        for rec in recs:
            by.setdefault(rec.kind, []).append(rec.payload)
        change(by)
        out = [fmt.Record(k, p, raw=k == R.FDAT) for k, ps in by.items() for p in ps]
        seals = [r for r in out if r.kind == fmt.SEAL]
        out = [r for r in out if r.kind != fmt.SEAL] + seals
        (img / "core.img").write_bytes(fmt.encode_file(R.CORE_MAGIC, out))

    as_user(edit)


def restart(img: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cryo("restart", "-D", str(img), "--detach", *extra, timeout=60)


# -- the user's own image ------------------------------------------------------------------


def test_users_image_restarts_as_the_user(procs: Procs, arena: Path) -> None:
    img = user_image(procs, arena)
    last = wait_ticks(arena / "home" / "out.txt")
    r = restart(img)
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    st = status_of(pid)
    assert st["Uid"].split() == [str(UID)] * 4 and st["Gid"].split() == [str(UID)] * 4
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    deadline = time.monotonic() + 10
    while wait_ticks(arena / "home" / "out.txt") <= last + 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _root_uids(recs: dict[bytes, list[Any]]) -> None:
    for t in recs[R.THRD]:
        t["uids"], t["gids"], t["groups"] = [0] * 4, [0] * 4, [0]
        t["caps"] = dict.fromkeys(t["caps"], "000001ffffffffff")


def _root_only_file(secret: Path) -> Callable[[dict[bytes, list[Any]]], None]:
    def change(recs: dict[bytes, list[Any]]) -> None:
        for d in recs[R.FDSC][0]["descs"]:
            if d["path"].endswith("out.txt"):
                d["path"], d["flags"] = str(secret), os.O_RDWR
    return change


def _setuid_ghost(target: Path) -> Callable[[dict[bytes, list[Any]]], None]:
    def change(recs: dict[bytes, list[Any]]) -> None:
        descs = recs[R.FDSC][0]["descs"]
        recs.setdefault(R.FDAT, []).append(Path(USER_PY).read_bytes()[:4096])
        base = dict(descs[0])
        base.update(id=len(descs), kind="file", path=str(target), flags=os.O_RDONLY,
                    mode=0o104755, deleted=True, blob=len(recs[R.FDAT]) - 1, fd=77)
        descs.append(base)
        recs[R.FILE][0]["fds"].append({"fd": 77, "desc": base["id"], "cloexec": False})
    return change


def _chdir_root(recs: dict[bytes, list[Any]]) -> None:
    recs[R.FILE][0]["cwd"] = "/root"


def _raise_limit(recs: dict[bytes, list[Any]]) -> None:
    recs[R.TASK][0]["rlimits"][7] = [1 << 30, 1 << 30]


def _add_desc(recs: dict[bytes, list[Any]], fd: int, **fields: Any) -> None:
    """A description added to the image and given to its process as ``fd``."""
    descs = recs[R.FDSC][0]["descs"]
    d = dict(descs[0])
    for k in list(d):
        if k not in ("pid", "ino", "dev", "size", "pos", "flags"):
            del d[k]
    d.update({"id": len(descs), "fd": fd, "path": f"socket:[{d['ino']}]", "mode": 0o140777,
              **fields})
    descs.append(d)
    recs[R.FILE][0]["fds"].append({"fd": fd, "desc": d["id"], "cloexec": False})


def _put_back_over(target: Path) -> Callable[[dict[bytes, list[Any]]], None]:
    def change(recs: dict[bytes, list[Any]]) -> None:
        recs.setdefault(b"APPX", []).append({"pid": recs[R.TREE][0]["root"], "dropped": [],
                                             "files": [{"path": str(target), "mode": 0o644,
                                                        "side": "appfile-1-0.bin",
                                                        "size": 5}]})  # fmt: skip
    return change


def _unix_bound_in_root_dir(recs: dict[bytes, list[Any]]) -> None:
    arena = Path(recs[R.FILE][0]["cwd"]).parent  # root's, 0755
    _add_desc(recs, 70, kind="unix", sotype="stream", peer=0, name=f"{arena}/evil.sock".encode(),
              shutdown=0, in_flight=[], listen=4, unlinked=False, queue=[], opts=[])


def _stream_to_outside(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 71, kind="unix", sotype="stream", peer=999999, name=None, shutdown=0,
              in_flight=[], peer_name=b"/run/cryo-root-only.sock", external=True, queue=[],
              opts=[])  # fmt: skip


def _root_peercred(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 79, kind="unix", sotype="stream", peer=0, name=None, shutdown=0,
              peer_gone=True, queue=[], peercred=[1, 0, 0, [0]])


def _privileged_port(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 72, kind="inet", family=2, sotype="stream", proto=6,
              local=["127.0.0.1", 81], remote=None, state="LISTEN", backlog=4, opts=[])


def _raw_socket(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 73, kind="inet", family=2, sotype="raw", proto=1, local=["0.0.0.0", 0],
              remote=None, opts=[])


def _marked_socket(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 74, kind="inet", family=2, sotype="dgram", proto=17,
              local=["127.0.0.1", 40000], remote=None,
              opts=[[1, 36, (7).to_bytes(4, "little")]])  # SO_MARK 7


def _foreign_namespace(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 75, kind="file", path="/proc/self/ns/net", mode=0o100444, ns="net",
              nsino=4026531000 + 12345, flags=0)


def _proc_root_link(recs: dict[bytes, list[Any]]) -> None:
    """A /proc file of the image's own process, through its root link: root's secret."""
    pid = recs[R.TREE][0]["root"]
    secret = Path(recs[R.FILE][0]["cwd"]).parent / "secret"
    _add_desc(recs, 77, kind="proc", path=f"/proc/{pid}/root{secret}", mode=0o100600,
              flags=os.O_RDWR, late=True, proc={"pid": pid, "rest": f"/root{secret}",
                                                "kind": "file"})  # fmt: skip


def _locked_above_limit(recs: dict[bytes, list[Any]]) -> None:
    recs[R.TASK][0]["rlimits"][8] = [65536, 65536]  # RLIMIT_MEMLOCK
    for v in recs[R.MM][0]["vmas"]:
        if v["kind"] == "anon" and "lo" not in v["flags"]:
            v["flags"].append("lo")


def _alarm_timerfd(recs: dict[bytes, list[Any]]) -> None:
    _add_desc(recs, 78, kind="timerfd", path="anon_inode:[timerfd]", mode=0o600, clockid=9,
              ticks=0, settime_flags=0, value=[100, 0], interval=[0, 0])


def _alarm_timer(recs: dict[bytes, list[Any]]) -> None:
    pid = recs[R.TREE][0]["root"]
    recs[R.TIMR][0]["posix"].append({"id": 0, "signal": 14, "value": 0, "notify": "signal",
                                     "tid": pid, "clock": 8, "spec": bytes(32)})


def _ghost_of(uid: int, gid: int, *, fifo: bool = False, memfd: bool = False
              ) -> Callable[[dict[bytes, list[Any]]], None]:  # fmt: skip
    def change(recs: dict[bytes, list[Any]]) -> None:
        recs.setdefault(R.FDAT, []).append(b"")
        home = Path(recs[R.FILE][0]["cwd"])
        fields: dict[str, Any] = {"deleted": True, "blob": len(recs[R.FDAT]) - 1, "uid": uid,
                                  "gid": gid, "atime_ns": 0, "mtime_ns": 0}  # fmt: skip
        if fifo:
            fields.update(kind="fifo", path=str(home / "fifo"), mode=0o10640, flags=2)
        elif memfd:
            fields.update(kind="file", path="/memfd:m", mode=0o100600, flags=2, size=0,
                          memfd={"name": "m", "seals": 0}, ghost="ghost-99", extents=[])
        _add_desc(recs, 76, **fields)
    return change


ATTACKS = {
    "uids and capabilities of root": (_root_uids, "would run as uids"),
    "a saved file put back over root's": (None, "put back in"),
    "a unix socket bound in a root directory": (_unix_bound_in_root_dir, "evil.sock in"),
    "a stream connection made by root": (_stream_to_outside, "would be connected by root"),
    "a socket pair made as root": (_root_peercred, "uid 0, gid 0, groups [0] (SO_PEERCRED)"),
    "a port below 1024": (_privileged_port, "port 81, below the unprivileged"),
    "a raw socket": (_raw_socket, "raw or packet socket"),
    "a socket option only root may set": (_marked_socket, "SO_MARK 7"),
    "a namespace the restart is not in": (_foreign_namespace, "namespace net:"),
    "a /proc file through its root link": (_proc_root_link, "opened by root through /proc"),
    "memory locked above the limit": (_locked_above_limit, "above its RLIMIT_MEMLOCK"),
    "a timerfd on an alarm clock": (_alarm_timerfd, "CLOCK_BOOTTIME_ALARM (CAP_WAKE_ALARM)"),
    "a POSIX timer on an alarm clock": (_alarm_timer, "CLOCK_REALTIME_ALARM"),
    "a deleted FIFO recreated as root's": (_ghost_of(0, 0, fifo=True), "owned by 0:0"),
    "a memfd recreated in root's group": (_ghost_of(UID, 0, memfd=True), f"owned by {UID}:0"),
    "a root-only file opened read-write": (None, "Permission denied for that user"),
    "a setuid root file recreated": (None, "recreated with mode"),
    "a working directory the user may not enter": (_chdir_root, "working directory"),
    "a limit above what the user may have": (_raise_limit, "limit 7"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_edited_image_grants_nothing(procs: Procs, arena: Path, attack: str) -> None:
    secret = arena / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    ghost = arena / "home" / "suid"
    given, words = ATTACKS[attack]
    change = given or (_root_only_file(secret) if "root-only" in attack else
                       _put_back_over(secret) if "put back" in attack else
                       _setuid_ghost(ghost))  # fmt: skip
    img = user_image(procs, arena)
    edit_as_user(img, change)
    before = _children()
    # the seal no longer verifies: refused outright
    r = restart(img)
    assert r.returncode == ExitCode.UNTRUSTED, r.stderr
    assert "changed after it was sealed" in r.stderr
    # trusted anyway: the owner's privileges still bound it
    r = restart(img, "--trust-image")
    assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
    assert words in r.stderr and f"uid {UID}" in r.stderr and "Traceback" not in r.stderr
    assert _children() == before, "a process was created"
    assert secret.read_text() == "root only\n" and secret.stat().st_mode & 0o777 == 0o600
    assert not ghost.exists()
    assert not any(p.stat().st_mode & 0o6000 for p in arena.rglob("*") if p.is_file())


def test_translated_paths_are_checked_as_opened(procs: Procs, arena: Path) -> None:
    """--translate moves the user's files: the rule applies to where they are opened
    (a directory only root may enter: refused, nothing created), and a translation to a
    place the user may reach restarts as the user."""
    img = user_image(procs, arena)
    home = arena / "home"
    vault = arena / "vault"
    vault.mkdir(mode=0o700)
    (vault / "out.txt").write_text("root's\n")
    before = _children()
    r = restart(img, "--translate", f"{home}={vault}")
    assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
    assert str(vault) in r.stderr and f"uid {UID}" in r.stderr, r.stderr
    assert _children() == before and (vault / "out.txt").read_text() == "root's\n"
    moved = arena / "moved"
    moved.mkdir()
    os.chown(moved, UID, UID)
    as_user(lambda: shutil.copy(home / "out.txt", moved / "out.txt"))
    r = restart(img, "--translate", f"{home}={moved}")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    assert status_of(pid)["Uid"].split() == [str(UID)] * 4
    assert os.readlink(f"/proc/{pid}/cwd") == str(moved)
    n = wait_ticks(moved / "out.txt")
    assert wait_ticks(moved / "out.txt", n + 2) >= n


MEMFD_FIFO = r"""
import fcntl, os, sys, time
d = sys.argv[1]
out = open(os.path.join(d, "mf.out"), "a", buffering=1)
m = os.memfd_create("users", os.MFD_ALLOW_SEALING)
os.write(m, b"memfd data")
os.fchmod(m, 0o600)
fcntl.fcntl(m, 1033, 0x8)  # F_ADD_SEALS F_SEAL_WRITE
os.mkfifo(os.path.join(d, "fifo"), 0o640)
f = os.open(os.path.join(d, "fifo"), os.O_RDWR | os.O_NONBLOCK)
os.write(f, b"fifo data")
os.unlink(os.path.join(d, "fifo"))
out.write(f"ready {m} {f}\n")
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.02)
ok = (os.pread(m, 100, 0) == b"memfd data" and fcntl.fcntl(m, 1034) & 0x8
      and os.read(f, 100) == b"fifo data")
sm, sf = os.fstat(m), os.fstat(f)
out.write(f"{'ok' if ok else 'FAIL'} {sm.st_uid} {sm.st_gid} {sm.st_mode:o} {sf.st_uid}"
          f" {sf.st_gid} {sf.st_mode:o}\n")
while True:
    time.sleep(1)
"""


def test_users_memfd_and_deleted_fifo_are_the_users(procs: Procs, arena: Path) -> None:
    """A user's memfd (sealed) and deleted FIFO come back as that user's, with their
    modes and data, and nothing set-id or root's is made for them (they were refused:
    the memfd's "directory" / and the FIFO's type)."""
    home = arena / "home"
    pid = user_process(procs, MEMFD_FIFO, str(home), cwd=home)
    out = home / "mf.out"
    wait_ready(out)
    img = users_image(pid, home / "img")
    r = restart(img)
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    assert status_of(pid)["Uid"].split() == [str(UID)] * 4
    as_user(lambda: (home / "go").write_text(""))
    deadline = time.monotonic() + 10
    while len(out.read_text().splitlines()) < 2:
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    line = out.read_text().splitlines()[1]
    assert line == f"ok {UID} {UID} 100600 {UID} {UID} 10640", line
    assert not any(p.stat().st_mode & 0o6000 for p in arena.rglob("*") if p.is_file())


WATCHER = r"""
import ctypes, os, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
open(os.path.join(d, "watched"), "w").close()
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, os.path.join(d, "watched").encode(), 2) == 1  # IN_MODIFY
out = open(os.path.join(d, "w.out"), "a", buffering=1)
out.write(f"ready {fd}\n")
while True:
    time.sleep(1)
"""


def _root_watch(path: Path) -> dict[str, Any]:
    """ino, dev and file handle of ``path`` as an inotify watch of root's shows them."""
    from cryo.engine import fsnotify
    from cryo.linux import fdcalls

    fd = fdcalls.inotify_init1(os.O_CLOEXEC)
    try:
        fdcalls.inotify_add_watch(fd, str(path), 2)
        line = next(x for x in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                    if x.startswith("inotify"))  # fmt: skip
        return fsnotify._mark(fsnotify._fields(line))
    finally:
        os.close(fd)


def test_inotify_watch_of_a_file_the_user_cannot_read(procs: Procs, arena: Path) -> None:
    """An inotify watch is added again by its file handle (as root): a user's image whose
    watch names the user's file but carries the handle of root's file is refused; the
    user's own watch restarts."""
    home = arena / "home"
    pid = user_process(procs, WATCHER, str(home), cwd=home)
    out = home / "w.out"
    wait_ready(out)
    img = users_image(pid, home / "img")
    secret = arena / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    theirs = _root_watch(secret)

    def swap(recs: dict[bytes, list[Any]]) -> None:
        for d in recs[R.FDSC][0]["descs"]:
            for w in d.get("watches", []):
                w.update({k: theirs[k] for k in ("ino", "dev", "htype", "handle")})

    good = (img / "core.img").read_bytes()
    edit_as_user(img, swap)
    before = _children()
    r = restart(img, "--trust-image")
    if r.returncode == 0:
        procs.track(int(r.stdout))
    assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
    assert "which is not" in r.stderr and f"uid {UID}" in r.stderr, r.stderr
    assert _children() == before
    (img / "core.img").write_bytes(good)
    r = restart(img)
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    fd = out.read_text().split()[1]
    assert "inotify wd:1" in Path(f"/proc/{pid}/fdinfo/{fd}").read_text()


def test_users_saved_executable_is_used_or_checked(procs: Procs, arena: Path,
                                                   build: Any) -> None:  # fmt: skip
    """A user's image made with --save-files: with the executable gone, the copy in the
    image stands in and the restart goes on as the user (it was refused: the missing
    file was checked as the user before the copy was chosen); with the executable still
    there but made root's only, it is what would be mapped, checked as the user then:
    refused."""
    home = arena / "home"
    prog = home / "prog"
    shutil.copy(build("counter"), prog)
    os.chown(prog, UID, UID)
    out = home / "c.out"
    p = subprocess.Popen([str(prog), str(out)], cwd=home, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, preexec_fn=become_user)  # noqa: PLW1509
    p.returncode = 0
    procs.track(p.pid)
    v = Victim(p.pid, out)
    v.wait_ok_after(1)
    img = home / "img"
    r = run_cryo("checkpoint", str(p.pid), "-D", str(img), "--kill", "--save-files")
    assert r.returncode == 0, r.stderr
    reap(p.pid)
    for path in [img, *img.iterdir()]:
        os.chown(path, UID, UID)
    last = max(v.oks())
    os.chown(prog, 0, 0)  # (chown and chmod leave size and mtime: the original is used)
    prog.chmod(0o700)
    before = _children()
    r = restart(img)
    assert r.returncode == ExitCode.ACCESS_DENIED, (r.returncode, r.stderr)
    assert str(prog) in r.stderr and f"uid {UID}" in r.stderr, r.stderr
    assert _children() == before
    prog.unlink()
    r = restart(img)
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    assert status_of(pid)["Uid"].split() == [str(UID)] * 4
    Victim(pid, out).wait_ok_after(last + 2)


def _children() -> set[int]:
    me = os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == me:
                out.add(int(d))
    return out


def test_unsealed_root_image_is_refused_by_root(procs: Procs, arena: Path) -> None:
    """An image without a seal (a user's checkpoint, or one from another host's key) is
    refused by root unless trusted."""
    img = user_image(procs, arena)
    def unseal(recs: dict[bytes, list[Any]]) -> None:
        recs.pop(fmt.SEAL, None)

    edit_as_user(img, unseal)
    r = restart(img)
    assert r.returncode == ExitCode.UNTRUSTED and "not sealed" in r.stderr
    r = restart(img, "--trust-image")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    assert status_of(pid)["Uid"].split() == [str(UID)] * 4


def test_non_root_restart_names_the_missing_privilege(procs: Procs, arena: Path) -> None:
    probe = subprocess.run([USER_PY, "-c", "import msgpack, xxhash, zstandard, numpy"],
                           capture_output=True, preexec_fn=become_user)
    if probe.returncode:
        pytest.skip(f"{USER_PY} lacks cryo's dependencies for an unprivileged user")
    img = user_image(procs, arena)
    r = subprocess.run([USER_PY, "-m", "cryo", "restart", "-D", str(img), "--detach"],
                       capture_output=True, text=True, timeout=60, preexec_fn=become_user,
                       cwd=arena)  # fmt: skip
    if r.returncode == 0:  # (a kernel that lets this user do it all)
        procs.track(int(r.stdout))
        return
    assert r.returncode == ExitCode.ACCESS_DENIED, r.stderr
    assert "CAP_CHECKPOINT_RESTORE" in r.stderr and "Traceback" not in r.stderr


# -- files cryo writes -----------------------------------------------------------------------


@pytest.fixture
def root_image(procs: Procs, arena: Path) -> Path:
    out = arena / "root-out.txt"
    p = procs.spawn([sys.executable, "-c", TICKER, str(out)])
    wait_ticks(out)
    img = arena / "rootimg"
    r = run_cryo("checkpoint", str(p.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(p.pid)
    return img


def test_pidfile_symlink_is_replaced_not_followed(procs: Procs, arena: Path,
                                                  root_image: Path) -> None:  # fmt: skip
    precious = arena / "precious"
    precious.write_text("precious\n")
    link = arena / "home" / "pid"
    as_user(lambda: os.symlink(precious, link))
    r = restart(root_image, "--pidfile", str(link))
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    assert precious.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == f"{pid}\n"
    assert link.stat().st_mode & 0o777 == 0o600


def test_run_output_symlink_is_refused(arena: Path) -> None:
    precious = arena / "precious"
    precious.write_text("precious\n")
    link = arena / "home" / "out"
    as_user(lambda: os.symlink(precious, link))
    pidfile = arena / "home" / "runpid"
    as_user(lambda: os.symlink(precious, pidfile))
    r = run_cryo("run", "--output", str(link), "--pidfile", str(pidfile), "--", "sleep", "30")
    assert r.returncode == ExitCode.ERROR and "symbolic link" in r.stderr, r.stderr
    assert precious.read_text() == "precious\n"
    r = run_cryo("run", "--output", str(arena / "new.log"), "--pidfile", str(pidfile), "--",
                 "sleep", "30")  # fmt: skip
    assert r.returncode == 0, r.stderr
    reap(int(r.stdout))
    assert precious.read_text() == "precious\n" and pidfile.read_text() == r.stdout
    assert (arena / "new.log").stat().st_mode & 0o777 == 0o600


def test_temporary_directory_is_unpredictable_and_private(procs: Procs, arena: Path) -> None:
    """Links planted at every DIR.tmp.PID a checkpoint could use: nothing is written
    through them; under umask 000 the image is still 0700 / 0600."""
    trap = arena / "trap"
    trap.mkdir()
    out = arena / "t-out.txt"
    p = procs.spawn([sys.executable, "-c", TICKER, str(out)])
    wait_ticks(out)
    img = arena / "img"
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    for n in range(last, last + 400):
        (arena / f"img.tmp.{n}").symlink_to(trap)
    r = run_cryo("checkpoint", str(p.pid), "-D", str(img), preexec_fn=lambda: os.umask(0))
    assert r.returncode == 0, r.stderr
    assert list(trap.iterdir()) == []
    assert img.stat().st_mode & 0o777 == 0o700
    for path in img.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


# -- one image, two copies ---------------------------------------------------------------------


def test_second_copy_of_a_running_image_is_refused(procs: Procs, arena: Path) -> None:
    out = arena / "rw.txt"
    out.write_text("")
    p = procs.spawn([sys.executable, "-c", TICKER, str(out), "r+"])  # written at its offset
    wait_ticks(out)
    img = arena / "rwimg"
    assert run_cryo("checkpoint", str(p.pid), "-D", str(img), "--kill").returncode == 0
    reap(p.pid)
    first = restart(img)
    assert first.returncode == 0, first.stderr
    pid = procs.track(int(first.stdout))
    second = restart(img)
    if second.returncode == 0:  # (reaped after the test whatever it says)
        procs.track(int(second.stdout))
    assert second.returncode == ExitCode.CONFLICT, second.stderr
    assert f"is already running as pid {pid}" in second.stderr
    third = restart(img, "--allow-duplicate", "--new-pids")  # (a copy: its pid is taken)
    assert third.returncode == 0, third.stderr
    procs.track(int(third.stdout))
    reap(pid)
    reap(int(third.stdout))
    again = restart(img)  # the first copy is gone: no conflict
    assert again.returncode == 0, again.stderr
    procs.track(int(again.stdout))


# -- fuzz ----------------------------------------------------------------------------------------

MUTATIONS: list[tuple[str, Callable[[Any], Any]]] = [
    ("none", lambda v: None), ("str", lambda v: "x"), ("neg", lambda v: -1),
    ("huge", lambda v: 1 << 70), ("bytes", lambda v: b"\x01" * 3), ("list", lambda v: [1]),
    ("map", lambda v: {"k": 1}), ("bool", lambda v: True), ("zero", lambda v: 0),
    ("bump", lambda v: v + 4096 if isinstance(v, int) and not isinstance(v, bool) else v),
    ("cut", lambda v: v[: len(v) // 2] if isinstance(v, (bytes, str, list)) else v),
    ("dup", lambda v: v + v[:1] if isinstance(v, list) else v),
]


def _paths(v: Any, path: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    yield path
    if depth >= 4:
        return
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*path, k), depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v[:6]):
            yield from _paths(x, (*path, i), depth + 1)


def _apply(payload: Any, path: tuple[Any, ...], how: str) -> Any:
    """``payload`` with the value at ``path`` mutated (``how``: a MUTATIONS name or
    "delete")."""
    out = copy.deepcopy(payload)
    if not path:
        return None if how == "delete" else dict(MUTATIONS)[how](out)
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "delete":
        del parent[last]
    else:
        parent[last] = dict(MUTATIONS)[how](parent[last])
    return out


def _mutated(base: Any, recs: dict[bytes, list[Any]]) -> Any:
    """The real image with its records replaced (pages and side files: the real ones)."""
    image = copy.copy(base)
    image.records = recs
    image.blocks = recs.get(R.PBLK, [])
    return image


def test_fuzz_every_record_kind(procs: Procs, arena: Path) -> None:
    """At least 1,000 mutations of every key of every record kind of a real image: each
    is refused cleanly (a CryoError with a defined exit code, no traceback, no process)
    or passes the checks; ~20 are restarted in full (sealed again with the test key)."""
    from cryo.engine import restore
    from cryo.image.reader import Image

    seed = int(os.environ.get("CRYO_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"fuzz seed {seed} (CRYO_FUZZ_SEED={seed} repeats it)")
    rng = random.Random(seed)
    out = arena / "f-out.txt"
    code = ("import os,threading,time,sys\nr,w=os.pipe()\nos.write(w,b'data')\n"
            "threading.Thread(target=time.sleep,args=(1000,),daemon=True).start()\n"
            f"exec({TICKER!r})")  # fmt: skip
    p = procs.spawn([sys.executable, "-c", code, str(out)])
    wait_ticks(out)
    img = arena / "fimg"
    assert run_cryo("checkpoint", str(p.pid), "-D", str(img), "--kill").returncode == 0
    reap(p.pid)
    base = Image(str(img))
    base.pages  # noqa: B018  (mapped once, shared by every mutated copy)
    recs0 = {k: list(v) for k, v in base.records.items()}
    # every (kind, key) first, then random deeper places, to 1,200 mutations
    todo: list[tuple[bytes, int, tuple[Any, ...], str]] = []
    for kind, payloads in recs0.items():
        for i, payload in enumerate(payloads):
            if kind == R.FDAT:
                todo.append((kind, i, (), "cut"))
                continue
            for key in payload if isinstance(payload, dict) else []:
                todo.append((kind, i, (key,), rng.choice(["delete", *dict(MUTATIONS)])))
    places = [(k, i, path) for k, ps in recs0.items() if k != R.FDAT
              for i, pl in enumerate(ps) for path in _paths(pl) if path]  # fmt: skip
    while len(todo) < 1200:
        k, i, path = rng.choice(places)
        todo.append((k, i, path, rng.choice(["delete", *dict(MUTATIONS)])))
    kinds = {k for k, _, _, _ in todo}
    assert kinds >= {R.HEAD, R.TREE, R.TASK, R.MM, R.SIGS, R.TIMR, R.FILE, R.THRD, R.FDSC,
                     R.SHMO, R.PBLK}  # fmt: skip
    restore.validate(_mutated(base, recs0), trust_image=True)  # the image as it is: good
    before = _children()
    refused, accepted = 0, []
    t0 = time.monotonic()
    for kind, i, path, how in todo:
        recs = {k: list(v) for k, v in recs0.items()}
        try:
            recs[kind][i] = _apply(recs[kind][i], path, how)
        except (KeyError, IndexError, TypeError):
            continue
        image = _mutated(base, recs)
        try:
            restore.validate(image, trust_image=True)
        except CryoError as err:
            assert err.exit_code in REFUSED, (kind, path, how, err)
            refused += 1
            continue
        accepted.append((kind, i, path, how))
    took = time.monotonic() - t0
    print(f"{len(todo)} mutations: {refused} refused, {len(accepted)} accepted, {took:.1f} s")
    assert refused + len(accepted) >= 1000
    assert _children() == before, "a process was created while validating"
    # a sample restarted in full, the image sealed again: a clean refusal or a restart
    key = seal.load_key(create=True)
    rng.shuffle(accepted)
    def encodable(m: tuple[bytes, int, tuple[Any, ...], str]) -> bool:
        try:
            fmt.pack(_apply(recs0[m[0]][m[1]], m[2], m[3]))
        except (KeyError, IndexError, TypeError, OverflowError, ValueError):
            return False
        return True

    rejected = [m for m in todo if m not in accepted and encodable(m)]
    rng.shuffle(rejected)
    full = rejected[:10] + [m for m in accepted if encodable(m)][:10]
    assert len(full) >= 10
    for kind, i, path, how in full:
        recs = {k: list(v) for k, v in recs0.items()}
        recs[kind][i] = _apply(recs[kind][i], path, how)
        mimg = arena / "mut"
        shutil.rmtree(mimg, ignore_errors=True)
        shutil.copytree(img, mimg)
        order = [x for x in fmt.read_file(img / "core.img", R.CORE_MAGIC) if x.kind != fmt.SEAL]
        out_recs = []
        seen: dict[bytes, int] = {}
        for rec in order:
            n = seen.get(rec.kind, 0)
            seen[rec.kind] = n + 1
            out_recs.append(fmt.Record(rec.kind, recs[rec.kind][n], raw=rec.raw))
        with open(mimg / "core.img", "wb") as f:
            w = fmt.RecordWriter(f, R.CORE_MAGIC, seal=seal.sealer(key))
            for rec in out_recs:
                w.write(rec.kind, rec.payload, raw=rec.raw)
            w.close()
        try:
            r = run_cryo("restart", "-D", str(mimg), "--detach", "--allow-duplicate",
                         "--new-pids", timeout=30)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"restart hung: {kind!r} {path} {how}")
        assert "Traceback" not in r.stderr, (kind, path, how, r.stderr)
        if r.returncode == 0:
            pid = procs.track(int(r.stdout))
            os.kill(pid, signal.SIGKILL)
        else:
            assert r.returncode in REFUSED, (kind, path, how, r.returncode, r.stderr)


# -- stores ------------------------------------------------------------------------------------


def test_store_versions_are_sealed(procs: Procs, arena: Path) -> None:
    """A version reads pages through the page maps of older versions: an edit of any of
    them is caught; gc's rewrites are sealed again."""
    out = arena / "s-out.txt"
    p = procs.spawn([sys.executable, "-c", TICKER, str(out)])
    wait_ticks(out)
    store = arena / "store"
    for _ in range(2):
        r = run_cryo("checkpoint", str(p.pid), "--store", str(store), "--app", "a")
        assert r.returncode == 0, r.stderr
    reap(p.pid)
    for path in store.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    pmap = store / "a" / "v1" / "pmap.img"
    good = pmap.read_bytes()
    recs = fmt.read_file(pmap, b"CRYOPMAP")
    recs[0] = fmt.Record(recs[0].kind, dict(recs[0].payload, created=0.0))
    pmap.write_bytes(fmt.encode_file(b"CRYOPMAP", recs))
    r = run_cryo("restart", "--store", str(store), "--app", "a", "--detach")
    assert r.returncode == ExitCode.UNTRUSTED and "v1/pmap.img" in r.stderr, r.stderr
    pmap.write_bytes(good)
    r = run_cryo("store", "gc", str(store), "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    r = run_cryo("restart", "--store", str(store), "--app", "a", "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))


def test_store_verify_reports_a_broken_seal(procs: Procs, arena: Path) -> None:
    out = arena / "v-out.txt"
    p = procs.spawn([sys.executable, "-c", TICKER, str(out)])
    wait_ticks(out)
    store = arena / "vstore"
    assert run_cryo("checkpoint", str(p.pid), "--store", str(store), "--app", "a",
                    "--kill").returncode == 0  # fmt: skip
    reap(p.pid)
    assert run_cryo("store", "verify", str(store)).returncode == 0
    core = store / "a" / "v1" / "core.img"
    recs = fmt.read_file(core, R.CORE_MAGIC)
    recs[0] = fmt.Record(R.HEAD, dict(recs[0].payload, hostname="elsewhere"))
    core.write_bytes(fmt.encode_file(R.CORE_MAGIC, recs))
    r = run_cryo("store", "verify", str(store))
    assert r.returncode == ExitCode.IMAGE_CORRUPT and "changed after it was sealed" in (
        r.stdout + r.stderr)


def test_open_as_owner(arena: Path) -> None:
    from cryo.image import trust

    mine = arena / "home" / "mine"
    as_user(lambda: mine.write_text("the user's\n"))
    secret = arena / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    owner = trust.Owner(UID, UID, {UID})
    fds = trust.open_as_owner(owner, [(str(mine), os.O_RDONLY, 0),
                                      (str(arena / "home" / "new"), os.O_WRONLY | os.O_CREAT
                                       | os.O_EXCL, 0o644)])  # fmt: skip
    assert os.read(fds[0], 100) == b"the user's\n"
    assert (arena / "home" / "new").stat().st_uid == UID  # made as the user
    for fd in fds:
        os.close(fd)
    with pytest.raises(PermissionError):
        trust.open_as_owner(owner, [(str(mine), os.O_RDONLY, 0), (str(secret), os.O_RDWR, 0)])


# -- the grammar covers a real image whole ----------------------------------------------------

RICH = r"""
import fcntl, os, select, socket, struct, sys, time
d = sys.argv[1]
out = open(os.path.join(d, "rich.out"), "a", buffering=1)
locked = open(os.path.join(d, "posix"), "w+"); fcntl.lockf(locked, fcntl.LOCK_EX)
flocked = open(os.path.join(d, "flock"), "w+"); fcntl.flock(flocked, fcntl.LOCK_SH)
ofd = os.open(os.path.join(d, "ofd"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.fcntl(ofd, 37, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 10, 0))  # F_OFD_SETLK
leased = os.open(os.path.join(d, "lease"), os.O_RDONLY | os.O_CREAT, 0o600)
fcntl.fcntl(leased, fcntl.F_SETLEASE, fcntl.F_RDLCK)
r, w = os.pipe()
os.write(w, b"in the pipe")
fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(r, 10, 40)  # F_SETSIG
fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)
ghost = open(os.path.join(d, "ghost"), "w+b")
ghost.write(b"head"); ghost.seek(1 << 20); ghost.write(b"tail"); ghost.flush()
os.fchmod(ghost.fileno(), 0o640)
os.unlink(ghost.name)
mfd = os.memfd_create("rich", os.MFD_ALLOW_SEALING)
os.write(mfd, b"memfd bytes")
fcntl.fcntl(mfd, 1033, 0x8)  # F_ADD_SEALS F_SEAL_WRITE
os.mkfifo(os.path.join(d, "fifo"))
fifo = os.open(os.path.join(d, "fifo"), os.O_RDWR | os.O_NONBLOCK)
os.write(fifo, b"fifo bytes")
os.unlink(os.path.join(d, "fifo"))
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.send(b"queued")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(os.path.join(d, "srv")); srv.listen(4)
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen(3)
tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
efd = os.eventfd(5)
ep = select.epoll(); ep.register(r, select.EPOLLIN)
master, slave = os.openpty()
os.write(master, b"typed\n")
ns = os.open("/proc/self/ns/uts", os.O_RDONLY)
pidfd = os.pidfd_open(os.getpid())
status = open("/proc/self/status")
os.symlink("posix", os.path.join(d, "link"))
opath = os.open(os.path.join(d, "link"), os.O_PATH | os.O_NOFOLLOW)
import ctypes
libc = ctypes.CDLL(None)
ino = libc.inotify_init1(0)
libc.inotify_add_watch(ino, os.path.join(d, "flock").encode(), 2)
waiting = socket.create_connection(tcp.getsockname())  # in tcp's accept queue
out.write("ready\n")
i = 0
while True:
    out.write(f"tick {i}\n"); i += 1
    time.sleep(0.05)
"""


def test_real_image_has_no_undeclared_key(procs: Procs, arena: Path) -> None:
    """A target holding files, locks of every kind, a lease, a signal owner, a deleted
    file with a hole, a sealed memfd, a deleted FIFO, unix and TCP/UDP sockets (a TCP
    connection waiting in its listener's accept queue), an eventfd, an epoll, a pty
    pair, a namespace fd, a pidfd, a /proc file, an O_PATH fd on a symbolic link and an
    inotify watch: its image fits the grammar with no key the grammar does not declare
    (each is checked for its type), and restarts."""
    from cryo.image.reader import Image

    work = arena / "rich"
    work.mkdir()
    p = procs.spawn([sys.executable, "-c", RICH, str(work)])
    out = work / "rich.out"
    deadline = time.monotonic() + 15
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the target did not get ready"
        time.sleep(0.05)
    img = arena / "richimg"
    r = run_cryo("checkpoint", str(p.pid), "-D", str(img), "--kill", "--tcp-established")
    assert r.returncode == 0, r.stderr
    reap(p.pid)
    image = Image(str(img))
    locks = {d["tcp"]["lock"] for d in image.raw(R.FDSC)[0]["descs"]
             if isinstance(d.get("tcp"), dict) and d["tcp"].get("lock")}  # fmt: skip
    try:
        _rich_image_checked(image)
        r = restart(img, "--tcp-established")
        assert r.returncode == 0, r.stderr
    finally:
        from cryo.engine import netlock

        for name in locks:  # the connection's lock, if the restart did not take it
            netlock.drop_table(name)
    pid = procs.track(int(r.stdout))
    n = len(out.read_text().splitlines())
    deadline = time.monotonic() + 10
    while len(out.read_text().splitlines()) < n + 3:
        assert time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"), "not running"
        time.sleep(0.05)


def _rich_image_checked(image: Any) -> None:
    from cryo.image import schema

    try:
        schema.check(image)
        descs = image.raw(R.FDSC)[0]["descs"]
        have = {k for dd in descs for k in dd}
        for key in ("posix", "locks", "lease", "owner", "sig", "ghost", "extents", "memfd",
                    "uid", "atime_ns", "name", "queue", "opts", "family", "local", "state",
                    "backlog", "listen", "count", "watch", "index", "termios", "ns",
                    "target", "proc", "watches", "queued", "queued_on", "tcp"):
            assert key in have, f"the target's image has no {key}: it tests too little"
        assert schema.undeclared_keys(image) == []
    finally:
        image.close()


SAVER = ("import sys,time\nimport cryo.app as a\na.add_saved_file(sys.argv[1])\n"
         "open(sys.argv[2],'w').write('ready')\nwhile True:\n  time.sleep(0.05)\n")


def test_saved_file_is_read_as_the_process(procs: Procs, arena: Path, tmp_path: Path) -> None:
    """A user's process asking cryo.app to save a file its user cannot read (root's
    0600 file) does not get it copied into its image: the checkpoint fails naming it,
    the process goes on; a file of its own is saved."""
    secret = arena / "secret"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    home = arena / "home"
    ready = home / "ready"
    pid = user_process(procs, SAVER, str(secret), str(ready), cwd=home)
    wait_ready(ready, timeout=20)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(pid), "-D", str(img))
    assert r.returncode != 0, "root's file was saved into a user's image"
    assert str(secret) in r.stderr and "Permission denied" in r.stderr, r.stderr
    assert not img.exists()
    assert status_of(pid)["State"][0] in "SR", status_of(pid)["State"]
    assert status_of(pid)["TracerPid"] == "0"


MAPPED_MEMFD = r"""
import mmap, os, sys, time
d = sys.argv[1]
out = open(os.path.join(d, "mm.out"), "a", buffering=1)
m = os.memfd_create("mapped")
os.ftruncate(m, 8192)
os.fchmod(m, 0o600)
view = mmap.mmap(m, 8192, flags=mmap.MAP_SHARED)
view[:5] = b"hello"
out.write("ready\n")
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.02)
st = os.fstat(m)
ok = view[:5] == b"hello" and os.pread(m, 5, 0) == b"hello"
out.write(f"{'ok' if ok else 'FAIL'} {st.st_uid} {st.st_gid} {st.st_mode:o}\n")
while True:
    time.sleep(1)
"""


def mapped_memfd_image(procs: Procs, arena: Path) -> Path:
    home = arena / "home"
    pid = user_process(procs, MAPPED_MEMFD, str(home), cwd=home)
    wait_ready(home / "mm.out")
    return users_image(pid, home / "img")


def test_users_mapped_memfd_is_the_users(procs: Procs, arena: Path) -> None:
    """A user's memfd mapped shared (saved as a shared memory object) comes back the
    user's, with its mode and data: not root's, which the user could not reopen."""
    home = arena / "home"
    r = restart(mapped_memfd_image(procs, arena))
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    as_user(lambda: (home / "go").write_text(""))
    out = home / "mm.out"
    deadline = time.monotonic() + 10
    while len(out.read_text().splitlines()) < 2:
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    line = out.read_text().splitlines()[1]
    assert line == f"ok {UID} {UID} 100600", line


def test_users_shared_object_edited_to_roots_is_refused(procs: Procs, arena: Path) -> None:
    """The same image with the object's owner edited to root: refused, nothing made."""
    img = mapped_memfd_image(procs, arena)

    def to_root(by: dict[bytes, list[Any]]) -> None:
        by[b"SHMO"][0]["objs"][0]["uid"] = 0

    edit_as_user(img, to_root)
    r = restart(img, "--trust-image")  # past the seal: the privilege rule must hold
    assert r.returncode in REFUSED, r.stderr
    assert "would be owned by 0:" in r.stderr, r.stderr
