/* SPDX-License-Identifier: Apache-2.0 */
/* test_config.c - the option table: precedence, strictness, messages, config files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/config.h"
#include "common/util.h"

static const struct kv_cfg_opt opts[] = {
    {"capacity", "KVT_CAPACITY", NULL, KV_CFG_SIZE, "64MiB", 1, 1e12, NULL, NULL, "cap"},
    {"threads", "KVT_THREADS", "KVT_THREADS_ALT", KV_CFG_INT, "2", 1, 64, NULL, NULL, "n"},
    {"mode", NULL, NULL, KV_CFG_ENUM, "target", 0, 0, "target|initiator", NULL, "mode"},
    {"verify", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL, "verify"},
    {"ratio", NULL, NULL, KV_CFG_DOUBLE, "0.95", 0, 1, NULL, NULL, "r"},
    {"name", "KVT_NAME", NULL, KV_CFG_STR, NULL, 0, 0, NULL, NULL, "name"},
};

static struct kv_cfg mk(void)
{
    struct kv_cfg c = {.prog = "test", .opts = opts, .nopts = sizeof(opts) / sizeof(opts[0])};
    return c;
}

static int parse(struct kv_cfg *c, char *err, int n, ...)
{
    char *argv[16] = {"sub"};
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        argv[i + 1] = va_arg(ap, char *);
    va_end(ap);
    return kv_cfg_parse(c, n + 1, argv, err, 512);
}

static void test_defaults(void **state)
{
    (void)state;
    unsetenv("KVT_CAPACITY");
    struct kv_cfg c = mk();
    char err[512];
    assert_int_equal(parse(&c, err, 0), KV_OK);
    assert_int_equal(kv_cfg_size(&c, "capacity"), 64ull << 20);
    assert_int_equal(kv_cfg_int(&c, "threads"), 2);
    assert_string_equal(kv_cfg_str(&c, "mode"), "target");
    assert_false(kv_cfg_bool(&c, "verify"));
    assert_false(kv_cfg_isset(&c, "name"));
    assert_null(kv_cfg_str(&c, "name"));
    assert_int_equal(kv_cfg_source(&c, "capacity"), KV_CFG_SRC_DEFAULT);
    kv_cfg_fini(&c);
}

static void test_flags_forms(void **state)
{
    (void)state;
    struct kv_cfg c = mk();
    char err[512];
    assert_int_equal(
        parse(&c, err, 6, "--capacity=1GiB", "pos1", "--threads", "8", "--verify", "pos2"), KV_OK);
    assert_int_equal(kv_cfg_size(&c, "capacity"), 1ull << 30);
    assert_int_equal(kv_cfg_int(&c, "threads"), 8);
    assert_true(kv_cfg_bool(&c, "verify"));
    assert_int_equal(c.nargs, 2);
    assert_string_equal(c.args[0], "pos1");
    assert_string_equal(c.args[1], "pos2");
    kv_cfg_fini(&c);

    c = mk(); /* underscores == dashes, --no-bool, -- ends options */
    assert_int_equal(parse(&c, err, 4, "--Capacity=1", "--no-verify", "--", "--threads"),
                     KV_EINVAL); /* keys are case-sensitive */
    kv_cfg_fini(&c);
    c = mk();
    assert_int_equal(parse(&c, err, 3, "--no-verify", "--", "--threads"), KV_OK);
    assert_false(kv_cfg_bool(&c, "verify"));
    assert_int_equal(c.nargs, 1);
    assert_string_equal(c.args[0], "--threads");
    kv_cfg_fini(&c);
}

static void test_errors_name_the_problem(void **state)
{
    (void)state;
    struct kv_cfg c = mk();
    char err[512];
    assert_int_equal(parse(&c, err, 1, "--bogus"), KV_EINVAL);
    assert_non_null(strstr(err, "unknown option '--bogus'"));
    kv_cfg_fini(&c);

    c = mk();
    assert_int_equal(parse(&c, err, 1, "--capacity=4XB"), KV_EINVAL);
    assert_non_null(strstr(err, "--capacity"));
    assert_non_null(strstr(err, "'4XB' is not a size"));
    kv_cfg_fini(&c);

    c = mk();
    assert_int_equal(parse(&c, err, 1, "--threads=100"), KV_ERANGE);
    assert_non_null(strstr(err, "outside"));
    kv_cfg_fini(&c);

    c = mk();
    assert_int_equal(parse(&c, err, 1, "--mode=both"), KV_EINVAL);
    assert_non_null(strstr(err, "target|initiator"));
    kv_cfg_fini(&c);

    c = mk();
    assert_int_equal(parse(&c, err, 1, "--threads"), KV_EINVAL);
    assert_non_null(strstr(err, "needs a value"));
    kv_cfg_fini(&c);

    c = mk();
    assert_int_equal(parse(&c, err, 1, "-x"), KV_EINVAL);
    kv_cfg_fini(&c);

    setenv("KVT_THREADS", "lots", 1);
    c = mk();
    assert_int_equal(parse(&c, err, 0), KV_EINVAL);
    assert_non_null(strstr(err, "KVT_THREADS")); /* names the source */
    kv_cfg_fini(&c);
    unsetenv("KVT_THREADS");
}

static void test_precedence(void **state)
{
    (void)state;
    char path[] = "/tmp/kvt_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *json = "{\"capacity\": \"2GiB\", \"threads\": 3, \"ratio\": 0.5, \"verify\": true}";
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);

    char cfgflag[64];
    snprintf(cfgflag, sizeof(cfgflag), "--config=%s", path);
    setenv("KVT_THREADS_ALT", "5", 1);
    struct kv_cfg c = mk();
    char err[512];
    assert_int_equal(parse(&c, err, 2, cfgflag, "--ratio=0.25"), KV_OK);
    assert_int_equal(kv_cfg_size(&c, "capacity"), 2ull << 30); /* file > default */
    assert_int_equal(kv_cfg_int(&c, "threads"), 5);            /* env > file */
    assert_true(kv_cfg_double(&c, "ratio") == 0.25);           /* flag > file */
    assert_true(kv_cfg_bool(&c, "verify"));
    assert_int_equal(kv_cfg_source(&c, "threads"), KV_CFG_SRC_ENV);
    kv_cfg_fini(&c);
    unsetenv("KVT_THREADS_ALT");

    FILE *f = fopen(path, "w");
    fputs("{\"nope\": 1}", f);
    fclose(f);
    c = mk();
    assert_int_equal(parse(&c, err, 1, cfgflag), KV_EINVAL);
    assert_non_null(strstr(err, "unknown option \"nope\""));
    kv_cfg_fini(&c);

    f = fopen(path, "w");
    fputs("{\"threads\": ", f);
    fclose(f);
    c = mk();
    assert_int_equal(parse(&c, err, 1, cfgflag), KV_EINVAL);
    assert_non_null(strstr(err, "line 1"));
    kv_cfg_fini(&c);
    unlink(path);
}

static void test_alloc_failures(void **state)
{
    (void)state;
    /* Every allocation of a parse may fail: no crash, no leak (ASan checks the latter). */
    for (long n = 1; n < 200; n++) {
        struct kv_cfg c = mk();
        char err[512];
        kv_alloc_fail_at(n);
        int rc = parse(&c, err, 3, "--capacity=1GiB", "--name", "x");
        kv_alloc_fail_at(0);
        kv_cfg_fini(&c);
        if (rc == KV_OK)
            break;
        assert_int_equal(rc, KV_ENOMEM);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags_forms),
        cmocka_unit_test(test_errors_name_the_problem),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
