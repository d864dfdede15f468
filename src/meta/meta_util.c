/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_util.c - small helpers shared inside the meta module: error-message formatting for the
 * pure decoders (meta_http.c, metad.c), and the watch-table teardown of the backends that run a
 * thread per watch (meta_http.c, meta_etcd.c): unwatch one id, or stop every watch at close.
 *
 * Design: a backend keeps its watches in a struct kv_idtab guarded by its own mutex and knows
 * how to stop one (signal, wake, join, free). These helpers remove entries under that mutex
 * and call stop() without it, so a stop that joins a watch thread never holds the lock the
 * watch's thread or callback may take.
 *
 * Thread model: no state of their own; any thread calls in. Locks: only the caller's lock,
 * taken and released around each table access (never held across stop()).
 */
#include "meta/meta_int.h"

#include <stdarg.h>
#include <stdio.h>

void kv_meta_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int kv_meta_watch_remove(struct kv_idtab *watches, pthread_mutex_t *lock, uint64_t id,
                         void (*stop)(void *w))
{
    pthread_mutex_lock(lock);
    void *w = kv_idtab_remove(watches, id);
    pthread_mutex_unlock(lock);
    if (!w)
        return KV_ENOENT;
    stop(w);
    return KV_OK;
}

void kv_meta_watch_remove_all(struct kv_idtab *watches, pthread_mutex_t *lock,
                              void (*stop)(void *w))
{
    for (;;) {
        void *w = NULL;
        pthread_mutex_lock(lock);
        for (uint32_t i = 0; i < watches->n && !w; i++) {
            uint64_t id;
            if (kv_idtab_at(watches, i, &id))
                w = kv_idtab_remove(watches, id);
        }
        pthread_mutex_unlock(lock);
        if (!w)
            break;
        stop(w);
    }
}
