/* A local descriptor table of its own survives (found by probing, docs/state-coverage.md):
 * three entries written with modify_ldt (a 32-bit data segment, a 16-bit code segment in
 * pages, one marked not present), %es loaded with the first (a selector of the LDT,
 * which a restart can set only once the table exists); each round the table read back
 * must be byte for byte the same, and %es still that selector. */
#include "common.h"
#include <asm/ldt.h>
#include <sys/syscall.h>

static int write_entry(struct user_desc u) { return syscall(SYS_modify_ldt, 0x11, &u, sizeof u); }

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (write_entry((struct user_desc){.entry_number = 3, .base_addr = 0x1000, .limit = 0xfff,
                                       .seg_32bit = 1, .useable = 1}) ||
        write_entry((struct user_desc){.entry_number = 17, .base_addr = 0x12345678,
                                       .limit = 0x2f, .contents = 2, .read_exec_only = 1,
                                       .limit_in_pages = 1}) ||
        write_entry((struct user_desc){.entry_number = 40, .base_addr = 0xabc000, .limit = 7,
                                       .seg_32bit = 1, .seg_not_present = 1})) {
        FAIL("modify_ldt %d", errno); return 1;
    }
    unsigned short sel = 3 << 3 | 4 | 3, es;  /* index 3, table LDT, RPL 3 */
    __asm__ volatile("mov %0, %%es" : : "r"(sel));
    static unsigned char want[8192], got[8192];
    long n0 = syscall(SYS_modify_ldt, 0, want, sizeof want);
    report("ready %ld", n0);
    for (long r = 0;; r++) {
        memset(got, 0, sizeof got);
        long n = syscall(SYS_modify_ldt, 0, got, sizeof got);
        __asm__ volatile("mov %%es, %0" : "=r"(es));
        if (n != n0 || memcmp(got, want, sizeof got)) FAIL("the LDT differs (%ld bytes read)", n);
        else if (es != sel) FAIL("es %#x, want %#x", es, sel);
        else report("ok %ld", r);
        nap(100);
    }
}
