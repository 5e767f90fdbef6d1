"""Pre-copy: the pages of a process copied in rounds while it runs, then only those written
since in the final, frozen checkpoint (docs/design.md, "Migration").

1. *Arm*: a checkpoint session whose sink takes no page (:class:`ArmSink`): the frozen
   phase only runs the engine's write tracking (engine/dirty.py: a userfaultfd in
   write-protect asynchronous mode, every private anonymous mapping registered and
   protected, a token naming the arming), and reads the mappings and the pages present.
2. *Round 1*: every present page read (process_vm_readv) while the process runs, and
   handed to ``send``.  A page written meanwhile is marked written by the kernel.
3. *Round k*: one PAGEMAP_SCAN per tracked mapping (PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING:
   the pages written since the last scan, protected again in the same walk), those pages
   read and sent.  Rounds go on until what was written is small or stops shrinking.
4. *Final*: a normal checkpoint whose sink's tracking (:class:`FinalTracking`) holds the
   arming's token: the engine's scan, in the freeze, gives the pages written since the
   last round, and the sink asks for those and for the present pages no round sent.

A page a round could not read (unmapped meanwhile) is not counted as sent.  Mappings made
after the arming are not registered: the engine counts all their pages as written.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from cryo.engine import dirty, memory
from cryo.engine.session import CheckpointSession
from cryo.errors import CryoError
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.sink import PAGE, Runs, Sink, Tag
from cryo.image.stream import intersect, normalize, subtract
from cryo.linux import libc
from cryo.linux.consts import PAGE_IS, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PROT
from cryo.preload import preload

log = logging.getLogger(__name__)
SMALL = 4 << 20  # a round that finds at most this much written is the last
SHRINK = 0.8  # ... or one that finds more than this share of the round before
MAX_ROUNDS = 12
Send = Callable[[int, int, list[list[int]], memoryview], None]  # round, pid, runs, data


@dataclass
class Round:
    number: int
    pages: int
    bytes: int
    seconds: float
    unread: int = 0  # bytes that could not be read (unmapped meanwhile)


class ArmSink:
    """The arming checkpoint's sink: takes the records it needs, no page."""

    wants_checksum = False
    path = "pre-copy arming"
    stored_bytes = 0

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.tracking = self
        self.tokens: dict[int, str] = {}
        self.vmas: dict[int, list[dict[str, Any]]] = {}
        self.present: dict[int, Runs] = {}

    # tracking: nothing is known before; nothing is copied while frozen
    def previous_records(self, kind: bytes) -> list[Any]:
        return []

    def select(self, tag: Tag, present: Runs, written: Runs | None) -> Runs:
        if tag[0] == "pid":
            self.present[tag[1]] = normalize(present)
        return []

    def inherit(self, tag: Tag, present: Runs, need: Runs) -> None:
        pass

    def side_file(self, name: str) -> IO[bytes]:
        return cast("IO[bytes]", io.BytesIO())

    def has_side(self, name: str) -> bool:
        return False

    def record(self, kind: bytes, payload: Any, *, raw: bool = False) -> None:
        if kind == dirty.KIND:
            self.tokens[payload["pid"]] = payload["token"]
        elif kind == R.MM:
            self.vmas[payload["pid"]] = payload["vmas"]

    def write_block(self, data: memoryview, runs: Runs, csum: int | None = None
                    ) -> dict[str, Any]:  # fmt: skip
        return {"index": 0, "offset": PAGE, "stored": len(data), "raw": len(data),
                "codec": "none", "csum": 0, "runs": runs}  # fmt: skip

    def commit(self) -> None:
        data = fmt.pack({"procs": [[pid, self.tokens.get(pid), self.vmas.get(pid, []),
                                    self.present.get(pid, [])] for pid in self.vmas]})
        os.pwrite(self.out_fd, data, 0)

    def abort(self) -> None:
        pass


@dataclass
class Tracked:
    """One process being pre-copied."""

    pid: int
    token: str | None
    vmas: list[dict[str, Any]]
    present: Runs
    sent: Runs = field(default_factory=list)


def arm_options(engine: dict[str, Any]) -> dict[str, Any]:
    """The arming's checkpoint options, of the final checkpoint's (``engine``): what
    could refuse the process is allowed as the final checkpoint allows it, but its
    established TCP connections are neither locked nor read (``tcp_close``: only the
    final freeze holds them)."""
    net = dict(engine.get("net") or {})
    if net.pop("tcp_established", False):
        net["tcp_close"] = True
    return {k: v for k, v in (("shell_job", engine.get("shell_job")), ("net", net)) if v}


class PreCopy:
    """The rounds of one pre-copy; ``send`` takes each block read."""

    def __init__(self, pid: int, send: Send, *, scope: str = "process",
                 max_rounds: int = MAX_ROUNDS, small: int = SMALL,
                 report: Callable[[Round], None] | None = None,
                 options: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.pid, self.scope, self.send = pid, scope, send
        self.max_rounds, self.small, self.report = max_rounds, small, report
        self.options = options or {}
        self.procs: dict[int, Tracked] = {}
        self.rounds: list[Round] = []
        self.arm_seconds = 0.0  # how long the arming froze the processes
        self.bytes_read = 0
        self._preload: threading.Thread | None = None

    def arm(self) -> None:
        """A short freeze: write tracking armed in every process of the scope."""
        fd = os.memfd_create("cryo-precopy", os.MFD_CLOEXEC)
        try:
            r = CheckpointSession(self.pid, lambda: cast("Sink", ArmSink(fd)), scope=self.scope,
                                  **self.options).run()  # fmt: skip
            self.arm_seconds = r.freeze_seconds
            size = os.fstat(fd).st_size
            got = fmt.unpack(os.pread(fd, size, 0)) if size else {"procs": []}
        finally:
            os.close(fd)
        for pid, token, vmas, present in got["procs"]:
            self.procs[pid] = Tracked(pid, token, vmas, present)

    def run(self) -> list[Round]:
        """Rounds until what is written is small or stops shrinking."""
        if not self.procs:
            self.arm()
        # what the final checkpoint's freeze would import on its way (the engine imports
        # lazily: tty, guard, linux.net, numpy for memory.dump's markers ...), imported
        # while the rounds run (after the arming's worker was forked, before the final's)
        self._preload = threading.Thread(target=preload, name="cryo-preload", daemon=True)
        self._preload.start()
        first = self.round({p.pid: p.present for p in self.procs.values()})
        last = first.bytes
        while len(self.rounds) < self.max_rounds:
            r = self.round(self.scan())
            if r.bytes <= self.small or r.bytes > SHRINK * last:
                break
            last = r.bytes
        return self.rounds

    def scan(self) -> dict[int, Runs]:
        """The pages written since the last scan, protected again (the process runs)."""
        out: dict[int, Runs] = {}
        for p in self.procs.values():
            runs: Runs = []
            try:
                pm = os.open(f"/proc/{p.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as err:
                raise CryoError(f"process {p.pid} exited during the pre-copy",
                                pid=p.pid) from err  # fmt: skip
            try:
                for v in p.vmas:
                    if v["kind"] != "anon" or not v["prot"] & PROT.READ:
                        continue
                    try:
                        got = libc.pagemap_scan(pm, v["start"], v["end"],  # (written, and
                                                PAGE_IS.PRESENT | PAGE_IS.SWAPPED,  # there)
                                                PAGE_IS.WRITTEN, mask=PAGE_IS.WRITTEN,
                                                flags=PM_SCAN_WP_MATCHING
                                                | PM_SCAN_CHECK_WPASYNC)  # fmt: skip
                    except OSError:  # unmapped or remapped since: the final takes it
                        continue
                    runs.extend([s, e - s] for s, e, _c in got)
            finally:
                os.close(pm)
            out[p.pid] = normalize(runs)
        return out

    def round(self, want: dict[int, Runs]) -> Round:
        t0 = time.perf_counter()
        n = len(self.rounds) + 1
        total = unread = 0
        for pid, runs in want.items():
            p = self.procs[pid]
            done, missed = self._copy(n, pid, runs)
            p.sent = normalize(subtract(p.sent, missed) + done)
            total += sum(x for _, x in done)
            unread += sum(x for _, x in missed)
        r = Round(n, total // PAGE, total, time.perf_counter() - t0, unread)
        self.rounds.append(r)
        if self.report:
            self.report(r)
        return r

    def _copy(self, n: int, pid: int, runs: Runs) -> tuple[Runs, Runs]:
        """Read ``runs`` of ``pid`` block by block and send them: (read, not read).  Two
        buffers: a block is sent (hashed, written to the socket) by a thread of its own
        while the next one is read."""
        done: Runs = []
        missed: Runs = []
        total = sum(x for _, x in runs)
        size = max(PAGE, min(memory.BLOCK, total))
        bufs = [mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                for _ in range(2 if total > size else 1)]  # fmt: skip
        free: queue.Queue[mmap.mmap] = queue.Queue()
        for b in bufs:
            free.put(b)
        todo: queue.Queue[tuple[mmap.mmap, Runs, int] | None] = queue.Queue()
        failure: list[BaseException] = []

        def sender() -> None:
            while (item := todo.get()) is not None:
                buf, got_runs, off = item
                try:
                    if not failure:
                        self.send(n, pid, got_runs, memoryview(buf)[:off])
                except BaseException as err:  # raised by the reader below
                    failure.append(err)
                finally:
                    free.put(buf)

        th = threading.Thread(target=sender, name="cryo-precopy-send", daemon=True)
        th.start()
        try:
            for block in memory.split_blocks([(a, x) for a, x in runs], size):
                if failure:
                    break
                buf = free.get()
                got_runs, off = self._read(pid, buf, block, missed)
                if off:
                    todo.put((buf, got_runs, off))
                    self.bytes_read += off
                    done.extend(got_runs)
                else:
                    free.put(buf)
        finally:
            todo.put(None)
            th.join()
            for b in bufs:
                b.close()
        if failure:
            raise failure[0]
        return normalize(done), normalize(missed)

    @staticmethod
    def _read(pid: int, buf: mmap.mmap, block: Runs, missed: Runs) -> tuple[Runs, int]:
        """process_vm_readv of ``block`` into ``buf``: the runs read, their bytes; runs
        that could not be read go to ``missed``."""
        base = libc.buffer_address(buf)
        got_runs: Runs = []
        off = 0
        for i in range(0, len(block), libc.IOV_MAX):
            chunk = block[i : i + libc.IOV_MAX]
            local, pos = [], off
            for _a, x in chunk:
                local.append((base + pos, x))
                pos += x
            try:
                got = libc.process_vm_readv(pid, local, [(a, x) for a, x in chunk])
            except ProcessLookupError as err:
                raise CryoError(f"process {pid} exited during the pre-copy",
                                pid=pid) from err  # fmt: skip
            except OSError:
                got = 0
            if got == pos - off:
                got_runs.extend(chunk)
                off = pos
                continue
            for a, x in chunk:  # short: one run at a time, skipping the holes
                try:
                    k = libc.process_vm_readv(pid, [(base + off, x)], [(a, x)])
                except OSError:
                    k = 0
                if k == x:
                    got_runs.append([a, x])
                    off += x
                else:
                    missed.append([a, x])
        return got_runs, off

    def tracking(self, on_select: Callable[[Tag, Runs, bool], None] | None = None
                 ) -> FinalTracking:  # fmt: skip
        """The final checkpoint's tracking.  What its freeze would import is imported
        before it (the rounds' preload, joined here): numpy above all, with which
        memory.dump tells the tracking's uffd-wp markers from pages (85-100 ms of a 1 GiB
        process's final freeze), and the engine's lazily imported modules (7-14 ms)."""
        if self._preload is not None:
            self._preload.join()
        import numpy  # noqa: F401  (in case the preload could not)

        return FinalTracking({p.pid: p.token for p in self.procs.values() if p.token},
                             {p.pid: p.sent for p in self.procs.values()}, on_select)


class FinalTracking:
    """The final checkpoint's write tracking: its "previous version" is the rounds."""

    def __init__(self, tokens: dict[int, str], sent: dict[int, Runs],
                 on_select: Callable[[Tag, Runs, bool], None] | None) -> None:  # fmt: skip
        self.tokens, self.sent, self.on_select = tokens, sent, on_select
        self.final_bytes = 0  # page bytes asked of the final checkpoint
        self.present_bytes = 0  # page bytes of the processes at the freeze

    def previous_records(self, kind: bytes) -> list[Any]:
        if kind != dirty.KIND:
            return []
        return [{"pid": pid, "token": t} for pid, t in self.tokens.items()]

    def select(self, tag: Tag, present: Runs, written: Runs | None) -> Runs:
        """The pages written since the last round, and those no round sent; ``written``
        None (tracking lost, a new process): all of them."""
        pres = normalize(present)
        sent = self.sent.get(tag[1]) if tag[0] == "pid" else None
        reset = written is None or sent is None
        if reset:
            need = pres
        else:
            assert written is not None and sent is not None
            need = normalize(intersect(normalize(written), pres) + subtract(pres, sent))
        if self.on_select is not None:
            self.on_select(tag, pres, reset)
        self.final_bytes += sum(n for _, n in need)
        self.present_bytes += sum(n for _, n in pres)
        return need

    def inherit(self, tag: Tag, present: Runs, need: Runs) -> None:
        pass
