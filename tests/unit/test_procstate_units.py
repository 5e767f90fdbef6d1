"""Process state (issue 9) without a process: struct layouts, the /proc/PID/timers
parser on captured text, the rewrite of an interrupted sleep."""

import ctypes
import struct

from cryo import procfs
from cryo.engine import registers
from cryo.linux import structs as S
from cryo.linux.consts import ERESTART, SYS


def test_struct_layouts() -> None:
    assert ctypes.sizeof(S.sched_attr) == 56  # SCHED_ATTR_SIZE_VER1
    assert S.sched_attr.sched_nice.offset == 16
    assert S.sched_attr.sched_util_min.offset == 48
    assert ctypes.sizeof(S.user_cap_header) == 8
    assert ctypes.sizeof(S.user_cap_data) == 12
    assert ctypes.sizeof(S.sock_filter) == 8
    assert ctypes.sizeof(S.sock_fprog) == 16
    assert S.sock_fprog.filter.offset == 8
    assert ctypes.sizeof(S.seccomp_metadata) == 16


TIMERS = b"""ID: 0
signal: 34/0000000000001092
notify: signal/tid.1234
ClockID: 1
ID: 1
signal: 35/000000000000002a
notify: signal/pid.1200
ClockID: 0
ID: 2
signal: 14/0000000000000000
notify: none/pid.1200
ClockID: 1
"""


def test_timers_aimed_at_a_thread() -> None:
    """The kernel prints SIGEV_THREAD_ID as "signal/tid.N": not a process-wide timer."""
    a, b, c = procfs.parse_timers(TIMERS)
    assert (a.notify, a.to_thread, a.notify_tid, a.sigev_value) == ("signal", True, 1234, 0x1092)
    assert (b.notify, b.to_thread, b.notify_tid) == ("signal", False, 1200)
    assert (c.notify, c.to_thread, c.clock) == ("none", False, 1)


def _interrupted(nr: int, **args: int) -> bytes:
    regs = S.user_regs_struct(orig_rax=nr, rax=(-ERESTART.RESTARTBLOCK) & (2**64 - 1),
                              rip=0x1002, **args)  # fmt: skip
    return bytes(regs)


def test_sleep_keeps_its_remaining_time() -> None:
    r = registers.final_regs(_interrupted(SYS.nanosleep, rdi=0x100, rsi=0x200))
    assert (r.rax, r.rip, r.rdi, r.rsi) == (SYS.nanosleep, 0x1000, 0x200, 0x200)
    r = registers.final_regs(_interrupted(SYS.nanosleep, rdi=0x100, rsi=0))
    assert r.rdi == 0x100, "without rem the whole sleep runs again"
    r = registers.final_regs(_interrupted(SYS.clock_nanosleep, rdi=1, rsi=0, rdx=0x100,
                                          r10=0x200))  # fmt: skip
    assert (r.rax, r.rdx, r.r10) == (SYS.clock_nanosleep, 0x200, 0x200)
    r = registers.final_regs(_interrupted(SYS.clock_nanosleep, rdi=1, rsi=1, rdx=0x100,
                                          r10=0x200))  # fmt: skip
    assert r.rdx == 0x100, "TIMER_ABSTIME: the same deadline"


def test_seccomp_notifier_filters_are_seen() -> None:
    from cryo.engine import seccomp

    def insn(code: int, k: int) -> bytes:
        return struct.pack("<HBBI", code, 0, 0, k)

    allow = insn(0x20, 0) + insn(0x06, 0x7FFF0000)
    notify = insn(0x20, 0) + insn(0x06, 0x7FC00000)
    assert not seccomp._notifies(allow)
    assert seccomp._notifies(notify)
