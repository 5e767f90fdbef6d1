/* A dnotify registration (F_NOTIFY on a directory, DN_CREATE | DN_MULTISHOT, its signal
 * set with F_SETSIG) is refused, not lost (found by probing): each round the process
 * makes a file in the directory and must get its signal, with si_fd its fd. */
#include "common.h"
#include <signal.h>
#include <sys/stat.h>
static volatile sig_atomic_t got;
static void h(int s, siginfo_t *si, void *u) { (void)s; (void)u; got = si->si_fd; }
int main(int argc, char **argv) {
    open_report(argc, argv);
    char dir[300]; snprintf(dir, sizeof dir, "%s.d", argv[1]); mkdir(dir, 0755);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    struct sigaction sa = {0}; sa.sa_sigaction = h; sa.sa_flags = SA_SIGINFO; sigaction(SIGRTMIN + 1, &sa, NULL);
    fcntl(dfd, F_SETSIG, SIGRTMIN + 1);
    if (fcntl(dfd, F_NOTIFY, DN_CREATE | DN_MULTISHOT)) FAIL("F_NOTIFY %d", errno);
    for (long r = 0;; r++) {
        got = 0;
        char f[400]; snprintf(f, sizeof f, "%s/f%ld", dir, r);
        close(open(f, O_CREAT | O_WRONLY, 0644)); unlink(f);
        for (int i = 0; i < 50 && !got; i++) nap(2);
        if (got != dfd) FAIL("no dnotify signal (got %d)", got); else report("ok %ld", r);
        nap(100);
    }
}
