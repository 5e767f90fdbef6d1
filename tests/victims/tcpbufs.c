/* Established TCP connections' buffer sizes and their locks (SO_BUF_LOCK: which sizes
 * the program fixed, SOCK_SNDBUF_LOCK 1, SOCK_RCVBUF_LOCK 2; the kernel tunes the
 * others as the connection goes).  Two loopback connections, both ends here: a1/c1 as
 * the kernel made them (nothing locked), a2 with SO_RCVBUF set (locked: 2) and c2 with
 * SO_BUF_LOCK 1 (its send buffer fixed at its size).  Every round compares each
 * socket's SO_BUF_LOCK, SO_SNDBUF and SO_RCVBUF with what they were before the first
 * and sends a byte each way on each connection ("ok N", or "FAIL what").  After a
 * checkpoint and restart they must be the same.
 *
 *   tcpbufs OUT */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

static int geti(int fd, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, opt, &v, &l)) return -errno;
    return v;
}

static void pair(int l, struct sockaddr_in *a, int *c, int *s) {
    *c = socket(AF_INET, SOCK_STREAM, 0);
    if (*c < 0 || connect(*c, (void *)a, sizeof *a)) { FAIL("connect %d", errno); _exit(1); }
    *s = accept(l, NULL, NULL);
    if (*s < 0) { FAIL("accept %d", errno); _exit(1); }
}

static int echo(int a, int b, char x) {
    char y = 0;
    if (write(a, &x, 1) != 1 || read(b, &y, 1) != 1 || y != x) return 0;
    if (write(b, &x, 1) != 1 || read(a, &y, 1) != 1 || y != x) return 0;
    return 1;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (void *)&a, &al)) { FAIL("listen %d", errno); return 1; }
    int fd[4];  /* c1 a1 c2 a2 */
    pair(l, &a, &fd[0], &fd[1]);
    pair(l, &a, &fd[2], &fd[3]);
    close(l);
    int v = 65536;
    if (setsockopt(fd[3], SOL_SOCKET, SO_RCVBUF, &v, sizeof v)) { FAIL("SO_RCVBUF %d", errno); return 1; }
    v = 1;
    if (setsockopt(fd[2], SOL_SOCKET, SO_BUF_LOCK, &v, sizeof v)) { FAIL("SO_BUF_LOCK %d", errno); return 1; }
    for (int k = 0; k < 4; k += 2)
        if (!echo(fd[k], fd[k + 1], 'x')) { FAIL("echo %d", errno); return 1; }
    int want[4][3];
    static const int opt[3] = {SO_BUF_LOCK, SO_SNDBUF, SO_RCVBUF};
    static const char *name[3] = {"SO_BUF_LOCK", "SO_SNDBUF", "SO_RCVBUF"};
    static const char *sock[4] = {"c1", "a1", "c2", "a2"};
    for (int k = 0; k < 4; k++)
        for (int o = 0; o < 3; o++) want[k][o] = geti(fd[k], opt[o]);
    report("ready %d %d %d %d", want[0][0], want[1][0], want[2][0], want[3][0]);
    for (int round = 0;; round++) {
        int bad = 0;
        for (int k = 0; k < 4; k++)
            for (int o = 0; o < 3; o++) {
                int got = geti(fd[k], opt[o]);
                if (got != want[k][o]) {
                    FAIL("%s %s %d want %d", sock[k], name[o], got, want[k][o]);
                    bad = 1;
                }
            }
        for (int k = 0; k < 4; k += 2)
            if (!echo(fd[k], fd[k + 1], (char)('a' + round % 26))) { FAIL("echo %d", errno); bad = 1; }
        if (!bad) report("ok %d", round);
        nap(100);
    }
}
