/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_router_http.c - the router's HTTP/1.1 message layer (router_http.c): requests split at
 * every byte, pipelined requests, chunked bodies, the limits (413/414/431), malformed input (400
 * naming the problem), keep-alive rules, Expect: 100-continue, and responses (head and body
 * callbacks, chunked, read-until-close, interim 1xx, cut short).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "router/router_http.h"

static const char post[] = "POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
                           "Host: r\r\n"
                           "Content-Type: application/json\r\n"
                           "X-Session:  s1 \r\n"
                           "X-Empty:\r\n"
                           "Content-Length: 11\r\n"
                           "\r\n"
                           "{\"model\":1}";

static void check_post(struct rt_http *m)
{
    assert_true(m->done);
    assert_int_equal(m->status, 0);
    assert_int_equal(m->hp.method, HTTP_POST);
    assert_string_equal(rt_http_url(m), "/v1/chat/completions?x=1");
    assert_int_equal(m->nh, 5);
    size_t l;
    const char *v = rt_http_header(m, "content-type", &l);
    assert_non_null(v);
    assert_int_equal(l, 16);
    assert_memory_equal(v, "application/json", 16);
    v = rt_http_header(m, "X-SESSION", &l);
    assert_non_null(v);
    assert_string_equal(v, "s1 "); /* http-parser drops leading blanks only */
    v = rt_http_header(m, "x-empty", &l);
    assert_non_null(v);
    assert_int_equal(l, 0);
    assert_string_equal(v, "");
    assert_null(rt_http_header(m, "x-missing", NULL));
    assert_string_equal(rt_http_hname(m, 0), "Host");
    assert_string_equal(rt_http_hval(m, 0), "r");
    assert_int_equal(m->body.len, 11);
    assert_memory_equal(m->body.data, "{\"model\":1}", 11);
    assert_true(rt_http_keepalive(m));
    assert_false(m->expect_continue);
}

static void test_request_every_split(void **state)
{
    (void)state;
    size_t n = strlen(post);
    for (size_t cut = 0; cut <= n; cut++) {
        struct rt_http m;
        rt_http_init(&m, HTTP_REQUEST, 1024);
        size_t k = rt_http_feed(&m, post, cut);
        assert_int_equal(k, cut);
        assert_int_equal(m.status, 0);
        k = rt_http_feed(&m, post + cut, n - cut);
        assert_int_equal(k, n - cut);
        check_post(&m);
        rt_http_fini(&m);
    }
    /* one byte at a time */
    struct rt_http m;
    rt_http_init(&m, HTTP_REQUEST, 1024);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rt_http_feed(&m, post + i, 1), 1);
    check_post(&m);
    rt_http_fini(&m);
}

static void test_pipelined(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    kv_buf_appends(&b, post);
    kv_buf_appends(&b, "GET /health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n");
    kv_buf_appends(&b, post);
    struct rt_http m;
    rt_http_init(&m, HTTP_REQUEST, 1024);
    size_t off = rt_http_feed(&m, b.data, b.len);
    assert_int_equal(off, strlen(post));
    check_post(&m);
    assert_int_equal(rt_http_feed(&m, b.data + off, b.len - off), 0); /* stopped until next */
    rt_http_next(&m);
    off += rt_http_feed(&m, b.data + off, b.len - off);
    assert_true(m.done);
    assert_int_equal(m.hp.method, HTTP_GET);
    assert_string_equal(rt_http_url(&m), "/health");
    assert_int_equal(m.body.len, 0);
    assert_false(rt_http_keepalive(&m));
    rt_http_next(&m);
    off += rt_http_feed(&m, b.data + off, b.len - off);
    assert_int_equal(off, b.len);
    check_post(&m);
    rt_http_fini(&m);
    kv_buf_fini(&b);
}

static void test_chunked_request(void **state)
{
    (void)state;
    const char *r = "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct rt_http m;
    rt_http_init(&m, HTTP_REQUEST, 1024);
    assert_int_equal(rt_http_feed(&m, r, strlen(r)), strlen(r));
    assert_true(m.done);
    assert_int_equal(m.body.len, 11);
    assert_memory_equal(m.body.data, "hello world", 11);
    rt_http_fini(&m);

    /* the limit holds for chunked bodies too: 413 while reading */
    rt_http_init(&m, HTTP_REQUEST, 8);
    rt_http_feed(&m, r, strlen(r));
    assert_false(m.done);
    assert_int_equal(m.status, 413);
    assert_non_null(strstr(m.err, "limit"));
    rt_http_fini(&m);
}

static void test_limits_and_errors(void **state)
{
    (void)state;
    struct rt_http m;
    /* Content-Length over the limit: 413 at the head, before any body byte */
    const char *big = "POST /v1/completions HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    rt_http_init(&m, HTTP_REQUEST, 1000);
    rt_http_feed(&m, big, strlen(big));
    assert_int_equal(m.status, 413);
    assert_non_null(strstr(m.err, "100000"));
    assert_int_equal(rt_http_feed(&m, "x", 1), 0); /* stays stopped */
    rt_http_fini(&m);

    /* too many headers: 431 */
    struct kv_buf b;
    kv_buf_init(&b);
    kv_buf_appends(&b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= RT_HTTP_MAX_HEADERS; i++)
        kv_buf_appendf(&b, "X-H%d: v\r\n", i);
    kv_buf_appends(&b, "\r\n");
    rt_http_init(&m, HTTP_REQUEST, 1000);
    rt_http_feed(&m, b.data, b.len);
    assert_int_equal(m.status, 431);
    assert_non_null(strstr(m.err, "header"));
    rt_http_fini(&m);

    /* URL too long: 414 */
    kv_buf_reset(&b);
    kv_buf_appends(&b, "GET /");
    for (unsigned i = 0; i < RT_HTTP_MAX_URL; i++)
        kv_buf_append(&b, "a", 1);
    kv_buf_appends(&b, " HTTP/1.1\r\n\r\n");
    rt_http_init(&m, HTTP_REQUEST, 1000);
    rt_http_feed(&m, b.data, b.len);
    assert_int_equal(m.status, 414);
    rt_http_fini(&m);
    kv_buf_fini(&b);

    /* malformed: 400 naming the problem */
    const char *bad[] = {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
                         "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                         "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rt_http_init(&m, HTTP_REQUEST, 1000);
        rt_http_feed(&m, bad[i], strlen(bad[i]));
        assert_int_equal(m.status, 400);
        assert_true(strlen(m.err) > 10);
        rt_http_fini(&m);
    }

    /* a connection closed mid-message */
    rt_http_init(&m, HTTP_REQUEST, 1000);
    rt_http_feed(&m, post, 40);
    assert_false(rt_http_eof(&m));
    assert_int_equal(m.status, 400);
    assert_non_null(strstr(m.err, "closed"));
    rt_http_fini(&m);
}

static void test_keepalive_expect(void **state)
{
    (void)state;
    struct {
        const char *req;
        bool keep;
    } cases[] = {
        {"GET / HTTP/1.1\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct rt_http m;
        rt_http_init(&m, HTTP_REQUEST, 1000);
        rt_http_feed(&m, cases[i].req, strlen(cases[i].req));
        assert_true(m.done);
        assert_int_equal(rt_http_keepalive(&m), cases[i].keep);
        rt_http_fini(&m);
    }
    const char *e = "POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
    struct rt_http m;
    rt_http_init(&m, HTTP_REQUEST, 1000);
    assert_int_equal(rt_http_feed(&m, e, strlen(e)), strlen(e));
    assert_true(m.head_done);
    assert_false(m.done);
    assert_true(m.expect_continue);
    rt_http_feed(&m, "abc", 3);
    assert_true(m.done);
    rt_http_fini(&m);
}

struct sink {
    int heads;
    struct kv_buf body;
    int stop_at_head;
};

static int sink_head(void *ud)
{
    struct sink *s = ud;
    s->heads++;
    return s->stop_at_head ? -1 : 0;
}

static int sink_body(void *ud, const char *p, size_t n)
{
    struct sink *s = ud;
    return kv_buf_append(&s->body, p, n) < 0 ? -1 : 0;
}

static void resp_init(struct rt_http *m, struct sink *s)
{
    memset(s, 0, sizeof(*s));
    kv_buf_init(&s->body);
    rt_http_init(m, HTTP_RESPONSE, 0);
    m->head_cb = sink_head;
    m->body_cb = sink_body;
    m->ud = s;
}

static void test_response(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 100 Continue\r\n\r\n"
                    "HTTP/1.1 200 Fine Thanks\r\nContent-Type: text/event-stream\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                    "6\r\ndata: \r\n3\r\nabc\r\n0\r\n\r\n";
    size_t n = strlen(r);
    for (size_t cut = 0; cut <= n; cut += 7) {
        struct rt_http m;
        struct sink s;
        resp_init(&m, &s);
        size_t k = rt_http_feed(&m, r, cut);
        k += rt_http_feed(&m, r + k, n - k);
        assert_int_equal(k, n);
        assert_true(m.done);
        assert_int_equal(s.heads, 1); /* not for the interim 100 */
        assert_int_equal(m.hp.status_code, 200);
        assert_string_equal(rt_http_url(&m), "Fine Thanks");
        assert_int_equal(s.body.len, 9);
        assert_memory_equal(s.body.data, "data: abc", 9);
        assert_true(rt_http_keepalive(&m));
        rt_http_fini(&m);
        kv_buf_fini(&s.body);
    }

    /* body delimited by the close of the connection */
    const char *eof = "HTTP/1.0 200 OK\r\n\r\nuntil the end";
    struct rt_http m;
    struct sink s;
    resp_init(&m, &s);
    assert_int_equal(rt_http_feed(&m, eof, strlen(eof)), strlen(eof));
    assert_false(m.done);
    assert_true(rt_http_eof(&m));
    assert_int_equal(s.body.len, 13);
    rt_http_fini(&m);
    kv_buf_fini(&s.body);

    /* cut short: Content-Length not reached */
    const char *cut = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    resp_init(&m, &s);
    rt_http_feed(&m, cut, strlen(cut));
    assert_false(rt_http_eof(&m));
    assert_int_equal(m.status, 502);
    assert_non_null(strstr(m.err, "closed"));
    rt_http_fini(&m);
    kv_buf_fini(&s.body);

    /* the receiver stops at the head */
    resp_init(&m, &s);
    s.stop_at_head = 1;
    rt_http_feed(&m, cut, strlen(cut));
    assert_false(m.done);
    assert_int_equal(m.status, 502);
    rt_http_fini(&m);
    kv_buf_fini(&s.body);

    /* garbage from an engine */
    resp_init(&m, &s);
    rt_http_feed(&m, "SMTP ready\r\n", 12);
    assert_int_equal(m.status, 502);
    assert_non_null(strstr(m.err, "malformed"));
    rt_http_fini(&m);
    kv_buf_fini(&s.body);
}

static void test_skip_header(void **state)
{
    (void)state;
    const char *skip[] = {"Connection",   "keep-alive",        "Host", "content-length",
                          "X-Request-Id", "Transfer-Encoding", "TE",   "Upgrade",
                          "Expect",       "Proxy-Connection"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        assert_true(rt_http_skip_header(skip[i], strlen(skip[i])));
    const char *keep[] = {"Content-Type", "Authorization", "X-Session", "Accept", "t", ""};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        assert_false(rt_http_skip_header(keep[i], strlen(keep[i])));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_every_split), cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_chunked_request),     cmocka_unit_test(test_limits_and_errors),
        cmocka_unit_test(test_keepalive_expect),    cmocka_unit_test(test_response),
        cmocka_unit_test(test_skip_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
