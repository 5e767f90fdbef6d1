/* Signals from another process keep their sender (issue 9): an SA_SIGINFO handler
 * records the si_code, si_pid, si_uid (and si_value) of every SIGUSR1 (kill), SIGUSR2
 * (tgkill) and SIGRTMIN (sigqueue) that a sender process sends it without pause, and
 * each round checks them: all must name the sender, its uid and the right si_code.
 * Many arrive while cryo holds the process (its injected calls), where cryo takes them
 * and gives them back when it lets go.
 *
 *   siginfo OUT PIDFILE [catch]
 *                         the target: waits for the sender's pid in PIDFILE, drops to
 *                         uid 1000, reports "ready", then "ok N" each round; "catch":
 *                         it also catches the signals ignored by default (SIGCHLD,
 *                         SIGURG, SIGWINCH), so that it ignores none
 *   siginfo send PID      the sender: drops to uid 1000 and signals PID forever
 *                         (errors ignored: the pid may be gone or restarting) */
#include "common.h"
#include <signal.h>
#include <sys/syscall.h>

#define UID 1000
#define MAX 65536
#define VALUE 4242

struct got { int signo, code, pid, uid, value; };
static struct got rec[MAX];
static volatile sig_atomic_t head, lost;

static void on_sig(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    int i = head;
    if (i >= MAX) { lost = 1; return; }
    rec[i] = (struct got){sig, si->si_code, si->si_pid, (int)si->si_uid,
                          si->si_code == SI_QUEUE ? si->si_value.sival_int : 0};
    head = i + 1;
}

static void nothing(int sig) { (void)sig; }

static void drop(void) {
    if (setresgid(UID, UID, UID) || setresuid(UID, UID, UID)) _exit(4);
}

static __attribute__((noreturn)) void sender(pid_t t) {
    drop();
    union sigval v = {.sival_int = VALUE};
    for (;;) {
        kill(t, SIGUSR1);
        syscall(SYS_tgkill, t, t, SIGUSR2);
        sigqueue(t, SIGRTMIN, v);
        usleep(100);
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "send")) sender(atoi(argv[2]));
    open_report(argc, argv);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sig;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1); sigaddset(&set, SIGUSR2); sigaddset(&set, SIGRTMIN);
    sa.sa_mask = set;
    sigaction(SIGUSR1, &sa, NULL); sigaction(SIGUSR2, &sa, NULL); sigaction(SIGRTMIN, &sa, NULL);
    if (argc > 3 && !strcmp(argv[3], "catch")) {
        signal(SIGCHLD, nothing); signal(SIGURG, nothing); signal(SIGWINCH, nothing);
    }
    int from = 0;
    while (!from) {
        char buf[32] = {0};
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0) {
            if (read(fd, buf, sizeof buf - 1) > 0) from = atoi(buf);
            close(fd);
        }
        if (!from) nap(10);
    }
    drop();
    report("ready %d", getpid());
    long seen[3] = {0, 0, 0};
    for (long round = 0;; round++) {
        nap(100);
        sigset_t old;
        sigprocmask(SIG_BLOCK, &set, &old);
        int n = head, bad = 0;
        for (int i = 0; i < n && !bad; i++) {
            struct got *g = &rec[i];
            int want = g->signo == SIGUSR1 ? SI_USER : g->signo == SIGUSR2 ? SI_TKILL : SI_QUEUE;
            if (g->pid != from || g->uid != UID || g->code != want ||
                    (want == SI_QUEUE && g->value != VALUE)) {
                FAIL("signal %d: si_code %d si_pid %d si_uid %d si_value %d; want %d %d %d",
                     g->signo, g->code, g->pid, g->uid, g->value, want, from, UID);
                bad = 1;
            }
            seen[g->signo == SIGUSR1 ? 0 : g->signo == SIGUSR2 ? 1 : 2]++;
        }
        head = 0;
        if (lost) { FAIL("more than %d signals in a round", MAX); bad = 1; lost = 0; }
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (!bad) report("ok %ld %ld %ld %ld", round, seen[0], seen[1], seen[2]);
    }
}
