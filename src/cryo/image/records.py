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
TREE = b"TREE"  # engine.tree: the processes, their parents, groups, sessions, threads
THRD = b"THRD"  # engine.threads: one thread: registers, xstate, mask, pending, ...
SIGS = b"SIGS"  # engine.signals: actions and process-wide pending signals
TIMR = b"TIMR"  # engine.timers: itimers and POSIX timers
FILE = b"FILE"  # engine.files: a process's fd table, cwd, root, umask
FDSC = b"FDSC"  # engine.files: every open file description, once (pipes with their data)
SHMO = b"SHMO"  # engine.shmem: shared memory objects (their pages: PBLK with "obj")
FDAT = b"FDAT"  # raw: contents of a file deleted while open (engine.files)
PBLK = b"PBLK"  # a block of page data in pages.img: offset, sizes, codec, checksum, runs,
#                 and whose: "pid" (addresses in that process) or "obj" (object offsets)

KINDS = (HEAD, TREE, TASK, MM, THRD, SIGS, TIMR, FILE, FDSC, SHMO, FDAT, PBLK)
