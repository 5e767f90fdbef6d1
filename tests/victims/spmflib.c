/* The shared library of spmf.c: code and read-only data. */
#define T(i) (char)((i) * 5)
#define T4(i) T(i), T(i + 1), T(i + 2), T(i + 3)
#define T16(i) T4(i), T4(i + 4), T4(i + 8), T4(i + 12)
#define T64(i) T16(i), T16(i + 16), T16(i + 32), T16(i + 48)
#define T256(i) T64(i), T64(i + 64), T64(i + 128), T64(i + 192)
#define T1K(i) T256(i), T256(i + 256), T256(i + 512), T256(i + 768)

const char spmf_table[4096] = {T1K(0), T1K(1024), T1K(2048), T1K(3072)};

long spmf_value(long i) { return i * 3 + 1; }
