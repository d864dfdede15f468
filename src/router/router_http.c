/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_http.c - HTTP/1.1 messages over http-parser for the router (see router_http.h).
 *
 * Header storage in m->hb: [url or reason]\0 [name]\0[value]\0 ... Callbacks may deliver any
 * piece in fragments (a read can end anywhere), so a header starts when a name fragment follows
 * a value (or is the first), and the previous value (or the url) is NUL-terminated then.
 *
 * Invariants: m->status != 0 or m->done stops rt_http_feed from parsing until rt_http_next;
 * every error sets m->err to a sentence naming the problem.
 */
#define KV_LOG_COMPONENT "router"
#include "router/router_http.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static void fail(struct rt_http *m, int status, const char *msg)
{
    if (m->status)
        return;
    m->status = status;
    snprintf(m->err, sizeof(m->err), "%s", msg);
}

static int append(struct rt_http *m, const char *p, size_t n)
{
    if (m->hb.len + n + 2 > RT_HTTP_MAX_HEAD) {
        fail(m, m->type == HTTP_REQUEST ? 431 : 502, "the message head is too large");
        return -1;
    }
    if (kv_buf_append(&m->hb, p, n) < 0) {
        fail(m, m->type == HTTP_REQUEST ? 503 : 502, "out of memory");
        return -1;
    }
    return 0;
}

static int terminate(struct rt_http *m)
{
    return append(m, "", 1); /* kv_buf keeps a NUL after len; this makes it part of the data */
}

/* Ends the current header's name and starts its value (once per header). */
static int start_value(struct rt_http *m)
{
    if (m->in_value)
        return 0;
    if (terminate(m) < 0)
        return -1;
    m->h[m->nh - 1].val = (uint32_t)m->hb.len;
    m->h[m->nh - 1].vlen = 0;
    m->in_value = true;
    return 0;
}

/* Ends the header being built (its value, or an empty one when none came). */
static int end_header(struct rt_http *m)
{
    if (m->nh == 0)
        return 0;
    if (start_value(m) < 0)
        return -1;
    return terminate(m);
}

static int on_message_begin(http_parser *p)
{
    (void)p;
    return 0;
}

/* The request target (requests) or the reason phrase (responses): the first item of hb. */
static int on_first_line(http_parser *p, const char *at, size_t n)
{
    struct rt_http *m = p->data;
    bool req = m->type == HTTP_REQUEST;
    if (m->url_len + n > (req ? RT_HTTP_MAX_URL : 1024u)) {
        fail(m, req ? 414 : 502,
             req ? "the request target is too long" : "the engine's reason phrase is too long");
        return -1;
    }
    m->url_len += (uint32_t)n;
    return append(m, at, n);
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct rt_http *m = p->data;
    if (m->nh == 0 || m->in_value) {
        if (m->nh == 0) {
            if (terminate(m) < 0) /* the url or reason */
                return -1;
        } else if (end_header(m) < 0) {
            return -1;
        }
        if (m->nh == RT_HTTP_MAX_HEADERS) {
            fail(m, m->type == HTTP_REQUEST ? 431 : 502, "too many header fields");
            return -1;
        }
        m->h[m->nh].name = (uint32_t)m->hb.len;
        m->h[m->nh].nlen = 0;
        m->h[m->nh].val = 0;
        m->h[m->nh].vlen = 0;
        m->nh++;
        m->in_value = false;
    }
    m->h[m->nh - 1].nlen += (uint32_t)n;
    return append(m, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct rt_http *m = p->data;
    if (m->nh == 0)
        return 0; /* http-parser never does this */
    if (start_value(m) < 0)
        return -1;
    m->h[m->nh - 1].vlen += (uint32_t)n;
    return append(m, at, n);
}

static int on_headers_complete(http_parser *p)
{
    struct rt_http *m = p->data;
    if (m->nh == 0) {
        if (terminate(m) < 0)
            return -1;
    } else if (end_header(m) < 0) {
        return -1;
    }
    m->head_done = true;
    if (m->type == HTTP_REQUEST) {
        if (p->upgrade) {
            fail(m, 400, "protocol upgrades are not supported");
            return -1;
        }
        if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
            p->content_length > m->max_body) {
            snprintf(m->err, sizeof(m->err),
                     "the request body (%llu bytes) is larger than the limit (%llu bytes)",
                     (unsigned long long)p->content_length, (unsigned long long)m->max_body);
            m->status = 413;
            return -1;
        }
        size_t len;
        const char *e = rt_http_header(m, "expect", &len);
        m->expect_continue = e && len == 12 && strncasecmp(e, "100-continue", 12) == 0;
        return 0;
    }
    if (p->status_code >= 100 && p->status_code < 200)
        return 0; /* an interim response: its end restarts the head (on_message_complete) */
    if (m->head_cb && m->head_cb(m->ud) < 0) {
        if (!m->err[0])
            snprintf(m->err, sizeof(m->err), "stopped by the receiver");
        return -1;
    }
    return m->head_only ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct rt_http *m = p->data;
    if (m->type == HTTP_REQUEST) {
        if (m->body.len + n > m->max_body) {
            snprintf(m->err, sizeof(m->err),
                     "the request body is larger than the limit (%llu bytes)",
                     (unsigned long long)m->max_body);
            m->status = 413;
            return -1;
        }
        if (kv_buf_append(&m->body, at, n) < 0) {
            fail(m, 503, "out of memory");
            return -1;
        }
        return 0;
    }
    if (m->body_cb && m->body_cb(m->ud, at, n) < 0) {
        if (!m->err[0])
            snprintf(m->err, sizeof(m->err), "stopped by the receiver");
        return -1;
    }
    return 0;
}

static void clear_head(struct rt_http *m)
{
    kv_buf_reset(&m->hb);
    m->nh = 0;
    m->url = 0;
    m->url_len = 0;
    m->in_value = false;
    m->head_done = false;
    m->expect_continue = false;
}

static int on_message_complete(http_parser *p)
{
    struct rt_http *m = p->data;
    if (m->type == HTTP_RESPONSE && p->status_code >= 100 && p->status_code < 200) {
        clear_head(m); /* 1xx: the real response follows */
        return 0;
    }
    m->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_first_line,
    .on_status = on_first_line,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void rt_http_init(struct rt_http *m, enum http_parser_type type, uint64_t max_body)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->max_body = max_body;
    kv_buf_init(&m->hb);
    kv_buf_init(&m->body);
    http_parser_init(&m->hp, type);
    m->hp.data = m;
}

void rt_http_fini(struct rt_http *m)
{
    kv_buf_fini(&m->hb);
    kv_buf_fini(&m->body);
}

void rt_http_next(struct rt_http *m)
{
    clear_head(m);
    kv_buf_reset(&m->body);
    m->done = false;
    m->status = 0;
    m->err[0] = '\0';
    m->head_only = false;
    http_parser_init(&m->hp, m->type);
    m->hp.data = m;
}

static void parse_error(struct rt_http *m)
{
    enum http_errno e = HTTP_PARSER_ERRNO(&m->hp);
    if (m->status || m->err[0])
        return;
    char msg[160];
    snprintf(msg, sizeof(msg), "malformed HTTP: %s", http_errno_description(e));
    if (m->type == HTTP_REQUEST)
        fail(m, e == HPE_HEADER_OVERFLOW ? 431 : 400, msg);
    else
        fail(m, 502, msg);
}

size_t rt_http_feed(struct rt_http *m, const char *p, size_t n)
{
    if (m->done || m->status || m->err[0] || n == 0)
        return 0;
    size_t k = http_parser_execute(&m->hp, &settings, p, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->hp);
    if (e == HPE_PAUSED)
        return k;
    if (e != HPE_OK) {
        parse_error(m);
        if (!m->status && m->type == HTTP_RESPONSE)
            m->status = 502;
        return k;
    }
    return k;
}

bool rt_http_eof(struct rt_http *m)
{
    if (m->done)
        return true;
    if (!m->status && !m->err[0]) {
        http_parser_execute(&m->hp, &settings, NULL, 0);
        if (m->done)
            return true;
    }
    if (!m->status && !m->err[0])
        fail(m, m->type == HTTP_REQUEST ? 400 : 502,
             m->head_done ? "the connection closed before the end of the body"
                          : "the connection closed before a complete message head");
    if (!m->status)
        m->status = m->type == HTTP_REQUEST ? 400 : 502;
    return false;
}

const char *rt_http_header(const struct rt_http *m, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (int i = 0; i < m->nh; i++) {
        if (m->h[i].nlen == nl && strncasecmp(m->hb.data + m->h[i].name, name, nl) == 0) {
            if (len)
                *len = m->h[i].vlen;
            return m->hb.data + m->h[i].val;
        }
    }
    return NULL;
}

bool rt_http_keepalive(const struct rt_http *m)
{
    return http_should_keep_alive(&m->hp) != 0;
}

bool rt_http_skip_header(const char *k, size_t n)
{
    static const struct {
        const char *s;
        size_t n;
    } h[] = {{"te", 2},
             {"host", 4},
             {"expect", 6},
             {"trailer", 7},
             {"upgrade", 7},
             {"connection", 10},
             {"keep-alive", 10},
             {"x-request-id", 12},
             {"content-length", 14},
             {"proxy-connection", 16},
             {"transfer-encoding", 17},
             {"proxy-authenticate", 18},
             {"proxy-authorization", 19}};
    for (size_t i = 0; i < sizeof(h) / sizeof(h[0]) && h[i].n <= n; i++)
        if (h[i].n == n && strncasecmp(k, h[i].s, n) == 0)
            return true;
    return false;
}
