/* Files that move between checkpoint and restart (cryo restart --translate OLD=NEW):
 * run with its cwd in DIR, as DIR/prog; it keeps DIR/data open (read on, at its own
 * offset), DIR/map mapped privately, and reads DIR/marker by a relative path.  Each
 * tick it checks, byte for byte, the next bytes of data, the whole mapping, the marker
 * (through its cwd) and its executable (/proc/self/exe ends in /prog).  "ok N". */
#include "common.h"
#include <sys/mman.h>
#include <sys/stat.h>

#define DATA (64 << 10)
#define MAP (16 << 10)

static unsigned char data_at(long i) { return (unsigned char)(i * 31 + 7); }
static unsigned char map_at(long i) { return (unsigned char)(i * 13 + 1); }

int main(int argc, char **argv) {
    open_report(argc, argv);
    int fd = open("data", O_RDONLY);
    if (fd < 0) { FAIL("open data"); return 1; }
    int mfd = open("map", O_RDONLY);
    if (mfd < 0) { FAIL("open map"); return 1; }
    unsigned char *m = mmap(NULL, MAP, PROT_READ, MAP_PRIVATE, mfd, 0);
    if (m == MAP_FAILED) { FAIL("mmap"); return 1; }
    close(mfd);
    report("ready %d", getpid());
    long pos = 0;
    for (long i = 0;; i++) {
        unsigned char buf[97];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) FAIL("read data: %s", strerror(errno));
        for (ssize_t k = 0; k < n; k++)
            if (buf[k] != data_at(pos + k)) { FAIL("data at %ld", pos + k); break; }
        pos += n;
        if (n < (ssize_t)sizeof buf) { lseek(fd, 0, SEEK_SET); pos = 0; }
        for (long k = 0; k < MAP; k++)
            if (m[k] != map_at(k)) { FAIL("map at %ld", k); break; }
        char mk[32] = {0};
        int kfd = open("marker", O_RDONLY);
        if (kfd < 0 || read(kfd, mk, sizeof mk - 1) < 0 || strcmp(mk, "cwd marker\n"))
            FAIL("marker through the cwd");
        if (kfd >= 0) close(kfd);
        char exe[4096] = {0};
        ssize_t e = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (e < 5 || strcmp(exe + e - 5, "/prog")) FAIL("exe %s", exe);
        report("ok %ld %ld", i, pos);
        nap(20);
    }
}
