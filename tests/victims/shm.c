/* SysV shared memory attached to a process: a keyed segment attached twice (read-write
 * and read-only), and an IPC_PRIVATE one; contents and the link between the two attaches
 * are checked every round.  argv[2] is the key. */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>

#define SZ (1 << 20)

int main(int argc, char **argv) {
    open_report(argc, argv);
    key_t key = (key_t)strtol(argv[2], NULL, 0);
    int a = shmget(key, SZ, IPC_CREAT | IPC_EXCL | 0640);
    int b = shmget(IPC_PRIVATE, 64 * 1024, IPC_CREAT | 0600);
    if (a < 0 || b < 0) { report("FAIL shmget %d", errno); _exit(4); }
    unsigned char *rw = shmat(a, NULL, 0), *ro = shmat(a, NULL, SHM_RDONLY), *pv = shmat(b, NULL, 0);
    for (size_t i = 0; i < SZ; i += 8) *(unsigned long long *)(rw + i) = mix(i);
    memset(pv, 'p', 64 * 1024);
    report("ready %d %d %d", getpid(), a, b);
    for (long round = 0;; round++) {
        int bad = 0;
        for (size_t i = 8; i < SZ; i += 8)
            if (*(unsigned long long *)(ro + i) != mix(i)) { FAIL("segment content at %zu", i); bad = 1; break; }
        *(long *)rw = round;  /* written through one attach, seen through the other */
        if (*(long *)ro != round) { FAIL("attaches not shared"); bad = 1; }
        for (size_t i = 0; i < 64 * 1024; i++) if (pv[i] != 'p') { FAIL("private segment"); bad = 1; break; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}
