/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prom.h - the one writer of Prometheus text exposition (format 0.0.4) for the master, the
 * router and the gateway.
 *
 * A page is a sequence of families: kv_prom_family() writes a family's # HELP and # TYPE lines,
 * then kv_prom_sample() / kv_prom_hist() write its samples. Conventions it enforces (so every
 * endpoint passes `promtool check metrics`):
 *   - names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*;
 *   - a counter family's name ends in _total; other types' names do not;
 *   - label values are escaped (backslash, double quote, newline), HELP text too (backslash,
 *     newline);
 *   - histogram buckets are written cumulative with le="+Inf", then _sum and _count.
 * A violation is a programming error in the caller: the writer records KV_EINVAL (and logs the
 * name once) instead of writing an invalid page.
 *
 * Errors are sticky: the first failure (KV_ENOMEM from the buffer, KV_EINVAL) is kept in the
 * writer and later calls do nothing; kv_prom_end() returns it. On error the buffer holds a
 * partial page that the caller must not serve.
 *
 * Thread model: a writer is used by one thread; it holds no locks and keeps no global state.
 */
#ifndef KV_COMMON_PROM_H
#define KV_COMMON_PROM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "kvstash/err.h"

enum kv_prom_type { KV_PROM_COUNTER, KV_PROM_GAUGE, KV_PROM_HISTOGRAM };

/* A label: name and value (both borrowed for the call). */
struct kv_prom_label {
    const char *name;
    const char *value;
};

/* The writer: caller-owned storage, appends to a borrowed buffer. */
struct kv_prom {
    struct kv_buf *b;
    int rc;
    enum kv_prom_type type; /* of the current family */
    const char *family;     /* the current family's name (borrowed from kv_prom_family) */
    /* Set by the caller after kv_prom_init for a compatibility page that reproduces another
     * project's names (the router's /metrics/vllm): the _total rule is not enforced. */
    bool lax;
};

/* Starts writing into b (appends; b stays the caller's). */
KV_API void kv_prom_init(struct kv_prom *p, struct kv_buf *b);

/* Starts family name of type with help text (one line; escaped here). name is borrowed until
 * the next kv_prom_family() call. */
KV_API void kv_prom_family(struct kv_prom *p, const char *name, enum kv_prom_type type,
                           const char *help);

/* One sample of the current (counter or gauge) family: labels[0..nlabels) (labels may be NULL
 * when nlabels is 0) and value (NaN and infinities are written as NaN, +Inf, -Inf; integral
 * values below 2^53 without a fraction). */
KV_API void kv_prom_sample(struct kv_prom *p, const struct kv_prom_label *labels, size_t nlabels,
                           double value);

/* One series of the current histogram family: upper bounds le[0..nb) (increasing, finite),
 * per-bucket counts buckets[0..nb] (NOT cumulative; buckets[nb] counts values above le[nb-1]),
 * and the sum of the observed values. Writes the cumulative _bucket lines (le="+Inf" last),
 * _sum and _count. */
KV_API void kv_prom_hist(struct kv_prom *p, const struct kv_prom_label *labels, size_t nlabels,
                         const double *le, const uint64_t *buckets, size_t nb, double sum);

/* A family of one unlabelled sample: the common case. */
KV_API void kv_prom_one(struct kv_prom *p, const char *name, enum kv_prom_type type,
                        const char *help, double value);

/* The process_* families of this process (resident and virtual memory, open and max fds, CPU
 * seconds, start time), read from /proc/self; a family whose source cannot be read is left
 * out. */
KV_API void kv_prom_process(struct kv_prom *p);

/* The first error of the writer (KV_OK when the page is complete and valid). */
KV_API int kv_prom_end(struct kv_prom *p);

#endif
