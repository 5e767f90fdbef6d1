"""The target survives the death of cryo at every moment (issue 9): many checkpoints
of a running 64 MiB process, each killed outright with its worker (SIGKILL to the
process group, so the tracer dies) at a seeded moment, half of them while its injected
calls run; after each the target must go on as it was (tests/integration/test_harm.py,
kill_cryo_at_random_moments, which CI runs with 16 tries).  Prints where the kills
landed and the seed.  Run as root:  python bench/harm_soak.py [TRIES] [SEED]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import Victim
from tests.integration.test_harm import kill_cryo_at_random_moments

from benchlib import build, kill_all
from cryo.linux import libc
from cryo.linux.consts import PR


def main() -> None:
    tries = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else time.time_ns() % 1_000_000
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    work = Path(tempfile.mkdtemp(prefix="cryo-harm-soak-"))
    out = work / "out.txt"
    p = subprocess.Popen([build("bigmem", work), str(out), "64"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)  # fmt: skip
    try:
        v = Victim(p.pid, out)
        v.wait_ok_after(1, timeout=30)
        print(f"seed {seed}, {tries} tries", flush=True)
        t0 = time.monotonic()
        moments = kill_cryo_at_random_moments(v, work, tries, seed)
        print(f"the target survived all {tries} ({time.monotonic() - t0:.0f} s): {moments}")
    finally:
        kill_all([p.pid])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
