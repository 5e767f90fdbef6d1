/* AIO contexts (io_setup) across a checkpoint (engine/aio.py).
 * argv[1] = report file, argv[2] = mode, argv[3] = a directory (its file "go" starts
 * the checks).
 *   idle: three contexts made, the middle one destroyed (a hole at index 1); A holds
 *         three completed writes not reaped (of five), C none (three reaped).  On "go":
 *         the same ids, each ring's header as before, A's three events as they were
 *         (data, obj, res), nothing more; new writes through A and C complete and are
 *         reaped; C is destroyed by its id.  "done" then.
 *   poll: a POLL request on an empty pipe stays in flight.  On "go": a byte written to
 *         the pipe completes it (POLLIN): the process goes on as before.
 *   big:  a context of 4096 requests (a ring of 8,000 events and more) that completed and
 *         reaped 8,192 writes, with 300 more not reaped (they wrap past the ring's end).
 *         On "go": the same head, tail and size, the 300 events in order, nothing more.
 * Reports "ready", then "ok" or "FAIL ..." lines and "done". */
#include "common.h"
#include <linux/aio_abi.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>

struct ring { unsigned id, nr, head, tail, magic, compat, incompat, hlen; struct io_event ev[]; };

static aio_context_t A, B, C;
static struct iocb cbs[8];
static struct ring before_a, before_c;
static char data[] = "abc";

static long setup(unsigned n, aio_context_t *c) { return syscall(SYS_io_setup, n, c); }
static long submit(aio_context_t c, long n, struct iocb **p) { return syscall(SYS_io_submit, c, n, p); }
static long reap(aio_context_t c, long lo, long n, struct io_event *e, struct timespec *t) {
    return syscall(SYS_io_getevents, c, lo, n, e, t);
}

static int write_to(aio_context_t c, int fd, int first, int n) {
    struct iocb *p[8];
    for (int i = 0; i < n; i++) {
        memset(&cbs[i], 0, sizeof cbs[i]);
        cbs[i].aio_lio_opcode = IOCB_CMD_PWRITE;
        cbs[i].aio_fildes = fd;
        cbs[i].aio_buf = (unsigned long)data;
        cbs[i].aio_nbytes = 3;
        cbs[i].aio_offset = 3 * (first + i);
        cbs[i].aio_data = 100 + first + i;
        p[i] = &cbs[i];
    }
    return submit(c, n, p) == n;
}

static void wait_go(const char *dir) {
    char go[4096];
    snprintf(go, sizeof go, "%s/go", dir);
    struct stat st;
    while (stat(go, &st) != 0) nap(10);
}

static int same_header(const char *name, struct ring *now, struct ring *then) {
    if (memcmp(now, then, sizeof *then)) {
        FAIL("%s's ring header: id %u nr %u head %u tail %u, was id %u nr %u head %u tail %u",
             name, now->id, now->nr, now->head, now->tail, then->id, then->nr, then->head, then->tail);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    const char *mode = argv[2];
    if (!strcmp(mode, "poll")) {
        int p[2];
        if (pipe(p) || setup(8, &A)) { FAIL("setup: %s", strerror(errno)); return 1; }
        struct iocb pc = {0}, *pp[1] = {&pc};
        pc.aio_lio_opcode = IOCB_CMD_POLL;
        pc.aio_fildes = p[0];
        pc.aio_buf = POLLIN;
        pc.aio_data = 7;
        if (submit(A, 1, pp) != 1) { FAIL("poll submit: %s", strerror(errno)); return 1; }
        report("ready");
        wait_go(argv[3]);
        if (write(p[1], "x", 1) != 1) FAIL("pipe write");
        struct io_event e;
        struct timespec ts = {5, 0};
        long n = reap(A, 1, 1, &e, &ts);
        if (n != 1 || e.data != 7 || !(e.res & POLLIN)) FAIL("poll: %ld events, data %llu res %lld", n,
                                                             (unsigned long long)e.data, (long long)e.res);
        else report("ok");
        report("done");
        for (;;) pause();
    }
    if (!strcmp(mode, "big")) {
        static struct iocb big[512];
        static struct io_event evs[512];
        struct iocb *pb[512];
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null < 0 || setup(4096, &A)) { FAIL("setup: %s", strerror(errno)); return 1; }
        for (int i = 0; i < 512; i++) {
            big[i].aio_lio_opcode = IOCB_CMD_PWRITE;
            big[i].aio_fildes = null;
            big[i].aio_data = i;
            pb[i] = &big[i];
        }
        for (int r = 0; r < 16; r++)
            if (submit(A, 512, pb) != 512 || reap(A, 512, 512, evs, NULL) != 512) { FAIL("round %d", r); return 1; }
        if (submit(A, 300, pb) != 300) { FAIL("last: %s", strerror(errno)); return 1; }
        struct ring *r = (struct ring *)A, then = *r;
        report("ready nr %u head %u tail %u", r->nr, r->head, r->tail);
        wait_go(argv[3]);
        struct ring now = *r;
        long n = reap(A, 300, 512, evs, NULL);
        int bad = 0;
        for (long i = 0; i < n; i++) bad += evs[i].data != (unsigned long long)i || evs[i].obj != (unsigned long)&big[i];
        if (!same_header("A", &now, &then) || n != 300 || bad) FAIL("big: %ld events, %d wrong", n, bad);
        else report("ok");
        report("done");
        for (;;) pause();
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/aio.data", argv[3]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || setup(8, &A) || setup(16, &B) || setup(4, &C) || syscall(SYS_io_destroy, B)) {
        FAIL("setup: %s", strerror(errno));
        return 1;
    }
    struct io_event ev[8];
    if (!write_to(A, fd, 0, 5) || reap(A, 2, 2, ev, NULL) != 2 || ev[0].data != 100 || ev[1].data != 101)
        FAIL("A: %s", strerror(errno));
    if (!write_to(C, fd, 5, 3) || reap(C, 3, 3, ev, NULL) != 3) FAIL("C: %s", strerror(errno));
    struct ring *ra = (struct ring *)A, *rc = (struct ring *)C;
    before_a = *ra;
    before_c = *rc;
    aio_context_t a0 = A, c0 = C;
    report("ready %lx %lx head %u tail %u nr %u", (unsigned long)A, (unsigned long)C, ra->head, ra->tail, ra->nr);
    wait_go(argv[3]);
    int good = A == a0 && C == c0;
    good &= same_header("A", ra, &before_a) & same_header("C", rc, &before_c);
    struct timespec zero = {0, 0};
    long n = reap(A, 3, 8, ev, &zero);
    if (n != 3) { FAIL("A gave %ld events, not 3 (%s)", n, n < 0 ? strerror(errno) : ""); good = 0; }
    for (int i = 0; i < 3 && i < n; i++)
        if (ev[i].data != 102 + (unsigned)i || ev[i].obj != (unsigned long)&cbs[2 + i] || ev[i].res != 3 || ev[i].res2) {
            FAIL("A's event %d: data %llu obj %llx res %lld", i, (unsigned long long)ev[i].data,
                 (unsigned long long)ev[i].obj, (long long)ev[i].res);
            good = 0;
        }
    if (reap(C, 0, 8, ev, &zero) != 0) { FAIL("C had events"); good = 0; }
    if (!write_to(A, fd, 8, 4) || reap(A, 4, 4, ev, NULL) != 4 || ev[3].data != 111) { FAIL("A after: %s", strerror(errno)); good = 0; }
    if (!write_to(C, fd, 12, 2) || reap(C, 2, 2, ev, NULL) != 2) { FAIL("C after: %s", strerror(errno)); good = 0; }
    if (syscall(SYS_io_destroy, C)) { FAIL("io_destroy C: %s", strerror(errno)); good = 0; }
    if (syscall(SYS_io_destroy, B) == 0 || errno != EINVAL) { FAIL("B is back"); good = 0; }
    char buf[64];
    if (pread(fd, buf, 42, 0) != 42 || memcmp(buf + 39, "abc", 3)) { FAIL("the file"); good = 0; }
    if (good) report("ok");
    report("done");
    for (;;) pause();
}
