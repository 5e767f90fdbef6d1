/* A parent with an I/O context of its own (ioprio_set) and a child made with
 * clone(CLONE_IO | SIGCHLD) that shares it ("shared"), or by fork ("own": an I/O context
 * of its own, its priority copied).  Both write "ok N" lines (the child to OUT.child).
 * usage: cloneio_s10 OUT shared|own */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_PRIO(class, data) (((class) << 13) | (data))

static char path[4096];
static char stack[65536] __attribute__((aligned(16)));

static int run(const char *where)
{
    FILE *out = fopen(where, "w");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    fprintf(out, "ready\n");
    for (int n = 1;; n++) {
        fprintf(out, "ok %d\n", n);
        usleep(20000);
    }
}

static int child(void *arg)
{
    (void)arg;
    return run(path);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_PRIO(2, 5)))
        return 3;
    snprintf(path, sizeof path, "%s.child", argv[1]);
    int flags = SIGCHLD | (strcmp(argv[2], "shared") ? 0 : CLONE_IO);
    if (clone(child, stack + sizeof stack, flags, NULL) < 0)
        return 4;
    return run(argv[1]);
}
