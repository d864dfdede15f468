/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_int.h - private to the meta module: the backend ops table and the handle layout.
 *
 * meta.c validates arguments (key length, value size, lease ids) and dispatches to a backend
 * through struct kv_meta_ops; backends never see invalid arguments. The lease keeper (auto-
 * renewal) lives in meta.c and works for every backend through ops->lease_keepalive.
 */
#ifndef KV_META_INT_H
#define KV_META_INT_H

#include <pthread.h>
#include <stdbool.h>

#include "common/idtab.h"
#include "kvstash/meta.h"

#define KV_META_MAX_KEY 4096
#define KV_META_MAX_VALUE (1u << 20) /* 1 MiB: etcd's request limit is 1.5 MiB */
#define KV_META_DEFAULT_TIMEOUT_MS 3000

struct kv_meta_ops {
    const char *name;
    int (*get)(struct kv_meta *m, const char *key, char **val, size_t *len);
    int (*put)(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease);
    int (*del)(struct kv_meta *m, const char *key);
    int (*list)(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n);
    int (*cas)(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
               const void *val, size_t len, int64_t lease);
    int (*lease_grant)(struct kv_meta *m, int ttl_s, int64_t *lease);
    int (*lease_keepalive)(struct kv_meta *m, int64_t lease);
    int (*lease_revoke)(struct kv_meta *m, int64_t lease);
    int (*watch)(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                 uint64_t *id);
    int (*unwatch)(struct kv_meta *m, uint64_t id);
    /* stops every watch of this handle (no callback runs after it returns), frees impl */
    void (*close)(struct kv_meta *m);
};

struct kv_meta_keep; /* one auto-renewed lease (meta.c) */

struct kv_meta {
    const struct kv_meta_ops *ops;
    void *impl;
    int timeout_ms;

    /* lease keeper: guards keeps, keep_stop; leaf lock (never held while calling a backend) */
    pthread_mutex_t keep_lock;
    pthread_cond_t keep_cond;
    struct kv_meta_keep *keeps;
    bool keep_started;
    bool keep_stop;
    pthread_t keep_thread;
};

/* Backend constructors: parse the URL's part after "scheme://", set m->ops and m->impl.
 * Return KV_EMETA_URL for a malformed URL, KV_EMETA_UNAVAIL when unreachable. */
int kv_meta_embedded_open(struct kv_meta *m, const char *rest);
int kv_meta_http_open(struct kv_meta *m, const char *url);
int kv_meta_etcd_open(struct kv_meta *m, const char *rest);
int kv_meta_redis_open(struct kv_meta *m, const char *rest);

/* Copies a list result into a freshly allocated, key-sorted array (helpers for backends). */
int kv_meta_kvs_sort(struct kv_meta_kv *kvs, size_t n);

/* meta_util.c. Formats a message into err (errlen bytes, always NUL-terminated); a no-op when
 * err is NULL or errlen 0. */
void kv_meta_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Removes watch id from watches under lock, then calls stop(w) without the lock: KV_OK, or
 * KV_ENOENT when id is not there. For kv_meta_ops.unwatch. */
int kv_meta_watch_remove(struct kv_idtab *watches, pthread_mutex_t *lock, uint64_t id,
                         void (*stop)(void *w));
/* Removes every watch, one at a time, calling stop() on each without the lock (a stop may
 * join a thread that takes lock). For kv_meta_ops.close; the table stays initialised. */
void kv_meta_watch_remove_all(struct kv_idtab *watches, pthread_mutex_t *lock,
                              void (*stop)(void *w));

#endif
