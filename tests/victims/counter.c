/* The simplest target: a counter that goes on, with a heap buffer; "tick N" per line. */
#include "common.h"

int main(int argc, char **argv) {
    open_report(argc, argv);
    long ms = argc > 2 ? atol(argv[2]) : 20;
    char *heap = malloc(1 << 20);
    memset(heap, 'h', 1 << 20);
    report("ready %d", getpid());
    for (long i = 0;; i++) {
        if (heap[i % (1 << 20)] != 'h') FAIL("heap");
        report("tick %ld", i);
        nap(ms);
    }
}
