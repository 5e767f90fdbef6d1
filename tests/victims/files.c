/* Files survive: offsets, open flags and fd flags (O_APPEND, O_CLOEXEC, O_NONBLOCK),
 * a shared open file description (dup), a file deleted while open, a directory,
 * /dev/null, /dev/zero, /dev/urandom, cwd and umask.  argv[2] is a scratch directory. */
#include "common.h"
#include <sys/stat.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    const char *dir = argv[2];
    char path[4096];
    if (chdir(dir)) _exit(4);
    umask(027);
    snprintf(path, sizeof path, "%s/data.txt", dir);
    int fd_data = open(path, O_RDWR | O_CREAT, 0600);
    for (int i = 0; i < 1000; i++) dprintf(fd_data, "line %04d\n", i);
    lseek(fd_data, 1234, SEEK_SET);
    int fd_dup = dup(fd_data);                        /* shares the offset */
    snprintf(path, sizeof path, "%s/append.log", dir);
    int fd_app = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int fd_nb = open("/dev/null", O_RDONLY | O_NONBLOCK);
    int fd_zero = open("/dev/zero", O_RDONLY);
    int fd_rand = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    int fd_dir = open(dir, O_RDONLY | O_DIRECTORY);
    snprintf(path, sizeof path, "%s/gone.bin", dir);
    int fd_del = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char blob[10000];
    for (size_t i = 0; i < sizeof blob; i++) blob[i] = (unsigned char)mix(i);
    if (write(fd_del, blob, sizeof blob) != sizeof blob) _exit(5);
    lseek(fd_del, 777, SEEK_SET);
    unlink(path);
    int fd_high = dup2(fd_zero, 100);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, dir)) { FAIL("cwd %s", cwd); bad = 1; }
        mode_t um = umask(027);
        if (um != 027) { FAIL("umask %o", um); bad = 1; }
        off_t pos = lseek(fd_data, 0, SEEK_CUR);
        if (pos != 1234 + round) { FAIL("offset %ld", (long)pos); bad = 1; }
        char c;
        if (pread(fd_data, &c, 1, 1234) != 1) { FAIL("pread"); bad = 1; }
        if (read(fd_dup, &c, 1) != 1) { FAIL("read dup"); bad = 1; }  /* moves both by one */
        if (lseek(fd_data, 0, SEEK_CUR) != 1234 + round + 1) { FAIL("shared offset"); bad = 1; }
        if ((fcntl(fd_app, F_GETFL) & O_APPEND) == 0) { FAIL("O_APPEND"); bad = 1; }
        if ((fcntl(fd_app, F_GETFD) & FD_CLOEXEC) == 0) { FAIL("FD_CLOEXEC app"); bad = 1; }
        if ((fcntl(fd_rand, F_GETFD) & FD_CLOEXEC) == 0) { FAIL("FD_CLOEXEC rand"); bad = 1; }
        if ((fcntl(fd_data, F_GETFD) & FD_CLOEXEC) != 0) { FAIL("no FD_CLOEXEC data"); bad = 1; }
        if ((fcntl(fd_nb, F_GETFL) & O_NONBLOCK) == 0) { FAIL("O_NONBLOCK"); bad = 1; }
        if ((fcntl(fd_data, F_GETFL) & O_ACCMODE) != O_RDWR) { FAIL("O_RDWR"); bad = 1; }
        unsigned char z[16], r[16];
        if (read(fd_zero, z, 16) != 16 || z[0] || z[15]) { FAIL("/dev/zero"); bad = 1; }
        if (read(fd_high, z, 16) != 16) { FAIL("fd 100"); bad = 1; }
        if (read(fd_rand, r, 16) != 16) { FAIL("/dev/urandom"); bad = 1; }
        struct stat st;
        if (fstat(fd_dir, &st) || !S_ISDIR(st.st_mode)) { FAIL("dir fd"); bad = 1; }
        if (fstat(fd_del, &st) || st.st_nlink != 0 || st.st_size != sizeof blob) { FAIL("deleted file stat"); bad = 1; }
        if (lseek(fd_del, 0, SEEK_CUR) != 777) { FAIL("deleted file offset"); bad = 1; }
        unsigned char back[10000];
        if (pread(fd_del, back, sizeof back, 0) != sizeof back || memcmp(back, blob, sizeof blob)) {
            FAIL("deleted file content"); bad = 1;
        }
        if (dprintf(fd_app, "round %ld\n", round) < 0) { FAIL("append write"); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(20);
    }
}
