/* SPDX-License-Identifier: Apache-2.0 */
/* buf.c - growable byte buffer (see buf.h). Not thread-safe: one owner at a time. */
#include "common/buf.h"

#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "common/alloc.h"

void kv_buf_init(struct kv_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void kv_buf_fini(struct kv_buf *b)
{
    kv_free(b->data);
    kv_buf_init(b);
}

void kv_buf_reset(struct kv_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

int kv_buf_reserve(struct kv_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        return KV_E2BIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return KV_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *d = kv_realloc(b->data, cap);
    if (!d)
        return KV_ENOMEM;
    b->data = d;
    b->cap = cap;
    return KV_OK;
}

int kv_buf_append(struct kv_buf *b, const void *p, size_t n)
{
    int rc = kv_buf_reserve(b, n);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KV_OK;
}

int kv_buf_appends(struct kv_buf *b, const char *s)
{
    return kv_buf_append(b, s, strlen(s));
}

int kv_buf_appendf(struct kv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return KV_EINVAL;
    int rc = kv_buf_reserve(b, (size_t)n);
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return KV_OK;
}

char *kv_buf_steal(struct kv_buf *b, size_t *len)
{
    if (!b->data && kv_buf_reserve(b, 0) < 0)
        return NULL;
    char *d = b->data;
    if (len)
        *len = b->len;
    kv_buf_init(b);
    return d;
}
