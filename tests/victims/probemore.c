/* More probes of kernel-visible state (issue 9, h6 of session 7): argv[2] names one
 * piece of state; the program sets it (in the main thread and, where the kernel keeps
 * it per thread, in a second thread with another value), reports "ready", then checks
 * it every round from inside ("ok N", or "FAIL what").  argv[3] is a scratch directory
 * where a mode needs one.  Built with -lpthread.
 *   rseq        glibc's rseq registration: rseq() again with the same area, length and
 *               signature answers EBUSY (registered, same), in each thread
 *   altstack    sigaltstack: address, size and flags (SS_AUTODISARM in the thread)
 *   personality ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC, and its effect (PROT_READ maps
 *               executable)
 *   itimers     ITIMER_REAL, VIRTUAL and PROF: interval exact, remaining never grows
 *   rlimits     every resource limit, each its own soft and hard value
 *   nofile      RLIMIT_NOFILE lowered to (64, 128)
 *   subreaper   PR_SET_CHILD_SUBREAPER
 *   keepcaps    PR_SET_KEEPCAPS in the main thread only
 *   thp         PR_SET_THP_DISABLE
 *   ioflusher   PR_SET_IO_FLUSHER in the main thread only
 *   spec        PR_SET_SPECULATION_CTRL store bypass and indirect branch disabled in
 *               the main thread only (skip line where the kernel has no prctl mode)
 *   anonname    PR_SET_VMA_ANON_NAME on the middle page of three
 *   fsgs        arch_prctl GS base per thread, read through %gs
 *   fpu         MXCSR and the x87 control word, each thread its own
 *   robust      robust futex lists of both threads
 *   tidaddr     set_tid_address in the main thread (PR_GET_TID_ADDRESS); a thread that
 *               exits after the restart (argv[3]/go) is joined (its clear_child_tid)
 *   uclamp      sched_setattr utilisation clamps (skip line where the kernel has none)
 *   pipesz      F_SETPIPE_SZ of two pipes
 *   fdflags     O_APPEND, O_NOATIME, O_DIRECT, O_NONBLOCK, O_SYNC, O_DSYNC; FD_CLOEXEC on
 *               some; an offset past the end of the file; O_PATH on /dev/null
 *   signalfd    a signalfd's mask (fdinfo) and its O_NONBLOCK
 *   mremap      a region grown and moved by mremap, split by mprotect; the brk
 *   nocldwait   SIGCHLD with SA_NOCLDWAIT: a child that exits leaves no zombie
 *   mm          /proc/self/auxv, cmdline, environ and the mm fields of /proc/self/stat
 *   shmfile     a /dev/shm file mapped shared by this process and its child, each
 *               writing its counter, each seeing the other's
 *   cwdbind     the cwd is a bind mount (argv[3]/b of argv[3]/a): same mount id
 *   iouring, perf, bpf   an io_uring, a perf_event (software clock) or a bpf array map
 *               fd, kept open (to be refused: each round the fd is still there)
 *   tun         /dev/net/tun attached to a tap interface (TUNSETIFF): TUNGETIFF names it
 *   dmalatency  /dev/cpu_dma_latency with a request of 7 us written: a read says 7
 *   kmsg        /dev/kmsg read to its end: no message read twice
 *   kmsgw       /dev/kmsg open for writing only
 *   sigwait     threads waiting in sigsuspend, ppoll, pselect6 and epoll_pwait with a
 *               mask of their own (SIGUSR1 let through), each woken by SIGUSR1 every
 *               round: the mask blocked after each return is the thread's own again
 *   tmpfile     an O_TMPFILE file: once argv[3]/go exists, linkat gives it a name
 *   xattr       a deleted file with a user xattr (fgetxattr)
 *   xattrtrusted  a deleted file with a trusted.* xattr (to be refused)
 *   xattrmapped a deleted file with a user xattr, also mapped shared
 *   memfdwseal  a memfd mapped shared read-only and sealed F_SEAL_WRITE | F_SEAL_SEAL
 *   exitsig     a child cloned with exit signal SIGUSR1 that exits once argv[3]/go
 *               exists: the parent gets SIGUSR1 (not SIGCHLD) and reaps it
 *   futexhash   PR_FUTEX_HASH_SET_SLOTS 128 (skip line without PR_FUTEX_HASH)
 *   schedcore   a core-scheduling cookie of the process (PR_SCHED_CORE): both threads
 *               share one (skip line without CONFIG_SCHED_CORE)
 *   deadline    the thread under SCHED_DEADLINE (1 ms every 20 ms)
 *   threadfs    the thread unshare(CLONE_FS)'d: its own cwd (argv[3]/sub) and umask
 *   threadfiles the thread unshare(CLONE_FILES)'d: an fd only it has
 *   threaduts   the thread unshare(CLONE_NEWUTS)'d with a hostname of its own
 *   threadpers  the thread's own personality (ADDR_NO_RANDOMIZE), the main thread's 0
 *   onaltstack  the thread inside a SIGUSR1 handler on its alternate stack (SS_ONSTACK)
 *               at the checkpoint, looping there until argv[3]/go, then returning
 *   truncmap    a file mapped shared (3 pages) and truncated to one page: the first
 *               page holds its data, the third gives SIGBUS
 *   memfdseal   a memfd mapped shared and writable, then sealed F_SEAL_FUTURE_WRITE |
 *               F_SEAL_GROW | F_SEAL_SHRINK: the mapping still writes, read() sees it, the
 *               seals are kept, a new writable mapping is refused
 *   memfdnoexec a memfd made with MFD_NOEXEC_SEAL: F_SEAL_EXEC, mode without x
 *   nestedepoll an epoll watching another epoll that watches a pipe with data
 *   fallocghost a deleted file with 1 MiB preallocated by fallocate (st_blocks kept)
 *   manyvmas    20000 mappings of one page each, every other one PROT_READ
 *   avx         ymm0-15 and the x87 register st0 loaded with each thread's own pattern,
 *               held across a raw nanosleep, compared after it
 *   ptyexcl     a pseudo-terminal pair whose slave is in exclusive mode (TIOCEXCL)
 *   devzero     /dev/zero mapped shared by this process and its child, as shmfile
 *   clocks      POSIX timers and timerfds on CLOCK_BOOTTIME, CLOCK_TAI and the alarm
 *               clocks (CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM), periodic (40 ms):
 *               each keeps firing, its clock and interval as before
 *   ownerdead   the thread holds a robust mutex and a PI mutex at the checkpoint, the
 *               main thread waits on the PI one; once argv[3]/go exists the thread exits
 *               holding the robust one: the main thread gets the PI one (its holder
 *               unlocked it), then EOWNERDEAD for the robust one
 *   rootbind    chrooted into argv[3]/b, a bind mount of argv[3]/a: same root inode and
 *               mount id
 *   inotifyghost an inotify watch (IN_MODIFY) on a file then deleted, still open: each
 *               round's write to it gives an event with the watch's wd
 *   lockghost   a deleted file with an flock (LOCK_EX) on one fd and an OFD write lock
 *               on another description of it: both in fdinfo each round
 *   nlname      a file whose name holds a newline and a backslash, mapped privately and
 *               open: its bytes through both, the fd's link names it
 *   uname26     personality UNAME26: uname() says 2.6.x
 *   lowmap      a mapping at 0x10000 (just above mmap_min_addr) holding data
 *   appendghost a deleted file open O_APPEND: each round's write lands at its end
 *   leaderexit  the main thread calls pthread_exit: the other thread goes on alone,
 *               reporting the rounds (the leader a zombie thread)
 *   rsequnreg   the thread unregisters glibc's rseq area and writes 12345 in its cpu_id:
 *               no kernel writes it again (not registered again by the restart) */
#include "common.h"
#include <linux/rseq.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/xattr.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/timerfd.h>
#include <setjmp.h>
#include <sys/utsname.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#define PR_GET_IO_FLUSHER 58
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
#define RSEQ_SIG_X86 0x53053053
#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif

static const char *mode, *dir;
static volatile int skipped;  /* the kernel has it not, or we may not set it */

static int thread_fd = -1;
static volatile int in_handler, handler_done;
static volatile int thread_ready;
static char *trunc_map;
static sigjmp_buf bus_jmp;
static void h_bus(int sig) { (void)sig; siglongjmp(bus_jmp, 1); }
static void h_onstack(int sig) {
    (void)sig;
    char go[4200];
    snprintf(go, sizeof go, "%s/go", dir);
    in_handler = 1;
    thread_ready = 1;
    while (access(go, F_OK)) {
        stack_t cur;
        sigaltstack(NULL, &cur);
        char here;
        if (!(cur.ss_flags & SS_ONSTACK) || &here < (char *)cur.ss_sp ||
            &here >= (char *)cur.ss_sp + cur.ss_size)
            FAIL("onaltstack: not on the alternate stack (flags %#x)", cur.ss_flags);
        nap(20);
    }
    in_handler = 0;
    handler_done = 1;
}

/* ---- per-thread pieces: set(which) in a thread, check(which) each round ---- */

static int rseq_len[2];
static struct rseq *rseq_area(void) {
    extern const ptrdiff_t __rseq_offset __attribute__((weak));
    if (!&__rseq_offset) return NULL;
    return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}
static int rseq_state(struct rseq *rs, int len) {  /* errno of rseq() again */
    if (syscall(SYS_rseq, rs, len, 0, RSEQ_SIG_X86) == 0) return 0;
    return errno;
}

static char alt_mem[2][65536];
static stack_t alt_want[2];

static unsigned long gs_mem[2][4];

static unsigned fpu_mxcsr[2] = {0x1f80 | 0x8000 | 0x6000, 0x1f80 | 0x2000 | 0x40};
static unsigned short fpu_cw[2] = {0x037f & ~0x0300, 0x037f | 0x0c00};

static void *robust_head[2];
static size_t robust_len[2];

struct sched_attr_ {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
    uint32_t sched_util_min, sched_util_max;
};

static void set_one(int which) {
    if (!strcmp(mode, "rseq")) {
        struct rseq *rs = rseq_area();
        if (!rs) { report("skip no rseq in glibc"); return; }
        int lens[] = {32, 20, 28, 24, 64};
        for (unsigned i = 0; i < sizeof lens / sizeof *lens; i++)
            if (rseq_state(rs, lens[i]) == EBUSY) { rseq_len[which] = lens[i]; break; }
        if (!rseq_len[which]) FAIL("rseq not registered before the checkpoint");
    } else if (!strcmp(mode, "altstack")) {
        alt_want[which].ss_sp = alt_mem[which] + 64 * which;
        alt_want[which].ss_size = sizeof alt_mem[which] - 128 * which;
        alt_want[which].ss_flags = which ? SS_AUTODISARM : 0;
        if (sigaltstack(&alt_want[which], NULL)) FAIL("sigaltstack %d", errno);
    } else if (!strcmp(mode, "fsgs")) {
        gs_mem[which][0] = 0x1234567800 + which;
        if (syscall(SYS_arch_prctl, ARCH_SET_GS, gs_mem[which])) FAIL("ARCH_SET_GS %d", errno);
    } else if (!strcmp(mode, "fpu")) {
        __asm__ volatile("ldmxcsr %0" :: "m"(fpu_mxcsr[which]));
        __asm__ volatile("fldcw %0" :: "m"(fpu_cw[which]));
    } else if (!strcmp(mode, "robust")) {
        syscall(SYS_get_robust_list, 0, &robust_head[which], &robust_len[which]);
        if (!robust_head[which]) FAIL("no robust list before the checkpoint");
    } else if (!strcmp(mode, "threadfs") && which) {
        char sub[4200];
        snprintf(sub, sizeof sub, "%s/sub", dir);
        mkdir(sub, 0755);
        if (unshare(CLONE_FS) || chdir(sub)) FAIL("unshare(CLONE_FS) %d", errno);
        umask(077);
    } else if (!strcmp(mode, "threadfiles") && which) {
        if (unshare(CLONE_FILES)) FAIL("unshare(CLONE_FILES) %d", errno);
        thread_fd = open("/dev/null", O_RDONLY);  /* in the thread's table only */
    } else if (!strcmp(mode, "threaduts") && which) {
        if (unshare(CLONE_NEWUTS) || sethostname("cryo-thread", 11)) FAIL("uts %d", errno);
    } else if (!strcmp(mode, "threadpers") && which) {
        personality(ADDR_NO_RANDOMIZE);
    } else if (!strcmp(mode, "onaltstack") && which) {
        struct sigaction sa = {0};
        sa.sa_handler = h_onstack; sa.sa_flags = SA_ONSTACK;
        sigaction(SIGUSR1, &sa, NULL);
        stack_t ss = {.ss_sp = alt_mem[1], .ss_size = sizeof alt_mem[1], .ss_flags = 0};
        sigaltstack(&ss, NULL);
        alt_want[1] = ss;
        raise(SIGUSR1);  /* (to this thread: the handler runs until go) */
    } else if (!strcmp(mode, "rsequnreg") && which) {
        struct rseq *rs = rseq_area();
        int lens[] = {32, 20, 28, 24, 64};
        int done = 0;
        for (unsigned i = 0; rs && i < sizeof lens / sizeof *lens && !done; i++)
            done = syscall(SYS_rseq, rs, lens[i], RSEQ_FLAG_UNREGISTER, RSEQ_SIG_X86) == 0;
        if (!done) { report("skip rseq not registered"); skipped = 1; }
        else rs->cpu_id = 12345;
    } else if (!strcmp(mode, "deadline") && which) {
        struct sched_attr_ a = {0};
        a.size = sizeof a; a.sched_policy = 6; /* SCHED_DEADLINE */
        a.sched_runtime = 1000000; a.sched_deadline = 20000000; a.sched_period = 20000000;
        if (syscall(SYS_sched_setattr, 0, &a, 0)) { report("skip SCHED_DEADLINE %d", errno); skipped = 1; }
    } else if (!strcmp(mode, "keepcaps")) {  /* (a thread inherits it: the second clears it) */
        if (prctl(PR_SET_KEEPCAPS, !which)) FAIL("PR_SET_KEEPCAPS %d", errno);
    } else if (!strcmp(mode, "ioflusher")) {
        if (prctl(PR_SET_IO_FLUSHER, !which, 0, 0, 0)) {
            if (errno != EPERM) FAIL("PR_SET_IO_FLUSHER %d", errno);
            else if (!which) report("skip PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE");
            skipped = 1;
        }
    } else if (!strcmp(mode, "spec")) {
        int ssb = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
        int ib = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_INDIRECT_BRANCH, 0, 0, 0);
        if (ssb < 0 || !(ssb & PR_SPEC_PRCTL) || ib < 0 || !(ib & PR_SPEC_PRCTL)) {
            report("skip speculation control %d %d", ssb, ib);
            return;
        }
        int v = which ? PR_SPEC_ENABLE : PR_SPEC_DISABLE;
        if (prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, v, 0, 0) ||
            prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_INDIRECT_BRANCH, v, 0, 0))
            FAIL("PR_SET_SPECULATION_CTRL %d", errno);
    }
}

static int avx_round(int which) {
    unsigned char pat[512], got[512];
    for (int i = 0; i < 512; i++) pat[i] = (unsigned char)(mix(i + 1000 * which) & 0xff);
    struct timespec ts = {0, 20000000};
    long double x = 1.25L + which, y = 0;
    __asm__ volatile(
        "fldt %[x]\n\t"
        "vmovdqu 0(%[p]), %%ymm0\n\t" "vmovdqu 32(%[p]), %%ymm1\n\t"
        "vmovdqu 64(%[p]), %%ymm2\n\t" "vmovdqu 96(%[p]), %%ymm3\n\t"
        "vmovdqu 128(%[p]), %%ymm4\n\t" "vmovdqu 160(%[p]), %%ymm5\n\t"
        "vmovdqu 192(%[p]), %%ymm6\n\t" "vmovdqu 224(%[p]), %%ymm7\n\t"
        "vmovdqu 256(%[p]), %%ymm8\n\t" "vmovdqu 288(%[p]), %%ymm9\n\t"
        "vmovdqu 320(%[p]), %%ymm10\n\t" "vmovdqu 352(%[p]), %%ymm11\n\t"
        "vmovdqu 384(%[p]), %%ymm12\n\t" "vmovdqu 416(%[p]), %%ymm13\n\t"
        "vmovdqu 448(%[p]), %%ymm14\n\t" "vmovdqu 480(%[p]), %%ymm15\n\t"
        "mov $35, %%eax\n\t" "mov %[ts], %%rdi\n\t" "xor %%esi, %%esi\n\t" "syscall\n\t"
        "vmovdqu %%ymm0, 0(%[g])\n\t" "vmovdqu %%ymm1, 32(%[g])\n\t"
        "vmovdqu %%ymm2, 64(%[g])\n\t" "vmovdqu %%ymm3, 96(%[g])\n\t"
        "vmovdqu %%ymm4, 128(%[g])\n\t" "vmovdqu %%ymm5, 160(%[g])\n\t"
        "vmovdqu %%ymm6, 192(%[g])\n\t" "vmovdqu %%ymm7, 224(%[g])\n\t"
        "vmovdqu %%ymm8, 256(%[g])\n\t" "vmovdqu %%ymm9, 288(%[g])\n\t"
        "vmovdqu %%ymm10, 320(%[g])\n\t" "vmovdqu %%ymm11, 352(%[g])\n\t"
        "vmovdqu %%ymm12, 384(%[g])\n\t" "vmovdqu %%ymm13, 416(%[g])\n\t"
        "vmovdqu %%ymm14, 448(%[g])\n\t" "vmovdqu %%ymm15, 480(%[g])\n\t"
        "fstpt %[y]\n\t"
        : [y] "=m"(y)
        : [p] "r"(pat), [g] "r"(got), [ts] "r"(&ts), [x] "m"(x)
        : "rax", "rdi", "rsi", "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
          "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
          "xmm14", "xmm15");
    int bad = 0;
    if (memcmp(pat, got, 512)) { FAIL("avx thread %d: ymm registers changed", which); bad = 1; }
    if (y != x) { FAIL("avx thread %d: st0 changed", which); bad = 1; }
    return bad;
}

static int check_one(int which) {
    int bad = 0;
    if (!strcmp(mode, "avx")) bad |= avx_round(which);
    if (!strcmp(mode, "rseq") && rseq_len[which]) {
        struct rseq *rs = rseq_area();
        int e = rseq_state(rs, rseq_len[which]);
        if (e != EBUSY) { FAIL("rseq thread %d: errno %d, not EBUSY", which, e); bad = 1; }
        if ((int)rs->cpu_id < 0) { FAIL("rseq cpu_id %d", (int)rs->cpu_id); bad = 1; }
    } else if (!strcmp(mode, "altstack")) {
        stack_t cur;
        sigaltstack(NULL, &cur);
        if (cur.ss_sp != alt_want[which].ss_sp || cur.ss_size != alt_want[which].ss_size ||
            cur.ss_flags != alt_want[which].ss_flags) {
            FAIL("altstack thread %d: %p %zu %#x", which, cur.ss_sp, cur.ss_size, cur.ss_flags);
            bad = 1;
        }
    } else if (!strcmp(mode, "fsgs")) {
        unsigned long base = 0, got;
        syscall(SYS_arch_prctl, ARCH_GET_GS, &base);
        __asm__ volatile("mov %%gs:0, %0" : "=r"(got));
        if (base != (unsigned long)gs_mem[which] || got != gs_mem[which][0]) {
            FAIL("gs base thread %d: %#lx %#lx", which, base, got);
            bad = 1;
        }
    } else if (!strcmp(mode, "fpu")) {
        unsigned m; unsigned short cw;
        __asm__ volatile("stmxcsr %0" : "=m"(m));
        __asm__ volatile("fnstcw %0" : "=m"(cw));
        if ((m & ~0x3fu) != (fpu_mxcsr[which] & ~0x3fu) || cw != fpu_cw[which]) {
            FAIL("fpu thread %d: mxcsr %#x cw %#x", which, m, cw);
            bad = 1;
        }
    } else if (!strcmp(mode, "robust")) {
        void *h; size_t l;
        syscall(SYS_get_robust_list, 0, &h, &l);
        if (h != robust_head[which] || l != robust_len[which]) {
            FAIL("robust list thread %d: %p %zu", which, h, l);
            bad = 1;
        }
    } else if (!strcmp(mode, "onaltstack") && which && handler_done) {
        stack_t cur;
        sigaltstack(NULL, &cur);
        if (cur.ss_flags || cur.ss_sp != alt_mem[1]) {
            FAIL("onaltstack: after the handler %p flags %#x", cur.ss_sp, cur.ss_flags); bad = 1;
        }
    } else if (!strcmp(mode, "threadfs")) {
        char cwd[4200], want[4200];
        snprintf(want, sizeof want, which ? "%s/sub" : "%s", dir);
        mode_t m = umask(0); umask(m);
        if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, want) || m != (which ? 077 : 022)) {
            FAIL("threadfs thread %d: cwd %s umask %o", which, cwd, m); bad = 1;
        }
    } else if (!strcmp(mode, "threadfiles")) {
        int ok = which ? fcntl(thread_fd, F_GETFD) >= 0 : fcntl(thread_fd, F_GETFD) < 0;
        if (!ok) { FAIL("threadfiles thread %d: fd %d %s", which, thread_fd, which ? "gone" : "seen"); bad = 1; }
    } else if (!strcmp(mode, "threaduts")) {
        struct utsname u;
        uname(&u);
        if ((which && strcmp(u.nodename, "cryo-thread")) || (!which && !strcmp(u.nodename, "cryo-thread"))) {
            FAIL("threaduts thread %d: %s", which, u.nodename); bad = 1;
        }
    } else if (!strcmp(mode, "threadpers")) {
        int p = personality(0xffffffff);
        if (p != (which ? ADDR_NO_RANDOMIZE : 0)) { FAIL("threadpers thread %d: %#x", which, p); bad = 1; }
    } else if (!strcmp(mode, "rsequnreg") && which && !skipped) {
        struct rseq *rs = rseq_area();
        nap(20);
        if (rs->cpu_id != 12345) { FAIL("rsequnreg: cpu_id %u: registered again", rs->cpu_id); bad = 1; }
    } else if (!strcmp(mode, "deadline") && !skipped) {
        struct sched_attr_ a = {0};
        syscall(SYS_sched_getattr, 0, &a, sizeof a, 0);
        unsigned want = which ? 6 : 0;
        if (a.sched_policy != want || (which && (a.sched_runtime != 1000000 ||
            a.sched_deadline != 20000000 || a.sched_period != 20000000))) {
            FAIL("deadline thread %d: policy %u %llu/%llu/%llu", which, a.sched_policy,
                 (unsigned long long)a.sched_runtime, (unsigned long long)a.sched_deadline,
                 (unsigned long long)a.sched_period);
            bad = 1;
        }
    } else if (!strcmp(mode, "keepcaps")) {
        int v = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
        if (v != !which) { FAIL("keepcaps thread %d: %d", which, v); bad = 1; }
    } else if (!strcmp(mode, "ioflusher") && !skipped) {
        int v = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
        if (v != !which) { FAIL("io_flusher thread %d: %d", which, v); bad = 1; }
    } else if (!strcmp(mode, "spec")) {
        int ssb = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
        int ib = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_INDIRECT_BRANCH, 0, 0, 0);
        int want = which ? PR_SPEC_ENABLE : PR_SPEC_DISABLE;
        if (ssb >= 0 && (ssb & PR_SPEC_PRCTL) &&
            ((ssb & ~PR_SPEC_PRCTL) != want || (ib & ~PR_SPEC_PRCTL) != want)) {
            FAIL("speculation thread %d: ssb %#x ib %#x", which, ssb, ib);
            bad = 1;
        }
    }
    return bad;
}

static void *thread_main(void *arg) {
    (void)arg;
    set_one(1);
    thread_ready = 1;
    for (long round = 0;; round++) {
        int bad = check_one(1);
        if (!strcmp(mode, "leaderexit") && !bad && round > 2) report("ok %ld", round);
        nap(50);
    }
    return NULL;
}

/* ---- tidaddr: a thread told to exit after the restart, joined ---- */
static void *exiter(void *arg) {
    char go[4200];
    snprintf(go, sizeof go, "%s/go", (const char *)arg);
    while (access(go, F_OK)) nap(20);
    return (void *)42;
}

static int exiter_main(void *arg) {
    char go[4200];
    snprintf(go, sizeof go, "%s/go", (const char *)arg);
    while (access(go, F_OK)) nap(20);
    _exit(42);
}

/* ---- process-wide pieces ---- */
static struct itimerval it_set[3] = {
    {{3, 0}, {1000, 0}}, {{7, 0}, {1000, 0}}, {{9, 0}, {2000, 0}}};
static struct itimerval it_last[3];

struct lim { int res; rlim_t cur, max; };
static struct lim lims[] = {
    {RLIMIT_CPU, 100000, 100001}, {RLIMIT_FSIZE, 1ULL << 40, (1ULL << 40) + 4096},
    {RLIMIT_DATA, 1ULL << 40, 1ULL << 41}, {RLIMIT_STACK, 16 << 20, 32 << 20},
    {RLIMIT_CORE, 0, 4096 * 1000}, {RLIMIT_RSS, 1ULL << 40, 1ULL << 41},
    {RLIMIT_NPROC, 10000, 10001}, {RLIMIT_NOFILE, 1000, 1001},
    {RLIMIT_MEMLOCK, 1ULL << 30, 1ULL << 31}, {RLIMIT_AS, 1ULL << 45, 1ULL << 46},
    {RLIMIT_LOCKS, 5000, 5001}, {RLIMIT_SIGPENDING, 7000, 7001},
    {RLIMIT_MSGQUEUE, 900000, 900001}, {RLIMIT_NICE, 3, 4}, {RLIMIT_RTPRIO, 5, 6},
    {RLIMIT_RTTIME, 10000000, 10000001}};


static char *anon;
static int pipes[2][2];
static int fds[8];
static char *moved, *split;
static void *brk0;
static char mm_auxv[4096], mm_cmdline[4096], mm_environ[8192], mm_stat[1024], mm_exe[4096];
static ssize_t mm_auxv_n, mm_cmdline_n, mm_environ_n;
static volatile uint64_t *shared;
static pid_t child;
static struct stat bind_st;
static int sfd, kept_fd = -1;
static int tid_word, pty_slave = -1;
static char tun_name[IFNAMSIZ];
static long long kmsg_seq = -1;
static volatile long usr1_count[5];
static volatile pid_t waiter_tid[5];
static volatile long exitsig_usr1, exitsig_chld;
static pid_t exitsig_child;
static int exitsig_reaped;
static int tmp_fd = -1, tmp_linked;
static unsigned long long core_cookie;
static int in_fd = -1, in_wd = -1, lock_fd2 = -1;
static char nl_path[4200];
static pthread_mutex_t robust_mx, pi_mx;
static volatile int od_phase;
static void *od_holder(void *arg) {
    (void)arg;
    pthread_mutex_lock(&robust_mx);
    pthread_mutex_lock(&pi_mx);
    od_phase = 1;
    char go[4200];
    snprintf(go, sizeof go, "%s/go", dir);
    while (access(go, F_OK)) nap(20);
    pthread_mutex_unlock(&pi_mx);
    return NULL;  /* still holding robust_mx */
}
static void *od_waiter(void *arg) {
    (void)arg;
    while (od_phase < 1) nap(5);
    if (pthread_mutex_lock(&pi_mx)) FAIL("PI mutex lock");  /* (waits in FUTEX_LOCK_PI) */
    od_phase = 2;
    pthread_mutex_unlock(&pi_mx);
    int e = pthread_mutex_lock(&robust_mx);
    if (e != EOWNERDEAD) FAIL("robust mutex: %d, not EOWNERDEAD", e);
    else report("ownerdead");
    return NULL;
}
static const int clk_ids[4] = {7 /* BOOTTIME */, 11 /* TAI */, 8 /* REALTIME_ALARM */,
                               9 /* BOOTTIME_ALARM */};
static timer_t clk_timers[4];
static int clk_fds[4] = {-1, -1, -1, -1}, clk_made[4];
static volatile long clk_ticks[4];
static void h_clk(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    int i = si->si_value.sival_int;
    if (i >= 0 && i < 4) clk_ticks[i]++;
}
static int memfd = -1, ep_outer = -1, ep_inner = -1, nested_pipe[2];
static char *memfd_map, **many;
static long long falloc_blocks;
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008
#endif
#ifndef PR_FUTEX_HASH
#define PR_FUTEX_HASH 78
#define PR_FUTEX_HASH_SET_SLOTS 1
#define PR_FUTEX_HASH_GET_SLOTS 2
#endif
#ifndef PR_SCHED_CORE
#define PR_SCHED_CORE 62
#endif

static void h_usr1_wait(int sig) {
    (void)sig;
    pid_t me = gettid();
    for (int i = 0; i < 5; i++) if (waiter_tid[i] == me) usr1_count[i]++;
}
static void h_exitsig(int sig) { if (sig == SIGUSR1) exitsig_usr1++; else exitsig_chld++; }

/* sigwait: thread i waits in its own call with SIGUSR1 let through, then checks that
 * the mask blocked is its own again ({SIGUSR1, SIGWINCH}) */
static void *waiter(void *arg) {
    int i = (int)(long)arg;
    waiter_tid[i] = gettid();
    sigset_t own, during;
    sigemptyset(&own); sigaddset(&own, SIGUSR1); sigaddset(&own, SIGWINCH);
    pthread_sigmask(SIG_SETMASK, &own, NULL);
    sigemptyset(&during); sigaddset(&during, SIGWINCH);
    int ep = epoll_create1(0);
    for (;;) {
        struct timespec ts = {5, 0};
        switch (i) {
        case 1: sigsuspend(&during); break;
        case 2: ppoll(NULL, 0, &ts, &during); break;
        case 3: pselect(0, NULL, NULL, NULL, &ts, &during); break;
        case 4: { struct epoll_event ev; epoll_pwait(ep, &ev, 1, 5000, &during); break; }
        }
        sigset_t now;
        pthread_sigmask(SIG_SETMASK, NULL, &now);
        if (!sigismember(&now, SIGUSR1) || !sigismember(&now, SIGWINCH) || sigismember(&now, SIGUSR2))
            FAIL("sigwait thread %d: mask after the call is not its own (SIGUSR1 %d)", i,
                 sigismember(&now, SIGUSR1));
    }
    return NULL;
}

static ssize_t slurp(const char *path, char *buf, size_t n) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t got = read(fd, buf, n);
    close(fd);
    return got;
}

/* the mm fields of /proc/self/stat: startcode endcode startstack (26-28) and
 * start_data ... env_end (45-51) */
static void stat_mm(char *outbuf) {
    char buf[1024];
    ssize_t n = slurp("/proc/self/stat", buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    char *p = strrchr(buf, ')') + 2;
    char *tok, *save;
    int field = 3;
    outbuf[0] = 0;
    for (tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++)
        if ((field >= 26 && field <= 28) || (field >= 45 && field <= 51)) {
            strcat(outbuf, tok);
            strcat(outbuf, " ");
        }
}

static unsigned long long mount_id(const char *path) {
    struct statx sx;
    if (statx(AT_FDCWD, path, 0, STATX_MNT_ID, &sx)) return 0;
    return sx.stx_mnt_id;
}
static unsigned long long bind_mnt;

static int fdinfo_line(int fd, const char *key, char *val, size_t n) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    ssize_t got = slurp(path, buf, sizeof buf - 1);
    if (got <= 0) return -1;
    buf[got] = 0;
    char *p = strstr(buf, key);
    if (!p) return -1;
    p += strlen(key);
    while (*p == ' ' || *p == '\t') p++;
    size_t i = 0;
    while (p[i] && p[i] != '\n' && i + 1 < n) { val[i] = p[i]; i++; }
    val[i] = 0;
    return 0;
}
static char sfd_mask[64];

static void setup(void) {
    char path[4200];
    if (!strcmp(mode, "threadfs") && chdir(dir)) FAIL("chdir");
    if (!strcmp(mode, "personality")) {
        if (personality(ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC) < 0) FAIL("personality");
    } else if (!strcmp(mode, "itimers")) {
        signal(SIGALRM, SIG_IGN); signal(SIGVTALRM, SIG_IGN); signal(SIGPROF, SIG_IGN);
        for (int w = 0; w < 3; w++) {
            setitimer(w, &it_set[w], NULL);
            getitimer(w, &it_last[w]);  /* (VIRTUAL and PROF: rounded up to a tick) */
        }
    } else if (!strcmp(mode, "rlimits")) {
        for (unsigned i = 0; i < sizeof lims / sizeof *lims; i++) {
            struct rlimit rl;  /* below the hard limit it has (raising needs CAP_SYS_RESOURCE) */
            getrlimit(lims[i].res, &rl);
            if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < lims[i].max) {
                lims[i].max = rl.rlim_max > 2 ? rl.rlim_max - 1 : rl.rlim_max;
                lims[i].cur = lims[i].max > 1 ? lims[i].max - 1 : 0;
            }
            rl.rlim_cur = lims[i].cur; rl.rlim_max = lims[i].max;
            if (setrlimit(lims[i].res, &rl)) FAIL("setrlimit %d: %d", lims[i].res, errno);
        }
    } else if (!strcmp(mode, "nofile")) {
        struct rlimit rl = {64, 128};
        if (setrlimit(RLIMIT_NOFILE, &rl)) FAIL("setrlimit");
    } else if (!strcmp(mode, "subreaper")) {
        prctl(PR_SET_CHILD_SUBREAPER, 1);
    } else if (!strcmp(mode, "thp")) {
        prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    } else if (!strcmp(mode, "anonname")) {
        anon = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, anon + 4096, 4096, "cryo-probe")) {
            if (errno != EINVAL) FAIL("PR_SET_VMA_ANON_NAME %d", errno);
            else report("skip PR_SET_VMA_ANON_NAME: no CONFIG_ANON_VMA_NAME");
            skipped = 1;
        }
        memset(anon, 7, 3 * 4096);
    } else if (!strcmp(mode, "tidaddr")) {
        syscall(SYS_set_tid_address, &tid_word);
    } else if (!strcmp(mode, "uclamp")) {
        struct sched_attr_ a = {0};
        a.size = sizeof a;
        a.sched_flags = 0x20 | 0x40 | 0x08 | 0x10;  /* UTIL_CLAMP_MIN|MAX, KEEP_POLICY|PARAMS */
        a.sched_util_min = 100; a.sched_util_max = 800;
        if (syscall(SYS_sched_setattr, 0, &a, 0)) {
            report("skip uclamp %d", errno);
            skipped = 1;
        }
    } else if (!strcmp(mode, "pipesz")) {
        if (pipe(pipes[0]) || pipe(pipes[1])) FAIL("pipe");
        if (fcntl(pipes[0][1], F_SETPIPE_SZ, 1 << 20) < 0 || fcntl(pipes[1][0], F_SETPIPE_SZ, 8192) < 0)
            FAIL("F_SETPIPE_SZ %d", errno);
        if (write(pipes[0][1], "abc", 3) != 3) FAIL("write");
    } else if (!strcmp(mode, "fdflags")) {
        snprintf(path, sizeof path, "%s/f", dir);
        int base = open(path, O_RDWR | O_CREAT, 0644);
        if (write(base, "0123456789", 10) != 10) FAIL("write");
        int flags[] = {O_APPEND, O_NOATIME, O_DIRECT, O_NONBLOCK, O_SYNC, O_DSYNC, 0};
        for (int i = 0; i < 7; i++) {
            fds[i] = open(path, O_RDWR | flags[i] | (i % 2 ? O_CLOEXEC : 0));
            if (fds[i] < 0) FAIL("open %d: %d", i, errno);
        }
        if (lseek(fds[6], 1 << 20, SEEK_SET) != 1 << 20) FAIL("lseek");
        fds[7] = open("/dev/null", O_PATH | O_CLOEXEC);
        close(base);
    } else if (!strcmp(mode, "signalfd")) {
        sigset_t m;
        sigemptyset(&m); sigaddset(&m, SIGUSR1); sigaddset(&m, SIGRTMIN + 3); sigaddset(&m, SIGWINCH);
        sigprocmask(SIG_BLOCK, &m, NULL);
        sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
        if (fdinfo_line(sfd, "sigmask:", sfd_mask, sizeof sfd_mask)) FAIL("fdinfo");
    } else if (!strcmp(mode, "mremap")) {
        /* nine pages, the first eight grown to sixteen: the ninth is in the way, so
         * the region moves (the ninth page stays behind) */
        char *a = mmap(NULL, 9 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        for (int i = 0; i < 8 * 4096; i++) a[i] = (char)(i * 7);
        moved = mremap(a, 8 * 4096, 16 * 4096, MREMAP_MAYMOVE);
        if (moved == MAP_FAILED) FAIL("mremap");
        for (int i = 8 * 4096; i < 16 * 4096; i++) moved[i] = (char)(i * 7);
        split = mmap(NULL, 6 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(split, 5, 6 * 4096);
        mprotect(split + 2 * 4096, 2 * 4096, PROT_READ);
        mprotect(split + 4 * 4096, 4096, PROT_NONE);
        void *cur = sbrk(0);
        brk0 = (char *)cur + 3 * 4096 + 17;
        if (brk(brk0)) FAIL("brk");
        memset(cur, 9, 3 * 4096 + 17);
    } else if (!strcmp(mode, "nocldwait")) {
        struct sigaction sa = {0};
        sa.sa_handler = SIG_DFL; sa.sa_flags = SA_NOCLDWAIT;
        sigaction(SIGCHLD, &sa, NULL);
    } else if (!strcmp(mode, "mm")) {
        mm_auxv_n = slurp("/proc/self/auxv", mm_auxv, sizeof mm_auxv);
        mm_cmdline_n = slurp("/proc/self/cmdline", mm_cmdline, sizeof mm_cmdline);
        mm_environ_n = slurp("/proc/self/environ", mm_environ, sizeof mm_environ);
        stat_mm(mm_stat);
        if (readlink("/proc/self/exe", mm_exe, sizeof mm_exe - 1) < 0) FAIL("exe");
    } else if (!strcmp(mode, "ptyexcl")) {
        kept_fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (kept_fd < 0 || grantpt(kept_fd) || unlockpt(kept_fd)) FAIL("ptmx %d", errno);
        pty_slave = open(ptsname(kept_fd), O_RDWR | O_NOCTTY);
        if (pty_slave < 0 || ioctl(pty_slave, TIOCEXCL)) FAIL("TIOCEXCL %d", errno);
        report("pty %s", ptsname(kept_fd));
    } else if (!strcmp(mode, "shmfile") || !strcmp(mode, "devzero")) {
        int fd;
        if (mode[0] == 's') {
            snprintf(path, sizeof path, "/dev/shm/cryo-probe-%d", getpid());
            fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd < 0 || ftruncate(fd, 4096)) FAIL("shm open");
        } else {
            fd = open("/dev/zero", O_RDWR);
            snprintf(path, sizeof path, "/dev/zero");
        }
        shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        report("shm %s", path);
        child = fork();
        if (child == 0) {
            for (uint64_t n = 1;; n++) {
                shared[1] = n;
                uint64_t seen = shared[0];
                nap(30);  /* (under load a process may stall for a while: 3 s of slack) */
                for (int k = 0; k < 100 && shared[0] == seen; k++) nap(30);
                if (shared[0] == seen) { FAIL("child: parent's counter stuck at %lu", (unsigned long)seen); nap(1000); }
            }
        }
        report("child %d", child);
    } else if (!strcmp(mode, "iouring")) {
        struct io_uring_params p = {0};
        kept_fd = syscall(SYS_io_uring_setup, 8, &p);
    } else if (!strcmp(mode, "perf")) {
        struct perf_event_attr a = {0};
        a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_TASK_CLOCK;
        a.exclude_kernel = 1;
        kept_fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    } else if (!strcmp(mode, "bpf")) {
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 8; a.max_entries = 4;
        kept_fd = syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a);
    } else if (!strcmp(mode, "tun")) {
        struct ifreq ifr = {0};
        kept_fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
        snprintf(ifr.ifr_name, IFNAMSIZ, "cryop%d", getpid() % 100000);
        if (kept_fd < 0 || ioctl(kept_fd, TUNSETIFF, &ifr)) FAIL("TUNSETIFF %d", errno);
        snprintf(tun_name, sizeof tun_name, "%s", ifr.ifr_name);
    } else if (!strcmp(mode, "dmalatency")) {
        int32_t want = 7;
        kept_fd = open("/dev/cpu_dma_latency", O_RDWR | O_CLOEXEC);
        if (kept_fd < 0 || write(kept_fd, &want, 4) != 4) FAIL("cpu_dma_latency %d", errno);
    } else if (!strcmp(mode, "kmsg")) {
        kept_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        char rec[8192];
        ssize_t n;
        while ((n = read(kept_fd, rec, sizeof rec - 1)) > 0 || errno == EPIPE)
            if (n > 0) { rec[n] = 0; sscanf(rec, "%*d,%lld", &kmsg_seq); }
        if (errno != EAGAIN) FAIL("kmsg %d", errno);
    } else if (!strcmp(mode, "kmsgw")) {
        kept_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    } else if (!strcmp(mode, "sigwait")) {
        struct sigaction sa = {0};
        sa.sa_handler = h_usr1_wait;
        sigaction(SIGUSR1, &sa, NULL);
        for (long i = 1; i < 5; i++) {
            pthread_t t;
            pthread_create(&t, NULL, waiter, (void *)i);
        }
        for (int i = 1; i < 5; i++) while (!waiter_tid[i]) nap(5);
    } else if (!strcmp(mode, "tmpfile")) {
        tmp_fd = open(dir, O_TMPFILE | O_RDWR, 0640);
        if (tmp_fd < 0 || write(tmp_fd, "tmpfile data", 12) != 12) FAIL("O_TMPFILE %d", errno);
    } else if (!strcmp(mode, "xattr") || !strcmp(mode, "xattrtrusted") || !strcmp(mode, "xattrmapped")) {
        snprintf(path, sizeof path, "%s/x", dir);
        tmp_fd = open(path, O_RDWR | O_CREAT, 0640);
        const char *attr = mode[5] == 't' ? "trusted.cryo" : "user.cryo";
        if (mode[5] == 'm') {
            if (ftruncate(tmp_fd, 4096)) FAIL("ftruncate");
            memfd_map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, tmp_fd, 0);
            memfd_map[100] = 42;
        }
        if (pwrite(tmp_fd, "data", 4, 0) != 4 || fsetxattr(tmp_fd, attr, "value", 5, 0)) {
            report("skip xattr %d", errno);
            skipped = 1;
        }
        unlink(path);
    } else if (!strcmp(mode, "exitsig")) {
        struct sigaction sa = {0};
        sa.sa_handler = h_exitsig;
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGCHLD, &sa, NULL);
        static char stack[1 << 16];
        exitsig_child = clone((int (*)(void *))exiter_main, stack + sizeof stack, SIGUSR1, (void *)dir);
        if (exitsig_child < 0) FAIL("clone %d", errno);
        report("child %d", exitsig_child);
    } else if (!strcmp(mode, "futexhash")) {
        if (prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, 128, 0, 0)) {
            report("skip PR_FUTEX_HASH %d", errno);
            skipped = 1;
        }
    } else if (!strcmp(mode, "schedcore")) {
        if (prctl(PR_SCHED_CORE, 1 /* CREATE */, 0, 1 /* PIDTYPE_TGID */, 0)) {
            report("skip PR_SCHED_CORE %d", errno);
            skipped = 1;
        } else {
            prctl(PR_SCHED_CORE, 0 /* GET */, 0, 0 /* PIDTYPE_PID */, &core_cookie);
        }
    } else if (!strcmp(mode, "truncmap")) {
        snprintf(path, sizeof path, "%s/t", dir);
        int fd = open(path, O_RDWR | O_CREAT, 0644);
        if (ftruncate(fd, 3 * 4096)) FAIL("ftruncate");
        trunc_map = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        memset(trunc_map, 3, 3 * 4096);
        if (ftruncate(fd, 4096)) FAIL("ftruncate");
        close(fd);
        struct sigaction sa = {0};
        sa.sa_handler = h_bus; sa.sa_flags = SA_NODEFER;
        sigaction(SIGBUS, &sa, NULL);
    } else if (!strcmp(mode, "memfdseal")) {
        memfd = memfd_create("cryo-sealed", MFD_ALLOW_SEALING);
        if (memfd < 0 || ftruncate(memfd, 8192)) FAIL("memfd");
        memfd_map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (fcntl(memfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK))
            FAIL("F_ADD_SEALS %d", errno);
    } else if (!strcmp(mode, "memfdwseal")) {
        memfd = memfd_create("cryo-wsealed", MFD_ALLOW_SEALING);
        if (memfd < 0 || ftruncate(memfd, 8192) || pwrite(memfd, "sealed", 6, 0) != 6) FAIL("memfd");
        char ro[64];  /* (mapped through a read-only open: no VM_MAYWRITE, F_SEAL_WRITE allowed) */
        snprintf(ro, sizeof ro, "/proc/self/fd/%d", memfd);
        int rofd = open(ro, O_RDONLY);
        memfd_map = mmap(NULL, 8192, PROT_READ, MAP_SHARED, rofd, 0);
        close(rofd);
        if (memfd_map == MAP_FAILED || fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL))
            FAIL("F_SEAL_WRITE %d", errno);
    } else if (!strcmp(mode, "memfdnoexec")) {
        memfd = memfd_create("cryo-noexec", MFD_NOEXEC_SEAL);
        if (memfd < 0) { report("skip MFD_NOEXEC_SEAL %d", errno); skipped = 1; }
        else if (write(memfd, "noexec", 6) != 6) FAIL("write");
    } else if (!strcmp(mode, "nestedepoll")) {
        if (pipe(nested_pipe) || write(nested_pipe[1], "x", 1) != 1) FAIL("pipe");
        ep_inner = epoll_create1(0);
        ep_outer = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 77};
        epoll_ctl(ep_inner, EPOLL_CTL_ADD, nested_pipe[0], &ev);
        ev.data.u64 = 88;
        if (epoll_ctl(ep_outer, EPOLL_CTL_ADD, ep_inner, &ev)) FAIL("nested epoll %d", errno);
    } else if (!strcmp(mode, "fallocghost")) {
        snprintf(path, sizeof path, "%s/fa", dir);
        tmp_fd = open(path, O_RDWR | O_CREAT, 0640);
        if (write(tmp_fd, "head", 4) != 4 || fallocate(tmp_fd, 0, 0, 1 << 20)) {
            report("skip fallocate %d", errno); skipped = 1;
        }
        unlink(path);
        struct stat st;
        fstat(tmp_fd, &st);
        falloc_blocks = st.st_blocks;
    } else if (!strcmp(mode, "manyvmas")) {
        many = malloc(20000 * sizeof *many);
        for (int i = 0; i < 20000; i++) {
            many[i] = mmap(NULL, 4096, i % 2 ? PROT_READ : PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (many[i] == MAP_FAILED) { FAIL("mmap %d", i); break; }
            if (!(i % 2)) many[i][0] = (char)i;
        }
    } else if (!strcmp(mode, "clocks")) {
        struct sigaction sa = {0};
        sa.sa_sigaction = h_clk; sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigaction(SIGRTMIN + 2, &sa, NULL);
        struct itimerspec its = {{0, 40000000}, {0, 40000000}};
        for (int i = 0; i < 4; i++) {
            struct sigevent ev = {0};
            ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGRTMIN + 2; ev.sigev_value.sival_int = i;
            if (timer_create(clk_ids[i], &ev, &clk_timers[i]) == 0 &&
                timer_settime(clk_timers[i], 0, &its, NULL) == 0) clk_made[i] |= 1;
            clk_fds[i] = timerfd_create(clk_ids[i], TFD_NONBLOCK | TFD_CLOEXEC);
            if (clk_fds[i] >= 0 && timerfd_settime(clk_fds[i], 0, &its, NULL) == 0) clk_made[i] |= 2;
            if (clk_made[i] != 3) report("skip clock %d: %d", clk_ids[i], clk_made[i]);
        }
    } else if (!strcmp(mode, "ownerdead")) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_PRIVATE);
        pthread_mutex_init(&robust_mx, &a);
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
        pthread_mutex_init(&pi_mx, &a);
        pthread_t t1, t2;
        pthread_create(&t1, NULL, od_holder, NULL);
        pthread_create(&t2, NULL, od_waiter, NULL);
        while (od_phase < 1) nap(5);
    } else if (!strcmp(mode, "rootbind")) {
        snprintf(path, sizeof path, "%s/b", dir);
        if (chroot(path) || chdir("/")) FAIL("chroot %d", errno);
        stat("/", &bind_st);
        bind_mnt = mount_id("/");
    } else if (!strcmp(mode, "inotifyghost")) {
        snprintf(path, sizeof path, "%s/watched", dir);
        tmp_fd = open(path, O_RDWR | O_CREAT, 0640);
        in_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        in_wd = inotify_add_watch(in_fd, path, IN_MODIFY);
        if (tmp_fd < 0 || in_wd < 0 || unlink(path)) FAIL("inotify %d", errno);
        char ev[4096];
        while (read(in_fd, ev, sizeof ev) > 0) {}  /* (IN_ATTRIB of the unlink) */
    } else if (!strcmp(mode, "lockghost")) {
        snprintf(path, sizeof path, "%s/locked", dir);
        tmp_fd = open(path, O_RDWR | O_CREAT, 0640);
        lock_fd2 = open(path, O_RDWR);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 5};
        if (flock(tmp_fd, LOCK_EX) || fcntl(lock_fd2, F_OFD_SETLK, &fl) || unlink(path))
            FAIL("locks %d", errno);
    } else if (!strcmp(mode, "nlname")) {
        snprintf(nl_path, sizeof nl_path, "%s/a\nb\\012c", dir);
        tmp_fd = open(nl_path, O_RDWR | O_CREAT, 0644);
        char buf[8192];
        memset(buf, 'A', sizeof buf);
        if (tmp_fd < 0 || write(tmp_fd, buf, sizeof buf) != sizeof buf) FAIL("nlname %d", errno);
        memfd_map = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, tmp_fd, 0);
    } else if (!strcmp(mode, "uname26")) {
        if (personality(UNAME26) < 0) FAIL("UNAME26");
    } else if (!strcmp(mode, "lowmap")) {
        memfd_map = mmap((void *)0x10000, 8192, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (memfd_map != (char *)0x10000) { report("skip lowmap %d", errno); skipped = 1; }
        else memset(memfd_map, 0x5a, 8192);
    } else if (!strcmp(mode, "appendghost")) {
        snprintf(path, sizeof path, "%s/app", dir);
        tmp_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0640);
        lock_fd2 = open(path, O_RDONLY);
        if (write(tmp_fd, "start", 5) != 5 || unlink(path)) FAIL("append");
    } else if (!strcmp(mode, "cwdbind")) {
        snprintf(path, sizeof path, "%s/b", dir);
        if (chdir(path)) FAIL("chdir %d", errno);
        stat(".", &bind_st);
        bind_mnt = mount_id(".");
    }
}

static int check(long round) {
    int bad = 0;
    char buf[8192];
    if (!strcmp(mode, "personality")) {
        int p = personality(0xffffffff);
        if (p != (ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC)) { FAIL("personality %#x", p); bad = 1; }
        char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char line[64];
        snprintf(line, sizeof line, "%lx-", (unsigned long)m);
        ssize_t n = slurp("/proc/self/maps", buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        char *at = strstr(buf, line);
        if (!at || strncmp(strchr(at, ' ') + 1, "r-x", 3)) { FAIL("READ_IMPLIES_EXEC: not r-x"); bad = 1; }
        munmap(m, 4096);
    } else if (!strcmp(mode, "itimers")) {
        for (int w = 0; w < 3; w++) {
            struct itimerval cur;
            getitimer(w, &cur);
            long long v = cur.it_value.tv_sec * 1000000LL + cur.it_value.tv_usec;
            long long last = it_last[w].it_value.tv_sec * 1000000LL + it_last[w].it_value.tv_usec;
            if (cur.it_interval.tv_sec != it_set[w].it_interval.tv_sec || cur.it_interval.tv_usec ||
                v <= 0 || v > last) {
                FAIL("itimer %d: interval %ld.%06ld value %lld (last %lld)", w,
                     (long)cur.it_interval.tv_sec, (long)cur.it_interval.tv_usec, v, last);
                bad = 1;
            }
            it_last[w] = cur;
        }
    } else if (!strcmp(mode, "rlimits")) {
        for (unsigned i = 0; i < sizeof lims / sizeof *lims; i++) {
            struct rlimit rl;
            getrlimit(lims[i].res, &rl);
            if (rl.rlim_cur != lims[i].cur || rl.rlim_max != lims[i].max) {
                FAIL("rlimit %d: %llu %llu", lims[i].res, (unsigned long long)rl.rlim_cur,
                     (unsigned long long)rl.rlim_max);
                bad = 1;
            }
        }
    } else if (!strcmp(mode, "nofile")) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != 64 || rl.rlim_max != 128) { FAIL("nofile %lu", (unsigned long)rl.rlim_cur); bad = 1; }
    } else if (!strcmp(mode, "subreaper")) {
        int v = 0;
        prctl(PR_GET_CHILD_SUBREAPER, &v);
        if (v != 1) { FAIL("subreaper %d", v); bad = 1; }
    } else if (!strcmp(mode, "thp")) {
        if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) { FAIL("thp_disable"); bad = 1; }
    } else if (!strcmp(mode, "anonname") && !skipped) {
        char line[64];
        ssize_t n = slurp("/proc/self/maps", buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        snprintf(line, sizeof line, "%lx-%lx ", (unsigned long)anon + 4096, (unsigned long)anon + 8192);
        char *at = strstr(buf, line);
        char *eol = at ? strchr(at, '\n') : NULL;
        if (!at || !eol || eol - at < 12 || strncmp(eol - 12, "[anon:cryo-probe]" + 5, 12)) {
            FAIL("anon name lost"); bad = 1;
        }
        snprintf(line, sizeof line, "%lx-%lx ", (unsigned long)anon, (unsigned long)anon + 4096);
        if (!strstr(buf, line)) { FAIL("the first page is not a mapping of its own"); bad = 1; }
        for (int i = 0; i < 3 * 4096; i++) if (anon[i] != 7) { FAIL("anon data"); bad = 1; break; }
    } else if (!strcmp(mode, "tidaddr")) {
        void *addr = NULL;
        prctl(PR_GET_TID_ADDRESS, &addr);
        if (addr != &tid_word) { FAIL("tid address %p (was %p)", addr, (void *)&tid_word); bad = 1; }
    } else if (!strcmp(mode, "uclamp") && !skipped) {
        struct sched_attr_ a = {0};
        if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) == 0 && a.size >= sizeof a &&
            (a.sched_util_min != 100 || a.sched_util_max != 800)) {
            FAIL("uclamp %u %u", a.sched_util_min, a.sched_util_max); bad = 1;
        }
    } else if (!strcmp(mode, "pipesz")) {
        int a = fcntl(pipes[0][0], F_GETPIPE_SZ), b = fcntl(pipes[1][1], F_GETPIPE_SZ);
        if (a != 1 << 20 || b != 8192) { FAIL("pipe sizes %d %d", a, b); bad = 1; }
    } else if (!strcmp(mode, "fdflags")) {
        int flags[] = {O_APPEND, O_NOATIME, O_DIRECT, O_NONBLOCK, O_SYNC, O_DSYNC, 0};
        for (int i = 0; i < 7; i++) {
            int fl = fcntl(fds[i], F_GETFL), fd = fcntl(fds[i], F_GETFD);
            int mask = O_APPEND | O_NOATIME | O_DIRECT | O_NONBLOCK | O_SYNC | O_DSYNC | O_ACCMODE;
            if ((fl & mask) != (O_RDWR | flags[i]) || fd != (i % 2 ? FD_CLOEXEC : 0)) {
                FAIL("fd %d flags %#o fd flags %d (want %#o)", i, fl & mask, fd, O_RDWR | flags[i]);
                bad = 1;
            }
        }
        if (lseek(fds[6], 0, SEEK_CUR) != 1 << 20) { FAIL("offset past EOF"); bad = 1; }
        struct stat a, b;
        int fl = fcntl(fds[7], F_GETFL);
        if (fstat(fds[7], &a) || stat("/dev/null", &b) || a.st_rdev != b.st_rdev ||
            !(fl & O_PATH) || fcntl(fds[7], F_GETFD) != FD_CLOEXEC) {
            FAIL("O_PATH /dev/null flags %#o", fl); bad = 1;
        }
    } else if (!strcmp(mode, "signalfd")) {
        char m[64];
        if (fdinfo_line(sfd, "sigmask:", m, sizeof m) || strcmp(m, sfd_mask) ||
            !(fcntl(sfd, F_GETFL) & O_NONBLOCK) || fcntl(sfd, F_GETFD) != FD_CLOEXEC) {
            FAIL("signalfd mask %s (was %s)", m, sfd_mask); bad = 1;
        }
        if (round % 3 == 0) {
            kill(getpid(), SIGWINCH);
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != SIGWINCH) { FAIL("signalfd read"); bad = 1; }
        }
    } else if (!strcmp(mode, "mremap")) {
        for (int i = 0; i < 16 * 4096; i++) if (moved[i] != (char)(i * 7)) { FAIL("moved data at %d", i); bad = 1; break; }
        char want[3][32];
        snprintf(want[0], 32, "%lx-%lx rw-p", (unsigned long)split, (unsigned long)split + 2 * 4096);
        snprintf(want[1], 32, "%lx-%lx r--p", (unsigned long)split + 2 * 4096, (unsigned long)split + 4 * 4096);
        snprintf(want[2], 32, "%lx-%lx ---p", (unsigned long)split + 4 * 4096, (unsigned long)split + 5 * 4096);
        ssize_t n = slurp("/proc/self/maps", buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        for (int i = 0; i < 3; i++) if (!strstr(buf, want[i])) { FAIL("split: no %s", want[i]); bad = 1; }
        for (int i = 0; i < 4 * 4096; i++) if (split[i] != 5) { FAIL("split data"); bad = 1; break; }
        /* the kernel's brk (not glibc's cached one), as it was at the first round
         * (malloc may have moved it since the setup: pthread_create) */
        static void *brk_seen;
        void *kbrk = (void *)syscall(SYS_brk, 0);
        if (!brk_seen) brk_seen = kbrk;
        if (kbrk != brk_seen || kbrk < brk0) { FAIL("brk %p (was %p)", kbrk, brk_seen); bad = 1; }
        for (char *p = (char *)brk0 - 3 * 4096 - 17; p < (char *)brk0; p++)
            if (*p != 9) { FAIL("brk data"); bad = 1; break; }
    } else if (!strcmp(mode, "nocldwait")) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        int st;
        pid_t got = waitpid(c, &st, 0);
        if (got != -1 || errno != ECHILD) { FAIL("SA_NOCLDWAIT: waitpid gave %d", got); bad = 1; }
        struct sigaction sa;
        sigaction(SIGCHLD, NULL, &sa);
        if (!(sa.sa_flags & SA_NOCLDWAIT)) { FAIL("SA_NOCLDWAIT flag"); bad = 1; }
    } else if (!strcmp(mode, "mm")) {
        char b2[8192], st[1024], exe[4096] = {0};
        ssize_t n = slurp("/proc/self/auxv", b2, sizeof b2);
        if (n != mm_auxv_n || memcmp(b2, mm_auxv, n)) { FAIL("auxv"); bad = 1; }
        n = slurp("/proc/self/cmdline", b2, sizeof b2);
        if (n != mm_cmdline_n || memcmp(b2, mm_cmdline, n)) { FAIL("cmdline"); bad = 1; }
        n = slurp("/proc/self/environ", b2, sizeof b2);
        if (n != mm_environ_n || memcmp(b2, mm_environ, n)) { FAIL("environ"); bad = 1; }
        stat_mm(st);
        if (strcmp(st, mm_stat)) { FAIL("stat mm fields %s (was %s)", st, mm_stat); bad = 1; }
        if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0 || strcmp(exe, mm_exe)) { FAIL("exe %s", exe); bad = 1; }
    } else if (!strcmp(mode, "ptyexcl")) {
        int excl = 0;
        if (ioctl(pty_slave, TIOCGEXCL, &excl) || excl != 1) { FAIL("TIOCGEXCL %d", excl); bad = 1; }
    } else if (!strcmp(mode, "shmfile") || !strcmp(mode, "devzero")) {
        uint64_t seen = shared[1];
        shared[0]++;
        nap(30);
        for (int k = 0; k < 100 && shared[1] == seen; k++) nap(30);
        if (shared[1] == seen) { FAIL("child's counter stuck at %lu", (unsigned long)seen); bad = 1; }
    } else if (!strcmp(mode, "iouring") || !strcmp(mode, "perf") || !strcmp(mode, "bpf")) {
        if (kept_fd < 0 || fcntl(kept_fd, F_GETFD) < 0) { FAIL("%s fd %d", mode, kept_fd); bad = 1; }
    } else if (!strcmp(mode, "tun")) {
        struct ifreq ifr = {0};
        if (ioctl(kept_fd, TUNGETIFF, &ifr) || strcmp(ifr.ifr_name, tun_name)) {
            FAIL("tun: TUNGETIFF %d (%s)", errno, tun_name); bad = 1;
        }
    } else if (!strcmp(mode, "dmalatency")) {
        int32_t got = 0;
        if (pread(kept_fd, &got, 4, 0) != 4 || got != 7) { FAIL("cpu_dma_latency %d", got); bad = 1; }
    } else if (!strcmp(mode, "kmsg")) {
        char rec[8192];
        ssize_t n;
        while ((n = read(kept_fd, rec, sizeof rec - 1)) > 0) {
            rec[n] = 0;  /* "pri,seq,...": a sequence number never seen before */
            long long seq = -1;
            sscanf(rec, "%*d,%lld", &seq);
            if (seq <= kmsg_seq) { FAIL("kmsg seq %lld again (last %lld)", seq, kmsg_seq); bad = 1; break; }
            kmsg_seq = seq;
        }
    } else if (!strcmp(mode, "kmsgw")) {
        struct stat st;
        if (fstat(kept_fd, &st) || st.st_rdev != makedev(1, 11) ||
            (fcntl(kept_fd, F_GETFL) & O_ACCMODE) != O_WRONLY) { FAIL("kmsg for writing"); bad = 1; }
    } else if (!strcmp(mode, "sigwait")) {
        for (int i = 1; i < 5; i++) {
            long before = usr1_count[i];
            for (int k = 0; k < 50 && usr1_count[i] == before; k++) {
                syscall(SYS_tgkill, getpid(), waiter_tid[i], SIGUSR1);
                nap(20);
            }
            if (usr1_count[i] == before) { FAIL("sigwait thread %d: no SIGUSR1", i); bad = 1; }
        }
    } else if (!strcmp(mode, "tmpfile")) {
        char go[4200], name[4200], fdpath[64], got[16] = {0};
        snprintf(go, sizeof go, "%s/go", dir);
        if (!tmp_linked && !access(go, F_OK)) {
            snprintf(name, sizeof name, "%s/linked", dir);
            snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", tmp_fd);
            int fd;
            if (linkat(AT_FDCWD, fdpath, AT_FDCWD, name, AT_SYMLINK_FOLLOW)) {
                FAIL("linkat of the O_TMPFILE file: %d", errno); bad = 1;
            } else if ((fd = open(name, O_RDONLY)) < 0 || read(fd, got, 12) != 12 ||
                       strcmp(got, "tmpfile data")) {
                FAIL("linked file: %s", got); bad = 1;
            } else {
                report("linked");
            }
            tmp_linked = 1;
        }
    } else if ((!strcmp(mode, "xattr") || !strcmp(mode, "xattrtrusted") || !strcmp(mode, "xattrmapped")) && !skipped) {
        char v[16] = {0};
        if (mode[5] == 'm' && (memfd_map[100] != 42 || memfd_map[0] != 'd')) { FAIL("xattrmapped data"); bad = 1; }
        if (fgetxattr(tmp_fd, mode[5] == 't' ? "trusted.cryo" : "user.cryo", v, sizeof v) != 5 || strcmp(v, "value")) {
            FAIL("xattr of the deleted file: %d", errno); bad = 1;
        }
    } else if (!strcmp(mode, "exitsig")) {
        if (!exitsig_reaped && exitsig_usr1) {
            int st;
            pid_t got = waitpid(exitsig_child, &st, __WALL);
            if (got != exitsig_child || !WIFEXITED(st) || WEXITSTATUS(st) != 42 || exitsig_chld) {
                FAIL("exit signal: waitpid %d status %#x, SIGCHLD %ld", got, st, exitsig_chld); bad = 1;
            } else {
                report("reaped");
            }
            exitsig_reaped = 1;
        } else if (exitsig_chld) {
            FAIL("SIGCHLD instead of SIGUSR1"); bad = 1;
        }
    } else if (!strcmp(mode, "futexhash") && !skipped) {
        int n = prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0);
        if (n != 128) { FAIL("futex hash slots %d", n); bad = 1; }
    } else if (!strcmp(mode, "schedcore") && !skipped) {
        unsigned long long c = 0;
        prctl(PR_SCHED_CORE, 0, 0, 0, &c);
        if (!c) { FAIL("core scheduling cookie lost"); bad = 1; }
    } else if (!strcmp(mode, "truncmap")) {
        for (int i = 0; i < 4096; i++) if (trunc_map[i] != 3) { FAIL("truncmap data"); bad = 1; break; }
        volatile char *far = trunc_map + 2 * 4096;
        if (!sigsetjmp(bus_jmp, 1)) {
            (void)*far;
            FAIL("truncmap: no SIGBUS past the end"); bad = 1;
        }
    } else if (!strcmp(mode, "onaltstack")) {
        char go[4200];
        snprintf(go, sizeof go, "%s/go", dir);
        if (access(go, F_OK) && !in_handler) { FAIL("onaltstack: handler gone"); bad = 1; }
        if (handler_done && round % 5 == 0) report("handler returned");
    } else if (!strcmp(mode, "memfdseal")) {
        int seals = fcntl(memfd, F_GET_SEALS);
        ((volatile long *)memfd_map)[0] = round;
        long got = -1;
        if (pread(memfd, &got, sizeof got, 0) != sizeof got || got != round) { FAIL("memfd data %ld", got); bad = 1; }
        if (seals != (F_SEAL_FUTURE_WRITE | F_SEAL_GROW | F_SEAL_SHRINK)) { FAIL("seals %#x", seals); bad = 1; }
        void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (m != MAP_FAILED) { FAIL("a writable mapping of the sealed memfd"); bad = 1; munmap(m, 4096); }
    } else if (!strcmp(mode, "memfdwseal")) {
        int seals = fcntl(memfd, F_GET_SEALS);
        if (seals != (F_SEAL_WRITE | F_SEAL_SEAL) || memcmp(memfd_map, "sealed", 6) ||
            pwrite(memfd, "x", 1, 0) != -1) { FAIL("memfd write-sealed: seals %#x", seals); bad = 1; }
    } else if (!strcmp(mode, "memfdnoexec") && !skipped) {
        struct stat st;
        int seals = fcntl(memfd, F_GET_SEALS);
        char b[8] = {0};
        if (fstat(memfd, &st) || (st.st_mode & 0111) || !(seals & F_SEAL_EXEC) ||
            pread(memfd, b, 6, 0) != 6 || strcmp(b, "noexec")) {
            FAIL("memfd noexec: mode %o seals %#x", st.st_mode, seals); bad = 1;
        }
    } else if (!strcmp(mode, "nestedepoll")) {
        struct epoll_event ev;
        int n = epoll_wait(ep_outer, &ev, 1, 0), m;
        struct epoll_event ev2;
        m = epoll_wait(ep_inner, &ev2, 1, 0);
        if (n != 1 || ev.data.u64 != 88 || m != 1 || ev2.data.u64 != 77) {
            FAIL("nested epoll: %d %llu, %d", n, (unsigned long long)ev.data.u64, m); bad = 1;
        }
    } else if (!strcmp(mode, "fallocghost") && !skipped) {
        struct stat st;
        char b[5] = {0};
        if (fstat(tmp_fd, &st) || st.st_blocks != falloc_blocks || st.st_size != 1 << 20 ||
            pread(tmp_fd, b, 4, 0) != 4 || strcmp(b, "head")) {
            FAIL("fallocate'd ghost: blocks %lld (was %lld) size %lld", (long long)st.st_blocks,
                 falloc_blocks, (long long)st.st_size); bad = 1;
        }
    } else if (!strcmp(mode, "manyvmas")) {
        for (int i = 0; i < 20000; i += 2) if (many[i][0] != (char)i) { FAIL("vma %d", i); bad = 1; break; }
    } else if (!strcmp(mode, "clocks")) {
        long before[4];
        for (int i = 0; i < 4; i++) before[i] = clk_ticks[i];
        nap(200);
        for (int i = 0; i < 4; i++) {
            if ((clk_made[i] & 1) && clk_ticks[i] <= before[i]) { FAIL("timer on clock %d stopped", clk_ids[i]); bad = 1; }
            struct itimerspec cur;
            if ((clk_made[i] & 1) && (timer_gettime(clk_timers[i], &cur) || cur.it_interval.tv_nsec != 40000000)) {
                FAIL("timer on clock %d: interval", clk_ids[i]); bad = 1;
            }
            uint64_t n = 0;
            if ((clk_made[i] & 2) && (read(clk_fds[i], &n, 8) != 8 || !n)) { FAIL("timerfd on clock %d stopped", clk_ids[i]); bad = 1; }
            char c[32];
            if ((clk_made[i] & 2) && (fdinfo_line(clk_fds[i], "clockid:", c, sizeof c) || atoi(c) != clk_ids[i])) {
                FAIL("timerfd clock %s, not %d", c, clk_ids[i]); bad = 1;
            }
        }
    } else if (!strcmp(mode, "rootbind")) {
        struct stat st;
        if (stat("/", &st) || st.st_ino != bind_st.st_ino || mount_id("/") != bind_mnt ||
            access("/x", F_OK)) { FAIL("root: mount %llu (was %llu)", mount_id("/"), bind_mnt); bad = 1; }
    } else if (!strcmp(mode, "inotifyghost")) {
        if (write(tmp_fd, "x", 1) != 1) FAIL("write");
        char ev[4096] __attribute__((aligned(8)));
        int found = 0;
        nap(20);
        ssize_t n = read(in_fd, ev, sizeof ev);
        for (char *p = ev; n > 0 && p < ev + n; p += sizeof(struct inotify_event) + ((struct inotify_event *)p)->len) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->wd == in_wd && (e->mask & IN_MODIFY)) found = 1;
        }
        if (!found) { FAIL("inotify: no IN_MODIFY on the deleted file (read %zd)", n); bad = 1; }
    } else if (!strcmp(mode, "lockghost")) {
        char l1[256] = "", l2[256] = "";
        if (fdinfo_line(tmp_fd, "lock:", l1, sizeof l1) || !strstr(l1, "FLOCK") || !strstr(l1, "WRITE") ||
            fdinfo_line(lock_fd2, "lock:", l2, sizeof l2) || !strstr(l2, "OFDLCK") || !strstr(l2, " 10 14")) {
            FAIL("locks of the deleted file: '%s' '%s'", l1, l2); bad = 1;
        }
    } else if (!strcmp(mode, "nlname")) {
        char link[4300] = {0}, fdp[64], b[4];
        snprintf(fdp, sizeof fdp, "/proc/self/fd/%d", tmp_fd);
        if (memfd_map[0] != 'A' || memfd_map[8191] != 'A' || pread(tmp_fd, b, 4, 100) != 4 ||
            b[0] != 'A' || readlink(fdp, link, sizeof link - 1) < 0 || strcmp(link, nl_path)) {
            FAIL("nlname: %s", link); bad = 1;
        }
    } else if (!strcmp(mode, "uname26")) {
        struct utsname u;
        uname(&u);
        if (strncmp(u.release, "2.6.", 4)) { FAIL("uname26: release %s", u.release); bad = 1; }
    } else if (!strcmp(mode, "lowmap") && !skipped) {
        for (int i = 0; i < 8192; i++) if (memfd_map[i] != 0x5a) { FAIL("lowmap data"); bad = 1; break; }
    } else if (!strcmp(mode, "appendghost")) {
        struct stat st;
        fstat(tmp_fd, &st);
        lseek(tmp_fd, 0, SEEK_SET);  /* (O_APPEND writes at the end anyway) */
        char c = 0;
        if (write(tmp_fd, "X", 1) != 1 || pread(lock_fd2, &c, 1, st.st_size) != 1 || c != 'X') {
            FAIL("appendghost: the write did not land at the end (%lld)", (long long)st.st_size); bad = 1;
        }
    } else if (!strcmp(mode, "cwdbind")) {
        struct stat st;
        char cwd[4200], want[4200];
        snprintf(want, sizeof want, "%s/b", dir);
        if (stat(".", &st) || st.st_ino != bind_st.st_ino || st.st_dev != bind_st.st_dev ||
            mount_id(".") != bind_mnt || !getcwd(cwd, sizeof cwd) || strcmp(cwd, want)) {
            FAIL("cwd: mount %llu (was %llu) %s", mount_id("."), bind_mnt, cwd); bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    mode = argv[2];
    dir = argc > 3 ? argv[3] : "/tmp";
    set_one(0);
    setup();
    pthread_t th, ex;
    pthread_create(&th, NULL, thread_main, NULL);
    while (!thread_ready) nap(5);
    int joined = 0;
    if (!strcmp(mode, "tidaddr")) pthread_create(&ex, NULL, exiter, (void *)dir);
    report("ready %d", getpid());
    if (!strcmp(mode, "leaderexit")) pthread_exit(NULL);  /* (the process goes on) */
    for (long round = 0;; round++) {
        int bad = check_one(0) | check(round);
        if (!strcmp(mode, "tidaddr") && !joined) {
            char go[4200];
            snprintf(go, sizeof go, "%s/go", dir);
            if (!access(go, F_OK)) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 5;
                void *ret;
                int e = pthread_timedjoin_np(ex, &ret, &ts);
                if (e || ret != (void *)42) { FAIL("join: %d", e); bad = 1; }
                else report("joined");
                joined = 1;
            }
        }
        if (!bad) report("ok %ld", round);
        nap(100);
    }
}
