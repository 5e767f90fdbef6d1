"""``serve()`` and ``receive()``: take migrated processes and restart them here
(docs/design.md, "Migration").

Only an authenticated sender is read at all (cryo.migrate.auth).  The whole stream is
received into memory, every frame checked (the root process's pre-copy pages copied into
a staging area as they arrive, to be moved into place: cryo.migrate.stage), then
restarted like any image (the same validation, trust rule and phases); the sender is
told ``OKAY {pid, locks}`` once the process runs (``locks``: the image's network
locks, for the source to remove), or ``FAIL {error, code}``.  The restart gets the
sender's net options (``HELO``'s ``net``); an address that moves with the process
(``move_address``) is checked at once (``ADOK``) and taken here after the stream
(cryo.migrate.address).  A copy is kept
in the directory of this side's ``--keep``, else in the one the sender asked for
(``cryo migrate --keep DIR``).  A failure at any point leaves nothing here: no process
(the restart kills what it built), no file (nothing was written; ``keep`` is written
only once the process runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryo.engine.session import Restart
from cryo.errors import CryoError, Usage
from cryo.image.stream import Channel, Framer, StreamError, StreamSource
from cryo.migrate import auth
from cryo.migrate.lazy import FEATURES, LazyFramer, Pager, kill_tree
from cryo.migrate.sender import TIMEOUT, tune
from cryo.migrate.stage import StagedSource, StagingFramer
from cryo.preload import preload

log = logging.getLogger(__name__)


@dataclass
class Received:
    pid: int  # the restored root process (our child)
    old_pid: int
    peer: str
    bytes_received: int
    rounds: int
    receive_seconds: float  # the stream, from the handshake to its end
    restart_seconds: float
    kept: str | None = None
    staged_bytes: int = 0  # pages staged during the rounds and moved into place
    # seconds of each step here from the final checkpoint's first frame to the answer:
    # "final frames" (its records and pages arriving), "assemble" (the blocks), then the
    # restart's phases ("validate", ..., "let go")
    phases: dict[str, float] = field(default_factory=dict)


def receive(channel: Channel, *, secret: bytes | None, keep: str | None = None,
            trust_image: bool = False, report: Callable[[str], None] | None = None,
            stage: bool = True, timeout: float = TIMEOUT) -> Received:  # fmt: skip
    """One migration over ``channel``: authenticate, receive, restart, answer; ``stage``:
    the root's pre-copy pages staged as they arrive (cryo.migrate.stage)."""
    say = report or (lambda _s: None)
    # the modules a restart imports on its way (the schema, the trust rule, drivers),
    # imported while the handshake and the rounds go on: compiling and running them was
    # a third of this side's part of the downtime (serve() has done it before, while
    # listening: then this finds them imported)
    warm = threading.Thread(target=preload, name="cryo-preload", daemon=True)
    warm.start()
    framer = Framer(channel)
    hello = auth.server(framer, secret)
    peer = f"{hello.get('host', '?')} ({channel.name})"
    if keep is None and hello.get("keep") is not None:
        # `cryo migrate --keep DIR`: asked by the sender, authenticated by now (one
        # that may restore any process here as root may as well write a directory)
        keep = hello["keep"]
        if not isinstance(keep, str) or not os.path.isabs(keep):
            framer.send(b"FAIL", {"error": f"--keep {keep!r}: give an absolute path on"
                                  " the destination", "code": 2})  # fmt: skip
            raise Usage(f"{peer} asked to keep a copy in {keep!r}: not an absolute path")
    net = _net_options(hello.get("net"))
    arrival = None
    if hello.get("move_address") is not None:  # (cryo.migrate.address)
        from cryo.migrate.address import Arrival

        try:
            arrival = Arrival(hello["move_address"])
            arrival.check()
        except CryoError as err:
            with contextlib.suppress(CryoError):
                framer.send(b"FAIL", {"error": str(err), "code": err.exit_code})
            raise
        framer.send(b"ADOK", {"dev": arrival.ifname})
        say(f"{peer}: address {arrival.addr} will move here ({arrival.ifname})")
    t0 = time.perf_counter()
    marks: dict[str, float] = {}  # when the final checkpoint's frames began, ended

    def on_frame(kind: bytes, meta: dict[str, object]) -> None:
        if kind == b"ROND":
            say(f"round {meta.get('round')} from {peer}: {meta.get('pages')} pages")
        elif kind not in (b"PREP", b"ROND"):
            marks.setdefault("final", time.perf_counter())
            if kind == b"END":
                marks["end"] = time.perf_counter()

    src: StreamSource | None = None
    rs: Restart | None = None
    lazy = bool(hello.get("lazy"))
    lframer: LazyFramer | None = None
    pager: Pager | None = None
    running = 0  # the restored process, once let go (killed if its pages cannot come)
    phases: dict[str, float] = {}  # the destination's part of the downtime, by step
    try:
        if lazy:  # post-copy: no rounds; the pages withheld named in LAZY frames
            if keep is not None:
                raise Usage("a lazy migration cannot be kept (--keep): its pages come later")
            lframer = LazyFramer(framer)
            src = StreamSource(lframer, path=f"migration from {peer}",  # type: ignore[arg-type]
                               authenticated=framer.keyed, on_frame=on_frame)  # fmt: skip
        elif keep is None and stage:  # the root's rounds staged as they come (cryo.migrate.stage)
            src = StagedSource(StagingFramer(framer, hello.get("root_pid")),
                               path=f"migration from {peer}", authenticated=framer.keyed,
                               on_frame=on_frame)  # fmt: skip
        else:  # (a copy to keep needs every page as received)
            src = StreamSource(framer, path=f"migration from {peer}",
                               authenticated=framer.keyed, on_frame=on_frame)  # fmt: skip
        t1 = time.perf_counter()
        if "final" in marks:
            phases["final frames"] = marks.get("end", t1) - marks["final"]
        phases["assemble"] = t1 - marks.get("end", t1)
        src.keep_data = keep is not None  # (freed after the copy is kept)
        ts = time.perf_counter()
        warm.join()
        phases["preload left"] = time.perf_counter() - ts
        # (its pid, where taken on this host, a new one only for a lone thread: on one
        # machine the source holds it until this side runs; docs/design.md, "Pids")
        if arrival is not None:  # the source has taken it off (before its END)
            arrival.lock()
            arrival.place()
        rs = Restart(src, trust_image=trust_image, new_pids=None, net=net)
        if isinstance(src, StagedSource):
            rs.staged = src.staged_moves
        if lframer is not None:
            pager = _pager(rs, framer, lframer, channel, timeout)
        steps = (("validate", rs.validate), ("prepare shared", rs.prepare_shared),
                 ("build tree", rs.build_tree), ("build processes", rs.build_processes),
                 ("finalize", rs.finalize))  # fmt: skip
        for name, step in steps:
            ts = time.perf_counter()
            step()
            if name == "build tree" and isinstance(src, StagedSource):
                src.release_staging()  # (the process has its pages now: ours go)
            phases[name] = time.perf_counter() - ts
        if arrival is not None:
            # built, not running: it goes only on the sender's word, which the sender
            # gives once, before it waits for OKAY; without it (the connection cut
            # meanwhile) this copy is killed and the source, told nothing, goes on
            framer.send(b"REDY", {})
            framer.expect(b"GOGO")
        ts = time.perf_counter()
        result = rs.let_go()
        phases["let go"] = time.perf_counter() - ts
        if arrival is not None:  # (it runs: the peers' retransmissions get through)
            arrival.unlock()
            arrival.release()
        if pager is not None:  # it runs: its pages come while it does (cryo.migrate.lazy)
            running = result.pid
            framer.send(b"RUNS", {"pid": result.pid, "phases": phases})
            say(f"process {result.old_pid} runs here as pid {result.pid}; its pages follow")
            tl = time.perf_counter()
            pager.wait()
            pager.stop()
            phases["lazy pages"] = time.perf_counter() - tl
    except BaseException as err:
        if running:  # part of its memory is only on the source: it cannot go on
            _kill(running)
        if rs is not None:
            with contextlib.suppress(BaseException):
                rs.abort()
        if arrival is not None:  # (before FAIL: the source puts it back when told)
            with contextlib.suppress(BaseException):
                arrival.undo()
        if pager is not None:  # (after the kill: no thread of it may find a page missing
            pager.stop()  # once the uffd is closed, and get zeros)
        if src is not None:
            src.keep_data = False
            src.close()
        if isinstance(err, CryoError) and not isinstance(err, StreamError):
            with contextlib.suppress(CryoError):
                framer.send(b"FAIL", {"error": str(err), "code": err.exit_code})
        elif not isinstance(err, StreamError):
            with contextlib.suppress(CryoError):
                framer.send(b"FAIL", {"error": f"a bug in cryo: {err!r}", "code": 70})
        raise
    t2 = time.perf_counter()
    locks = sorted({d["tcp"].get("lock", "") for d in rs.shared.descs or []
                    if isinstance(d, dict) and d.get("tcp")} - {""})  # fmt: skip
    staged = src.moved_bytes if isinstance(src, StagedSource) else 0
    with contextlib.suppress(CryoError):  # (the sender gone now: the process runs here)
        framer.send(b"OKAY", {"pid": result.pid, "old_pid": result.old_pid,
                              "phases": phases, "staged": staged, "locks": locks,
                              "lazy": pager.stats() if pager is not None else {}})  # fmt: skip
    out = Received(result.pid, result.old_pid, peer, src.bytes_received, len(src.rounds),
                   t1 - t0, t2 - t1, phases=phases, staged_bytes=staged)  # fmt: skip
    try:
        if keep is not None:
            out.kept = src.keep(keep, force=True)
            say(f"kept a copy in {out.kept}")
    finally:
        src.keep_data = False
        src.close()
    return out


def _net_options(asked: object) -> dict[str, bool]:
    """The sender's net options (cryo checkpoint's), for the restart here."""
    if not isinstance(asked, dict):
        return {}
    return {k: True for k in ("tcp_established", "tcp_close", "ext_unix_sk") if asked.get(k)}


def _pager(rs: Restart, framer: Framer, lframer: LazyFramer, channel: Channel,
           timeout: float) -> Pager:
    """The fault handler of a lazy migration's one process, started by its restart."""
    tags = list(lframer.lazy)
    if len(tags) > 1:
        raise CryoError("a lazy migration of more than one process")
    old, runs = (tags[0][1], lframer.lazy[tags[0]]) if tags else (0, [])
    fileno = channel.sock.fileno() if channel.sock is not None else channel.rfd
    pager = Pager(framer, fileno, runs, timeout=timeout)
    if runs:
        rs.lazy[old] = {"runs": runs, "features": FEATURES, "start": pager.start}
    return pager


def _kill(pid: int) -> None:
    """The lazily migrated process and its children (forked there meanwhile: they miss
    pages too) killed; it reaped (our child)."""
    kill_tree(pid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def listener(listen: str) -> socket.socket:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        raise Usage(f"--listen {listen!r}: give ADDR:PORT (0.0.0.0:PORT for every address)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family, backlog=4)
    except OSError as err:
        raise CryoError(f"cannot listen on {listen}: {err.strerror or err}") from err


def serve(listen: str | socket.socket, *, secret: bytes | None, once: bool = False,
          keep: str | None = None, trust_image: bool = False, timeout: float = TIMEOUT,
          report: Callable[[str], None] | None = None,
          ready: Callable[[int], None] | None = None,
          stage: bool = True) -> Received | None:  # fmt: skip
    """Accept migrations on ``listen`` (ADDR:PORT) one at a time; with ``once``, return
    after the first (its error raised).  ``ready(port)`` once listening."""
    if secret is None:
        raise Usage("cryo receive --listen needs the shared secret (--secret-file): whoever"
                    " can connect could otherwise run any process here as root")
    say = report or (lambda _s: None)
    sock = listen if isinstance(listen, socket.socket) else listener(listen)
    restored: list[int] = []
    try:
        preload()  # now, while no one is waiting (receive() would do it during a stream)
        if ready is not None:
            ready(sock.getsockname()[1])
        while True:
            conn, addr = sock.accept()
            tune(conn, timeout)
            channel = Channel(conn, name=f"{addr[0]}:{addr[1]}")
            try:
                got = receive(channel, secret=secret, keep=keep, trust_image=trust_image,
                              report=report, stage=stage, timeout=timeout)  # fmt: skip
                restored.append(got.pid)
                say(f"process {got.old_pid} from {got.peer} runs here as pid {got.pid}"
                    f" ({got.bytes_received / 2**20:.1f} MiB in {got.receive_seconds:.3f} s,"
                    f" restarted in {got.restart_seconds:.3f} s)")  # fmt: skip
                if once:
                    return got
            except CryoError as err:
                if once:
                    raise
                say(f"migration from {channel.name} failed: {err}")
            finally:
                channel.close()
                _reap(restored)
    finally:
        if not isinstance(listen, socket.socket):
            sock.close()


def _reap(pids: list[int]) -> None:
    """Collect the restored processes (our children) that have exited meanwhile."""
    for pid in list(pids):
        with contextlib.suppress(ChildProcessError):
            got, _ = os.waitpid(pid, os.WNOHANG)
            if got == 0:
                continue
        pids.remove(pid)
