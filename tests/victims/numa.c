/* Mappings with NUMA memory policies of their own (mbind), as OpenBLAS gives its
 * buffers ("local") and numactl users their arrays: a private mapping bound "local", one
 * interleaved with MPOL_F_STATIC_NODES, half of one bound (the mapping split in two), a
 * shared anonymous one preferred; then it forks a child (its memory shared copy-on-write)
 * that takes the policy off the interleaved one and binds a mapping of its own.  Each
 * round both check every policy (get_mempolicy MPOL_F_ADDR: mode, flags, nodes) and
 * their data; a line "ok N" from the parent, "child ok N" from the child. */
#include "common.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

enum { DEFAULT, PREFERRED, BIND, INTERLEAVE, LOCAL };
#define STATIC_NODES (1 << 15)
#define SZ (1 << 20)

static char *local_m, *inter_m, *half_m, *shared_m, *child_m;

static int policy(void *addr, int *mode) {
    unsigned long nodes = 0;
    if (syscall(SYS_get_mempolicy, mode, &nodes, 64, addr, 2 /* MPOL_F_ADDR */)) return -1;
    return (int)nodes;
}

static int is(void *addr, int mode, int nodes) {
    int m = -1, n = policy(addr, &m);
    return m == mode && n == nodes;
}

static void bind(void *addr, size_t len, int mode, unsigned long nodes) {
    if (syscall(SYS_mbind, addr, len, mode, nodes ? &nodes : NULL, nodes ? 64 : 0, 0))
        FAIL("mbind %d", errno);
}

static int data_ok(char *m, int seed) {
    for (int i = 0; i < SZ; i += 4096) if (m[i] != (char)(seed + i / 4096)) return 0;
    return 1;
}

static void fill(char *m, int seed) { for (int i = 0; i < SZ; i += 4096) m[i] = (char)(seed + i / 4096); }

int main(int argc, char **argv) {
    open_report(argc, argv);
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
    local_m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, flags, -1, 0);
    inter_m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, flags, -1, 0);
    half_m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, flags, -1, 0);
    shared_m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    bind(local_m, SZ, LOCAL, 0);
    bind(inter_m, SZ, INTERLEAVE | STATIC_NODES, 1);
    bind(half_m + SZ / 2, SZ / 2, BIND, 1);
    bind(shared_m, SZ, PREFERRED, 1);
    fill(local_m, 1); fill(inter_m, 2); fill(half_m, 3); fill(shared_m, 4);
    pid_t kid = fork();
    if (kid == 0) {
        bind(inter_m, SZ, DEFAULT, 0);
        child_m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, flags, -1, 0);
        bind(child_m, SZ, BIND, 1);
        fill(child_m, 5);
    }
    for (long r = 0;; r++) {
        int good = is(local_m, LOCAL, 0) && is(half_m, DEFAULT, 0) && is(half_m + SZ / 2, BIND, 1)
            && is(shared_m, PREFERRED, 1) && data_ok(local_m, 1) && data_ok(inter_m, 2)
            && data_ok(half_m, 3) && data_ok(shared_m, 4);
        if (kid == 0)
            good = good && is(inter_m, DEFAULT, 0) && is(child_m, BIND, 1) && data_ok(child_m, 5);
        else
            good = good && is(inter_m, INTERLEAVE | STATIC_NODES, 1);
        if (good) report(kid == 0 ? "child ok %ld" : "ok %ld", r);
        else {
            int m1 = -1, m2 = -1, m3 = -1, m4 = -1;
            int n1 = policy(local_m, &m1), n2 = policy(inter_m, &m2), n3 = policy(half_m + SZ / 2, &m3),
                n4 = policy(shared_m, &m4);
            FAIL("%s policies %d/%d %d/%d %d/%d %d/%d", kid == 0 ? "child" : "parent", m1, n1, m2, n2,
                 m3, n3, m4, n4);
        }
        nap(100);
    }
}
