/* A thread in a call whose time left only the kernel's restart block holds (issue 9, s10
 * h1): poll(pipe, 3000 ms), futex(FUTEX_WAIT, relative 3 s), nanosleep(3 s, NULL rem),
 * clock_nanosleep(CLOCK_MONOTONIC, relative 3 s, NULL rem).  It writes "ready", makes the
 * call once, then "done MODE ret=R errno=E ms=M" (M: its CLOCK_MONOTONIC time across the
 * call) and "ok N" lines until killed.
 * usage: restartblock_s10 OUT MODE */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static FILE *out;
static unsigned int word;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    out = fopen(argv[1], "w");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    const char *mode = argv[2];
    int p[2];
    if (pipe(p))
        return 2;
    struct timespec three = {3, 0};
    fprintf(out, "ready\n");
    long long t0 = now_ms();
    long ret;
    if (!strcmp(mode, "poll")) {
        struct pollfd fds[2] = {{p[0], POLLIN, 0}, {p[1], POLLOUT, 0}};
        ret = syscall(SYS_poll, fds, 1, 3000);
        if (ret == 0 && (fds[0].revents || fds[1].revents))
            fprintf(out, "FAIL revents %d %d\n", fds[0].revents, fds[1].revents);
    } else if (!strcmp(mode, "futex")) {
        ret = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &three, NULL, 0);
    } else if (!strcmp(mode, "nanosleep")) {
        ret = syscall(SYS_nanosleep, &three, NULL);
    } else if (!strcmp(mode, "clock_nanosleep")) {
        ret = syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &three, NULL);
    } else {
        return 2;
    }
    int e = ret < 0 ? errno : 0;
    fprintf(out, "done %s ret=%ld errno=%d ms=%lld\n", mode, ret, e, now_ms() - t0);
    for (int n = 1;; n++) {
        fprintf(out, "ok %d\n", n);
        usleep(20000);
    }
}
