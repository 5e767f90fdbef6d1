/* Mappings whose backing object is not a plain file by path: private and shared
 * mappings of a deleted file, private /dev/zero, memfd mapped shared and private,
 * MAP_HUGETLB (private and shared) and a hugetlb memfd, an AIO ring (io_setup).
 * argv[2] = mode: "files", "hugetlb", "aio", "uffd", "sysv",
 * "fd+map", "clonevm"; argv[3] = a directory for the files.
 * Each round: data (the file's pages and the copied-on-write ones), that a private
 * mapping still sees the file (the shared writer's later stores show through in pages
 * not yet copied), names in /proc/self/maps, hugetlb page size. */
#include "common.h"
#include "rounds.h"
#include <linux/aio_abi.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <stdint.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>

#define PG 4096UL
#define HPG (2UL << 20)

static int maps_has(void *addr, const char *name) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int ok = 0;
    while (f && fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a <= (uintptr_t)addr && (uintptr_t)addr < b) {
            ok = strstr(line, name) != NULL;
            break;
        }
    }
    if (f) fclose(f);
    return ok;
}

static long kernel_page(void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0;
    long kb = -1;
    while (f && fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = a <= (uintptr_t)addr && (uintptr_t)addr < b;
        else if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1)
            break;
    }
    if (f) fclose(f);
    return kb;
}

static int flags_of(void *addr, char *out, size_t size) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    while (f && fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = a <= (uintptr_t)addr && (uintptr_t)addr < b;
        else if (in && !strncmp(line, "VmFlags:", 8)) { snprintf(out, size, "%s", line + 8); found = 1; break; }
    }
    if (f) fclose(f);
    return found;
}

static int all(const unsigned char *p, size_t n, unsigned char c) {
    for (size_t i = 0; i < n; i++) if (p[i] != c) return 0;
    return 1;
}

static int vm_child(void *arg) {
    volatile long *counter = arg;
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test's victim */
    for (;;) {
        struct timespec ts = {0, 5000000};
        syscall(SYS_nanosleep, &ts, NULL);
        ++*counter;
    }
    return 0;
}

#define SETUP(cond, what) do { if (!(cond)) { report("setup %s: %s", what, strerror(errno)); _exit(5); } } while (0)

int main(int argc, char **argv) {
    open_report(argc, argv);
    poke_setup();
    const char *mode = argc > 2 ? argv[2] : "files";
    const char *dir = argc > 3 ? argv[3] : "/tmp";
    char path[512];
    if (!strcmp(mode, "files")) {
        /* a deleted file, mapped shared (writer) and private (reader with one COW page) */
        snprintf(path, sizeof path, "%s/deleted.bin", dir);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
        SETUP(fd >= 0 && ftruncate(fd, 4 * PG) == 0, "deleted file");
        unsigned char *dsh = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        unsigned char *dpr = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        SETUP(dsh != MAP_FAILED && dpr != MAP_FAILED, "mmap deleted");
        close(fd);
        unlink(path);
        memset(dsh, 'd', 4 * PG);
        memset(dpr + PG, 'c', PG); /* page 1 copied on write */
        /* private /dev/zero with data */
        int z = open("/dev/zero", O_RDWR);
        unsigned char *zp = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, z, 0);
        SETUP(zp != MAP_FAILED, "mmap /dev/zero");
        close(z);
        memset(zp + 2 * PG, 'z', PG);
        /* memfd mapped shared and private */
        int m = memfd_create("cryo-test", 0);
        SETUP(m >= 0 && ftruncate(m, 4 * PG) == 0, "memfd");
        unsigned char *msh = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        unsigned char *mpr = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, m, 0);
        SETUP(msh != MAP_FAILED && mpr != MAP_FAILED, "mmap memfd");
        close(m);
        memset(msh, 'm', 4 * PG);
        memset(mpr + 3 * PG, 'p', PG);
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            int bad = 0;
            unsigned char w = (unsigned char)('A' + round % 26);
            /* the shared writer stores into page 2: the private reader sees it there
             * (not copied), not in page 1 (copied) */
            dsh[2 * PG] = w; msh[0] = w;
            if (dpr[2 * PG] != w || !all(dpr + 2 * PG + 1, PG - 1, 'd') || !all(dpr, PG, 'd')) { FAIL("deleted private: file pages"); bad = 1; }
            if (!all(dpr + PG, PG, 'c')) { FAIL("deleted private: copied page"); bad = 1; }
            if (!all(dsh + PG, PG, 'd')) { FAIL("deleted shared data"); bad = 1; }
            if (!maps_has(dpr, "deleted.bin (deleted)") || !maps_has(dsh, "deleted.bin (deleted)")) { FAIL("deleted file name"); bad = 1; }
            if (!all(zp, 2 * PG, 0) || !all(zp + 2 * PG, PG, 'z') || !all(zp + 3 * PG, PG, 0)) { FAIL("/dev/zero private"); bad = 1; }
            if (!maps_has(zp, "/dev/zero")) { FAIL("/dev/zero name"); bad = 1; }
            if (mpr[0] != w || !all(mpr + 1, 3 * PG - 1, 'm') || !all(mpr + 3 * PG, PG, 'p')) { FAIL("memfd private"); bad = 1; }
            if (!all(msh + 1, 4 * PG - 1, 'm')) { FAIL("memfd shared"); bad = 1; }
            if (!maps_has(mpr, "/memfd:cryo-test (deleted)") || !maps_has(msh, "/memfd:cryo-test (deleted)")) { FAIL("memfd name"); bad = 1; }
            if (!bad) report("ok %ld", round);
            next_round();
        }
    }
    if (!strcmp(mode, "hugetlb")) {
        unsigned char *hp = mmap(NULL, 2 * HPG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        SETUP(hp != MAP_FAILED, "MAP_HUGETLB private");
        unsigned char *hs = mmap(NULL, HPG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        SETUP(hs != MAP_FAILED, "MAP_HUGETLB shared");
        int m = memfd_create("cryo-huge", MFD_HUGETLB);
        SETUP(m >= 0 && ftruncate(m, HPG) == 0, "hugetlb memfd");
        unsigned char *hm = mmap(NULL, HPG, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        SETUP(hm != MAP_FAILED, "mmap hugetlb memfd");
        close(m);
        memset(hp, 'h', HPG); /* the second huge page is left untouched */
        memset(hs, 's', HPG);
        memset(hm, 'f', HPG);
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            int bad = 0;
            if (!all(hp, HPG, 'h')) { FAIL("hugetlb private data"); bad = 1; }
            if (!all(hs, HPG, 's')) { FAIL("hugetlb shared data"); bad = 1; }
            if (!all(hm, HPG, 'f')) { FAIL("hugetlb memfd data"); bad = 1; }
            if (kernel_page(hp) != 2048 || kernel_page(hs) != 2048 || kernel_page(hm) != 2048) { FAIL("not huge pages"); bad = 1; }
            if (!maps_has(hp, "anon_hugepage") || !maps_has(hs, "anon_hugepage")) { FAIL("hugetlb names"); bad = 1; }
            if (!maps_has(hm, "/memfd:cryo-huge (deleted)")) { FAIL("hugetlb memfd name"); bad = 1; }
            if (!bad) report("ok %ld", round);
            next_round();
        }
    }
    if (!strcmp(mode, "fd+map")) {
        /* a memfd and a deleted file, each both open on an fd and mapped shared: one
         * file, a store through the fd shows in the mapping */
        int m = memfd_create("cryo-both", 0);
        snprintf(path, sizeof path, "%s/both.bin", dir);
        int d = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        SETUP(m >= 0 && d >= 0 && ftruncate(m, PG) == 0 && ftruncate(d, PG) == 0, "files");
        unlink(path);
        unsigned char *mm = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        unsigned char *dm = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, d, 0);
        SETUP(mm != MAP_FAILED && dm != MAP_FAILED, "mmap");
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            unsigned char w = (unsigned char)(round % 250 + 1);
            int bad = 0;
            if (pwrite(m, &w, 1, 7) != 1 || pwrite(d, &w, 1, 7) != 1) { FAIL("pwrite: %s", strerror(errno)); bad = 1; }
            if (mm[7] != w) { FAIL("memfd: fd and mapping are two files"); bad = 1; }
            if (dm[7] != w) { FAIL("deleted file: fd and mapping are two files"); bad = 1; }
            if (!bad) report("ok %ld", round);
            nap(20);
        }
    }
    if (!strcmp(mode, "sysv")) {
        /* an attached SysV segment with per-mapping state: locked, DONTFORK, DONTDUMP */
        int id = shmget(IPC_PRIVATE, 4 * PG, IPC_CREAT | 0600);
        unsigned char *p = shmat(id, NULL, 0);
        SETUP(id >= 0 && p != (void *)-1, "shmget/shmat");
        shmctl(id, IPC_RMID, NULL);
        memset(p, 'v', 4 * PG);
        SETUP(mlock(p, 4 * PG) == 0 && madvise(p, 4 * PG, MADV_DONTFORK) == 0
              && madvise(p, 4 * PG, MADV_DONTDUMP) == 0, "mlock/madvise");
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            int bad = 0;
            char fl[512];
            if (!flags_of(p, fl, sizeof fl)) { FAIL("segment not attached"); bad = 1; }
            else if (!strstr(fl, " lo") || !strstr(fl, " dc") || !strstr(fl, " dd")) { FAIL("segment state lost:%s", fl); bad = 1; }
            if (!all(p, 4 * PG, 'v')) { FAIL("segment data"); bad = 1; }
            if (!bad) report("ok %ld", round);
            next_round();
        }
    }
    if (!strcmp(mode, "clonevm")) {
        /* a child process sharing the parent's address space (clone(CLONE_VM), no
         * CLONE_THREAD): the child counts in shared memory, the parent sees it move */
        static volatile long counter;
        static char stack[64 * 1024];
        pid_t c = clone(vm_child, stack + sizeof stack, CLONE_VM | SIGCHLD, (void *)&counter);
        SETUP(c > 0, "clone(CLONE_VM)");
        report("ready %d", getpid());
        int stuck = 0; /* a round spent frozen by a checkpoint attempt sees no change */
        for (long round = 0;; round++) {
            long before = counter;
            nap(30);
            stuck = counter == before ? stuck + 1 : 0;
            if (stuck >= 10) FAIL("the CLONE_VM child's writes are not seen");
            else if (!stuck) report("ok %ld", round);
        }
    }
    if (!strcmp(mode, "uffd")) {
        /* a region registered with a userfaultfd in missing mode */
        unsigned char *u = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        SETUP(uffd >= 0, "userfaultfd");
        struct uffdio_api api = {.api = UFFD_API};
        SETUP(ioctl(uffd, UFFDIO_API, &api) == 0, "UFFDIO_API");
        struct uffdio_register reg = {.range = {(uintptr_t)u, 4 * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
        SETUP(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER");
        /* held on a high fd, where a checkpointer might take it for its own */
        SETUP(dup2(uffd, 1001) == 1001 && close(uffd) == 0, "dup2 uffd");
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            report("ok %ld", round);
            nap(20);
        }
    }
    if (!strcmp(mode, "aio")) {
        aio_context_t ctx = 0;
        SETUP(syscall(SYS_io_setup, 8, &ctx) == 0, "io_setup");
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            struct io_event ev;
            struct timespec ts = {0, 0};
            /* no events: returns 0 on a live context, EINVAL on a lost one */
            if (syscall(SYS_io_getevents, ctx, 0, 1, &ev, &ts) != 0) FAIL("aio context: %s", strerror(errno));
            else report("ok %ld", round);
            nap(20);
        }
    }
    return 1;
}
