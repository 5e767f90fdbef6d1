"""/proc/sysvipc parsers, on captured text (no privileges needed)."""

from __future__ import annotations

import pytest

from cryo.ipc import Kind
from cryo.ipc.procfs import ParseError, parse

MSG = b"""       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime
      4660          0   640          10          5  8768     0     0     0     0     0 1795295563          0 1795295563
 -19088744      32769  1600           0          0     0     0  1000   100  1000   100          0          0 1795295600
"""  # noqa: E501

SEM = b"""       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime
       153          0   600         10     0     0     0     0          0 1795295563
"""

SHM = b"""       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
       119          0   600              10485760  8768  8768      0     0     0     0     0 1795295563 1795295563 1795295563                  8192                     0
         0      32768  3600                  4096  8800  8800      1     0     0     0     0 1795295563          0 1795295563                  4096                     0
"""  # noqa: E501


def test_msg() -> None:
    a, b = parse(Kind.MSG, MSG)
    assert (a.key, a.id, a.mode, a.size, a.count) == (4660, 0, 0o640, 10, 5)
    assert a.extra["lspid"] == 8768
    # a key above 0x7fffffff is printed negative; perms keep the flag bits (here IPC_CREAT)
    assert (b.key, b.id, b.mode, b.uid, b.gid) == (-19088744, 32769, 0o1600, 1000, 100)


def test_sem() -> None:
    (s,) = parse(Kind.SEM, SEM)
    assert (s.kind, s.key, s.id, s.mode, s.count, s.size) == (Kind.SEM, 153, 0, 0o600, 10, 0)


def test_shm() -> None:
    a, b = parse(Kind.SHM, SHM)
    assert (a.size, a.count, a.extra["rss"], a.extra["swap"]) == (10485760, 0, 8192, 0)
    assert b.mode & 0o1000 and b.mode & 0o2000  # SHM_DEST and SHM_LOCKED
    assert b.count == 1


def test_empty_and_header_only() -> None:
    assert parse(Kind.MSG, b"") == []
    assert parse(Kind.MSG, MSG.splitlines(keepends=True)[0]) == []


def test_a_new_column_is_ignored() -> None:
    lines = SEM.splitlines()
    text = lines[0] + b"   newcol\n" + lines[1] + b"   7\n"
    (s,) = parse(Kind.SEM, text)
    assert s.extra["newcol"] == 7


@pytest.mark.parametrize(
    "text",
    [
        SEM.replace(b" 10 ", b" x ", 1),  # not a number
        SEM + b"  1 2 3\n",  # a short line
        b"key perms uid\n1 600 0\n",  # columns missing
    ],
)
def test_bad_text(text: bytes) -> None:
    with pytest.raises(ParseError):
        parse(Kind.SEM, text)
