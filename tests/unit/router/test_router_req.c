/* SPDX-License-Identifier: Apache-2.0 */
/* test_router_req.c - engine URL normalisation, OpenAI request inspection, error bodies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/json.h"
#include "router/router_int.h"

static int norm(const char *in, char *out, size_t n)
{
    char err[256];
    return kv_rt_url_normalize(in, out, n, NULL, 0, NULL, NULL, 0, err, sizeof(err));
}

static void test_url_normalize(void **state)
{
    (void)state;
    char a[300], b[300], host[64], path[64], err[256];
    uint16_t port = 0;
    /* the spellings ELRAR failed to match all give one name */
    const char *same[] = {"http://localhost:8001",  "http://127.0.0.1:8001/",
                          "127.0.0.1:8001",         "localhost:8001//",
                          "HTTP://LocalHost:8001/", "http://127.0.0.1:8001"};
    assert_int_equal(norm(same[0], a, sizeof(a)), KV_OK);
    assert_string_equal(a, "http://127.0.0.1:8001");
    for (size_t i = 1; i < sizeof(same) / sizeof(same[0]); i++) {
        assert_int_equal(norm(same[i], b, sizeof(b)), KV_OK);
        assert_string_equal(a, b);
    }
    assert_int_equal(kv_rt_url_normalize("http://Engine-1/v1/", a, sizeof(a), host, sizeof(host),
                                         &port, path, sizeof(path), err, sizeof(err)),
                     KV_OK);
    assert_string_equal(a, "http://engine-1:80/v1");
    assert_string_equal(host, "engine-1");
    assert_int_equal(port, 80);
    assert_string_equal(path, "/v1");
    assert_int_equal(kv_rt_url_normalize("http://[::1]:9000", a, sizeof(a), host, sizeof(host),
                                         &port, path, sizeof(path), err, sizeof(err)),
                     KV_OK);
    assert_string_equal(a, "http://[::1]:9000");
    assert_string_equal(host, "::1");
    assert_string_equal(path, "");
    /* rejected, with a message naming the URL */
    const char *bad[] = {"",
                         "https://x:1",
                         "ftp://x",
                         "http://",
                         "http://x:0",
                         "http://x:99999",
                         "http://x:1/?q",
                         "http://u@x:1",
                         "http:// bad host"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(
            kv_rt_url_normalize(bad[i], a, sizeof(a), NULL, 0, NULL, NULL, 0, err, sizeof(err)),
            KV_EINVAL);
        assert_true(strlen(err) > 0);
    }
    /* output too small */
    assert_int_equal(norm("http://127.0.0.1:8001", a, 10), KV_EINVAL);
}

static void test_inspect_chat(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"llama\",\"user\":\"u1\",\"stream\":true,\"max_tokens\":10,"
                       "\"messages\":[{\"role\":\"system\",\"content\":\"be nice\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"},"
                       "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}";
    struct kv_rt_reqinfo ri;
    char err[256];
    assert_int_equal(kv_rt_inspect(body, strlen(body), &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.model, "llama");
    assert_string_equal(ri.user, "u1");
    assert_true(ri.stream);
    assert_string_equal(ri.text, "system: be nice\nuser: hi\n");
    assert_int_equal(ri.text_len, strlen(ri.text));
    assert_int_equal(ri.est_tokens, (int64_t)((ri.text_len + 3) / 4) + 10);
    kv_rt_reqinfo_fini(&ri);
    kv_rt_reqinfo_fini(&ri); /* idempotent */
}

static void test_inspect_completion(void **state)
{
    (void)state;
    struct kv_rt_reqinfo ri;
    char err[256];
    const char *b1 = "{\"model\":\"m\",\"prompt\":\"hello world\"}";
    assert_int_equal(kv_rt_inspect(b1, strlen(b1), &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.text, "hello world");
    assert_false(ri.stream);
    assert_null(ri.user);
    kv_rt_reqinfo_fini(&ri);
    const char *b2 = "{\"model\":\"m\",\"prompt\":[\"a\",\"b\",3]}";
    assert_int_equal(kv_rt_inspect(b2, strlen(b2), &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.text, "ab");
    kv_rt_reqinfo_fini(&ri);
    const char *b3 = "{\"model\":\"m\",\"prompt\":[1,2,3],\"stream\":false}";
    assert_int_equal(kv_rt_inspect(b3, strlen(b3), &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.text, "");
    assert_int_equal(ri.text_len, 0);
    kv_rt_reqinfo_fini(&ri);
    const char *b4 = "{\"model\":\"e\",\"input\":\"embed me\"}";
    assert_int_equal(kv_rt_inspect(b4, strlen(b4), &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.text, "embed me");
    kv_rt_reqinfo_fini(&ri);
}

static void test_inspect_errors(void **state)
{
    (void)state;
    struct kv_rt_reqinfo ri;
    char err[256];
    struct {
        const char *body, *msg;
    } cases[] = {
        {"", "bad JSON"},
        {"{\"model\":", "bad JSON"},
        {"[1,2]", "JSON object"},
        {"{\"prompt\":\"x\"}", "missing field \"model\""},
        {"{\"model\":3}", "\"model\" must be"},
        {"{\"model\":\"\"}", "\"model\" must be"},
        {"{\"model\":\"a\\u0000b\"}", "NUL"},
        {"{\"model\":\"m\",\"model\":\"n\"}", "bad JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&ri, 0x5a, sizeof(ri));
        assert_int_equal(kv_rt_inspect(cases[i].body, strlen(cases[i].body), &ri, err, sizeof(err)),
                         KV_EPROTO);
        assert_non_null(strstr(err, cases[i].msg));
        assert_null(ri.model);
        assert_null(ri.text);
    }
}

static void test_inspect_alloc_failures(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\",\"user\":\"u\",\"messages\":[{\"role\":\"user\","
                       "\"content\":\"a long enough prompt to need a buffer\"}]}";
    struct kv_rt_reqinfo ri;
    char err[256];
    int ok = 0;
    for (long n = 1; n < 200 && !ok; n++) {
        kv_alloc_fail_at(n);
        int rc = kv_rt_inspect(body, strlen(body), &ri, err, sizeof(err));
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            assert_string_equal(ri.model, "m");
            kv_rt_reqinfo_fini(&ri);
            ok = 1;
        } else {
            /* jansson reports its own ENOMEM as a parse error */
            assert_true(rc == KV_ENOMEM || rc == KV_EPROTO);
            assert_null(ri.model);
        }
    }
    assert_true(ok);
}

static void test_error_body(void **state)
{
    (void)state;
    char *s = kv_rt_error_body("The model `x` does not exist.", "NotFoundError", 404);
    assert_non_null(s);
    json_t *v;
    char err[128];
    assert_int_equal(kv_json_parse(s, strlen(s), &v, err, sizeof(err)), KV_OK);
    json_t *e = json_object_get(v, "error");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "The model `x` does not exist.");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "NotFoundError");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 404);
    json_decref(v);
    kv_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_normalize),          cmocka_unit_test(test_inspect_chat),
        cmocka_unit_test(test_inspect_completion),     cmocka_unit_test(test_inspect_errors),
        cmocka_unit_test(test_inspect_alloc_failures), cmocka_unit_test(test_error_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
