"""Write tracking (engine/dirty.py) under store checkpoints: after the first version,
only the pages written since are copied, and restarts are still byte for byte; a child
forked after the arming is checkpointed too (its inherited tracking fd is left out)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from cryo import store
from tests.conftest import Procs, Victim, reap
from tests.integration.test_tree import kill_tree, tree_pids


def test_second_version_copies_only_written_pages(procs: Procs, build: Any,
                                                  tmp_path: Path) -> None:  # fmt: skip
    v = procs.spawn([build("bigmem"), str(tmp_path / "out.txt"), "64"], tmp_path / "out.txt")
    v.wait_ok_after(1)
    st = str(tmp_path / "store")
    _, first = store.checkpoint(v.pid, st, "app")
    assert first.memory_bytes >= 64 << 20
    v.wait_ok_after(max(v.oks()) + 2)
    version, second = store.checkpoint(v.pid, st, "app", signal_after=signal.SIGKILL)
    assert version == 2
    assert second.memory_bytes < 2 << 20, "only what was written since version 1"
    reap(v.pid)
    last = max(v.oks())
    r = store.restart(st, "app")
    procs.track(r.pid)
    Victim(r.pid, v.out).wait_ok_after(last + 3)  # it checks its 64 MiB every round
    assert not v.fails()


def test_child_forked_after_arming(procs: Procs, tmp_path: Path) -> None:
    out, go = tmp_path / "out.txt", tmp_path / "go"
    code = ("import os,sys,time\nf=open(sys.argv[1],'a',buffering=1)\nkid=0\ni=0\n"
            "while True:\n"
            "  if not kid and os.path.exists(sys.argv[2]):\n"
            "    kid=os.fork()\n"
            "    if kid==0:\n"
            "      while True: time.sleep(0.01)\n"
            "  f.write(f'tick {i} {kid}\\n'); i+=1; time.sleep(0.01)\n")
    v = procs.spawn([sys.executable, "-c", code, str(out), str(go)], out)
    v.wait_ok_after(3)
    st = str(tmp_path / "store")
    store.checkpoint(v.pid, st, "app", scope="tree")
    go.touch()
    v.wait_for(lambda ls: ls[-1].split()[-1] != "0")
    pids = tree_pids(v.pid)
    assert len(pids) == 2
    for p in pids:
        procs.track(p)
    _, res = store.checkpoint(v.pid, st, "app", scope="tree", signal_after=signal.SIGKILL)
    assert len(res.pids) == 2
    kill_tree(pids)
    last = max(v.oks())
    r = store.restart(st, "app")
    for p in r.pids.values():
        procs.track(p)
    assert sorted(r.pids.values()) == sorted(pids)
    Victim(r.pid, out).wait_ok_after(last + 3)
    time.sleep(0.05)
    assert all(Path(f"/proc/{p}").exists() for p in pids)


def test_pages_dropped_since_the_last_version_stay_dropped(procs: Procs, build: Any,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Pages written, saved in version 1, then dropped (MADV_DONTNEED): the tracking
    reports them written (their PTEs were cleared), and version 2 saved them as pages
    of zeros, so the restarted process had them resident again.  Now only pages present
    (or swapped) are taken: they stay out of memory, and read as zeros when touched."""
    out, go = tmp_path / "out.txt", tmp_path / "go"
    v = procs.spawn([build("resident"), str(out), str(go)], out)
    v.wait_ok_after(1)
    st = str(tmp_path / "store")
    store.checkpoint(v.pid, st, "app")
    go.write_text("")
    deadline = time.monotonic() + 10
    while "dropped" not in v.lines():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    v.wait_ok_after(max(v.oks()) + 1)
    version, _ = store.checkpoint(v.pid, st, "app", signal_after=signal.SIGKILL)
    assert version == 2
    reap(v.pid)
    last = max(v.oks())
    r = store.restart(st, "app")
    procs.track(r.pid)
    Victim(r.pid, out).wait_ok_after(last + 3)
    assert not v.fails()
