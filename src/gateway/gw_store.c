/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_store.c - the gateway's engine table: a chained hash table keyed by engine_id (XXH3),
 * each engine holding its latest state, liveness clocks and a ring of the last history_len
 * states.
 *
 * Invariants:
 *   1. Time is the gateway's monotonic clock at arrival (now_ms), never the sender's
 *      timestamp_ms: a sender with a skewed clock is judged like any other.
 *   2. A heartbeat (capacity 0 and latency 0) updates last_seen_ms (liveness) and the history,
 *      but e->last keeps the last real load figures; until a real state arrives, e->last is
 *      the first heartbeat and load_known is false.
 *   3. With seq: a state whose seq is not above the engine's last seq is dropped as reordered,
 *      unless the gap exceeds GW_SEQ_RESTART_GAP or the engine was stale (a restarted engine
 *      starts again from 0).
 *   4. An engine silent longer than remove_ms is invisible to lookups at once, and freed by
 *      the next gw_store_sweep.
 *   5. nbuckets is a power of two and doubles when n exceeds it.
 *   6. Memory is bounded: at most max_engines engines (a new id beyond that is refused), and an
 *      engine's history ring starts at GW_HIST_INITIAL entries and doubles up to history_len
 *      (an allocation failure keeps the smaller ring: the oldest entries are overwritten
 *      sooner, nothing else changes).
 *
 * Thread model: none of its own; the gateway holds its lock around every call. The clock is an
 * argument, so tests drive time explicitly.
 */
#include <stdint.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/util.h"
#include "gateway/gw_int.h"

#define GW_HIST_INITIAL 4

int gw_store_init(struct gw_store *s, uint32_t history_len, size_t max_engines, int64_t stale_ms,
                  int64_t remove_ms)
{
    memset(s, 0, sizeof(*s));
    s->nbuckets = 64;
    s->buckets = kv_calloc(s->nbuckets, sizeof(*s->buckets));
    if (!s->buckets)
        return KV_ENOMEM;
    s->history_len = history_len ? history_len : 1;
    s->max_engines = max_engines ? max_engines : SIZE_MAX;
    s->stale_ms = stale_ms;
    s->remove_ms = remove_ms;
    return KV_OK;
}

void gw_store_fini(struct gw_store *s)
{
    if (!s->buckets)
        return;
    for (size_t b = 0; b < s->nbuckets; b++) {
        struct gw_engine *e = s->buckets[b];
        while (e) {
            struct gw_engine *next = e->next;
            kv_free(e->hist);
            kv_free(e);
            e = next;
        }
    }
    kv_free(s->buckets);
    s->buckets = NULL;
}

static struct gw_engine *lookup(struct gw_store *s, const char *id, uint64_t h)
{
    for (struct gw_engine *e = s->buckets[h & (s->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && strcmp(e->last.engine_id, id) == 0)
            return e;
    return NULL;
}

static void grow(struct gw_store *s)
{
    size_t nb = s->nbuckets * 2;
    struct gw_engine **nbk = kv_calloc(nb, sizeof(*nbk));
    if (!nbk)
        return; /* longer chains, still correct */
    for (size_t b = 0; b < s->nbuckets; b++) {
        struct gw_engine *e = s->buckets[b];
        while (e) {
            struct gw_engine *next = e->next;
            e->next = nbk[e->hash & (nb - 1)];
            nbk[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    kv_free(s->buckets);
    s->buckets = nbk;
    s->nbuckets = nb;
}

/* e->last = *st without copying the unused tail of the two strings (the struct is ~400 bytes,
 * a state's strings are usually a few dozen); with_id false when e->last already holds st's
 * engine_id (the lookup matched it). */
static void set_last(struct gw_engine *e, const struct kv_gateway_state *st, bool with_id)
{
    struct kv_gateway_state *l = &e->last;
    if (with_id)
        memcpy(l->engine_id, st->engine_id, strlen(st->engine_id) + 1);
    memcpy(l->scheduling_mode, st->scheduling_mode, strlen(st->scheduling_mode) + 1);
    l->timestamp_ms = st->timestamp_ms;
    l->latency_pred_ms = st->latency_pred_ms;
    l->pending_tokens_total = st->pending_tokens_total;
    l->kv_cache_free_blocks = st->kv_cache_free_blocks;
    l->kv_cache_total_blocks = st->kv_cache_total_blocks;
    l->engine_capacity = st->engine_capacity;
    l->seq = st->seq;
}

static void hist_push(struct gw_store *s, struct gw_engine *e, const struct kv_gateway_state *st,
                      int64_t wall_ms, bool hb)
{
    if (e->hist_n == e->hist_cap && e->hist_cap < s->history_len) {
        uint32_t ncap = e->hist_cap ? KV_MIN(e->hist_cap * 2, s->history_len)
                                    : KV_MIN(GW_HIST_INITIAL, s->history_len);
        struct gw_hist_ent *nh = kv_malloc((size_t)ncap * sizeof(*nh));
        if (nh) {
            for (uint32_t i = 0; i < e->hist_n; i++)
                nh[i] = e->hist[(e->hist_head + i) % e->hist_cap];
            kv_free(e->hist);
            e->hist = nh;
            e->hist_cap = ncap;
            e->hist_head = 0;
        } else if (e->hist_cap == 0) {
            return; /* no history for now; the latest state is still kept */
        }
    }
    uint32_t slot; /* no modulo here: hist_head + hist_n < 2 * hist_cap */
    if (e->hist_n < e->hist_cap) {
        slot = e->hist_head + e->hist_n;
        if (slot >= e->hist_cap)
            slot -= e->hist_cap;
        e->hist_n++;
    } else {
        slot = e->hist_head;
        if (++e->hist_head == e->hist_cap)
            e->hist_head = 0;
    }
    struct gw_hist_ent *h = &e->hist[slot];
    h->timestamp_ms = st->timestamp_ms;
    h->pending_tokens_total = st->pending_tokens_total;
    h->kv_cache_free_blocks = st->kv_cache_free_blocks;
    h->kv_cache_total_blocks = st->kv_cache_total_blocks;
    h->seq = st->seq;
    h->latency_pred_ms = st->latency_pred_ms;
    h->engine_capacity = st->engine_capacity;
    h->recv_wall_ms = wall_ms;
    memcpy(h->scheduling_mode, st->scheduling_mode, strlen(st->scheduling_mode) + 1);
    h->heartbeat = hb;
}

int gw_store_apply(struct gw_store *s, const struct kv_gateway_state *st, int64_t now_ms,
                   int64_t wall_ms)
{
    uint64_t h = kv_hash64(st->engine_id, strlen(st->engine_id));
    struct gw_engine *e = lookup(s, st->engine_id, h);
    if (e && now_ms - e->last_seen_ms > s->remove_ms) {
        /* silent past removal but not swept yet: start afresh, as if removed */
        e->load_known = false;
        e->last_load_ms = -1;
        e->last_seq = -1;
        e->states = e->heartbeats = 0;
        e->hist_head = e->hist_n = 0;
        set_last(e, st, false);
    }
    bool hb = kv_gateway_state_is_heartbeat(st);
    if (!e) {
        if (s->n >= s->max_engines)
            return KV_GW_TOO_MANY_ENGINES;
        e = kv_calloc(1, sizeof(*e));
        if (!e)
            return KV_ENOMEM;
        e->hash = h;
        set_last(e, st, true);
        e->last_load_ms = -1;
        e->last_seq = -1;
        size_t b = h & (s->nbuckets - 1);
        e->next = s->buckets[b];
        s->buckets[b] = e;
        s->n++;
        if (s->n > s->nbuckets)
            grow(s);
    } else if (st->seq >= 0 && e->last_seq >= 0 && st->seq <= e->last_seq &&
               e->last_seq - st->seq <= GW_SEQ_RESTART_GAP &&
               now_ms - e->last_seen_ms <= s->stale_ms) {
        return KV_GW_REORDERED;
    }
    e->last_seq = st->seq;
    e->last_seen_ms = now_ms;
    e->last_seen_wall_ms = wall_ms;
    e->states++;
    if (hb) {
        e->heartbeats++;
        s->heartbeats++;
    } else {
        set_last(e, st, false);
        e->load_known = true;
        e->last_load_ms = now_ms;
    }
    hist_push(s, e, st, wall_ms, hb);
    return KV_GW_VALID;
}

size_t gw_store_sweep(struct gw_store *s, int64_t now_ms)
{
    size_t n = 0;
    for (size_t b = 0; b < s->nbuckets; b++) {
        struct gw_engine **pp = &s->buckets[b];
        while (*pp) {
            struct gw_engine *e = *pp;
            if (now_ms - e->last_seen_ms > s->remove_ms) {
                *pp = e->next;
                kv_free(e->hist);
                kv_free(e);
                s->n--;
                n++;
            } else {
                pp = &e->next;
            }
        }
    }
    s->removed += n;
    return n;
}

struct gw_engine *gw_store_find(struct gw_store *s, const char *id, int64_t now_ms)
{
    struct gw_engine *e = lookup(s, id, kv_hash64(id, strlen(id)));
    if (e && now_ms - e->last_seen_ms > s->remove_ms)
        return NULL;
    return e;
}

void gw_store_snapshot(const struct gw_store *s, const struct gw_engine *e, int64_t now_ms,
                       struct kv_gateway_engine *out)
{
    memset(out, 0, sizeof(*out));
    out->state = e->last;
    out->load_known = e->load_known;
    out->age_ms = now_ms - e->last_seen_ms;
    out->fresh = out->age_ms <= s->stale_ms;
    out->load_age_ms = e->last_load_ms >= 0 ? now_ms - e->last_load_ms : -1;
    out->last_seen_wall_ms = e->last_seen_wall_ms;
    out->states = e->states;
    out->heartbeats = e->heartbeats;
}

const struct gw_hist_ent *gw_store_hist_at(const struct gw_store *s, const struct gw_engine *e,
                                           uint32_t i)
{
    (void)s;
    return &e->hist[(e->hist_head + i) % e->hist_cap];
}

void gw_store_hist_state(const struct gw_store *s, const struct gw_engine *e, uint32_t i,
                         struct kv_gateway_state *out)
{
    const struct gw_hist_ent *h = gw_store_hist_at(s, e, i);
    memcpy(out->engine_id, e->last.engine_id, sizeof(out->engine_id));
    memcpy(out->scheduling_mode, h->scheduling_mode, sizeof(out->scheduling_mode));
    out->timestamp_ms = h->timestamp_ms;
    out->pending_tokens_total = h->pending_tokens_total;
    out->kv_cache_free_blocks = h->kv_cache_free_blocks;
    out->kv_cache_total_blocks = h->kv_cache_total_blocks;
    out->seq = h->seq;
    out->latency_pred_ms = h->latency_pred_ms;
    out->engine_capacity = h->engine_capacity;
}
