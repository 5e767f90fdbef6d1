/* A target whose parent's death is signalled to it (PR_SET_PDEATHSIG, SIGUSR1): each
 * delivery is counted; "tick N deaths K" per line; FAIL when the setting is lost. */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>

static volatile sig_atomic_t deaths;

static void on_death(int sig) { (void)sig; deaths++; }

int main(int argc, char **argv) {
    open_report(argc, argv);
    struct sigaction sa = {0};
    sa.sa_handler = on_death;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGUSR1)) FAIL("prctl");
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        int pd = 0;
        prctl(PR_GET_PDEATHSIG, &pd);
        if (pd != SIGUSR1) FAIL("pdeathsig %d", pd);
        report("tick %ld deaths %d ppid %d", i, (int)deaths, (int)getppid());
        nap(20);
    }
}
