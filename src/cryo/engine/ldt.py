"""The process's local descriptor table (modify_ldt: Wine, DOSEMU, 32-bit code that
loads its own segments): read by the process itself at checkpoint, written back entry
by entry at restart.  It belongs to the mm (every thread shares it, a fork copies it);
a restored process starts without one, so that before this it came back with none and
the restart exited 0 (found by probing).

modify_ldt(0) copies the table from its start and zero-fills the rest of the buffer
(returning the buffer's size); 0 means there is none.  A zero descriptor is an empty
entry, so only the others are kept, by index, as the kernel stores them (8 bytes each:
struct desc_struct), and turned back into the struct user_desc that modify_ldt(0x11)
takes, which the kernel encodes again into the same 8 bytes (fill_ldt)."""

from __future__ import annotations

import struct
from typing import Any

from cryo.engine.context import DumpContext, RestoreContext
from cryo.linux.consts import MAP, PROT, SYS

ENTRY = 8  # LDT_ENTRY_SIZE
ENTRIES = 8192  # LDT_ENTRIES
_READ, _WRITE = 0, 0x11  # modify_ldt funcs: read, write (new mode: 'useable' kept)
USER_DESC = struct.Struct("<IIII")  # entry_number, base_addr, limit, flags bitfield


def dump(ctx: DumpContext) -> None:
    """Inject hook, in the leader: the table's non-empty entries into TASK["ldt"] as
    [[index, descriptor]], when it has any (one injected call when it has none)."""
    inj = ctx.inj
    probe = inj.frame().reserve(ENTRY)
    if inj(SYS.modify_ldt, _READ, probe, ENTRY) == 0:
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
    """Stage "task": the entries written back, in one batch (the segment registers that
    may name them are set with the others, last)."""
    entries = ctx.records[b"TASK"].get("ldt") or []
    inj = ctx.inj
    for at in range(0, len(entries), 512):  # (16 bytes each in the scratch area)
        with inj.batch() as b:
            for index, d in entries[at : at + 512]:
                b.call(SYS.modify_ldt, _WRITE, b.put(user_desc(index, d)), USER_DESC.size,
                       what=f" writing LDT entry {index}")  # fmt: skip


def describe(rec: dict[str, Any]) -> list[str]:
    return [f"{index}: {d:#018x}" for index, d in rec.get("ldt") or []]
