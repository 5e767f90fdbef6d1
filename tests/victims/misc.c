/* The rest of a task survives: comm, rlimits, an interval timer and a POSIX timer
 * still ticking, pdeathsig, the robust futex list, rseq registration, umask. */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <linux/rseq.h>
#include <stddef.h>

static volatile long alarms, timer_ticks;
static void h_alrm(int s) { (void)s; alarms++; }
static void h_tmr(int s, siginfo_t *si, void *uc) { (void)s; (void)uc; if (si->si_value.sival_int == 42) timer_ticks++; }

int main(int argc, char **argv) {
    open_report(argc, argv);
    prctl(PR_SET_NAME, "cryo-misc");
    struct rlimit rl = {200, 300};
    setrlimit(RLIMIT_NOFILE, &rl);
    struct rlimit core = {12345 * 4096, RLIM_INFINITY};
    setrlimit(RLIMIT_CORE, &core);
    prctl(PR_SET_PDEATHSIG, SIGUSR2);
    signal(SIGUSR2, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = h_alrm; sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 50000}, {0, 50000}};
    setitimer(ITIMER_REAL, &it, NULL);
    struct sigaction st = {0};
    st.sa_sigaction = h_tmr; st.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &st, NULL);
    timer_t tid;
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_SIGNAL; sev.sigev_signo = SIGRTMIN + 1; sev.sigev_value.sival_int = 42;
    timer_create(CLOCK_MONOTONIC, &sev, &tid);
    struct itimerspec its = {{0, 30000000}, {0, 30000000}};
    timer_settime(tid, 0, &its, NULL);
    void *robust_head; size_t robust_len;
    syscall(SYS_get_robust_list, 0, &robust_head, &robust_len);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        char name[17] = {0};
        prctl(PR_GET_NAME, name);
        if (strcmp(name, "cryo-misc")) { FAIL("comm %s", name); bad = 1; }
        struct rlimit now;
        getrlimit(RLIMIT_NOFILE, &now);
        if (now.rlim_cur != 200 || now.rlim_max != 300) { FAIL("RLIMIT_NOFILE %ld", (long)now.rlim_cur); bad = 1; }
        getrlimit(RLIMIT_CORE, &now);
        if (now.rlim_cur != 12345 * 4096) { FAIL("RLIMIT_CORE"); bad = 1; }
        int pd = 0;
        prctl(PR_GET_PDEATHSIG, &pd);
        if (pd != SIGUSR2) { FAIL("pdeathsig %d", pd); bad = 1; }
        void *h; size_t l;
        syscall(SYS_get_robust_list, 0, &h, &l);
        if (h != robust_head || l != robust_len) { FAIL("robust list"); bad = 1; }
        long a0 = alarms, t0 = timer_ticks;
        nap(200);
        if (alarms <= a0) { FAIL("itimer stopped"); bad = 1; }
        if (timer_ticks <= t0) { FAIL("posix timer stopped"); bad = 1; }
        struct itimerspec cur;
        if (timer_gettime(tid, &cur) || cur.it_interval.tv_nsec != 30000000) { FAIL("timer_gettime"); bad = 1; }
        /* rseq: glibc registered it; the kernel keeps cpu_id up to date */
        extern const ptrdiff_t __rseq_offset __attribute__((weak));
        if (&__rseq_offset) {
            struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
            if ((int)rs->cpu_id < 0) { FAIL("rseq cpu_id %d", (int)rs->cpu_id); bad = 1; }
        }
        if (!bad) report("ok %ld", round);
    }
}
