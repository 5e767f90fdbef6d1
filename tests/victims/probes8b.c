/* Probes of session 8 (issue 9, h7): sockets and terminals.  argv[2] names one piece of
 * state; the program sets it, reports "ready PID", then checks it every round ("ok N",
 * or "FAIL what").  argv[3] is a scratch directory; argv[3]/go tells a mode to do its
 * last step (then "done").
 *   inetopts    TCP, UDP and UDPv6 sockets with options set to values other than a fresh
 *               socket's (each one this kernel takes; "skip NAME" for those it refuses):
 *               each round getsockopt of each equals what it read right after setting
 *   unixopts    unix stream and datagram pairs with SO_RCVTIMEO, SO_SNDTIMEO,
 *               SO_RCVLOWAT, SO_SNDBUF, SO_PASSPIDFD, SO_TIMESTAMPNS and the program's
 *               own SO_PEEK_OFF (3, with "abcdef" queued): options as set; after go a
 *               peek gives "def"
 *   dgramfrom   a unix datagram socket bound to an abstract name with three datagrams
 *               queued, from two senders bound to abstract names ("s1", "s2", "s1"),
 *               and an autobound socket: its name kept; after go recvfrom gives each
 *               datagram with its sender's address, and a reply to it arrives
 *   autobind    the same sockets, nothing queued: the autobound name kept
 *   ptyldisc    a pty pair whose slave is in raw mode with a window size, then given
 *               line discipline N_NULL: TIOCGETD, the window size; after go N_TTY again:
 *               raw mode as it was
 *   udpshut     a connected UDP socket shut for reading (SHUT_RD): poll says POLLRDHUP
 *   reuseport   two UDP sockets of one SO_REUSEPORT group: datagrams from 32 source
 *               ports reach both, every one arrives
 *   sarestart   a thread blocked in read on a pipe, SIGUSR1's handler without SA_RESTART,
 *               SIGUSR2's with: after go SIGUSR1 ends the read (EINTR), SIGUSR2 does not
 *   ptyhup      a pty pair whose slave is closed: the master's read fails with EIO and
 *               poll says POLLHUP
 */
#include "common.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <pty.h>
#include <termios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <linux/net_tstamp.h>

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef N_NULL
#define N_NULL 27
#endif

static const char *mode, *dir;
static char go_path[4200];
static int go(void) { return !access(go_path, F_OK); }

/* an option set on fd and the bytes read back right after */
struct opt { int fd, level, name, len; const char *what; unsigned char want[64]; };
static struct opt opts[128];
static int nopts;

static void setopt(int fd, int level, int name, const char *what, const void *v, int len) {
    struct opt *o = &opts[nopts];
    if (setsockopt(fd, level, name, v, len)) { report("skip %s %d", what, errno); return; }
    socklen_t l = sizeof o->want;
    memset(o->want, 0, sizeof o->want);
    if (getsockopt(fd, level, name, o->want, &l)) { report("skip %s get %d", what, errno); return; }
    o->fd = fd; o->level = level; o->name = name; o->len = l; o->what = what;
    nopts++;
}
static void seti(int fd, int level, int name, const char *what, int v) {
    setopt(fd, level, name, what, &v, sizeof v);
}

static int check_opts(void) {
    int bad = 0;
    for (int i = 0; i < nopts; i++) {
        struct opt *o = &opts[i];
        unsigned char got[64] = {0};
        socklen_t l = sizeof got;
        if (getsockopt(o->fd, o->level, o->name, got, &l)) { FAIL("%s: get %d", o->what, errno); bad = 1; continue; }
        if ((int)l != o->len || memcmp(got, o->want, l)) {
            FAIL("%s: %d (%d bytes) want %d (%d bytes)", o->what, *(int *)got, l, *(int *)o->want, o->len);
            bad = 1;
        }
    }
    return bad;
}

static int tcp_l, tcp_u, udp, udp6;

static void setup_inetopts(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    tcp_l = socket(AF_INET, SOCK_STREAM, 0);
    tcp_u = socket(AF_INET, SOCK_STREAM, 0);
    udp = socket(AF_INET, SOCK_DGRAM, 0);
    udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    if (tcp_l < 0 || tcp_u < 0 || udp < 0 || udp6 < 0) { FAIL("socket"); _exit(1); }
    int fds[] = {tcp_l, udp};
    for (int i = 0; i < 2; i++) {
        int s = fds[i];
        seti(s, SOL_SOCKET, SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 1);
        seti(s, SOL_SOCKET, SO_INCOMING_CPU, "SO_INCOMING_CPU", 1);
        seti(s, SOL_SOCKET, SO_MAX_PACING_RATE, "SO_MAX_PACING_RATE", 1000000);
        seti(s, SOL_SOCKET, SO_SELECT_ERR_QUEUE, "SO_SELECT_ERR_QUEUE", 1);
        seti(s, SOL_SOCKET, SO_BUSY_POLL, "SO_BUSY_POLL", 50);
        seti(s, SOL_SOCKET, 75 /* SO_RCVMARK */, "SO_RCVMARK", 1);
        seti(s, SOL_SOCKET, SO_PASSSEC, "SO_PASSSEC", 1);
        seti(s, SOL_SOCKET, SO_ZEROCOPY, "SO_ZEROCOPY", 1);
        seti(s, SOL_SOCKET, 69 /* SO_PREFER_BUSY_POLL */, "SO_PREFER_BUSY_POLL", 1);
        seti(s, SOL_SOCKET, 70 /* SO_BUSY_POLL_BUDGET */, "SO_BUSY_POLL_BUDGET", 16);
        seti(s, SOL_SOCKET, 74 /* SO_TXREHASH */, "SO_TXREHASH", 0);
        seti(s, SOL_SOCKET, SO_WIFI_STATUS, "SO_WIFI_STATUS", 1);
        seti(s, SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT", 7);
        seti(s, SOL_SOCKET, SO_MARK, "SO_MARK", 0x42);
        seti(s, SOL_SOCKET, SO_TIMESTAMPING, "SO_TIMESTAMPING", SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE);
        seti(s, IPPROTO_IP, IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR", 1);
        seti(s, IPPROTO_IP, IP_MINTTL, "IP_MINTTL", 3);
        seti(s, IPPROTO_IP, IP_RECVOPTS, "IP_RECVOPTS", 1);
        seti(s, IPPROTO_IP, IP_RETOPTS, "IP_RETOPTS", 1);
        seti(s, IPPROTO_IP, IP_PASSSEC, "IP_PASSSEC", 1);
        seti(s, IPPROTO_IP, 25 /* IP_RECVFRAGSIZE */, "IP_RECVFRAGSIZE", 1);
        seti(s, IPPROTO_IP, 26 /* IP_RECVERR_RFC4884 */, "IP_RECVERR_RFC4884", 1);
        seti(s, IPPROTO_IP, 51 /* IP_LOCAL_PORT_RANGE */, "IP_LOCAL_PORT_RANGE", (40000 << 16) | 30000);
        seti(s, IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO", 1);
        seti(s, IPPROTO_IP, IP_TOS, "IP_TOS", 0x28);
        unsigned char ipopt[8] = {1, 1, 1, 0}; /* NOPs, then end */
        setopt(s, IPPROTO_IP, IP_OPTIONS, "IP_OPTIONS", ipopt, 4);
        /* after IP_TOS, which sets the priority from the TOS */
        seti(s, SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY", 5);
    }
    seti(tcp_l, IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS", 1);
    seti(tcp_l, IPPROTO_TCP, TCP_SAVE_SYN, "TCP_SAVE_SYN", 1);
    seti(tcp_l, IPPROTO_TCP, 37 /* TCP_TX_DELAY */, "TCP_TX_DELAY", 1000);
    seti(tcp_l, IPPROTO_TCP, TCP_INQ, "TCP_INQ", 1);
    seti(tcp_l, IPPROTO_TCP, TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT", 16384);
    seti(tcp_l, IPPROTO_TCP, TCP_CORK, "TCP_CORK", 1);
    seti(tcp_l, IPPROTO_TCP, 34 /* TCP_FASTOPEN_NO_COOKIE */, "TCP_FASTOPEN_NO_COOKIE", 1);
    seti(tcp_l, IPPROTO_TCP, 45 /* TCP_RTO_MIN_US */, "TCP_RTO_MIN_US", 50000);
    seti(tcp_l, IPPROTO_TCP, 46 /* TCP_DELACK_MAX_US */, "TCP_DELACK_MAX_US", 20000);
    setopt(tcp_l, IPPROTO_TCP, TCP_CONGESTION, "TCP_CONGESTION", "reno", 4);
    seti(tcp_u, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, "TCP_FASTOPEN_CONNECT", 1);
    seti(tcp_u, IPPROTO_TCP, TCP_QUICKACK, "TCP_QUICKACK(u)", 0);
    seti(udp, IPPROTO_UDP, UDP_SEGMENT, "UDP_SEGMENT", 1200);
    seti(udp, IPPROTO_UDP, UDP_GRO, "UDP_GRO", 1);
    seti(udp, IPPROTO_UDP, UDP_CORK, "UDP_CORK", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVTCLASS, "IPV6_RECVTCLASS", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_AUTOFLOWLABEL, "IPV6_AUTOFLOWLABEL", 0);
    seti(udp6, IPPROTO_IPV6, IPV6_DONTFRAG, "IPV6_DONTFRAG", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVPATHMTU, "IPV6_RECVPATHMTU", 1);
    seti(udp6, IPPROTO_IPV6, 73 /* IPV6_MINHOPCOUNT */, "IPV6_MINHOPCOUNT", 2);
    seti(udp6, IPPROTO_IPV6, 74 /* IPV6_ORIGDSTADDR */, "IPV6_RECVORIGDSTADDR", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVRTHDR, "IPV6_RECVRTHDR", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVHOPOPTS, "IPV6_RECVHOPOPTS", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_MULTICAST_IF, "IPV6_MULTICAST_IF", 1);
    seti(udp6, IPPROTO_IPV6, IPV6_TCLASS, "IPV6_TCLASS", 0x20);
    seti(udp6, SOL_SOCKET, SO_TIMESTAMPNS, "SO_TIMESTAMPNS(6)", 1);
    if (bind(tcp_l, (void *)&a, sizeof a) || listen(tcp_l, 5)) { FAIL("listen %d", errno); _exit(1); }
    if (bind(udp, (void *)&a, sizeof a)) { FAIL("bind udp %d", errno); _exit(1); }
}

static int usp[2], udg[2];

static void setup_unixopts(void) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, usp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, udg)) _exit(1);
    int fds[] = {usp[0], udg[0]};
    for (int i = 0; i < 2; i++) {
        int s = fds[i];
        struct timeval rt = {3, 250000}, st = {4, 500000};
        setopt(s, SOL_SOCKET, SO_RCVTIMEO, "SO_RCVTIMEO", &rt, sizeof rt);
        setopt(s, SOL_SOCKET, SO_SNDTIMEO, "SO_SNDTIMEO", &st, sizeof st);
        seti(s, SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT", 3);
        seti(s, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", 50000);
        seti(s, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", 70000);
        seti(s, SOL_SOCKET, SO_PASSPIDFD, "SO_PASSPIDFD", 1);
        seti(s, SOL_SOCKET, SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 1);
        seti(s, SOL_SOCKET, SO_PASSSEC, "SO_PASSSEC", 1);
        seti(s, SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY", 4);
        seti(s, SOL_SOCKET, SO_MARK, "SO_MARK", 9);
        seti(s, SOL_SOCKET, 83 /* SO_PASSRIGHTS */, "SO_PASSRIGHTS", 0);
    }
    if (write(usp[1], "abcdef", 6) != 6) _exit(1);
    seti(usp[0], SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF", 3);
}

static int unix_last(void) {
    char b[16] = {0};
    ssize_t n = recv(usp[0], b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
    if (n != 3 || memcmp(b, "def", 3)) { FAIL("peek after SO_PEEK_OFF 3: %zd '%.*s'", n, (int)(n > 0 ? n : 0), b); return 1; }
    int three = 3;  /* (the peek moved it on) */
    setsockopt(usp[0], SOL_SOCKET, SO_PEEK_OFF, &three, sizeof three);
    return 0;
}

static int rx, s1, s2, ab;
static struct sockaddr_un ab_name;
static socklen_t ab_len;

static socklen_t abstract(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "cryo-p8b-%d-%s", getpid(), name);
    return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a->sun_path + 1);
}

static void setup_dgramfrom(int named) {
    struct sockaddr_un a;
    rx = socket(AF_UNIX, SOCK_DGRAM, 0);
    s1 = socket(AF_UNIX, SOCK_DGRAM, 0);
    s2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    ab = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(rx, (void *)&a, abstract(&a, "rx"))) _exit(1);
    struct sockaddr_un b1, b2;
    if (bind(s1, (void *)&b1, abstract(&b1, "s1")) || bind(s2, (void *)&b2, abstract(&b2, "s2"))) _exit(1);
    sa_family_t fam = AF_UNIX;
    if (bind(ab, (void *)&fam, sizeof fam)) _exit(1);  /* autobind */
    ab_len = sizeof ab_name;
    getsockname(ab, (void *)&ab_name, &ab_len);
    socklen_t al = abstract(&a, "rx");
    if (!named) return;
    if (sendto(s1, "one", 3, 0, (void *)&a, al) != 3 || sendto(s2, "two", 3, 0, (void *)&a, al) != 3 ||
        sendto(s1, "three", 5, 0, (void *)&a, al) != 5) { FAIL("sendto %d", errno); _exit(1); }
}

static int dgram_check(void) {
    struct sockaddr_un n;
    socklen_t l = sizeof n;
    if (getsockname(ab, (void *)&n, &l) || l != ab_len || memcmp(&n, &ab_name, l)) {
        FAIL("autobound name: %d bytes, want %d", l, ab_len);
        return 1;
    }
    return 0;
}

static int dgram_last(void) {
    const char *data[] = {"one", "two", "three"}, *from[] = {"s1", "s2", "s1"};
    int socks[] = {s1, s2, s1};
    for (int i = 0; i < 3; i++) {
        char b[16] = {0};
        struct sockaddr_un n, want;
        socklen_t l = sizeof n, wl = abstract(&want, from[i]);
        memset(&n, 0, sizeof n);
        ssize_t r = recvfrom(rx, b, sizeof b, MSG_DONTWAIT, (void *)&n, &l);
        if (r != (ssize_t)strlen(data[i]) || memcmp(b, data[i], r)) { FAIL("datagram %d: %zd '%s'", i, r, b); return 1; }
        if (l != wl || memcmp(&n, &want, l)) { FAIL("datagram %d from %d bytes '%s', want '%s'", i, l, l > 3 ? n.sun_path + 1 : "", from[i]); return 1; }
        if (sendto(rx, "re", 2, 0, (void *)&n, l) != 2) { FAIL("reply %d: %d", i, errno); return 1; }
        if (recv(socks[i], b, sizeof b, MSG_DONTWAIT) != 2) { FAIL("reply %d not received", i); return 1; }
    }
    return 0;
}

static int ush;

/* a UDP socket connected to another (both bound on 127.0.0.1), shut for reading */
static void setup_udpshut(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}, b;
    socklen_t l = sizeof b;
    int peer = socket(AF_INET, SOCK_DGRAM, 0);
    ush = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(peer, (void *)&a, sizeof a) || getsockname(peer, (void *)&b, &l) || connect(ush, (void *)&b, l)) _exit(1);
    if (shutdown(ush, SHUT_RD)) { FAIL("shutdown %d", errno); _exit(1); }
}

static int udpshut_check(void) {
    struct pollfd p = {ush, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLRDHUP)) { FAIL("udp shut for reading: revents %#x, want POLLRDHUP", p.revents); return 1; }
    return 0;
}

static int rp[2];
static struct sockaddr_in rp_addr;

/* two UDP sockets of one SO_REUSEPORT group on 127.0.0.1:P */
static void setup_reuseport(void) {
    rp_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof rp_addr;
    int one = 1;
    for (int i = 0; i < 2; i++) {
        rp[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (setsockopt(rp[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
            bind(rp[i], (void *)&rp_addr, sizeof rp_addr) || getsockname(rp[i], (void *)&rp_addr, &l)) _exit(1);
    }
}

/* datagrams from sources of 32 ports: both sockets get some, and every one arrives */
static int reuseport_try(void) {
    int got[2] = {0, 0}, bad = 0;
    for (int i = 0; i < 32; i++) {
        int tx = socket(AF_INET, SOCK_DGRAM, 0);
        if (sendto(tx, "x", 1, 0, (void *)&rp_addr, sizeof rp_addr) != 1) bad = 1;
        close(tx);
    }
    nap(20);
    char c;
    for (int k = 0; k < 2; k++)
        while (recv(rp[k], &c, 1, MSG_DONTWAIT) == 1) got[k]++;
    if (bad || got[0] + got[1] != 32 || !got[0] || !got[1]) { report("try: %d + %d of 32", got[0], got[1]); return 1; }
    return 0;
}

/* (a try the checkpoint cuts loses its datagrams: UDP queues are not saved) */
static int reuseport_check(void) {
    for (int t = 0; t < 3; t++)
        if (!reuseport_try()) return 0;
    FAIL("reuseport: three tries failed");
    return 1;
}

static int rdpipe[2];
static pthread_t reader;
static volatile int reader_state;  /* 1 reading, 2 EINTR seen, 3 read the byte after SIGUSR2 */
static void on_usr(int sig) { (void)sig; }

/* a thread blocked in read on a pipe; SIGUSR1's handler without SA_RESTART, SIGUSR2's with */
static void *reader_main(void *arg) {
    (void)arg;
    char c;
    reader_state = 1;
    ssize_t r = read(rdpipe[0], &c, 1);
    if (r != -1 || errno != EINTR) { FAIL("read: %zd errno %d, want EINTR (SIGUSR1, no SA_RESTART)", r, errno); return NULL; }
    reader_state = 2;
    r = read(rdpipe[0], &c, 1);  /* SIGUSR2 comes meanwhile: restarted */
    if (r != 1 || c != 'z') { FAIL("read after SIGUSR2: %zd errno %d", r, errno); return NULL; }
    reader_state = 3;
    return NULL;
}

static void setup_sarestart(void) {
    struct sigaction a = {.sa_handler = on_usr}, b = {.sa_handler = on_usr, .sa_flags = SA_RESTART};
    if (pipe(rdpipe) || sigaction(SIGUSR1, &a, NULL) || sigaction(SIGUSR2, &b, NULL)) _exit(1);
    pthread_create(&reader, NULL, reader_main, NULL);
    while (reader_state != 1) nap(5);
}

static int sarestart_last(void) {
    pthread_kill(reader, SIGUSR1);
    for (int i = 0; i < 100 && reader_state == 1; i++) nap(10);
    if (reader_state != 2) { FAIL("the reader did not see EINTR (state %d)", reader_state); return 1; }
    nap(50);
    pthread_kill(reader, SIGUSR2);
    nap(50);
    if (reader_state != 2) { FAIL("SIGUSR2 (SA_RESTART) ended the read (state %d)", reader_state); return 1; }
    if (write(rdpipe[1], "z", 1) != 1) return 1;
    for (int i = 0; i < 100 && reader_state == 2; i++) nap(10);
    if (reader_state != 3) { FAIL("the reader did not read after SIGUSR2 (state %d)", reader_state); return 1; }
    return 0;
}

static int sarestart_check(void) { return 0; }

static int pm, ps;

static void setup_pty(int hup) {
    if (openpty(&pm, &ps, NULL, NULL, NULL)) _exit(1);
    if (hup) { close(ps); ps = -1; return; }
    struct winsize w = {.ws_row = 33, .ws_col = 111};
    struct termios t;
    tcgetattr(ps, &t);
    cfmakeraw(&t);
    if (ioctl(ps, TIOCSWINSZ, &w) || tcsetattr(ps, TCSANOW, &t)) _exit(1);
    int d = N_NULL;
    if (ioctl(ps, TIOCSETD, &d)) { FAIL("TIOCSETD %d", errno); _exit(1); }
}

static int pty_check(void) {
    if (ps >= 0) {
        int d = -1;
        if (ioctl(ps, TIOCGETD, &d) || d != N_NULL) { FAIL("line discipline %d, want %d", d, N_NULL); return 1; }
        struct winsize w;
        if (ioctl(pm, TIOCGWINSZ, &w) || w.ws_row != 33 || w.ws_col != 111) { FAIL("winsize %dx%d", w.ws_row, w.ws_col); return 1; }
        if (go()) {  /* back to N_TTY: raw mode as set before N_NULL */
            struct termios t;
            int n = N_TTY;
            if (ioctl(ps, TIOCSETD, &n) || tcgetattr(ps, &t)) { FAIL("N_TTY again %d", errno); return 1; }
            if (t.c_lflag & (ICANON | ECHO)) { FAIL("not raw: lflag %#x", t.c_lflag); return 1; }
            report("done");
            close(ps);
            ps = -2;
        }
        return 0;
    }
    if (ps == -2) return 0;  /* (N_TTY again, after go) */
    struct pollfd p = {pm, POLLIN, 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP)) { FAIL("master revents %#x, want POLLHUP", p.revents); return 1; }
    char c;
    int fl = fcntl(pm, F_GETFL);
    fcntl(pm, F_SETFL, fl | O_NONBLOCK);
    ssize_t r = read(pm, &c, 1);
    fcntl(pm, F_SETFL, fl);
    if (r != -1 || errno != EIO) { FAIL("master read %zd errno %d, want EIO", r, errno); return 1; }
    return 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    mode = argv[2];
    dir = argc > 3 ? argv[3] : "/tmp";
    snprintf(go_path, sizeof go_path, "%s/go", dir);
    int (*check)(void) = check_opts, (*last)(void) = NULL;
    if (!strcmp(mode, "inetopts")) setup_inetopts();
    else if (!strcmp(mode, "unixopts")) { setup_unixopts(); last = unix_last; }
    else if (!strcmp(mode, "dgramfrom")) { setup_dgramfrom(1); check = dgram_check; last = dgram_last; }
    else if (!strcmp(mode, "autobind")) { setup_dgramfrom(0); check = dgram_check; }
    else if (!strcmp(mode, "udpshut")) { setup_udpshut(); check = udpshut_check; }
    else if (!strcmp(mode, "reuseport")) { setup_reuseport(); check = reuseport_check; }
    else if (!strcmp(mode, "sarestart")) { setup_sarestart(); check = sarestart_check; last = sarestart_last; }
    else if (!strcmp(mode, "ptyldisc")) { setup_pty(0); check = pty_check; }
    else if (!strcmp(mode, "ptyhup")) { setup_pty(1); check = pty_check; }
    else _exit(2);
    report("ready %d", getpid());
    int done = 0;
    for (long round = 0;; round++) {
        int bad = check();
        if (!bad && last && !done && go()) {
            done = 1;
            if (!(bad = last())) report("done");
        }
        if (!bad) report("ok %ld", round);
        nap(100);
    }
}
