"""The thin, boring syscall layer: one libc handle, explicit prototypes, errors as OSError.

Every function keeps its C name.  A call that fails raises ``OSError(errno, "call pid=N")``;
translation into cryo's own errors happens above, at one boundary.
"""

from __future__ import annotations

import array
import ctypes
import os
from collections.abc import Sequence

from cryo.linux import structs as S
from cryo.linux.consts import PTRACE, SYS

libc = ctypes.CDLL(None, use_errno=True)
# Same library, but the GIL stays held during the call: used for clone3, whose child
# must come back into Python with the interpreter state exactly as the parent left it.
_pylibc = ctypes.PyDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long]  # variadic after the number

_ptrace = libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

_process_vm_readv = libc.process_vm_readv
_process_vm_readv.restype = ctypes.c_ssize_t
_process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong,
]  # fmt: skip
_process_vm_writev = libc.process_vm_writev
_process_vm_writev.restype = ctypes.c_ssize_t
_process_vm_writev.argtypes = _process_vm_readv.argtypes

_ioctl = libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

_prctl = libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

IOV_MAX = 1024


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [{what}]")
    return ret


def syscall(nr: int, *args: int) -> int:
    """Raw syscall in *this* process; returns the result or raises OSError."""
    cargs = [ctypes.c_long(a) for a in args]
    return _check(_syscall(nr, *cargs), f"syscall {nr}")


_SYS_MINCORE = 27  # (x86-64)


def mincore(addr: int, length: int, page_size: int) -> bytes:
    """One byte per page of [addr, addr+length): bit 0 set when the page is in memory
    (here, not in cryo.linux.sysv: a checkpoint asks it of a mapped file, and sysv's
    enums are 1-1.5 ms to import)."""
    vec = ctypes.create_string_buffer((length + page_size - 1) // page_size)
    _check(_syscall(_SYS_MINCORE, ctypes.c_long(addr), ctypes.c_long(length),
                    ctypes.c_long(ctypes.addressof(vec))), f"mincore {addr:#x}+{length:#x}")
    return vec.raw


def ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes._CData | None = 0) -> int:
    if data is None:
        cdata: int | None = 0
    elif isinstance(data, int):
        cdata = data
    else:
        cdata = ctypes.addressof(data)
    ctypes.set_errno(0)
    ret = _ptrace(request, pid, addr, cdata)
    if ret == -1 and ctypes.get_errno() != 0:
        err = ctypes.get_errno()
        name = PTRACE(request).name if request in PTRACE._value2member_map_ else str(request)
        raise OSError(err, f"{os.strerror(err)} [ptrace {name} pid={pid}]")
    return int(ret)


def ptrace_peekdata(pid: int, addr: int) -> int:
    ctypes.set_errno(0)
    ret = _ptrace(PTRACE.PEEKDATA, pid, addr, 0)
    if ret == -1 and ctypes.get_errno() != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [ptrace PEEKDATA pid={pid}]")
    return int(ret) & 0xFFFFFFFFFFFFFFFF


def ptrace_getregset(pid: int, nt: int, buf: ctypes.Array[ctypes.c_char] | ctypes.Structure) -> int:
    """PTRACE_GETREGSET; returns the number of bytes the kernel filled."""
    iov = S.iovec(ctypes.addressof(buf), ctypes.sizeof(buf))
    ptrace(PTRACE.GETREGSET, pid, nt, iov)
    return int(iov.iov_len)


def ptrace_setregset(pid: int, nt: int, buf: ctypes.Array[ctypes.c_char] | ctypes.Structure,
                     size: int | None = None) -> None:  # fmt: skip
    iov = S.iovec(ctypes.addressof(buf), ctypes.sizeof(buf) if size is None else size)
    ptrace(PTRACE.SETREGSET, pid, nt, iov)


def _iovecs(pairs: Sequence[tuple[int, int]]) -> ctypes.Array[S.iovec]:
    arr = (S.iovec * len(pairs))()
    for i, (base, length) in enumerate(pairs):
        arr[i].iov_base = base
        arr[i].iov_len = length
    return arr


def process_vm_readv(pid: int, local: Sequence[tuple[int, int]],
                     remote: Sequence[tuple[int, int]]) -> int:  # fmt: skip
    """Copy from ``pid``'s memory; each sequence holds at most IOV_MAX (address, length)."""
    loc, rem = _iovecs(local), _iovecs(remote)
    return _check(
        _process_vm_readv(pid, loc, len(local), rem, len(remote), 0),
        f"process_vm_readv pid={pid}",
    )


def process_vm_readv_raw(pid: int, local: int, remote: int, count: int) -> int:
    """process_vm_readv with ``count`` iovecs at addresses ``local`` and ``remote``
    (arrays the caller made: engine/memory.py's, for thousands of runs)."""
    return _check(_process_vm_readv(pid, local, count, remote, count, 0),
                  f"process_vm_readv pid={pid}")


def process_vm_writev(pid: int, local: Sequence[tuple[int, int]],
                      remote: Sequence[tuple[int, int]]) -> int:  # fmt: skip
    loc, rem = _iovecs(local), _iovecs(remote)
    return _check(
        _process_vm_writev(pid, loc, len(local), rem, len(remote), 0),
        f"process_vm_writev pid={pid}",
    )


def ioctl(fd: int, request: int, arg: ctypes._CData | int) -> int:
    ptr = arg if isinstance(arg, int) else ctypes.addressof(arg)
    return _check(_ioctl(fd, request, ptr), f"ioctl {request:#x} fd={fd}")


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _check(_prctl(option, a2, a3, a4, a5), f"prctl {option}")


def prlimit64(pid: int, resource: int, new: S.rlimit64 | None = None) -> S.rlimit64:
    old = S.rlimit64()
    newp = ctypes.addressof(new) if new is not None else 0
    syscall(SYS.prlimit64, pid, resource, newp, ctypes.addressof(old))
    return old


def get_robust_list(pid: int) -> tuple[int, int]:
    head = ctypes.c_uint64()
    size = ctypes.c_size_t()
    syscall(SYS.get_robust_list, pid, ctypes.addressof(head), ctypes.addressof(size))
    return head.value, size.value


def clone3(set_tid: int | None = None, flags: int = 0) -> int:
    """Fork this process like fork(), the child getting pid ``set_tid`` (in its innermost
    pid namespace) and clone ``flags`` (CLONE_NEWPID: the child is pid 1 of a new one;
    CLONE_PARENT: the child is our parent's).

    The GIL stays held across the call, so the child returns into Python in the
    parent's exact interpreter state; it must only run trivial code and then stop or exec.
    """
    import signal

    tid = (ctypes.c_int32 * 1)(set_tid or 0)
    args = S.clone_args()
    args.flags = flags
    # (CLONE_PARENT: the caller's own exit signal, which clone3 wants given as 0)
    args.exit_signal = 0 if flags & 0x8000 else signal.SIGCHLD
    if set_tid is not None:
        args.set_tid = ctypes.addressof(tid)
        args.set_tid_size = 1
    fn = _pylibc.syscall
    fn.restype = ctypes.c_long
    ret = fn(ctypes.c_long(SYS.clone3), ctypes.c_void_p(ctypes.addressof(args)),
             ctypes.c_size_t(ctypes.sizeof(args)))  # fmt: skip
    return _check(int(ret), f"clone3 set_tid={set_tid} flags={flags:#x}")


def pidfd_open(pid: int) -> int:
    return syscall(SYS.pidfd_open, pid, 0)


def c_int(v: int) -> int:
    """The low 32 bits of ``v`` as a C int (a register's int argument or result, a u32
    field read as an atomic_t, an imm32 of a BPF instruction)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def buffer_address(buf: object) -> int:
    """Address of a writable Python buffer (mmap, bytearray) for iovecs."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))  # type: ignore[arg-type]


def struct_bytes(obj: ctypes.Structure) -> bytes:
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


def struct_from(cls: type[ctypes.Structure], data: bytes) -> ctypes.Structure:
    return cls.from_buffer_copy(data.ljust(ctypes.sizeof(cls), b"\0"))


def sizeof(obj: type[ctypes.Structure] | ctypes.Structure) -> int:
    return ctypes.sizeof(obj)


KCMP_FILE = 0
KCMP_FILES = 2
KCMP_FS = 3
_SYS_kcmp = 312


def kcmp_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """True when the two fds refer to the same open file description."""
    return syscall(_SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def kcmp_order(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """0 when the two fds refer to the same open file description; else 1 or 2 as the
    first's sorts before or after the second's (a total order of the kernel's objects,
    stable while they live: what a sorted search of descriptions needs)."""
    return int(syscall(_SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2))


def kcmp_same(kind: int, pid1: int, pid2: int) -> bool:
    """True when two processes share one kernel object (KCMP_FILES: fd table, KCMP_FS)."""
    return syscall(_SYS_kcmp, pid1, pid2, kind, 0, 0) == 0


def pagemap_scan(fd: int, start: int, end: int, anyof: int, return_mask: int,
                 inverted: int = 0, mask: int = 0,
                 flags: int = 0) -> list[tuple[int, int, int]]:  # fmt: skip
    """PAGEMAP_SCAN on an open /proc/PID/pagemap: [(start, end, categories)] of the
    page ranges in [start, end) that have any category of ``anyof``."""
    got = pagemap_scan_words(fd, start, end, anyof, return_mask, inverted, mask, flags)
    words = got.tolist()  # (not a ctypes field at a time: 1,300 scattered pages, 1-2 ms)
    return list(zip(words[0::3], words[1::3], words[2::3], strict=True))


def pagemap_scan_words(fd: int, start: int, end: int, anyof: int, return_mask: int,
                       inverted: int = 0, mask: int = 0, flags: int = 0) -> array.array[int]:
    """:func:`pagemap_scan`'s regions as one array of words: start, end, categories, ...
    (for a caller that makes arrays of them: no Python object per region)."""
    from cryo.linux.consts import PAGEMAP_SCAN

    out = array.array("Q")
    vec = (S.page_region * 512)()
    arg = S.pm_scan_arg()
    arg.size = ctypes.sizeof(arg)
    arg.flags = flags
    arg.vec = ctypes.addressof(vec)
    arg.vec_len = len(vec)
    arg.category_inverted = inverted
    arg.category_mask = mask
    arg.category_anyof_mask = anyof
    arg.return_mask = return_mask
    raw = memoryview(vec).cast("B")  # (start, end, categories) each, 24 bytes
    while start < end:
        arg.start, arg.end, arg.walk_end = start, end, 0
        n = ioctl(fd, PAGEMAP_SCAN, arg)
        out.frombytes(raw[: 24 * n])
        if arg.walk_end <= start:
            break
        start = arg.walk_end
    return out


_sync_file_range = libc.sync_file_range
_sync_file_range.restype = ctypes.c_int
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def sync_file_range(fd: int, offset: int, nbytes: int, flags: int = SYNC_FILE_RANGE_WRITE) -> None:
    """Start writeback of a file range now (the final fsync then has less to wait for)."""
    _check(_sync_file_range(fd, offset, nbytes, flags), f"sync_file_range fd={fd}")


_SYS_pidfd_getfd = 438


# syscall(2) with a fixed prototype of three arguments (a function object of its own:
# libc["syscall"] is not the cached libc.syscall): no c_long made per argument, ~3 us
# less a call than syscall(); a checkpoint of a busy server makes one per connection
_syscall3 = libc["syscall"]
_syscall3.restype = ctypes.c_long
_syscall3.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long]


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A duplicate, in this process, of fd ``targetfd`` of the process behind ``pidfd``."""
    return _check(_syscall3(_SYS_pidfd_getfd, pidfd, targetfd, 0), "pidfd_getfd")


def fd_of(pid: int, fd: int) -> int:
    """A duplicate, in this process, of fd ``fd`` of process ``pid`` (pidfd_open, then
    pidfd_getfd)."""
    pidfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


_tee = libc.tee
_tee.restype = ctypes.c_ssize_t
_tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
SPLICE_F_NONBLOCK = 2


def tee(fd_in: int, fd_out: int, nbytes: int, flags: int = SPLICE_F_NONBLOCK) -> int:
    """Copy pipe data from ``fd_in`` to ``fd_out`` without consuming it."""
    return _check(_tee(fd_in, fd_out, nbytes, flags), f"tee fd={fd_in}")


def signalfd(mask: int, flags: int) -> int:
    """signalfd4(-1, mask, 8, flags): a new signalfd for the signals in ``mask``."""
    m = ctypes.c_uint64(mask)
    return syscall(289, -1, ctypes.addressof(m), 8, flags)


def timerfd_create(clockid: int, flags: int) -> int:
    return syscall(283, clockid, flags)


def timerfd_settime(fd: int, flags: int, interval: tuple[int, int], value: tuple[int, int]
                    ) -> None:  # fmt: skip
    spec = S.itimerspec()
    spec.it_interval.tv_sec, spec.it_interval.tv_nsec = interval
    spec.it_value.tv_sec, spec.it_value.tv_nsec = value
    syscall(286, fd, flags, ctypes.addressof(spec), 0)


def uffd_api(fd: int, features: int) -> None:
    from cryo.linux.consts import UFFD_API, UFFDIO_API

    ioctl(fd, UFFDIO_API, S.uffdio_api(UFFD_API, features, 0))


def uffd_register_wp(fd: int, start: int, length: int) -> None:
    """Register [start, start+length) of the uffd's process in write-protect mode."""
    from cryo.linux.consts import UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP

    ioctl(fd, UFFDIO_REGISTER,
          S.uffdio_register(S.uffdio_range(start, length), UFFDIO_REGISTER_MODE_WP, 0))


def uffd_writeprotect(fd: int, start: int, length: int) -> None:
    from cryo.linux.consts import UFFDIO_WRITEPROTECT, UFFDIO_WRITEPROTECT_MODE_WP

    ioctl(fd, UFFDIO_WRITEPROTECT,
          S.uffdio_writeprotect(S.uffdio_range(start, length), UFFDIO_WRITEPROTECT_MODE_WP))


def getsockopt_zeroed(fd: int, level: int, opt: int, size: int) -> int:
    """getsockopt(2) of an option that reads its buffer as input too (TCP_AO_INFO), on
    ``size`` zeroed bytes: 0, or the errno it failed with (the value is not kept)."""
    buf = ctypes.create_string_buffer(size)
    n = ctypes.c_uint32(size)
    if libc.getsockopt(ctypes.c_int(fd), ctypes.c_int(level), ctypes.c_int(opt), buf,
                       ctypes.byref(n)) == 0:  # fmt: skip
        return 0
    return ctypes.get_errno()
