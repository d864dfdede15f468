/* SPDX-License-Identifier: Apache-2.0 */
/*
 * admin_http.h - the one admin HTTP server of the daemons (master/serve, node, metad, gateway):
 * a small wrapper over libevent's evhttp with a route table, reply helpers, JSON errors and the
 * built-in liveness (/health) and readiness (/ready) endpoints.
 *
 * Use:
 *     struct kv_admin_http_opts o = {.addr = "0.0.0.0:9100", .thread_name = "admin",
 *                                    .live = my_live, .ready = my_ready, .ud = me};
 *     struct kv_admin_http *h;
 *     rc = kv_admin_http_create(&o, &h, err, sizeof(err));
 *     kv_admin_http_route(h, "/metrics", 0, KV_ADMIN_GET, do_metrics, me);
 *     kv_admin_http_route(h, "/engines/", KV_ADMIN_PREFIX, KV_ADMIN_GET, do_engine, me);
 *     rc = kv_admin_http_start(h);          // own thread; with opts.base, nothing to start
 *     ...
 *     kv_admin_http_destroy(h);             // stops the thread, closes the socket
 *
 * Routing: an exact route wins over a prefix route; among prefix routes the longest wins. A path
 * that matches a route but not its method mask gets 405, no route 404 (both JSON errors listing
 * the known paths). /health and /ready are exact routes registered at create; registering the
 * same exact path again replaces the handler (e.g. a daemon keeping an older /health body).
 *
 * /health (liveness): 200 {"status":"ok", ...} while opts.live (if any) returns true, else 503
 * {"status":"unavailable", "reason":"..."}; the callback may add members to the document.
 * /ready (readiness): 200 {"ready":true, ...} when opts.ready returns true (no callback: always),
 * else 503 {"ready":false, "reason":"..."}; the callback may add members (leader, nodes, ...).
 *
 * Thread model: with opts.base == NULL the server owns an event_base and one thread
 * (opts.thread_name) started by kv_admin_http_start; with opts.base the caller's loop runs the
 * handlers and the caller must have stopped that loop before kv_admin_http_destroy. Handlers,
 * live and ready run on the loop thread. The route table is guarded by a leaf mutex, so
 * kv_admin_http_route may be called from any thread at any time (a route added while serving
 * applies to the next request); callbacks are never called under it.
 */
#ifndef KV_COMMON_ADMIN_HTTP_H
#define KV_COMMON_ADMIN_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evhttp_request;
struct kv_admin_http;

/* Method mask bits (the same values as libevent's enum evhttp_cmd_type). */
#define KV_ADMIN_GET 1u
#define KV_ADMIN_POST 2u
#define KV_ADMIN_HEAD 4u
#define KV_ADMIN_PUT 8u
#define KV_ADMIN_DELETE 16u
#define KV_ADMIN_ANY 0xffffu

/* Route flags. */
#define KV_ADMIN_PREFIX 1u /* the route matches every path starting with its path */

/* A route handler: answers req exactly once (with the reply helpers or evhttp directly; it may
 * also keep req and answer later on the loop thread). path is the request's path, undecoded,
 * borrowed for the call. */
typedef void (*kv_admin_handler)(struct evhttp_request *req, const char *path, void *ud);

/* Liveness: true while the daemon's loops run. why (size whylen) gets a reason when false; doc
 * may get extra members. */
typedef bool (*kv_admin_live_fn)(void *ud, json_t *doc, char *why, size_t whylen);

/* Readiness: true when the daemon can serve; else reason (size reasonlen) says why not ("no
 * storage node mounted yet", "standby; leader is m1 at 10.0.0.1:7000", ...). doc may get extra
 * members in both cases. */
typedef bool (*kv_admin_ready_fn)(void *ud, json_t *doc, char *reason, size_t reasonlen);

struct kv_admin_http_opts {
    const char *addr;        /* HOST:PORT to listen on (port 0: any); NULL: no listener (tests) */
    struct event_base *base; /* the caller's loop, or NULL for an own base and thread */
    const char *thread_name; /* own thread's log name; default "admin" */
    size_t max_body;         /* largest request body; 0: 4096 */
    size_t max_headers;      /* largest header block; 0: 16384 */
    int timeout_s;           /* per-connection read/write timeout; 0: 30 */
    kv_admin_live_fn live;   /* NULL: always live */
    kv_admin_ready_fn ready; /* NULL: always ready */
    void *ud;                /* passed to live and ready */
};

/* Creates a server listening on opts->addr (not yet serving with an own thread). err (may be
 * NULL) gets a message naming the problem. Returns KV_OK, KV_EINVAL (bad address), KV_EBUSY
 * (address in use), KV_EIO or KV_ENOMEM; *out is unchanged on error. opts is copied. */
int kv_admin_http_create(const struct kv_admin_http_opts *opts, struct kv_admin_http **out,
                         char *err, size_t errlen);

/* Adds or replaces (same path and flags) a route. path must start with '/' and is copied;
 * methods is a mask of KV_ADMIN_* (0 means GET and HEAD). Returns KV_OK, KV_EINVAL or KV_ENOMEM.
 * Thread-safe. */
int kv_admin_http_route(struct kv_admin_http *h, const char *path, unsigned flags, unsigned methods,
                        kv_admin_handler fn, void *ud);

/* Starts the own thread (no-op with opts.base). KV_OK or KV_EAGAIN. */
int kv_admin_http_start(struct kv_admin_http *h);

/* The bound port (after create), 0 without a listener. */
uint16_t kv_admin_http_port(const struct kv_admin_http *h);

/* Stops the own thread (if started), then frees everything; requests in flight are dropped.
 * With opts.base the caller's loop must not be running. NULL is a no-op. */
void kv_admin_http_destroy(struct kv_admin_http *h);

/* Answers req with the route's handler, 404 or 405, as the server does for a received request;
 * exposed for tests and the fuzz target. */
void kv_admin_http_dispatch(struct kv_admin_http *h, struct evhttp_request *req);

/* The pure routing decision: for method (KV_ADMIN_* bit) and a request URI ("/p?q", as on the
 * request line), the route's index (>= 0), or -404 (no route), -405 (method not allowed), -400
 * (malformed URI). path (size pathlen, may be NULL) gets the path. Thread-safe. */
int kv_admin_http_match(struct kv_admin_http *h, unsigned method, const char *uri, char *path,
                        size_t pathlen);

/* ---- reply helpers (loop thread; each answers req exactly once) ---- */

/* Any body with its content type. */
void kv_admin_reply(struct evhttp_request *req, int code, const char *ctype, const void *body,
                    size_t len);
/* JSON text (a newline is appended). */
void kv_admin_reply_json_text(struct evhttp_request *req, int code, const char *json);
/* A JSON document (compact, newline appended); takes ownership of doc; NULL gives a 500. */
void kv_admin_reply_json(struct evhttp_request *req, int code, json_t *doc);
/* Plain text (text/plain; charset=utf-8). */
void kv_admin_reply_text(struct evhttp_request *req, int code, const char *text);
/* A JSON error {"error": "<formatted message>"} with status code. */
void kv_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The reason phrase of an HTTP status ("OK", "Not Found", ...; "Error" if unknown). */
const char *kv_admin_status_text(int code);

#endif
