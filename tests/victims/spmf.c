/* SPMF (--save-files): linked with libspmf.so (spmflib.c); each tick it checks the
 * library's answers and its own code, which must keep working after the binary and
 * the library were replaced or deleted.  "ok N". */
#include "common.h"

extern long spmf_value(long i);
extern const char spmf_table[4096];

static long own(long i) { return i * 7 - 3; }

int main(int argc, char **argv) {
    open_report(argc, argv);
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        if (spmf_value(i) != i * 3 + 1) FAIL("library value %ld", i);
        if (spmf_table[i % 4096] != (char)(i % 4096 * 5)) FAIL("library table %ld", i);
        if (own(i) != i * 7 - 3) FAIL("own code");
        report("ok %ld", i);
        nap(20);
    }
}
