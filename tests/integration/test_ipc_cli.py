"""The ``cryo ipc`` and ``krgipc*`` commands, and every bad input with its exit code; each
scenario in its own IPC namespace (the commands run as child processes inside it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryo.errors import ExitCode
from cryo.linux import sysv

from .ipc_ns import cryo, in_new_ipc_ns, root_ns_objects


@pytest.fixture(autouse=True)
def _nothing_leaks() -> Iterator[None]:
    before = root_ns_objects()
    yield
    assert root_ns_objects() == before


def _live_ids(kind: str) -> list[str]:
    return [line.split()[1] for line in (Path("/proc/sysvipc") / kind).read_text().splitlines()[1:]]


def _commands(store: Path) -> None:
    q = sysv.msgget(0x1234, sysv.IPC.CREAT | 0o640)
    sysv.msgsnd(q, 3, b"abc", sysv.IPC.NOWAIT)
    s = sysv.semget(0x99, 4, sysv.IPC.CREAT | 0o600)
    m = sysv.shmget(0x77, 8192, sysv.IPC.CREAT | 0o600)

    r = cryo("ipc", "ls-live", store=store)
    assert r.returncode == 0, r.stderr
    assert "0x00001234" in r.stdout and "Semaphore Arrays" in r.stdout

    # save prints the version; krgipc* the same, in the seed's own forms
    assert cryo("ipc", "save", "msg", str(q), store=store).stdout == "1\n"
    assert cryo("ipc", "--store", str(store), "save", "msg", str(q)).stdout == "2\n"
    assert cryo("ipc", "save", "msg", str(q), "--store", str(store)).stdout == "3\n"
    assert cryo("-save", str(q), store=store, tool="krgipcmsg").stdout == "4\n"
    assert cryo("-s", str(s), store=store, tool="krgipcsem").stdout == "1\n"
    assert cryo("-s", str(m), store=store, tool="krgipcshm").stdout == "1\n"

    r = cryo("ipc", "list", store=store)
    assert r.returncode == 0
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [
        ["msg", str(q), "1"], ["msg", str(q), "2"], ["msg", str(q), "3"], ["msg", str(q), "4"],
        ["sem", str(s), "1"], ["shm", str(m), "1"],
    ]  # fmt: skip

    r = cryo("ipc", "show", "msg", str(q), "2", store=store)
    assert r.returncode == 0, r.stderr
    assert "key        0x00001234" in r.stdout
    assert "mode       0640" in r.stdout
    assert "messages   1" in r.stdout
    assert "left out:" in r.stdout and "waiting" in r.stdout
    r = cryo("ipc", "show", "sem", str(s), store=store)
    assert "semaphores 4" in r.stdout and "semundo" in r.stdout

    # id taken: exit 10 and nothing changed; --replace works
    for tool, argv in (("cryo", ("ipc", "load", "msg", str(q))),
                       ("krgipcmsg", ("-load", str(q))), ("krgipcsem", ("-l", str(s))),
                       ("krgipcshm", ("-l", str(m), "1"))):  # fmt: skip
        r = cryo(*argv, store=store, tool=tool)
        assert r.returncode == ExitCode.CONFLICT, (tool, r.stderr)
        assert "in use" in r.stderr and "--replace" in r.stderr
    sysv.msgsnd(q, 4, b"after")
    r = cryo("ipc", "load", "msg", str(q), "1", "--replace", store=store)
    assert r.returncode == 0, r.stderr
    assert f"msg {q} loaded from version 1" in r.stdout
    assert sysv.msg_stat(q).msg_qnum == 1
    r = cryo("-l", str(s), "--replace", store=store, tool="krgipcsem")
    assert r.returncode == 0, r.stderr

    # what does not exist
    r = cryo("ipc", "save", "msg", "4242", store=store)
    assert r.returncode == ExitCode.ERROR
    assert "no message queue with id 4242" in r.stderr
    r = cryo("-s", "4242", store=store, tool="krgipcshm")
    assert r.returncode == ExitCode.ERROR
    assert not (store / "shm" / "4242").exists()
    r = cryo("ipc", "load", "sem", "4242", store=store)
    assert r.returncode == ExitCode.IMAGE_MISSING
    r = cryo("ipc", "load", "msg", str(q), "9", store=store)
    assert r.returncode == ExitCode.IMAGE_MISSING
    assert "saved versions: 1, 2, 3, 4" in r.stderr

    # bad command lines
    for argv in (("ipc", "save"), ("ipc", "save", "msg"), ("ipc", "save", "pipe", "1"),
                 ("ipc", "save", "--all", "msg", "1"), ("ipc", "load"),
                 ("ipc", "show", "msg"), ("ipc", "load", "msg", "x")):  # fmt: skip
        assert cryo(*argv, store=store).returncode == ExitCode.USAGE, argv
    for argv in ((str(q),), ("-s", "-l", str(q)), ("-s", str(q), "2")):
        assert cryo(*argv, store=store, tool="krgipcmsg").returncode == ExitCode.USAGE, argv


def test_commands(tmp_path: Path) -> None:
    in_new_ipc_ns(_commands, tmp_path / "store")


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        data = data[: len(data) - 9]
    elif how == "magic":
        data[:8] = b"CRYOXXXX"
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


def _corrupt(store: Path, kind: str, how: str) -> None:
    if kind == "msg":
        ipc_id = sysv.msgget(0x10, sysv.IPC.CREAT | 0o600)
        for i in range(50):
            sysv.msgsnd(ipc_id, 1 + i % 3, b"x" * i)
    elif kind == "sem":
        ipc_id = sysv.semget(0x10, 30, sysv.IPC.CREAT | 0o600)
    else:
        ipc_id = sysv.shmget(0x10, 3 << 20, sysv.IPC.CREAT | 0o600)
        with sysv.shm_attached(ipc_id, 3 << 20, readonly=False) as (_, view):
            view[:] = bytes(range(256)) * (3 << 12)
    r = cryo("ipc", "save", kind, str(ipc_id), store=store)
    assert r.returncode == 0, r.stderr
    (path,) = store.glob(f"*/{ipc_id}/1/*.bin")
    _damage(path, how)
    {"msg": lambda: sysv.msgctl(ipc_id, sysv.IPC_CMD.RMID),
     "sem": lambda: sysv.semctl(ipc_id, 0, sysv.IPC_CMD.RMID),
     "shm": lambda: sysv.shmctl(ipc_id, sysv.IPC_CMD.RMID)}[kind]()  # fmt: skip
    for argv in (("ipc", "load", kind, str(ipc_id)), ("ipc", "show", kind, str(ipc_id))):
        r = cryo(*argv, store=store)
        assert r.returncode == ExitCode.IMAGE_CORRUPT, (argv, r.returncode, r.stderr)
        assert "corrupt" in r.stderr and str(path) in r.stderr
        assert "Traceback" not in r.stderr
    assert _live_ids(kind) == []  # never half-loaded


@pytest.mark.parametrize("how", ["flip", "truncate", "magic", "empty"])
@pytest.mark.parametrize("kind", ["msg", "sem", "shm"])
def test_corrupt_or_truncated_version_is_refused(tmp_path: Path, kind: str, how: str) -> None:
    in_new_ipc_ns(_corrupt, tmp_path / "store", kind, how)


def _set_save(store: Path) -> dict[str, int]:
    Path("/proc/sys/kernel/msgmax").write_text("20000")
    Path("/proc/sys/kernel/msgmnb").write_text("65536")
    q1 = sysv.msgget(0x100, sysv.IPC.CREAT | 0o600)
    # it needs the saved msgmax (and msgmnb) in the new namespace
    sysv.msgsnd(q1, 1, b"y" * 20000, sysv.IPC.NOWAIT)
    with_key = sysv.msgget(0x200, sysv.IPC.CREAT | 0o600)
    s = sysv.semget(0x100, 3, sysv.IPC.CREAT | 0o600)
    sysv.sem_setall(s, [1, 2, 3])
    m = sysv.shmget(0, 4096, 0o600)
    ds = sysv.shm_stat(m)
    ds.shm_perm.uid = 4000
    sysv.shmctl(m, sysv.IPC_CMD.SET, ds)

    r = cryo("ipc", "save", "--all", store=store)
    assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
    r = cryo("ipc", "save", "--all", "--key", "0x100", store=store)
    assert (r.returncode, r.stdout) == (0, "2\n"), r.stderr
    r = cryo("ipc", "save", "--all", "--owner", "4000", store=store)
    assert (r.returncode, r.stdout) == (0, "3\n"), r.stderr
    r = cryo("ipc", "show", "set", "2", store=store)
    assert r.returncode == 0, r.stderr
    kinds = [line.split()[0] for line in r.stdout.splitlines()]
    assert sorted(k for k in kinds if k in ("msg", "sem", "shm")) == ["msg", "sem"]
    assert "kernel.msgmax = 20000" in r.stdout
    r = cryo("ipc", "show", "set", "3", store=store)
    assert [line.split()[0] for line in r.stdout.splitlines() if line.startswith("shm")] == ["shm"]
    return {"q1": q1, "with_key": with_key, "s": s, "m": m}


def _set_load(store: Path, ids: dict[str, int]) -> None:
    # without the saved limits, the long message does not fit: refused, nothing created
    r = cryo("ipc", "load", "--all", "1", store=store)
    assert r.returncode == ExitCode.ERROR and "msgmax" in r.stderr, r.stderr
    assert _live_ids("msg") == _live_ids("sem") == _live_ids("shm") == []
    r = cryo("ipc", "load", "--all", "1", "--sysctl", store=store)
    assert r.returncode == 0, r.stderr
    assert sorted(map(int, _live_ids("msg"))) == sorted([ids["q1"], ids["with_key"]])
    assert _live_ids("sem") == [str(ids["s"])] and _live_ids("shm") == [str(ids["m"])]
    assert sysv.sem_getall(ids["s"], 3) == [1, 2, 3]
    assert sysv.shm_stat(ids["m"]).shm_perm.uid == 4000
    # again: every id is taken, refused before anything is created; --replace works
    r = cryo("ipc", "load", "--all", "1", store=store)
    assert r.returncode == ExitCode.CONFLICT
    r = cryo("ipc", "load", "--all", "1", "--replace", store=store)
    assert r.returncode == 0, r.stderr


def _set_all_or_nothing(store: Path, ids: dict[str, int]) -> None:
    Path("/proc/sys/kernel/msgmax").write_text("20000")
    Path("/proc/sys/kernel/msgmnb").write_text("65536")
    Path("/proc/sys/kernel/msgmni").write_text("1")  # room for one queue: the second fails
    r = cryo("ipc", "load", "--all", "1", store=store)  # two queues, a set, a segment
    assert r.returncode == ExitCode.ERROR, r.stderr
    assert "No space left" in r.stderr
    # the first queue was removed again
    assert _live_ids("msg") == _live_ids("sem") == _live_ids("shm") == []


def test_save_all_and_load_all(tmp_path: Path) -> None:
    ids = in_new_ipc_ns(_set_save, tmp_path / "store")
    in_new_ipc_ns(_set_load, tmp_path / "store", ids)
    in_new_ipc_ns(_set_all_or_nothing, tmp_path / "store", ids)


def test_console_scripts_are_installed() -> None:
    for name in ("krgipcmsg", "krgipcsem", "krgipcshm"):
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not on PATH (pip install -e .)")
        r = cryo("--help", tool=name)
        assert r.returncode == 0 and "-save" in r.stdout and "-load" in r.stdout
