/* A thread waits in a call that a stop and a continue make fail with EINTR (signal(7):
 * epoll_wait, epoll_pwait, sigtimedwait, semop...), here epoll_wait(-1) on an empty
 * pipe, in a loop; each EINTR is reported ("eintr N"), as is any other return ("FAIL
 * ..."); SIGUSR1 (a handler, in its own thread's mask only) makes it report "ok N" */
#include "common.h"
#include <signal.h>
#include <sys/epoll.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

int main(int argc, char **argv) {
    open_report(argc, argv);
    int p[2];
    if (pipe(p)) _exit(4);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p[0]};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev)) _exit(4);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    report("ready %d", getpid());
    for (long n = 0, k = 0;;) {
        int r = epoll_wait(ep, &ev, 1, -1);
        if (r < 0 && errno == EINTR) {
            if (asked) { asked = 0; report("ok %ld", k++); }
            else report("eintr %ld", n++);
        } else report("FAIL epoll_wait %d %d", r, errno);
    }
}
