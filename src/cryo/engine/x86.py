"""x86 state of a process, beyond its registers: its local descriptor table, and the
permissions for dynamically enabled xstate features (AMX tiles).

The LDT (modify_ldt: Wine, DOSEMU, 32-bit code that loads its own segments) is read by
the process itself at checkpoint, written back entry by entry at restart.  It belongs
to the mm (every thread shares it, a fork copies it); a restored process starts without
one, so that before this it came back with none and the restart exited 0 (found by
probing).  modify_ldt(0) copies the table from its start and zero-fills the rest of the
buffer (returning the buffer's size); 0 means there is none.  A zero descriptor is an
empty entry, so only the others are kept, by index, as the kernel stores them (8 bytes
each: struct desc_struct), and turned back into the struct user_desc that
modify_ldt(0x11) takes, which the kernel encodes again into the same 8 bytes (fill_ldt).

A process that asked for AMX (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) and
used its tiles has them in its threads' xstate, which a restored process, without that
permission, could not be given (PTRACE_SETREGSET: EINVAL, the restart failed): the
permitted features (ARCH_GET_XCOMP_PERM) are kept in TASK["xcomp"] and asked for again
before the registers; a thread whose tiles hold data is refused (see check_thread)."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Generator
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.engine.inject import Batch
from cryo.engine.ptrace import Tracee
from cryo.errors import Unsupported
from cryo.linux import libc
from cryo.linux.consts import MAP, PROT, SYS

ENTRY = 8  # LDT_ENTRY_SIZE
ENTRIES = 8192  # LDT_ENTRIES
_READ, _WRITE = 0, 0x11  # modify_ldt funcs: read, write (new mode: 'useable' kept)
USER_DESC = struct.Struct("<IIII")  # entry_number, base_addr, limit, flags bitfield
ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM = 0x1022, 0x1023  # <asm/prctl.h>
XFEATURE_XTILEDATA = 18


def dump(ctx: DumpContext, b: Batch) -> Generator[None, Batch, None]:
    """Queue hook (drivers.py), in the leader: the xstate features permitted, into
    TASK["xcomp"] where they are more than a new process's; the LDT's non-empty entries
    into TASK["ldt"] as [[index, descriptor]], when it has any."""
    inj = ctx.inj
    probe = b.reserve(ENTRY)
    perm = b.reserve(8)
    has_ldt = b.call(SYS.modify_ldt, _READ, probe, ENTRY)
    got_perm = b.call(SYS.arch_prctl, ARCH_GET_XCOMP_PERM, perm, may_fail=True)
    yield
    if b.result(got_perm) == 0:
        xcomp = int.from_bytes(b.read(perm, 8), "little")
        if xcomp & ~_default_xcomp():
            ctx.records[b"TASK"]["xcomp"] = xcomp
    if b.result(has_ldt) == 0:
        return  # no table
    size = ENTRY * ENTRIES  # the whole table, into a mapping of its own (the scratch
    # area is smaller), only for a process that has one
    buf = inj(SYS.mmap, 0, size, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0,
              what=" mapping a buffer for the LDT")  # fmt: skip
    try:
        inj(SYS.modify_ldt, _READ, buf, size)
        raw = inj.read(buf, size)
    finally:
        inj(SYS.munmap, buf, size)
    entries = [[i, d] for i, (d,) in enumerate(struct.iter_unpack("<Q", raw)) if d]
    if entries:
        ctx.records[b"TASK"]["ldt"] = entries


def check_thread(ctx: DumpContext, t: Tracee, _b: Batch) -> Generator[None, Batch, None]:
    """Queue-thread hook (no call: it waits for the process's xcomp, read by dump): a
    thread whose AMX tiles hold data (XSTATE_BV's XTILEDATA bit) is refused: the kernel
    makes room for them only when the thread itself first uses them, and a restored
    thread's xstate cannot be given them before (EINVAL).  Tiles released (tilerelease,
    as libraries do after each kernel) are not kept: the permission is asked for
    again."""
    yield
    if ctx.records[b"TASK"].get("xcomp", 0) & 1 << XFEATURE_XTILEDATA:
        xs = t.get_xstate()
        if int.from_bytes(xs[512:520], "little") & 1 << XFEATURE_XTILEDATA:
            raise Unsupported(f"thread {t.tid} of process {ctx.pid} holds data in its AMX"
                              " tiles, which a restored thread cannot be given (the kernel"
                              " makes room for them at its first use): not supported",
                              pid=ctx.pid, resource="AMX tiles")  # fmt: skip


def user_desc(index: int, d: int) -> bytes:
    """The struct user_desc (<asm/ldt.h>) that modify_ldt turns into descriptor ``d``."""
    base = (d >> 16 & 0xFFFFFF) | (d >> 56 & 0xFF) << 24
    limit = (d & 0xFFFF) | (d >> 48 & 0xF) << 16
    typ = d >> 40 & 0xF
    flags = (d >> 54 & 1  # seg_32bit
             | (typ >> 2 & 3) << 1  # contents
             | (0 if typ & 2 else 1) << 3  # read_exec_only
             | (d >> 55 & 1) << 4  # limit_in_pages
             | (0 if d >> 47 & 1 else 1) << 5  # seg_not_present
             | (d >> 52 & 1) << 6  # useable
             | (d >> 53 & 1) << 7)  # lm  # fmt: skip
    return USER_DESC.pack(index, base, limit, flags)


def restore(ctx: RestoreContext) -> None:
    """Stage "task": the xstate features asked for again; the LDT's entries written
    back, in one batch (the segment registers that may name them, and the xstate, are
    set last, with the other registers)."""
    inj = ctx.inj
    want = ctx.records[b"TASK"].get("xcomp", 0)
    if want:
        perm = inj.frame().reserve(8)
        inj(SYS.arch_prctl, ARCH_GET_XCOMP_PERM, perm)
        missing = want & ~int.from_bytes(inj.read(perm, 8), "little")
        for feature in sorted((f for f in range(64) if missing >> f & 1), reverse=True):
            inj(SYS.arch_prctl, ARCH_REQ_XCOMP_PERM, feature,
                what=f" asking for xstate feature {feature} (AMX) again")  # fmt: skip
    entries = ctx.records[b"TASK"].get("ldt") or []
    for at in range(0, len(entries), 512):  # (16 bytes each in the scratch area)
        with inj.batch() as b:
            for index, d in entries[at : at + 512]:
                b.call(SYS.modify_ldt, _WRITE, b.put(user_desc(index, d)), USER_DESC.size,
                       what=f" writing LDT entry {index}")  # fmt: skip


def _default_xcomp() -> int:
    """The xstate features permitted to a process that asked for none: cryo's, unless
    it asked (it does not)."""
    global _DEFAULT
    if _DEFAULT is None:
        buf = ctypes.c_uint64()
        try:
            libc.syscall(SYS.arch_prctl, ARCH_GET_XCOMP_PERM, ctypes.addressof(buf))
            _DEFAULT = buf.value
        except OSError:
            _DEFAULT = 0
    return _DEFAULT


_DEFAULT: int | None = None


def describe(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rec.get("ldt"):
        out["ldt"] = [f"{index}: {d:#018x}" for index, d in rec["ldt"]]
    if rec.get("xcomp"):
        out["xstate_permitted"] = f"{rec['xcomp']:#x}"
    return out
