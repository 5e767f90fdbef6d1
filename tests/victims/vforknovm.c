/* A parent held in the kernel: clone(CLONE_VFORK) without CLONE_VM, whose child neither
 * execs nor exits until it is killed; the parent's thread waits in state D, where
 * PTRACE_INTERRUPT does not stop it.  "child PID", then, once the child is gone, "back"
 * and "ok N" each round. */
#include "common.h"
#include <sched.h>
#include <signal.h>

static char stack[1 << 16];

static int child(void *arg) {
    (void)arg;
    report("child %d", getpid());
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (clone(child, stack + sizeof stack, CLONE_VFORK | SIGCHLD, NULL) < 0) FAIL("clone");
    report("back");
    for (long i = 0;; i++) {
        report("ok %ld", i);
        nap(20);
    }
}
