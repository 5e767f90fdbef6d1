/* An absolute timerfd survives as one (found by probing, docs/state-coverage.md): a
 * CLOCK_REALTIME timer set with TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET to expire an
 * hour from now, and a CLOCK_MONOTONIC one (ABSTIME) with an interval; each round its
 * fdinfo must show the same clock and settime flags, and now + the time left must still
 * be the expiry it was given (a timer made relative again expires later by as long as
 * the process was away). */
#include "common.h"
#include <sys/timerfd.h>

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static int check(int fd, int clock, long long deadline, const char *flags) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    ssize_t n = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
    if (f >= 0) close(f);
    buf[n > 0 ? n : 0] = 0;
    char want[64];
    snprintf(want, sizeof want, "clockid: %d\n", clock);
    if (!strstr(buf, want) || !strstr(buf, flags)) {
        FAIL("fd %d: clock or flags: %.200s", fd, strstr(buf, "clockid") ? strstr(buf, "clockid") : buf);
        return 1;
    }
    struct itimerspec g;
    struct timespec now;
    timerfd_gettime(fd, &g);
    clock_gettime(clock, &now);
    long long drift = ns(now) + ns(g.it_value) - deadline;
    if (drift > 200000000LL || drift < -200000000LL) {
        FAIL("fd %d: expires %lld ms away from its deadline", fd, drift / 1000000);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int a = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    struct itimerspec ia = {.it_value = {now.tv_sec + 3600, now.tv_nsec}};
    clock_gettime(CLOCK_MONOTONIC, &now);
    int b = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec ib = {.it_value = {now.tv_sec + 1800, 0}, .it_interval = {60, 0}};
    if (timerfd_settime(a, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &ia, NULL) ||
            timerfd_settime(b, TFD_TIMER_ABSTIME, &ib, NULL)) {
        FAIL("settime %d", errno); return 1;
    }
    report("ready");
    for (long r = 0;; r++) {
        int bad = check(a, CLOCK_REALTIME, ns(ia.it_value), "settime flags: 03");
        bad |= check(b, CLOCK_MONOTONIC, ns(ib.it_value), "settime flags: 01");
        if (!bad) report("ok %ld", r);
        nap(100);
    }
}
