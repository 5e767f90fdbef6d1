/* A process whose executable no mapping maps: built twice, as a launcher (-DLAUNCHER)
 * and as a shared library (-shared, -z now: nothing is resolved through the unmapped
 * executable's tables later).  The launcher dlopens the library and calls run(), which
 * never returns: it unlinks the executable when told to (argv[2] "deleted"), unmaps every
 * mapping of it, then checks each round that /proc/self/exe still names it (with
 * " (deleted)" when unlinked) and that it maps nowhere.  "ok N" per round. */
#include "common.h"

#ifdef LAUNCHER
#include <dlfcn.h>

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    void *lib = dlopen(argv[3], RTLD_NOW);
    if (!lib) return 4;
    void (*run)(int, char **) = (void (*)(int, char **))dlsym(lib, "run");
    if (!run) return 5;
    run(argc, argv);
    return 6;
}
#else
#include <sys/mman.h>

static int unmap_exe(const char *exe) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    unsigned long ranges[64][2];
    int n = 0;
    while (f && n < 64 && fgets(line, sizeof line, f)) {
        char *path = strchr(line, '/');
        if (!path) continue;
        path[strcspn(path, "\n")] = 0;
        if (strcmp(path, exe) == 0 && sscanf(line, "%lx-%lx", &ranges[n][0], &ranges[n][1]) == 2)
            n++;
    }
    if (f) fclose(f);
    for (int i = 0; i < n; i++) munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]);
    return n;
}

void run(int argc, char **argv) {
    open_report(argc, argv);
    char exe[4096], now[4096];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 20);
    if (k <= 0) _exit(7);
    exe[k] = 0;
    if (strcmp(argv[2], "deleted") == 0) {
        if (unlink(exe) != 0) _exit(8);
        strcat(exe, " (deleted)");
    }
    int n = unmap_exe(exe);
    report("unmapped %d", n);
    for (long i = 0;; i++) {
        k = readlink("/proc/self/exe", now, sizeof now - 1);
        now[k > 0 ? k : 0] = 0;
        if (strcmp(now, exe) != 0) FAIL("exe %s, not %s", now, exe);
        if (unmap_exe(exe) != 0) FAIL("the executable is mapped again");
        report("ok %ld", i);
        nap(50);
    }
}
#endif
