/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client_int.h - what the store client's files share (client.c: the synchronous calls;
 * client_aio.c: the asynchronous single-key ones). Not an API: nothing outside src/store.
 */
#ifndef KV_STORE_CLIENT_INT_H
#define KV_STORE_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/meta.h"
#include "kvstash/store.h"
#include "kvstash/xfer.h"
#include "store.pb-c.h"

#define DEFAULT_TIMEOUT_MS 10000
#define MAX_REPLICAS 16 /* replicas a client reads or writes per object */
#define GET_ROUNDS 4
#define INLINE_MAX_DEFAULT (64u << 10) /* see inline_max */
#define INLINE_REQ_MAX (8u << 20)      /* bytes of values in one PUT request */

struct leader {
    atomic_int refs;
    struct kv_rpc_client *rpc;
};

struct kv_store {
    char *master;   /* opts->master (first contact and fallback) or NULL */
    char *meta_url; /* metadata in use (opts or HELLO) */
    char *cluster;
    char *protocol;
    int timeout_ms;
    int poll_spin_us;     /* an answer is polled for this long before the thread sleeps */
    size_t inline_max;    /* values up to this size go inside the PUT request */
    struct kv_meta *meta; /* NULL only while opening without metadata */
    struct kv_xfer *xfer;
    char client_id[96];

    pthread_mutex_t lock; /* guards leader, hint, epoch; leaf lock */
    struct leader *leader;
    char hint[256]; /* leader address hinted by a standby, "" = none */
    uint64_t epoch;
};

struct get_item {
    size_t key; /* index into the caller's arrays */
    bool done;
    int err;        /* last error of this item */
    bool transient; /* the master's last answer was transient (no DRAM to promote into yet) */
    uint64_t size, checksum;
    size_t nrep;
    kv_target_id targets[MAX_REPLICAS]; /* nearest first */
    uint64_t offs[MAX_REPLICAS];
    int ranks[MAX_REPLICAS];
    void *buf;
};

/* A referenced leader (found and connected lazily); release with cli_leader_put. */
int cli_leader_get(struct kv_store *s, struct leader **out);
/* Drops a reference; the last one destroys the leader's RPC client. NULL: no-op. */
void cli_leader_put(struct leader *l);
/* Forgets l as the leader (if it still is) and remembers hint for the next discovery. */
void cli_leader_drop(struct kv_store *s, struct leader *l, const char *hint);
/* Whether rc is a transport failure (the connection to the master is suspect). */
bool cli_transport_err(int rc);
/* A key of 1..KV_STORE_MAX_KEY bytes. */
bool cli_key_ok(const char *key);
/* The replica count a put asks for (opts NULL or 0: 1), or KV_EINVAL when out of range. */
int cli_put_replicas(const struct kv_put_opts *opts);
/* it: an inline PUT item of key (borrowed) and buf[0..len) (borrowed, checksummed now). */
void cli_put_item_init(Kvstash__PutItem *it, const char *key, const void *buf, size_t len,
                       int replicas, const struct kv_put_opts *opts);
/* Whether a value of len bytes travels inside the PUT request (see inline_max). */
bool cli_inline_size(const struct kv_store *s, size_t len);
void cli_get_targets(struct kv_store *s, struct get_item *g, const Kvstash__GetItem *gi,
                     bool fresh);
bool cli_get_verify(struct kv_store *s, struct get_item *g, const char *key, int st, int64_t t0,
                    uint64_t lease_ms);

#endif
