"""Pure parsers of /proc text: bytes in, typed records out (tests feed captured text).

The records are named tuples, immutable as frozen dataclasses would be, but made in a
fraction of the time when cryo starts (four frozen dataclasses took ~2 ms each to
create, at every command) and cheaper to build per line of /proc text."""

from __future__ import annotations

import contextlib
import os
import re
from typing import NamedTuple

from cryo.errors import AccessDenied, NoSuchProcess


class Stat(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    num_threads: int
    start_code: int
    end_code: int
    start_stack: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_signal: int
    flags: int = 0  # the task's PF_* flags (include/linux/sched.h)


def parse_stat(data: bytes) -> Stat:
    """Parse /proc/PID/stat; the name ends at the *last* ')' (it may contain one)."""
    lpar = data.index(b"(")
    rpar = data.rindex(b")")
    pid = int(data[:lpar])
    comm = data[lpar + 1 : rpar].decode(errors="surrogateescape")
    f = data[rpar + 2 :].split()
    # f[0] is field 3 (state); field N is f[N - 3]
    def n(i: int) -> int:
        return int(f[i - 3])
    return Stat(
        pid=pid, comm=comm, state=f[0].decode(), ppid=n(4), pgrp=n(5), session=n(6),
        tty_nr=n(7), num_threads=n(20), start_code=n(26), end_code=n(27), start_stack=n(28),
        exit_signal=n(38), start_data=n(45), end_data=n(46), start_brk=n(47), arg_start=n(48),
        arg_end=n(49), env_start=n(50), env_end=n(51), flags=n(9),
    )  # fmt: skip


# what the kernel appends to the path of a file that has no name left (d_path)
DELETED = " (deleted)"


def start_time(pid: int, alive: bool = False) -> int | None:
    """Field 22 of /proc/PID/stat (when the process started, in clock ticks since boot:
    with the pid, who it is), None if there is no such process (a zombie has one, unless
    ``alive``: then None for a zombie too)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if alive and fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def parse_status(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode(errors="surrogateescape").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


class Vma(NamedTuple):
    start: int
    end: int
    perms: str  # "rwxp"
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous
    flags: tuple[str, ...] = ()  # VmFlags from smaps
    page_size: int = 4096  # KernelPageSize from smaps (2 MiB or 1 GiB for hugetlb)
    pkey: int = 0  # ProtectionKey from smaps (x86 memory protection keys)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def prot(self) -> int:
        return (
            (1 if self.perms[0] == "r" else 0)
            | (2 if self.perms[1] == "w" else 0)
            | (4 if self.perms[2] == "x" else 0)
        )


def _parse_maps_line(line: str) -> Vma:
    parts = line.split(None, 5)
    rng = parts[0]
    dash = rng.index("-")
    return Vma(int(rng[:dash], 16), int(rng[dash + 1 :], 16), parts[1], int(parts[2], 16),
               parts[3], int(parts[4]), parts[5] if len(parts) > 5 else "")  # fmt: skip


def parse_maps(data: bytes) -> list[Vma]:
    return [_parse_maps_line(ln) for ln in data.decode(errors="surrogateescape").splitlines() if ln]


# a VMA's first line in smaps (as in maps), after its newline; the other lines are
# "Key:  value" (a literal first character lets the search skip along: not "^" and
# re.MULTILINE, which tries every position)
_SMAPS_HEAD = re.compile(rb"\n[0-9a-f]+-[0-9a-f]+ [^\n]*")


def _smaps_field(block: bytes, key: bytes) -> bytes | None:
    """The value of ``key`` (b"\nVmFlags:") in one VMA's block of smaps."""
    at = block.find(key)
    if at < 0:
        return None
    end = block.find(b"\n", at + len(key))
    return block[at + len(key) : end if end >= 0 else len(block)]


def parse_smaps_flags(data: bytes) -> list[Vma]:
    """Parse /proc/PID/smaps keeping each VMA's VmFlags, KernelPageSize and ProtectionKey
    (the rest is dropped).  Only the head lines are parsed one by one; the three fields
    are found in each VMA's block (a few hundred VMAs of ~25 lines each, per process)."""
    out: list[Vma] = []
    data = b"\n" + data
    heads = [m.span() for m in _SMAPS_HEAD.finditer(data)]
    ends = [start for start, _ in heads[1:]] + [len(data)]
    for (start, stop), end in zip(heads, ends, strict=False):  # (no head: no VMA)
        parts = data[start + 1 : stop].decode(errors="surrogateescape").split(None, 5)
        rng = parts[0]
        dash = rng.index("-")
        block = data[stop:end]
        flags = _smaps_field(block, b"\nVmFlags:")
        size = _smaps_field(block, b"\nKernelPageSize:")
        pkey = _smaps_field(block, b"\nProtectionKey:")
        out.append(Vma(int(rng[:dash], 16), int(rng[dash + 1 :], 16), parts[1],
                       int(parts[2], 16), parts[3], int(parts[4]),
                       parts[5] if len(parts) > 5 else "",
                       tuple(flags.decode().split()) if flags is not None else (),
                       int(size.split()[0]) * 1024 if size is not None else 4096,
                       int(pkey) if pkey is not None else 0))  # fmt: skip
    return out


class FdInfo(NamedTuple):
    pos: int
    flags: int  # octal in the file
    mnt_id: int
    ino: int
    extra: dict[str, str]  # every field, as text


def parse_fdinfo(data: bytes) -> FdInfo:
    kv: dict[str, str] = {}
    for line in data.decode(errors="surrogateescape").splitlines():
        key, _, value = line.partition(":")
        kv.setdefault(key.strip(), value.strip())
    return FdInfo(
        pos=int(kv.get("pos", "0")),
        flags=int(kv.get("flags", "0"), 8),
        mnt_id=int(kv.get("mnt_id", "0")),
        ino=int(kv.get("ino", "0")),
        extra=kv,
    )


_LIMIT_NAMES = {
    "Max cpu time": 0, "Max file size": 1, "Max data size": 2, "Max stack size": 3,
    "Max core file size": 4, "Max resident set": 5, "Max processes": 6, "Max open files": 7,
    "Max locked memory": 8, "Max address space": 9, "Max file locks": 10,
    "Max pending signals": 11, "Max msgqueue size": 12, "Max nice priority": 13,
    "Max realtime priority": 14, "Max realtime timeout": 15,
}  # fmt: skip
RLIM_INFINITY = 0xFFFFFFFFFFFFFFFF


def parse_limits(data: bytes) -> dict[int, tuple[int, int]]:
    """/proc/PID/limits -> {RLIMIT_*: (soft, hard)} (RLIM_INFINITY for "unlimited")."""
    out: dict[int, tuple[int, int]] = {}
    for line in data.decode().splitlines()[1:]:
        for name, res in _LIMIT_NAMES.items():
            if line.startswith(name):
                soft, hard = line[len(name) :].split()[:2]
                out[res] = tuple(  # type: ignore[assignment]
                    RLIM_INFINITY if v == "unlimited" else int(v) for v in (soft, hard)
                )
    return out


class PosixTimer(NamedTuple):
    id: int
    signal: int
    sigev_value: int
    notify: str  # "signal", "thread", "none"
    notify_tid: int
    clock: int
    # SIGEV_THREAD_ID: the kernel prints "signal/tid.N" for it, "signal/pid.N" otherwise
    to_thread: bool = False


def parse_timers(data: bytes) -> list[PosixTimer]:
    """/proc/PID/timers: blocks of 'ID:', 'signal: N/PTR', 'notify: KIND/pid.N', 'ClockID:'."""
    out: list[PosixTimer] = []
    cur: dict[str, str] = {}
    lines = data.decode().splitlines()
    for line in [*lines, "ID: end"]:
        key, _, value = line.partition(":")
        if key == "ID" and cur:
            sig, _, ptr = cur["signal"].partition("/")
            kind, _, who = cur["notify"].partition("/")
            out.append(PosixTimer(
                id=int(cur["ID"]), signal=int(sig), sigev_value=int(ptr, 16),
                notify=kind, notify_tid=int(who.split(".")[-1]) if who else 0,
                clock=int(cur["ClockID"]), to_thread=who.startswith("tid."),
            ))  # fmt: skip
            cur = {}
        cur[key.strip()] = value.strip()
    return out


def read(pid: int | str, name: str) -> bytes:
    """Read /proc/PID/NAME, translating the errors that mean the process is gone."""
    path = f"/proc/{pid}/{name}"
    try:  # (os calls: the io stack's open, buffering and read to EOF cost 2-10 us more)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):  # (to the end: a read may come back short)
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError) as err:
        raise NoSuchProcess(f"process {pid} does not exist", pid=int(pid)) from err
    except PermissionError as err:
        raise AccessDenied(f"may not read {path}", pid=int(pid), path=path) from err


def has_capability(cap: int) -> bool:
    """Whether this process has capability ``cap`` in its effective set (CapEff of
    /proc/self/status; False where it cannot be read)."""
    try:
        eff = parse_status(read("self", "status")).get("CapEff", "0")
        return bool(int(eff, 16) >> cap & 1)
    except (OSError, ValueError, AccessDenied, NoSuchProcess):
        return False


def fd_links(pid: int) -> tuple[list[int], dict[int, str]]:
    """The fd numbers of ``pid`` (sorted) and each one's link, read from /proc/PID/fd
    opened once (names in it: no path walk for each); an fd closed meanwhile has none."""
    fd_dir = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names = os.listdir(fd_dir)
        links: dict[int, str] = {}
        for n in names:
            with contextlib.suppress(OSError):
                links[int(n)] = os.readlink(n, dir_fd=fd_dir)
    finally:
        os.close(fd_dir)
    return sorted(int(n) for n in names), links


def readlink(pid: int, name: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/{name}")
    except (FileNotFoundError, ProcessLookupError) as err:
        raise NoSuchProcess(f"process {pid} or its {name} does not exist", pid=pid) from err
