"""The written pages of a tracked process (engine/dirty.py) come out the same as a list
and as the array a store's sink takes (runs_as_arrays): the pages the process wrote
since its last version, in address order, whole runs; and the restart has them."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cryo import store
from cryo.engine import dirty
from tests.conftest import Procs, Victim, reap

pytestmark = pytest.mark.timeout(120)
PAGE = 4096
WRITES = [3, 10, 11, 12, 500, 1023]  # pages of its 4 MiB buffer written each round
CODE = """
import mmap, os, sys
f = open(sys.argv[1], "a", buffering=1)
buf = mmap.mmap(-1, 1024 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)  # (a huge page would be written whole)
for p in range(1024):
    buf[p * 4096] = 1
import ctypes
base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
f.write(f"base {base}\\n")
done = 0
while True:
    if os.path.exists(f"{sys.argv[2]}.{done + 1}"):
        done += 1
        for p in WRITES:
            buf[p * 4096 + 7] = (done * 31 + p) % 256
        f.write(f"done {done}\\n")
    f.write("ok 0\\n")
    import time; time.sleep(0.01)
""".replace("WRITES", repr(WRITES))


def test_written_pages_as_list_and_as_array(procs: Procs, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out, go = tmp_path / "out.txt", tmp_path / "go"
    v = procs.spawn([sys.executable, "-c", CODE, str(out), str(go)], out)
    v.wait_for(lambda ls: any(x.startswith("base ") for x in ls))
    base = next(int(x.split()[1]) for x in out.read_text().splitlines() if x.startswith("base "))
    st = str(tmp_path / "store")
    store.checkpoint(v.pid, st, "app", worker=False)  # armed
    real = dirty.written
    got: list[tuple[bool, Any, list[list[int]]]] = []

    def written(tr: Any, vmas: list[dict[str, Any]], present: list[tuple[int, int]],
                as_array: bool = False) -> Any:  # fmt: skip
        res = real(tr, vmas, present, as_array=force[0])
        # the copied-on-write pages of private file mappings count as written, always
        cow = [r for v in vmas if v["kind"] == "file"
               for r in dirty._within(present, v["start"], v["end"])]  # fmt: skip
        got.append((force[0], res, cow))
        return res

    monkeypatch.setattr(dirty, "written", written)
    force = [False]
    for rnd, as_array in ((1, False), (2, True), (3, True)):
        (tmp_path / f"go.{rnd}").touch()
        v.wait_for(lambda ls, rnd=rnd: f"done {rnd}" in ls)
        force[0] = as_array
        _, res = store.checkpoint(v.pid, st, "app", worker=False,
                                  **({"signal_after": signal.SIGKILL} if rnd == 3 else {}))
    assert [a for a, _, _ in got] == [False, True, True]
    want = [[base + 3 * PAGE, PAGE], [base + 10 * PAGE, 3 * PAGE], [base + 500 * PAGE, PAGE],
            [base + 1023 * PAGE, PAGE]]  # fmt: skip
    for as_array, res, cow in got:
        assert isinstance(res, np.ndarray) == as_array
        runs = res.tolist() if as_array else res
        assert runs == sorted(runs)
        if as_array:
            assert res.dtype == np.int64 and res.shape[1] == 2
        mine = [r for r in runs if base <= r[0] < base + 1024 * PAGE]
        assert mine == want, (as_array, mine)
        assert cow and set(map(tuple, cow)) <= set(map(tuple, runs)), as_array
    reap(v.pid)
    r = store.restart(st, "app")
    procs.track(r.pid)
    before = len(out.read_text().splitlines())
    Victim(r.pid, out).wait_for(lambda ls: len(ls) > before + 3)  # it goes on
    (tmp_path / "go.4").touch()
    Victim(r.pid, out).wait_for(lambda ls: "done 4" in ls)  # with its round count kept
