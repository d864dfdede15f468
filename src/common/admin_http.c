/* SPDX-License-Identifier: Apache-2.0 */
/*
 * admin_http.c - the shared admin HTTP server (API and routing rules in admin_http.h).
 *
 * Design: one evhttp on either an own event_base run by one thread, or the caller's base. Every
 * request goes to dispatch(): the URI's path is matched against the route table (exact routes,
 * then the longest prefix route); the handler runs outside the table's lock. /health and /ready
 * are ordinary exact routes whose handlers call the daemon's live/ready callbacks.
 *
 * Invariants:
 *  1. routes[0..nroutes) have distinct (path, prefix) pairs; a route is never removed, so an
 *     index returned by kv_admin_http_match stays valid (its fn/ud may be replaced).
 *  2. With an own thread, the loop is stopped (stop_ev) and joined before evhttp_free.
 *
 * Thread model: see admin_http.h. Lock: h->lock guards routes/nroutes/cap; leaf.
 */
#define KV_LOG_COMPONENT "admin"
#include "common/admin_http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/err.h"

struct route {
    char *path;
    size_t len;
    bool prefix;
    unsigned methods;
    kv_admin_handler fn;
    void *ud;
};

struct kv_admin_http {
    struct kv_admin_http_opts o;
    char thread_name[32];
    struct event_base *base;
    bool own_base;
    struct evhttp *http;
    struct event *stop_ev;
    pthread_t thr;
    bool running;
    uint16_t port;

    pthread_mutex_t lock; /* guards routes, nroutes, cap; leaf */
    struct route *routes;
    size_t nroutes, cap;
};

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static atomic_int evthread_rc;
static void evthread_init(void)
{
    atomic_store(&evthread_rc, evthread_use_pthreads());
}

const char *kv_admin_status_text(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 413:
        return "Payload Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* ---- replies ---- */

void kv_admin_reply(struct evhttp_request *req, int code, const char *ctype, const void *body,
                    size_t len)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    if (len && evbuffer_add(b, body, len) != 0) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, kv_admin_status_text(code), NULL);
}

void kv_admin_reply_json_text(struct evhttp_request *req, int code, const char *json)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    if (evbuffer_add(b, json, strlen(json)) != 0 || evbuffer_add(b, "\n", 1) != 0) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, kv_admin_status_text(code), NULL);
}

void kv_admin_reply_json(struct evhttp_request *req, int code, json_t *doc)
{
    char *s = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(doc);
    if (!s) {
        kv_admin_reply_json_text(req, 500, "{\"error\":\"out of memory\"}");
        return;
    }
    kv_admin_reply_json_text(req, code, s);
    kv_free(s); /* jansson allocates through kv_malloc (common/json.c) */
}

void kv_admin_reply_text(struct evhttp_request *req, int code, const char *text)
{
    kv_admin_reply(req, code, "text/plain; charset=utf-8", text, strlen(text));
}

void kv_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kv_admin_reply_json(req, code, json_pack("{s:s}", "error", msg));
}

/* ---- built-in routes ---- */

static void do_health(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    struct kv_admin_http *h = ud;
    json_t *doc = json_object();
    char why[256] = "";
    bool live = !h->o.live || h->o.live(h->o.ud, doc, why, sizeof(why));
    if (!doc) {
        kv_admin_reply_json(req, 500, NULL);
        return;
    }
    json_object_set_new(doc, "status", json_string(live ? "ok" : "unavailable"));
    if (!live)
        json_object_set_new(doc, "reason", json_string(why[0] ? why : "not live"));
    kv_admin_reply_json(req, live ? 200 : 503, doc);
}

static void do_ready(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    struct kv_admin_http *h = ud;
    json_t *doc = json_object();
    char reason[512] = "";
    bool ready = !h->o.ready || h->o.ready(h->o.ud, doc, reason, sizeof(reason));
    if (!doc) {
        kv_admin_reply_json(req, 500, NULL);
        return;
    }
    json_object_set_new(doc, "ready", json_boolean(ready));
    if (!ready)
        json_object_set_new(doc, "reason", json_string(reason[0] ? reason : "not ready"));
    kv_admin_reply_json(req, ready ? 200 : 503, doc);
}

/* ---- routing ---- */

int kv_admin_http_route(struct kv_admin_http *h, const char *path, unsigned flags, unsigned methods,
                        kv_admin_handler fn, void *ud)
{
    if (!h || !path || path[0] != '/' || !fn)
        return KV_EINVAL;
    bool prefix = (flags & KV_ADMIN_PREFIX) != 0;
    if (!methods)
        methods = KV_ADMIN_GET | KV_ADMIN_HEAD;
    int rc = KV_OK;
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->nroutes; i++) {
        struct route *r = &h->routes[i];
        if (r->prefix == prefix && strcmp(r->path, path) == 0) {
            r->methods = methods;
            r->fn = fn;
            r->ud = ud;
            goto out;
        }
    }
    if (h->nroutes == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        struct route *nr = kv_realloc(h->routes, cap * sizeof(*nr));
        if (!nr) {
            rc = KV_ENOMEM;
            goto out;
        }
        h->routes = nr;
        h->cap = cap;
    }
    char *p = kv_strdup(path);
    if (!p) {
        rc = KV_ENOMEM;
        goto out;
    }
    h->routes[h->nroutes++] = (struct route){
        .path = p, .len = strlen(p), .prefix = prefix, .methods = methods, .fn = fn, .ud = ud};
out:
    pthread_mutex_unlock(&h->lock);
    return rc;
}

/* The path of a request-line URI ("/a/b?x=1#f" -> "/a/b"); KV_EINVAL if it is not an origin
 * form path (must start with '/', no control bytes or spaces). */
static int uri_path(const char *uri, char *path, size_t pathlen)
{
    if (!uri || uri[0] != '/')
        return KV_EINVAL;
    size_t n = strcspn(uri, "?#");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)uri[i];
        if (c <= 0x20 || c == 0x7f)
            return KV_EINVAL;
    }
    if (n >= pathlen)
        return KV_E2BIG;
    memcpy(path, uri, n);
    path[n] = '\0';
    return KV_OK;
}

/* Index of the route for path, or -1; *methods gets its mask. Caller holds h->lock. */
static int find_route(const struct kv_admin_http *h, const char *path, unsigned *methods)
{
    int best = -1;
    size_t best_len = 0;
    for (size_t i = 0; i < h->nroutes; i++) {
        const struct route *r = &h->routes[i];
        if (!r->prefix) {
            if (strcmp(r->path, path) == 0) {
                best = (int)i;
                break;
            }
        } else if (strncmp(r->path, path, r->len) == 0 && (best < 0 || r->len > best_len)) {
            best = (int)i;
            best_len = r->len;
        }
    }
    if (best >= 0)
        *methods = h->routes[best].methods;
    return best;
}

int kv_admin_http_match(struct kv_admin_http *h, unsigned method, const char *uri, char *path,
                        size_t pathlen)
{
    char buf[2048];
    if (uri_path(uri, buf, sizeof(buf)) < 0)
        return -400;
    unsigned methods = 0;
    pthread_mutex_lock(&h->lock);
    int i = find_route(h, buf, &methods);
    pthread_mutex_unlock(&h->lock);
    if (path && pathlen)
        snprintf(path, pathlen, "%s", buf);
    if (i < 0)
        return -404;
    if (!(methods & method))
        return -405;
    return i;
}

/* "/health, /ready, /metrics" (exact routes, then prefixes with a trailing '*'). */
static void known_paths(struct kv_admin_http *h, char *out, size_t len)
{
    size_t off = 0;
    out[0] = '\0';
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->nroutes && off < len; i++) {
        int n = snprintf(out + off, len - off, "%s%s%s", off ? ", " : "", h->routes[i].path,
                         h->routes[i].prefix ? "*" : "");
        if (n < 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&h->lock);
}

void kv_admin_http_dispatch(struct kv_admin_http *h, struct evhttp_request *req)
{
    unsigned method = (unsigned)evhttp_request_get_command(req);
    const char *uri = evhttp_request_get_uri(req);
    char path[2048];
    int i = kv_admin_http_match(h, method, uri, path, sizeof(path));
    if (i == -400) {
        kv_admin_reply_error(req, 400, "malformed request URI");
        return;
    }
    if (i < 0) {
        char known[512];
        known_paths(h, known, sizeof(known));
        if (i == -405)
            kv_admin_reply_error(req, 405, "method not allowed on %.200s (paths: %s)", path, known);
        else
            kv_admin_reply_error(req, 404, "no such endpoint %.200s (try %s)", path, known);
        return;
    }
    pthread_mutex_lock(&h->lock);
    kv_admin_handler fn = h->routes[i].fn;
    void *ud = h->routes[i].ud;
    pthread_mutex_unlock(&h->lock);
    fn(req, path, ud);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    kv_admin_http_dispatch(arg, req);
}

/* ---- lifecycle ---- */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_admin_http *h = arg;
    event_base_loopbreak(h->base);
}

static void *loop_main(void *arg)
{
    struct kv_admin_http *h = arg;
    kv_log_set_thread_name(h->thread_name);
    event_base_loop(h->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static void admin_free(struct kv_admin_http *h)
{
    if (h->http)
        evhttp_free(h->http);
    if (h->stop_ev)
        event_free(h->stop_ev);
    if (h->own_base && h->base)
        event_base_free(h->base);
    for (size_t i = 0; i < h->nroutes; i++)
        kv_free(h->routes[i].path);
    kv_free(h->routes);
    pthread_mutex_destroy(&h->lock);
    kv_free(h);
}

int kv_admin_http_create(const struct kv_admin_http_opts *opts, struct kv_admin_http **out,
                         char *err, size_t errlen)
{
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (!opts || !out) {
        snprintf(err, errlen, "no options");
        return KV_EINVAL;
    }
    char host[256];
    uint16_t port = 0;
    if (opts->addr && kv_parse_hostport(opts->addr, host, sizeof(host), &port) < 0) {
        snprintf(err, errlen, "bad HTTP address '%s' (want HOST:PORT)", opts->addr);
        return KV_EINVAL;
    }
    pthread_once(&evthread_once, evthread_init);
    if (atomic_load(&evthread_rc) != 0) {
        snprintf(err, errlen, "cannot initialise libevent threading");
        return KV_EIO;
    }
    struct kv_admin_http *h = kv_calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    h->o = *opts;
    h->o.addr = NULL; /* not retained */
    h->o.thread_name = NULL;
    snprintf(h->thread_name, sizeof(h->thread_name), "%s",
             opts->thread_name ? opts->thread_name : "admin");
    pthread_mutex_init(&h->lock, NULL);
    int rc = KV_ENOMEM;
    int fd = -1;
    h->own_base = opts->base == NULL;
    h->base = opts->base ? opts->base : event_base_new();
    if (!h->base)
        goto out_free;
    h->http = evhttp_new(h->base);
    if (!h->http)
        goto out_free;
    evhttp_set_gencb(h->http, on_request, h);
    evhttp_set_timeout(h->http, opts->timeout_s > 0 ? opts->timeout_s : 30);
    evhttp_set_max_body_size(h->http, (ev_ssize_t)(opts->max_body ? opts->max_body : 4096));
    evhttp_set_max_headers_size(h->http,
                                (ev_ssize_t)(opts->max_headers ? opts->max_headers : 16384));
    if (kv_admin_http_route(h, "/health", 0, 0, do_health, h) < 0 ||
        kv_admin_http_route(h, "/ready", 0, 0, do_ready, h) < 0)
        goto out_free;
    if (h->own_base) {
        h->stop_ev = event_new(h->base, -1, 0, on_stop, h);
        if (!h->stop_ev)
            goto out_free;
    }
    if (opts->addr) {
        errno = 0;
        rc = kv_net_listen_tcp(host, port, 128, &fd, &h->port);
        if (rc < 0) {
            int e = errno;
            snprintf(err, errlen, "cannot listen on HTTP %s: %s", opts->addr,
                     e ? strerror(e) : kv_strerror(rc));
            if (e == EADDRINUSE)
                rc = KV_EBUSY;
            goto out_free;
        }
        kv_net_set_nonblock(fd, 1);
        if (!evhttp_accept_socket_with_handle(h->http, fd)) {
            close(fd);
            snprintf(err, errlen, "cannot serve HTTP on %s", opts->addr);
            rc = KV_EIO;
            goto out_free;
        }
    }
    *out = h;
    return KV_OK;
out_free:
    if (rc == KV_ENOMEM)
        snprintf(err, errlen, "out of memory");
    admin_free(h);
    return rc;
}

int kv_admin_http_start(struct kv_admin_http *h)
{
    if (!h)
        return KV_EINVAL;
    if (!h->own_base || h->running)
        return KV_OK;
    if (pthread_create(&h->thr, NULL, loop_main, h) != 0)
        return KV_EAGAIN;
    h->running = true;
    return KV_OK;
}

uint16_t kv_admin_http_port(const struct kv_admin_http *h)
{
    return h ? h->port : 0;
}

void kv_admin_http_destroy(struct kv_admin_http *h)
{
    if (!h)
        return;
    if (h->running) {
        event_active(h->stop_ev, EV_TIMEOUT, 0); /* works even before the loop started */
        pthread_join(h->thr, NULL);
        h->running = false;
    }
    admin_free(h);
}
