/* A process that ptraces another (found by probing, docs/state-coverage.md): it forks a
 * child, seizes it (PTRACE_SEIZE), and each round interrupts it, waits for the stop and
 * lets it go again (PTRACE_INTERRUPT, waitpid, PTRACE_CONT), failing the round on any
 * error.  Prints "child PID".  A checkpoint of the tracer alone must be refused: a
 * restored tracer would trace nothing. */
#include "common.h"
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    pid_t c = fork();
    if (c == 0) {
        for (;;) pause();
    }
    report("child %d", c);
    if (ptrace(PTRACE_SEIZE, c, 0, 0)) { FAIL("seize %d", errno); return 1; }
    for (long r = 0;; r++) {
        int st;
        if (ptrace(PTRACE_INTERRUPT, c, 0, 0) || waitpid(c, &st, __WALL) != c || !WIFSTOPPED(st)
                || ptrace(PTRACE_CONT, c, 0, 0)) {
            FAIL("round %ld: the tracee: errno %d", r, errno);
        } else {
            report("ok %ld", r);
        }
        nap(100);
    }
}
