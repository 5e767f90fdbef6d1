"""What no file interface shows of a process's open files, read with a BPF iterator
over its fd table (task_file, Linux 5.8; bpf(2) by hand: the program is 17
instructions, its offsets taken from the kernel's BTF, /sys/kernel/btf/vmlinux).

:func:`inode_states` gives each fd's inode->i_state.  Its I_LINKABLE bit is the only
trace of whether a file made with open(DIR, O_TMPFILE) may still be given a name with
linkat: open() drops O_EXCL from f_flags, and a linkat to find out would name the file
and clear the bit for good (fs/namei.c vfs_link).  CAP_BPF and CAP_PERFMON (root), a
kernel with CONFIG_DEBUG_INFO_BTF; else :class:`Unavailable`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading
from typing import NamedTuple

from cryo.errors import InternalError
from cryo.linux.libc import c_int, libc

SYS_BPF = 321
BPF_PROG_LOAD, BPF_LINK_CREATE, BPF_ITER_CREATE = 5, 28, 33
BPF_PROG_TYPE_TRACING, BPF_TRACE_ITER = 26, 28
BPF_FUNC_SEQ_WRITE = 127
BTF_PATH = "/sys/kernel/btf/vmlinux"
# BTF kinds (include/uapi/linux/btf.h) and what follows each btf_type: fixed bytes, and
# bytes per vlen item
_BTF_INT, _BTF_PTR, _BTF_STRUCT, _BTF_ENUM, _BTF_FUNC, _BTF_ENUM64 = 1, 2, 4, 6, 12, 19
_BTF_VAR, _BTF_DATASEC = 14, 15
_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class Unavailable(OSError):
    """This kernel, or cryo's privileges, give no BPF iterator."""


class Layout(NamedTuple):
    """What the program needs of this kernel: the BTF id of the task_file iterator's
    function, the byte offsets of file->f_inode and inode->i_state and the size of the
    latter, and I_LINKABLE's value where BTF has it (an enum since Linux 6.18).  (Named
    tuples, not dataclasses: a dataclass costs every command that imports this 0.5-2 ms
    to make, issue 16.)"""

    iter_id: int
    f_inode: int
    i_state: int
    state_size: int
    linkable: int | None


_layout: list[Layout] = []


def _name(strs: bytes, off: int) -> bytes:
    return strs[off : strs.index(b"\0", off)]


def layout() -> Layout:
    """This kernel's :class:`Layout`, read from its BTF once."""
    if _layout:
        return _layout[0]
    try:
        with open(BTF_PATH, "rb") as f:
            data = f.read()
    except OSError as err:
        raise Unavailable(err.errno, f"{BTF_PATH}: {err.strerror}") from err
    _magic, _ver, _flags, hdr, toff, tlen, soff, slen = struct.unpack_from("<HBBIIIII", data)
    types = data[hdr + toff : hdr + toff + tlen]
    strs = data[hdr + soff : hdr + soff + slen]
    at: list[int] = []  # type id - 1 -> its offset
    found: dict[bytes, int] = {}
    pos, size = 0, len(types)
    wanted = {(_BTF_FUNC, b"bpf_iter_task_file"), (_BTF_STRUCT, b"file"),
              (_BTF_STRUCT, b"inode")}  # fmt: skip
    linkable = None
    while pos < size:
        at.append(pos)
        name_off, info, _sz = _TYPE.unpack_from(types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if name_off and (kind, _name(strs, name_off)) in wanted:
            found.setdefault(_name(strs, name_off), len(at))
        elif kind == _BTF_ENUM and linkable is None:
            for i in range(vlen):
                en, ev = _ENUM.unpack_from(types, pos + 12 + 8 * i)
                if _name(strs, en) == b"I_LINKABLE":
                    linkable = ev
        pos += 12 + _EXTRA.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
    if len(found) != len(wanted):
        lacks = sorted(n.decode() for _, n in wanted if n not in found)
        raise Unavailable(0, f"{BTF_PATH} lacks {', '.join(lacks)}")

    def member(struct_id: int, name: bytes) -> tuple[int, int]:
        p = at[struct_id - 1]
        _n, info, _s = _TYPE.unpack_from(types, p)
        for i in range(info & 0xFFFF):
            mn, mt, mo = _MEMBER.unpack_from(types, p + 12 + 12 * i)
            if mn and _name(strs, mn) == name:
                bits = mo & 0xFFFFFF if info >> 31 else mo
                return bits // 8, mt
        raise Unavailable(0, f"BTF: no member {name.decode()}")

    f_inode, _t = member(found[b"file"], b"f_inode")
    i_state, t = member(found[b"inode"], b"i_state")
    while True:  # the size of i_state's type, through typedefs and qualifiers
        _n, info, sz = _TYPE.unpack_from(types, at[t - 1])
        kind = (info >> 24) & 0x1F
        if kind in (8, 9, 10, 11, 18):
            t = sz
            continue
        if kind == _BTF_STRUCT:  # (a struct of one member: its first)
            _mn, t, _mo = _MEMBER.unpack_from(types, at[t - 1] + 12)
            continue
        break
    if sz not in (4, 8) or kind not in (_BTF_INT, _BTF_ENUM, _BTF_ENUM64):
        raise Unavailable(0, f"BTF: inode->i_state of kind {kind}, {sz} bytes")
    _layout.append(Layout(found[b"bpf_iter_task_file"], f_inode, i_state, sz, linkable))
    return _layout[0]


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _program(lay: Layout) -> bytes:
    """For each fd: (fd, i_state) as two u64 written to the iterator's seq_file."""
    ldx_dw, ldx_w, stx_dw = 0x79, 0x61, 0x7B
    ld_state = ldx_dw if lay.state_size == 8 else ldx_w
    return b"".join((
        _insn(0xBF, 6, 1),                      # r6 = ctx
        _insn(ldx_dw, 7, 6, 24),                # r7 = ctx->file
        _insn(0x15, 7, 0, 12),                  # if r7 == 0 goto out
        _insn(ldx_dw, 8, 7, lay.f_inode),       # r8 = file->f_inode
        _insn(0x15, 8, 0, 10),                  # if r8 == 0 goto out
        _insn(ld_state, 9, 8, lay.i_state),     # r9 = inode->i_state
        _insn(stx_dw, 10, 9, -8),               # *(u64 *)(fp - 8) = r9
        _insn(ldx_w, 2, 6, 16),                 # r2 = ctx->fd
        _insn(stx_dw, 10, 2, -16),              # *(u64 *)(fp - 16) = r2
        _insn(ldx_dw, 1, 6, 0),                 # r1 = ctx->meta
        _insn(ldx_dw, 1, 1, 0),                 # r1 = meta->seq
        _insn(0xBF, 2, 10),                     # r2 = fp
        _insn(0x07, 2, 0, 0, -16),              # r2 -= 16
        _insn(0xB7, 3, 0, 0, 16),               # r3 = 16
        _insn(0x85, 0, 0, 0, BPF_FUNC_SEQ_WRITE),  # bpf_seq_write(seq, fp - 16, 16)
        _insn(0xB7, 0, 0, 0, 0),                # out: r0 = 0
        _insn(0x95),                            # exit
    ))  # fmt: skip


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd),
                       ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_long(len(attr))))
    if ret < 0:
        err = ctypes.get_errno()
        raise Unavailable(err, f"{os.strerror(err)} [bpf {what}]")
    return ret


_prog: list[int] = []  # the program loaded once, kept (its fd is cryo's, close-on-exec)


def _load(lay: Layout) -> int:
    if _prog:
        return _prog[0]
    insns = ctypes.create_string_buffer(_program(lay))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 14)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(insns.raw) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log),
                     ctypes.addressof(log))  # fmt: skip
    struct.pack_into("8s", attr, 48, b"cryo_ino")  # prog_name
    struct.pack_into("<I", attr, 68, BPF_TRACE_ITER)  # expected_attach_type
    struct.pack_into("<I", attr, 108, lay.iter_id)  # attach_btf_id
    try:
        _prog.append(_bpf(BPF_PROG_LOAD, attr, "prog_load task_file"))
    except Unavailable as err:
        text = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(err.errno, f"{err.strerror} {' / '.join(text)}") from err
    return _prog[0]


def inode_states(pid: int) -> dict[int, int]:
    """fd -> inode->i_state of each open file of process ``pid``."""
    data = _run(_load(layout()), 0, pid, "task_file")
    return {int(fd): int(state)
            for fd, state in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16])}


def linkable_bit() -> int:
    """I_LINKABLE's value in inode->i_state: from BTF, else found by making two files
    with O_TMPFILE in the temporary directory, one with O_EXCL (the one bit the other
    has)."""
    lay = layout()
    if lay.linkable is not None:
        return lay.linkable
    import tempfile

    where = tempfile.gettempdir()
    a = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        b = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            states = inode_states(os.getpid())
            bit = states.get(a, 0) & ~states.get(b, 0)
        finally:
            os.close(b)
    finally:
        os.close(a)
    if bit == 0 or bit & (bit - 1):
        raise Unavailable(0, f"I_LINKABLE not found in inode->i_state ({bit:#x})")
    _layout[0] = Layout(lay.iter_id, lay.f_inode, lay.i_state, lay.state_size, bit)
    return bit


# -- a general reader: one iterator program per question, offsets from BTF -----------------

BPF_FUNC_PROBE_READ_KERNEL = 113
_CACHE = "/run/cryo/btf-offsets"  # the offsets this boot's kernel has (boot id, JSON)
# what the readers ask of BTF: a name -> (struct, dotted member path through anonymous
# members) for an offset, (struct, "") for a size, (None, func) for an iterator's BTF id
_PERCPU = ".data..percpu"  # (a variable's offset in that section, from its DATASEC)
_WANTED: dict[str, tuple[str | None, str]] = {
    "iter_task": (None, "bpf_iter_task"),
    "iter_task_file": (None, "bpf_iter_task_file"),
    "task.pid": ("task_struct", "pid"),
    "task.tgid": ("task_struct", "tgid"),
    "task.restart_block": ("task_struct", "restart_block"),
    "task.io_context": ("task_struct", "io_context"),
    "task.flags": ("task_struct", "flags"),
    "task.nvcsw": ("task_struct", "nvcsw"),
    "task.stack": ("task_struct", "stack"),
    "hrs.task": ("hrtimer_sleeper", "task"),
    "hrt.function": ("hrtimer", "function"),
    "hrt.expires": ("hrtimer", "node.expires"),
    "hrt.state": ("hrtimer", "state"),
    "restart_block": ("restart_block", ""),
    "rb.fn": ("restart_block", "fn"),
    "rb.futex.uaddr": ("restart_block", "futex.uaddr"),
    "rb.futex.val": ("restart_block", "futex.val"),
    "rb.futex.flags": ("restart_block", "futex.flags"),
    "rb.futex.bitset": ("restart_block", "futex.bitset"),
    "rb.futex.time": ("restart_block", "futex.time"),
    "rb.nanosleep.clockid": ("restart_block", "nanosleep.clockid"),
    "rb.nanosleep.rmtp": ("restart_block", "nanosleep.rmtp"),
    "rb.nanosleep.expires": ("restart_block", "nanosleep.expires"),
    "rb.poll.ufds": ("restart_block", "poll.ufds"),
    "rb.poll.nfds": ("restart_block", "poll.nfds"),
    "rb.poll.has_timeout": ("restart_block", "poll.has_timeout"),
    "rb.poll.tv_sec": ("restart_block", "poll.tv_sec"),
    "rb.poll.tv_nsec": ("restart_block", "poll.tv_nsec"),
    # AIO contexts (engine/aio.py): mm->ioctx_table->table[i], a struct kioctx each
    "task.mm": ("task_struct", "mm"),
    "mm.ioctx_table": ("mm_struct", "ioctx_table"),
    "kt.nr": ("kioctx_table", "nr"),
    "kt.table": ("kioctx_table", "table"),
    "kx.user_id": ("kioctx", "user_id"),
    "kx.cpu": ("kioctx", "cpu"),
    "kx.max_reqs": ("kioctx", "max_reqs"),
    "kx.nr_events": ("kioctx", "nr_events"),
    "kx.mmap_size": ("kioctx", "mmap_size"),
    "kx.reqs_available": ("kioctx", "reqs_available"),
    "kx.tail": ("kioctx", "tail"),
    "kx.completed_events": ("kioctx", "completed_events"),
    "kc.reqs_available": ("kioctx_cpu", "reqs_available"),
    # each CPU's per-cpu area, found through its runqueue (per_cpu_offsets)
    "task.sched_task_group": ("task_struct", "sched_task_group"),
    "tg.cfs_rq": ("task_group", "cfs_rq"),
    "cfs_rq.rq": ("cfs_rq", "rq"),
    "rq.cpu": ("rq", "cpu"),
    "percpu.runqueues": (_PERCPU, "runqueues"),
    "percpu.this_cpu_off": (_PERCPU, "this_cpu_off"),
}
# kernel functions whose addresses the readers compare with (/proc/kallsyms)
SYMBOLS = ("do_restart_poll", "futex_wait_restart", "hrtimer_nanosleep_restart",
           "hrtimer_wakeup")
_offsets: dict[str, int] = {}


def _read_btf() -> dict[str, int]:
    """Every name of _WANTED that this kernel's BTF has, as a number (a name it lacks is
    left out: the reader that needs it is unavailable)."""
    try:
        with open(BTF_PATH, "rb") as f:
            data = f.read()
    except OSError as err:
        raise Unavailable(err.errno, f"{BTF_PATH}: {err.strerror}") from err
    _magic, _ver, _flags, hdr, toff, tlen, soff, slen = struct.unpack_from("<HBBIIIII", data)
    types = data[hdr + toff : hdr + toff + tlen]
    strs = data[hdr + soff : hdr + soff + slen]
    names = {m if s in (None, _PERCPU) else s for s, m in _WANTED.values()}
    names.add(_PERCPU)
    offs = {}
    for n in names:  # (vmlinux's strings are deduplicated: one offset a name)
        at_ = strs.find(b"\0" + n.encode() + b"\0")
        if at_ >= 0:
            offs[at_ + 1] = n
    at: list[int] = []
    found: dict[tuple[int, str], int] = {}
    sec_offs: dict[int, int] = {}  # per-cpu VAR type id -> its offset in the section
    pos, size = 0, len(types)
    while pos < size:
        at.append(pos)
        name_off, info, _sz = _TYPE.unpack_from(types, pos)
        kind = (info >> 24) & 0x1F
        if name_off in offs and kind in (_BTF_STRUCT, _BTF_FUNC, _BTF_VAR):
            found.setdefault((kind, offs[name_off]), len(at))
        if name_off in offs and kind == _BTF_DATASEC and offs[name_off] == _PERCPU:
            for i in range(info & 0xFFFF):  # (var type id, offset in the section, size)
                vt, voff, _vsz = _TYPE.unpack_from(types, pos + 12 + 12 * i)
                sec_offs[vt] = voff
        pos += 12 + _EXTRA.get(kind, 0) + _PER_ITEM.get(kind, 0) * (info & 0xFFFF)

    def resolve(tid: int) -> tuple[int, int, int]:  # through typedefs and qualifiers
        while True:
            _n, info, sz = _TYPE.unpack_from(types, at[tid - 1])
            kind = (info >> 24) & 0x1F
            if kind not in (8, 9, 10, 11, 18):
                return tid, kind, info
            tid = sz

    def member(sid: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of ``name`` in struct or union ``sid``, looked for in its
        anonymous members too."""
        sid, kind, info = resolve(sid)
        if kind not in (_BTF_STRUCT, 5):
            return None
        p = at[sid - 1]
        for i in range(info & 0xFFFF):
            mn, mt, mo = _MEMBER.unpack_from(types, p + 12 + 12 * i)
            bits = mo & 0xFFFFFF if info >> 31 else mo
            if mn and _name(strs, mn) == name.encode():
                return bits // 8, mt
            if not mn:
                inner = member(mt, name)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
        return None

    out: dict[str, int] = {}
    for key, (sname, path) in _WANTED.items():
        if sname is None:
            if (_BTF_FUNC, path) in found:
                out[key] = found[(_BTF_FUNC, path)]
            continue
        if sname == _PERCPU:
            if found.get((_BTF_VAR, path)) in sec_offs:
                out[key] = sec_offs[found[(_BTF_VAR, path)]]
            continue
        sid = found.get((_BTF_STRUCT, sname))
        if sid is None:
            continue
        if not path:
            out[key] = _TYPE.unpack_from(types, at[sid - 1])[2]
            continue
        off, t = 0, sid
        for part in path.split("."):
            got = member(t, part)
            if got is None:
                break
            off, t = off + got[0], got[1]
        else:
            out[key] = off
    return out


def _kallsyms() -> dict[str, int]:
    want = {s.encode() for s in SYMBOLS}
    out: dict[str, int] = {}
    try:
        with open("/proc/kallsyms", "rb") as f:
            for line in f:
                addr, _t, name = line.split(maxsplit=2)
                name = name.rstrip(b"\n")
                if name in want and int(addr, 16):
                    out["sym." + name.decode()] = int(addr, 16)
    except (OSError, ValueError):
        pass
    return out


def offsets() -> dict[str, int]:
    """What the readers need of this kernel (its BTF, the addresses of SYMBOLS): read once
    a boot (kept in /run, keyed by the boot id: BTF takes ~0.5 s to walk) and once a
    process."""
    import json

    if _offsets:
        return _offsets
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        with open(_CACHE) as f:
            got = json.load(f)
        if boot and got.get("boot") == boot and set(got.get("asked", ())) == set(_WANTED):
            _offsets.update(got["offsets"])
            return _offsets
    except (OSError, ValueError, AttributeError):
        pass
    found = {**_read_btf(), **_kallsyms()}
    _offsets.update(found)
    try:
        os.makedirs(os.path.dirname(_CACHE), exist_ok=True)
        tmp = f"{_CACHE}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"boot": boot, "asked": sorted(_WANTED), "offsets": found}, f)
        os.replace(tmp, _CACHE)
    except OSError:  # a cache only
        pass
    return _offsets


def need(*keys: str) -> list[int]:
    """The offsets named (offsets()), or Unavailable naming those this kernel lacks."""
    offs = offsets()
    lacks = [k for k in keys if k not in offs]
    if lacks:
        raise Unavailable(0, f"this kernel's BTF or symbols lack {', '.join(lacks)}")
    return [offs[k] for k in keys]


class Read(NamedTuple):
    """A read of the reader: ``size`` bytes (a multiple of 8) at ``off`` from the
    iterated object (base -1: the task; -2: the file, for task_file), from the pointer
    that an earlier read (its index) gave, or (base ABSOLUTE) at kernel address ``off``."""

    off: int
    size: int
    base: int = -1


ABSOLUTE = -3  # Read.base: ``off`` is a kernel address
_programs: dict[tuple[str, tuple[Read, ...]], int] = {}


def _reader(iter_name: str, reads: tuple[Read, ...]) -> int:
    """The program (loaded once) that writes, for each object the iterator visits, the
    bytes of ``reads`` one after another (bpf_probe_read_kernel: a read that faults gives
    zeros) to the iterator's seq_file; for task_file the fd first (8 bytes)."""
    key = (iter_name, reads)
    if key in _programs:
        return _programs[key]
    (iter_id,) = need(iter_name)
    file_iter = iter_name == "iter_task_file"
    ldx_dw, ldx_w, stx_dw = 0x79, 0x61, 0x7B
    head = 8 if file_iter else 0
    total = head + sum(r.size for r in reads)
    if total > 512 or any(r.size % 8 or r.size <= 0 for r in reads):
        raise InternalError("a BPF reader's reads do not fit its stack")
    code = [_insn(0xBF, 6, 1),  # r6 = ctx
            _insn(ldx_dw, 7, 6, 8)]  # r7 = ctx->task
    body: list[bytes] = []
    if file_iter:
        body += [_insn(ldx_dw, 8, 6, 24),  # r8 = ctx->file
                 _insn(ldx_w, 2, 6, 16),  # r2 = ctx->fd
                 _insn(stx_dw, 10, 2, -total)]  # the fd first
    at = -total + head
    where: list[int] = []
    for r in reads:
        where.append(at)
        if r.base == -1:
            base = [_insn(0xBF, 3, 7)]  # r3 = task
        elif r.base == -2:
            base = [_insn(0xBF, 3, 8)]  # r3 = file
        elif r.base == ABSOLUTE:  # r3 = the address (ld_imm64: two instructions)
            a = r.off % (1 << 64)
            base = [_insn(0x18, 3, 0, 0, c_int(a)), _insn(0, 0, 0, 0, c_int(a >> 32))]
        else:
            base = [_insn(ldx_dw, 3, 10, where[r.base])]  # r3 = the pointer read before
        body += [*base,
                 _insn(0x07, 3, 0, 0, 0 if r.base == ABSOLUTE else r.off),  # r3 += off
                 _insn(0xBF, 1, 10), _insn(0x07, 1, 0, 0, at),  # r1 = fp + at
                 _insn(0xB7, 2, 0, 0, r.size),  # r2 = size
                 _insn(0x85, 0, 0, 0, BPF_FUNC_PROBE_READ_KERNEL)]
        at += r.size
    body += [_insn(ldx_dw, 1, 6, 0), _insn(ldx_dw, 1, 1, 0),  # r1 = ctx->meta->seq
             _insn(0xBF, 2, 10), _insn(0x07, 2, 0, 0, -total),  # r2 = fp - total
             _insn(0xB7, 3, 0, 0, total),  # r3 = total
             _insn(0x85, 0, 0, 0, BPF_FUNC_SEQ_WRITE)]
    skip = len(body) + (2 if file_iter else 0)
    code.append(_insn(0x15, 7, 0, skip))  # if task == 0 goto out
    if file_iter:
        code += [body[0], _insn(0x15, 8, 0, len(body) - 1)]  # if file == 0 goto out
        body = body[1:]
    code += [*body, _insn(0xB7, 0, 0, 0, 0), _insn(0x95)]  # out: return 0
    fd = _load_iter(code, iter_id, iter_name)
    _programs[key] = fd
    return fd


def _load_iter(code: list[bytes], iter_id: int, what: str) -> int:
    """An iterator program loaded (BPF_PROG_LOAD, attached to ``iter_id``): its fd."""
    insns = ctypes.create_string_buffer(b"".join(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 14)

    def load(level: int) -> int:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(insns.raw) // 8,
                         ctypes.addressof(insns), ctypes.addressof(license_), level,
                         len(log) if level else 0, ctypes.addressof(log) if level else 0)
        struct.pack_into("8s", attr, 48, b"cryo_rd")  # prog_name
        struct.pack_into("<I", attr, 68, BPF_TRACE_ITER)  # expected_attach_type
        struct.pack_into("<I", attr, 108, iter_id)  # attach_btf_id
        return _bpf(BPF_PROG_LOAD, attr, f"prog_load {what}")

    try:  # (no verifier log unless it fails: a long program's would not fit, ENOSPC)
        return load(0)
    except Unavailable as err:
        with contextlib.suppress(Unavailable):
            return load(1)
        text = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(err.errno, f"{err.strerror} {' / '.join(text)}") from err


STACK_SIZE = 16384  # THREAD_SIZE on x86_64 (a KASAN kernel's is twice: its top not read)
_STACK = struct.Struct("<iiQQQ")  # tid, tgid, nvcsw, task->stack, task


def _stack_reader() -> int:
    """The program (loaded once) that writes, for each task, its tid and tgid, nvcsw, the
    addresses of its kernel stack and of itself, then the STACK_SIZE bytes of that stack
    (in 512-byte pieces: the BPF stack holds no more)."""
    if ("stack", ()) in _programs:
        return _programs[("stack", ())]
    iter_id, pid, nvcsw, stack = need("iter_task", "task.pid", "task.nvcsw", "task.stack")
    ldx_dw, piece = 0x79, 512

    def probe(src_reg: int, off: int, at: int, size: int) -> list[bytes]:
        return [_insn(0xBF, 3, src_reg), _insn(0x07, 3, 0, 0, off),  # r3 = src + off
                _insn(0xBF, 1, 10), _insn(0x07, 1, 0, 0, at),  # r1 = fp + at
                _insn(0xB7, 2, 0, 0, size),
                _insn(0x85, 0, 0, 0, BPF_FUNC_PROBE_READ_KERNEL)]  # fmt: skip

    def write(at: int, size: int) -> list[bytes]:
        return [_insn(ldx_dw, 1, 6, 0), _insn(ldx_dw, 1, 1, 0),  # r1 = ctx->meta->seq
                _insn(0xBF, 2, 10), _insn(0x07, 2, 0, 0, at),  # r2 = fp + at
                _insn(0xB7, 3, 0, 0, size), _insn(0x85, 0, 0, 0, BPF_FUNC_SEQ_WRITE)]

    head = _STACK.size
    body = [*probe(7, pid, -head, 8), *probe(7, nvcsw, -head + 8, 8),
            *probe(7, stack, -head + 16, 8),
            _insn(0x7B, 10, 7, -head + 24),  # the task's address
            _insn(ldx_dw, 8, 10, -head + 16),  # r8 = task->stack
            *write(-head, head)]  # fmt: skip
    for k in range(STACK_SIZE // piece):
        body += [*probe(8, k * piece, -piece, piece), *write(-piece, piece)]
    code = [_insn(0xBF, 6, 1), _insn(ldx_dw, 7, 6, 8),  # r6 = ctx, r7 = ctx->task
            _insn(0x15, 7, 0, len(body)),  # if task == 0 goto out
            *body, _insn(0xB7, 0, 0, 0, 0), _insn(0x95)]  # fmt: skip
    fd = _load_iter(code, iter_id, "stack reader")
    _programs[("stack", ())] = fd
    return fd


def task_stack(tid: int) -> tuple[int, int, int, bytes] | None:
    """Thread ``tid``'s voluntary context switches, the address of its task_struct and
    of its kernel stack, and that stack's bytes as they are now (a sleeping thread's
    frames: what its sleep keeps there); None if it is gone."""
    prog = _stack_reader()
    data = _run(prog, tid, 0, "stack reader")
    if len(data) < _STACK.size + STACK_SIZE:
        return None
    got, _tgid, nvcsw, stack, task = _STACK.unpack_from(data)
    if got != tid:
        return None
    return nvcsw, task, stack, data[_STACK.size : _STACK.size + STACK_SIZE]


def read(iter_name: str, reads: tuple[Read, ...], *, tid: int = 0, pid: int = 0) -> bytes:
    """One run of the reader of ``reads`` over the tasks (``iter_task``) or the files
    (``iter_task_file``) of thread ``tid``, of process ``pid``'s threads, or of every
    task (neither): the records it wrote, one after another."""
    return _run(_reader(iter_name, reads), tid, pid, iter_name)


def _run(prog: int, tid: int, pid: int, iter_name: str) -> bytes:
    """Iterator program ``prog`` run once over thread ``tid``, process ``pid``'s threads
    or every task (neither): what it wrote."""
    info = ctypes.create_string_buffer(16)  # union bpf_iter_link_info: task.tid, .pid
    struct.pack_into("<II", info, 0, tid, pid)
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIIIQI", attr, 0, prog, 0, BPF_TRACE_ITER, 0, ctypes.addressof(info),
                     len(info))  # fmt: skip
    link = _bpf(BPF_LINK_CREATE, attr, f"link_create {iter_name} tid={tid} pid={pid}")
    try:
        attr = ctypes.create_string_buffer(8)
        struct.pack_into("<I", attr, 0, link)
        it = _bpf(BPF_ITER_CREATE, attr, "iter_create")
        try:
            chunks = []
            while chunk := os.read(it, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(it)
    finally:
        os.close(link)
    return b"".join(chunks)


_cpu_offsets: list[int] = []


def possible_cpus() -> int:
    """nr_cpu_ids: one past the highest possible CPU (/sys/devices/system/cpu/possible)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    return max(int(part.rpartition("-")[2]) for part in text.split(",")) + 1


def per_cpu_offsets() -> list[int]:
    """__per_cpu_offset[cpu] for every possible CPU (what turns a per-cpu pointer into
    that CPU's copy), read once a process.  Neither the array nor this_cpu_off has its
    address in /proc/kallsyms without CONFIG_KALLSYMS_ALL, and the verifier's typed
    per-cpu helpers take no pointer a reader can walk to here, so: the task group of
    cryo's own thread has a cfs_rq per CPU, each pointing to that CPU's runqueue (a
    per-cpu variable); BTF gives the section offsets of runqueues and of this_cpu_off,
    so each CPU's this_cpu_off (its own offset) lies at a known distance from its
    runqueue.  Checked: each runqueue says it is that CPU's, and every CPU's runqueue
    less its offset is the same address (the variable's own)."""
    if _cpu_offsets:
        return _cpu_offsets
    tg, arr, rq_, cpu, s_rq, s_off = need("task.sched_task_group", "tg.cfs_rq", "cfs_rq.rq",
                                          "rq.cpu", "percpu.runqueues", "percpu.this_cpu_off")
    n = possible_cpus()
    got: list[tuple[int, int]] = []  # (runqueue, offset) of each CPU
    step = 12  # CPUs a run (4 reads each, 8 bytes: within the reader's 512 bytes)
    for first in range(0, n, step):
        cpus = range(first, min(n, first + step))
        reads = [Read(tg, 8), Read(arr, 8, 0)]
        k = len(cpus)
        reads += [Read(8 * c, 8, 1) for c in cpus]  # tg->cfs_rq[c]
        reads += [Read(rq_, 8, 2 + i) for i in range(k)]  # ->rq
        reads += [Read(cpu, 8, 2 + k + i) for i in range(k)]  # rq->cpu
        reads += [Read(s_off - s_rq, 8, 2 + k + i) for i in range(k)]  # this_cpu_off
        data = read("iter_task", tuple(reads), tid=threading.get_native_id())
        if len(data) < 8 * len(reads):
            raise Unavailable(0, "the per-cpu offsets could not be read")
        v = struct.unpack_from(f"<{len(reads)}Q", data)
        rqs, ids, offs = v[2 + k : 2 + 2 * k], v[2 + 2 * k : 2 + 3 * k], v[2 + 3 * k :]
        for i, c in enumerate(cpus):
            if not rqs[i] or ids[i] & 0xFFFFFFFF != c:
                raise Unavailable(0, f"CPU {c}'s runqueue not found")
        got += zip(rqs, offs, strict=True)
    if len({(r - o) % (1 << 64) for r, o in got}) != 1:
        raise Unavailable(0, "the per-cpu offsets read do not agree")
    _cpu_offsets[:] = [o for _r, o in got]
    return _cpu_offsets
