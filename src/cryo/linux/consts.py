"""Kernel constants as IntEnum/IntFlag, one class per C prefix (x86_64 values).

Sources: include/uapi/linux/ptrace.h, include/uapi/linux/elf.h,
arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/mman-common.h,
include/uapi/linux/prctl.h, include/uapi/linux/fs.h (PAGEMAP_SCAN).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T", bound=type)

# ``@fast_enum(enum.IntEnum) class X(IntEnumBase)``: what the type checker sees is the
# plain ``class X(enum.IntEnum)``, and so is what the decorator makes
if TYPE_CHECKING:
    IntEnumBase = enum.IntEnum
    IntFlagBase = enum.IntFlag
else:
    IntEnumBase = IntFlagBase = object


def fast_enum(base: type[enum.Enum]) -> Callable[[_T], _T]:
    """``class X(base)``, made the way the standard library makes its own enums
    (enum._simple_enum): the same members, types and behaviour (checked member by member
    against the plain classes), a few times faster to create; every cryo command imports
    these ~300 members first (issue 16, start-up)."""
    simple = getattr(enum, "_simple_enum", None)

    def make(cls: _T) -> _T:
        members = {k: v for k, v in vars(cls).items() if not k.startswith("_")}
        if simple is None:  # a Python without it: the plain way
            plain: Any = base
            return plain(cls.__name__, members, module=cls.__module__,  # type: ignore[no-any-return]
                         qualname=cls.__qualname__)
        extra = {"boundary": enum.KEEP} if issubclass(base, enum.Flag) else {}
        return simple(base, **extra)(cls)  # type: ignore[no-any-return]

    return make

PAGE_SIZE = 4096
NSIG = 64  # signals 1..64


@fast_enum(enum.IntEnum)
class PTRACE(IntEnumBase):
    TRACEME = 0
    PEEKTEXT = 1
    PEEKDATA = 2
    POKEDATA = 5
    CONT = 7
    KILL = 8
    SINGLESTEP = 9
    GETREGS = 12
    SETREGS = 13
    ATTACH = 16
    DETACH = 17
    SYSCALL = 24
    SETOPTIONS = 0x4200
    GETEVENTMSG = 0x4201
    GETSIGINFO = 0x4202
    SETSIGINFO = 0x4203
    GETREGSET = 0x4204
    SETREGSET = 0x4205
    SEIZE = 0x4206
    INTERRUPT = 0x4207
    LISTEN = 0x4208
    PEEKSIGINFO = 0x4209
    GETSIGMASK = 0x420A
    SETSIGMASK = 0x420B
    SECCOMP_GET_FILTER = 0x420C
    SECCOMP_GET_METADATA = 0x420D
    GET_SYSCALL_INFO = 0x420E
    GET_RSEQ_CONFIGURATION = 0x420F


@fast_enum(enum.IntFlag)
class PTRACE_O(IntFlagBase):
    TRACESYSGOOD = 1
    TRACEFORK = 2
    TRACEVFORK = 4
    TRACECLONE = 8
    TRACEEXEC = 0x10
    TRACEVFORKDONE = 0x20
    TRACEEXIT = 0x40
    TRACESECCOMP = 0x80
    EXITKILL = 0x100000
    SUSPEND_SECCOMP = 0x200000


@fast_enum(enum.IntEnum)
class PTRACE_EVENT(IntEnumBase):
    FORK = 1
    VFORK = 2
    CLONE = 3
    EXEC = 4
    VFORK_DONE = 5
    EXIT = 6
    SECCOMP = 7
    STOP = 128


PTRACE_PEEKSIGINFO_SHARED = 1


@fast_enum(enum.IntEnum)
class PTRACE_SYSCALL_INFO(IntEnumBase):
    NONE = 0
    ENTRY = 1
    EXIT = 2
    SECCOMP = 3


@fast_enum(enum.IntEnum)
class NT(IntEnumBase):
    PRSTATUS = 1
    PRFPREG = 2
    X86_XSTATE = 0x202


@fast_enum(enum.IntEnum)
class SYS(IntEnumBase):
    read = 0
    write = 1
    open = 2
    close = 3
    lseek = 8
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    mremap = 25
    rt_sigaction = 13
    rt_sigprocmask = 14
    ioctl = 16
    madvise = 28
    shmat = 30
    shmctl = 31
    dup2 = 33
    nanosleep = 35
    getitimer = 36
    setitimer = 38
    getpid = 39
    clone = 56
    fork = 57
    shmdt = 67
    exit = 60
    wait4 = 61
    kill = 62
    fcntl = 72
    flock = 73
    chdir = 80
    fchdir = 81
    umask = 95
    ptrace = 101
    setpgid = 109
    getppid = 110
    setsid = 112
    setpriority = 141
    getpriority = 140
    sched_setparam = 142
    sched_getparam = 143
    sched_setscheduler = 144
    sched_getscheduler = 145
    mlockall = 151
    munlockall = 152
    modify_ldt = 154
    capget = 125
    capset = 126
    set_mempolicy = 238
    get_mempolicy = 239
    sched_setaffinity = 203
    sched_getaffinity = 204
    ioprio_set = 251
    ioprio_get = 252
    sched_setattr = 314
    sched_getattr = 315
    seccomp = 317
    membarrier = 324
    setresuid = 117
    setresgid = 119
    setgroups = 116
    setfsuid = 122
    setfsgid = 123
    rt_sigqueueinfo = 129
    sigaltstack = 131
    personality = 135
    prctl = 157
    arch_prctl = 158
    chroot = 161
    unshare = 272
    gettid = 186
    futex = 202
    set_tid_address = 218
    restart_syscall = 219
    timer_create = 222
    timer_settime = 223
    timer_gettime = 224
    timer_getoverrun = 225
    timer_delete = 226
    clock_gettime = 228
    clock_nanosleep = 230
    exit_group = 231
    tgkill = 234
    openat = 257
    set_robust_list = 273
    get_robust_list = 274
    ppoll = 271
    pselect6 = 270
    epoll_pwait = 281
    prlimit64 = 302
    process_vm_readv = 310
    process_vm_writev = 311
    rt_tgsigqueueinfo = 297
    rseq = 334
    pidfd_open = 434
    clone3 = 435
    close_range = 436
    poll = 7
    select = 23
    pause = 34
    wait4_ = 61
    epoll_wait = 232
    epoll_ctl = 233
    readv = 19
    writev = 20
    accept = 43
    sendto = 44
    recvfrom = 45
    sendmsg = 46
    recvmsg = 47
    semop = 65
    rt_sigtimedwait = 128
    semtimedop = 220
    accept4 = 288
    recvmmsg = 299
    io_getevents = 208
    io_pgetevents = 333
    sendmmsg = 307
    epoll_pwait2 = 441


@fast_enum(enum.IntFlag)
class PROT(IntFlagBase):
    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


@fast_enum(enum.IntFlag)
class MAP(IntFlagBase):
    SHARED = 0x01
    PRIVATE = 0x02
    FIXED = 0x10
    ANONYMOUS = 0x20
    GROWSDOWN = 0x0100
    NORESERVE = 0x4000
    FIXED_NOREPLACE = 0x100000


@fast_enum(enum.IntFlag)
class MREMAP(IntFlagBase):
    MAYMOVE = 1
    FIXED = 2
    DONTUNMAP = 4


@fast_enum(enum.IntEnum)
class PR(IntEnumBase):
    SET_PDEATHSIG = 1
    GET_PDEATHSIG = 2
    GET_DUMPABLE = 3
    SET_DUMPABLE = 4
    GET_KEEPCAPS = 7
    SET_KEEPCAPS = 8
    SET_NAME = 15
    GET_NAME = 16
    GET_SECCOMP = 21
    SET_SECCOMP = 22
    CAPBSET_READ = 23
    CAPBSET_DROP = 24
    GET_TSC = 25
    SET_TSC = 26
    GET_SECUREBITS = 27
    SET_SECUREBITS = 28
    SET_TIMERSLACK = 29
    GET_TIMERSLACK = 30
    MCE_KILL = 33
    MCE_KILL_GET = 34
    SET_MM = 35
    GET_TID_ADDRESS = 40
    SET_CHILD_SUBREAPER = 36
    GET_CHILD_SUBREAPER = 37
    SET_NO_NEW_PRIVS = 38
    GET_NO_NEW_PRIVS = 39
    SET_THP_DISABLE = 41
    GET_THP_DISABLE = 42
    CAP_AMBIENT = 47
    SET_MDWE = 65
    GET_MDWE = 66
    TIMER_CREATE_RESTORE_IDS = 77
    FUTEX_HASH = 78  # (Linux 6.16) with PR_FUTEX_HASH_SET_SLOTS 1, PR_FUTEX_HASH_GET_SLOTS 2


@fast_enum(enum.IntEnum)
class PR_CAP_AMBIENT(IntEnumBase):
    IS_SET = 1
    RAISE = 2
    LOWER = 3
    CLEAR_ALL = 4


@fast_enum(enum.IntFlag)
class SECBIT(IntFlagBase):
    """include/uapi/linux/securebits.h"""

    NOROOT = 1 << 0
    NOROOT_LOCKED = 1 << 1
    NO_SETUID_FIXUP = 1 << 2
    NO_SETUID_FIXUP_LOCKED = 1 << 3
    KEEP_CAPS = 1 << 4
    KEEP_CAPS_LOCKED = 1 << 5
    NO_CAP_AMBIENT_RAISE = 1 << 6
    NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@fast_enum(enum.IntEnum)
class SECCOMP_MODE(IntEnumBase):
    """include/uapi/linux/seccomp.h"""

    DISABLED = 0
    STRICT = 1
    FILTER = 2


@fast_enum(enum.IntEnum)
class SECCOMP_SET(IntEnumBase):
    MODE_STRICT = 0
    MODE_FILTER = 1


@fast_enum(enum.IntFlag)
class SECCOMP_FILTER_FLAG(IntFlagBase):
    TSYNC = 1 << 0
    LOG = 1 << 1
    SPEC_ALLOW = 1 << 2


@fast_enum(enum.IntEnum)
class SCHED(IntEnumBase):
    """include/uapi/linux/sched.h"""

    OTHER = 0
    FIFO = 1
    RR = 2
    BATCH = 3
    IDLE = 5
    DEADLINE = 6


@fast_enum(enum.IntFlag)
class SCHED_FLAG(IntFlagBase):
    RESET_ON_FORK = 0x01
    RECLAIM = 0x02
    DL_OVERRUN = 0x04
    KEEP_POLICY = 0x08
    KEEP_PARAMS = 0x10
    UTIL_CLAMP_MIN = 0x20
    UTIL_CLAMP_MAX = 0x40


IOPRIO_WHO_PROCESS = 1


@fast_enum(enum.IntFlag)
class MEMBARRIER_CMD(IntFlagBase):
    """include/uapi/linux/membarrier.h"""

    QUERY = 0
    GLOBAL = 1 << 0
    GLOBAL_EXPEDITED = 1 << 1
    REGISTER_GLOBAL_EXPEDITED = 1 << 2
    PRIVATE_EXPEDITED = 1 << 3
    REGISTER_PRIVATE_EXPEDITED = 1 << 4
    PRIVATE_EXPEDITED_SYNC_CORE = 1 << 5
    REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 6
    PRIVATE_EXPEDITED_RSEQ = 1 << 7
    REGISTER_PRIVATE_EXPEDITED_RSEQ = 1 << 8
    GET_REGISTRATIONS = 1 << 9


PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15
PR_TIMER_CREATE_RESTORE_IDS_ON = 1
PR_TIMER_CREATE_RESTORE_IDS_OFF = 0


@fast_enum(enum.IntEnum)
class ERESTART(IntEnumBase):
    """Kernel-internal return values of an interrupted syscall (include/linux/errno.h)."""

    SYS = 512
    NOINTR = 513
    NOHAND = 514
    RESTARTBLOCK = 516


@fast_enum(enum.IntFlag)
class PAGE_IS(IntFlagBase):
    """Categories of PAGEMAP_SCAN (include/uapi/linux/fs.h)."""

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7
    GUARD = 1 << 8


# _IOWR('f', 16, struct pm_scan_arg): dir=3, size=96
PAGEMAP_SCAN = (3 << 30) | (96 << 16) | (ord("f") << 8) | 16

CLOSE_RANGE_UNSHARE = 2
RSEQ_FLAG_UNREGISTER = 1


@fast_enum(enum.IntFlag)
class CLONE(IntFlagBase):
    """include/uapi/linux/sched.h"""

    VM = 0x100
    FS = 0x200
    FILES = 0x400
    SIGHAND = 0x800
    PIDFD = 0x1000
    PTRACE = 0x2000
    VFORK = 0x4000
    PARENT = 0x8000
    THREAD = 0x10000
    NEWNS = 0x20000
    SYSVSEM = 0x40000
    SETTLS = 0x80000
    PARENT_SETTID = 0x100000
    CHILD_CLEARTID = 0x200000
    NEWPID = 0x20000000
    NEWIPC = 0x08000000


CLONE_THREAD_FLAGS = (CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD
                      | CLONE.SYSVSEM)  # fmt: skip


@fast_enum(enum.IntFlag)
class UFFD(IntFlagBase):
    """include/uapi/linux/userfaultfd.h"""

    USER_MODE_ONLY = 1
    FEATURE_WP_UNPOPULATED = 1 << 13
    FEATURE_WP_ASYNC = 1 << 15


UFFD_API = 0xAA
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
# _IOWR(UFFDIO=0xAA, nr, struct): dir=3
UFFDIO_API = (3 << 30) | (24 << 16) | (0xAA << 8) | 0x3F
UFFDIO_REGISTER = (3 << 30) | (32 << 16) | (0xAA << 8) | 0x00
UFFDIO_WRITEPROTECT = (3 << 30) | (24 << 16) | (0xAA << 8) | 0x06
SYS_userfaultfd = 323
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
MADV_DONTFORK = 10
