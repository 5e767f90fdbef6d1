"""Unix sockets: stream, datagram and seqpacket; connected pairs (socketpair(2), or an
accepted connection and its client) with the messages queued in each direction; sockets
bound to a path or an abstract name, listening or not; unbound ones; datagram sockets
connected to a bound peer; a peer that is gone (its end closed); a socket connected to
a peer outside the checkpoint (with ``--ext-unix-sk``, connected to the same address
again at restart); their options (SO_PASSCRED, SO_PEEK_OFF, buffer sizes...).

Dump: the kernel's sock_diag netlink interface tells each socket's type, state, name,
peer, queue lengths, shutdown state and the inode of its file; the data waiting in a
socket's receive queue is read from a duplicate of the fd with MSG_PEEK (stream), or
message by message with SO_PEEK_OFF (datagram, seqpacket), so the application loses
nothing.  A listener's connections waiting to be accepted are named by sock_diag
(UNIX_DIAG_ICONS: their clients, in queue order).  Refused by name: file descriptors in
flight on stream sockets (SCM_RIGHTS), a connection waiting to be accepted that holds
data already (its client's write queue is not empty) or whose client is outside the
checkpoint, a socket connected to a peer outside the checkpoint (without
``--ext-unix-sk``).

Each socket's SO_PEERCRED and SO_PEERGROUPS are recorded (``peercred``); one that
names a live process outside the checkpoint is refused.

Restart: cryo makes each socket once every process exists (see "restore" below: the
calls that record credentials are made in the process SO_PEERCRED named): a pair for
two connected ends, by socketpair() or, for a connection made by connect(), through
its listener so that the accepted end has its name again (each side's queued data
sent from the other side, in order; an end that was gone closed again), a bound
socket bound again (a stale socket file of the same path is replaced; a file that had
been unlinked is unlinked again), listening with its backlog, a datagram socket
connected to its bound peer once that one exists, a listener's waiting clients
connected to it again in their order.  Queued messages that carry credentials (the
reader has SO_PASSCRED) are sent again once every process exists, with SCM_CREDENTIALS
naming their senders' new pids; those of processes outside the checkpoint are refused.
SO_PASSCRED is set last, so that a message queued without credentials still has none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from cryo import procfs
from cryo.asuser import AsUserFailed, call_as
from cryo.engine import inet
from cryo.engine.translate import apply as translated
from cryo.errors import CryoError, Unsupported
from cryo.linux import libc, net
from cryo.linux.consts import SYS

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS = 1, 2, 4, 8
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS = 0, 1, 2, 3
UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 4, 6
TCP_ESTABLISHED, TCP_LISTEN = 1, 10
SO_PEEK_OFF = 42
SO_PEERGROUPS, SO_PEERPIDFD = 59, 77
SO_PASSCRED, SO_PASSPIDFD = 16, 76  # set last at restart: a message queued then gets none
SO_PASSRIGHTS = 83  # (set last too: off, the queue's messages carrying fds could not be sent)
LAST_OPTS = (SO_PASSCRED, SO_PASSPIDFD, SO_PASSRIGHTS)
MAX_MESSAGES = 1 << 20
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
         socket.SOCK_SEQPACKET: "seqpacket"}  # fmt: skip


def unix_sockets() -> dict[int, dict[str, Any]]:
    """Every unix socket of this network namespace: ino -> {type, state, peer, name,
    vfs, rqueue, wqueue, shutdown, icons}."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | \
            UDIAG_SHOW_RQLEN | 0x40  # UDIAG_SHOW_... shutdown is always sent  # fmt: skip
        req = struct.pack("<BBHIII2I", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show & ~0x40,
                          0xFFFFFFFF, 0xFFFFFFFF)  # fmt: skip
        hdr = struct.pack("<IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, 1, 0)  # fmt: skip
        nl.send(hdr + req)
        out: dict[int, dict[str, Any]] = {}
        while True:
            data = nl.recv(1 << 20)
            off = 0
            while off < len(data):
                length, kind = struct.unpack_from("<IH", data, off)
                if kind == NLMSG_DONE:
                    return _mark_queued(out)
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("<i", data, off + 16)[0], "sock_diag")
                _fam, typ, state, _pad, ino = struct.unpack_from("<BBBBI", data, off + 16)
                item: dict[str, Any] = {"type": typ, "state": state, "peer": 0, "name": None,
                                        "vfs": None, "rqueue": 0, "wqueue": 0,
                                        "shutdown": 0, "icons": []}  # fmt: skip
                a = off + 16 + 16
                while a < off + length:
                    alen, atype = struct.unpack_from("<HH", data, a)
                    body = data[a + 4 : a + alen]
                    if atype == UNIX_DIAG_PEER:
                        item["peer"] = struct.unpack("<I", body[:4])[0]
                    elif atype == UNIX_DIAG_NAME:  # a path ends with its NUL
                        item["name"] = bytes(body) if body[:1] == b"\0" else \
                            bytes(body).split(b"\0", 1)[0]  # fmt: skip
                    elif atype == UNIX_DIAG_VFS:
                        item["vfs"] = struct.unpack("<II", body[:8])  # ino, dev
                    elif atype == UNIX_DIAG_RQLEN:
                        item["rqueue"], item["wqueue"] = struct.unpack("<II", body[:8])
                    elif atype == UNIX_DIAG_SHUTDOWN:
                        item["shutdown"] = body[0]
                    elif atype == UNIX_DIAG_ICONS:
                        item["icons"] = list(struct.unpack(f"<{len(body) // 4}I", body))
                    a += (alen + 3) & ~3
                out[ino] = item
                off += (length + 3) & ~3
    finally:
        nl.close()


def _mark_queued(table: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each client whose connection waits in a listener's accept queue (the listener's
    ICONS name the clients, in queue order) gets ``queued_on``: that listener."""
    for ino, item in table.items():
        for c in item["icons"]:
            if c in table:
                table[c]["queued_on"] = ino
    return table


def _dup(pid: int, fd: int) -> socket.socket:
    return socket.socket(fileno=libc.fd_of(pid, fd))


def _show_name(name: bytes | None) -> str:
    if not name:
        return "unnamed"
    if name[:1] == b"\0":
        return "@" + name[1:].decode(errors="replace")
    return name.decode(errors="replace")


# file descriptors found in flight, held by cryo until the checkpoint ends: (the
# socket's entry, the message's index, the fd, the files module's describer)
DescribeFd = Callable[[int], int]
_in_flight: list[tuple[dict[str, Any], int, int, DescribeFd]] = []
# sockets whose SO_PEERCRED names a process outside the checkpoint: is it alive (by inode)
_creator_alive: dict[int, bool] = {}


def describe(pid: int, fd: int, ino: int, table: dict[int, dict[str, Any]],
             describe_fd: DescribeFd | None = None) -> dict[str, Any]:  # fmt: skip
    """The FDSC fields of a unix socket; ``describe_fd`` gives the description of a file
    descriptor cryo holds (one found in flight), once every process was collected."""
    info = table.get(ino)
    if info is None or info["type"] not in TYPES:
        raise Unsupported(f"fd {fd}: this unix socket is not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    typ = info["type"]
    name = info["name"]
    d: dict[str, Any] = {"sotype": TYPES[typ], "peer": info["peer"], "name": name,
                         "shutdown": info["shutdown"],
                         "in_flight": []}  # [[message, description]], filled in later
    # (the list itself goes into the description: files copies this dict's items)
    if info["state"] == TCP_LISTEN:
        for c in info["icons"]:  # connections waiting to be accepted: made again at restart
            sent = table.get(c, {}).get("wqueue", 0)
            if sent:
                raise Unsupported(f"fd {fd}: unix socket listening on {_show_name(name)}:"
                                  " a connection waiting to be accepted already holds data"
                                  f" from its client ({sent} bytes in flight), which cannot"
                                  " be read before it is accepted", pid=pid,
                                  resource=f"fd {fd}")  # fmt: skip
        if len(info["icons"]) != info["rqueue"]:
            raise Unsupported(f"fd {fd}: unix socket listening on {_show_name(name)} has"
                              f" {info['rqueue']} connections waiting to be accepted, of"
                              f" which {len(info['icons'])} could be named", pid=pid,
                              resource=f"fd {fd}")  # fmt: skip
        d["listen"] = info["wqueue"]
        d["queued"] = list(info["icons"])  # the clients, in the order they are accepted
    queued_on = info.get("queued_on")
    if queued_on is not None:  # a client whose connection waits to be accepted
        d["queued_on"] = queued_on
        d["peer_name"] = table[queued_on]["name"]
    if name and name[:1] != b"\0":  # bound to a path: is the file still that socket?
        path = name.decode(errors="surrogateescape")
        try:
            st = os.stat(f"/proc/{pid}/root{path}") if path.startswith("/") else \
                os.stat(os.path.join(f"/proc/{pid}/cwd", path))  # fmt: skip
            d["unlinked"] = not (stat.S_ISSOCK(st.st_mode) and info["vfs"] is not None
                                 and st.st_ino == info["vfs"][0])  # fmt: skip
            if not d["unlinked"]:  # (screen tells a session's state by its socket's mode)
                d["sockfile"] = [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                 st.st_atime_ns, st.st_mtime_ns]  # fmt: skip
        except FileNotFoundError:
            d["unlinked"] = True
        if not path.startswith("/"):
            d["cwd"] = os.readlink(f"/proc/{pid}/cwd")
    gone = d["peer"] not in table if d["peer"] else \
        info["state"] == TCP_ESTABLISHED and typ != socket.SOCK_DGRAM and \
        queued_on is None  # fmt: skip
    if gone:
        d["peer_gone"] = True  # its other end was closed (its inode is 0 then)
    if d["peer"] and not d.get("peer_gone"):
        d["peer_name"] = table[d["peer"]]["name"]
    s = _dup(pid, fd)
    try:
        cred = _peercred(s)
        if cred is not None:  # who made it (socketpair, listen, connect): made so again
            d["peercred"] = cred
            _creator_alive[ino] = _alive(s)
        if queued_on is not None:  # the accepted end will see who connects it: its holder
            d["connect_cred"] = _holder_cred(pid)
        if net.filter_len(s.fileno()):
            raise Unsupported(f"fd {fd}: unix socket {_show_name(name)} has a socket filter"
                              " attached (SO_ATTACH_FILTER), which is not supported yet",
                              pid=pid, resource=f"fd {fd}")  # fmt: skip
        if typ == socket.SOCK_STREAM and _urgent(s):
            raise Unsupported(f"fd {fd}: unix socket {_show_name(name)} holds an urgent byte"
                              " (MSG_OOB) not yet read, which the restart could not put back"
                              " at its place in the stream", pid=pid,
                              resource=f"fd {fd}")  # fmt: skip
        d["queue"] = _peek_queue(s, pid, fd, typ, d, describe_fd, table) \
            if d["peer"] or typ != socket.SOCK_STREAM \
            else []  # fmt: skip
        d["opts"] = inet.options(s, (socket.AF_UNIX, typ, 0))
    finally:
        s.close()
    return d


def _urgent(s: socket.socket) -> bool:
    """Whether a unix stream socket holds an urgent byte (send MSG_OOB, Linux 5.15) not
    yet read: a peek of it (MSG_OOB | MSG_PEEK leaves it there; EINVAL without one, or
    with SO_OOBINLINE, where it is read in the stream as any byte)."""
    try:
        return bool(s.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _peercred(s: socket.socket) -> list[Any] | None:
    """SO_PEERCRED and SO_PEERGROUPS: [pid, euid, egid, groups] of the process that made
    the socket's connection (or called listen()), None for a socket that has none."""
    pid, uid, gid = struct.unpack("iII", s.getsockopt(socket.SOL_SOCKET,
                                                      socket.SO_PEERCRED, 12))  # fmt: skip
    if not pid:
        return None
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)  # (Python's most)
    except OSError as err:
        if err.errno != errno.ERANGE:
            raise
        raise Unsupported("a unix socket's peer (SO_PEERGROUPS) has more than 256"
                          " supplementary groups") from err  # fmt: skip
    return [pid, uid, gid, list(struct.unpack(f"{len(raw) // 4}I", raw))]


def _alive(s: socket.socket) -> bool:
    """Whether the process SO_PEERCRED names is the live process that made it (its pid
    may have been taken by another since: SO_PEERPIDFD tells the very process)."""
    try:
        pidfd = s.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return False
    try:
        signal.pidfd_send_signal(pidfd, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    finally:
        os.close(pidfd)


def _holder_cred(pid: int) -> list[Any]:
    """[pid, euid, egid, groups] of process ``pid`` (from its status)."""
    st = procfs.parse_status(procfs.read(pid, "status"))
    return [pid, int(st["Uid"].split()[1]), int(st["Gid"].split()[1]),
            [int(g) for g in st.get("Groups", "").split()]]  # fmt: skip


def _peek_queue(s: socket.socket, pid: int, fd: int, typ: int, d: dict[str, Any],
                describe_fd: DescribeFd | None, table: dict[int, dict[str, Any]]
                ) -> list[bytes]:  # fmt: skip
    """The receive queue, without consuming it: message by message (datagram, seqpacket)
    or chunk by chunk (stream: a peek stops where the sender's credentials change) with
    SO_PEEK_OFF moving past what was read.  A datagram from an autobound sender
    ("\\0" and five hex digits) other than the peer keeps its sender's name in
    ``senders``: sent again from that name at restart (:func:`_refill`), which only a
    sender closed since leaves free (one still open, in the checkpoint or not, holds it:
    refused, as a named sender)."""
    out: list[bytes] = []
    size = 1 << 24 if typ == socket.SOCK_STREAM else 1 << 20
    old = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    passcred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    try:
        while len(out) < MAX_MESSAGES:
            try:
                data, anc, _f, sender = s.recvmsg(size, 1024,
                                                  socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            if typ == socket.SOCK_DGRAM and _named_sender(sender, d):
                raise Unsupported(f"fd {fd}: unix socket {_show_name(d.get('name'))} holds a"
                                  f" datagram from {_show_name(_raw_name(sender))}, whose"
                                  " address the restart could not give it again (it would"
                                  " come from no address)", pid=pid,
                                  resource=f"fd {fd}")  # fmt: skip
            if typ == socket.SOCK_DGRAM and _autobound_sender(sender, d):
                name = _raw_name(sender)
                if any(t["name"] == name for t in table.values()):
                    raise Unsupported(f"fd {fd}: unix socket {_show_name(d.get('name'))}"
                                      f" holds a datagram from the autobound"
                                      f" {_show_name(name)}, whose address the restart"
                                      " could not give it again (that sender still holds"
                                      " it)", pid=pid, resource=f"fd {fd}")  # fmt: skip
                d.setdefault("senders", []).append([len(out), name])
            if passcred:  # the program sees who sent each message: kept with it
                cred = _credentials(anc)
                if cred is not None and cred[0]:
                    d.setdefault("creds", []).append([len(out), *cred])
            _fds_in_flight(anc, pid, fd, d, len(out), describe_fd)
            if not data and (typ == socket.SOCK_STREAM or s.getsockopt(
                    socket.SOL_SOCKET, SO_PEEK_OFF) == sum(map(len, out))):  # fmt: skip
                # the end of the stream (a peer that is gone), or an empty message, which
                # does not move the peek offset: either way nothing more can be read
                return out
            out.append(data)
        raise Unsupported(f"fd {fd}: more than {MAX_MESSAGES} messages queued on a unix"
                          " socket", pid=pid, resource=f"fd {fd}")  # fmt: skip
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)


def _raw_name(addr: str | bytes | None) -> bytes:
    return os.fsencode(addr) if isinstance(addr, str) else (addr or b"")


def _named_sender(addr: str | bytes | None, d: dict[str, Any]) -> bool:
    """Whether a queued datagram came from a socket bound to a name of its own (bind(),
    not autobind's five hex digits) other than the peer it is connected to (whose
    socket sends the queue again at restart, under its name)."""
    name = _raw_name(addr)
    if not name or name == d.get("peer_name"):
        return False
    return not (len(name) == 6 and name[0] == 0 and all(
        c in b"0123456789abcdef" for c in name[1:]))  # fmt: skip


def _autobound_sender(addr: str | bytes | None, d: dict[str, Any]) -> bool:
    """Whether a queued datagram came from an autobound socket other than the peer."""
    name = _raw_name(addr)
    return bool(name) and name != d.get("peer_name") and not _named_sender(addr, d)


def _credentials(anc: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a message's SCM_CREDENTIALS, if it has them."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            pid, uid, gid = struct.unpack("iII", data[:12])
            return pid, uid, gid
    return None


def _fds_in_flight(anc: list[tuple[int, int, bytes]], pid: int, fd: int, d: dict[str, Any],
                   index: int, describe_fd: DescribeFd | None) -> None:  # fmt: skip
    """File descriptors a message carries (SCM_RIGHTS): cryo's copies are kept, to be
    described once every process was collected (:func:`check_peers`)."""
    got = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got += list(struct.unpack(f"<{len(data) // 4}i", data[: len(data) // 4 * 4]))
    if not got:
        return
    if describe_fd is None or d["sotype"] == "stream":
        for x in got:
            os.close(x)
        why = "here are not supported" if describe_fd is None else \
            ("on a stream socket are not supported: a peek returns them with every byte"
             " queued before the write that carried them, and shows them to any peek that"
             " starts before it, so the bytes they arrive with cannot be told")  # fmt: skip
        raise Unsupported(f"fd {fd}: file descriptors in flight {why}", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    for x in got:
        _in_flight.append((d, index, x, describe_fd))


def release_in_flight(_session: Any = None) -> None:
    """The checkpoint is over: cryo's copies of the fds in flight are closed."""
    for _d, _i, x, _f in _in_flight:
        with contextlib.suppress(OSError):
            os.close(x)
    _in_flight.clear()
    _creator_alive.clear()


def describe_in_flight(_session: Any) -> None:
    """Checkpoint, once every process is collected and before the data in pipes is read:
    the files found in flight described (as any process's; a socket among them may carry
    more, described in turn)."""
    for d, index, x, describe_fd in _in_flight:
        d["in_flight"].append([index, describe_fd(x)])


def check_peers(session: Any) -> None:
    """Checkpoint, once every process is collected: a unix socket whose peer is alive but
    outside the checkpoint is refused, or with --ext-unix-sk marked to be connected
    again to the peer's address at restart."""
    descs = session.shared.descs.descs
    unix = {d["ino"]: d for d in descs if d["kind"] == "unix"}
    inside = set(unix)
    pids = set(session.procs)
    for d in descs:
        if d["kind"] != "unix":
            continue
        where = f"fd {d['fd']} of {d['pid']}"
        strangers = sorted({c[1] for c in d.get("creds", []) if c[1] not in pids})
        if strangers:
            raise Unsupported(f"{where}: messages queued on this unix socket carry the"
                              " credentials (SCM_CREDENTIALS) of process"
                              f" {', '.join(map(str, strangers))}, outside the checkpoint;"
                              " they could not be given again", pid=d["pid"],
                              resource=f"fd {d['fd']}")  # fmt: skip
        outside = [c for c in d.get("queued", []) if c not in inside]
        if outside:
            raise Unsupported(f"{where}: unix socket listening on {_show_name(d['name'])}:"
                              f" {len(outside)} of the connections waiting to be accepted"
                              " come from sockets outside the checkpoint", pid=d["pid"],
                              resource=f"fd {d['fd']}")  # fmt: skip
        if d.get("queued_on") is not None and d["queued_on"] not in inside:
            if not session.net.get("ext_unix_sk"):
                raise Unsupported(f"{where}: unix socket waiting to be accepted by"
                                  f" {_show_name(d.get('peer_name'))}, outside the"
                                  " checkpoint; checkpoint with --ext-unix-sk to connect"
                                  " it to that address again at restart", pid=d["pid"],
                                  resource=f"fd {d['fd']}")  # fmt: skip
            _external(d)
            continue
        if not d["peer"] or d.get("peer_gone") or d["peer"] in inside:
            continue
        if not session.net.get("ext_unix_sk"):
            raise Unsupported(f"{where}: unix socket connected to {_show_name(d.get('peer_name'))}"
                              " outside the checkpoint; checkpoint with --ext-unix-sk to"
                              " connect it to that address again at restart", pid=d["pid"],
                              resource=f"fd {d['fd']}")  # fmt: skip
        if not d.get("peer_name"):
            raise Unsupported(f"{where}: unix socket connected to an unnamed socket outside"
                              " the checkpoint (--ext-unix-sk needs an address)",
                              pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip
        _external(d)
    for d in unix.values():  # (one connected again outside gets the creds it had there)
        if not d.get("external"):
            _check_cred(d, unix, pids)


def _external(d: dict[str, Any]) -> None:
    """Connected again at restart to its peer outside (--ext-unix-sk): a stream or
    seqpacket one by the process that holds it, with its credentials (the server sees
    them in SO_PEERCRED)."""
    d["external"] = True
    if d["sotype"] != "dgram":
        d["connect_cred"] = _holder_cred(d["pid"])


def _check_cred(d: dict[str, Any], unix: dict[int, dict[str, Any]], pids: set[int]) -> None:
    """Refused: a socket whose SO_PEERCRED names a live process outside the checkpoint
    (the restart cannot make it from that process), or an accepted end whose listener
    does not have the credentials its client saw."""
    where = f"fd {d['fd']} of {d['pid']}"
    cred = d.get("peercred")
    if cred is not None and cred[0] not in pids and _creator_alive.get(d["ino"]):
        raise Unsupported(f"{where}: the peer credentials (SO_PEERCRED) of this unix"
                          f" socket name process {cred[0]}, alive outside the checkpoint:"
                          " the restart could not make the socket from that process"
                          " again", pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip
    _check_listener_cred(d, unix, where)


def _check_listener_cred(d: dict[str, Any], unix: dict[int, dict[str, Any]],
                         where: str) -> None:  # fmt: skip
    """An accepted end is made again through the listener of the image that has its name
    (that name cannot be bound twice): refused when that listener's credentials are not
    the ones its client recorded (the listener was made again since the connection)."""
    peer = unix.get(d["peer"]) if d["peer"] else None
    if peer is None or peer.get("peer") != d["ino"]:
        return
    ends = _ends(d, peer, unix)
    if ends is None or ends[0] is not d:
        return
    listener = _listener_of(d, unix)
    if listener is None or ends[1] is None:
        return
    if listener.get("peercred") != ends[1].get("peercred"):
        raise Unsupported(f"{where}: this accepted unix socket's client recorded other peer"
                          " credentials (SO_PEERCRED) than its listener"
                          f" {_show_name(d['name'])} now has (the listener was made again"
                          " since): the connection cannot be made through it again",
                          pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def _ends(d: dict[str, Any], peer: dict[str, Any] | None, unix: dict[int, dict[str, Any]]
          ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:  # fmt: skip
    """(the accepted end, its client) of a stream or seqpacket connection made by
    connect() (the accepted end has its listener's name), None for one made by
    socketpair() (both ends unnamed)."""
    if d["sotype"] == "dgram":
        return None
    named = [x for x in (d, peer) if x is not None and x.get("name")]
    if not named:
        return None
    if len(named) == 2:  # a client bound too: the end named like a listener of the image
        named = [x for x in named if _listener_of(x, unix) is not None] or named
    acc = named[0]
    return acc, (peer if acc is d else d)


_listeners: list[tuple[dict[int, dict[str, Any]], dict[tuple[str, bytes], dict[str, Any]]]] = []


def _listener_of(acc: dict[str, Any], unix: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The listening socket of the image with ``acc``'s name and type, if any."""
    if not _listeners or _listeners[0][0] is not unix:
        _listeners[:] = [(unix, {(x["sotype"], x["name"]): x for x in unix.values()
                                 if "listen" in x and x.get("name")})]  # fmt: skip
    found = _listeners[0][1].get((acc["sotype"], acc["name"]))
    return found if found is not None and found["ino"] != acc["ino"] else None


# -- restore ---------------------------------------------------------------------------
#
# Every unix socket is made once every process exists (at the first process's "files"
# stage), so that the calls that record credentials (socketpair, listen, connect) are
# made by the process SO_PEERCRED named, with its euid, egid and groups: injected into
# that process of the restart (still root then: its own credentials come later), or,
# for one that is gone, made by a short-lived child of cryo with its pid.  cryo takes
# the sockets (pidfd_getfd) and fills their queues; each process takes them as late
# descriptions (engine/files.py).

SYS_CONNECT, SYS_LISTEN, SYS_SOCKETPAIR, SYS_PIDFD_GETFD = 42, 50, 53, 438
NOID = 0xFFFFFFFF  # (uid_t)-1: that id left as it is
_restart: list[Any] = []  # the restart session, from prepare to the sockets' making


def prepare_restart(rs: Any) -> None:
    """Driver hook, before any process exists: the session kept for :func:`make_all`."""
    if any(d["kind"] == "unix" for d in rs.shared.descs):
        _restart[:] = [rs]
        rs.on_exit(_restart.clear)


def make_all(_ctx: Any) -> None:
    """Stage "files" of the first process (every process exists): every unix socket of
    the image made, its queue filled, left for the processes as a late description."""
    if not _restart:
        return
    rs = _restart[0]
    opened = rs.shared.opened
    unix = {d["ino"]: d for d in rs.shared.descs if d["kind"] == "unix"}
    made: dict[int, int] = {}
    try:
        for d in unix.values():
            fd = open_socket(d, unix, made, rs.options)
            opened.late[d["id"]] = fd
            fcntl.fcntl(fd, fcntl.F_SETFL, d["flags"] & ~0o3)  # (not the access mode)
            if d.get("sig"):
                fcntl.fcntl(fd, F_SETSIG, d["sig"])
    except BaseException:
        _close_deferred()  # (cryo's copies of the senders and of the sockets' options)
        raise
    finally:
        for k, fd in made.items():
            if k >= 0:
                os.close(fd)
        _restart.clear()
    finish_queues(rs)


F_SETSIG = 10


def _sockaddr(addr: str | bytes) -> bytes:
    raw = addr if isinstance(addr, bytes) else os.fsencode(addr) + b"\0"
    return struct.pack("H", socket.AF_UNIX) + raw


def _as(cred: list[Any] | None, kind: str, s: socket.socket | None, arg: Any
        ) -> tuple[socket.socket, socket.socket] | None:  # fmt: skip
    """``kind`` ("socketpair" of type ``arg``, "listen" with backlog ``arg``, "connect"
    to ``arg``) made on ``s`` as the process ``cred`` names ([pid, euid, egid, groups]),
    with those credentials: the kernel records them (SO_PEERCRED).  Without ``cred``
    (an image that has none), by cryo."""
    rs = _restart[0] if _restart else None
    if cred is None or rs is None:
        if kind == "socketpair":
            return socket.socketpair(socket.AF_UNIX, arg)
        assert s is not None
        if kind == "listen":
            s.listen(arg)
        else:
            s.connect(arg)
        return None
    m = rs.made.get(cred[0])
    if m is not None and m.ctx is not None:
        return _injected(rs, m, cred, kind, s, arg)
    if m is not None or rs.plan.tree.get("pidns"):
        why = "a zombie of the image" if m is not None else "not in the new pid namespace"
        raise CryoError(f"a unix socket's peer credentials (SO_PEERCRED) name process"
                        f" {cred[0]}, {why}: they cannot be given again")  # fmt: skip
    return _helper(rs, cred, kind, s, arg)


def _injected(rs: Any, m: Any, cred: list[Any], kind: str, s: socket.socket | None,
              arg: Any) -> tuple[socket.socket, socket.socket] | None:  # fmt: skip
    inj = m.inj
    groups = cred[3]
    mine = os.getgroups()
    out = 0
    with inj.batch() as b:
        t = -1
        if s is not None:  # cryo's socket, in the process for the call
            t = b.call(SYS_PIDFD_GETFD, rs.shared.opened.me, s.fileno(), 0,
                       what=" pidfd_getfd of a unix socket")  # fmt: skip
        b.call(SYS.setgroups, len(groups), b.put(struct.pack(f"{len(groups)}I", *groups)
                                                 or b"\0" * 4))  # fmt: skip
        b.call(SYS.setresgid, NOID, cred[2], NOID)
        b.call(SYS.setresuid, NOID, cred[1], NOID)
        b.call(SYS.setfsuid, 0)  # (the socket files are root's: reached as root)
        if kind == "socketpair":
            out = b.reserve(8)
            i = b.call(SYS_SOCKETPAIR, socket.AF_UNIX, arg | socket.SOCK_CLOEXEC, 0, out,
                       may_fail=True)  # fmt: skip
        elif kind == "listen":
            i = b.call(SYS_LISTEN, b.ref(t), arg, may_fail=True)
        else:
            raw = _sockaddr(arg)
            i = b.call(SYS_CONNECT, b.ref(t), b.put(raw), len(raw), may_fail=True)
        b.call(SYS.setresuid, NOID, os.geteuid(), NOID)
        b.call(SYS.setresgid, NOID, os.getegid(), NOID)
        b.call(SYS.setgroups, len(mine), b.put(struct.pack(f"{len(mine)}I", *mine)
                                               or b"\0" * 4))  # fmt: skip
        if s is not None:
            b.call(SYS.close, b.ref(t))
    ret = b.result(i)
    if ret < 0:
        raise OSError(-ret, f"{kind} in process {m.pid}: {os.strerror(-ret)}")
    if kind != "socketpair":
        return None
    x, y = struct.unpack("ii", b.read(out, 8))
    pidfd = os.pidfd_open(m.pid)
    try:
        return (socket.socket(fileno=libc.pidfd_getfd(pidfd, x)),
                socket.socket(fileno=libc.pidfd_getfd(pidfd, y)))  # fmt: skip
    finally:
        os.close(pidfd)
        with inj.batch() as b:
            b.call(SYS.close, x)
            b.call(SYS.close, y)


def _helper(rs: Any, cred: list[Any], kind: str, s: socket.socket | None, arg: Any
            ) -> tuple[socket.socket, socket.socket] | None:  # fmt: skip
    """The call made by a child of cryo with the gone creator's pid (the same pid when
    the restart keeps pids) and credentials, which exits afterwards."""
    want = cred[0] if rs.reuse else None
    if want is not None and os.path.exists(f"/proc/{want}"):
        raise CryoError(f"a unix socket's peer credentials (SO_PEERCRED) name process"
                        f" {want}, gone, and its pid is taken now: they cannot be given"
                        " again")  # fmt: skip
    back, there = socket.socketpair()
    try:
        child = libc.clone3(want) if want is not None else os.fork()
        if child == 0:
            code = 1
            try:
                os.setgroups(cred[3])
                os.setresgid(-1, cred[2], -1)
                os.setresuid(-1, cred[1], -1)
                libc.syscall(SYS.setfsuid, 0)
                if kind == "socketpair":
                    x, y = socket.socketpair(socket.AF_UNIX, arg)
                    socket.send_fds(there, [b"s"], [x.fileno(), y.fileno()])
                elif kind == "listen":
                    assert s is not None
                    s.listen(arg)
                else:
                    assert s is not None
                    s.connect(arg)
                code = 0
            finally:
                os._exit(code)
        _pid, status = os.waitpid(child, 0)
        if status:
            raise CryoError(f"a unix socket's {kind} as process {cred[0]} (uid {cred[1]}):"
                            " the helper failed")  # fmt: skip
        if kind != "socketpair":
            return None
        _m, fds, _f, _a = socket.recv_fds(back, 1, 2)
        return socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
    finally:
        back.close()
        there.close()


def _addr(name: bytes, options: dict[str, Any]) -> str | bytes:
    """An address to connect to: abstract as it is, a path translated."""
    if name[:1] == b"\0":
        return name
    return translated(options, name.decode(errors="surrogateescape"))


# options set only once every queue is filled: with SO_PASSCRED on either end, the
# kernel would give a message sent without credentials cryo's
_last_opts: list[tuple[socket.socket, int, int, bytes]] = []


def _options(s: socket.socket, d: dict[str, Any] | None) -> None:
    for level, opt, raw in (d or {}).get("opts", []):
        if level == socket.SOL_SOCKET and opt in LAST_OPTS:
            _last_opts.append((socket.socket(fileno=os.dup(s.fileno())), level, opt, raw))
            continue
        with contextlib.suppress(OSError):
            inet.set_option(s, level, opt, raw)


def _set_last_options() -> None:
    for s, level, opt, raw in _last_opts:
        with contextlib.suppress(OSError):
            inet.set_option(s, level, opt, raw)
        s.close()
    _last_opts.clear()


def _sock(d: dict[str, Any]) -> socket.socket:
    typ = {v: k for k, v in TYPES.items()}[d["sotype"]]
    s = socket.socket(socket.AF_UNIX, typ)
    _options(s, d)
    return s


def _path(d: dict[str, Any], options: dict[str, Any]) -> str:
    path: str = d["name"].decode(errors="surrogateescape")
    path = path if path.startswith("/") else os.path.join(d.get("cwd", "/"), path)
    return translated(options, path)  # --translate (engine/translate.py)


def _bind(s: socket.socket, d: dict[str, Any], options: dict[str, Any]) -> None:
    name: bytes = d["name"]
    if name[:1] == b"\0":
        s.bind(name)
        return
    path = _path(d, options)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # the socket file the old process left
    _bind_path(s, d, options)
    if d.get("sockfile"):
        _sockfile(d, path)


def _sockfile(d: dict[str, Any], path: str) -> None:
    """The file the bind made, as the old one was: its mode, owner and times (screen
    tells a session attached or detached by its socket's mode).  Changed through an
    O_PATH descriptor of the file itself, not its name: a name swapped for a symlink in
    between (in /tmp, say) must not get another file chmod'ed by a root restart."""
    mode, uid, gid, atime, mtime = d["sockfile"]
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise CryoError(f"fd {d['fd']} of {d['pid']}: the socket file {path} it was bound"
                        f" to again is gone: {err}", pid=d["pid"],
                        resource=f"fd {d['fd']}") from err  # fmt: skip
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise CryoError(f"fd {d['fd']} of {d['pid']}: {path}, the socket file it was"
                            " bound to again, was replaced", pid=d["pid"],
                            resource=f"fd {d['fd']}")  # fmt: skip
        via = f"/proc/self/fd/{fd}"  # (the inode itself: a magic link)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(via, uid, gid)
        os.chmod(via, mode)
        os.utime(via, ns=(atime, mtime))
    finally:
        os.close(fd)


def _bind_path(s: socket.socket, d: dict[str, Any], options: dict[str, Any]) -> None:
    """Bound to its path as it was given: a relative one (getsockname() shows it so)
    bound by a child of cryo in the directory it was bound in."""
    name: str = d["name"].decode(errors="surrogateescape")
    if name.startswith("/"):
        s.bind(_path(d, options))
        return
    where = translated(options, d.get("cwd", "/"))

    def bind() -> bytes:
        os.chdir(where)
        s.bind(name)
        return b""

    try:
        call_as(None, bind)
    except AsUserFailed as err:
        raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot bind a unix socket to {name!r}"
                        f" in {where} again: {err}", pid=d["pid"],
                        resource=f"fd {d['fd']}") from err  # fmt: skip


def _refill(s: socket.socket, d: dict[str, Any]) -> None:
    """Datagrams waiting in a bound socket, sent again to it: from an unnamed socket, or
    one from an autobound sender closed since (``senders``) from a socket bound to that
    name for the moment (kept, as a copy, until its deferred messages are sent)."""
    if not d.get("queue"):
        return
    senders = {int(i): bytes(n) for i, n in d.get("senders", ())}
    to = s.getsockname()
    named: dict[bytes, socket.socket] = {}

    def sender_of(i: int) -> socket.socket | None:
        name = senders.get(i)
        if name is None:
            return None
        if name not in named:
            named[name] = u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            u.bind(name)
            u.connect(to)
        return named[name]

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
        tx.connect(to)
        try:
            _queue_to(tx, socket.SOCK_DGRAM, d, sender_of if senders else None)
        finally:
            for u in named.values():
                u.close()


def open_socket(d: dict[str, Any], unix: dict[int, dict[str, Any]], made: dict[int, int],
                options: dict[str, Any]) -> int:  # fmt: skip
    """The fd for unix socket ``d`` of the image (``unix``: all of them by inode; ``made``:
    sockets made early for a peer, by inode)."""
    if d["ino"] in made:
        return made.pop(d["ino"])
    made[~d["ino"]] = 0  # made (a peer connecting to it later knows it is there)
    try:
        return _open(d, unix, made, options)
    except OSError as err:
        raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot make the unix socket"
                        f" {_show_name(d.get('name'))} again: {err.strerror}",
                        pid=d["pid"], resource=f"fd {d['fd']}") from err  # fmt: skip


def _open(d: dict[str, Any], unix: dict[int, dict[str, Any]], made: dict[int, int],
          options: dict[str, Any]) -> int:  # fmt: skip
    listener = unix.get(d["queued_on"]) if d.get("queued_on") is not None else None
    if listener is not None and not d.get("external"):
        # waiting in the accept queue of a listener of the image: the listener, once
        # made, connects its clients again in their order
        if ~listener["ino"] not in made:
            made[listener["ino"]] = open_socket(listener, unix, made, options)
        if d["ino"] not in made:
            raise CryoError(f"fd {d['fd']} of {d['pid']}: its listener did not make it")
        return made.pop(d["ino"])
    peer = unix.get(d["peer"]) if d["peer"] else None
    if peer is not None and peer.get("peer") == d["ino"]:
        return _pair(d, peer, unix, made, options)
    if d.get("peer_gone"):
        return _pair(d, None, unix, made, options)
    s = _sock(d)
    try:
        if d.get("name"):
            _bind(s, d, options)
        if "listen" in d:
            _as(d.get("peercred"), "listen", s, d["listen"])
            _connect_accepted(s, d, unix, made, options)
            _connect_queued(s, d, unix, made, options)
        target = None
        if peer is not None:  # a datagram socket connected to a bound one of the image
            if ~peer["ino"] not in made:
                made[peer["ino"]] = open_socket(peer, unix, made, options)
            target = peer.get("name")
        elif d.get("external"):
            target = d.get("peer_name")
        elif d["peer"]:
            raise Unsupported(f"fd {d['fd']} of {d['pid']}: the other end of this unix socket"
                              " is outside the checkpoint", pid=d["pid"])  # fmt: skip
        if target:
            _as(d.get("connect_cred"), "connect", s, _addr(target, options))
        elif d.get("name") and d["sotype"] == "dgram":
            _refill(s, d)
        if d.get("name") and d.get("unlinked") and d["name"][:1] != b"\0":
            os.unlink(_path(d, options))
        _shutdown(s, d)
    except BaseException:
        s.close()
        raise
    return s.detach()


def _listen_addr(d: dict[str, Any], options: dict[str, Any]) -> str | bytes:
    name: bytes = d["name"]
    return name if name[:1] == b"\0" else _path(d, options)


def _connect_queued(s: socket.socket, d: dict[str, Any], unix: dict[int, dict[str, Any]],
                    made: dict[int, int], options: dict[str, Any]) -> None:  # fmt: skip
    """The connections that waited in listener ``d``'s accept queue, in that order: each
    client connected to it again (a new connection waiting to be accepted), by the
    process that holds it (the accepted end will name it in SO_PEERCRED)."""
    if not d.get("queued"):
        return
    addr = _listen_addr(d, options)
    for c in d["queued"]:
        cd = unix[c]
        cs = _sock(cd)
        try:
            if cd.get("name"):
                _bind(cs, cd, options)
            _as(cd.get("connect_cred"), "connect", cs, addr)
            _shutdown(cs, cd)
        except BaseException:
            cs.close()
            raise
        made[c] = cs.detach()


def _connect_accepted(s: socket.socket, d: dict[str, Any], unix: dict[int, dict[str, Any]],
                      made: dict[int, int], options: dict[str, Any]) -> None:  # fmt: skip
    """The accepted connections of listener ``d`` (their accepted end has its name),
    made again through it before its waiting clients: connected and accepted."""
    addr = _listen_addr(d, options)
    for a in unix.values():
        if a["ino"] in made or a.get("name") != d["name"] or a["ino"] == d["ino"] or \
                "listen" in a:  # fmt: skip
            continue
        peer = unix.get(a["peer"]) if a["peer"] else None
        if peer is not None and peer.get("peer") != a["ino"]:
            continue
        if peer is None and not a.get("peer_gone"):
            continue
        ends = _ends(a, peer, unix)
        if ends is None or ends[0] is not a or _listener_of(a, unix) is not d:
            continue
        acc, cli = _through(s, addr, a, peer, options)
        made[~a["ino"]] = 0
        made[a["ino"]] = acc
        if peer is not None:
            made[~peer["ino"]] = 0
            made[peer["ino"]] = cli


def _through(ls: socket.socket, addr: str | bytes, acc: dict[str, Any],
             cli: dict[str, Any] | None, options: dict[str, Any]) -> tuple[int, int]:
    """A connection through listener ``ls`` (at ``addr``): the client (bound again if it
    was) connected by the process its accepted end names, accepted; each end's queue
    sent from the other; (the accepted end's fd, the client's, -1 if it was gone)."""
    typ = {v: k for k, v in TYPES.items()}[acc["sotype"]]
    cs = _sock(cli) if cli is not None else socket.socket(socket.AF_UNIX, typ)
    a: socket.socket | None = None
    try:
        if cli is not None and cli.get("name"):
            _bind(cs, cli, options)
        _as(acc.get("peercred"), "connect", cs, addr)
        a, _ = ls.accept()
        _options(a, acc)
        _queue_to(cs, typ, acc)  # what the accepted end had to read comes from its client
        if cli is not None:
            _queue_to(a, typ, cli)
            _shutdown(cs, cli)
        _shutdown(a, acc)
    except BaseException:
        cs.close()
        if a is not None:
            a.close()
        raise
    if cli is None:
        cs.close()
        return a.detach(), -1
    return a.detach(), cs.detach()


def _shutdown(s: socket.socket, d: dict[str, Any]) -> None:
    how = d.get("shutdown", 0)  # RCV_SHUTDOWN 1, SEND_SHUTDOWN 2
    if how:
        with contextlib.suppress(OSError):
            s.shutdown({1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}[how])


def _pair(d: dict[str, Any], peer: dict[str, Any] | None, unix: dict[int, dict[str, Any]],
          made: dict[int, int], options: dict[str, Any]) -> int:  # fmt: skip
    """Two connected ends (or one whose other end is gone): made by connect() through
    their listener if they were (the accepted end has its name), else by socketpair(),
    each side's queue sent from the other side."""
    ends = _ends(d, peer, unix)
    if ends is not None:
        return _pair_connected(d, peer, ends, unix, made, options)
    typ = {v: k for k, v in TYPES.items()}[d["sotype"]]
    cred = d.get("peercred") or (peer or {}).get("peercred")
    pair = _as(cred, "socketpair", None, typ)
    assert pair is not None
    a, b = pair
    try:
        _options(a, d)
        _options(b, peer)
        _queue_to(b, typ, d)  # what d had to read comes from its peer
        if peer is not None:
            _queue_to(a, typ, peer)
        _shutdown(a, d)
        if peer is not None:
            _shutdown(b, peer)
    except BaseException:
        a.close()
        b.close()
        raise
    if peer is None:
        b.close()  # the other end was gone already
    else:
        made[peer["ino"]] = b.detach()
    return a.detach()


def _stale(path: str, typ: int) -> bool:
    """Whether ``path`` is a socket file nobody listens on any more."""
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return False
    with socket.socket(socket.AF_UNIX, typ) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def show(d: dict[str, Any]) -> dict[str, Any]:
    """What `cryo show` says of a socket's credentials, of the autobound senders of a
    unix socket's queued datagrams, and of a socket's shutdown."""
    out: dict[str, Any] = {}
    for key in ("peercred", "connect_cred"):
        if d.get(key):
            pid, uid, gid, groups = d[key]
            out[key] = f"pid {pid} uid {uid} gid {gid} groups {groups}"
    if d.get("senders"):
        out["senders"] = [f"message {i} from {_show_name(bytes(n))}" for i, n in d["senders"]]
    if d.get("shutdown") and d["kind"] in ("unix", "inet"):
        out["shutdown"] = {1: "SHUT_RD", 2: "SHUT_WR", 3: "SHUT_RDWR"}.get(d["shutdown"])
    return out


def _pair_connected(d: dict[str, Any], peer: dict[str, Any] | None,
                    ends: tuple[dict[str, Any], dict[str, Any] | None],
                    unix: dict[int, dict[str, Any]], made: dict[int, int],
                    options: dict[str, Any]) -> int:  # fmt: skip
    """A connection made by connect(): through the listener of the image that has the
    accepted end's name (made first; it makes its connections), else through a
    listener of that name made for the moment, by the process the client names."""
    acc, cli = ends
    real = _listener_of(acc, unix)
    if real is not None:
        if ~real["ino"] not in made:
            made[real["ino"]] = open_socket(real, unix, made, options)
        if d["ino"] not in made:
            raise CryoError(f"fd {d['fd']} of {d['pid']}: its listener did not make it")
        return made.pop(d["ino"])
    typ = {v: k for k, v in TYPES.items()}[acc["sotype"]]
    addr = _listen_addr(acc, options)
    aside = None
    if isinstance(addr, str) and os.path.lexists(addr):
        if not _stale(addr, typ):
            raise CryoError(f"fd {acc['fd']} of {acc['pid']}: an accepted unix socket of"
                            f" {addr}, whose listener is gone, cannot be given its name"
                            " again: the path is taken", pid=acc["pid"],
                            resource=f"fd {acc['fd']}")  # fmt: skip
        aside = f"{addr}.cryo-{os.getpid()}"  # the old listener's file, for a moment
        os.rename(addr, aside)
    ls = socket.socket(socket.AF_UNIX, typ)
    try:
        if isinstance(addr, str):
            _bind_path(ls, acc, options)
        else:
            ls.bind(addr)
        try:
            _as(cli.get("peercred") if cli is not None else None, "listen", ls, 1)
            fa, fc = _through(ls, addr, acc, cli, options)
        finally:
            if isinstance(addr, str):
                os.unlink(addr)
    finally:
        ls.close()
        if aside is not None:
            os.rename(aside, str(addr))
    if cli is None:
        return fa
    assert peer is not None
    mine, other = (fa, fc) if acc is d else (fc, fa)
    made[peer["ino"]] = other
    return mine


# messages that carry file descriptors or credentials, sent once every description is
# open (finish_queues) and, from the first with credentials on, once every process
# exists (send_credentialed): (our copy of the sending socket, its type,
# [(data, desc ids, credentials or None)])
Deferred = list[tuple[bytes, list[int], "list[int] | None", "socket.socket | None"]]
_deferred: list[tuple[socket.socket, int, Deferred]] = []


def _queue_to(sender: socket.socket, typ: int, d: dict[str, Any],
              sender_of: Callable[[int], socket.socket | None] | None = None) -> None:
    """``d``'s receive queue, sent from ``sender`` (or the socket ``sender_of`` gives for
    a message): now up to the first message that carries file descriptors or
    credentials, the rest by :func:`finish_queues`."""
    fds: dict[int, list[int]] = {}
    for index, desc in d.get("in_flight", []):
        fds.setdefault(index, []).append(desc)
    creds = {c[0]: list(c[1:]) for c in d.get("creds", [])}
    msgs = d["queue"]
    first = min([*fds, *creds, len(msgs)])
    for i, data in enumerate(msgs[:first]):
        _send((sender_of(i) if sender_of is not None else None) or sender, typ, data)
    if first < len(msgs):
        mine = socket.socket(fileno=os.dup(sender.fileno()))
        later: Deferred = []
        for i, m in enumerate(msgs[first:], first):
            own = sender_of(i) if sender_of is not None else None
            later.append((m, fds.get(i, []), creds.get(i),
                          socket.socket(fileno=os.dup(own.fileno())) if own else None))
        _deferred.append((mine, typ, later))


def _fd_of(rs: Any, index: int) -> int:
    opened = rs.shared.opened
    fd = opened.fds.get(index, opened.late.get(index))
    if fd is None:
        raise CryoError(f"a file in flight on a unix socket (description {index}) was not"
                        " made")  # fmt: skip
    return int(fd)


def _send_deferred(rs: Any, upto_creds: bool) -> None:
    """The deferred messages of each socket, in order: all of them, or (``upto_creds``)
    those before the first with credentials."""
    for k, (sock, typ, msgs) in enumerate(_deferred):
        sent = 0
        for data, ids, cred, own in msgs:
            if cred is not None and upto_creds:
                break
            anc = []
            if ids:
                anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(
                    f"{len(ids)}i", *(_fd_of(rs, i) for i in ids))))  # fmt: skip
            if cred is not None:  # as the process that sent it (its new pid)
                pid = rs.pid_map.get(cred[0], cred[0])
                anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                            struct.pack("iII", pid, cred[1], cred[2])))  # fmt: skip
            (own or sock).sendmsg([data], anc)  # (blocking: a stream's bytes all go)
            if own is not None:  # (a copy of the socket of an autobound sender's name)
                own.close()
            sent += 1
        _deferred[k] = (sock, typ, msgs[sent:])


def _close_deferred() -> None:
    for sock, _typ, msgs in _deferred:
        sock.close()
        for *_m, own in msgs:
            if own is not None:
                own.close()
    _deferred.clear()
    for s, _l, _o, _r in _last_opts:
        s.close()
    _last_opts.clear()


def finish_queues(rs: Any) -> None:
    """Restart, every unix socket made: the messages with file descriptors in flight
    (and those after them) sent with the descriptions cryo opened, up to the first that
    carries credentials (those wait for the processes: :func:`send_credentialed`)."""
    try:
        _send_deferred(rs, upto_creds=True)
    except BaseException:
        _close_deferred()
        raise
    rs.on_exit(_close_deferred)


def send_credentialed(rs: Any) -> None:
    """Restart, every process built, before they run: the messages that carry credentials
    (and those after them), sent as their senders (SCM_CREDENTIALS with their new pids:
    the kernel wants a live process); then SO_PASSCRED set where it was."""
    try:
        _send_deferred(rs, upto_creds=False)
        _set_last_options()
    finally:
        _close_deferred()


def _send(s: socket.socket, typ: int, data: bytes) -> None:
    try:
        if typ == socket.SOCK_STREAM:
            s.sendall(data)
        else:
            s.send(data)
    except OSError as err:
        if err.errno == errno.EAGAIN:
            raise CryoError("a unix socket's queue does not fit in a new socket") from err
        raise
