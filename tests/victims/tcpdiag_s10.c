/* Options of established TCP connections that the checkpoint takes from sock_diag
 * instead of asking each socket (engine/inet.py diag_known, _no_filter): two loopback
 * connections, both ends here.  c1's SO_MAX_PACING_RATE is 12345 and a1's 3e9 (set with
 * 64 bits; getsockopt's 32 bits give min(~0U, rate)), shown by tcp_info's
 * tcpi_max_pacing_rate; c2 and a2 as the kernel made them (~0: none).  With "filter", a1
 * has a classic BPF filter (SO_ATTACH_FILTER: accept all), which the checkpoint must
 * refuse though sock_diag shows no filter (only its option memory).  A third
 * connection's c3 is shut for reading (SHUT_RD: sk_shutdown's RCV_SHUTDOWN, which
 * sock_diag shows and no getsockopt; the peer sent no FIN): a read gives 0 at once.
 * Every round checks the four sockets' SO_MAX_PACING_RATE (32 and 64 bits), sends a
 * byte each way on the first two connections, and reads c3 without waiting ("ok N",
 * or "FAIL what").
 *
 *   tcpdiag_s10 OUT [filter] */
#include "common.h"
#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif

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
    int filter = argc > 2 && !strcmp(argv[2], "filter");
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (void *)&a, &al)) { FAIL("listen %d", errno); return 1; }
    int fd[6];  /* c1 a1 c2 a2 c3 a3 */
    pair(l, &a, &fd[0], &fd[1]);
    pair(l, &a, &fd[2], &fd[3]);
    pair(l, &a, &fd[4], &fd[5]);
    close(l);
    if (shutdown(fd[4], SHUT_RD)) { FAIL("shutdown %d", errno); return 1; }
    uint32_t r32 = 12345;
    uint64_t r64 = 3000000000ULL;
    if (setsockopt(fd[0], SOL_SOCKET, SO_MAX_PACING_RATE, &r32, sizeof r32) ||
        setsockopt(fd[1], SOL_SOCKET, SO_MAX_PACING_RATE, &r64, sizeof r64)) {
        FAIL("SO_MAX_PACING_RATE %d", errno); return 1;
    }
    if (filter) {
        static struct sock_filter all[] = {{BPF_RET | BPF_K, 0, 0, 0xFFFF}};
        struct sock_fprog prog = {1, all};
        if (setsockopt(fd[1], SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) {
            FAIL("SO_ATTACH_FILTER %d", errno); return 1;
        }
    }
    static const uint64_t want[4] = {12345, 3000000000ULL, ~0ULL, ~0ULL};
    static const char *sock[4] = {"c1", "a1", "c2", "a2"};
    report("ready");
    for (int round = 0;; round++) {
        int bad = 0;
        for (int k = 0; k < 4; k++) {
            uint64_t v64 = 0;
            uint32_t v32 = 0;
            socklen_t n64 = sizeof v64, n32 = sizeof v32;
            if (getsockopt(fd[k], SOL_SOCKET, SO_MAX_PACING_RATE, &v64, &n64) ||
                getsockopt(fd[k], SOL_SOCKET, SO_MAX_PACING_RATE, &v32, &n32)) {
                FAIL("%s getsockopt %d", sock[k], errno); bad = 1; continue;
            }
            uint32_t w32 = want[k] > 0xFFFFFFFFULL ? 0xFFFFFFFFU : (uint32_t)want[k];
            if (v64 != want[k] || v32 != w32) {
                FAIL("%s SO_MAX_PACING_RATE %llu (32 bits %u) want %llu", sock[k],
                     (unsigned long long)v64, v32, (unsigned long long)want[k]);
                bad = 1;
            }
        }
        for (int k = 0; k < 4; k += 2)
            if (!echo(fd[k], fd[k + 1], (char)('a' + round % 26))) { FAIL("echo %d", errno); bad = 1; }
        char x;
        ssize_t got = recv(fd[4], &x, 1, MSG_DONTWAIT);
        if (got != 0) { FAIL("c3 shut for reading: recv %zd errno %d", got, errno); bad = 1; }
        if (!bad) report("ok %d", round);
        nap(100);
    }
}
