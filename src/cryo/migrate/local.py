"""``cryo checkpoint --pre-copy``: a directory image written while the process runs, the
process frozen only for the pages written during the rounds and the non-memory state
(docs/design.md, "Migration").

The rounds (cryo.migrate.precopy) write their blocks into the image's pages.img as they
read them; the final checkpoint writes into the same sink (:class:`PreCopyDirSink`, a
DirSink made before the rounds and handed to the session's worker), and at commit the
PBLK records are written in block order: the rounds' blocks first (cut to the pages
still present at the freeze), then the final ones, whose pages override the rounds'
when a restart writes the blocks in order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from cryo.engine.session import CheckpointSession, DumpResult
from cryo.image import records as R
from cryo.image.sink import DirSink, Runs, Tag
from cryo.image.stream import _contiguous, pieces
from cryo.migrate.precopy import MAX_ROUNDS, PreCopy, Round, arm_options


class PreCopyDirSink(DirSink):
    """A directory image that takes blocks before the checkpoint proper (the rounds')."""

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._core_f.flush()  # (before the worker forks: else both copies would write it)
        self.rounds_blocks: list[dict[str, Any]] = []  # metas of the rounds' blocks
        self.final_blocks: list[dict[str, Any]] = []
        self.present: dict[int, tuple[Runs, bool]] = {}

    def close_copy(self) -> None:
        """This process's copy, once the worker's has committed: its fds closed."""
        for fd in (self._pages_fd, self._direct_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pages_fd = self._direct_fd = -1
        with contextlib.suppress(OSError):
            self._core_f.close()

    def round_block(self, pid: int, runs: list[list[int]], data: memoryview) -> None:
        meta = self.write_block(data, runs)
        meta["pid"] = pid
        self.rounds_blocks.append(meta)

    def selected(self, tag: Tag, present: Runs, reset: bool) -> None:
        if tag[0] == "pid":
            self.present[tag[1]] = (present, reset)

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        if kind == R.PBLK:  # (written in block order at commit)
            self.final_blocks.append(payload)
            return
        super().record(kind, payload, raw=raw)

    def commit(self) -> None:
        blocks: list[dict[str, Any]] = []
        for b in self.rounds_blocks:
            present, reset = self.present.get(b["pid"], ([], True))
            if reset:
                continue
            kept = pieces(b["runs"], present)
            if sum(n for _, n, _ in kept) == b["raw"]:
                blocks.append(b)
                continue
            fd = os.open(os.path.join(self.tmp, "pages.img"), os.O_RDONLY | os.O_NOFOLLOW)
            try:  # a block cut: its pieces written again as blocks of their own
                for cut, off, size in _contiguous(kept):
                    data = os.pread(fd, size, b["offset"] + off)
                    meta = self.write_block(memoryview(data), [list(r) for r in cut])
                    meta["pid"] = b["pid"]
                    blocks.append(meta)
            finally:
                os.close(fd)
        blocks.extend(self.final_blocks)
        for i, b in enumerate(blocks):
            super().record(R.PBLK, {**b, "index": i})
        super().commit()


def checkpoint_pre_copy(pid: int, path: str, *, scope: str = "process", force: bool = False,
                        direct_io: bool = True, max_rounds: int | None = None,
                        report: Callable[[Round], None] | None = None,
                        **engine: Any) -> tuple[DumpResult, list[Round], float]:  # fmt: skip
    """Checkpoint ``pid`` into directory ``path`` with pre-copy rounds; returns the
    final checkpoint's result (``freeze_seconds``: the final freeze), the rounds, and
    the arming's freeze."""
    sink = PreCopyDirSink(path, force=force, direct=direct_io)
    try:
        pc = PreCopy(pid, lambda _n, p, runs, data: sink.round_block(p, runs, data),
                     scope=scope, report=report, options=arm_options(engine),
                     max_rounds=max_rounds or MAX_ROUNDS)  # fmt: skip
        t0 = time.perf_counter()
        pc.arm()
        pc.run()
        sink.tracking = pc.tracking(sink.selected)
        r = CheckpointSession(pid, sink, scope=scope, **engine).run()
        r.total_seconds = time.perf_counter() - t0
    except BaseException:
        with contextlib.suppress(Exception):
            sink.abort()
        raise
    sink.close_copy()
    return r, pc.rounds, pc.arm_seconds
