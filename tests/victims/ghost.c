/* Files deleted while open (issue 9, "Files").  argv[2] is the mode, argv[3] a scratch
 * directory.
 *   ghost  a sparse deleted file (data at 0 and at 1 MiB, 8 MiB long) with owner
 *          1234:5678, mode 0640 and old times, open twice (two descriptions: one file),
 *          and written through one and read through the other every round; a forked
 *          child holds a third description of it and checks the same inode
 *   big    a deleted sparse file of 3 GiB with data near its end
 *   dir, cwd, cwd-alone, device  deleted directories, working directory, device node
 *   fifo   a deleted FIFO with bytes in flight, open twice (read end, write end)
 *   mapped a deleted file open and mapped shared: one file after restart
 *   memfd  a sealed memfd (shrink, grow) and one that cannot be sealed: memfds again,
 *          same names, seals, offset, data, on tmpfs, openable through /proc/self/fd */
#include "common.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>

#define MiB (1024L * 1024)

static void fill(unsigned char *b, size_t n, unsigned long long seed) {
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)mix(seed + i);
}

static int same_data(int fd, off_t off, unsigned long long seed) {
    unsigned char want[4096], got[4096];
    fill(want, sizeof want, seed);
    return pread(fd, got, sizeof got, off) == sizeof got && !memcmp(got, want, sizeof got);
}

static void ghost(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/ghost.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOATIME, 0600);
    unsigned char b[4096];
    fill(b, sizeof b, 1);
    if (fd < 0 || pwrite(fd, b, sizeof b, 0) != sizeof b) _exit(4);
    fill(b, sizeof b, 2);
    if (pwrite(fd, b, sizeof b, MiB) != sizeof b || ftruncate(fd, 8 * MiB)) _exit(5);
    int fd2 = open(path, O_RDWR | O_NOATIME);
    snprintf(path, sizeof path, "%s/shared.bin", dir);
    int fs = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    int fs2 = open(path, O_RDONLY);
    if (fd2 < 0 || fs < 0 || fs2 < 0 || pwrite(fs, "0000", 4, 0) != 4) _exit(6);
    if (fchown(fd, 1234, 5678) || fchmod(fd, 0640)) _exit(7);
    struct timespec times[2] = {{1300000000, 5}, {1200000000, 7}};
    if (futimens(fd, times)) _exit(8);
    snprintf(path, sizeof path, "%s/ghost.bin", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/shared.bin", dir);
    unlink(path);
    lseek(fd, 4096 + 7, SEEK_SET);
    pid_t child = fork();
    if (child == 0) {  /* a third description, of its own */
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fs);
        int fs3 = open(self, O_RDONLY);
        for (;;) {
            struct stat sa, sb;
            if (fs3 < 0 || fstat(fs3, &sa) || fstat(fs2, &sb) || sa.st_ino != sb.st_ino)
                report("FAIL child: two files");
            nap(20);
        }
    }
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        struct stat st, st2;
        if (fstat(fd, &st) || fstat(fd2, &st2)) { FAIL("fstat"); bad = 1; }
        if (st.st_nlink != 0 || st.st_size != 8 * MiB) { FAIL("nlink %ld size %ld", (long)st.st_nlink, (long)st.st_size); bad = 1; }
        if (st.st_ino != st2.st_ino || st.st_dev != st2.st_dev) { FAIL("two files"); bad = 1; }
        if ((st.st_mode & 07777) != 0640) { FAIL("mode %o", st.st_mode & 07777); bad = 1; }
        if (st.st_uid != 1234 || st.st_gid != 5678) { FAIL("owner %d:%d", st.st_uid, st.st_gid); bad = 1; }
        if (st.st_mtim.tv_sec != 1200000000 || st.st_mtim.tv_nsec != 7) { FAIL("mtime %ld", (long)st.st_mtim.tv_sec); bad = 1; }
        if (st.st_atim.tv_sec != 1300000000 || st.st_atim.tv_nsec != 5) { FAIL("atime %ld", (long)st.st_atim.tv_sec); bad = 1; }
        if (st.st_blocks > 64) { FAIL("not sparse: %ld blocks", (long)st.st_blocks); bad = 1; }
        if (lseek(fd2, 0, SEEK_HOLE) != 4096 || lseek(fd2, 4096, SEEK_DATA) != MiB) { FAIL("holes"); bad = 1; }
        if (!same_data(fd2, 0, 1) || !same_data(fd2, MiB, 2)) { FAIL("data"); bad = 1; }
        if (lseek(fd, 0, SEEK_CUR) != 4096 + 7) { FAIL("offset"); bad = 1; }
        char w[8], r[8];
        snprintf(w, sizeof w, "%04ld", round % 10000);
        if (pwrite(fs, w, 4, 0) != 4 || pread(fs2, r, 4, 0) != 4 || memcmp(w, r, 4)) { FAIL("shared write"); bad = 1; }
        struct stat sa, sb;
        if (fstat(fs, &sa) || fstat(fs2, &sb) || sa.st_ino != sb.st_ino) { FAIL("shared: two files"); bad = 1; }
        if (waitpid(child, NULL, WNOHANG) != 0) { FAIL("child gone"); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void big(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/big.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    unsigned char b[4096];
    fill(b, sizeof b, 3);
    off_t at = 3 * 1024 * MiB - 2 * 4096;
    if (fd < 0 || pwrite(fd, b, sizeof b, at) != sizeof b || ftruncate(fd, 3 * 1024 * MiB)) _exit(4);
    unlink(path);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        struct stat st;
        int bad = 0;
        if (fstat(fd, &st) || st.st_size != 3 * 1024 * MiB || st.st_blocks > 64) { FAIL("big stat"); bad = 1; }
        if (!same_data(fd, at, 3)) { FAIL("big data"); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

/* Whether fd is an unlinked node of that type, mode, owner and mtime, whose link in
 * /proc/self/fd (or cwd, fd < 0) is "path (deleted)". */
static int unlinked(int fd, const char *path, mode_t type, mode_t mode, time_t mtime) {
    struct stat st;
    char link[64], got[4200], want[4200];
    if (fd < 0 ? stat(".", &st) : fstat(fd, &st)) return 0;
    if ((st.st_mode & S_IFMT) != type || (st.st_mode & 07777) != mode || st.st_nlink != 0) return 0;
    if (st.st_uid != 1234 || st.st_gid != 5678 || st.st_mtime != mtime) return 0;
    if (fd < 0) snprintf(link, sizeof link, "/proc/self/cwd");
    else snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, got, sizeof got - 1);
    if (n < 0) return 0;
    got[n] = 0;
    snprintf(want, sizeof want, "%s (deleted)", path);
    return !strcmp(got, want);
}

static ino_t ino_of(int fd) {
    struct stat st;
    return (fd < 0 ? stat(".", &st) : fstat(fd, &st)) ? 0 : st.st_ino;
}

/* dir: two descriptions of a deleted directory (0750, 1234:5678, old mtime), one
 *      inode; reading it gives ENOENT, nothing can be made in it.
 * cwd: a deleted working directory, also held by an fd: the same inode; getcwd ENOENT.
 * cwd-alone: a deleted working directory no fd holds.
 * device: a deleted character device (a /dev/null of its own, 0640, 1234:5678), two
 *      descriptions of one inode, that still acts as /dev/null.
 * Each round the directory they were in keeps its mtime (the restart made them there). */
static void special(const char *dir, const char *mode) {
    char path[4096];
    int cwd = !strncmp(mode, "cwd", 3), device = !strcmp(mode, "device");
    snprintf(path, sizeof path, "%s/gone", dir);
    if (device ? mknod(path, S_IFCHR | 0640, makedev(1, 3)) : mkdir(path, 0750)) _exit(4);
    if (chown(path, 1234, 5678)) _exit(4);
    struct timespec times[2] = {{1300000000, 0}, {1200000000, 0}};
    if (utimensat(AT_FDCWD, path, times, 0)) _exit(4);
    int fd = open(path, device ? O_RDWR : O_RDONLY | O_DIRECTORY);
    int fd2 = open(path, device ? O_RDWR : O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fd2 < 0 || (cwd && chdir(path))) _exit(5);
    if (!strcmp(mode, "cwd-alone")) { close(fd); close(fd2); fd = fd2 = -1; }
    if (device ? unlink(path) : rmdir(path)) _exit(6);
    struct stat parent;
    if (stat(dir, &parent)) _exit(7);
    mode_t type = device ? S_IFCHR : S_IFDIR, perm = device ? 0640 : 0750;
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        struct stat p;
        if (stat(dir, &p) || p.st_mtim.tv_sec != parent.st_mtim.tv_sec || p.st_mtim.tv_nsec != parent.st_mtim.tv_nsec) {
            FAIL("the mtime of %s changed", dir); bad = 1;
        }
        if (cwd) {
            char buf[4096];
            if (getcwd(buf, sizeof buf) || errno != ENOENT) { FAIL("getcwd"); bad = 1; }
            if (!unlinked(-1, path, type, perm, 1200000000)) { FAIL("cwd not the deleted directory"); bad = 1; }
            if (fd >= 0 && ino_of(fd) != ino_of(-1)) { FAIL("cwd and fd not one directory"); bad = 1; }
            if (open("new", O_CREAT | O_RDWR, 0600) >= 0 || errno != ENOENT) { FAIL("made a file in it"); bad = 1; }
        }
        if (fd >= 0) {
            if (!unlinked(fd, path, type, perm, 1200000000) || !unlinked(fd2, path, type, perm, 1200000000)) {
                FAIL("fd not the deleted node"); bad = 1;
            }
            if (ino_of(fd) != ino_of(fd2)) { FAIL("two inodes"); bad = 1; }
        }
        if (device) {
            struct stat st;
            char c;
            if (fstat(fd, &st) || st.st_rdev != makedev(1, 3)) { FAIL("rdev"); bad = 1; }
            if (write(fd, "x", 1) != 1 || read(fd2, &c, 1) != 0) { FAIL("not /dev/null"); bad = 1; }
        } else if (fd >= 0) {
            char buf[256];
            if (syscall(SYS_getdents64, fd, buf, sizeof buf) != -1 || errno != ENOENT) { FAIL("getdents"); bad = 1; }
            if (openat(fd, "x", O_CREAT | O_RDWR, 0600) >= 0 || errno != ENOENT) { FAIL("made a file in it"); bad = 1; }
        }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void memfd(void) {
    int a = memfd_create("cryo-test", MFD_ALLOW_SEALING);
    int b = memfd_create("plain", 0);
    unsigned char blob[10000];
    fill(blob, sizeof blob, 4);
    if (a < 0 || b < 0 || write(a, blob, sizeof blob) != sizeof blob || write(b, "xyz", 3) != 3) _exit(4);
    if (fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)) _exit(5);
    lseek(a, 321, SEEK_SET);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        char path[64], link[128] = {0};
        snprintf(path, sizeof path, "/proc/self/fd/%d", a);
        if (readlink(path, link, sizeof link - 1) < 0 || strcmp(link, "/memfd:cryo-test (deleted)")) { FAIL("name %s", link); bad = 1; }
        if (fcntl(a, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW)) { FAIL("seals %d", fcntl(a, F_GET_SEALS)); bad = 1; }
        if (fcntl(b, F_GET_SEALS) != F_SEAL_SEAL) { FAIL("plain seals %d", fcntl(b, F_GET_SEALS)); bad = 1; }
        if (lseek(a, 0, SEEK_CUR) != 321) { FAIL("offset"); bad = 1; }
        unsigned char back[10000];
        if (pread(a, back, sizeof back, 0) != sizeof back || memcmp(back, blob, sizeof blob)) { FAIL("data"); bad = 1; }
        struct statfs sf;
        if (fstatfs(a, &sf) || sf.f_type != 0x01021994) { FAIL("not on tmpfs"); bad = 1; }
        int c = open(path, O_RDWR);
        struct stat s1, s2;
        if (c < 0 || fstat(c, &s1) || fstat(a, &s2) || s1.st_ino != s2.st_ino) { FAIL("reopen"); bad = 1; }
        if (c >= 0) close(c);
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void fifo(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/pipe", dir);
    if (mkfifo(path, 0640)) _exit(4);
    int r = open(path, O_RDONLY | O_NONBLOCK);
    int w = open(path, O_WRONLY);
    if (r < 0 || w < 0 || write(w, "abc", 3) != 3) _exit(5);
    unlink(path);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        struct stat sr, sw;
        char buf[8] = {0};
        if (fstat(r, &sr) || fstat(w, &sw) || !S_ISFIFO(sr.st_mode) || sr.st_ino != sw.st_ino || sr.st_nlink) { FAIL("fifo stat"); bad = 1; }
        if ((sr.st_mode & 0777) != 0640) { FAIL("fifo mode %o", sr.st_mode & 0777); bad = 1; }
        if (read(r, buf, 3) != 3 || strcmp(buf, "abc")) { FAIL("fifo data '%s'", buf); bad = 1; }
        if (write(w, "abc", 3) != 3) { FAIL("fifo write"); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}

static void mapped(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/both.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, 4096)) _exit(4);
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) _exit(5);
    unlink(path);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        p[0] = (char)round;
        char c;
        if (pread(fd, &c, 1, 0) != 1 || c != (char)round) FAIL("fd and mapping differ");
        else report("ok %ld", round);
        nap(20);
    }
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    if (!strcmp(argv[2], "ghost")) ghost(argv[3]);
    if (!strcmp(argv[2], "big")) big(argv[3]);
    if (!strcmp(argv[2], "dir") || !strncmp(argv[2], "cwd", 3) || !strcmp(argv[2], "device"))
        special(argv[3], argv[2]);
    if (!strcmp(argv[2], "memfd")) memfd();
    if (!strcmp(argv[2], "mapped")) mapped(argv[3]);
    if (!strcmp(argv[2], "fifo")) fifo(argv[3]);
    return 2;
}
