/* Zombies in modes /proc shows (tree.finish_zombie).  argv[1] = report file, argv[2] =
 * the directory whose file "go" makes the parent reap them.  Children, each left a
 * zombie: 1 exits 3 in seccomp's strict mode; 2 makes a call strict mode forbids (mode 3,
 * SIGKILL); 3 exits 5 under SCHED_DEADLINE; 4 is in strict mode when SIGTERM ends it; 5
 * faults in strict mode (SIGSEGV); 6 is killed by its seccomp filter (mode 3, SIGSYS); 7
 * is killed by SIGKILL; 8 faults with a core limit and dumps core in that directory
 * (SIGSEGV, WCOREDUMP).  Reports "ready P1 ... P8", and on "go" each child's wait status
 * ("status N HEX"), then "done". */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct attr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t runtime, deadline, period; };
#define N 8

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    pid_t kids[N];
    int p[2];
    if (pipe(p)) _exit(2);
    for (int i = 0; i < N; i++) {
        pid_t c = fork();
        if (c == 0) {
            if (i == 2) {
                struct attr a = {sizeof a, 6, 0, 0, 0, 1000000, 10000000, 20000000};
                if (syscall(SYS_sched_setattr, 0, &a, 0)) _exit(1);
                _exit(5);
            }
            if (i == 5) {
                struct sock_filter f[] = {
                    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
                    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_THREAD),
                    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
                struct sock_fprog prog = {4, f};
                prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) _exit(1);
                syscall(SYS_getppid);
                _exit(98);
            }
            if (i == 6) { for (;;) pause(); }
            if (i == 7) {
                struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
                if (chdir(argv[2]) || setrlimit(RLIMIT_CORE, &rl)) _exit(1);
                *(volatile int *)8 = 1;
            }
            char b;
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
            if (i == 0) syscall(SYS_exit, 3);
            if (i == 3) { syscall(SYS_read, p[0], &b, 1); syscall(SYS_exit, 97); }
            if (i == 4) *(volatile int *)8 = 1;
            syscall(SYS_getpid);  /* forbidden: SIGKILL */
            syscall(SYS_exit, 99);
        }
        kids[i] = c;
    }
    nap(300);
    kill(kids[3], SIGTERM);
    kill(kids[6], SIGKILL);
    nap(200);
    report("ready %d %d %d %d %d %d %d %d", kids[0], kids[1], kids[2], kids[3], kids[4], kids[5], kids[6],
           kids[7]);
    char go[4096];
    snprintf(go, sizeof go, "%s/go", argv[2]);
    struct stat st;
    while (stat(go, &st) != 0) nap(10);
    for (int i = 0; i < N; i++) {
        int s = 0;
        if (waitpid(kids[i], &s, 0) != kids[i]) FAIL("waitpid %d: %s", kids[i], strerror(errno));
        report("status %d %x", i + 1, s);
    }
    report("done");
    for (;;) pause();
}
