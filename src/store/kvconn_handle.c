/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvconn_handle.c - the copy engine behind generation-checked ids (kv_conn_h_*, kvconn.h), for
 * bindings that must not hold raw pointers (python/kvstash/kvconn.py): the same design as
 * client_handle.c for the store client.
 *
 * Design: one process-wide table (common/idtab) maps an id to a struct cent {engine, store,
 * refs}.
 *  1. The table holds one reference on every open entry; each call in flight holds one more,
 *     taken under g_lock while the id is looked up, so a call never starts on a removed entry.
 *  2. kv_conn_h_destroy removes the id under g_lock (later lookups miss: KV_ESHUTDOWN) and drops
 *     the table's reference; whoever drops the last reference destroys the engine and then
 *     releases the store client it used, outside g_lock. So a destroy racing with a wait in
 *     another thread neither frees memory the wait uses nor the store the workers use.
 *  3. The entry owns its store reference (kv_store_h_acquire at create), so the binding never
 *     handles a struct kv_store pointer either.
 * Thread model: any thread; g_lock (a leaf: never held while calling into an engine) guards
 * g_tab and every cent's refs.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/alloc.h"
#include "common/idtab.h"
#include "kvstash/kvconn.h"
#include "kvstash/store.h"

struct cent {
    struct kv_conn *c;
    struct kv_store *s; /* a kv_store_h_acquire reference, or NULL (backend engines) */
    unsigned refs;      /* guarded by g_lock */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards g_tab, cent.refs; leaf */
static struct kv_idtab g_tab;                              /* id -> struct cent */

static struct cent *hold(kv_conn_id id)
{
    pthread_mutex_lock(&g_lock);
    struct cent *e = kv_idtab_get(&g_tab, id);
    if (e)
        e->refs++;
    pthread_mutex_unlock(&g_lock);
    return e;
}

/* Drops one reference; the last one destroys the engine, then releases its store. */
static void drop(struct cent *e)
{
    pthread_mutex_lock(&g_lock);
    bool last = --e->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (last) {
        kv_conn_destroy(e->c);
        kv_store_h_release(e->s);
        kv_free(e);
    }
}

int kv_conn_h_create(const struct kv_conn_opts *opts, kv_store_id store, kv_conn_id *id)
{
    if (!opts || !id)
        return KV_EINVAL;
    struct cent *e = kv_calloc(1, sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    struct kv_conn_opts o = *opts;
    int rc = KV_OK;
    if (store) {
        rc = kv_store_h_acquire(store, &e->s);
        o.store = e->s;
    }
    if (rc == KV_OK)
        rc = kv_conn_create(&o, &e->c);
    if (rc == KV_OK) {
        e->refs = 1;
        pthread_mutex_lock(&g_lock);
        rc = kv_idtab_add(&g_tab, e, id);
        pthread_mutex_unlock(&g_lock);
        if (rc == KV_OK)
            return KV_OK;
        kv_conn_destroy(e->c);
    }
    kv_store_h_release(e->s);
    kv_free(e);
    return rc;
}

int kv_conn_h_destroy(kv_conn_id id)
{
    pthread_mutex_lock(&g_lock);
    struct cent *e = kv_idtab_remove(&g_tab, id);
    pthread_mutex_unlock(&g_lock);
    if (!e)
        return KV_ESHUTDOWN;
    drop(e);
    return KV_OK;
}

/* Runs CALL with `c` bound to the engine behind id, holding a reference for the call. */
#define WITH_CONN(id, CALL)                                                                        \
    do {                                                                                           \
        struct cent *e_ = hold(id);                                                                \
        if (!e_)                                                                                   \
            return KV_ESHUTDOWN;                                                                   \
        struct kv_conn *c = e_->c;                                                                 \
        int rc_ = (CALL);                                                                          \
        drop(e_);                                                                                  \
        return rc_;                                                                                \
    } while (0)

int kv_conn_h_register_layer(kv_conn_id id, uint32_t layer, const struct kv_conn_layout *layout)
{
    WITH_CONN(id, kv_conn_register_layer(c, layer, layout));
}

int kv_conn_h_submit(kv_conn_id id, enum kv_conn_op op, uint32_t layer_begin, uint32_t layer_end,
                     size_t n, const char *const *keys, const int32_t *block_ids,
                     const uint32_t *tok_begin, const uint32_t *tok_end, uint64_t *job)
{
    WITH_CONN(id, kv_conn_submit(c, op, layer_begin, layer_end, n, keys, block_ids, tok_begin,
                                 tok_end, job));
}

int kv_conn_h_submit_at(kv_conn_id id, enum kv_conn_op op, uint32_t layer_begin, uint32_t layer_end,
                        const struct kv_conn_layout *layouts, size_t n, const char *const *keys,
                        const int32_t *block_ids, const uint32_t *tok_begin,
                        const uint32_t *tok_end, uint64_t *job)
{
    WITH_CONN(id, kv_conn_submit_at(c, op, layer_begin, layer_end, layouts, n, keys, block_ids,
                                    tok_begin, tok_end, job));
}

int kv_conn_h_wait_layer(kv_conn_id id, uint64_t job, uint32_t layer, int timeout_ms)
{
    WITH_CONN(id, kv_conn_wait_layer(c, job, layer, timeout_ms));
}

int kv_conn_h_wait(kv_conn_id id, uint64_t job, int timeout_ms, int *status)
{
    WITH_CONN(id, kv_conn_wait(c, job, timeout_ms, status));
}

int kv_conn_h_peek(kv_conn_id id, uint64_t job, int *status)
{
    WITH_CONN(id, kv_conn_peek(c, job, status));
}

int kv_conn_h_release(kv_conn_id id, uint64_t job)
{
    WITH_CONN(id, kv_conn_release(c, job));
}

int kv_conn_h_object_size(kv_conn_id id, size_t *size)
{
    if (!size)
        return KV_EINVAL;
    WITH_CONN(id, (*size = kv_conn_object_size(c), KV_OK));
}
