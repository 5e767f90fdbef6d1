"""System V IPC: message queues, semaphore sets and shared memory segments (x86_64).

Raw syscalls, not glibc's wrappers: glibc's ``semctl`` is variadic and its ``*ctl`` wrappers
translate the structs, while the kernel ABI below is fixed.  Every function keeps its C name
and raises ``OSError(errno, "... [call id=N]")`` on failure.

Sources: include/uapi/linux/ipc.h, include/uapi/linux/msg.h, include/uapi/linux/sem.h,
include/uapi/linux/shm.h, include/uapi/asm-generic/ipcbuf.h, include/uapi/asm-generic/msgbuf.h,
arch/x86/include/uapi/asm/sembuf.h, include/uapi/asm-generic/shmbuf.h,
arch/x86/entry/syscalls/syscall_64.tbl, ipc/msg.c (MSG_COPY), ipc/util.c (*_next_id).
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cryo.linux.libc import _check, libc, mincore

c_int = ctypes.c_int32
c_uint = ctypes.c_uint32
c_ushort = ctypes.c_uint16
c_short = ctypes.c_int16
c_long = ctypes.c_int64
c_ulong = ctypes.c_uint64

# ---------------------------------------------------------------------------------------------
# constants, one class per C prefix


class SYS_IPC(enum.IntEnum):
    """System call numbers (arch/x86/entry/syscalls/syscall_64.tbl)."""

    madvise = 28
    shmget = 29
    shmat = 30
    shmctl = 31
    semget = 64
    semop = 65
    semctl = 66
    shmdt = 67
    msgget = 68
    msgsnd = 69
    msgrcv = 70
    msgctl = 71
    mincore = 27
    semtimedop = 220
    unshare = 272


IPC_PRIVATE = 0  # include/uapi/linux/ipc.h: ((__kernel_key_t) 0)
IPCMNI_SHIFT = 15  # ipc/util.h: IPCMNI = 1 << 15 unless booted with ipcmni_extend (then 24)
CLONE_NEWIPC = 0x08000000  # include/uapi/linux/sched.h


class IPC(enum.IntFlag):
    """include/uapi/linux/ipc.h: flags of the *get calls and ``IPC_NOWAIT``."""

    CREAT = 0o1000
    EXCL = 0o2000
    NOWAIT = 0o4000


class IPC_CMD(enum.IntEnum):
    """include/uapi/linux/ipc.h: commands common to msgctl, semctl and shmctl."""

    RMID = 0
    SET = 1
    STAT = 2
    INFO = 3


class MSG(enum.IntFlag):
    """include/uapi/linux/msg.h: msgrcv flags."""

    NOERROR = 0o10000
    EXCEPT = 0o20000
    COPY = 0o40000  # needs CONFIG_CHECKPOINT_RESTORE; msgtyp is then the message's index


class MSG_CMD(enum.IntEnum):
    """include/uapi/linux/msg.h: msgctl commands."""

    STAT = 11
    INFO = 12
    STAT_ANY = 13


class SEM(enum.IntEnum):
    """include/uapi/linux/sem.h: semctl commands."""

    GETPID = 11
    GETVAL = 12
    GETALL = 13
    GETNCNT = 14
    GETZCNT = 15
    SETVAL = 16
    SETALL = 17
    STAT = 18
    INFO = 19
    STAT_ANY = 20


SEM_UNDO = 0x1000  # include/uapi/linux/sem.h (sem_flg)
SEMVMX = 32767  # include/uapi/linux/sem.h: the largest semaphore value


class SHM(enum.IntFlag):
    """include/uapi/linux/shm.h: shmget and shmat flags, and the mode bits of a segment."""

    HUGETLB = 0o4000  # shmget
    NORESERVE = 0o10000  # shmget
    RDONLY = 0o10000  # shmat
    RND = 0o20000  # shmat
    REMAP = 0o40000  # shmat
    EXEC = 0o100000  # shmat
    DEST = 0o1000  # shm_perm.mode: IPC_RMID done, destroyed on the last detach
    LOCKED = 0o2000  # shm_perm.mode: SHM_LOCK done


class SHM_CMD(enum.IntEnum):
    """include/uapi/linux/shm.h: shmctl commands."""

    LOCK = 11
    UNLOCK = 12
    STAT = 13
    INFO = 14
    STAT_ANY = 15


class MADV(enum.IntEnum):
    """include/uapi/asm-generic/mman-common.h"""

    POPULATE_READ = 22
    POPULATE_WRITE = 23


# ---------------------------------------------------------------------------------------------
# structs, named and ordered as the kernel does


class ipc64_perm(ctypes.Structure):
    """include/uapi/asm-generic/ipcbuf.h: 48 bytes (x86 includes the generic one)."""

    _fields_ = [
        ("key", c_int),  # __kernel_key_t
        ("uid", c_uint),  # __kernel_uid32_t
        ("gid", c_uint),
        ("cuid", c_uint),
        ("cgid", c_uint),
        ("mode", c_uint),  # __kernel_mode_t is unsigned int: __pad1[] is empty
        ("seq", c_ushort),
        ("__pad2", c_ushort),
        ("__unused1", c_ulong),
        ("__unused2", c_ulong),
    ]


class msqid64_ds(ctypes.Structure):
    """include/uapi/asm-generic/msgbuf.h (64-bit longs): 120 bytes."""

    _fields_ = [
        ("msg_perm", ipc64_perm),
        ("msg_stime", c_long),  # last msgsnd time
        ("msg_rtime", c_long),  # last msgrcv time
        ("msg_ctime", c_long),  # last change time
        ("msg_cbytes", c_ulong),  # bytes on the queue
        ("msg_qnum", c_ulong),  # messages on the queue
        ("msg_qbytes", c_ulong),  # the most bytes (and messages) the queue holds
        ("msg_lspid", c_int),  # pid of the last msgsnd
        ("msg_lrpid", c_int),  # pid of the last msgrcv
        ("__unused4", c_ulong),
        ("__unused5", c_ulong),
    ]


class semid64_ds(ctypes.Structure):
    """arch/x86/include/uapi/asm/sembuf.h (x86_64 branch): 104 bytes."""

    _fields_ = [
        ("sem_perm", ipc64_perm),
        ("sem_otime", c_long),  # last semop time
        ("__unused1", c_ulong),
        ("sem_ctime", c_long),  # last change time
        ("__unused2", c_ulong),
        ("sem_nsems", c_ulong),
        ("__unused3", c_ulong),
        ("__unused4", c_ulong),
    ]


class shmid64_ds(ctypes.Structure):
    """include/uapi/asm-generic/shmbuf.h (64-bit longs): 112 bytes."""

    _fields_ = [
        ("shm_perm", ipc64_perm),
        ("shm_segsz", ctypes.c_size_t),
        ("shm_atime", c_long),
        ("shm_dtime", c_long),
        ("shm_ctime", c_long),
        ("shm_cpid", c_int),
        ("shm_lpid", c_int),
        ("shm_nattch", c_ulong),
        ("__unused4", c_ulong),
        ("__unused5", c_ulong),
    ]


class msginfo(ctypes.Structure):
    """include/uapi/linux/msg.h (IPC_INFO, MSG_INFO): 32 bytes."""

    _fields_ = [
        ("msgpool", c_int),
        ("msgmap", c_int),
        ("msgmax", c_int),
        ("msgmnb", c_int),
        ("msgmni", c_int),
        ("msgssz", c_int),
        ("msgtql", c_int),
        ("msgseg", c_ushort),
    ]


class seminfo(ctypes.Structure):
    """include/uapi/linux/sem.h (IPC_INFO, SEM_INFO): 40 bytes."""

    _fields_ = [
        ("semmap", c_int),
        ("semmni", c_int),
        ("semmns", c_int),
        ("semmnu", c_int),
        ("semmsl", c_int),
        ("semopm", c_int),
        ("semume", c_int),
        ("semusz", c_int),
        ("semvmx", c_int),
        ("semaem", c_int),
    ]


class shm_info(ctypes.Structure):
    """include/uapi/linux/shm.h (SHM_INFO): 48 bytes."""

    _fields_ = [
        ("used_ids", c_int),
        ("shm_tot", c_ulong),  # pages
        ("shm_rss", c_ulong),
        ("shm_swp", c_ulong),
        ("swap_attempts", c_ulong),
        ("swap_successes", c_ulong),
    ]


class sembuf(ctypes.Structure):
    """include/uapi/linux/sem.h: 6 bytes."""

    _fields_ = [("sem_num", c_ushort), ("sem_op", c_short), ("sem_flg", c_short)]


MSGBUF_HEADER = ctypes.sizeof(c_long)  # struct msgbuf { long mtype; char mtext[]; }

# ---------------------------------------------------------------------------------------------
# calls

_syscall = libc.syscall  # prototype set in cryo.linux.libc (restype c_long, variadic)


def _sys(nr: SYS_IPC, what: str, *args: int) -> int:
    return _check(int(_syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])), what)


def _addr(obj: ctypes._CData | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


def unshare_ipc() -> None:
    """unshare(CLONE_NEWIPC): give this process a new, empty IPC namespace."""
    _sys(SYS_IPC.unshare, "unshare CLONE_NEWIPC", CLONE_NEWIPC)


# message queues


def msgget(key: int, msgflg: int) -> int:
    return _sys(SYS_IPC.msgget, f"msgget key={key & 0xFFFFFFFF:#x}", key, msgflg)


def msgctl(msqid: int, cmd: int, buf: msqid64_ds | msginfo | None = None) -> int:
    return _sys(SYS_IPC.msgctl, f"msgctl {_cmd_name(cmd, MSG_CMD)} id={msqid}", msqid, cmd,
                _addr(buf))  # fmt: skip


def msg_stat(msqid: int) -> msqid64_ds:
    ds = msqid64_ds()
    msgctl(msqid, IPC_CMD.STAT, ds)
    return ds


class MsgBuffer:
    """A reusable ``struct msgbuf`` able to hold ``size`` bytes of text."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = ctypes.create_string_buffer(MSGBUF_HEADER + size)
        self.view = memoryview(self.buf).cast("B")

    def mtype(self) -> int:
        return int.from_bytes(self.view[:MSGBUF_HEADER], "little", signed=True)

    def text(self, n: int) -> bytes:
        return self.view[MSGBUF_HEADER : MSGBUF_HEADER + n].tobytes()


def msgsnd(msqid: int, mtype: int, text: bytes | bytearray | memoryview, msgflg: int = 0,
           buf: MsgBuffer | None = None) -> None:  # fmt: skip
    """Send one message; ``buf`` (big enough for ``text``) avoids an allocation per call."""
    n = len(text)
    if buf is None or buf.size < n:
        buf = MsgBuffer(n)
    buf.view[:MSGBUF_HEADER] = mtype.to_bytes(MSGBUF_HEADER, "little", signed=True)
    buf.view[MSGBUF_HEADER : MSGBUF_HEADER + n] = text
    _sys(SYS_IPC.msgsnd, f"msgsnd id={msqid} type={mtype} size={n}", msqid, _addr(buf.buf), n,
         msgflg)  # fmt: skip


def msgrcv(msqid: int, buf: MsgBuffer, msgtyp: int, msgflg: int) -> tuple[int, bytes]:
    """Receive (or, with MSG_COPY, copy the ``msgtyp``-th) message: (mtype, text)."""
    n = _sys(SYS_IPC.msgrcv, f"msgrcv id={msqid} type={msgtyp}", msqid, _addr(buf.buf), buf.size,
             msgtyp, msgflg)  # fmt: skip
    return buf.mtype(), buf.text(n)


# semaphore sets


def semget(key: int, nsems: int, semflg: int) -> int:
    return _sys(SYS_IPC.semget, f"semget key={key & 0xFFFFFFFF:#x}", key, nsems, semflg)


def semctl(semid: int, semnum: int, cmd: int, arg: int | ctypes._CData | None = 0) -> int:
    """``arg`` is the union semun: an int for SETVAL, otherwise a buffer (or None)."""
    a = arg if isinstance(arg, int) else _addr(arg)
    return _sys(SYS_IPC.semctl, f"semctl {_cmd_name(cmd, SEM, IPC_CMD)} id={semid} num={semnum}",
                semid, semnum, cmd, a)  # fmt: skip


def sem_stat(semid: int) -> semid64_ds:
    ds = semid64_ds()
    semctl(semid, 0, IPC_CMD.STAT, ds)
    return ds


def sem_getall(semid: int, nsems: int) -> list[int]:
    arr = (c_ushort * max(nsems, 1))()
    semctl(semid, 0, SEM.GETALL, arr)
    return list(arr[:nsems])


def sem_setall(semid: int, values: Sequence[int]) -> None:
    arr = (c_ushort * max(len(values), 1))(*values)
    semctl(semid, 0, SEM.SETALL, arr)


def semop(semid: int, sops: Sequence[tuple[int, int, int]]) -> None:
    arr = (sembuf * len(sops))(*[sembuf(n, op, flg) for n, op, flg in sops])
    _sys(SYS_IPC.semop, f"semop id={semid}", semid, _addr(arr), len(sops))


# shared memory


def shmget(key: int, size: int, shmflg: int) -> int:
    return _sys(SYS_IPC.shmget, f"shmget key={key & 0xFFFFFFFF:#x}", key, size, shmflg)


def shmctl(shmid: int, cmd: int, buf: shmid64_ds | shm_info | None = None) -> int:
    return _sys(SYS_IPC.shmctl, f"shmctl {_cmd_name(cmd, SHM_CMD, IPC_CMD)} id={shmid}", shmid,
                cmd, _addr(buf))  # fmt: skip


def shm_stat(shmid: int) -> shmid64_ds:
    ds = shmid64_ds()
    shmctl(shmid, IPC_CMD.STAT, ds)
    return ds


def shmat(shmid: int, shmaddr: int, shmflg: int) -> int:
    return _sys(SYS_IPC.shmat, f"shmat id={shmid}", shmid, shmaddr, shmflg)


def shmdt(shmaddr: int) -> None:
    _sys(SYS_IPC.shmdt, f"shmdt addr={shmaddr:#x}", shmaddr)


def madvise(addr: int, length: int, advice: int) -> None:
    _sys(SYS_IPC.madvise, f"madvise {addr:#x}+{length:#x} {advice}", addr, length, advice)


@contextmanager
def shm_attached(shmid: int, size: int, *, readonly: bool) -> Iterator[tuple[int, memoryview]]:
    """Attach a segment for the duration of the block: (address, a view of its ``size`` bytes).

    The view is released before the detach; the caller must not keep slices of it.
    """
    addr = shmat(shmid, 0, SHM.RDONLY if readonly else 0)
    try:
        arr = (ctypes.c_char * size).from_address(addr)
        with memoryview(arr) as mv, mv.cast("B") as view:
            if readonly:
                with view.toreadonly() as ro:
                    yield addr, ro
            else:
                yield addr, view
    finally:
        shmdt(addr)


def _cmd_name(cmd: int, *enums: type[enum.IntEnum]) -> str:
    candidates: tuple[type[enum.IntEnum], ...] = (*enums, IPC_CMD)
    for e in candidates:
        try:
            return str(e(cmd).name)
        except ValueError:
            continue
    return str(cmd)


__all__ = [
    "CLONE_NEWIPC",
    "IPC",
    "IPCMNI_SHIFT",
    "IPC_CMD",
    "IPC_PRIVATE",
    "MADV",
    "MSG",
    "MSGBUF_HEADER",
    "MSG_CMD",
    "SEM",
    "SEMVMX",
    "SEM_UNDO",
    "SHM",
    "SHM_CMD",
    "SYS_IPC",
    "MsgBuffer",
    "ipc64_perm",
    "madvise",
    "mincore",
    "msg_stat",
    "msgctl",
    "msgget",
    "msginfo",
    "msgrcv",
    "msgsnd",
    "msqid64_ds",
    "sem_getall",
    "sem_setall",
    "sem_stat",
    "sembuf",
    "semctl",
    "semget",
    "semid64_ds",
    "seminfo",
    "semop",
    "shm_attached",
    "shm_info",
    "shm_stat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shmid64_ds",
    "unshare_ipc",
]
