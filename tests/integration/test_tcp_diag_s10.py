"""What the checkpoint of an established TCP connection takes from the TCP table's
sock_diag dump instead of asking the socket (issue 11: 1,000 connections): its
SO_MAX_PACING_RATE from tcp_info (inet.diag_known; asked only where it is not the
default's), whether it may have a socket filter from its option memory (inet._no_filter:
SO_GET_FILTER asked only where sk_omem_alloc is not 0), its TCP MD5 keys (check_diag:
no second dump; test_probes_s9_h2::test_tcp_md5_keys_refused), and its sk_shutdown: a
connection shut for reading (SHUT_RD, which neither getsockopt nor the TCP state
shows) came back open for reading, exit 0, before.  victims/tcpdiag_s10.c holds three
loopback connections: one with pacing rates set on both ends, one as the kernel made
it, one shut for reading at one end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim
from tests.integration.test_sockets import Netns, cycle, ns, spawn  # noqa: F401 (ns: fixture)

pytestmark = pytest.mark.timeout(120)
VICTIMS = Path(__file__).resolve().parent.parent / "victims"


def _victim(tmp_path: Path) -> Path:
    exe = tmp_path / "tcpdiag_s10"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                    str(VICTIMS / "tcpdiag_s10.c")], check=True)  # fmt: skip
    return exe


def test_pacing_rates_and_shutdown_restored(procs: Procs, ns: Netns,  # noqa: F811
                                            tmp_path: Path) -> None:  # fmt: skip
    """SO_MAX_PACING_RATE of both ends (12345 and 3e9: 32 bits of ~0 but 3e9 fits) and
    of the connection without (none) are the same after --tcp-established's checkpoint
    and restart, each read from tcp_info's tcpi_max_pacing_rate; the connection shut
    for reading still reads 0 at once (before: EAGAIN, 'c3 shut for reading')."""
    out = tmp_path / "out"
    v = spawn(procs, ns, [str(_victim(tmp_path)), str(out)], out)
    v.wait_line("ready")
    v.wait_ok_after(1)
    last = max(v.oks())
    pid = cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
    v = Victim(pid, out)
    v.wait_ok_after(last + 3)
    assert not v.fails(), v.fails()
    assert ns.tables() == []


def test_connection_with_a_filter_refused(procs: Procs, ns: Netns,  # noqa: F811
                                          tmp_path: Path) -> None:  # fmt: skip
    """A connection with a socket filter attached (sock_diag shows none but its option
    memory) is refused, exit 9, the victim going on untouched, no lock left."""
    out = tmp_path / "out"
    v = spawn(procs, ns, [str(_victim(tmp_path)), str(out), "filter"], out)
    v.wait_line("ready")
    v.wait_ok_after(1)
    r = ns.cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill",
                "--tcp-established")  # fmt: skip
    assert r.returncode == 9, r.stderr
    assert "socket filter" in r.stderr, r.stderr
    last = max(v.oks())
    v.wait_ok_after(last + 2)
    assert not v.fails(), v.fails()
    assert ns.tables() == []
