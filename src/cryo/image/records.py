"""Record kinds of a process image (core.img) and their payload keys.

Every payload is a msgpack map; docs/image-format.md is the grammar.  Each resource
module of cryo.engine writes and reads exactly one kind.
"""

from __future__ import annotations

CORE_MAGIC = b"CRYOCORE"
PAGES_MAGIC = b"CRYOPAGE"

HEAD = b"HEAD"  # the image: arch, kernel, cryo version, cpu, pids, options
TASK = b"TASK"  # engine.task: ids, credentials, limits, comm, personality, rseq, ...
MM = b"MM  "  # engine.memory: mm fields, auxv, exe, vmas
REGS = b"REGS"  # engine.registers: user_regs_struct and xstate
SIGS = b"SIGS"  # engine.signals: actions, mask, pending, altstack
TIMR = b"TIMR"  # engine.timers: itimers and POSIX timers
FILE = b"FILE"  # engine.files: fd table, cwd, root, umask
FDAT = b"FDAT"  # raw: contents of a file deleted while open (engine.files)
PBLK = b"PBLK"  # one block of page data in pages.img: offset, sizes, codec, checksum, runs

KINDS = (HEAD, TASK, MM, REGS, SIGS, TIMR, FILE, FDAT, PBLK)
