/* A forking server: a parent and two children, a pipe from the parent to the children
 * with requests in flight, a MAP_SHARED anonymous region they all count in, each child in
 * its own process group; and a third child that exited with status 7 and is not reaped
 * yet (a zombie) until the parent is told to reap it (SIGUSR1). */
#include "common.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

struct shared { volatile long served[2]; volatile long produced; };
static volatile sig_atomic_t reap_now;
static void on_usr1(int s) { (void)s; reap_now = 1; }

static void child(int k, int rfd, struct shared *sh) {
    for (;;) {
        long req;
        ssize_t n = read(rfd, &req, sizeof req);
        if (n != sizeof req) { report("FAIL child %d read %zd", k, n); _exit(1); }
        if (req < 0) { report("FAIL bad request"); }
        __atomic_add_fetch(&sh->served[k], 1, __ATOMIC_SEQ_CST);
        nap(3);
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int p[2];
    if (pipe(p)) _exit(4);
    signal(SIGUSR1, on_usr1);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) { setpgid(0, 0); close(p[1]); child(k, p[0], sh); }
        setpgid(kids[k], kids[k]);
    }
    pid_t z = fork();
    if (z == 0) _exit(7);
    close(p[0]);
    report("ready %d %d %d %d", getpid(), kids[0], kids[1], z);
    for (long round = 0;; round++) {
        for (int i = 0; i < 20; i++) {  /* requests pile up in the pipe */
            long req = round * 20 + i;
            if (write(p[1], &req, sizeof req) != sizeof req) report("FAIL write");
            sh->produced++;
        }
        nap(50);
        long served = sh->served[0] + sh->served[1];
        if (served > sh->produced || served < 0) report("FAIL served %ld of %ld", served, sh->produced);
        for (int k = 0; k < 2; k++)
            if (getpgid(kids[k]) != kids[k]) report("FAIL child %d pgid %d", k, getpgid(kids[k]));
        if (reap_now == 1) {
            int st;
            pid_t got = waitpid(z, &st, WNOHANG);
            report("reaped %d %d %d", got == z, WIFEXITED(st), WEXITSTATUS(st));
            reap_now = 2;
        }
        report("ok %ld %ld %ld", round, served, sh->produced);
    }
}
