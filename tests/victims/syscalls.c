/* A task stopped inside a system call resumes it correctly: long nanosleep and pause
 * never return EINTR to the program, and a nanosleep keeps its remaining time, like
 * sleep(3), which passes a pointer for it (the kernel writes the remaining time there
 * when the call is interrupted).  argv[2] = "sleep", "clock" (clock_nanosleep) or
 * "pause". */
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
        } else if (!strcmp(argv[2], "clock")) {
            struct timespec ts = {2, 0}, rem;
            int err = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &rem);
            if (err) report("FAIL clock_nanosleep errno %d", err);
        } else {
            struct timespec ts = {2, 0}, rem;
            if (nanosleep(&ts, &rem) == -1) report("FAIL nanosleep errno %d", errno);
        }
        report("ok %ld", round);
    }
}
