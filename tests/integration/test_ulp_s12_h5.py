"""A TCP socket with an upper-layer protocol (TCP_ULP: kTLS's "tls", "espintcp") is
refused, exit 9, also where cryo lacks CAP_NET_ADMIN (issue 11): sock_diag shows
INET_DIAG_ULP_INFO only to CAP_NET_ADMIN, so such a cryo saw no ULP and would restore a
plain TCP socket, exit 0.  It now asks getsockopt(SOL_TCP, TCP_ULP) of its duplicate
(inet.ulp_of), which needs no privilege.

This kernel has no tls or espintcp (tcp_available_ulp: "mptcp" alone, which only the
kernel's own sockets may take: EOPNOTSUPP), so no socket of a program can hold a ULP
here.  What runs: the call on plain sockets (no name) and on an MPTCP socket (the
kernel's "mptcp": the call reads a real name); a cryo without CAP_NET_ADMIN (root with
it out of its bounding set, as an unprivileged cryo's sock_diag is blind) checkpoints a
program with a connection (--tcp-close, as TCP_REPAIR needs CAP_NET_ADMIN), no false
refusal; and the refusal path end to end with the kernel's answer alone made up
(inet.ulp_of giving "tls" in that cryo): exit 9 naming it, the program going on
untouched; with CAP_NET_ADMIN the same cryo trusts sock_diag (exit 0)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cryo.engine import inet
from tests.conftest import Procs

pytestmark = pytest.mark.timeout(120)

VICTIM = r"""
import socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
out.write("ready\n")
i = 0
while True:
    c.sendall(b"x")
    if a.recv(1) != b"x":
        out.write("FAIL the connection lost its byte\n")
    out.write(f"ok {i}\n"); i += 1
    time.sleep(0.05)
"""
# the cryo command line with the kernel's answer to TCP_ULP made up ("tls")
TLS_CRYO = ("import sys\nfrom cryo.engine import inet\ninet.ulp_of = lambda s: 'tls'\n"
            "from cryo.cli import console\nsys.argv[0] = 'cryo'\nsys.exit(console())\n")


def test_the_call_on_plain_and_mptcp_sockets() -> None:
    """TCP_ULP reads "" on a listener, both ends of a connection, an unbound socket
    (IPv4 and IPv6), and the kernel's own name on an MPTCP socket."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as lsn, socket.socket(family) as fresh:
            lsn.bind((host, 0))
            lsn.listen()
            with socket.create_connection(lsn.getsockname()[:2]) as c:
                a, _ = lsn.accept()
                with a:
                    assert [inet.ulp_of(x) for x in (lsn, c, a, fresh)] == [""] * 4
    try:
        m = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
    except OSError:
        pytest.skip("no MPTCP here: the call's reading of a name not shown")
    with m:
        assert inet.ulp_of(m) == "mptcp"


def _cryo(argv: list[str], net_admin: bool, *args: str) -> subprocess.CompletedProcess[str]:
    drop = [] if net_admin else ["setpriv", "--bounding-set=-net_admin"]
    return subprocess.run([*drop, *argv, *args], capture_output=True, text=True,
                          timeout=60, close_fds=True)  # fmt: skip


def test_a_ulp_refused_without_net_admin(procs: Procs, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv to run cryo without CAP_NET_ADMIN")
    out = tmp_path / "out"
    v = procs.spawn([sys.executable, "-c", VICTIM, str(out)], out)
    v.wait_line("ready")
    v.wait_ok_after(2)
    real, tls = [sys.executable, "-m", "cryo"], [sys.executable, "-c", TLS_CRYO]
    args = ("checkpoint", str(v.pid), "--tcp-close")
    r = _cryo(tls, False, *args, "-D", str(tmp_path / "refused"))
    assert r.returncode == 9, r.stderr
    assert "'tls' (TCP_ULP)" in r.stderr and "127.0.0.1:" in r.stderr, r.stderr
    last = max(v.oks())
    v.wait_ok_after(last + 3)  # (untouched: its connection goes on)
    # with CAP_NET_ADMIN, sock_diag's answer (no ULP) is the one taken
    r = _cryo(tls, True, *args, "-D", str(tmp_path / "admin"))
    assert r.returncode == 0, r.stderr
    # the real call without CAP_NET_ADMIN: nothing to refuse
    r = _cryo(real, False, *args, "-D", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr
    last = max(v.oks())
    v.wait_ok_after(last + 3)
    assert not v.fails(), v.fails()
