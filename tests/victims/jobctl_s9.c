/* Job control between a parent and its stopped children (issue 9, session 9 h1):
 * argv: OUT MODE DIR.  The parent reports "ok N" each round it finds its state right, or
 * "FAIL what"; once DIR/go exists it takes its last steps and reports them.
 *   collected  a child stopped itself (SIGSTOP); the parent's SIGCHLD handler (SA_SIGINFO)
 *              ran once (CLD_STOPPED) and its waitid(WSTOPPED) took the report: each
 *              round waitid WNOWAIT finds no report, the count stays 1, the child is T.
 *              After go: SIGCONT, waitid(WCONTINUED) reports it ("continued"), the child
 *              exits 5 ("reaped")
 *   pending    the same, the report not taken: each round waitid WNOWAIT finds it
 *              (CLD_STOPPED, SIGSTOP).  After go: waitid(WSTOPPED) takes it, then none
 *              is left ("took"), then as collected
 *   blocked    SIGCHLD blocked in the parent: the child's stop left it pending, once.
 *              After go: sigtimedwait takes it (CLD_STOPPED from the child), then no
 *              other ("sigchld once"), then as collected
 *   chain      a child that forked a grandchild, which stopped (SIGSTOP), took its stop
 *              (waitid) and then stopped itself (SIGSTOP); the parent's report of it
 *              not taken.  After go: the parent takes it ("took") and continues the
 *              child, which checks
 *              that it finds no report of its grandchild and that its own handler ran
 *              once ("child ok" or FAIL), continues and reaps the grandchild, exits 5
 *   group      two children in a process group of their own, stopped by one kill(-pgid,
 *              SIGSTOP): the handler's count as it was, the first child's report taken,
 *              the second's not.  After go: SIGCONT to the group, each reaped
 *   continued  a child stopped and continued (SIGCONT) by the parent, which took the stop
 *              report but not the continued one: each round waitid WNOWAIT finds
 *              CLD_CONTINUED (SIGCONT), the child runs (it reports "cok N" rounds).  After
 *              go: waitid(WCONTINUED) takes it ("took continued"), the child is killed
 *              (SIGTERM) and reaped
 *   continuedmt  the same, the child with a second thread (which reports "tok N") */
#include "common.h"
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static char go_path[4200];
static volatile sig_atomic_t stops, others;
static pid_t kid = -1;

static int go(void) { return !access(go_path, F_OK); }

static void on_chld(int s, siginfo_t *si, void *uc) {
    (void)s; (void)uc;
    if (si->si_code == CLD_STOPPED) stops++;
    else others++;
}

static void handler(void) {
    struct sigaction sa = {0};
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
}

static char state_of(pid_t pid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    if (f < 0) return '?';
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0) return '?';
    buf[n] = 0;
    char *r = strrchr(buf, ')');
    return r && r[1] ? r[2] : '?';
}

/* the stop report of ``pid`` a wait would give now (0: none), not taken */
static int report_of(pid_t pid) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, pid, &si, WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT)) return -1;
    return si.si_pid ? (si.si_code << 8 | si.si_status) : 0;
}

static void last_steps(void) {
    siginfo_t si;
    kill(kid, SIGCONT);
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, kid, &si, WCONTINUED) || si.si_code != CLD_CONTINUED) FAIL("continued: code %d", si.si_code);
    else report("continued");
    int st;
    if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 5) FAIL("reaped: %#x", st);
    else report("reaped");
}

/* the child of "chain": forks the grandchild, takes its stop, stops itself */
static void chain_child(void) {
    handler();
    stops = 0;
    pid_t g = fork();
    if (g == 0) { raise(SIGSTOP); _exit(6); }
    siginfo_t si;
    if (waitid(P_PID, g, &si, WSTOPPED)) FAIL("child: waitid");
    while (!stops) nap(5);
    report("other %d", g);
    raise(SIGSTOP);  /* continued after go by the parent */
    int bad = 0;
    if (report_of(g) != 0) { FAIL("child: its grandchild's stop reported again: %#x", report_of(g)); bad = 1; }
    if (stops != 1) { FAIL("child: CLD_STOPPED came %d times", (int)stops); bad = 1; }
    if (state_of(g) != 'T') { FAIL("child: the grandchild is %c", state_of(g)); bad = 1; }
    if (!bad) report("child ok");
    kill(g, SIGCONT);
    int st;
    if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 6) FAIL("child: reaped %#x", st);
    _exit(5);
}

static pid_t kid2 = -1;
static int group_stops;

static int group_main(void) {
    pid_t a = fork();
    if (a == 0) { setpgid(0, 0); for (;;) nap(1000); }
    setpgid(a, a);
    pid_t b = fork();
    if (b == 0) { setpgid(0, a); for (;;) nap(1000); }
    setpgid(b, a);
    kid = a; kid2 = b;
    nap(50);
    kill(-a, SIGSTOP);  /* (two SIGCHLDs close together may come as one: counted as seen) */
    while (!stops || state_of(a) != 'T' || state_of(b) != 'T') nap(5);
    nap(100);
    group_stops = stops;
    siginfo_t si;
    if (waitid(P_PID, a, &si, WSTOPPED) || si.si_code != CLD_STOPPED) FAIL("group: waitid");
    report("other %d", a);
    report("other %d", b);
    return 0;
}

static int group_check(void) {
    int bad = 0;
    if (report_of(kid) != 0) { FAIL("group: the first's stop reported again: %#x", report_of(kid)); bad = 1; }
    if (report_of(kid2) != (CLD_STOPPED << 8 | SIGSTOP)) { FAIL("group: the second's report %#x", report_of(kid2)); bad = 1; }
    if (stops != group_stops || others) { FAIL("group: CLD_STOPPED %d times, not %d, others %d", (int)stops, group_stops, (int)others); bad = 1; }
    if (state_of(kid) != 'T' || state_of(kid2) != 'T') { FAIL("group: %c %c", state_of(kid), state_of(kid2)); bad = 1; }
    if (getpgid(kid) != kid || getpgid(kid2) != kid) { FAIL("group: groups %d %d", getpgid(kid), getpgid(kid2)); bad = 1; }
    return bad;
}

static void group_last(void) {
    kill(-kid, SIGCONT);
    kill(-kid, SIGTERM);
    int st, n = 0;
    for (int i = 0; i < 2; i++) {
        pid_t w = waitpid(-kid, &st, 0);
        if ((w == kid || w == kid2) && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) n++;
    }
    if (n != 2) FAIL("group: reaped %d", n);
    else report("reaped");
}

static void *kid_thread(void *arg) {
    (void)arg;
    for (long r = 0;; r++) { report("tok %d %ld", getpid(), r); nap(50); }
    return NULL;
}

static int continued_main(int mt) {
    kid = fork();
    if (kid == 0) {
        pthread_t th;
        if (mt && pthread_create(&th, NULL, kid_thread, NULL)) FAIL("pthread_create");
        for (long r = 0;; r++) { report("cok %d %ld", getpid(), r); nap(50); }
    }
    report("child %d", kid);
    nap(50);
    kill(kid, SIGSTOP);
    while (!stops) nap(5);
    siginfo_t si;
    if (waitid(P_PID, kid, &si, WSTOPPED) || si.si_code != CLD_STOPPED) FAIL("continued: waitid stop");
    kill(kid, SIGCONT);
    while (!others) nap(5);
    report("other %d", kid);
    return 0;
}

/* the threads of pid in a group stop (T: not t, a tracer's, as while a checkpoint holds it) */
static int stopped_threads(pid_t pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task", pid);
    DIR *d = opendir(p);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char q[600], buf[512];
        snprintf(q, sizeof q, "%s/%s/stat", p, e->d_name);
        int f = open(q, O_RDONLY | O_CLOEXEC);
        ssize_t k = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
        if (f >= 0) close(f);
        if (k <= 0) continue;
        buf[k] = 0;
        char *r = strrchr(buf, ')');
        if (r && r[2] == 'T') n++;
    }
    closedir(d);
    return n;
}

static int continued_check(void) {
    int bad = 0;
    if (stopped_threads(kid)) { FAIL("continued: %d threads of the child stopped", stopped_threads(kid)); bad = 1; }
    if (report_of(kid) != (CLD_CONTINUED << 8 | SIGCONT)) { FAIL("continued: the report is %#x", report_of(kid)); bad = 1; }
    if (stops != 1 || others != 1) { FAIL("continued: CLD_STOPPED %d, others %d", (int)stops, (int)others); bad = 1; }
    if (state_of(kid) == 'T') { FAIL("continued: the child is stopped"); bad = 1; }
    return bad;
}

static void continued_last(void) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, kid, &si, WCONTINUED | WNOHANG) || si.si_code != CLD_CONTINUED) FAIL("took continued: %d", si.si_code);
    else report("took continued");
    kill(kid, SIGTERM);
    int st;
    if (waitpid(kid, &st, 0) != kid || !WIFSIGNALED(st)) FAIL("reaped %#x", st);
    else report("reaped");
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    const char *mode = argv[2];
    snprintf(go_path, sizeof go_path, "%s/go", argv[3]);
    int blocked = !strcmp(mode, "blocked"), chain = !strcmp(mode, "chain");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    handler();
    int group = !strcmp(mode, "group"), mt = !strcmp(mode, "continuedmt");
    int cont = mt || !strcmp(mode, "continued");
    if (group || cont) {
        if (group) group_main();
        else continued_main(mt);
        report("ready %d", getpid());
        int done = 0;
        for (long round = 0;; round++) {
            int bad = done ? 0 : group ? group_check() : continued_check();
            if (!done && go()) {
                done = 1;
                if (group) group_last();
                else continued_last();
            }
            if (!bad) report("ok %ld", round);
            nap(50);
        }
    }
    if (blocked) sigprocmask(SIG_BLOCK, &chld, NULL);
    kid = fork();
    if (kid == 0) {
        if (chain) chain_child();
        raise(SIGSTOP);
        _exit(5);
    }
    if (blocked) {
        for (int i = 0; i < 400 && state_of(kid) != 'T'; i++) nap(5);
    } else {
        while (!stops) nap(5);
    }
    if (!strcmp(mode, "collected")) {
        siginfo_t si;
        if (waitid(P_PID, kid, &si, WSTOPPED) || si.si_code != CLD_STOPPED) FAIL("waitid");
    }
    report("other %d", kid);
    report("ready %d", getpid());
    int done = 0;
    for (long round = 0;; round++) {
        int bad = 0;
        if (!done) {
            int want = !strcmp(mode, "collected") ? 0 : (CLD_STOPPED << 8 | SIGSTOP);
            int got = report_of(kid);
            if (got != want) { FAIL("%s: the stop report is %#x, not %#x", mode, got, want); bad = 1; }
            if (stops != (blocked ? 0 : 1) || others) {
                FAIL("%s: CLD_STOPPED came %d times, other SIGCHLDs %d", mode, (int)stops, (int)others); bad = 1;
            }
            sigset_t p;
            sigpending(&p);
            if (sigismember(&p, SIGCHLD) != blocked) { FAIL("%s: SIGCHLD pending %d", mode, sigismember(&p, SIGCHLD)); bad = 1; }
            if (state_of(kid) != 'T') { FAIL("%s: the child is %c", mode, state_of(kid)); bad = 1; }
        }
        if (!done && go()) {
            done = 1;
            if (!strcmp(mode, "pending") || chain) {
                siginfo_t si;
                memset(&si, 0, sizeof si);
                if (waitid(P_PID, kid, &si, WSTOPPED | WNOHANG) || si.si_pid != kid) FAIL("took: %d", si.si_pid);
                else if (report_of(kid) != 0) FAIL("took: a report is left");
                else report("took");
            }
            if (blocked) {
                siginfo_t si;
                struct timespec zero = {0, 0};
                int s1 = sigtimedwait(&chld, &si, &zero);
                int code = si.si_code, from = si.si_pid;
                int s2 = sigtimedwait(&chld, &si, &zero);
                if (s1 != SIGCHLD || code != CLD_STOPPED || from != kid || s2 != -1)
                    FAIL("sigchld: %d code %d from %d (child %d), then %d", s1, code, from, kid, s2);
                else report("sigchld once");
                sigprocmask(SIG_UNBLOCK, &chld, NULL);
            }
            last_steps();
        }
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
