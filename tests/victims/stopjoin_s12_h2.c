/* A process whose main thread waits in pthread_join (a futex) while its other thread
 * waits in sigsuspend (session 12 h2): the other thread takes SIGUSR1 (the main thread
 * blocks every signal) and reports "ok N". */
#include "common.h"
#include <pthread.h>
#include <signal.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static void *worker(void *arg) {
    (void)arg;
    sigset_t none;
    sigemptyset(&none);
    for (long n = 0;;) {
        sigsuspend(&none);
        if (asked) { asked = 0; report("ok %ld", n++); }
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);  /* (the worker starts with it: it sets its own) */
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL)) _exit(4);
    report("ready %d", getpid());
    pthread_join(t, NULL);
    return 0;
}
