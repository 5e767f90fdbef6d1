"""Kernel structs, named and ordered as the kernel does (x86_64).

Each struct cites its header; tests/unit/test_structs.py checks sizes and offsets.
"""

from __future__ import annotations

import ctypes

c_u64 = ctypes.c_uint64
c_u32 = ctypes.c_uint32
c_i32 = ctypes.c_int32
c_i64 = ctypes.c_int64


class iovec(ctypes.Structure):
    """include/uapi/linux/uio.h"""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class user_regs_struct(ctypes.Structure):
    """arch/x86/include/asm/user_64.h: 27 * 8 = 216 bytes."""

    _fields_ = [
        (name, ctypes.c_ulong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]  # fmt: skip


class kernel_sigaction(ctypes.Structure):
    """arch/x86/include/asm/signal.h (struct sigaction as rt_sigaction sees it)."""

    _fields_ = [
        ("sa_handler", c_u64),
        ("sa_flags", c_u64),
        ("sa_restorer", c_u64),
        ("sa_mask", c_u64),
    ]


class stack_t(ctypes.Structure):
    """include/uapi/asm-generic/signal.h"""

    _fields_ = [("ss_sp", c_u64), ("ss_flags", c_i32), ("_pad", c_i32), ("ss_size", c_u64)]


class timeval(ctypes.Structure):
    _fields_ = [("tv_sec", c_i64), ("tv_usec", c_i64)]


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", c_i64), ("tv_nsec", c_i64)]


class itimerval(ctypes.Structure):
    """include/uapi/linux/time.h"""

    _fields_ = [("it_interval", timeval), ("it_value", timeval)]


class itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", timespec), ("it_value", timespec)]


class sigevent(ctypes.Structure):
    """include/uapi/asm-generic/siginfo.h: 64 bytes."""

    _fields_ = [
        ("sigev_value", c_u64),
        ("sigev_signo", c_i32),
        ("sigev_notify", c_i32),
        ("sigev_notify_thread_id", c_i32),
        ("_pad", ctypes.c_byte * 44),
    ]


class prctl_mm_map(ctypes.Structure):
    """include/uapi/linux/prctl.h: 104 bytes."""

    _fields_ = [
        ("start_code", c_u64),
        ("end_code", c_u64),
        ("start_data", c_u64),
        ("end_data", c_u64),
        ("start_brk", c_u64),
        ("brk", c_u64),
        ("start_stack", c_u64),
        ("arg_start", c_u64),
        ("arg_end", c_u64),
        ("env_start", c_u64),
        ("env_end", c_u64),
        ("auxv", c_u64),
        ("auxv_size", c_u32),
        ("exe_fd", c_u32),
    ]


class ptrace_rseq_configuration(ctypes.Structure):
    """include/uapi/linux/ptrace.h"""

    _fields_ = [
        ("rseq_abi_pointer", c_u64),
        ("rseq_abi_size", c_u32),
        ("signature", c_u32),
        ("flags", c_u32),
        ("pad", c_u32),
    ]


class ptrace_peeksiginfo_args(ctypes.Structure):
    _fields_ = [("off", c_u64), ("flags", c_u32), ("nr", c_i32)]


SIGINFO_SIZE = 128


class clone_args(ctypes.Structure):
    """include/uapi/linux/sched.h (CLONE_ARGS_SIZE_VER2 = 88)."""

    _fields_ = [
        ("flags", c_u64),
        ("pidfd", c_u64),
        ("child_tid", c_u64),
        ("parent_tid", c_u64),
        ("exit_signal", c_u64),
        ("stack", c_u64),
        ("stack_size", c_u64),
        ("tls", c_u64),
        ("set_tid", c_u64),
        ("set_tid_size", c_u64),
        ("cgroup", c_u64),
    ]


class page_region(ctypes.Structure):
    """include/uapi/linux/fs.h (PAGEMAP_SCAN output)."""

    _fields_ = [("start", c_u64), ("end", c_u64), ("categories", c_u64)]


class pm_scan_arg(ctypes.Structure):
    """include/uapi/linux/fs.h: 96 bytes."""

    _fields_ = [
        ("size", c_u64),
        ("flags", c_u64),
        ("start", c_u64),
        ("end", c_u64),
        ("walk_end", c_u64),
        ("vec", c_u64),
        ("vec_len", c_u64),
        ("max_pages", c_u64),
        ("category_inverted", c_u64),
        ("category_mask", c_u64),
        ("category_anyof_mask", c_u64),
        ("return_mask", c_u64),
    ]


class rlimit64(ctypes.Structure):
    _fields_ = [("rlim_cur", c_u64), ("rlim_max", c_u64)]


class uffdio_api(ctypes.Structure):
    """include/uapi/linux/userfaultfd.h"""

    _fields_ = [("api", c_u64), ("features", c_u64), ("ioctls", c_u64)]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", c_u64), ("len", c_u64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", c_u64), ("ioctls", c_u64)]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", c_u64)]


class user_cap_header(ctypes.Structure):
    """include/uapi/linux/capability.h: struct __user_cap_header_struct."""

    _fields_ = [("version", c_u32), ("pid", c_i32)]


class user_cap_data(ctypes.Structure):
    """include/uapi/linux/capability.h: struct __user_cap_data_struct (two of them for
    _LINUX_CAPABILITY_VERSION_3: bits 0-31, then 32-63)."""

    _fields_ = [("effective", c_u32), ("permitted", c_u32), ("inheritable", c_u32)]


class sched_attr(ctypes.Structure):
    """include/uapi/linux/sched/types.h (SCHED_ATTR_SIZE_VER1 = 56)."""

    _fields_ = [
        ("size", c_u32),
        ("sched_policy", c_u32),
        ("sched_flags", c_u64),
        ("sched_nice", c_i32),
        ("sched_priority", c_u32),
        ("sched_runtime", c_u64),
        ("sched_deadline", c_u64),
        ("sched_period", c_u64),
        ("sched_util_min", c_u32),
        ("sched_util_max", c_u32),
    ]


class sock_filter(ctypes.Structure):
    """include/uapi/linux/filter.h: one classic BPF instruction (8 bytes)."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", c_u32)]  # fmt: skip


class sock_fprog(ctypes.Structure):
    """include/uapi/linux/filter.h (16 bytes with padding)."""

    _fields_ = [("len", ctypes.c_uint16), ("filter", c_u64)]


class seccomp_metadata(ctypes.Structure):
    """include/uapi/linux/ptrace.h"""

    _fields_ = [("filter_off", c_u64), ("flags", c_u64)]
