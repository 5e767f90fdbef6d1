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

import ctypes
import os
import struct
from dataclasses import dataclass

from cryo.linux.libc import libc

SYS_BPF = 321
BPF_PROG_LOAD, BPF_LINK_CREATE, BPF_ITER_CREATE = 5, 28, 33
BPF_PROG_TYPE_TRACING, BPF_TRACE_ITER = 26, 28
BPF_FUNC_SEQ_WRITE = 127
BTF_PATH = "/sys/kernel/btf/vmlinux"
# BTF kinds (include/uapi/linux/btf.h) and what follows each btf_type: fixed bytes, and
# bytes per vlen item
_BTF_INT, _BTF_PTR, _BTF_STRUCT, _BTF_ENUM, _BTF_FUNC, _BTF_ENUM64 = 1, 2, 4, 6, 12, 19
_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class Unavailable(OSError):
    """This kernel, or cryo's privileges, give no BPF iterator."""


@dataclass(frozen=True)
class Layout:
    """What the program needs of this kernel: the BTF id of the task_file iterator's
    function, the byte offsets of file->f_inode and inode->i_state and the size of the
    latter, and I_LINKABLE's value where BTF has it (an enum since Linux 6.18)."""

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
    lay = layout()
    prog = _load(lay)
    info = ctypes.create_string_buffer(16)  # union bpf_iter_link_info: task.tid, .pid
    struct.pack_into("<II", info, 0, 0, pid)
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIIIQI", attr, 0, prog, 0, BPF_TRACE_ITER, 0, ctypes.addressof(info),
                     len(info))  # fmt: skip
    link = _bpf(BPF_LINK_CREATE, attr, f"link_create task_file pid={pid}")
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
    data = b"".join(chunks)
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
