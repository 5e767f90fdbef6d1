/* Per-mapping kernel state that is not data: madvise advice, mlock, MAP_NORESERVE,
 * MAP_DROPPABLE, guard pages, mseal, mlockall(MCL_FUTURE).  Each round the victim reads
 * its own /proc/self/smaps and pagemap and checks that every region still carries
 * exactly its flags (of those listed in WATCH), its data, and its guard pages; that a
 * WIPEONFORK region reads as zeros in a child; that a new mapping is locked (MCL_FUTURE). */
#include "common.h"
#include "rounds.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define PG 4096UL
#define N 4
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

static const char *WATCH[] = {"dc", "wf", "hg", "nh", "dd", "mg", "rr", "sr", "lo", "lf",
                              "nr", "dp", "sl", NULL};

struct region { const char *name; unsigned char *p; const char *flags; int fill; };

static int has(const char *flags, const char *f) {
    size_t n = strlen(f);
    for (const char *s = flags; (s = strstr(s, f)); s++)
        if ((s == flags || s[-1] == ' ') && (s[n] == ' ' || s[n] == '\0' || s[n] == '\n')) return 1;
    return 0;
}

/* VmFlags of the mapping holding addr, and its extent */
static int vmflags(unsigned char *addr, char *out, size_t size, uintptr_t *s, uintptr_t *e) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    while (f && fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = a <= (uintptr_t)addr && (uintptr_t)addr < b;
            if (in) { *s = a; *e = b; }
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            snprintf(out, size, "%s", line + 8);
            found = 1;
            break;
        }
    }
    if (f) fclose(f);
    return found;
}

static int pkey_of(unsigned char *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, key = -1;
    while (f && fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = a <= (uintptr_t)addr && (uintptr_t)addr < b;
        else if (in && sscanf(line, "ProtectionKey: %d", &key) == 1)
            break;
    }
    if (f) fclose(f);
    return key;
}

static uint64_t pagemap(unsigned char *addr) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t e = 0;
    if (pread(fd, &e, 8, (uintptr_t)addr / PG * 8) != 8) e = 0;
    close(fd);
    return e;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    poke_setup();
    int future = argc > 2 && !strcmp(argv[2], "future");
    if (argc > 2 && !strcmp(argv[2], "pkeys")) {
        /* x86 protection keys: two allocated, one tagging a mapping and denying writes in
         * this thread's PKRU, the other allocated and unused */
        int k1 = pkey_alloc(0, 0), k2 = pkey_alloc(0, PKEY_DISABLE_WRITE);
        if (k1 < 0 || k2 < 0) { report("setup pkey_alloc: %s", strerror(errno)); _exit(5); }
        unsigned char *tagged = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(tagged, 'k', N * PG);
        if (pkey_mprotect(tagged, N * PG, PROT_READ | PROT_WRITE, k2)) { report("setup pkey_mprotect: %s", strerror(errno)); _exit(5); }
        report("ready %d %d %d", getpid(), k1, k2);
        for (long round = 0;; round++) {
            int bad = 0;
            if (pkey_of(tagged) != k2) { FAIL("mapping's protection key %d, not %d", pkey_of(tagged), k2); bad = 1; }
            if (pkey_get(k2) != PKEY_DISABLE_WRITE) { FAIL("PKRU rights of key %d: %d", k2, pkey_get(k2)); bad = 1; }
            for (size_t i = 0; i < N * PG; i++) if (tagged[i] != 'k') { FAIL("tagged data"); bad = 1; break; }
            unsigned char *t = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (pkey_mprotect(t, PG, PROT_READ | PROT_WRITE, k1)) { FAIL("key %d no longer allocated", k1); bad = 1; }
            munmap(t, PG);
            int k3 = pkey_alloc(0, 0);
            if (k3 != (k1 > k2 ? k1 : k2) + 1) { FAIL("next key %d: the allocated set changed", k3); bad = 1; }
            if (k3 >= 0) pkey_free(k3);
            if (!bad) report("ok %ld", round);
            next_round();
        }
    }
    if (argc > 2 && !strcmp(argv[2], "ksm")) {
        /* KSM for the whole process (PR_SET_MEMORY_MERGE), but one mapping opted out */
        if (prctl(67, 1, 0, 0, 0)) { report("setup PR_SET_MEMORY_MERGE: %s", strerror(errno)); _exit(5); }
        unsigned char *out = mmap(NULL, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (madvise(out, N * PG, MADV_UNMERGEABLE)) { report("setup unmergeable: %s", strerror(errno)); _exit(5); }
        memset(out, 'u', N * PG);
        report("ready %d", getpid());
        for (long round = 0;; round++) {
            int bad = 0;
            char fl[256]; uintptr_t s, e;
            if (prctl(68, 0, 0, 0, 0) != 1) { FAIL("PR_GET_MEMORY_MERGE lost"); bad = 1; }
            unsigned char *t = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (!vmflags(t, fl, sizeof fl, &s, &e) || !has(fl, "mg")) { FAIL("new mapping not mergeable"); bad = 1; }
            munmap(t, PG);
            if (!vmflags(out, fl, sizeof fl, &s, &e) || has(fl, "mg")) { FAIL("opted-out mapping mergeable"); bad = 1; }
            if (!bad) report("ok %ld", round);
            next_round();
        }
    }
    struct region r[32];
    int n = 0;
    /* a spacer page between regions, so that no two can merge */
    unsigned char *arena = mmap(NULL, 64 * (N + 1) * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int slot = 0;
#define AT(flags) ({ unsigned char *q_ = mmap(arena + (slot++) * (N + 1) * PG, N * PG, PROT_READ | PROT_WRITE, \
                        MAP_FIXED | MAP_ANONYMOUS | (flags), -1, 0); \
                     if (q_ == MAP_FAILED) { report("setup: %s", strerror(errno)); _exit(5); } q_; })
#define ADV(nm, advice, fl) do { unsigned char *q = AT(MAP_PRIVATE); \
        if (madvise(q, N * PG, advice)) { report("setup %s: %s", nm, strerror(errno)); _exit(5); } \
        r[n++] = (struct region){nm, q, fl, 1}; } while (0)
    ADV("dontfork", MADV_DONTFORK, "dc");
    ADV("wipeonfork", MADV_WIPEONFORK, "wf");
    ADV("hugepage", MADV_HUGEPAGE, "hg");
    ADV("nohugepage", MADV_NOHUGEPAGE, "nh");
    ADV("dontdump", MADV_DONTDUMP, "dd");
    ADV("mergeable", MADV_MERGEABLE, "mg");
    ADV("random", MADV_RANDOM, "rr");
    ADV("sequential", MADV_SEQUENTIAL, "sr");
    unsigned char *q = AT(MAP_PRIVATE);
    if (mlock(q, N * PG)) { report("setup mlock: %s", strerror(errno)); _exit(5); }
    r[n++] = (struct region){"mlock", q, "lo", 1};
    q = AT(MAP_PRIVATE);
    if (syscall(SYS_mlock2, q, N * PG, MLOCK_ONFAULT)) { report("setup mlock2: %s", strerror(errno)); _exit(5); }
    r[n++] = (struct region){"mlock-onfault", q, "lo lf", 1};
    r[n++] = (struct region){"noreserve", AT(MAP_PRIVATE | MAP_NORESERVE), "nr", 1};
    r[n++] = (struct region){"droppable", AT(MAP_DROPPABLE), "wf dd dp nr", 1};
    q = AT(MAP_PRIVATE);
    if (syscall(462, q, N * PG, 0)) { report("setup mseal: %s", strerror(errno)); _exit(5); }
    r[n++] = (struct region){"sealed", q, "sl", 1};
    unsigned char *guard = AT(MAP_PRIVATE);
    r[n++] = (struct region){"guarded", guard, "", 0};
    unsigned char *plain = AT(MAP_PRIVATE);
    r[n++] = (struct region){"plain", plain, "", 0};
    /* data: the first page of each region (mlock-onfault keeps the rest unpopulated) */
    for (int i = 0; i < n; i++)
        if (r[i].fill) memset(r[i].p, 'A' + i, PG);
    memset(guard, 'G', N * PG);
    if (madvise(guard + PG, PG, MADV_GUARD_INSTALL) || madvise(guard + 3 * PG, PG, MADV_GUARD_INSTALL)) {
        report("setup guard: %s", strerror(errno)); _exit(5);
    }
    if (future && mlockall(MCL_FUTURE | MCL_ONFAULT)) { report("setup mlockall: %s", strerror(errno)); _exit(5); }
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0;
        for (int i = 0; i < n; i++) {
            char fl[256];
            uintptr_t s = 0, e = 0;
            if (!vmflags(r[i].p, fl, sizeof fl, &s, &e)) { FAIL("%s: no mapping", r[i].name); bad = 1; continue; }
            if (s > (uintptr_t)r[i].p || e < (uintptr_t)r[i].p + N * PG) {
                FAIL("%s: split %lx-%lx", r[i].name, s, e); bad = 1;
            }
            for (const char **w = WATCH; *w; w++)
                if (has(fl, *w) != has(r[i].flags, *w)) {
                    FAIL("%s: flag %s %s (VmFlags:%s)", r[i].name, *w, has(fl, *w) ? "added" : "lost", fl);
                    bad = 1;
                }
            if (r[i].fill && !(!strcmp(r[i].name, "droppable") && r[i].p[0] == 0)) /* may be dropped */
                for (size_t k = 0; k < PG; k++)
                    if (r[i].p[k] != 'A' + i) { FAIL("%s: data", r[i].name); bad = 1; break; }
        }
        /* mlock-onfault: only the page written is resident */
        for (int i = 0; i < n; i++)
            if (!strcmp(r[i].name, "mlock-onfault"))
                for (int k = 0; k < (int)N; k++)
                    if (!!(pagemap(r[i].p + k * PG) >> 63) != (k == 0)) { FAIL("mlock-onfault: page %d residency", k); bad = 1; }
        for (int k = 0; k < (int)N; k++) {
            int g = !!(pagemap(guard + k * PG) & (1ULL << 58));
            if (g != (k == 1 || k == 3)) { FAIL("guard page %d: %s", k, g ? "added" : "lost"); bad = 1; }
            else if (!g && guard[k * PG] != 'G') { FAIL("guarded region data %d", k); bad = 1; }
        }
        /* a child sees the WIPEONFORK region zeroed and no DONTFORK region */
        pid_t c = fork();
        if (c == 0) {
            int ok = r[1].p[0] == 0 && r[1].p[PG - 1] == 0;
            char fl[256]; uintptr_t s, e;
            if (vmflags(r[0].p, fl, sizeof fl, &s, &e) && s <= (uintptr_t)r[0].p && (uintptr_t)r[0].p < e) ok = 0;
            _exit(ok ? 0 : 1);
        }
        int st = 0;
        if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) { FAIL("fork semantics"); bad = 1; }
        if (future) {
            unsigned char *t = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            char fl[256]; uintptr_t s, e;
            if (!vmflags(t, fl, sizeof fl, &s, &e) || !has(fl, "lo") || !has(fl, "lf")) { FAIL("mlockall(MCL_FUTURE|MCL_ONFAULT) lost"); bad = 1; }
            munmap(t, PG);
        }
        if (!bad) report("ok %ld", round);
        next_round();
    }
}
