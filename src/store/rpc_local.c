/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc_local.c - in-process RPC (rpc_local.h): a registry of this process's servers that opted
 * in, and direct calls of their handlers.
 *
 * Invariants:
 *  1. An entry is in the list from kv_rpc_local_add until kv_rpc_local_remove unlinks it; it is
 *     freed only after its in-flight count dropped to 0, so a handler never runs after remove
 *     returned.
 *  2. A call takes its in-flight reference under the lock and only on a listed entry.
 * Locks: g_lock guards g_list and each entry's inflight (leaf). No handler runs under it.
 */
#define KV_LOG_COMPONENT "rpc"
#include "store/rpc_local.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "common/alloc.h"
#include "common/util.h"

struct kv_rpc_local {
    char host[256];
    uint16_t port;
    kv_rpc_handler_fn handler;
    kv_rpc_pb_handler_fn pb_handler; /* may be NULL */
    void *ud;
    int inflight;
    struct kv_rpc_local *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* g_list, inflight; leaf */
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;   /* a call returned */
static struct kv_rpc_local *g_list;
static atomic_int g_count; /* entries in g_list: lets calls skip the lock when there are none */

static bool is_loopback(const char *h)
{
    return strcmp(h, "127.0.0.1") == 0 || strcmp(h, "localhost") == 0 || strcmp(h, "::1") == 0 ||
           strcmp(h, "0.0.0.0") == 0;
}

int kv_rpc_local_add(const char *host, uint16_t port, kv_rpc_handler_fn handler, void *ud,
                     struct kv_rpc_local **out)
{
    if (!host || !handler || !out || strlen(host) >= sizeof((*out)->host))
        return KV_EINVAL;
    struct kv_rpc_local *e = kv_calloc(1, sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    memcpy(e->host, host, strlen(host) + 1);
    e->port = port;
    e->handler = handler;
    e->ud = ud;
    pthread_mutex_lock(&g_lock);
    e->next = g_list;
    g_list = e;
    atomic_fetch_add_explicit(&g_count, 1, memory_order_release);
    pthread_mutex_unlock(&g_lock);
    *out = e;
    return KV_OK;
}

void kv_rpc_local_set_pb(struct kv_rpc_local *e, kv_rpc_pb_handler_fn pb_handler)
{
    pthread_mutex_lock(&g_lock);
    e->pb_handler = pb_handler;
    pthread_mutex_unlock(&g_lock);
}

void kv_rpc_local_remove(struct kv_rpc_local *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&g_lock);
    for (struct kv_rpc_local **pp = &g_list; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            atomic_fetch_sub_explicit(&g_count, 1, memory_order_release);
            break;
        }
    }
    while (e->inflight > 0)
        pthread_cond_wait(&g_cond, &g_lock);
    pthread_mutex_unlock(&g_lock);
    kv_free(e);
}

/* The entry answering addr, with a call reference taken (take) or not, and its message handler
 * (pb, may be NULL) read under the lock; NULL if none. */
static struct kv_rpc_local *lookup(const char *addr, bool take, kv_rpc_pb_handler_fn *pb)
{
    if (atomic_load_explicit(&g_count, memory_order_acquire) == 0)
        return NULL;
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(addr, host, sizeof(host), &port) < 0)
        return NULL;
    struct kv_rpc_local *e;
    pthread_mutex_lock(&g_lock);
    for (e = g_list; e; e = e->next)
        if (e->port == port &&
            (strcmp(e->host, host) == 0 || (strcmp(e->host, "0.0.0.0") == 0 && is_loopback(host))))
            break;
    if (e && take)
        e->inflight++;
    if (pb)
        *pb = e ? e->pb_handler : NULL;
    pthread_mutex_unlock(&g_lock);
    return e;
}

bool kv_rpc_local_has(const char *addr)
{
    return lookup(addr, false, NULL) != NULL;
}

static void release(struct kv_rpc_local *e)
{
    pthread_mutex_lock(&g_lock);
    if (--e->inflight == 0)
        pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_lock);
}

/* Answers the call of entry e (referenced) with handler(req) or pb_handler(msg): false when the
 * message handler declined (KV_RPC_SLOW). Drops the reference when it returns true. */
static bool call(struct kv_rpc_local *e, uint16_t method, const void *req, size_t len,
                 kv_rpc_pb_handler_fn pb, const ProtobufCMessage *msg, int *status,
                 struct kv_buf *resp)
{
    /* the response goes to its own buffer: req may live in resp (kv_rpc_call_pb) */
    struct kv_buf out;
    kv_buf_init(&out);
    int st = msg ? pb(e->ud, method, msg, &out) : e->handler(e->ud, method, req, len, &out);
    if (msg && st == KV_RPC_SLOW) {
        kv_buf_fini(&out);
        return false;
    }
    if (st > 0)
        st = KV_OK;
    if (st != KV_OK && st != KV_EAGAIN)
        kv_buf_reset(&out); /* as on the wire: only these statuses carry a payload */
    if (resp) {
        struct kv_buf old = *resp;
        *resp = out;
        out = old;
    }
    kv_buf_fini(&out);
    *status = st;
    release(e);
    return true;
}

bool kv_rpc_local_call(const char *addr, uint16_t method, const void *req, size_t len, int *status,
                       struct kv_buf *resp)
{
    struct kv_rpc_local *e = lookup(addr, true, NULL);
    if (!e)
        return false;
    call(e, method, req, len, NULL, NULL, status, resp);
    return true;
}

bool kv_rpc_local_call_pb(const char *addr, uint16_t method, const ProtobufCMessage *req,
                          int *status, struct kv_buf *resp)
{
    kv_rpc_pb_handler_fn pb = NULL;
    struct kv_rpc_local *e = lookup(addr, true, &pb);
    if (!e)
        return false;
    if (pb && req && call(e, method, NULL, 0, pb, req, status, resp))
        return true;
    release(e);
    return false;
}
