"""/proc parsers on captured text."""

from cryo import procfs

STAT = (b"4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 "
        b"1000 200 18446744073709551615 94000 95000 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 "
        b"96000 97000 98000 140100 140200 140200 140300 0\n")  # fmt: skip


def test_stat_name_with_parentheses() -> None:
    st = procfs.parse_stat(STAT)
    assert st.pid == 4242
    assert st.comm == "a (weird) name"
    assert (st.state, st.ppid, st.pgrp, st.session) == ("S", 1, 4242, 4242)
    assert (st.start_code, st.end_code, st.start_stack) == (94000, 95000, 140000)
    assert (st.start_data, st.end_data, st.start_brk) == (96000, 97000, 98000)
    assert (st.arg_start, st.arg_end, st.env_start, st.env_end) == (140100, 140200, 140200, 140300)
    assert st.exit_signal == 17


SMAPS = b"""55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 1234   /usr/bin/cat with space
Size:                  4 kB
VmFlags: rd mr mw me dw sd
7ffd1a2b3000-7ffd1a2d4000 rw-p 00000000 00:00 0      [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
"""


def test_smaps_keeps_flags_and_paths() -> None:
    vmas = procfs.parse_smaps_flags(SMAPS)
    assert [v.path for v in vmas] == ["/usr/bin/cat with space", "[stack]"]
    assert vmas[1].flags == ("rd", "wr", "mr", "mw", "me", "gd", "ac")
    assert vmas[0].prot == 1 and vmas[1].prot == 3 and not vmas[1].shared
    assert vmas[1].size == 0x21000


def test_fdinfo_and_limits_and_timers() -> None:
    info = procfs.parse_fdinfo(b"pos:\t1234\nflags:\t02100002\nmnt_id:\t25\nino:\t99\n")
    assert (info.pos, info.flags, info.mnt_id, info.ino) == (1234, 0o2100002, 25, 99)
    limits = procfs.parse_limits(
        b"Limit                     Soft Limit           Hard Limit           Units     \n"
        b"Max open files            200                  300                  files     \n"
        b"Max core file size        unlimited            unlimited            bytes     \n"
    )
    assert limits[7] == (200, 300)
    assert limits[4] == (procfs.RLIM_INFINITY, procfs.RLIM_INFINITY)
    timers = procfs.parse_timers(
        b"ID: 0\nsignal: 35/000000000000002a\nnotify: signal/pid.77\nClockID: 1\n"
        b"ID: 3\nsignal: 14/0000000000000000\nnotify: thread/tid.78\nClockID: 0\n"
    )
    assert [(t.id, t.signal, t.sigev_value, t.notify, t.notify_tid, t.clock) for t in timers] == [
        (0, 35, 42, "signal", 77, 1), (3, 14, 0, "thread", 78, 0)]
