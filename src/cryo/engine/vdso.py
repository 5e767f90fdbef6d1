"""The vDSO a restored process finds where its own was, checked at restart.

A restart moves the restarting kernel's vDSO to the address the image's had (memory.py);
the process's code calls into it through pointers taken at its start: glibc's
clock_gettime, gettimeofday, time, getcpu and getrandom are the vDSO's base plus each
function's offset in the image's vDSO.  On a kernel whose vDSO lays its functions out
otherwise (another release or build, same size or not), those calls would jump into the
middle of other code: a crash, or a wrong time, long after the restart said it
succeeded.  And a thread frozen inside the vDSO resumes at its saved address, which is
right only in the same code.

So the checkpoint keeps, in HEAD["vdso"], the vDSO's dynamic symbols (name, offset,
size) and a checksum of its whole image (cryo's own vDSO: the kernel gives every process
the same one).  A restart refuses (ImageIncompatible, exit 6, before anything is made)
an image whose symbols differ from this kernel's, or, where only the code differs (the
boot patches the vDSO's instructions for the CPU, in place), one with a thread inside
the vDSO.  Images without HEAD["vdso"] keep the older check alone: the sizes of the
vDSO and vvar (memory.check).  CRIU instead maps a proxy of the old vDSO that jumps to
the new one's functions; cryo refuses, as it does for an xsave layout that differs.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any

from cryo.errors import ImageIncompatible
from cryo.image.format import checksum

AT_SYSINFO_EHDR = 33
SHT_DYNSYM = 11
RIP = 16 * 8  # offset of rip in struct user_regs_struct (THRD "regs")


def _own_image() -> bytes | None:
    """This process's vDSO, from its ELF header to the end of its section headers (the
    whole image the kernel maps); None without one (vdso=0)."""
    with open("/proc/self/auxv", "rb") as f:
        auxv = f.read()
    base = next((v for k, v in struct.iter_unpack("<QQ", auxv) if k == AT_SYSINFO_EHDR), 0)
    if not base:
        return None
    fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 64, base)
        shoff = struct.unpack_from("<Q", head, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        return os.pread(fd, shoff + shentsize * shnum, base)
    finally:
        os.close(fd)


def _symbols(img: bytes) -> list[list[Any]]:
    """The dynamic symbols of a vDSO image: [name, offset, size], sorted."""
    shoff = struct.unpack_from("<Q", img, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", img, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", img, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for sec in secs:
        if sec[1] != SHT_DYNSYM:
            continue
        names = secs[sec[6]][4]  # sh_link: the string table, by its offset
        for off in range(sec[4], sec[4] + sec[5], 24):
            name_at, _info, _other, _shndx, value, size = struct.unpack_from("<IBBHQQ", img, off)
            if name_at:
                name = img[names + name_at : img.index(b"\0", names + name_at)].decode()
                out.append([name, value, size])
    return sorted(out)


@functools.cache
def here() -> dict[str, Any] | None:
    """HEAD["vdso"]: this kernel's vDSO, its symbols and the checksum of its image."""
    img = _own_image()
    if img is None:
        return None
    return {"symbols": _symbols(img), "checksum": checksum(img)}


def check(saved: dict[str, Any] | None, plan: Any, kernel: str | None) -> None:
    """Refuse an image whose processes would call into a vDSO laid out otherwise here,
    or resume a thread inside vDSO code that differs (see the module's text)."""
    mine = here()
    if not saved or mine is None:
        return
    made_on = f"kernel {kernel}" if kernel else "another kernel"
    if saved["symbols"] != mine["symbols"]:
        raise ImageIncompatible(
            f"the image's vDSO ({made_on}) places its functions elsewhere than this kernel's"
            f" ({os.uname().release}): the processes' calls into it (clock_gettime, ...)"
            " would run other code; restoring on another kernel is not supported yet")
    if saved["checksum"] == mine["checksum"]:
        return
    for pid, recs in plan.procs.items():
        for v in recs[b"MM  "]["vmas"]:
            if v["kind"] != "special" or v["path"] != "[vdso]":
                continue
            for t in plan.threads[pid]:
                rip = struct.unpack_from("<Q", t["regs"], RIP)[0]
                if v["start"] <= rip < v["end"]:
                    raise ImageIncompatible(
                        f"thread {t['tid']} of process {pid} was frozen inside the vDSO,"
                        f" whose code differs on this kernel ({os.uname().release}) from"
                        f" the image's ({made_on}): it would resume in other code")


__all__ = ["check", "here"]
