/* CLOCK_MONOTONIC and CLOCK_BOOTTIME, read every 20 ms through the vDSO and through the
 * system call, must never go back, never jump by more than a minute (a restart's time
 * away is seconds), and the two ways must agree (a vDSO whose time-namespace page is
 * wrong would not).  "ok N" per round; "ready PID" first.  With "setsid", in a session of
 * its own first (started by unshare --fork, it would be in unshare's). */
#include "common.h"
#include <sys/syscall.h>

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
    report("ready %d", getpid());
    for (long i = 0;; i++) {
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
