/* Credentials survive (issue 9): uid/gid real, effective, saved and fs, supplementary
 * groups, all five capability sets, securebits, no_new_privs, the audit loginuid and
 * sessionid, and the dumpable flag (set last, after the kernel cleared it on the
 * credential change).  Starts as root, keeps a few capabilities across the drop to
 * uid 1000 (SECBIT_KEEP_CAPS), raises one ambient capability, drops some of the bounding
 * set and locks SECBIT_NO_CAP_AMBIENT_RAISE, which forbids raising it again. */
#include "common.h"
#include <grp.h>
#include <pthread.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <linux/securebits.h>

static const unsigned long long PRM_WANT = 1ULL << CAP_KILL | 1ULL << CAP_NET_BIND_SERVICE |
                                           1ULL << CAP_CHOWN | 1ULL << CAP_SYS_NICE;
static const unsigned long long EFF_WANT = 1ULL << CAP_KILL | 1ULL << CAP_NET_BIND_SERVICE;
static const unsigned long long INH_WANT = 1ULL << CAP_NET_BIND_SERVICE | 1ULL << CAP_CHOWN;
static const unsigned long long AMB_WANT = 1ULL << CAP_NET_BIND_SERVICE;
static const int BND_DROP[] = {CAP_SYS_MODULE, CAP_MKNOD, CAP_SYS_BOOT, -1};
static const int SECBITS_WANT = SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE |
                                SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED | SECBIT_NOROOT;
static const gid_t GROUPS_WANT[] = {10, 20, 1234};
static char login0[32], sess0[32];
static unsigned long long bnd0;  /* the bounding set we started with (this VM lacks some) */

static void capsets(unsigned long long *eff, unsigned long long *prm, unsigned long long *inh) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d)) { FAIL("capget %d", errno); return; }
    *eff = d[0].effective | (unsigned long long)d[1].effective << 32;
    *prm = d[0].permitted | (unsigned long long)d[1].permitted << 32;
    *inh = d[0].inheritable | (unsigned long long)d[1].inheritable << 32;
}

static void read_file(const char *path, char *buf, size_t n) {
    int fd = open(path, O_RDONLY);
    memset(buf, 0, n);
    if (fd < 0 || read(fd, buf, n - 1) < 0) snprintf(buf, n, "error %d", errno);
    if (fd >= 0) close(fd);
}

/* the state of the calling thread; 0 when all is as set up */
static int check(const char *who) {
    int bad = 0;
    uid_t r, e, s; gid_t gr, ge, gs;
    getresuid(&r, &e, &s); getresgid(&gr, &ge, &gs);
    if (r != 1000 || e != 1001 || s != 1002) { FAIL("%s uids %d %d %d", who, r, e, s); bad = 1; }
    if (gr != 2000 || ge != 2001 || gs != 2002) { FAIL("%s gids %d %d %d", who, gr, ge, gs); bad = 1; }
    int fsu = setfsuid(-1), fsg = setfsgid(-1);
    if (fsu != 1000 || fsg != 2000) { FAIL("%s fsuid %d fsgid %d", who, fsu, fsg); bad = 1; }
    gid_t g[16];
    int n = getgroups(16, g);
    if (n != 3 || g[0] != 10 || g[1] != 20 || g[2] != 1234) { FAIL("%s groups n=%d", who, n); bad = 1; }
    unsigned long long eff = 0, prm = 0, inh = 0;
    capsets(&eff, &prm, &inh);
    if (eff != EFF_WANT || prm != PRM_WANT || inh != INH_WANT) {
        FAIL("%s caps eff %llx prm %llx inh %llx", who, eff, prm, inh); bad = 1;
    }
    for (int c = 0; c <= CAP_LAST_CAP; c++) {
        int want = !!(bnd0 & 1ULL << c);
        for (const int *d = BND_DROP; *d >= 0; d++) if (*d == c) want = 0;
        int got = prctl(PR_CAPBSET_READ, c, 0, 0, 0);
        if (got != want) { FAIL("%s bounding cap %d: %d", who, c, got); bad = 1; break; }
        int amb = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0);
        if (amb != !!(AMB_WANT & 1ULL << c)) { FAIL("%s ambient cap %d: %d", who, c, amb); bad = 1; break; }
    }
    int sb = prctl(PR_GET_SECUREBITS);
    if (sb != SECBITS_WANT) { FAIL("%s securebits %#x", who, sb); bad = 1; }
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) { FAIL("%s no_new_privs", who); bad = 1; }
    char buf[32];
    read_file("/proc/thread-self/loginuid", buf, sizeof buf);
    if (strcmp(buf, login0)) { FAIL("%s loginuid %s, was %s", who, buf, login0); bad = 1; }
    read_file("/proc/thread-self/sessionid", buf, sizeof buf);
    if (strcmp(buf, sess0)) { FAIL("%s sessionid %s, was %s", who, buf, sess0); bad = 1; }
    return bad;
}

/* everything here is per thread: raw calls change the calling thread only */
static void drop(void) {
    for (const int *c = BND_DROP; *c >= 0; c++)
        if (prctl(PR_CAPBSET_DROP, *c, 0, 0, 0)) FAIL("capbset_drop %d", errno);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) FAIL("no_new_privs %d", errno);
    /* keep the permitted set across the uid change */
    if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NOROOT)) FAIL("securebits %d", errno);
    if (syscall(SYS_setresgid, 2000, 2001, 2002)) FAIL("setresgid %d", errno);
    if (syscall(SYS_setresuid, 1000, 1001, 1002)) FAIL("setresuid %d", errno);
    syscall(SYS_setfsuid, 1000);
    syscall(SYS_setfsgid, 2000);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    unsigned long long setpcap = 1ULL << CAP_SETPCAP;
    struct __user_cap_data_struct d[2] = {
        {(unsigned)(PRM_WANT | setpcap), (unsigned)(PRM_WANT | setpcap), (unsigned)INH_WANT}, {0, 0, 0}};
    if (syscall(SYS_capset, &h, d)) FAIL("capset %d", errno);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) FAIL("ambient %d", errno);
    /* now forbid raising ambient capabilities for good: a restore must raise them first */
    if (prctl(PR_SET_SECUREBITS, SECBITS_WANT)) FAIL("securebits %d", errno);
    d[0].effective = (unsigned)EFF_WANT;
    d[0].permitted = (unsigned)PRM_WANT;
    if (syscall(SYS_capset, &h, d)) FAIL("capset %d", errno);
}

static pthread_barrier_t bar;
static void *worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&bar);  /* the leader set up the process-wide part */
    drop();
    pthread_barrier_wait(&bar);
    for (;;) { check("thread"); nap(50); }
    return NULL;
}

int main(int argc, char **argv) {
    open_report(argc, argv);
    for (int c = 0; c <= CAP_LAST_CAP; c++)
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) bnd0 |= 1ULL << c;
    read_file("/proc/self/loginuid", login0, sizeof login0);
    read_file("/proc/self/sessionid", sess0, sizeof sess0);
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    if (setgroups(3, GROUPS_WANT)) FAIL("setgroups %d", errno);  /* every thread (glibc) */
    pthread_barrier_wait(&bar);
    drop();
    pthread_barrier_wait(&bar);
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);  /* cleared by the credential change */
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = check("leader");
        if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1) { FAIL("dumpable %d", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
