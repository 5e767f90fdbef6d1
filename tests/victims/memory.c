/* Memory of every kind, checked byte for byte on each round:
 * brk heap, big private anonymous, a PROT_NONE guard region that holds data,
 * a read-only anonymous region, a private file mapping with copied-on-write pages,
 * a shared anonymous mapping, a MAP_GROWSDOWN-style stack buffer, untouched pages. */
#include "common.h"
#include <sys/mman.h>

#define BIG (64UL << 20)
#define PG 4096UL

static unsigned long long sum(const unsigned char *p, size_t n) {
    unsigned long long h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i += 8) h = (h ^ *(const unsigned long long *)(p + i)) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    const char *mapfile = argv[2];
    /* brk heap */
    unsigned char *brkp = sbrk(0);
    if (sbrk(5 * PG) == (void *)-1) _exit(4);
    for (size_t i = 0; i < 5 * PG; i++) brkp[i] = (unsigned char)mix(i);
    /* big anonymous, every other page touched, with a pattern */
    unsigned char *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t p = 0; p < BIG; p += 2 * PG)
        for (size_t i = 0; i < PG; i += 8) *(unsigned long long *)(big + p + i) = mix(p + i);
    /* a guard region with data: written, then PROT_NONE */
    unsigned char *guard = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(guard, 0x5a, 4 * PG);
    mprotect(guard, 4 * PG, PROT_NONE);
    /* read-only anonymous with data */
    unsigned char *ro = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(ro, 0xa5, 3 * PG);
    mprotect(ro, 3 * PG, PROT_READ);
    /* private file mapping, page 1 modified (COW), page 0 and 2 the file's */
    int fd = open(mapfile, O_RDONLY);
    unsigned char *fm = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    memset(fm + PG, 'W', PG);
    /* shared anonymous */
    unsigned char *sh = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(sh, 's', 2 * PG);
    /* untouched region must read back as zeros */
    unsigned char *zero = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile unsigned char z = zero[3 * PG];
    (void)z;
    /* stack data */
    unsigned char stackbuf[3 * PG];
    for (size_t i = 0; i < sizeof stackbuf; i++) stackbuf[i] = (unsigned char)(i * 7);

    unsigned long long want_big = sum(big, BIG), want_brk = sum(brkp, 5 * PG);
    unsigned long long want_stack = sum(stackbuf, sizeof stackbuf);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        if (sum(big, BIG) != want_big) { FAIL("big anonymous"); bad = 1; }
        if (sum(brkp, 5 * PG) != want_brk) { FAIL("brk heap"); bad = 1; }
        if (sbrk(0) != brkp + 5 * PG) { FAIL("brk end moved"); bad = 1; }
        if (sum(stackbuf, sizeof stackbuf) != want_stack) { FAIL("stack"); bad = 1; }
        mprotect(guard, 4 * PG, PROT_READ);
        for (size_t i = 0; i < 4 * PG; i++) if (guard[i] != 0x5a) { FAIL("guard data"); bad = 1; break; }
        mprotect(guard, 4 * PG, PROT_NONE);
        for (size_t i = 0; i < 3 * PG; i++) if (ro[i] != 0xa5) { FAIL("read-only data"); bad = 1; break; }
        for (size_t i = 0; i < PG; i++)
            if (fm[i] != 'F' || fm[PG + i] != 'W' || fm[2 * PG + i] != 'F') { FAIL("file mapping"); bad = 1; break; }
        for (size_t i = 0; i < 2 * PG; i++) if (sh[i] != 's') { FAIL("shared anonymous"); bad = 1; break; }
        for (size_t i = 0; i < 16 * PG; i++) if (zero[i]) { FAIL("zero pages"); bad = 1; break; }
        /* the heap still works */
        char *m = malloc(100000); memset(m, 1, 100000); free(m);
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}
