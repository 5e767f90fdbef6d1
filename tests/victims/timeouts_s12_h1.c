/* One call with a 3 s timeout that nothing ends early (issue 9, session 12 h1): after
 * "ready" the call of MODE, then "done MODE ret=R errno=E ms=M" (M: its CLOCK_MONOTONIC
 * time across the call) and "ok N" lines until killed.  Relative timeouts:
 * sigtimedwait, semtimedop, epoll_pwait2 (a timespec the kernel never writes back),
 * ppoll, pselect6, select (the kernel writes the time left back), poll, nanosleep,
 * nanosleep_rem, clock_nanosleep, futex (restart block).  Absolute ones (the deadline
 * 3 s after the start): clock_nanosleep_abs, futex_abs (FUTEX_WAIT_BITSET, monotonic),
 * mq_timedreceive (CLOCK_REALTIME).  sigwait_null: sigtimedwait without a timeout,
 * ended by a SIGUSR2 the test sends; epoll_wait (its ms timeout); recvmmsg of 2
 * datagrams with a 3 s timeout on a UDP socket of 127.0.0.1 ("port N" first);
 * io_getevents, io_pgetevents (relative; an idle AIO context), io_getevents_null (no
 * timeout: waits until killed); io_uring_enter (IORING_ENTER_EXT_ARG, a 3 s timeout for
 * one completion that never comes).  semtimedop prints
 * "sem ID" first (the test removes it).  With "mq" after MODE the process also holds a
 * POSIX message queue (cryo refuses it: a checkpoint that fails).
 * usage: timeouts_s12_h1 OUT MODE [mq] */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <mqueue.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <netinet/in.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static struct timespec after(clockid_t clock, int sec)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    ts.tv_sec += sec;
    return ts;
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && !strcmp(argv[3], "mq")))
        return 2;
    FILE *out = fopen(argv[1], "w");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    const char *mode = argv[2];
    int p[2], ep = epoll_create1(EPOLL_CLOEXEC), sem = -1;
    if (pipe(p) || ep < 0)
        return 2;
    struct epoll_event ev = {.events = EPOLLIN};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev))
        return 2;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (!strcmp(mode, "semtimedop")) {
        sem = semget(IPC_PRIVATE, 1, 0600);
        if (sem < 0)
            return 3;
        fprintf(out, "sem %d\n", sem);
    }
    mqd_t mq = (mqd_t)-1;
    if (!strcmp(mode, "mq_timedreceive") || argc == 4) {
        char name[64];
        snprintf(name, sizeof name, "/cryo_s12_h1_%d", getpid());
        struct mq_attr attr = {.mq_maxmsg = 4, .mq_msgsize = 64};
        mq = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
        if (mq == (mqd_t)-1)
            return 3;
        mq_unlink(name);
    }
    int udp = -1;
    if (!strcmp(mode, "recvmmsg")) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t len = sizeof a;
        udp = socket(AF_INET, SOCK_DGRAM, 0);
        if (udp < 0 || bind(udp, (struct sockaddr *)&a, len) ||
            getsockname(udp, (struct sockaddr *)&a, &len))
            return 3;
        fprintf(out, "port %d\n", ntohs(a.sin_port));
    }
    char bufs[2][64];
    struct iovec iov[2] = {{bufs[0], 64}, {bufs[1], 64}};
    struct mmsghdr msgs[2] = {{.msg_hdr = {.msg_iov = &iov[0], .msg_iovlen = 1}},
                              {.msg_hdr = {.msg_iov = &iov[1], .msg_iovlen = 1}}};
    aio_context_t ctx = 0;
    struct io_event iev;
    if (!strncmp(mode, "io_", 3) && syscall(SYS_io_setup, 8, &ctx))
        return 3;
    int ring = -1;
    struct io_uring_params params = {0};
    if (!strcmp(mode, "io_uring_enter") &&
        (ring = syscall(SYS_io_uring_setup, 4, &params)) < 0)
        return 3;
    int word = 0;
    const struct timespec three = {3, 0};
    struct timespec ts = three, rem;
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    struct timeval tv = {3, 0};
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    struct sembuf op = {0, -1, 0};
    siginfo_t info;
    char buf[64];
    fprintf(out, "ready\n");
    long long t0 = now_us();
    int ret;
    if (!strcmp(mode, "sigtimedwait"))
        ret = sigtimedwait(&set, &info, &three);
    else if (!strcmp(mode, "sigwait_null"))
        ret = sigtimedwait(&set, &info, NULL);
    else if (!strcmp(mode, "semtimedop"))
        ret = semtimedop(sem, &op, 1, &three);
    else if (!strcmp(mode, "recvmmsg"))
        ret = recvmmsg(udp, msgs, 2, 0, &ts);  /* (the kernel writes what is left) */
    else if (!strcmp(mode, "io_uring_enter")) {
        struct io_uring_getevents_arg garg = {.ts = (unsigned long)&three};
        ret = syscall(SYS_io_uring_enter, ring, 0, 1,
                      IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &garg, sizeof garg);
    }    else if (!strcmp(mode, "io_getevents"))
        ret = syscall(SYS_io_getevents, ctx, 1, 1, &iev, &three);
    else if (!strcmp(mode, "io_getevents_null"))
        ret = syscall(SYS_io_getevents, ctx, 1, 1, &iev, NULL);
    else if (!strcmp(mode, "io_pgetevents"))
        ret = syscall(SYS_io_pgetevents, ctx, 1, 1, &iev, &three, NULL);
    else if (!strcmp(mode, "epoll_wait"))
        ret = epoll_wait(ep, &ev, 1, 3000);
    else if (!strcmp(mode, "epoll_pwait2"))
        ret = epoll_pwait2(ep, &ev, 1, &three, NULL);
    else if (!strcmp(mode, "ppoll"))
        ret = ppoll(&pfd, 1, &ts, NULL);
    else if (!strcmp(mode, "pselect6"))
        ret = pselect(p[0] + 1, &rd, NULL, NULL, &ts, NULL);
    else if (!strcmp(mode, "select"))
        ret = select(p[0] + 1, &rd, NULL, NULL, &tv);
    else if (!strcmp(mode, "poll"))
        ret = poll(&pfd, 1, 3000);
    else if (!strcmp(mode, "nanosleep"))
        ret = nanosleep(&three, NULL);
    else if (!strcmp(mode, "nanosleep_rem"))
        ret = nanosleep(&three, &rem);
    else if (!strcmp(mode, "clock_nanosleep")) {
        ret = clock_nanosleep(CLOCK_MONOTONIC, 0, &three, NULL);
        errno = ret, ret = ret ? -1 : 0;
    } else if (!strcmp(mode, "clock_nanosleep_abs")) {
        ts = after(CLOCK_MONOTONIC, 3);
        ret = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        errno = ret, ret = ret ? -1 : 0;
    } else if (!strcmp(mode, "futex"))
        ret = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &three, NULL, 0);
    else if (!strcmp(mode, "futex_abs")) {
        ts = after(CLOCK_MONOTONIC, 3);
        ret = syscall(SYS_futex, &word, FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    } else if (!strcmp(mode, "mq_timedreceive")) {
        ts = after(CLOCK_REALTIME, 3);
        ret = mq_timedreceive(mq, buf, sizeof buf, NULL, &ts);
    } else
        return 2;
    int e = ret < 0 ? errno : 0;
    long long ms = (now_us() - t0) / 1000;
    fprintf(out, "done %s ret=%d errno=%d ms=%lld\n", mode, ret, e, ms);
    if (three.tv_sec != 3 || three.tv_nsec)
        fprintf(out, "FAIL the program's timespec changed\n");
    for (int n = 1;; n++) {
        fprintf(out, "ok %d\n", n);
        usleep(20000);
    }
}
