/* Syscall user dispatch (as Wine uses it).  argv[2] = "allow": the main thread turns it
 * on with a selector; each round it sets the selector to block, makes a system call
 * (which must come back as SIGSYS, not run), sets it to allow again and reports.
 * argv[2] = "block": the main thread spins with its selector on block (no system call
 * can be made from it: a checkpoint must refuse it untouched) while a second thread,
 * without dispatch, reports that it spins. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_ON 1
#endif

static volatile char selector;  /* 0: allow, 1: block */
static volatile long sigsys, spins;

static void on_sigsys(int s) { (void)s; sigsys++; selector = 0; }

static void *watcher(void *arg) {
    (void)arg;
    for (long r = 0;; r++) {
        long before = spins;
        nap(50);
        if (spins > before) report("ok %ld", r); else report("FAIL the main thread stopped");
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) return 2;
    signal(SIGSYS, on_sigsys);
    int block = !strcmp(argv[2], "block");
    pthread_t th;
    if (block) pthread_create(&th, NULL, watcher, NULL);
    if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, 0, 0, &selector)) {
        report("FAIL prctl %d", errno);
        return 3;
    }
    report("ready %d", getpid());
    if (block) {
        selector = 1;
        for (;;) spins++;
    }
    for (long r = 0;; r++) {
        nap(50);
        long before = sigsys;
        selector = 1;
        syscall(SYS_getppid);  /* dispatched: SIGSYS, the handler allows again */
        selector = 0;
        if (sigsys == before + 1) report("ok %ld", r); else report("FAIL no SIGSYS");
    }
}
