/* Signals and timers aimed at threads survive (issue 9): a POSIX timer with
 * SIGEV_THREAD_ID is delivered to its thread (and no other), a glibc SIGEV_THREAD timer
 * (a helper thread waiting for signal 32) keeps calling its function, a pending signal
 * queued to one thread stays with it, and every catchable signal keeps its handler,
 * flags and mask, SIGTRAP (which cryo's single steps raise) included: each round
 * raises every one and counts the calls.  argv[2] = "hold": keep SIGUSR2 pending in the
 * worker thread (blocked there) and SIGRTMIN+5 pending process-wide (blocked everywhere);
 * the worker blocks SIGTRAP too (a single step there would reset its action).
 * argv[2] = "ignore": SIGTRAP is ignored (SIG_IGN), which a single step would also
 * reset to SIG_DFL; each round raises it.  argv[3]: the timers' period in microseconds
 * (20000 if absent): a short one makes them fire while cryo holds the threads. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

static volatile long calls[65], right, wrong, badval, thread_ticks;
static volatile pid_t worker_tid;
static int TSIG, ignore_trap;
static long period_ns = 20000000;

static void h_any(int s, siginfo_t *si, void *uc) { (void)si; (void)uc; calls[s]++; }
static void h_tsig(int s, siginfo_t *si, void *uc) {
    (void)s; (void)uc;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != 4242) { badval++; return; }
    if (syscall(SYS_gettid) == worker_tid) right++; else wrong++;
}
static void tick(union sigval v) { if (v.sival_int == 99) thread_ticks++; }
static int skip(int s) {  /* not catchable, glibc's own, or used otherwise here */
    return s == SIGKILL || s == SIGSTOP || s == 32 || s == 33 || s == TSIG ||
           (ignore_trap && s == SIGTRAP) ||
           s == SIGUSR2 || s == SIGRTMIN + 5;
}
static int mask_of(int s) {  /* one signal in its handler's mask */
    int m = (s % 60) + 1;
    return m == SIGKILL || m == SIGSTOP || m == 32 || m == 33 ? SIGHUP : m;
}
static int flags_of(int s) { return SA_SIGINFO | (s % 2 ? SA_RESTART : 0) | (s % 3 ? 0 : SA_NODEFER); }

static void *worker(void *arg) {
    int hold = (int)(long)arg;
    worker_tid = syscall(SYS_gettid);
    if (hold) {
        sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2); sigaddset(&m, SIGTRAP);
        pthread_sigmask(SIG_BLOCK, &m, NULL);
        syscall(SYS_tgkill, getpid(), worker_tid, SIGUSR2);
    }
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD_ID; ev.sigev_signo = TSIG; ev.sigev_value.sival_int = 4242;
    ev._sigev_un._tid = worker_tid;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t)) FAIL("timer_create %d", errno);
    struct itimerspec its = {{0, period_ns}, {0, period_ns}};
    timer_settime(t, 0, &its, NULL);
    for (;;) nap(1000);
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int hold = argc > 2 && !strcmp(argv[2], "hold");
    ignore_trap = argc > 2 && !strcmp(argv[2], "ignore");
    if (argc > 3) period_ns = atol(argv[3]) * 1000;
    if (ignore_trap) signal(SIGTRAP, SIG_IGN);
    TSIG = SIGRTMIN + 2;
    for (int s = 1; s <= 64; s++) {
        if (skip(s)) continue;
        struct sigaction sa = {0};
        sa.sa_sigaction = h_any; sa.sa_flags = flags_of(s);
        sigaddset(&sa.sa_mask, mask_of(s));
        if (sigaction(s, &sa, NULL)) FAIL("sigaction %d: %d", s, errno);
    }
    struct sigaction st = {0};
    st.sa_sigaction = h_tsig; st.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(TSIG, &st, NULL);
    if (hold) {
        struct sigaction u = {0};
        u.sa_sigaction = h_any; u.sa_flags = SA_SIGINFO;
        sigaction(SIGUSR2, &u, NULL);
        sigaction(SIGRTMIN + 5, &u, NULL);
        sigset_t m; sigemptyset(&m); sigaddset(&m, SIGRTMIN + 5);
        sigprocmask(SIG_BLOCK, &m, NULL);  /* inherited by the threads made next */
        union sigval v = {.sival_int = 555};
        sigqueue(getpid(), SIGRTMIN + 5, v);
    }
    pthread_t th;
    pthread_create(&th, NULL, worker, (void *)(long)hold);
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD; ev.sigev_notify_function = tick;
    ev.sigev_value.sival_int = 99;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t)) FAIL("timer_create SIGEV_THREAD %d", errno);
    struct itimerspec its = {{0, period_ns}, {0, period_ns}};
    timer_settime(t, 0, &its, NULL);
    while (!worker_tid) nap(1);
    nap(100);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        long r0 = right, t0 = thread_ticks;
        for (int s = 1; s <= 64; s++) {
            if (skip(s)) continue;
            struct sigaction sa;
            sigaction(s, NULL, &sa);
            int want = mask_of(s);
            if (sa.sa_sigaction != h_any || (sa.sa_flags & (SA_SIGINFO | SA_RESTART | SA_NODEFER)) != flags_of(s)
                || !sigismember(&sa.sa_mask, want)) { FAIL("action of %d", s); bad = 1; continue; }
            long c = calls[s];
            raise(s);
            if (calls[s] != c + 1) { FAIL("signal %d: handler not called", s); bad = 1; }
        }
        if (ignore_trap) {
            struct sigaction sa;
            sigaction(SIGTRAP, NULL, &sa);
            if (sa.sa_handler != SIG_IGN) { FAIL("SIGTRAP no longer ignored"); bad = 1; }
            else raise(SIGTRAP);  /* nothing happens */
        }
        nap(100);
        for (int i = 0; i < 40 && (right <= r0 || thread_ticks <= t0); i++) nap(50);  /* a loaded machine */
        if (right <= r0) { FAIL("thread timer stopped"); bad = 1; }
        if (wrong) { FAIL("thread timer signal in the wrong thread %ld times", wrong); bad = 1; }
        if (badval) { FAIL("thread timer signal without its siginfo %ld times", badval); bad = 1; }
        if (thread_ticks <= t0) { FAIL("SIGEV_THREAD timer stopped"); bad = 1; }
        if (hold) {
            sigset_t p; sigpending(&p);  /* this thread's and the process's */
            if (!sigismember(&p, SIGRTMIN + 5)) { FAIL("process-wide pending lost"); bad = 1; }
            if (sigismember(&p, SIGUSR2)) { FAIL("the worker's pending SIGUSR2 moved here"); bad = 1; }
            if (calls[SIGUSR2]) { FAIL("SIGUSR2 delivered"); bad = 1; }
        }
        if (!bad) report("ok %ld", round);
    }
}
