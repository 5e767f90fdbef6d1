/* Registers survive: general purpose (r12-r15 held across the loop), SSE/AVX/AVX-512
 * (ymm8-15, zmm16-31 when the CPU has them), MXCSR and the x87 control word.
 * The sleep is a raw syscall in asm so nothing else touches the vector registers. */
#include "common.h"
#include <cpuid.h>

static int have_avx512(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 16) & 1;
}

__attribute__((target("avx512f"))) static int zmm_round(const unsigned char *p, unsigned char *g) {
    struct timespec ts = {0, 20000000};
    __asm__ volatile(
        "vmovdqu64 0(%[p]), %%zmm16\n\t" "vmovdqu64 64(%[p]), %%zmm20\n\t"
        "vmovdqu64 128(%[p]), %%zmm31\n\t"
        "mov $35, %%eax\n\t" "mov %[ts], %%rdi\n\t" "xor %%esi, %%esi\n\t" "syscall\n\t"
        "vmovdqu64 %%zmm16, 0(%[g])\n\t" "vmovdqu64 %%zmm20, 64(%[g])\n\t"
        "vmovdqu64 %%zmm31, 128(%[g])\n\t"
        :: [p] "r"(p), [g] "r"(g), [ts] "r"(&ts)
        : "rax", "rdi", "rsi", "rcx", "r11", "memory", "xmm16", "xmm20", "xmm31");
    return memcmp(p, g, 192) != 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    unsigned char pat[64 * 32], got[64 * 32];
    for (size_t i = 0; i < sizeof pat; i++) pat[i] = (unsigned char)(mix(i) & 0xff);
    int avx512 = have_avx512();
    unsigned mxcsr = 0x1f80 | (2 << 13); /* round up */
    unsigned short fcw = 0x037f | (3 << 10); /* round toward zero */
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    __asm__ volatile("fldcw %0" :: "m"(fcw));
    report("ready %d avx512=%d", getpid(), avx512);
    for (long round = 0;; round++) {
        unsigned long long r[4];
        struct timespec ts = {0, 20000000};
        /* load vector registers, sleep by raw syscall, store them back */
        __asm__ volatile(
            "vmovdqu 0(%[p]), %%ymm8\n\t" "vmovdqu 32(%[p]), %%ymm9\n\t"
            "vmovdqu 64(%[p]), %%ymm10\n\t" "vmovdqu 96(%[p]), %%ymm11\n\t"
            "vmovdqu 128(%[p]), %%ymm12\n\t" "vmovdqu 160(%[p]), %%ymm13\n\t"
            "vmovdqu 192(%[p]), %%ymm14\n\t" "vmovdqu 224(%[p]), %%ymm15\n\t"
            "mov $0x1111111111111111, %%r12\n\t" "mov $0x2222222222222222, %%r13\n\t"
            "mov $0x3333333333333333, %%r14\n\t" "mov $0x4444444444444444, %%r15\n\t"
            "mov $35, %%eax\n\t" "mov %[ts], %%rdi\n\t" "xor %%esi, %%esi\n\t" "syscall\n\t"
            "vmovdqu %%ymm8, 0(%[g])\n\t" "vmovdqu %%ymm9, 32(%[g])\n\t"
            "vmovdqu %%ymm10, 64(%[g])\n\t" "vmovdqu %%ymm11, 96(%[g])\n\t"
            "vmovdqu %%ymm12, 128(%[g])\n\t" "vmovdqu %%ymm13, 160(%[g])\n\t"
            "vmovdqu %%ymm14, 192(%[g])\n\t" "vmovdqu %%ymm15, 224(%[g])\n\t"
            "mov %%r12, 0(%[r])\n\t" "mov %%r13, 8(%[r])\n\t" "mov %%r14, 16(%[r])\n\t" "mov %%r15, 24(%[r])\n\t"
            :: [p] "r"(pat), [g] "r"(got), [r] "r"(r), [ts] "r"(&ts)
            : "rax", "rdi", "rsi", "rcx", "r11", "r12", "r13", "r14", "r15", "memory",
              "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
        int bad = 0;
        if (memcmp(pat, got, 256)) { FAIL("ymm8-15"); bad = 1; }
        if (r[0] != 0x1111111111111111ULL || r[1] != 0x2222222222222222ULL ||
            r[2] != 0x3333333333333333ULL || r[3] != 0x4444444444444444ULL) { FAIL("r12-r15"); bad = 1; }
        if (avx512 && zmm_round(pat + 256, got + 256)) { FAIL("zmm16/20/31"); bad = 1; }
        unsigned m2; unsigned short f2;
        __asm__ volatile("stmxcsr %0" : "=m"(m2));
        __asm__ volatile("fnstcw %0" : "=m"(f2));
        if ((m2 & ~0x3fU) != (mxcsr & ~0x3fU)) { FAIL("mxcsr %#x", m2); bad = 1; }
        if (f2 != fcw) { FAIL("x87 control word %#x", f2); bad = 1; }
        if (!bad) report("ok %ld", round);
    }
}
