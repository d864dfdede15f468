/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_srv.h - the router's shared state, between router.c (engine table, engine choice,
 * control thread, local endpoints' bodies, start/stop) and router_proxy.c (the worker threads'
 * own epoll data path: client connections, upstream connections, proxying).
 *
 * Locks and ownership are described in router.c's header comment; in short: rt->mu guards the
 * engines' model lists, gateway mirrors and the policy objects; engine identity fields are
 * immutable once published through rt->neng (release/acquire); counters are atomics; each
 * worker owns its connections and touches no other worker's.
 */
#ifndef KV_ROUTER_SRV_H
#define KV_ROUTER_SRV_H

#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/buf.h"
#include "router/router_int.h"

struct kv_gateway;
struct kv_meta;
struct event_base;
struct event;
struct evhttp_connection;
struct rt_worker;

enum rt_policy { RT_RR, RT_SESSION, RT_LEAST, RT_PREFIX, RT_ELRAR };

/* Histogram buckets in seconds (Prometheus "le"); see router.c. */
#define RT_NB 15
extern const double rt_hist_le[RT_NB];

struct rt_hist {
    _Atomic uint64_t b[RT_NB + 1]; /* last = +Inf */
    _Atomic uint64_t sum_us;
    _Atomic uint64_t count;
};

void rt_hist_add(struct rt_hist *h, int64_t us);

struct probe_ctx {
    struct kv_router *rt;
    int e;
};

struct rt_engine {
    /* immutable once published */
    char url[300];
    char gid[300]; /* gateway engine id, normalised like URLs when it parses as one */
    char host[256];
    char path[256];
    char hostport[300]; /* "host:port", the Host header sent upstream */
    uint16_t port;
    bool from_meta;
    struct sockaddr_storage sa; /* resolved when added (sa_len 0: resolve at connect) */
    socklen_t sa_len;
    /* atomics */
    _Atomic int healthy;
    _Atomic int removed;
    _Atomic int64_t inflight;
    _Atomic uint64_t requests, errors, failovers;
    _Atomic int64_t qps_milli;
    struct rt_hist lat, ttfb;
    /* guarded by rt->mu */
    json_t *models; /* array of model objects from GET /v1/models; NULL = unknown */
    struct kv_rt_estate est;
    int64_t est_snap_ms;   /* when est was mirrored */
    uint64_t est_version;  /* real (non-heartbeat) states counted by the gateway */
    int64_t local_pending; /* tokens routed since the last real state */
    /* control thread only */
    uint64_t qps_last_req;
    struct evhttp_connection *probe_conn;
    struct probe_ctx pctx; /* callback argument of the probe in flight */
    bool probe_busy;
    int64_t models_due_ms;
    _Atomic int first_probe_done;
};

struct kv_router {
    /* options */
    enum rt_policy policy;
    char *session_key;
    uint64_t max_body;
    int timeout_ms, health_interval_ms, health_timeout_ms, models_interval_ms;
    int discovery_wait_ms; /* 0: requests do not wait for discovery (router_proxy.c dispatch) */
    struct kv_rt_prefix_params pp;
    struct kv_rt_elrar_params ep;
    struct kv_gateway *gw;
    struct kv_meta *meta;
    char meta_prefix[256];
    /* listener */
    int lfd;
    uint16_t port;
    /* engines */
    struct rt_engine eng[KV_RT_MAX_ENGINES];
    _Atomic int neng;
    pthread_mutex_t mu; /* guards models, estates, policy objects */
    struct kv_rt_ring ring;
    struct kv_rt_prefix *prefix;
    struct kv_rt_affinity *aff;
    uint64_t rr;
    /* threads */
    struct rt_worker *w; /* router_proxy.c */
    int nw;
    struct event_base *cbase;
    pthread_t cth;
    bool cstarted;
    struct event *health_ev, *recheck_ev, *mirror_ev, *disc_ev;
    /* router-level counters */
    uint64_t rid_prefix;
    char rid_pfx[24]; /* "kvs-<rid_prefix in 16 hex digits>-" */
    size_t rid_pfx_len;
    _Atomic uint64_t rid_counter;
    _Atomic uint64_t c_requests, c_bad, c_nomodel, c_noengine, c_upstream_fail, c_timeouts;
    _Atomic uint64_t c_stale_retries;
};

static inline int rt_nengines(const struct kv_router *rt)
{
    return atomic_load_explicit(&((struct kv_router *)rt)->neng, memory_order_acquire);
}

/* --- router.c, called by the workers --- */

/* Chooses an engine for a request for info->model: healthy, serving it, not in tried. session
 * (slen bytes, may be NULL) is the --session-key header's value. Returns the engine index, or
 * -1 with *serving = the engines serving the model (0: nobody does). *unknown gets how many
 * engines have no model list yet (never reached): a model nobody lists may be theirs. */
int rt_choose(struct kv_router *rt, const struct kv_rt_reqinfo *info, const char *session,
              size_t slen, uint64_t tried, uint64_t *serving, int *unknown, const char **why);
/* Takes engine e out of rotation until a health check succeeds (logged once). */
void rt_mark_unhealthy(struct kv_router *rt, int e, const char *why);
/* A fresh request id "kvs-<16 hex>-<hex counter>" into out (n >= 48). */
void rt_gen_request_id(struct kv_router *rt, char *out, size_t n);
/* Bodies of the local endpoints. Return KV_OK or KV_ENOMEM; *code gets the HTTP status. */
int rt_models_body(struct kv_router *rt, struct kv_buf *out);
int rt_health_body(struct kv_router *rt, struct kv_buf *out, int *code);
/* /ready: 200 when an engine is in rotation with its models known, else 503 with a reason. */
int rt_ready_body(struct kv_router *rt, struct kv_buf *out, int *code);
/* router_metrics.c: /metrics, /metrics/vllm (the vLLM router's gauge names) and the status
 * page's /api/v1/status JSON. */
int rt_metrics_body(struct kv_router *rt, struct kv_buf *out);
int rt_metrics_vllm_body(struct kv_router *rt, struct kv_buf *out);
int rt_status_body(struct kv_router *rt, struct kv_buf *out);

/* --- router_proxy.c --- */

/* Creates rt->nw workers (epoll, stop eventfd, the shared listener rt->lfd) and starts their
 * threads. On failure, the workers created so far are left for rt_workers_stop. */
int rt_workers_start(struct kv_router *rt);
/* Stops and joins every worker, closes its connections, frees rt->w. Safe on partial starts. */
void rt_workers_stop(struct kv_router *rt);

#endif
