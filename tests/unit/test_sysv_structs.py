"""SysV IPC structs and constants against the kernel headers (x86_64).

The numbers below come from include/uapi/asm-generic/{ipcbuf,msgbuf,shmbuf}.h and
arch/x86/include/uapi/asm/sembuf.h; when a C compiler and the kernel headers are installed,
the same sizes and offsets are also checked by compiling a probe.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from cryo.linux import sysv

S = sysv

SIZES = {
    "ipc64_perm": 48,
    "msqid64_ds": 120,
    "semid64_ds": 104,
    "shmid64_ds": 112,
    "msginfo": 32,
    "seminfo": 40,
    "shm_info": 48,
    "sembuf": 6,
}

OFFSETS = {
    ("ipc64_perm", "key"): 0,
    ("ipc64_perm", "uid"): 4,
    ("ipc64_perm", "cgid"): 16,
    ("ipc64_perm", "mode"): 20,
    ("ipc64_perm", "seq"): 24,
    ("msqid64_ds", "msg_stime"): 48,
    ("msqid64_ds", "msg_cbytes"): 72,
    ("msqid64_ds", "msg_qnum"): 80,
    ("msqid64_ds", "msg_qbytes"): 88,
    ("msqid64_ds", "msg_lspid"): 96,
    ("msqid64_ds", "msg_lrpid"): 100,
    ("semid64_ds", "sem_otime"): 48,
    ("semid64_ds", "sem_ctime"): 64,
    ("semid64_ds", "sem_nsems"): 80,
    ("shmid64_ds", "shm_segsz"): 48,
    ("shmid64_ds", "shm_atime"): 56,
    ("shmid64_ds", "shm_cpid"): 80,
    ("shmid64_ds", "shm_lpid"): 84,
    ("shmid64_ds", "shm_nattch"): 88,
    ("shm_info", "shm_tot"): 8,
    ("sembuf", "sem_flg"): 4,
}


@pytest.mark.parametrize(("name", "size"), sorted(SIZES.items()))
def test_sizeof(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(S, name)) == size


@pytest.mark.parametrize(("struct", "field", "offset"), [(*k, v) for k, v in OFFSETS.items()])
def test_offsets(struct: str, field: str, offset: int) -> None:
    assert getattr(getattr(S, struct), field).offset == offset


def test_constants() -> None:
    assert S.IPC.CREAT == 0o1000
    assert S.IPC.EXCL == 0o2000
    assert S.IPC.NOWAIT == 0o4000
    assert S.MSG.COPY == 0o40000
    assert S.MSG_CMD.STAT_ANY == 13
    assert S.SEM.SETALL == 17
    assert S.SEM.STAT_ANY == 20
    assert S.SHM_CMD.STAT_ANY == 15
    assert S.SHM.DEST == 0o1000
    assert S.SHM.LOCKED == 0o2000
    assert S.SYS_IPC.msgrcv == 70
    assert S.SYS_IPC.shmdt == 67
    assert S.SYS_IPC.semtimedop == 220
    assert S.MSGBUF_HEADER == 8


PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/ipc.h>
#include <linux/msg.h>
#include <linux/sem.h>
#include <linux/shm.h>
#define Z(s) printf("%s %zu\n", #s, sizeof(struct s));
#define O(s, f) printf("%s.%s %zu\n", #s, #f, offsetof(struct s, f));
int main(void) {
@BODY@
    return 0;
}
"""


def test_against_kernel_headers(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/linux/msg.h").exists():
        pytest.skip("no C compiler or no kernel headers")
    lines = [f"Z({n})" for n in SIZES] + [f"O({s}, {f})" for s, f in OFFSETS]
    src = tmp_path / "probe.c"
    src.write_text(PROBE.replace("@BODY@", "\n".join(lines)))
    exe = tmp_path / "probe"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True, timeout=60)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=10)
    got = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())
    for name, size in SIZES.items():
        assert int(got[name]) == size, name
    for (struct, field), offset in OFFSETS.items():
        assert int(got[f"{struct}.{field}"]) == offset, (struct, field)
