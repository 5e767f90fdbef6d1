/* A SysV semaphore raised by semop, with SEM_UNDO ("undo") or without ("plain"): the
 * kernel keeps an undo list for the first, applied when the process exits, that nothing
 * shows to user space.  A checkpoint must refuse it (a restored copy would not undo its
 * adjustment at exit); the plain one is restored, the set kept by the kernel apart from
 * the process; "threads" is the plain one with a second thread (whose creation gives
 * the process an empty undo list, which cannot be told from a full one: refused too).  The first line is the set's id (the test removes the set); each round
 * checks the semaphore's value. */
#include "common.h"
#include <sys/ipc.h>
#include <sys/sem.h>
#include <pthread.h>
static void *idle(void *a) { for (;;) pause(); return a; }
int main(int argc, char **argv) {
    open_report(argc, argv);
    int undo = argc > 2 && !strcmp(argv[2], "undo");
    pthread_t t;
    if (argc > 2 && !strcmp(argv[2], "threads")) pthread_create(&t, NULL, idle, NULL);
    int id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    if (id < 0) { FAIL("semget %d", errno); return 1; }
    report("semid %d", id);
    struct sembuf op = {0, 2, undo ? SEM_UNDO : 0};
    if (semop(id, &op, 1)) FAIL("semop %d", errno);
    for (long r = 0;; r++) {
        int val = semctl(id, 0, GETVAL);
        if (val != 2) FAIL("semval %d", val); else report("ok %ld", r);
        nap(100);
    }
}
