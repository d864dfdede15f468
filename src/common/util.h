/* SPDX-License-Identifier: Apache-2.0 */
/*
 * util.h - small shared helpers: clocks, strict number and size parsing, host:port parsing.
 * All parsers are strict: the whole string must be consumed, values are range-checked, and a
 * failure returns KV_EINVAL or KV_ERANGE without touching the out-parameter.
 */
#ifndef KV_COMMON_UTIL_H
#define KV_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

#define KV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KV_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Monotonic clock. */
KV_API int64_t kv_now_ms(void);
KV_API int64_t kv_now_us(void);
KV_API int64_t kv_now_ns(void);
/* Wall clock, milliseconds since the epoch. */
KV_API int64_t kv_wall_ms(void);
KV_API void kv_sleep_ms(int ms);
struct timespec;
/* *ts = the CLOCK_REALTIME time ms milliseconds from now (the deadline of a
 * pthread_cond_timedwait on a default condition variable). */
KV_API void kv_timespec_in_ms(struct timespec *ts, int64_t ms);

/* Decimal (or 0x hex) signed integer. */
KV_API int kv_parse_i64(const char *s, int64_t *out);
/* Unsigned integer; a leading '-' is rejected. */
KV_API int kv_parse_u64(const char *s, uint64_t *out);
/* A finite floating-point number. */
KV_API int kv_parse_double(const char *s, double *out);
/* "1|0|true|false|yes|no|on|off" (case-insensitive). */
KV_API int kv_parse_bool(const char *s, bool *out);
/* A byte size: a number with an optional unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB.
 * KB/MB/... are powers of 1000, K/KiB/M/MiB/... powers of 1024 ("64MiB", "4GiB", "4096").
 * A fraction is allowed with a unit ("1.5GiB"). */
KV_API int kv_parse_size(const char *s, uint64_t *out);
/* Formats bytes with a binary unit ("1.5 GiB") into buf. Returns buf. */
KV_API const char *kv_format_size(uint64_t bytes, char *buf, size_t n);
/* Fills the page tables of [addr, addr+len) for writing, committing the memory, in one call
 * (madvise MADV_POPULATE_WRITE, Linux 5.14+; else one write per page, contents kept). Much
 * cheaper than a page fault per page inside a later memcpy. KV_ENOMEM when memory is short. */
KV_API int kv_mem_populate(void *addr, size_t len);
/* Faults [addr, addr+len) in for writing from user space: one atomic add of 0 per page
 * (contents kept). Slower than kv_mem_populate for a large range, but each fault holds only its
 * mapping's lock, where MADV_POPULATE_WRITE holds the process's mmap lock for the whole range
 * and stalls every other thread's mmap/mprotect/munmap meanwhile; and a hypervisor that shadows
 * the guest's page tables installs its entries too (see kv_mem_touch). For a background thread
 * readying memory that busy threads will use (store/prefault.h). */
KV_API void kv_mem_fault_in(void *addr, size_t len);
/* Reads one byte of every page of [addr, addr+len) from user space (contents untouched, safe
 * beside writers). After kv_mem_populate this makes a hypervisor that shadows the guest's page
 * tables (as on the development VM) install its own entries now: there, the first user access
 * to each populated 4 KiB page still traps (~5 us; a 4 KiB put into a fresh page of a
 * populated segment ran at 0.7 GB/s, after a touch pass at 20 GB/s). Elsewhere a cheap pass. */
KV_API void kv_mem_touch(const void *addr, size_t len);

/* "HOST:PORT", "[V6]:PORT" or ":PORT" (host "0.0.0.0"). host gets at most hostlen-1 bytes. */
KV_API int kv_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port);

/* true if s starts with prefix. */
static inline bool kv_startswith(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return false;
    return true;
}

#endif
