"""Established TCP connections' buffer sizes and their locks (SO_BUF_LOCK): restored in
repair mode, a connection gets its sizes back with SO_SNDBUFFORCE and SO_RCVBUFFORCE,
which lock both; a size the program did not fix must be the kernel's to tune again, as
it was.  victims/tcpbufs.c holds two loopback connections (one as the kernel made it,
one with a receive buffer set and a send buffer locked by SO_BUF_LOCK) and checks each
socket's locks and sizes every round."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim
from tests.integration.test_sockets import Netns, cycle, ns, spawn  # noqa: F401 (ns: fixture)

pytestmark = pytest.mark.timeout(120)
VICTIMS = Path(__file__).resolve().parent.parent / "victims"


def test_buffer_locks_restored(procs: Procs, ns: Netns, tmp_path: Path) -> None:  # noqa: F811
    """The four sockets' SO_BUF_LOCK (0, 0, 1, 2), SO_SNDBUF and SO_RCVBUF are the same
    after --tcp-established's checkpoint and restart (before: 3 for each, every size
    locked, a restored connection's buffers never tuned again)."""
    exe = tmp_path / "tcpbufs"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                    str(VICTIMS / "tcpbufs.c")], check=True)  # fmt: skip
    out = tmp_path / "out"
    v = spawn(procs, ns, [str(exe), str(out)], out)
    assert v.wait_line("ready") == "ready 0 0 1 2", v.fails()
    v.wait_ok_after(1)
    last = max(v.oks())
    pid = cycle(procs, ns, v.pid, tmp_path / "img", "--tcp-established")
    v = Victim(pid, out)
    v.wait_ok_after(last + 3)
    assert not v.fails(), v.fails()
    assert ns.tables() == []
