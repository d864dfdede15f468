/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_auth.c - the shared-token checks (common/auth.h): kv_auth_check's answers and reasons,
 * kv_auth_http's "Bearer" parsing against the process token, KVSTASH_TOKEN as the default and
 * kv_auth_set_token replacing it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/auth.h"

static void test_check(void **state)
{
    (void)state;
    const char *why = "unset";
    assert_int_equal(kv_auth_check(NULL, false, NULL, 0, &why), KV_OK);
    assert_null(why);
    assert_int_equal(kv_auth_check("tok", false, NULL, 0, &why), KV_EPERM);
    assert_string_equal(why, "authentication required");
    assert_int_equal(kv_auth_check("tok", true, "tok", 3, &why), KV_OK);
    assert_null(why);
    assert_int_equal(kv_auth_check("tok", true, "tok!", 4, &why), KV_EPERM);
    assert_string_equal(why, "bad token");
    assert_int_equal(kv_auth_check("tok", true, "to", 2, &why), KV_EPERM);
    assert_int_equal(kv_auth_check("tok", true, "tOk", 3, &why), KV_EPERM);
    assert_int_equal(kv_auth_check("tok", true, NULL, 0, &why), KV_EPERM);
    assert_string_equal(why, "bad token");
}

static void test_env_then_set(void **state)
{
    (void)state;
    /* main() set KVSTASH_TOKEN before the first kv_auth_token() */
    assert_non_null(kv_auth_token());
    assert_string_equal(kv_auth_token(), "from-env");
    const char *why;
    assert_int_equal(kv_auth_http("Bearer from-env", "127.0.0.1:9", "POST /x", &why), KV_OK);
    assert_int_equal(kv_auth_http("bearer  from-env", "127.0.0.1:9", "POST /x", &why), KV_OK);
    assert_int_equal(kv_auth_http(NULL, "127.0.0.1:9", "POST /x", &why), KV_EPERM);
    assert_string_equal(why, "authentication required");
    assert_int_equal(kv_auth_http("Bearer wrong", "127.0.0.1:9", "POST /x", &why), KV_EPERM);
    assert_string_equal(why, "bad token");
    assert_int_equal(kv_auth_http("Basic from-env", NULL, NULL, &why), KV_EPERM);
    assert_string_equal(why, "bad token");
    /* a flag replaces the environment's token; "" means none */
    assert_int_equal(kv_auth_set_token("from-flag"), KV_OK);
    assert_string_equal(kv_auth_token(), "from-flag");
    assert_int_equal(kv_auth_http("Bearer from-env", NULL, NULL, &why), KV_EPERM);
    assert_int_equal(kv_auth_http("Bearer from-flag", NULL, NULL, &why), KV_OK);
    assert_int_equal(kv_auth_set_token(""), KV_OK);
    assert_null(kv_auth_token());
    assert_int_equal(kv_auth_http(NULL, NULL, NULL, &why), KV_OK);
    static char huge[KV_AUTH_MAX_TOKEN + 2];
    memset(huge, 'a', sizeof(huge) - 1);
    assert_int_equal(kv_auth_set_token(huge), KV_E2BIG);
    assert_int_equal(kv_auth_set_token(NULL), KV_OK);
}

int main(void)
{
    setenv("KVSTASH_TOKEN", "from-env", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_env_then_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
