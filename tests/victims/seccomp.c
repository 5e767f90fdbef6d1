/* seccomp survives (issue 9), and the checkpoint never gets the target killed.
 * argv[2] = "filters": the leader installs F1 (getppid -> EPERM 77, rt_sigaction ->
 * KILL_PROCESS: cryo injects rt_sigaction), a thread inherits it, the leader adds F2
 * with TSYNC (sched_yield -> errno 79) to both, then the thread adds F3 of its own
 * (getuid -> errno 78).  Once the file ARGV[1].tsync exists, the thread adds an
 * allow-all filter with TSYNC, which the kernel accepts only if the leader's chain is
 * the same filters as the start of the thread's, not copies; the leader then runs the
 * thread's whole chain.  argv[2] = "strict": a thread in strict mode echoes bytes
 * through two pipes, checked by the leader. */
#include "common.h"
#include <dirent.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define DENY(nr, ret) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1), \
                      BPF_STMT(BPF_RET | BPF_K, ret)
#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static void install(struct sock_filter *f, unsigned short n, unsigned flags) {
    struct sock_fprog prog = {n, f};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog)) FAIL("seccomp %d", errno);
}

static int status_field(const char *path, const char *field) {
    char buf[4096] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) < 0) return -1;
    close(fd);
    char *p = strstr(buf, field);
    return p ? atoi(p + strlen(field)) : -1;
}

static int denied(long nr, int want) {
    errno = 0;
    return syscall(nr) == -1 && errno == want;
}

static volatile int synced;
static char tsync_path[4096];

static int check(const char *who, int own) {
    int bad = 0;
    own |= synced;
    if (!denied(SYS_getppid, 77)) { FAIL("%s getppid allowed", who); bad = 1; }
    if (!denied(SYS_sched_yield, 79)) { FAIL("%s sched_yield allowed", who); bad = 1; }
    if (own != denied(SYS_getuid, 78)) { FAIL("%s getuid filter %d", who, !own); bad = 1; }
    int n = status_field("/proc/thread-self/status", "Seccomp_filters:");
    if (n != (synced ? 4 : 2 + own)) { FAIL("%s %d filters", who, n); bad = 1; }
    if (status_field("/proc/thread-self/status", "Seccomp:") != 2) { FAIL("%s mode", who); bad = 1; }
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) { FAIL("%s no_new_privs", who); bad = 1; }
    return bad;
}

static pthread_barrier_t bar;
static volatile int thread_bad = 1;
static void *filtered(void *arg) {
    (void)arg;
    pthread_barrier_wait(&bar);  /* F2 synced into us */
    struct sock_filter f3[] = {LOAD_NR, DENY(SYS_getuid, SECCOMP_RET_ERRNO | 78), ALLOW};
    install(f3, 4, SECCOMP_FILTER_FLAG_LOG);
    pthread_barrier_wait(&bar);
    for (;;) {
        if (!synced && access(tsync_path, F_OK) == 0) {
            struct sock_filter all[] = {ALLOW};
            struct sock_fprog prog = {1, all};
            long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
            if (r) FAIL("tsync: %ld (errno %d)", r, errno); else { synced = 1; report("tsync ok"); }
        }
        thread_bad = check("thread", 1);
        nap(30);
    }
    return NULL;
}

static void *noop(void *arg) { return arg; }

static int p1[2], p2[2];
static void *strict(void *arg) {
    (void)arg;
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
    for (;;) {  /* only read and write from here on */
        char c;
        if (read(p1[0], &c, 1) != 1) continue;
        c++;
        if (write(p2[1], &c, 1) != 1) continue;
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int use_strict = argc > 2 && !strcmp(argv[2], "strict");
    snprintf(tsync_path, sizeof tsync_path, "%s.tsync", argv[1]);
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t t;
    if (use_strict) {
        if (pipe(p1) || pipe(p2)) FAIL("pipe");
        pthread_create(&t, NULL, strict, NULL);
        nap(50);
        long strict_tid = 0;  /* the thread that is not us (it may not call gettid) */
        DIR *d = opendir("/proc/self/task");
        for (struct dirent *e; d && (e = readdir(d));)
            if (atol(e->d_name) > 0 && atol(e->d_name) != getpid()) strict_tid = atol(e->d_name);
        if (d) closedir(d);
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            char c = (char)round, d = 0;
            if (write(p1[1], &c, 1) != 1 || read(p2[0], &d, 1) != 1 || d != (char)(c + 1)) {
                FAIL("strict thread echoed %d for %d", d, c);
            } else {
                char path[64];
                snprintf(path, sizeof path, "/proc/self/task/%ld/status", strict_tid);
                int m = status_field(path, "Seccomp:");
                if (m != 1) FAIL("strict thread mode %d", m); else report("ok %ld", round);
            }
            nap(50);
        }
    }
    /* glibc sets its SIGRT_1 action at the first pthread_create: before F1 forbids it */
    pthread_create(&t, NULL, noop, NULL);
    pthread_join(t, NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) FAIL("no_new_privs");
    struct sock_filter f1[] = {LOAD_NR, DENY(SYS_getppid, SECCOMP_RET_ERRNO | 77),
                               DENY(SYS_rt_sigaction, SECCOMP_RET_KILL_PROCESS), ALLOW};
    install(f1, 6, 0);
    pthread_create(&t, NULL, filtered, NULL);
    struct sock_filter f2[] = {LOAD_NR, DENY(SYS_sched_yield, SECCOMP_RET_ERRNO | 79), ALLOW};
    install(f2, 4, SECCOMP_FILTER_FLAG_TSYNC);
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = check("leader", 0) | thread_bad;
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
