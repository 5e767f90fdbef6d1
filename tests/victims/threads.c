/* Eight threads, each with its own TLS counter and its own way of waiting (futex through
 * a condition variable, nanosleep, poll on a pipe, a busy loop with SSE registers), all
 * checked every round by the main thread; thread names and tids are checked too. */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define N 8
static __thread long tls_counter;
static volatile long progress[N];
static pid_t tids[N];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long ticket;
static int pfd[N][2];  /* one pipe per polling thread: no reader starves another */

static void *worker(void *arg) {
    long me = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", me);
    prctl(PR_SET_NAME, name);
    tids[me] = (pid_t)syscall(SYS_gettid);
    for (;;) {
        switch (me % 4) {
        case 0: {  /* futex: wait on the condition variable for the next ticket */
            pthread_mutex_lock(&mu);
            long t = ticket;
            while (ticket == t) pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
            break;
        }
        case 1: nap(15); break;
        case 2: {  /* poll on a pipe the main thread writes to */
            struct pollfd p = {pfd[me][0], POLLIN, 0};
            if (poll(&p, 1, 1000) == 1) { char c; if (read(pfd[me][0], &c, 1) != 1) report("FAIL read"); }
            break;
        }
        default: {  /* compute with xmm registers */
            volatile double x = 1.0;
            for (int i = 0; i < 100000; i++) x = x * 1.0000001 + 0.5;
            if (x < 1.0) report("FAIL math");
            nap(5);
        }
        }
        tls_counter++;
        progress[me] = tls_counter;
        char now[16];
        prctl(PR_GET_NAME, now);
        if (strcmp(now, name)) report("FAIL thread name %s", now);
        if ((pid_t)syscall(SYS_gettid) != tids[me]) report("FAIL tid changed");
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    for (int i = 0; i < N; i++) if (pipe(pfd[i])) _exit(4);
    pthread_t th[N];
    for (long i = 0; i < N; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    nap(50);
    report("ready %d", getpid());
    long last[N] = {0};
    for (long round = 0;; round++) {
        pthread_mutex_lock(&mu);
        ticket++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        for (int i = 2; i < N; i += 4)
            if (write(pfd[i][1], "x", 1) != 1) report("FAIL write");
        nap(40);
        if (round % 10 == 9) {  /* every thread must have moved within ten rounds */
            int bad = 0;
            for (int i = 0; i < N; i++) {
                if (progress[i] <= last[i]) { report("FAIL thread %d stuck at %ld", i, progress[i]); bad = 1; }
                last[i] = progress[i];
            }
            if (!bad) report("ok %ld", round / 10);
        }
    }
}
