/* The grid's ring: part PART of COUNT listens on its service address ADDRS[PART]:PORT,
 * connects to part PART+1 and accepts part PART-1; part 0 keeps WINDOW numbered
 * messages going round, every other part forwards what it receives.  Every part checks
 * that each message is the next number (none lost, none duplicated, none corrupted)
 * and reports "ok N" every 100 messages.  Both connections are between service
 * addresses (the outgoing one is bound to ours), which move with the parts.
 *     ring OUT PART COUNT ADDR0,ADDR1,... PORT [WINDOW] */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/socket.h>

struct msg { uint64_t seq, check; };

static int xfer(int fd, void *buf, size_t n, int out) {
    char *p = buf;
    while (n) {
        ssize_t r = out ? write(fd, p, n) : read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r; n -= (size_t)r;
    }
    return 0;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) _exit(2);
    return a;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 6) _exit(2);
    int part = atoi(argv[2]), count = atoi(argv[3]), port = atoi(argv[5]);
    int window = argc > 6 ? atoi(argv[6]) : 32;
    char *addrs[16], *list = strdup(argv[4]);
    int n = 0;
    for (char *t = strtok(list, ","); t && n < 16; t = strtok(NULL, ",")) addrs[n++] = t;
    if (n != count) _exit(2);
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in me = addr_of(addrs[part], port);
    for (int i = 0; bind(ls, (struct sockaddr *)&me, sizeof me) < 0; i++) {
        if (i > 3000) { FAIL("bind %s: %s", addrs[part], strerror(errno)); _exit(1); }
        nap(10);  /* the service address is being put on the host */
    }
    if (listen(ls, 4) < 0) { FAIL("listen"); _exit(1); }
    struct sockaddr_in next = addr_of(addrs[(part + 1) % count], port);
    int out = -1;
    for (int i = 0; i < 3000 && out < 0; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in from = addr_of(addrs[part], 0);  /* from our service address */
        if (bind(s, (struct sockaddr *)&from, sizeof from) == 0 && connect(s, (struct sockaddr *)&next, sizeof next) == 0) out = s;
        else { close(s); nap(10); }
    }
    if (out < 0) { FAIL("connect to %s", addrs[(part + 1) % count]); _exit(1); }
    int in = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (in < 0) { FAIL("accept"); _exit(1); }
    close(ls);
    setsockopt(in, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    report("ready %d", getpid());
    uint64_t expect = 0, sent = 0;
    if (part == 0)
        for (; sent < (uint64_t)window; sent++) {
            struct msg m = {sent, mix(sent)};
            if (xfer(out, &m, sizeof m, 1)) { FAIL("write: %s", strerror(errno)); _exit(1); }
        }
    for (;;) {
        struct msg m;
        if (xfer(in, &m, sizeof m, 0)) { FAIL("read: %s", strerror(errno)); _exit(1); }
        if (m.seq != expect || m.check != mix(m.seq)) {
            FAIL("got message %llu (check %s), expected %llu", (unsigned long long)m.seq,
                 m.check == mix(m.seq) ? "ok" : "bad", (unsigned long long)expect);
            _exit(1);
        }
        expect++;
        if (part == 0) {
            m.seq = sent; m.check = mix(sent); sent++;
            nap(1);
        }
        if (xfer(out, &m, sizeof m, 1)) { FAIL("write: %s", strerror(errno)); _exit(1); }
        if (expect % 100 == 0) report("ok %llu", (unsigned long long)expect);
    }
}
