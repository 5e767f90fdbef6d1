"""Struct sizes and offsets match the kernel headers they cite (x86_64)."""

import ctypes

from cryo.linux import structs as S


def test_sizes() -> None:
    assert ctypes.sizeof(S.user_regs_struct) == 216
    assert ctypes.sizeof(S.kernel_sigaction) == 32
    assert ctypes.sizeof(S.stack_t) == 24
    assert ctypes.sizeof(S.itimerval) == 32
    assert ctypes.sizeof(S.itimerspec) == 32
    assert ctypes.sizeof(S.sigevent) == 64
    assert ctypes.sizeof(S.prctl_mm_map) == 104
    assert ctypes.sizeof(S.clone_args) == 88
    assert ctypes.sizeof(S.pm_scan_arg) == 96
    assert ctypes.sizeof(S.page_region) == 24
    assert ctypes.sizeof(S.ptrace_rseq_configuration) == 24


def test_offsets() -> None:
    assert S.user_regs_struct.orig_rax.offset == 120
    assert S.user_regs_struct.rip.offset == 128
    assert S.user_regs_struct.fs_base.offset == 168
    assert S.prctl_mm_map.auxv_size.offset == 96
    assert S.prctl_mm_map.exe_fd.offset == 100
    assert S.clone_args.set_tid.offset == 64
    assert S.pm_scan_arg.return_mask.offset == 88
    assert S.stack_t.ss_size.offset == 16
