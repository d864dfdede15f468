/* SPDX-License-Identifier: Apache-2.0 */
/* test_router_inspect_ex.c - kv_rt_inspect_ex without the prompt text (roundrobin and session
 * policies): same model/user/stream and the same errors as kv_rt_inspect, no text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "router/router_int.h"

static void test_no_text(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"llama\",\"user\":\"u1\",\"stream\":true,\"max_tokens\":10,"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"a long prompt\"}]}";
    struct kv_rt_reqinfo ri;
    char err[256];
    assert_int_equal(kv_rt_inspect_ex(body, strlen(body), false, &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.model, "llama");
    assert_string_equal(ri.user, "u1");
    assert_true(ri.stream);
    assert_null(ri.text);
    assert_int_equal(ri.text_len, 0);
    assert_int_equal(ri.est_tokens, 10);
    kv_rt_reqinfo_fini(&ri);
    /* with the text: the same as kv_rt_inspect */
    assert_int_equal(kv_rt_inspect_ex(body, strlen(body), true, &ri, err, sizeof(err)), KV_OK);
    assert_string_equal(ri.text, "user: a long prompt\n");
    kv_rt_reqinfo_fini(&ri);
}

static void test_no_text_errors(void **state)
{
    (void)state;
    const char *bad[] = {"{\"messages\":[]}", "{\"model\":1}", "[1,2]", "{\"model\":\"m\"",
                         "{\"model\":\"\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kv_rt_reqinfo ri;
        char err[256] = "";
        assert_int_equal(kv_rt_inspect_ex(bad[i], strlen(bad[i]), false, &ri, err, sizeof(err)),
                         KV_EPROTO);
        assert_true(err[0] != '\0');
        assert_null(ri.model);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_text),
        cmocka_unit_test(test_no_text_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
