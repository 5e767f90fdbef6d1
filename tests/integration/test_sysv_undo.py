"""A process holding SysV semaphore undo adjustments (semop with SEM_UNDO) is refused:
nothing shows the adjustments, so a restored copy could not give its semaphores back at
exit.  The same semaphore raised without SEM_UNDO is restored (the set itself is the
kernel's, kept apart from the process), unless the process has a second thread: making
it gave the process an undo list, which cannot be told from one with adjustments."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from cryo.linux import sysv
from tests.conftest import Procs
from tests.integration.test_procstate import cycle, refused_untouched


@pytest.mark.parametrize("mode", ["undo", "plain", "threads"])
def test_sem_undo(procs: Procs, build: Any, tmp_path: Path, mode: str) -> None:
    """Before: the SEM_UNDO process was checkpointed, exit 0; the kill of the original
    applied its adjustment (the semaphore went from 2 to 0) and the restored copy found
    the semaphore it held given back."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("semundo"), str(out), mode], out)
    v.wait_ok_after(1)
    semid = int(v.lines()[0].split()[1])
    try:
        if mode != "plain":
            refused_untouched(v, tmp_path / "img", "SEM_UNDO")
        else:
            v = cycle(procs, v, tmp_path / "img")
            assert not v.fails()
    finally:
        with contextlib.suppress(OSError):
            sysv.semctl(semid, 0, sysv.IPC_CMD.RMID)
