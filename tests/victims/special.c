/* Special fds (issue 9, "Files").  argv[2] is the mode, argv[3] a scratch directory.
 *   ns      fds on its own net and uts namespaces (/proc/self/ns/...): the same
 *           namespaces after restart
 *   opath   an O_PATH fd on a directory
 *   link    an O_PATH|O_NOFOLLOW fd on a symbolic link (refused for now)
 *   proc    an fd on its own /proc/PID/status (refused)
 *   pidfd   a pidfd of itself (refused)
 *   inotify an inotify watch (refused)
 *   epoll   an epoll watching a pipe through an fd since closed (a duplicate keeps the
 *           pipe): refused
 *   chroot  chrooted into a directory, working in a subdirectory of it: the same root
 *           and cwd after restart (checked by inode and by getcwd)
 *   times   files open read-only and read-write, mapped, a FIFO with data in flight:
 *           left alone (the test checks that their times do not change) */
#include "common.h"
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static ino_t ino_of(const char *path) {
    struct stat st;
    return stat(path, &st) ? 0 : st.st_ino;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4 || chdir(argv[3])) _exit(2);
    const char *mode = argv[2];
    int a = -1, b = -1;
    if (!strcmp(mode, "ns")) {
        a = open("/proc/self/ns/net", O_RDONLY);
        b = open("/proc/self/ns/uts", O_RDONLY);
    } else if (!strcmp(mode, "opath") || !strcmp(mode, "link")) {
        if (symlink("some/where", "link") || mkdir("dir", 0700)) _exit(3);
        a = open("dir", O_PATH | O_DIRECTORY);
        b = !strcmp(mode, "link") ? open("link", O_PATH | O_NOFOLLOW) : -1;
    } else if (!strcmp(mode, "proc")) {
        a = open("/proc/self/status", O_RDONLY);
    } else if (!strcmp(mode, "pidfd")) {
        a = syscall(SYS_pidfd_open, getpid(), 0);
    } else if (!strcmp(mode, "chroot")) {
        if (mkdir("jail", 0755) || mkdir("jail/sub", 0755)) _exit(3);
        a = open("jail", O_RDONLY | O_DIRECTORY);
        b = open("jail/sub", O_RDONLY | O_DIRECTORY);
        if (chroot("jail") || chdir("/sub")) _exit(3);
    } else if (!strcmp(mode, "times")) {
        a = open("r.txt", O_RDONLY);
        b = open("w.txt", O_RDWR);
        int m = open("m.txt", O_RDONLY);
        if (m < 0 || mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, m, 0) == MAP_FAILED) _exit(3);
        close(m);
        int f = open("f", O_RDWR);
        if (f < 0 || write(f, "hello", 5) != 5) _exit(3);
    } else if (!strcmp(mode, "epoll")) {
        int p[2];
        a = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
        if (pipe(p) || epoll_ctl(a, EPOLL_CTL_ADD, p[0], &ev)) _exit(3);
        b = dup(p[0]);
        close(p[0]);
    } else if (!strcmp(mode, "inotify")) {
        a = inotify_init1(0);
        if (inotify_add_watch(a, ".", IN_CREATE) < 0) _exit(3);
    }
    if (a < 0) _exit(4);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        struct stat st;
        if (!strcmp(mode, "ns")) {
            if (fstat(a, &st) || st.st_ino != ino_of("/proc/self/ns/net")) { FAIL("net ns"); bad = 1; }
            if (fstat(b, &st) || st.st_ino != ino_of("/proc/self/ns/uts")) { FAIL("uts ns"); bad = 1; }
        } else if (!strcmp(mode, "opath")) {
            char buf[64] = {0};
            if (fstat(a, &st) || !S_ISDIR(st.st_mode) || (fcntl(a, F_GETFL) & O_PATH) == 0) { FAIL("O_PATH dir"); bad = 1; }
            if (b >= 0 && (fstatat(b, "", &st, AT_EMPTY_PATH) || !S_ISLNK(st.st_mode))) { FAIL("O_PATH link"); bad = 1; }
            if (b >= 0 && (readlinkat(b, "", buf, sizeof buf - 1) != 10 || strcmp(buf, "some/where"))) { FAIL("readlink %s", buf); bad = 1; }
            if (fstatat(a, "", &st, AT_EMPTY_PATH) || st.st_ino != ino_of("dir")) { FAIL("O_PATH dir ino"); bad = 1; }
        }
        if (!strcmp(mode, "chroot")) {
            struct stat r, c, ja, jb;
            char cwd[256];
            if (stat("/", &r) || stat(".", &c) || fstat(a, &ja) || fstat(b, &jb)) { FAIL("stat"); bad = 1; }
            else if (r.st_ino != ja.st_ino || c.st_ino != jb.st_ino) { FAIL("root or cwd moved"); bad = 1; }
            if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/sub")) { FAIL("getcwd"); bad = 1; }
        }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}
