/* Job control and pdeathsig in a tree (issue 9).  The parent P forks A, which stops
 * itself with SIGSTOP, or with SIGTSTP in a process group of its own (argv[2] "tstp":
 * the kernel ignores SIGTSTP in an orphaned group) (P does not collect that stop yet),
 * and B, which asks for SIGUSR1
 * when its parent dies.  After a restart A must still be stopped; on SIGUSR1, P collects
 * A's stop with waitid(WSTOPPED), continues it and collects that with WCONTINUED; when
 * P is killed, B gets its pdeathsig.  C died by SIGTERM and is a zombie, collected by P
 * on SIGUSR1 too.  Lines: "ready P A B C", "ok N", "waited stopped SIG",
 * "waited continued", "a continued", "zombie SIGNALED SIG", "pdeath". */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static volatile sig_atomic_t go, pdeath;
static void h_go(int s) { (void)s; go = 1; }
static void h_pdeath(int s) { (void)s; pdeath = 1; }

static char state_of(pid_t pid) {
    char path[64], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0) return '?';
    close(fd);
    char *p = strrchr(buf, ')');
    return p ? p[2] : '?';
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    pid_t parent = getpid();
    pid_t a = fork();
    int tstp = argc > 2 && !strcmp(argv[2], "tstp");
    if (a == 0) {
        if (tstp) { setpgid(0, 0); raise(SIGTSTP); } else raise(SIGSTOP);
        report("a continued");
        for (;;) nap(100);
    }
    pid_t b = fork();
    if (b == 0) {
        signal(SIGUSR1, h_pdeath);
        prctl(PR_SET_PDEATHSIG, SIGUSR1);
        if (getppid() != parent) _exit(1);
        for (;;) {
            if (pdeath) { report("pdeath"); _exit(0); }
            nap(20);
        }
    }
    pid_t c = fork();
    if (c == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(1);
    }
    signal(SIGUSR1, h_go);
    while (state_of(a) != 'T' || state_of(c) != 'Z') nap(10);
    report("ready %d %d %d %d", getpid(), a, b, c);
    int continued = 0;
    for (long round = 0;; round++) {
        if (go && !continued) {
            siginfo_t si = {0};
            if (waitid(P_PID, a, &si, WSTOPPED | WNOHANG) || si.si_pid != a)
                FAIL("no stop to collect (%d)", errno);
            else
                report("waited stopped %d %d", si.si_code == CLD_STOPPED, si.si_status);
            kill(a, SIGCONT);
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, a, &si, WCONTINUED)) FAIL("waitid WCONTINUED %d", errno);
            else report("waited continued %d", si.si_code == CLD_CONTINUED);
            int st = 0;
            if (waitpid(c, &st, WNOHANG) != c) FAIL("no zombie to collect (%d)", errno);
            else report("zombie %d %d", WIFSIGNALED(st), WIFSIGNALED(st) ? WTERMSIG(st) : -1);
            continued = 1;
        }
        char st = state_of(a);
        for (int i = 0; i < 5 && st == 'R'; i++) { nap(10); st = state_of(a); }  /* a detach: back to its stop */
        if (!continued && st != 'T' && st != 't') FAIL("child state %c", st);
        else report("ok %ld", round);
        nap(50);
    }
}
