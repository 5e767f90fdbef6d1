/* POSIX timers set with TIMER_ABSTIME on CLOCK_REALTIME keep their wall-clock expiry
 * (found by probing, docs/state-coverage.md): a one-shot timer an hour away, whose now +
 * time left must stay its deadline each round, and a periodic one (50 ms, from a whole
 * second) whose ticks, counted with their overruns, must stay the number of periods since
 * its first expiry (restored relative, both fell behind by the time away); a relative
 * CLOCK_REALTIME timer next to them.  With "none": a SIGEV_NONE CLOCK_REALTIME timer,
 * never in the kernel's hrtimer lists (a checkpoint must refuse it). */
#include "common.h"
#include <signal.h>

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
static volatile long ticks;

static void tick(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    ticks += 1 + si->si_overrun;
}

static timer_t make(int notify, int sig) {
    struct sigevent ev = {.sigev_notify = notify, .sigev_signo = sig};
    timer_t t;
    if (timer_create(CLOCK_REALTIME, &ev, &t)) { FAIL("timer_create %d", errno); _exit(1); }
    return t;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int none = argc > 2 && !strcmp(argv[2], "none");
    struct sigaction sa = {.sa_sigaction = tick, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(SIGUSR1, &sa, NULL);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    timer_t a = make(none ? SIGEV_NONE : SIGEV_SIGNAL, SIGUSR2);
    struct itimerspec ia = {.it_value = {now.tv_sec + 3600, now.tv_nsec}};
    timer_t b = make(SIGEV_SIGNAL, SIGUSR1);
    struct itimerspec ib = {.it_value = {now.tv_sec + 1, 0}, .it_interval = {0, 50000000}};
    timer_t c = make(SIGEV_SIGNAL, SIGUSR2);
    struct itimerspec ic = {.it_value = {3600, 0}};
    if (timer_settime(a, TIMER_ABSTIME, &ia, NULL) || timer_settime(b, TIMER_ABSTIME, &ib, NULL)
            || timer_settime(c, 0, &ic, NULL)) {
        FAIL("settime %d", errno); return 1;
    }
    report("ready");
    for (long r = 0;; r++) {
        struct itimerspec g;
        int bad = 0;
        timer_gettime(a, &g);
        clock_gettime(CLOCK_REALTIME, &now);
        long long drift = ns(now) + ns(g.it_value) - ns(ia.it_value);
        if (drift > 200000000LL || drift < -200000000LL) {
            FAIL("absolute one-shot: expires %lld ms away from its deadline", drift / 1000000);
            bad = 1;
        }
        long long since = ns(now) - ns(ib.it_value);
        long want = since < 0 ? 0 : since / 50000000 + 1, got = ticks;
        if (since > 300000000LL && (got < want - 4 || got > want + 1)) {
            FAIL("absolute periodic: %ld ticks, %ld periods since its first expiry", got, want);
            bad = 1;
        }
        timer_gettime(c, &g);
        if (g.it_value.tv_sec >= 3600 || (g.it_value.tv_sec == 0 && g.it_value.tv_nsec == 0)) {
            FAIL("relative: %ld s left", (long)g.it_value.tv_sec);
            bad = 1;
        }
        if (!bad) report("ok %ld", r);
        nap(100);
    }
}
