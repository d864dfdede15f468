/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client_handle.c - the store client behind generation-checked ids (kv_store_h_*, store.h),
 * for bindings that must not hold raw pointers (python/kvstash/store.py).
 *
 * Design: one process-wide table (common/idtab) maps an id to a struct hent {client, refs}.
 *  1. The table holds one reference on every open entry; each call in flight holds one more,
 *     taken under g_lock while the id is looked up, so a call never starts on a removed entry.
 *  2. kv_store_h_close removes the id under g_lock (a later lookup misses: KV_ESHUTDOWN) and
 *     drops the table's reference; whoever drops the last reference closes the client, outside
 *     g_lock. So a close racing with calls neither frees memory a call uses nor waits for them.
 *  3. kv_store_h_acquire hands out the client pointer with a reference (for the copy engine);
 *     kv_store_h_release finds the entry by that pointer through the client's back-reference.
 * Thread model: any thread; g_lock (a leaf: never held while calling into the client) guards
 * g_tab and every hent's refs.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/alloc.h"
#include "common/idtab.h"
#include "kvstash/store.h"

struct hent {
    struct kv_store *s;
    unsigned refs; /* guarded by g_lock */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards g_tab, hent.refs; leaf */
static struct kv_idtab g_tab;                              /* id -> struct hent */
/* entries handed out by kv_store_h_acquire, found again by their client pointer */
static struct kv_idtab g_acq; /* guarded by g_lock: id -> struct hent */

static struct hent *hold(kv_store_id id)
{
    pthread_mutex_lock(&g_lock);
    struct hent *e = kv_idtab_get(&g_tab, id);
    if (e)
        e->refs++;
    pthread_mutex_unlock(&g_lock);
    return e;
}

/* Drops one reference; the last one closes the client (outside the lock). */
static void drop(struct hent *e)
{
    pthread_mutex_lock(&g_lock);
    bool last = --e->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (last) {
        kv_store_close(e->s);
        kv_free(e);
    }
}

int kv_store_h_open(const struct kv_store_opts *opts, kv_store_id *id)
{
    if (!id)
        return KV_EINVAL;
    struct hent *e = kv_calloc(1, sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    int rc = kv_store_open(opts, &e->s);
    if (rc < 0) {
        kv_free(e);
        return rc;
    }
    e->refs = 1;
    pthread_mutex_lock(&g_lock);
    rc = kv_idtab_add(&g_tab, e, id);
    pthread_mutex_unlock(&g_lock);
    if (rc < 0) {
        kv_store_close(e->s);
        kv_free(e);
    }
    return rc;
}

int kv_store_h_close(kv_store_id id)
{
    pthread_mutex_lock(&g_lock);
    struct hent *e = kv_idtab_remove(&g_tab, id);
    pthread_mutex_unlock(&g_lock);
    if (!e)
        return KV_ESHUTDOWN;
    drop(e);
    return KV_OK;
}

int kv_store_h_acquire(kv_store_id id, struct kv_store **s)
{
    if (!s)
        return KV_EINVAL;
    pthread_mutex_lock(&g_lock);
    int rc = KV_ESHUTDOWN;
    struct hent *e = kv_idtab_get(&g_tab, id);
    if (e) {
        uint64_t aid;
        rc = kv_idtab_add(&g_acq, e, &aid);
        if (rc == KV_OK) {
            e->refs++;
            *s = e->s;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void kv_store_h_release(struct kv_store *s)
{
    if (!s)
        return;
    struct hent *e = NULL;
    pthread_mutex_lock(&g_lock);
    for (uint32_t i = 0; i < g_acq.n && !e; i++) {
        uint64_t aid;
        struct hent *x = kv_idtab_at(&g_acq, i, &aid);
        if (x && x->s == s) {
            kv_idtab_remove(&g_acq, aid);
            e = x;
        }
    }
    pthread_mutex_unlock(&g_lock);
    if (e)
        drop(e);
}

/* Runs CALL with `s` bound to the client behind id, holding a reference for the call. */
#define WITH_STORE(id, CALL)                                                                       \
    do {                                                                                           \
        struct hent *e_ = hold(id);                                                                \
        if (!e_)                                                                                   \
            return KV_ESHUTDOWN;                                                                   \
        struct kv_store *s = e_->s;                                                                \
        int rc_ = (CALL);                                                                          \
        drop(e_);                                                                                  \
        return rc_;                                                                                \
    } while (0)

int kv_store_h_put(kv_store_id id, const char *key, const void *buf, size_t len,
                   const struct kv_put_opts *opts)
{
    WITH_STORE(id, kv_store_put(s, key, buf, len, opts));
}

int kv_store_h_get(kv_store_id id, const char *key, void *buf, size_t cap, size_t *len)
{
    WITH_STORE(id, kv_store_get(s, key, buf, cap, len));
}

int kv_store_h_get_alloc(kv_store_id id, const char *key, void **buf, size_t *len)
{
    WITH_STORE(id, kv_store_get_alloc(s, key, buf, len));
}

int kv_store_h_exists(kv_store_id id, const char *key)
{
    WITH_STORE(id, kv_store_exists(s, key));
}

int kv_store_h_remove(kv_store_id id, const char *key)
{
    WITH_STORE(id, kv_store_remove(s, key));
}

int kv_store_h_batch_put(kv_store_id id, size_t n, const char *const *keys, const void *const *bufs,
                         const size_t *lens, const struct kv_put_opts *opts, int *results)
{
    WITH_STORE(id, kv_store_batch_put(s, n, keys, bufs, lens, opts, results));
}

int kv_store_h_batch_get(kv_store_id id, size_t n, const char *const *keys, void *const *bufs,
                         const size_t *caps, size_t *lens, int *results)
{
    WITH_STORE(id, kv_store_batch_get(s, n, keys, bufs, caps, lens, results));
}

int kv_store_h_batch_exists(kv_store_id id, size_t n, const char *const *keys, int *results)
{
    WITH_STORE(id, kv_store_batch_exists(s, n, keys, results));
}

int kv_store_h_list(kv_store_id id, const char *prefix, size_t limit, char ***keys,
                    uint64_t **sizes, size_t *n)
{
    WITH_STORE(id, kv_store_list(s, prefix, limit, keys, sizes, n));
}

int kv_store_h_stat_json(kv_store_id id, char **json)
{
    WITH_STORE(id, kv_store_stat_json(s, json));
}
