"""Message queues saved and loaded for real, each scenario in its own IPC namespace."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cryo.ipc
from cryo.errors import CryoError, RestoreConflict
from cryo.ipc import msg as msgmod
from cryo.ipc.common import as_creator
from cryo.linux import sysv

from .ipc_ns import in_new_ipc_ns, join, root_ns_objects, spawn, stop


@pytest.fixture(autouse=True)
def _nothing_leaks() -> Iterator[None]:
    before = root_ns_objects()
    yield
    assert root_ns_objects() == before


def _drain(q: int) -> list[tuple[int, bytes]]:
    buf = sysv.MsgBuffer(int(Path("/proc/sys/kernel/msgmax").read_text()))
    out = []
    while True:
        try:
            out.append(sysv.msgrcv(q, buf, 0, sysv.IPC.NOWAIT))
        except OSError:
            return out


def _fill(q: int, n: int, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    msgmax = int(Path("/proc/sys/kernel/msgmax").read_text())
    sizes = [0, msgmax, 1, msgmax - 1]
    msgs = []
    buf = sysv.MsgBuffer(msgmax)
    for i in range(n):
        choices = (0, 1, 7, 100, 1000, msgmax, rng.randrange(msgmax))
        size = sizes[i] if i < len(sizes) else rng.choice(choices)
        mtype = rng.choice((1, 2, 3, 1000, (1 << 63) - 1))
        text = rng.randbytes(size)
        sysv.msgsnd(q, mtype, text, sysv.IPC.NOWAIT, buf)
        msgs.append((mtype, text))
    return msgs


def _raise_msgmnb() -> None:
    # IPC_SET of msg_qbytes above kernel.msgmnb needs CAP_SYS_RESOURCE, which root may
    # lack (it does on the CI machine); the namespace's own limit can be raised instead.
    Path("/proc/sys/kernel/msgmnb").write_text(str(1 << 30))


def _big_queue(key: int, mode: int = 0o640) -> int:
    _raise_msgmnb()
    q = sysv.msgget(key, sysv.IPC.CREAT | mode)
    ds = sysv.msg_stat(q)
    ds.msg_qbytes = 1 << 30
    sysv.msgctl(q, sysv.IPC_CMD.SET, ds)
    return q


def _ten_thousand(store: Path) -> None:
    q = _big_queue(0x1234ABCD)
    q2 = _big_queue(0)  # a second queue so that the first does not have id 0... and private
    sent = _fill(q, 10_000, seed=1)
    ds = sysv.msg_stat(q)
    ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode = 1234, 5678, 0o604
    ds.msg_qbytes = 50 << 20
    sysv.msgctl(q, sysv.IPC_CMD.SET, ds)
    before = sysv.msg_stat(q)

    v1 = cryo.ipc.save("msg", q, store=store)
    assert v1.version == 1
    # saving did not disturb the queue
    after = sysv.msg_stat(q)
    assert (after.msg_qnum, after.msg_cbytes, after.msg_rtime) == (10_000, before.msg_cbytes, 0)
    desc = cryo.ipc.show("msg", q, store=store)
    assert desc.counts["messages"] == 10_000
    assert desc.perm.key == 0x1234ABCD
    assert any("waiting" in s for s in desc.left_out)

    # a second version, with one message fewer
    assert sysv.msgrcv(q, sysv.MsgBuffer(1 << 16), 0, sysv.IPC.NOWAIT) == sent[0]
    v2 = cryo.ipc.save("msg", q, store=store)
    assert v2.version == 2
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    sysv.msgctl(q2, sysv.IPC_CMD.RMID)

    # the latest version
    loaded = cryo.ipc.load("msg", q, store=store)
    assert (loaded.id, loaded.version) == (q, 2)
    assert _drain(q) == sent[1:]
    sysv.msgctl(q, sysv.IPC_CMD.RMID)

    # the older one: everything as it was
    loaded = cryo.ipc.load("msg", q, 1, store=store)
    assert loaded.id == q
    ds = sysv.msg_stat(q)
    p = ds.msg_perm
    assert (p.key, p.uid, p.gid, p.mode & 0o777) == (0x1234ABCD, 1234, 5678, 0o604)
    assert (p.cuid, p.cgid) == (before.msg_perm.cuid, before.msg_perm.cgid)
    assert ds.msg_qbytes == 50 << 20
    assert (ds.msg_qnum, ds.msg_cbytes) == (10_000, before.msg_cbytes)
    assert sysv.msgget(0x1234ABCD, 0) == q
    assert _drain(q) == sent


def test_ten_thousand_messages_versions_and_attributes(tmp_path: Path) -> None:
    in_new_ipc_ns(_ten_thousand, tmp_path)


def _fresh_namespace_save(store: Path) -> int:
    for _ in range(3):  # move the id away from 0
        sysv.msgctl(sysv.msgget(0, 0o600), sysv.IPC_CMD.RMID)
    with as_creator(4321, 8765):
        q = sysv.msgget(0x51, sysv.IPC.CREAT | 0o600)
    sysv.msgsnd(q, 5, b"hello")
    cryo.ipc.save("msg", q, store=store)
    return q


def _fresh_namespace_load(store: Path, q: int) -> None:
    loaded = cryo.ipc.load("msg", q, store=store)
    assert loaded.id == q
    p = sysv.msg_stat(q).msg_perm
    assert (p.key, p.cuid, p.cgid, p.uid, p.gid) == (0x51, 4321, 8765, 4321, 8765)
    assert _drain(q) == [(5, b"hello")]


def test_load_into_a_fresh_namespace_keeps_id_and_creator(tmp_path: Path) -> None:
    q = in_new_ipc_ns(_fresh_namespace_save, tmp_path)
    assert q != 0
    in_new_ipc_ns(_fresh_namespace_load, tmp_path, q)


def _senders_during_save(store: Path) -> None:
    q = _big_queue(0x5E)
    ds = sysv.msg_stat(q)
    ds.msg_qbytes = 200_000  # about 25,000 short messages: the senders block there
    sysv.msgctl(q, sysv.IPC_CMD.SET, ds)
    buf = sysv.MsgBuffer(64)
    pre = [(1, b"pre %d" % i) for i in range(5000)]
    for mtype, text in pre:  # something to copy while the senders go on
        sysv.msgsnd(q, mtype, text, 0, buf)

    def sender(tag: int) -> None:
        b = sysv.MsgBuffer(64)
        i = 0
        while True:
            sysv.msgsnd(q, 2 + tag, b"%d %d" % (tag, i), 0, b)
            i += 1
            if i % 10 == 0:
                time.sleep(0.001)

    senders = [spawn(lambda t=t: sender(t)) for t in range(2)]  # type: ignore[misc]
    try:
        time.sleep(0.05)
        saved = [cryo.ipc.save("msg", q, store=store) for _ in range(2)]
    finally:
        for pid in senders:
            stop(pid, signal.SIGKILL)
    live = _drain(q)
    assert live[:5000] == pre
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    sizes = []
    for s in saved:
        cryo.ipc.load("msg", q, s.version, store=store)
        snap = _drain(q)
        sysv.msgctl(q, sysv.IPC_CMD.RMID)
        # a prefix of the live queue: nothing lost, nothing twice, nothing reordered
        assert snap == live[: len(snap)]
        for tag in range(2):
            seq = [int(t.split()[1]) for m, t in snap if m == 2 + tag]
            assert seq == list(range(len(seq)))
        sizes.append(len(snap))
    assert 5000 < sizes[0] <= sizes[1] <= len(live)
    assert sizes[0] < len(live)  # the senders went on during the first save


def test_concurrent_senders_during_save(tmp_path: Path) -> None:
    in_new_ipc_ns(_senders_during_save, tmp_path)


def _receive_during_save(store: Path) -> None:
    q = _big_queue(0x5F)
    for i in range(100):
        sysv.msgsnd(q, 1, b"m%d" % i)
    real = sysv.msgrcv
    calls = 0

    def receive_one() -> None:
        real(q, sysv.MsgBuffer(64), 0, sysv.IPC.NOWAIT)

    def racing(ipc_id: int, buf: sysv.MsgBuffer, typ: int, flags: int) -> tuple[int, bytes]:
        nonlocal calls
        calls += 1
        if calls == 50:  # another process receives message 0 in the middle of the copy
            assert join(spawn(receive_one)) == 0
        return real(ipc_id, buf, typ, flags)

    msgmod.sysv.msgrcv = racing  # type: ignore[assignment]  (this child only)
    try:
        saved = cryo.ipc.save("msg", q, store=store)
    finally:
        msgmod.sysv.msgrcv = real  # type: ignore[assignment]
    assert calls > 100  # it started again
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    cryo.ipc.load("msg", q, saved.version, store=store)
    assert _drain(q) == [(1, b"m%d" % i) for i in range(1, 100)]


def test_a_receive_during_save_is_seen_and_the_copy_starts_again(tmp_path: Path) -> None:
    in_new_ipc_ns(_receive_during_save, tmp_path)


def _conflicts(store: Path) -> None:
    q = sysv.msgget(0x77, sysv.IPC.CREAT | 0o600)
    sysv.msgsnd(q, 1, b"saved")
    cryo.ipc.save("msg", q, store=store)
    sysv.msgsnd(q, 1, b"later")
    # the id is taken
    with pytest.raises(RestoreConflict, match="in use"):
        cryo.ipc.load("msg", q, store=store)
    assert sysv.msg_stat(q).msg_qnum == 2  # untouched
    # the key is taken by another queue
    sysv.msgctl(q, sysv.IPC_CMD.RMID)
    other = sysv.msgget(0x77, sysv.IPC.CREAT | 0o600)
    assert other != q
    with pytest.raises(RestoreConflict, match="key 0x77"):
        cryo.ipc.load("msg", q, store=store)
    assert sysv.msgget(0x77, 0) == other
    # --replace removes what is in the way
    loaded = cryo.ipc.load("msg", q, store=store, replace=True)
    assert loaded.id == q
    assert any("replaced" in n for n in loaded.notes)
    assert _drain(q) == [(1, b"saved")]
    with pytest.raises(OSError):
        sysv.msg_stat(other)


def test_id_or_key_in_use_is_refused_unless_replace(tmp_path: Path) -> None:
    in_new_ipc_ns(_conflicts, tmp_path)


def _bigger_than_msgmax(store: Path) -> None:
    Path("/proc/sys/kernel/msgmax").write_text("65536")
    q = _big_queue(0)
    sysv.msgsnd(q, 1, b"x" * 65536)
    cryo.ipc.save("msg", q, store=store)


def _refused_when_msgmax_is_smaller(store: Path) -> None:
    assert Path("/proc/sys/kernel/msgmax").read_text().strip() == "8192"
    with pytest.raises(CryoError, match=r"msgmax"):
        cryo.ipc.load("msg", 0, store=store)
    assert cryo.ipc.live("msg") == []


def test_message_longer_than_msgmax_of_the_new_namespace(tmp_path: Path) -> None:
    in_new_ipc_ns(_bigger_than_msgmax, tmp_path)
    in_new_ipc_ns(_refused_when_msgmax_is_smaller, tmp_path)
