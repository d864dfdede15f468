/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_int.h - private parts of the gateway: the engine store (gw_store.c), the JSONL log writer
 * (gw_log.c), the HTTP query API (gw_http.c), and the gateway object they hang off (gateway.c).
 */
#ifndef KV_GATEWAY_GW_INT_H
#define KV_GATEWAY_GW_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "kvstash/gateway.h"

/* ---- engine store (gw_store.c): not thread-safe; the gateway guards it with its lock ---- */

/* A history entry: a state without its engine_id (the engine's own), ~140 bytes. */
struct gw_hist_ent {
    int64_t timestamp_ms, pending_tokens_total, kv_cache_free_blocks, kv_cache_total_blocks, seq;
    double latency_pred_ms, engine_capacity;
    int64_t recv_wall_ms;
    char scheduling_mode[KV_GATEWAY_MODE_MAX + 1];
    bool heartbeat;
};

struct gw_engine {
    struct gw_engine *next; /* hash chain */
    uint64_t hash;
    struct kv_gateway_state last; /* last real load figures (or the first heartbeat) */
    bool load_known;
    int64_t last_seen_ms; /* gateway monotonic clock, any state */
    int64_t last_load_ms; /* gateway monotonic clock, last non-heartbeat; -1 none */
    int64_t last_seen_wall_ms;
    int64_t last_seq; /* -1 = the engine sends no seq */
    uint64_t states, heartbeats;
    uint32_t hist_head; /* index of the oldest entry */
    uint32_t hist_n;
    uint32_t hist_cap;        /* grows by doubling up to history_len */
    struct gw_hist_ent *hist; /* a ring of hist_cap entries */
};

struct gw_store {
    struct gw_engine **buckets;
    size_t nbuckets; /* a power of two */
    size_t n;
    uint32_t history_len;
    size_t max_engines;
    int64_t stale_ms;
    int64_t remove_ms;
    uint64_t removed;
    uint64_t heartbeats;
};

/* A seq this far below the last one means the engine restarted: accepted. */
#define GW_SEQ_RESTART_GAP 1000

int gw_store_init(struct gw_store *s, uint32_t history_len, size_t max_engines, int64_t stale_ms,
                  int64_t remove_ms);
void gw_store_fini(struct gw_store *s);
/* Applies a decoded state that arrived at now_ms (monotonic) / wall_ms. Returns KV_GW_VALID,
 * KV_GW_REORDERED (dropped: seq not above the engine's last), KV_GW_TOO_MANY_ENGINES (a new
 * engine while max_engines are known), or KV_ENOMEM (dropped). */
int gw_store_apply(struct gw_store *s, const struct kv_gateway_state *st, int64_t now_ms,
                   int64_t wall_ms);
/* Removes engines silent for longer than remove_ms; returns how many. */
size_t gw_store_sweep(struct gw_store *s, int64_t now_ms);
/* The engine, or NULL if unknown or silent past remove_ms (removed on the next sweep). */
struct gw_engine *gw_store_find(struct gw_store *s, const char *id, int64_t now_ms);
void gw_store_snapshot(const struct gw_store *s, const struct gw_engine *e, int64_t now_ms,
                       struct kv_gateway_engine *out);
/* History entry i (0 = oldest) of e. */
const struct gw_hist_ent *gw_store_hist_at(const struct gw_store *s, const struct gw_engine *e,
                                           uint32_t i);
/* The full state of history entry i of e. */
void gw_store_hist_state(const struct gw_store *s, const struct gw_engine *e, uint32_t i,
                         struct kv_gateway_state *out);
/* Visits every live engine (not silent past remove_ms). */
#define GW_STORE_FOREACH(s, e, now)                                                                \
    for (size_t gw_b_ = 0; gw_b_ < (s)->nbuckets; gw_b_++)                                         \
        for (struct gw_engine *e = (s)->buckets[gw_b_]; e; e = e->next)                            \
            if ((now)-e->last_seen_ms <= (s)->remove_ms)

/* ---- JSONL log (gw_log.c): thread-safe ---- */

struct gw_log;
struct gw_log_stats {
    uint64_t lines, dropped, errors, rotations;
};
/* Opens path for appending and starts the writer thread. KV_EIO/KV_EPERM/KV_ENOENT if path
 * cannot be opened (err gets a one-line reason). */
int gw_log_open(const char *path, uint64_t max_bytes, int keep, size_t buffer_bytes,
                struct gw_log **out, char *err, size_t errlen);
/* Queues lines (whole lines, '\n'-terminated). Never blocks on I/O: if the buffer is full
 * the lines are dropped and counted. */
void gw_log_append(struct gw_log *l, const char *p, size_t n, uint32_t nlines);
/* Async-signal-safe: the writer reopens the file within GW_LOG_WAKE_MS. */
void gw_log_reopen(struct gw_log *l);
void gw_log_stats(struct gw_log *l, struct gw_log_stats *out);
/* Flushes what is queued, stops the writer, closes. NULL is a no-op. */
void gw_log_close(struct gw_log *l);
#define GW_LOG_WAKE_MS 200

/* ---- HTTP query API (gw_http.c) ---- */

struct gw_http;
int gw_http_start(struct kv_gateway *g, const char *addr, struct gw_http **out, uint16_t *port,
                  char *err, size_t errlen);
void gw_http_stop(struct gw_http *h);

/* ---- the gateway (gateway.c) ---- */

struct kv_gateway {
    struct kv_gateway_opts o; /* strings point into the owned copies below */
    char *bind_copy, *http_copy, *log_copy;
    char network_mode[16];

    /* guards store and counters; a leaf lock (nothing else is locked while it is held, and
     * no I/O happens under it) */
    pthread_mutex_t lock;
    struct gw_store store;
    struct kv_gateway_stats c; /* counters (engine counts computed on read) */

    int udp_fd;
    uint16_t udp_port;
    bool pktinfo;     /* IP_PKTINFO on: the socket may receive broadcasts */
    int rcvbuf_bytes; /* the socket's effective receive buffer */
    int stop_fd;      /* eventfd: wakes the receive thread to stop */
    atomic_bool stopping;
    pthread_t udp_thr;
    bool udp_started;
    atomic_bool udp_running; /* the receive thread is in its loop (set before it starts, cleared
                                when it exits): /health and /ready (gw_http.c) */
    struct gw_rxmem *rxmem;  /* the receive thread's recvmmsg buffers */
    struct gw_uring *uring;  /* the io_uring ring and buffers, or NULL (recvmmsg only) */
    /* the receive thread runs io_uring (else recvmmsg); set at start, cleared by the receive
     * thread when it falls back to recvmmsg (io_uring refused after all, see gateway.c) */
    atomic_bool udp_io_uring;

    struct gw_http *http;
    uint16_t http_port;
    struct gw_log *log;

    /* IPv4 broadcast addresses of local interfaces (network order), read at start */
    uint32_t bcast[32];
    size_t nbcast;
};

/* Snapshot helpers used by the HTTP API (take the lock themselves). */
void gw_stats_locked(struct kv_gateway *g, int64_t now_ms, struct kv_gateway_stats *out);

#endif
