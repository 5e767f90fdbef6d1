"""Sockets and terminals probed in session 8 by h7 (issue 9, docs/state-coverage.md:
"Found by probing, session 8 (h7)"): victims/probes8b.c sets one piece of state per
mode, is checkpointed, killed and restarted, and checks itself every round ("ok N" or
"FAIL what"); after go it does its last step ("done")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Procs, run_cryo, spawn_mode
from tests.integration.test_procstate import cycle

pytestmark = pytest.mark.timeout(120)
VICTIMS = Path(__file__).resolve().parent.parent / "victims"


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("probes8b") / "probes8b"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out),
                    str(VICTIMS / "probes8b.c"), "-lrt", "-lpthread"], check=True)  # fmt: skip
    return str(out)


MODES = {
    "inetopts": "TCP, UDP, UDPv6 socket options a fresh socket does not have",
    "unixopts": "unix stream and datagram sockets' options, the program's own SO_PEEK_OFF",
    "ptyldisc": "a pty slave with line discipline N_NULL, its raw mode and window size",
    "ptyhup": "a pty master whose slave is closed: POLLHUP, EIO",
    "autobind": "a unix datagram socket's autobound name",
    "udpshut": "a connected UDP socket shut for reading (SHUT_RD)",
    "reuseport": "two UDP sockets of one SO_REUSEPORT group share its datagrams",
    "sarestart": "a thread blocked in read: a handler without SA_RESTART ends it (EINTR),"
                 " one with SA_RESTART does not",
}
LAST = {"unixopts", "ptyldisc", "sarestart"}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_state_restored(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """Each mode's state (MODES) is the same after the restart, checked by the process."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    v = cycle(procs, v, tmp_path / "img")
    (tmp_path / "go").touch()
    if mode in LAST:
        v.wait_for(lambda _: "done" in v.lines() or bool(v.fails()))
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


def test_datagrams_from_named_senders_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A unix datagram socket holding datagrams from senders bound to names of their own
    (a control socket's clients, as wpa_supplicant's): the restart would send them again
    from no address (recvfrom gives none, a reply goes nowhere), exit 0 before.  Now
    refused, exit 9 naming the sender, no image; the process then reads each datagram
    with its sender's address and its replies arrive."""
    from cryo.errors import ExitCode

    v = spawn_mode(procs, exe, tmp_path, "dgramfrom")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "holds a datagram from @cryo-p8b-" in r.stderr, r.stderr
    assert not img.exists()
    (tmp_path / "go").touch()
    v.wait_for(lambda _: "done" in v.lines() or bool(v.fails()))
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
