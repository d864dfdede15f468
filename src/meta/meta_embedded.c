/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_embedded.c - the embedded metadata backend (embedded://NAME): an in-process store.
 *
 * Handles opened with the same NAME ("" means "default") in one process share one store. Stores
 * live in a global registry, refcounted by their handles; the last close frees the store.
 *
 * Data: a key-sorted array of entries (binary search; list by prefix is a lower-bound then a
 * scan), a small array of leases, a table of watches (common/idtab.h ids), a FIFO of pending
 * events, and a revision counter.
 *
 * Invariants:
 *  1. entries[] is sorted by strcmp(key) and holds each key once.
 *  2. Every entry with lease != 0 names a lease in leases[]. A lease whose expire_ms has passed
 *     is reaped (its keys deleted with DEL events, the lease removed) before any operation
 *     looks at the store, and by the worker thread at its deadline.
 *  3. Each mutation takes rev + 1; queued events carry it, so the queue is in revision order.
 *     A watch only receives events with rev > its start_rev (made after kv_meta_watch returned).
 *  4. Lease ids grow from a random-ish start and are never reused.
 *  5. When kv_meta_unwatch(id) returns, the watch is out of the table (no later event reaches
 *     it) and running_watch != id (its callback is not running), unless the caller is the
 *     worker thread itself, i.e. the callback unwatches its own watch (tolerated here, though
 *     meta.h forbids it: the callback finishes and is never called again).
 *
 * Thread model: any thread calls in; one worker thread per store ("meta-emb") delivers events
 * and reaps expired leases. Callbacks run on the worker without any lock held; events of one
 * store are delivered one at a time in revision order (so in order per key).
 *
 * Locks (order: registry_lock before a store's lock; never both held while calling out):
 *  - registry_lock guards the registry list and every store's refs.
 *  - store->lock guards everything else in struct emb_store.
 */
#define KV_LOG_COMPONENT "meta"
#include "meta/meta_embedded_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/idtab.h"
#include "common/log.h"
#include "common/util.h"

struct emb_entry {
    char *key;
    char *val; /* NUL after len bytes */
    size_t len;
    int64_t lease;
};

struct emb_lease {
    int64_t id;
    int ttl_s;
    int64_t expire_ms;
};

struct emb_watch {
    struct kv_meta *owner;
    char *prefix;
    size_t plen;
    kv_meta_watch_fn fn;
    kv_meta_emb_rev_fn rfn;
    void *ud;
    uint64_t start_rev;
};

struct emb_ev {
    struct emb_ev *next;
    enum kv_meta_event_type type;
    char *key;
    char *val; /* NULL for DEL */
    size_t len;
    uint64_t rev;
};

struct emb_store {
    struct emb_store *next; /* registry list */
    char *name;
    int refs; /* guarded by registry_lock */

    pthread_mutex_t lock; /* guards every field below */
    pthread_cond_t cond;  /* worker wake-up; unwatch waiting for a callback to end */
    struct emb_entry *ents;
    size_t nents, capents;
    struct emb_lease *leases;
    size_t nleases, capleases;
    int64_t next_lease;
    struct kv_idtab watches;
    struct emb_ev *evq_head, *evq_tail;
    uint64_t rev;
    uint64_t running_watch; /* id of the watch whose callback runs now, 0 = none */
    bool stop;
    pthread_t worker;
};

struct emb_handle {
    struct emb_store *s;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct emb_store *registry;

static const struct kv_meta_ops emb_ops;

static struct emb_store *store_of(struct kv_meta *m)
{
    return ((struct emb_handle *)m->impl)->s;
}

/* ---- entries (store->lock held) ---- */

/* Index of the first entry with key >= k; *found when equal. */
static size_t ent_lower(const struct emb_store *s, const char *k, bool *found)
{
    size_t lo = 0, hi = s->nents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->ents[mid].key, k) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (found)
        *found = lo < s->nents && strcmp(s->ents[lo].key, k) == 0;
    return lo;
}

static struct emb_lease *lease_find(struct emb_store *s, int64_t id)
{
    for (size_t i = 0; i < s->nleases; i++)
        if (s->leases[i].id == id)
            return &s->leases[i];
    return NULL;
}

static bool watched(struct emb_store *s, const char *key)
{
    for (uint32_t i = 0; i < s->watches.n; i++) {
        uint64_t id;
        struct emb_watch *w = kv_idtab_at(&s->watches, i, &id);
        if (w && strncmp(key, w->prefix, w->plen) == 0)
            return true;
    }
    return false;
}

/* Takes the next revision and queues an event if someone watches key. An event that cannot be
 * allocated is dropped with a warning (the mutation itself already happened). */
static void emit(struct emb_store *s, enum kv_meta_event_type type, const char *key,
                 const char *val, size_t len)
{
    s->rev++;
    if (!watched(s, key))
        return;
    struct emb_ev *ev = kv_calloc(1, sizeof(*ev));
    if (!ev)
        goto out_nomem;
    ev->type = type;
    ev->rev = s->rev;
    ev->len = len;
    ev->key = kv_strdup(key);
    if (!ev->key)
        goto out_free_ev;
    if (type == KV_META_EV_PUT) {
        ev->val = kv_memdup0(val, len);
        if (!ev->val)
            goto out_free_ev;
    }
    if (s->evq_tail)
        s->evq_tail->next = ev;
    else
        s->evq_head = ev;
    s->evq_tail = ev;
    pthread_cond_broadcast(&s->cond);
    return;
out_free_ev:
    kv_free(ev->key);
    kv_free(ev);
out_nomem:
    KV_LOGW_RL(5000, "embedded store: out of memory queuing a watch event for '%s'; dropped", key);
}

static void ent_remove_at(struct emb_store *s, size_t i)
{
    struct emb_entry e = s->ents[i];
    memmove(&s->ents[i], &s->ents[i + 1], (s->nents - i - 1) * sizeof(*s->ents));
    s->nents--;
    emit(s, KV_META_EV_DEL, e.key, NULL, 0);
    kv_free(e.key);
    kv_free(e.val);
}

/* Sets key = val bound to lease (already validated). */
static int ent_set(struct emb_store *s, const char *key, const void *val, size_t len, int64_t lease)
{
    char *v = kv_memdup0(val, len);
    if (!v)
        return KV_ENOMEM;
    bool found;
    size_t i = ent_lower(s, key, &found);
    if (found) {
        kv_free(s->ents[i].val);
    } else {
        char *k = kv_strdup(key);
        if (!k)
            goto out_free_v;
        if (s->nents == s->capents) {
            size_t cap = s->capents ? s->capents * 2 : 16;
            struct emb_entry *ne = kv_realloc(s->ents, cap * sizeof(*ne));
            if (!ne) {
                kv_free(k);
                goto out_free_v;
            }
            s->ents = ne;
            s->capents = cap;
        }
        memmove(&s->ents[i + 1], &s->ents[i], (s->nents - i) * sizeof(*s->ents));
        s->nents++;
        s->ents[i].key = k;
    }
    s->ents[i].val = v;
    s->ents[i].len = len;
    s->ents[i].lease = lease;
    emit(s, KV_META_EV_PUT, key, v, len);
    return KV_OK;
out_free_v:
    kv_free(v);
    return KV_ENOMEM;
}

/* Deletes every key bound to lease and forgets the lease. */
static void lease_drop(struct emb_store *s, int64_t id)
{
    for (size_t i = 0; i < s->nents;) {
        if (s->ents[i].lease == id)
            ent_remove_at(s, i);
        else
            i++;
    }
    for (size_t i = 0; i < s->nleases; i++) {
        if (s->leases[i].id == id) {
            s->leases[i] = s->leases[--s->nleases];
            break;
        }
    }
}

/* Reaps every lease expired at now (invariant 2). */
static void reap(struct emb_store *s, int64_t now)
{
    for (size_t i = 0; i < s->nleases;) {
        if (s->leases[i].expire_ms <= now) {
            KV_LOGD("embedded store '%s': lease %lld expired", s->name, (long long)s->leases[i].id);
            lease_drop(s, s->leases[i].id); /* swaps the last lease into i */
        } else {
            i++;
        }
    }
}

static void lock_and_reap(struct emb_store *s)
{
    pthread_mutex_lock(&s->lock);
    reap(s, kv_now_ms());
}

/* ---- worker thread ---- */

static void deliver(struct emb_store *s, struct emb_ev *ev)
{
    struct kv_meta_event e = {.type = ev->type, .key = ev->key, .value = ev->val, .len = ev->len};
    for (uint32_t i = 0; i < s->watches.n; i++) {
        uint64_t id;
        struct emb_watch *w = kv_idtab_at(&s->watches, i, &id);
        if (!w || ev->rev <= w->start_rev || strncmp(ev->key, w->prefix, w->plen) != 0)
            continue;
        kv_meta_watch_fn fn = w->fn;
        kv_meta_emb_rev_fn rfn = w->rfn;
        void *ud = w->ud;
        s->running_watch = id;
        pthread_mutex_unlock(&s->lock);
        if (rfn)
            rfn(ud, &e, ev->rev);
        else
            fn(ud, &e);
        pthread_mutex_lock(&s->lock);
        s->running_watch = 0;
        pthread_cond_broadcast(&s->cond);
    }
}

static void *worker_main(void *arg)
{
    struct emb_store *s = arg;
    kv_log_set_thread_name("meta-emb");
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        int64_t now = kv_now_ms();
        reap(s, now);
        struct emb_ev *ev = s->evq_head;
        if (ev) {
            s->evq_head = ev->next;
            if (!s->evq_head)
                s->evq_tail = NULL;
            deliver(s, ev);
            kv_free(ev->key);
            kv_free(ev->val);
            kv_free(ev);
            continue;
        }
        int64_t wake = now + 1000;
        for (size_t i = 0; i < s->nleases; i++)
            wake = KV_MIN(wake, s->leases[i].expire_ms);
        int64_t wait_ms = KV_MAX(wake - now, 1);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += wait_ms / 1000;
        ts.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- registry ---- */

static void store_free(struct emb_store *s)
{
    for (size_t i = 0; i < s->nents; i++) {
        kv_free(s->ents[i].key);
        kv_free(s->ents[i].val);
    }
    kv_free(s->ents);
    kv_free(s->leases);
    for (uint32_t i = 0; i < s->watches.n; i++) {
        uint64_t id;
        struct emb_watch *w = kv_idtab_at(&s->watches, i, &id);
        if (w) {
            kv_free(w->prefix);
            kv_free(w);
        }
    }
    kv_idtab_fini(&s->watches);
    while (s->evq_head) {
        struct emb_ev *ev = s->evq_head;
        s->evq_head = ev->next;
        kv_free(ev->key);
        kv_free(ev->val);
        kv_free(ev);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    kv_free(s->name);
    kv_free(s);
}

static int store_create(const char *name, struct emb_store **out)
{
    struct emb_store *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->name = kv_strdup(name);
    if (!s->name) {
        kv_free(s);
        return KV_ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    kv_idtab_init(&s->watches);
    /* random-ish positive start, far from 0, well below INT64_MAX */
    uint64_t seed = (uint64_t)kv_now_ns() ^ ((uint64_t)getpid() << 20) ^ (uint64_t)kv_wall_ms();
    s->next_lease = (int64_t)(((seed * 0x9E3779B97F4A7C15ull) >> 24) & 0xFFFFFFFFFFull) + 1000;
    s->refs = 1;
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) {
        store_free(s);
        return KV_ENOMEM;
    }
    *out = s;
    return KV_OK;
}

static void store_unref(struct emb_store *s)
{
    pthread_mutex_lock(&registry_lock);
    bool last = --s->refs == 0;
    if (last) {
        for (struct emb_store **pp = &registry; *pp; pp = &(*pp)->next) {
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (!last)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->worker, NULL);
    store_free(s);
}

int kv_meta_embedded_open(struct kv_meta *m, const char *rest)
{
    const char *name = (rest && *rest) ? rest : "default";
    struct emb_handle *h = kv_calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    int rc = KV_OK;
    pthread_mutex_lock(&registry_lock);
    struct emb_store *s = registry;
    while (s && strcmp(s->name, name) != 0)
        s = s->next;
    if (s) {
        s->refs++;
    } else {
        rc = store_create(name, &s);
        if (rc == KV_OK) {
            s->next = registry;
            registry = s;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (rc < 0) {
        kv_free(h);
        return rc;
    }
    h->s = s;
    m->ops = &emb_ops;
    m->impl = h;
    return KV_OK;
}

/* ---- ops ---- */

static int emb_get(struct kv_meta *m, const char *key, char **val, size_t *len)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    bool found;
    size_t i = ent_lower(s, key, &found);
    int rc = KV_ENOENT;
    if (found) {
        char *v = kv_memdup0(s->ents[i].val, s->ents[i].len);
        if (!v) {
            rc = KV_ENOMEM;
        } else {
            *val = v;
            *len = s->ents[i].len;
            rc = KV_OK;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int emb_put(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    int rc = (lease && !lease_find(s, lease)) ? KV_EMETA_LEASE : ent_set(s, key, val, len, lease);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int emb_del(struct kv_meta *m, const char *key)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    bool found;
    size_t i = ent_lower(s, key, &found);
    if (found)
        ent_remove_at(s, i);
    pthread_mutex_unlock(&s->lock);
    return found ? KV_OK : KV_ENOENT;
}

static int list_filtered(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    struct emb_store *s = store_of(m);
    size_t plen = strlen(prefix);
    lock_and_reap(s);
    size_t first = ent_lower(s, prefix, NULL);
    size_t cnt = 0;
    for (size_t i = first; i < s->nents && strncmp(s->ents[i].key, prefix, plen) == 0; i++)
        cnt++;
    struct kv_meta_kv *out = NULL;
    size_t k = 0;
    int rc = KV_OK;
    if (cnt) {
        out = kv_calloc(cnt, sizeof(*out));
        if (!out) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
    }
    for (size_t i = first; i < first + cnt; i++) {
        out[k].key = kv_strdup(s->ents[i].key);
        out[k].val = kv_memdup0(s->ents[i].val, s->ents[i].len);
        out[k].len = s->ents[i].len;
        k++;
        if (!out[k - 1].key || !out[k - 1].val) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
    }
out_unlock:
    pthread_mutex_unlock(&s->lock);
    if (rc < 0) {
        kv_meta_kvs_free(out, k);
        return rc;
    }
    if (k == 0) {
        kv_free(out);
        out = NULL;
    }
    *kvs = out;
    *n = k;
    return KV_OK;
}

static int emb_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    return list_filtered(m, prefix, kvs, n);
}

static int emb_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                   const void *val, size_t len, int64_t lease)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    bool found;
    size_t i = ent_lower(s, key, &found);
    int rc;
    if (lease && !lease_find(s, lease))
        rc = KV_EMETA_LEASE;
    else if (!expect ? found
                     : (!found || s->ents[i].len != expect_len ||
                        memcmp(s->ents[i].val, expect, expect_len) != 0))
        rc = KV_EMETA_CAS;
    else
        rc = ent_set(s, key, val, len, lease);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int emb_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    int rc = KV_OK;
    if (s->nleases == s->capleases) {
        size_t cap = s->capleases ? s->capleases * 2 : 8;
        struct emb_lease *nl = kv_realloc(s->leases, cap * sizeof(*nl));
        if (!nl) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
        s->leases = nl;
        s->capleases = cap;
    }
    struct emb_lease *l = &s->leases[s->nleases++];
    l->id = s->next_lease++;
    l->ttl_s = ttl_s;
    l->expire_ms = kv_now_ms() + (int64_t)ttl_s * 1000;
    *lease = l->id;
    pthread_cond_broadcast(&s->cond); /* the worker may need an earlier deadline */
out_unlock:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int emb_lease_keepalive(struct kv_meta *m, int64_t lease)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    struct emb_lease *l = lease_find(s, lease);
    if (l)
        l->expire_ms = kv_now_ms() + (int64_t)l->ttl_s * 1000;
    pthread_mutex_unlock(&s->lock);
    return l ? KV_OK : KV_EMETA_LEASE;
}

static int emb_lease_revoke(struct kv_meta *m, int64_t lease)
{
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    bool found = lease_find(s, lease) != NULL;
    if (found)
        lease_drop(s, lease);
    pthread_mutex_unlock(&s->lock);
    return found ? KV_OK : KV_EMETA_LEASE;
}

static int watch_add(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn,
                     kv_meta_emb_rev_fn rfn, void *ud, uint64_t *id, uint64_t *start_rev)
{
    struct emb_store *s = store_of(m);
    struct emb_watch *w = kv_calloc(1, sizeof(*w));
    if (!w)
        return KV_ENOMEM;
    w->prefix = kv_strdup(prefix);
    if (!w->prefix) {
        kv_free(w);
        return KV_ENOMEM;
    }
    w->plen = strlen(prefix);
    w->owner = m;
    w->fn = fn;
    w->rfn = rfn;
    w->ud = ud;
    lock_and_reap(s);
    w->start_rev = s->rev;
    int rc = kv_idtab_add(&s->watches, w, id);
    pthread_mutex_unlock(&s->lock);
    if (rc < 0) {
        kv_free(w->prefix);
        kv_free(w);
        return rc;
    }
    if (start_rev)
        *start_rev = w->start_rev;
    return KV_OK;
}

static int emb_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                     uint64_t *id)
{
    return watch_add(m, prefix, fn, NULL, ud, id, NULL);
}

/* store->lock held. Removes watch id (of handle m) and waits until its callback is not running
 * (invariant 5). */
static int unwatch_locked(struct emb_store *s, struct kv_meta *m, uint64_t id)
{
    struct emb_watch *w = kv_idtab_get(&s->watches, id);
    if (!w || w->owner != m)
        return KV_ENOENT;
    kv_idtab_remove(&s->watches, id);
    if (!pthread_equal(pthread_self(), s->worker)) {
        while (s->running_watch == id)
            pthread_cond_wait(&s->cond, &s->lock);
    }
    kv_free(w->prefix);
    kv_free(w);
    return KV_OK;
}

static int emb_unwatch(struct kv_meta *m, uint64_t id)
{
    struct emb_store *s = store_of(m);
    pthread_mutex_lock(&s->lock);
    int rc = unwatch_locked(s, m, id);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void emb_close(struct kv_meta *m)
{
    struct emb_handle *h = m->impl;
    struct emb_store *s = h->s;
    pthread_mutex_lock(&s->lock);
    for (uint32_t i = 0; i < s->watches.n; i++) {
        uint64_t id;
        struct emb_watch *w = kv_idtab_at(&s->watches, i, &id);
        if (w && w->owner == m)
            unwatch_locked(s, m, id);
    }
    pthread_mutex_unlock(&s->lock);
    store_unref(s);
    kv_free(h);
    m->impl = NULL;
}

static const struct kv_meta_ops emb_ops = {
    .name = "embedded",
    .get = emb_get,
    .put = emb_put,
    .del = emb_del,
    .list = emb_list,
    .cas = emb_cas,
    .lease_grant = emb_lease_grant,
    .lease_keepalive = emb_lease_keepalive,
    .lease_revoke = emb_lease_revoke,
    .watch = emb_watch,
    .unwatch = emb_unwatch,
    .close = emb_close,
};

/* ---- private extras (meta_embedded_int.h) ---- */

int kv_meta_embedded_watch_rev(struct kv_meta *m, const char *prefix, kv_meta_emb_rev_fn fn,
                               void *ud, uint64_t *id, uint64_t *start_rev)
{
    if (!m || m->ops != &emb_ops || !prefix || !fn || !id)
        return KV_EINVAL;
    return watch_add(m, prefix, NULL, fn, ud, id, start_rev);
}

int kv_meta_embedded_rev(struct kv_meta *m, uint64_t *rev)
{
    if (!m || m->ops != &emb_ops || !rev)
        return KV_EINVAL;
    struct emb_store *s = store_of(m);
    lock_and_reap(s);
    *rev = s->rev;
    pthread_mutex_unlock(&s->lock);
    return KV_OK;
}

int kv_meta_embedded_put(struct kv_meta *m, const char *key, const void *val, size_t len,
                         int64_t lease)
{
    if (!m || m->ops != &emb_ops || !key || !*key ||
        strnlen(key, KV_META_MAX_KEY) >= KV_META_MAX_KEY || (!val && len) || lease < 0)
        return KV_EINVAL;
    return emb_put(m, key, val ? val : "", len, lease);
}

int kv_meta_embedded_snapshot_unleased(struct kv_meta *m, struct kv_meta_emb_snap *snap)
{
    if (!m || m->ops != &emb_ops || !snap)
        return KV_EINVAL;
    memset(snap, 0, sizeof(*snap));
    struct emb_store *s = store_of(m);
    int rc = KV_OK;
    lock_and_reap(s);
    size_t cnt = 0, bytes = 0;
    for (size_t i = 0; i < s->nents; i++) {
        if (s->ents[i].lease)
            continue;
        cnt++;
        bytes += strlen(s->ents[i].key) + 1 + s->ents[i].len + 1;
    }
    if (cnt) {
        snap->kvs = kv_calloc(cnt, sizeof(*snap->kvs));
        snap->arena = kv_malloc(bytes);
        if (!snap->kvs || !snap->arena) {
            rc = KV_ENOMEM;
            goto out_unlock;
        }
    }
    char *p = snap->arena;
    for (size_t i = 0; i < s->nents; i++) {
        const struct emb_entry *e = &s->ents[i];
        if (e->lease)
            continue;
        struct kv_meta_kv *kv = &snap->kvs[snap->n++];
        size_t kl = strlen(e->key) + 1;
        memcpy(p, e->key, kl);
        kv->key = p;
        p += kl;
        memcpy(p, e->val, e->len);
        p[e->len] = '\0';
        kv->val = p;
        kv->len = e->len;
        p += e->len + 1;
    }
out_unlock:
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        kv_meta_embedded_snap_free(snap);
    return rc;
}

void kv_meta_embedded_snap_free(struct kv_meta_emb_snap *snap)
{
    if (!snap)
        return;
    kv_free(snap->kvs);
    kv_free(snap->arena);
    memset(snap, 0, sizeof(*snap));
}
