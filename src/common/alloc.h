/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc.h - the one allocator of kvstash, with a test hook that fails the Nth call.
 *
 * All library allocation goes through kv_malloc/kv_calloc/kv_realloc/kv_strdup and is freed by
 * kv_free. Library code returns KV_ENOMEM on failure and never aborts. Tests call
 * kv_alloc_fail_at(n) so that the nth allocation from now fails (and every later one succeeds
 * again), to prove every error path cleans up.
 */
#ifndef KV_COMMON_ALLOC_H
#define KV_COMMON_ALLOC_H

#include <stddef.h>

#include "kvstash/err.h"

KV_API void *kv_malloc(size_t n);
KV_API void *kv_calloc(size_t nmemb, size_t size);
KV_API void *kv_realloc(void *p, size_t n);
KV_API void kv_free(void *p);
KV_API char *kv_strdup(const char *s);
KV_API char *kv_strndup(const char *s, size_t n);
/* A NUL-terminated copy of n bytes (which may contain NULs). */
KV_API void *kv_memdup0(const void *p, size_t n);

/* Test hook: the nth allocation call from now (1 = the next one) fails; 0 disarms.
 * Thread-safe (atomic counter); meant for single-threaded tests. */
KV_API void kv_alloc_fail_at(long n);
/* Allocation calls counted so far (for sizing fail-at loops). Counting, and the largest request
 * below, start with the first call of any of these hooks: take differences. */
KV_API long kv_alloc_calls(void);
/* Test hook: the largest single request (bytes) made to kv_malloc/kv_calloc/kv_realloc since the
 * last kv_alloc_largest_reset() (which starts the tracking). Lets a test prove that a component did
 * not reserve a large buffer. Thread-safe (atomic); reset is meant for single-threaded tests. */
KV_API size_t kv_alloc_largest(void);
KV_API void kv_alloc_largest_reset(void);

#endif
