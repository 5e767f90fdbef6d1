/* Memory that changes between checkpoints, for the incremental store tests and bench.
 * argv: OUT MIB PERMILLE [FILE]
 *   a big private anonymous region of MIB MiB, every page written;
 *   SIGUSR1 starts the next generation G: about PERMILLE/1000 of the big pages get new
 *     bytes (one in eight of them zeros); with FILE, 32 identical pages get a new common
 *     page, a page of FILE's private mapping is rewritten (every third time with zeros),
 *     a page of a 16-page region is dropped (MADV_DONTNEED) and another written, a 4-page
 *     region is unmapped (odd G) or mapped again and filled (even G), and a shared
 *     anonymous page changes.  Reports "changed G PAGES" (of the big region), "gen G".
 *   SIGUSR2 checks every byte against what generation G must hold: "ok G" or "FAIL ...".
 * Every expected byte is a function of the generation, so a process restarted from an
 * old version knows what it must hold. */
#include "common.h"
#include <signal.h>
#include <sys/mman.h>

#define PG 4096UL
#define W (PG / 8)
typedef unsigned long long u64;

static volatile sig_atomic_t want_next, want_check;
static void on_usr1(int s) { (void)s; want_next = 1; }
static void on_usr2(int s) { (void)s; want_check = 1; }

static size_t npages;
static long permille;
static u64 *big;
static unsigned char *same, *fmap, *hole, *flip, *shared;
static long gen;

static int chosen(size_t i, long k) { return mix(i * 0x9E3779B97F4A7C15ULL ^ (u64)k) % 1000 < (u64)permille; }
static int zeroed(size_t i, long k) { return (mix(i ^ ((u64)k << 32)) & 7) == 0; }
static u64 word(size_t i, size_t w, long k) { return mix((i * W + w) ^ ((u64)k << 40) ^ 0x5eed); }

static void fill_big(size_t i, long k) {
    u64 *p = big + i * W;
    if (k && zeroed(i, k)) { memset(p, 0, PG); return; }
    for (size_t w = 0; w < W; w++) p[w] = word(i, w, k);
}

static long last_change(size_t i, long g) {
    for (long k = g; k >= 1; k--) if (chosen(i, k)) return k;
    return 0;
}

static void fill_pattern(unsigned char *p, size_t n, u64 seed) {
    for (size_t w = 0; w < n / 8; w++) ((u64 *)p)[w] = mix(w ^ seed);
}

static int check_pattern(const unsigned char *p, size_t n, u64 seed) {
    for (size_t w = 0; w < n / 8; w++) if (((const u64 *)p)[w] != mix(w ^ seed)) return 0;
    return 1;
}

static int all(const unsigned char *p, size_t n, unsigned char c) {
    for (size_t i = 0; i < n; i++) if (p[i] != c) return 0;
    return 1;
}

static void next_generation(void) {
    size_t n = 0;
    gen++;
    for (size_t i = 0; i < npages; i++) if (chosen(i, gen)) { fill_big(i, gen); n++; }
    report("changed %ld %zu", gen, n);
    if (!same) return;
    for (int p = 0; p < 32; p++) fill_pattern(same + p * PG, PG, 0xd0d0 ^ (u64)gen << 20);
    int fp = gen % 8;
    memset(fmap + fp * PG, gen % 3 == 0 ? 0 : 'a' + gen % 26, PG);
    madvise(hole + (gen % 16) * PG, PG, MADV_DONTNEED);
    fill_pattern(hole + ((gen + 5) % 16) * PG, PG, 0x401e ^ (u64)gen << 20);
    if (gen % 2) {
        munmap(flip, 4 * PG);
    } else {
        void *p = mmap(flip, 4 * PG, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != flip) FAIL("remap %p", p);
        fill_pattern(flip, 4 * PG, 0xf119 ^ (u64)gen << 20);
    }
    memset(shared + (gen % 2) * PG, 's' + gen % 10, PG);
}

static void check(void) {
    for (size_t i = 0; i < npages; i++) {
        long k = last_change(i, gen);
        const u64 *p = big + i * W;
        if (k && zeroed(i, k)) {
            for (size_t w = 0; w < W; w++) if (p[w]) { FAIL("big page %zu not zeros (gen %ld)", i, k); return; }
        } else {
            for (size_t w = 0; w < W; w++)
                if (p[w] != word(i, w, k)) { FAIL("big page %zu word %zu (gen %ld)", i, w, k); return; }
        }
    }
    if (same) {
        for (int p = 0; p < 32; p++)
            if (!check_pattern(same + p * PG, PG, 0xd0d0 ^ (u64)gen << 20)) { FAIL("identical page %d", p); return; }
        for (int p = 0; p < 8; p++) {
            long k = gen;
            while (k >= 1 && k % 8 != p) k--;
            unsigned char c = k < 1 ? 'F' : k % 3 == 0 ? 0 : 'a' + k % 26;
            if (!all(fmap + p * PG, PG, c)) { FAIL("file page %d", p); return; }
        }
        long state[16];
        for (int p = 0; p < 16; p++) state[p] = 0;
        for (long k = 1; k <= gen; k++) { state[k % 16] = -1; state[(k + 5) % 16] = k; }
        for (int p = 0; p < 16; p++) {
            int ok = state[p] < 0 ? all(hole + p * PG, PG, 0)
                     : check_pattern(hole + p * PG, PG, 0x401e ^ (u64)state[p] << 20);
            if (!ok) { FAIL("hole page %d (state %ld)", p, state[p]); return; }
        }
        if (gen % 2 == 0 && !check_pattern(flip, 4 * PG, 0xf119 ^ (u64)gen << 20)) { FAIL("flip"); return; }
        if (gen % 2 == 1 && msync(flip, PG, MS_ASYNC) == 0) { FAIL("flip still mapped"); return; }
        for (int p = 0; p < 2; p++) {
            long k = gen;
            while (k >= 1 && k % 2 != p) k--;
            if (!all(shared + p * PG, PG, k < 1 ? 'S' : 's' + k % 10)) { FAIL("shared page %d", p); return; }
        }
    }
    report("ok %ld", gen);
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 16;
    permille = argc > 3 ? strtol(argv[3], NULL, 10) : 10;
    npages = (mib << 20) / PG;
    big = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) _exit(4);
    for (size_t i = 0; i < npages; i++) fill_big(i, 0);
    if (argc > 4) {
        same = mmap(NULL, 32 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        for (int p = 0; p < 32; p++) fill_pattern(same + p * PG, PG, 0xd0d0);
        int fd = open(argv[4], O_RDONLY);
        if (fd < 0) _exit(5);
        fmap = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        close(fd);
        if (fmap == MAP_FAILED) _exit(5);
        hole = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        for (int p = 0; p < 16; p++) fill_pattern(hole + p * PG, PG, 0x401e);
        flip = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        fill_pattern(flip, 4 * PG, 0xf119);
        shared = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        memset(shared, 'S', 2 * PG);
    }
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    report("ready %d %p %zu", getpid(), (void *)big, npages * PG);
    for (;;) {
        if (want_next) { want_next = 0; next_generation(); report("gen %ld", gen); }
        if (want_check) { want_check = 0; check(); }
        nap(10);
    }
}
