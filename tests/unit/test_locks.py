"""Lock lines of /proc/locks and fdinfo (engine/locks.py), on captured text."""

from cryo.engine import locks

PROC_LOCKS = b"""1: FLOCK  ADVISORY  WRITE 30365 fe:00:2147600 0 EOF
2: OFDLCK ADVISORY  WRITE -1 fe:00:2147599 100 109
3: POSIX  ADVISORY  WRITE 30365 fe:00:2147599 5 14
3: -> POSIX  ADVISORY  WRITE 30400 fe:00:2147599 5 14
4: LEASE  BREAKING  READ 30365 fe:00:2147601 0 EOF
"""


def test_proc_locks() -> None:
    got = locks.parse_proc_locks(PROC_LOCKS)
    assert [(x.kind, x.mode, x.pid, x.start, x.end) for x in got] == [
        ("FLOCK", "WRITE", 30365, 0, None), ("OFDLCK", "WRITE", -1, 100, 109),
        ("POSIX", "WRITE", 30365, 5, 14), ("LEASE", "READ", 30365, 0, None)]  # fmt: skip
    assert got[0].dev == (0xFE, 0) and got[0].ino == 2147600
    assert got[3].state == "BREAKING"
    assert str(got[2]) == "POSIX WRITE 5-14"


def test_fdinfo_locks() -> None:
    info = (b"pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t2147599\n"
            b"lock:\t1: POSIX  ADVISORY  READ 30365 fe:00:2147599 1000 EOF\n")  # fmt: skip
    (lk,) = locks.parse_fdinfo_locks(info)
    assert (lk.kind, lk.state, lk.mode, lk.start, lk.end) == ("POSIX", "ADVISORY", "READ", 1000,
                                                              None)  # fmt: skip


def test_flock_struct() -> None:
    raw = locks._flock_struct("WRITE", 5, 14)
    assert len(raw) == 32
    assert locks._flock_struct("READ", 1000, None)[8:24] == (1000).to_bytes(8, "little") + bytes(8)
