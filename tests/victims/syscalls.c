/* A task stopped inside a system call resumes it correctly: long nanosleep and pause
 * never return EINTR to the program.  argv[2] = "sleep" or "pause". */
#include "common.h"
#include <signal.h>

static void h(int s) { (void)s; }

int main(int argc, char **argv) {
    open_report(argc, argv);
    int use_pause = argc > 2 && !strcmp(argv[2], "pause");
    signal(SIGUSR1, h);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        report("before %ld", round);
        if (use_pause) {
            pause();  /* returns after SIGUSR1's handler */
        } else {
            struct timespec ts = {1, 0};
            if (nanosleep(&ts, NULL) == -1) report("FAIL nanosleep errno %d", errno);
        }
        report("ok %ld", round);
    }
}
