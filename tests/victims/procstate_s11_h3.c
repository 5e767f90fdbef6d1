/* Unusual process state for test_probes_s11_h3: OUT MODES DIR, MODES a comma list.
 * Sets each mode's state (in the main thread and two more), prints "ready", then sits in
 * sigsuspend (the threads in pause, every signal blocked) so that the test can read its
 * /proc files twice and find them equal; each SIGUSR1 makes it check, from inside, what
 * /proc does not show, and print "ok N" or "FAIL what". */
#include "common.h"
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/fanotify.h>
#include <sys/epoll.h>
#include <sys/inotify.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#define PR_GET_IO_FLUSHER 58
#endif
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#define MDWE_REFUSE_EXEC_GAIN 1
#define CAP_SYS_BOOT_ 22
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

struct attr {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t prio;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};

static int has(const char *modes, const char *m) {
    size_t n = strlen(m);
    for (const char *p = modes; (p = strstr(p, m)); p += n)
        if ((p == modes || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
    return 0;
}

static const char *modes;
static volatile sig_atomic_t go;
static pthread_barrier_t bar;
static long spec = -1;
static int io_flusher;
static char *maps[24];

static int pfd[2], ofd[2], sfd[2], ep = -1;

static void on_usr1(int s) { (void)s; go = 1; }
static void on_other(int s, siginfo_t *si, void *uc) { (void)s; (void)si; (void)uc; }

static int getattr_(pid_t tid, struct attr *a) {
    memset(a, 0, sizeof *a);
    return syscall(SYS_sched_getattr, tid, a, sizeof *a, 0);
}

static pid_t tids[3];

static void *thread(void *arg) {
    long i = (long)arg;
    tids[i] = gettid();
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", i);
    if (has(modes, "prctl")) {
        prctl(PR_SET_NAME, name);
        prctl(PR_SET_TIMERSLACK, 1000 + 777 * i);
    }
    if (has(modes, "sched")) {
        struct attr a = {.size = sizeof a};
        if (i == 1) {  /* fair, utilization clamps and a custom slice */
            a.policy = SCHED_NORMAL; a.nice = 3; a.runtime = 2500000;
            a.flags = SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
            a.util_min = 100; a.util_max = 800;
        } else {  /* deadline */
            a.policy = SCHED_DEADLINE; a.runtime = 1000000; a.deadline = 8000000;
            a.period = 10000000;
        }
        if (syscall(SYS_sched_setattr, 0, &a, 0) && errno == EOPNOTSUPP && i == 1) {
            a.flags = 0;  /* a kernel without CONFIG_UCLAMP_TASK */
            a.util_min = 0; a.util_max = 1024;
            syscall(SYS_sched_setattr, 0, &a, 0);
        }
        struct attr g;
        if (getattr_(0, &g) || g.policy != a.policy) report("FAIL sched_setattr %ld %d", i, errno);
    }
    if (has(modes, "signals")) {  /* its own alternate stack and mask, a signal pending */
        stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536};
        if (sigaltstack(&ss, NULL)) report("FAIL sigaltstack %d", errno);
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGRTMIN + (int)i);
        sigaddset(&m, SIGWINCH);
        pthread_sigmask(SIG_BLOCK, &m, NULL);
        union sigval sv = {.sival_int = 40 + (int)i};
        if (syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), SIGRTMIN + (int)i,
                    &(siginfo_t){.si_signo = SIGRTMIN + (int)i, .si_code = SI_QUEUE,
                                 .si_pid = getpid(), .si_value = sv}))
            report("FAIL tgsigqueueinfo %d", errno);
    }
    if (has(modes, "affinity")) {
        cpu_set_t c;
        CPU_ZERO(&c);
        CPU_SET(i % 2, &c);
        sched_setaffinity(0, sizeof c, &c);
        setpriority(PRIO_PROCESS, 0, (int)i * 2);
        syscall(SYS_ioprio_set, 1, 0, (2 << 13) | (int)i);  /* best effort, level i */
    }
    pthread_barrier_wait(&bar);
    for (;;) pause();
    return NULL;
}

static void set_state(const char *dir) {
    if (has(modes, "prctl")) {
        prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        prctl(PR_SET_KEEPCAPS, 1);
        prctl(PR_SET_TIMERSLACK, 123456);
        prctl(PR_SET_NAME, "main-s11");
        if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0) io_flusher = 1;
        else if (errno != EPERM) report("FAIL io_flusher %d", errno);  /* (CAP_SYS_RESOURCE) */
        if (prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)) report("FAIL mdwe %d", errno);
        if (prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0) == 0)
            spec = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
    }
    if (has(modes, "rlimit")) {
        struct rlimit r;
        int res[] = {RLIMIT_NOFILE, RLIMIT_CORE, RLIMIT_SIGPENDING, RLIMIT_MSGQUEUE,
                     RLIMIT_NICE, RLIMIT_RTPRIO, RLIMIT_RTTIME, RLIMIT_MEMLOCK, RLIMIT_CPU,
                     RLIMIT_FSIZE, RLIMIT_LOCKS, RLIMIT_NPROC, RLIMIT_AS, RLIMIT_DATA};
        for (unsigned i = 0; i < sizeof res / sizeof *res; i++) {
            getrlimit(res[i], &r);
            if (r.rlim_max == 0) continue;
            r.rlim_cur = r.rlim_max == RLIM_INFINITY ? (rlim_t)(1 << 30) + i : r.rlim_max - 1;
            if (res[i] == RLIMIT_NOFILE) r.rlim_cur = 333;
            if (setrlimit(res[i], &r)) report("FAIL setrlimit %d %d", res[i], errno);
        }
    }
    if (has(modes, "persona"))
        personality(PER_LINUX | UNAME26 | STICKY_TIMEOUTS | SHORT_INODE | WHOLE_SECONDS);
    if (has(modes, "sched")) {
        struct attr a = {.size = sizeof a, .policy = SCHED_BATCH, .nice = 5};
        if (syscall(SYS_sched_setattr, 0, &a, 0)) report("FAIL batch %d", errno);
    }
    if (has(modes, "signals")) {  /* actions with flags, a process-wide pending signal */
        struct sigaction sa = {.sa_sigaction = on_other,
                               .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART};
        sigaddset(&sa.sa_mask, SIGTERM);
        sigaction(SIGWINCH, &sa, NULL);
        sa.sa_flags = SA_RESETHAND | SA_SIGINFO;
        sigaction(SIGURG, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGWINCH);
        sigprocmask(SIG_BLOCK, &m, NULL);
        kill(getpid(), SIGWINCH);  /* pending, shared */
    }
    if (has(modes, "timers")) {  /* POSIX timers of several clocks, interval timers */
        clockid_t clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME,
                              CLOCK_PROCESS_CPUTIME_ID};
        for (int k = 0; k < 4; k++) {
            struct sigevent ev = {.sigev_notify = k == 3 ? SIGEV_NONE : SIGEV_SIGNAL,
                                  .sigev_signo = SIGRTMIN + 5 + k};
            timer_t t;
            if (timer_create(clocks[k], &ev, &t)) { report("FAIL timer_create %d", errno); continue; }
            struct itimerspec its = {.it_value = {3600 + k, 0}, .it_interval = {7200, 0}};
            timer_settime(t, 0, &its, NULL);
        }
        struct itimerval iv = {.it_value = {5000, 0}, .it_interval = {5000, 0}};
        signal(SIGALRM, SIG_IGN);
        setitimer(ITIMER_REAL, &iv, NULL);
    }
    if (has(modes, "creds")) {  /* fewer capabilities, securebits, no_new_privs, seccomp */
        prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT_, 0, 0, 0);
        prctl(PR_SET_SECUREBITS, 1 << 2 /* SECBIT_NO_SETUID_FIXUP */, 0, 0, 0);
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        struct sock_filter f[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        struct sock_fprog prog = {.len = 1, .filter = f};
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) report("FAIL seccomp %d", errno);
        if (setresgid(0, 1234, 0) || setresuid(0, 4321, 0)) report("FAIL setres %d", errno);
    }
    if (has(modes, "shared")) {  /* shared anonymous memory and a memfd, mapped */
        char *p = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        memset(p, 's', 4096 * 2);
        int fd = memfd_create("s11-h3", MFD_ALLOW_SEALING);
        if (ftruncate(fd, 3 * 4096)) report("FAIL ftruncate");
        char *q = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        q[4096] = 'm';
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
        maps[15] = p;
    }
    if (has(modes, "thp")) {  /* a huge page, faulted in whole (MADV_HUGEPAGE) */
        char *p = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char *h = (char *)(((long)p + (2 << 20) - 1) & ~((2L << 20) - 1));
        if (madvise(h, 4 << 20, MADV_HUGEPAGE)) report("FAIL thp madvise %d", errno);
        memset(h, 't', 2 << 20);
        h[(2 << 20) + 5] = 'u';  /* and one small page write in the next 2 MiB */
    }
    if (has(modes, "softdirty")) {  /* soft-dirty bits cleared, then 2 of 8 pages written */
        char *p = maps[12 + 4] = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(p, 'd', 8 * 4096);
        int fd = open("/proc/self/clear_refs", O_WRONLY);
        if (fd < 0 || write(fd, "4", 1) != 1) report("FAIL clear_refs %d", errno);
        close(fd);
        p[2 * 4096] = 'e';
        p[5 * 4096] = 'f';
    }
    if (has(modes, "account")) {  /* committed memory kept by no page: a JVM's guard */
        char *p = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        p[0] = 1;
        madvise(p, 4 * 4096, MADV_DONTNEED);
        mprotect(p, 2 * 4096, PROT_NONE);
        mprotect(p + 2 * 4096, 2 * 4096, PROT_READ);
    }
    if (has(modes, "fanotify")) {  /* a group (FAN_NONBLOCK), two inode marks in order */
        int g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
        if (g < 0) report("FAIL fanotify_init %d", errno);
        for (int k = 0; k < 2; k++) {
            char path[512];
            snprintf(path, sizeof path, "%s/fan%d", dir, k);
            close(open(path, O_WRONLY | O_CREAT, 0644));
            if (fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY | (k ? FAN_CLOSE_WRITE : 0), AT_FDCWD,
                              path))
                report("FAIL fanotify_mark %d", errno);
        }
    }
    if (has(modes, "oneshot")) {  /* one-shot watches that fired: disarmed */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 1};
        ep = epoll_create1(0);
        if (pipe(ofd) || pipe(sfd)) report("FAIL pipe");
        epoll_ctl(ep, EPOLL_CTL_ADD, ofd[0], &ev);
        ev.events = EPOLLOUT | EPOLLONESHOT; ev.data.u64 = 2;  /* a write end with room */
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd[1], &ev);
        if (write(ofd[1], "x", 1) != 1) report("FAIL write");
        struct epoll_event got[4];
        if (epoll_wait(ep, got, 4, 1000) != 2) report("FAIL epoll_wait");
        char c;
        if (read(ofd[0], &c, 1) != 1) report("FAIL read");
        if (!has(modes, "idle") && write(ofd[1], "y", 1) != 1)  /* (readable: can fire) */
            report("FAIL write");
    }
    if (has(modes, "inotify")) {  /* three watches, in order */
        int in = inotify_init1(IN_NONBLOCK);
        for (int k = 0; k < 3; k++) {
            char path[512];
            snprintf(path, sizeof path, "%s/ino%d", dir, k);
            close(open(path, O_WRONLY | O_CREAT, 0644));
            if (inotify_add_watch(in, path, IN_MODIFY | (k ? IN_ATTRIB : 0)) < 0)
                report("FAIL inotify_add_watch %d", errno);
        }
    }
    if (has(modes, "ksm")) {
        if (prctl(67 /* PR_SET_MEMORY_MERGE */, 1, 0, 0, 0)) report("FAIL memory_merge %d", errno);
        char *p = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(p, 'k', 8 * 4096);
    }
    if (has(modes, "child")) {  /* a child in pause, a zombie */
        if (fork() == 0) {
            prctl(PR_SET_NAME, "s11-child");
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            for (;;) pause();
        }
        if (fork() == 0) _exit(7);
        if (fork() == 0) {  /* a zombie killed by a signal, with limits of its own */
            struct rlimit r = {0, RLIM_INFINITY}, n = {100, 200};
            setrlimit(RLIMIT_CORE, &r);
            setrlimit(RLIMIT_NOFILE, &n);
            raise(SIGTERM);
        }
        usleep(100000);
    }
    if (has(modes, "misc")) {
        FILE *f = fopen("/proc/self/coredump_filter", "w");
        fprintf(f, "0x5f"); fclose(f);
        f = fopen("/proc/self/oom_score_adj", "w");
        fprintf(f, "345"); fclose(f);
    }
    if (has(modes, "pipe")) {  /* pipe2's descriptions have no O_LARGEFILE */
        if (pipe2(pfd, O_NONBLOCK) || write(pfd[1], "abc", 3) != 3) report("FAIL pipe2");
    }
    if (has(modes, "zeropage")) {  /* read, never written: the shared zero page */
        char *p = maps[13] = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        volatile char sum = 0;
        for (int j = 1; j < 8; j += 2) sum += p[j * 4096];
        p[0] = 1;
        (void)sum;
    }
    if (has(modes, "vmasplit")) {  /* two adjacent anonymous VMAs the kernel keeps apart */
        char *a = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        char *b = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        a[0] = 1; b[4096] = 2;  /* (each its own anon_vma) */
        munmap(a + 4 * 4096, 4 * 4096);
        if (mremap(b, 4 * 4096, 4 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, a + 4 * 4096) == MAP_FAILED)
            report("FAIL mremap %d", errno);
        maps[14] = a;
    }
    if (has(modes, "madvise")) {
        long pg = 4096;
        int adv[] = {MADV_DONTFORK, MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                     MADV_DONTDUMP, MADV_MERGEABLE, MADV_SEQUENTIAL, MADV_RANDOM, -1, -2,
                     -3, -4, -5};
        for (int i = 0; i < 13; i++) {
            int flags = MAP_PRIVATE | MAP_ANONYMOUS | (adv[i] == -3 ? MAP_NORESERVE : 0);
            char *p = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, flags, -1, 0);
            maps[i] = p;
            for (int j = 0; j < 16; j += 2) p[j * pg] = (char)(i + j + 1);
            if (adv[i] >= 0 && madvise(p, 8 * pg, adv[i])) report("FAIL madvise %d %d", i, errno);
            if (adv[i] == -1 && mlock(p + 4 * pg, 4 * pg)) report("FAIL mlock %d", errno);
            if (adv[i] == -2 && madvise(p + 2 * pg, 2 * pg, MADV_GUARD_INSTALL))
                report("FAIL guard %d", errno);
            if (adv[i] == -4) mprotect(p + 3 * pg, 5 * pg, PROT_READ);
            if (adv[i] == -5 && syscall(SYS_mlock2, p, 8 * pg, 1 /* MLOCK_ONFAULT */))
                report("FAIL mlock2 %d", errno);
        }
    }
}

static void check(void) {
    if (has(modes, "prctl")) {
        if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) FAIL("thp_disable");
        int r = 0;
        prctl(PR_GET_CHILD_SUBREAPER, &r);
        if (r != 1) FAIL("subreaper");
        if (prctl(PR_GET_KEEPCAPS) != 1) FAIL("keepcaps");
        if (prctl(PR_GET_TIMERSLACK) != 123456) FAIL("timerslack %d", prctl(PR_GET_TIMERSLACK));
        if (io_flusher && prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0) != 1)
            FAIL("io_flusher %d", prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0));
        if (prctl(PR_GET_MDWE, 0, 0, 0, 0) != MDWE_REFUSE_EXEC_GAIN) FAIL("mdwe");
        if (spec >= 0 && prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0) != spec)
            FAIL("speculation %ld", spec);
    }
    if (has(modes, "persona") && personality(0xffffffff) !=
            (PER_LINUX | UNAME26 | STICKY_TIMEOUTS | SHORT_INODE | WHOLE_SECONDS))
        FAIL("personality %x", personality(0xffffffff));
    if (has(modes, "sched")) {
        struct attr a;
        if (getattr_(tids[1], &a) || (a.util_min != 100 && a.util_min) ||
            (a.util_max != 800 && a.util_max) || a.nice != 3 || a.runtime != 2500000)
            FAIL("fair thread %u %u %d %lu", a.util_min, a.util_max, a.nice, (long)a.runtime);
        if (getattr_(tids[2], &a) || a.policy != SCHED_DEADLINE || a.runtime != 1000000 ||
            a.deadline != 8000000 || a.period != 10000000)
            FAIL("deadline thread %u", a.policy);
    }
    if (has(modes, "zeropage")) {
        unsigned char vec[8];
        if (mincore(maps[13], 8 * 4096, vec)) FAIL("mincore %d", errno);
        for (int j = 0; j < 8; j++)
            if ((vec[j] & 1) != (j % 2 || !j)) FAIL("zero page %d resident %d", j, vec[j] & 1);
        for (int j = 1; j < 8; j++)
            if (maps[13][j * 4096]) FAIL("zero page %d reads %d", j, maps[13][j * 4096]);
    }
    if (has(modes, "vmasplit")) {
        char line[256], want[64];
        int n = 0;
        FILE *f = fopen("/proc/self/maps", "r");
        snprintf(want, sizeof want, "%lx-%lx ", (long)maps[14], (long)maps[14] + 4 * 4096);
        while (fgets(line, sizeof line, f)) n += !strncmp(line, want, strlen(want));
        fclose(f);
        if (n != 1 || maps[14][0] != 1 || maps[14][5 * 4096] != 2) FAIL("vmasplit %d", n);
    }
    if (has(modes, "oneshot")) {  /* disarmed: no event, not even a hang-up */
        struct epoll_event got[4];
        close(ofd[1]);
        close(sfd[0]);
        int n = epoll_wait(ep, got, 4, 0);
        if (n) FAIL("oneshot: %d events (%lu)", n, n > 0 ? (unsigned long)got[0].data.u64 : 0);
    }
    if (has(modes, "pipe")) {
        int r = fcntl(pfd[0], F_GETFL), w = fcntl(pfd[1], F_GETFL);
        if (r != (O_RDONLY | O_NONBLOCK) || w != (O_WRONLY | O_NONBLOCK))
            FAIL("pipe flags %#o %#o", r, w);
    }
    if (has(modes, "madvise"))
        for (int i = 0; i < 13; i++)
            for (int j = 0; j < 16; j += 2)
                if (!(i == 9 && j == 2) && maps[i][j * 4096] != (char)(i + j + 1))
                    FAIL("map %d page %d", i, j);
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    modes = argv[2];
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    signal(SIGUSR1, on_usr1);
    set_state(argv[3]);
    pthread_barrier_init(&bar, NULL, 3);
    tids[0] = gettid();
    pthread_sigmask(SIG_SETMASK, &all, NULL);  /* the threads inherit it */
    pthread_t t;
    for (long i = 1; i <= 2; i++) pthread_create(&t, NULL, thread, (void *)i);
    pthread_barrier_wait(&bar);
    report("ready %d %p %p", getpid(), (void *)pthread_self(), (void *)__builtin_thread_pointer());
    for (long n = 0;; n++) {
        while (!go) sigsuspend(&none);
        go = 0;
        check();
        report("ok %ld", n);
    }
}
