"""``migrate()``: send a running process to a receiver that restarts it (docs/design.md,
"Migration").

Do no harm: the process runs during the pre-copy rounds and is frozen only for the
final checkpoint; it stays frozen (held by the checkpoint's worker) until the receiver
says the restored copy runs, and only then is it killed.  If anything fails before that
answer (the connection is lost, the receiver refuses, its restart fails, cryo is
killed), the checkpoint is aborted: the process goes on where it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryo.engine.session import CheckpointSession
from cryo.errors import CryoError, Usage
from cryo.image import format as fmt
from cryo.image.sink import Runs, Tag
from cryo.image.stream import Channel, Framer, StreamSink
from cryo.migrate import auth
from cryo.migrate.precopy import MAX_ROUNDS, PreCopy, Round, arm_options
from cryo.migrate.stage import layout_of

log = logging.getLogger(__name__)
TIMEOUT = 60.0  # seconds without progress on the connection before it counts as lost


@dataclass
class MigrateResult:
    pid: int  # the process's pid on the destination
    host: str
    rounds: list[Round] = field(default_factory=list)
    arm_seconds: float = 0.0  # the pre-copy's arming freeze
    final_bytes: int = 0  # page bytes sent in the freeze
    memory_bytes: int = 0
    bytes_sent: int = 0  # everything that went over the connection
    downtime: float = 0.0  # from the freeze here to the answer that it runs there
    frozen_write: float = 0.0  # of which: the final checkpoint sent
    frozen_collect: float = 0.0  # of which: the freeze and the collect phase
    # the destination's part, by step (cryo.migrate.receiver.Received.phases), and the
    # rest of the downtime: the answer's way back and what is not counted there
    destination: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    staged_bytes: int = 0  # of the rounds' pages: staged there as they came, moved in place
    # post-copy (--lazy): from the freeze to every page there; the destination's faults
    lazy: bool = False
    all_pages_seconds: float = 0.0
    lazy_bytes: int = 0  # pages sent after the process ran there
    lazy_stats: dict[str, float] = field(default_factory=dict)
    killed: bool = True  # False with leave_running
    warnings: list[str] = field(default_factory=list)


def connect(to: str, *, secret_file: str | None = None, timeout: float = TIMEOUT,
            remote_cryo: str = "cryo") -> tuple[Channel, subprocess.Popen[bytes] | None]:
    """A channel to ``HOST:PORT`` (TCP) or ``ssh://[user@]host[:port]`` (``cryo receive
    --stdio`` run there by ssh, which then authenticates the peer)."""
    if to.startswith("ssh://"):
        target = to[len("ssh://") :].rstrip("/")
        argv = ["ssh", "-T", "-o", "BatchMode=yes"]
        host, _, port = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
        if port:
            argv += ["-p", port]
        argv += [host or target, remote_cryo, "receive", "--stdio", "--once"]
        argv += ["--secret-file", secret_file] if secret_file else ["--trust-image"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             close_fds=True)  # fmt: skip
        assert p.stdin is not None and p.stdout is not None
        # the channel's own fds (it closes them): Popen's file objects closed now, not
        # when collected (they would close whatever fd then has their number)
        rfd, wfd = os.dup(p.stdout.fileno()), os.dup(p.stdin.fileno())
        p.stdout.close()
        p.stdin.close()
        return Channel(rfd=rfd, wfd=wfd, name=to), p
    host, sep, port = to.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise Usage(f"--to {to!r}: give HOST:PORT or ssh://[user@]host")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as err:
        raise CryoError(f"cannot connect to {to}: {err.strerror or err}") from err
    tune(sock, timeout)
    return Channel(sock, name=to), None


def _drop_locks(names: Any, warnings: list[str]) -> None:
    """The image's network locks (engine/netlock.py) removed here."""
    from cryo.engine import netlock

    if not isinstance(names, list):
        return
    for name in names:
        if isinstance(name, str) and name.startswith(netlock.IMAGE_PREFIX) and \
                len(name) < 64 and " " not in name:  # fmt: skip
            try:
                netlock.drop_table(name)
            except CryoError as err:
                warnings.append(f"the network lock {name} is still here: {err}")


def tune(sock: socket.socket, timeout: float) -> None:
    """A dead peer noticed within about ``timeout`` seconds, also while idle."""
    sock.settimeout(timeout)
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))


def migrate(pid: int, to: str, *, secret: bytes | None = None, secret_file: str | None = None,
            scope: str = "process", leave_running: bool = False, pre_copy: bool = True,
            keep: str | None = None, max_rounds: int | None = None,
            timeout: float = TIMEOUT, report: Callable[[str], None] | None = None,
            lazy: bool = False, move_address: str | None = None,
            **engine: Any) -> MigrateResult:  # fmt: skip
    """Move ``pid`` (with its ``scope``, as cryo.checkpoint) to the receiver at ``to``.
    ``lazy``: post-copy (cryo.migrate.lazy): no rounds, the process starts there at once
    and its private anonymous pages follow, the source frozen until every one is in.
    ``move_address``: ``ADDR[/PREFIX]``, an IPv4 address of this host that moves with the
    process (cryo.migrate.address).  ``engine``: the checkpoint's options (shell_job,
    save_files, net: the restart there gets the same net options)."""
    t0 = time.perf_counter()
    say = report or (lambda _s: None)
    if secret is None and not to.startswith("ssh://"):
        raise Usage("a migration over TCP needs the shared secret (--secret-file)")
    if keep is not None and not os.path.isabs(keep):
        raise Usage(f"--keep {keep}: give an absolute path (a directory on the destination)")
    if lazy and scope != "process":
        raise Usage("--lazy moves one process (--process), not a tree or group")
    if lazy and keep is not None:
        raise Usage("--lazy cannot --keep a copy: the pages arrive after the process runs")
    net = {k: True for k, v in (engine.get("net") or {}).items() if v}
    if (net.get("tcp_established") or move_address) and (leave_running or lazy):
        raise Usage("--tcp-established and --move-address move the connections and the"
                    " address: not with --leave-running (two copies of them) or --lazy")
    departure = None
    if move_address is not None:
        from cryo.migrate.address import Departure

        departure = Departure.find(move_address)
    channel, proc = connect(to, secret_file=secret_file, timeout=timeout)
    framer = Framer(channel)
    try:
        hello: dict[str, Any] = {"keep": keep, "root_pid": pid}
        if lazy:
            hello["lazy"] = True
        if net:
            hello["net"] = net
        if departure is not None:
            hello["move_address"] = departure.spec
        peer = auth.client(framer, secret, hello)
        if departure is not None:  # (it can take the address: before anything is frozen)
            if not peer.get("takes_address"):
                raise CryoError(f"{to} does not take --move-address (an older cryo receive)")
            framer.expect(b"ADOK")
        if lazy and not peer.get("takes_lazy"):
            raise CryoError(f"{to} does not take lazy migrations (an older cryo receive)")
        host = str(peer.get("host", to))
        result = MigrateResult(pid=0, host=host, lazy=lazy)
        tracking: Any = None
        if lazy:
            from cryo.migrate.lazy import LazyTracking

            tracking = LazyTracking(framer)
        elif pre_copy:
            described: set[int] = set()

            def send(n: int, p: int, runs: list[list[int]], data: memoryview) -> None:
                meta: dict[str, Any] = {"round": n, "tag": ["pid", p], "runs": runs}
                if scope == "process" and p not in described:  # (cryo.migrate.stage)
                    described.add(p)
                    meta["layout"] = layout_of(pc.procs[p].vmas)
                framer.send(b"PREP", meta, data)

            def told(r: Round) -> None:
                framer.send(b"ROND", {"round": r.number, "pages": r.pages, "bytes": r.bytes,
                                      "seconds": r.seconds})  # fmt: skip
                say(f"round {r.number}: {r.pages} pages, {r.bytes / 2**20:.1f} MiB,"
                    f" {r.seconds:.3f} s")  # fmt: skip

            pc = PreCopy(pid, send, scope=scope, report=told,
                         max_rounds=max_rounds or MAX_ROUNDS,
                         options=arm_options(engine))  # fmt: skip
            pc.arm()
            result.arm_seconds = pc.arm_seconds
            pc.run()
            result.rounds = pc.rounds

            def selected(tag: Tag, present: Runs, reset: bool) -> None:
                framer.send(b"INHR", {"tag": list(tag), "present": present, "reset": reset})

            tracking = pc.tracking(selected)
        answer_r, answer_w = os.pipe()
        try:
            def on_commit() -> None:  # in the checkpoint's worker: the receiver's answer
                marks: dict[str, Any] = {}
                if lazy:  # its pages, until it has them all (cryo.migrate.lazy)
                    from cryo.migrate.lazy import serve_pages

                    def running(meta: dict[str, Any]) -> None:
                        marks["running"] = time.perf_counter()
                        marks["pid"] = meta.get("pid")

                    sent0 = channel.sent
                    fileno = channel.sock.fileno() if channel.sock is not None \
                        else channel.rfd  # fmt: skip
                    m = serve_pages(framer, fileno, pid, tracking.lazy.get(pid, []),
                                    timeout=timeout, on_running=running)  # fmt: skip
                    marks["all"] = time.perf_counter()
                    marks["lazy_sent"] = channel.sent - sent0
                else:
                    if departure is not None:  # it is built there: it may go (GOGO)
                        framer.expect(b"REDY")
                        framer.send(b"GOGO", {})
                    m = framer.expect(b"OKAY")
                phases = m.get("phases")
                info: dict[str, Any] = {
                    "pid": m.get("pid"), "sent": channel.sent,
                    "phases": phases if isinstance(phases, dict) else {},
                    "staged": m.get("staged", 0),
                    "final": tracking.final_bytes if tracking else -1,
                    "present": tracking.present_bytes if tracking else -1,
                    "marks": marks, "lazy": m.get("lazy") or {},
                    "locks": m.get("locks") or []}  # fmt: skip
                os.write(answer_w, fmt.pack(info))

            sess = CheckpointSession(
                pid, lambda: StreamSink(framer, path=f"{to}", tracking=tracking,
                                        on_commit=on_commit),
                scope=scope, hold=True, freeze_timeout=max(timeout * 2, 60.0),
                signal_after=0 if leave_running else signal.SIGKILL, **engine)
            committed = False
            try:
                sess.prepare()
                tf = time.perf_counter()
                sess.freeze()
                sess.collect()
                if departure is not None:  # (its connections locked, in repair mode)
                    departure.take_off()
                tc = time.perf_counter()
                sess.write()
                tw = time.perf_counter()
                sess.commit()
                committed = True  # (it runs there)
                result.downtime = time.perf_counter() - tf
                result.frozen_write = tw - tf
                result.frozen_collect = tc - tf
                r = sess.resume()
            except BaseException:
                if departure is not None and not committed:
                    try:  # (before its connections leave repair mode)
                        departure.put_back()
                    except BaseException as err:
                        log.error("address %s could not be put back: %s", departure.addr, err)
                with contextlib.suppress(BaseException):
                    sess.abort()
                raise
            info = fmt.unpack(os.read(answer_r, 1 << 16))
            if not leave_running:
                # the copy here is gone: its connections' lock, kept for a restart here
                # (engine/inet.thaw), goes too (named by the destination, from the image)
                _drop_locks(info.get("locks"), result.warnings)
        finally:
            os.close(answer_r)
            os.close(answer_w)
        result.pid = int(info["pid"])
        marks = info.get("marks") or {}
        if lazy and "running" in marks:
            result.downtime = float(marks["running"]) - tf
            result.all_pages_seconds = float(marks["all"]) - tf
            result.lazy_bytes = int(marks.get("lazy_sent", 0))
            result.lazy_stats = {str(k): float(v) for k, v in info.get("lazy", {}).items()}
        result.bytes_sent = int(info["sent"])
        result.destination = {str(k): float(v) for k, v in info.get("phases", {}).items()}
        result.final_bytes = int(info["final"]) if info["final"] >= 0 else r.memory_bytes
        result.memory_bytes = int(info["present"]) if info["present"] >= 0 \
            else r.memory_bytes  # fmt: skip
        result.staged_bytes = int(info.get("staged") or 0)
        result.killed = not leave_running
        result.warnings = r.warnings + result.warnings
        result.total_seconds = time.perf_counter() - t0
        return result
    finally:
        channel.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
