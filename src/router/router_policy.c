/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_policy.c - the routing policies' state and choices, as pure functions over engine
 * indexes and bit masks (see router_int.h and docs/routing.md for every formula).
 *
 * Prefix tree design: SGLang's cache_aware router keeps a character radix tree per worker. We
 * keep an approximate equivalent that is cheaper to maintain: the prompt is cut into chunks of
 * `chunk` bytes, and chunk k is stored under the chained XXH3 hash of chunks 0..k, so one
 * hash-table entry stands for one whole prefix. An entry holds the set of engines (bit mask) that
 * were sent that prefix and the time it was last used. Matching walks the chunks while some
 * eligible engine still holds the prefix. The match granularity is one chunk (16 bytes by
 * default) and two different prefixes may collide with probability ~2^-63.
 *
 * Invariants of struct kv_rt_prefix:
 *  1. cap is a power of two; a slot is empty iff key == 0 (stored keys have bit 0 set).
 *  2. A slot whose mask became 0 is a tombstone: it keeps its key so probe chains stay intact;
 *     tombstones are dropped when the table is rebuilt.
 *  3. size[e] == chunk bytes summed over entries whose mask has bit e.
 *  4. used (occupied slots, tombstones included) <= cap / 2 after every insert.
 *
 * Thread model: none of this locks; router.c calls it under its state mutex.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/util.h"
#include "router/router_int.h"

/* --- ring --- */

static int point_cmp(const void *a, const void *b)
{
    const struct kv_rt_ring_point *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return x->engine - y->engine;
}

int kv_rt_ring_build(struct kv_rt_ring *r, const char *const *names, size_t n, int vnodes)
{
    if (vnodes <= 0 || n > KV_RT_MAX_ENGINES)
        return KV_EINVAL;
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        cnt += names[i] ? (size_t)vnodes : 0;
    struct kv_rt_ring_point *pts = kv_calloc(cnt ? cnt : 1, sizeof(*pts));
    if (!pts)
        return KV_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!names[i])
            continue;
        uint64_t base = kv_hash64(names[i], strlen(names[i]));
        for (int v = 0; v < vnodes; v++) {
            uint32_t vv = (uint32_t)v;
            pts[k].h = kv_hash64_seed(&vv, sizeof(vv), base);
            pts[k].engine = (int)i;
            k++;
        }
    }
    qsort(pts, cnt, sizeof(*pts), point_cmp);
    kv_free(r->pts);
    r->pts = pts;
    r->n = cnt;
    return KV_OK;
}

void kv_rt_ring_fini(struct kv_rt_ring *r)
{
    kv_free(r->pts);
    r->pts = NULL;
    r->n = 0;
}

int kv_rt_ring_pick(const struct kv_rt_ring *r, const void *key, size_t keylen, uint64_t eligible)
{
    if (!r->n || !eligible)
        return -1;
    uint64_t h = kv_hash64(key, keylen);
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->pts[mid].h < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct kv_rt_ring_point *p = &r->pts[(lo + i) % r->n];
        if (eligible & (1ULL << p->engine))
            return p->engine;
    }
    return -1;
}

/* --- simple picks --- */

int kv_rt_pick_rr(uint64_t eligible, size_t n, uint64_t counter)
{
    if (!eligible || n == 0)
        return -1;
    size_t cnt = (size_t)__builtin_popcountll(eligible);
    size_t want = (size_t)(counter % cnt);
    for (size_t i = 0; i < n && i < KV_RT_MAX_ENGINES; i++) {
        if (!(eligible & (1ULL << i)))
            continue;
        if (want == 0)
            return (int)i;
        want--;
    }
    return -1;
}

int kv_rt_pick_least(const int64_t *load, uint64_t eligible, unsigned start)
{
    int best = -1;
    for (unsigned k = 0; k < KV_RT_MAX_ENGINES; k++) {
        unsigned i = (start + k) % KV_RT_MAX_ENGINES;
        if (!(eligible & (1ULL << i)))
            continue;
        if (best < 0 || load[i] < load[best])
            best = (int)i;
    }
    return best;
}

/* --- prefix tree --- */

struct pf_ent {
    uint64_t key;  /* 0 = empty */
    uint64_t mask; /* engines holding this prefix; 0 = tombstone */
    int64_t ts;    /* last insert or match */
    uint32_t len;  /* bytes of this chunk */
};

struct kv_rt_prefix {
    struct kv_rt_prefix_params p;
    struct pf_ent *tab;
    size_t cap, used, live;
    size_t size[KV_RT_MAX_ENGINES];
};

void kv_rt_prefix_params_default(struct kv_rt_prefix_params *p)
{
    p->cache_threshold = 0.5;
    p->balance_abs_threshold = 32;
    p->balance_rel_threshold = 1.0001;
    p->max_chars = (size_t)1 << 24; /* SGLang max_tree_size 2^24 */
    p->chunk = 16;
}

int kv_rt_prefix_create(const struct kv_rt_prefix_params *p, struct kv_rt_prefix **out)
{
    if (!p || p->chunk == 0 || p->chunk > 4096 || p->max_chars < p->chunk)
        return KV_EINVAL;
    struct kv_rt_prefix *t = kv_calloc(1, sizeof(*t));
    if (!t)
        return KV_ENOMEM;
    t->p = *p;
    t->cap = 1024;
    t->tab = kv_calloc(t->cap, sizeof(*t->tab));
    if (!t->tab) {
        kv_free(t);
        return KV_ENOMEM;
    }
    *out = t;
    return KV_OK;
}

void kv_rt_prefix_destroy(struct kv_rt_prefix *t)
{
    if (!t)
        return;
    kv_free(t->tab);
    kv_free(t);
}

static struct pf_ent *pf_find(const struct kv_rt_prefix *t, uint64_t key)
{
    size_t m = t->cap - 1;
    for (size_t i = key & m;; i = (i + 1) & m) {
        struct pf_ent *e = &t->tab[i];
        if (e->key == key)
            return e;
        if (e->key == 0)
            return NULL;
    }
}

/* Rebuilds the table with capacity cap, dropping tombstones. */
static int pf_rehash(struct kv_rt_prefix *t, size_t cap)
{
    struct pf_ent *nt = kv_calloc(cap, sizeof(*nt));
    if (!nt)
        return KV_ENOMEM;
    size_t used = 0;
    for (size_t i = 0; i < t->cap; i++) {
        struct pf_ent *e = &t->tab[i];
        if (!e->key || !e->mask)
            continue;
        size_t j = e->key & (cap - 1);
        while (nt[j].key)
            j = (j + 1) & (cap - 1);
        nt[j] = *e;
        used++;
    }
    kv_free(t->tab);
    t->tab = nt;
    t->cap = cap;
    t->used = used;
    t->live = used;
    return KV_OK;
}

static uint64_t chunk_key(const char *text, size_t off, size_t n, uint64_t prev)
{
    return kv_hash64_seed(text + off, n, prev) | 1;
}

#define PF_SEED 0x6b7673746173680aULL

static uint64_t pf_match_mask(const struct kv_rt_prefix *t, const char *text, size_t len,
                              uint64_t eligible, size_t *matched)
{
    uint64_t cur = eligible, prev = PF_SEED;
    size_t off = 0;
    *matched = 0;
    uint64_t best = 0;
    while (off < len) {
        size_t n = KV_MIN(t->p.chunk, len - off);
        uint64_t key = chunk_key(text, off, n, prev);
        const struct pf_ent *e = pf_find(t, key);
        if (!e || !(e->mask & cur))
            break;
        cur &= e->mask;
        best = cur;
        off += n;
        *matched = off;
        prev = key;
    }
    return best;
}

void kv_rt_prefix_match(const struct kv_rt_prefix *t, const char *text, size_t len,
                        uint64_t eligible, int *engine, size_t *matched)
{
    uint64_t m = pf_match_mask(t, text, len, eligible, matched);
    *engine = m ? __builtin_ctzll(m) : -1;
}

size_t kv_rt_prefix_size(const struct kv_rt_prefix *t, int engine)
{
    if (engine < 0 || engine >= KV_RT_MAX_ENGINES)
        return 0;
    return t->size[engine];
}

static void pf_clear_bit(struct kv_rt_prefix *t, struct pf_ent *e, int engine)
{
    uint64_t bit = 1ULL << engine;
    if (!(e->mask & bit))
        return;
    e->mask &= ~bit;
    t->size[engine] -= e->len;
    if (!e->mask)
        t->live--;
}

void kv_rt_prefix_forget(struct kv_rt_prefix *t, int engine)
{
    if (engine < 0 || engine >= KV_RT_MAX_ENGINES)
        return;
    for (size_t i = 0; i < t->cap; i++)
        if (t->tab[i].key)
            pf_clear_bit(t, &t->tab[i], engine);
}

static int i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Evicts engine's least recently used prefixes until it holds <= 90% of max_chars. */
static void pf_evict(struct kv_rt_prefix *t, int engine)
{
    uint64_t bit = 1ULL << engine;
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++)
        n += (t->tab[i].mask & bit) != 0;
    if (n == 0)
        return;
    int64_t *ts = kv_malloc(n * sizeof(*ts));
    size_t target = t->p.max_chars / 10 * 9;
    if (!ts) { /* no memory to sort: forget everything this engine holds */
        kv_rt_prefix_forget(t, engine);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++)
        if (t->tab[i].mask & bit)
            ts[k++] = t->tab[i].ts;
    qsort(ts, n, sizeof(*ts), i64_cmp);
    /* Entries are about chunk bytes each: drop the oldest until the target is reached. */
    size_t drop = (t->size[engine] - target + t->p.chunk - 1) / t->p.chunk;
    int64_t cutoff = ts[KV_MIN(drop, n - 1)];
    kv_free(ts);
    for (size_t i = 0; i < t->cap && t->size[engine] > target; i++) {
        struct pf_ent *e = &t->tab[i];
        if ((e->mask & bit) && e->ts <= cutoff)
            pf_clear_bit(t, e, engine);
    }
}

int kv_rt_prefix_insert(struct kv_rt_prefix *t, const char *text, size_t len, int engine,
                        int64_t now)
{
    if (engine < 0 || engine >= KV_RT_MAX_ENGINES)
        return KV_EINVAL;
    uint64_t bit = 1ULL << engine, prev = PF_SEED;
    size_t off = 0;
    while (off < len) {
        if ((t->used + 1) * 2 > t->cap) {
            size_t ncap = (t->live + 1) * 4 > t->cap ? t->cap * 2 : t->cap;
            int rc = pf_rehash(t, ncap);
            if (rc < 0)
                return rc;
        }
        size_t n = KV_MIN(t->p.chunk, len - off);
        uint64_t key = chunk_key(text, off, n, prev);
        size_t m = t->cap - 1, i = key & m;
        while (t->tab[i].key && t->tab[i].key != key)
            i = (i + 1) & m;
        struct pf_ent *e = &t->tab[i];
        if (!e->key) {
            e->key = key;
            e->len = (uint32_t)n;
            t->used++;
        }
        if (!e->mask)
            t->live++;
        if (!(e->mask & bit)) {
            e->mask |= bit;
            t->size[engine] += e->len;
        }
        e->ts = now;
        off += n;
        prev = key;
    }
    if (t->size[engine] > t->p.max_chars)
        pf_evict(t, engine);
    return KV_OK;
}

int kv_rt_pick_prefix(struct kv_rt_prefix *t, const struct kv_rt_prefix_params *p, const char *text,
                      size_t len, const int64_t *load, uint64_t eligible, int64_t now,
                      const char **why)
{
    if (!eligible)
        return -1;
    int64_t mx = INT64_MIN, mn = INT64_MAX;
    for (int i = 0; i < KV_RT_MAX_ENGINES; i++) {
        if (!(eligible & (1ULL << i)))
            continue;
        mx = KV_MAX(mx, load[i]);
        mn = KV_MIN(mn, load[i]);
    }
    int pick;
    if (mx - mn > p->balance_abs_threshold && (double)mx > (double)mn * p->balance_rel_threshold) {
        pick = kv_rt_pick_least(load, eligible, 0);
        *why = "imbalanced";
    } else {
        size_t matched = 0;
        uint64_t m = pf_match_mask(t, text, len, eligible, &matched);
        if (len > 0 && m && (double)matched / (double)len > p->cache_threshold) {
            pick = kv_rt_pick_least(load, m, 0);
            *why = "prefix_hit";
        } else {
            pick = -1;
            for (int i = 0; i < KV_RT_MAX_ENGINES; i++) {
                if (!(eligible & (1ULL << i)))
                    continue;
                if (pick < 0 || t->size[i] < t->size[pick] ||
                    (t->size[i] == t->size[pick] && load[i] < load[pick]))
                    pick = i;
            }
            *why = "smallest_tree";
        }
    }
    if (pick >= 0 && len > 0)
        (void)kv_rt_prefix_insert(t, text, len, pick, now); /* ENOMEM only costs cache hits */
    return pick;
}

/* --- ELRAR --- */

void kv_rt_elrar_params_default(struct kv_rt_elrar_params *p)
{
    p->slo_ms = 50;
    p->load_scale_s = 1.0;
    p->kv_beta = 1.0;
    p->affinity_window_ms = 300000;
    for (int i = 0; i < 4; i++)
        p->w[i] = 1.0;
}

double kv_rt_elrar_score(const struct kv_rt_elrar_params *p, const struct kv_rt_estate *s,
                         int64_t extra_pending, bool affine)
{
    double s_lat;
    if (p->slo_ms <= 0) {
        s_lat = 0.0; /* ELRAR: norm = 1 -> score 0 */
    } else {
        double norm = fmax(0.0, s->latency_pred_ms / p->slo_ms);
        s_lat = fmax(0.0, 1.0 - fmin(norm, 5.0));
    }
    double s_load;
    if (s->capacity <= 1e-6 || s->pending_tokens < 0) {
        s_load = 0.5;
    } else {
        double secs = (double)(s->pending_tokens + (extra_pending > 0 ? extra_pending : 0)) /
                      s->capacity / fmax(p->load_scale_s, 1e-6);
        s_load = 1.0 - tanh(fmax(0.0, secs));
    }
    double s_mode = 0.5;
    if (strcmp(s->mode, "latency_optimized") == 0)
        s_mode = 1.0;
    else if (strcmp(s->mode, "throughput_optimized") == 0)
        s_mode = 0.0;
    double s_kv = affine ? p->kv_beta : 0.0;
    return p->w[0] * s_lat + p->w[1] * s_load + p->w[2] * s_mode + p->w[3] * s_kv;
}

int kv_rt_pick_elrar(const struct kv_rt_elrar_params *p, const struct kv_rt_estate *st,
                     const int64_t *extra, int affine_engine, uint64_t eligible)
{
    int best = -1;
    double best_score = 0;
    for (int i = 0; i < KV_RT_MAX_ENGINES; i++) {
        if (!(eligible & (1ULL << i)) || !st[i].known || !st[i].fresh)
            continue;
        double sc = kv_rt_elrar_score(p, &st[i], extra[i], i == affine_engine);
        if (best < 0 || sc > best_score) {
            best = i;
            best_score = sc;
        }
    }
    return best;
}

void kv_rt_affinity_init(struct kv_rt_affinity *a)
{
    memset(a->h, 0, sizeof(a->h));
    for (size_t i = 0; i < KV_RT_AFFINITY_SLOTS; i++)
        a->engine[i] = -1;
    memset(a->ts, 0, sizeof(a->ts));
}

int kv_rt_affinity_get(const struct kv_rt_affinity *a, const void *key, size_t len, int64_t now,
                       int64_t window)
{
    uint64_t h = kv_hash64(key, len) | 1;
    size_t i = h % KV_RT_AFFINITY_SLOTS;
    if (a->h[i] != h || a->engine[i] < 0 || now - a->ts[i] > window)
        return -1;
    return a->engine[i];
}

void kv_rt_affinity_put(struct kv_rt_affinity *a, const void *key, size_t len, int engine,
                        int64_t now)
{
    uint64_t h = kv_hash64(key, len) | 1;
    size_t i = h % KV_RT_AFFINITY_SLOTS;
    a->h[i] = h;
    a->engine[i] = (int16_t)engine;
    a->ts[i] = now;
}
