/* AMX (found by probing, docs/state-coverage.md): the process asks for the tiles'
 * permission (ARCH_REQ_XCOMP_PERM); each round it loads a tile configuration and a tile,
 * stores it back and compares, and the permitted features must be as they were.
 * "release": the tiles are released after each round (tilerelease), so the restored
 * process must be given the permission again (without it its next tile instruction is
 * fatal); "hold": the tile keeps its data between rounds (refused: a restored thread
 * cannot be given tile data).
 *
 *   amx OUT release|hold */
#include "common.h"
#include <immintrin.h>
#include <sys/syscall.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct cfg {
    unsigned char palette, start, res[14];
    unsigned short colsb[16];
    unsigned char rows[16];
};

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    open_report(argc, argv);
    int hold = !strcmp(argv[2], "hold");
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
        FAIL("ARCH_REQ_XCOMP_PERM %d", errno); return 1;
    }
    unsigned long p0 = 0;
    syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &p0);
    struct cfg c = {0};
    c.palette = 1; c.colsb[0] = 64; c.rows[0] = 16;
    static unsigned char src[1024], dst[1024];
    for (int i = 0; i < 1024; i++) src[i] = (unsigned char)(i * 7);
    _tile_loadconfig(&c);
    _tile_loadd(0, src, 64);
    for (long r = 0;; r++) {
        unsigned long p = 0;
        syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &p);
        if (!hold) { _tile_loadconfig(&c); _tile_loadd(0, src, 64); }
        memset(dst, 0, sizeof dst);
        _tile_stored(0, dst, 64);
        if (!hold) _tile_release();
        if (p != p0) FAIL("xstate features permitted %#lx, were %#lx", p, p0);
        else if (memcmp(dst, src, sizeof dst)) FAIL("tile data differs");
        else report("ok %ld", r);
        nap(100);
    }
}
