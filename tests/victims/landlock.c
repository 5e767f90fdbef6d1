/* A process confined by Landlock (argv[2] = "main": its main thread; "thread": only a
 * second thread, after it was made; "nnp": no_new_privs only, no domain): each round
 * the confined thread checks that it may not create a directory in argv[3] (the
 * domain forbids LANDLOCK_ACCESS_FS_MAKE_DIR), and an unconfined one that it may. */
#include "common.h"
#include <linux/landlock.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static const char *dir;
static volatile long rounds[2];

static void confine(void) {
    struct landlock_ruleset_attr ra = {.handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_DIR};
    int fd = syscall(SYS_landlock_create_ruleset, &ra, sizeof ra, 0);
    if (fd < 0) { report("FAIL landlock_create_ruleset %d", errno); _exit(4); }
    if (syscall(SYS_landlock_restrict_self, fd, 0)) { report("FAIL restrict %d", errno); _exit(4); }
    close(fd);
}

static int may_mkdir(void) {
    char p[4096];
    snprintf(p, sizeof p, "%s/d%ld", dir, syscall(SYS_gettid));
    if (mkdir(p, 0700)) return 0;
    rmdir(p);
    return 1;
}

static void *second(void *arg) {
    int confined = (int)(long)arg;
    if (confined) confine();
    for (;;) {
        if (may_mkdir() == confined) report("FAIL the second thread %s", confined ? "may mkdir" : "may not mkdir");
        rounds[1]++;
        nap(50);
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) return 2;
    dir = argv[3];
    int main_confined = !strcmp(argv[2], "main"), thread_confined = !strcmp(argv[2], "thread");
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (main_confined) confine();
    pthread_t th;
    pthread_create(&th, NULL, second, (void *)(long)(main_confined || thread_confined));
    report("ready %d", getpid());
    for (long r = 0;; r++) {
        nap(50);
        if (may_mkdir() == main_confined) { report("FAIL the main thread %s", main_confined ? "may mkdir" : "may not mkdir"); continue; }
        report("ok %ld", r);
    }
}
