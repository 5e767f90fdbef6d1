"""Socket and terminal bindings and pure parsers (issue 11): struct sizes as in
include/uapi/linux/tcp.h, /proc/net/tcp and igmp parsed from captured text, the raw
termios cryo copies a pty's queues through, the TCP checksum."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import tempfile

from cryo.engine import inet, netlock, tty
from cryo.linux import net as N

TCP4 = b"""\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21573 1 0
   1: 0100007F:1F90 0100007F:D9E6 01 00000000:00000000 00:00000000 00000000     0        0 22831 1 0
"""
TCP6 = (b"  sl  local_address remote_address st ...\n"
        b"   0: 00000000000000000000000001000000:1B59 00000000000000000000000001000000:A2B4"
        b" 08 00000000:00000000 00:00000000 00000000     0        0 30000 1 0\n"
        b"   1: 0000000000000000FFFF00000100007F:1B5A 0000000000000000FFFF00000100007F:A2B5"
        b" 01 00000000:00000000 00:00000000 00000000     0        0 30001 1 0\n")
IGMP = b"""\
Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     2      V3
\t\t\t\t030201EF     1 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
"""
IGMP6 = b"""\
1    lo              ff020000000000000000000000000001     1 0000000C 0
1    lo              ff0500000000000000000000000000fb     1 00000004 0
2    eth0            ff0200000000000000000001ff000001     1 00000004 0
"""


def test_struct_sizes() -> None:
    assert ctypes.sizeof(N.tcp_repair_window) == 20
    assert ctypes.sizeof(N.tcp_repair_opt) == 8
    assert ctypes.sizeof(N.tcp_info_head) == 32
    assert N.tcp_info_head.tcpi_unacked.offset == 24
    assert N.tcp_info_head.tcpi_sacked.offset == 28


def test_parse_proc_net_tcp() -> None:
    assert inet.parse_proc_net_tcp(TCP4) == {
        21573: (10, ("127.0.0.1", 8080, "0.0.0.0", 0)),
        22831: (1, ("127.0.0.1", 8080, "127.0.0.1", 55782)),
    }
    got = inet.parse_proc_net_tcp(TCP6)
    assert got[30000] == (8, ("::1", 7001, "::1", 41652))
    assert got[30001] == (1, ("::ffff:7f00:1", 7002, "::ffff:7f00:1", 41653))
    # an IPv4-mapped connection travels, and is locked, as IPv4
    assert netlock._elements([got[30001][1], got[30000][1]]) == (
        ["127.0.0.1 . 7002 . 127.0.0.1 . 41653"], ["::1 . 7001 . ::1 . 41652"])


def test_parse_igmp() -> None:
    assert inet.parse_igmp(IGMP, False) == ["239.1.2.3"]
    assert inet.parse_igmp(IGMP6, True) == ["ff05::fb"]


def test_raw_termios() -> None:
    cooked = struct.pack("IIII", 0o2502, 0o5, 0o277, 0o105073) + b"\0" + bytes(range(1, 20))
    raw = tty._raw(cooked)
    iflag, oflag, cflag, lflag = struct.unpack_from("IIII", raw)
    assert not iflag & 0o400 and not oflag & 1 and cflag == 0o277  # no ICRNL, OPOST
    assert not lflag & (0o1 | 0o2 | 0o10)  # no ISIG, ICANON, ECHO
    assert raw[17 + 5] == 0 and raw[17 + 6] == 0  # VTIME, VMIN
    assert len(raw) == len(cooked) and raw[17 + 7 :] == cooked[17 + 7 :]


def test_checksum() -> None:
    # RFC 1071's example: the one's complement sum of these words is 0xddf2
    assert inet._checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_unix_listeners_names_only_the_listening() -> None:
    """One sock_diag dump of the namespace's listening unix sockets (what the cryo.app
    agent search asks instead of a getxattr per fd): a listener with its abstract name,
    a path one with its path, not a bound socket that does not listen."""
    tag = os.urandom(6).hex().encode()
    with tempfile.TemporaryDirectory() as tmp, \
            socket.socket(socket.AF_UNIX) as abstract, socket.socket(socket.AF_UNIX) as path, \
            socket.socket(socket.AF_UNIX) as bound:  # fmt: skip
        abstract.bind(b"\0cryo-app/test-" + tag)
        abstract.listen()
        path.bind(f"{tmp}/s")
        path.listen()
        bound.bind(b"\0cryo-app/bound-" + tag)
        got = N.unix_listeners()
        ino = {s: os.fstat(s.fileno()).st_ino for s in (abstract, path, bound)}
        assert got[ino[abstract]] == b"\0cryo-app/test-" + tag
        assert got[ino[path]].split(b"\0")[0] == f"{tmp}/s".encode()
        assert ino[bound] not in got


def test_ulp_name_of_a_diag_attribute() -> None:
    """INET_DIAG_ULP_INFO's payload as tcp_diag_put_ulp writes it (nested: the name,
    then the ULP's own info), which check_diag refuses by that name: kTLS cannot be
    set up on this kernel (no tls module), so the refusal itself is not run here."""

    def nla(typ: int, payload: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(payload), typ) + payload + \
            b"\0" * (-len(payload) % 4)  # fmt: skip

    info = nla(N.INET_ULP_INFO_NAME, b"tls\0") + nla(2, nla(1, struct.pack("=H", 0x0304)))
    assert N.ulp_name(info) == "tls"
    assert N.ulp_name(nla(2, b"\0" * 4)) == "?"
    assert N.INET_DIAG_ULP_INFO in N._EACH  # (kept per socket, as the MD5 keys)
