/* More fd kinds (issue 9, "Files"), each checked by the program itself every round
 * ("ok N") and, once the file "go" appears in the scratch directory (the test makes it
 * after the restart), a one-shot check that reports "done WHAT" or "FAIL ...".
 * argv[2] is the mode, argv[3] the scratch directory (the cwd).
 *   pidfd    a pidfd of a child waiting on a pipe and one of itself (PIDFD_NONBLOCK),
 *            both also held by a second child (one description each); go: the first
 *            child is told to exit 7: its pidfd polls readable, waitid(P_PIDFD) says 7
 *   proc     /proc/self/status (read from offset 5), the directory /proc/self and
 *            /proc/CHILD/stat: they name the restored processes (its pid; the child's
 *            parent is this process)
 *   link     an O_PATH|O_NOFOLLOW fd on a symbolic link (a link still, same target) and
 *            an O_PATH fd on a FIFO (the FIFO, O_PATH: neither end)
 *   inotify  watches on "." (IN_CREATE, wd 1) and on "f" (IN_MODIFY, wd 3; wd 2 was
 *            removed); go: "new" created and "f" written by the test: both seen, by wd
 *   fanotify an inode mark on "." (FAN_CLOSE_WRITE, FAN_EVENT_ON_CHILD) and an ignored
 *            mask on "quiet"; go: the test writes "quiet" then "f2": the event of f2
 *            comes with an fd on it, none of quiet
 *   epoll    an epoll watching a pipe through an fd since closed (a duplicate keeps the
 *            pipe; an eventfd took the fd number) and an eventfd: every round a byte
 *            written to the pipe is reported with the data it was added with
 *   hugememfd a hugetlb memfd held by an fd only (no mapping): hugetlbfs, same bytes
 *   execveat a memfd holding a copy of this program; go: a child execveat()s it and
 *            reports "exec ok" */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define HUGE (2L * 1024 * 1024)
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif

static int exists(const char *p) { struct stat st; return stat(p, &st) == 0; }

static int pidfd_open(pid_t pid, unsigned flags) { return syscall(SYS_pidfd_open, pid, flags); }

static int has(const char *buf, const char *want) { return strstr(buf, want) != NULL; }

static int read_at0(int fd, char *buf, size_t n) {
    if (lseek(fd, 0, SEEK_SET) < 0) return -1;
    ssize_t got = read(fd, buf, n - 1);
    if (got < 0) return -1;
    buf[got] = 0;
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[2], "exec-child")) {  /* run by execveat */
        open_report(argc, argv);
        report("exec ok");
        _exit(0);
    }
    open_report(argc, argv);
    if (argc < 4 || chdir(argv[3])) _exit(2);
    const char *mode = argv[2];
    int a = -1, b = -1, c = -1, p[2] = {-1, -1};
    pid_t kid = -1;
    unsigned char *hbuf = NULL;
    if (!strcmp(mode, "pidfd") || !strcmp(mode, "proc")) {
        if (pipe(p)) _exit(3);
        kid = fork();
        if (kid == 0) {
            char x;
            close(p[1]);
            if (read(p[0], &x, 1) == 1) _exit(7);
            for (;;) pause();  /* (a pidfd's child waits for "x"; proc's forever) */
        }
        close(p[0]);
        if (!strcmp(mode, "pidfd")) {
            a = pidfd_open(kid, 0);
            b = pidfd_open(getpid(), PIDFD_NONBLOCK);
            if (fork() == 0) {  /* a second child holding both pidfds (shared with us) */
                close(p[1]);
                for (;;) pause();
            }
        } else {
            char path[64];
            a = open("/proc/self/status", O_RDONLY);
            b = open("/proc/self", O_RDONLY | O_DIRECTORY);
            snprintf(path, sizeof path, "/proc/%d/stat", kid);
            c = open(path, O_RDONLY);
            char skip[16];
            if (read(a, skip, 5) != 5) _exit(3);  /* an offset in it */
        }
    } else if (!strcmp(mode, "link")) {
        if (symlink("some/where", "link") || mkfifo("fifo", 0600)) _exit(3);
        a = open("link", O_PATH | O_NOFOLLOW);
        b = open("fifo", O_PATH);
    } else if (!strcmp(mode, "inotify")) {
        int f = open("f", O_CREAT | O_WRONLY, 0600);
        close(f);
        a = inotify_init1(IN_NONBLOCK);
        if (inotify_add_watch(a, ".", IN_CREATE) != 1) _exit(3);
        int w2 = inotify_add_watch(a, "/", IN_ATTRIB);
        if (w2 != 2 || inotify_rm_watch(a, w2)) _exit(3);
        if (inotify_add_watch(a, "f", IN_MODIFY) != 3) _exit(3);
        char ev[4096];
        while (read(a, ev, sizeof ev) > 0) {}  /* wd 2's IN_IGNORED */
    } else if (!strcmp(mode, "fanotify")) {
        int q = open("quiet", O_CREAT | O_WRONLY, 0600);
        close(q);
        a = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
        if (a < 0 || fanotify_mark(a, FAN_MARK_ADD, FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD,
                                   AT_FDCWD, ".")) _exit(3);
        if (fanotify_mark(a, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                          FAN_CLOSE_WRITE, AT_FDCWD, "quiet")) _exit(3);
    } else if (!strcmp(mode, "epoll")) {
        int q[2];
        a = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
        if (pipe(q) || epoll_ctl(a, EPOLL_CTL_ADD, q[0], &ev)) _exit(3);
        b = dup(q[0]);
        c = q[1];
        close(q[0]);
        int e = eventfd(0, EFD_NONBLOCK);  /* takes q[0]'s number */
        if (e != q[0]) _exit(5);
        ev.data.u64 = 9;
        if (epoll_ctl(a, EPOLL_CTL_ADD, e, &ev)) _exit(3);
        p[0] = e;
    } else if (!strcmp(mode, "hugememfd")) {
        a = memfd_create("huge", MFD_HUGETLB | MFD_ALLOW_SEALING);
        if (a < 0 || ftruncate(a, 2 * HUGE)) _exit(3);
        hbuf = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
        if (hbuf == MAP_FAILED) _exit(4);
        for (long i = 0; i < HUGE; i += 4096) hbuf[i] = (unsigned char)mix(i);
        munmap(hbuf, 2 * HUGE);
        lseek(a, 12345, SEEK_SET);
    } else if (!strcmp(mode, "execveat")) {
        a = memfd_create("prog", 0);  /* (not MFD_EXEC: it may be run as it is) */
        int self = open("/proc/self/exe", O_RDONLY);
        char buf[65536];
        ssize_t n;
        while ((n = read(self, buf, sizeof buf)) > 0)
            if (write(a, buf, n) != n) _exit(3);
        close(self);
    }
    if (a < 0) _exit(4);
    report("ready %d", getpid());
    int done = 0, seen_create = 0, seen_modify = 0;
    for (long round = 0;; round++) {
        int bad = 0;
        int go = exists("go");
        char buf[4096];
        struct stat st;
        if (!strcmp(mode, "pidfd")) {
            struct pollfd pf = {a, POLLIN, 0};
            if (!done && poll(&pf, 1, 0) != 0) { FAIL("pidfd readable before the child exits"); bad = 1; }
            if (syscall(SYS_pidfd_send_signal, b, 0, NULL, 0)) { FAIL("own pidfd"); bad = 1; }
            snprintf(buf, sizeof buf, "/proc/self/fdinfo/%d", b);
            int fi = open(buf, O_RDONLY);
            char info[512] = {0}, want[32];
            if (fi < 0 || read(fi, info, sizeof info - 1) < 0) { FAIL("fdinfo"); bad = 1; }
            if (fi >= 0) close(fi);
            snprintf(want, sizeof want, "Pid:\t%d\n", getpid());
            if (!has(info, want)) { FAIL("own pidfd names %s", info); bad = 1; }
            if (!(fcntl(b, F_GETFL) & O_NONBLOCK)) { FAIL("PIDFD_NONBLOCK lost"); bad = 1; }
            if (go && !done) {
                done = 1;
                if (write(p[1], "x", 1) != 1) FAIL("tell");
                else if (poll(&pf, 1, 5000) != 1 || !(pf.revents & POLLIN)) FAIL("pidfd not readable");
                else {
                    siginfo_t si = {0};
                    if (waitid(P_PIDFD, a, &si, WEXITED) || si.si_pid != kid || si.si_status != 7)
                        FAIL("waitid %d %d", si.si_pid, si.si_status);
                    else report("done pidfd");
                }
            }
        } else if (!strcmp(mode, "proc")) {
            char want[64];
            snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
            if (lseek(a, 0, SEEK_CUR) != 5) { FAIL("offset %ld", (long)lseek(a, 0, SEEK_CUR)); bad = 1; }
            if (read_at0(a, buf, sizeof buf) || !has(buf, want)) { FAIL("status of another"); bad = 1; }
            int cm = openat(b, "stat", O_RDONLY);
            snprintf(want, sizeof want, "%d (", getpid());
            if (cm < 0 || read_at0(cm, buf, sizeof buf) || strncmp(buf, want, strlen(want))) { FAIL("dir of another"); bad = 1; }
            if (cm >= 0) close(cm);
            /* (its pid is the child's as the kernel sees it; its parent is this process) */
            char state;
            int ppid = 0;
            char *rp = read_at0(c, buf, sizeof buf) ? NULL : strrchr(buf, ')');
            if (!rp || sscanf(rp + 1, " %c %d", &state, &ppid) != 2 || ppid != getpid()) { FAIL("child stat: %.30s", buf); bad = 1; }
            lseek(a, 5, SEEK_SET);
        } else if (!strcmp(mode, "link")) {
            char l[64] = {0};
            if (fstatat(a, "", &st, AT_EMPTY_PATH) || !S_ISLNK(st.st_mode)) { FAIL("not a link"); bad = 1; }
            if (readlinkat(a, "", l, sizeof l - 1) != 10 || strcmp(l, "some/where")) { FAIL("readlink %s", l); bad = 1; }
            if (!(fcntl(a, F_GETFL) & O_PATH)) { FAIL("not O_PATH"); bad = 1; }
            if (fstat(b, &st) || !S_ISFIFO(st.st_mode) || !(fcntl(b, F_GETFL) & O_PATH)) { FAIL("O_PATH fifo"); bad = 1; }
        } else if (!strcmp(mode, "inotify")) {
            ssize_t n;
            while ((n = read(a, buf, sizeof buf)) > 0) {
                for (char *q = buf; q < buf + n;) {
                    struct inotify_event *e = (struct inotify_event *)q;
                    if (e->wd == 1 && (e->mask & IN_CREATE) && e->len && !strcmp(e->name, "new")) seen_create = 1;
                    else if (e->wd == 3 && (e->mask & IN_MODIFY)) seen_modify = 1;
                    else if (!(e->wd == 1 && e->len && !strcmp(e->name, "go"))) { FAIL("event wd %d mask %x", e->wd, e->mask); bad = 1; }
                    q += sizeof *e + e->len;
                }
            }
            if (seen_create && seen_modify && !done) { done = 1; report("done inotify"); }
        } else if (!strcmp(mode, "fanotify")) {
            ssize_t n;
            while ((n = read(a, buf, sizeof buf)) > 0) {
                struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
                for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
                    char link[64], where[4096] = {0};
                    snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
                    if (m->fd >= 0 && readlink(link, where, sizeof where - 1) > 0) {
                        size_t l = strlen(where);
                        if ((m->mask & FAN_CLOSE_WRITE) && l > 3 && !strcmp(where + l - 3, "/f2") && !done) { done = 1; report("done fanotify"); }
                        if (l > 6 && !strcmp(where + l - 6, "/quiet")) { FAIL("an event of the ignored file"); bad = 1; }
                    }
                    if (m->fd >= 0) close(m->fd);
                }
            }
        } else if (!strcmp(mode, "epoll")) {
            struct epoll_event evs[4];
            if (write(c, "z", 1) != 1) { FAIL("write"); bad = 1; }
            int n = epoll_wait(a, evs, 4, 1000);
            if (n != 1 || evs[0].data.u64 != 7) { FAIL("epoll: %d events, data %llu", n, n > 0 ? (unsigned long long)evs[0].data.u64 : 0ULL); bad = 1; }
            char z;
            if (read(b, &z, 1) != 1 || z != 'z') { FAIL("read"); bad = 1; }
            eventfd_write(p[0], 1);
            n = epoll_wait(a, evs, 4, 1000);
            if (n != 1 || evs[0].data.u64 != 9) { FAIL("eventfd: %d events", n); bad = 1; }
            eventfd_t v;
            eventfd_read(p[0], &v);
        } else if (!strcmp(mode, "hugememfd")) {
            struct statfs sf;
            if (fstatfs(a, &sf) || sf.f_type != 0x958458f6) { FAIL("not hugetlbfs: %lx", (long)sf.f_type); bad = 1; }
            if (fstat(a, &st) || st.st_size != 2 * HUGE) { FAIL("size"); bad = 1; }
            if (lseek(a, 0, SEEK_CUR) != 12345) { FAIL("offset"); bad = 1; }
            unsigned char *m = mmap(NULL, 2 * HUGE, PROT_READ, MAP_SHARED, a, 0);
            if (m == MAP_FAILED) { FAIL("map"); bad = 1; }
            else {
                for (long i = 0; i < HUGE; i += 4096)
                    if (m[i] != (unsigned char)mix(i)) { FAIL("data at %ld", i); bad = 1; break; }
                munmap(m, 2 * HUGE);
            }
        } else if (!strcmp(mode, "execveat")) {
            if (go && !done) {
                done = 1;
                pid_t k = fork();
                if (k == 0) {
                    char *args[] = {"prog", argv[1], "exec-child", ".", NULL};
                    char *env[] = {NULL};
                    syscall(SYS_execveat, a, "", args, env, AT_EMPTY_PATH);
                    report("FAIL execveat: %s", strerror(errno));
                    _exit(9);
                }
                int status;
                if (waitpid(k, &status, 0) != k || !WIFEXITED(status) || WEXITSTATUS(status))
                    FAIL("execveat child: %x", status);
                else report("done execveat");
            }
        }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}
