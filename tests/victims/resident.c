/* Residency survives incremental checkpoints: 256 pages, each written with its own
 * bytes; once argv[2] (a file) exists, every other page is dropped (MADV_DONTNEED) and
 * never touched again.  Each round: the kept pages hold their bytes, the dropped ones
 * are not resident (mincore: they were dropped, a restore must not fill them). */
#include "common.h"
#include <sys/mman.h>
#include <sys/stat.h>

#define N 256
#define PG 4096UL

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) return 2;
    unsigned char *m = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 3;
    for (size_t i = 0; i < N; i++) memset(m + i * PG, (int)(i % 250) + 1, PG);
    int dropped = 0;
    unsigned char vec[N];
    report("ready %d", getpid());
    for (long r = 0;; r++) {
        struct stat st;
        if (!dropped && stat(argv[2], &st) == 0) {
            for (size_t i = 1; i < N; i += 2) madvise(m + i * PG, PG, MADV_DONTNEED);
            dropped = 1;
            report("dropped");
        }
        int ok = 1;
        if (mincore(m, N * PG, vec)) { FAIL("mincore %d", errno); ok = 0; }
        for (size_t i = 0; i < N && ok; i++) {
            if (dropped && i % 2) {
                if (vec[i] & 1) { FAIL("dropped page %zu is resident again", i); ok = 0; }
            } else if (m[i * PG] != (unsigned char)(i % 250 + 1) || m[i * PG + PG - 1] != (unsigned char)(i % 250 + 1)) {
                FAIL("page %zu lost its bytes", i); ok = 0;
            }
        }
        if (ok) report("ok %ld", r);
        nap(50);
    }
}
