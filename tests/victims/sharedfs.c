/* Two processes sharing one fs_struct (clone with CLONE_FS, not a thread: cwd, root and
 * umask) are refused, not restored as copies (found by probing): each round the parent
 * sets a new umask and tells the child, which must see it as its own. */
#define _GNU_SOURCE
#include "common.h"
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>

static int pp[2], back[2];
static char stack[1 << 16];

static int child(void *a) {
    (void)a;
    for (;;) {
        unsigned char m;
        if (read(pp[0], &m, 1) != 1) _exit(1);
        mode_t now = umask(0);
        umask(now);
        unsigned char ok = now == m;
        if (write(back[1], &ok, 1) != 1) _exit(1);
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (pipe(pp) || pipe(back)) return 4;
    pid_t c = clone(child, stack + sizeof stack, CLONE_FS | SIGCHLD, NULL);
    if (c < 0) return 4;
    report("child %d", c);
    for (long r = 0;; r++) {
        unsigned char m = (unsigned char)(r * 7 % 64), ok = 0;
        umask(m);
        if (write(pp[1], &m, 1) != 1 || read(back[0], &ok, 1) != 1 || !ok)
            FAIL("the child does not share my umask");
        else
            report("ok %ld", r);
        nap(100);
    }
}
