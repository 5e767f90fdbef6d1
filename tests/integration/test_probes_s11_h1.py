"""Probes of session 11 (h1): terminals as a user runs them (issues 11 and 9), what a
restart gave back different, each in the smallest program that shows it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import VICTIMS, Procs, Victim, cli_cycle, run_cryo

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kill", [True, False], ids=["restart", "running"])
@pytest.mark.parametrize("mode", ["ixon", "tco", "pktnone", "pktstop", "pktstart",
                                  "pktdostop", "pktflush"])  # fmt: skip
def test_pty_flow_stop_and_packet_status(procs: Procs, tmp_path: Path, mode: str,
                                         kill: bool) -> None:  # fmt: skip
    """A pty's output stopped by ^S (^Q goes on) or by tcflow (only TCOON does), and the
    control status a packet-mode master has not read yet, come back as they were, and a
    checkpoint of the running program leaves them so: the copy of the queues (raw
    settings for a moment) started a terminal stopped with ^S (even a refused checkpoint
    did), the restart lost a tcflow's stop, and the master's next read returned a
    TIOCPKT_DOSTOP of cryo's making, or none where one was pending."""
    go = tmp_path / "go"
    v = procs.spawn([sys.executable, str(VICTIMS / "ptyflow_s11_h1.py"), str(tmp_path / "out"),
                     str(go), mode], tmp_path / "out")  # fmt: skip
    v.wait_line("ready")
    if kill:
        v = Victim(cli_cycle(procs, v.pid, tmp_path / "img"), v.out)
    else:
        r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"


def test_refused_checkpoint_leaves_a_stopped_terminal_stopped(procs: Procs, tmp_path: Path
                                                              ) -> None:  # fmt: skip
    """A checkpoint refused (exit 9: a pipe whose other end is outside) after the pty
    was read leaves its ^S stop as it was (it started it: the raw settings of the copy)."""
    go = tmp_path / "go"
    r, w = os.pipe()
    try:
        v = procs.spawn([sys.executable, str(VICTIMS / "ptyflow_s11_h1.py"),
                         str(tmp_path / "out"), str(go), "ixon"], tmp_path / "out",
                        pass_fds=(r,))  # fmt: skip
        v.wait_line("ready")
        res = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"))
        assert res.returncode == 9 and "pipe" in res.stderr, res.stderr
    finally:
        os.close(r)
        os.close(w)
    go.touch()
    assert v.wait_line("checked", timeout=20) == "checked good"
