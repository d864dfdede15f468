/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_metrics.c - what the router reports about itself: /metrics (Prometheus text through
 * common/prom, per engine labelled server="<engine URL>"), /metrics/vllm (the four vLLM
 * production-stack router gauges under their vllm: names, for dashboards built on them) and
 * /api/v1/status (the JSON of the router's status page, web/router.html). docs/metrics.md
 * lists every family.
 *
 * Thread model: called on the worker threads that serve the local endpoints; counters are
 * atomics read relaxed, the gateway mirror (est) is copied under rt->mu.
 */
#define KV_LOG_COMPONENT "router"
#include <jansson.h>
#include <stdatomic.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/prom.h"
#include "common/util.h"
#include "kvstash/gateway.h"
#include "router/router_int.h"
#include "router/router_srv.h"

static uint64_t ld(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* A histogram's per-bucket counts and sum in seconds. */
static void hist_copy(struct rt_hist *h, uint64_t out[RT_NB + 1], double *sum)
{
    for (int i = 0; i <= RT_NB; i++)
        out[i] = ld(&h->b[i]);
    *sum = (double)ld(&h->sum_us) / 1e6;
}

static void per_engine(struct kv_prom *p, struct kv_router *rt, const char *name,
                       enum kv_prom_type type, const char *help, int what)
{
    int n = rt_nengines(rt);
    kv_prom_family(p, name, type, help);
    for (int i = 0; i < n; i++) {
        struct rt_engine *e = &rt->eng[i];
        double v;
        switch (what) {
        case 0:
            v = (double)atomic_load(&e->inflight);
            break;
        case 1:
            v = (double)atomic_load(&e->qps_milli) / 1000.0;
            break;
        case 2:
            v = atomic_load(&e->healthy) && !atomic_load(&e->removed);
            break;
        case 3:
            v = (double)ld(&e->requests);
            break;
        case 4:
            v = (double)ld(&e->errors);
            break;
        case 5:
            v = (double)ld(&e->failovers);
            break;
        default: {
            uint64_t c = ld(&e->lat.count);
            v = c ? (double)ld(&e->lat.sum_us) / 1e6 / (double)c : 0;
            break;
        }
        }
        struct kv_prom_label l = {"server", e->url};
        kv_prom_sample(p, &l, 1, v);
    }
}

static void hist_family(struct kv_prom *p, struct kv_router *rt, const char *name, const char *help,
                        bool ttfb)
{
    int n = rt_nengines(rt);
    kv_prom_family(p, name, KV_PROM_HISTOGRAM, help);
    for (int i = 0; i < n; i++) {
        uint64_t b[RT_NB + 1];
        double sum;
        hist_copy(ttfb ? &rt->eng[i].ttfb : &rt->eng[i].lat, b, &sum);
        struct kv_prom_label l = {"server", rt->eng[i].url};
        kv_prom_hist(p, &l, 1, rt_hist_le, b, RT_NB, sum);
    }
}

/* The gateway's view of each engine as the router mirrors it (engines with a known state). */
static void mirror(struct kv_prom *p, struct kv_router *rt)
{
    int n = rt_nengines(rt);
    struct kv_rt_estate *st = kv_calloc(n ? (size_t)n : 1, sizeof(*st));
    if (!st) {
        kv_prom_one(p, "kvstash_router_engines", KV_PROM_GAUGE, "Engines known.", n);
        return;
    }
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n; i++)
        st[i] = rt->eng[i].est;
    pthread_mutex_unlock(&rt->mu);
    kv_prom_family(p, "kvstash_router_engine_predicted_latency_seconds", KV_PROM_GAUGE,
                   "Latency the engine last predicted (gateway state; elrar policy).");
    for (int i = 0; i < n; i++) {
        struct kv_prom_label l = {"server", rt->eng[i].url};
        if (st[i].known)
            kv_prom_sample(p, &l, 1, st[i].latency_pred_ms / 1000.0);
    }
    kv_prom_family(p, "kvstash_router_engine_pending_tokens", KV_PROM_GAUGE,
                   "Tokens pending on the engine as last reported (gateway state).");
    for (int i = 0; i < n; i++) {
        struct kv_prom_label l = {"server", rt->eng[i].url};
        if (st[i].known && st[i].pending_tokens >= 0)
            kv_prom_sample(p, &l, 1, (double)st[i].pending_tokens);
    }
    kv_prom_family(p, "kvstash_router_engine_state_fresh", KV_PROM_GAUGE,
                   "1 if the engine's gateway state is within the stale threshold.");
    for (int i = 0; i < n; i++) {
        struct kv_prom_label l = {"server", rt->eng[i].url};
        if (st[i].known)
            kv_prom_sample(p, &l, 1, st[i].fresh);
    }
    kv_free(st);
}

int rt_metrics_body(struct kv_router *rt, struct kv_buf *out)
{
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    kv_prom_one(&p, "kvstash_router_engines", KV_PROM_GAUGE, "Engines known (removed included).",
                rt_nengines(rt));
    per_engine(&p, rt, "kvstash_router_engine_requests_running", KV_PROM_GAUGE,
               "Requests in flight through the router to the engine.", 0);
    per_engine(&p, rt, "kvstash_router_engine_requests_per_second", KV_PROM_GAUGE,
               "Requests per second sent to the engine over the last health interval.", 1);
    per_engine(&p, rt, "kvstash_router_engine_healthy", KV_PROM_GAUGE,
               "1 if the engine is in rotation.", 2);
    per_engine(&p, rt, "kvstash_router_requests_total", KV_PROM_COUNTER,
               "Requests sent to the engine (retries included).", 3);
    per_engine(&p, rt, "kvstash_router_errors_total", KV_PROM_COUNTER,
               "Failed upstream requests (connection errors, timeouts, 5xx).", 4);
    per_engine(&p, rt, "kvstash_router_failovers_total", KV_PROM_COUNTER,
               "Requests retried on another engine after this one failed.", 5);
    hist_family(&p, rt, "kvstash_router_request_latency_seconds",
                "End-to-end latency of proxied requests.", false);
    hist_family(&p, rt, "kvstash_router_time_to_first_byte_seconds",
                "Time from sending a request to its first response byte.", true);
    mirror(&p, rt);
    kv_prom_one(&p, "kvstash_router_client_requests_total", KV_PROM_COUNTER,
                "Client requests received.", (double)ld(&rt->c_requests));
    kv_prom_family(&p, "kvstash_router_rejected_total", KV_PROM_COUNTER,
                   "Client requests answered by the router itself, by reason.");
    const struct {
        const char *reason;
        _Atomic uint64_t *v;
    } rej[] = {{"bad_request", &rt->c_bad},
               {"unknown_model", &rt->c_nomodel},
               {"no_healthy_engine", &rt->c_noengine},
               {"upstream_failed", &rt->c_upstream_fail}};
    for (size_t i = 0; i < KV_ARRAY_SIZE(rej); i++) {
        struct kv_prom_label l = {"reason", rej[i].reason};
        kv_prom_sample(&p, &l, 1, (double)ld(rej[i].v));
    }
    kv_prom_one(&p, "kvstash_router_upstream_timeouts_total", KV_PROM_COUNTER,
                "Upstream requests that timed out.", (double)ld(&rt->c_timeouts));
    kv_prom_one(&p, "kvstash_router_stale_retries_total", KV_PROM_COUNTER,
                "Requests resent on a new connection because the engine had closed the pooled "
                "one.",
                (double)ld(&rt->c_stale_retries));
    kv_prom_process(&p);
    int rc = kv_prom_end(&p);
    if (rc < 0) {
        kv_buf_fini(&b);
        return rc;
    }
    kv_buf_fini(out);
    *out = b;
    return KV_OK;
}

int rt_metrics_vllm_body(struct kv_router *rt, struct kv_buf *out)
{
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    p.lax = true; /* vllm:healthy_pods_total is a gauge under that name in the vLLM router */
    per_engine(&p, rt, "vllm:num_requests_running", KV_PROM_GAUGE,
               "Requests in flight through the router", 0);
    per_engine(&p, rt, "vllm:current_qps", KV_PROM_GAUGE,
               "Requests per second sent to the engine (last interval)", 1);
    per_engine(&p, rt, "vllm:avg_latency", KV_PROM_GAUGE,
               "Average end-to-end latency in seconds (since start)", 6);
    per_engine(&p, rt, "vllm:healthy_pods_total", KV_PROM_GAUGE, "1 if the engine is in rotation",
               2);
    int rc = kv_prom_end(&p);
    if (rc < 0) {
        kv_buf_fini(&b);
        return rc;
    }
    kv_buf_fini(out);
    *out = b;
    return KV_OK;
}

static json_t *hist_json(struct rt_hist *h)
{
    uint64_t b[RT_NB + 1];
    double sum;
    hist_copy(h, b, &sum);
    json_t *a = json_array();
    for (int i = 0; a && i <= RT_NB; i++)
        json_array_append_new(a, json_integer((json_int_t)b[i]));
    return json_pack("{s:o*, s:f}", "buckets", a, "sum", sum);
}

int rt_status_body(struct kv_router *rt, struct kv_buf *out)
{
    static const char *const policies[] = {"roundrobin", "session", "least-loaded", "prefix",
                                           "elrar"};
    const char *policy =
        (unsigned)rt->policy < KV_ARRAY_SIZE(policies) ? policies[rt->policy] : "?";
    int n = rt_nengines(rt);
    struct kv_rt_estate *st = kv_calloc(n ? (size_t)n : 1, sizeof(*st));
    struct kv_gateway_engine *ge = NULL;
    size_t ng = 0;
    json_t *root = json_object(), *engines = json_array(), *le = json_array();
    int rc = KV_ENOMEM;
    if (!st || !root || !engines || !le) {
        json_decref(engines);
        json_decref(le);
        goto out;
    }
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < n; i++)
        st[i] = rt->eng[i].est;
    pthread_mutex_unlock(&rt->mu);
    if (rt->gw && kv_gateway_engines(rt->gw, &ge, &ng) < 0)
        ng = 0;
    for (int i = 0; i < RT_NB; i++)
        json_array_append_new(le, json_real(rt_hist_le[i]));
    for (int i = 0; i < n; i++) {
        struct rt_engine *e = &rt->eng[i];
        json_t *j = json_pack(
            "{s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:f, s:o*}", "url", e->url, "healthy",
            atomic_load(&e->healthy) != 0, "removed", atomic_load(&e->removed) != 0, "inflight",
            (json_int_t)atomic_load(&e->inflight), "requests", (json_int_t)ld(&e->requests),
            "errors", (json_int_t)ld(&e->errors), "failovers", (json_int_t)ld(&e->failovers), "qps",
            (double)atomic_load(&e->qps_milli) / 1000.0, "latency", hist_json(&e->lat));
        if (!j)
            continue;
        if (st[i].known) {
            json_t *g = json_pack("{s:b, s:f, s:s, s:I}", "fresh", st[i].fresh, "latency_pred_ms",
                                  st[i].latency_pred_ms, "mode", st[i].mode, "pending_tokens",
                                  (json_int_t)st[i].pending_tokens);
            for (size_t k = 0; g && k < ng; k++) {
                if (strcmp(ge[k].state.engine_id, e->gid) != 0)
                    continue;
                json_object_set_new(g, "kv_free_blocks",
                                    json_integer(ge[k].state.kv_cache_free_blocks));
                json_object_set_new(g, "kv_total_blocks",
                                    json_integer(ge[k].state.kv_cache_total_blocks));
            }
            json_object_set_new(j, "gateway", g ? g : json_null());
        } else {
            json_object_set_new(j, "gateway", json_null());
        }
        json_array_append_new(engines, j);
    }
    json_object_set_new(root, "time_ms", json_integer((json_int_t)kv_wall_ms()));
    json_object_set_new(root, "policy", json_string(policy));
    json_object_set_new(root, "client_requests", json_integer((json_int_t)ld(&rt->c_requests)));
    json_object_set_new(root, "rejected",
                        json_integer((json_int_t)(ld(&rt->c_bad) + ld(&rt->c_nomodel) +
                                                  ld(&rt->c_noengine) + ld(&rt->c_upstream_fail))));
    json_object_set_new(root, "le", le);
    json_object_set_new(root, "engines", engines);
    char *s = kv_json_dump(root);
    rc = s ? kv_buf_appends(out, s) : KV_ENOMEM;
    kv_free(s);
out:
    kv_gateway_free(ge);
    json_decref(root);
    kv_free(st);
    return rc;
}
