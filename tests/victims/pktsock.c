/* A packet socket bound to no interface (socket(AF_PACKET, SOCK_DGRAM, ETH_P_IP) and no
 * bind) survives (found by probing): each round it must still be a packet socket of
 * that protocol and see the IP datagram the process sends to 127.0.0.1. */
#include "common.h"
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || u < 0) { FAIL("sockets %d", errno); return 4; }
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long r = 0;; r++) {
        int dom = -1;
        socklen_t l = sizeof dom;
        getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l);
        struct sockaddr_ll ll = {0};
        l = sizeof ll;
        getsockname(fd, (struct sockaddr *)&ll, &l);
        int proto = ll.sll_protocol;
        sendto(u, "x", 1, 0, (struct sockaddr *)&to, sizeof to);
        char buf[2048];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (dom != AF_PACKET || proto != htons(ETH_P_IP)) FAIL("domain %d protocol %#x", dom, proto);
        else if (n <= 0) FAIL("no packet seen (%zd, errno %d)", n, errno);
        else report("ok %ld", r);
        nap(100);
    }
}
