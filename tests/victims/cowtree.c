/* A parent with 32 MiB of private anonymous data forks 3 children that share it
 * copy-on-write; each child then rewrites 1 MiB of its own, and the parent rewrites
 * another 1 MiB after the forks (the children keep the old bytes there).  Every process
 * checks its whole region each round: the parent reports "ok N", child K reports
 * "child K ok N"; failures are "FAIL ...".
 * argv[2] "late" (session 12 h2): the parent forks children 1 and 2, rewrites MiB 1,
 * forks child 3 (which shares the rewritten MiB 1 with it), then rewrites MiB 2:
 * children 1 and 2 share the old MiB 1 between them only, all three the old MiB 2. */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define SIZE (32UL << 20)
#define MB (1UL << 20)
#define KIDS 3

static unsigned char *mem;
static int late;

/* the byte expected at offset i for process `who` (0 = parent, 1..KIDS = children) */
static unsigned char want(int who, size_t i) {
    size_t mb = i / MB;
    if (who > 0 && mb == (size_t)(4 + who)) return (unsigned char)(who * 31 + i % 251);
    if (mb == 1 && (who == 0 || (late && who == 3))) return (unsigned char)(0x77 ^ (i % 253));
    if (late && mb == 2 && who == 0) return (unsigned char)(0x55 ^ (i % 241));
    return (unsigned char)mix(i / 8);
}

static void loop(int who) {
    for (long round = 0;; round++) {
        int bad = 0;
        for (size_t i = 0; i < SIZE; i += 97)
            if (mem[i] != want(who, i)) { FAIL("process %d: byte %zu", who, i); bad = 1; break; }
        if (!bad) {
            if (who) report("child %d ok %ld", who, round);
            else report("ok %ld", round);
        }
        if (who == 0) while (waitpid(-1, NULL, WNOHANG) > 0) {}
        nap(50);
    }
}

static void child(int k) {
    pid_t c = fork();
    if (c < 0) _exit(4);
    if (c) return;
    for (size_t i = (4 + k) * MB; i < (5 + k) * MB; i++) mem[i] = want(k, i);
    report("child %d ready %d", k, getpid());
    loop(k);
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    late = argc > 2 && !strcmp(argv[2], "late");
    mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) _exit(4);
    for (size_t i = 0; i < SIZE; i++) mem[i] = (unsigned char)mix(i / 8);
    child(1);
    child(2);
    if (!late) child(3);
    for (size_t i = MB; i < 2 * MB; i++) mem[i] = want(0, i);
    if (late) {
        child(3);
        for (size_t i = 2 * MB; i < 3 * MB; i++) mem[i] = want(0, i);
    }
    report("ready %d", getpid());
    loop(0);
}
