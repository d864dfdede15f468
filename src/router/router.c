/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router.c - the OpenAI-compatible router's control side: the engine table, engine choice
 * (policies in router_policy.c), health checks, model discovery, the gateway mirror, metadata
 * discovery, the local endpoints' bodies (/v1/models, /health, /metrics) and start/stop. The
 * data path (client and upstream connections, proxying, SSE relay) is router_proxy.c.
 *
 * Thread model:
 *  - `threads` worker threads (router_proxy.c), each with its own epoll set on the one shared
 *    listening socket. They call rt_choose / rt_mark_unhealthy / rt_*_body here.
 *  - One control thread (a libevent event_base) probes engines (GET /health, GET /v1/models),
 *    mirrors gateway states, polls metadata for engines, and computes QPS.
 *
 * Shared state and locks:
 *  - rt->mu guards: each engine's model list, gateway mirror (estate, snap_ms) and local
 *    pending tokens; the policy objects (ring, prefix tree, affinity table, rr counter); engine
 *    additions (writers also publish rt->neng with release). Never held across I/O or a libevent
 *    call that could run a callback. No other lock exists in the router.
 *  - Engine fields url/host/port/path/gid/sa are immutable once published through rt->neng
 *    (acquire); healthy/removed/counters/histograms are atomics.
 */
#define KV_LOG_COMPONENT "router"
#include "kvstash/router.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <netdb.h>
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
#include "router/router_srv.h"

static const char *const policy_names[] = {"roundrobin", "session", "least-loaded", "prefix",
                                           "elrar"};

/* Histogram buckets in seconds (Prometheus "le"). */
const double rt_hist_le[RT_NB] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                  0.5,   1,      2.5,   5,    10,    30,   60};

/* ---------- small helpers ---------- */

void rt_hist_add(struct rt_hist *h, int64_t us)
{
    double s = (double)us / 1e6;
    size_t i = 0;
    while (i < RT_NB && s > rt_hist_le[i])
        i++;
    atomic_fetch_add_explicit(&h->b[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(us > 0 ? us : 0), memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

static int nengines(const struct kv_router *rt)
{
    return rt_nengines(rt);
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
    /* resolved once; a name that does not resolve yet is resolved at each connect */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    if (getaddrinfo(host, ps, &hints, &ai) == 0 && ai && ai->ai_addrlen <= sizeof(e->sa)) {
        memcpy(&e->sa, ai->ai_addr, ai->ai_addrlen);
        e->sa_len = ai->ai_addrlen;
    } else {
        KV_LOGW("engine %s: cannot resolve %s yet", norm, host);
    }
    if (ai)
        freeaddrinfo(ai);
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
static int pick_locked(struct kv_router *rt, const struct kv_rt_reqinfo *info, const char *session,
                       size_t slen, uint64_t eligible, const char **why)
{
    int64_t load[KV_RT_MAX_ENGINES];
    int n = nengines(rt);
    for (int i = 0; i < n; i++)
        load[i] = atomic_load_explicit(&rt->eng[i].inflight, memory_order_relaxed);
    const char *key = NULL;
    size_t keylen = 0;
    if (session && slen) {
        key = session;
        keylen = slen;
    }
    if (!key && info->user && *info->user) {
        key = info->user;
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
                rt->eng[pick].local_pending += info->est_tokens;
        } else {
            pick = kv_rt_pick_least(load, eligible, (unsigned)(rt->rr++ % (uint64_t)n));
            *why = "least_inflight";
        }
        break;
    }
    case RT_PREFIX:
        pick = kv_rt_pick_prefix(rt->prefix, &rt->pp, info->text, info->text_len, load, eligible,
                                 now, why);
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
            rt->eng[pick].local_pending += info->est_tokens;
            if (key)
                kv_rt_affinity_put(rt->aff, key, keylen, pick, now);
        }
        break;
    }
    }
    return pick;
}

int rt_choose(struct kv_router *rt, const struct kv_rt_reqinfo *info, const char *session,
              size_t slen, uint64_t tried, uint64_t *serving_out, int *unknown_out,
              const char **why)
{
    int n = nengines(rt), unknown = 0;
    uint64_t serving = 0, healthy = 0;
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n; i++) {
        struct rt_engine *e = &rt->eng[i];
        if (atomic_load_explicit(&e->removed, memory_order_relaxed))
            continue;
        if (!e->models)
            unknown++;
        if (!engine_serves(e, info->model))
            continue;
        serving |= 1ULL << i;
        if (atomic_load_explicit(&e->healthy, memory_order_relaxed))
            healthy |= 1ULL << i;
    }
    uint64_t eligible = healthy & ~tried;
    int pick = eligible ? pick_locked(rt, info, session, slen, eligible, why) : -1;
    pthread_mutex_unlock(&rt->mu);
    *serving_out = serving;
    *unknown_out = unknown;
    return pick;
}

void rt_mark_unhealthy(struct kv_router *rt, int e, const char *why)
{
    if (atomic_exchange(&rt->eng[e].healthy, 0))
        KV_LOGW("engine %s out of rotation: %s", rt->eng[e].url, why);
}

/* Request ids: a random 64-bit prefix drawn once per router plus a counter, so that ids are
 * unique across routers and restarts without a system call per request. */
void rt_gen_request_id(struct kv_router *rt, char *out, size_t n)
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

/* ---------- local endpoints ---------- */

int rt_models_body(struct kv_router *rt, struct kv_buf *out)
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
    int rc = s ? kv_buf_appends(out, s) : KV_ENOMEM;
    kv_free(s);
    json_decref(o);
    json_decref(seen);
    return rc;
}

/* /health is liveness: the router answers it from its worker loop, so an answer means the loop
 * runs (200 even with no engine in rotation: restarting the router would not bring one). */
int rt_health_body(struct kv_router *rt, struct kv_buf *out, int *code)
{
    int n = nengines(rt), healthy = 0;
    for (int i = 0; i < n; i++)
        healthy += atomic_load(&rt->eng[i].healthy) && !atomic_load(&rt->eng[i].removed);
    char body[160];
    snprintf(body, sizeof(body), "{\"status\":\"ok\",\"healthy_engines\":%d,\"engines\":%d}",
             healthy, n);
    *code = 200;
    return kv_buf_appends(out, body);
}

int rt_ready_body(struct kv_router *rt, struct kv_buf *out, int *code)
{
    int n = nengines(rt), healthy = 0, known = 0, ready = 0;
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n; i++) {
        const struct rt_engine *e = &rt->eng[i];
        if (atomic_load(&e->removed))
            continue;
        bool h = atomic_load(&e->healthy), k = e->models != NULL;
        healthy += h;
        known += k;
        ready += h && k;
    }
    pthread_mutex_unlock(&rt->mu);
    char reason[160] = "";
    if (n == 0)
        snprintf(reason, sizeof(reason), "no engine known yet%s",
                 rt->meta ? " (discovering engines through metadata)" : "");
    else if (!healthy)
        snprintf(reason, sizeof(reason), "no engine in rotation (%d known, none healthy)", n);
    else if (!ready)
        snprintf(reason, sizeof(reason),
                 "the models of the %d engine(s) in rotation are not "
                 "discovered yet",
                 healthy);
    json_t *o = json_pack("{s:b, s:i, s:i, s:i}", "ready", ready > 0, "engines", n,
                          "healthy_engines", healthy, "engines_ready", ready);
    if (o && !ready)
        json_object_set_new(o, "reason", json_string(reason));
    char *s = o ? kv_json_dump(o) : NULL;
    json_decref(o);
    int rc = s ? kv_buf_appends(out, s) : KV_ENOMEM;
    kv_free(s);
    *code = ready ? 200 : 503;
    return rc;
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
        rt_mark_unhealthy(rt, i, "health check failed");
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

/* Engines out of rotation are checked every RT_RECHECK_MS (when the health interval is longer),
 * so one that starts after the router, or recovers, serves again within about a second. */
#define RT_RECHECK_MS 1000

static void on_recheck_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_router *rt = arg;
    int n = nengines(rt);
    for (int i = 0; i < n; i++)
        if (!atomic_load(&rt->eng[i].healthy))
            probe_engine(rt, i); /* skips removed engines and probes in flight */
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
    rt_workers_stop(rt); /* first: their connections count in-flight requests */
    if (rt->cstarted) {
        event_base_loopbreak(rt->cbase);
        pthread_join(rt->cth, NULL);
    }
    struct event *evs[] = {rt->health_ev, rt->recheck_ev, rt->mirror_ev, rt->disc_ev};
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
    rt->discovery_wait_ms = o->discovery_wait_ms == 0 ? 10000 : KV_MAX(o->discovery_wait_ms, 0);
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
    if (rt->health_interval_ms > RT_RECHECK_MS &&
        !(rt->recheck_ev = add_timer(rt, RT_RECHECK_MS, on_recheck_tick)))
        goto fail;
    if (rt->gw && !(rt->mirror_ev = add_timer(rt, 50, on_mirror_tick)))
        goto fail;
    if (rt->meta &&
        !(rt->disc_ev = add_timer(rt, KV_MIN(2000, rt->health_interval_ms), on_discovery_tick)))
        goto fail;
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
    rc = rt_workers_start(rt);
    if (rc < 0)
        goto fail;
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
