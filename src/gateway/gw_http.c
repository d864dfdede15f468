/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_http.c - the gateway's HTTP query API on the shared admin server (common/admin_http.h):
 * GET /stats, /engines, /engines/{id}, /engines/{id}/history, /health, /ready, /metrics
 * (Prometheus text). Everything is JSON except /metrics; unknown paths get 404 and other
 * methods 405, both with a JSON error body.
 *
 * Liveness (/health): 200 while the UDP receive thread runs, 503 once it has exited (it only
 * exits at stop or on an unrecoverable receive error). Readiness (/ready): the UDP socket is
 * bound and the receive thread runs; the document names the port and the receive path.
 *
 * Thread model: one thread ("gw-http") runs the admin server's event_base; handlers copy what
 * they need under the gateway's lock (a leaf lock, held only while copying) and format outside
 * it.
 */
#define KV_LOG_COMPONENT "gateway"
#include <curl/curl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <stdio.h>
#include <math.h>
#include <string.h>

#include "common/admin_http.h"
#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/net.h"
#include "common/prom.h"
#include "common/util.h"
#include "gateway/gw_int.h"

struct gw_http {
    struct kv_gateway *g;
    struct kv_admin_http *srv;
};

static json_t *state_json(const struct kv_gateway_state *s)
{
    json_t *o = json_pack(
        "{s:s, s:I, s:f, s:s, s:I, s:I, s:I, s:f}", "engine_id", s->engine_id, "timestamp_ms",
        (json_int_t)s->timestamp_ms, "latency_pred_ms", s->latency_pred_ms, "scheduling_mode",
        s->scheduling_mode, "pending_tokens_total", (json_int_t)s->pending_tokens_total,
        "kv_cache_free_blocks", (json_int_t)s->kv_cache_free_blocks, "kv_cache_total_blocks",
        (json_int_t)s->kv_cache_total_blocks, "engine_capacity", s->engine_capacity);
    if (o && s->seq >= 0)
        json_object_set_new(o, "seq", json_integer((json_int_t)s->seq));
    return o;
}

static json_t *engine_json(const struct kv_gateway_engine *e)
{
    json_t *o = json_pack("{s:s, s:b, s:I, s:b, s:I, s:f, s:I, s:I}", "engine_id",
                          e->state.engine_id, "fresh", e->fresh, "age_ms", (json_int_t)e->age_ms,
                          "load_known", e->load_known, "load_age_ms", (json_int_t)e->load_age_ms,
                          "last_seen", (double)e->last_seen_wall_ms / 1000.0, "states",
                          (json_int_t)e->states, "heartbeats", (json_int_t)e->heartbeats);
    if (o)
        json_object_set_new(o, "state", state_json(&e->state));
    return o;
}

static void reply_json(struct evhttp_request *req, int code, const char *reason, json_t *body)
{
    (void)reason;
    kv_admin_reply_json(req, code, body);
}

static void reply_error(struct evhttp_request *req, int code, const char *reason, const char *msg)
{
    (void)reason;
    kv_admin_reply_error(req, code, "%s", msg);
}

static void do_stats(struct gw_http *h, struct evhttp_request *req)
{
    struct kv_gateway *g = h->g;
    struct kv_gateway_stats s;
    kv_gateway_stats(g, &s);
    json_t *by = json_object();
    for (int r = 1; r < KV_GW_REASON_COUNT; r++)
        json_object_set_new(by, kv_gateway_reason_name(r),
                            json_integer((json_int_t)s.invalid_by_reason[r]));
    json_t *o = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:o, s:s, s:s, s:i, s:I, s:I, s:I, s:f, s:o}", "total_received",
        (json_int_t)s.total_received, "valid_states", (json_int_t)s.valid_states, "invalid_states",
        (json_int_t)s.invalid_states, "unicast_received", (json_int_t)s.unicast_received,
        "broadcast_received", (json_int_t)s.broadcast_received, "last_received",
        s.last_received_wall_ms ? json_real((double)s.last_received_wall_ms / 1000.0) : json_null(),
        "network_mode", g->network_mode, "bind_address", g->o.bind_address, "udp_port",
        (int)g->udp_port, "stale_threshold_ms", (json_int_t)g->o.stale_threshold_ms,
        "active_engines", (json_int_t)s.active_engines, "total_engines",
        (json_int_t)s.total_engines, "valid_rate",
        s.total_received ? (double)s.valid_states / (double)s.total_received : 0.0,
        "invalid_by_reason", by);
    if (o) {
        json_object_set_new(o, "heartbeats", json_integer((json_int_t)s.heartbeats));
        json_object_set_new(o, "engines_removed", json_integer((json_int_t)s.engines_removed));
        json_object_set_new(o, "recv_calls", json_integer((json_int_t)s.recv_calls));
        json_object_set_new(o, "log_lines", json_integer((json_int_t)s.log_lines));
        json_object_set_new(o, "log_dropped", json_integer((json_int_t)s.log_dropped));
        json_object_set_new(o, "log_errors", json_integer((json_int_t)s.log_errors));
        json_object_set_new(o, "log_rotations", json_integer((json_int_t)s.log_rotations));
    }
    reply_json(req, 200, "OK", o);
}

static bool query_flag(struct evhttp_request *req, const char *key)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (!q)
        return false;
    struct evkeyvalq kv;
    TAILQ_INIT(&kv);
    if (evhttp_parse_query_str(q, &kv) != 0)
        return false;
    const char *v = evhttp_find_header(&kv, key);
    bool b = false;
    bool on = v && (kv_parse_bool(v, &b) == KV_OK ? b : true);
    evhttp_clear_headers(&kv);
    return on;
}

static void do_engines(struct gw_http *h, struct evhttp_request *req)
{
    struct kv_gateway_engine *arr;
    size_t n;
    if (kv_gateway_engines(h->g, &arr, &n) < 0) {
        reply_error(req, 500, "Internal Server Error", "out of memory");
        return;
    }
    bool fresh_only = query_flag(req, "fresh");
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        if (!fresh_only || arr[i].fresh)
            json_array_append_new(list, engine_json(&arr[i]));
    kv_gateway_free(arr);
    json_t *o =
        json_pack("{s:I, s:I, s:o}", "count", (json_int_t)json_array_size(list),
                  "stale_threshold_ms", (json_int_t)h->g->o.stale_threshold_ms, "engines", list);
    reply_json(req, 200, "OK", o);
}

static void do_engine(struct gw_http *h, struct evhttp_request *req, const char *id, bool hist)
{
    if (!hist) {
        struct kv_gateway_engine e;
        if (kv_gateway_engine_get(h->g, id, &e) < 0) {
            reply_error(req, 404, "Not Found", "unknown engine");
            return;
        }
        reply_json(req, 200, "OK", engine_json(&e));
        return;
    }
    struct kv_gateway_history_entry *arr;
    size_t n;
    int rc = kv_gateway_history(h->g, id, &arr, &n);
    if (rc < 0) {
        reply_error(req, rc == KV_ENOENT ? 404 : 500,
                    rc == KV_ENOENT ? "Not Found" : "Internal Server Error",
                    rc == KV_ENOENT ? "unknown engine" : kv_strerror(rc));
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            list, json_pack("{s:f, s:b, s:o}", "timestamp", (double)arr[i].recv_wall_ms / 1000.0,
                            "heartbeat", arr[i].heartbeat, "state", state_json(&arr[i].state)));
    kv_gateway_free(arr);
    reply_json(req, 200, "OK",
               json_pack("{s:s, s:I, s:o}", "engine_id", id, "count",
                         (json_int_t)json_array_size(list), "history", list));
}

static bool on_live(void *ud, json_t *doc, char *why, size_t whylen)
{
    struct gw_http *h = ud;
    struct kv_gateway_stats st;
    kv_gateway_stats(h->g, &st);
    json_object_set_new(doc, "active_engines", json_integer((json_int_t)st.active_engines));
    json_object_set_new(doc, "total_engines", json_integer((json_int_t)st.total_engines));
    if (!atomic_load(&h->g->udp_running)) {
        snprintf(why, whylen, "the UDP receive thread has exited");
        return false;
    }
    return true;
}

static bool on_ready(void *ud, json_t *doc, char *reason, size_t reasonlen)
{
    struct gw_http *h = ud;
    json_object_set_new(doc, "udp_port", json_integer(h->g->udp_port));
    json_object_set_new(doc, "receive_path",
                        json_string(atomic_load(&h->g->udp_io_uring) ? "io_uring" : "recvmmsg"));
    if (h->g->udp_fd < 0) {
        snprintf(reason, reasonlen, "UDP socket not bound");
        return false;
    }
    if (!atomic_load(&h->g->udp_running)) {
        snprintf(reason, reasonlen, "the UDP receive thread is not running");
        return false;
    }
    return true;
}

static void metric(struct kv_prom *p, const char *name, enum kv_prom_type type, const char *help,
                   uint64_t v)
{
    kv_prom_one(p, name, type, help, (double)v);
}

/* One per-engine gauge: value(e) for every engine, left out where it returns NAN (unknown). */
static double eng_value(const struct kv_gateway_engine *e, int m)
{
    const struct kv_gateway_state *st = &e->state;
    switch (m) {
    case 0:
        return e->fresh;
    case 1:
        return (double)e->age_ms / 1000.0;
    case 2:
        return st->latency_pred_ms >= 0 ? st->latency_pred_ms / 1000.0 : NAN;
    case 3:
        return (double)st->pending_tokens_total;
    case 4:
        return (double)st->kv_cache_free_blocks;
    case 5:
        return (double)st->kv_cache_total_blocks;
    case 6:
        return st->kv_cache_total_blocks > 0 && st->kv_cache_free_blocks >= 0
                   ? 1.0 - (double)st->kv_cache_free_blocks / (double)st->kv_cache_total_blocks
                   : NAN;
    default:
        return st->engine_capacity;
    }
}

static void do_metrics(struct gw_http *h, struct evhttp_request *req)
{
    struct kv_gateway_stats s;
    kv_gateway_stats(h->g, &s);
    struct kv_gateway_engine *arr = NULL;
    size_t n = 0;
    kv_gateway_engines(h->g, &arr, &n);
    struct kv_buf b;
    kv_buf_init(&b);
    struct kv_prom p;
    kv_prom_init(&p, &b);
    metric(&p, "kvstash_gateway_received_total", KV_PROM_COUNTER, "Datagrams received.",
           s.total_received);
    metric(&p, "kvstash_gateway_unicast_received_total", KV_PROM_COUNTER,
           "Datagrams received on a unicast address.", s.unicast_received);
    metric(&p, "kvstash_gateway_broadcast_received_total", KV_PROM_COUNTER,
           "Datagrams received on a broadcast address.", s.broadcast_received);
    metric(&p, "kvstash_gateway_valid_states_total", KV_PROM_COUNTER, "Valid states ingested.",
           s.valid_states);
    kv_prom_family(&p, "kvstash_gateway_invalid_states_total", KV_PROM_COUNTER,
                   "Datagrams rejected, by reason.");
    for (int r = 1; r < KV_GW_REASON_COUNT; r++) {
        struct kv_prom_label l = {"reason", kv_gateway_reason_name(r)};
        kv_prom_sample(&p, &l, 1, (double)s.invalid_by_reason[r]);
    }
    metric(&p, "kvstash_gateway_heartbeats_total", KV_PROM_COUNTER, "Heartbeat states ingested.",
           s.heartbeats);
    metric(&p, "kvstash_gateway_recv_calls_total", KV_PROM_COUNTER,
           "receive rounds (recvmmsg calls or io_uring reaps) that returned datagrams.",
           s.recv_calls);
    metric(&p, "kvstash_gateway_active_engines", KV_PROM_GAUGE, "Engines with a fresh state.",
           s.active_engines);
    metric(&p, "kvstash_gateway_engines", KV_PROM_GAUGE, "Engines known.", s.total_engines);
    metric(&p, "kvstash_gateway_engines_removed_total", KV_PROM_COUNTER,
           "Engines removed after a long silence.", s.engines_removed);
    metric(&p, "kvstash_gateway_log_lines_total", KV_PROM_COUNTER,
           "Lines written to the JSONL log.", s.log_lines);
    metric(&p, "kvstash_gateway_log_dropped_total", KV_PROM_COUNTER,
           "Log lines dropped because the writer fell behind.", s.log_dropped);
    metric(&p, "kvstash_gateway_log_errors_total", KV_PROM_COUNTER, "Log open/write failures.",
           s.log_errors);
    metric(&p, "kvstash_gateway_log_rotations_total", KV_PROM_COUNTER, "Log rotations.",
           s.log_rotations);
    static const struct {
        const char *name, *help;
    } per[] = {
        {"kvstash_gateway_engine_fresh", "1 if the engine's last state is fresh."},
        {"kvstash_gateway_engine_age_seconds", "Seconds since the engine's last state."},
        {"kvstash_gateway_engine_predicted_latency_seconds",
         "Predicted latency reported (absent when unknown)."},
        {"kvstash_gateway_engine_pending_tokens", "Pending tokens reported (-1 unknown)."},
        {"kvstash_gateway_engine_kv_cache_free_blocks", "Free KV blocks (-1 unknown)."},
        {"kvstash_gateway_engine_kv_cache_total_blocks", "Total KV blocks (-1 unknown)."},
        {"kvstash_gateway_engine_kv_cache_usage_ratio",
         "Share of the KV blocks in use, 0..1 (absent when unknown)."},
        {"kvstash_gateway_engine_capacity", "Engine capacity reported."},
    };
    for (size_t m = 0; m < KV_ARRAY_SIZE(per) && n > 0; m++) {
        kv_prom_family(&p, per[m].name, KV_PROM_GAUGE, per[m].help);
        for (size_t i = 0; i < n; i++) {
            double v = eng_value(&arr[i], (int)m);
            struct kv_prom_label l = {"engine_id", arr[i].state.engine_id};
            if (!isnan(v))
                kv_prom_sample(&p, &l, 1, v);
        }
    }
    kv_prom_process(&p);
    kv_gateway_free(arr);
    if (kv_prom_end(&p) < 0 || !b.data)
        kv_admin_reply_error(req, 500, "metrics page not written (see the log)");
    else
        kv_admin_reply(req, 200, "text/plain; version=0.0.4", b.data, b.len);
    kv_buf_fini(&b);
}

static void h_stats(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    do_stats(ud, req);
}

static void h_engines(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    do_engines(ud, req);
}

static void h_metrics(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    do_metrics(ud, req);
}

/* /engines/{id} and /engines/{id}/history (id percent-encoded). */
static void h_engine(struct evhttp_request *req, const char *path, void *ud)
{
    const char *rest = path + strlen("/engines/");
    size_t len = strlen(rest);
    bool hist = false;
    const char *suffix = "/history";
    if (len > strlen(suffix) && strcmp(rest + len - strlen(suffix), suffix) == 0) {
        hist = true;
        len -= strlen(suffix);
    }
    int idlen = 0;
    char *id = curl_easy_unescape(NULL, rest, (int)len, &idlen);
    if (!id || idlen <= 0 || (size_t)idlen != strlen(id)) {
        curl_free(id);
        reply_error(req, 400, "Bad Request", "bad engine id in path");
        return;
    }
    do_engine(ud, req, id, hist);
    curl_free(id);
}

int gw_http_start(struct kv_gateway *g, const char *addr, struct gw_http **out, uint16_t *port,
                  char *err, size_t errlen)
{
    struct gw_http *h = kv_calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    h->g = g;
    struct kv_admin_http_opts o = {.addr = addr,
                                   .thread_name = "gw-http",
                                   .max_body = 4096, /* GET only: a body is never needed */
                                   .live = on_live,
                                   .ready = on_ready,
                                   .ud = h};
    int rc = kv_admin_http_create(&o, &h->srv, err, errlen);
    if (rc < 0)
        goto out_free;
    const unsigned get = KV_ADMIN_GET | KV_ADMIN_HEAD;
    if (kv_admin_http_route(h->srv, "/stats", 0, get, h_stats, h) < 0 ||
        kv_admin_http_route(h->srv, "/engines", 0, get, h_engines, h) < 0 ||
        kv_admin_http_route(h->srv, "/engines/", 0, get, h_engines, h) < 0 ||
        kv_admin_http_route(h->srv, "/engines/", KV_ADMIN_PREFIX, get, h_engine, h) < 0 ||
        kv_admin_http_route(h->srv, "/metrics", 0, get, h_metrics, h) < 0) {
        rc = KV_ENOMEM;
        goto out_srv;
    }
    rc = kv_admin_http_start(h->srv);
    if (rc < 0)
        goto out_srv;
    *port = kv_admin_http_port(h->srv);
    *out = h;
    return KV_OK;
out_srv:
    kv_admin_http_destroy(h->srv);
out_free:
    kv_free(h);
    return rc;
}

void gw_http_stop(struct gw_http *h)
{
    if (!h)
        return;
    kv_admin_http_destroy(h->srv);
    kv_free(h);
}
