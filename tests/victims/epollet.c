/* Edge-triggered and one-shot epoll watches keep their ready list across a checkpoint
 * and a restart (found by probing, docs/state-coverage.md).  Epoll `ep` watches, each
 * on a pipe holding one byte never read: A with EPOLLET (its edge taken before the
 * checkpoint), B with EPOLLONESHOT (fired: disarmed), C with EPOLLET|EPOLLEXCLUSIVE (taken
 * too), D level-triggered (reports every time); and E with EPOLLET, which gets a new
 * byte, so a new edge, each round.  Each round epoll_wait must give D and E once each,
 * nothing else.  A second epoll `ep2`, never waited on before "go" exists (argv[2]), holds
 * F (EPOLLET, its edge queued and not taken) and G (EPOLLET, taken): after "go" it must
 * give F once, then nothing.  Restored by adding every watch again, A, C, F and G each
 * reported one more event (a ready file added is queued) and B came back armed. */
#include "common.h"
#include <sys/epoll.h>
#include <sys/stat.h>

static int pipe_with_byte(int *wr) {
    int p[2];
    if (pipe2(p, O_NONBLOCK)) _exit(4);
    if (write(p[1], "x", 1) != 1) _exit(4);
    if (wr) *wr = p[1];
    return p[0];
}

static void add(int ep, int fd, unsigned ev) {
    struct epoll_event e = {.events = ev, .data.u64 = 1000 + fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e)) { FAIL("epoll_ctl add %d: %d", fd, errno); _exit(4); }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    const char *go = argc > 2 ? argv[2] : "/nonexistent";
    int ep = epoll_create1(0), ep2 = epoll_create1(0), ewr;
    int a = pipe_with_byte(NULL), b = pipe_with_byte(NULL), c = pipe_with_byte(NULL);
    int d = pipe_with_byte(NULL), e = pipe_with_byte(&ewr);
    int f = pipe_with_byte(NULL), g = pipe_with_byte(NULL);
    add(ep, a, EPOLLIN | EPOLLET);
    add(ep, b, EPOLLIN | EPOLLONESHOT);
    add(ep, c, EPOLLIN | EPOLLET | EPOLLEXCLUSIVE);
    add(ep, d, EPOLLIN);
    add(ep, e, EPOLLIN | EPOLLET);
    add(ep2, g, EPOLLIN | EPOLLET);
    struct epoll_event evs[16];
    if (epoll_wait(ep2, evs, 16, 0) != 1) FAIL("ep2: G not reported first");
    add(ep2, f, EPOLLIN | EPOLLET);
    report("ready");
    int done2 = 0;
    for (long r = 0;; r++) {
        if (write(ewr, "y", 1) != 1) FAIL("write E");
        int n = epoll_wait(ep, evs, 16, 50), seen_d = 0, seen_e = 0, bad = 0;
        for (int i = 0; i < n; i++) {
            int fd = (int)(evs[i].data.u64 - 1000);
            if (fd == d) seen_d++;
            else if (fd == e) seen_e++;
            else if (r > 0 || (fd != a && fd != b && fd != c)) {
                FAIL("round %ld: an event for %c", r, fd == a ? 'A' : fd == b ? 'B' : fd == c ? 'C' : '?');
                bad = 1;
            }
        }
        if (!bad && (seen_d != 1 || seen_e != 1)) { FAIL("round %ld: D %d, E %d", r, seen_d, seen_e); bad = 1; }
        struct stat st;
        if (!done2 && stat(go, &st) == 0) {
            int m = epoll_wait(ep2, evs, 16, 0);
            if (m != 1 || (int)(evs[0].data.u64 - 1000) != f) { FAIL("ep2 gave %d events, first %d", m, m > 0 ? (int)(evs[0].data.u64 - 1000) : -1); bad = 1; }
            else if ((m = epoll_wait(ep2, evs, 16, 0)) != 0) { FAIL("ep2 gave %d more", m); bad = 1; }
            else report("ep2 ok");
            done2 = 1;
        }
        if (!bad) report("ok %ld", r);
        nap(100);
    }
}
