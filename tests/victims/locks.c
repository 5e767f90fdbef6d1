/* File locks and signal owners survive (issue 9, "Files").  argv[2] is the mode,
 * argv[3] a scratch directory.
 *   held    POSIX record locks (F_SETLK, a write and a read range), an OFD lock, a shared
 *           and an exclusive flock, a read and a write lease: each checked every round in the
 *           kernel's own view (/proc/self/fdinfo "lock:" lines, F_GETLEASE)
 *   tree    a parent and its child each hold a POSIX lock on the same file, through
 *           one shared description (their own, each): checked by each in fdinfo
 *   mapped, mapped-ofd  an flock, OFD locks held only through a mapping (the fd closed)
 *   owner   a pipe with O_ASYNC, F_SETOWN to itself and F_SETSIG SIGRTMIN+1: each round
 *           a write to it must raise that signal with si_fd = the read end; a file with
 *           F_SETOWN_EX to its own thread */
#include "common.h"
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>

static int has_lock(int fd, const char *kind, const char *mode, int pid, const char *range) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        char k[16], st[16], m[16], where[64], a[32], b[32];
        int p;
        if (sscanf(line, "lock:\t%*d: %15s %15s %15s %d %63s %31s %31s", k, st, m, &p, where, a, b) != 7)
            continue;
        char r[80];
        snprintf(r, sizeof r, "%s %s", a, b);
        if (!strcmp(k, kind) && !strcmp(m, mode) && (pid == 0 || p == pid) && !strcmp(r, range))
            found = 1;
    }
    fclose(f);
    return found;
}

static int posix_lock(int fd, short type, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, F_SETLK, &fl);
}

static int ofd_lock(int fd, short type, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static int make(const char *dir, const char *name, int flags) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, 8192)) _exit(4);
    close(fd);
    return open(path, flags);
}

static volatile sig_atomic_t got, got_fd, got_sig;

static void on_io(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got++;
    got_fd = si->si_fd;
    got_sig = sig;
}

static void held(const char *dir) {
    int fd_a = make(dir, "a.dat", O_RDWR);
    int fd_b = open("a.dat", O_RDWR);
    int fd_c = make(dir, "b.dat", O_RDONLY);
    int fd_x = make(dir, "c.dat", O_RDWR);
    int fd_l = make(dir, "l.dat", O_RDONLY);
    int fd_wl = make(dir, "wl.dat", O_RDWR);
    if (posix_lock(fd_a, F_WRLCK, 5, 10) || posix_lock(fd_a, F_RDLCK, 1000, 0)) _exit(5);
    if (ofd_lock(fd_b, F_WRLCK, 200, 10)) _exit(6);
    if (flock(fd_c, LOCK_SH) || flock(fd_x, LOCK_EX)) _exit(7);
    if (fcntl(fd_l, F_SETLEASE, F_RDLCK) || fcntl(fd_wl, F_SETLEASE, F_WRLCK)) _exit(8);
    int me = getpid();
    report("ready %d", me);
    for (long round = 0;; round++) {
        int bad = 0;
        if (!has_lock(fd_a, "POSIX", "WRITE", me, "5 14")) { FAIL("posix write lock"); bad = 1; }
        if (!has_lock(fd_a, "POSIX", "READ", me, "1000 EOF")) { FAIL("posix read lock"); bad = 1; }
        if (!has_lock(fd_b, "OFDLCK", "WRITE", -1, "200 209")) { FAIL("ofd lock"); bad = 1; }
        if (!has_lock(fd_c, "FLOCK", "READ", 0, "0 EOF")) { FAIL("flock shared"); bad = 1; }
        if (!has_lock(fd_x, "FLOCK", "WRITE", 0, "0 EOF")) { FAIL("flock exclusive"); bad = 1; }
        if (fcntl(fd_l, F_GETLEASE) != F_RDLCK) { FAIL("lease %d", fcntl(fd_l, F_GETLEASE)); bad = 1; }
        if (!has_lock(fd_l, "LEASE", "READ", me, "0 EOF")) { FAIL("lease owner"); bad = 1; }
        if (fcntl(fd_wl, F_GETLEASE) != F_WRLCK) { FAIL("write lease %d", fcntl(fd_wl, F_GETLEASE)); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void tree(const char *dir) {
    int fd = make(dir, "t.dat", O_RDWR);
    if (posix_lock(fd, F_WRLCK, 0, 10)) _exit(5);
    pid_t kid = fork();
    if (kid == 0) {
        if (posix_lock(fd, F_WRLCK, 10, 10)) _exit(6);
        for (;;) {
            if (!has_lock(fd, "POSIX", "WRITE", getpid(), "10 19")) report("FAIL child lock");
            nap(20);
        }
    }
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        if (!has_lock(fd, "POSIX", "WRITE", getpid(), "0 9")) { FAIL("parent lock"); bad = 1; }
        if (has_lock(fd, "POSIX", "WRITE", 0, "10 19")) { FAIL("child's lock seen as ours"); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

/* Whether another description of `name` sees a write lock on byte `at`: a new fd's
 * flock conflicts with an flock of ours (flock), F_OFD_GETLK reports an OFD write lock
 * (ofd).  (Regular files only: a /proc file open at the freeze has no offset to keep.) */
static int locked(const char *name, int ofd, off_t at) {
    int fd = open(name, O_RDWR);
    if (fd < 0) return 0;
    int yes;
    if (ofd) {
        struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
        yes = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_WRLCK && fl.l_pid == -1;
    } else {
        yes = flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK;
    }
    close(fd);
    return yes;
}

/* Locks held only through a mapping (the fd closed, as a JVM holds them):
 *   mapped      an exclusive flock on m.dat, mapped shared and written
 *   mapped-ofd  an OFD write lock on bytes 0-99 of m.dat, mapped shared and written; an OFD
 *               write lock on the whole of p.dat, mapped private and read only (its
 *               description was opened O_RDWR: the lock needs it)
 * Each round: another description of each file sees the lock, and a write through the
 * shared mapping is read back through a new fd (the test checks /proc/locks). */
static void mapped(const char *dir, int ofd) {
    int fd = make(dir, "m.dat", O_RDWR);
    int fdp = make(dir, "p.dat", O_RDWR);
    if (ofd ? ofd_lock(fd, F_WRLCK, 0, 100) || ofd_lock(fdp, F_WRLCK, 0, 0) : flock(fd, LOCK_EX))
        _exit(5);
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *q = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fdp, 0);
    if (p == MAP_FAILED || q == MAP_FAILED) _exit(6);
    close(fd);
    close(fdp);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        if (!locked("m.dat", ofd, 50)) { FAIL("lock of m.dat"); bad = 1; }
        if (ofd && !locked("p.dat", 1, 5000)) { FAIL("lock of p.dat"); bad = 1; }
        snprintf(p, 64, "round %ld", round);
        char back[64] = {0};
        int rd = open("m.dat", O_RDONLY);
        if (rd < 0 || pread(rd, back, sizeof back - 1, 0) < 0 || strcmp(back, p)) {
            FAIL("write through the mapping not in the file: %s", back); bad = 1;
        }
        if (rd >= 0) close(rd);
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void owner(const char *dir) {
    int p[2];
    if (pipe(p)) _exit(5);
    struct sigaction sa = {.sa_sigaction = on_io, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(SIGRTMIN + 1, &sa, NULL);
    if (fcntl(p[0], F_SETOWN, getpid()) || fcntl(p[0], F_SETSIG, SIGRTMIN + 1)) _exit(6);
    if (fcntl(p[0], F_SETFL, O_ASYNC | O_NONBLOCK)) _exit(7);
    int fd_f = make(dir, "o.dat", O_RDWR);
    struct f_owner_ex ox = {F_OWNER_TID, gettid()};
    if (fcntl(fd_f, F_SETOWN_EX, &ox) || fcntl(fd_f, F_SETSIG, SIGUSR2)) _exit(8);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        if (fcntl(p[0], F_GETOWN) != getpid()) { FAIL("pipe owner %d", fcntl(p[0], F_GETOWN)); bad = 1; }
        if (fcntl(p[0], F_GETSIG) != SIGRTMIN + 1) { FAIL("pipe sig %d", fcntl(p[0], F_GETSIG)); bad = 1; }
        if (!(fcntl(p[0], F_GETFL) & O_ASYNC)) { FAIL("O_ASYNC"); bad = 1; }
        struct f_owner_ex got_ox;
        if (fcntl(fd_f, F_GETOWN_EX, &got_ox) || got_ox.type != F_OWNER_TID || got_ox.pid != gettid()) {
            FAIL("file owner %d %d", got_ox.type, got_ox.pid); bad = 1;
        }
        if (fcntl(fd_f, F_GETSIG) != SIGUSR2) { FAIL("file sig"); bad = 1; }
        int before = got;
        if (write(p[1], "x", 1) != 1) { FAIL("write"); bad = 1; }
        for (int i = 0; i < 100 && got == before; i++) nap(1);
        char c;
        while (read(p[0], &c, 1) == 1) {}
        if (got == before) { FAIL("no SIGIO"); bad = 1; }
        else if (got_fd != p[0] || got_sig != SIGRTMIN + 1) { FAIL("si_fd %d sig %d", got_fd, got_sig); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4 || chdir(argv[3])) _exit(2);
    if (!strcmp(argv[2], "held")) held(argv[3]);
    if (!strcmp(argv[2], "mapped")) mapped(argv[3], 0);
    if (!strcmp(argv[2], "mapped-ofd")) mapped(argv[3], 1);
    if (!strcmp(argv[2], "tree")) tree(argv[3]);
    if (!strcmp(argv[2], "owner")) owner(argv[3]);
    return 2;
}
