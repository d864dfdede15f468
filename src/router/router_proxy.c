/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_proxy.c - the router's data path: worker threads, each with its own epoll set, serving
 * client connections (HTTP/1.1 keep-alive, pipelined requests served in order) and proxying
 * OpenAI requests over pooled keep-alive upstream connections. HTTP messages are parsed by
 * http-parser (router_http.c); everything else is plain non-blocking sockets.
 *
 * Why not libevent's evhttp (which this replaced): per proxied request it made 12 system calls
 * (FIONREAD ioctls, epoll_ctl toggles) and a malloc per header; nginx makes 5. Here: client and
 * upstream sockets are registered once, edge-triggered for read and write, and a response is
 * written as soon as it is complete (writev, no epoll round trip); a read shorter than the
 * buffer means the socket is drained, so no read ends in EAGAIN on the common path.
 *
 * Thread model: `threads` workers share the listening socket (EPOLLEXCLUSIVE: one wakes per
 * connection); a client connection and the upstream connection serving it stay on one worker,
 * which owns both and its idle-connection pools (no locks on the data path). Shared state
 * (engines, policies, counters) is reached through router.c (rt->mu, atomics).
 *
 * Request life cycle (one at a time per client connection; c->busy while it runs):
 *
 *   head+body parsed --local endpoint--> reply ------------------------------+
 *        |                                                                   v
 *        +--choose engine--> send upstream --head--> [stream: chunked head] --body--> relay
 *             ^      |           |                                            |
 *             |      | none: 404/503/504       fail before any byte to the client:
 *             |      v                          stale pooled conn -> same engine, new conn;
 *             |    reply                        else once on another engine (tried mask)
 *             +-----------------------------------------------------------+
 *   complete -> reply (Content-Length) or last chunk -> request_done -> next pipelined request
 *
 * Invariants:
 *  1. A client has at most one request in flight (c->busy) and it holds at most one upstream
 *     connection (q->up, whose up->c is the client); in-flight counters move with that link.
 *  2. Response bytes reach the client only after the engine's headers; once q->started, no
 *     retry: a failure aborts the client connection (a cut stream never looks complete).
 *  3. A closed connection leaves epoll and the lists at once but is freed only at the end of
 *     the loop iteration (w->dead), so later events of the same batch find it marked closed.
 *  4. Backpressure: an upstream whose client has more than RT_OUT_HIGH bytes unsent stops being
 *     read (up->paused) until the client drains below it; a client with a request in flight is
 *     not read beyond RT_PEND_HIGH bytes of pipelined input.
 *
 * Timeouts (checked every RT_SWEEP_MS): upstream inactivity timeout_ms (refreshed by any byte
 * in either direction), client idle timeout_ms + 30 s, a client not draining its response for
 * timeout_ms, and lingering closes after an error (2 s).
 */
#define KV_LOG_COMPONENT "router"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "common/web.h"
#include "router/router_http.h"
#include "router/router_srv.h"

#define RT_READ_CHUNK (64u << 10)
#define RT_OUT_HIGH (1u << 20)
#define RT_PEND_HIGH (1u << 20)
#define RT_PEND_MIN 4096
#define RT_SWEEP_MS 100
#define RT_LINGER_MS 2000
#define RT_POOL_MAX 1024

enum { EVK_LISTEN = 1, EVK_WAKE, EVK_CLIENT, EVK_UP };

struct rt_evh {
    int kind;
    struct rt_evh *dead_next; /* w->dead: closed, freed at the end of the loop iteration */
};

struct rt_cli;

struct rt_up {
    struct rt_evh h; /* EVK_UP */
    struct rt_worker *w;
    struct rt_up *prev, *next; /* w->ups */
    struct rt_up *inext;       /* idle pool of its engine */
    int fd, engine;
    bool closed, idle, reused, got_bytes, paused, spoiled;
    struct rt_http resp;
    struct kv_buf head; /* request head to send */
    size_t sent;        /* bytes of head + body written */
    struct rt_cli *c;   /* the client served, NULL when idle */
    int64_t deadline;
};

struct rt_req {
    struct kv_rt_reqinfo info;
    bool have_info;
    char rid[80];
    int engine, attempts;
    uint64_t tried;
    bool streaming, started, first_byte, timed_out, stale_retry, chunked_out;
    int force_engine;   /* >= 0: the next dispatch reuses this engine (stale pooled connection) */
    int64_t wait_until; /* waiting for discovery until then (monotonic ms); 0: not waiting */
    bool waiting;       /* parked: sweep() dispatches it again */
    int code;
    struct rt_up *up;
    int64_t t0_us;
};

struct rt_cli {
    struct rt_evh h; /* EVK_CLIENT */
    struct rt_worker *w;
    struct rt_cli *prev, *next; /* w->clients */
    int fd;
    bool closed, busy, keep, read_blocked, werr, lingering, cont_sent, shut, in_pump;
    struct rt_http req;
    struct kv_buf pend; /* bytes read, not parsed yet */
    size_t pend_off;
    struct kv_buf out; /* bytes to write */
    size_t out_off;
    struct kv_buf rhead; /* response head being built */
    struct kv_buf acc;   /* a non-streaming response body */
    int64_t deadline;
    struct rt_req q;
};

struct rt_worker {
    struct rt_evh lis_h;  /* EVK_LISTEN */
    struct rt_evh wake_h; /* EVK_WAKE */
    struct kv_router *rt;
    int no, ep, wakefd;
    pthread_t th;
    bool started;
    struct rt_cli *clients;
    struct rt_up *ups;
    struct rt_up *idle[KV_RT_MAX_ENGINES];
    int nidle[KV_RT_MAX_ENGINES];
    struct rt_evh *dead; /* closed connections, freed at the end of the iteration */
    int64_t now_ms;
};

static void client_close(struct rt_cli *c);
static void client_pump(struct rt_cli *c);
static void client_read(struct rt_cli *c);
static void up_read(struct rt_up *up);
static void dispatch(struct rt_cli *c);

/* ------------------------------------------------------------------ helpers */

static void defer_free(struct rt_worker *w, struct rt_evh *h)
{
    h->dead_next = w->dead;
    w->dead = h;
}

static int ep_add(struct rt_worker *w, int fd, void *h)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = h};
    return epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev);
}

/* ------------------------------------------------------------------ client output */

static size_t out_pending(const struct rt_cli *c)
{
    return c->out.len - c->out_off;
}

/* Writes what is queued. Sets c->werr when the client is gone. */
static void client_flush(struct rt_cli *c)
{
    while (out_pending(c) && !c->werr) {
        ssize_t r = send(c->fd, c->out.data + c->out_off, out_pending(c), MSG_NOSIGNAL);
        if (r > 0) {
            c->out_off += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        c->werr = true;
        return;
    }
    if (!out_pending(c)) {
        kv_buf_reset(&c->out);
        c->out_off = 0;
    }
}

/* Sends iov now if nothing is queued; queues what the socket does not take. */
static void client_writev(struct rt_cli *c, struct iovec *iov, int n)
{
    if (c->werr || c->closed)
        return;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    size_t done = 0;
    if (!out_pending(c)) {
        for (;;) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
            if (r >= 0) {
                done = (size_t)r;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                c->werr = true;
                return;
            }
            break;
        }
    }
    if (done == total)
        return;
    for (int i = 0; i < n; i++) {
        size_t l = iov[i].iov_len;
        if (done >= l) {
            done -= l;
            continue;
        }
        if (kv_buf_append(&c->out, (const char *)iov[i].iov_base + done, l - done) < 0) {
            c->werr = true; /* out of memory: drop the client rather than corrupt its stream */
            return;
        }
        done = 0;
    }
}

static void client_write(struct rt_cli *c, const void *p, size_t n)
{
    struct iovec iov = {(void *)p, n};
    client_writev(c, &iov, 1);
}

/* A complete response of the router's own. close_conn: Connection: close, then a lingering
 * close (the client may still be sending a body we will not read). */
static void reply(struct rt_cli *c, int code, const char *reason, const char *ctype,
                  const char *body, size_t blen, bool head_only, bool close_conn)
{
    if (close_conn) {
        c->keep = false;
        c->lingering = true;
    }
    bool rid = c->q.rid[0] != '\0';
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n",
                      code, reason, ctype, blen, rid ? "X-Request-Id: " : "", c->q.rid,
                      rid ? "\r\n" : "", c->keep ? "" : "Connection: close\r\n");
    if (hl < 0 || (size_t)hl >= sizeof(head))
        hl = 0;
    struct iovec iov[2] = {{head, (size_t)hl}, {(void *)body, head_only ? 0 : blen}};
    client_writev(c, iov, 2);
}

static void reply_error(struct rt_cli *c, int code, const char *reason, const char *type,
                        const char *msg, bool close_conn)
{
    char *body = kv_rt_error_body(msg, type, code);
    const char *b = body ? body : "{\"error\":{\"message\":\"out of memory\",\"type\":\"error\"}}";
    reply(c, code, reason, "application/json", b, strlen(b), false, close_conn);
    kv_free(body);
}

static const char *reason_of(int code)
{
    switch (code) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

/* ------------------------------------------------------------------ upstream connections */

static void up_unlink_idle(struct rt_up *up)
{
    struct rt_worker *w = up->w;
    for (struct rt_up **pp = &w->idle[up->engine]; *pp; pp = &(*pp)->inext) {
        if (*pp == up) {
            *pp = up->inext;
            w->nidle[up->engine]--;
            break;
        }
    }
    up->idle = false;
    up->inext = NULL;
}

static void up_close(struct rt_up *up)
{
    if (up->closed)
        return;
    struct rt_worker *w = up->w;
    if (up->idle)
        up_unlink_idle(up);
    up->closed = true;
    close(up->fd); /* also leaves epoll */
    up->fd = -1;
    if (up->prev)
        up->prev->next = up->next;
    else
        w->ups = up->next;
    if (up->next)
        up->next->prev = up->prev;
    up->c = NULL;
    defer_free(w, &up->h);
}

static void up_free(struct rt_up *up)
{
    rt_http_fini(&up->resp);
    kv_buf_fini(&up->head);
    kv_free(up);
}

static int up_head_cb(void *ud);
static int up_body_cb(void *ud, const char *p, size_t n);

/* A connection to engine e: an idle pooled one, else a new one (connect in progress). */
static struct rt_up *up_get(struct rt_worker *w, int e, bool fresh)
{
    struct rt_up *up = fresh ? NULL : w->idle[e];
    if (up) {
        up_unlink_idle(up);
        up->reused = true;
        return up;
    }
    struct rt_engine *en = &w->rt->eng[e];
    struct sockaddr_storage sa;
    socklen_t salen = en->sa_len;
    if (salen) {
        memcpy(&sa, &en->sa, salen);
    } else {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", en->port);
        if (getaddrinfo(en->host, port, &hints, &ai) != 0 || !ai) {
            KV_LOGW_RL(5000, "engine %s: cannot resolve %s", en->url, en->host);
            return NULL;
        }
        memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
        salen = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        KV_LOGW_RL(5000, "socket: %s", strerror(errno));
        return NULL;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, salen) != 0 && errno != EINPROGRESS) {
        /* refused at once (loopback): reported like any failed connection */
        int e2 = errno;
        close(fd);
        errno = e2;
        return NULL;
    }
    up = kv_calloc(1, sizeof(*up));
    if (!up) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    up->h.kind = EVK_UP;
    up->w = w;
    up->fd = fd;
    up->engine = e;
    rt_http_init(&up->resp, HTTP_RESPONSE, 0);
    kv_buf_init(&up->head);
    if (ep_add(w, fd, &up->h) != 0) {
        close(fd);
        up_free(up);
        return NULL;
    }
    up->next = w->ups;
    if (w->ups)
        w->ups->prev = up;
    w->ups = up;
    return up;
}

static void up_put(struct rt_up *up)
{
    struct rt_worker *w = up->w;
    if (w->nidle[up->engine] >= RT_POOL_MAX) {
        up_close(up);
        return;
    }
    up->c = NULL;
    up->idle = true;
    up->paused = false;
    up->inext = w->idle[up->engine];
    w->idle[up->engine] = up;
    w->nidle[up->engine]++;
}

/* Writes the request head and body; waits for EPOLLOUT when the socket is full. Returns -1 on
 * a connection error (errno set). */
static int up_send(struct rt_up *up)
{
    struct rt_cli *c = up->c;
    size_t hl = up->head.len, bl = c->req.body.len;
    while (up->sent < hl + bl) {
        struct iovec iov[2];
        int n = 0;
        if (up->sent < hl)
            iov[n++] = (struct iovec){up->head.data + up->sent, hl - up->sent};
        size_t boff = up->sent > hl ? up->sent - hl : 0;
        if (bl > boff)
            iov[n++] = (struct iovec){c->req.body.data + boff, bl - boff};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(up->fd, &mh, MSG_NOSIGNAL);
        if (r > 0) {
            up->sent += (size_t)r;
            up->deadline = up->w->now_ms + up->w->rt->timeout_ms;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ request completion */

static void release_up(struct rt_cli *c, bool reuse)
{
    struct rt_up *up = c->q.up;
    if (!up)
        return;
    c->q.up = NULL;
    atomic_fetch_sub_explicit(&c->w->rt->eng[up->engine].inflight, 1, memory_order_relaxed);
    up->c = NULL;
    if (reuse)
        up_put(up);
    else
        up_close(up);
}

static void client_reset_req(struct rt_cli *c)
{
    if (c->q.have_info)
        kv_rt_reqinfo_fini(&c->q.info);
    memset(&c->q, 0, sizeof(c->q));
    c->q.engine = -1;
    c->q.force_engine = -1;
}

/* Buffers grown by a large message are not kept for the connection's lifetime. */
static void trim(struct kv_buf *b)
{
    if (b->cap > (1u << 20)) {
        kv_buf_fini(b);
        kv_buf_init(b);
    }
}

/* The request is answered (queued for writing): next request, or close. */
static void request_done(struct rt_cli *c)
{
    client_reset_req(c);
    c->busy = false;
    if (c->werr) {
        client_close(c);
        return;
    }
    trim(&c->acc);
    trim(&c->rhead);
    if (!c->keep) {
        /* flush, then half-close and read until the client closes (or RT_LINGER_MS) so that
         * unread input does not turn our close into a reset that destroys the response */
        c->lingering = true;
        if (!out_pending(c) && !c->shut) {
            shutdown(c->fd, SHUT_WR);
            c->shut = true;
        }
        c->deadline = c->w->now_ms + RT_LINGER_MS;
        return;
    }
    rt_http_next(&c->req);
    trim(&c->req.body);
    if (c->pend_off == c->pend.len && c->pend.cap > RT_READ_CHUNK * 2) {
        kv_buf_fini(&c->pend);
        kv_buf_init(&c->pend);
        c->pend_off = 0;
    }
    c->cont_sent = false;
    c->deadline = c->w->now_ms + c->w->rt->timeout_ms + 30000;
    if (c->in_pump)
        return; /* the pump loop goes on with the next pipelined request */
    client_pump(c);
    if (!c->closed && !c->busy && c->read_blocked) {
        c->read_blocked = false;
        client_read(c);
    }
}

/* The engine failed (timeout true: inactivity) before or during the response. */
static void up_failed(struct rt_cli *c, bool timeout, const char *why)
{
    struct kv_router *rt = c->w->rt;
    struct rt_req *q = &c->q;
    struct rt_up *up = q->up;
    int e = q->engine;
    struct rt_engine *en = &rt->eng[e];
    bool stale = up && up->reused && !up->got_bytes && !timeout && !q->stale_retry;
    release_up(c, false);
    if (stale && !q->started) {
        /* an idle pooled connection the engine had closed: once more on a new connection */
        q->stale_retry = true;
        q->force_engine = e;
        atomic_fetch_add_explicit(&rt->c_stale_retries, 1, memory_order_relaxed);
        KV_LOGD("request %s: pooled connection to %s was closed; reconnecting", q->rid, en->url);
        q->attempts--;
        dispatch(c);
        return;
    }
    q->timed_out = timeout;
    atomic_fetch_add_explicit(&en->errors, 1, memory_order_relaxed);
    rt_mark_unhealthy(rt, e, why);
    if (timeout)
        atomic_fetch_add_explicit(&rt->c_timeouts, 1, memory_order_relaxed);
    if (!q->started && q->attempts < 2) {
        atomic_fetch_add_explicit(&en->failovers, 1, memory_order_relaxed);
        KV_LOGI("request %s: engine %s %s; retrying on another engine", q->rid, en->url, why);
        dispatch(c);
        return;
    }
    atomic_fetch_add_explicit(&rt->c_upstream_fail, 1, memory_order_relaxed);
    if (!q->started) {
        if (timeout)
            reply_error(c, 504, "Gateway Timeout", "upstream_timeout",
                        "the engine did not answer in time", false);
        else
            reply_error(c, 502, "Bad Gateway", "upstream_error", "the engine failed", false);
        request_done(c);
        return;
    }
    /* bytes already went out: abort so the client sees a truncated response, not a clean end */
    KV_LOGI("request %s: engine %s %s mid-response; aborting the client connection", q->rid,
            en->url, why);
    client_close(c);
}

static void up_complete(struct rt_up *up)
{
    struct rt_cli *c = up->c;
    struct rt_req *q = &c->q;
    struct kv_router *rt = c->w->rt;
    struct rt_engine *en = &rt->eng[q->engine];
    int64_t now = kv_now_us();
    if (q->code >= 500)
        atomic_fetch_add_explicit(&en->errors, 1, memory_order_relaxed);
    rt_hist_add(&en->lat, now - q->t0_us);
    if (!q->first_byte)
        rt_hist_add(&en->ttfb, now - q->t0_us);
    bool reuse = rt_http_keepalive(&up->resp) && !up->spoiled;
    release_up(c, reuse);
    if (q->streaming) {
        if (q->chunked_out)
            client_write(c, "0\r\n\r\n", 5);
        else
            c->keep = false; /* HTTP/1.0 client: the end of the connection ends the body */
    } else {
        char cl[64];
        int n = snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n\r\n", c->acc.len);
        if (!c->keep)
            kv_buf_appends(&c->rhead, "Connection: close\r\n");
        struct iovec iov[3] = {
            {c->rhead.data, c->rhead.len}, {cl, (size_t)n}, {c->acc.data, c->acc.len}};
        client_writev(c, iov, 3);
    }
    request_done(c);
}

/* http-parser callbacks for the response (ud = the upstream connection) */

static int up_head_cb(void *ud)
{
    struct rt_up *up = ud;
    struct rt_cli *c = up->c;
    struct rt_req *q = &c->q;
    struct rt_http *m = &up->resp;
    q->code = m->hp.status_code;
    struct kv_buf *h = &c->rhead;
    kv_buf_reset(h);
    kv_buf_reset(&c->acc);
    const char *reason = rt_http_url(m);
    kv_buf_appendf(h, "HTTP/1.1 %d %s\r\n", q->code, *reason ? reason : "OK");
    bool has_cl = false, sse = false;
    for (int i = 0; i < m->nh; i++) {
        const char *k = rt_http_hname(m, i);
        size_t kl = m->h[i].nlen;
        if (kl == 14 && strncasecmp(k, "content-length", 14) == 0)
            has_cl = true;
        if (rt_http_skip_header(k, kl))
            continue;
        const char *v = rt_http_hval(m, i);
        if (kl == 12 && strncasecmp(k, "content-type", 12) == 0 &&
            strncasecmp(v, "text/event-stream", 17) == 0)
            sse = true;
        kv_buf_append(h, k, kl);
        kv_buf_append(h, ": ", 2);
        kv_buf_append(h, v, m->h[i].vlen);
        kv_buf_append(h, "\r\n", 2);
    }
    kv_buf_appends(h, "X-Request-Id: ");
    kv_buf_appends(h, q->rid);
    kv_buf_appends(h, "\r\nX-Kvstash-Engine: ");
    kv_buf_appends(h, c->w->rt->eng[q->engine].url);
    kv_buf_appends(h, "\r\n");
    bool nobody = q->code == 204 || q->code == 304;
    q->streaming = !nobody && (!has_cl || sse);
    if (q->streaming) {
        q->chunked_out = c->req.hp.http_major == 1 && c->req.hp.http_minor >= 1;
        kv_buf_appends(h, q->chunked_out ? "Transfer-Encoding: chunked\r\n\r\n"
                                         : "Connection: close\r\n\r\n");
        if (!q->chunked_out)
            c->keep = false;
        q->started = true;
        client_write(c, h->data, h->len);
    }
    return 0;
}

static int up_body_cb(void *ud, const char *p, size_t n)
{
    struct rt_up *up = ud;
    struct rt_cli *c = up->c;
    struct rt_req *q = &c->q;
    if (!q->first_byte) {
        q->first_byte = true;
        rt_hist_add(&c->w->rt->eng[q->engine].ttfb, kv_now_us() - q->t0_us);
    }
    if (!q->streaming)
        return kv_buf_append(&c->acc, p, n) < 0 ? -1 : 0;
    if (!q->chunked_out) {
        client_write(c, p, n);
        return 0;
    }
    char sz[24];
    int sl = snprintf(sz, sizeof(sz), "%zx\r\n", n);
    struct iovec iov[3] = {{sz, (size_t)sl}, {(void *)p, n}, {"\r\n", 2}};
    client_writev(c, iov, 3);
    return 0;
}

/* Reads the engine's response. */
static void up_read(struct rt_up *up)
{
    struct rt_worker *w = up->w;
    char buf[RT_READ_CHUNK];
    while (!up->closed) {
        struct rt_cli *c = up->c;
        if (c && out_pending(c) > RT_OUT_HIGH) {
            up->paused = true; /* resumed by the client's flush */
            up->deadline = INT64_MAX;
            c->deadline = w->now_ms + w->rt->timeout_ms;
            return;
        }
        ssize_t r = read(up->fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (!c) { /* idle: the engine closed it, or sent something unasked */
            up_close(up);
            return;
        }
        if (r <= 0) {
            if (r == 0 && up->got_bytes && rt_http_eof(&up->resp)) {
                up_complete(up);
                return;
            }
            char why[96];
            snprintf(why, sizeof(why), "%s", r == 0 ? "closed the connection" : strerror(errno));
            up_failed(c, false, why);
            return;
        }
        up->got_bytes = true;
        up->deadline = w->now_ms + w->rt->timeout_ms;
        size_t k = rt_http_feed(&up->resp, buf, (size_t)r);
        if (c->werr) {
            client_close(c); /* releases up */
            return;
        }
        if (up->resp.done) {
            if (k < (size_t)r)
                up->spoiled = true; /* bytes past the response: not reusable */
            up_complete(up);
            return;
        }
        if (up->resp.status || up->resp.err[0]) {
            KV_LOGW_RL(5000, "engine %s: %s", w->rt->eng[up->engine].url, up->resp.err);
            up_failed(c, false, "sent a malformed response");
            return;
        }
        if ((size_t)r < sizeof(buf))
            return; /* drained */
    }
}

static void up_event(struct rt_up *up, uint32_t ev)
{
    if (up->closed)
        return;
    struct rt_cli *c = up->c;
    if ((ev & EPOLLOUT) && c && up->sent < up->head.len + c->req.body.len) {
        if (up_send(up) < 0) {
            char why[96];
            snprintf(why, sizeof(why), "connection failed: %s", strerror(errno));
            up_failed(c, false, why);
            return;
        }
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if ((ev & EPOLLERR) && c && !up->got_bytes) {
            int err = 0;
            socklen_t l = sizeof(err);
            getsockopt(up->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            char why[96];
            snprintf(why, sizeof(why), "connection failed: %s", strerror(err ? err : EIO));
            up_failed(c, false, why);
            return;
        }
        up_read(up);
    }
}

/* ------------------------------------------------------------------ dispatch */

static void build_up_head(struct rt_cli *c, struct rt_up *up, const struct rt_engine *e)
{
    struct rt_http *m = &c->req;
    struct kv_buf *h = &up->head;
    kv_buf_reset(h);
    kv_buf_appends(h, "POST ");
    kv_buf_appends(h, e->path);
    kv_buf_appends(h, rt_http_url(m));
    kv_buf_appends(h, " HTTP/1.1\r\nHost: ");
    kv_buf_appends(h, e->hostport);
    kv_buf_appendf(h, "\r\nX-Request-Id: %s\r\nContent-Length: %zu\r\n", c->q.rid, m->body.len);
    for (int i = 0; i < m->nh; i++) {
        const char *k = rt_http_hname(m, i);
        if (rt_http_skip_header(k, m->h[i].nlen))
            continue;
        kv_buf_append(h, k, m->h[i].nlen);
        kv_buf_append(h, ": ", 2);
        kv_buf_append(h, rt_http_hval(m, i), m->h[i].vlen);
        kv_buf_append(h, "\r\n", 2);
    }
    kv_buf_append(h, "\r\n", 2);
}

/* Chooses an engine (not tried yet) and sends the request; replies the error when none. */
static void dispatch(struct rt_cli *c)
{
    struct rt_worker *w = c->w;
    struct kv_router *rt = w->rt;
    struct rt_req *q = &c->q;
    for (;;) {
        const char *sess = NULL;
        size_t slen = 0;
        if (rt->session_key)
            sess = rt_http_header(&c->req, rt->session_key, &slen);
        uint64_t serving = 1;
        int unknown = 0;
        const char *why = "same engine, new connection";
        int pick = q->force_engine;
        q->force_engine = -1;
        if (pick < 0)
            pick = rt_choose(rt, &q->info, sess, slen, q->tried, &serving, &unknown, &why);
        bool discovering = unknown || (rt->meta && rt_nengines(rt) == 0);
        if (!serving && discovering && rt->discovery_wait_ms > 0) {
            /* engines' models are still being discovered: park the request (sweep() asks
             * again every RT_SWEEP_MS) rather than fail it, up to discovery_wait_ms */
            if (!q->wait_until) {
                q->wait_until = w->now_ms + rt->discovery_wait_ms;
                c->deadline = KV_MAX(c->deadline, q->wait_until + rt->timeout_ms);
                KV_LOGD("request %s model %s: waiting up to %d ms for engine discovery", q->rid,
                        q->info.model, rt->discovery_wait_ms);
            }
            if (w->now_ms < q->wait_until) {
                q->waiting = true;
                return;
            }
        }
        if (!serving && discovering) {
            /* not "no such model": some engines were never reached to ask what they serve */
            atomic_fetch_add_explicit(&rt->c_noengine, 1, memory_order_relaxed);
            char msg[400];
            snprintf(msg, sizeof(msg),
                     "no reachable engine serves `%.300s` (%d engine(s) not reached yet)",
                     q->info.model, unknown);
            reply_error(c, 503, "Service Unavailable", "ServiceUnavailableError", msg, false);
            request_done(c);
            return;
        }
        if (!serving) {
            atomic_fetch_add_explicit(&rt->c_nomodel, 1, memory_order_relaxed);
            char msg[400];
            snprintf(msg, sizeof(msg), "The model `%.300s` does not exist.", q->info.model);
            reply_error(c, 404, "Not Found", "NotFoundError", msg, false);
            request_done(c);
            return;
        }
        if (pick < 0) {
            atomic_fetch_add_explicit(&rt->c_noengine, 1, memory_order_relaxed);
            if (q->attempts > 0 && q->timed_out)
                reply_error(c, 504, "Gateway Timeout", "upstream_timeout",
                            "the engine did not answer in time and no other engine is healthy",
                            false);
            else
                reply_error(c, 503, "Service Unavailable", "ServiceUnavailableError",
                            q->attempts ? "the engine failed and no other healthy engine serves "
                                          "this model"
                                        : "no healthy engine serves this model",
                            false);
            request_done(c);
            return;
        }
        struct rt_engine *e = &rt->eng[pick];
        q->engine = pick;
        q->tried |= 1ULL << pick;
        q->attempts++;
        q->code = 0;
        q->streaming = q->started = q->first_byte = false;
        KV_LOGD("request %s model %s -> %s (%s)", q->rid, q->info.model, e->url, why);
        atomic_fetch_add_explicit(&e->requests, 1, memory_order_relaxed);
        struct rt_up *up = up_get(w, pick, q->stale_retry);
        if (up)
            up->spoiled = false;
        if (!up) {
            char whyc[96];
            snprintf(whyc, sizeof(whyc), "connection failed: %s", strerror(errno));
            atomic_fetch_add_explicit(&e->errors, 1, memory_order_relaxed);
            rt_mark_unhealthy(rt, pick, whyc);
            if (q->attempts < 2) {
                atomic_fetch_add_explicit(&e->failovers, 1, memory_order_relaxed);
                KV_LOGI("request %s: engine %s %s; retrying on another engine", q->rid, e->url,
                        whyc);
                continue;
            }
            atomic_fetch_add_explicit(&rt->c_upstream_fail, 1, memory_order_relaxed);
            reply_error(c, 502, "Bad Gateway", "upstream_error", "the engine failed", false);
            request_done(c);
            return;
        }
        atomic_fetch_add_explicit(&e->inflight, 1, memory_order_relaxed);
        q->up = up;
        up->c = c;
        up->sent = 0;
        up->got_bytes = false;
        up->paused = false;
        up->deadline = w->now_ms + rt->timeout_ms;
        rt_http_next(&up->resp);
        up->resp.head_cb = up_head_cb;
        up->resp.body_cb = up_body_cb;
        up->resp.ud = up;
        build_up_head(c, up, e);
        q->t0_us = kv_now_us();
        if (up_send(up) < 0) {
            char whyc[96];
            snprintf(whyc, sizeof(whyc), "connection failed: %s", strerror(errno));
            up_failed(c, false, whyc);
        }
        return;
    }
}

/* ------------------------------------------------------------------ client requests */

static bool path_is(const char *url, size_t plen, const char *p)
{
    size_t n = strlen(p);
    return plen == n && memcmp(url, p, n) == 0;
}

/* The status page (web/router.html) and its assets, compiled in: true when path named one. */
static bool web_page(struct rt_cli *c, const char *path, size_t plen, bool head)
{
    char p[64];
    if (plen >= sizeof(p))
        return false;
    memcpy(p, path, plen);
    p[plen] = '\0';
    const struct kv_web_asset *a = kv_web_asset_find(strcmp(p, "/") == 0 ? "/router.html" : p);
    if (!a)
        return false;
    reply(c, 200, "OK", a->ctype, (const char *)a->data, a->len, head, false);
    return true;
}

static void local_endpoint(struct rt_cli *c, const char *path, size_t plen, bool head)
{
    struct kv_router *rt = c->w->rt;
    struct kv_buf b;
    kv_buf_init(&b);
    int code = 200, rc;
    const char *ctype = "application/json";
    if (path_is(path, plen, "/v1/models")) {
        rc = rt_models_body(rt, &b);
    } else if (path_is(path, plen, "/health")) {
        rc = rt_health_body(rt, &b, &code);
    } else if (path_is(path, plen, "/ready")) {
        rc = rt_ready_body(rt, &b, &code);
    } else if (path_is(path, plen, "/metrics")) {
        rc = rt_metrics_body(rt, &b);
        ctype = "text/plain; version=0.0.4";
    } else if (path_is(path, plen, "/metrics/vllm")) {
        rc = rt_metrics_vllm_body(rt, &b);
        ctype = "text/plain; version=0.0.4";
    } else if (path_is(path, plen, "/api/v1/status")) {
        rc = rt_status_body(rt, &b);
    } else if (web_page(c, path, plen, head)) {
        kv_buf_fini(&b);
        request_done(c);
        return;
    } else {
        reply_error(c, 404, "Not Found", "NotFoundError", "no such endpoint", false);
        request_done(c);
        return;
    }
    if (rc < 0)
        reply_error(c, 500, "Internal Server Error", "internal_error", "out of memory", false);
    else
        reply(c, code, code == 200 ? "OK" : reason_of(code), ctype, b.data ? b.data : "", b.len,
              head, false);
    kv_buf_fini(&b);
    request_done(c);
}

/* A complete request is in c->req. */
static void handle_request(struct rt_cli *c)
{
    struct kv_router *rt = c->w->rt;
    struct rt_http *m = &c->req;
    client_reset_req(c);
    c->keep = rt_http_keepalive(m);
    const char *url = rt_http_url(m);
    size_t ulen = m->url_len;
    /* absolute-form targets (http://host/path) are reduced to their path */
    if (ulen && url[0] != '/') {
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (http_parser_parse_url(url, ulen, 0, &u) == 0 && (u.field_set & (1 << UF_PATH))) {
            url += u.field_data[UF_PATH].off;
            ulen -= u.field_data[UF_PATH].off;
        }
    }
    const char *qm = memchr(url, '?', ulen);
    size_t plen = qm ? (size_t)(qm - url) : ulen;
    bool proxy = path_is(url, plen, "/v1/chat/completions") ||
                 path_is(url, plen, "/v1/completions") || path_is(url, plen, "/v1/embeddings");
    if (!proxy) {
        if (m->hp.method != HTTP_GET && m->hp.method != HTTP_HEAD) {
            reply_error(c, 405, "Method Not Allowed", "invalid_request_error", "use GET", false);
            request_done(c);
            return;
        }
        local_endpoint(c, url, plen, m->hp.method == HTTP_HEAD);
        return;
    }
    atomic_fetch_add_explicit(&rt->c_requests, 1, memory_order_relaxed);
    size_t rl;
    const char *hrid = rt_http_header(m, "x-request-id", &rl);
    if (hrid && rl && rl < sizeof(c->q.rid) && !memchr(hrid, '\r', rl) && !memchr(hrid, '\n', rl))
        memcpy(c->q.rid, hrid, rl), c->q.rid[rl] = '\0';
    else
        rt_gen_request_id(rt, c->q.rid, sizeof(c->q.rid));
    if (m->hp.method != HTTP_POST) {
        reply_error(c, 405, "Method Not Allowed", "invalid_request_error", "use POST", false);
        request_done(c);
        return;
    }
    char err[300];
    bool want_text = rt->policy != RT_RR && rt->policy != RT_SESSION;
    if (kv_rt_inspect_ex(m->body.data ? m->body.data : "", m->body.len, want_text, &c->q.info, err,
                         sizeof(err)) < 0) {
        atomic_fetch_add_explicit(&rt->c_bad, 1, memory_order_relaxed);
        reply_error(c, 400, "Bad Request", "invalid_request_error", err, false);
        request_done(c);
        return;
    }
    c->q.have_info = true;
    dispatch(c);
}

/* Parses queued input and serves the requests it holds, one at a time. */
static void client_pump(struct rt_cli *c)
{
    c->in_pump = true;
    while (!c->closed && !c->busy && !c->lingering && c->pend_off < c->pend.len) {
        size_t k = rt_http_feed(&c->req, c->pend.data + c->pend_off, c->pend.len - c->pend_off);
        c->pend_off += k;
        if (c->req.status) {
            int st = c->req.status;
            KV_LOGD("client request rejected: %d %s", st, c->req.err);
            if (st == 413)
                atomic_fetch_add_explicit(&c->w->rt->c_bad, 1, memory_order_relaxed);
            client_reset_req(c);
            reply_error(c, st, reason_of(st), "invalid_request_error", c->req.err, true);
            c->pend_off = c->pend.len;
            request_done(c);
            break;
        }
        if (c->req.head_done && c->req.expect_continue && !c->cont_sent && !c->req.done) {
            c->cont_sent = true;
            client_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        }
        if (!c->req.done)
            break;
        c->busy = true;
        handle_request(c);
    }
    c->in_pump = false;
    if (c->pend_off == c->pend.len) {
        kv_buf_reset(&c->pend);
        c->pend_off = 0;
    }
    if (!c->closed && c->werr)
        client_close(c);
}

static void client_read(struct rt_cli *c)
{
    struct rt_worker *w = c->w;
    while (!c->closed) {
        if (c->lingering) { /* discard until EOF */
            char junk[4096];
            ssize_t r = read(c->fd, junk, sizeof(junk));
            if (r > 0)
                continue;
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            client_close(c);
            return;
        }
        if (c->busy && c->pend.len - c->pend_off > RT_PEND_HIGH) {
            c->read_blocked = true;
            return;
        }
        if (c->pend_off && c->pend_off == c->pend.len) {
            kv_buf_reset(&c->pend);
            c->pend_off = 0;
        }
        /* small at first (idle keep-alive connections are many), doubling while reads fill it */
        size_t want = c->pend.len < RT_PEND_MIN ? RT_PEND_MIN : KV_MIN(c->pend.len, RT_READ_CHUNK);
        if (kv_buf_reserve(&c->pend, want) < 0) {
            client_close(c);
            return;
        }
        size_t room = c->pend.cap - c->pend.len - 1;
        ssize_t r = read(c->fd, c->pend.data + c->pend.len, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            /* EOF or reset: the client is gone (a request in flight is cancelled) */
            client_close(c);
            return;
        }
        c->pend.len += (size_t)r;
        c->pend.data[c->pend.len] = '\0';
        if (!c->busy)
            c->deadline = w->now_ms + w->rt->timeout_ms + 30000;
        client_pump(c);
        if ((size_t)r < room)
            return; /* drained */
    }
}

static void client_event(struct rt_cli *c, uint32_t ev)
{
    if (c->closed)
        return;
    if (ev & EPOLLOUT) {
        size_t before = out_pending(c);
        client_flush(c);
        if (c->werr) {
            client_close(c);
            return;
        }
        if (before && c->busy)
            c->deadline = c->w->now_ms + c->w->rt->timeout_ms;
        if (!out_pending(c) && c->lingering && !c->busy && !c->shut) {
            shutdown(c->fd, SHUT_WR);
            c->shut = true;
        }
        /* the upstream waits for this client to drain */
        struct rt_up *up = c->q.up;
        if (up && up->paused && out_pending(c) <= RT_OUT_HIGH) {
            up->paused = false;
            up->deadline = c->w->now_ms + c->w->rt->timeout_ms;
            up_read(up);
            if (c->closed)
                return;
        }
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        client_read(c);
}

static void client_free(struct rt_cli *c)
{
    rt_http_fini(&c->req);
    kv_buf_fini(&c->pend);
    kv_buf_fini(&c->out);
    kv_buf_fini(&c->rhead);
    kv_buf_fini(&c->acc);
    kv_free(c);
}

static void client_close(struct rt_cli *c)
{
    if (c->closed)
        return;
    struct rt_worker *w = c->w;
    if (c->busy && c->q.up) {
        KV_LOGD("request %s: client went away", c->q.rid);
        release_up(c, false); /* its response is unfinished: the connection cannot be reused */
    }
    client_reset_req(c);
    c->closed = true;
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    defer_free(w, &c->h);
}

static void accept_all(struct rt_worker *w)
{
    for (;;) {
        int fd = accept4(w->rt->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                KV_LOGW_RL(5000, "accept: %s", strerror(errno));
            return;
        }
        struct rt_cli *c = kv_calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->h.kind = EVK_CLIENT;
        c->w = w;
        c->fd = fd;
        c->q.engine = -1;
        c->q.force_engine = -1;
        rt_http_init(&c->req, HTTP_REQUEST, w->rt->max_body);
        kv_buf_init(&c->pend);
        kv_buf_init(&c->out);
        kv_buf_init(&c->rhead);
        kv_buf_init(&c->acc);
        c->deadline = w->now_ms + w->rt->timeout_ms + 30000;
        if (ep_add(w, fd, &c->h) != 0) {
            close(fd);
            client_free(c);
            continue;
        }
        c->next = w->clients;
        if (w->clients)
            w->clients->prev = c;
        w->clients = c;
    }
}

/* ------------------------------------------------------------------ the loop */

static void sweep(struct rt_worker *w)
{
    int64_t now = w->now_ms;
    /* up_failed may close and open upstream connections: look again from the start after each
     * (a retry's new connection has a later deadline, so this ends) */
    for (bool again = true; again;) {
        again = false;
        for (struct rt_up *up = w->ups; up; up = up->next) {
            if (up->c && !up->paused && up->deadline <= now) {
                up_failed(up->c, true, "timed out");
                again = true;
                break;
            }
        }
    }
    for (struct rt_cli *c = w->clients, *nx; c; c = nx) {
        nx = c->next;
        if (c->q.waiting && !c->closed) {
            c->q.waiting = false;
            dispatch(c);
            continue;
        }
        bool waiting_up = c->busy && c->q.up && !c->q.up->paused;
        if (!waiting_up && c->deadline <= now)
            client_close(c);
    }
}

static void up_free(struct rt_up *up);
static void client_free(struct rt_cli *c);

static void free_dead(struct rt_worker *w)
{
    while (w->dead) {
        struct rt_evh *h = w->dead;
        w->dead = h->dead_next;
        if (h->kind == EVK_UP)
            up_free((struct rt_up *)h);
        else
            client_free((struct rt_cli *)h);
    }
}

static void *worker_main(void *arg)
{
    struct rt_worker *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "router-%d", w->no);
    kv_log_set_thread_name(name);
    struct epoll_event evs[256];
    int64_t next_sweep = kv_now_ms() + RT_SWEEP_MS;
    for (;;) {
        int n = epoll_wait(w->ep, evs, (int)KV_ARRAY_SIZE(evs), RT_SWEEP_MS);
        w->now_ms = kv_now_ms();
        if (n < 0 && errno != EINTR) {
            KV_LOGE("epoll_wait: %s", strerror(errno));
            break;
        }
        bool stop = false;
        for (int i = 0; i < n; i++) {
            struct rt_evh *h = evs[i].data.ptr;
            switch (h->kind) {
            case EVK_LISTEN:
                accept_all(w);
                break;
            case EVK_WAKE:
                stop = true;
                break;
            case EVK_CLIENT:
                client_event((struct rt_cli *)h, evs[i].events);
                break;
            case EVK_UP:
                up_event((struct rt_up *)h, evs[i].events);
                break;
            }
        }
        if (w->now_ms >= next_sweep) {
            sweep(w);
            next_sweep = w->now_ms + RT_SWEEP_MS;
        }
        free_dead(w);
        if (stop)
            break;
    }
    return NULL;
}

int rt_workers_start(struct kv_router *rt)
{
    rt->w = kv_calloc((size_t)rt->nw, sizeof(*rt->w));
    if (!rt->w)
        return KV_ENOMEM;
    for (int i = 0; i < rt->nw; i++) {
        struct rt_worker *w = &rt->w[i];
        w->rt = rt;
        w->no = i;
        w->lis_h.kind = EVK_LISTEN;
        w->wake_h.kind = EVK_WAKE;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->ep < 0 || w->wakefd < 0) {
            KV_LOGE("router worker: %s", strerror(errno));
            return KV_EIO;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &w->lis_h};
        struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &w->wake_h};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, rt->lfd, &ev) != 0 ||
            epoll_ctl(w->ep, EPOLL_CTL_ADD, w->wakefd, &wev) != 0) {
            KV_LOGE("router worker: epoll_ctl: %s", strerror(errno));
            return KV_EIO;
        }
        w->now_ms = kv_now_ms();
    }
    for (int i = 0; i < rt->nw; i++) {
        if (pthread_create(&rt->w[i].th, NULL, worker_main, &rt->w[i]) != 0)
            return KV_EIO;
        rt->w[i].started = true;
    }
    return KV_OK;
}

void rt_workers_stop(struct kv_router *rt)
{
    if (!rt->w)
        return;
    for (int i = 0; i < rt->nw; i++) {
        struct rt_worker *w = &rt->w[i];
        if (w->started) {
            uint64_t one = 1;
            ssize_t r = write(w->wakefd, &one, sizeof(one));
            (void)r;
        }
    }
    for (int i = 0; i < rt->nw; i++) {
        struct rt_worker *w = &rt->w[i];
        if (w->started)
            pthread_join(w->th, NULL);
        while (w->clients)
            client_close(w->clients); /* releases their upstream connections */
        while (w->ups)
            up_close(w->ups);
        free_dead(w);
        if (w->ep >= 0)
            close(w->ep);
        if (w->wakefd >= 0)
            close(w->wakefd);
    }
    kv_free(rt->w);
    rt->w = NULL;
}
