"""The CPU's instruction-set extensions, saved with the image and checked at restart.

A program picks its code for the CPU it starts on: glibc's string functions (ifuncs),
a JIT, numpy's and OpenSSL's kernels test CPUID once and use AVX2, AVX-512, SHA or AES
instructions from then on.  Restarted on a CPU without one of them, the process dies of
SIGILL at its next use, long after cryo said the restart succeeded.  So the checkpoint
keeps, in HEAD["cpu"], the vendor and the feature flags of /proc/cpuinfo, and a restart
on a CPU that lacks one of :data:`ISA` (the extensions a program can use in user space)
is refused up front (ImageIncompatible, exit 6, naming them) unless ``--ignore-cpu``
says the program will not miss them.  A CPU that has more is fine, and flags that only
the kernel sees (a hypervisor's, mitigations, power management) are not compared.  The
size of the extended register state is registers.py's check (an xsave layout that
differs cannot be restored at all).  CRIU makes the same check (its `--cpu-cap`).
"""

from __future__ import annotations

import functools
from typing import Any

from cryo.errors import ImageIncompatible

# /proc/cpuinfo's names of the extensions a program can use in user space (ssse3, sse4_1,
# "pni" is SSE3, "abm" LZCNT, "3dnowprefetch" PREFETCHW, "ospke" RDPKRU/WRPKRU)
ISA = frozenset((
    "fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2",
    "sse4a", "cx16", "popcnt", "movbe", "lahf_lm", "lm", "abm", "3dnowprefetch", "aes",
    "pclmulqdq", "vaes", "vpclmulqdq", "gfni", "sha_ni", "sha512", "sm3", "sm4", "rdrand",
    "rdseed", "rdtscp", "rdpid", "clflush", "clflushopt", "clwb", "erms", "fsrm", "fsrs",
    "fzrm", "avx", "avx2", "fma", "fma4", "f16c", "xop", "tbm", "bmi1", "bmi2", "adx",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi",
    "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16",
    "avx512_fp16", "avx512_4vnniw", "avx512_4fmaps", "avx512_vp2intersect", "avx_vnni",
    "avx_vnni_int8", "avx_vnni_int16", "avx_ifma", "avx_ne_convert", "amx_tile", "amx_bf16",
    "amx_int8", "amx_fp16", "amx_complex", "movdiri", "movdir64b", "serialize", "waitpkg",
    "cldemote", "enqcmd", "fsgsbase", "xsave", "xsaveopt", "xsavec", "xsaves", "xgetbv1",
    "ospke",
))


@functools.cache
def here() -> dict[str, Any]:
    """HEAD["cpu"]: this CPU's vendor and flags (of its first processor)."""
    vendor, flags = "", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "flags":
                flags = value.split()
                break
    return {"vendor": vendor, "flags": sorted(flags)}


def check(saved: dict[str, Any] | None, ignore: bool = False) -> None:
    """Refuse an image whose CPU had extensions this one lacks (unless ``ignore``)."""
    if not saved or ignore:
        return
    missing = sorted((set(saved["flags"]) & ISA) - set(here()["flags"]))
    if missing:
        raise ImageIncompatible(f"the image was made on a CPU with {', '.join(missing)},"
                                f" which this one ({here()['vendor'] or 'unknown'}) lacks:"
                                " a program that chose its code for them at its start would"
                                " die of SIGILL (--ignore-cpu restarts it anyway)")  # fmt: skip
