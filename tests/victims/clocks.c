/* CLOCK_MONOTONIC and CLOCK_BOOTTIME, read every 20 ms through the vDSO and through the
 * system call, must never go back, never jump by more than a minute (a restart's time
 * away is seconds), and the two ways must agree (a vDSO whose time-namespace page is
 * wrong would not).  "ok N" per round; "ready PID" first.  With "setsid", in a session of
 * its own first (started by unshare --fork, it would be in unshare's).  And a timerfd set
 * with TFD_TIMER_ABSTIME on CLOCK_MONOTONIC, 2 s ahead each time it fires: never early,
 * never more than 2 s late, on the process's own clock. */
#include "common.h"
#include <sys/syscall.h>
#include <sys/timerfd.h>

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static long long vdso(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return ns(t);
}

static long long sys(clockid_t c) {
    struct timespec t;
    syscall(SYS_clock_gettime, c, &t);
    return ns(t);
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc > 2 && !strcmp(argv[2], "setsid") && setsid() < 0) FAIL("setsid");
    clockid_t clk[2] = {CLOCK_MONOTONIC, CLOCK_BOOTTIME};
    const char *name[2] = {"monotonic", "boottime"};
    long long last[2] = {vdso(CLOCK_MONOTONIC), vdso(CLOCK_BOOTTIME)};
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    long long due = vdso(CLOCK_MONOTONIC) + 2000000000LL;
    struct itimerspec its = {{0, 0}, {due / 1000000000LL, due % 1000000000LL}};
    if (tfd < 0 || timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL)) FAIL("timerfd");
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        unsigned long long n;
        long long now = vdso(CLOCK_MONOTONIC);
        if (read(tfd, &n, sizeof n) == sizeof n) {
            if (now < due) FAIL("the timerfd fired %.3f s early", (due - now) / 1e9);
            due = now + 2000000000LL;
            its.it_value.tv_sec = due / 1000000000LL;
            its.it_value.tv_nsec = due % 1000000000LL;
            if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL)) FAIL("timerfd again");
        } else if (now > due + 2000000000LL) {
            FAIL("the timerfd is %.3f s late", (now - due) / 1e9);
            due = now;
        }
        for (int k = 0; k < 2; k++) {
            long long a = vdso(clk[k]), b = sys(clk[k]), c = vdso(clk[k]);
            if (b < a || b > c) FAIL("%s: the system call says %lld, the vDSO %lld..%lld", name[k], b, a, c);
            if (a < last[k]) FAIL("%s went back %.3f s", name[k], (last[k] - a) / 1e9);
            if (a - last[k] > 60000000000LL) FAIL("%s jumped %.3f s", name[k], (a - last[k]) / 1e9);
            last[k] = c;
        }
        report("ok %ld %lld", i, last[0] / 1000000000LL);
        nap(20);
    }
}
