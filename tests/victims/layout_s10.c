/* The address-space layout that exec computes (session 10, h2: engine/execlayout.py).
 *
 * Usage: layout_s10 OUT MODE DIR
 *   norand     ADDR_NO_RANDOMIZE (execs itself again with it, as setarch -R does)
 *   legacy     ADDR_COMPAT_LAYOUT and ADDR_NO_RANDOMIZE (setarch -L -R): bottom-up
 *   unlimited  ADDR_NO_RANDOMIZE under an unlimited RLIMIT_STACK (ulimit -s unlimited)
 *   bigstack   ADDR_NO_RANDOMIZE under a 512 MiB RLIMIT_STACK
 *   rie        READ_IMPLIES_EXEC set by personality() after the exec, a PROT_READ
 *              mapping made before it (r--) and one after (r-x)
 *   tree       an ordinary process whose child execs this program in mode norand
 *              (its lines in DIR/child.txt)
 * Each round: the personality word, where mmap(NULL) puts mappings of four sizes and
 * one MAP_32BIT (under ADDR_NO_RANDOMIZE only), how far brk grows, and /proc/self/maps
 * (addresses and permissions), each the same as in the first round ("FAIL what"
 * otherwise); then "probe ..." with them (an uninterrupted twin prints the same) and
 * "ok N".
 */
#include "common.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/wait.h>

static const char *mode;
static int is(const char *m) { return strcmp(mode, m) == 0; }

static char first_maps[16384], first_probe[512];

static void read_maps(char *buf, size_t size) {
    int f = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    char raw[16384];
    ssize_t n = f < 0 ? -1 : read(f, raw, sizeof raw - 1);
    if (f >= 0) close(f);
    if (n < 0) n = 0;
    raw[n] = 0;
    /* keep addresses and permissions (the rest: offsets, devices, names) */
    size_t used = 0;
    for (char *line = strtok(raw, "\n"); line && used + 64 < size; line = strtok(NULL, "\n")) {
        char range[64], perms[8];
        if (sscanf(line, "%63s %7s", range, perms) == 2)
            used += snprintf(buf + used, size - used, "%s %s\n", range, perms);
    }
    buf[used] = 0;
}

static void probe(char *buf, size_t size) {
    static const size_t sizes[] = {4096, 1 << 20, 64 << 20, 1UL << 30};
    void *at[5];
    for (int i = 0; i < 4; i++)
        at[i] = mmap(NULL, sizes[i], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    at[4] = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    for (int i = 0; i < 4; i++) munmap(at[i], sizes[i]);
    munmap(at[4], 4096);
    char *b0 = sbrk(0);
    long grew = sbrk(16 << 20) == (void *)-1 ? -1 : (long)((char *)sbrk(0) - b0);
    if (grew > 0) sbrk(-grew);
    /* (a process that randomizes: a new random base after a restart, as after an exec;
     * MAP_32BIT randomized at each call) */
    int pers = personality(0xffffffff), fixed = pers & ADDR_NO_RANDOMIZE;
    if (fixed)
        snprintf(buf, size, "%p %p %p %p 32bit %p brk %p +%ld pers %#x", at[0], at[1], at[2],
                 at[3], at[4], (void *)b0, grew, pers);
    else
        snprintf(buf, size, "randomized brk %p +%ld pers %#x", (void *)b0, grew, pers);
}

static void *before_rie;

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    mode = argv[2];
    int pers = personality(0xffffffff);
    if (!is("rie") && !is("tree") && !(pers & ADDR_NO_RANDOMIZE)) {
        int want = ADDR_NO_RANDOMIZE | (is("legacy") ? ADDR_COMPAT_LAYOUT : 0);
        struct rlimit rl;
        getrlimit(RLIMIT_STACK, &rl);
        if (is("unlimited")) rl.rlim_cur = RLIM_INFINITY;
        if (is("bigstack")) rl.rlim_cur = 512UL << 20;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max) rl.rlim_max = rl.rlim_cur;
        if (setrlimit(RLIMIT_STACK, &rl)) FAIL("setrlimit %d", errno);
        personality(pers | want);
        execv("/proc/self/exe", argv);
        FAIL("execv %d", errno);
        _exit(1);
    }
    if (is("rie")) {
        before_rie = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        personality(pers | READ_IMPLIES_EXEC);
        mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (is("tree")) {
        pid_t kid = fork();
        if (kid == 0) {
            char out[4200];
            snprintf(out, sizeof out, "%s/child.txt", argv[3]);
            execl("/proc/self/exe", argv[0], out, "norand", argv[3], (char *)NULL);
            _exit(1);
        }
        report("child %d", kid);
    }
    report("ready");
    read_maps(first_maps, sizeof first_maps);
    probe(first_probe, sizeof first_probe);
    for (long r = 1;; r++) {
        char now[512], maps[16384];
        probe(now, sizeof now);
        read_maps(maps, sizeof maps);
        if (strcmp(now, first_probe)) FAIL("probe %s, first %s", now, first_probe);
        if (strcmp(maps, first_maps)) {
            /* the first line that differs */
            char *a = maps, *b = first_maps;
            while (*a && *a == *b) {
                char *na = strchr(a, '\n'), *nb = strchr(b, '\n');
                if (!na || !nb || na - a != nb - b || strncmp(a, b, na - a)) break;
                a = na + 1;
                b = nb + 1;
            }
            char la[80] = "", lb[80] = "";
            sscanf(a, "%79[^\n]", la);
            sscanf(b, "%79[^\n]", lb);
            FAIL("maps: '%s', first '%s'", la, lb);
        }
        report("probe %s", now);
        report("ok %ld", r);
        nap(100);
    }
}
