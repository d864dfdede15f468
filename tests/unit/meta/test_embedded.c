/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_embedded.c - the local metadata pieces beyond the conformance suite: the embedded store
 * under allocation failures, the metad request decoders and data-file codec, and metad
 * internals seen from outside (sharing an in-process store, persistence, start-up errors, the
 * watch ring's 410 and the http client's recovery from it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/util.h"
#include "kvstash/meta.h"
#include "meta/meta_embedded_int.h"
#include "meta/meta_http_int.h"
#include "meta/metad.h"
#include "meta/metad_int.h"

static bool rc_ok_or_nomem(int rc)
{
    return rc == KV_OK || rc == KV_ENOMEM;
}

static atomic_int seen_events;
static void count_cb(void *ud, const struct kv_meta_event *ev)
{
    (void)ud;
    (void)ev;
    atomic_fetch_add(&seen_events, 1);
}

/* One pass over every embedded operation; every call either works or fails with KV_ENOMEM.
 * Returns true when everything worked. */
static bool embedded_pass(void)
{
    struct kv_meta *m = NULL;
    int rc = kv_meta_open("embedded://allocfail", NULL, &m);
    assert_true(rc_ok_or_nomem(rc));
    if (rc < 0)
        return false;
    bool all = true;
#define STEP(expr)                                                                                 \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (!rc_ok_or_nomem(rc_))                                                                  \
            fail_msg("%s -> %s", #expr, kv_err_name(rc_));                                         \
        all = all && rc_ == KV_OK;                                                                 \
    } while (0)
    uint64_t wid = 0;
    int wrc = kv_meta_watch(m, "/af/", count_cb, NULL, &wid);
    STEP(wrc);
    STEP(kv_meta_put(m, "/af/a", "1", 1, 0));
    STEP(kv_meta_put(m, "/af/b", "2\0002", 3, 0));
    int64_t lease = 0;
    int lrc = kv_meta_lease_grant(m, 30, &lease);
    STEP(lrc);
    if (lrc == KV_OK) {
        STEP(kv_meta_put(m, "/af/l", "L", 1, lease));
        STEP(kv_meta_cas(m, "/af/c", NULL, 0, "x", 1, lease));
    }
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    int rc2 = kv_meta_list(m, "/af/", &kvs, &n);
    STEP(rc2);
    if (rc2 == KV_OK)
        kv_meta_kvs_free(kvs, n);
    char *v = NULL;
    size_t len;
    rc2 = kv_meta_get(m, "/af/b", &v, &len);
    if (rc2 != KV_ENOENT)
        STEP(rc2);
    kv_meta_free(v);
    if (lrc == KV_OK)
        STEP(kv_meta_lease_revoke(m, lease));
    if (wrc == KV_OK)
        STEP(kv_meta_unwatch(m, wid));
    kv_meta_del(m, "/af/a");
    kv_meta_del(m, "/af/b");
#undef STEP
    kv_meta_close(m);
    return all;
}

static void test_embedded_alloc_failures(void **state)
{
    (void)state;
    long before = kv_alloc_calls();
    assert_true(embedded_pass());
    long total = kv_alloc_calls() - before;
    assert_true(total > 10);
    for (long i = 1; i <= total + 2; i++) {
        kv_alloc_fail_at(i);
        embedded_pass();
        kv_alloc_fail_at(0);
    }
    assert_true(embedded_pass()); /* the store still works after every failure */
}

static void test_decode_query(void **state)
{
    (void)state;
    struct kv_metad_query q;
    char err[256];
    assert_int_equal(kv_metad_decode_query("key=a%2Fb&lease=5&after=7&timeout_ms=999999&x=1", &q,
                                           err, sizeof(err)),
                     KV_OK);
    assert_string_equal(q.key, "a/b");
    assert_null(q.prefix);
    assert_int_equal(q.lease, 5);
    assert_true(q.has_after);
    assert_int_equal(q.after, 7);
    assert_int_equal(q.timeout_ms, KV_METAD_MAX_WATCH_MS);
    kv_metad_query_fini(&q);
    assert_int_equal(kv_metad_decode_query("prefix=", &q, err, sizeof(err)), KV_OK);
    assert_string_equal(q.prefix, "");
    assert_int_equal(q.timeout_ms, KV_METAD_DEFAULT_WATCH_MS);
    kv_metad_query_fini(&q);
    assert_int_equal(kv_metad_decode_query(NULL, &q, err, sizeof(err)), KV_OK);
    kv_metad_query_fini(&q);
    static const struct {
        const char *q, *msg;
    } bad[] = {
        {"key=", "empty key"},
        {"key=a&key=b", "twice"},
        {"key=a%00b", "NUL"},
        {"lease=-1&key=a", "lease"},
        {"key=a&lease=7x", "lease"},
        {"after=-3", "after"},
        {"timeout_ms=abc", "timeout_ms"},
        {"justaword", "malformed"},
    };
    for (size_t i = 0; i < KV_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        assert_int_equal(kv_metad_decode_query(bad[i].q, &q, err, sizeof(err)), KV_EINVAL);
        if (!strstr(err, bad[i].msg))
            fail_msg("query '%s': message '%s' lacks '%s'", bad[i].q, err, bad[i].msg);
    }
    char *longkey = kv_malloc(KV_META_MAX_KEY + 8);
    assert_non_null(longkey);
    memcpy(longkey, "key=", 4);
    memset(longkey + 4, 'k', KV_META_MAX_KEY);
    longkey[KV_META_MAX_KEY + 4] = '\0';
    assert_int_equal(kv_metad_decode_query(longkey, &q, err, sizeof(err)), KV_EINVAL);
    assert_non_null(strstr(err, "longer"));
    kv_free(longkey);
}

static void test_decode_bodies(void **state)
{
    (void)state;
    struct kv_metad_cas c;
    char err[256];
    const char *ok = "{\"key\":\"/k\",\"expect\":\"YQBi\",\"value\":\"\",\"lease\":9}";
    assert_int_equal(kv_metad_decode_cas(ok, strlen(ok), &c, err, sizeof(err)), KV_OK);
    assert_string_equal(c.key, "/k");
    assert_int_equal(c.expect_len, 3);
    assert_memory_equal(c.expect, "a\0b", 3);
    assert_int_equal(c.len, 0);
    assert_int_equal(c.lease, 9);
    kv_metad_cas_fini(&c);
    const char *absent = "{\"key\":\"/k\",\"expect\":null,\"value\":\"eA==\"}";
    assert_int_equal(kv_metad_decode_cas(absent, strlen(absent), &c, err, sizeof(err)), KV_OK);
    assert_null(c.expect);
    kv_metad_cas_fini(&c);
    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"{\"key\":\"/k\"}", "'value'"},
        {"{\"value\":\"eA==\"}", "'key'"},
        {"{\"key\":\"\",\"value\":\"eA==\"}", "empty key"},
        {"{\"key\":\"/k\",\"value\":\"e\"}", "base64"},
        {"{\"key\":\"/k\",\"value\":\"eA==\",\"lease\":-1}", "lease"},
        {"[1]", "object"},
        {"{\"key\":", "line 1"},
    };
    for (size_t i = 0; i < KV_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        assert_int_equal(
            kv_metad_decode_cas(bad[i].body, strlen(bad[i].body), &c, err, sizeof(err)), KV_EINVAL);
        if (!strstr(err, bad[i].msg))
            fail_msg("cas '%s': message '%s' lacks '%s'", bad[i].body, err, bad[i].msg);
    }
    /* a value over 1 MiB */
    size_t big = KV_META_MAX_VALUE + 1;
    char *raw = kv_calloc(1, big);
    char *b64 = kv_metad_b64_encode(raw, big);
    assert_non_null(b64);
    size_t n = strlen(b64) + 64;
    char *body = kv_malloc(n);
    snprintf(body, n, "{\"key\":\"/k\",\"value\":\"%s\"}", b64);
    assert_int_equal(kv_metad_decode_cas(body, strlen(body), &c, err, sizeof(err)), KV_E2BIG);
    kv_free(raw);
    kv_free(b64);
    kv_free(body);

    /* base64 at the limit: exactly KV_META_MAX_VALUE decodes, one more byte does not */
    for (size_t extra = 0; extra < 2; extra++) {
        size_t sz = KV_META_MAX_VALUE + extra;
        char *bin = kv_calloc(1, sz);
        char *enc = kv_metad_b64_encode(bin, sz);
        char *dec = NULL;
        size_t dlen = 0;
        assert_int_equal(kv_metad_b64_decode(enc, strlen(enc), KV_META_MAX_VALUE, &dec, &dlen),
                         extra ? KV_E2BIG : KV_OK);
        if (!extra)
            assert_int_equal(dlen, sz);
        kv_free(dec);
        kv_free(enc);
        kv_free(bin);
    }
    char *dec = NULL;
    size_t dlen = 0;
    assert_int_equal(kv_metad_b64_decode("eA=", 3, 10, &dec, &dlen), KV_EINVAL);
    assert_int_equal(kv_metad_b64_decode("", 0, 10, &dec, &dlen), KV_OK);
    assert_int_equal(dlen, 0);
    kv_free(dec);

    int64_t v = 0;
    assert_int_equal(kv_metad_decode_lease("{\"ttl\":5}", 9, "ttl", &v, err, sizeof(err)), KV_OK);
    assert_int_equal(v, 5);
    assert_int_equal(kv_metad_decode_lease("{\"ttl\":0}", 9, "ttl", &v, err, sizeof(err)),
                     KV_EINVAL);
    assert_non_null(strstr(err, "ttl"));
    assert_int_equal(kv_metad_decode_lease("{\"id\":\"7\"}", 10, "id", &v, err, sizeof(err)),
                     KV_EINVAL);
    assert_non_null(strstr(err, "id"));
}

static void test_data_codec(void **state)
{
    (void)state;
    struct kv_meta_kv in[3] = {
        {.key = "/a", .val = "x\0y", .len = 3},
        {.key = "/b\xff\xfe", .val = "", .len = 0}, /* not UTF-8: key_b64 */
        {.key = "/c", .val = "plain", .len = 5},
    };
    char *text = NULL;
    assert_int_equal(kv_metad_encode_data(in, 3, &text), KV_OK);
    assert_non_null(strstr(text, "key_b64"));
    struct kv_meta_kv *out = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(kv_metad_parse_data(text, strlen(text), &out, &n, err, sizeof(err)), KV_OK);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(out[i].key, in[i].key);
        assert_int_equal(out[i].len, in[i].len);
        assert_memory_equal(out[i].val, in[i].val, in[i].len);
    }
    kv_meta_kvs_free(out, n);
    kv_free(text);
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"{\"format\":\"kvstash-metad\",\"version\":1,\"kvs\":[{\"key\":\"a\",\"value\":\"\"},"
         "{\"key\":\"a\",\"value\":\"\"}]}",
         "twice"},
        {"{\"format\":\"kvstash-metad\",\"version\":2,\"kvs\":[]}", "version"},
        {"{\"format\":\"other\"}", "format"},
        {"{\"format\":\"kvstash-metad\",\"version\":1,\"kvs\":[{\"key\":\"a\"}]}", "kvs[0]"},
        /* a bad element after a good one (was accepted, the list silently cut short) */
        {"{\"format\":\"kvstash-metad\",\"version\":1,\"kvs\":[{\"key\":\"a\",\"value\":\"\"},"
         "7]}",
         "kvs[1]"},
        {"not json", "line 1"},
    };
    for (size_t i = 0; i < KV_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        assert_int_equal(
            kv_metad_parse_data(bad[i].text, strlen(bad[i].text), &out, &n, err, sizeof(err)),
            KV_EINVAL);
        if (!strstr(err, bad[i].msg))
            fail_msg("data '%s': message '%s' lacks '%s'", bad[i].text, err, bad[i].msg);
    }
}

static void test_client_decoders(void **state)
{
    (void)state;
    char err[256];
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    const char *list =
        "[{\"key\":\"/b\",\"value\":\"Qg==\"},{\"key_b64\":\"L2E=\",\"value\":\"\"}]";
    assert_int_equal(kv_meta_http_decode_list(list, strlen(list), &kvs, &n, err, sizeof(err)),
                     KV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(kvs[0].key, "/a"); /* sorted */
    assert_string_equal(kvs[1].val, "B");
    kv_meta_kvs_free(kvs, n);
    assert_int_equal(kv_meta_http_decode_list("{}", 2, &kvs, &n, err, sizeof(err)), KV_EPROTO);
    assert_int_equal(kv_meta_http_decode_list("[{\"key\":\"k\"}]", 13, &kvs, &n, err, sizeof(err)),
                     KV_EPROTO);
    assert_non_null(strstr(err, "value"));

    const char *w = "{\"revision\":9,\"events\":[{\"type\":\"put\",\"rev\":8,\"key\":\"/k\","
                    "\"value\":\"eA==\"},{\"type\":\"delete\",\"rev\":9,\"key\":\"/k\"}]}";
    struct kv_meta_http_ev *evs = NULL;
    uint64_t rev = 0;
    assert_int_equal(kv_meta_http_decode_watch(w, strlen(w), &rev, &evs, &n, err, sizeof(err)),
                     KV_OK);
    assert_int_equal(rev, 9);
    assert_int_equal(n, 2);
    assert_int_equal(evs[0].type, KV_META_EV_PUT);
    assert_string_equal(evs[0].val, "x");
    assert_int_equal(evs[1].type, KV_META_EV_DEL);
    assert_null(evs[1].val);
    kv_meta_http_evs_free(evs, n);
    const char *bad = "{\"revision\":1,\"events\":[{\"type\":\"zap\",\"key\":\"k\"}]}";
    assert_int_equal(kv_meta_http_decode_watch(bad, strlen(bad), &rev, &evs, &n, err, sizeof(err)),
                     KV_EPROTO);
    /* a bad event after a good one (was returned as success with the good events only) */
    const char *bad2 = "{\"revision\":2,\"events\":[{\"type\":\"delete\",\"key\":\"k\"},"
                       "{\"type\":\"zap\",\"key\":\"k\"}]}";
    assert_int_equal(
        kv_meta_http_decode_watch(bad2, strlen(bad2), &rev, &evs, &n, err, sizeof(err)), KV_EPROTO);
    assert_non_null(strstr(err, "event 1"));
}

static struct kv_meta *open_ok(const char *url)
{
    struct kv_meta *m = NULL;
    struct kv_meta_opts o = {.timeout_ms = 2000};
    int rc = kv_meta_open(url, &o, &m);
    if (rc != KV_OK)
        fail_msg("open %s: %s", url, kv_err_name(rc));
    return m;
}

static void check_value(struct kv_meta *m, const char *key, const char *want)
{
    char *v = NULL;
    size_t len = 0;
    int rc = kv_meta_get(m, key, &v, &len);
    if (rc != KV_OK)
        fail_msg("get %s: %s", key, kv_err_name(rc));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(v, want, len);
    kv_meta_free(v);
}

static void test_metad_shared_store(void **state)
{
    (void)state;
    struct kv_meta *emb = open_ok("embedded://metad-shared");
    assert_int_equal(kv_meta_put(emb, "/before", "b", 1, 0), KV_OK);
    struct kv_metad *d = NULL;
    struct kv_metad_opts mo = {.addr = "127.0.0.1:0", .embedded_name = "metad-shared"};
    assert_int_equal(kv_metad_start(&mo, &d), KV_OK);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", kv_metad_port(d));
    struct kv_meta *h = open_ok(url);
    check_value(h, "/before", "b");
    assert_int_equal(kv_meta_put(h, "/via-http", "h", 1, 0), KV_OK);
    check_value(emb, "/via-http", "h");
    /* a value over the API's 1 MiB, as a Mooncake client PUTs it: the API refuses it, the
     * server's path stores it, and the http client's get and list return it whole */
    size_t big = KV_META_MAX_VALUE + 7;
    char *bv = kv_malloc(big);
    assert_non_null(bv);
    for (size_t i = 0; i < big; i++)
        bv[i] = (char)(i * 31);
    assert_int_equal(kv_meta_put(emb, "/big/v", bv, big, 0), KV_E2BIG);
    assert_int_equal(kv_meta_embedded_put(emb, "/big/v", bv, big, 0), KV_OK);
    char *got = NULL;
    size_t glen = 0;
    assert_int_equal(kv_meta_get(h, "/big/v", &got, &glen), KV_OK);
    assert_int_equal(glen, big);
    assert_memory_equal(got, bv, big);
    kv_meta_free(got);
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    assert_int_equal(kv_meta_list(h, "/big/", &kvs, &n), KV_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvs[0].len, big);
    kv_meta_kvs_free(kvs, n);
    kv_free(bv);
    /* del of an absent key: metad answers 200 (Mooncake), the client still says KV_ENOENT */
    assert_int_equal(kv_meta_del(h, "/big/v"), KV_OK);
    assert_int_equal(kv_meta_del(h, "/big/v"), KV_ENOENT);
    /* a second server on the same port is KV_EBUSY */
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", kv_metad_port(d));
    struct kv_metad *d2 = NULL;
    struct kv_metad_opts mo2 = {.addr = addr};
    assert_int_equal(kv_metad_start(&mo2, &d2), KV_EBUSY);
    assert_null(d2);
    mo2.addr = "nonsense";
    assert_int_equal(kv_metad_start(&mo2, &d2), KV_EINVAL);
    mo2.addr = "127.0.0.1:0";
    mo2.max_value = (size_t)KV_METAD_MAX_VALUE_LIMIT + 1;
    assert_int_equal(kv_metad_start(&mo2, &d2), KV_EINVAL);
    assert_null(d2);
    /* bad client URLs */
    struct kv_meta *bad = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/elsewhere", kv_metad_port(d));
    assert_int_equal(kv_meta_open(url, NULL, &bad), KV_EMETA_URL);
    assert_int_equal(kv_meta_open("http://", NULL, &bad), KV_EMETA_URL);
    kv_meta_close(h);
    kv_metad_stop(d);
    check_value(emb, "/via-http", "h"); /* the store outlives the server */
    kv_meta_close(emb);
}

static void test_metad_persistence(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvstash-metad-unit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[128];
    snprintf(file, sizeof(file), "%s/data.json", dir);
    struct kv_metad *d = NULL;
    struct kv_metad_opts mo = {.addr = "127.0.0.1:0", .data_file = file};
    assert_int_equal(kv_metad_start(&mo, &d), KV_OK);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", kv_metad_port(d));
    struct kv_meta *h = open_ok(url);
    int64_t lease;
    assert_int_equal(kv_meta_lease_grant(h, 60, &lease), KV_OK);
    assert_int_equal(kv_meta_put(h, "/keep", "k\0k", 3, 0), KV_OK);
    assert_int_equal(kv_meta_put(h, "/leased", "l", 1, lease), KV_OK);
    /* written within the coalescing interval, without stopping */
    int64_t end = kv_now_ms() + 5000;
    while (access(file, F_OK) != 0 && kv_now_ms() < end)
        kv_sleep_ms(20);
    assert_int_equal(access(file, F_OK), 0);
    kv_meta_close(h);
    kv_metad_stop(d);
    assert_int_equal(kv_metad_start(&mo, &d), KV_OK);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", kv_metad_port(d));
    h = open_ok(url);
    char *v = NULL;
    size_t len;
    assert_int_equal(kv_meta_get(h, "/keep", &v, &len), KV_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "k\0k", 3);
    kv_meta_free(v);
    assert_int_equal(kv_meta_get(h, "/leased", &v, &len), KV_ENOENT);
    kv_meta_close(h);
    kv_metad_stop(d);
    /* a corrupt file is a start-up error */
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs("{\"format\":\"kvstash-metad\",\"version\":1,\"kvs\":[{\"key\":5}]}", f);
    fclose(f);
    d = NULL;
    assert_int_equal(kv_metad_start(&mo, &d), KV_EINVAL);
    assert_null(d);
    unlink(file);
    rmdir(dir);
}

struct slow_rec {
    atomic_int n;
    atomic_int marker;
    atomic_int first_done;
};

static void slow_cb(void *ud, const struct kv_meta_event *ev)
{
    struct slow_rec *r = ud;
    if (atomic_fetch_add(&r->n, 1) == 0) {
        kv_sleep_ms(1500); /* meanwhile the ring overflows */
        atomic_store(&r->first_done, 1);
    }
    if (strcmp(ev->key, "/ring/marker") == 0)
        atomic_store(&r->marker, 1);
}

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return s * n;
}

static long raw_get(const char *url)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    long code = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    return code;
}

static void test_metad_ring_overflow(void **state)
{
    (void)state;
    struct kv_meta *emb = open_ok("embedded://metad-ring");
    struct kv_metad *d = NULL;
    struct kv_metad_opts mo = {.addr = "127.0.0.1:0", .embedded_name = "metad-ring"};
    assert_int_equal(kv_metad_start(&mo, &d), KV_OK);
    char url[64], wurl[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", kv_metad_port(d));
    struct kv_meta *h = open_ok(url);
    struct slow_rec r = {0};
    uint64_t wid;
    assert_int_equal(kv_meta_watch(h, "/ring/", slow_cb, &r, &wid), KV_OK);
    assert_int_equal(kv_meta_put(emb, "/ring/first", "1", 1, 0), KV_OK);
    int64_t end = kv_now_ms() + 5000;
    while (atomic_load(&r.n) == 0 && kv_now_ms() < end)
        kv_sleep_ms(10);
    assert_int_equal(atomic_load(&r.n), 1);
    /* 5000 events while the callback sleeps: more than the ring keeps */
    for (int i = 0; i < 5000; i++) {
        char k[32];
        snprintf(k, sizeof(k), "/ring/k%d", i % 10);
        assert_int_equal(kv_meta_put(emb, k, "v", 1, 0), KV_OK);
    }
    /* revision 1 is now below the ring's floor: 410 */
    end = kv_now_ms() + 5000;
    long code = 0;
    snprintf(wurl, sizeof(wurl), "http://127.0.0.1:%u/watch?prefix=/ring/&after=1",
             kv_metad_port(d));
    while ((code = raw_get(wurl)) != 410 && kv_now_ms() < end)
        kv_sleep_ms(20);
    assert_int_equal(code, 410);
    /* the client re-syncs from the current revision and keeps delivering */
    while (!atomic_load(&r.first_done))
        kv_sleep_ms(10);
    end = kv_now_ms() + 10000;
    while (!atomic_load(&r.marker) && kv_now_ms() < end) {
        kv_meta_put(emb, "/ring/marker", "m", 1, 0);
        kv_sleep_ms(200);
    }
    assert_int_equal(atomic_load(&r.marker), 1);
    assert_int_equal(kv_meta_unwatch(h, wid), KV_OK);
    kv_meta_close(h);
    kv_metad_stop(d);
    kv_meta_close(emb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_alloc_failures), cmocka_unit_test(test_decode_query),
        cmocka_unit_test(test_decode_bodies),           cmocka_unit_test(test_data_codec),
        cmocka_unit_test(test_client_decoders),         cmocka_unit_test(test_metad_shared_store),
        cmocka_unit_test(test_metad_persistence),       cmocka_unit_test(test_metad_ring_overflow),
    };
    return cmocka_run_group_tests_name("meta.embedded+metad", tests, NULL, NULL);
}
