"""Post-copy (``cryo migrate --lazy``): the process starts on the destination at once, its
private anonymous pages fetched from the source as it touches them (docs/design.md,
"Post-copy"; CRIU's lazy-pages, criu/uffd.c, works the same way).

Source (:class:`LazyTracking`, :func:`serve_pages`): the final checkpoint withholds the
present pages of every private anonymous mapping it can fill lazily and names them in a
``LAZY {tag, runs}`` frame; once its stream has ended the source stays frozen (held by the
checkpoint's worker), pushes the withheld pages in ``PGDT {runs} + pages`` frames, in
address order, and answers each ``PGRQ {runs}`` (a fault on the destination) before
pushing more; ``LEND`` once every page was sent.

Destination (:class:`LazyFramer`, :class:`Pager`): the restart registers the mappings of
the withheld pages in a userfaultfd of the process (missing mode, with the fork, remap,
remove and unmap events), and a thread of cryo receive serves it from then on: a fault
on a withheld page asks the source for it and its neighbours (``PGRQ``), a fault on a
page that was not present (or was dropped since) gets a zero page, each ``PGDT`` goes in
with UFFDIO_COPY (which wakes the waiting thread).  A fork gives the child a uffd of its
own, served the same way from the pages still missing at the fork.  When every page is
in, the uffds are closed: nothing of it is left in the process.  The receiver says
``RUNS {pid}`` as the process is let go, ``OKAY`` once every page is in; only then is
the source killed.

If the connection breaks after the process was let go, the destination's copy cannot go
on (part of its memory is only on the source): it is killed, and the source, still
frozen with all of its state, resumes (the checkpoint is aborted).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cryo import procfs
from cryo.errors import CryoError, ImageCorrupt
from cryo.image import format as fmt
from cryo.image.sink import PAGE, Runs, Tag
from cryo.image.stream import Framer, StreamError, intersect, normalize, remote_error, subtract
from cryo.linux import uffd

log = logging.getLogger(__name__)
CHUNK = 256 << 10  # bytes of pages per pushed frame: a fault waits behind at most a few
AROUND = 64 << 10  # a fault asks for the aligned window of this size around it
FEATURES = (uffd.FEATURE_EVENT_FORK | uffd.FEATURE_EVENT_REMAP | uffd.FEATURE_EVENT_REMOVE
            | uffd.FEATURE_EVENT_UNMAP)  # fmt: skip
# VmFlags of mappings whose pages are not withheld (sent in the freeze as before): locked
# (the restore would populate them before the uffd), droppable, hugetlb, growsdown, and
# wipe-on-fork (a child forked during the lazy phase must find zeros there, not the
# pages its uffd would be given)
_NOT_LAZY = {"lo", "lf", "dp", "ht", "gd", "wf"}


def lazy_vmas(vmas: list[procfs.Vma]) -> list[tuple[int, int]]:
    """[start, end) of the private anonymous mappings whose pages can come lazily."""
    out = []
    for v in vmas:
        anon = v.path in ("", "[heap]", "[stack]") or v.path.startswith("[anon:")
        if anon and not v.shared and not _NOT_LAZY & set(v.flags):
            out.append((v.start, v.end))
    return out


# -- the source ------------------------------------------------------------------------


class LazyTracking:
    """The final checkpoint's page selection: everything but the lazy pages, which are
    named to the receiver (``LAZY``) and kept in :attr:`lazy` for :func:`serve_pages`."""

    tracks_writes = False  # (no write tracking is armed: engine/session.py)

    def __init__(self, framer: Framer) -> None:
        self.framer = framer
        self.lazy: dict[int, Runs] = {}
        self.final_bytes = 0
        self.present_bytes = 0

    def previous_records(self, kind: bytes) -> list[Any]:
        return []

    def select(self, tag: Tag, present: Runs, written: Runs | None) -> Runs:
        pres = normalize(present)
        self.present_bytes += sum(n for _, n in pres)
        if tag[0] != "pid":
            self.final_bytes += sum(n for _, n in pres)
            return pres
        pid = tag[1]
        vmas = procfs.parse_smaps_flags(procfs.read(pid, "smaps"))
        lazy = intersect(pres, normalize([[s, e - s] for s, e in lazy_vmas(vmas)]))
        self.lazy[pid] = lazy
        self.framer.send(b"LAZY", {"tag": list(tag), "runs": lazy})
        need = subtract(pres, lazy)
        self.final_bytes += sum(n for _, n in need)
        return need

    def inherit(self, tag: Tag, present: Runs, need: Runs) -> None:
        pass


def serve_pages(framer: Framer, fileno: int, pid: int, runs: Runs, *, timeout: float,
                on_running: Callable[[dict[str, Any]], None]) -> dict[str, Any]:  # fmt: skip
    """In the checkpoint's worker, the process frozen: push ``runs`` of ``pid`` and answer
    the receiver's requests until it says ``OKAY`` (returned); ``RUNS`` is handed to
    ``on_running``.  Raises on ``FAIL``, a broken connection, or ``timeout`` seconds of
    silence once everything was sent: the checkpoint is then aborted (the process
    resumes here)."""
    from cryo.migrate.precopy import PreCopy

    todo: deque[list[int]] = deque()
    for a, n in runs:
        for off in range(0, n, CHUNK):
            todo.append([a + off, min(CHUNK, n - off)])
    given: Runs = []
    buf = mmap.mmap(-1, max(CHUNK, AROUND * 4), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ended = False
    try:
        while True:
            wait = 0.0 if todo or not ended else timeout  # (LEND as soon as all are sent)
            readable, _, _ = select.select([fileno], [], [], wait)
            if readable:
                kind, meta, _data = framer.recv()
                if kind == b"PGRQ":
                    want = subtract(normalize(_runs(meta)), given)
                    _send_pages(framer, pid, buf, want, PreCopy._read)
                    given = normalize(given + want)
                elif kind == b"RUNS":
                    on_running(meta)
                elif kind == b"OKAY":
                    return meta
                elif kind == b"FAIL":
                    raise remote_error(meta)
                else:
                    raise ImageCorrupt(f"{fmt.kind_name(kind)} during the lazy pages")
                continue
            if todo:
                chunk = todo.popleft()
                want = subtract([chunk], given)
                if want:
                    _send_pages(framer, pid, buf, want, PreCopy._read)
                    given = normalize(given + want)
            elif not ended:
                framer.send(b"LEND", {})
                ended = True
            else:
                raise StreamError(f"no answer from the destination in {timeout:.0f} s")
    finally:
        with contextlib.suppress(BufferError):  # (a view of it in a traceback: left to gc)
            buf.close()


def _runs(meta: dict[str, Any]) -> Runs:
    runs = meta.get("runs")
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)
            and r[1] > 0 and not (r[0] | r[1]) % PAGE and r[1] <= AROUND * 4
            for r in runs) or len(runs) > 64:  # fmt: skip
        raise ImageCorrupt("a malformed page request")
    return [[a, n] for a, n in runs]


def _send_pages(framer: Framer, pid: int, buf: mmap.mmap, want: Runs, read: Any) -> None:
    i = 0
    while i < len(want):  # (in pieces of the buffer's size)
        block, size = [], 0
        while i < len(want) and size + want[i][1] <= len(buf):
            block.append(want[i])
            size += want[i][1]
            i += 1
        if not block:  # one run larger than the buffer: cut
            a, n = want[i]
            want[i] = [a + len(buf), n - len(buf)]
            block, size = [[a, len(buf)]], len(buf)
        missed: Runs = []
        got, off = read(pid, buf, block, missed)
        if missed:
            raise CryoError(f"process {pid}: pages {missed[0][0]:#x}... could not be read"
                            " for the destination", pid=pid)  # fmt: skip
        framer.send(b"PGDT", {"runs": got}, memoryview(buf)[:off])


# -- the destination -------------------------------------------------------------------


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (a child forked during the lazy phase misses
    pages too), each stopped first so that none forks meanwhile; the walk is done twice
    (a fork under way when its parent was stopped)."""
    seen: list[int] = []
    for _ in range(2):
        todo = [pid]
        while todo:
            p = todo.pop()
            if p not in seen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
                seen.append(p)
            todo.extend(c for c in _children(p) if c not in seen)
    for p in reversed(seen):  # (children first)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out



class LazyFramer:
    """A Framer that takes the ``LAZY`` frames out of the stream (:attr:`lazy`: tag ->
    the runs withheld) and hands the stream the rest."""

    def __init__(self, framer: Framer) -> None:
        self.framer = framer
        self.lazy: dict[tuple[str, int], Runs] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.framer, name)

    def recv(self) -> tuple[bytes, dict[str, Any], Any]:
        while True:
            kind, meta, data = self.framer.recv()
            if kind != b"LAZY":
                return kind, meta, data
            tag = meta.get("tag")
            runs = meta.get("runs")
            if not (isinstance(tag, list) and len(tag) == 2 and tag[0] == "pid"
                    and isinstance(tag[1], int) and isinstance(runs, list)
                    and all(isinstance(r, list) and len(r) == 2
                            and all(isinstance(x, int) for x in r) and r[1] > 0
                            and not (r[0] | r[1]) % PAGE for r in runs)):  # fmt: skip
                raise ImageCorrupt("a malformed LAZY frame")
            self.lazy[("pid", tag[1])] = normalize(runs)


class _Space:
    """One address space being filled: its uffd, and its pages still missing, as
    [address there, length, address on the source] (mremap moves them)."""

    def __init__(self, fd: int, missing: list[list[int]]) -> None:
        self.fd = fd
        self.missing = missing

    def take(self, start: int, end: int) -> list[list[int]]:
        """The missing pieces whose source pages lie in [start, end), taken out."""
        out, keep = [], []
        for dst, n, src in self.missing:
            s, e = max(src, start), min(src + n, end)
            if s >= e:
                keep.append([dst, n, src])
                continue
            out.append([dst + s - src, e - s, s])
            if src < s:
                keep.append([dst, s - src, src])
            if e < src + n:
                keep.append([dst + e - src, src + n - e, e])
        self.missing = keep
        return out

    def find(self, addr: int) -> list[int] | None:
        for dst, n, src in self.missing:
            if dst <= addr < dst + n:
                return [dst, n, src]
        return None

    def drop(self, start: int, end: int) -> None:
        """Unmapped or dropped (MADV_DONTNEED) there: those pages are no longer wanted."""
        keep = []
        for dst, n, src in self.missing:
            s, e = max(dst, start), min(dst + n, end)
            if s >= e:
                keep.append([dst, n, src])
                continue
            if dst < s:
                keep.append([dst, s - dst, src])
            if e < dst + n:
                keep.append([e, dst + n - e, src + e - dst])
        self.missing = keep

    def remap(self, frm: int, to: int, length: int) -> None:
        keep, inside = [], []
        for dst, n, src in self.missing:
            s, e = max(dst, frm), min(dst + n, frm + length)
            if s >= e:
                keep.append([dst, n, src])
                continue
            inside.append([s - frm + to, e - s, src + s - dst])
            if dst < s:
                keep.append([dst, s - dst, src])
            if e < dst + n:
                keep.append([e, dst + n - e, src + e - dst])
        self.missing = keep + inside

    @property
    def bytes(self) -> int:
        return sum(n for _, n, _ in self.missing)


class Pager:
    """The destination's fault handler for one process (a thread of cryo receive)."""

    def __init__(self, framer: Framer, fileno: int, runs: Runs, *,
                 timeout: float = 60.0) -> None:  # fmt: skip
        self.framer, self.fileno, self.runs = framer, fileno, normalize(runs)
        self.timeout = timeout  # seconds without a frame while pages are missing: lost
        self.t_start = self.t_last = 0.0
        self.spaces: list[_Space] = []
        self.asked: Runs = []  # source pages requested (or arrived)
        self.ended = False  # LEND: the source has sent every page
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.faults = self.zero = self.requests = 0
        self.bytes = 0
        self.t_done = 0.0
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self.pid = 0  # the process served (killed, with its children, if this fails)
        self._thread: threading.Thread | None = None

    def start(self, fd: int, ranges: list[tuple[int, int]], pid: int = 0) -> None:
        """The uffd of process ``pid`` (ours to close), every withheld page's mapping
        (``ranges``) registered: serve it from now on."""
        self.pid = pid
        pieces = [r for s, e in ranges for r in intersect(self.runs, [[s, e - s]])]
        self.spaces.append(_Space(fd, [[a, n, a] for a, n in pieces]))
        self.t_start = self.t_last = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="cryo-lazy-pages", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, float]:
        return {"faults": self.faults, "zero_pages": self.zero, "requests": self.requests,
                "bytes": self.bytes, "seconds": (self.t_done or time.perf_counter())
                - self.t_start}  # fmt: skip

    def wait(self, timeout: float | None = None) -> None:
        """Until every page is in; raises what stopped it (the connection lost ...)."""
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise CryoError("the lazy pages did not all arrive in time")

    def stop(self) -> None:
        """Stop serving (after the process was killed, or the restart failed)."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(10)
        self._close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close(self) -> None:
        for sp in self.spaces:
            with contextlib.suppress(OSError):
                os.close(sp.fd)
        self.spaces = []

    def _run(self) -> None:
        try:
            while True:
                fds = [sp.fd for sp in self.spaces] + [self.fileno, self._stop_r]
                readable, _, _ = select.select(fds, [], [], 1.0)
                if self._stop_r in readable:
                    return
                for sp in list(self.spaces):
                    if sp.fd in readable:
                        self._events(sp)
                if self.fileno in readable:
                    self._frame()
                    self.t_last = time.perf_counter()
                elif time.perf_counter() - self.t_last > self.timeout:
                    raise StreamError(
                        f"no page from the source in {self.timeout:.0f} s (all sent:"
                        f" {self.ended}; missing {[sp.bytes for sp in self.spaces]} bytes,"
                        f" first {[sp.missing[:2] for sp in self.spaces]}; asked"
                        f" {self.asked[:4]}; {self.faults} faults)")  # fmt: skip
                for sp in [sp for sp in self.spaces if not sp.missing]:
                    self._forget(sp)  # all in: its uffd closed (its ranges unregistered)
                if self.ended and not self.spaces:
                    self.t_done = time.perf_counter()
                    return
        except BaseException as err:  # handed to wait()
            self.error = err
            if self.pid:  # it cannot go on: at once, before its uffd closes (a fault of
                kill_tree(self.pid)  # it would wait forever, or, closed, get zeros)
        finally:
            self.done.set()

    def _events(self, sp: _Space) -> None:
        try:
            data = os.read(sp.fd, uffd.MSG_SIZE * 64)
        except BlockingIOError:  # (said readable: is its process gone?)
            if uffd.zeropage(sp.fd, 0, PAGE) == errno.ESRCH:
                self._forget(sp)
            return
        except OSError as err:
            raise CryoError(f"the lazy pages' userfaultfd: {err}") from err
        for event, a, b, c in uffd.parse_msgs(data):
            if event == uffd.EVENT_PAGEFAULT:
                self._fault(sp, b & ~(PAGE - 1))
            elif event == uffd.EVENT_FORK:  # the child: the pages still missing here
                self.spaces.append(_Space(a, [list(m) for m in sp.missing]))
            elif event == uffd.EVENT_REMAP:
                sp.remap(a, b, c)
            elif event in (uffd.EVENT_REMOVE, uffd.EVENT_UNMAP):
                sp.drop(a, b)

    def _fault(self, sp: _Space, addr: int) -> None:
        self.faults += 1
        m = sp.find(addr)
        if m is None:  # not present at the freeze, or dropped since: zeros, up to the
            self.zero += 1  # end of its window or the next missing page
            hi = addr - addr % AROUND + AROUND
            for dst, _n, _src in sp.missing:
                if addr < dst < hi:
                    hi = dst
            err = uffd.zeropage(sp.fd, addr, hi - addr)
            if err not in (0, errno.EEXIST, errno.EAGAIN) and hi - addr > PAGE:
                err = uffd.zeropage(sp.fd, addr, PAGE)  # (the window crosses a mapping)
            if err in (errno.EEXIST, errno.EAGAIN):  # (EAGAIN: events first; it comes again)
                with contextlib.suppress(OSError):
                    uffd.wake(sp.fd, addr, PAGE)
            return
        dst, n, src = m
        at = src + addr - dst
        lo = max(src, at - at % AROUND)
        hi = min(src + n, lo + AROUND)
        want = subtract([[lo, hi - lo]], self.asked)
        if not want:  # asked already: its PGDT is on its way
            return
        self.asked = normalize(self.asked + want)
        self.requests += 1
        self.framer.send(b"PGRQ", {"runs": want})

    def _frame(self) -> None:
        kind, meta, data = self.framer.recv()
        if kind == b"LEND":
            self.ended = True
            return
        if kind == b"FAIL":
            raise remote_error(meta)
        if kind != b"PGDT":
            raise ImageCorrupt(f"{fmt.kind_name(kind)} during the lazy pages")
        runs = meta.get("runs")
        if not isinstance(runs, list) or sum(r[1] for r in runs) != len(data):
            raise ImageCorrupt("a PGDT frame's runs do not add up to its data")
        buf = data if isinstance(data, mmap.mmap) else bytearray(data)
        from cryo.linux import libc

        base = libc.buffer_address(buf) if len(buf) else 0
        off = 0
        for a, n in runs:
            self.asked = normalize([*self.asked, [a, n]])
            filled: list[_Space] = []
            while todo := [sp for sp in self.spaces if sp not in filled]:
                for sp in todo:  # (and a child forked meanwhile, missing them too)
                    filled.append(sp)
                    self._fill(sp, a, n, base + off)
            off += n
            self.bytes += n
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):
                buf.close()

    def _fill(self, sp: _Space, a: int, n: int, base: int) -> None:
        """The source pages [a, a+n) (at ``base`` here) into what ``sp`` still misses."""
        tries = 0
        todo = sp.take(a, a + n)
        while todo:
            dst, k, src = todo.pop()
            done, err = uffd.copy_wake(sp.fd, dst, base + src - a, k)
            if err == 0 or done >= k:
                continue
            dst, k, src = dst + done, k - done, src + done
            if err == errno.EEXIST:  # a page there already (given, or the child's copy)
                if k > PAGE:
                    todo.append([dst + PAGE, k - PAGE, src + PAGE])
            elif err == errno.EAGAIN and tries < 10000:
                # the mm is changing (fork, mremap, munmap, madvise): every piece not
                # copied yet goes back to the missing ones (a fork's child must miss
                # them too, a fault on one must wait for it), the events are read, and
                # what is still missing of this frame is taken again (moved, maybe)
                tries += 1
                sp.missing.extend([[dst, k, src], *todo])
                self._events(sp)
                todo = sp.take(a, a + n) if sp in self.spaces else []
            elif err in (errno.ENOENT, errno.EINVAL, errno.EFAULT):
                # not one registered mapping: unmapped meanwhile, or the piece crosses
                # the end of one (split by mprotect, madvise ...): page by page there
                if k > PAGE:
                    todo.append([dst + PAGE, k - PAGE, src + PAGE])
                    todo.append([dst, PAGE, src])
            elif err == errno.ESRCH:  # that process is gone (exited, or exec'd)
                self._forget(sp)
                return
            else:
                raise CryoError(f"UFFDIO_COPY {dst:#x}: {os.strerror(err)}")

    def _forget(self, sp: _Space) -> None:
        with contextlib.suppress(ValueError):
            self.spaces.remove(sp)
        with contextlib.suppress(OSError):
            os.close(sp.fd)
