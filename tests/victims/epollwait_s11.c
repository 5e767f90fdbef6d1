/* A thread in epoll_wait or epoll_pwait with a timeout on a pipe nothing writes to
 * (issue 9, session 11): the end of its timeout lives only in the hrtimer on its kernel
 * stack.  Modes "epoll_wait" and "epoll_pwait" (glibc's wrappers) make one 3000 ms call
 * after "ready", then write "done MODE ret=R errno=E ms=M" (M: its CLOCK_MONOTONIC time
 * across the call) and "ok N" lines until killed.  Mode "loop" calls epoll_wait(MS) for
 * ever and writes "ok N" after each, or "FAIL early: U us" for a call that returned 0
 * before its MS ms.
 * usage: epollwait_s11 OUT MODE [MS] */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return 2;
    int ms = argc == 4 ? atoi(argv[3]) : 50;
    FILE *out = fopen(argv[1], "w");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    const char *mode = argv[2];
    int p[2];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (pipe(p) || ep < 0)
        return 2;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev))
        return 2;
    fprintf(out, "ready\n");
    if (!strcmp(mode, "loop")) {
        for (int n = 1;; n++) {
            long long t0 = now_us();
            int ret = epoll_wait(ep, &ev, 1, ms);
            long long took = now_us() - t0;
            if (ret == 0 && took < ms * 1000LL)
                fprintf(out, "FAIL early: %lld us\n", took);
            else if (ret != 0 && !(ret < 0 && errno == EINTR))
                fprintf(out, "FAIL ret %d errno %d\n", ret, errno);
            else
                fprintf(out, "ok %d\n", n);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    long long t0 = now_us();
    int ret;
    if (!strcmp(mode, "epoll_wait"))
        ret = epoll_wait(ep, &ev, 1, 3000);
    else if (!strcmp(mode, "epoll_pwait"))
        ret = epoll_pwait(ep, &ev, 1, 3000, &none);
    else
        return 2;
    int e = ret < 0 ? errno : 0;
    fprintf(out, "done %s ret=%d errno=%d ms=%lld\n", mode, ret, e, (now_us() - t0) / 1000);
    for (int n = 1;; n++) {
        fprintf(out, "ok %d\n", n);
        usleep(20000);
    }
}
