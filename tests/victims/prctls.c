/* Per-thread state the kernel keeps for a task, each thread its own, and some per
 * process: the timer slack, the machine-check kill policy, PR_SET_TSC, the NUMA memory
 * policy (set_mempolicy), cpuid faulting (ARCH_SET_CPUID, where the CPU has it), and MDWE (no mapping may become writable and executable) and
 * the coredump filter.  Each round both threads check theirs and the main thread tries
 * to make a writable mapping executable (refused under MDWE).  (Mappings with
 * policies of their own: numa.c.) */
#include "common.h"
#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <asm/prctl.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static volatile int bad2, ready2, cpuid_faults;

static int mine(long slack, int mce, int tsc, int policy) {
    int t = 0, mode = -1;
    unsigned long nodes = 0;
    prctl(PR_GET_TSC, &t, 0, 0, 0);
    syscall(SYS_get_mempolicy, &mode, &nodes, 64, 0, 0);
    if (syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0) != (policy == 2 && cpuid_faults ? 0 : 1) &&
        cpuid_faults >= 0) return 0;
    return prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == slack &&
           prctl(PR_MCE_KILL_GET, 0, 0, 0, 0) == mce && t == tsc && mode == policy &&
           (policy == 0 || nodes == 1);
}

static void *second(void *arg) {
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 777777, 0, 0, 0);
    prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE, 0, 0);
    unsigned long node0 = 1;
    syscall(SYS_set_mempolicy, 1 /* MPOL_PREFERRED */, &node0, 64);
    ready2 = 1;
    for (;;) {  /* its own: not the main thread's */
        if (!mine(777777, PR_MCE_KILL_LATE, PR_TSC_ENABLE, 1)) bad2 = 1;
        nap(20);
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    pthread_t th;
    pthread_create(&th, NULL, second, NULL);
    while (!ready2) nap(1);
    prctl(PR_SET_TIMERSLACK, 123457, 0, 0, 0);
    prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0);
    prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0);
    unsigned long node0 = 1;
    if (syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &node0, 64)) FAIL("set_mempolicy %d", errno);
    cpuid_faults = syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0 ? 1 : -1;  /* the main thread only */
    int cf = open("/proc/self/coredump_filter", O_WRONLY);
    if (cf < 0 || write(cf, "0x5b", 4) != 4) FAIL("coredump_filter %d", errno);
    close(cf);
    if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)) FAIL("PR_SET_MDWE %d", errno);
    report("ready %d", getpid());
    for (long r = 0;; r++) {
        nap(50);
        int ok = 1;
        if (!mine(123457, PR_MCE_KILL_EARLY, PR_TSC_SIGSEGV, 2)) { FAIL("the main thread's prctl state"); ok = 0; }
        char buf[32] = {0};
        int fd = open("/proc/self/coredump_filter", O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0 || strtol(buf, NULL, 16) != 0x5b) { FAIL("coredump_filter %s", buf); ok = 0; }
        if (fd >= 0) close(fd);
        if (bad2) { FAIL("the second thread's prctl state"); ok = 0; bad2 = 0; }
        if (prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN) { FAIL("MDWE lost"); ok = 0; }
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            if (!mprotect(p, 4096, PROT_READ | PROT_EXEC)) { FAIL("a writable mapping became executable"); ok = 0; }
            munmap(p, 4096);
        }
        if (ok) report("ok %ld", r);
    }
}
