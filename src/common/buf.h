/* SPDX-License-Identifier: Apache-2.0 */
/*
 * buf.h - a growable byte buffer (caller-owned struct, heap storage). Always NUL-terminated
 * after len bytes when data is non-NULL. On KV_ENOMEM the buffer is unchanged.
 */
#ifndef KV_COMMON_BUF_H
#define KV_COMMON_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "kvstash/err.h"

struct kv_buf {
    char *data;
    size_t len;
    size_t cap;
};

KV_API void kv_buf_init(struct kv_buf *b);
KV_API void kv_buf_fini(struct kv_buf *b);
KV_API int kv_buf_reserve(struct kv_buf *b, size_t extra);
KV_API int kv_buf_append(struct kv_buf *b, const void *p, size_t n);
KV_API int kv_buf_appends(struct kv_buf *b, const char *s);
KV_API int kv_buf_appendf(struct kv_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
KV_API void kv_buf_reset(struct kv_buf *b);
/* Hands the storage to the caller (free with kv_free) and re-initialises b. */
KV_API char *kv_buf_steal(struct kv_buf *b, size_t *len);

#endif
