/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router.c - the OpenAI-compatible router: libevent HTTP server in front of LLM engines, with
 * pooled keep-alive upstream connections, SSE relayed chunk by chunk, health checks, retries,
 * model discovery and Prometheus metrics. Policies live in router_policy.c.
 *
 * Thread model:
 *  - `threads` worker threads (default 1), each with its own event_base and evhttp bound to the
 *    one shared listening socket (the kernel hands each connection to one of them). A client
 *    request and the upstream request serving it live on the same worker: no cross-thread
 *    hand-off on the data path. Each worker owns a pool of idle upstream connections per engine.
 *  - One control thread (its own event_base) probes engines (GET /health, GET /v1/models),
 *    mirrors gateway states, polls metadata for engines, and computes QPS.
 *
 * Shared state and locks:
 *  - rt->mu guards: each engine's model list, gateway mirror (estate, snap_ms) and local
 *    pending tokens; the policy objects (ring, prefix tree, affinity table, rr counter); engine
 *    additions (writers also publish rt->neng with release). Never held across I/O or a libevent
 *    call that could run a callback. No other lock exists in this file.
 *  - Engine fields url/host/port/path/gid are immutable once published through rt->neng
 *    (acquire); healthy/removed/counters/histograms are atomics.
 *
 * Request life cycle (one struct rt_req per client request, owned by its worker):
 *
 *   handle_proxy --inspect/pick--> dispatch --header--> [stream: reply_start] --chunks--> relay
 *        |                            ^  |                                                  |
 *        | 400/404/503                |  +--fail, nothing sent, 1st try--> dispatch (other engine)
 *        v                            |  +--fail otherwise--> 502/504 or abort the client conn
 *      reply_error                    +--------------------------------------- up_done: finish
 *
 *   client closes at any point -> on_client_close cancels the upstream request and finishes.
 *
 * Invariants:
 *  1. A rt_req has at most one upstream request in flight (q->up) holding one pooled conn.
 *  2. The client connection's close callback points at q exactly while q is alive and the
 *     client request is not finished; it is cleared before the final reply is sent.
 *  3. Response bytes reach the client only after the upstream answered with headers; once
 *     q->started, no retry happens.
 */
#define KV_LOG_COMPONENT "router"
#include "kvstash/router.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/gateway.h"
#include "kvstash/meta.h"
#include "router/router_int.h"

enum rt_policy { RT_RR, RT_SESSION, RT_LEAST, RT_PREFIX, RT_ELRAR };
static const char *const policy_names[] = {"roundrobin", "session", "least-loaded", "prefix",
                                           "elrar"};

/* Histogram buckets in seconds (Prometheus "le"). */
static const double hist_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,      2.5,   5,    10,    30,   60};
#define RT_NB (sizeof(hist_le) / sizeof(hist_le[0]))

struct rt_hist {
    _Atomic uint64_t b[RT_NB + 1]; /* last = +Inf */
    _Atomic uint64_t sum_us;
    _Atomic uint64_t count;
};

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
    struct probe_ctx pctx; /* callback argument of the probe in flight (no allocation, so a
                              probe freed unanswered at shutdown leaks nothing) */
    bool probe_busy;
    int64_t models_due_ms;
    _Atomic int first_probe_done;
};

struct rt_pool {
    struct evhttp_connection **idle;
    size_t n, cap;
};

struct rt_worker {
    struct kv_router *rt;
    int no;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *lis;
    pthread_t th;
    bool started;
    struct rt_pool pools[KV_RT_MAX_ENGINES];
};

struct kv_router {
    /* options */
    enum rt_policy policy;
    char *session_key;
    uint64_t max_body;
    int timeout_ms, health_interval_ms, health_timeout_ms, models_interval_ms;
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
    pthread_mutex_t mu; /* see the header comment: guards models, estates, policy objects */
    struct kv_rt_ring ring;
    struct kv_rt_prefix *prefix;
    struct kv_rt_affinity *aff;
    uint64_t rr;
    /* threads */
    struct rt_worker *w;
    int nw;
    struct event_base *cbase;
    pthread_t cth;
    bool cstarted;
    struct event *health_ev, *mirror_ev, *disc_ev;
    /* router-level counters */
    uint64_t rid_prefix;
    char rid_pfx[24]; /* "kvs-<rid_prefix in 16 hex digits>-" */
    size_t rid_pfx_len;
    _Atomic uint64_t rid_counter;
    _Atomic uint64_t c_requests, c_bad, c_nomodel, c_noengine, c_upstream_fail, c_timeouts;
};

struct rt_req {
    struct rt_worker *w;
    struct evhttp_request *down;
    struct evhttp_connection *down_conn;
    char *body;
    size_t body_len;
    struct kv_rt_reqinfo info;
    char rid[80];
    char *uri;
    int engine, attempts;
    uint64_t tried;
    struct evhttp_connection *up_conn;
    struct evhttp_request *up;
    int up_err; /* enum evhttp_request_error, -1 none */
    bool streaming, started, client_gone, first_byte;
    int code;
    struct evbuffer *acc;
    int64_t t0_us;
};

/* ---------- small helpers ---------- */

static void hist_add(struct rt_hist *h, int64_t us)
{
    double s = (double)us / 1e6;
    size_t i = 0;
    while (i < RT_NB && s > hist_le[i])
        i++;
    atomic_fetch_add_explicit(&h->b[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(us > 0 ? us : 0), memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

static int nengines(const struct kv_router *rt)
{
    return atomic_load_explicit(&((struct kv_router *)rt)->neng, memory_order_acquire);
}

/* Headers not forwarded in either direction: hop-by-hop ones, Host and Content-Length (set
 * by libevent for the new message) and X-Request-Id (replaced by ours). Only names of the
 * same length are compared, so a typical header costs one strlen and at most one compare. */
static bool skip_header(const char *k)
{
    static const struct {
        const char *s;
        size_t n;
    } h[] = {{"te", 2},
             {"host", 4},
             {"trailer", 7},
             {"upgrade", 7},
             {"connection", 10},
             {"keep-alive", 10},
             {"x-request-id", 12},
             {"content-length", 14},
             {"transfer-encoding", 17},
             {"proxy-authenticate", 18},
             {"proxy-authorization", 19}};
    size_t n = strlen(k);
    for (size_t i = 0; i < KV_ARRAY_SIZE(h) && h[i].n <= n; i++)
        if (h[i].n == n && strcasecmp(k, h[i].s) == 0)
            return true;
    return false;
}

static void send_json(struct evhttp_request *req, int code, const char *reason, const char *body,
                      const char *rid)
{
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", "application/json");
    if (rid)
        evhttp_add_header(oh, "X-Request-Id", rid);
    struct evbuffer *b = evbuffer_new();
    if (b && body)
        evbuffer_add(b, body, strlen(body));
    evhttp_send_reply(req, code, reason, b);
    if (b)
        evbuffer_free(b);
}

static void send_error(struct evhttp_request *req, int code, const char *reason, const char *type,
                       const char *msg, const char *rid)
{
    char *body = kv_rt_error_body(msg, type, code);
    send_json(req, code, reason,
              body ? body : "{\"error\":{\"message\":\"out of memory\",\"type\":\"error\"}}", rid);
    kv_free(body);
}

/* ---------- engine table ---------- */

static bool engine_serves(const struct rt_engine *e, const char *model)
{
    if (!e->models)
        return false;
    size_t i;
    json_t *m;
    json_array_foreach(e->models, i, m)
    {
        json_t *id = json_object_get(m, "id");
        if (json_is_string(id) && strcmp(json_string_value(id), model) == 0)
            return true;
    }
    return false;
}

/* Rebuilds the session ring over current engines. Caller holds rt->mu. */
static int rebuild_ring_locked(struct kv_router *rt)
{
    const char *names[KV_RT_MAX_ENGINES];
    int n = nengines(rt);
    for (int i = 0; i < n; i++)
        names[i] = rt->eng[i].url;
    return kv_rt_ring_build(&rt->ring, names, (size_t)n, 160);
}

/* Adds an engine (or revives a removed one). Returns its index or a negative error. Called
 * before the threads start, or on the control thread. */
static int add_engine(struct kv_router *rt, const char *url, const char *id, bool from_meta)
{
    char norm[300], host[256], path[256], err[256];
    uint16_t port;
    int rc = kv_rt_url_normalize(url, norm, sizeof(norm), host, sizeof(host), &port, path,
                                 sizeof(path), err, sizeof(err));
    if (rc < 0) {
        KV_LOGE("%s", err);
        return rc;
    }
    int n = nengines(rt);
    for (int i = 0; i < n; i++) {
        if (strcmp(rt->eng[i].url, norm) == 0) {
            if (atomic_exchange(&rt->eng[i].removed, 0))
                KV_LOGI("engine %s is back in the metadata", norm);
            return i;
        }
    }
    if (n >= KV_RT_MAX_ENGINES) {
        KV_LOGE("too many engines (at most %d): cannot add %s", KV_RT_MAX_ENGINES, norm);
        return KV_E2BIG;
    }
    struct rt_engine *e = &rt->eng[n];
    snprintf(e->url, sizeof(e->url), "%s", norm);
    snprintf(e->host, sizeof(e->host), "%s", host);
    snprintf(e->path, sizeof(e->path), "%s", path);
    e->port = port;
    snprintf(e->hostport, sizeof(e->hostport), "%s:%u", host, port);
    e->from_meta = from_meta;
    const char *gid = id && *id ? id : norm;
    char gnorm[300];
    if (kv_rt_url_normalize(gid, gnorm, sizeof(gnorm), NULL, 0, NULL, NULL, 0, err, sizeof(err)) ==
        KV_OK)
        gid = gnorm;
    snprintf(e->gid, sizeof(e->gid), "%s", gid);
    pthread_mutex_lock(&rt->mu);
    atomic_store_explicit(&rt->neng, n + 1, memory_order_release);
    rc = rebuild_ring_locked(rt);
    pthread_mutex_unlock(&rt->mu);
    if (rc < 0)
        KV_LOGW("session ring not rebuilt: %s", kv_strerror(rc));
    KV_LOGI("engine %d: %s (gateway id %s)", n, e->url, e->gid);
    return n;
}

/* ---------- engine choice ---------- */

static int64_t now_ms_(void)
{
    return kv_now_ms();
}

/* Picks an engine for q among eligible (healthy, serving the model, not tried). Caller holds
 * rt->mu. */
static int pick_locked(struct kv_router *rt, struct rt_req *q, uint64_t eligible, const char **why)
{
    int64_t load[KV_RT_MAX_ENGINES];
    int n = nengines(rt);
    for (int i = 0; i < n; i++)
        load[i] = atomic_load_explicit(&rt->eng[i].inflight, memory_order_relaxed);
    const char *key = NULL;
    size_t keylen = 0;
    if (rt->session_key) {
        const char *h =
            evhttp_find_header(evhttp_request_get_input_headers(q->down), rt->session_key);
        if (h && *h) {
            key = h;
            keylen = strlen(h);
        }
    }
    if (!key && q->info.user && *q->info.user) {
        key = q->info.user;
        keylen = strlen(key);
    }
    int64_t now = now_ms_();
    int pick = -1;
    switch (rt->policy) {
    case RT_RR:
        pick = kv_rt_pick_rr(eligible, (size_t)n, rt->rr++);
        *why = "roundrobin";
        break;
    case RT_SESSION:
        if (key) {
            pick = kv_rt_ring_pick(&rt->ring, key, keylen, eligible);
            *why = "session";
        } else {
            pick = kv_rt_pick_least(load, eligible, (unsigned)(rt->rr++ % (uint64_t)n));
            *why = "no_session_least_loaded";
        }
        break;
    case RT_LEAST: {
        bool tokens = rt->gw != NULL;
        for (int i = 0; i < n && tokens; i++)
            if ((eligible & (1ULL << i)) &&
                (!rt->eng[i].est.known || !rt->eng[i].est.fresh ||
                 rt->eng[i].est.pending_tokens < 0 || now - rt->eng[i].est_snap_ms > 500))
                tokens = false;
        if (tokens) {
            int64_t tl[KV_RT_MAX_ENGINES];
            for (int i = 0; i < n; i++)
                tl[i] = rt->eng[i].est.pending_tokens + rt->eng[i].local_pending;
            pick = kv_rt_pick_least(tl, eligible, (unsigned)(rt->rr++ % (uint64_t)n));
            *why = "least_pending_tokens";
            if (pick >= 0)
                rt->eng[pick].local_pending += q->info.est_tokens;
        } else {
            pick = kv_rt_pick_least(load, eligible, (unsigned)(rt->rr++ % (uint64_t)n));
            *why = "least_inflight";
        }
        break;
    }
    case RT_PREFIX:
        pick = kv_rt_pick_prefix(rt->prefix, &rt->pp, q->info.text, q->info.text_len, load,
                                 eligible, now, why);
        break;
    case RT_ELRAR: {
        struct kv_rt_estate st[KV_RT_MAX_ENGINES];
        int64_t extra[KV_RT_MAX_ENGINES];
        for (int i = 0; i < n; i++) {
            st[i] = rt->eng[i].est;
            if (now - rt->eng[i].est_snap_ms > 500)
                st[i].fresh = false; /* the mirror itself is stale */
            extra[i] = rt->eng[i].local_pending;
        }
        int aff =
            key ? kv_rt_affinity_get(rt->aff, key, keylen, now, rt->ep.affinity_window_ms) : -1;
        pick = kv_rt_pick_elrar(&rt->ep, st, extra, aff, eligible);
        *why = "elrar_scored";
        if (pick < 0) {
            pick = kv_rt_pick_least(load, eligible, (unsigned)(rt->rr++ % (uint64_t)n));
            *why = "elrar_no_fresh_state_least_loaded";
        }
        if (pick >= 0) {
            rt->eng[pick].local_pending += q->info.est_tokens;
            if (key)
                kv_rt_affinity_put(rt->aff, key, keylen, pick, now);
        }
        break;
    }
    }
    return pick;
}

/* ---------- upstream pool ---------- */

static struct evhttp_connection *pool_get(struct rt_worker *w, int e)
{
    struct rt_pool *p = &w->pools[e];
    if (p->n)
        return p->idle[--p->n];
    struct rt_engine *en = &w->rt->eng[e];
    struct evhttp_connection *c = evhttp_connection_base_new(w->base, NULL, en->host, en->port);
    if (!c)
        return NULL;
    struct timeval tv = {w->rt->timeout_ms / 1000, (w->rt->timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    return c;
}

static void pool_put(struct rt_worker *w, int e, struct evhttp_connection *c)
{
    struct rt_pool *p = &w->pools[e];
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 16;
        if (ncap > 1024) {
            evhttp_connection_free(c);
            return;
        }
        struct evhttp_connection **ni = kv_realloc(p->idle, ncap * sizeof(*ni));
        if (!ni) {
            evhttp_connection_free(c);
            return;
        }
        p->idle = ni;
        p->cap = ncap;
    }
    p->idle[p->n++] = c;
}

/* ---------- proxying ---------- */

static void on_client_close(struct evhttp_connection *c, void *arg);
static int dispatch(struct rt_req *q);

static void req_free(struct rt_req *q)
{
    kv_rt_reqinfo_fini(&q->info);
    kv_free(q->body);
    kv_free(q->uri);
    if (q->acc)
        evbuffer_free(q->acc);
    kv_free(q);
}

/* Detaches q from the client connection (invariant 2) before the final reply. */
static void detach_client(struct rt_req *q)
{
    if (!q->client_gone && q->down_conn)
        evhttp_connection_set_closecb(q->down_conn, NULL, NULL);
}

static void fail_reply(struct rt_req *q, int code, const char *reason, const char *type,
                       const char *msg)
{
    detach_client(q);
    send_error(q->down, code, reason, type, msg, q->rid);
}

static void up_error(enum evhttp_request_error err, void *arg)
{
    struct rt_req *q = arg;
    q->up_err = (int)err;
}

static int up_header(struct evhttp_request *up, void *arg)
{
    struct rt_req *q = arg;
    if (q->client_gone)
        return -1;
    q->code = evhttp_request_get_response_code(up);
    struct evkeyvalq *ih = evhttp_request_get_input_headers(up);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(q->down);
    /* one pass over the headers: forward them and note Content-Type and Content-Length */
    const char *ct = NULL, *cl = NULL;
    for (struct evkeyval *kv = ih->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!cl && strcasecmp(kv->key, "content-length") == 0)
            cl = kv->value;
        if (skip_header(kv->key))
            continue;
        if (!ct && strcasecmp(kv->key, "content-type") == 0)
            ct = kv->value;
        evhttp_add_header(oh, kv->key, kv->value);
    }
    q->streaming = !cl || (ct && strncasecmp(ct, "text/event-stream", 17) == 0);
    evhttp_add_header(oh, "X-Request-Id", q->rid);
    evhttp_add_header(oh, "X-Kvstash-Engine", q->w->rt->eng[q->engine].url);
    if (q->streaming) {
        const char *reason = evhttp_request_get_response_code_line(up);
        evhttp_send_reply_start(q->down, q->code, reason ? reason : "OK");
        q->started = true;
    }
    return 0;
}

static void up_chunk(struct evhttp_request *up, void *arg)
{
    struct rt_req *q = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(up);
    if (q->client_gone) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (!q->first_byte) {
        q->first_byte = true;
        hist_add(&q->w->rt->eng[q->engine].ttfb, kv_now_us() - q->t0_us);
    }
    if (q->streaming) {
        evhttp_send_reply_chunk(q->down, in);
    } else {
        if (!q->acc)
            q->acc = evbuffer_new();
        if (q->acc)
            evbuffer_add_buffer(q->acc, in);
        else
            evbuffer_drain(in, evbuffer_get_length(in));
    }
}

static void mark_unhealthy(struct kv_router *rt, int e, const char *why)
{
    if (atomic_exchange(&rt->eng[e].healthy, 0))
        KV_LOGW("engine %s out of rotation: %s", rt->eng[e].url, why);
}

static void up_done(struct evhttp_request *up, void *arg)
{
    struct rt_req *q = arg;
    struct kv_router *rt = q->w->rt;
    struct rt_engine *e = &rt->eng[q->engine];
    int code = up ? evhttp_request_get_response_code(up) : 0;
    q->up = NULL;
    atomic_fetch_sub_explicit(&e->inflight, 1, memory_order_relaxed);
    pool_put(q->w, q->engine, q->up_conn);
    q->up_conn = NULL;
    if (code == 0) {
        bool timeout = q->up_err == EVREQ_HTTP_TIMEOUT;
        atomic_fetch_add_explicit(&e->errors, 1, memory_order_relaxed);
        mark_unhealthy(rt, q->engine, timeout ? "timed out" : "connection failed");
        if (timeout)
            atomic_fetch_add_explicit(&rt->c_timeouts, 1, memory_order_relaxed);
        if (!q->started && q->attempts < 2) {
            atomic_fetch_add_explicit(&e->failovers, 1, memory_order_relaxed);
            KV_LOGI("request %s: engine %s %s; retrying on another engine", q->rid, e->url,
                    timeout ? "timed out" : "failed");
            if (dispatch(q) == 0)
                return;
            req_free(q);
            return;
        }
        atomic_fetch_add_explicit(&rt->c_upstream_fail, 1, memory_order_relaxed);
        if (!q->started) {
            if (timeout)
                fail_reply(q, 504, "Gateway Timeout", "upstream_timeout",
                           "the engine did not answer in time");
            else
                fail_reply(q, 502, "Bad Gateway", "upstream_error", "the engine failed");
        } else {
            /* Bytes already went out: abort the client connection so that it sees a truncated
             * response rather than a clean end. */
            detach_client(q);
            evhttp_connection_free(q->down_conn);
        }
        req_free(q);
        return;
    }
    if (code >= 500)
        atomic_fetch_add_explicit(&e->errors, 1, memory_order_relaxed);
    hist_add(&e->lat, kv_now_us() - q->t0_us);
    if (!q->first_byte)
        hist_add(&e->ttfb, kv_now_us() - q->t0_us);
    detach_client(q);
    if (q->streaming) {
        evhttp_send_reply_end(q->down);
    } else {
        const char *reason = evhttp_request_get_response_code_line(up);
        evhttp_send_reply(q->down, code, reason ? reason : "OK", q->acc);
    }
    req_free(q);
}

/* Chooses an engine (excluding those tried) and sends q upstream. Returns 0 when sent; else it
 * has replied the error to the client and returns -1 (the caller frees q). */
static int dispatch(struct rt_req *q)
{
    struct kv_router *rt = q->w->rt;
    int n = nengines(rt);
    uint64_t serving = 0, healthy = 0;
    const char *why = "";
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n; i++) {
        struct rt_engine *e = &rt->eng[i];
        if (atomic_load_explicit(&e->removed, memory_order_relaxed) ||
            !engine_serves(e, q->info.model))
            continue;
        serving |= 1ULL << i;
        if (atomic_load_explicit(&e->healthy, memory_order_relaxed))
            healthy |= 1ULL << i;
    }
    uint64_t eligible = healthy & ~q->tried;
    int pick = eligible ? pick_locked(rt, q, eligible, &why) : -1;
    pthread_mutex_unlock(&rt->mu);
    if (!serving) {
        atomic_fetch_add_explicit(&rt->c_nomodel, 1, memory_order_relaxed);
        char msg[400];
        snprintf(msg, sizeof(msg), "The model `%.300s` does not exist.", q->info.model);
        fail_reply(q, 404, "Not Found", "NotFoundError", msg);
        return -1;
    }
    if (pick < 0) {
        atomic_fetch_add_explicit(&rt->c_noengine, 1, memory_order_relaxed);
        bool timeout = q->up_err == EVREQ_HTTP_TIMEOUT;
        if (q->attempts > 0 && timeout)
            fail_reply(q, 504, "Gateway Timeout", "upstream_timeout",
                       "the engine did not answer in time and no other engine is healthy");
        else
            fail_reply(q, 503, "Service Unavailable", "ServiceUnavailableError",
                       q->attempts ? "the engine failed and no other healthy engine serves "
                                     "this model"
                                   : "no healthy engine serves this model");
        return -1;
    }
    struct rt_engine *e = &rt->eng[pick];
    q->engine = pick;
    q->tried |= 1ULL << pick;
    q->attempts++;
    q->up_err = -1;
    q->code = 0;
    q->streaming = false;
    q->first_byte = false;
    if (q->acc)
        evbuffer_drain(q->acc, evbuffer_get_length(q->acc));
    evhttp_clear_headers(evhttp_request_get_output_headers(q->down));
    KV_LOGD("request %s model %s -> %s (%s)", q->rid, q->info.model, e->url, why);
    struct evhttp_connection *c = pool_get(q->w, pick);
    struct evhttp_request *up = c ? evhttp_request_new(up_done, q) : NULL;
    if (!up) {
        if (c)
            pool_put(q->w, pick, c);
        fail_reply(q, 500, "Internal Server Error", "internal_error", "out of memory");
        return -1;
    }
    evhttp_request_set_header_cb(up, up_header);
    evhttp_request_set_chunked_cb(up, up_chunk);
    evhttp_request_set_error_cb(up, up_error);
    struct evkeyvalq *ih = evhttp_request_get_input_headers(q->down);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(up);
    for (struct evkeyval *kv = ih->tqh_first; kv; kv = kv->next.tqe_next) {
        if (skip_header(kv->key))
            continue;
        evhttp_add_header(oh, kv->key, kv->value);
    }
    evhttp_add_header(oh, "Host", e->hostport);
    evhttp_add_header(oh, "X-Request-Id", q->rid);
    evbuffer_add(evhttp_request_get_output_buffer(up), q->body, q->body_len);
    char pathbuf[2048];
    const char *path = q->uri;
    if (e->path[0]) {
        snprintf(pathbuf, sizeof(pathbuf), "%s%s", e->path, q->uri);
        path = pathbuf;
    }
    q->t0_us = kv_now_us();
    atomic_fetch_add_explicit(&e->inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&e->requests, 1, memory_order_relaxed);
    q->up_conn = c;
    q->up = up;
    if (evhttp_make_request(c, up, EVHTTP_REQ_POST, path) != 0) {
        /* libevent freed up and called nothing */
        q->up = NULL;
        q->up_conn = NULL;
        atomic_fetch_sub_explicit(&e->inflight, 1, memory_order_relaxed);
        pool_put(q->w, pick, c);
        fail_reply(q, 502, "Bad Gateway", "upstream_error", "cannot send to the engine");
        return -1;
    }
    return 0;
}

static void on_client_close(struct evhttp_connection *c, void *arg)
{
    struct rt_req *q = arg;
    evhttp_connection_set_closecb(c, NULL, NULL);
    q->client_gone = true;
    KV_LOGD("request %s: client went away", q->rid);
    if (q->up) {
        struct evhttp_request *up = q->up;
        q->up = NULL;
        evhttp_cancel_request(up); /* runs up_error(CANCEL), never up_done */
        atomic_fetch_sub_explicit(&q->w->rt->eng[q->engine].inflight, 1, memory_order_relaxed);
        pool_put(q->w, q->engine, q->up_conn);
        q->up_conn = NULL;
    }
    /* A client request cut off by EOF was detached from its connection by libevent and is
     * ours to free; one still attached is freed by libevent with the connection. */
    if (evhttp_request_get_connection(q->down) == NULL)
        evhttp_request_free(q->down);
    req_free(q);
}

/* Request ids: a random 64-bit prefix drawn once per router plus a counter, so that ids are
 * unique across routers and restarts without a system call per request. */
static void gen_request_id(struct kv_router *rt, char *out, size_t n)
{
    uint64_t c = atomic_fetch_add_explicit(&rt->rid_counter, 1, memory_order_relaxed);
    /* "kvs-%016llx-%llx" without a printf per request */
    static const char hex[] = "0123456789abcdef";
    char tail[17];
    size_t t = sizeof(tail);
    do {
        tail[--t] = hex[c & 15];
        c >>= 4;
    } while (c);
    size_t tl = sizeof(tail) - t;
    if (rt->rid_pfx_len + tl + 1 > n) {
        out[0] = '\0';
        return;
    }
    memcpy(out, rt->rid_pfx, rt->rid_pfx_len);
    memcpy(out + rt->rid_pfx_len, tail + t, tl);
    out[rt->rid_pfx_len + tl] = '\0';
}

static void handle_proxy(struct rt_worker *w, struct evhttp_request *req)
{
    struct kv_router *rt = w->rt;
    atomic_fetch_add_explicit(&rt->c_requests, 1, memory_order_relaxed);
    char rid[80];
    const char *hrid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    if (hrid && *hrid && strlen(hrid) < sizeof(rid) && !strpbrk(hrid, "\r\n"))
        snprintf(rid, sizeof(rid), "%s", hrid);
    else
        gen_request_id(rt, rid, sizeof(rid));
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        send_error(req, 405, "Method Not Allowed", "invalid_request_error", "use POST", rid);
        return;
    }
    struct rt_req *q = kv_calloc(1, sizeof(*q));
    if (!q) {
        send_error(req, 500, "Internal Server Error", "internal_error", "out of memory", rid);
        return;
    }
    q->w = w;
    q->down = req;
    q->down_conn = evhttp_request_get_connection(req);
    q->engine = -1;
    q->up_err = -1;
    snprintf(q->rid, sizeof(q->rid), "%s", rid);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    q->body_len = evbuffer_get_length(in);
    q->body = kv_malloc(q->body_len + 1);
    q->uri = kv_strdup(evhttp_request_get_uri(req));
    if (!q->body || !q->uri) {
        send_error(req, 500, "Internal Server Error", "internal_error", "out of memory", rid);
        req_free(q);
        return;
    }
    evbuffer_remove(in, q->body, q->body_len);
    q->body[q->body_len] = '\0';
    char err[300];
    /* roundrobin and session route on the model (and user) only: skip the prompt text */
    bool want_text = rt->policy != RT_RR && rt->policy != RT_SESSION;
    if (kv_rt_inspect_ex(q->body, q->body_len, want_text, &q->info, err, sizeof(err)) < 0) {
        atomic_fetch_add_explicit(&rt->c_bad, 1, memory_order_relaxed);
        send_error(req, 400, "Bad Request", "invalid_request_error", err, rid);
        req_free(q);
        return;
    }
    evhttp_connection_set_closecb(q->down_conn, on_client_close, q);
    if (dispatch(q) < 0)
        req_free(q);
}

/* ---------- local endpoints ---------- */

static void handle_models(struct kv_router *rt, struct evhttp_request *req)
{
    json_t *data = json_array();
    json_t *seen = json_object();
    int n = nengines(rt);
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n && data && seen; i++) {
        struct rt_engine *e = &rt->eng[i];
        if (!e->models || atomic_load(&e->removed))
            continue;
        size_t k;
        json_t *m;
        json_array_foreach(e->models, k, m)
        {
            json_t *id = json_object_get(m, "id");
            if (!json_is_string(id) || json_object_get(seen, json_string_value(id)))
                continue;
            json_object_set_new(seen, json_string_value(id), json_true());
            json_array_append_new(data, json_deep_copy(m));
        }
    }
    pthread_mutex_unlock(&rt->mu);
    json_t *o = data ? json_pack("{s:s,s:o}", "object", "list", "data", data) : NULL;
    char *s = o ? kv_json_dump(o) : NULL;
    if (s)
        send_json(req, 200, "OK", s, NULL);
    else
        send_error(req, 500, "Internal Server Error", "internal_error", "out of memory", NULL);
    kv_free(s);
    json_decref(o);
    json_decref(seen);
}

static void handle_health(struct kv_router *rt, struct evhttp_request *req)
{
    int n = nengines(rt), healthy = 0;
    for (int i = 0; i < n; i++)
        healthy += atomic_load(&rt->eng[i].healthy) && !atomic_load(&rt->eng[i].removed);
    char body[160];
    snprintf(body, sizeof(body), "{\"status\":\"%s\",\"healthy_engines\":%d,\"engines\":%d}",
             healthy ? "ok" : "no healthy engine", healthy, n);
    send_json(req, healthy ? 200 : 503, healthy ? "OK" : "Service Unavailable", body, NULL);
}

static void hist_text(struct kv_buf *b, const char *name, const char *url, const struct rt_hist *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= RT_NB; i++) {
        cum += atomic_load_explicit(&((struct rt_hist *)h)->b[i], memory_order_relaxed);
        if (i < RT_NB)
            kv_buf_appendf(b, "%s_bucket{server=\"%s\",le=\"%g\"} %llu\n", name, url, hist_le[i],
                           (unsigned long long)cum);
        else
            kv_buf_appendf(b, "%s_bucket{server=\"%s\",le=\"+Inf\"} %llu\n", name, url,
                           (unsigned long long)cum);
    }
    kv_buf_appendf(b, "%s_sum{server=\"%s\"} %.6f\n", name, url,
                   (double)atomic_load(&((struct rt_hist *)h)->sum_us) / 1e6);
    kv_buf_appendf(b, "%s_count{server=\"%s\"} %llu\n", name, url,
                   (unsigned long long)atomic_load(&((struct rt_hist *)h)->count));
}

static void handle_metrics(struct kv_router *rt, struct evhttp_request *req)
{
    struct kv_buf b;
    kv_buf_init(&b);
    int n = nengines(rt);
    struct {
        const char *name, *type, *help;
    } const gauges[] = {
        {"vllm:num_requests_running", "gauge", "Requests in flight through the router"},
        {"vllm:current_qps", "gauge", "Requests per second sent to the engine (last interval)"},
        {"vllm:avg_latency", "gauge", "Average end-to-end latency in seconds (since start)"},
        {"vllm:healthy_pods_total", "gauge", "1 if the engine is in rotation"},
        {"kvstash_router_requests_total", "counter", "Requests sent to the engine"},
        {"kvstash_router_errors_total", "counter",
         "Failed upstream requests (connection errors, timeouts, 5xx)"},
        {"kvstash_router_failovers_total", "counter",
         "Requests retried on another engine after this one failed"},
    };
    for (size_t g = 0; g < KV_ARRAY_SIZE(gauges); g++) {
        kv_buf_appendf(&b, "# HELP %s %s\n# TYPE %s %s\n", gauges[g].name, gauges[g].help,
                       gauges[g].name, gauges[g].type);
        for (int i = 0; i < n; i++) {
            struct rt_engine *e = &rt->eng[i];
            double v = 0;
            switch (g) {
            case 0:
                v = (double)atomic_load(&e->inflight);
                break;
            case 1:
                v = (double)atomic_load(&e->qps_milli) / 1000.0;
                break;
            case 2: {
                uint64_t c = atomic_load(&e->lat.count);
                v = c ? (double)atomic_load(&e->lat.sum_us) / 1e6 / (double)c : 0;
                break;
            }
            case 3:
                v = atomic_load(&e->healthy) && !atomic_load(&e->removed);
                break;
            case 4:
                v = (double)atomic_load(&e->requests);
                break;
            case 5:
                v = (double)atomic_load(&e->errors);
                break;
            default:
                v = (double)atomic_load(&e->failovers);
                break;
            }
            kv_buf_appendf(&b, "%s{server=\"%s\"} %g\n", gauges[g].name, e->url, v);
        }
    }
    kv_buf_appendf(&b, "# HELP kvstash_router_request_latency_seconds End-to-end latency of "
                       "proxied requests\n# TYPE kvstash_router_request_latency_seconds "
                       "histogram\n");
    for (int i = 0; i < n; i++)
        hist_text(&b, "kvstash_router_request_latency_seconds", rt->eng[i].url, &rt->eng[i].lat);
    kv_buf_appendf(&b, "# HELP kvstash_router_time_to_first_byte_seconds Time from sending a "
                       "request to its first response byte\n# TYPE "
                       "kvstash_router_time_to_first_byte_seconds histogram\n");
    for (int i = 0; i < n; i++)
        hist_text(&b, "kvstash_router_time_to_first_byte_seconds", rt->eng[i].url,
                  &rt->eng[i].ttfb);
    kv_buf_appendf(
        &b,
        "# HELP kvstash_router_client_requests_total Client requests received\n"
        "# TYPE kvstash_router_client_requests_total counter\n"
        "kvstash_router_client_requests_total %llu\n"
        "# HELP kvstash_router_rejected_total Client requests answered by the router itself\n"
        "# TYPE kvstash_router_rejected_total counter\n"
        "kvstash_router_rejected_total{reason=\"bad_request\"} %llu\n"
        "kvstash_router_rejected_total{reason=\"unknown_model\"} %llu\n"
        "kvstash_router_rejected_total{reason=\"no_healthy_engine\"} %llu\n"
        "kvstash_router_rejected_total{reason=\"upstream_failed\"} %llu\n"
        "# HELP kvstash_router_upstream_timeouts_total Upstream requests that timed out\n"
        "# TYPE kvstash_router_upstream_timeouts_total counter\n"
        "kvstash_router_upstream_timeouts_total %llu\n",
        (unsigned long long)atomic_load(&rt->c_requests),
        (unsigned long long)atomic_load(&rt->c_bad),
        (unsigned long long)atomic_load(&rt->c_nomodel),
        (unsigned long long)atomic_load(&rt->c_noengine),
        (unsigned long long)atomic_load(&rt->c_upstream_fail),
        (unsigned long long)atomic_load(&rt->c_timeouts));
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    evhttp_add_header(oh, "Content-Type", "text/plain; version=0.0.4");
    struct evbuffer *out = evbuffer_new();
    if (out && b.data)
        evbuffer_add(out, b.data, b.len);
    evhttp_send_reply(req, 200, "OK", out);
    if (out)
        evbuffer_free(out);
    kv_buf_fini(&b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct rt_worker *w = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (!path)
        path = "/";
    if (strcmp(path, "/v1/chat/completions") == 0 || strcmp(path, "/v1/completions") == 0 ||
        strcmp(path, "/v1/embeddings") == 0) {
        handle_proxy(w, req);
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        send_error(req, 405, "Method Not Allowed", "invalid_request_error", "use GET", NULL);
        return;
    }
    if (strcmp(path, "/v1/models") == 0)
        handle_models(w->rt, req);
    else if (strcmp(path, "/health") == 0)
        handle_health(w->rt, req);
    else if (strcmp(path, "/metrics") == 0)
        handle_metrics(w->rt, req);
    else
        send_error(req, 404, "Not Found", "NotFoundError", "no such endpoint", NULL);
}

static void *worker_main(void *arg)
{
    struct rt_worker *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "router-%d", w->no);
    kv_log_set_thread_name(name);
    event_base_dispatch(w->base);
    return NULL;
}

/* ---------- control thread: probes, models, gateway mirror, discovery ---------- */

static void probe_finish(struct kv_router *rt, int i)
{
    struct rt_engine *e = &rt->eng[i];
    e->probe_busy = false;
    atomic_store(&e->first_probe_done, 1);
}

static void models_done(struct evhttp_request *req, void *arg)
{
    struct probe_ctx *pc = arg;
    struct kv_router *rt = pc->rt;
    int i = pc->e;
    struct rt_engine *e = &rt->eng[i];
    if (req && evhttp_request_get_response_code(req) == 200) {
        struct evbuffer *b = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(b);
        const char *p = (const char *)evbuffer_pullup(b, -1);
        json_t *root = NULL;
        char err[200];
        json_t *data = NULL;
        if (p && kv_json_parse(p, len, &root, err, sizeof(err)) == KV_OK)
            data = json_object_get(root, "data");
        if (json_is_array(data)) {
            json_incref(data);
            pthread_mutex_lock(&rt->mu);
            json_t *old = e->models;
            e->models = data;
            pthread_mutex_unlock(&rt->mu);
            json_decref(old);
            e->models_due_ms = kv_now_ms() + rt->models_interval_ms;
        } else {
            KV_LOGW_RL(10000, "engine %s: GET /v1/models: no \"data\" array", e->url);
        }
        json_decref(root);
    } else {
        KV_LOGW_RL(10000, "engine %s: GET /v1/models failed", e->url);
    }
    probe_finish(rt, i);
}

static void health_done(struct evhttp_request *req, void *arg)
{
    struct probe_ctx *pc = arg;
    struct kv_router *rt = pc->rt;
    int i = pc->e;
    struct rt_engine *e = &rt->eng[i];
    bool ok = req && evhttp_request_get_response_code(req) == 200;
    if (!ok) {
        mark_unhealthy(rt, i, "health check failed");
        probe_finish(rt, i);
        return;
    }
    if (!atomic_exchange(&e->healthy, 1))
        KV_LOGI("engine %s healthy: in rotation", e->url);
    bool known;
    pthread_mutex_lock(&rt->mu);
    known = e->models != NULL;
    pthread_mutex_unlock(&rt->mu);
    if (known && kv_now_ms() < e->models_due_ms) {
        probe_finish(rt, i);
        return;
    }
    struct evhttp_request *mr = evhttp_request_new(models_done, pc);
    if (!mr) {
        probe_finish(rt, i);
        return;
    }
    char path[300], hostport[300];
    snprintf(path, sizeof(path), "%s/v1/models", e->path);
    snprintf(hostport, sizeof(hostport), "%s:%u", e->host, e->port);
    evhttp_add_header(evhttp_request_get_output_headers(mr), "Host", hostport);
    if (evhttp_make_request(e->probe_conn, mr, EVHTTP_REQ_GET, path) != 0) {
        probe_finish(rt, i);
    }
}

static void probe_engine(struct kv_router *rt, int i)
{
    struct rt_engine *e = &rt->eng[i];
    if (e->probe_busy || atomic_load(&e->removed))
        return;
    if (!e->probe_conn) {
        e->probe_conn = evhttp_connection_base_new(rt->cbase, NULL, e->host, e->port);
        if (!e->probe_conn)
            return;
        struct timeval tv = {rt->health_timeout_ms / 1000, (rt->health_timeout_ms % 1000) * 1000};
        evhttp_connection_set_timeout_tv(e->probe_conn, &tv);
        evhttp_connection_set_retries(e->probe_conn, 0);
    }
    struct probe_ctx *pc = &e->pctx;
    pc->rt = rt;
    pc->e = i;
    struct evhttp_request *r = evhttp_request_new(health_done, pc);
    if (!r) {
        return;
    }
    char path[300], hostport[300];
    snprintf(path, sizeof(path), "%s/health", e->path);
    snprintf(hostport, sizeof(hostport), "%s:%u", e->host, e->port);
    evhttp_add_header(evhttp_request_get_output_headers(r), "Host", hostport);
    e->probe_busy = true;
    if (evhttp_make_request(e->probe_conn, r, EVHTTP_REQ_GET, path) != 0) {
        e->probe_busy = false;
    }
}

static void on_health_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_router *rt = arg;
    int n = nengines(rt);
    double secs = rt->health_interval_ms / 1000.0;
    for (int i = 0; i < n; i++) {
        struct rt_engine *e = &rt->eng[i];
        uint64_t r = atomic_load(&e->requests);
        atomic_store(&e->qps_milli, (int64_t)((double)(r - e->qps_last_req) * 1000.0 / secs));
        e->qps_last_req = r;
        probe_engine(rt, i);
    }
}

/* Copies the gateway's engine states into the engines they belong to (ids normalised like
 * URLs on both sides, so localhost and 127.0.0.1 match). */
static void on_mirror_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_router *rt = arg;
    struct kv_gateway_engine *ge = NULL;
    size_t ng = 0;
    if (kv_gateway_engines(rt->gw, &ge, &ng) < 0)
        return;
    int n = nengines(rt);
    int64_t now = kv_now_ms();
    bool seen[KV_RT_MAX_ENGINES] = {false};
    pthread_mutex_lock(&rt->mu);
    for (size_t k = 0; k < ng; k++) {
        char norm[300], err[200];
        const char *id = ge[k].state.engine_id;
        if (kv_rt_url_normalize(id, norm, sizeof(norm), NULL, 0, NULL, NULL, 0, err, sizeof(err)) ==
            KV_OK)
            id = norm;
        int match = -1;
        for (int i = 0; i < n; i++)
            if (strcmp(rt->eng[i].gid, id) == 0)
                match = i;
        if (match < 0) {
            KV_LOGW_RL(30000,
                       "gateway engine id '%s' matches no router engine (ids: the engine "
                       "URLs, or --engine-ids)",
                       ge[k].state.engine_id);
            continue;
        }
        struct rt_engine *e = &rt->eng[match];
        seen[match] = true;
        KV_LOGD("gateway state %s -> engine %d: known %d fresh %d latency %.1f pending %lld",
                ge[k].state.engine_id, match, ge[k].load_known, ge[k].fresh,
                ge[k].state.latency_pred_ms, (long long)ge[k].state.pending_tokens_total);
        uint64_t version = ge[k].states - ge[k].heartbeats;
        if (version != e->est_version) {
            e->est_version = version;
            e->local_pending = 0; /* the new report covers what was routed before it */
        }
        e->est.known = ge[k].load_known;
        e->est.fresh = ge[k].fresh;
        e->est.latency_pred_ms = ge[k].state.latency_pred_ms;
        snprintf(e->est.mode, sizeof(e->est.mode), "%s", ge[k].state.scheduling_mode);
        e->est.pending_tokens = ge[k].state.pending_tokens_total;
        e->est.capacity = ge[k].state.engine_capacity;
        e->est_snap_ms = now;
    }
    for (int i = 0; i < n; i++) {
        if (!seen[i]) {
            rt->eng[i].est.known = false;
            rt->eng[i].est.fresh = false;
            rt->eng[i].est_snap_ms = now;
        }
    }
    pthread_mutex_unlock(&rt->mu);
    kv_gateway_free(ge);
}

/* Engines registered in metadata: /kvstash/<cluster>/engines/<id> = URL, or a JSON object with
 * "url" (and optionally "engine_id"). */
static void on_discovery_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_router *rt = arg;
    struct kv_meta_kv *kvs = NULL;
    size_t nk = 0;
    int rc = kv_meta_list(rt->meta, rt->meta_prefix, &kvs, &nk);
    if (rc < 0) {
        KV_LOGW_RL(30000, "engine discovery: %s", kv_strerror(rc));
        return;
    }
    bool listed[KV_RT_MAX_ENGINES] = {false};
    for (size_t k = 0; k < nk; k++) {
        const char *url = kvs[k].val, *id = kvs[k].key + strlen(rt->meta_prefix);
        json_t *root = NULL;
        char err[200];
        if (kvs[k].len && kvs[k].val[0] == '{' &&
            kv_json_parse(kvs[k].val, kvs[k].len, &root, err, sizeof(err)) == KV_OK) {
            json_t *u = json_object_get(root, "url");
            json_t *gi = json_object_get(root, "engine_id");
            url = json_is_string(u) ? json_string_value(u) : NULL;
            if (json_is_string(gi))
                id = json_string_value(gi);
        }
        int i = url ? add_engine(rt, url, id, true) : -1;
        if (i >= 0) {
            listed[i] = true;
            if (!atomic_load(&rt->eng[i].first_probe_done))
                probe_engine(rt, i);
        } else {
            KV_LOGW_RL(30000, "engine discovery: bad entry %s", kvs[k].key);
        }
        json_decref(root);
    }
    kv_meta_kvs_free(kvs, nk);
    int n = nengines(rt);
    for (int i = 0; i < n; i++)
        if (rt->eng[i].from_meta && !listed[i] && !atomic_exchange(&rt->eng[i].removed, 1))
            KV_LOGI("engine %s left the metadata: out of rotation", rt->eng[i].url);
}

static void *control_main(void *arg)
{
    struct kv_router *rt = arg;
    kv_log_set_thread_name("router-ctl");
    event_base_dispatch(rt->cbase);
    return NULL;
}

/* ---------- start / stop ---------- */

static struct event *add_timer(struct kv_router *rt, int ms, event_callback_fn fn)
{
    struct event *ev = event_new(rt->cbase, -1, EV_PERSIST, fn, rt);
    if (!ev)
        return NULL;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
    return ev;
}

static int parse_policy(const char *s, enum rt_policy *out)
{
    for (size_t i = 0; i < KV_ARRAY_SIZE(policy_names); i++) {
        if (strcmp(s, policy_names[i]) == 0) {
            *out = (enum rt_policy)i;
            return KV_OK;
        }
    }
    return KV_EINVAL;
}

/* An epoll base that coalesces the add/del changes of one loop iteration into one epoll_ctl
 * each (libevent's changelist): proxying toggles read/write interest several times per request. */
static struct event_base *new_base(void)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *b = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return b ? b : event_base_new();
}

static int worker_init(struct kv_router *rt, struct rt_worker *w, int no)
{
    w->rt = rt;
    w->no = no;
    w->base = new_base();
    w->http = w->base ? evhttp_new(w->base) : NULL;
    if (!w->http)
        return KV_ENOMEM;
    w->lis = evconnlistener_new(w->base, NULL, NULL, LEV_OPT_CLOSE_ON_EXEC, -1, rt->lfd);
    if (!w->lis || !evhttp_bind_listener(w->http, w->lis)) {
        if (w->lis)
            evconnlistener_free(w->lis);
        w->lis = NULL;
        return KV_EIO;
    }
    evhttp_set_max_body_size(w->http, (ev_ssize_t)rt->max_body);
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    /* Idle clients and slow generations: the client-side timeout must outlast the upstream's. */
    int64_t ms = (int64_t)rt->timeout_ms + 30000;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evhttp_set_timeout_tv(w->http, &tv);
    evhttp_set_gencb(w->http, on_request, w);
    return KV_OK;
}

static void worker_fini(struct rt_worker *w)
{
    /* First the server: freeing its connections runs on_client_close for requests still in
     * flight, which cancels their upstream requests and returns those connections to the pools;
     * then the pools. */
    if (w->http)
        evhttp_free(w->http); /* frees the bound listener */
    w->http = NULL;
    for (int e = 0; e < KV_RT_MAX_ENGINES; e++) {
        for (size_t i = 0; i < w->pools[e].n; i++)
            evhttp_connection_free(w->pools[e].idle[i]);
        kv_free(w->pools[e].idle);
    }
    if (w->base)
        event_base_free(w->base);
}

static void use_pthreads(void)
{
    (void)evthread_use_pthreads();
}

uint16_t kv_router_port(const struct kv_router *r)
{
    return r ? r->port : 0;
}

void kv_router_stop(struct kv_router *rt)
{
    if (!rt)
        return;
    if (!rt->w)
        rt->nw = 0;
    for (int i = 0; i < rt->nw; i++)
        if (rt->w[i].started)
            event_base_loopbreak(rt->w[i].base);
    if (rt->cstarted)
        event_base_loopbreak(rt->cbase);
    for (int i = 0; i < rt->nw; i++)
        if (rt->w[i].started)
            pthread_join(rt->w[i].th, NULL);
    if (rt->cstarted)
        pthread_join(rt->cth, NULL);
    for (int i = 0; i < rt->nw; i++)
        worker_fini(&rt->w[i]);
    kv_free(rt->w);
    struct event *evs[] = {rt->health_ev, rt->mirror_ev, rt->disc_ev};
    for (size_t i = 0; i < KV_ARRAY_SIZE(evs); i++)
        if (evs[i])
            event_free(evs[i]);
    int n = nengines(rt);
    for (int i = 0; i < n; i++) {
        if (rt->eng[i].probe_conn)
            evhttp_connection_free(rt->eng[i].probe_conn);
        json_decref(rt->eng[i].models);
    }
    if (rt->cbase)
        event_base_free(rt->cbase);
    if (rt->lfd >= 0)
        close(rt->lfd);
    kv_meta_close(rt->meta);
    kv_rt_ring_fini(&rt->ring);
    kv_rt_prefix_destroy(rt->prefix);
    kv_free(rt->aff);
    kv_free(rt->session_key);
    pthread_mutex_destroy(&rt->mu);
    kv_free(rt);
}

int kv_router_start(const struct kv_router_opts *o, struct kv_router **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (!o || !out)
        return KV_EINVAL;
    pthread_once(&once, use_pthreads);
    if (sodium_init() < 0)
        return KV_EIO;
    struct kv_router *rt = kv_calloc(1, sizeof(*rt));
    if (!rt)
        return KV_ENOMEM;
    rt->lfd = -1;
    pthread_mutex_init(&rt->mu, NULL);
    randombytes_buf(&rt->rid_prefix, sizeof(rt->rid_prefix));
    snprintf(rt->rid_pfx, sizeof(rt->rid_pfx), "kvs-%016llx-", (unsigned long long)rt->rid_prefix);
    rt->rid_pfx_len = strlen(rt->rid_pfx);
    int rc = KV_EINVAL;
    if (parse_policy(o->routing_logic ? o->routing_logic : "roundrobin", &rt->policy) < 0) {
        KV_LOGE("unknown routing logic '%s' (roundrobin, session, least-loaded, prefix, elrar)",
                o->routing_logic);
        goto fail;
    }
    if (rt->policy == RT_ELRAR && !o->gateway) {
        KV_LOGE("routing logic elrar needs the in-process gateway");
        goto fail;
    }
    rt->gw = o->gateway;
    rt->max_body = o->max_body ? o->max_body : 16u << 20;
    rt->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 120000;
    rt->health_interval_ms = o->health_interval_ms > 0 ? o->health_interval_ms : 5000;
    rt->health_timeout_ms = o->health_timeout_ms > 0 ? o->health_timeout_ms : 2000;
    rt->models_interval_ms = o->models_interval_ms > 0 ? o->models_interval_ms : 30000;
    rt->nw = o->threads > 0 ? o->threads : 1;
    if (rt->nw > 64) {
        KV_LOGE("at most 64 router threads");
        goto fail;
    }
    if (o->session_key && *o->session_key) {
        rt->session_key = kv_strdup(o->session_key);
        if (!rt->session_key) {
            rc = KV_ENOMEM;
            goto fail;
        }
    }
    kv_rt_prefix_params_default(&rt->pp);
    if (o->cache_threshold > 0)
        rt->pp.cache_threshold = o->cache_threshold;
    if (o->balance_abs_threshold > 0)
        rt->pp.balance_abs_threshold = o->balance_abs_threshold;
    if (o->balance_rel_threshold > 0)
        rt->pp.balance_rel_threshold = o->balance_rel_threshold;
    if (o->max_tree_chars > 0)
        rt->pp.max_chars = o->max_tree_chars;
    kv_rt_elrar_params_default(&rt->ep);
    if (o->elrar_slo_ms > 0)
        rt->ep.slo_ms = o->elrar_slo_ms;
    if (o->elrar_load_scale_s > 0)
        rt->ep.load_scale_s = o->elrar_load_scale_s;
    if (o->elrar_kv_beta > 0)
        rt->ep.kv_beta = o->elrar_kv_beta;
    if (o->elrar_affinity_window_s > 0)
        rt->ep.affinity_window_ms = o->elrar_affinity_window_s * 1000;
    if (o->elrar_w_set)
        memcpy(rt->ep.w, o->elrar_w, sizeof(rt->ep.w));
    rc = kv_rt_prefix_create(&rt->pp, &rt->prefix);
    if (rc < 0)
        goto fail;
    rt->aff = kv_malloc(sizeof(*rt->aff));
    if (!rt->aff) {
        rc = KV_ENOMEM;
        goto fail;
    }
    kv_rt_affinity_init(rt->aff);
    for (size_t i = 0; i < o->nbackends; i++) {
        rc = add_engine(rt, o->backends[i], o->engine_ids ? o->engine_ids[i] : NULL, false);
        if (rc < 0)
            goto fail;
    }
    if (o->metadata_url) {
        rc = kv_meta_open(o->metadata_url, NULL, &rt->meta);
        if (rc < 0) {
            KV_LOGE("metadata %s: %s", o->metadata_url, kv_strerror(rc));
            goto fail;
        }
        snprintf(rt->meta_prefix, sizeof(rt->meta_prefix), "/kvstash/%s/engines/",
                 o->cluster && *o->cluster ? o->cluster : "default");
    }
    if (!o->nbackends && !o->metadata_url) {
        KV_LOGE("no engines: give --backends or --metadata");
        rc = KV_EINVAL;
        goto fail;
    }
    char host[256];
    uint16_t port;
    rc = kv_parse_hostport(o->addr ? o->addr : "127.0.0.1:8000", host, sizeof(host), &port);
    if (rc < 0) {
        KV_LOGE("bad address '%s' (want HOST:PORT)", o->addr);
        goto fail;
    }
    rc = kv_net_listen_tcp(host, port, 1024, &rt->lfd, &rt->port);
    if (rc < 0) {
        KV_LOGE("cannot listen on %s: %s", o->addr, kv_strerror(rc));
        goto fail;
    }
    rc = kv_net_set_nonblock(rt->lfd, 1);
    if (rc < 0)
        goto fail;
    /* Client connections inherit TCP_NODELAY from the listener (Linux): SSE chunks relayed one
     * by one must not wait behind Nagle for the client's delayed ACK; costs no call per
     * connection. */
    int one = 1;
    if (setsockopt(rt->lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        KV_LOGW("TCP_NODELAY on the listener: %s", strerror(errno));
    rc = KV_ENOMEM;
    rt->cbase = new_base();
    if (!rt->cbase)
        goto fail;
    rt->health_ev = add_timer(rt, rt->health_interval_ms, on_health_tick);
    if (!rt->health_ev)
        goto fail;
    if (rt->gw && !(rt->mirror_ev = add_timer(rt, 50, on_mirror_tick)))
        goto fail;
    if (rt->meta &&
        !(rt->disc_ev = add_timer(rt, KV_MIN(2000, rt->health_interval_ms), on_discovery_tick)))
        goto fail;
    rt->w = kv_calloc((size_t)rt->nw, sizeof(*rt->w));
    if (!rt->w)
        goto fail;
    for (int i = 0; i < rt->nw; i++) {
        rc = worker_init(rt, &rt->w[i], i);
        if (rc < 0)
            goto fail;
    }
    /* First probe of every engine (and first discovery) before serving. */
    if (rt->meta)
        on_discovery_tick(-1, 0, rt);
    on_health_tick(-1, 0, rt);
    if (rt->gw)
        on_mirror_tick(-1, 0, rt);
    if (pthread_create(&rt->cth, NULL, control_main, rt) != 0) {
        rc = KV_EIO;
        goto fail;
    }
    rt->cstarted = true;
    for (int i = 0; i < rt->nw; i++) {
        if (pthread_create(&rt->w[i].th, NULL, worker_main, &rt->w[i]) != 0) {
            rc = KV_EIO;
            goto fail;
        }
        rt->w[i].started = true;
    }
    int64_t deadline = kv_now_ms() + 2 * rt->health_timeout_ms + 500;
    while (kv_now_ms() < deadline) {
        int n = nengines(rt), done = 0;
        for (int i = 0; i < n; i++)
            done += atomic_load(&rt->eng[i].first_probe_done) != 0;
        if (done == n)
            break;
        kv_sleep_ms(5);
    }
    KV_LOGI("router listening on %s:%u, %d engine(s), routing logic %s, %d thread(s)", host,
            rt->port, nengines(rt), policy_names[rt->policy], rt->nw);
    *out = rt;
    return KV_OK;
fail:
    kv_router_stop(rt);
    return rc;
}
