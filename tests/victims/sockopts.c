/* Internet, packet and netlink sockets with options, checked by the victim itself
 * across a restart: argv[2] is a base port, argv[3] a file that exists once restarted.
 *   fd A  TCP listener 127.0.0.1:P    SO_REUSEADDR SO_REUSEPORT SO_KEEPALIVE TCP_NODELAY
 *         keepalive idle/interval/count, SO_SNDBUF SO_RCVBUF, SO_RCVTIMEO SO_SNDTIMEO,
 *         SO_LINGER, TCP_DEFER_ACCEPT, TCP_FASTOPEN, TCP_USER_TIMEOUT, IP_FREEBIND,
 *         SO_BINDTODEVICE lo, IP_TOS, backlog 7
 *   fd B  TCP listener [::1]:P+1      IPV6_V6ONLY, IPV6_FREEBIND, IPV6_TCLASS
 *   fd C  TCP listener [::]:P+2       dual stack (IPV6_V6ONLY 0)
 *   fd D  TCP socket, unbound         TCP_NODELAY
 *   fd E  TCP socket bound to 127.0.0.1:P+3, not listening
 *   fd F  UDP bound 127.0.0.1:P+4     SO_BROADCAST, IP_TTL 9
 *   fd G  UDP [::1]:P+5 bound, H UDP connected to it, IPV6_UNICAST_HOPS 3
 *   fd I  raw IPPROTO_UDP bound 127.0.0.1, J packet socket on lo, K netlink route
 *         with RTMGRP_LINK
 * Every round: the listeners accept (answering "A\n" etc.), F echoes datagrams; after
 * the restart every option and address is compared with what it was. */
#include "common.h"
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#define NSOCK 11
static int fds[NSOCK];
static const char *names = "ABCDEFGHIJK";

static void die(const char *what) { report("FAIL setup %s: %s", what, strerror(errno)); _exit(1); }

static void seti(int fd, int level, int opt, int v) {
    if (setsockopt(fd, level, opt, &v, sizeof v)) die("setsockopt");
}

struct snap { char data[4096]; int len; };

static void put(struct snap *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    s->len += vsnprintf(s->data + s->len, sizeof s->data - s->len, fmt, ap);
    va_end(ap);
}

static void snapshot(int i, struct snap *s) {
    static const int opts[][2] = {
        {SOL_SOCKET, SO_REUSEADDR}, {SOL_SOCKET, SO_REUSEPORT}, {SOL_SOCKET, SO_KEEPALIVE},
        {SOL_SOCKET, SO_SNDBUF}, {SOL_SOCKET, SO_RCVBUF}, {SOL_SOCKET, SO_BROADCAST},
        {SOL_SOCKET, SO_TYPE}, {SOL_SOCKET, SO_PROTOCOL}, {SOL_SOCKET, SO_ACCEPTCONN},
        {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, TCP_KEEPIDLE}, {IPPROTO_TCP, TCP_KEEPINTVL},
        {IPPROTO_TCP, TCP_KEEPCNT}, {IPPROTO_TCP, TCP_DEFER_ACCEPT}, {IPPROTO_TCP, TCP_FASTOPEN},
        {IPPROTO_TCP, TCP_USER_TIMEOUT}, {IPPROTO_IP, IP_FREEBIND}, {IPPROTO_IP, IP_TOS},
        {IPPROTO_IP, IP_TTL}, {IPPROTO_IPV6, IPV6_V6ONLY}, {IPPROTO_IPV6, IPV6_FREEBIND},
        {IPPROTO_IPV6, IPV6_TCLASS}, {IPPROTO_IPV6, IPV6_UNICAST_HOPS},
    };
    int fd = fds[i];
    s->len = 0;
    for (unsigned k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        int v = 0;
        socklen_t l = sizeof v;
        if (getsockopt(fd, opts[k][0], opts[k][1], &v, &l) == 0) put(s, "%d/%d=%d ", opts[k][0], opts[k][1], v);
    }
    struct timeval tv;
    socklen_t l = sizeof tv;
    if (!getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &l)) put(s, "rcvtimeo=%ld.%06ld ", tv.tv_sec, tv.tv_usec);
    l = sizeof tv;
    if (!getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &l)) put(s, "sndtimeo=%ld.%06ld ", tv.tv_sec, tv.tv_usec);
    struct linger lg;
    l = sizeof lg;
    if (!getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l)) put(s, "linger=%d,%d ", lg.l_onoff, lg.l_linger);
    char dev[IFNAMSIZ] = "";
    l = sizeof dev;
    if (!getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &l)) put(s, "dev=%s ", dev);
    unsigned char addr[128];
    l = sizeof addr;
    if (!getsockname(fd, (struct sockaddr *)addr, &l)) {
        put(s, "name=");
        for (socklen_t k = 0; k < l; k++) put(s, "%02x", addr[k]);
        put(s, " ");
    }
    l = sizeof addr;
    if (!getpeername(fd, (struct sockaddr *)addr, &l)) {
        put(s, "peer=");
        for (socklen_t k = 0; k < l; k++) put(s, "%02x", addr[k]);
    }
}

static int tcp(int family, const char *host, int port, int backlog) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (!host) return fd;
    if (family == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, host, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("bind4");
    } else {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        inet_pton(AF_INET6, host, &a.sin6_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("bind6");
    }
    if (backlog && listen(fd, backlog)) die("listen");
    return fd;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    int port = atoi(argv[2]);
    /* A */
    int a = socket(AF_INET, SOCK_STREAM, 0);
    seti(a, SOL_SOCKET, SO_REUSEADDR, 1);
    seti(a, SOL_SOCKET, SO_REUSEPORT, 1);
    seti(a, SOL_SOCKET, SO_KEEPALIVE, 1);
    seti(a, IPPROTO_TCP, TCP_NODELAY, 1);
    seti(a, IPPROTO_TCP, TCP_KEEPIDLE, 77);
    seti(a, IPPROTO_TCP, TCP_KEEPINTVL, 13);
    seti(a, IPPROTO_TCP, TCP_KEEPCNT, 4);
    seti(a, SOL_SOCKET, SO_SNDBUF, 65536);
    seti(a, SOL_SOCKET, SO_RCVBUF, 98304);
    struct timeval rt = {3, 500000}, st = {1, 250000};
    if (setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt)) die("rcvtimeo");
    if (setsockopt(a, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st)) die("sndtimeo");
    struct linger lg = {1, 7};
    if (setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg)) die("linger");
    seti(a, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5);
    seti(a, IPPROTO_TCP, TCP_FASTOPEN, 16);
    seti(a, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345);
    seti(a, IPPROTO_IP, IP_FREEBIND, 1);
    seti(a, IPPROTO_IP, IP_TOS, 0x10);
    if (setsockopt(a, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3)) die("bindtodevice");
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
    if (bind(a, (struct sockaddr *)&a4, sizeof a4)) die("bind A");
    if (listen(a, 7)) die("listen A");
    fds[0] = a;
    /* B, C */
    int b = socket(AF_INET6, SOCK_STREAM, 0);
    seti(b, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    seti(b, IPPROTO_IPV6, IPV6_FREEBIND, 1);
    seti(b, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
    struct sockaddr_in6 b6 = {.sin6_family = AF_INET6, .sin6_port = htons(port + 1)};
    inet_pton(AF_INET6, "::1", &b6.sin6_addr);
    if (bind(b, (struct sockaddr *)&b6, sizeof b6)) die("bind B");
    if (listen(b, 3)) die("listen B");
    fds[1] = b;
    int c = socket(AF_INET6, SOCK_STREAM, 0);
    seti(c, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    b6.sin6_port = htons(port + 2);
    b6.sin6_addr = in6addr_any;
    if (bind(c, (struct sockaddr *)&b6, sizeof b6)) die("bind C");
    if (listen(c, 5)) die("listen C");
    fds[2] = c;
    /* D, E */
    fds[3] = tcp(AF_INET, NULL, 0, 0);
    seti(fds[3], IPPROTO_TCP, TCP_NODELAY, 1);
    fds[4] = tcp(AF_INET, "127.0.0.1", port + 3, 0);
    /* F, G, H */
    int f = socket(AF_INET, SOCK_DGRAM, 0);
    seti(f, SOL_SOCKET, SO_BROADCAST, 1);
    seti(f, IPPROTO_IP, IP_TTL, 9);
    a4.sin_port = htons(port + 4);
    if (bind(f, (struct sockaddr *)&a4, sizeof a4)) die("bind F");
    fds[5] = f;
    int g = socket(AF_INET6, SOCK_DGRAM, 0);
    b6.sin6_port = htons(port + 5);
    inet_pton(AF_INET6, "::1", &b6.sin6_addr);
    if (bind(g, (struct sockaddr *)&b6, sizeof b6)) die("bind G");
    fds[6] = g;
    int h = socket(AF_INET6, SOCK_DGRAM, 0);
    seti(h, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 3);
    if (connect(h, (struct sockaddr *)&b6, sizeof b6)) die("connect H");
    fds[7] = h;
    /* I, J, K */
    int r = socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
    a4.sin_port = 0;
    if (r < 0 || bind(r, (struct sockaddr *)&a4, sizeof a4)) die("raw");
    fds[8] = r;
    int p = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP),
                             .sll_ifindex = (int)if_nametoindex("lo")};
    if (p < 0 || bind(p, (struct sockaddr *)&ll, sizeof ll)) die("packet");
    fds[9] = p;
    int n = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
    if (n < 0 || bind(n, (struct sockaddr *)&nl, sizeof nl)) die("netlink");
    fds[10] = n;

    static struct snap before[NSOCK], after;
    for (int i = 0; i < NSOCK; i++) snapshot(i, &before[i]);
    report("ready %d", getpid());
    int checked = 0;
    for (long round = 1;; round++) {
        struct pollfd pf[4] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}, {fds[2], POLLIN, 0},
                               {fds[5], POLLIN, 0}};
        int k = poll(pf, 4, 20);
        if (k < 0 && errno != EINTR) { FAIL("poll %s", strerror(errno)); nap(100); }
        for (int i = 0; i < 3 && k > 0; i++) {
            if (!(pf[i].revents & POLLIN)) continue;
            int cfd = accept(fds[i], NULL, NULL);
            if (cfd < 0) { FAIL("accept %c: %s", names[i], strerror(errno)); continue; }
            char msg[3] = {names[i], '\n', 0};
            if (write(cfd, msg, 2) != 2) FAIL("write %c", names[i]);
            close(cfd);
        }
        if (k > 0 && pf[3].revents & POLLIN) {
            char buf[256];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t got = recvfrom(fds[5], buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (got > 0) sendto(fds[5], buf, got, 0, (struct sockaddr *)&from, fl);
        }
        if (!checked && access(argv[3], F_OK) == 0) {
            checked = 1;
            int bad = 0;
            for (int i = 0; i < NSOCK; i++) {
                snapshot(i, &after);
                if (after.len != before[i].len || memcmp(after.data, before[i].data, after.len)) {
                    FAIL("socket %c was: %.*s", names[i], before[i].len, before[i].data);
                    FAIL("socket %c now: %.*s", names[i], after.len, after.data);
                    bad = 1;
                }
            }
            /* H still talks to G */
            if (send(fds[7], "dgram", 5, 0) != 5) { FAIL("send H: %s", strerror(errno)); bad = 1; }
            char buf[16];
            nap(20);
            if (recv(fds[6], buf, sizeof buf, MSG_DONTWAIT) != 5) { FAIL("recv G: %s", strerror(errno)); bad = 1; }
            report("checked %s", bad ? "bad" : "good");
        }
        if (round % 10 == 0) report("tick %ld", round);
    }
}
