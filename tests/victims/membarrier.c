/* membarrier registrations survive (issue 9): the process registered for private
 * expedited barriers (and their sync-core and rseq kinds) and as a target of global
 * expedited ones; after a restart the private expedited barrier still works (it fails
 * with EPERM unregistered) and MEMBARRIER_CMD_GET_REGISTRATIONS shows the same set. */
#include "common.h"
#include <sys/syscall.h>
#include <linux/membarrier.h>
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)  /* Linux 6.3; older headers lack it */
#endif

static int mb(int cmd) { return syscall(SYS_membarrier, cmd, 0, 0); }

int main(int argc, char **argv) {
    open_report(argc, argv);
    int want = MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
    int supported = mb(MEMBARRIER_CMD_QUERY);
    if (supported & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)
        want |= MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE;
    if (supported & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)
        want |= MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ;
    for (int cmd = 1; cmd <= 256; cmd <<= 1)
        if ((want & cmd) && mb(cmd)) FAIL("register %d: %d", cmd, errno);
    report("ready %d", getpid());
    for (long round = 0;; round++) {
        int bad = 0, got = mb(MEMBARRIER_CMD_GET_REGISTRATIONS);
        if (got != want) { FAIL("registrations %#x, want %#x", got, want); bad = 1; }
        if (mb(MEMBARRIER_CMD_PRIVATE_EXPEDITED)) { FAIL("private expedited: %d", errno); bad = 1; }
        if (!bad) report("ok %ld", round);
        nap(50);
    }
}
