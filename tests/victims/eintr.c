/* Calls that a ptrace interrupt makes fail with EINTR (signal(7): as a stop and a
 * continue do) go on waiting through a checkpoint and a restart, the process having no
 * signal to take (found by probing): one thread each in epoll_wait without a timeout,
 * epoll_pwait, recv on a socket with SO_RCVTIMEO, semtimedop and sigtimedwait (300 ms
 * timeouts), each failing the round on any error but its timeout.  Prints "sem ID" for
 * the test to remove the semaphore. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/sem.h>
#include <sys/socket.h>

static int sem;

static void *waiter(void *a) {
    long k = (long)a;
    int p[2], sv[2];
    if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return NULL;
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
    struct timeval tv = {0, 300000};
    setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    static const char *what[] = {"epoll_wait", "epoll_pwait", "recv", "semtimedop", "sigtimedwait"};
    for (;;) {
        int ret;
        char b;
        struct timespec ts = {0, 300000000};
        struct sembuf op = {0, -1, 0};
        errno = 0;
        switch (k) {
        case 0: ret = epoll_wait(ep, &e, 1, -1); break;
        case 1: ret = epoll_pwait(ep, &e, 1, 300, NULL); break;
        case 2: ret = recv(sv[0], &b, 1, 0); break;
        case 3: ret = semtimedop(sem, &op, 1, &ts); break;
        default: ret = sigtimedwait(&set, NULL, &ts); break;
        }
        if (ret != 0 && !(ret == -1 && errno == EAGAIN)) FAIL("%s: %d, errno %d", what[k], ret, errno);
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sem = semget(IPC_PRIVATE, 1, 0600);
    if (sem < 0) return 4;
    report("sem %d", sem);
    for (long k = 0; k < 5; k++) {
        pthread_t t;
        pthread_create(&t, NULL, waiter, (void *)k);
    }
    for (long r = 0;; r++) {
        report("ok %ld", r);
        nap(100);
    }
}
