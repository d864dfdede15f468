/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memwalk.c - what a random read costs on this machine: SIZE MiB of anonymous memory, advised
 * for transparent huge pages (1) or not (0); independent reads prefetched 16 ahead (as the
 * store's batch paths do) and dependent reads (the latency of one). Not part of the build: the
 * store's lookups and puts at 10M objects read two random slots of ~100 MB tables and a record
 * in ~1 GB, and this tells how much of their growth with size is the machine (bench/README.md,
 * "record chunks readied on a background thread").
 *
 *   gcc -O2 -o /tmp/memwalk bench/memwalk.c && for s in 16 128 1024; do
 *     /tmp/memwalk $s 1; /tmp/memwalk $s 0; done
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    long mib = argc == 3 ? strtol(argv[1], &end, 10) : 0;
    bool thp = argc == 3 && strcmp(argv[2], "1") == 0;
    if (argc != 3 || !end || *end || mib <= 0 || mib > (1L << 20) ||
        (!thp && strcmp(argv[2], "0") != 0)) {
        fprintf(stderr, "usage: memwalk SIZE_MIB 1|0  (SIZE_MIB 1..1048576; 1: advise "
                        "transparent huge pages, 0: advise against them)\n");
        return 2;
    }
    size_t sz = (size_t)mib << 20, lines = sz / 64, n = 4000000, al = 2 << 20;
    char *m = mmap(NULL, sz + al, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *at = malloc(n * 8), x = 88172645463325252u, sum = 0, cur = 0;
    if (m == MAP_FAILED || !at) {
        fprintf(stderr, "memwalk: out of memory for %zu MiB\n", sz >> 20);
        return 1;
    }
    char *p = (char *)(((uintptr_t)m + al - 1) & ~(uintptr_t)(al - 1));
    madvise(p, sz, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t i = 0; i < lines; i++) /* each line points at another, pseudo-randomly */
        *(uint64_t *)(p + i * 64) = (i * 2654435761u + 12345) % lines * 64;
    for (size_t i = 0; i < n; i++, x ^= x << 13, x ^= x >> 7, x ^= x << 17)
        at[i] = x % lines * 64;
    double t0 = now();
    for (size_t i = 0; i < n; i++) { /* independent reads, prefetched 16 ahead */
        if (i + 16 < n)
            __builtin_prefetch(p + at[i + 16]);
        sum += *(uint64_t *)(p + at[i]);
    }
    double t1 = now();
    for (size_t i = 0; i < n; i++) /* dependent reads: the latency of one */
        cur = *(uint64_t *)(p + cur);
    double t2 = now();
    printf("%zu MiB thp=%s: prefetched %.1f ns/read, dependent %.1f ns/read (%lu)\n", sz >> 20,
           argv[2], (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9, (unsigned long)((sum + cur) & 1));
    return 0;
}
