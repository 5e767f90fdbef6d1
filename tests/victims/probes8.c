/* Probes of session 8 (issue 9, h6): argv[2] names one piece of state; the program sets
 * it (in the main thread, a second thread, or child processes), reports "ready PID",
 * then checks it every round from inside ("ok N", or "FAIL what").  A child process
 * reports "child PID" once and "cok PID N" each good round of its own (one that reports
 * no rounds, as a zombie, is named by an "other PID" line).  argv[3] is a
 * scratch directory; argv[3]/go tells a mode to do its last step.  Built with
 * -lpthread.
 * Single process:
 *   sigign      SIGUSR2 and SIGRTMIN+4 blocked and ignored, SIGUSR2 pending for the
 *               process, SIGRTMIN+4 pending for the second thread only
 *   inotifyflags an inotify watch with IN_ONESHOT, one made with IN_MASK_ADD, one with
 *               IN_EXCL_UNLINK: fdinfo masks; after go a write gives one event, once
 *   fownpgrp    a pipe with O_ASYNC, F_SETSIG SIGRTMIN+6 and F_SETOWN_EX F_OWNER_PGRP:
 *               a write to it signals the process each round
 *   opathdir    an O_PATH fd on a directory used by openat each round
 *   sysfs       a sysfs file read to offset 5, the process's cgroup directory and its
 *               cgroup.procs open: offsets, inodes
 *   pdeath      PR_SET_PDEATHSIG SIGUSR2 in the main thread, SIGWINCH in the other,
 *               the parent outside the checkpoint
 *   highfd      fd 900 (a pipe) with RLIMIT_NOFILE lowered to (64, 1024) afterwards
 *   widowpipe   a pipe whose read end is closed with "zz" queued (write: EPIPE; after
 *               go "zz" read through /proc/self/fd), one whose write end is closed with
 *               "abc" queued (POLLIN|POLLHUP; after go "abc" then EOF)
 *   pipein      fd argv[4] is the read end of a pipe whose write end a process outside holds:
 *               each round no POLLHUP (a writer is there); what it writes is read
 *   fifoin      argv[3]/fifo opened for reading (O_NONBLOCK); once go exists, what is
 *               in it is read and reported ("fifo BYTES"), each round after
 *   inotifyquiet a file open read-write and mapped privately, watched (IN_OPEN, IN_ACCESS,
 *               IN_MODIFY, IN_ATTRIB, IN_CLOSE_*) by an inotify of the process: no one
 *               else touches it, so no event may come ("events N" where one does)
 *   epollflags  epoll watches with EPOLLRDHUP | EPOLLPRI | EPOLLWAKEUP and EPOLLOUT:
 *               fdinfo events of each
 *   rtorder     SIGRTMIN+2 blocked, queued with values 1, 2, 3 to the process and 4, 5
 *               to the second thread: after go the main thread takes 1, 2, 3 in order,
 *               then the thread 4, 5
 *   sleepstop   the second thread sleeps 1.5 s at a time in nanosleep (the test stops
 *               the process with SIGSTOP, checkpoints it stopped, continues the restored
 *               one): each sleep returns 0, never early ("slept N")
 * Trees (checkpointed with their children):
 *   shm3        shared anonymous memory of 4 pages in three processes: the parent maps
 *               all, a child pages 1-3 (page 0 unmapped), another has pages 2-3 moved
 *               (mremap): each its counter, each sees the others' advance
 *   vfork       the main thread vfork()ed a child that has not exec'd (it waits for go,
 *               then _exit(3)); the second thread reports the rounds
 *   ptracechild the parent PTRACE_SEIZEs its child, interrupts and resumes it each round
 *   dupflock    an flock on a description shared by the parent and its child (fork)
 *   ofdposix    the parent holds an OFD lock on bytes 0-9 of a file, its child a POSIX
 *               lock on bytes 20-29: each sees the other's (F_OFD_GETLK, F_GETLK)
 *   zombie      a child that exited 7, seen each round with waitid WNOWAIT, reaped
 *               after go
 *   subreaped   the parent a subreaper; its child forked a grandchild and exited: the
 *               grandchild's parent is the main process; after go it exits 5, reaped
 *   sessions    a child leads its own group, a grandchild its own session, a great-
 *               grandchild in that session: getpgrp/getsid of each
 *   pidfdzombie a pidfd of a child that exited 9: POLLIN each round, after go
 *               waitid(P_PIDFD) gives 9
 *   fownchild   a pipe with O_ASYNC whose signal owner (F_SETOWN, F_SETSIG SIGRTMIN+7)
 *               is the child: each write of the parent signals the child
 *   pipeeof     the parent holds only the read end of a pipe, its child only the write
 *               end (and writes "w" each round): after go the child exits, the parent
 *               sees POLLHUP and EOF ("eof")
 *   zombieleader (a subreaper) a child led its own process group, forked a grandchild
 *               into it and exited: the group's leader a zombie (waitid WNOWAIT each round), the
 *               grandchild still in that group; after go the zombie is reaped (4)
 *   sigchld     a SIGCHLD handler counting its calls; a child that exited (a zombie, not
 *               reaped): the count stays 1 ("sigchld N" each round it changes)
 *   sigchldstop a SIGCHLD handler (SA_SIGINFO) counting CLD_STOPPED; a child that stopped
 *               itself (SIGSTOP) once: the count stays 1
 *   uidchild    a child with uids 1000/1001/1002, gids 1003, groups {5} and a capability
 *               set of its own (kept with PR_SET_KEEPCAPS), the parent root */
#include "common.h"
#include <linux/capability.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>

static const char *mode, *dir;
static volatile int thread_ready, main_tid, other_tid;
static char path_a[4300], path_b[4200], go_path[4200];
static int fd_a = -1, fd_b = -1, fd_c = -1, ep = -1, wd1, wd2, wd3;
static pid_t kid = -1, kid2 = -1;
static int pipe_in = -1;
static volatile sig_atomic_t sigs;
static struct stat st_a, st_b;
static volatile long *shared;  /* a page shared by the tree, for pids and counters */
static char *shm_base;

static int go(void) { return !access(go_path, F_OK); }
static void on_sig(int s) { (void)s; sigs++; }

static int fdinfo_line(int fd, const char *key, int nth, char *out, size_t n) {
    char p[64], buf[8192];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    if (f < 0) return -1;
    ssize_t r = read(f, buf, sizeof buf - 1);
    close(f);
    if (r <= 0) return -1;
    buf[r] = 0;
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, key, strlen(key)) && nth-- == 0) { snprintf(out, n, "%s", l); return 0; }
    return -1;
}

/* the inotify mask fdinfo shows for watch descriptor wd, or -1 */
static long inotify_mask(int fd, int wd) {
    char l[512];
    for (int i = 0; fdinfo_line(fd, "inotify", i, l, sizeof l) == 0; i++) {
        unsigned w, m;
        char *pw = strstr(l, "wd:"), *pm = strstr(l, "mask:");
        if (pw && pm && sscanf(pw, "wd:%x", &w) == 1 && sscanf(pm, "mask:%x", &m) == 1 && (int)w == wd)
            return m;
    }
    return -1;
}

static long epoll_events(int epfd, int tfd) {
    char l[512];
    for (int i = 0; fdinfo_line(epfd, "tfd:", i, l, sizeof l) == 0; i++) {
        int t;
        unsigned ev;
        if (sscanf(l, "tfd: %d events: %x", &t, &ev) == 2 && t == tfd) return ev;
    }
    return -1;
}

static void child_rounds(int (*check)(void)) {
    report("child %d", getpid());
    for (long n = 0;; n++) {
        if (!check()) report("cok %d %ld", getpid(), n);
        nap(50);
    }
}

/* ---- trees ---- */

static int shm_slot;  /* 0 parent, 1 the child without page 0, 2 the child with moved pages */
static char *shm_page[4];
static long shm_seen[3];
static int shm_round;

static int shm_check(void) {
    int bad = 0;
    for (int i = 0; i < 4; i++)
        if (shm_page[i] && shm_page[i][0] != 'a' + i) { FAIL("shm3 %d: page %d holds %c", shm_slot, i, shm_page[i][0]); bad = 1; }
    volatile long *ctr = (volatile long *)(shm_page[3] + 64);
    ctr[shm_slot]++;
    if (++shm_round % 20 == 0) {  /* every 20 rounds, the others' counters have moved */
        for (int k = 0; k < 3; k++) {
            if (k == shm_slot) continue;
            if (ctr[k] == shm_seen[k]) { FAIL("shm3 %d: counter %d did not move (%ld)", shm_slot, k, ctr[k]); bad = 1; }
            shm_seen[k] = ctr[k];
        }
    }
    return bad;
}

static void setup_shm3(void) {
    shm_base = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 4; i++) { shm_base[i * 4096] = 'a' + i; shm_page[i] = shm_base + i * 4096; }
    pid_t a = fork();
    if (a == 0) {
        shm_slot = 1;
        munmap(shm_base, 4096);
        shm_page[0] = NULL;
        for (int k = 0; k < 3; k++) shm_seen[k] = -1;
        child_rounds(shm_check);
    }
    pid_t b = fork();
    if (b == 0) {
        shm_slot = 2;
        char *hole = mmap(NULL, 8 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char *moved = mremap(shm_base + 2 * 4096, 2 * 4096, 2 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, hole + 3 * 4096);
        if (moved == MAP_FAILED) { FAIL("mremap"); _exit(1); }
        shm_page[2] = moved; shm_page[3] = moved + 4096;
        for (int k = 0; k < 3; k++) shm_seen[k] = -1;
        child_rounds(shm_check);
    }
    for (int k = 0; k < 3; k++) shm_seen[k] = -1;
    kid = a; kid2 = b;
}

static volatile int vfork_done;

static void *vfork_rounds(void *arg);

static int ptrace_check(void) {
    if (ptrace(PTRACE_INTERRUPT, kid, 0, 0)) { FAIL("PTRACE_INTERRUPT: %s", strerror(errno)); return 1; }
    int st;
    if (waitpid(kid, &st, __WALL) != kid || !WIFSTOPPED(st) || (st >> 16) != PTRACE_EVENT_STOP) {
        FAIL("ptrace stop: %#x", st); return 1;
    }
    if (ptrace(PTRACE_CONT, kid, 0, 0)) { FAIL("PTRACE_CONT: %s", strerror(errno)); return 1; }
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/status", kid);
    int f = open(p, O_RDONLY);
    ssize_t n = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
    if (f >= 0) close(f);
    buf[n > 0 ? n : 0] = 0;
    char *t = strstr(buf, "TracerPid:");
    if (!t || atoi(t + 10) != getpid()) { FAIL("child's TracerPid: %d", t ? atoi(t + 10) : -1); return 1; }
    return 0;
}

static int nop_check(void) { return 0; }
static volatile sig_atomic_t chlds;
static void on_chld(int s) { (void)s; chlds++; }
static volatile sig_atomic_t stops;
static void on_chld_info(int s, siginfo_t *si, void *uc) { (void)s; (void)uc; if (si->si_code == CLD_STOPPED) stops++; }
static int zleader_check(void) {
    shared[13] = 1;
    if (getpgrp() != (pid_t)shared[12]) { FAIL("zombieleader: group %d, not %ld", getpgrp(), shared[12]); return 1; }
    return 0;
}
static int pipeeof_child(void) {
    if (go()) _exit(0);
    if (write(fd_b, "w", 1) != 1) { FAIL("pipeeof child: write: %s", strerror(errno)); return 1; }
    return 0;
}
static void on_child_sig(int s) { (void)s; shared[20]++; }

static int dupflock_child_check(void) {
    char l[256];
    if (fdinfo_line(fd_a, "lock:", 0, l, sizeof l) || !strstr(l, "FLOCK") || !strstr(l, "WRITE")) {
        FAIL("dupflock child: '%s'", l); return 1;
    }
    return 0;
}

static int ofd_child_check(void) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    if (fcntl(fd_c, F_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != -1) {
        FAIL("ofdposix child: F_GETLK of 0-9: type %d pid %d", fl.l_type, fl.l_pid); return 1;
    }
    char l[256];
    if (fdinfo_line(fd_b, "lock:", 0, l, sizeof l) || !strstr(l, "POSIX") || !strstr(l, " 20 29")) {
        FAIL("ofdposix child: '%s'", l); return 1;
    }
    return 0;
}

static pid_t gc_pid(void) { return (pid_t)shared[0]; }

static int subreaped_check(void) {
    if (getppid() != (pid_t)shared[1]) { FAIL("subreaped: parent %d, not %ld", getppid(), shared[1]); return 1; }
    if (go()) _exit(5);
    return 0;
}

static int sess_level;
static int sessions_check(void) {
    pid_t want_pg = (pid_t)shared[2 + 2 * sess_level], want_sid = (pid_t)shared[3 + 2 * sess_level];
    if (getpgrp() != want_pg || getsid(0) != want_sid) {
        FAIL("sessions %d: pgrp %d sid %d, not %d %d", sess_level, getpgrp(), getsid(0), want_pg, want_sid); return 1;
    }
    return 0;
}

static struct __user_cap_data_struct uid_caps[2];
static int uid_check(void) {
    uid_t r, e, s;
    gid_t gr, ge, gs, groups[4];
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    int ng = getgroups(4, groups);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    syscall(SYS_capget, &h, d);
    if (r != 1000 || e != 1001 || s != 1002 || gr != 1003 || ge != 1003 || gs != 1003 ||
        ng != 1 || groups[0] != 5 || memcmp(d, uid_caps, sizeof d)) {
        FAIL("uidchild: uids %d %d %d gids %d %d %d groups %d caps %x/%x/%x", r, e, s, gr, ge, gs, ng,
             d[0].effective, d[0].permitted, d[0].inheritable); return 1;
    }
    return 0;
}

static void setup_tree(void) {
    if (!strcmp(mode, "shm3")) setup_shm3();
    else if (!strcmp(mode, "ptracechild")) {
        kid = fork();
        if (kid == 0) child_rounds(nop_check);
        if (ptrace(PTRACE_SEIZE, kid, 0, 0)) FAIL("PTRACE_SEIZE: %s", strerror(errno));
    } else if (!strcmp(mode, "dupflock")) {
        snprintf(path_a, sizeof path_a, "%s/flocked", dir);
        fd_a = open(path_a, O_RDWR | O_CREAT, 0644);
        if (write(fd_a, "0123456789", 10) != 10 || flock(fd_a, LOCK_EX)) FAIL("flock");
        kid = fork();
        if (kid == 0) child_rounds(dupflock_child_check);
    } else if (!strcmp(mode, "ofdposix")) {
        snprintf(path_a, sizeof path_a, "%s/locked", dir);
        fd_a = open(path_a, O_RDWR | O_CREAT, 0644);
        if (ftruncate(fd_a, 100)) FAIL("ftruncate");
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
        if (fcntl(fd_a, F_OFD_SETLK, &fl)) FAIL("F_OFD_SETLK: %s", strerror(errno));
        kid = fork();
        if (kid == 0) {
            fd_b = open(path_a, O_RDWR);
            fd_c = open(path_a, O_RDWR);
            struct flock p = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 10};
            if (fcntl(fd_b, F_SETLK, &p)) FAIL("F_SETLK: %s", strerror(errno));
            child_rounds(ofd_child_check);
        }
        fd_b = open(path_a, O_RDWR);
        nap(100);
    } else if (!strcmp(mode, "zombie")) {
        kid = fork();
        if (kid == 0) _exit(7);
        siginfo_t si;
        waitid(P_PID, kid, &si, WEXITED | WNOWAIT);  /* (a zombie now, not reaped) */
        report("other %d", kid);
        nap(50);
    } else if (!strcmp(mode, "subreaped")) {
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        shared[1] = getpid();
        pid_t c = fork();
        if (c == 0) {
            pid_t g = fork();
            if (g == 0) {
                while (getppid() != (pid_t)shared[1]) nap(5);
                child_rounds(subreaped_check);
            }
            shared[0] = g;
            _exit(0);
        }
        waitpid(c, NULL, 0);
        kid = gc_pid();
        report("child %d", kid);  /* (the grandchild's own line may come after ready) */
    } else if (!strcmp(mode, "sessions")) {
        shared[2] = getpgrp(); shared[3] = getsid(0);
        pid_t c = fork();
        if (c == 0) {
            setpgid(0, 0);
            shared[4] = getpid(); shared[5] = getsid(0);
            pid_t g = fork();
            if (g == 0) {
                setsid();
                shared[6] = getpid(); shared[7] = getpid();
                pid_t gg = fork();
                if (gg == 0) {
                    shared[8] = shared[6]; shared[9] = shared[7];
                    sess_level = 3;
                    shared[10] = 1;
                    child_rounds(sessions_check);
                }
                sess_level = 2;
                child_rounds(sessions_check);
            }
            sess_level = 1;
            child_rounds(sessions_check);
        }
        while (!shared[10]) nap(5);
        nap(100);
    } else if (!strcmp(mode, "pidfdzombie")) {
        kid = fork();
        if (kid == 0) _exit(9);
        fd_a = syscall(SYS_pidfd_open, kid, 0);
        siginfo_t si;
        waitid(P_PID, kid, &si, WEXITED | WNOWAIT);  /* (a zombie now, not reaped) */
        if (fd_a < 0) FAIL("pidfd_open: %s", strerror(errno));
        report("other %d", kid);
        nap(50);
    } else if (!strcmp(mode, "fownchild")) {
        int p[2];
        if (pipe(p)) FAIL("pipe");
        fd_a = p[0]; fd_b = p[1];
        kid = fork();
        if (kid == 0) {
            struct sigaction sa = {0};
            sa.sa_handler = on_child_sig;
            sigaction(SIGRTMIN + 7, &sa, NULL);
            shared[21] = 1;
            child_rounds(nop_check);
        }
        while (!shared[21]) nap(5);
        if (fcntl(fd_a, F_SETOWN, kid) || fcntl(fd_a, F_SETSIG, SIGRTMIN + 7) ||
            fcntl(fd_a, F_SETFL, fcntl(fd_a, F_GETFL) | O_ASYNC | O_NONBLOCK)) FAIL("fown setup: %s", strerror(errno));
    } else if (!strcmp(mode, "pipeeof")) {
        int p[2];
        if (pipe(p)) FAIL("pipe");
        kid = fork();
        if (kid == 0) {
            close(p[0]);
            fd_b = p[1];
            child_rounds(pipeeof_child);
        }
        close(p[1]);
        fd_a = p[0];
        fcntl(fd_a, F_SETFL, O_NONBLOCK);
    } else if (!strcmp(mode, "zombieleader") && strcmp(mode, "sigchld") &&
            strcmp(mode, "sigchldstop")) {
        prctl(PR_SET_CHILD_SUBREAPER, 1);  /* (the grandchild comes to it: in the tree) */
        kid = fork();
        if (kid == 0) {
            setpgid(0, 0);
            shared[12] = getpid();
            pid_t g = fork();
            if (g == 0) child_rounds(zleader_check);
            while (!shared[13]) nap(5);
            _exit(4);
        }
        report("other %d", kid);
        siginfo_t si;
        waitid(P_PID, kid, &si, WEXITED | WNOWAIT);  /* (a zombie now, not reaped) */
    } else if (!strcmp(mode, "sigchldstop")) {
        struct sigaction sa = {0};
        sa.sa_sigaction = on_chld_info;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigaction(SIGCHLD, &sa, NULL);
        kid = fork();
        if (kid == 0) { raise(SIGSTOP); _exit(0); }
        while (!stops) nap(5);
        report("other %d", kid);
    } else if (!strcmp(mode, "sigchld")) {
        struct sigaction sa = {0};
        sa.sa_handler = on_chld;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGCHLD, &sa, NULL);
        kid = fork();
        if (kid == 0) _exit(3);
        siginfo_t si;
        waitid(P_PID, kid, &si, WEXITED | WNOWAIT);  /* (a zombie now, not reaped) */
        while (!chlds) nap(5);
        report("other %d", kid);
    } else if (!strcmp(mode, "uidchild")) {
        kid = fork();
        if (kid == 0) {
            gid_t g = 5;
            prctl(PR_SET_KEEPCAPS, 1);
            if (setgroups(1, &g) || setresgid(1003, 1003, 1003) || setresuid(1000, 1001, 1002)) FAIL("setres*id");
            struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
            memset(uid_caps, 0, sizeof uid_caps);
            uid_caps[0].permitted = (1u << CAP_NET_BIND_SERVICE) | (1u << CAP_KILL) | (1u << CAP_CHOWN);
            uid_caps[0].effective = (1u << CAP_NET_BIND_SERVICE) | (1u << CAP_KILL);
            uid_caps[0].inheritable = 1u << CAP_KILL;
            if (syscall(SYS_capset, &h, uid_caps)) FAIL("capset: %s", strerror(errno));
            child_rounds(uid_check);
        }
    }
}

static int tree_check(long round) {
    int bad = 0;
    if (!strcmp(mode, "shm3")) bad = shm_check();
    else if (!strcmp(mode, "ptracechild")) bad = ptrace_check();
    else if (!strcmp(mode, "dupflock")) {
        char l[256];
        long k = syscall(SYS_kcmp, getpid(), kid, KCMP_FILE, fd_a, fd_a);
        if (k != 0) { FAIL("dupflock: kcmp %ld: not one description", k); bad = 1; }
        if (fdinfo_line(fd_a, "lock:", 0, l, sizeof l) || !strstr(l, "FLOCK")) { FAIL("dupflock: '%s'", l); bad = 1; }
        off_t o = 3 + round % 5;  /* the offset is the description's: the child's too */
        lseek(fd_a, o, SEEK_SET);
    } else if (!strcmp(mode, "ofdposix")) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 10};
        if (fcntl(fd_b, F_OFD_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != kid) {
            FAIL("ofdposix: F_OFD_GETLK of 20-29: type %d pid %d (child %d)", fl.l_type, fl.l_pid, kid); bad = 1;
        }
        char l[256];
        if (fdinfo_line(fd_a, "lock:", 0, l, sizeof l) || !strstr(l, "OFDLCK") || !strstr(l, " 0 9")) {
            FAIL("ofdposix: '%s'", l); bad = 1;
        }
    } else if (!strcmp(mode, "zombie")) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (kid > 0 && go()) {
            int st;
            if (waitpid(kid, &st, WNOHANG) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 7) { FAIL("zombie reaped: %#x", st); bad = 1; }
            else report("reaped");
            kid = -1;
        } else if (kid > 0 && (waitid(P_PID, kid, &si, WEXITED | WNOHANG | WNOWAIT) || si.si_pid != kid ||
                               si.si_code != CLD_EXITED || si.si_status != 7)) {
            FAIL("zombie: pid %d code %d status %d", si.si_pid, si.si_code, si.si_status); bad = 1;
        }
    } else if (!strcmp(mode, "zombieleader") && kid > 0) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (go()) {
            int st;
            if (waitpid(kid, &st, WNOHANG) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 4) { FAIL("zombie leader reaped: %#x", st); bad = 1; }
            else report("reaped");
            kid = -1;
        } else if (waitid(P_PID, kid, &si, WEXITED | WNOHANG | WNOWAIT) || si.si_pid != kid || si.si_status != 4) {
            FAIL("zombie leader: pid %d status %d", si.si_pid, si.si_status); bad = 1;
        }
    } else if (!strcmp(mode, "sigchldstop")) {
        if (stops != 1) { FAIL("sigchldstop: CLD_STOPPED came %d times for one stop", (int)stops); bad = 1; }
    } else if (!strcmp(mode, "sigchld")) {
        if (chlds != 1) { FAIL("sigchld: the handler ran %d times for one child", (int)chlds); bad = 1; }
    } else if (!strcmp(mode, "subreaped")) {
        if (kid > 0 && go()) {
            int st;
            for (int i = 0; i < 100 && waitpid(kid, &st, WNOHANG) == 0; i++) nap(20);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 5) { FAIL("grandchild reaped: %#x", st); bad = 1; }
            else report("reaped");
            kid = -1;
        }
    } else if (!strcmp(mode, "sessions")) bad = sessions_check();
    else if (!strcmp(mode, "pipeeof") && fd_a >= 0) {
        char b[4096];
        ssize_t n;
        while ((n = read(fd_a, b, sizeof b)) > 0) {}
        if (n == 0) {  /* EOF: the child is gone, and so is every other writer */
            struct pollfd pf = {fd_a, POLLIN, 0};
            if (!go() || poll(&pf, 1, 0) != 1 || !(pf.revents & POLLHUP)) { FAIL("pipeeof: EOF, revents %#x", pf.revents); bad = 1; }
            else report("eof");
            close(fd_a);
            fd_a = -1;
        } else if (go()) {
            static int waited;
            if (++waited > 30) { FAIL("pipeeof: no EOF 3 s after the child's exit: a writer left"); bad = 1; }
        }
    }
    else if (!strcmp(mode, "pidfdzombie") && fd_a >= 0) {
        struct pollfd pf = {fd_a, POLLIN, 0};
        if (poll(&pf, 1, 0) != 1 || !(pf.revents & POLLIN)) { FAIL("pidfd of the zombie: revents %#x", pf.revents); bad = 1; }
        else if (go()) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            if (waitid(P_PIDFD, fd_a, &si, WEXITED) || si.si_pid != kid || si.si_status != 9) {
                FAIL("waitid P_PIDFD: %s pid %d status %d", strerror(errno), si.si_pid, si.si_status); bad = 1;
            } else report("reaped");
            close(fd_a);
            fd_a = -1;
        }
    } else if (!strcmp(mode, "fownchild")) {
        long before = shared[20];
        char c;
        if (write(fd_b, "x", 1) != 1) FAIL("write");
        for (int i = 0; i < 100 && shared[20] == before; i++) nap(2);
        while (read(fd_a, &c, 1) == 1) {}
        if (shared[20] == before) { FAIL("fownchild: the child got no signal"); bad = 1; }
        if (fcntl(fd_a, F_GETOWN) != kid || fcntl(fd_a, F_GETSIG) != SIGRTMIN + 7) {
            FAIL("fownchild: owner %d sig %d", fcntl(fd_a, F_GETOWN), fcntl(fd_a, F_GETSIG)); bad = 1;
        }
    }
    else if (!strcmp(mode, "vfork")) bad = 0;
    return bad;
}

/* ---- single process ---- */

static volatile int thread_checks, thread_bad;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int want_round;

static int rt_taken;

static int rt_take(const int *want, int n, const char *who) {
    sigset_t w;
    sigemptyset(&w);
    sigaddset(&w, SIGRTMIN + 2);
    struct timespec zero = {0, 0};
    siginfo_t si;
    int got[8], k = 0;
    while (k < 8 && sigtimedwait(&w, &si, &zero) == SIGRTMIN + 2) got[k++] = si.si_value.sival_int;
    int bad = k != n;
    for (int i = 0; i < k && i < n; i++) bad |= got[i] != want[i];
    if (bad) { FAIL("rtorder %s: %d taken: %d %d %d", who, k, k > 0 ? got[0] : -1, k > 1 ? got[1] : -1, k > 2 ? got[2] : -1); }
    return bad;
}

static int thread_check(void) {
    if (!strcmp(mode, "rtorder")) {
        sigset_t p;
        sigpending(&p);
        if (!rt_taken && !sigismember(&p, SIGRTMIN + 2)) { FAIL("rtorder thread: not pending"); return 1; }
        if (rt_taken == 1) {
            static const int want[] = {4, 5};
            rt_taken = 2;
            if (rt_take(want, 2, "thread")) return 1;
            report("rtdone");
        }
    } else if (!strcmp(mode, "sigign")) {
        sigset_t p;
        sigpending(&p);
        if (!sigismember(&p, SIGUSR2) || !sigismember(&p, SIGRTMIN + 4)) { FAIL("sigign thread: pending usr2 %d rt4 %d", sigismember(&p, SIGUSR2), sigismember(&p, SIGRTMIN + 4)); return 1; }
    } else if (!strcmp(mode, "pdeath")) {
        int s = -1;
        prctl(PR_GET_PDEATHSIG, &s);
        if (s != SIGWINCH) { FAIL("pdeath thread: %d", s); return 1; }
    }
    return 0;
}

static void *thread_main(void *arg) {
    (void)arg;
    other_tid = syscall(SYS_gettid);
    if (!strcmp(mode, "sigign")) {
        sigset_t b;
        sigemptyset(&b);
        sigaddset(&b, SIGUSR2);
        sigaddset(&b, SIGRTMIN + 4);
        pthread_sigmask(SIG_BLOCK, &b, NULL);
    } else if (!strcmp(mode, "pdeath")) {
        prctl(PR_SET_PDEATHSIG, SIGWINCH);
    }
    if (!strcmp(mode, "rtorder")) {
        sigset_t b;
        sigemptyset(&b);
        sigaddset(&b, SIGRTMIN + 2);
        pthread_sigmask(SIG_BLOCK, &b, NULL);
    }
    thread_ready = 1;
    if (!strcmp(mode, "vfork")) return vfork_rounds(NULL);
    if (!strcmp(mode, "sleepstop")) {
        for (long n = 0;; n++) {
            struct timespec a, b, d = {1, 500000000};
            clock_gettime(CLOCK_MONOTONIC, &a);
            long r = syscall(SYS_nanosleep, &d, NULL);
            clock_gettime(CLOCK_MONOTONIC, &b);
            double el = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
            if (r) FAIL("nanosleep: %s after %.3f s", strerror(errno), el);
            else if (el < 1.5) FAIL("nanosleep returned early: %.3f s", el);
            else report("slept %ld %.3f", n, el);
        }
    }
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (want_round == seen) pthread_cond_wait(&cv, &mu);
        seen = want_round;
        pthread_mutex_unlock(&mu);
        int b = thread_check();
        pthread_mutex_lock(&mu);
        thread_bad = b;
        thread_checks = seen;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static int in_fd = -1, oneshot_done, eof_done;

static void setup_one(void) {
    if (!strcmp(mode, "rtorder")) {
        sigset_t b;
        sigemptyset(&b);
        sigaddset(&b, SIGRTMIN + 2);
        sigprocmask(SIG_BLOCK, &b, NULL);
    } else if (!strcmp(mode, "sigign")) {
        sigset_t b;
        sigemptyset(&b);
        sigaddset(&b, SIGUSR2);
        sigaddset(&b, SIGRTMIN + 4);
        sigprocmask(SIG_BLOCK, &b, NULL);
        signal(SIGUSR2, SIG_IGN);
        signal(SIGRTMIN + 4, SIG_IGN);
    } else if (!strcmp(mode, "inotifyflags")) {
        snprintf(path_a, sizeof path_a, "%s/watched", dir);
        snprintf(path_b, sizeof path_b, "%s/sub", dir);
        fd_a = open(path_a, O_RDWR | O_CREAT, 0644);
        mkdir(path_b, 0755);
        in_fd = inotify_init1(IN_NONBLOCK);
        wd1 = inotify_add_watch(in_fd, path_a, IN_MODIFY | IN_ONESHOT);
        wd2 = inotify_add_watch(in_fd, path_b, IN_CREATE);
        if (inotify_add_watch(in_fd, path_b, IN_DELETE | IN_MASK_ADD) != wd2) FAIL("IN_MASK_ADD gave another wd");
        snprintf(path_b, sizeof path_b, "%s/sub2", dir);
        mkdir(path_b, 0755);
        wd3 = inotify_add_watch(in_fd, path_b, IN_OPEN | IN_EXCL_UNLINK);
    } else if (!strcmp(mode, "fownpgrp")) {
        int p[2];
        if (pipe(p)) FAIL("pipe");
        fd_a = p[0]; fd_b = p[1];
        struct sigaction sa = {0};
        sa.sa_handler = on_sig;
        sigaction(SIGRTMIN + 6, &sa, NULL);
        struct f_owner_ex o = {F_OWNER_PGRP, getpgrp()};
        if (fcntl(fd_a, F_SETOWN_EX, &o) || fcntl(fd_a, F_SETSIG, SIGRTMIN + 6) ||
            fcntl(fd_a, F_SETFL, fcntl(fd_a, F_GETFL) | O_ASYNC | O_NONBLOCK)) FAIL("fown setup: %s", strerror(errno));
    } else if (!strcmp(mode, "opathdir")) {
        snprintf(path_a, sizeof path_a, "%s/d", dir);
        snprintf(path_b, sizeof path_b, "%s/d/f", dir);
        mkdir(path_a, 0755);
        int f = open(path_b, O_WRONLY | O_CREAT, 0644);
        if (write(f, "opath", 5) != 5) FAIL("write");
        close(f);
        fd_a = open(path_a, O_PATH | O_DIRECTORY);
        stat(path_a, &st_a);
        stat(path_b, &st_b);
    } else if (!strcmp(mode, "sysfs")) {
        char b[8], cg[4096] = "";
        fd_a = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY);
        if (fd_a < 0 || read(fd_a, b, 5) != 5) FAIL("sysfs open");
        fstat(fd_a, &st_a);
        int f = open("/proc/self/cgroup", O_RDONLY);  /* its memory cgroup (v1) or its v2 one */
        ssize_t n = read(f, cg, sizeof cg - 1);
        close(f);
        cg[n > 0 ? n : 0] = 0;
        char *m = strstr(cg, ":memory:");
        if (m) {
            *strchrnul(m + 8, '\n') = 0;
            snprintf(path_b, sizeof path_b, "/sys/fs/cgroup/memory%s", m + 8);
        } else {
            m = strstr(cg, "0::");
            if (m) *strchrnul(m + 3, '\n') = 0;
            snprintf(path_b, sizeof path_b, "/sys/fs/cgroup%s", m ? m + 3 : "/");
        }
        fd_b = open(path_b, O_RDONLY | O_DIRECTORY);
        fstat(fd_b, &st_b);
        snprintf(path_a, sizeof path_a, "%s/cgroup.procs", path_b);
        fd_c = open(path_a, O_RDONLY);
        if (fd_b < 0 || fd_c < 0) FAIL("cgroup open %s", path_b);
    } else if (!strcmp(mode, "pdeath")) {
        prctl(PR_SET_PDEATHSIG, SIGUSR2);
        signal(SIGUSR2, on_sig);
    } else if (!strcmp(mode, "highfd")) {
        int p[2];
        if (pipe(p) || dup2(p[0], 900) != 900 || dup2(p[1], 901) != 901) FAIL("dup2");
        close(p[0]); close(p[1]);
        struct rlimit rl = {64, 1024};
        if (setrlimit(RLIMIT_NOFILE, &rl)) FAIL("setrlimit");
    } else if (!strcmp(mode, "widowpipe")) {
        int p[2], q[2];
        signal(SIGPIPE, SIG_IGN);
        if (pipe(p) || pipe(q) || write(p[1], "zz", 2) != 2) FAIL("pipe");
        close(p[0]);
        fd_a = p[1];
        if (write(q[1], "abc", 3) != 3) FAIL("write");
        close(q[1]);
        fd_b = q[0];
    } else if (!strcmp(mode, "inotifyquiet")) {
        snprintf(path_a, sizeof path_a, "%s/quiet", dir);
        fd_a = open(path_a, O_RDWR | O_CREAT, 0644);
        if (ftruncate(fd_a, 8192)) FAIL("ftruncate");
        shm_base = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_a, 0);
        shm_base[0] = 1;
        in_fd = inotify_init1(IN_NONBLOCK);
        wd1 = inotify_add_watch(in_fd, path_a, IN_OPEN | IN_ACCESS | IN_MODIFY | IN_ATTRIB |
                                IN_CLOSE_WRITE | IN_CLOSE_NOWRITE);
    } else if (!strcmp(mode, "fifoin")) {
        snprintf(path_a, sizeof path_a, "%s/fifo", dir);
        mkfifo(path_a, 0600);
        fd_a = open(path_a, O_RDONLY | O_NONBLOCK);
        if (fd_a < 0) FAIL("fifo open: %s", strerror(errno));
    } else if (!strcmp(mode, "epollflags")) {
        int p[2];
        if (pipe(p)) FAIL("pipe");
        fd_a = eventfd(0, EFD_NONBLOCK);
        fd_b = p[1]; fd_c = p[0];
        ep = epoll_create1(0);
        struct epoll_event e1 = {.events = EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLWAKEUP, .data.u64 = 1};
        struct epoll_event e2 = {.events = EPOLLOUT | EPOLLERR, .data.u64 = 2};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd_a, &e1) || epoll_ctl(ep, EPOLL_CTL_ADD, fd_b, &e2)) FAIL("epoll_ctl");
    }
}

static long ev_a = -1, ev_b = -1;

static int check_one(long round) {
    int bad = 0;
    (void)round;
    if (!strcmp(mode, "rtorder")) {
        sigset_t p;
        sigpending(&p);
        if (!rt_taken && !sigismember(&p, SIGRTMIN + 2)) { FAIL("rtorder: not pending"); bad = 1; }
        if (!rt_taken && go()) {
            static const int want[] = {1, 2, 3};
            bad |= rt_take(want, 3, "main");
            rt_taken = 1;
        }
    } else if (!strcmp(mode, "sigign")) {
        sigset_t p;
        struct sigaction sa;
        sigpending(&p);
        if (!sigismember(&p, SIGUSR2) || sigismember(&p, SIGRTMIN + 4)) { FAIL("sigign main: pending usr2 %d rt4 %d", sigismember(&p, SIGUSR2), sigismember(&p, SIGRTMIN + 4)); bad = 1; }
        sigaction(SIGUSR2, NULL, &sa);
        if (sa.sa_handler != SIG_IGN) { FAIL("sigign: SIGUSR2 not ignored"); bad = 1; }
    } else if (!strcmp(mode, "inotifyflags")) {
        long m1 = inotify_mask(in_fd, wd1), m2 = inotify_mask(in_fd, wd2), m3 = inotify_mask(in_fd, wd3);
        if (!oneshot_done && (m1 != (IN_MODIFY | IN_ONESHOT) || m2 != (IN_CREATE | IN_DELETE) || m3 != (IN_OPEN | IN_EXCL_UNLINK))) {
            FAIL("inotify masks %#lx %#lx %#lx", m1, m2, m3); bad = 1;
        }
        if (!oneshot_done && go()) {
            char ev[4096] __attribute__((aligned(8)));
            ssize_t n = read(in_fd, ev, sizeof ev);  /* (IN_OPEN events of the directory) */
            int modify = 0, ignored = 0;
            for (int i = 0; i < 2; i++) { if (pwrite(fd_a, "x", 1, 0) != 1) FAIL("pwrite"); nap(20); }
            n = read(in_fd, ev, sizeof ev);
            for (char *p = ev; n > 0 && p < ev + n; p += sizeof(struct inotify_event) + ((struct inotify_event *)p)->len) {
                struct inotify_event *e = (struct inotify_event *)p;
                if (e->wd == wd1 && (e->mask & IN_MODIFY)) modify++;
                if (e->wd == wd1 && (e->mask & IN_IGNORED)) ignored++;
            }
            if (modify != 1 || ignored != 1) { FAIL("oneshot: %d IN_MODIFY, %d IN_IGNORED", modify, ignored); bad = 1; }
            else report("oneshot");
            oneshot_done = 1;
        }
    } else if (!strcmp(mode, "fownpgrp")) {
        struct f_owner_ex o;
        int before = sigs;
        char c;
        if (write(fd_b, "x", 1) != 1) FAIL("write");
        for (int i = 0; i < 50 && sigs == before; i++) nap(2);
        while (read(fd_a, &c, 1) == 1) {}
        if (sigs == before) { FAIL("fownpgrp: no signal"); bad = 1; }
        if (fcntl(fd_a, F_GETOWN_EX, &o) || o.type != F_OWNER_PGRP || o.pid != getpgrp() ||
            fcntl(fd_a, F_GETSIG) != SIGRTMIN + 6 || !(fcntl(fd_a, F_GETFL) & O_ASYNC)) {
            FAIL("fownpgrp: owner type %d pid %d sig %d", o.type, o.pid, fcntl(fd_a, F_GETSIG)); bad = 1;
        }
    } else if (!strcmp(mode, "opathdir")) {
        struct stat s1, s2;
        char b[8] = {0};
        int f = openat(fd_a, "f", O_RDONLY);
        if (f < 0 || fstat(f, &s1) || s1.st_ino != st_b.st_ino || read(f, b, 5) != 5 || strcmp(b, "opath") ||
            fstatat(fd_a, "", &s2, AT_EMPTY_PATH) || s2.st_ino != st_a.st_ino || !(fcntl(fd_a, F_GETFL) & O_PATH)) {
            FAIL("opathdir: %s", strerror(errno)); bad = 1;
        }
        if (f >= 0) close(f);
    } else if (!strcmp(mode, "sysfs")) {
        struct stat s1, s2;
        if (fstat(fd_a, &s1) || s1.st_ino != st_a.st_ino || s1.st_dev != st_a.st_dev || lseek(fd_a, 0, SEEK_CUR) != 5) {
            FAIL("sysfs file: offset %lld", (long long)lseek(fd_a, 0, SEEK_CUR)); bad = 1;
        }
        if (fstat(fd_b, &s2) || s2.st_ino != st_b.st_ino || s2.st_dev != st_b.st_dev) { FAIL("cgroup dir: ino %lu", (unsigned long)s2.st_ino); bad = 1; }
        char b[256];
        ssize_t n = pread(fd_c, b, sizeof b - 1, 0);
        if (n < 0) { FAIL("cgroup.procs: %s", strerror(errno)); bad = 1; }
    } else if (!strcmp(mode, "pdeath")) {
        int s = -1;
        prctl(PR_GET_PDEATHSIG, &s);
        if (s != SIGUSR2) { FAIL("pdeath main: %d", s); bad = 1; }
    } else if (!strcmp(mode, "highfd")) {
        struct rlimit rl;
        char c = 0;
        getrlimit(RLIMIT_NOFILE, &rl);
        if (write(901, "h", 1) != 1 || read(900, &c, 1) != 1 || c != 'h' || rl.rlim_cur != 64 || rl.rlim_max != 1024) {
            FAIL("highfd: %s, limit %ld %ld", strerror(errno), (long)rl.rlim_cur, (long)rl.rlim_max); bad = 1;
        }
    } else if (!strcmp(mode, "widowpipe")) {
        struct pollfd pf = {fd_b, POLLIN, 0};
        errno = 0;
        if (write(fd_a, "x", 1) != -1 || errno != EPIPE) { FAIL("widowed pipe write: %s", strerror(errno)); bad = 1; }
        if (!eof_done) {
            if (poll(&pf, 1, 0) != 1 || pf.revents != (POLLIN | POLLHUP)) { FAIL("eof pipe revents %#x", pf.revents); bad = 1; }
            if (go()) {
                char b[8] = {0};
                ssize_t n1 = read(fd_b, b, sizeof b), n2 = read(fd_b, b + 4, 4);
                char fdp[64], z[4] = {0};
                snprintf(fdp, sizeof fdp, "/proc/self/fd/%d", fd_a);
                int r = open(fdp, O_RDONLY | O_NONBLOCK);  /* (the widowed pipe's data, read so) */
                ssize_t nz = r < 0 ? -1 : read(r, z, 3);
                if (r >= 0) close(r);
                if (n1 != 3 || strcmp(b, "abc") || n2 != 0) { FAIL("eof pipe: %zd '%s' %zd", n1, b, n2); bad = 1; }
                else if (nz != 2 || strcmp(z, "zz")) { FAIL("widowed pipe's data: %zd '%s'", nz, z); bad = 1; }
                else report("eof");
                eof_done = 1;
            }
        }
    } else if (!strcmp(mode, "inotifyquiet")) {
        char ev[4096] __attribute__((aligned(8)));
        ssize_t n = read(in_fd, ev, sizeof ev);
        if (n > 0) {
            struct inotify_event *e = (struct inotify_event *)ev;
            FAIL("inotifyquiet: %zd bytes of events, the first mask %#x", n, e->mask); bad = 1;
        }
    } else if (!strcmp(mode, "fifoin")) {
        char b[64];
        ssize_t n = go() ? read(fd_a, b, sizeof b - 1) : 0;
        if (n > 0) { b[n] = 0; report("fifo %s", b); }
    } else if (!strcmp(mode, "pipein")) {
        struct pollfd pf = {pipe_in, POLLIN, 0};
        char b[64];
        if (poll(&pf, 1, 0) < 0 || (pf.revents & POLLHUP)) { FAIL("pipein: revents %#x: no writer", pf.revents); bad = 1; }
        if (pf.revents & POLLIN) {
            ssize_t n = read(pipe_in, b, sizeof b - 1);
            b[n > 0 ? n : 0] = 0;
            report("read %s", b);
        }
    } else if (!strcmp(mode, "epollflags")) {
        long a = epoll_events(ep, fd_a), b = epoll_events(ep, fd_b);
        if (ev_a < 0) { ev_a = a; ev_b = b; report("events %#lx %#lx", a, b); }
        if (a != ev_a || b != ev_b || (a & (EPOLLRDHUP | EPOLLPRI | EPOLLIN)) != (EPOLLRDHUP | EPOLLPRI | EPOLLIN)) {
            FAIL("epoll events %#lx %#lx, were %#lx %#lx", a, b, ev_a, ev_b); bad = 1;
        }
    }
    return bad;
}

static int is_tree(void) {
    static const char *trees[] = {"shm3", "vfork", "ptracechild", "dupflock", "ofdposix", "zombie",
                                  "subreaped", "sessions", "uidchild", "pidfdzombie", "fownchild", "pipeeof", "zombieleader", "sigchld",
                                  "sigchldstop",
                                  NULL};
    for (int i = 0; trees[i]; i++) if (!strcmp(mode, trees[i])) return 1;
    return 0;
}

static void *vfork_rounds(void *arg) {
    (void)arg;
    while (kid <= 0) nap(5);
    report("other %d", kid);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        if (!vfork_done) {
            char p[64], buf[512];
            snprintf(p, sizeof p, "/proc/%d/stat", kid);
            int f = open(p, O_RDONLY);
            ssize_t n = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
            if (f >= 0) close(f);
            if (n <= 0) { FAIL("vfork child gone"); continue; }
        }
        report("ok %ld", round);
        nap(100);
    }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 3) _exit(2);
    mode = argv[2];
    dir = argc > 3 ? argv[3] : "/tmp";
    pipe_in = argc > 4 ? atoi(argv[4]) : -1;
    snprintf(go_path, sizeof go_path, "%s/go", dir);
    main_tid = getpid();
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (is_tree()) {
        if (!strcmp(mode, "vfork")) {
            pthread_t th;
            kid = 0;
            pthread_create(&th, NULL, thread_main, NULL);
            pid_t c = vfork();
            if (c == 0) {  /* (the parent's memory: what it writes, the parent sees) */
                struct timespec ts = {0, 20000000};
                kid = syscall(SYS_getpid);
                while (syscall(SYS_access, go_path, F_OK)) syscall(SYS_nanosleep, &ts, NULL);
                _exit(3);
            }
            vfork_done = 1;
            int st;
            if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 3) FAIL("vfork child: %#x", st);
            else report("vforkdone");
            for (;;) pause();
        }
        setup_tree();
        if (kid > 0 && strcmp(mode, "subreaped") && strcmp(mode, "zombie") && strcmp(mode, "pidfdzombie") &&
            strcmp(mode, "zombieleader") && strcmp(mode, "sigchld") &&
            strcmp(mode, "sigchldstop"))
            report("child %d", kid);
        if (kid2 > 0) report("child %d", kid2);
        report("ready %d", getpid());
        int fast = !strcmp(mode, "zombieleader");  /* (looks for its zombie every 0.1 ms) */
        for (long round = 0;; round++) {
            int bad = 0;
            for (int i = 0; fast && i < 1000 && !bad; i++) { bad = tree_check(round); nap(0); }
            if (!bad && !tree_check(round)) report("ok %ld", round);
            nap(fast ? 0 : 100);
        }
    }
    setup_one();
    pthread_t th;
    pthread_create(&th, NULL, thread_main, NULL);
    while (!thread_ready) nap(5);
    if (!strcmp(mode, "rtorder")) {
        for (int i = 1; i <= 5; i++) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            si.si_signo = SIGRTMIN + 2;
            si.si_code = SI_QUEUE;
            si.si_pid = getpid();
            si.si_uid = getuid();
            si.si_value.sival_int = i;
            if (i <= 3) syscall(SYS_rt_sigqueueinfo, getpid(), SIGRTMIN + 2, &si);
            else syscall(SYS_rt_tgsigqueueinfo, getpid(), other_tid, SIGRTMIN + 2, &si);
        }
    }
    if (!strcmp(mode, "sigign")) {
        kill(getpid(), SIGUSR2);
        syscall(SYS_tgkill, getpid(), other_tid, SIGRTMIN + 4);
    }
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = check_one(round);
        if (!strcmp(mode, "sleepstop")) {  /* (its thread sleeps on its own) */
            if (!bad) report("ok %ld", round);
            nap(100);
            continue;
        }
        pthread_mutex_lock(&mu);
        want_round = round + 1;
        pthread_cond_broadcast(&cv);
        while (thread_checks != want_round) pthread_cond_wait(&cv, &mu);
        bad |= thread_bad;
        pthread_mutex_unlock(&mu);
        if (!bad) report("ok %ld", round);
        nap(100);
    }
}
