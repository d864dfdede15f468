/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_maint.c - the maintenance thread: node timeouts, reclaim of abandoned puts, the TTL
 * sweep in steps, evictions asked for by puts, the periodic eviction pass and deferred frees.
 *
 * Design: one thread, woken every evict_interval or by mst_maint_wake. Nothing here scans the
 * whole index under the lock: PENDING objects are reclaimed from the old end of their list, and
 * the TTL sweep visits TTL_STEP_SLOTS index slots per step (TTL_STEPS_PER_TICK steps per tick),
 * releasing the lock between steps. Design, states and invariants of the master: master.c.
 */
#define KV_LOG_COMPONENT "master"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/store.h"
#include "store/master_int.h"

#define TTL_STEP_SLOTS 4096 /* index slots one TTL sweep step visits under the lock */

#define TTL_STEPS_PER_TICK 64 /* TTL sweep steps per maintenance tick */

struct sweep_ctx {
    struct kv_master *m;
    int64_t wall;
    uint64_t reclaimed, expired;
};

/* TTL sweep step: removes expired COMPLETE objects no operation holds. */
static int sweep_cb(void *ud, struct mobj *o)
{
    struct sweep_ctx *c = ud;
    if (o->refs || !expired(o, c->wall))
        return 0;
    c->expired++;
    c->m->mc.expired_bytes += o->size;
    mst_obj_unlink2(c->m, o, false);
    return 1;
}

/* Reclaims PENDING objects whose put timed out: the oldest sit at the tail of m->pend (deadlines
 * grow with insertion), so this looks at the expired ones only. Caller holds the lock. */
static uint64_t reclaim_pending(struct kv_master *m, int64_t now)
{
    uint64_t n = 0;
    for (struct mobj *o = m->pend.lru_prev, *prev; o != &m->pend; o = prev) {
        prev = o->lru_prev;
        if ((int64_t)o->put_deadline_sec * 1000 > now)
            break;
        if (o->refs)
            continue; /* its PutEnd is committing it: that call decides */
        mst_obj_unlink(m, o);
        n++;
    }
    return n;
}

/* Forced eviction asked for by puts (mst_place_items): one pass per node (up to 8) for the bytes
 * requested, then the requesters are told. Runs on the maintenance thread only. */
static void evict_requested(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t take = m->evict_req_seq, need = m->evict_need;
    m->evict_need = 0;
    struct mnode *ns[8];
    int k = 0;
    for (struct mnode *n = m->nodes; n && need && k < 8; n = n->next) {
        n->refs++;
        ns[k++] = n;
    }
    pthread_mutex_unlock(&m->lock);
    for (int i = 0; i < k; i++)
        mst_evict_pass(m, ns[i], need);
    if (k)
        mst_process_dfree(m);
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < k; i++)
        mst_node_unref(ns[i]);
    if (take > m->evict_done_seq) {
        m->evict_done_seq = take;
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
}

void mst_maint_wake(struct kv_master *m)
{
    pthread_mutex_lock(&m->wake_lock);
    m->wake_flag = true;
    pthread_cond_broadcast(&m->wake_cond);
    pthread_mutex_unlock(&m->wake_lock);
}

void kv_master_maintain_now(struct kv_master *m, bool force_ttl)
{
    if (!mst_leading(m))
        return;
    pthread_mutex_lock(&m->lock);
    int64_t now = kv_now_ms();
    for (struct mnode *n = m->nodes, *next; n; n = next) {
        next = n->next;
        if (now - n->last_hb_ms > (int64_t)m->node_timeout_ms)
            mst_node_remove(m, n, "no heartbeat within node_timeout");
    }
    struct sweep_ctx c = {m, kv_wall_ms(), 0, 0};
    c.reclaimed = reclaim_pending(m, now);
    if (force_ttl || (!m->ttl_active && now - m->last_ttl_sweep >= (int64_t)m->cleanup_ms)) {
        m->last_ttl_sweep = now;
        m->ttl_active = true;
        m->ttl_cursor = 0;
    }
    pthread_mutex_unlock(&m->lock);
    /* the TTL sweep visits the index in steps of TTL_STEP_SLOTS slots, letting go of the lock
     * between steps, at most TTL_STEPS_PER_TICK steps a tick (all of it when forced) */
    bool more = true;
    for (int steps = 0; more && (force_ttl || steps < TTL_STEPS_PER_TICK); steps++) {
        pthread_mutex_lock(&m->lock);
        more = m->ttl_active;
        if (more) {
            uint64_t before = c.expired;
            c.wall = kv_wall_ms();
            m->ttl_cursor =
                kv_oidx_each_range(&m->index, m->ttl_cursor, TTL_STEP_SLOTS, sweep_cb, &c);
            more = m->ttl_active = m->ttl_cursor != 0;
            m->expired += c.expired - before;
        }
        pthread_mutex_unlock(&m->lock);
    }
    if (c.reclaimed || c.expired)
        KV_LOGI("cleanup: %llu abandoned puts reclaimed, %llu expired objects removed",
                (unsigned long long)c.reclaimed, (unsigned long long)c.expired);
    evict_requested(m);
    mst_evict_pass(m, NULL, 0);
    mst_process_dfree(m);
}

void *mst_maint_main(void *arg)
{
    struct kv_master *m = arg;
    while (!atomic_load(&m->stopping)) {
        pthread_mutex_lock(&m->wake_lock);
        if (!m->wake_flag) {
            struct timespec ts;
            kv_timespec_in_ms(&ts, m->evict_ms);
            pthread_cond_timedwait(&m->wake_cond, &m->wake_lock, &ts);
        }
        m->wake_flag = false;
        pthread_mutex_unlock(&m->wake_lock);
        if (atomic_load(&m->stopping))
            break;
        kv_master_maintain_now(m, false);
    }
    return NULL;
}
