/* Packet pipes survive (found by probing, docs/state-coverage.md): a pipe made with
 * O_DIRECT and a FIFO given O_DIRECT with F_SETFL, each holding three packets of 10, 20
 * and 30 bytes.  Each round a packet of 7 bytes goes through a third packet pipe and
 * must come back alone, and the write ends must still have O_DIRECT; once GO exists
 * (the test makes it after the restart) the queued packets must read back one by one.
 *
 *   packets OUT FIFO GO */
#include "common.h"
#include <sys/stat.h>

static int packets_ok(int fd, const char *what) {
    char buf[100];
    for (int i = 1; i <= 3; i++) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n != 10 * i) { FAIL("%s packet %d: %zd bytes", what, i, n); return 0; }
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    open_report(argc, argv);
    int p[2], q[2];
    if (pipe2(p, O_DIRECT) || pipe2(q, O_DIRECT) || mkfifo(argv[2], 0600)) return 4;
    int fr = open(argv[2], O_RDONLY | O_NONBLOCK), fw = open(argv[2], O_WRONLY);
    if (fr < 0 || fw < 0 || fcntl(fw, F_SETFL, O_DIRECT)) { FAIL("fifo %d", errno); return 4; }
    char buf[100];
    memset(buf, 'x', sizeof buf);
    for (int i = 1; i <= 3; i++)
        if (write(p[1], buf, 10 * i) != 10 * i || write(fw, buf, 10 * i) != 10 * i) return 5;
    report("ready");
    for (long r = 0;; r++) {
        int bad = 0;
        if (write(q[1], buf, 7) != 7 || write(q[1], buf, 7) != 7 || read(q[0], buf, sizeof buf) != 7
                || read(q[0], buf, sizeof buf) != 7) { FAIL("a packet through q"); bad = 1; }
        if (!(fcntl(p[1], F_GETFL) & O_DIRECT) || !(fcntl(fw, F_GETFL) & O_DIRECT) ||
                !(fcntl(q[1], F_GETFL) & O_DIRECT)) { FAIL("O_DIRECT lost"); bad = 1; }
        if (access(argv[3], F_OK) == 0) {
            if (packets_ok(p[0], "pipe") && packets_ok(fr, "fifo")) report("packets read");
            for (;;) pause();
        }
        if (!bad) report("ok %ld", r);
        nap(100);
    }
}
