/* POSIX timers on CPU-time clocks survive (found by probing, docs/state-coverage.md):
 * one on CLOCK_PROCESS_CPUTIME_ID, one on CLOCK_THREAD_CPUTIME_ID, both every 10 ms of
 * CPU time; each round the process spins for 60 ms of its own CPU time and both must
 * have fired.  "threads": a second thread is started first (a thread's CPU-clock timer
 * in a process of several threads is refused: which thread's clock is not shown).
 *
 *   cputimers OUT [threads] */
#include "common.h"
#include <pthread.h>
#include <signal.h>

static volatile sig_atomic_t n[2];
static void h(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    int k = si->si_value.sival_int;
    if (k == 0 || k == 1) n[k]++;
}
static void *idle(void *a) { for (;;) pause(); return a; }
static long long cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc > 2 && !strcmp(argv[2], "threads")) {
        pthread_t t;
        pthread_create(&t, NULL, idle, NULL);
    }
    struct sigaction sa = {0};
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 2, &sa, NULL);
    clockid_t clocks[2] = {CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID};
    for (int i = 0; i < 2; i++) {
        timer_t t;
        struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 2,
                              .sigev_value.sival_int = i};
        struct itimerspec its = {.it_value = {0, 10000000}, .it_interval = {0, 10000000}};
        if (timer_create(clocks[i], &ev, &t) || timer_settime(t, 0, &its, NULL)) {
            FAIL("timer %d: %d", i, errno); return 1;
        }
    }
    report("ready");
    for (long round = 0;; round++) {
        int before[2] = {n[0], n[1]};
        long long until = cpu_ns() + 60000000LL;
        while (cpu_ns() < until) {}
        if (n[0] == before[0] || n[1] == before[1])
            FAIL("in 60 ms of CPU time: process clock timer %d, thread clock timer %d signals",
                 n[0] - before[0], n[1] - before[1]);
        else
            report("ok %ld", round);
        nap(50);
    }
}
