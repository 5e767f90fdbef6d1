/* Signals survive: handlers with their flags and masks, ignored signals, the blocked
 * mask, pending signals (standard and queued real-time ones with their values,
 * process-wide and thread-directed) and the alternate signal stack. */
#include "common.h"
#include <signal.h>
#include <sys/syscall.h>

static volatile sig_atomic_t usr1, on_altstack;
static char altstack[65536];

static void h_usr1(int s) { (void)s; usr1++; }
static void h_info(int s, siginfo_t *si, void *uc) { (void)s; (void)si; (void)uc; }
static void h_alt(int s) {
    (void)s;
    char here;
    on_altstack = (&here >= altstack && &here < altstack + sizeof altstack);
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    struct sigaction sa = {0};
    sa.sa_handler = h_usr1; sa.sa_flags = SA_RESTART; sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGUSR1, &sa, NULL);
    struct sigaction si = {0};
    si.sa_sigaction = h_info; si.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGRTMIN + 3, &si, NULL);
    struct sigaction alt = {0};
    alt.sa_handler = h_alt; alt.sa_flags = SA_ONSTACK;
    sigaction(SIGWINCH, &alt, NULL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    /* block some signals and leave them pending */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGRTMIN + 5);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, NULL);
    kill(getpid(), SIGUSR2);
    union sigval v1 = {.sival_int = 1234}, v2 = {.sival_int = 5678};
    sigqueue(getpid(), SIGRTMIN + 5, v1);
    sigqueue(getpid(), SIGRTMIN + 5, v2);
    syscall(SYS_tgkill, getpid(), getpid(), SIGINT); /* thread-directed */
    static struct sigaction want[65];
    for (int s = 1; s < 65; s++) sigaction(s, NULL, &want[s]);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        for (int s = 1; s < 65; s++) {
            if (s == SIGKILL || s == SIGSTOP) continue;
            struct sigaction now;
            memset(&now, 0, sizeof now);
            sigaction(s, NULL, &now);
            if (now.sa_handler != want[s].sa_handler || now.sa_flags != want[s].sa_flags ||
                memcmp(&now.sa_mask, &want[s].sa_mask, 8)) { FAIL("sigaction %d", s); bad = 1; }
        }
        sigset_t cur, pend;
        sigprocmask(SIG_BLOCK, NULL, &cur);
        if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGRTMIN + 5) || !sigismember(&cur, SIGINT) ||
            sigismember(&cur, SIGUSR1)) { FAIL("blocked mask"); bad = 1; }
        sigpending(&pend);
        if (!sigismember(&pend, SIGUSR2) || !sigismember(&pend, SIGRTMIN + 5) || !sigismember(&pend, SIGINT)) {
            FAIL("pending set"); bad = 1;
        }
        stack_t now_ss;
        sigaltstack(NULL, &now_ss);
        if (now_ss.ss_sp != altstack || now_ss.ss_size != sizeof altstack) { FAIL("altstack"); bad = 1; }
        /* handlers run: SIGUSR1 counted, SIGWINCH on the alternate stack */
        long before = usr1;
        kill(getpid(), SIGUSR1);
        if (usr1 != before + 1) { FAIL("SIGUSR1 handler"); bad = 1; }
        on_altstack = 0;
        kill(getpid(), SIGWINCH);
        if (!on_altstack) { FAIL("handler not on altstack"); bad = 1; }
        if (!bad) report("ok %ld", round);
        if (argc > 2 && round == atol(argv[2])) break;  /* then consume the queued signals */
        nap(20);
    }
    siginfo_t info;
    struct timespec zero = {0, 0};
    sigset_t rt; sigemptyset(&rt); sigaddset(&rt, SIGRTMIN + 5);
    int a = sigtimedwait(&rt, &info, &zero) == SIGRTMIN + 5 ? info.si_value.sival_int : -1;
    int b = sigtimedwait(&rt, &info, &zero) == SIGRTMIN + 5 ? info.si_value.sival_int : -1;
    sigset_t u2; sigemptyset(&u2); sigaddset(&u2, SIGUSR2);
    int c = sigtimedwait(&u2, &info, &zero);
    report("queued %d %d %d", a, b, c == SIGUSR2);
    for (;;) nap(1000);
}
