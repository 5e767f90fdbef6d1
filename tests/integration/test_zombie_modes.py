"""Zombies whose task /proc shows in seccomp's strict mode (1), killed by seccomp (3) or
under SCHED_DEADLINE come back so (issue 9; before, restored with Seccomp 0 and
SCHED_OTHER, exit 0), with the wait status each leaves, and a zombie killed by SIGKILL
comes back at all (before, the restart failed: rt_sigaction EINVAL).  victims/zombiemodes.c,
engine/tree.py finish_zombie."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_tree import tree_pids

pytestmark = pytest.mark.timeout(120)


def _shown(pid: int) -> tuple[str, str, str, str]:
    """Its Seccomp line, scheduling policy and priority (stat 41 and 18), wait status
    (stat 52)."""
    status = Path(f"/proc/{pid}/status").read_text()
    seccomp = next(x for x in status.splitlines() if x.startswith("Seccomp:"))
    f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return seccomp, f[38], f[15], f[49]


def _plain_core_pattern() -> bool:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    return bool(pattern) and not pattern.startswith("|") and "/" not in pattern


def _reap_all(pids: list[int]) -> None:
    for p in pids:
        reap(p)


def test_zombies_in_seccomp_and_deadline_modes(procs: Procs, build: Callable[[str], str],
                                               tmp_path: Path) -> None:  # fmt: skip
    """Eight zombies (victims/zombiemodes.c): strict mode and exit, a call it forbids
    (mode 3, SIGKILL), SCHED_DEADLINE, strict mode and SIGTERM, strict mode and SIGSEGV,
    a filter's kill (mode 3, SIGSYS), SIGKILL (before, every restart of a process with
    a zombie killed by SIGKILL failed: rt_sigaction EINVAL), SIGSEGV with a core dumped
    (before, its status came back without WCOREDUMP): after a restart, each as /proc
    showed it (seccomp mode, policy, priority, wait status), reaped with its status; no
    core file left by the restart."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("zombiemodes"), str(out), str(tmp_path)], out)
    kids = [int(x) for x in v.wait_line("ready").split()[1:]]
    before = {p: _shown(p) for p in kids}
    assert [b[0].split()[1] for b in before.values()] == ["1", "3", "0", "1", "1", "3", "0",
                                                         "0"], before  # fmt: skip
    if _plain_core_pattern():
        assert os.WCOREDUMP(int(before[kids[7]][3])), before  # (dumped in tmp_path)
    assert before[kids[2]][1] == "6", before
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--tree", "--kill")
    assert r.returncode == 0, r.stderr
    _reap_all([v.pid, *kids])  # (the zombies come to us, a subreaper)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout.split()[-1]))
    new = tree_pids(root)[1:]
    assert new == sorted(kids), (new, kids)
    after = {p: _shown(p) for p in new}
    assert after == before
    (tmp_path / "go").touch()
    Victim(root, out).wait_line("done")
    got = [x for x in out.read_text().splitlines() if x.startswith("status")]
    assert got == [f"status {i + 1} {int(before[p][3]):x}" for i, p in enumerate(kids)], got
    assert not list(Path("/tmp").glob("cryo-core-*")), "the restart left a core behind"
