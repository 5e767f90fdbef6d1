"""Session 10 (h8): the last known wrong restores of issue 9 (signals taken as a thread is
seized, pending signals at the freeze, ...), each checked by the program itself."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.errors import ExitCode
from cryo.linux import sysv
from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo, spawn_mode
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


def _pattern(path: Path, size: int) -> None:
    """victims/mapped_s10.c's pattern: word i is mix(i) (common.h), on disk, not cached."""
    x = np.arange(size // 8, dtype=np.uint64)
    for k, m in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53)):
        x ^= x >> np.uint64(k)
        x *= np.uint64(m)
    x ^= x >> np.uint64(33)
    with open(path, "wb") as f:
        f.write(x.astype("<u8").tobytes())
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _mapping_rss(pid: int, start: int) -> int:
    """The Rss (kB) of the mapping of ``pid`` that begins at ``start``."""
    lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith(f"{start:x}-"))
    return int(next(x for x in lines[at:] if x.startswith("Rss:")).split()[1])


def _cached_pages(path: Path) -> int:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE,
                                          mmap.PROT_READ | mmap.PROT_WRITE) as m:  # fmt: skip
        arr = (ctypes.c_char * len(m)).from_buffer(m)
        addr = ctypes.addressof(arr)
        del arr
        return sum(b & 1 for b in sysv.mincore(addr, len(m), 4096))


def test_checkpoint_faults_in_no_page_of_a_mapped_file(
    procs: Procs, tmp_path: Path
) -> None:
    """A 16 MiB file mapped privately, 12 of its pages read: the checkpoint hashed the
    bytes of every page the image does not hold through the process's own mapping,
    which faulted them all in (the mapping's Rss 48 kB -> 16 MiB, and the file read
    into the page cache).  Now the pages the process has are read through its mapping,
    the others from the file (no process of the checkpoint watches files), and the ones
    that read brought into the page cache are dropped again: the same Rss and page
    cache after the checkpoint; the hash is still the file's (a restart after a change
    of a page never read is refused, exit 12; unchanged, it restarts)."""
    exe = tmp_path / "mapped_s10"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                    str(VICTIMS / "mapped_s10.c")], check=True)  # fmt: skip
    data, out = tmp_path / "data", tmp_path / "out.txt"
    _pattern(data, 16 << 20)
    v = procs.spawn([str(exe), str(out), str(data)], out)
    start = int(v.wait_line("ready").split()[1], 16)
    v.wait_ok_after(1)
    rss, cached = _mapping_rss(v.pid, start), _cached_pages(data)
    assert rss < 8 << 10 and cached < 3072, (rss, cached)  # (of 16 MiB, 4096 pages)
    checkpoint(v.pid, str(tmp_path / "img0"))
    assert (_mapping_rss(v.pid, start), _cached_pages(data)) == (rss, cached)
    v.wait_ok_after(max(v.oks()) + 1)
    last = max(v.oks())
    checkpoint(v.pid, str(tmp_path / "img"), signal_after=signal.SIGKILL)
    reap(v.pid)
    st = os.stat(data)
    with open(data, "r+b") as f:  # a page never read, changed (its mtime kept)
        was = os.pread(f.fileno(), 7, 3000 * 4096)
        os.pwrite(f.fileno(), b"changed", 3000 * 4096)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == ExitCode.FILE_CHANGED, r.stderr
    with open(data, "r+b") as f:
        os.pwrite(f.fileno(), was, 3000 * 4096)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    v = Victim(procs.track(restart(str(tmp_path / "img")).pid), out)
    v.wait_ok_after(last + 2)
