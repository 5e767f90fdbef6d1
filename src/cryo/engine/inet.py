"""Internet sockets (TCP, UDP, ICMP ping and raw sockets over IPv4 and IPv6), packet
and netlink sockets: their addresses, state and options; established TCP connections
with TCP_REPAIR.

Dump: the socket is read from outside, on cryo's duplicate of the fd (pidfd_getfd):
family, type and protocol (SO_DOMAIN, SO_TYPE, SO_PROTOCOL), the local and remote
address, the TCP state and, for a listening socket, its backlog (tcp_info), and every
option of :data:`OPTIONS` whose value differs from a fresh socket's.  An established
connection (with ``--tcp-established``) is first locked (engine/netlock.py), then put
in repair mode and read: both queues (data sent and not acknowledged or not sent yet,
data received and not read), sequence numbers, MSS, window scale, SACK, timestamps
and the window (TCP_REPAIR_WINDOW); it stays in repair mode until the checkpoint ends,
so that the processes killed after it close it without a word to the peer.

Restart: cryo makes each socket before the processes exist (socket, options, bind,
listen or connect) and every process inherits it; a connection is rebuilt in repair
mode (bind, sequence numbers, connect, options, queues, window) and leaves repair mode
just before the processes run, once their network lock is removed.  The client of a
connection that waited in a listener's accept queue (both in the checkpoint) is made
again with a real handshake instead: bound, then connected to the restored listener
once the lock is gone.

Datagrams queued in UDP, raw, packet and netlink sockets are not saved (the protocols
may lose them); neither are multicast memberships (refused by nothing: they are lost).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import itertools
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryo import procfs
from cryo.engine import netlock
from cryo.errors import CryoError, Unsupported
from cryo.linux import libc
from cryo.linux import net as N

log = logging.getLogger(__name__)
ST = N.TCP_STATE
Conn = tuple[str, int, str, int]  # local address, local port, remote address, remote port
_I = 0  # an int option; any other size is raw bytes of that length

# (level, option, size) in the order they are set back, all before bind
OPTIONS: tuple[tuple[int, int, int], ...] = (
    *((N.SOL.SOCKET, o, _I) for o in (
        N.SO.REUSEADDR, N.SO.REUSEPORT, N.SO.KEEPALIVE, N.SO.BROADCAST, N.SO.OOBINLINE,
        N.SO.RCVLOWAT, N.SO.MARK, N.SO.PASSCRED, N.SO.DONTROUTE,
        N.SO.TIMESTAMP_OLD, N.SO.RXQ_OVFL, N.SO.PEEK_OFF, N.SO.SNDBUF, N.SO.RCVBUF,
        N.SO.TIMESTAMPNS_OLD, N.SO.TIMESTAMPING_OLD, N.SO.WIFI_STATUS, N.SO.SELECT_ERR_QUEUE,
        N.SO.BUSY_POLL, N.SO.MAX_PACING_RATE, N.SO.INCOMING_CPU, N.SO.ZEROCOPY,
        N.SO.PREFER_BUSY_POLL, N.SO.TXREHASH, N.SO.RCVMARK, N.SO.PASSPIDFD, N.SO.PASSSEC,
        N.SO.PASSRIGHTS, N.SO.BUF_LOCK)),  # (SO_BUF_LOCK after the sizes, which lock them)
    (N.SOL.SOCKET, N.SO.LINGER, 8), (N.SOL.SOCKET, N.SO.RCVTIMEO_OLD, 16),
    (N.SOL.SOCKET, N.SO.SNDTIMEO_OLD, 16), (N.SOL.SOCKET, N.SO.BINDTODEVICE, 16),
)  # fmt: skip
IP_OPTIONS = (*((N.SOL.IP, o, _I) for o in (
    N.IP.TOS, N.IP.TTL, N.IP.FREEBIND, N.IP.TRANSPARENT, N.IP.RECVERR, N.IP.PKTINFO,
    N.IP.MTU_DISCOVER, N.IP.RECVTTL, N.IP.RECVTOS, N.IP.MULTICAST_TTL, N.IP.MULTICAST_LOOP,
    N.IP.MULTICAST_ALL, N.IP.BIND_ADDRESS_NO_PORT, N.IP.RECVOPTS, N.IP.RETOPTS,
    N.IP.PASSSEC, N.IP.RECVORIGDSTADDR, N.IP.MINTTL, N.IP.NODEFRAG, N.IP.CHECKSUM,
    N.IP.RECVERR_RFC4884, N.IP.UNICAST_IF, N.IP.LOCAL_PORT_RANGE, N.IP.RECVFRAGSIZE)),
    (N.SOL.IP, N.IP.OPTIONS, 40))  # fmt: skip
IPV6_OPTIONS = tuple((N.SOL.IPV6, o, _I) for o in (
    N.IPV6.V6ONLY, N.IPV6.FREEBIND, N.IPV6.TCLASS, N.IPV6.UNICAST_HOPS,
    N.IPV6.MULTICAST_HOPS, N.IPV6.MULTICAST_LOOP, N.IPV6.RECVPKTINFO, N.IPV6.MTU_DISCOVER,
    N.IPV6.RECVERR, N.IPV6.RECVERR_RFC4884, N.IPV6.FLOWINFO_SEND, N.IPV6.RECVHOPLIMIT,
    N.IPV6.RECVHOPOPTS, N.IPV6.RECVRTHDR, N.IPV6.RECVDSTOPTS, N.IPV6.RECVPATHMTU,
    N.IPV6.DONTFRAG, N.IPV6.RECVTCLASS, N.IPV6.AUTOFLOWLABEL, N.IPV6.ADDR_PREFERENCES,
    N.IPV6.MINHOPCOUNT, N.IPV6.RECVORIGDSTADDR, N.IPV6.UNICAST_IF,
    N.IPV6.MULTICAST_IF))  # fmt: skip
TCP_OPTIONS = (
    *((N.SOL.TCP, o, _I) for o in (
        N.TCP.NODELAY, N.TCP.CORK, N.TCP.KEEPIDLE, N.TCP.KEEPINTVL, N.TCP.KEEPCNT,
        N.TCP.SYNCNT, N.TCP.LINGER2, N.TCP.DEFER_ACCEPT, N.TCP.WINDOW_CLAMP,
        N.TCP.USER_TIMEOUT, N.TCP.FASTOPEN, N.TCP.NOTSENT_LOWAT, N.TCP.MAXSEG,
        N.TCP.THIN_LINEAR_TIMEOUTS, N.TCP.SAVE_SYN, N.TCP.FASTOPEN_CONNECT,
        N.TCP.FASTOPEN_NO_COOKIE, N.TCP.INQ, N.TCP.TX_DELAY, N.TCP.RTO_MIN_US,
        N.TCP.DELACK_MAX_US, N.TCP.QUICKACK)),
    (N.SOL.TCP, N.TCP.CONGESTION, 16),
)  # fmt: skip
RAW_OPTIONS = ((N.SOL.IP, N.IP.HDRINCL, _I),)
# packet sockets' own (linux/if_packet.h), before bind but PACKET_FANOUT (a bind fails
# once the socket is in a fanout group: set after it, _build); not PACKET_STATISTICS,
# whose read resets it, nor PACKET_HDRLEN, a question
_SOL_PACKET, _PACKET_FANOUT = 263, 18
PACKET_OPTIONS = tuple((_SOL_PACKET, o, _I) for o in (
    7, 8, 9, 15, 24, 10, 12, 14, 17, 19, 20, 23, _PACKET_FANOUT))  # COPY_THRESH, AUXDATA,
# ORIGDEV, VNET_HDR, VNET_HDR_SZ, VERSION, RESERVE, LOSS, TIMESTAMP, TX_HAS_OFF,
# QDISC_BYPASS, IGNORE_OUTGOING
# netlink sockets' (linux/netlink.h): PKTINFO, BROADCAST_ERROR, NO_ENOBUFS,
# LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, GET_STRICT_CHK
NETLINK_OPTIONS = tuple((N.SOL.NETLINK, o, _I) for o in (3, 4, 5, 8, 10, 11, 12))
UDP_OPTIONS = tuple((N.SOL.UDP, o, _I) for o in (
    N.UDP.CORK, N.UDP.NO_CHECK6_TX, N.UDP.NO_CHECK6_RX, N.UDP.SEGMENT, N.UDP.GRO))
# set last: IP_TOS sets the priority from the TOS (a program's own SO_PRIORITY set after
# it would be overwritten)
LAST_OPTIONS = ((N.SOL.SOCKET, N.SO.PRIORITY, _I),)
MULTICAST = {(N.SOL.IP, N.IP.MULTICAST_TTL), (N.SOL.IP, N.IP.MULTICAST_LOOP),
             (N.SOL.IP, N.IP.MULTICAST_ALL), (N.SOL.IPV6, N.IPV6.MULTICAST_HOPS),
             (N.SOL.IPV6, N.IPV6.MULTICAST_LOOP), (N.SOL.IPV6, N.IPV6.MULTICAST_IF)}  # fmt: skip
_IP_RECVFRAGSIZE = (N.SOL.IP, N.IP.RECVFRAGSIZE)
BUFFERS = {(N.SOL.SOCKET, N.SO.SNDBUF), (N.SOL.SOCKET, N.SO.RCVBUF)}
# not asked of a connection, whose repair state has its sizes and locks (sndbuf, rcvbuf,
# buflock: _read_repair)
_NO_BUFFERS = BUFFERS | {(N.SOL.SOCKET, N.SO.BUF_LOCK)}
# what a connection's state sets, not the program: restored by TCP_REPAIR (SO_REUSEADDR
# is read before repair mode overwrites it, and set again when the connection leaves it;
# TCP_FASTOPEN_CONNECT acts at connect() only, which repair mode's connect must not defer)
CONNECTION_OWN = {(N.SOL.TCP, N.TCP.MAXSEG), (N.SOL.TCP, N.TCP.WINDOW_CLAMP),
                  (N.SOL.SOCKET, N.SO.REUSEADDR), (N.SOL.TCP, N.TCP.FASTOPEN_CONNECT)}  # fmt: skip
# the half-closed states (CRIU's soccr): a FIN of ours in the send queue, first (we
# closed first) or second; a FIN of the peer's in the receive queue, first or second
SNDQ_FIRST_FIN = {ST.FIN_WAIT1, ST.FIN_WAIT2, ST.CLOSING}
SNDQ_SECOND_FIN = {ST.LAST_ACK}
SNDQ_FIN = SNDQ_FIRST_FIN | SNDQ_SECOND_FIN
RCVQ_FIN = {ST.CLOSE_WAIT, ST.LAST_ACK, ST.CLOSING}
LOCK_MARK = 0xC114  # packets cryo makes up for a connection pass its network lock
CONNECTED = {ST.ESTABLISHED, ST.FIN_WAIT1, ST.FIN_WAIT2, ST.CLOSE_WAIT, ST.LAST_ACK,
             ST.CLOSING}  # fmt: skip
SETTING_UP = {ST.SYN_SENT, ST.SYN_RECV, ST.NEW_SYN_RECV}
# plain ints for the per-connection paths (an enum member looked up on its class is a
# descriptor call; a checkpoint of a busy server makes tens of thousands)
_SOL_SOCKET, _SOL_TCP = int(N.SOL.SOCKET), int(N.SOL.TCP)
_SO_REUSEADDR, _SO_SNDBUF, _SO_RCVBUF = int(N.SO.REUSEADDR), int(N.SO.SNDBUF), int(N.SO.RCVBUF)
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = int(N.SO.SNDBUFFORCE), int(N.SO.RCVBUFFORCE)
_SO_BUF_LOCK, _BOTH_LOCKED = int(N.SO.BUF_LOCK), 3  # SOCK_SNDBUF_LOCK 1 | SOCK_RCVBUF_LOCK 2
_TCP_REPAIR, _TCP_REPAIR_QUEUE = int(N.TCP.REPAIR), int(N.TCP.REPAIR_QUEUE)
_TCP_INFO, _TCP_REPAIR_WINDOW = int(N.TCP.INFO), int(N.TCP.REPAIR_WINDOW)
_TCP_REPAIR_OPTIONS, _TCP_WINDOW_CLAMP = int(N.TCP.REPAIR_OPTIONS), int(N.TCP.WINDOW_CLAMP)
_RWIN = struct.Struct("=5I")  # struct tcp_repair_window
_TCP_QUEUE_SEQ, _TCP_MAXSEG, _TCP_TIMESTAMP = int(N.TCP.QUEUE_SEQ), int(N.TCP.MAXSEG), \
    int(N.TCP.TIMESTAMP)  # fmt: skip
_RECV_QUEUE, _SEND_QUEUE, _NO_QUEUE = int(N.TCP_QUEUE.RECV_QUEUE), \
    int(N.TCP_QUEUE.SEND_QUEUE), int(N.TCP_QUEUE.NO_QUEUE)  # fmt: skip
_INQ, _OUTQ, _OUTQNSD = int(N.SIOC.INQ), int(N.SIOC.OUTQ), int(N.SIOC.OUTQNSD)
_OPT_SACK, _OPT_WSCALE, _OPT_TIMESTAMPS = int(N.TCPI_OPT.SACK), int(N.TCPI_OPT.WSCALE), \
    int(N.TCPI_OPT.TIMESTAMPS)  # fmt: skip
_TCPOPT_SACK_PERM, _TCPOPT_WINDOW = int(N.TCPOPT.SACK_PERM), int(N.TCPOPT.WINDOW)
_TCPOPT_TIMESTAMP, _TCPOPT_MAXSEG = int(N.TCPOPT.TIMESTAMP), int(N.TCPOPT.MAXSEG)
_U32 = struct.Struct("I")
FAMILIES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6",
                            socket.AF_PACKET: "packet", socket.AF_NETLINK: "netlink"}  # fmt: skip
FAMILIES_INET = (socket.AF_INET, socket.AF_INET6)
TYPES: dict[int, str] = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
                         socket.SOCK_RAW: "raw", socket.SOCK_SEQPACKET: "seqpacket"}  # fmt: skip
_TYPE_OF = {v: int(k) for k, v in TYPES.items()}
_STATE_NAME = {int(m): m.name for m in ST}
_LISTEN = int(ST.LISTEN)
_AF_PACKET = int(socket.AF_PACKET)
_STREAM, _TCP = int(socket.SOCK_STREAM), int(socket.IPPROTO_TCP)


def dup(pid: int, fd: int) -> socket.socket:
    """cryo's duplicate of socket ``fd`` of process ``pid``."""
    return socket.socket(fileno=libc.fd_of(pid, fd))


def identity(s: socket.socket) -> tuple[int, int, int]:
    """(family, type, protocol) of a socket: as Python's socket object has them (asked
    of the kernel when it was made from an fd without them: getsockname's family,
    SO_TYPE and SO_PROTOCOL; given by :func:`_dup_held`, which knows them)."""
    return int(s.family), int(s.type), int(s.proto)


_families: dict[tuple[int, int, int], int] = {}


def family_of(pid: int, fd: int, ino: int) -> int:
    """The address family of socket ``fd`` of ``pid`` (asked once per socket)."""
    key = (pid, fd, ino)
    if key not in _families:
        if len(_families) > 100_000:
            _families.clear()
        try:
            with dup(pid, fd) as s:
                _families[key] = N.get_int(s, N.SOL.SOCKET, N.SO.DOMAIN)
        except OSError:
            _families[key] = -1
    return _families[key]


def name(ident: tuple[int, int, int]) -> str:
    family, typ, proto = ident
    if family in (socket.AF_INET, socket.AF_INET6):
        kind = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
                socket.IPPROTO_ICMP: "ICMP", socket.IPPROTO_ICMPV6: "ICMPv6",
                socket.IPPROTO_UDPLITE: "UDP-Lite"}.get(proto, f"protocol {proto}")  # fmt: skip
        if typ == socket.SOCK_RAW:
            kind = f"raw {kind}"
        return f"{FAMILIES[family]} {kind}"
    return f"{FAMILIES.get(family, f'family {family}')} {TYPES.get(typ, typ)}"


def _options_for(ident: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    family, typ, proto = ident
    out: tuple[tuple[int, int, int], ...] = OPTIONS
    if family == socket.AF_INET:
        out += IP_OPTIONS + (RAW_OPTIONS if typ == socket.SOCK_RAW else ())
    elif family == socket.AF_INET6:
        out += IPV6_OPTIONS
    elif family == socket.AF_PACKET:
        out += PACKET_OPTIONS
    elif family == socket.AF_NETLINK:
        out += NETLINK_OPTIONS
    if typ == socket.SOCK_STREAM:  # the kernel refuses multicast options on a stream,
        # and IP_RECVFRAGSIZE (EINVAL but on raw and datagram sockets): never set there
        out = tuple(o for o in out if (o[0], o[1]) not in MULTICAST
                    and (o[0], o[1]) != _IP_RECVFRAGSIZE)  # fmt: skip
    if family in (socket.AF_INET, socket.AF_INET6) and proto == socket.IPPROTO_TCP:
        out += TCP_OPTIONS
    elif family in (socket.AF_INET, socket.AF_INET6) and proto == socket.IPPROTO_UDP:
        out += UDP_OPTIONS
    return out + LAST_OPTIONS


def _read_options(s: socket.socket, opts: tuple[tuple[int, int, int], ...],
                  refused: set[tuple[int, int]] | None = None
                  ) -> dict[tuple[int, int], bytes]:  # fmt: skip
    """The options of ``s`` it answers; into ``refused``, those the kernel does not have
    for a socket of its kind (ENOPROTOOPT, EOPNOTSUPP: SO_PASSCRED but on unix and
    netlink sockets)."""
    got = {}
    for level, opt, size in opts:
        try:
            if size == _I:
                got[(level, opt)] = int(s.getsockopt(level, opt)).to_bytes(4, "little",
                                                                            signed=True)
            else:
                got[(level, opt)] = bytes(s.getsockopt(level, opt, size))
        except OSError as err:
            if refused is not None and err.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                refused.add((level, opt))
            continue
    return got


_defaults: dict[tuple[int, int, int], dict[tuple[int, int], bytes]] = {}
# per socket identity: its options as plain ints (level, option, size, default: an int
# for an int option, bytes otherwise, None where a fresh socket refuses it)
_plans: dict[tuple[int, int, int], list[tuple[int, int, int, Any]]] = {}


# per socket identity: the options its kind has not (not asked of each socket: a
# refusal costs a system call and an exception, per connection of a busy server)
_refused: dict[tuple[int, int, int], set[tuple[int, int]]] = {}


def _default_options(ident: tuple[int, int, int]) -> dict[tuple[int, int], bytes]:
    if ident not in _defaults:
        refused = _refused[ident] = set()
        try:
            with socket.socket(*ident) as s:
                _defaults[ident] = _read_options(s, _options_for(ident), refused)
        except OSError:
            _defaults[ident] = {}
            refused.clear()
    return _defaults[ident]


def _plan(ident: tuple[int, int, int]) -> list[tuple[int, int, int, Any]]:
    if ident not in _plans:
        defaults = _default_options(ident)
        refused = _refused.get(ident, set())
        plan = []
        for level, opt, size in _options_for(ident):
            if (level, opt) in refused:
                continue
            raw = defaults.get((level, opt))
            default: Any = raw if raw is None or size != _I else \
                int.from_bytes(raw, "little", signed=True)  # fmt: skip
            plan.append((int(level), int(opt), size, default))
        _plans[ident] = plan
    return _plans[ident]


def options(s: socket.socket, ident: tuple[int, int, int], *, buffers: bool = True,
            connection: bool = False, known: dict[tuple[int, int], Any] | None = None,
            known_sig: tuple[Any, ...] | None = None) -> list[list[Any]]:
    """The options of ``s`` that differ from a fresh socket's: [[level, opt, raw]] (an
    int option compared as the int it is: its bytes made only when it differs).  Not
    asked: the buffer sizes without ``buffers``, and with ``connection`` what a
    connection's own state sets (:data:`CONNECTION_OWN`, restored by TCP_REPAIR); nor
    those ``known`` shows at their default (:func:`diag_known`: what getsockopt would
    answer).  ``known_sig`` (:func:`diag_signature`), when given, is what ``known`` was
    made from: the options left to ask are then planned once per signature (the
    connections of a server mostly share one), not compared for each socket."""
    key = (ident, buffers, connection, known_sig if known else None)
    plan = _asked.get(key)
    if plan is None:
        if len(_asked) > 1000:
            _asked.clear()
        skip = (set() if buffers else _NO_BUFFERS) | (CONNECTION_OWN if connection else set())
        plan = [p for p in _plan(ident) if (p[0], p[1]) not in skip]
        if known and known_sig is not None:
            plan = [p for p in plan if known.get((p[0], p[1]), _UNKNOWN) != p[3]]
        _asked[key] = plan
    out = []
    get = s.getsockopt
    seen = known if known and known_sig is None else None
    for level, opt, size, default in plan:
        if seen and seen.get((level, opt), _UNKNOWN) == default:
            continue
        try:
            value: Any = get(level, opt) if size == _I else get(level, opt, size)
        except OSError:
            continue
        if value == default:
            continue
        raw = value.to_bytes(4, "little", signed=True) if size == _I else bytes(value)
        out.append([level, opt, raw])
    return out


_asked: dict[tuple[Any, ...], list[tuple[int, int, int, Any]]] = {}
_UNKNOWN = object()
# INET_DIAG_SOCKOPT's bit fields (struct inet_diag_sockopt: byte, bit): the flags that
# getsockopt IP_RECVERR, IP_FREEBIND, IP_TRANSPARENT, IP_NODEFRAG, IP_BIND_ADDRESS_NO_PORT
# and IP_RECVERR_RFC4884 answer (the others: is_icsk, hdrincl and multicast's, which a
# stream has not, and defer_connect, TCP_FASTOPEN_CONNECT's state)
_SOCKOPT_BITS = ((int(N.IP.RECVERR), 0, 0x01), (int(N.IP.FREEBIND), 0, 0x04),
                 (int(N.IP.TRANSPARENT), 0, 0x20), (int(N.IP.NODEFRAG), 0, 0x80),
                 (int(N.IP.BIND_ADDRESS_NO_PORT), 1, 0x01),
                 (int(N.IP.RECVERR_RFC4884), 1, 0x02))  # fmt: skip
_SOL_IP, _IP_TOS, _SO_MARK = int(N.SOL.IP), int(N.IP.TOS), int(N.SO.MARK)
_SO_PRIORITY, _SO_BINDTODEVICE = int(N.SO.PRIORITY), int(N.SO.BINDTODEVICE)
_TCP_CONGESTION = int(N.TCP.CONGESTION)
_SO_MAX_PACING_RATE = int(N.SO.MAX_PACING_RATE)
_POLLRDHUP = 0x2000
# struct tcp_info's tcpi_max_pacing_rate (u64, ~0 for none), at byte 112
_TCPI_MAX_PACING = slice(112, 120)


def diag_known(attrs: dict[int, Any] | None, info: bytes | None = None
               ) -> dict[tuple[int, int], Any] | None:  # fmt: skip
    """Option values of an IPv4 TCP socket as its sock_diag answer shows them
    (N.inet_diag's ``attrs``), each as getsockopt answers it (an int, or the bytes of a
    raw option), where the kernel gives both from the same field (net/ipv4/inet_diag.c,
    ip_sockglue.c, sock.c, tcp.c): six inet flags, IP_TOS (inet->tos), SO_MARK
    (sk_mark); SO_PRIORITY only as 0 (a class id of 0 is sent when both are 0, else the
    class id), SO_BINDTODEVICE only as none (idiag_if 0); TCP_CONGESTION as its name,
    zero-filled; with the socket's tcp_info (``info``), SO_MAX_PACING_RATE
    (sk_max_pacing_rate, which getsockopt's 32 bits give as min(~0U, rate)).  Only used
    to skip asking an option shown at a fresh socket's value."""
    if not attrs:
        return None
    known: dict[tuple[int, int], Any] = {}
    flags = attrs.get(N.INET_DIAG_SOCKOPT)
    if flags is not None and len(flags) >= 2:
        for opt, at, bit in _SOCKOPT_BITS:
            known[(_SOL_IP, opt)] = int(bool(flags[at] & bit))
    tos = attrs.get(N.INET_DIAG_TOS)
    if tos is not None and len(tos) == 1:
        known[(_SOL_IP, _IP_TOS)] = tos[0]
    mark = attrs.get(N.INET_DIAG_MARK)
    if mark is not None and len(mark) == 4:
        known[(_SOL_SOCKET, _SO_MARK)] = int.from_bytes(mark, "little", signed=True)
    if attrs.get(N.INET_DIAG_CLASS_ID) == b"\0\0\0\0":
        known[(_SOL_SOCKET, _SO_PRIORITY)] = 0
    if attrs.get(N.INET_DIAG_IF) == 0:
        known[(_SOL_SOCKET, _SO_BINDTODEVICE)] = b""
    cong = attrs.get(N.INET_DIAG_CONG)
    if cong is not None:
        name = cong.split(b"\0", 1)[0]
        if len(name) < 16:
            known[(_SOL_TCP, _TCP_CONGESTION)] = name.ljust(16, b"\0")
    rate = info[_TCPI_MAX_PACING] if info is not None else b""
    if len(rate) == 8:
        v = min(int.from_bytes(rate, "little"), 0xFFFFFFFF)
        known[(_SOL_SOCKET, _SO_MAX_PACING_RATE)] = v - (1 << 32) if v >> 31 else v
    return known


def diag_signature(attrs: dict[int, Any] | None, info: bytes | None = None
                   ) -> tuple[Any, ...] | None:  # fmt: skip
    """What :func:`diag_known` reads of a socket's sock_diag attributes (and tcp_info), as
    a key: the sockets with one signature have the same known options."""
    if not attrs:
        return None
    get = attrs.get
    return (get(N.INET_DIAG_SOCKOPT), get(N.INET_DIAG_TOS), get(N.INET_DIAG_MARK),
            get(N.INET_DIAG_CLASS_ID), get(N.INET_DIAG_IF), get(N.INET_DIAG_CONG),
            info[_TCPI_MAX_PACING] if info is not None else None)


# signature -> diag_known's answer (one dict shared by the connections that have it)
_known: dict[tuple[Any, ...], dict[tuple[int, int], Any] | None] = {}


def _known_of(attrs: dict[int, Any] | None, info: bytes | None = None
              ) -> tuple[tuple[Any, ...] | None, dict[tuple[int, int], Any] | None]:  # fmt: skip
    sig = diag_signature(attrs, info)
    if sig is None:
        return None, None
    if sig not in _known:
        if len(_known) > 1000:
            _known.clear()
        _known[sig] = diag_known(attrs, info)
    return sig, _known[sig]


def _addr(s: socket.socket, peer: bool) -> list[Any] | None:
    try:
        a = s.getpeername() if peer else s.getsockname()
    except OSError as err:
        if err.errno in (errno.ENOTCONN, errno.EOPNOTSUPP):
            return None
        raise
    if isinstance(a, tuple):
        return [x.hex() if isinstance(x, bytes) else x for x in a]
    return [a]


# -- TCP connections, held in repair mode while the checkpoint lasts -------------------


@dataclass
class Held:
    """A connection of the checkpoint: cryo's duplicate, in repair mode, and what was read."""

    sock: socket.socket
    state: dict[str, Any]
    repair: bool = True
    conn: Conn | None = None  # its addresses, as the TCP table showed them
    family: int = socket.AF_INET
    known: dict[tuple[int, int], Any] | None = None  # options sock_diag showed (diag_known)
    known_sig: tuple[Any, ...] | None = None  # what known was made from (diag_signature)


# the connections this checkpoint holds, by socket inode (engine/netlock.py's driver
# hooks hold them before the fd table is read, and let them go when the checkpoint ends)
HELD: dict[int, Held] = {}


def tcp_table(pid: int, only: set[int] | None = None,
              attrs: dict[int, dict[int, Any]] | None = None,
              each: dict[int, dict[int, bytes]] | None = None
              ) -> dict[int, tuple[int, Conn]]:  # fmt: skip
    """TCP sockets of the network namespace of ``pid``: inode -> (state, connection);
    with ``only``, just those inodes (the others' addresses are not parsed).  Asked of
    sock_diag when ``pid`` is in our own network namespace (one binary dump; the text of
    /proc/net/tcp costs the kernel and us more), else read from /proc/PID/net/tcp;
    ``attrs`` and ``each`` get what the dump shows of each (N.inet_diag), nothing when
    it is read from /proc."""
    out: dict[int, tuple[int, Conn]] = {}
    if _same_netns(pid):
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                if only is not None and len(out) == len(only):
                    break  # (every one found: no dump of the other family)
                # (the options sock_diag shows: diag_known, for IPv4; each socket's
                # tcp_info, memory and MD5 keys, for both)
                got = attrs if family == socket.AF_INET or each is not None else None
                for ino, state, src, sport, dst, dport in N.inet_diag(family, only=only,
                                                                      attrs=got, each=each):
                    out[ino] = (state, (_ntop(family, src), sport, _ntop(family, dst), dport))
            return out
        except OSError:
            out.clear()
            for d in (attrs, each):
                if d is not None:
                    d.clear()
    for proto in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{proto}", "rb") as f:
                out.update(parse_proc_net_tcp(f.read(), only))
        except FileNotFoundError:
            continue
    return out


def _same_netns(pid: int) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _ntop(family: int, packed: bytes) -> str:
    """An address as /proc/net/tcp's reading writes it (:func:`_hexaddr`)."""
    addr = socket.inet_ntop(family, packed)
    if family == socket.AF_INET6 and "." in addr:
        addr = str(ipaddress.IPv6Address(packed))
    return addr


def _hexaddr(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four host-order 32-bit words
        packed = _WORDS.pack(*_WORDS_LE.unpack(raw))
        addr = socket.inet_ntop(socket.AF_INET6, packed)
        if "." in addr:  # (a mapped or compatible address: ipaddress's spelling, as before)
            addr = str(ipaddress.IPv6Address(packed))
    return addr, int(port, 16)


_WORDS, _WORDS_LE = struct.Struct(">4I"), struct.Struct("<4I")


def parse_proc_net_tcp(data: bytes, only: set[int] | None = None
                       ) -> dict[int, tuple[int, Conn]]:  # fmt: skip
    """/proc/net/tcp or tcp6: inode -> (state, (local, lport, remote, rport)); with
    ``only``, just those inodes."""
    out: dict[int, tuple[int, Conn]] = {}
    for line in data.decode().splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        ino = int(f[9])
        if only is not None and ino not in only:
            continue
        (la, lp), (ra, rp) = _hexaddr(f[1]), _hexaddr(f[2])
        out[ino] = (int(f[3], 16), (la, lp, ra, rp))
    return out


_pidfds: dict[int, int] = {}  # while connections are being held: one pidfd per process


def _dup_held(pid: int, fd: int, family: int) -> socket.socket:
    """cryo's duplicate of TCP connection ``fd`` of ``pid``, made with its family, type
    and protocol (known from the TCP table: Python asks none of them)."""
    if pid not in _pidfds:
        _pidfds[pid] = libc.pidfd_open(pid)
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                         libc.pidfd_getfd(_pidfds[pid], fd))  # fmt: skip


_IPPROTO_MPTCP = 262


def _close_pidfds() -> None:
    for pidfd in _pidfds.values():
        with contextlib.suppress(OSError):
            os.close(pidfd)
    _pidfds.clear()


def hold(pid: int, fd: int, ino: int, family: int) -> Held:
    """Put connection ``fd`` of ``pid`` (locked already) in repair mode and read it."""
    if ino in HELD:
        return HELD[ino]
    s = _dup_held(pid, fd, family)
    try:
        reuse = s.getsockopt(_SOL_SOCKET, _SO_REUSEADDR)  # repair mode overwrites it
        s.setsockopt(_SOL_TCP, _TCP_REPAIR, 1)
    except OSError as err:
        mptcp = err.errno == errno.ENOPROTOOPT and \
            s.getsockopt(_SOL_SOCKET, socket.SO_PROTOCOL) == _IPPROTO_MPTCP  # fmt: skip
        s.close()
        if mptcp:  # (the TCP table's dump shows it as a TCP connection)
            raise Unsupported(f"fd {fd}: an MPTCP connection (IPPROTO_MPTCP): TCP_REPAIR"
                              " can neither read nor rebuild it; checkpoint with --tcp-close"
                              " to restore it closed", pid=pid,
                              resource=f"fd {fd}") from err  # fmt: skip
        raise
    h = HELD[ino] = Held(s, {}, family=family)
    h.state = _read_repair(s)
    h.state["reuseaddr"] = reuse
    return h


def held_fd(ino: int) -> int | None:
    """cryo's fd of the connection of socket inode ``ino`` it holds, or None."""
    h = HELD.get(ino)
    return h.sock.fileno() if h is not None else None


def _peek(s: socket.socket, n: int) -> bytes:
    if not n:
        return b""
    data = s.recv(n + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if len(data) != n:
        raise CryoError(f"TCP queue: {len(data)} bytes where the kernel said {n}")
    return data


def _read_repair(s: socket.socket) -> dict[str, Any]:
    get, fd = s.getsockopt, s.fileno()
    head = get(_SOL_TCP, _TCP_INFO, 8)  # (struct tcp_info's first bytes: linux/net.py)
    state, options, wscale = head[0], head[5], head[6]
    outq = _queue(fd, _OUTQ)
    t: dict[str, Any] = {
        # (not sent yet: write_seq - snd_nxt, at most outq's write_seq - snd_una)
        "inq": _queue(fd, _INQ), "outq": outq, "unsent": _queue(fd, _OUTQNSD) if outq else 0,
        "mss": get(_SOL_TCP, _TCP_MAXSEG), "options": options, "snd_wscale": wscale & 0xF,
        "rcv_wscale": wscale >> 4, "timestamp": 0, "sndbuf": get(_SOL_SOCKET, _SO_SNDBUF),
        "rcvbuf": get(_SOL_SOCKET, _SO_RCVBUF), "clamp": get(_SOL_TCP, _TCP_WINDOW_CLAMP),
    }  # fmt: skip
    with contextlib.suppress(OSError):  # the sizes the program fixed; Linux 5.14
        t["buflock"] = get(_SOL_SOCKET, _SO_BUF_LOCK)
    if options & _OPT_TIMESTAMPS:
        t["timestamp"] = _U32.unpack(get(_SOL_TCP, _TCP_TIMESTAMP, 4))[0]
    t["state"] = state
    if state in SNDQ_FIN:  # our FIN counts in the send queue, but is no data
        t["outq"] = max(t["outq"] - 1, 0)
        t["unsent"] = max(t["unsent"] - 1, 0)
    # snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup (struct tcp_repair_window)
    t["window"] = list(_RWIN.unpack(get(_SOL_TCP, _TCP_REPAIR_WINDOW, _RWIN.size)))
    s.setsockopt(_SOL_TCP, _TCP_REPAIR_QUEUE, _RECV_QUEUE)
    t["inseq"] = _U32.unpack(get(_SOL_TCP, _TCP_QUEUE_SEQ, 4))[0]
    t["recvq"] = _peek(s, t["inq"])
    s.setsockopt(_SOL_TCP, _TCP_REPAIR_QUEUE, _SEND_QUEUE)
    t["outseq"] = _U32.unpack(get(_SOL_TCP, _TCP_QUEUE_SEQ, 4))[0]
    t["sendq"] = _peek(s, t["outq"])
    # (the send queue stays selected: the selection counts only in repair mode, for
    # cryo's reads; the kernel forgets it when repair mode is turned on again)
    if get(_SOL_TCP, _TCP_INFO, 1)[0] != state:
        raise CryoError("a TCP connection changed state while it was locked")
    if t["outq"] and not _writable(s):
        t["full"] = 1  # (its writer waits for the edge that space frees: finish())
    return t


def _writable(s: socket.socket) -> bool:
    """Whether poll shows POLLOUT (tcp_poll: a third of the send buffer free).  Polled
    when it does not, the kernel marks the socket's writer as waiting (SOCK_NOSPACE):
    acknowledged data that frees the room wakes it (tcp_check_space)."""
    p = select.poll()
    p.register(s.fileno(), select.POLLOUT)
    return bool(p.poll(0))


def _queue(fd: int, request: int) -> int:
    """A queue's length (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD)."""
    return int.from_bytes(fcntl.ioctl(fd, request, b"\0\0\0\0"), "little", signed=True)


def let_go_held(*, keep_repair: bool) -> None:
    """The checkpoint is over: leave repair mode (the processes go on) or not (they were
    killed: closing our duplicates then says nothing to the peer), close our duplicates."""
    for h in HELD.values():
        if not keep_repair:
            with contextlib.suppress(OSError):
                _repair_off(h.sock, h.state.get("reuseaddr", 0))
        h.sock.close()
    HELD.clear()


# -- dump ------------------------------------------------------------------------------


def describe(pid: int, fd: int, ino: int) -> dict[str, Any]:
    """The FDSC fields of an internet, packet or netlink socket."""
    held = HELD.get(ino)
    s = held.sock if held is not None else dup(pid, fd)
    try:
        return _describe(s, pid, fd, ino, held)
    finally:
        if held is None:
            s.close()


def _describe(s: socket.socket, pid: int, fd: int, ino: int, held: Held | None
              ) -> dict[str, Any]:  # fmt: skip
    # (a held connection's socket object was made with what it is: _dup_held)
    ident = (held.family, _STREAM, _TCP) if held is not None else identity(s)
    family, typ, proto = ident

    def refuse(why: str) -> Unsupported:
        return Unsupported(f"fd {fd}: {name(ident)} socket {why}", pid=pid,
                           resource=f"fd {fd}")  # fmt: skip

    if family not in FAMILIES or typ not in TYPES:
        raise refuse("is not supported")
    if not (proto == _TCP and _no_filter(ino)) and N.filter_len(s.fileno()):
        raise refuse("has a socket filter attached (SO_ATTACH_FILTER), which is not"
                     " supported yet")
    if held is not None and held.conn is not None and family == socket.AF_INET:
        # (an IPv4 connection's addresses as the TCP table gave them: getsockname's;
        # an IPv6 one's have a flow label and scope besides)
        la, lp, ra, rp = held.conn
        local: list[Any] | None = [la, lp]
        remote: list[Any] | None = [ra, rp]
    else:
        local, remote = _addr(s, False), _addr(s, True)
    d: dict[str, Any] = {"family": family, "sotype": TYPES[typ], "proto": proto,
                         "local": local, "remote": remote}  # fmt: skip
    tcp = family in (socket.AF_INET, socket.AF_INET6) and typ == socket.SOCK_STREAM
    if tcp:
        if held is None:
            ti: Any = N.tcp_info(s)
            state = int(ti.tcpi_state)
        else:  # (read in repair mode, locked)
            ti, state = None, held.state["state"]
        d["state"] = _STATE_NAME.get(state) or ST(state).name
        if state != _LISTEN and proto != _IPPROTO_MPTCP and _diag_blind():
            ulp = ulp_of(s)
            if ulp:  # (what check_diag refuses where sock_diag shows it)
                raise refuse(f"{_show(d['local'])} has the upper-layer protocol {ulp!r}"
                             " (TCP_ULP), whose state the kernel does not give back")
        if state == _LISTEN and ti is not None and ti.tcpi_unacked:
            d["queued"] = _waiting(pid, d["local"], int(ti.tcpi_unacked), refuse)
        if state == _LISTEN and ti is not None:
            d["backlog"] = int(ti.tcpi_sacked)
        elif state in SETTING_UP:
            raise refuse(f"{_show(d['local'])} -> {_show(d['remote'])} is being set up"
                         f" ({d['state']}); checkpoint again once it is established")
        elif state in CONNECTED:
            if held is None or not held.repair:
                d["closed"] = True  # --tcp-close: restored closed
            else:
                d["tcp"] = held.state
                if _urgent(s):
                    raise refuse(f"{_show(d['local'])} -> {_show(d['remote'])} holds an"
                                 " urgent byte (MSG_OOB) not yet read, which TCP_REPAIR"
                                 " cannot put back")
    if not tcp and family in (socket.AF_INET, socket.AF_INET6):
        # shutdown() of a datagram socket: poll shows SHUT_RD (POLLRDHUP) and both
        # (POLLHUP); SHUT_WR alone shows nowhere but in a send and in sock_diag (a UDP
        # socket's: check_diag)
        p = select.poll()
        p.register(s.fileno(), select.POLLIN | _POLLRDHUP)
        ev = p.poll(0)
        got = ev[0][1] if ev else 0
        how = 3 if got & select.POLLHUP else 1 if got & _POLLRDHUP else 0
        if how:
            d["shutdown"] = how
    if family == socket.AF_INET6:
        _refuse_sticky(s, refuse)
    if family == socket.AF_PACKET:
        _refuse_packet(s, pid, refuse)
    if family == socket.AF_NETLINK:
        _refuse_replies(s, refuse)
        with contextlib.suppress(OSError):
            raw = s.getsockopt(N.SOL.NETLINK, 9, 128)  # NETLINK_LIST_MEMBERSHIPS
            groups = [g + 1 for i in range(0, len(raw), 4)
                      for g in range(i * 8, i * 8 + 32)
                      if int.from_bytes(raw[i:i + 4], "little") >> (g - i * 8) & 1]  # fmt: skip
            d["groups"] = groups
    # (a connection's own: mss, clamp, SO_REUSEADDR (held), not asked)
    d["opts"] = options(s, ident, buffers=not (tcp and "tcp" in d),
                        connection=bool(tcp and d.get("remote")),
                        known=held.known if held is not None else None,
                        known_sig=held.known_sig if held is not None else None)  # fmt: skip
    return d


# an IPv6 socket's sticky extension headers (linux/in6.h; RFC 3542 section 6, or
# IPV6_2292PKTOPTIONS): its np->opt, put in each packet it sends
_STICKY = ((54, "IPV6_HOPOPTS"), (55, "IPV6_RTHDRDSTOPTS"), (57, "IPV6_RTHDR"),
           (59, "IPV6_DSTOPTS"))  # fmt: skip


def _refuse_sticky(s: socket.socket, refuse: Callable[[str], Unsupported]) -> None:
    """An IPv6 socket with sticky extension headers (hop-by-hop or destination options,
    a routing header: getsockopt gives each back, empty where there is none) is refused:
    none is saved, and the restored socket would send its packets without them, exit 0
    (and a connection's segment size is made again on a socket without: _sync_mss)."""
    got = [what for opt, what in _STICKY if s.getsockopt(N.SOL.IPV6, opt, 8)]
    if got:
        raise refuse(f"has sticky IPv6 extension headers ({', '.join(got)}), which the"
                     " restart would not set again")


_FANOUT_UNIQUEID, _FANOUT_CBPF, _FANOUT_EBPF = 0x2000, 6, 7
# packet_diag (linux/packet_diag.h): PACKET_SHOW_MCLIST, RING_CFG; the attributes
_PACKET_SHOW = 0x2 | 0x4
_PACKET_DIAG_MCLIST, _PACKET_DIAG_RX_RING, _PACKET_DIAG_TX_RING = 1, 2, 3
_PACKET_DIAG_REQ = struct.Struct("=BBHII8x")  # struct packet_diag_req
_PACKET_DIAG_MSG = struct.Struct("=BBHI8x")  # struct packet_diag_msg: family, type,
# num, ino, cookie


def _refuse_packet(s: socket.socket, pid: int, refuse: Callable[[str], Unsupported]) -> None:
    """What a packet socket holds that no option gives back, found by packet_diag (one
    dump of the namespace's packet sockets): a ring (PACKET_RX_RING, PACKET_TX_RING,
    mapped by the program), memberships (PACKET_ADD_MEMBERSHIP: promiscuous mode, a
    multicast address); and a fanout group steered by a BPF program (PACKET_FANOUT_DATA
    cannot be read).  Each was lost before, exit 0: refused."""
    try:
        fanout = s.getsockopt(_SOL_PACKET, _PACKET_FANOUT)
    except OSError:
        fanout = 0
    if (fanout >> 16) & 0xFF in (_FANOUT_CBPF, _FANOUT_EBPF):
        raise refuse("is in a fanout group steered by a BPF program (PACKET_FANOUT_DATA),"
                     " which cannot be read back")
    ino = os.fstat(s.fileno()).st_ino
    req = _PACKET_DIAG_REQ.pack(socket.AF_PACKET, 0, 0, 0, _PACKET_SHOW)

    def dump() -> set[int]:
        found: set[int] = set()
        for _t, data, start, end in N._dump(N.NETLINK_SOCK_DIAG, socket.SOCK_DGRAM,
                                            N.SOCK_DIAG_BY_FAMILY, req, "packet_diag",
                                            1 << 16, 10):  # fmt: skip
            if _PACKET_DIAG_MSG.unpack_from(data, start)[3] == ino:
                found.update(t for t, a, b in N._attrs(data, start + _PACKET_DIAG_MSG.size,
                                                        end) if b > a)  # fmt: skip
        return found

    attrs = _in_netns(pid, dump)
    what = [name for name, t in (("a receive ring (PACKET_RX_RING)", _PACKET_DIAG_RX_RING),
                                 ("a transmit ring (PACKET_TX_RING)", _PACKET_DIAG_TX_RING),
                                 ("memberships (PACKET_ADD_MEMBERSHIP: promiscuous mode or"
                                  " a multicast address)", _PACKET_DIAG_MCLIST))
            if t in attrs]  # fmt: skip
    if what:
        raise refuse(f"has {' and '.join(what)}, which the restart would not make again")


_OOB_PEEK = socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid


def _refuse_replies(s: socket.socket, refuse: Callable[[str], Unsupported]) -> None:
    """A netlink socket whose first queued message is addressed to it (nlmsg_pid its own
    port id: the kernel's reply to its request, a dump's next part): queued datagrams
    are not saved, and a program waiting for a reply that never comes hangs (found by
    probing: a dump asked and not read yet came back empty, exit 0).  Refused, exit 9;
    notifications (to a multicast group) are lost as other datagrams are."""
    try:
        head = s.recv(_NLMSG.size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        own = s.getsockname()[0]
    except OSError:
        return
    if len(head) == _NLMSG.size and own and _NLMSG.unpack(head)[4] == own:
        raise refuse(f"(port id {own}) holds replies to its own request not yet read (a"
                     " dump, an answer), which the restart could not queue again")


def _urgent(s: socket.socket) -> bool:
    """Whether a connection holds an urgent byte not yet read (send MSG_OOB): one peek
    (it works in repair mode; EINVAL without one, or with SO_OOBINLINE, where the byte
    is in the stream, saved as any), ~2 us a connection."""
    try:
        return bool(s.recv(1, _OOB_PEEK))
    except OSError:
        return False


def _waiting(pid: int, local: list[Any], n: int, refuse: Callable[[str], Unsupported]
             ) -> list[list[Any]]:  # fmt: skip
    """The connections waiting in the accept queue of a listener on ``local``, in the
    order they would be accepted: each as its client's address ([address, port]).  They
    are sockets without a file (inode 0) on the listener's port, asked of sock_diag in
    the network namespace of ``pid``.  Refused: one that holds data from its client
    already (it cannot be read before it is accepted), one not established any more, and
    two whose order cannot be told (made in the same jiffy: :func:`_queue_order`)."""
    where = _show(local)
    family = socket.AF_INET6 if ":" in str(local[0]) else socket.AF_INET
    anywhere = _is_any(family, [local[0], 0])
    found = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for state, src, dst, rport, ifindex, rx in _in_netns(pid, N.tcp_orphans, fam,
                                                             local[1]):  # fmt: skip
            # (a connection the program accepted and closed lingers here too, in
            # FIN_WAIT*, CLOSING, LAST_ACK or TIME_WAIT; a handshake not done yet in
            # SYN_RECV: neither is in the queue, whose ones are ESTABLISHED, or
            # CLOSE_WAIT when their client closed)
            if state not in (ST.ESTABLISHED, ST.CLOSE_WAIT):
                continue
            if anywhere or _same_addr(_ntop(fam, src), str(local[0])):
                found.append((state, rx, [_ntop(fam, dst), rport], (fam, src, dst, ifindex)))
    if len(found) != n:
        raise refuse(f"listening on {where} has {n} connections waiting to be accepted,"
                     f" of which {len(found)} could be found")  # fmt: skip
    for state, rx, client, _key in found:
        if state != ST.ESTABLISHED:
            raise refuse(f"listening on {where}: the connection from {_show(client)} waiting"
                         f" to be accepted is {ST(state).name} (its client closed it)")
        if rx:
            raise refuse(f"listening on {where}: the connection from {_show(client)} waiting"
                         f" to be accepted already holds data from its client ({rx}"
                         " bytes), which cannot be read before it is accepted")  # fmt: skip
    if n == 1:
        return [found[0][2]]
    asks = [(fam, src, local[1], dst, client[1], ifindex)
            for _s, _r, client, (fam, src, dst, ifindex) in found]  # fmt: skip
    order = _in_netns(pid, _queue_order, asks, [c for _s, _r, c, _k in found], where, refuse)
    return [found[i][2] for i in order]


QUEUE_PASSES = 12  # readings of the waiting connections' times before giving up


def _queue_order(asks: list[tuple[int, bytes, int, bytes, int, int]], clients: list[Any],
                 where: str, refuse: Callable[[str], Unsupported]) -> list[int]:  # fmt: skip
    """The order in which waiting connections would be accepted: the accept queue is
    FIFO, in the order the kernel made them, which is read from their tcp_info
    (:class:`N.TcpTimes`: ms since the last data received, which for a connection never
    accepted counts from its making; in whole jiffies).

    Each answer is read at its own moment: between the answers for two connections the
    kernel's jiffies may tick, so that the later-read one looks older by a jiffy than it
    is.  A reading of A before B (in a half-pass of d ms, where at most d/jiffy + 2
    jiffies, D ms, may pass) says that B was made k ms after A with k in
    [age A - age B, age A - age B + D] (1 ms either side for jiffies_to_msecs' rounding);
    B read before A says k in [age A - age B - D, age A - age B].  Half-passes go over the
    connections in turn forwards and backwards, the intervals of each pair of neighbours
    (by mean age) are intersected, until every pair is known to be at least 1 ms apart;
    a pair whose interval stays around 0 is refused (made in the same jiffy: their order
    in the queue cannot be read)."""
    jiffy = N.jiffy_ms()
    n = len(asks)
    passes: list[tuple[list[int], list[int], int]] = []  # (ages, read position, D)
    lo: dict[tuple[int, int], int] = {}
    hi: dict[tuple[int, int], int] = {}
    order = list(range(n))
    with N.TcpTimes() as tt:
        for p in range(QUEUE_PASSES * 2):
            seq = list(range(n)) if p % 2 == 0 else list(range(n - 1, -1, -1))
            ages = [0] * n
            t0 = time.monotonic_ns()
            for i in seq:
                got = tt.ask(*asks[i])
                if got is None or got[0] != ST.ESTABLISHED:
                    raise refuse(f"listening on {where}: the connection from"
                                 f" {_show(clients[i])} waiting to be accepted changed while"
                                 " it was read")  # fmt: skip
                ages[i] = got[1]
            spent = (time.monotonic_ns() - t0) // 1_000_000
            pos = [0] * n
            for k, i in enumerate(seq):
                pos[i] = k
            passes.append((ages, pos, (spent // jiffy + 2) * jiffy))
            if p % 2 == 0:
                continue
            mean = [sum(a[i] for a, _p, _d in passes) for i in range(n)]
            order = sorted(range(n), key=lambda i: (-mean[i], i))  # the oldest first
            lo.clear()
            hi.clear()
            for a, b in itertools.pairwise(order):  # k = made(b) - made(a), in ms
                low, high = -(1 << 62), 1 << 62
                for ages, pos, most in passes:
                    obs = ages[a] - ages[b]
                    if pos[a] < pos[b]:
                        low, high = max(low, obs - 1), min(high, obs + most + 1)
                    else:
                        low, high = max(low, obs - most - 1), min(high, obs + 1)
                lo[(a, b)], hi[(a, b)] = low, high
            if all(v >= 1 for v in lo.values()):
                return order
    a, b = next(pair for pair, v in lo.items() if v < 1)
    if lo[(a, b)] > -jiffy and hi[(a, b)] < jiffy:
        why = f"were made in the same jiffy ({jiffy} ms)"
    else:
        why = f"could not be told apart in {QUEUE_PASSES} readings of their times"
    raise refuse(f"listening on {where}: the connections from {_show(clients[a])} and"
                 f" {_show(clients[b])} waiting to be accepted {why}; the order in which"
                 " they would be accepted cannot be read (accept them, or checkpoint"
                 " again)")  # fmt: skip


def _in_netns(pid: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the network namespace of ``pid``: here if it is ours, else on a
    thread of its own that joins it (a netlink socket talks to the namespace it was made
    in)."""
    if _same_netns(pid):
        return fn(*args)
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                N.setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    t = threading.Thread(target=run, name="cryo-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _same_addr(a: str, b: str) -> bool:
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if isinstance(ia, ipaddress.IPv6Address) and ia.ipv4_mapped is not None:
        ia = ia.ipv4_mapped
    if isinstance(ib, ipaddress.IPv6Address) and ib.ipv4_mapped is not None:
        ib = ib.ipv4_mapped
    return ia == ib


_SHUTDOWN, _MD5SIG = 8, 18  # INET_DIAG_SHUTDOWN (sk_shutdown), INET_DIAG_MD5SIG
_DIAG_INFO = 1 << (N.INET_DIAG_INFO - 1)  # (the MD5 keys come only with tcp_info)
_UDPS = (socket.IPPROTO_UDP, socket.IPPROTO_UDPLITE)
_BOUND_INACTIVE = 1 << 13
# a TCP state's name -> its bit in a dump's states; CLOSE's (bound, not connected) with
# TCPF_BOUND_INACTIVE's (Linux 6.6), where such a socket is (its MD5 keys are not shown)
_STATE_BIT = {m.name: 1 << int(m) | (_BOUND_INACTIVE if m == ST.CLOSE else 0) for m in ST}


def _diag_of(asks: dict[tuple[int, int], tuple[set[int], int]]
             ) -> dict[int, tuple[int, bool, str]]:  # fmt: skip
    """inode -> (sk_shutdown, has TCP MD5 keys, its upper-layer protocol or "") of the
    sockets ``asks`` names by (family, protocol), with the states they are in (a bit
    each: TIME_WAIT and the other states no fd holds are not dumped): one sock_diag
    dump of each, in this thread's namespace."""
    out: dict[int, tuple[int, bool, str]] = {}
    ino_of, nla = N._U32.unpack_from, N._NLA.unpack_from
    for (family, proto), (only, states) in asks.items():
        ext = _DIAG_INFO if proto == socket.IPPROTO_TCP else 0
        for data, start, end in N._inet_diag_msgs(family, proto, states, ext):
            ino = ino_of(data, start + N._INO_AT)[0]
            if ino not in only:
                continue
            shut, md5, ulp = 0, False, ""
            at = start + N._INET_DIAG_MSG.size
            while at + 4 <= end:
                length, typ = nla(data, at)
                if length < 4:
                    break
                if typ & 0x3FFF == _SHUTDOWN:
                    shut = data[at + 4]
                elif typ & 0x3FFF == _MD5SIG:
                    md5 = length > 4
                elif typ & 0x3FFF == N.INET_DIAG_ULP_INFO:
                    ulp = N.ulp_name(data[at + 4 : at + length])
                at += (length + 3) & ~3
            out[ino] = (shut, md5, ulp)
    return out


TCP_AO_INFO = 40  # (Linux 6.7, CONFIG_TCP_AO: ENOPROTOOPT without it)
_ao: list[bool] = []


def _has_ao(s: socket.socket) -> bool:
    """Whether TCP socket ``s`` has TCP-AO keys (getsockopt TCP_AO_INFO: ENOENT without;
    asked only where this kernel has TCP-AO, probed once on a fresh socket)."""
    if not _ao:
        with socket.socket() as fresh:
            _ao.append(libc.getsockopt_zeroed(fresh.fileno(), socket.IPPROTO_TCP,
                                              TCP_AO_INFO, 48) != errno.ENOPROTOOPT)
    return _ao[0] and libc.getsockopt_zeroed(s.fileno(), socket.IPPROTO_TCP, TCP_AO_INFO,
                                             48) == 0  # fmt: skip


_TCP_ULP, _TCP_ULP_NAME_MAX = 31, 16  # (linux/tcp.h, net/tcp.h)
_blind: list[bool] = []


def _diag_blind() -> bool:
    """Whether sock_diag may hide a TCP socket's upper-layer protocol from cryo: it
    shows INET_DIAG_ULP_INFO (and the MD5 keys) only to CAP_NET_ADMIN in the network
    namespace's user namespace (tcp_diag_get_aux's net_admin); taken as seen where cryo
    has it in the initial user namespace, else asked of each socket (:func:`ulp_of`)."""
    if not _blind:
        try:
            with open("/proc/self/uid_map", "rb") as f:
                initial = f.read().split() == [b"0", b"0", b"4294967295"]
        except OSError:
            initial = False
        _blind.append(not (initial and procfs.has_capability(_CAP_NET_ADMIN)))
    return _blind[0]


_CAP_NET_ADMIN = 12


def ulp_of(s: socket.socket) -> str:
    """The name of TCP socket ``s``'s upper-layer protocol ("tls", "espintcp"), "" if it
    has none: getsockopt(SOL_TCP, TCP_ULP) on cryo's duplicate, which needs no
    privilege (kTLS keeps the TCP level's getsockopt: tls_getsockopt passes it on).  A
    listening socket has none (inet_csk_listen_start refuses a ULP that cannot clone);
    an MPTCP socket (IPPROTO_MPTCP) answers with its own name, "mptcp"."""
    raw = s.getsockopt(_SOL_TCP, _TCP_ULP, _TCP_ULP_NAME_MAX)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def check_diag(session: Any) -> None:
    """Checkpoint, once every process is collected: what sock_diag shows of the internet
    sockets and neither poll nor getsockopt does, asked in one dump per namespace and
    protocol.  A UDP socket's shutdown (SHUT_WR shows nowhere else: poll has only
    SHUT_RD and both), kept in ``shutdown``.  TCP MD5 signature keys (TCP_MD5SIG,
    RFC 2385; sock_diag shows them with tcp_info, not their interface binding) and
    TCP-AO keys (RFC 5925, never read back): refused, exit 9, as a restored socket
    without its keys would talk unsigned (or be dropped by its peer); so is an
    upper-layer protocol (TCP_ULP: kTLS's keys and record sequence numbers)."""
    descs = [d for d in session.shared.descs.descs
             if d["kind"] == "inet" and d.get("family") in FAMILIES_INET
             and (d["sotype"] == "stream" or d.get("proto") in _UDPS)]  # fmt: skip
    if not descs:
        return
    by_ns: dict[int, tuple[int, dict[tuple[int, int], tuple[set[int], int]]]] = {}
    ns_of: dict[int, int] = {}  # pid -> its network namespace (a stat a process)
    for d in descs:
        pid = d["pid"]
        ns = ns_of.get(pid)
        if ns is None:
            try:
                ns = ns_of[pid] = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError as err:
                raise CryoError(f"process {pid} vanished", pid=pid) from err
        proto = socket.IPPROTO_TCP if d["sotype"] == "stream" else int(d["proto"])
        asks = by_ns.setdefault(ns, (pid, {}))[1]
        if proto == socket.IPPROTO_TCP and d["ino"] in DIAGS:
            continue  # (its MD5 keys shown by the TCP table's dump in the freeze)
        inodes, states = asks.get((d["family"], proto), (set(), 0))
        inodes.add(d["ino"])
        state = d.get("state")  # (a TCP socket's; UDP: any)
        bits = 0xFFFFFFFF if not state else _STATE_BIT[state]
        asks[(d["family"], proto)] = (inodes, states | bits)
    found: dict[int, tuple[int, bool, str]] = {}
    for pid, asks in by_ns.values():
        if asks:
            found.update(_in_netns(pid, _diag_of, asks))
    for d in descs:
        seen = DIAGS.get(d["ino"]) if d["sotype"] == "stream" else None
        if seen is None:
            shut, md5, ulp = found.get(d["ino"], (0, False, ""))
        else:
            shut = seen.get(N.INET_DIAG_SHUTDOWN, b"\0")[0]
            md5 = bool(seen.get(N.INET_DIAG_MD5SIG))
            info = seen.get(N.INET_DIAG_ULP_INFO)
            ulp = N.ulp_name(info) if info is not None else ""
        if d["sotype"] != "stream":
            if shut:
                d["shutdown"] = shut  # (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2)
            continue
        t = d.get("tcp")
        if shut & 1 and t is not None and t["state"] not in _RCVQ_FIN:
            # shut for reading (SHUT_RD) with no FIN of the peer's that did it: restored
            # by a shutdown() (SEND_SHUTDOWN goes with our FIN: the state has it)
            d["shutdown"] = 1
        if ulp:  # (kTLS: its keys and record state in the kernel, never read back)
            raise Unsupported(f"fd {d['fd']} of {d['pid']}: TCP socket {_show(d['local'])}"
                              f" has the upper-layer protocol {ulp!r} (TCP_ULP), whose"
                              " state the kernel does not give back", pid=d["pid"],
                              resource=f"fd {d['fd']}")  # fmt: skip
        why = "TCP MD5 signature keys (TCP_MD5SIG)" if md5 else None
        if why is None and _ao[:1] != [False]:
            held = HELD.get(d["ino"])
            s = held.sock if held is not None else dup(d["pid"], d["fd"])
            try:
                why = "TCP-AO keys (TCP_AO_ADD_KEY)" if _has_ao(s) else None
            finally:
                if held is None:
                    s.close()
        if why is not None:
            raise Unsupported(f"fd {d['fd']} of {d['pid']}: TCP socket {_show(d['local'])}"
                              f" has {why}, which the kernel does not give back: restored"
                              " without them it would send unsigned segments",
                              pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def check_queued(session: Any) -> None:
    """Checkpoint, once every process is collected: the client of each connection waiting
    in a listener's accept queue must be a connection of the checkpoint (--tcp-established
    holds it), which the restart connects to the listener again; one from outside cannot
    be put back in a listener's queue: refused.  First :func:`check_diag`."""
    check_diag(session)
    descs = session.shared.descs.descs
    if not any(d.get("queued") for d in descs if d["kind"] == "inet"):
        return  # (the usual case: no address parsed for each connection)
    by_local: dict[tuple[str, int], dict[str, Any]] = {}
    for d in descs:
        if d["kind"] == "inet" and d.get("state") not in (None, "LISTEN") and d.get("local"):
            by_local[(str(ipaddress.ip_address(d["local"][0])), d["local"][1])] = d
    for d in descs:
        if d["kind"] != "inet" or not d.get("queued"):
            continue
        for client in d["queued"]:
            c = by_local.get((str(ipaddress.ip_address(client[0])), client[1]))
            if c is None or not c.get("remote") or c["remote"][1] != d["local"][1]:
                raise Unsupported(f"fd {d['fd']} of {d['pid']}: TCP listener on"
                                  f" {_show(d['local'])} has a connection from"
                                  f" {_show(client)} waiting to be accepted, whose client is"
                                  " outside the checkpoint; a connection cannot be put back"
                                  " in a listener's queue", pid=d["pid"],
                                  resource=f"fd {d['fd']}")  # fmt: skip
            if c.get("closed"):  # --tcp-close: restored closed, the listener gets nothing
                continue
            c["queued_on"] = d["id"]


def _show(addr: list[Any] | None) -> str:
    if not addr:
        return "?"
    if len(addr) >= 2 and ":" in str(addr[0]):
        return f"[{addr[0]}]:{addr[1]}"
    return ":".join(str(x) for x in addr[:2])


# -- restore ---------------------------------------------------------------------------


def _sockaddr(family: int, addr: list[Any]) -> Any:
    if family == socket.AF_INET:
        return (addr[0], addr[1])
    if family == socket.AF_INET6:
        return (addr[0], addr[1], addr[2], addr[3])
    if family == socket.AF_NETLINK:
        return (addr[0], addr[1])
    if family == socket.AF_PACKET:  # (ifname, proto, pkttype, hatype, addr)
        return (addr[0], addr[1], addr[2], addr[3], bytes.fromhex(addr[4]))
    return tuple(addr)


def set_option(s: socket.socket, level: int, opt: int, raw: bytes) -> None:
    if level == _SOL_TCP and opt == _TCP_MAXSEG and s.getsockopt(level, opt, 4) == raw:
        return  # (what the socket's own state gives, as IP_OPTIONS do: not the program's)
    try:
        _setsockopt(s, level, opt, raw)
    except OSError as err:
        what = _OPTION_NAMES.get((level, opt), f"option {level}/{opt}")
        raise OSError(err.errno, f"{err.strerror} (setting {what})") from err


def _option_names() -> dict[tuple[int, int], str]:
    out = {}
    for enum_, level in ((N.SO, N.SOL.SOCKET), (N.IP, N.SOL.IP), (N.IPV6, N.SOL.IPV6),
                         (N.TCP, N.SOL.TCP), (N.UDP, N.SOL.UDP)):  # fmt: skip
        for member in enum_:
            out[(int(level), int(member))] = f"{enum_.__name__}_{member.name}"
    return out


_OPTION_NAMES = _option_names()


# (plain ints: a restart of a busy server sets thousands of options)
_BUFFERS_INT = frozenset((int(level), int(opt)) for level, opt in BUFFERS)
_NAMES_INT = frozenset({(_SOL_SOCKET, int(N.SO.BINDTODEVICE)), (_SOL_TCP, int(N.TCP.CONGESTION))})


def _setsockopt(s: socket.socket, level: int, opt: int, raw: bytes) -> None:
    key = (level, opt)
    if key in _BUFFERS_INT:
        s.setsockopt(level, opt, int.from_bytes(raw, "little", signed=True) // 2)
    elif key in _NAMES_INT:  # a name, set without the NULs it was read with
        s.setsockopt(level, opt, raw.rstrip(b"\0"))
    else:
        s.setsockopt(level, opt, raw)


def _is_any(family: int, addr: list[Any]) -> bool:
    if family == socket.AF_PACKET:  # bound to no interface (its protocol is socket()'s)
        return not addr[0]
    return family in (socket.AF_INET, socket.AF_INET6) and not addr[1] and \
        ipaddress.ip_address(addr[0]).is_unspecified  # fmt: skip


def open_socket(d: dict[str, Any], options: dict[str, Any]) -> int:
    """The socket of description ``d``, made in cryo; returns its fd."""
    family, typ, proto = d["family"], _TYPE_OF[d["sotype"]], d["proto"]
    if family == _AF_PACKET and not proto and d.get("local"):
        # SO_PROTOCOL shows 0 for a packet socket: its protocol is its name's (one never
        # bound has only socket()'s, which no bind can give it: ifname "" is no device)
        proto = socket.htons(int(d["local"][1]))
    s = socket.socket(family, typ, proto)
    try:
        _build(s, d, options)
    except OSError as err:
        s.close()
        where = f"{name((family, typ, proto))} socket {_show(d['local'])}"
        raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot make the {where} again:"
                        f" {err.strerror}", pid=d["pid"], resource=f"fd {d['fd']}") from err
    except BaseException:
        s.close()
        raise
    return s.detach()


def _build(s: socket.socket, d: dict[str, Any], options: dict[str, Any]) -> None:
    family = d["family"]
    t = d.get("tcp")
    if t is not None and d.get("queued_on") is None and not options.get("tcp_close") and \
            d.get("state") in _CONNECTED_NAMES:  # fmt: skip
        # (a connection, rebuilt in repair mode: what the steps below do for it, in order)
        s.setsockopt(_SOL_TCP, _TCP_REPAIR, 1)
        for level, opt, raw in d["opts"]:
            set_option(s, level, opt, raw)
        s.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, max(t["sndbuf"] // 2, len(t["sendq"])))
        s.setsockopt(_SOL_SOCKET, _SO_RCVBUFFORCE, max(t["rcvbuf"] // 2, len(t["recvq"])))
        _restore_repair(s, d, t)
        _buffer_sizes(s, t)
        if d.get("shutdown") == 1:  # (SHUT_RD: sk_shutdown's bit only, in any state)
            s.shutdown(socket.SHUT_RD)
        return
    if t is not None and d.get("queued_on") is not None and not options.get("tcp_close"):
        _build_queued(s, d)
        return
    repair = t is not None and not options.get("tcp_close")
    if repair:
        s.setsockopt(_SOL_TCP, _TCP_REPAIR, 1)
    reuse = False
    for level, opt, raw in d["opts"]:
        if level == _SOL_PACKET and opt == _PACKET_FANOUT:
            continue  # (after bind: below)
        set_option(s, level, opt, raw)
        if level == _SOL_SOCKET and opt == _SO_REUSEADDR:
            reuse = bool(int.from_bytes(raw, "little"))
    tcp = "state" in d
    if repair:
        assert t is not None
        s.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, max(t["sndbuf"] // 2, len(t["sendq"])))
        s.setsockopt(_SOL_SOCKET, _SO_RCVBUFFORCE, max(t["rcvbuf"] // 2, len(t["recvq"])))
    if family == socket.AF_NETLINK:
        s.bind(_sockaddr(family, d["local"]))
        for g in d.get("groups", []):
            if g > 32:
                s.setsockopt(N.SOL.NETLINK, 1, g)  # NETLINK_ADD_MEMBERSHIP
        return
    local = d["local"]
    connection = t is not None or d.get("closed")  # bound by _restore_repair, or closed
    if local and not connection and not _is_any(family, local):
        if tcp and not repair and not reuse:  # not kept out by TIME_WAIT connections
            s.setsockopt(N.SOL.SOCKET, N.SO.REUSEADDR, 1)
        s.bind(_sockaddr(family, _bound(d, local)))
        if tcp and not repair and not reuse:
            s.setsockopt(N.SOL.SOCKET, N.SO.REUSEADDR, 0)
    if tcp:
        if d["state"] == "LISTEN":
            s.listen(d["backlog"])
        elif repair:
            assert t is not None
            _restore_repair(s, d, t)
            _buffer_sizes(s, t)
    elif d.get("remote"):
        s.connect(_sockaddr(family, d["remote"]))
    for level, opt, raw in d["opts"] if family == socket.AF_PACKET else ():
        if level == _SOL_PACKET and opt == _PACKET_FANOUT:  # its group joined again (a
            # unique id asked of the kernel then is given as the id it got)
            val = int.from_bytes(raw, "little") & ~(_FANOUT_UNIQUEID << 16)
            set_option(s, level, opt, val.to_bytes(4, "little"))
    if d.get("shutdown"):  # (a datagram socket's; unconnected: ENOTCONN, yet it is shut)
        try:
            s.shutdown(d["shutdown"] - 1)  # SHUT_RD 0, SHUT_RDWR 2
        except OSError as err:
            if err.errno != errno.ENOTCONN:
                raise


def _buffer_sizes(s: socket.socket, t: dict[str, Any]) -> None:
    """A connection's queues refilled: its buffer sizes as they were (the refill needed
    room for the queues: a send buffer twice their length read twice what the program
    had), then their locks.  A connection whose send queue was full at the checkpoint
    (its writer waiting for the room acknowledged data frees: an edge-triggered epoll
    watch gets EPOLLOUT only then, and only if the kernel marked the socket as waited
    on) gets the smallest send buffer for now, and polled so, is marked waited on as the
    original was: its size comes back in :func:`finish`, once the epolls are filled, and
    if its queue fits it then, setting it wakes the writer as freed room would have."""
    if t.get("full"):
        s.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, 0)  # (SOCK_MIN_SNDBUF)
        _writable(s)
    elif len(t["sendq"]) > t["sndbuf"] // 2:  # (else the size the refill had)
        s.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, t["sndbuf"] // 2)
    if len(t["recvq"]) > t["rcvbuf"] // 2:
        s.setsockopt(_SOL_SOCKET, _SO_RCVBUFFORCE, t["rcvbuf"] // 2)
    _buffer_locks(s, t)


def _buffer_locks(s: socket.socket, t: dict[str, Any]) -> None:
    """A connection's buffer locks as they were (SO_SNDBUFFORCE and SO_RCVBUFFORCE lock
    both sizes; one the program did not fix is the kernel's to tune again), once it is
    connected (connect in repair mode tunes an unlocked send buffer)."""
    lock = t.get("buflock")
    if lock is not None and lock != _BOTH_LOCKED:
        s.setsockopt(_SOL_SOCKET, _SO_BUF_LOCK, lock)


def _build_queued(s: socket.socket, d: dict[str, Any]) -> None:
    """The client of a connection that waited in a listener's accept queue: its options,
    bound to its address; :func:`connect_queued` connects it once the listener is there."""
    for level, opt, raw in d["opts"]:
        set_option(s, level, opt, raw)
    s.setsockopt(N.SOL.SOCKET, N.SO.REUSEADDR, 1)  # (the old connection's port)
    s.bind(_sockaddr(d["family"], _bound(d, d["local"])))
    reuse = any((lv, o) == (N.SOL.SOCKET, N.SO.REUSEADDR) and int.from_bytes(raw, "little")
                for lv, o, raw in d["opts"])  # fmt: skip
    s.setsockopt(N.SOL.SOCKET, N.SO.REUSEADDR, int(reuse or d["tcp"].get("reuseaddr", 0)))


def connect_queued(d: dict[str, Any], fd: int, listener: dict[str, Any]) -> None:
    """A waiting connection made again: its client connects to the restored listener (on
    loopback the handshake is over when connect returns), so it waits in its accept queue.
    The client's socket may be non-blocking (its description's flags): waited for."""
    import select

    with socket.socket(fileno=os.dup(fd)) as s:
        target = list(d["remote"])
        err = s.connect_ex(_sockaddr(d["family"], target))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            _r, w, _x = select.select([], [s], [], 10)
            err = s.getsockopt(N.SOL.SOCKET, N.SO.ERROR) if w else errno.ETIMEDOUT
        if err:
            raise CryoError(f"fd {d['fd']} of {d['pid']}: cannot connect to the listener on"
                            f" {_show(listener['local'])} again: {os.strerror(err)}",
                            pid=d["pid"], resource=f"fd {d['fd']}")  # fmt: skip


def _bound(d: dict[str, Any], local: list[Any]) -> list[Any]:
    """What to bind to: an IPv6 socket that is not IPV6_V6ONLY but has a specific IPv6
    address was bound by connect() (binding to an IPv6 address sets IPV6_V6ONLY): bound
    to its port only, connect() gives it the address again."""
    if d["family"] != socket.AF_INET6 or _is_any(d["family"], [local[0], 0]):
        return local
    if ipaddress.IPv6Address(local[0]).ipv4_mapped is not None:
        return local
    v6only = any((lv, o) == (N.SOL.IPV6, N.IPV6.V6ONLY) and int.from_bytes(raw, "little")
                 for lv, o, raw in d["opts"])  # fmt: skip
    return local if v6only or not d.get("remote") else ["::", *local[1:]]


def _send_all(s: socket.socket, data: bytes) -> None:
    chunk = 1 << 16
    off = 0
    while off < len(data):
        try:
            off += s.send(data[off : off + chunk])
        except OSError as err:
            if err.errno != errno.ENOMEM or chunk <= 1024:
                raise
            chunk //= 2


def _restore_repair(s: socket.socket, d: dict[str, Any], t: dict[str, Any]) -> None:
    """A connection, in repair mode (it leaves it in :func:`finish`)."""
    state = t.get("state", _ESTABLISHED)  # (an int: compared with the sets of ST)
    half = state in _HALF_CLOSED
    inseq = t["inseq"] - (half and state in RCVQ_FIN)  # the FINs are put back afterwards
    outseq = t["outseq"] - (half and state in SNDQ_FIN)
    inq, outq, unsent = t["inq"], t["outq"], t["unsent"]
    set_ = s.setsockopt
    set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _RECV_QUEUE)
    set_(_SOL_TCP, _TCP_QUEUE_SEQ, _U32.pack((inseq - inq) & 0xFFFFFFFF))
    set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _SEND_QUEUE)
    set_(_SOL_TCP, _TCP_QUEUE_SEQ, _U32.pack((outseq - outq) & 0xFFFFFFFF))
    family, local, remote = d["family"], d["local"], d["remote"]
    if family == socket.AF_INET:
        s.bind((local[0], local[1]))
        s.connect((remote[0], remote[1]))
    else:
        s.bind(_sockaddr(family, local))
        s.connect(_sockaddr(family, remote))
    options = t["options"]
    set_(_SOL_TCP, _TCP_REPAIR_OPTIONS, _repair_options(options, t["snd_wscale"],
                                                        t["rcv_wscale"], t["mss"]))
    if options & _OPT_TIMESTAMPS:
        set_(_SOL_TCP, _TCP_TIMESTAMP, _U32.pack(t["timestamp"] & 0xFFFFFFFF))
    if t["recvq"]:
        set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _RECV_QUEUE)
        _send_all(s, t["recvq"])
    sent = outq - unsent
    if sent:
        set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _SEND_QUEUE)
        _send_all(s, t["sendq"][:sent])
    if unsent:  # never sent: queued as new data (it goes once the lock is gone)
        set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _NO_QUEUE)
        set_(_SOL_TCP, _TCP_REPAIR, 0)
        _send_all(s, t["sendq"][sent:])
        set_(_SOL_TCP, _TCP_REPAIR, 1)
    if not half:
        set_(_SOL_TCP, _TCP_REPAIR_WINDOW, _RWIN.pack(*t["window"]))
        _window_clamp(s, t)
        _sync_mss(s, family)
        return
    snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup = t["window"]
    if state in RCVQ_FIN:
        rcv_wup, rcv_wnd = (rcv_wup - 1) & 0xFFFFFFFF, (rcv_wnd + 1) & 0xFFFFFFFF
    set_(_SOL_TCP, _TCP_REPAIR_WINDOW, _RWIN.pack(snd_wl1, snd_wnd, max_window, rcv_wnd,
                                                  rcv_wup))  # fmt: skip
    # (the FINs into no queue but as said)
    set_(_SOL_TCP, _TCP_REPAIR_QUEUE, _NO_QUEUE)
    # half closed: our FIN into the send queue (shutdown), the peer's FIN (and its ACK of
    # ours) as packets made up from the peer to the socket, in the order they came
    window = min(t["window"][1] >> t["snd_wscale"], 0xFFFF)
    if state in SNDQ_FIRST_FIN:
        _fin_in_sendq(s, acked=state == ST.FIN_WAIT2)
    if state in RCVQ_FIN:
        _inject(d, inseq, outseq - outq, FIN | ACK, window)
    if state in SNDQ_SECOND_FIN:
        _fin_in_sendq(s, acked=False)
    if state == ST.FIN_WAIT2:
        _inject(d, inseq, outseq + 1 - outq, ACK, window)
    _window_clamp(s, t)
    _sync_mss(s, family)


def _window_clamp(s: socket.socket, t: dict[str, Any]) -> None:
    """The connection's window clamp as it was (TCP_WINDOW_CLAMP: the program's, or the
    kernel's, which its receive buffer's tuning moves), once its window is back: connect
    in repair mode computes one of its own (a program's 40000 came back 65536), and
    TCP_REPAIR_WINDOW has none."""
    clamp = t.get("clamp")
    if clamp and s.getsockopt(_SOL_TCP, _TCP_WINDOW_CLAMP) != clamp:
        s.setsockopt(_SOL_TCP, _TCP_WINDOW_CLAMP, clamp)


def _sync_mss(s: socket.socket, family: int) -> None:
    """The connection's segment size made again from its MSS (TCP_REPAIR_OPTIONS sets
    the clamp only) and its window: connect in repair mode computed it from the default
    clamp, 536 (TCP_MAXSEG read 524 instead of 32768 on loopback, and the connection sent
    524-byte segments until the peer's window grew; IPv6: 1220, read 1208).  Setting a
    socket's IP options, here the ones it has, makes the kernel compute it again
    (do_ip_setsockopt: icsk_sync_mss).  An IPv6 connection to an IPv6 address: its
    sticky options do (ipv6_update_options) when some are given, and IPV6_2292PKTOPTIONS
    gives a set of none from a control buffer too short to hold a message (no extension
    header: icsk_ext_hdr_len 0, as the socket has none, cryo restores none); an empty
    one takes the set away again (TCP_MAXSEG then reads what the original did, 32732 on
    loopback, 1328 under a route of MTU 1400)."""
    if family == socket.AF_INET or (family == socket.AF_INET6 and s.getsockname()[0]
                                    .startswith("::ffff:")):  # fmt: skip
        s.setsockopt(N.SOL.IP, N.IP.OPTIONS, s.getsockopt(N.SOL.IP, N.IP.OPTIONS, 40))
    elif family == socket.AF_INET6:
        s.setsockopt(N.SOL.IPV6, _IPV6_2292PKTOPTIONS, b"\0\0\0\0")
        s.setsockopt(N.SOL.IPV6, _IPV6_2292PKTOPTIONS, b"")


_IPV6_2292PKTOPTIONS = 6  # (linux/in6.h)


_ESTABLISHED = int(ST.ESTABLISHED)
_CONNECTED_NAMES = frozenset(x.name for x in CONNECTED)
_HALF_CLOSED = frozenset(int(x) for x in SNDQ_FIN | RCVQ_FIN)
_RCVQ_FIN = frozenset(int(x) for x in RCVQ_FIN)
# (tcpi_options, snd_wscale, rcv_wscale, mss) -> TCP_REPAIR_OPTIONS' argument (the
# connections of a server mostly share one)
_repair_opts: dict[tuple[int, int, int, int], bytes] = {}


def _repair_options(options: int, snd_wscale: int, rcv_wscale: int, mss: int) -> bytes:
    """struct tcp_repair_opt {code, value} of each option the connection negotiated."""
    key = (options, snd_wscale, rcv_wscale, mss)
    got = _repair_opts.get(key)
    if got is None:
        opts: list[int] = []
        if options & _OPT_SACK:
            opts += (_TCPOPT_SACK_PERM, 0)
        if options & _OPT_WSCALE:
            opts += (_TCPOPT_WINDOW, snd_wscale | rcv_wscale << 16)
        if options & _OPT_TIMESTAMPS:
            opts += (_TCPOPT_TIMESTAMP, 0)
        opts += (_TCPOPT_MAXSEG, mss)
        if len(_repair_opts) > 1000:
            _repair_opts.clear()
        got = _repair_opts[key] = struct.pack(f"{len(opts)}I", *opts)
    return got


FIN, ACK = 0x01, 0x10


def _fin_in_sendq(s: socket.socket, *, acked: bool) -> None:
    if acked:  # the FIN counts as sent
        s.setsockopt(N.SOL.TCP, N.TCP.REPAIR_QUEUE, N.TCP_QUEUE.SEND_QUEUE)
    s.shutdown(socket.SHUT_WR)
    if acked:
        s.setsockopt(N.SOL.TCP, N.TCP.REPAIR_QUEUE, N.TCP_QUEUE.NO_QUEUE)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _inject(d: dict[str, Any], seq: int, ack: int, flags: int, window: int) -> None:
    """A segment from the peer to the restored socket (a raw socket marked to pass the
    network lock): how a FIN that had arrived gets into the receive queue again."""
    mine = ipaddress.ip_address(d["local"][0])
    peer = ipaddress.ip_address(d["remote"][0])
    if isinstance(mine, ipaddress.IPv6Address) and mine.ipv4_mapped is not None:
        mine = mine.ipv4_mapped
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    tcp = struct.pack("!HHIIBBHHH", d["remote"][1], d["local"][1], seq & 0xFFFFFFFF,
                      ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)  # fmt: skip
    src, dst = peer.packed, mine.packed
    if mine.version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        family = socket.AF_INET
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP)
        family = socket.AF_INET6
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    if family == socket.AF_INET:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64,
                         socket.IPPROTO_TCP, 0, src, dst)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, src, dst)
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(N.SOL.SOCKET, N.SO.MARK, LOCK_MARK)
        raw.sendto(ip + tcp, (str(mine), 0))


def _repair_off(s: socket.socket, reuse: int) -> None:
    """Out of repair mode (the kernel sends a window probe and clears SO_REUSEADDR)."""
    s.setsockopt(_SOL_TCP, _TCP_REPAIR, 0)
    if reuse:
        s.setsockopt(_SOL_SOCKET, _SO_REUSEADDR, reuse)


def finish(fd: int, t: dict[str, Any], family: int) -> None:
    """A restored connection leaves repair mode (on cryo's fd itself: no copy made; the
    socket object made with its family, type and protocol: Python asks none of them)."""
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)
    try:
        _repair_off(s, t.get("reuseaddr", 0))
        if t.get("full"):  # (the size as it was: wakes the writer if its queue fits)
            s.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, t["sndbuf"] // 2)
            _buffer_locks(s, t)
    finally:
        s.detach()


# -- the driver's hooks (engine/drivers.py) --------------------------------------------

_lock: netlock.Lock | None = None
_image_lock = ""


def lock_connections(ctx: Any) -> None:
    """Checkpoint, per process, before its fd table is read: its TCP connections are
    refused (being set up, or established without --tcp-established/--tcp-close), or
    locked, put in repair mode and read (--tcp-established)."""
    global _lock, _image_lock
    pid = ctx.pid
    socks = []
    if "fd_links" in ctx.live:  # read in this freeze already (drivers._holds_epoll)
        links: dict[int, str] = ctx.live["fd_links"][1]
    else:
        # the fd table as read here, for the files driver (the process is frozen and
        # cryo injects nothing that opens or closes its fds from here to files.dump:
        # one readlink per fd, not two)
        ctx.live["fd_links"] = procfs.fd_links(pid)
        links = ctx.live["fd_links"][1]
    for fd, target in links.items():
        if target.startswith("socket:["):
            socks.append((fd, int(target[8:-1])))
    if not socks:
        return
    mine = {ino for _, ino in socks}
    _warn_multicast(ctx, pid, mine)
    attrs: dict[int, dict[int, Any]] = {}
    each: dict[int, dict[int, bytes]] = {}
    table = tcp_table(pid, mine, attrs, each)
    DIAGS.update(each)
    seen = {ino: socket.AF_INET6 if ":" in conn[0] else socket.AF_INET
            for ino, (_state, conn) in table.items()}  # fmt: skip
    for fd, ino in socks:  # what the fd kinds will ask (family_of), known already
        if ino in seen:
            _families[(pid, fd, ino)] = seen[ino]
    if len(_TCP_OF) > 10_000:
        _TCP_OF.clear()
    _TCP_OF[pid] = {ino: (family, "") for ino, family in seen.items()}
    todo = []
    for fd, ino in socks:
        if ino not in table:
            continue
        state, conn = table[ino]
        if state in SETTING_UP:
            raise Unsupported(f"fd {fd}: TCP connection {conn[0]}:{conn[1]} ->"
                              f" {conn[2]}:{conn[3]} is being set up ({ST(state).name});"
                              " checkpoint again once it is established", pid=pid,
                              resource=f"fd {fd}")  # fmt: skip
        if state not in CONNECTED:
            continue
        if ctx.options.get("tcp_close"):
            continue  # restored closed: not locked, not read
        if not ctx.options.get("tcp_established"):
            raise Unsupported(f"fd {fd}: established TCP connection {conn[0]}:{conn[1]} ->"
                              f" {conn[2]}:{conn[3]}; checkpoint with --tcp-established to"
                              " save it (and restart with --tcp-established), or with"
                              " --tcp-close to restore it closed", pid=pid,
                              resource=f"fd {fd}")  # fmt: skip
        todo.append((fd, ino, conn))
    if not todo:
        return
    if _lock is None:
        _image_lock = netlock.image_lock_name(pid)
        _lock = netlock.Lock(_image_lock)
    _lock.add([c for _, _, c in todo])
    try:
        for fd, ino, conn in todo:
            family = socket.AF_INET6 if ":" in conn[0] else socket.AF_INET
            h = hold(pid, fd, ino, family)
            h.state["lock"] = _image_lock
            h.conn = conn
            if family == socket.AF_INET:
                h.known_sig, h.known = _known_of(attrs.get(ino),
                                                 each.get(ino, {}).get(N.INET_DIAG_INFO))
    finally:
        _close_pidfds()


_TCP_OF: dict[int, dict[int, tuple[int, str]]] = {}  # pid -> its TCP sockets, as below
# socket inode -> what the TCP table's dump showed of it in this checkpoint's freeze
# (N.inet_diag's each: tcp_info, memory, MD5 keys), for the TCP sockets of the processes
# in cryo's network namespace; emptied when the checkpoint ends (thaw)
DIAGS: dict[int, dict[int, bytes]] = {}


def _no_filter(ino: int) -> bool:
    """Whether the dump showed TCP socket ``ino`` with no option memory (sk_omem_alloc 0):
    then it has no socket filter, which is charged there when attached (net/core/filter.c
    __sk_filter_charge; a filter inherited by accept() as well)."""
    mem = DIAGS.get(ino, {}).get(N.INET_DIAG_SKMEMINFO, b"")
    at = N.SK_MEMINFO_OPTMEM * 4
    return len(mem) >= at + 4 and mem[at : at + 4] == b"\0\0\0\0"


def tcp_sockets(pid: int) -> dict[int, tuple[int, str]]:
    """inode -> (family, "") of the TCP sockets of ``pid`` found by
    :func:`lock_connections` (files' table of the namespace's sockets takes them instead
    of reading /proc/PID/net/tcp again); given once."""
    return _TCP_OF.pop(pid, {})


def parse_igmp(data: bytes, v6: bool) -> list[str]:
    """Multicast groups joined in a network namespace (/proc/net/igmp or igmp6), but
    those every interface joins by itself."""
    out = []
    for line in data.decode(errors="replace").splitlines():
        f = line.split()
        if v6 and len(f) >= 3:
            g = f[2]
            if g not in ("ff020000000000000000000000000001", "ff010000000000000000000000000001") \
                    and not g.startswith("ff0200000000000000000001ff"):  # fmt: skip
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(g))))
        elif not v6 and line.startswith("\t\t") and f and len(f[0]) == 8 and \
                f[0] != "010000E0":  # fmt: skip
            out.append(str(ipaddress.IPv4Address(bytes.fromhex(f[0])[::-1])))
    return out


def _warn_multicast(ctx: Any, pid: int, inodes: set[int]) -> None:
    """Multicast memberships cannot be read per socket: if the process has UDP or raw
    sockets and its namespace has joined groups, say that they are not restored."""
    dgram = False
    for proto in ("udp", "udp6", "raw", "raw6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{proto}", "rb") as f:
            dgram = dgram or any(int(x.split()[9]) in inodes
                                 for x in f.read().splitlines()[1:] if len(x.split()) > 9)
    if not dgram:
        return
    groups = []
    for name, v6 in (("igmp", False), ("igmp6", True)):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}", "rb") as f:
            groups += parse_igmp(f.read(), v6)
    if groups:
        ctx.warnings.append(f"process {pid}: multicast groups joined in its network namespace"
                            f" ({', '.join(sorted(set(groups)))}) are not restored: the"
                            " memberships of its sockets cannot be read")  # fmt: skip


def thaw(session: Any) -> None:
    """Checkpoint, when the processes are let go (or were killed after the image was
    committed): connections leave repair mode and are unlocked, or, the processes being
    dead, stay locked under the image's name until the restart."""
    global _lock
    killed = session.phase == "resume" and session.signal_after == signal.SIGKILL
    let_go_held(keep_repair=killed)
    DIAGS.clear()
    lock, _lock = _lock, None
    if lock is not None:
        if killed:
            lock.keep()
            log.info("connections held by %s until the restart", _image_lock)
        else:
            lock.drop()


def _connections(descs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in descs if d.get("tcp") is not None]


def prepare(rs: Any) -> None:
    """Restart, before the sockets are made: established connections need
    --tcp-established or --tcp-close; leftover locks of dead cryos are removed."""
    conns = _connections(rs.plan.descs)
    if not conns:
        return
    if not (rs.options.get("tcp_established") or rs.options.get("tcp_close")):
        d = conns[0]
        raise Unsupported(f"fd {d['fd']} of {d['pid']}: the image holds {len(conns)} established"
                          " TCP connections; restart with --tcp-established to restore them,"
                          " or --tcp-close to restore them closed", pid=d["pid"],
                          resource=f"fd {d['fd']}")  # fmt: skip
    netlock.sweep()


def started(rs: Any) -> None:
    """Restart, the processes built, just before they run: connections leave repair
    mode, then the image's network lock is removed; connections restored closed are
    shut (:func:`_shut_closed`)."""
    _shut_closed(rs)
    conns = _connections(rs.shared.descs or [])
    if not conns:
        return
    queued = [d for d in conns if d.get("queued_on") is not None]
    if not rs.options.get("tcp_close"):
        for d in conns:
            if d.get("queued_on") is None:
                finish(rs.shared.opened.fds[d["id"]], d["tcp"], d["family"])
    for lock in sorted({d["tcp"].get("lock", "") for d in conns} - {""}):
        try:
            netlock.drop_table(lock)
        except CryoError as err:  # the processes are built: say it, do not fail them
            rs.result.warnings.append(f"the network lock {lock} is still there: {err}")
    if not rs.options.get("tcp_close"):  # (the lock is gone: the handshakes pass)
        queued.sort(key=lambda d: _queue_position(d, rs.shared.descs[d["queued_on"]]))
        for d in queued:
            connect_queued(d, rs.shared.opened.fds[d["id"]], rs.shared.descs[d["queued_on"]])


def _shut_closed(rs: Any) -> None:
    """Each connection restored closed (--tcp-close: a new socket, never connected) shut
    both ways once every process is built, as a reset leaves a connection: its next
    read returns 0, a write EPIPE, and the shutdown wakes whatever waits on it (an
    epoll's watch, edge-triggered too: nginx's worker waiting for room to write had
    never heard of it, and kept the connection for ever; a poll)."""
    tcp_close = rs.options.get("tcp_close")
    for d in rs.shared.descs or []:
        if not (d.get("closed") or (tcp_close and d.get("tcp") is not None)):
            continue
        fd = rs.shared.opened.fds.get(d["id"])
        if fd is None:
            continue
        s = socket.socket(d["family"], socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError as err:
            if err.errno != errno.ENOTCONN:  # (an unconnected socket's: shut all the same)
                raise
        finally:
            s.detach()


def _queue_position(d: dict[str, Any], listener: dict[str, Any]) -> tuple[int, int]:
    """Where the client ``d`` waited in its listener's accept queue (the image's
    ``queued``, in the order of the queue): the clients connect again in that order, so
    that the program accepts them as it would have."""
    mine = (str(ipaddress.ip_address(d["local"][0])), d["local"][1])
    for i, c in enumerate(listener.get("queued") or []):
        if (str(ipaddress.ip_address(c[0])), c[1]) == mine:
            return d["queued_on"], i
    return d["queued_on"], 1 << 30
