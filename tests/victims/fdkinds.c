/* Anonymous files and unix socket pairs with data in flight, checked across a restart:
 * a stream socketpair shared with a child process (echo), a datagram socketpair with
 * three messages queued, an eventfd holding 42, a semaphore eventfd holding 3, a
 * signalfd with a pending SIGUSR1, a periodic timerfd, and an epoll set watching the
 * eventfd, the timerfd and the stream socket; a FIFO (argv[3]) with bytes in it; a memfd
 * mapped shared by parent and child, where the child counts.  The one-shot checks run
 * once the file argv[2] exists (after the restart); the others every round. */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    int st[2], dg[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, st);
    socketpair(AF_UNIX, SOCK_DGRAM, 0, dg);
    send(dg[1], "first", 5, 0);
    send(dg[1], "second message", 14, 0);
    send(dg[1], "3", 1, 0);
    int efd = eventfd(41, 0);
    eventfd_write(efd, 1);
    int esem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK);
    kill(getpid(), SIGUSR1);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xE1};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u64 = 0x71;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 0x57;
    epoll_ctl(ep, EPOLL_CTL_ADD, st[0], &ev);
    mkfifo(argv[3], 0600);
    int fifo = open(argv[3], O_RDWR | O_NONBLOCK);
    if (write(fifo, "fifo bytes", 10) != 10) _exit(4);
    int mfd = memfd_create("cryo-test", 0);
    if (ftruncate(mfd, 8192)) _exit(4);
    volatile long *shared = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    shared[100] = 12345;
    pid_t kid = fork();
    if (kid == 0) {  /* echo n -> n + 1000, and count in the memfd */
        close(st[0]);
        for (;;) {
            long n;
            if (read(st[1], &n, sizeof n) != sizeof n) _exit(1);
            shared[0] = n;
            n += 1000;
            if (write(st[1], &n, sizeof n) != sizeof n) _exit(1);
        }
    }
    close(st[1]);
    report("ready %d %d", getpid(), kid);
    int done_oneshot = 0;
    for (long round = 0;; round++) {
        int bad = 0;
        /* the timer ticks and epoll sees it */
        struct epoll_event got[4];
        int n = 0, saw_timer = 0, saw_efd = 0;
        for (int tries = 0; tries < 20 && !saw_timer; tries++) {
            n = epoll_wait(ep, got, 4, 100);
            for (int i = 0; i < n; i++) {
                if (got[i].data.u64 == 0x71) saw_timer = 1;
                if (got[i].data.u64 == 0xE1) saw_efd = 1;
            }
            if (!saw_timer) nap(5);
        }
        if (!saw_timer) { FAIL("epoll did not report the timerfd (n=%d)", n); bad = 1; }
        if (!done_oneshot && !saw_efd) { FAIL("epoll did not report the eventfd"); bad = 1; }
        unsigned long long ticks;
        if (read(tfd, &ticks, sizeof ticks) != sizeof ticks || ticks < 1) { FAIL("timerfd"); bad = 1; }
        /* the child echoes through the shared stream pair */
        long q = round, a = 0;
        if (write(st[0], &q, sizeof q) != sizeof q || read(st[0], &a, sizeof a) != sizeof a || a != q + 1000) {
            FAIL("echo %ld -> %ld", q, a); bad = 1;
        }
        if (shared[0] != round || shared[100] != 12345) { FAIL("memfd shared %ld", shared[0]); bad = 1; }
        struct stat sb;
        if (!done_oneshot && stat(argv[2], &sb) == 0) {
            char buf[64];
            ssize_t l1 = recv(dg[0], buf, sizeof buf, MSG_DONTWAIT);
            if (l1 != 5 || memcmp(buf, "first", 5)) { FAIL("dgram 1 (%zd)", l1); bad = 1; }
            ssize_t l2 = recv(dg[0], buf, sizeof buf, MSG_DONTWAIT);
            if (l2 != 14 || memcmp(buf, "second message", 14)) { FAIL("dgram 2 (%zd)", l2); bad = 1; }
            ssize_t l3 = recv(dg[0], buf, sizeof buf, MSG_DONTWAIT);
            if (l3 != 1 || buf[0] != '3') { FAIL("dgram 3 (%zd)", l3); bad = 1; }
            if (recv(dg[0], buf, sizeof buf, MSG_DONTWAIT) != -1) { FAIL("dgram extra"); bad = 1; }
            eventfd_t v = 0;
            if (eventfd_read(efd, &v) || v != 42) { FAIL("eventfd %llu", (unsigned long long)v); bad = 1; }
            for (int i = 0; i < 3; i++)
                if (eventfd_read(esem, &v) || v != 1) { FAIL("semaphore eventfd %d", i); bad = 1; }
            if (eventfd_read(esem, &v) == 0) { FAIL("semaphore eventfd not empty"); bad = 1; }
            if (read(fifo, buf, sizeof buf) != 10 || memcmp(buf, "fifo bytes", 10)) { FAIL("fifo"); bad = 1; }
            if (fstat(mfd, &sb) || sb.st_size != 8192) { FAIL("memfd size"); bad = 1; }
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR1) { FAIL("signalfd"); bad = 1; }
            done_oneshot = 1;
            if (!bad) report("oneshot ok");
        }
        if (!bad) report("ok %ld", round);
    }
}
