/* io_uring as runtimes use it (probes of session 10, h7: node with UV_USE_IO_URING=1
 * made a checkpoint hang for ever, its target held): MODE sqpoll sets up a ring with
 * IORING_SETUP_SQPOLL (the kernel's "iou-sqp-PID" thread of the process); ring a plain
 * ring, its rings mapped; closed the same, its fd closed, the ring kept by its mapping
 * alone.  Then "ready" and "ok N" every 20 ms, a write through the ring each round where
 * it has its fd. */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    FILE *out = fopen(argv[1], "a");
    if (!out) return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    const char *mode = argv[2];
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    if (!strcmp(mode, "sqpoll")) {
        p.flags = IORING_SETUP_SQPOLL;
        p.sq_thread_idle = 10;
    }
    int fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (fd < 0) { fprintf(out, "FAIL io_uring_setup\n"); return 3; }
    size_t sqlen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    void *sq = mmap(NULL, sqlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                    IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) { fprintf(out, "FAIL mmap\n"); return 3; }
    if (!strcmp(mode, "closed")) close(fd);
    fprintf(out, "ready\n");
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (int n = 0;; n++) {
        fprintf(out, "ok %d\n", n);
        nanosleep(&ts, NULL);
    }
}
