/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_admin_http.c - the shared admin HTTP server (common/admin_http.c) over real loopback
 * HTTP (libcurl): /health and /ready from the live/ready callbacks (200/503, JSON, reason),
 * exact and longest-prefix routing, 404 and 405 JSON errors, replacing a route, routes added
 * while serving, bad and busy addresses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <event2/http.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/admin_http.h"
#include "common/buf.h"
#include "kvstash/err.h"

static atomic_bool live_flag, ready_flag;

static bool on_live(void *ud, json_t *doc, char *why, size_t whylen)
{
    (void)ud;
    json_object_set_new(doc, "extra", json_integer(7));
    if (!atomic_load(&live_flag))
        snprintf(why, whylen, "loop stopped");
    return atomic_load(&live_flag);
}

static bool on_ready(void *ud, json_t *doc, char *reason, size_t len)
{
    (void)ud;
    (void)doc;
    if (!atomic_load(&ready_flag))
        snprintf(reason, len, "no storage node mounted yet");
    return atomic_load(&ready_flag);
}

static void h_text(struct evhttp_request *req, const char *path, void *ud)
{
    char body[256];
    snprintf(body, sizeof(body), "%s:%s", (const char *)ud, path);
    kv_admin_reply_text(req, 200, body);
}

static size_t sink(char *p, size_t sz, size_t n, void *ud)
{
    kv_buf_append(ud, p, sz * n);
    return sz * n;
}

/* GET (or method) url; returns the status, body into b (NUL-terminated). */
static long req(uint16_t port, const char *method, const char *path, struct kv_buf *b)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    b->len = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    kv_buf_append(b, "", 1);
    b->len--;
    return code;
}

static void test_serve(void **state)
{
    (void)state;
    atomic_store(&live_flag, true);
    atomic_store(&ready_flag, false);
    struct kv_admin_http_opts o = {.addr = "127.0.0.1:0", .live = on_live, .ready = on_ready};
    struct kv_admin_http *h = NULL;
    char err[256];
    assert_int_equal(kv_admin_http_create(&o, &h, err, sizeof(err)), KV_OK);
    uint16_t port = kv_admin_http_port(h);
    assert_true(port > 0);
    assert_int_equal(kv_admin_http_route(h, "/x", 0, 0, h_text, "exact"), KV_OK);
    assert_int_equal(kv_admin_http_route(h, "/x/", KV_ADMIN_PREFIX, 0, h_text, "short"), KV_OK);
    assert_int_equal(kv_admin_http_route(h, "/x/y/", KV_ADMIN_PREFIX, 0, h_text, "long"), KV_OK);
    assert_int_equal(kv_admin_http_route(h, "x", 0, 0, h_text, "bad"), KV_EINVAL);
    assert_int_equal(kv_admin_http_start(h), KV_OK);
    struct kv_buf b;
    kv_buf_init(&b);

    assert_int_equal(req(port, "GET", "/health", &b), 200);
    assert_non_null(strstr(b.data, "\"status\":\"ok\""));
    assert_non_null(strstr(b.data, "\"extra\":7"));
    assert_int_equal(req(port, "GET", "/ready", &b), 503);
    assert_non_null(strstr(b.data, "\"ready\":false"));
    assert_non_null(strstr(b.data, "\"reason\":\"no storage node mounted yet\""));
    atomic_store(&ready_flag, true);
    assert_int_equal(req(port, "GET", "/ready", &b), 200);
    assert_non_null(strstr(b.data, "\"ready\":true"));
    assert_null(strstr(b.data, "reason"));
    atomic_store(&live_flag, false);
    assert_int_equal(req(port, "GET", "/health", &b), 503);
    assert_non_null(strstr(b.data, "\"reason\":\"loop stopped\""));

    assert_int_equal(req(port, "GET", "/x?q=1", &b), 200);
    assert_string_equal(b.data, "exact:/x");
    assert_int_equal(req(port, "GET", "/x/a", &b), 200);
    assert_string_equal(b.data, "short:/x/a");
    assert_int_equal(req(port, "GET", "/x/y/z", &b), 200);
    assert_string_equal(b.data, "long:/x/y/z");
    assert_int_equal(req(port, "GET", "/nope", &b), 404);
    assert_non_null(strstr(b.data, "{\"error\":\"no such endpoint /nope"));
    assert_int_equal(req(port, "DELETE", "/x", &b), 405);
    assert_non_null(strstr(b.data, "{\"error\":\"method not allowed"));

    /* replaced and added while serving */
    assert_int_equal(kv_admin_http_route(h, "/x", 0, KV_ADMIN_DELETE, h_text, "new"), KV_OK);
    assert_int_equal(req(port, "DELETE", "/x", &b), 200);
    assert_string_equal(b.data, "new:/x");
    assert_int_equal(kv_admin_http_route(h, "/later", 0, 0, h_text, "later"), KV_OK);
    assert_int_equal(req(port, "GET", "/later", &b), 200);

    /* the port is taken: EBUSY with a message */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    struct kv_admin_http_opts o2 = {.addr = addr};
    struct kv_admin_http *h2 = NULL;
    assert_int_equal(kv_admin_http_create(&o2, &h2, err, sizeof(err)), KV_EBUSY);
    assert_null(h2);
    assert_non_null(strstr(err, "cannot listen"));
    kv_buf_fini(&b);
    kv_admin_http_destroy(h);
}

static void test_bad_addr_and_match(void **state)
{
    (void)state;
    struct kv_admin_http_opts o = {.addr = "no-port"};
    struct kv_admin_http *h = NULL;
    char err[256];
    assert_int_equal(kv_admin_http_create(&o, &h, err, sizeof(err)), KV_EINVAL);
    assert_non_null(strstr(err, "bad HTTP address 'no-port'"));
    o.addr = NULL;
    assert_int_equal(kv_admin_http_create(&o, &h, err, sizeof(err)), KV_OK);
    char path[64];
    assert_true(kv_admin_http_match(h, KV_ADMIN_GET, "/ready?x", path, sizeof(path)) >= 0);
    assert_string_equal(path, "/ready");
    assert_int_equal(kv_admin_http_match(h, KV_ADMIN_POST, "/ready", NULL, 0), -405);
    assert_int_equal(kv_admin_http_match(h, KV_ADMIN_GET, "/readyz", NULL, 0), -404);
    assert_int_equal(kv_admin_http_match(h, KV_ADMIN_GET, "ready", NULL, 0), -400);
    assert_int_equal(kv_admin_http_match(h, KV_ADMIN_GET, "/a\x01", NULL, 0), -400);
    kv_admin_http_destroy(h);
    kv_admin_http_destroy(NULL);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serve),
        cmocka_unit_test(test_bad_addr_and_match),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
