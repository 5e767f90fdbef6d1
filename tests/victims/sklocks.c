/* Locks on files other than regular ones survive (issue 9), as the kernel shows them: an
 * flock on each end of a unix socket pair and on an unbound unix datagram socket, an OFD
 * lock on the pair's other end, an flock and a POSIX lock on a TCP socket, an flock on a
 * pipe and on a regular file.  Each round reads /proc/self/fdinfo of each fd: its lock
 * line must be there, of its kind and mode, and an flock must name this process (the
 * kernel shows the pid that took it).
 *
 *   sklocks OUT FILE */
#include "common.h"
#include <sys/file.h>
#include <sys/socket.h>
#include <netinet/in.h>

struct want { int fd; const char *kind, *mode; long start; const char *end; };

static int check(const struct want *w) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", w->fd);
    int fd = open(path, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n < 0) { FAIL("fdinfo %d: %d", w->fd, errno); return 1; }
    buf[n] = 0;
    char *at = strstr(buf, "lock:");
    if (!at) { FAIL("fd %d: no %s lock any more", w->fd, w->kind); return 1; }
    char kind[16], adv[16], mode[16], dev[64], end[32];
    int pid, num;
    long start;
    if (sscanf(at, "lock:\t%d: %15s %15s %15s %d %63s %ld %31s", &num, kind, adv, mode, &pid,
               dev, &start, end) != 8) {
        FAIL("fd %d: lock line %.60s", w->fd, at); return 1;
    }
    int want_pid = strcmp(w->kind, "OFDLCK") ? getpid() : -1;
    if (strcmp(kind, w->kind) || strcmp(mode, w->mode) || pid != want_pid ||
            start != w->start || strcmp(end, w->end)) {
        FAIL("fd %d: lock %s %s pid %d %ld-%s, want %s %s pid %d %ld-%s", w->fd, kind, mode,
             pid, start, end, w->kind, w->mode, want_pid, w->start, w->end);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    open_report(argc, argv);
    int sv[2], p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(p)) return 4;
    int dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    int file = open(argv[2], O_RDWR | O_CREAT, 0644);
    if (dg < 0 || tcp < 0 || file < 0) return 4;
    struct flock ofd = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    struct flock px = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 5, .l_len = 0};
    if (flock(sv[0], LOCK_EX) || fcntl(sv[1], F_OFD_SETLK, &ofd) || flock(dg, LOCK_SH) ||
            flock(tcp, LOCK_EX) || flock(p[0], LOCK_SH) || flock(file, LOCK_EX)) {
        FAIL("locks: %d", errno); return 5;
    }
    /* a POSIX lock on another TCP socket (its fdinfo shows the first lock only) */
    int tcp2 = socket(AF_INET, SOCK_STREAM, 0);
    if (tcp2 < 0 || fcntl(tcp2, F_SETLK, &px)) { FAIL("posix lock: %d", errno); return 5; }
    const struct want wants[] = {
        {sv[0], "FLOCK", "WRITE", 0, "EOF"}, {sv[1], "OFDLCK", "WRITE", 0, "9"},
        {dg, "FLOCK", "READ", 0, "EOF"}, {tcp, "FLOCK", "WRITE", 0, "EOF"},
        {tcp2, "POSIX", "READ", 5, "EOF"}, {p[0], "FLOCK", "READ", 0, "EOF"},
        {file, "FLOCK", "WRITE", 0, "EOF"}, {-1, NULL, NULL, 0, NULL},
    };
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        for (const struct want *w = wants; w->fd >= 0; w++) bad |= check(w);
        if (!bad) report("ok %ld", round);
        nap(100);
    }
}
