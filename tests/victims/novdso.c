/* A process without a vDSO: it unmaps its [vdso] (and vvar) at start, then lives on
 * raw system calls only (no clock_gettime through the vDSO).  Each round it checks
 * that it still has no vDSO and that its data is intact. */
#include "common.h"
#include "rounds.h"
#include <stdint.h>
#include <sys/mman.h>

#define PG 4096UL

static int has_vdso(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "[vdso]")) found = 1;
    if (f) fclose(f);
    return found;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    poke_setup();
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    uintptr_t ranges[8][2];
    int n = 0;
    while (f && fgets(line, sizeof line, f) && n < 8)
        if (strstr(line, "[vdso]") || strstr(line, "[vvar"))
            if (sscanf(line, "%lx-%lx", &ranges[n][0], &ranges[n][1]) == 2) n++;
    fclose(f);
    for (int i = 0; i < n; i++)
        if (munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0])) { report("setup munmap: %s", strerror(errno)); _exit(5); }
    unsigned char *data = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 8 * PG; i++) data[i] = (unsigned char)mix(i);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        if (has_vdso()) { FAIL("a vDSO appeared"); bad = 1; }
        for (size_t i = 0; i < 8 * PG; i++)
            if (data[i] != (unsigned char)mix(i)) { FAIL("data"); bad = 1; break; }
        if (!bad) report("ok %ld", round);
        next_round();
    }
}
