"""Session 10 (h8): the last known wrong restores of issue 9 (signals taken as a thread is
seized, pending signals at the freeze, ...), each checked by the program itself."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from tests.conftest import Procs, Victim, reap, spawn_mode
from tests.integration.test_procstate import build_threaded

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def probes_s9h3(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("probes_s9h3"), "probes_s9h3")


def _lost_traps(v: Victim) -> list[str]:
    return [x for x in v.fails() if x.startswith("FAIL a stretch gave")]


def _run_past(v: Victim, n: int) -> None:
    v.wait_for(lambda _: max(v.oks()) > n or bool(_lost_traps(v)))


def test_a_thread_single_stepping_itself_loses_no_trap(
    procs: Procs, probes_s9h3: str, tmp_path: Path
) -> None:
    """A thread that single-steps itself (EFLAGS.TF, a SIGTRAP handler counting) through
    stretches of 200 nops.  Restarted, a stretch counted one trap less every time: the
    SIGTRAP pending at the freeze was taken by cryo's first call into the thread (held
    back and given back, but no longer pending when the image read the pending signals).
    Let run on, about one checkpoint in ten lost one: the thread had taken the SIGTRAP as
    it was seized, its signal-delivery stop was taken for the interrupt's and let go of
    with no signal.  Now three restarts and twelve checkpoints lose none."""
    v = spawn_mode(procs, probes_s9h3, tmp_path, "selfstep")
    for i in range(3):
        last = max(v.oks())
        img = tmp_path / f"cycle{i}"
        checkpoint(v.pid, str(img), signal_after=signal.SIGKILL)
        reap(v.pid)
        v = Victim(procs.track(restart(str(img)).pid), v.out)
        shutil.rmtree(img)
        _run_past(v, last + 3)
        assert not _lost_traps(v), (i, _lost_traps(v))
    for i in range(12):
        img = tmp_path / f"img{i}"
        checkpoint(v.pid, str(img))
        shutil.rmtree(img)
        _run_past(v, max(v.oks()) + 2)
    assert not _lost_traps(v), _lost_traps(v)


@pytest.fixture(scope="module")
def jobctl_s9(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_threaded(tmp_path_factory.mktemp("jobctl"), "jobctl_s9")


def test_continued_report_of_a_threaded_child_kept(
    procs: Procs, jobctl_s9: str, tmp_path: Path
) -> None:
    """As test_probes_s9_h1::test_continued_report_kept, the child with two threads: its
    parent had taken the stop's report, not the continue's.  Restarted, the report was
    lost (the restart stopped and continued only a child of one thread); now
    waitid(WCONTINUED | WNOWAIT) still finds it, once, and no thread of the child is
    left stopped (the parent checks every round)."""
    from tests.integration.test_probes_s9_h1 import test_stops_of_children_reported_as_before

    test_stops_of_children_reported_as_before(procs, jobctl_s9, tmp_path, "continuedmt")
