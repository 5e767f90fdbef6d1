/* A parent with N children (argv[2]), each holding M MiB (argv[3]) of touched memory,
 * all ticking; or, with argv[4] = "threads", one process with N threads. */
#include "common.h"
#include <pthread.h>
#include <sys/mman.h>

static void *spin(void *arg) { (void)arg; for (;;) nap(20); return NULL; }

static unsigned char *touch(size_t mib) {
    size_t n = mib << 20;
    unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i += 4096) *(unsigned long long *)(p + i) = mix(i);
    return p;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int n = atoi(argv[2]);
    size_t mib = strtoul(argv[3], NULL, 10);
    if (argc > 4 && !strcmp(argv[4], "threads")) {
        touch(mib);
        for (int i = 0; i < n; i++) { pthread_t t; pthread_create(&t, NULL, spin, NULL); }
    } else {
        int ready[2];
        if (pipe(ready)) _exit(4);
        for (int i = 0; i < n; i++)
            if (fork() == 0) {
                touch(mib);
                if (write(ready[1], "r", 1) != 1) _exit(5);
                close(ready[0]);
                close(ready[1]);
                for (;;) nap(20);
            }
        for (int i = 0; i < n; i++) { char c; if (read(ready[0], &c, 1) != 1) _exit(6); }
        close(ready[0]);
        close(ready[1]);
    }
    report("ready %d", getpid());
    for (long i = 0;; i++) { report("tick %ld", i); nap(20); }
}
