/* A fanotify group of the process (FAN_CLASS_NOTIF) with a mark on the mount of argv[3]
 * (FAN_MARK_MOUNT, or FAN_MARK_FILESYSTEM with argv[2] "fs"): FAN_OPEN, FAN_ACCESS,
 * FAN_CLOSE_NOWRITE.  It maps argv[3]/data privately and holds it open; no one else
 * touches that mount, so no event may come: each round "ok N", or "FAIL" naming the
 * first event's mask and file.  With argv[2] "inoroot", an inotify watch of argv[3]
 * itself (the mount's root: IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE) instead.
 * argv: OUT MODE DIR (issue 9, session 9 h1). */
#include "common.h"
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    open_report(argc, argv);
    if (argc < 4) _exit(2);
    char path[4200];
    snprintf(path, sizeof path, "%s/data", argv[3]);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, 16384)) FAIL("data: %s", strerror(errno));
    volatile char *m = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) FAIL("mmap: %s", strerror(errno));
    m[0] = 1;  /* one page copied on write, three the file's (one read, two untouched) */
    (void)m[4096];
    int ino = !strcmp(argv[2], "inoroot"), g;
    if (ino) {
        g = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (g < 0 || inotify_add_watch(g, argv[3], IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE) < 0)
            FAIL("inotify: %s", strerror(errno));
    } else {
        g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY);
        unsigned kind = !strcmp(argv[2], "fs") ? FAN_MARK_FILESYSTEM : FAN_MARK_MOUNT;
        if (g < 0 || fanotify_mark(g, FAN_MARK_ADD | kind, FAN_OPEN | FAN_ACCESS | FAN_CLOSE_NOWRITE,
                                   AT_FDCWD, argv[3])) FAIL("fanotify: %s", strerror(errno));
    }
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        char buf[4096] __attribute__((aligned(8)));
        ssize_t n = read(g, buf, sizeof buf);
        if (n > 0 && ino) {
            struct inotify_event *e = (void *)buf;
            FAIL("%zd bytes of inotify events, the first mask %#x (%s)", n, e->mask, e->len ? e->name : "the root");
        } else if (n > 0) {
            struct fanotify_event_metadata *e = (void *)buf;
            char p[64], name[4200] = "?";
            snprintf(p, sizeof p, "/proc/self/fd/%d", e->fd);
            ssize_t k = e->fd >= 0 ? readlink(p, name, sizeof name - 1) : -1;
            if (k > 0) name[k] = 0;
            FAIL("%zd bytes of events, the first mask %#llx on %s, from pid %d", n,
                 (unsigned long long)e->mask, name, e->pid);
            for (char *q = buf; q < buf + n; q += ((struct fanotify_event_metadata *)q)->event_len)
                if (((struct fanotify_event_metadata *)q)->fd >= 0) close(((struct fanotify_event_metadata *)q)->fd);
        } else if (m[0] != 1) {
            FAIL("the copied page lost its byte");
        } else {
            report("ok %ld", round);
        }
        nap(50);
    }
}
