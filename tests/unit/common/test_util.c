/* SPDX-License-Identifier: Apache-2.0 */
/* test_util.c - strict parsers, sizes, host:port, the error map, buffers, id tables, hashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/hash.h"
#include "common/idtab.h"
#include "common/util.h"
#include "kvstash/kvstash.h"

static void test_parse_size(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_int_equal(kv_parse_size("4096", &v), KV_OK);
    assert_int_equal(v, 4096);
    assert_int_equal(kv_parse_size("64MiB", &v), KV_OK);
    assert_int_equal(v, 64ull << 20);
    assert_int_equal(kv_parse_size("4GiB", &v), KV_OK);
    assert_int_equal(v, 4ull << 30);
    assert_int_equal(kv_parse_size("4G", &v), KV_OK);
    assert_int_equal(v, 4ull << 30);
    assert_int_equal(kv_parse_size("1KB", &v), KV_OK);
    assert_int_equal(v, 1000);
    assert_int_equal(kv_parse_size("1.5KiB", &v), KV_OK);
    assert_int_equal(v, 1536);
    v = 7;
    assert_int_equal(kv_parse_size("", &v), KV_EINVAL);
    assert_int_equal(kv_parse_size("-1", &v), KV_EINVAL);
    assert_int_equal(kv_parse_size("12XB", &v), KV_EINVAL);
    assert_int_equal(kv_parse_size("1.5", &v), KV_EINVAL);
    assert_int_equal(kv_parse_size("99999999999999999999", &v), KV_ERANGE);
    assert_int_equal(kv_parse_size("20000000TiB", &v), KV_ERANGE);
    assert_int_equal(v, 7); /* failures leave the out-parameter alone */
}

static void test_parse_numbers(void **state)
{
    (void)state;
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    bool b = false;
    assert_int_equal(kv_parse_i64("-42", &i), KV_OK);
    assert_int_equal(i, -42);
    assert_int_equal(kv_parse_i64("010", &i), KV_OK);
    assert_int_equal(i, 10); /* decimal, never octal */
    assert_int_equal(kv_parse_i64("0x10", &i), KV_OK);
    assert_int_equal(i, 16);
    assert_int_equal(kv_parse_i64("12a", &i), KV_EINVAL);
    assert_int_equal(kv_parse_i64(" 1", &i), KV_EINVAL);
    assert_int_equal(kv_parse_u64("-1", &u), KV_EINVAL);
    assert_int_equal(kv_parse_u64("18446744073709551616", &u), KV_ERANGE);
    assert_int_equal(kv_parse_double("0.95", &d), KV_OK);
    assert_true(d > 0.949 && d < 0.951);
    assert_int_equal(kv_parse_double("nan", &d), KV_ERANGE);
    assert_int_equal(kv_parse_bool("Yes", &b), KV_OK);
    assert_true(b);
    assert_int_equal(kv_parse_bool("off", &b), KV_OK);
    assert_false(b);
    assert_int_equal(kv_parse_bool("maybe", &b), KV_EINVAL);
}

static void test_hostport(void **state)
{
    (void)state;
    char h[64];
    uint16_t p = 0;
    assert_int_equal(kv_parse_hostport("127.0.0.1:8080", h, sizeof(h), &p), KV_OK);
    assert_string_equal(h, "127.0.0.1");
    assert_int_equal(p, 8080);
    assert_int_equal(kv_parse_hostport(":9", h, sizeof(h), &p), KV_OK);
    assert_string_equal(h, "0.0.0.0");
    assert_int_equal(kv_parse_hostport("[::1]:80", h, sizeof(h), &p), KV_OK);
    assert_string_equal(h, "::1");
    assert_int_equal(kv_parse_hostport("host", h, sizeof(h), &p), KV_EINVAL);
    assert_int_equal(kv_parse_hostport("host:70000", h, sizeof(h), &p), KV_EINVAL);
    assert_int_equal(kv_parse_hostport("a:b:1", h, sizeof(h), &p), KV_EINVAL);
    assert_int_equal(kv_parse_hostport("averyveryverylonghostname:1", h, 8, &p), KV_ERANGE);
}

static void test_errors(void **state)
{
    (void)state;
    assert_string_equal(kv_err_name(KV_EINVAL), "KV_EINVAL");
    assert_string_equal(kv_err_name(KV_EXFER_BOUNDS), "KV_EXFER_BOUNDS");
    assert_string_equal(kv_err_name(12345), "KV_UNKNOWN");
    assert_string_equal(kv_strerror(KV_ENOENT), "not found");
    assert_string_equal(kv_strerror(-KV_ENOENT), "not found");
    assert_string_equal(kv_strerror(-9999), "unknown error");
    assert_int_equal(kv_err_from_errno(2 /* ENOENT */), KV_ENOENT);
}

static void test_buf(void **state)
{
    (void)state;
    struct kv_buf b;
    kv_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(kv_buf_appendf(&b, "%d,", i), KV_OK);
    assert_true(kv_startswith(b.data, "0,1,2,"));
    assert_int_equal(b.data[b.len], '\0');
    size_t before = b.len;
    kv_alloc_fail_at(1);
    assert_int_equal(kv_buf_reserve(&b, b.cap * 4), KV_ENOMEM);
    assert_int_equal(b.len, before); /* unchanged on failure */
    size_t n;
    char *s = kv_buf_steal(&b, &n);
    assert_int_equal(n, before);
    assert_null(b.data);
    kv_free(s);
    kv_buf_fini(&b);
}

static void test_idtab(void **state)
{
    (void)state;
    struct kv_idtab t;
    kv_idtab_init(&t);
    int objs[100];
    uint64_t ids[100];
    for (int i = 0; i < 100; i++)
        assert_int_equal(kv_idtab_add(&t, &objs[i], &ids[i]), KV_OK);
    assert_ptr_equal(kv_idtab_get(&t, ids[42]), &objs[42]);
    assert_ptr_equal(kv_idtab_remove(&t, ids[42]), &objs[42]);
    assert_null(kv_idtab_get(&t, ids[42])); /* stale */
    assert_null(kv_idtab_remove(&t, ids[42]));
    uint64_t nid;
    assert_int_equal(kv_idtab_add(&t, &objs[0], &nid), KV_OK);
    assert_int_equal((uint32_t)nid, (uint32_t)ids[42]); /* slot reused ... */
    assert_true(nid != ids[42]);                        /* ... with a new generation */
    assert_null(kv_idtab_get(&t, ids[42]));
    assert_null(kv_idtab_get(&t, 0));
    assert_null(kv_idtab_get(&t, ((uint64_t)1 << 32) | 5000));
    assert_int_equal(t.live, 100);
    kv_idtab_fini(&t);
}

static void test_hash(void **state)
{
    (void)state;
    /* XXH3 is specified: these values must never change across hosts or versions. */
    assert_true(kv_hash64("", 0) == 0x2D06800538D394C2ull);
    assert_true(kv_hash64("abc", 3) != kv_hash64("abd", 3));
    assert_true(kv_hash64_seed("abc", 3, 1) != kv_hash64("abc", 3));
}

/* kv_mem_populate commits shared memory without changing a byte, for any alignment. */
static void test_mem_populate(void **state)
{
    (void)state;
    size_t len = 3u << 20;
    int fd = memfd_create("kv-test-populate", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    for (size_t i = 0; i < len; i += 4096)
        if ((i / 4096) % 3 == 0)
            p[i] = (uint8_t)(i / 4096 + 1); /* some pages touched, most not */
    assert_int_equal(kv_mem_populate(p + 100, len - 5000), KV_OK); /* unaligned both ends */
    assert_int_equal(kv_mem_populate(p, len), KV_OK);
    for (size_t i = 0; i < len; i += 4096)
        assert_int_equal(p[i], (i / 4096) % 3 == 0 ? (uint8_t)(i / 4096 + 1) : 0);
    /* a second mapping of the same memory sees the same bytes after populating it too */
    uint8_t *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(q != MAP_FAILED);
    assert_int_equal(kv_mem_populate(q, len), KV_OK);
    assert_memory_equal(p, q, len);
    munmap(q, len);
    munmap(p, len);
    close(fd);
}

static void test_alloc_hook(void **state)
{
    (void)state;
    kv_alloc_fail_at(2);
    void *a = kv_malloc(8);
    void *b = kv_malloc(8);
    void *c = kv_malloc(8);
    assert_non_null(a);
    assert_null(b);
    assert_non_null(c);
    kv_free(a);
    kv_free(c);
    kv_alloc_fail_at(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),   cmocka_unit_test(test_parse_numbers),
        cmocka_unit_test(test_hostport),     cmocka_unit_test(test_errors),
        cmocka_unit_test(test_buf),          cmocka_unit_test(test_idtab),
        cmocka_unit_test(test_hash),         cmocka_unit_test(test_alloc_hook),
        cmocka_unit_test(test_mem_populate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
