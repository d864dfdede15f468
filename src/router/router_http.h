/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_http.h - one HTTP/1.1 message at a time over http-parser, for the router's own data
 * path (router_proxy.c): a client request (head and whole body kept, body limited) or an
 * engine response (head kept, body handed to a callback piece by piece as it arrives). Pure:
 * no sockets, no clocks, no locks, so the fuzzer drives it directly.
 *
 * Use: rt_http_init once, rt_http_feed the bytes as they arrive; it stops after a complete
 * message (later bytes are left unconsumed: the caller keeps them for the next message) or at
 * an error (m->status 400/413/414/431 for requests, 502 for responses, with m->err naming the
 * problem). rt_http_next readies the same object for the next message on the connection.
 *
 * Storage: url (request) or reason (response), header names and values live in m->hb, so
 * fragments split across reads are joined; limits: RT_HTTP_MAX_HEADERS headers, RT_HTTP_MAX_HEAD
 * bytes of head (431), RT_HTTP_MAX_URL bytes of URL (414), max_body bytes of request body (413).
 */
#ifndef KV_ROUTER_HTTP_H
#define KV_ROUTER_HTTP_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define RT_HTTP_MAX_HEADERS 100
#define RT_HTTP_MAX_HEAD (64u << 10)
#define RT_HTTP_MAX_URL (8u << 10)

struct rt_hdr {
    uint32_t name, nlen, val, vlen; /* offsets into hb */
};

/* Body sink for responses: returns 0, or -1 to stop parsing (m->status is then 0, m->err set). */
typedef int (*rt_http_body_fn)(void *ud, const char *p, size_t n);
/* Called once the response head is complete (status, reason, headers known); same return. */
typedef int (*rt_http_head_fn)(void *ud);

struct rt_http {
    http_parser hp;
    enum http_parser_type type;
    uint64_t max_body;       /* requests: 413 beyond */
    rt_http_head_fn head_cb; /* responses */
    rt_http_body_fn body_cb; /* responses; requests keep the body in body */
    void *ud;
    bool head_only; /* response to a HEAD request: no body follows */

    struct kv_buf hb;   /* url or reason, names, values */
    struct kv_buf body; /* request body */
    struct rt_hdr h[RT_HTTP_MAX_HEADERS];
    int nh;
    uint32_t url, url_len; /* request target (requests) or reason phrase (responses) */
    bool in_value;         /* the last header callback was a value */
    bool head_done;        /* headers complete */
    bool done;             /* message complete */
    bool expect_continue;  /* request said Expect: 100-continue */
    int status;            /* 0 fine, else the HTTP status the error maps to */
    char err[160];         /* the problem, for the error reply and the log */
};

void rt_http_init(struct rt_http *m, enum http_parser_type type, uint64_t max_body);
void rt_http_fini(struct rt_http *m);
/* Readies m for the next message on the same connection (keeps buffers and callbacks). */
void rt_http_next(struct rt_http *m);
/* Parses p[0..n). Returns the bytes consumed: all of them, or fewer when the message completed
 * (m->done) or failed (m->status / m->err). After done or an error, call rt_http_next (done)
 * or drop the connection (error) before feeding more. */
size_t rt_http_feed(struct rt_http *m, const char *p, size_t n);
/* The peer closed: completes a body delimited by the connection's end. Returns true when the
 * message is now complete, false when it was cut short (m->err says so). */
bool rt_http_eof(struct rt_http *m);

/* Header value by case-insensitive name (first match), or NULL; *len gets its length. */
const char *rt_http_header(const struct rt_http *m, const char *name, size_t *len);
static inline const char *rt_http_hname(const struct rt_http *m, int i)
{
    return m->hb.data + m->h[i].name;
}
static inline const char *rt_http_hval(const struct rt_http *m, int i)
{
    return m->hb.data + m->h[i].val;
}
/* The request target (requests) or reason phrase (responses), NUL-terminated. */
static inline const char *rt_http_url(const struct rt_http *m)
{
    return m->hb.data ? m->hb.data + m->url : "";
}
/* Keep the connection open after this message (HTTP/1.1 default, Connection headers). */
bool rt_http_keepalive(const struct rt_http *m);

/* Hop-by-hop headers and those the router sets itself (Host, Content-Length, X-Request-Id,
 * Expect): never forwarded in either direction. */
bool rt_http_skip_header(const char *name, size_t len);

#endif
