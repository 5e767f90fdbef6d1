/* Rounds on demand: a victim that reads its own /proc files checks itself only when the
 * test sends SIGUSR1 (one round per signal), so that it never holds such a file open at
 * the moment it is checkpointed.  Between rounds it waits in sigsuspend. */
#include <signal.h>

static volatile sig_atomic_t poked;
static sigset_t poke_mask;

static void on_poke(int sig) { (void)sig; poked = 1; }

__attribute__((unused)) static void poke_setup(void) {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &poke_mask);
    sigdelset(&poke_mask, SIGUSR1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_poke;
    sigaction(SIGUSR1, &sa, NULL);
}

__attribute__((unused)) static void next_round(void) {
    while (!poked) sigsuspend(&poke_mask);
    poked = 0;
}
