/* A target for migration: argv OUT MIB PAGES_PER_SEC [CHECK_MS]
 * A region of MIB MiB, every page holding a pattern of (page, version); PAGES_PER_SEC
 * random pages a second get their next version (0: none; -1: as fast as it can, each
 * page rewritten whole); every CHECK_MS ms (default 200) every page is checked against
 * the version it must hold: "ok N" or "FAIL ...".  "ready PID" once filled. */
#include "common.h"
#include <sys/mman.h>

#define PG 4096UL
#define W (PG / 8)
typedef unsigned long long u64;

static u64 *big;
static unsigned *ver;
static size_t npages;

static void fill(size_t i) {
    u64 *p = big + i * W;
    for (size_t w = 0; w < W; w++) p[w] = mix((i * W + w) ^ ((u64)ver[i] << 40));
}

static int check(size_t i) {
    const u64 *p = big + i * W;
    for (size_t w = 0; w < W; w++) if (p[w] != mix((i * W + w) ^ ((u64)ver[i] << 40))) return 0;
    return 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 64;
    long rate = argc > 3 ? atol(argv[3]) : 0;
    long check_ms = argc > 4 ? atol(argv[4]) : 200;
    npages = mib * 256;
    big = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ver = calloc(npages, sizeof *ver);
    if (big == MAP_FAILED || !ver) { FAIL("alloc"); return 1; }
    for (size_t i = 0; i < npages; i++) fill(i);
    report("ready %d", getpid());
    u64 seed = (u64)getpid();
    double t0 = now(), last_check = t0;
    long written = 0, n = 0;
    for (;;) {
        double t = now();
        long due = rate < 0 ? written + 256 : (long)((t - t0) * rate);
        while (written < due) {  /* the next version of a random page */
            size_t i = mix(seed++) % npages;
            ver[i]++;
            fill(i);
            written++;
        }
        if ((t - last_check) * 1000 >= check_ms) {
            size_t bad = 0;
            for (size_t i = 0; i < npages; i++) if (!check(i)) bad++;
            if (bad) FAIL("%zu pages do not hold their version", bad);
            else report("ok %ld %ld", n++, written);
            last_check = now();
        }
        if (rate >= 0) nap(5);
    }
}
