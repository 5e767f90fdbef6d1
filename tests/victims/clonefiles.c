/* A parent and a child made with clone(CLONE_FILES): two processes, one fd table. */
#define _GNU_SOURCE
#include "common.h"
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    long kid = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
    if (kid == 0) { for (;;) nap(20); }
    report("ready %d %ld", getpid(), kid);
    for (long i = 0;; i++) { report("tick %ld", i); nap(20); }
}
