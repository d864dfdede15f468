/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc.c - the allocator wrappers and their fail-the-Nth-call test hook.
 *
 * Thread model: lock-free; the hook is one atomic countdown. When it reaches zero on a call,
 * that call returns NULL. A second atomic keeps the largest request seen (kv_alloc_largest).
 * The hooks cost nothing until a test first uses one (`tracking`): counting every call in a
 * shared atomic made each malloc of a busy multi-threaded master bounce one cache line between
 * the cores (6 % of a batch-put profile).
 * The libc allocator underneath is the only place raw malloc/free appear
 * (scripts/check-banned.sh allows this file only).
 */
#include "common/alloc.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown; /* 0 = disarmed */
static atomic_long calls;
static atomic_size_t largest; /* largest request since the last reset */
static atomic_bool tracking;  /* set by the first use of a test hook */

static void note_size(size_t n)
{
    size_t cur = atomic_load_explicit(&largest, memory_order_relaxed);
    while (n > cur && !atomic_compare_exchange_weak_explicit(
                          &largest, &cur, n, memory_order_relaxed, memory_order_relaxed))
        ;
}

static int should_fail(size_t n)
{
    if (!atomic_load_explicit(&tracking, memory_order_relaxed))
        return 0;
    note_size(n);
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    long c = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (c <= 0)
        return 0;
    /* Decrement; the call that moves 1 -> 0 fails. */
    long prev = atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
    return prev == 1;
}

void kv_alloc_fail_at(long n)
{
    atomic_store_explicit(&tracking, true, memory_order_relaxed);
    atomic_store_explicit(&fail_countdown, n > 0 ? n : 0, memory_order_relaxed);
}

long kv_alloc_calls(void)
{
    atomic_store_explicit(&tracking, true, memory_order_relaxed);
    return atomic_load_explicit(&calls, memory_order_relaxed);
}

size_t kv_alloc_largest(void)
{
    return atomic_load_explicit(&largest, memory_order_relaxed);
}

void kv_alloc_largest_reset(void)
{
    atomic_store_explicit(&tracking, true, memory_order_relaxed);
    atomic_store_explicit(&largest, 0, memory_order_relaxed);
}

void *kv_malloc(size_t n)
{
    if (should_fail(n))
        return NULL;
    return malloc(n ? n : 1);
}

void *kv_calloc(size_t nmemb, size_t size)
{
    if (should_fail(nmemb > SIZE_MAX / (size ? size : 1) ? SIZE_MAX : nmemb * size))
        return NULL;
    return calloc(nmemb ? nmemb : 1, size ? size : 1);
}

void *kv_realloc(void *p, size_t n)
{
    if (should_fail(n))
        return NULL;
    return realloc(p, n ? n : 1);
}

void kv_free(void *p)
{
    free(p);
}

char *kv_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = kv_malloc(len + 1);
    if (!d)
        return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *kv_strdup(const char *s)
{
    return kv_strndup(s, strlen(s));
}

void *kv_memdup0(const void *p, size_t n)
{
    char *d = kv_malloc(n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}
