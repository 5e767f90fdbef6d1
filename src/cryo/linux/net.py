"""Socket constants and structs that Python's socket module lacks: TCP repair
(include/uapi/linux/tcp.h), the start of struct tcp_info, the socket ioctls
(include/uapi/linux/sockios.h) and the socket option numbers cryo saves.

Getting and setting options goes through Python's own ``socket.getsockopt`` /
``setsockopt`` on cryo's duplicate of the target's socket (pidfd_getfd); the queue
lengths through ``fcntl.ioctl``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from cryo.linux.consts import IntEnumBase, IntFlagBase, fast_enum


@fast_enum(enum.IntEnum)
class TCP(IntEnumBase):
    """TCP_* socket options (include/uapi/linux/tcp.h), level IPPROTO_TCP."""

    NODELAY = 1
    MAXSEG = 2
    CORK = 3
    KEEPIDLE = 4
    KEEPINTVL = 5
    KEEPCNT = 6
    SYNCNT = 7
    LINGER2 = 8
    DEFER_ACCEPT = 9
    WINDOW_CLAMP = 10
    INFO = 11
    QUICKACK = 12
    CONGESTION = 13
    THIN_LINEAR_TIMEOUTS = 16
    USER_TIMEOUT = 18
    REPAIR = 19
    REPAIR_QUEUE = 20
    QUEUE_SEQ = 21
    REPAIR_OPTIONS = 22
    FASTOPEN = 23
    TIMESTAMP = 24
    NOTSENT_LOWAT = 25
    SAVE_SYN = 27
    REPAIR_WINDOW = 29
    FASTOPEN_CONNECT = 30
    FASTOPEN_NO_COOKIE = 34
    INQ = 36
    TX_DELAY = 37
    RTO_MIN_US = 45
    DELACK_MAX_US = 46


@fast_enum(enum.IntEnum)
class TCP_QUEUE(IntEnumBase):
    """TCP_REPAIR_QUEUE values."""

    NO_QUEUE = 0
    RECV_QUEUE = 1
    SEND_QUEUE = 2


@fast_enum(enum.IntEnum)
class TCPOPT(IntEnumBase):
    """TCP header option kinds, as TCP_REPAIR_OPTIONS takes them (include/net/tcp.h)."""

    MAXSEG = 2
    WINDOW = 3
    SACK_PERM = 4
    TIMESTAMP = 8


@fast_enum(enum.IntFlag)
class TCPI_OPT(IntFlagBase):
    """tcp_info.tcpi_options bits."""

    TIMESTAMPS = 1
    SACK = 2
    WSCALE = 4
    ECN = 8


@fast_enum(enum.IntEnum)
class TCP_STATE(IntEnumBase):
    """Socket states (include/net/tcp_states.h)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12


@fast_enum(enum.IntEnum)
class SIOC(IntEnumBase):
    """Socket ioctls (include/uapi/linux/sockios.h)."""

    INQ = 0x541B  # FIONREAD: bytes in the receive queue
    OUTQ = 0x5411  # TIOCOUTQ: bytes in the send queue, sent or not
    OUTQNSD = 0x894B  # bytes in the send queue never sent


@fast_enum(enum.IntEnum)
class SOL(IntEnumBase):
    SOCKET = 1
    IP = 0
    IPV6 = 41
    TCP = 6
    UDP = 17
    PACKET = 263
    NETLINK = 270


@fast_enum(enum.IntEnum)
class SO(IntEnumBase):
    """SOL_SOCKET options (include/uapi/asm-generic/socket.h)."""

    DEBUG = 1
    REUSEADDR = 2
    TYPE = 3
    ERROR = 4
    DONTROUTE = 5
    BROADCAST = 6
    SNDBUF = 7
    RCVBUF = 8
    KEEPALIVE = 9
    OOBINLINE = 10
    NO_CHECK = 11
    PRIORITY = 12
    LINGER = 13
    REUSEPORT = 15
    PASSCRED = 16
    RCVLOWAT = 18
    RCVTIMEO_OLD = 20
    SNDTIMEO_OLD = 21
    BINDTODEVICE = 25
    TIMESTAMP_OLD = 29
    TIMESTAMPNS_OLD = 35
    ACCEPTCONN = 30
    SNDBUFFORCE = 32
    RCVBUFFORCE = 33
    PASSSEC = 34
    MARK = 36
    TIMESTAMPING_OLD = 37
    PROTOCOL = 38
    DOMAIN = 39
    RXQ_OVFL = 40
    WIFI_STATUS = 41
    PEEK_OFF = 42
    SELECT_ERR_QUEUE = 45
    BUSY_POLL = 46
    MAX_PACING_RATE = 47
    INCOMING_CPU = 49
    ZEROCOPY = 60
    PREFER_BUSY_POLL = 69
    BUF_LOCK = 72
    TXREHASH = 74
    RCVMARK = 75
    PASSPIDFD = 76
    PASSRIGHTS = 83


@fast_enum(enum.IntEnum)
class IP(IntEnumBase):
    """IPPROTO_IP options (include/uapi/linux/in.h)."""

    TOS = 1
    TTL = 2
    HDRINCL = 3
    OPTIONS = 4
    RECVOPTS = 6
    RETOPTS = 7
    PKTINFO = 8
    MTU_DISCOVER = 10
    RECVERR = 11
    RECVTTL = 12
    RECVTOS = 13
    FREEBIND = 15
    PASSSEC = 18
    TRANSPARENT = 19
    RECVORIGDSTADDR = 20
    MINTTL = 21
    NODEFRAG = 22
    CHECKSUM = 23
    BIND_ADDRESS_NO_PORT = 24
    RECVFRAGSIZE = 25
    RECVERR_RFC4884 = 26
    MULTICAST_IF = 32
    MULTICAST_TTL = 33
    MULTICAST_LOOP = 34
    MULTICAST_ALL = 49
    UNICAST_IF = 50
    LOCAL_PORT_RANGE = 51


@fast_enum(enum.IntEnum)
class UDP(IntEnumBase):
    """IPPROTO_UDP options (include/uapi/linux/udp.h)."""

    CORK = 1
    NO_CHECK6_TX = 101
    NO_CHECK6_RX = 102
    SEGMENT = 103
    GRO = 104


@fast_enum(enum.IntEnum)
class IPV6(IntEnumBase):
    """IPPROTO_IPV6 options (include/uapi/linux/in6.h)."""

    UNICAST_HOPS = 16
    MULTICAST_IF = 17
    MULTICAST_HOPS = 18
    MULTICAST_LOOP = 19
    MTU_DISCOVER = 23
    RECVERR = 25
    V6ONLY = 26
    RECVERR_RFC4884 = 31
    FLOWINFO_SEND = 33
    RECVPKTINFO = 49
    RECVHOPLIMIT = 51
    RECVHOPOPTS = 53
    RECVRTHDR = 56
    RECVDSTOPTS = 58
    RECVPATHMTU = 60
    DONTFRAG = 62
    RECVTCLASS = 66
    TCLASS = 67
    AUTOFLOWLABEL = 70
    ADDR_PREFERENCES = 72
    MINHOPCOUNT = 73
    RECVORIGDSTADDR = 74
    UNICAST_IF = 76
    FREEBIND = 78


class tcp_info_head(ctypes.Structure):
    """The first fields of struct tcp_info (include/uapi/linux/tcp.h); the kernel copies
    at most the length asked for."""

    _fields_ = [
        ("tcpi_state", ctypes.c_uint8),
        ("tcpi_ca_state", ctypes.c_uint8),
        ("tcpi_retransmits", ctypes.c_uint8),
        ("tcpi_probes", ctypes.c_uint8),
        ("tcpi_backoff", ctypes.c_uint8),
        ("tcpi_options", ctypes.c_uint8),
        ("tcpi_wscale", ctypes.c_uint8),  # snd_wscale : 4, rcv_wscale : 4
        ("tcpi_flags", ctypes.c_uint8),
        ("tcpi_rto", ctypes.c_uint32),
        ("tcpi_ato", ctypes.c_uint32),
        ("tcpi_snd_mss", ctypes.c_uint32),
        ("tcpi_rcv_mss", ctypes.c_uint32),
        ("tcpi_unacked", ctypes.c_uint32),  # LISTEN: connections in the accept queue
        ("tcpi_sacked", ctypes.c_uint32),  # LISTEN: the backlog
    ]

    @property
    def snd_wscale(self) -> int:
        return int(self.tcpi_wscale) & 0xF

    @property
    def rcv_wscale(self) -> int:
        return int(self.tcpi_wscale) >> 4


class tcp_repair_window(ctypes.Structure):
    """struct tcp_repair_window (include/uapi/linux/tcp.h)."""

    _fields_ = [
        ("snd_wl1", ctypes.c_uint32),
        ("snd_wnd", ctypes.c_uint32),
        ("max_window", ctypes.c_uint32),
        ("rcv_wnd", ctypes.c_uint32),
        ("rcv_wup", ctypes.c_uint32),
    ]


class tcp_repair_opt(ctypes.Structure):
    """struct tcp_repair_opt (include/uapi/linux/tcp.h)."""

    _fields_ = [("opt_code", ctypes.c_uint32), ("opt_val", ctypes.c_uint32)]


# the constants the per-connection helpers use, as plain ints (an enum member looked up
# on its class costs a descriptor call: thousands per checkpoint of a busy server)
_TCP, _INFO, _RWIN, _ROPTS = int(SOL.TCP), int(TCP.INFO), int(TCP.REPAIR_WINDOW), \
    int(TCP.REPAIR_OPTIONS)  # fmt: skip
_SOCKET = int(SOL.SOCKET)
_INFO_SIZE = ctypes.sizeof(tcp_info_head)
_RWIN_SIZE = ctypes.sizeof(tcp_repair_window)


def tcp_info(s: socket.socket) -> tcp_info_head:
    raw = s.getsockopt(_TCP, _INFO, _INFO_SIZE)
    return tcp_info_head.from_buffer_copy(raw.ljust(_INFO_SIZE, b"\0"))


def get_int(s: socket.socket, level: int, opt: int) -> int:
    return int(s.getsockopt(level, opt))


def set_int(s: socket.socket, level: int, opt: int, value: int) -> None:
    s.setsockopt(level, opt, value)


def get_u32(s: socket.socket, level: int, opt: int) -> int:
    return int(struct.unpack("I", s.getsockopt(level, opt, 4))[0])


def set_u32(s: socket.socket, level: int, opt: int, value: int) -> None:
    s.setsockopt(level, opt, struct.pack("I", value & 0xFFFFFFFF))


def queue_len(s: socket.socket, request: int) -> int:
    buf = fcntl.ioctl(s.fileno(), request, b"\0" * 4)
    return int(struct.unpack("i", buf)[0])


def get_repair_window(s: socket.socket) -> tcp_repair_window:
    raw = s.getsockopt(_TCP, _RWIN, _RWIN_SIZE)
    return tcp_repair_window.from_buffer_copy(raw)


def set_repair_window(s: socket.socket, w: tcp_repair_window) -> None:
    s.setsockopt(_TCP, _RWIN, bytes(w))


def set_repair_options(s: socket.socket, opts: list[tuple[int, int]]) -> None:
    s.setsockopt(_TCP, _ROPTS, b"".join(struct.pack("II", c, v) for c, v in opts))


CLONE_NEWNET = 0x40000000
_setns = ctypes.CDLL(None, use_errno=True).setns
_setns.restype = ctypes.c_int
_setns.argtypes = [ctypes.c_int, ctypes.c_int]


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """The calling thread joins the namespace behind ``fd``."""
    if _setns(fd, nstype) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [setns fd={fd}]")


SO_GET_FILTER = 26  # = SO_ATTACH_FILTER
_getsockopt = ctypes.CDLL(None, use_errno=True).getsockopt
_getsockopt.restype = ctypes.c_int
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_uint32)]  # fmt: skip


def filter_len(fd: int) -> int:
    """How many instructions the classic BPF filter attached to socket ``fd`` has (0:
    none); asked with a zero length, so that the kernel copies nothing."""
    n = ctypes.c_uint32(0)
    if _getsockopt(fd, _SOCKET, SO_GET_FILTER, None, ctypes.byref(n)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [getsockopt SO_GET_FILTER fd={fd}]")
    return int(n.value)


NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1  # (a dump answers each table as NEWTABLE)
NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


@contextlib.contextmanager
def _netlink(protocol: int, sotype: int) -> Iterator[socket.socket]:
    """A netlink socket of this thread's network namespace while inside.  An nfnetlink
    one is closed on a thread of its own: the last close of one waits until the objects
    that the namespace's last nftables transactions removed are destroyed (nf_tables'
    NETLINK_URELEASE notifier flushes its destroy work, which waits for an RCU grace
    period: 6-15 ms here), though the transactions are complete already."""
    nl = socket.socket(socket.AF_NETLINK, sotype | socket.SOCK_CLOEXEC, protocol)
    try:
        yield nl
    finally:
        if protocol == NETLINK_NETFILTER:
            threading.Thread(target=nl.close, name="cryo-nfnl-close", daemon=True).start()
        else:
            nl.close()


def _dump(protocol: int, sotype: int, request: int, body: bytes, what: str, bufsize: int,
          timeout: float) -> Iterator[tuple[int, bytes, int, int]]:  # fmt: skip
    """One netlink dump: the request sent, each answer yielded as (message type, the
    buffer it is in, where its payload starts, where it ends) until NLMSG_DONE; an
    NLMSG_ERROR with an error, a short message or a dump without its end raise OSError
    (``what`` names the dump)."""
    with _netlink(protocol, sotype) as nl:
        nl.settimeout(timeout)
        nl.send(_NLMSG.pack(_NLMSG.size + len(body), request, _NLM_F_REQUEST | _NLM_F_DUMP,
                            1, 0) + body)  # fmt: skip
        header = _NLMSG.unpack_from
        while True:
            data = nl.recv(bufsize)
            if not data:
                raise OSError(errno.EIO, f"{what}: the dump ended without its end")
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, _seq, _pid = header(data, off)
                if length < _NLMSG.size:
                    raise OSError(errno.EIO, f"{what}: a message shorter than its header")
                if mtype == _NLMSG_DONE:
                    return
                if mtype == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    if err:
                        raise OSError(err, f"{os.strerror(err)} [{what}]")
                else:
                    yield mtype, data, off + _NLMSG.size, off + length
                off += (length + 3) & ~3


def _attrs(data: bytes, a: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The netlink attributes between ``a`` and ``end``: (type, payload start, its end)."""
    while a + _NLA.size <= end:
        alen, atype = _NLA.unpack_from(data, a)
        if alen < _NLA.size:
            return
        yield atype & 0x3FFF, a + _NLA.size, a + alen
        a += (alen + 3) & ~3


def nft_tables(family: int = NFPROTO_INET) -> list[str]:
    """The names of the nftables tables of ``family`` in this network namespace, asked
    of the kernel directly (one nfnetlink dump, NFT_MSG_GETTABLE: what ``nft list
    tables`` does, without starting nft)."""
    body = struct.pack("=BBH", family, 0, 0)  # struct nfgenmsg
    names: list[str] = []
    for mtype, data, start, end in _dump(NETLINK_NETFILTER, socket.SOCK_RAW,
                                         NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, body,
                                         "nfnetlink list tables", 1 << 16, 5):  # fmt: skip
        if mtype != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE:
            continue
        for atype, a, aend in _attrs(data, start + 4, end):  # (after struct nfgenmsg)
            if atype == NFTA_TABLE_NAME:
                names.append(data[a:aend].split(b"\0", 1)[0].decode())
    return names


RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
RT_SCOPE_UNIVERSE = 0
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def host_addresses() -> list[str]:
    """Every address of global scope in this network namespace, IPv4 then IPv6 as the
    kernel lists them (one rtnetlink dump, RTM_GETADDR: what ``ip addr`` shows, the
    secondary addresses of an interface too, which SIOCGIFADDR does not give)."""
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    out: list[str] = []
    for mtype, data, start, end in _dump(socket.NETLINK_ROUTE, socket.SOCK_RAW, RTM_GETADDR,
                                         body, "rtnetlink list addresses", 1 << 16, 5):  # fmt: skip
        if mtype != RTM_NEWADDR or end - start < _IFADDRMSG.size:
            continue
        family, _plen, _flags, scope, _index = _IFADDRMSG.unpack_from(data, start)
        if scope != RT_SCOPE_UNIVERSE or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        found: dict[int, bytes] = {}
        for atype, a, aend in _attrs(data, start + _IFADDRMSG.size, end):
            if atype in (IFA_ADDRESS, IFA_LOCAL):
                found[atype] = data[a:aend]
        raw = found.get(IFA_LOCAL, found.get(IFA_ADDRESS))  # (IPv4's own is IFA_LOCAL)
        if raw is not None:
            out.append(socket.inet_ntop(family, raw))
    return out


NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_DELTABLE = 2
_NLM_F_ACK = 0x4


def nft_delete_tables(names: Iterable[str], family: int = NFPROTO_INET) -> None:
    """Remove nftables tables ``names`` of ``family`` (with their sets, chains and
    rules) in one transaction: one nfnetlink batch (an NFT_MSG_DELTABLE each, between
    BATCH_BEGIN and BATCH_END: what ``nft delete table`` sends, without starting nft).
    A table that is not there fails the whole batch (ENOENT): nothing is removed."""
    nfgen = struct.Struct("=BBH")  # struct nfgenmsg: family, version, res_id (big endian)

    def msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
        return _NLMSG.pack(_NLMSG.size + len(body), mtype, flags, seq, 0) + body

    batch = nfgen.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    req = msg(NFNL_MSG_BATCH_BEGIN, _NLM_F_REQUEST, 1, batch)
    waiting = set()
    for seq, name in enumerate(names, 2):
        attr = name.encode() + b"\0"
        attr = _NLA.pack(_NLA.size + len(attr), NFTA_TABLE_NAME) + attr
        attr += b"\0" * (-len(attr) % 4)
        req += msg(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELTABLE, _NLM_F_REQUEST | _NLM_F_ACK,
                   seq, nfgen.pack(family, 0, 0) + attr)  # fmt: skip
        waiting.add(seq)
    if not waiting:
        return
    req += msg(NFNL_MSG_BATCH_END, _NLM_F_REQUEST, max(waiting) + 1, batch)
    _nft_batch(req, waiting, "delete table")


def _nft_batch(req: bytes, waiting: set[int], what: str) -> None:
    """Send nfnetlink batch ``req`` (one transaction) and wait for the answer to each
    message of ``waiting`` (their sequence numbers, sent with NLM_F_ACK): OSError for
    the first that failed (the kernel then applied none of the batch)."""
    with _netlink(NETLINK_NETFILTER, socket.SOCK_RAW) as nl:
        nl.settimeout(5)
        if len(req) > 200_000:  # (a batch is one message: within the send buffer)
            nl.setsockopt(socket.SOL_SOCKET, 32, len(req) + 4096)  # SO_SNDBUFFORCE
        nl.send(req)
        while waiting:
            data = nl.recv(1 << 16)
            if not data:
                raise OSError(errno.EIO, f"nfnetlink: no answer to {what}")
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    raise OSError(errno.EIO, "nfnetlink: a message shorter than its header")
                if mtype == _NLMSG_ERROR:  # an ACK (0) or an error, for the message seq
                    err = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    if err:
                        raise OSError(err, f"{os.strerror(err)} [nfnetlink {what}]")
                    waiting.discard(seq)
                off += (length + 3) & ~3


# the nftables messages of a network lock (include/uapi/linux/netfilter/nf_tables.h)
NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM = 3, 6, 9, 12
_NLM_F_CREATE, _NLM_F_APPEND, _NLA_F_NESTED = 0x400, 0x800, 0x8000
NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT = 1, 3
NF_DROP, NF_ACCEPT = 0, 1
NFT_META_MARK, NFT_META_NFPROTO, NFT_META_L4PROTO = 3, 15, 16
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
# registers: NFT_REG_1..4 (16 bytes each) are NFT_REG32_00..15 (8..23), 4 bytes each
NFT_REG_VERDICT, NFT_REG_1, NFT_REG_2 = 0, 1, 2
# the sets' key types and userdata as nft 1.0.6 writes them for "ipvN_addr .
# inet_service . ipvN_addr . inet_service" (what nft list shows; the kernel keeps them)
_SET_KEY = {4: (0x001CD1CD, 16), 6: (0x0020D20D, 40)}
_SET_USERDATA = bytes.fromhex("00040000000003080004 0d00 00000100".replace(" ", ""))
_BE32 = struct.Struct(">I")


def _nla(atype: int, payload: bytes) -> bytes:
    out = _NLA.pack(_NLA.size + len(payload), atype) + payload
    return out + b"\0" * (-len(out) % 4)


def _nest(atype: int, *attrs: bytes) -> bytes:
    return _nla(atype | _NLA_F_NESTED, b"".join(attrs))


def _str(atype: int, text: str) -> bytes:
    return _nla(atype, text.encode() + b"\0")


def _u32(atype: int, value: int) -> bytes:
    return _nla(atype, _BE32.pack(value & 0xFFFFFFFF))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _str(1, name), _nest(2, *attrs))  # NFTA_LIST_ELEM: NAME, DATA


def _meta(key: int, dreg: int) -> bytes:
    return _expr("meta", _u32(2, key), _u32(1, dreg))  # NFTA_META_KEY, _DREG


def _cmp_eq(sreg: int, value: bytes) -> bytes:
    return _expr("cmp", _u32(1, sreg), _u32(2, 0), _nest(3, _nla(1, value)))  # SREG, OP eq


def _payload(base: int, offset: int, length: int, dreg: int) -> bytes:
    return _expr("payload", _u32(1, dreg), _u32(2, base), _u32(3, offset), _u32(4, length))


def _verdict(code: int) -> bytes:  # immediate: DREG verdict, DATA { VERDICT { CODE } }
    return _expr("immediate", _u32(1, NFT_REG_VERDICT), _nest(2, _nest(2, _u32(1, code))))


def _lock_rules(mark: int) -> list[bytes]:
    """The expressions of each rule of a lock's chain: packets marked ``mark`` pass;
    those whose addresses and ports, either way round, are an element of set conn4 or
    conn6 are dropped (what netlock's nft script says, as nft compiles it)."""
    rules = [_meta(NFT_META_MARK, NFT_REG_1) + _cmp_eq(NFT_REG_1, struct.pack("=I", mark))
             + _verdict(NF_ACCEPT)]  # fmt: skip
    for version, nfproto, (src, dst, alen), regs, set_id in (
            (4, socket.AF_INET, (12, 16, 4), (NFT_REG_1, 9, 10, 11), 1),
            (6, socket.AF_INET6, (8, 24, 16), (NFT_REG_1, NFT_REG_2, 13, 17), 2)):  # fmt: skip
        for first, second in ((src, dst), (dst, src)):  # (saddr . sport . daddr . dport)
            sport, dport = (0, 2) if first == src else (2, 0)
            rules.append(
                _meta(NFT_META_NFPROTO, NFT_REG_1) + _cmp_eq(NFT_REG_1, bytes([nfproto]))
                + _meta(NFT_META_L4PROTO, NFT_REG_1)
                + _cmp_eq(NFT_REG_1, bytes([socket.IPPROTO_TCP]))
                + _payload(NFT_PAYLOAD_NETWORK_HEADER, first, alen, regs[0])
                + _payload(NFT_PAYLOAD_TRANSPORT_HEADER, sport, 2, regs[1])
                + _payload(NFT_PAYLOAD_NETWORK_HEADER, second, alen, regs[2])
                + _payload(NFT_PAYLOAD_TRANSPORT_HEADER, dport, 2, regs[3])
                + _expr("lookup", _str(1, f"conn{version}"), _u32(2, NFT_REG_1),
                        _u32(4, set_id))  # NFTA_LOOKUP_SET, _SREG, _SET_ID
                + _verdict(NF_DROP))  # fmt: skip
    return rules


def lock_key(local: bytes, lport: int, remote: bytes, rport: int) -> bytes:
    """The element of a lock's set conn4 or conn6 for a connection (addresses packed, 4
    or 16 bytes): each field in a register of its own, a port padded to 4 bytes."""
    return b"".join((local, lport.to_bytes(2, "big"), b"\0\0", remote,
                     rport.to_bytes(2, "big"), b"\0\0"))  # fmt: skip


def nft_lock(table: str, keys: dict[int, list[bytes]], *, make: bool, owner: str = "",
             mark: int = 0, family: int = NFPROTO_INET) -> None:
    """One nfnetlink transaction (what ``nft -f`` of netlock's script sends, without
    starting nft): with ``make``, table ``owner`` (empty; none if "") and table
    ``table`` with sets conn4 and conn6 and chains in and out (:func:`_lock_rules`,
    hooked at priority -300); then ``keys`` (by IP version, :func:`lock_key`) added to
    the sets.  All or nothing: OSError if the kernel refused any of it."""
    nfgen = struct.Struct("=BBH")
    seq = 1
    waiting: set[int] = set()

    def msg(mtype: int, flags: int, *attrs: bytes, fam: int = family, subsys: bool = True
            ) -> bytes:  # fmt: skip
        nonlocal seq
        seq += 1
        body = nfgen.pack(fam, 0, 0 if subsys else socket.htons(NFNL_SUBSYS_NFTABLES))
        body += b"".join(attrs)
        if flags & _NLM_F_ACK:
            waiting.add(seq)
        mt = NFNL_SUBSYS_NFTABLES << 8 | mtype if subsys else mtype
        return _NLMSG.pack(_NLMSG.size + len(body), mt, flags, seq, 0) + body

    create = _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_ACK
    out = [msg(NFNL_MSG_BATCH_BEGIN, _NLM_F_REQUEST, fam=socket.AF_UNSPEC, subsys=False)]
    if make:
        if owner:
            out.append(msg(NFT_MSG_NEWTABLE, create, _str(NFTA_TABLE_NAME, owner), _u32(2, 0)))
        out.append(msg(NFT_MSG_NEWTABLE, create, _str(NFTA_TABLE_NAME, table), _u32(2, 0)))
        for name, hook in (("in", NF_INET_LOCAL_IN), ("out", NF_INET_LOCAL_OUT)):
            out.append(msg(NFT_MSG_NEWCHAIN, create, _str(1, table), _str(3, name),
                           _nest(4, _u32(1, hook), _u32(2, -300)), _u32(5, NF_ACCEPT),
                           _str(7, "filter")))  # TABLE, NAME, HOOK, POLICY, TYPE
        for set_id, version in ((1, 4), (2, 6)):
            ktype, klen = _SET_KEY[version]
            out.append(msg(NFT_MSG_NEWSET, create, _str(1, table), _str(2, f"conn{version}"),
                           _u32(3, 0), _u32(4, ktype), _u32(5, klen), _u32(10, set_id),
                           _nla(13, _SET_USERDATA)))  # fmt: skip
        for name in ("in", "out"):
            for exprs in _lock_rules(mark):
                out.append(msg(NFT_MSG_NEWRULE, create | _NLM_F_APPEND, _str(1, table),
                               _str(2, name), _nla(4 | _NLA_F_NESTED, exprs)))  # fmt: skip
    for set_id, version in ((1, 4), (2, 6)):
        elems = keys.get(version) or []
        # each: NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } } (keys of
        # one length, a multiple of 4: one header of 12 bytes for all)
        klen = _SET_KEY[version][1]
        head = _NLA.pack(12 + klen, 1 | _NLA_F_NESTED) + _NLA.pack(8 + klen, 1 | _NLA_F_NESTED) \
            + _NLA.pack(4 + klen, 1)  # fmt: skip
        for i in range(0, len(elems), 4096):  # (a message's length is 32 bits: any size)
            listed = head + head.join(elems[i:i + 4096])
            out.append(msg(NFT_MSG_NEWSETELEM, create, _str(1, table),
                           _str(2, f"conn{version}"), _nla(3 | _NLA_F_NESTED, listed),
                           *((_u32(4, set_id),) if make else ())))  # fmt: skip
    if not waiting:
        return
    out.append(msg(NFNL_MSG_BATCH_END, _NLM_F_REQUEST, fam=socket.AF_UNSPEC, subsys=False))
    _nft_batch(b"".join(out), waiting, "make the network lock")


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2  # the attribute that holds struct tcp_info (include/uapi/linux/inet_diag.h)
_INET_DIAG_REQ = struct.Struct("=BBBBI48x")  # struct inet_diag_req_v2, any socket id
_INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # struct inet_diag_msg
_INO_AT = _INET_DIAG_MSG.size - 4  # idiag_inode, its last field
_U32 = struct.Struct("=I")
# struct tcp_info from tcpi_last_data_sent (at byte 44): last_data_sent, last_ack_sent
# (never set), last_data_recv, last_ack_recv, in ms before the moment it is read
_TCPI_TIMES = struct.Struct("=IIII")
_TCPI_TIMES_AT = 44


def _inet_diag_msgs(family: int, protocol: int, states: int, ext: int
                    ) -> Iterator[tuple[bytes, int, int]]:  # fmt: skip
    req = _INET_DIAG_REQ.pack(family, protocol, ext, 0, states)
    for _mtype, data, start, end in _dump(NETLINK_SOCK_DIAG, socket.SOCK_DGRAM,
                                          SOCK_DIAG_BY_FAMILY, req, "sock_diag inet",
                                          1 << 20, 10):  # fmt: skip
        yield data, start, end


# include/uapi/linux/inet_diag.h: attributes of an answer (and the bits of idiag_ext
# that ask for some: 1 << (type - 1); INET_DIAG_CLASS_ID comes with INET_DIAG_TCLASS's)
INET_DIAG_CONG, INET_DIAG_TOS, INET_DIAG_TCLASS = 4, 5, 6
INET_DIAG_MARK, INET_DIAG_CLASS_ID, INET_DIAG_SOCKOPT = 15, 17, 22  # (MARK: CAP_NET_ADMIN)
INET_DIAG_IF = -1  # (not an attribute: idiag_if of struct inet_diag_sockid, kept with them)
_DIAG_EXT = (1 << (INET_DIAG_CONG - 1)) | (1 << (INET_DIAG_TOS - 1)) | \
    (1 << (INET_DIAG_TCLASS - 1))  # fmt: skip
# each socket's own, kept apart (:func:`inet_diag`'s ``each``): struct tcp_info, the
# memory (u32 SK_MEMINFO_*: OPTMEM, sk_omem_alloc, at 6), TCP MD5 keys (they come with
# tcp_info, for CAP_NET_ADMIN), sk_shutdown (a byte: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2)
# and the upper-layer protocol (TCP_ULP: nested, its name INET_ULP_INFO_NAME; with the MD5
# keys, tcp_diag_get_aux)
INET_DIAG_SHUTDOWN, INET_DIAG_SKMEMINFO, INET_DIAG_MD5SIG = 8, 7, 18
INET_DIAG_ULP_INFO, INET_ULP_INFO_NAME = 28, 1
SK_MEMINFO_OPTMEM = 6
_EACH = frozenset({INET_DIAG_INFO, INET_DIAG_SKMEMINFO, INET_DIAG_MD5SIG, INET_DIAG_SHUTDOWN,
                   INET_DIAG_ULP_INFO})  # fmt: skip


def ulp_name(info: bytes) -> str:
    """The name in an INET_DIAG_ULP_INFO attribute's payload ("tls", "espintcp", ...)."""
    at = 0
    while at + 4 <= len(info):
        length, typ = _NLA.unpack_from(info, at)
        if length < 4:
            break
        if typ & 0x3FFF == INET_ULP_INFO_NAME:
            return info[at + 4 : at + length].split(b"\0", 1)[0].decode(errors="replace")
        at += (length + 3) & ~3
    return "?"
_EACH_EXT = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1))


def inet_diag(family: int, protocol: int = socket.IPPROTO_TCP, states: int = 0xFFFFFFFF,
              only: set[int] | None = None, attrs: dict[int, dict[int, Any]] | None = None,
              each: dict[int, dict[int, bytes]] | None = None
              ) -> list[tuple[int, int, bytes, int, bytes, int]]:  # fmt: skip
    """The sockets of ``family`` and ``protocol`` of this thread's network namespace, in
    one sock_diag dump (what /proc/net/tcp shows, without its text): (inode, state,
    local address, local port, remote address, remote port), the addresses packed (4 or
    16 bytes, network order); with ``only``, just those inodes.  With ``attrs``, the
    dump asks for the congestion control, TOS and class id too, and ``attrs[inode]``
    gets each socket's attributes, type -> payload (and idiag_if as INET_DIAG_IF): one
    dict, not to be changed, for the sockets whose attributes are the same bytes (a
    server's connections mostly: parsed once).  With ``each`` too, the dump asks for
    tcp_info and the memory besides (which differ from socket to socket): they and the
    MD5 keys (:data:`_EACH`) go in ``each[inode]``, not in ``attrs``."""
    size = 4 if family == socket.AF_INET else 16
    out: list[tuple[int, int, bytes, int, bytes, int]] = []
    unpack, ino_of, nla = _INET_DIAG_MSG.unpack_from, _U32.unpack_from, _NLA.unpack_from
    parsed: dict[tuple[Any, ...], dict[int, Any]] = {}
    ext = 0 if attrs is None else _DIAG_EXT | (_EACH_EXT if each is not None else 0)
    for data, start, end in _inet_diag_msgs(family, protocol, states, ext):
        if only is not None and ino_of(data, start + _INO_AT)[0] not in only:
            continue
        (_fam, state, _timer, _retrans, sport, dport, src, dst, ifindex, _cookie,
         _expires, _rq, _wq, _uid, ino) = unpack(data, start)  # fmt: skip
        out.append((ino, state, src[:size], int.from_bytes(sport, "big"), dst[:size],
                    int.from_bytes(dport, "big")))  # fmt: skip
        if attrs is not None:
            if each is None:
                key: tuple[Any, ...] = (ifindex, data[start + _INET_DIAG_MSG.size : end])
            else:  # (the attributes but the socket's own, which go to each)
                mine = each[ino] = {}
                key, at = (ifindex,), start + _INET_DIAG_MSG.size
                rest = at
                while at + 4 <= end:
                    length, typ = nla(data, at)
                    if length < 4:
                        break
                    after = at + ((length + 3) & ~3)
                    if typ & 0x3FFF in _EACH:
                        mine[typ & 0x3FFF] = data[at + 4 : at + length]
                        key += (data[rest:at],)
                        rest = after
                    at = after
                key += (data[rest:end],)
            got = parsed.get(key)
            if got is None:
                got = parsed[key] = {INET_DIAG_IF: ifindex}
                at = start + _INET_DIAG_MSG.size
                while at + 4 <= end:
                    length, typ = nla(data, at)
                    if length < 4:
                        break
                    if each is None or typ & 0x3FFF not in _EACH:
                        got[typ & 0x3FFF] = data[at + 4 : at + length]
                    at += (length + 3) & ~3
            attrs[ino] = got
    return out


_UNIX_DIAG_REQ = struct.Struct("=BBHIII2I")  # struct unix_diag_req
_UNIX_DIAG_MSG = struct.Struct("=BBBBI8x")  # struct unix_diag_msg (its cookie not read)
_UNIX_LISTEN, _UDIAG_SHOW_NAME, _UNIX_DIAG_NAME = 10, 1, 0


def unix_listeners() -> dict[int, bytes]:
    """The listening unix sockets of this thread's network namespace, in one sock_diag
    dump (the kernel keeps the others out: udiag_states): inode -> its address (b"" for
    none; an abstract one starts with a NUL)."""
    req = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 1 << _UNIX_LISTEN, 0, _UDIAG_SHOW_NAME,
                              0xFFFFFFFF, 0xFFFFFFFF)  # fmt: skip
    out: dict[int, bytes] = {}
    for _mtype, data, start, end in _dump(NETLINK_SOCK_DIAG, socket.SOCK_DGRAM,
                                          SOCK_DIAG_BY_FAMILY, req, "sock_diag unix",
                                          1 << 16, 10):  # fmt: skip
        ino = _UNIX_DIAG_MSG.unpack_from(data, start)[4]
        out[ino] = b""
        for typ, a, b in _attrs(data, start + _UNIX_DIAG_MSG.size, end):
            if typ == _UNIX_DIAG_NAME:
                out[ino] = bytes(data[a:b])
    return out


def tcp_orphans(family: int, port: int) -> list[tuple[int, bytes, bytes, int, int, int]]:
    """The TCP sockets without a file (inode 0) on local ``port`` of this thread's
    network namespace: (state, local address, remote address (both packed, 4 or 16
    bytes), remote port, interface, bytes received and not read), in one dump; their
    times are asked one by one (:class:`TcpTimes`)."""
    size = 4 if family == socket.AF_INET else 16
    out: list[tuple[int, bytes, bytes, int, int, int]] = []
    for data, start, _end in _inet_diag_msgs(family, socket.IPPROTO_TCP, 0xFFFFFFFF, 0):
        (_fam, state, _timer, _retrans, sport, dport, src, dst, ifindex, _cookie,
         _expires, rq, _wq, _uid, ino) = _INET_DIAG_MSG.unpack_from(data, start)  # fmt: skip
        if ino or int.from_bytes(sport, "big") != port:
            continue
        out.append((state, src[:size], dst[:size], int.from_bytes(dport, "big"), ifindex, rq))
    return out


INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_INET_DIAG_REQ_ONE = struct.Struct("=BBBBI2s2s16s16sIII")  # inet_diag_req_v2, a socket id


class TcpTimes:
    """The times of TCP sockets' tcp_info, asked of sock_diag one socket at a time (an
    exact lookup by addresses, INET_DIAG_INFO) on one netlink socket of this thread's
    network namespace: each answer is read at its own moment, microseconds apart.

    A connection waiting in a listener's accept queue has never received nor sent
    data: its times count from the moment the kernel made it (tcp_create_openreq_child
    sets icsk_ack.lrcvtime and lsndtime to the jiffies of then; tcp_get_info gives, in
    ms, the jiffies at the moment of the answer minus those)."""

    def __init__(self) -> None:
        self.nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                NETLINK_SOCK_DIAG)  # fmt: skip
        self.nl.settimeout(10)

    def close(self) -> None:
        self.nl.close()

    def __enter__(self) -> TcpTimes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def ask(self, family: int, local: bytes, lport: int, remote: bytes, rport: int,
            ifindex: int) -> tuple[int, int, int] | None:  # fmt: skip
        """(state, ms since the last data received, ms since the last data sent) of the
        connection, None if it is gone."""
        req = _INET_DIAG_REQ_ONE.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1),
                                      0, 0xFFFFFFFF, lport.to_bytes(2, "big"),
                                      rport.to_bytes(2, "big"), local, remote, ifindex,
                                      INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)  # fmt: skip
        self.nl.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST,
                                 2, 0) + req)  # fmt: skip
        data = self.nl.recv(1 << 16)
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, 0)
        if mtype == _NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, _NLMSG.size)[0]
            if err == errno.ENOENT:
                return None
            raise OSError(err, f"{os.strerror(err)} [sock_diag one socket]")
        start, end = _NLMSG.size, min(length, len(data))
        state = data[start + 1]
        for atype, a, aend in _attrs(data, start + _INET_DIAG_MSG.size, end):
            if atype == INET_DIAG_INFO and aend - a >= _TCPI_TIMES_AT + _TCPI_TIMES.size:
                sent, _ack_sent, recv, _ack_recv = _TCPI_TIMES.unpack_from(
                    data, a + _TCPI_TIMES_AT)
                return state, recv, sent
        raise OSError(errno.EIO, "sock_diag: an answer without tcp_info")


_jiffy: list[int] = []


def jiffy_ms() -> int:
    """How many ms a jiffy lasts at most (1000/HZ rounded up, from the kernel's config:
    /boot/config-RELEASE or /proc/config.gz); 10 (HZ=100, the coarsest) if neither can
    be read, which can only make two times read apart look closer than they are."""
    if not _jiffy:
        import gzip
        import re

        text = ""
        for path in (f"/boot/config-{os.uname().release}", "/proc/config.gz"):
            try:
                with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
                    text = f.read()
                break
            except OSError:
                continue
        m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
        hz = int(m.group(1)) if m else 100
        _jiffy.append(-(-1000 // hz) if hz > 0 else 10)
    return _jiffy[0]
