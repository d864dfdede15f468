/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_http.c - the gateway's HTTP query API on libevent's evhttp: GET /stats, /engines,
 * /engines/{id}, /engines/{id}/history, /health, /metrics (Prometheus text). Everything is JSON
 * except /metrics; unknown paths get 404 and other methods 405, both with a JSON error body.
 *
 * Thread model: one thread ("gw-http") runs its own event_base; handlers copy what they need
 * under the gateway's lock (a leaf lock, held only while copying) and format outside it.
 * Stopping: an eventfd registered in the base; writing it breaks the loop from inside, so no
 * libevent locking is needed.
 */
#define KV_LOG_COMPONENT "gateway"
#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <stdio.h>
#include <math.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/net.h"
#include "common/prom.h"
#include "common/util.h"
#include "gateway/gw_int.h"

struct gw_http {
    struct kv_gateway *g;
    struct event_base *base;
    struct evhttp *http;
    struct event *stop_ev;
    int stop_fd;
    pthread_t thr;
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
    struct evbuffer *out = evbuffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(body);
    if (!out || !text) {
        if (out)
            evbuffer_free(out);
        kv_free(text);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(out, text, strlen(text));
    evbuffer_add(out, "\n", 1);
    kv_free(text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, reason, out);
    evbuffer_free(out);
}

static void reply_error(struct evhttp_request *req, int code, const char *reason, const char *msg)
{
    reply_json(req, code, reason, json_pack("{s:s}", "error", msg));
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

static void do_health(struct gw_http *h, struct evhttp_request *req)
{
    struct kv_gateway_stats s;
    kv_gateway_stats(h->g, &s);
    reply_json(req, 200, "OK",
               json_pack("{s:s, s:I, s:I}", "status", "ok", "active_engines",
                         (json_int_t)s.active_engines, "total_engines",
                         (json_int_t)s.total_engines));
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
    struct evbuffer *out = evbuffer_new();
    if (!out || kv_prom_end(&p) < 0 || !b.data) {
        if (out)
            evbuffer_free(out);
        kv_buf_fini(&b);
        evhttp_send_error(req, 500, "metrics page not written (see the log)");
        return;
    }
    evbuffer_add(out, b.data, b.len);
    kv_buf_fini(&b);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void handle(struct evhttp_request *req, void *arg)
{
    struct gw_http *h = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "Method Not Allowed", "only GET is supported");
        return;
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path)
        path = "/";
    if (strcmp(path, "/stats") == 0) {
        do_stats(h, req);
    } else if (strcmp(path, "/engines") == 0 || strcmp(path, "/engines/") == 0) {
        do_engines(h, req);
    } else if (strcmp(path, "/health") == 0) {
        do_health(h, req);
    } else if (strcmp(path, "/metrics") == 0) {
        do_metrics(h, req);
    } else if (kv_startswith(path, "/engines/")) {
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
        do_engine(h, req, id, hist);
        curl_free(id);
    } else {
        reply_error(req, 404, "Not Found",
                    "no such endpoint (try /stats, /engines, /engines/{id}, "
                    "/engines/{id}/history, /health, /metrics)");
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_http *h = arg;
    event_base_loopbreak(h->base);
}

static void *http_main(void *arg)
{
    struct gw_http *h = arg;
    kv_log_set_thread_name("gw-http");
    event_base_dispatch(h->base);
    return NULL;
}

int gw_http_start(struct kv_gateway *g, const char *addr, struct gw_http **out, uint16_t *port,
                  char *err, size_t errlen)
{
    char host[256];
    uint16_t p;
    if (kv_parse_hostport(addr, host, sizeof(host), &p) < 0) {
        if (err)
            snprintf(err, errlen, "bad HTTP address '%s' (want HOST:PORT)", addr);
        return KV_EINVAL;
    }
    struct gw_http *h = kv_calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    h->g = g;
    h->stop_fd = -1;
    int fd = -1;
    errno = 0;
    int rc = kv_net_listen_tcp(host, p, 128, &fd, port);
    if (rc < 0) {
        int e = errno; /* the bind/listen failure's errno survives the helper's close() */
        if (err)
            snprintf(err, errlen, "cannot listen on HTTP %s: %s", addr,
                     e ? strerror(e) : kv_strerror(rc));
        if (e == EADDRINUSE)
            rc = KV_EBUSY;
        goto out_free;
    }
    kv_net_set_nonblock(fd, 1);
    rc = KV_ENOMEM;
    h->base = event_base_new();
    if (!h->base)
        goto out_fd;
    h->http = evhttp_new(h->base);
    if (!h->http)
        goto out_base;
    evhttp_set_gencb(h->http, handle, h);
    evhttp_set_timeout(h->http, 30);
    evhttp_set_max_body_size(h->http, 4096); /* GET only: a body is never needed */
    evhttp_set_max_headers_size(h->http, 16384);
    if (!evhttp_accept_socket_with_handle(h->http, fd))
        goto out_http;
    fd = -1; /* owned by evhttp now */
    h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->stop_fd < 0)
        goto out_http;
    h->stop_ev = event_new(h->base, h->stop_fd, EV_READ | EV_PERSIST, on_stop, h);
    if (!h->stop_ev || event_add(h->stop_ev, NULL) != 0)
        goto out_ev;
    if (pthread_create(&h->thr, NULL, http_main, h) != 0) {
        rc = KV_EAGAIN;
        goto out_ev;
    }
    *out = h;
    return KV_OK;
out_ev:
    if (h->stop_ev)
        event_free(h->stop_ev);
    close(h->stop_fd);
out_http:
    evhttp_free(h->http);
out_base:
    event_base_free(h->base);
out_fd:
    if (fd >= 0)
        close(fd);
out_free:
    kv_free(h);
    return rc;
}

void gw_http_stop(struct gw_http *h)
{
    if (!h)
        return;
    uint64_t one = 1;
    ssize_t w = write(h->stop_fd, &one, sizeof(one));
    (void)w;
    pthread_join(h->thr, NULL);
    event_free(h->stop_ev);
    evhttp_free(h->http);
    event_base_free(h->base);
    close(h->stop_fd);
    kv_free(h);
}
