"""A ``syscall`` instruction to run injected calls from, in a target without a usable
vDSO (issue 9, "Memory").

The injector points the stopped task's instruction pointer at a ``syscall`` (0f 05)
that already exists in its address space.  The vDSO has several; a process may have
none (it unmapped its vDSO, or the kernel was booted with vdso=0).  The processor
decodes from wherever the instruction pointer is, so the two bytes 0f 05 anywhere in an
executable mapping do: the program's text, or a library's.  They are read through
/proc/PID/mem, which reads execute-only mappings too.  The [vsyscall] page is never
used: its code is emulated and a real syscall there is refused by the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import re

from cryo import procfs
from cryo.engine.inject import find_vdso_syscall
from cryo.errors import CryoError, NoSuchProcess

log = logging.getLogger(__name__)
SYSCALL = b"\x0f\x05"
_CHUNK = 1 << 20
_NOT_TEXT = ("[vsyscall]", "[vvar]", "[vvar_vclock]", "[uprobes]")


def find_text_syscall(pid: int) -> int:
    """The address of a ``syscall`` instruction in an executable mapping of ``pid``
    (the vDSO first, then the others in address order)."""
    maps = procfs.parse_maps(procfs.read(pid, "maps"))
    text = sorted((v for v in maps if v.perms[2] == "x" and v.path not in _NOT_TEXT),
                  key=lambda v: (v.path != "[vdso]", v.start))  # fmt: skip
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError as err:
        if err.errno in (errno.ESRCH, errno.ENOENT):
            raise NoSuchProcess(f"process {pid} vanished", pid=pid) from err
        raise CryoError(f"cannot read the memory of {pid}: {err}", pid=pid) from err
    try:
        for v in text:
            pos, tail = v.start, b""
            while pos < v.end:
                try:
                    data = os.pread(fd, min(_CHUNK, v.end - pos), pos)
                except OSError:
                    break
                if not data:
                    break
                m = re.search(re.escape(SYSCALL), tail + data)
                if m:
                    addr = pos - len(tail) + m.start()
                    log.debug("pid %d: syscall instruction at %#x (%s)", pid, addr,
                              v.path or "anonymous")  # fmt: skip
                    return addr
                tail, pos = data[-1:], pos + len(data)
    finally:
        os.close(fd)
    raise CryoError(f"no syscall instruction found in any executable mapping of {pid}",
                    pid=pid, resource="memory")  # fmt: skip


def find_syscall(pid: int) -> int:
    """The vDSO's ``mov $nr, %eax; syscall`` when there is one, else any ``syscall`` in
    the target's executable mappings."""
    try:
        return find_vdso_syscall(pid)
    except NoSuchProcess:
        raise
    except CryoError:
        return find_text_syscall(pid)
