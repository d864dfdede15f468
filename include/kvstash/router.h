/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router.h - the OpenAI-compatible router: a reverse proxy in front of LLM engines (vLLM,
 * SGLang) that sends each request to the engine that will serve it best. `kvstash router` runs
 * one; see docs/routing.md for the policies, their formulas and parameters.
 *
 * Endpoints: POST /v1/chat/completions, /v1/completions, /v1/embeddings (proxied; SSE streams
 * relayed chunk by chunk), GET /v1/models (union of the engines' models), /health, /metrics.
 *
 * Thread-safety: kv_router_start/kv_router_stop from one controlling thread; the router runs
 * its own threads. kv_router_port may be called from any thread.
 */
#ifndef KVSTASH_ROUTER_H
#define KVSTASH_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kv_gateway;

struct kv_router_opts {
    const char *addr;            /* "HOST:PORT" to listen on; default "127.0.0.1:8000" */
    const char *const *backends; /* engine URLs (normalised; see docs/routing.md) */
    size_t nbackends;
    const char *const *engine_ids; /* gateway engine ids, one per backend, or NULL (= URLs) */
    const char *metadata_url;      /* discover engines under /kvstash/<cluster>/engines/ */
    const char *cluster;           /* default "default" */
    const char *routing_logic;     /* roundrobin|session|least-loaded|prefix|elrar */
    const char *session_key;       /* header naming the session (session, elrar); may be NULL */
    uint64_t max_body;             /* request body limit in bytes; default 16 MiB */
    int timeout_ms;                /* upstream inactivity timeout; default 120000 */
    int health_interval_ms;        /* default 5000 */
    int health_timeout_ms;         /* default 2000 */
    int models_interval_ms;        /* /v1/models refresh; default 30000 */
    int threads;                   /* event-loop threads serving clients; default 1 */
    /* prefix policy (SGLang cache_aware defaults when 0) */
    double cache_threshold;
    int64_t balance_abs_threshold;
    double balance_rel_threshold;
    uint64_t max_tree_chars;
    /* elrar policy: the in-process gateway (borrowed; must outlive the router) and ELRAR's
     * scoring parameters (defaults when 0; weights default 1, set w_set to use w as given) */
    struct kv_gateway *gateway;
    double elrar_slo_ms;
    double elrar_load_scale_s;
    double elrar_kv_beta;
    int64_t elrar_affinity_window_s;
    bool elrar_w_set;
    double elrar_w[4];
    /* a request for a model no engine is known to serve while some engines' models are not
     * discovered yet (or, with metadata_url, no engine is known yet) waits up to this long for
     * discovery before failing; default 10000 (when 0), negative: fail at once */
    int discovery_wait_ms;
};

struct kv_router;

/* Validates o, binds the listener, starts the threads and probes every engine once (waiting at
 * most 2 * health_timeout_ms + 0.5 s for the first answers) before returning. *out is owned (stop
 * with kv_router_stop()). Errors (each also logged with its reason): KV_EINVAL for bad options
 * (bad URL or address, unknown routing logic, elrar without a gateway, no engine source),
 * KV_E2BIG for more than 64 engines, KV_EBUSY when the address is in use, KV_EMETA_* from the
 * metadata backend, KV_ENOMEM. Strings in o are copied; o->gateway is borrowed. */
KV_API int kv_router_start(const struct kv_router_opts *o, struct kv_router **out);

/* The port actually bound. */
KV_API uint16_t kv_router_port(const struct kv_router *r);

/* Stops accepting, drops in-flight requests, joins the threads and frees r. NULL is a no-op. */
KV_API void kv_router_stop(struct kv_router *r);

#ifdef __cplusplus
}
#endif
#endif
