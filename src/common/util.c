/* SPDX-License-Identifier: Apache-2.0 */
/* util.c - clocks and strict parsers (see util.h). Stateless and thread-safe. */
#include "common/util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int64_t kv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t kv_now_us(void)
{
    return kv_now_ns() / 1000;
}

int64_t kv_now_ms(void)
{
    return kv_now_ns() / 1000000;
}

int64_t kv_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kv_timespec_in_ms(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void kv_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int kv_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s || (*s == ' ' || *s == '\t'))
        return KV_EINVAL;
    char *end;
    errno = 0;
    const char *d = (*s == '-') ? s + 1 : s;
    int base = (d[0] == '0' && (d[1] == 'x' || d[1] == 'X')) ? 16 : 10;
    long long v = strtoll(s, &end, base);
    if (*end != '\0')
        return KV_EINVAL;
    if (errno == ERANGE)
        return KV_ERANGE;
    *out = v;
    return KV_OK;
}

int kv_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == ' ' || *s == '\t' || *s == '+')
        return KV_EINVAL;
    char *end;
    errno = 0;
    int base = (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10;
    unsigned long long v = strtoull(s, &end, base);
    if (*end != '\0')
        return KV_EINVAL;
    if (errno == ERANGE)
        return KV_ERANGE;
    *out = v;
    return KV_OK;
}

int kv_parse_double(const char *s, double *out)
{
    if (!s || !*s || *s == ' ' || *s == '\t')
        return KV_EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0')
        return KV_EINVAL;
    if (errno == ERANGE || !isfinite(v))
        return KV_ERANGE;
    *out = v;
    return KV_OK;
}

int kv_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    if (!s)
        return KV_EINVAL;
    for (size_t i = 0; i < KV_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return KV_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return KV_OK;
        }
    }
    return KV_EINVAL;
}

int kv_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"K", 1024.0},
        {"KiB", 1024.0},
        {"KB", 1e3},
        {"M", 1048576.0},
        {"MiB", 1048576.0},
        {"MB", 1e6},
        {"G", 1073741824.0},
        {"GiB", 1073741824.0},
        {"GB", 1e9},
        {"T", 1099511627776.0},
        {"TiB", 1099511627776.0},
        {"TB", 1e12},
    };
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return KV_EINVAL;
    const char *p = s;
    while ((*p >= '0' && *p <= '9') || *p == '.')
        p++;
    if (p == s)
        return KV_EINVAL;
    char num[64];
    size_t nl = (size_t)(p - s);
    if (nl >= sizeof(num))
        return KV_ERANGE;
    memcpy(num, s, nl);
    num[nl] = '\0';
    const char *unit = p;
    if (*unit == ' ')
        unit++;
    for (size_t i = 0; i < KV_ARRAY_SIZE(units); i++) {
        if (strcasecmp(unit, units[i].unit) != 0)
            continue;
        /* K/M/G (no suffix) and KiB are binary; KB and MB decimal. Case of the unit matters
         * only for the i in KiB, which strcasecmp ignores: "kib" and "KiB" are the same. */
        if (strchr(num, '.') == NULL) {
            uint64_t v;
            int rc = kv_parse_u64(num, &v);
            if (rc < 0)
                return rc;
            uint64_t mult = (uint64_t)units[i].mult;
            if (mult && v > UINT64_MAX / mult)
                return KV_ERANGE;
            *out = v * mult;
            return KV_OK;
        }
        if (units[i].mult == 1)
            return KV_EINVAL; /* a fraction of a byte */
        double d;
        int rc = kv_parse_double(num, &d);
        if (rc < 0)
            return rc;
        double v = d * units[i].mult;
        if (v >= 18446744073709551615.0)
            return KV_ERANGE;
        *out = (uint64_t)llround(v);
        return KV_OK;
    }
    return KV_EINVAL;
}

const char *kv_format_size(uint64_t bytes, char *buf, size_t n)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    size_t i = 0;
    while (v >= 1024.0 && i + 1 < KV_ARRAY_SIZE(u)) {
        v /= 1024.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, n, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, n, "%.1f %s", v, u[i]);
    return buf;
}

int kv_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port)
{
    if (!s || !*s)
        return KV_EINVAL;
    const char *colon;
    const char *hbeg = s, *hend;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return KV_EINVAL;
        hbeg = s + 1;
        hend = rb;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon)
            return KV_EINVAL;
        hend = colon;
    }
    uint64_t p;
    if (kv_parse_u64(colon + 1, &p) < 0 || p > 65535)
        return KV_EINVAL;
    size_t hl = (size_t)(hend - hbeg);
    const char *def = "0.0.0.0";
    if (hl == 0) {
        hbeg = def;
        hl = strlen(def);
    }
    if (hl + 1 > hostlen)
        return KV_ERANGE;
    memcpy(host, hbeg, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return KV_OK;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static _Atomic int populate_unsupported;

int kv_mem_populate(void *addr, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(page - 1);
    size_t l = len + ((uintptr_t)addr - a);
    if (!atomic_load_explicit(&populate_unsupported, memory_order_relaxed)) {
        if (madvise((void *)a, l, MADV_POPULATE_WRITE) == 0)
            return KV_OK;
        if (errno != EINVAL) /* ENOMEM/EFAULT: memory really missing; faults will say so */
            return kv_err_from_errno(errno);
        atomic_store(&populate_unsupported, 1);
        /* no log here (common code): callers see the same result either way */
    }
    /* older kernels: one write per page; the bytes stay as they are (shared memory) */
    kv_mem_fault_in((void *)a, l);
    return KV_OK;
}

void kv_mem_fault_in(void *addr, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(page - 1);
    size_t l = len + ((uintptr_t)addr - a);
    for (size_t off = 0; off < l; off += page) {
        _Atomic unsigned char *c = (_Atomic unsigned char *)(a + off);
        atomic_fetch_add_explicit(c, 0, memory_order_relaxed);
    }
}

void kv_mem_touch(const void *addr, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    const volatile unsigned char *p = addr;
    unsigned char sink = 0;
    for (size_t off = 0; off < len; off += page)
        sink ^= p[off];
    if (len)
        sink ^= p[len - 1];
    (void)sink;
}
