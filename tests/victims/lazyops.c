/* A target for post-copy: argv OUT MIB.  Region A (MIB MiB) holds a pattern; every tick
 * (50 ms) the process checks a slice of A, drops half of region B (8 MiB, MADV_DONTNEED)
 * and finds it zero before filling it again, moves region C (4 MiB) with mremap and
 * checks it there, and reads a page of A with read() from a pipe into it (a fault in the
 * kernel); every 4th tick it forks a child that checks all of A and C and exits (0: ok).
 * "ok N" after each whole pass over A, "FAIL ..." on any wrong byte.  "ready PID". */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define W (PG / 8)
typedef unsigned long long u64;

static u64 *a, *b, *c;
static size_t na, nb = 2048, nc = 1024;

static u64 val(int r, size_t i, size_t w) { return mix(((u64)r << 56) ^ (i * W + w)); }
static void fill(u64 *p, int r, size_t n) {
    for (size_t i = 0; i < n; i++) for (size_t w = 0; w < W; w++) p[i * W + w] = val(r, i, w);
}
static size_t bad(const u64 *p, int r, size_t from, size_t to) {
    size_t n = 0;
    for (size_t i = from; i < to; i++)
        for (size_t w = 0; w < W; w++) if (p[i * W + w] != val(r, i, w)) { n++; break; }
    return n;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    na = (argc > 2 ? (size_t)atol(argv[2]) : 64) * 256;
    int fl = MAP_PRIVATE | MAP_ANONYMOUS;
    a = mmap(NULL, na * PG, PROT_READ | PROT_WRITE, fl, -1, 0);
    b = mmap(NULL, nb * PG, PROT_READ | PROT_WRITE, fl, -1, 0);
    c = mmap(NULL, nc * PG, PROT_READ | PROT_WRITE, fl, -1, 0);
    /* a spare place for C to move to and back, kept unmapped */
    u64 *spare = mmap(NULL, nc * PG, PROT_NONE, fl, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED || spare == MAP_FAILED) {
        FAIL("mmap"); return 1;
    }
    munmap(spare, nc * PG);
    fill(a, 1, na); fill(b, 2, nb); fill(c, 3, nc);
    int pfd[2];
    if (pipe(pfd)) { FAIL("pipe"); return 1; }
    report("ready %d", getpid());
    size_t pos = 0, slice = na / 8 + 1;
    long n = 0, tick = 0;
    u64 *here = c, *there = spare;
    for (;;) {
        size_t to = pos + slice < na ? pos + slice : na;
        size_t k = bad(a, 1, pos, to);
        if (k) FAIL("%zu pages of A wrong in [%zu, %zu)", k, pos, to);
        pos = to;
        if (pos == na) { pos = 0; report("ok %ld", n++); }
        /* B: half dropped, zero, filled again; the other half kept */
        madvise(b, nb / 2 * PG, MADV_DONTNEED);
        for (size_t i = 0; i < nb / 2; i++) if (b[i * W] || b[i * W + W - 1]) { FAIL("B not zero"); break; }
        if (bad(b, 2, nb / 2, nb)) FAIL("B's kept half wrong");
        fill(b, 2, nb / 2);
        /* C: moved, checked where it is now */
        u64 *m = mremap(here, nc * PG, nc * PG, MREMAP_MAYMOVE | MREMAP_FIXED, there);
        if (m == MAP_FAILED) { FAIL("mremap %d", errno); return 1; }
        there = here; here = m;
        if (bad(here, 3, 0, nc)) FAIL("C wrong after its move");
        /* a kernel fault: read() into a page of A (the same bytes it holds) */
        size_t i = (size_t)(mix((u64)tick) % na);
        if (write(pfd[1], &a[i * W], PG) != (ssize_t)PG) FAIL("pipe write");
        if (read(pfd[0], &a[i * W], PG) != (ssize_t)PG) FAIL("pipe read");
        if (tick % 4 == 0) {
            pid_t p = fork();
            if (p == 0) _exit(bad(a, 1, 0, na) || bad(here, 3, 0, nc) ? 1 : 0);
            int st = 0;
            pid_t got = p < 0 ? -1 : waitpid(p, &st, 0);
            if (got == -1 && errno == ECHILD) {}  /* frozen in the wait: moved without it */
            else if (got != p || !WIFEXITED(st) || WEXITSTATUS(st))
                FAIL("child found wrong pages (status %d, errno %d)", st, errno);
        }
        tick++;
        nap(50);
    }
}
