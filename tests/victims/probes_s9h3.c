/* Probes of session 9 (issue 9, h3): argv[2] names one piece of state; the program sets
 * it (in the main thread and, where the kernel keeps it per thread, in a second thread
 * with another value), reports "ready PID", then checks it every round from inside
 * ("ok N", or "FAIL what").  argv[3] is a scratch directory; argv[3]/go tells a mode to
 * take its last step.  Built with -lrt -lpthread.
 *   thpadvised  PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED (Linux 6.18):
 *               PR_GET_THP_DISABLE answers 3 (1 | the flag << 1), not 1
 *   dumpable0   PR_SET_DUMPABLE 0: PR_GET_DUMPABLE answers 0
 *   comm        each thread its own name (PR_SET_NAME in the main thread, a write to
 *               /proc/self/task/TID/comm for the other): prctl(PR_GET_NAME) and comm
 *   timerpend   a periodic CLOCK_MONOTONIC POSIX timer (every 20 ms, SIGRTMIN+3 blocked)
 *               whose signal is pending with overruns: after go the signal is taken
 *               (sigwaitinfo: SI_TIMER, its id, si_overrun), then it fires on, each
 *               taken signal counting its periods (1 + si_overrun) as time goes by
 *   timerpendstd the same with SIGUSR1
 *   zmm         AVX-512: zmm16-31 and k1-k7 hold a pattern of each thread's own, checked
 *               after a raw syscall each round (skip without AVX-512)
 *   ghostflags  a file of argv[3] open O_APPEND, written, given inode flags (FS_IOC_SETFLAGS:
 *               append-only, no-dump, no-atime) once unlinked: its flags and data
 *   mdwe        PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT: PR_GET_MDWE 3
 *   slice       a custom time slice of SCHED_OTHER (sched_attr.sched_runtime, Linux 6.12):
 *               2 ms in the main thread, 7 ms in the other (sched_getattr)
 *   timeroneshot a one-shot CLOCK_MONOTONIC POSIX timer fired with its signal blocked:
 *               after go the signal is taken once (SI_TIMER, its id, si_overrun 0), and
 *               no other comes
 *   vmchild     (not checkpointed itself) a child made with clone(CLONE_VM) shares the
 *               memory of this process, which counts in it every 20 ms: the child
 *               ("child PID") checks each round that the count goes on ("ok N")
 *   dirpos      a directory of 300 entries (in argv[3], and one in /dev/shm) read half way
 *               with getdents64 (its offset where the kernel left it); after go the rest
 *               read: every name exactly once ("dirdone")
 *   norandmap   ADDR_NO_RANDOMIZE (the program execs itself again with it, as setarch -R
 *               does): the address a new mmap(NULL) gets each round, the same as the
 *               first round's
 *   secbits     SECBIT_EXEC_RESTRICT_FILE and SECBIT_EXEC_DENY_INTERACTIVE (Linux 6.14) in
 *               the main thread only: PR_GET_SECUREBITS 0x500 there, 0 in the other
 *   selfstep    the second thread single-steps itself (EFLAGS.TF set with popf, a SIGTRAP
 *               handler counting) through stretches of 200 nops, without end: each
 *               stretch gives the first one's count of traps
 *   cpusleep    the second thread sleeps in clock_nanosleep(CLOCK_PROCESS_CPUTIME_ID,
 *               TIMER_ABSTIME) until the process's CPU clock is 1000 s further; the
 *               main thread checks that it still sleeps ("cpusleep woke" otherwise)
 *   cputime     the process's CPU clock (CLOCK_PROCESS_CPUTIME_ID) and each thread's own:
 *               never smaller than the last value read ("cputime back" otherwise;
 *               they start again from 0 after a restart: docs/design.md, a known limit)
 */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif

static const char *mode, *dir;
static char go_path[4200];
static volatile int thread_ready, other_tid;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long want_round, thread_checks;
static int thread_bad;
static timer_t tid_timer;
static int have_avx512;
static int tsig;  /* timerpend: SIGRTMIN+3; timerpendstd: SIGUSR1 (not queued twice by the kernel) */

static int go(void) { return !access(go_path, F_OK); }

static int is(const char *m) { return !strcmp(mode, m); }

/* --- zmm: a pattern of the thread's own in zmm16-31 and k1-k7 ------------------ */
#define ZMM_ALL(X) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) \
                   X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31)
#define K_ALL(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

__attribute__((target("avx512f,avx512bw"))) static void zmm_set(uint64_t seed) {
    uint64_t buf[16 * 8], k[8];
    for (int i = 0; i < 16 * 8; i++) buf[i] = mix(seed + i);
    for (int i = 0; i < 8; i++) k[i] = mix(seed * 7 + i);
#define LOADZ(n) __asm__ volatile("vmovdqu64 %0, %%zmm" #n :: "m"(buf[((n) - 16) * 8]) : "xmm" #n);
    ZMM_ALL(LOADZ)
#define LOADK(n) __asm__ volatile("kmovq %0, %%k" #n :: "m"(k[n]));
    K_ALL(LOADK)
}

/* zmm16-31 and k1-7 set, then a raw nanosleep of 50 ms (where a checkpoint finds the
   thread: glibc's string functions use zmm16-31 between rounds), then checked */
__attribute__((target("avx512f,avx512bw"))) static int zmm_check(uint64_t seed) {
    uint64_t buf[16 * 8], k[8];
    struct timespec ts = {0, 50000000};
    long ret;
    zmm_set(seed);
    do __asm__ volatile("syscall" : "=a"(ret) : "0"(SYS_nanosleep), "D"(&ts), "S"(&ts)
                        : "rcx", "r11", "memory");
    while (ret == -EINTR);
#define STOREZ(n) __asm__ volatile("vmovdqu64 %%zmm" #n ", %0" : "=m"(buf[((n) - 16) * 8]));
    ZMM_ALL(STOREZ)
#define STOREK(n) __asm__ volatile("kmovq %%k" #n ", %0" : "=m"(k[n]));
    K_ALL(STOREK)
    for (int i = 0; i < 16 * 8; i++)
        if (buf[i] != mix(seed + i)) { FAIL("zmm%d[%d] seed %lu", 16 + i / 8, i % 8, (unsigned long)seed); return 1; }
    for (int i = 1; i < 8; i++)
        if (k[i] != mix(seed * 7 + i)) { FAIL("k%d seed %lu", i, (unsigned long)seed); return 1; }
    return 0;
}

/* --- cputime ------------------------------------------------------------------- */
static long long ns_of(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static long long last_proc, last_thread[2];

static void burn(int ms) {
    long long end = ns_of(CLOCK_THREAD_CPUTIME_ID) + ms * 1000000LL;
    while (ns_of(CLOCK_THREAD_CPUTIME_ID) < end) {}
}

static int cpu_check(int which) {
    int bad = 0;
    burn(5);
    long long t = ns_of(CLOCK_THREAD_CPUTIME_ID);
    if (t < last_thread[which]) { FAIL("cputime back: thread %d %lld < %lld", which, t, last_thread[which]); bad = 1; }
    last_thread[which] = t;
    if (which == 0) {
        long long p = ns_of(CLOCK_PROCESS_CPUTIME_ID);
        if (p < last_proc) { FAIL("cputime back: process %lld < %lld", p, last_proc); bad = 1; }
        last_proc = p;
    }
    return bad;
}

/* --- comm ---------------------------------------------------------------------- */
static int comm_check(const char *want, int tid) {
    char name[32] = {0}, p[96], buf[64] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    if (strcmp(name, want)) { FAIL("PR_GET_NAME %s, want %s", name, want); return 1; }
    snprintf(p, sizeof p, "/proc/self/task/%d/comm", tid);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    ssize_t r = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
    if (f >= 0) close(f);
    if (r > 0 && buf[r - 1] == '\n') buf[r - 1] = 0;
    if (strcmp(buf, want)) { FAIL("comm of %d %s, want %s", tid, buf, want); return 1; }
    return 0;
}

/* --- timerpend ------------------------------------------------------------------ */
static int taken, taken_overruns, first_overrun;
static long long first_taken_ns, armed_ns;

static int timer_check(void) {
    int bad = 0;
    sigset_t s;
    sigpending(&s);
    if (!go()) {  /* before go, its signal stays pending (blocked) */
        if (!sigismember(&s, tsig)) { FAIL("timer signal not pending"); bad = 1; }
        struct itimerspec its;
        if (timer_gettime(tid_timer, &its)) { FAIL("timer_gettime %d", errno); bad = 1; }
        else if (its.it_interval.tv_nsec != 20000000 || its.it_interval.tv_sec) {
            FAIL("interval %ld.%09ld", (long)its.it_interval.tv_sec, its.it_interval.tv_nsec); bad = 1;
        }
        return bad;
    }
    /* after go: take what is pending (at most one signal: the timer's own), then wait for more */
    sigset_t w;
    sigemptyset(&w);
    sigaddset(&w, tsig);
    struct timespec to = {1, 0};
    for (int i = 0; i < 3; i++) {
        siginfo_t si;
        int sig = sigtimedwait(&w, &si, &to);
        if (sig != tsig) { FAIL("timer signal not taken (%d, errno %d)", sig, errno); return 1; }
        if (si.si_code != SI_TIMER) { FAIL("si_code %d", si.si_code); bad = 1; }
        if (si.si_timerid != (int)(intptr_t)tid_timer) { FAIL("si_timerid %d, want %d", si.si_timerid, (int)(intptr_t)tid_timer); bad = 1; }
        if (si.si_overrun < 0) { FAIL("si_overrun %d", si.si_overrun); bad = 1; }
        if (!taken) { first_taken_ns = ns_of(CLOCK_MONOTONIC); first_overrun = si.si_overrun; }
        taken++;
        taken_overruns += si.si_overrun;
        sigpending(&s);
        if (sigismember(&s, tsig)) { FAIL("timer signal pending twice"); bad = 1; }
    }
    /* each signal after the first stands for 1 + overrun periods since the one before:
       together, the periods since the first one taken (taken as it arrives) */
    long long now = ns_of(CLOCK_MONOTONIC), want = (now - first_taken_ns) / 20000000;
    long long periods = taken - 1 + taken_overruns - first_overrun;
    if (periods > want + 5 || periods < want - 5) {  /* (100 ms: a thread late to run) */
        FAIL("timer periods %lld since the first taken, want %lld", periods, want); bad = 1;
    }
    report("timer taken %d overruns %d periods %lld want %lld", taken, taken_overruns, periods, want);
    return bad;
}

/* --- ghostflags --------------------------------------------------------------- */
static int ghost_fd = -1;
#define GHOST_FLAGS (FS_APPEND_FL | FS_NODUMP_FL | FS_NOATIME_FL)

static void ghost_setup(void) {
    char p[4300];
    snprintf(p, sizeof p, "%s/ghost", dir);
    ghost_fd = open(p, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (ghost_fd < 0 || write(ghost_fd, "abcdef", 6) != 6) FAIL("ghost open/write %d", errno);
    if (unlink(p)) FAIL("unlink %d", errno);  /* (an append-only file cannot be) */
    int fl = 0;
    if (ioctl(ghost_fd, FS_IOC_GETFLAGS, &fl)) FAIL("FS_IOC_GETFLAGS %d", errno);
    fl |= GHOST_FLAGS;
    if (ioctl(ghost_fd, FS_IOC_SETFLAGS, &fl)) FAIL("FS_IOC_SETFLAGS %d", errno);
}

static int ghost_check(void) {
    int fl = 0;
    char buf[16] = {0};
    struct stat st;
    if (ioctl(ghost_fd, FS_IOC_GETFLAGS, &fl)) { FAIL("FS_IOC_GETFLAGS %d", errno); return 1; }
    if ((fl & GHOST_FLAGS) != GHOST_FLAGS) { FAIL("inode flags %#x, want %#x", fl, GHOST_FLAGS); return 1; }
    if (fstat(ghost_fd, &st) || st.st_nlink != 0 || st.st_size != 6) { FAIL("ghost stat"); return 1; }
    if (pread(ghost_fd, buf, 6, 0) != 6 || memcmp(buf, "abcdef", 6)) { FAIL("ghost data %s", buf); return 1; }
    return 0;
}

/* --- slice -------------------------------------------------------------------- */
struct sched_attr_ {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
};

static int slice_set(uint64_t ns) {
    struct sched_attr_ a = {.size = sizeof a, .policy = 0, .runtime = ns};
    return syscall(SYS_sched_setattr, 0, &a, 0);
}

static int slice_check(uint64_t ns) {
    struct sched_attr_ a;
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0)) { FAIL("sched_getattr %d", errno); return 1; }
    if (a.runtime != ns) { FAIL("sched_runtime %llu, want %llu", (unsigned long long)a.runtime, (unsigned long long)ns); return 1; }
    return 0;
}

/* --- timeroneshot --------------------------------------------------------------- */
static int oneshot_taken;

static int oneshot_check(void) {
    sigset_t s, w;
    sigpending(&s);
    if (oneshot_taken) {
        if (sigismember(&s, tsig)) { FAIL("one-shot timer signal again"); return 1; }
        return 0;
    }
    if (!sigismember(&s, tsig)) { FAIL("one-shot timer signal not pending"); return 1; }
    if (!go()) return 0;
    sigemptyset(&w);
    sigaddset(&w, tsig);
    siginfo_t si;
    struct timespec to = {0, 0};
    if (sigtimedwait(&w, &si, &to) != tsig) { FAIL("one-shot signal not taken %d", errno); return 1; }
    oneshot_taken = 1;
    if (si.si_code != SI_TIMER || si.si_timerid != (int)(intptr_t)tid_timer || si.si_overrun != 0) {
        FAIL("one-shot siginfo code %d id %d overrun %d", si.si_code, si.si_timerid, si.si_overrun); return 1;
    }
    struct itimerspec its;
    if (timer_gettime(tid_timer, &its) || its.it_value.tv_sec || its.it_value.tv_nsec) { FAIL("one-shot armed"); return 1; }
    report("oneshot taken");
    return 0;
}

/* --- dirpos ---------------------------------------------------------------------- */
#define NDIR 300
static int dir_fd[2] = {-1, -1};
static unsigned char dir_seen[2][NDIR];
static char dir_path[2][4300];
static int dir_done;

static int dir_read(int k, int max) {  /* names read, or -1 */
    char buf[1024];
    int n = 0;
    while (max < 0 || n < max) {
        long r = syscall(SYS_getdents64, dir_fd[k], buf, max < 0 ? sizeof buf : 200);
        if (r < 0) { FAIL("getdents64 %d", errno); return -1; }
        if (r == 0) break;
        for (long off = 0; off < r;) {
            unsigned short reclen = *(unsigned short *)(buf + off + 16);
            const char *name = buf + off + 19;
            int i;
            if (sscanf(name, "e%d", &i) == 1 && i >= 0 && i < NDIR) {
                if (dir_seen[k][i]++) { FAIL("dir %d: %s twice", k, name); return -1; }
                n++;
            }
            off += reclen;
        }
    }
    return n;
}

static void dir_setup(void) {
    snprintf(dir_path[0], sizeof dir_path[0], "%s/d", dir);
    snprintf(dir_path[1], sizeof dir_path[1], "/dev/shm/probes_s9h3.%d", getpid());
    for (int k = 0; k < 2; k++) {
        mkdir(dir_path[k], 0755);
        for (int i = 0; i < NDIR; i++) {
            char p[8800];
            snprintf(p, sizeof p, "%s/e%d", dir_path[k], i);
            close(open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        }
        dir_fd[k] = open(dir_path[k], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_read(k, NDIR / 2) < 0) FAIL("dir setup");
    }
}

static int dir_check(void) {
    if (dir_done || !go()) return 0;
    for (int k = 0; k < 2; k++) {
        if (dir_read(k, -1) < 0) return 1;
        for (int i = 0; i < NDIR; i++)
            if (dir_seen[k][i] != 1) { FAIL("dir %d: e%d seen %d times", k, i, dir_seen[k][i]); return 1; }
        for (int i = 0; i < NDIR; i++) {  /* (removed: /dev/shm is the machine's) */
            char p[8800];
            snprintf(p, sizeof p, "%s/e%d", dir_path[k], i);
            unlink(p);
        }
        rmdir(dir_path[k]);
    }
    dir_done = 1;
    report("dirdone");
    return 0;
}

static void *first_map;

static int map_check(void) {
    void *p = mmap(NULL, 1 << 20, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p, 1 << 20);
    if (!first_map) first_map = p;
    if (p != first_map) { FAIL("mmap(NULL) at %p, first at %p", p, first_map); return 1; }
    return 0;
}

/* --- selfstep --------------------------------------------------------------------- */
static volatile long traps;
static volatile long step_bad, stretches;

static void on_trap(int sig) { (void)sig; traps++; }

static long stretch(void) {
    long before = traps;
    __asm__ volatile("pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n\t"
                     ".rept 200\n\tnop\n\t.endr\n\t"
                     "pushfq\n\tandq $~0x100, (%%rsp)\n\tpopfq" ::: "memory", "cc");
    return traps - before;
}

static void stepper(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_trap;
    sigaction(SIGTRAP, &sa, NULL);
    long first = stretch();
    for (;;) {
        long n = stretch();
        if (n != first) step_bad = n * 1000 + first;
        stretches++;
    }
}

static int check(int which, long round) {
    (void)round;
    if (is("thpadvised")) {
        int v = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
        if (v != (1 | PR_THP_DISABLE_EXCEPT_ADVISED)) { FAIL("PR_GET_THP_DISABLE %d, want 3", v); return 1; }
    } else if (is("dumpable0")) {
        int v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        if (v != 0) { FAIL("PR_GET_DUMPABLE %d, want 0", v); return 1; }
    } else if (is("comm")) {
        return comm_check(which ? "probe-other" : "probe-main", which ? other_tid : getpid());
    } else if (is("zmm")) {
        return have_avx512 ? zmm_check(which ? 2000 : 1000) : 0;
    } else if (is("mdwe")) {
        int v = prctl(66 /* PR_GET_MDWE */, 0, 0, 0, 0);
        if (v != 3) { FAIL("PR_GET_MDWE %d, want 3", v); return 1; }
    } else if (is("slice")) {
        return slice_check(which ? 7000000 : 2000000);
    } else if (is("timeroneshot") && which == 0) {
        return oneshot_check();
    } else if (is("selfstep")) {
        static long last = -1;
        if (which) return 0;
        if (step_bad) { FAIL("a stretch gave %ld traps, the first %ld", step_bad / 1000, step_bad % 1000); step_bad = 0; return 1; }
        if (stretches == last) { FAIL("no stretch since the last round"); return 1; }
        last = stretches;
    } else if (is("secbits")) {
        int v = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0), want = which ? 0 : 0x500;
        if (v != want) { FAIL("securebits %#x, want %#x", v, want); return 1; }
    } else if (is("norandmap")) {
        return which ? 0 : map_check();
    } else if (is("dirpos")) {
        return which ? 0 : dir_check();
    } else if (is("ghostflags")) {
        return which ? 0 : ghost_check();
    } else if (is("cputime")) {
        return cpu_check(which);
    } else if ((is("timerpend") || is("timerpendstd")) && which == 0) {
        return timer_check();
    }
    return 0;
}

static void *thread_main(void *arg) {
    (void)arg;
    other_tid = syscall(SYS_gettid);
    if (is("comm")) {
        char p[96];
        snprintf(p, sizeof p, "/proc/self/task/%d/comm", other_tid);
        int f = open(p, O_WRONLY | O_CLOEXEC);
        if (f < 0 || write(f, "probe-other", 11) != 11) FAIL("write comm %d", errno);
        if (f >= 0) close(f);
    }
    if (is("slice") && slice_set(7000000)) FAIL("sched_setattr %d", errno);
    if (is("cpusleep")) {
        thread_ready = 1;
        struct timespec dl;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &dl);
        dl.tv_sec += 1000;
        int r = clock_nanosleep(CLOCK_PROCESS_CPUTIME_ID, TIMER_ABSTIME, &dl, NULL);
        FAIL("cpusleep woke: %d", r);
        for (;;) pause();
    }
    thread_ready = 1;
    if (is("selfstep")) stepper();  /* (never returns; the main thread checks it) */
    for (long r = 1;; r++) {
        pthread_mutex_lock(&mu);
        while (want_round < r) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        int bad = check(1, r);
        pthread_mutex_lock(&mu);
        thread_bad = bad;
        thread_checks = r;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

/* --- vmchild: raw system calls only in both (they share the TLS too) -------------- */
static volatile long vm_count;

static int vm_child(void *arg) {
    (void)arg;
    report("child %ld", (long)syscall(SYS_getpid));
    long last = vm_count;
    for (long round = 0;; round++) {
        struct timespec ts = {0, 100000000};
        while (syscall(SYS_nanosleep, &ts, &ts) && errno == EINTR) {}
        long now = vm_count;
        if (now == last) FAIL("the shared count stays at %ld", now);
        else report("ok %ld", round);
        last = now;
    }
    return 0;
}

static void vm_parent(void) {
    static char stack[1 << 16] __attribute__((aligned(16)));
    extern int clone(int (*)(void *), void *, int, void *, ...);
    if (clone(vm_child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL) < 0) FAIL("clone %d", errno);
    for (;;) {
        struct timespec ts = {0, 20000000};
        syscall(SYS_nanosleep, &ts, NULL);
        vm_count++;
        syscall(SYS_wait4, -1, NULL, WNOHANG, NULL);  /* (a killed child does not hold its pid) */
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    mode = argv[2];
    dir = argc > 3 ? argv[3] : "/tmp";
    snprintf(go_path, sizeof go_path, "%s/go", dir);
    if (is("vmchild")) vm_parent();
    if (is("norandmap") && !(personality(0xffffffff) & ADDR_NO_RANDOMIZE)) {
        personality(personality(0xffffffff) | ADDR_NO_RANDOMIZE);
        execv("/proc/self/exe", argv);
        FAIL("execv %d", errno);
    }
    __builtin_cpu_init();
    have_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    if (is("thpadvised") && prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0))
        report("skip PR_THP_DISABLE_EXCEPT_ADVISED: errno %d", errno);
    if (is("dumpable0")) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (is("comm")) prctl(PR_SET_NAME, "probe-main", 0, 0, 0);
    if (is("ghostflags")) ghost_setup();
    if (is("dirpos")) dir_setup();
    if (is("mdwe") && prctl(65 /* PR_SET_MDWE */, 3, 0, 0, 0)) FAIL("PR_SET_MDWE %d", errno);
    if (is("slice") && slice_set(2000000)) FAIL("sched_setattr %d", errno);
    if (is("zmm")) {
        if (!have_avx512) report("skip no AVX-512");
    }
    tsig = is("timerpendstd") ? SIGUSR1 : SIGRTMIN + 3;
    sigset_t blk;
    sigemptyset(&blk);
    sigaddset(&blk, tsig);
    pthread_sigmask(SIG_BLOCK, &blk, NULL);  /* (the thread inherits it) */
    pthread_t th;
    pthread_create(&th, NULL, thread_main, NULL);
    while (!thread_ready) nap(5);
    if (is("timerpend") || is("timerpendstd")) {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = tsig;
        if (timer_create(CLOCK_MONOTONIC, &sev, &tid_timer)) FAIL("timer_create %d", errno);
        struct itimerspec its = {{0, 20000000}, {0, 20000000}};
        armed_ns = ns_of(CLOCK_MONOTONIC);
        if (timer_settime(tid_timer, 0, &its, NULL)) FAIL("timer_settime %d", errno);
        nap(100);
    }
    if (is("timeroneshot")) {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = tsig;
        if (timer_create(CLOCK_MONOTONIC, &sev, &tid_timer)) FAIL("timer_create %d", errno);
        struct itimerspec its = {{0, 0}, {0, 20000000}};
        if (timer_settime(tid_timer, 0, &its, NULL)) FAIL("timer_settime %d", errno);
        nap(100);
    }
    if (is("secbits") && prctl(PR_SET_SECUREBITS, 0x500, 0, 0, 0)) report("skip secbits: errno %d", errno);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = check(0, round);
        pthread_mutex_lock(&mu);
        want_round = round + 1;
        pthread_cond_broadcast(&cv);
        while (!is("selfstep") && !is("cpusleep") && thread_checks != want_round)
            pthread_cond_wait(&cv, &mu);
        bad |= thread_bad;
        pthread_mutex_unlock(&mu);
        if (!bad) report("ok %ld", round);
        nap(100);
    }
}
