"""Message queues: saved with MSG_COPY (the queue is left as it was), loaded with msgsnd.

File ``msgq<id>_v<version>.bin``, magic ``CRYOMSGQ``::

    META  {format, kind: "msg", id, key, uid, gid, cuid, cgid, mode, saved_at, kernel,
           qnum, cbytes, qbytes, stime, rtime, ctime, lspid, lrpid, msgmax, left_out}
    MSGS  {first: index of its first message, msgs: [[mtype, text], ...]}   (queue order)

The snapshot is the queue as it was when its ``msg_qnum`` was read: messages 0..n-1 are
copied by index.  Senders only append, so they do not move those indices; a receive would,
so the save checks that nothing was received meanwhile (``msg_rtime`` did not change and the
n messages add up to the ``msg_cbytes`` read with n) and starts again if something was.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryo import procfs
from cryo.errors import CryoError, ImageCorrupt, Unsupported
from cryo.image.format import RecordWriter, kind_name, read_file
from cryo.ipc.common import (
    CAP_SYS_RESOURCE,
    Image,
    Loaded,
    Ops,
    Perm,
    check_header,
    clear_the_way,
    create_with_id,
    header,
    meta_int,
    read_sysctl,
    translate,
)
from cryo.ipc.kinds import Kind
from cryo.linux import sysv

log = logging.getLogger(__name__)

KIND = Kind.MSG
MAGIC = b"CRYOMSGQ"
META = b"META"
MSGS = b"MSGS"
BATCH_COUNT = 4096  # messages per MSGS record ...
BATCH_BYTES = 8 << 20  # ... or bytes, whichever comes first
ATTEMPTS = 3
CHECK_EVERY = 4096  # messages between two looks at msg_rtime during a copy
MTYPE_MAX = (1 << 63) - 1
TIME_SLACK = 0.05  # the kernel's seconds (xtime) may lag time.time() by a tick

LEFT_OUT = [
    "processes waiting to send or to receive (the kernel does not show them)",
    "msg_stime, msg_rtime, msg_ctime, msg_lspid, msg_lrpid: the load sets its own",
]


def _stat_any(index: int) -> int:
    return sysv.msgctl(index, sysv.MSG_CMD.STAT_ANY, sysv.msqid64_ds())


def _rmid(ipc_id: int) -> None:
    sysv.msgctl(ipc_id, sysv.IPC_CMD.RMID)


OPS = Ops(KIND, _stat_any, lambda key: sysv.msgget(key, 0), _rmid)


# ---------------------------------------------------------------------------------------------
# save


class _MovedError(Exception):
    """A message was received during the copy: the indices moved."""


def save(ipc_id: int, f: IO[bytes]) -> dict[str, Any]:
    """Write a snapshot of queue ``ipc_id`` to ``f``; return its META."""
    try:
        return _save(ipc_id, f)
    except OSError as err:
        raise translate(err, KIND, ipc_id) from err


def _stat_quiet(ipc_id: int) -> sysv.msqid64_ds:
    """msg_stat, taken when a receive after it is sure to change msg_rtime.

    msg_rtime counts seconds: a receive in the same second as the last one would not show.
    So the stat must be taken in a second later than msg_rtime's (at most a 1 s wait, and
    only right after a receive).
    """
    for _ in range(3):
        before = int(time.time() - TIME_SLACK)
        ds = sysv.msg_stat(ipc_id)
        if ds.msg_qnum == 0 or ds.msg_rtime < before:
            return ds
        time.sleep(max(0.0, before + 1 + 2 * TIME_SLACK - time.time()) + 0.01)
    return ds  # the clock is odd: the byte count still guards the copy


def _save(ipc_id: int, f: IO[bytes]) -> dict[str, Any]:
    msgmax = int(read_sysctl("msgmax"))
    for attempt in range(1, ATTEMPTS + 1):
        ds = _stat_quiet(ipc_id)
        try:
            return _copy(ipc_id, f, ds, msgmax)
        except _MovedError as why:
            log.info("queue %d: %s (attempt %d of %d)", ipc_id, why, attempt, ATTEMPTS)
    raise CryoError(
        f"message queue {ipc_id} was received from during each of {ATTEMPTS} attempts to"
        " save it: stop (or checkpoint) its receivers first",
        resource=f"msg {ipc_id}",
    )


def _copy(ipc_id: int, f: IO[bytes], ds: sysv.msqid64_ds, msgmax: int) -> dict[str, Any]:
    n, cbytes = int(ds.msg_qnum), int(ds.msg_cbytes)
    perm = Perm.from_kernel(ds.msg_perm)
    meta = header(
        KIND, ipc_id, perm, qnum=n, cbytes=cbytes, qbytes=int(ds.msg_qbytes),
        stime=int(ds.msg_stime), rtime=int(ds.msg_rtime), ctime=int(ds.msg_ctime),
        lspid=int(ds.msg_lspid), lrpid=int(ds.msg_lrpid), msgmax=msgmax, left_out=LEFT_OUT,
    )  # fmt: skip
    f.seek(0)
    f.truncate()
    w = RecordWriter(f, MAGIC)
    w.write(META, meta)
    # No message is longer than the whole queue, nor than msgmax (MSG_COPY copies at most that).
    buf = sysv.MsgBuffer(max(0, min(msgmax, cbytes)))
    flags = sysv.IPC.NOWAIT | sysv.MSG.COPY
    batch: list[tuple[int, bytes]] = []
    batch_bytes = total = 0
    for i in range(n):
        try:
            mtype, text = sysv.msgrcv(ipc_id, buf, i, flags)
        except OSError as err:
            if err.errno == errno.ENOMSG:
                raise _MovedError(f"message {i} of {n} is gone") from err
            if err.errno == errno.E2BIG:
                raise _MovedError(f"message {i} is longer than the queue was") from err
            if err.errno == errno.ENOSYS:
                raise Unsupported("msgrcv(MSG_COPY) needs a kernel with CONFIG_CHECKPOINT_RESTORE",
                                  resource=f"msg {ipc_id}") from err  # fmt: skip
            if err.errno == errno.EINVAL and _exists(ipc_id):
                raise CryoError(
                    f"message {i} of queue {ipc_id} is longer than kernel.msgmax={msgmax}, the"
                    " most MSG_COPY copies: raise kernel.msgmax to save this queue",
                    resource=f"msg {ipc_id}",
                ) from err
            raise
        batch.append((mtype, text))
        batch_bytes += len(text)
        total += len(text)
        if len(batch) >= BATCH_COUNT or batch_bytes >= BATCH_BYTES:
            w.write(MSGS, {"first": i + 1 - len(batch), "msgs": batch})
            batch, batch_bytes = [], 0
        if i % CHECK_EVERY == CHECK_EVERY - 1 and sysv.msg_stat(ipc_id).msg_rtime != ds.msg_rtime:
            raise _MovedError("a message was received")
    if batch:
        w.write(MSGS, {"first": n - len(batch), "msgs": batch})
    if sysv.msg_stat(ipc_id).msg_rtime != ds.msg_rtime:
        raise _MovedError("a message was received")
    if total != cbytes:
        raise _MovedError(f"the {n} messages hold {total} bytes, the queue held {cbytes}")
    w.close()
    log.debug("queue %d: %d messages, %d bytes", ipc_id, n, total)
    return meta


def _exists(ipc_id: int) -> bool:
    try:
        sysv.msg_stat(ipc_id)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# read and check


@dataclass
class MsgImage(Image):
    messages: list[tuple[int, bytes]]
    max_size: int


def read(path: Path) -> MsgImage:
    """Read a saved queue and check all of it: nothing is created from a bad file."""
    name = str(path)
    records = read_file(path, MAGIC)
    if not records or records[0].kind != META:
        raise ImageCorrupt(f"image {name} is corrupt: no META record", path=name)
    meta = check_header(records[0].payload, KIND, name)
    perm = Perm.from_meta(meta, name)
    qnum = meta_int(meta, "qnum", name, lo=0)
    cbytes = meta_int(meta, "cbytes", name, lo=0)
    meta_int(meta, "qbytes", name, lo=0)
    messages: list[tuple[int, bytes]] = []
    total = max_size = 0
    for rec in records[1:]:
        p = rec.payload
        if rec.kind != MSGS or rec.raw or not isinstance(p, dict):
            raise ImageCorrupt(f"image {name} is corrupt: unexpected record {kind_name(rec.kind)}",
                               path=name)  # fmt: skip
        if p.get("first") != len(messages) or not isinstance(p.get("msgs"), list):
            raise ImageCorrupt(f"image {name} is corrupt: messages out of order", path=name)
        for m in p["msgs"]:
            if (
                not isinstance(m, list | tuple)
                or len(m) != 2
                or not isinstance(m[0], int)
                or not 1 <= m[0] <= MTYPE_MAX
                or not isinstance(m[1], bytes)
            ):
                raise ImageCorrupt(f"image {name} is corrupt: bad message {len(messages)}",
                                   path=name)  # fmt: skip
            messages.append((m[0], m[1]))
            total += len(m[1])
            max_size = max(max_size, len(m[1]))
    if len(messages) != qnum or total != cbytes:
        raise ImageCorrupt(f"image {name} is corrupt: {len(messages)} messages of {total} bytes,"
                           f" the header says {qnum} of {cbytes}", path=name)  # fmt: skip
    return MsgImage(KIND, path, meta, perm, messages, max_size)


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    return {"messages": meta.get("qnum"), "bytes": meta.get("cbytes"),
            "qbytes": meta.get("qbytes"), "msgmax": meta.get("msgmax")}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# load


def _room(image: MsgImage) -> int:
    """The msg_qbytes the queue needs while it is refilled (it counts messages too)."""
    return max(int(image.meta["qbytes"]), int(image.meta["cbytes"]), len(image.messages))


def check_fits(image: MsgImage) -> None:
    """Refuse, before creating anything, what this namespace's limits would refuse."""
    msgmax = int(read_sysctl("msgmax"))
    if image.max_size > msgmax:
        raise CryoError(
            f"{image.path}: a message of {image.max_size} bytes is longer than kernel.msgmax="
            f"{msgmax} of this IPC namespace; raise it (sysctl kernel.msgmax={image.max_size})",
            resource=f"msg {image.id}",
        )
    msgmnb, room = int(read_sysctl("msgmnb")), _room(image)
    if room > msgmnb and not procfs.has_capability(CAP_SYS_RESOURCE):
        raise CryoError(
            f"{image.path}: the queue needs msg_qbytes={room}, more than kernel.msgmnb={msgmnb}"
            " of this IPC namespace, which only CAP_SYS_RESOURCE may exceed; raise it"
            f" (sysctl kernel.msgmnb={room})",
            resource=f"msg {image.id}",
        )


def load(image: MsgImage, *, replace: bool = False) -> Loaded:
    check_fits(image)
    want = image.id
    try:
        notes = clear_the_way(OPS, want, image.perm.key, replace=replace)
        new = create_with_id(OPS, want, image.perm, sysv.msgget)
    except OSError as err:
        raise translate(err, KIND, want) from err
    try:
        _fill(new, image)
    except BaseException as err:
        _rmid(new)
        if isinstance(err, OSError):
            raise translate(err, KIND, new) from err
        raise
    return Loaded(KIND, new, image.perm.key, notes=notes)


def _fill(ipc_id: int, image: MsgImage) -> None:
    qbytes, room = int(image.meta["qbytes"]), _room(image)
    ds = sysv.msg_stat(ipc_id)
    if room > ds.msg_qbytes:  # the queue must hold every message while it is refilled
        ds.msg_qbytes = room
        sysv.msgctl(ipc_id, sysv.IPC_CMD.SET, ds)
    buf = sysv.MsgBuffer(image.max_size)
    for mtype, text in image.messages:
        sysv.msgsnd(ipc_id, mtype, text, sysv.IPC.NOWAIT, buf)
    ds = sysv.msg_stat(ipc_id)
    image.perm.apply(ds.msg_perm)
    ds.msg_qbytes = qbytes
    sysv.msgctl(ipc_id, sysv.IPC_CMD.SET, ds)
