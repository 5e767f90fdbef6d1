/* A file mapped privately, read in part (issue 9, session 10 h8): argv OUT FILE.  The
 * file (16 MiB of a pattern, made by the test) is mapped PROT_READ, MAP_PRIVATE; the
 * first 8 pages and pages 1000-1003 are read, the rest never.  Each round the pages read
 * are checked ("ok N", or "FAIL what"). */
#include "common.h"
#include <sys/mman.h>
#include <sys/stat.h>

#define PAGE 4096

static unsigned long long want(long i) { return mix((unsigned long long)i); }

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) { FAIL("open %s", argv[2]); _exit(1); }
    const unsigned long long *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) { FAIL("mmap"); _exit(1); }
    close(fd);
    long per = PAGE / sizeof *p, pages[12];
    for (int k = 0; k < 12; k++) pages[k] = k < 8 ? k : 1000 + k - 8;
    report("ready %p", (void *)p);
    for (long round = 0;; round++) {
        int bad = 0;
        for (int k = 0; k < 12 && !bad; k++) {
            long i = pages[k] * per;
            if (p[i] != want(i) || p[i + per - 1] != want(i + per - 1)) { FAIL("page %ld", pages[k]); bad = 1; }
        }
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
