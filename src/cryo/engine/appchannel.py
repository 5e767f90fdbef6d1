"""Applications that take part in their checkpoints (cryo.app, cryo.h): the
checkpointer's side of cryo/app/protocol.py.

Checkpoint, before the freeze: every process of the scope that listens on a cryo.app
socket is asked (critical sections honoured, callbacks run) and answers "ready" with
the files to save and the memory to leave out, or refuses: then the checkpoint fails
before anything is touched.  The connection stays open through the checkpoint: the
agent waits on it for the outcome, "continued" or "failed", sent after the resume or
the abort.  In the image the agent's two sockets are kinds of their own
("app_listen", "app_conn"): the restart binds the listening socket again and hands the
agent a new connection whose other end it keeps, and once the processes run it sends
"restarted" with what changed.  Saved files and the memory left out are in the
per-process APPX record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
from typing import Any

from cryo import procfs
from cryo.app import protocol as P
from cryo.engine.context import DumpContext
from cryo.errors import CheckpointRefused, CryoError, ImageCorrupt
from cryo.linux import libc
from cryo.linux import net as N

log = logging.getLogger(__name__)
KIND = b"APPX"
MAX_SAVED = 1 << 30  # bytes of one saved file
SO_ACCEPTCONN = 30


# -- finding an application's agent --------------------------------------------------


def _dup(pid: int, fd: int) -> socket.socket | None:
    try:
        return socket.socket(fileno=libc.fd_of(pid, fd))
    except OSError:
        return None


def agent_socket(pid: int, fd: int) -> tuple[bytes, bool] | None:
    """(name, listening) if fd ``fd`` of ``pid`` is a cryo.app agent's socket."""
    try:
        if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
            return None
    except OSError:
        return None
    s = _dup(pid, fd)
    if s is None:
        return None
    with s:
        if s.family != socket.AF_UNIX:
            return None
        name = s.getsockname()
        if isinstance(name, str) or not name.startswith(P.PREFIX):
            return None
        return name, bool(s.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN))


def _agent_listeners(pid: int) -> set[int] | None:
    """The inodes of the listening unix sockets named as agents (:data:`P.PREFIX`) in the
    network namespace of ``pid``, from one sock_diag dump of its listeners, when that is
    cryo's own namespace (None otherwise, or if sock_diag does not answer: each socket is
    then asked its protocol)."""
    try:
        here = os.stat("/proc/thread-self/ns/net")
        there = os.stat(f"/proc/{pid}/ns/net")
        if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
            return None
        return {ino for ino, name in N.unix_listeners().items() if name.startswith(P.PREFIX)}
    except OSError:
        return None


def _agents(pid: int, links: dict[int, str] | None = None) -> list[bytes]:
    """The names of the agents listening in ``pid``: only its sockets that its
    namespace's sock_diag shows listening under an agent's name are duplicated and asked
    (:func:`_agent_listeners`; where it cannot tell, its unix sockets: the protocol of
    each is its inode's system.sockprotoname, one getxattr; a busy server's TCP
    connections are not duplicated); ``links``: its fd table as read just before
    (drivers._agents_possible), else read here."""
    out: list[bytes] = []
    try:  # (the links read by name in the directory, opened once: no path walk each)
        if links is None:
            links = procfs.fd_links(pid)[1]
    except OSError:  # gone meanwhile (a child of the tree that ended): no agent
        return out
    listening = _agent_listeners(pid)
    for n, link in links.items():
        if not link.startswith("socket:["):
            continue
        if listening is not None:  # (the sockets of its namespace that may be agents)
            if int(link[8:-1]) not in listening:
                continue
        else:
            try:
                proto = os.getxattr(f"/proc/{pid}/fd/{n}", "system.sockprotoname")
            except OSError:
                proto = b"UNIX"  # (not told: asked as before)
            if not proto.startswith(b"UNIX"):
                continue
        found = agent_socket(pid, n)
        if found is not None and found[1]:
            out.append(found[0])
    return out


# -- checkpoint ----------------------------------------------------------------------


def before_freeze(session: Any) -> None:
    """Session hook (end of prepare): ask every agent of the scope; all must be ready."""
    from cryo.engine import tree

    opts = session.app_options
    timeout = float(opts.get("callback_timeout", 30.0))
    read = session.shared.early.pop("fd_links before", {})
    for pid in tree.scope_members(session):
        for name in _agents(pid, read.get(pid)):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                conn.settimeout(timeout + 5)
                conn.connect(name)
                conn.sendall(P.encode(P.CHECKPOINT, [
                    ("signal", session.signal_after), ("requester", os.getpid()),
                    ("target", session.pid), ("scope", session.scope),
                    ("nonblocking", int(bool(opts.get("nonblocking")))),
                    ("callbacks", int(not opts.get("no_callbacks"))), ("timeout", timeout)]))
                line = P.read_line(conn)
            except (OSError, ValueError) as err:
                conn.close()
                raise CryoError(f"process {pid}: its cryo.app agent did not answer: {err}",
                                pid=pid, resource="cryo.app") from err  # fmt: skip
            what, fields = P.decode(line) if line else ("closed", [])
            if what != P.READY:
                conn.close()
                reason = dict(fields).get("reason", what)
                raise CheckpointRefused(f"process {pid} refused the checkpoint: {reason}",
                                        pid=pid, resource="cryo.app")  # fmt: skip
            conn.settimeout(None)
            session.shared.channels.append(conn)
            files = [v for k, v in fields if k == "file"]
            drops = []
            for k, v in fields:
                if k == "drop":
                    a, _, n = v.partition(":")
                    drops.append([int(a), int(n)])
            session.shared.app[pid] = {"files": files, "dropped": drops}


def after_checkpoint(session: Any, failure: str | None) -> None:
    """Session hook (resume, or abort): tell every agent asked the outcome."""
    msg = P.encode(P.CONTINUED) if failure is None else P.encode(P.FAILED,
                                                                  [("reason", failure)])
    for conn in session.shared.channels:
        with contextlib.suppress(OSError):
            conn.sendall(msg)
        conn.close()
    session.shared.channels.clear()


def write(ctx: DumpContext, sink: Any) -> None:
    """Driver hook (write): leave out the memory the application advised against and
    save the files it asked for, in its APPX record."""
    asked = ctx.shared.app.get(ctx.pid)
    if asked is None:
        return
    page = 4096  # whole pages inside each range, and only those
    drops = [[(a + page - 1) // page * page, (a + n) // page * page - (a + page - 1) // page * page]
             for a, n in asked["dropped"]]
    drops = [[a, n] for a, n in drops if n > 0]
    if drops:
        ctx.runs = _subtract(ctx.runs, drops)
    saved = []
    for i, path in enumerate(asked["files"]):
        saved.append(_save_file(ctx, sink, i, path))
    ctx.records[KIND] = {"pid": ctx.pid, "dropped": drops, "files": saved}


def _subtract(runs: list[tuple[int, int]], drops: list[list[int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, n in runs:
        pieces = [(a, a + n)]
        for da, dn in drops:
            nxt = []
            for s, e in pieces:
                if dn <= 0 or da + dn <= s or e <= da:
                    nxt.append((s, e))
                    continue
                if s < da:
                    nxt.append((s, da))
                if da + dn < e:
                    nxt.append((da + dn, e))
            pieces = nxt
        out.extend((s, e - s) for s, e in pieces if e > s)
    return out


def _as_process(pid: int) -> Any:
    """The process's file-system credentials, as a trust.Owner: what it may open."""
    from cryo import procfs
    from cryo.image.trust import Owner

    status = procfs.parse_status(procfs.read(pid, "status"))
    uid, gid = int(status["Uid"].split()[3]), int(status["Gid"].split()[3])  # fs ids
    groups = {int(g) for g in status.get("Groups", "").split()}
    return Owner(uid=uid, gid=gid, gids=groups | {gid})


def _save_file(ctx: DumpContext, sink: Any, i: int, path: str) -> dict[str, Any]:
    """Copy a file the application asked to save into the image, opened with the
    process's own credentials: a process cannot have cryo (root) read for it a file its
    user could not read."""
    from cryo.image.trust import open_as_owner

    try:
        fd = open_as_owner(_as_process(ctx.pid), [(path, os.O_RDONLY | os.O_NOFOLLOW, 0)])[0]
    except OSError as err:
        raise CryoError(f"process {ctx.pid}: cannot save {path}: {err.strerror}",
                        pid=ctx.pid, path=path) from err  # fmt: skip
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SAVED:
            raise CryoError(f"process {ctx.pid}: {path} is not a regular file of at most"
                            " 1 GiB; it cannot be saved", pid=ctx.pid, path=path)  # fmt: skip
        name = f"appfile-{ctx.pid}-{i}.bin"
        with sink.side_file(name) as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
    finally:
        os.close(fd)
    return {"path": path, "side": name, "mode": stat.S_IMODE(st.st_mode), "size": st.st_size}


# -- the image's sockets -------------------------------------------------------------


def describe_socket(pid: int, fd: int) -> dict[str, Any]:
    found = agent_socket(pid, fd)
    assert found is not None
    return {"app_name": found[0]}


def open_listener(d: dict[str, Any]) -> int:
    """The agent's listening socket, bound again (to a new name if the old is taken)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.bind(d["app_name"])
        except OSError:
            s.bind(P.PREFIX + secrets.token_hex(8).encode())
        s.listen(4)
        return s.detach()
    except BaseException:
        s.close()
        raise


def open_connection(d: dict[str, Any], keep: dict[str, Any]) -> int:
    """The agent's connection to the checkpointer: a new pair; cryo keeps its end and
    says "restarted" on it once the processes run."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    keep.setdefault("app_channels", []).append((d["pid"], ours))
    return theirs.detach()


def after_restart(rs: Any) -> None:
    """Session hook (let go): every restored agent learns what changed."""
    channels = rs.shared.keep.pop("app_channels", [])
    if not channels:
        return
    head = rs.image.head
    appx = {r["pid"]: r for r in rs.image.raw(KIND)}
    for old_pid, conn in channels:
        new_pid = rs.result.pids.get(old_pid, 0)
        dropped = ",".join(f"{a}:{n}" for a, n in appx.get(old_pid, {}).get("dropped", []))
        msg = P.encode(P.RESTARTED, [
            ("old_pid", old_pid), ("new_pid", new_pid),
            ("old_host", head.get("hostname", "")), ("new_host", socket.gethostname()),
            ("old_addrs", ",".join(head.get("addrs", []))),
            ("new_addrs", ",".join(host_addresses())), ("image", rs.image.path),
            ("generation", getattr(rs.image, "version", 0)), ("dropped", dropped)])
        with contextlib.suppress(OSError):
            conn.sendall(msg)
        conn.close()


def prepare(rs: Any) -> None:
    """Driver hook (restart, before any process): files the application saved are put
    back where they are missing or differ."""
    for rec in rs.image.raw(KIND):
        for f in rec.get("files", []):
            _put_back(rs, f)


def _put_back(rs: Any, f: dict[str, Any]) -> None:
    from cryo.engine.translate import apply as translated

    path = translated(rs.options, f["path"])  # the restart's one translation
    with rs.image.side_file(f["side"]) as src:
        data = src.read()
    if len(data) != f["size"]:
        raise ImageCorrupt(f"image {rs.image.path} is corrupt: saved file {path} is"
                           " truncated", path=rs.image.path)  # fmt: skip
    try:
        with open(path, "rb") as cur:
            if cur.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    tmp = f"{path}.cryo-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, f["mode"] & 0o777)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    log.info("saved file %s put back", path)


def host_addresses() -> list[str]:
    """This host's IP addresses of global scope (loopback and link-local left out), a
    grid part's service address among them (a secondary address of its interface)."""
    from cryo.linux.net import host_addresses as addresses

    with contextlib.suppress(OSError):
        return addresses()
    return []
