/* Probes of session 9 (issue 9, h2): files and sockets that came back wrong, exit 0.
 * argv[2] names one piece of state; the program sets it, reports "ready PID", then
 * checks it every round ("ok N", or "FAIL what").  argv[3] is a scratch directory.
 *   file       argv[3]/data (4096 bytes of a pattern) open read-write at offset 100:
 *              each round its size, the offset and the pattern read back (pread)
 *   udpshutwr  a connected UDP socket shut for writing (SHUT_WR): send fails, EPIPE
 *   md5        a TCP listener on 127.0.0.1 with a TCP_MD5SIG key for 127.0.0.1
 *   ao         a TCP socket with a TCP-AO key (TCP_AO_ADD_KEY; "skip" without TCP-AO)
 *   dgramauto  a unix datagram socket bound to an abstract name holding two datagrams
 *              from an autobound sender that is closed since: recvfrom gives each
 *              with the sender's "\0xxxxx" address (checked at each round by peeking)
 *   dgramautoheld  the same, the sender still open
 *   dgramautocred  the same, the receiver with SO_PASSCRED and the sender autobound by
 *              its own SO_PASSCRED: each datagram has its sender's address and the
 *              program's pid, uid and gid (SCM_CREDENTIALS)
 *   packetopts a packet socket bound to lo with options of SOL_PACKET set (each one this
 *              kernel takes; "skip NAME" for the others): each round getsockopt of each
 *              equals what it read right after setting
 *   packetmr   a packet socket bound to lo in promiscuous mode (PACKET_ADD_MEMBERSHIP)
 *   packetring a packet socket bound to lo with a receive ring (PACKET_RX_RING, not mapped)
 *   netlinkopts a route netlink socket bound (its port id) with NETLINK_* options set
 *              (PKTINFO, BROADCAST_ERROR, NO_ENOBUFS, CAP_ACK, EXT_ACK, GET_STRICT_CHK):
 *              each round getsockopt of each equals what it read right after setting
 *   nldump     a route netlink socket that asked for a dump of the links (RTM_GETLINK)
 *              and has not read the replies: each round a peek finds them waiting
 *   seqrights  a unix seqpacket pair with two messages queued, the second carrying a
 *              pipe's read end (SCM_RIGHTS) holding "p": each round a peek of both
 *   tcpoob     a loopback TCP connection of the process itself with "ab", an urgent byte
 *              "X" (MSG_OOB) and "cd" sent: each round a peek of the urgent byte gives "X"
 *   unixoob    a unix stream pair with "ab", an urgent byte "X" (MSG_OOB) and "cd" queued:
 *              each round a peek of the urgent byte gives "X"
 *   tmpexcl    a file made with O_TMPFILE | O_EXCL in argv[3] (never to be named) and one
 *              with O_TMPFILE alone, both holding a pattern: each round the first cannot
 *              be linked (linkat ENOENT, which changes nothing); both hold their bytes
 */
#include "common.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stddef.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <linux/netlink.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/net_tstamp.h>

static const char *mode, *dir;
static int fd = -1, sock = -1;
static char pat[4096];

static void setup_file(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/data", dir);
    for (int i = 0; i < (int)sizeof pat; i++) pat[i] = 'a' + (int)(mix(i) % 26);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, pat, sizeof pat) != (ssize_t)sizeof pat || lseek(fd, 100, SEEK_SET) != 100) _exit(1);
}

static int file_check(void) {
    struct stat st;
    char got[sizeof pat];
    if (fstat(fd, &st) || st.st_size != (off_t)sizeof pat) { FAIL("size %ld", (long)st.st_size); return 1; }
    if (lseek(fd, 0, SEEK_CUR) != 100) { FAIL("offset"); return 1; }
    if (pread(fd, got, sizeof got, 0) != (ssize_t)sizeof got || memcmp(got, pat, sizeof pat)) { FAIL("another file's bytes"); return 1; }
    return 0;
}

static void setup_udpshutwr(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}, b;
    socklen_t l = sizeof b;
    int peer = socket(AF_INET, SOCK_DGRAM, 0);
    sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(peer, (void *)&a, sizeof a) || getsockname(peer, (void *)&b, &l) || connect(sock, (void *)&b, l)) _exit(1);
    if (shutdown(sock, SHUT_WR)) { FAIL("shutdown %d", errno); _exit(1); }
}

static int udpshutwr_check(void) {
    ssize_t r = send(sock, "x", 1, MSG_NOSIGNAL);
    if (r != -1 || errno != EPIPE) { FAIL("udp shut for writing: send %zd errno %d, want EPIPE", r, errno); return 1; }
    return 0;
}

static void setup_md5(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct tcp_md5sig m;
    memset(&m, 0, sizeof m);
    memcpy(&m.tcpm_addr, &a, sizeof a);
    m.tcpm_keylen = 6;
    memcpy(m.tcpm_key, "secret", 6);
    sock = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(sock, (void *)&a, sizeof a) || listen(sock, 4)) _exit(1);
    if (setsockopt(sock, IPPROTO_TCP, TCP_MD5SIG, &m, sizeof m)) { FAIL("TCP_MD5SIG %d", errno); _exit(1); }
}

/* include/uapi/linux/tcp.h (6.7) */
struct ao_add { struct sockaddr_storage addr; char alg_name[64]; int ifindex;
    unsigned set_current:1, set_rnext:1, reserved:30; unsigned short reserved2; unsigned char prefix, sndid, rcvid, maclen, keyflags, keylen;
    unsigned char key[80]; } __attribute__((aligned(8)));

static void setup_ao(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct ao_add k;
    memset(&k, 0, sizeof k);
    memcpy(&k.addr, &a, sizeof a);
    strcpy(k.alg_name, "hmac(sha1)");
    k.prefix = 32; k.sndid = 1; k.rcvid = 1; k.keylen = 6;
    memcpy(k.key, "secret", 6);
    sock = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(sock, (void *)&a, sizeof a) || listen(sock, 4)) _exit(1);
    if (setsockopt(sock, IPPROTO_TCP, 38 /* TCP_AO_ADD_KEY */, &k, sizeof k)) { report("skip TCP-AO %d", errno); }
}

static int tmpx, tmpl;
static char link_path[4200];

static void setup_tmpexcl(void) {
    for (int i = 0; i < (int)sizeof pat; i++) pat[i] = 'a' + (int)(mix(i) % 26);
    tmpx = open(dir, O_TMPFILE | O_EXCL | O_RDWR, 0600);
    tmpl = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (tmpx < 0 || tmpl < 0 || write(tmpx, pat, sizeof pat) != (ssize_t)sizeof pat ||
        write(tmpl, pat, sizeof pat) != (ssize_t)sizeof pat) _exit(1);
    snprintf(link_path, sizeof link_path, "%s/linked", dir);
}

static int tmpexcl_check(void) {
    char proc[64], got[sizeof pat];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", tmpx);
    if (!linkat(AT_FDCWD, proc, AT_FDCWD, link_path, AT_SYMLINK_FOLLOW)) {
        unlink(link_path);
        FAIL("the O_EXCL file could be linked");
        return 1;
    }
    if (errno != ENOENT) { FAIL("linkat errno %d, want ENOENT", errno); return 1; }
    if (pread(tmpx, got, sizeof got, 0) != (ssize_t)sizeof got || memcmp(got, pat, sizeof pat) ||
        pread(tmpl, got, sizeof got, 0) != (ssize_t)sizeof got || memcmp(got, pat, sizeof pat)) { FAIL("bytes"); return 1; }
    return 0;
}

/* an option set on fd and the bytes read back right after */
struct opt { int fd, level, name, len; const char *what; unsigned char want[64]; };
static struct opt opts[64];
static int nopts;

static void setopt(int s, int level, int name, const char *what, const void *v, int len) {
    struct opt *o = &opts[nopts];
    if (setsockopt(s, level, name, v, len)) { report("skip %s %d", what, errno); return; }
    socklen_t l = sizeof o->want;
    memset(o->want, 0, sizeof o->want);
    if (getsockopt(s, level, name, o->want, &l)) { report("skip %s get %d", what, errno); return; }
    o->fd = s; o->level = level; o->name = name; o->len = l; o->what = what;
    nopts++;
}
static void seti(int s, int level, int name, const char *what, int v) { setopt(s, level, name, what, &v, sizeof v); }

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

static void setup_packetopts(void) {
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex("lo")};
    sock = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (sock < 0 || bind(sock, (void *)&a, sizeof a)) { FAIL("packet socket %d", errno); _exit(1); }
    seti(sock, SOL_PACKET, PACKET_AUXDATA, "PACKET_AUXDATA", 1);
    seti(sock, SOL_PACKET, PACKET_ORIGDEV, "PACKET_ORIGDEV", 1);
    seti(sock, SOL_PACKET, PACKET_VERSION, "PACKET_VERSION", TPACKET_V2);
    seti(sock, SOL_PACKET, PACKET_RESERVE, "PACKET_RESERVE", 64);
    seti(sock, SOL_PACKET, PACKET_LOSS, "PACKET_LOSS", 1);
    seti(sock, SOL_PACKET, PACKET_TIMESTAMP, "PACKET_TIMESTAMP", SOF_TIMESTAMPING_RAW_HARDWARE);
    seti(sock, SOL_PACKET, PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS", 1);
    seti(sock, SOL_PACKET, PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING", 1);
    seti(sock, SOL_PACKET, PACKET_VNET_HDR, "PACKET_VNET_HDR", 0);
    seti(sock, SOL_PACKET, PACKET_FANOUT, "PACKET_FANOUT", (getpid() & 0xffff) | (PACKET_FANOUT_HASH << 16));
}

static void setup_packetmr(int ring) {
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex("lo")};
    sock = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (sock < 0 || bind(sock, (void *)&a, sizeof a)) { FAIL("packet socket %d", errno); _exit(1); }
    if (ring) {
        struct tpacket_req r = {.tp_block_size = 4096, .tp_block_nr = 2, .tp_frame_size = 2048, .tp_frame_nr = 4};
        if (setsockopt(sock, SOL_PACKET, PACKET_RX_RING, &r, sizeof r)) { FAIL("PACKET_RX_RING %d", errno); _exit(1); }
        return;
    }
    struct packet_mreq m = {.mr_ifindex = a.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
    if (setsockopt(sock, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m)) { FAIL("PACKET_ADD_MEMBERSHIP %d", errno); _exit(1); }
}

static void setup_netlinkopts(void) {
    struct sockaddr_nl a = {.nl_family = AF_NETLINK};
    sock = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    if (sock < 0 || bind(sock, (void *)&a, sizeof a)) { FAIL("netlink %d", errno); _exit(1); }
    seti(sock, SOL_NETLINK, NETLINK_PKTINFO, "NETLINK_PKTINFO", 1);
    seti(sock, SOL_NETLINK, NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR", 1);
    seti(sock, SOL_NETLINK, NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS", 1);
    seti(sock, SOL_NETLINK, NETLINK_CAP_ACK, "NETLINK_CAP_ACK", 1);
    seti(sock, SOL_NETLINK, NETLINK_EXT_ACK, "NETLINK_EXT_ACK", 1);
    seti(sock, SOL_NETLINK, NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK", 1);
}

static void setup_nldump(void) {
    struct sockaddr_nl a = {.nl_family = AF_NETLINK};
    struct { struct nlmsghdr h; unsigned char g[16]; } req;
    sock = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    if (sock < 0 || bind(sock, (void *)&a, sizeof a)) { FAIL("netlink %d", errno); _exit(1); }
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = 18;  /* RTM_GETLINK */
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 7;
    req.g[0] = AF_UNSPEC;
    if (send(sock, &req, sizeof req, 0) != sizeof req) { FAIL("netlink send %d", errno); _exit(1); }
    nap(50);
}

static int nldump_check(void) {
    char b[64];
    ssize_t r = recv(sock, b, sizeof b, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
    if (r <= 0) { FAIL("the dump's replies are gone: %zd errno %d", r, errno); return 1; }
    return 0;
}

static int sp[2];

static void setup_seqrights(void) {
    int p[2];
    char one = 'p';
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) || pipe(p) || write(p[1], &one, 1) != 1) _exit(1);
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {"second", 6};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[0], sizeof(int));
    if (send(sp[0], "first", 5, 0) != 5 || sendmsg(sp[0], &m, 0) != 6) { FAIL("seqpacket send %d", errno); _exit(1); }
    close(p[0]); close(p[1]);
}

static int seqrights_check(void) {
    char b[16] = {0};
    int peek = 0;
    setsockopt(sp[1], SOL_SOCKET, SO_PEEK_OFF, &peek, sizeof peek);
    ssize_t r = recv(sp[1], b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
    if (r != 5 || memcmp(b, "first", 5)) { FAIL("first message: %zd '%s'", r, b); return 1; }
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {b, sizeof b};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    memset(b, 0, sizeof b);
    r = recvmsg(sp[1], &m, MSG_PEEK | MSG_DONTWAIT);  /* (the peek offset moved past "first") */
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (r != 6 || memcmp(b, "second", 6) || !c || c->cmsg_type != SCM_RIGHTS) { FAIL("second message: %zd '%s' %s", r, b, c ? "cmsg" : "no fd"); return 1; }
    int fd2;
    memcpy(&fd2, CMSG_DATA(c), sizeof fd2);
    char got = 0;
    int ok = read(fd2, &got, 0) == 0;  /* (the byte stays for the next round: FIONREAD) */
    int n = 0;
    ioctl(fd2, FIONREAD, &n);
    close(fd2);
    peek = -1;
    setsockopt(sp[1], SOL_SOCKET, SO_PEEK_OFF, &peek, sizeof peek);
    if (!ok || n != 1) { FAIL("the pipe in flight holds %d bytes", n); return 1; }
    return 0;
}

static void setup_unixoob(void) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || send(sp[0], "ab", 2, 0) != 2 || send(sp[0], "X", 1, MSG_OOB) != 1 ||
        send(sp[0], "cd", 2, 0) != 2) { FAIL("unix oob %d", errno); _exit(1); }
}

static void setup_tcpoob(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    sp[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (void *)&a, &l) ||
        connect(sp[0], (void *)&a, l) || (sp[1] = accept(ls, NULL, NULL)) < 0) { FAIL("tcp %d", errno); _exit(1); }
    close(ls);
    if (send(sp[0], "ab", 2, 0) != 2 || send(sp[0], "X", 1, MSG_OOB) != 1 || send(sp[0], "cd", 2, 0) != 2) _exit(1);
    nap(50);
}

static int unixoob_check(void) {
    char c = 0;
    ssize_t r = recv(sp[1], &c, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT);
    if (r != 1 || c != 'X') { FAIL("urgent byte: %zd errno %d", r, errno); return 1; }
    return 0;
}

static socklen_t abstract(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "cryo-s9h2-%d-%s", getpid(), name);
    return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a->sun_path + 1);
}

static struct sockaddr_un from;
static socklen_t from_len;

static int cred_mode;

static void setup_dgramauto(int keep) {
    struct sockaddr_un a;
    socklen_t al = abstract(&a, "rx");
    sa_family_t fam = AF_UNIX;
    int one = 1;
    sock = socket(AF_UNIX, SOCK_DGRAM, 0);
    int tx = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(sock, (void *)&a, al)) _exit(1);
    if (cred_mode) {  /* (autobound at its first send, as SO_PASSCRED makes it) */
        if (setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) ||
            setsockopt(tx, SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) _exit(1);
    } else if (bind(tx, (void *)&fam, sizeof fam)) _exit(1);  /* autobind */
    if (cred_mode && (sendto(tx, "one", 3, 0, (void *)&a, al) != 3 || sendto(tx, "two", 3, 0, (void *)&a, al) != 3)) _exit(1);
    from_len = sizeof from;
    getsockname(tx, (void *)&from, &from_len);
    if (!cred_mode && (sendto(tx, "one", 3, 0, (void *)&a, al) != 3 || sendto(tx, "two", 3, 0, (void *)&a, al) != 3)) _exit(1);
    if (!keep) close(tx);
}

static int dgramauto_check(void) {
    const char *want[] = {"one", "two"};
    int peek = 0;
    setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &peek, sizeof peek);
    for (int i = 0; i < 2; i++) {
        struct sockaddr_un n;
        char b[8] = {0}, cbuf[CMSG_SPACE(sizeof(struct ucred))];
        struct iovec iov = {b, sizeof b};
        struct msghdr m = {.msg_name = &n, .msg_namelen = sizeof n, .msg_iov = &iov, .msg_iovlen = 1,
                           .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        memset(&n, 0, sizeof n);
        ssize_t r = recvmsg(sock, &m, MSG_PEEK | MSG_DONTWAIT);
        if (r != 3 || memcmp(b, want[i], 3)) { FAIL("datagram %d: %zd '%s'", i, r, b); return 1; }
        if (m.msg_namelen != from_len || memcmp(&n, &from, from_len)) { FAIL("datagram %d from %d bytes, want the autobound %d", i, m.msg_namelen, from_len); return 1; }
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (cred_mode) {
            struct ucred u;
            if (!c || c->cmsg_type != SCM_CREDENTIALS) { FAIL("datagram %d: no credentials", i); return 1; }
            memcpy(&u, CMSG_DATA(c), sizeof u);
            if (u.pid != getpid() || u.uid != getuid() || u.gid != getgid()) { FAIL("datagram %d from pid %d", i, u.pid); return 1; }
        }
    }
    peek = -1;
    setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &peek, sizeof peek);
    return 0;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    mode = argv[2];
    dir = argv[3];
    int (*check)(void) = NULL;
    if (!strcmp(mode, "file")) { setup_file(); check = file_check; }
    else if (!strcmp(mode, "udpshutwr")) { setup_udpshutwr(); check = udpshutwr_check; }
    else if (!strcmp(mode, "md5")) setup_md5();
    else if (!strcmp(mode, "ao")) setup_ao();
    else if (!strcmp(mode, "dgramauto")) { setup_dgramauto(0); check = dgramauto_check; }
    else if (!strcmp(mode, "dgramautoheld")) { setup_dgramauto(1); check = dgramauto_check; }
    else if (!strcmp(mode, "dgramautocred")) { cred_mode = 1; setup_dgramauto(0); check = dgramauto_check; }
    else if (!strcmp(mode, "packetopts")) { setup_packetopts(); check = check_opts; }
    else if (!strcmp(mode, "packetmr")) setup_packetmr(0);
    else if (!strcmp(mode, "packetring")) setup_packetmr(1);
    else if (!strcmp(mode, "netlinkopts")) { setup_netlinkopts(); check = check_opts; }
    else if (!strcmp(mode, "nldump")) { setup_nldump(); check = nldump_check; }
    else if (!strcmp(mode, "seqrights")) { setup_seqrights(); check = seqrights_check; }
    else if (!strcmp(mode, "tcpoob")) { setup_tcpoob(); check = unixoob_check; }
    else if (!strcmp(mode, "unixoob")) { setup_unixoob(); check = unixoob_check; }
    else if (!strcmp(mode, "tmpexcl")) { setup_tmpexcl(); check = tmpexcl_check; }
    else _exit(2);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        if (!check || !check()) report("ok %ld", round);
        nap(100);
    }
}
