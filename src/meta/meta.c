/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta.c - the metadata front end: URL dispatch, argument checks, and the lease keeper.
 *
 * Invariants:
 *  1. Backends only see valid arguments: key non-empty and < KV_META_MAX_KEY bytes, value
 *     <= KV_META_MAX_VALUE bytes, lease >= 0, ttl >= 1.
 *  2. A lease is in m->keeps at most once; it leaves the list on revoke through this handle,
 *     on close, or when a keepalive finds it expired and lost() then succeeds. A lost() that
 *     fails (metadata still unreachable) is called again with back-off, never concurrently.
 *
 * Thread model: any thread calls in. The keeper thread starts on the first
 * kv_meta_lease_autorenew() and wakes every 100 ms; it calls backends and lost() without
 * holding keep_lock.
 */
#define KV_LOG_COMPONENT "meta"
#include "meta/meta_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"

struct kv_meta_keep {
    struct kv_meta_keep *next;
    int64_t lease;
    int ttl_s;
    int64_t next_ms;
    kv_meta_lease_lost_fn lost;
    void *ud;
    bool lost_pending; /* expired; lost() failed and is retried at next_ms */
    int retry_ms;      /* the next retry's delay (doubles up to KEEP_RETRY_MAX_MS) */
};

#define KEEP_RETRY_MIN_MS 250
#define KEEP_RETRY_MAX_MS 5000

int kv_meta_open(const char *url, const struct kv_meta_opts *opts, struct kv_meta **out)
{
    if (!url || !out)
        return KV_EINVAL;
    struct kv_meta *m = kv_calloc(1, sizeof(*m));
    if (!m)
        return KV_ENOMEM;
    m->timeout_ms = (opts && opts->timeout_ms > 0) ? opts->timeout_ms : KV_META_DEFAULT_TIMEOUT_MS;
    pthread_mutex_init(&m->keep_lock, NULL);
    pthread_cond_init(&m->keep_cond, NULL);
    int rc;
    if (kv_startswith(url, "embedded://"))
        rc = kv_meta_embedded_open(m, url + strlen("embedded://"));
    else if (strcmp(url, "embedded") == 0)
        rc = kv_meta_embedded_open(m, "");
    else if (kv_startswith(url, "http://"))
        rc = kv_meta_http_open(m, url);
    else if (kv_startswith(url, "etcd://"))
        rc = kv_meta_etcd_open(m, url + strlen("etcd://"));
    else if (kv_startswith(url, "redis://"))
        rc = kv_meta_redis_open(m, url + strlen("redis://"));
    else {
        KV_LOGE("metadata URL '%s' has an unknown scheme (use embedded://, http://, etcd:// or "
                "redis://)",
                url);
        rc = KV_EMETA_URL;
    }
    if (rc < 0) {
        pthread_mutex_destroy(&m->keep_lock);
        pthread_cond_destroy(&m->keep_cond);
        kv_free(m);
        return rc;
    }
    *out = m;
    return KV_OK;
}

void kv_meta_close(struct kv_meta *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->keep_lock);
    m->keep_stop = true;
    bool started = m->keep_started;
    pthread_cond_broadcast(&m->keep_cond);
    pthread_mutex_unlock(&m->keep_lock);
    if (started)
        pthread_join(m->keep_thread, NULL);
    while (m->keeps) {
        struct kv_meta_keep *k = m->keeps;
        m->keeps = k->next;
        kv_free(k);
    }
    m->ops->close(m);
    pthread_mutex_destroy(&m->keep_lock);
    pthread_cond_destroy(&m->keep_cond);
    kv_free(m);
}

const char *kv_meta_backend(const struct kv_meta *m)
{
    return m->ops->name;
}

static int check_key(const char *key)
{
    if (!key || !*key)
        return KV_EINVAL;
    if (strnlen(key, KV_META_MAX_KEY) >= KV_META_MAX_KEY)
        return KV_E2BIG;
    return KV_OK;
}

int kv_meta_get(struct kv_meta *m, const char *key, char **val, size_t *len)
{
    int rc = check_key(key);
    if (rc < 0 || !val || !len)
        return rc < 0 ? rc : KV_EINVAL;
    return m->ops->get(m, key, val, len);
}

int kv_meta_put(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease)
{
    int rc = check_key(key);
    if (rc < 0)
        return rc;
    if ((!val && len) || lease < 0)
        return KV_EINVAL;
    if (len > KV_META_MAX_VALUE)
        return KV_E2BIG;
    return m->ops->put(m, key, val ? val : "", len, lease);
}

int kv_meta_del(struct kv_meta *m, const char *key)
{
    int rc = check_key(key);
    if (rc < 0)
        return rc;
    return m->ops->del(m, key);
}

int kv_meta_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    if (!prefix || !kvs || !n)
        return KV_EINVAL;
    if (strnlen(prefix, KV_META_MAX_KEY) >= KV_META_MAX_KEY)
        return KV_E2BIG;
    return m->ops->list(m, prefix, kvs, n);
}

void kv_meta_kvs_free(struct kv_meta_kv *kvs, size_t n)
{
    if (!kvs)
        return;
    for (size_t i = 0; i < n; i++) {
        kv_free(kvs[i].key);
        kv_free(kvs[i].val);
    }
    kv_free(kvs);
}

static int kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct kv_meta_kv *)a)->key, ((const struct kv_meta_kv *)b)->key);
}

int kv_meta_kvs_sort(struct kv_meta_kv *kvs, size_t n)
{
    if (n > 1)
        qsort(kvs, n, sizeof(*kvs), kv_cmp);
    return KV_OK;
}

int kv_meta_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                const void *val, size_t len, int64_t lease)
{
    int rc = check_key(key);
    if (rc < 0)
        return rc;
    if ((!val && len) || lease < 0)
        return KV_EINVAL;
    if (len > KV_META_MAX_VALUE || expect_len > KV_META_MAX_VALUE)
        return KV_E2BIG;
    return m->ops->cas(m, key, expect, expect ? expect_len : 0, val ? val : "", len, lease);
}

int kv_meta_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease)
{
    if (ttl_s < 1 || !lease)
        return KV_EINVAL;
    return m->ops->lease_grant(m, ttl_s, lease);
}

int kv_meta_lease_keepalive(struct kv_meta *m, int64_t lease)
{
    if (lease <= 0)
        return KV_EINVAL;
    return m->ops->lease_keepalive(m, lease);
}

int kv_meta_lease_revoke(struct kv_meta *m, int64_t lease)
{
    if (lease <= 0)
        return KV_EINVAL;
    pthread_mutex_lock(&m->keep_lock);
    for (struct kv_meta_keep **pp = &m->keeps; *pp; pp = &(*pp)->next) {
        if ((*pp)->lease == lease) {
            struct kv_meta_keep *k = *pp;
            *pp = k->next;
            kv_free(k);
            break;
        }
    }
    pthread_mutex_unlock(&m->keep_lock);
    return m->ops->lease_revoke(m, lease);
}

static struct kv_meta_keep **find_keep(struct kv_meta *m, int64_t lease)
{
    for (struct kv_meta_keep **pp = &m->keeps; *pp; pp = &(*pp)->next)
        if ((*pp)->lease == lease)
            return pp;
    return NULL;
}

/* Runs lease's lost() (keep_lock held, released during the call). Success or no callback
 * drops the entry; a failure keeps it, marked pending, for a retry with back-off. */
static void call_lost(struct kv_meta *m, int64_t lease)
{
    struct kv_meta_keep **pp = find_keep(m, lease);
    if (!pp)
        return;
    struct kv_meta_keep *k = *pp;
    kv_meta_lease_lost_fn lost = k->lost;
    void *ud = k->ud;
    int rc = KV_OK;
    if (lost) {
        k->lost_pending = true;
        k->next_ms = INT64_MAX; /* not due while the callback runs */
        pthread_mutex_unlock(&m->keep_lock);
        rc = lost(ud, lease);
        pthread_mutex_lock(&m->keep_lock);
        pp = find_keep(m, lease); /* revoked meanwhile? */
        if (!pp)
            return;
        k = *pp;
    }
    if (rc >= 0) {
        *pp = k->next;
        kv_free(k);
        return;
    }
    k->retry_ms = k->retry_ms ? KV_MIN(k->retry_ms * 2, KEEP_RETRY_MAX_MS) : KEEP_RETRY_MIN_MS;
    k->next_ms = kv_now_ms() + k->retry_ms;
    KV_LOGW_RL(5000, "lease %lld: restoring its keys failed (%s); retrying in %d ms",
               (long long)lease, kv_strerror(rc), k->retry_ms);
}

static void *keeper_main(void *arg)
{
    struct kv_meta *m = arg;
    kv_log_set_thread_name("meta-keeper");
    pthread_mutex_lock(&m->keep_lock);
    while (!m->keep_stop) {
        int64_t now = kv_now_ms();
        struct kv_meta_keep *due = NULL;
        for (struct kv_meta_keep *k = m->keeps; k; k = k->next) {
            if (k->next_ms <= now) {
                due = k;
                break;
            }
        }
        if (!due) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->keep_cond, &m->keep_lock, &ts);
            continue;
        }
        int64_t lease = due->lease;
        if (due->lost_pending) {
            call_lost(m, lease);
            continue;
        }
        int ttl_ms = due->ttl_s * 1000;
        due->next_ms = now + KV_MAX(ttl_ms / 3, 100);
        pthread_mutex_unlock(&m->keep_lock);
        int rc = m->ops->lease_keepalive(m, lease);
        pthread_mutex_lock(&m->keep_lock);
        if (rc == KV_OK)
            continue;
        if (rc != KV_EMETA_LEASE) {
            /* backend unreachable: retry soon, the lease may still be alive */
            KV_LOGW_RL(5000, "lease %lld keepalive failed: %s; retrying", (long long)lease,
                       kv_strerror(rc));
            for (struct kv_meta_keep *k = m->keeps; k; k = k->next)
                if (k->lease == lease)
                    k->next_ms = kv_now_ms() + 500;
            continue;
        }
        KV_LOGW("lease %lld expired; its keys are gone", (long long)lease);
        call_lost(m, lease);
    }
    pthread_mutex_unlock(&m->keep_lock);
    return NULL;
}

int kv_meta_lease_autorenew(struct kv_meta *m, int64_t lease, int ttl_s, kv_meta_lease_lost_fn lost,
                            void *ud)
{
    if (lease <= 0 || ttl_s < 1)
        return KV_EINVAL;
    struct kv_meta_keep *k = kv_calloc(1, sizeof(*k));
    if (!k)
        return KV_ENOMEM;
    k->lease = lease;
    k->ttl_s = ttl_s;
    k->next_ms = kv_now_ms() + KV_MAX(ttl_s * 1000 / 3, 100);
    k->lost = lost;
    k->ud = ud;
    int rc = KV_OK;
    pthread_mutex_lock(&m->keep_lock);
    if (!m->keep_started) {
        if (pthread_create(&m->keep_thread, NULL, keeper_main, m) != 0) {
            rc = KV_ENOMEM;
            kv_free(k);
            goto out_unlock;
        }
        m->keep_started = true;
    }
    k->next = m->keeps;
    m->keeps = k;
    pthread_cond_broadcast(&m->keep_cond);
out_unlock:
    pthread_mutex_unlock(&m->keep_lock);
    return rc;
}

int kv_meta_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                  uint64_t *id)
{
    if (!prefix || !fn || !id)
        return KV_EINVAL;
    if (strnlen(prefix, KV_META_MAX_KEY) >= KV_META_MAX_KEY)
        return KV_E2BIG;
    return m->ops->watch(m, prefix, fn, ud, id);
}

int kv_meta_unwatch(struct kv_meta *m, uint64_t id)
{
    return m->ops->unwatch(m, id);
}

void kv_meta_free(void *p)
{
    kv_free(p);
}
