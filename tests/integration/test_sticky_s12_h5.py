"""An IPv6 socket with sticky extension headers (IPV6_HOPOPTS, IPV6_DSTOPTS,
IPV6_RTHDR, IPV6_RTHDRDSTOPTS: RFC 3542; put in every packet it sends) is refused,
exit 9, naming them, the program going on untouched with its headers: none is saved,
and before, the restart gave back the socket without them, exit 0 (the program read
its IPV6_DSTOPTS empty: 'FAIL ... lost').  [udp]: a UDP socket with destination
options; [tcp]: an IPv6 connection (--tcp-established) with hop-by-hop options, whose
segment size the restart would compute without them (inet._sync_mss)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import Procs
from tests.integration.test_sockets import Netns, ns, spawn  # noqa: F401 (ns: fixture)

pytestmark = pytest.mark.timeout(120)

VICTIM = r"""
import socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
kind, opt = sys.argv[2], int(sys.argv[3])
hdr = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # (next header, length 0: 8 bytes, a PadN)
if kind == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.setsockopt(socket.IPPROTO_IPV6, opt, hdr)
else:
    l = socket.socket(socket.AF_INET6); l.bind(("::1", 0)); l.listen()
    s = socket.create_connection(l.getsockname()[:2]); a, _ = l.accept()
    s.setsockopt(socket.IPPROTO_IPV6, opt, hdr)
out.write("ready\n")
i = 0
while True:
    if s.getsockopt(socket.IPPROTO_IPV6, opt, 64) != hdr:
        out.write(f"FAIL option {opt} lost\n")
    out.write(f"ok {i}\n"); i += 1
    time.sleep(0.05)
"""


@pytest.mark.parametrize("kind,opt,what", [("udp", 59, "IPV6_DSTOPTS"),
                                           ("tcp", 54, "IPV6_HOPOPTS")])  # fmt: skip
def test_sticky_extension_headers_refused(procs: Procs, ns: Netns,  # noqa: F811
                                          tmp_path: Path, kind: str, opt: int,
                                          what: str) -> None:  # fmt: skip
    out = tmp_path / "out"
    v = spawn(procs, ns, [sys.executable, "-c", VICTIM, str(out), kind, str(opt)], out)
    v.wait_line("ready")
    v.wait_ok_after(2)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 9, r.stderr
    assert f"sticky IPv6 extension headers ({what})" in r.stderr, r.stderr
    last = max(v.oks())
    v.wait_ok_after(last + 3)  # (untouched, its header kept)
    assert not v.fails(), v.fails()
    assert ns.tables() == []
