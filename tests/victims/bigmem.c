/* A process with N MiB of touched anonymous memory (argv[2]), ticking. */
#include "common.h"
#include <sys/mman.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
    size_t n = mib << 20;
    unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(4);
    for (size_t i = 0; i < n; i += 4096) *(unsigned long long *)(p + i) = mix(i);
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        int bad = 0;
        for (size_t j = 0; j < n; j += 4096 * 64)
            if (*(unsigned long long *)(p + j) != mix(j)) { FAIL("memory at %zu", j); bad = 1; break; }
        if (!bad) report("tick %ld", i);
        nap(20);
    }
}
