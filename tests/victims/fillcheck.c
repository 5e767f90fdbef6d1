/* Memory of the kinds a restart fills (issue 16, UFFDIO_COPY): a fully written
 * anonymous mapping, one with every 4th page never touched, a private mapping of a file
 * (argv[2], 2 MiB) with every other page written, a heap block.  Every tick checks every
 * word of it, then writes a page of `spare` not touched before (a fault a uffd left
 * registered would hang or kill the process). */
#include "common.h"
#include <sys/mman.h>

#define MIB (1UL << 20)
#define PG 4096UL

static unsigned char *map_anon(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(4);
    return p;
}

static void fill(unsigned char *p, size_t n, unsigned long long seed, int skip) {
    for (size_t i = 0; i < n; i += PG)
        if (!skip || (i / PG) % skip)
            for (size_t j = 0; j < PG; j += 8) *(unsigned long long *)(p + i + j) = mix(seed + i + j);
}

static int check(unsigned char *p, size_t n, unsigned long long seed, int skip, const char *what) {
    for (size_t i = 0; i < n; i += PG)
        for (size_t j = 0; j < PG; j += 8) {
            unsigned long long want = (!skip || (i / PG) % skip) ? mix(seed + i + j) : 0;
            if (*(unsigned long long *)(p + i + j) != want) {
                FAIL("%s at %zu", what, i + j);
                return 1;
            }
        }
    return 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    size_t na = 24 * MIB, nb = 8 * MIB, nf = 2 * MIB, nh = MIB, ns = 4 * MIB;
    unsigned char *a = map_anon(na), *b = map_anon(nb), *spare = map_anon(ns);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, nf)) _exit(5);
    unsigned char *f = mmap(NULL, nf, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (f == MAP_FAILED) _exit(6);
    close(fd);
    unsigned char *h = malloc(nh);
    if (!h) _exit(7);
    fill(a, na, 1, 0);
    fill(b, nb, 2, 4);
    fill(f, nf, 3, 2);
    fill(h, nh, 4, 0);
    spare[0] = 1;
    size_t next = PG;
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        int bad = check(a, na, 1, 0, "a") || check(b, nb, 2, 4, "b") || check(f, nf, 3, 2, "file")
                  || check(h, nh, 4, 0, "heap");
        for (size_t k = PG; k < next; k += PG)
            if (spare[k] != (unsigned char)(k / PG)) { FAIL("spare at %zu", k); bad = 1; break; }
        if (next < ns) { spare[next] = (unsigned char)(next / PG); next += PG; }
        if (!bad) report("tick %ld", i);
        nap(20);
    }
}
