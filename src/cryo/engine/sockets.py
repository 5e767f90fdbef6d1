"""Unix socket pairs (socketpair(2), or any two connected unnamed unix sockets) with
the messages queued in each direction.

Dump: the kernel's sock_diag netlink interface tells each socket's type, state and
peer; the data waiting in a socket's receive queue is read from a duplicate of the fd
with MSG_PEEK (stream), or message by message with SO_PEEK_OFF (datagram, seqpacket),
so the application loses nothing.  Restart: cryo makes a new pair and sends each side's
queued data from the other side, in order, before the processes inherit the two ends.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from cryo.errors import Unsupported
from cryo.linux import libc

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN = 1, 4, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN = 0, 2, 4
SO_PEEK_OFF = 42
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
         socket.SOCK_SEQPACKET: "seqpacket"}  # fmt: skip


def unix_sockets() -> dict[int, dict[str, Any]]:
    """Every unix socket of this network namespace: ino -> {type, state, peer, name}."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        req = struct.pack("<BBHIII2I", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                          UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
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
                    return out
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("<i", data, off + 16)[0], "sock_diag")
                _fam, typ, state, _pad, ino = struct.unpack_from("<BBBBI", data, off + 16)
                item: dict[str, Any] = {"type": typ, "state": state, "peer": 0, "name": None}
                a = off + 16 + 16
                while a < off + length:
                    alen, atype = struct.unpack_from("<HH", data, a)
                    body = data[a + 4 : a + alen]
                    if atype == UNIX_DIAG_PEER:
                        item["peer"] = struct.unpack("<I", body[:4])[0]
                    elif atype == UNIX_DIAG_NAME:
                        item["name"] = body.rstrip(b"\0")
                    a += (alen + 3) & ~3
                out[ino] = item
                off += (length + 3) & ~3
    finally:
        nl.close()


def describe(pid: int, fd: int, ino: int, table: dict[int, dict[str, Any]]) -> dict[str, Any]:
    info = table.get(ino)
    if info is None or info["type"] not in TYPES:
        raise Unsupported(f"fd {fd}: this unix socket is not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    if info["name"] is not None:
        raise Unsupported(f"fd {fd}: a named unix socket ({info['name']!r}) is not supported"
                          " yet", pid=pid, resource=f"fd {fd}")  # fmt: skip
    if not info["peer"]:
        raise Unsupported(f"fd {fd}: an unconnected unix socket is not supported", pid=pid,
                          resource=f"fd {fd}")  # fmt: skip
    return {"sotype": TYPES[info["type"]], "peer": info["peer"],
            "queue": _peek_queue(pid, fd, info["type"])}  # fmt: skip


def _peek_queue(pid: int, fd: int, typ: int) -> list[bytes]:
    pidfd = libc.pidfd_open(pid)
    try:
        mine = libc.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    s = socket.socket(fileno=mine)
    try:
        if typ == socket.SOCK_STREAM:
            try:
                data, anc, _flags, _addr = s.recvmsg(1 << 24, 1024,
                                                     socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return []
            _no_fds(anc, pid, fd)
            return [data] if data else []
        out: list[bytes] = []
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            while True:
                try:
                    data, anc, _f, _a = s.recvmsg(1 << 20, 1024,
                                                  socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return out
                _no_fds(anc, pid, fd)
                out.append(data)
        finally:
            s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    finally:
        s.close()


def _no_fds(anc: list[tuple[int, int, bytes]], pid: int, fd: int) -> None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(data) - len(data) % 4, 4):
                os.close(struct.unpack_from("<i", data, i)[0])
            raise Unsupported(f"fd {fd}: file descriptors in flight on a unix socket are not"
                              " supported", pid=pid, resource=f"fd {fd}")  # fmt: skip


def open_pair(d: dict[str, Any], peer: dict[str, Any] | None, made: dict[int, int]) -> int:
    """The fd for socket ``d``: a new pair is made when its peer is not made yet."""
    if d["ino"] in made:
        return made.pop(d["ino"])
    if peer is None:
        raise Unsupported(f"fd {d['fd']} of {d['pid']}: the other end of this unix socket"
                          " is outside the checkpoint", pid=d["pid"])  # fmt: skip
    typ = {v: k for k, v in TYPES.items()}[d["sotype"]]
    a, b = socket.socketpair(socket.AF_UNIX, typ)
    for data in d["queue"]:  # what d had to read comes from its peer
        b.sendall(data) if typ == socket.SOCK_STREAM else b.send(data)
    for data in peer["queue"]:
        a.sendall(data) if typ == socket.SOCK_STREAM else a.send(data)
    made[peer["ino"]] = b.detach()
    return a.detach()
