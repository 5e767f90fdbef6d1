/* Scheduling survives, per thread (issue 9): policy and priority (BATCH, IDLE, FIFO,
 * RR with SCHED_FLAG_RESET_ON_FORK), the nice value (also under a real-time policy,
 * where the kernel keeps it for later), CPU affinity, I/O priority; and the process's
 * oom_score_adj and the nice value of its session's autogroup. */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <linux/sched.h>

struct sched_attr {  /* linux/sched/types.h, which clashes with glibc's sched.h */
    unsigned int size, sched_policy;
    unsigned long long sched_flags;
    int sched_nice;
    unsigned int sched_priority;
    unsigned long long sched_runtime, sched_deadline, sched_period;
    unsigned int sched_util_min, sched_util_max;
};

#define IOPRIO(cls, data) ((cls) << 13 | (data))
struct want { int policy, prio, nice, cpu, ioprio; unsigned long long flags; };
static const struct want WANT[4] = {
    {SCHED_BATCH, 0, 7, 0, IOPRIO(2, 3), 0},                   /* the leader */
    {SCHED_IDLE, 0, 12, 1, IOPRIO(3, 0), 0},
    {SCHED_FIFO, 10, 3, 0, IOPRIO(1, 4), 0},
    {SCHED_RR, 5, -4, 1, IOPRIO(2, 6), SCHED_FLAG_RESET_ON_FORK},
};
static int ncpu;

static void setup(const struct want *w) {
    struct sched_attr a = {.size = sizeof a, .sched_policy = SCHED_OTHER, .sched_nice = w->nice};
    if (syscall(SYS_sched_setattr, 0, &a, 0)) FAIL("setattr nice %d", errno);
    a.sched_policy = w->policy; a.sched_priority = w->prio; a.sched_flags = w->flags;
    if (syscall(SYS_sched_setattr, 0, &a, 0)) FAIL("setattr %d", errno);
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(w->cpu % ncpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) FAIL("affinity %d", errno);
    if (syscall(SYS_ioprio_set, 1, 0, w->ioprio)) FAIL("ioprio %d", errno);
}

static int check(int i) {
    const struct want *w = &WANT[i];
    struct sched_attr a = {0};
    int bad = 0;
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0)) { FAIL("getattr %d", errno); return 1; }
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, syscall(SYS_gettid));  /* sched_getattr shows it for fair policies only */
    if ((int)a.sched_policy != w->policy || (int)a.sched_priority != w->prio ||
        nice != w->nice || a.sched_flags != w->flags) {
        FAIL("thread %d: policy %d prio %d nice %d flags %llx", i, a.sched_policy,
             a.sched_priority, nice, (unsigned long long)a.sched_flags);
        bad = 1;
    }
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    if (CPU_COUNT(&set) != 1 || !CPU_ISSET(w->cpu % ncpu, &set)) { FAIL("thread %d: affinity", i); bad = 1; }
    int io = syscall(SYS_ioprio_get, 1, 0);
    if (io != w->ioprio) { FAIL("thread %d: ioprio %#x", i, io); bad = 1; }
    return bad;
}

static volatile int bad_threads[4];
static void *worker(void *arg) {
    int i = (int)(long)arg;
    setup(&WANT[i]);
    for (;;) { bad_threads[i] = check(i); nap(30); }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd < 0 || write(fd, "345", 3) != 3) FAIL("oom_score_adj %d", errno);
    close(fd);
    int autogroup = access("/proc/self/autogroup", F_OK) == 0;
    fd = open("/proc/self/autogroup", O_WRONLY);
    if (autogroup && (fd < 0 || write(fd, "6", 1) != 1)) FAIL("autogroup %d", errno);
    close(fd);
    for (long i = 1; i < 4; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, (void *)i);
    }
    setup(&WANT[0]);
    nap(100);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = check(0);
        for (int i = 1; i < 4; i++) if (bad_threads[i]) bad = 1;
        char buf[16] = {0};
        fd = open("/proc/self/oom_score_adj", O_RDONLY);
        if (read(fd, buf, sizeof buf - 1) < 0 || atoi(buf) != 345) { FAIL("oom_score_adj %s", buf); bad = 1; }
        close(fd);
        char ag[64] = {0};
        fd = open("/proc/self/autogroup", O_RDONLY);
        if (autogroup && (read(fd, ag, sizeof ag - 1) < 0 || !strstr(ag, "nice 6"))) { FAIL("autogroup %s", ag); bad = 1; }
        close(fd);
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
