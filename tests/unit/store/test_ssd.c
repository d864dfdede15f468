/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_ssd.c - the node's SSD tier: header encode/decode (and every kind of damage), write ->
 * close -> reopen finds the objects, a corrupt file is moved aside at scan and at read, the
 * capacity drops the oldest files, versions (created) guard removes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "store/ssd.h"

static void test_header(void **state)
{
    (void)state;
    struct kv_ssd_hdr h = {5, 1234, 0xabcdef, 99, 42, 1};
    uint8_t b[128];
    size_t n;
    assert_int_equal(kv_ssd_hdr_encode(&h, "hello", b, 10, &n), KV_E2BIG);
    assert_int_equal(kv_ssd_hdr_encode(&h, "hello", b, sizeof(b), &n), KV_OK);
    assert_int_equal(n, KV_SSD_HDR_FIXED + 5);
    struct kv_ssd_hdr d;
    const char *k;
    size_t hl;
    assert_int_equal(kv_ssd_hdr_decode(b, n, &d, &k, &hl), KV_OK);
    assert_int_equal(hl, n);
    assert_memory_equal(k, "hello", 5);
    assert_int_equal(d.size, 1234);
    assert_int_equal(d.checksum, 0xabcdef);
    assert_int_equal(d.expire_at_ms, 99);
    assert_int_equal(d.created_ms, 42);
    assert_int_equal(d.flags, 1);
    /* every truncation fails */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(kv_ssd_hdr_decode(b, i, &d, &k, &hl), KV_EPROTO);
    /* every single-byte flip fails (magic, version, lengths, fields, check, key) */
    for (size_t i = 0; i < n; i++) {
        b[i] ^= 0x20;
        assert_int_equal(kv_ssd_hdr_decode(b, n, &d, &k, &hl), KV_EPROTO);
        b[i] ^= 0x20;
    }
    h.key_len = 0;
    assert_int_equal(kv_ssd_hdr_encode(&h, "", b, sizeof(b), &n), KV_EINVAL);
}

static char dir[256];

static int mkdir_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/kvstash-test-ssd-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int rm_teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static int put(struct kv_ssd *s, const char *key, size_t len, int64_t created, char fill)
{
    char *v = kv_malloc(len);
    memset(v, fill, len);
    struct kv_ssd_obj o = {key, len, kv_hash64(v, len), 0, created, false};
    int rc = kv_ssd_write(s, &o, v, NULL, NULL);
    kv_free(v);
    return rc;
}

static void count_cb(void *ud, const struct kv_ssd_obj *o)
{
    (void)o;
    (*(int *)ud)++;
}

static void test_reopen_and_corrupt(void **state)
{
    (void)state;
    struct kv_ssd *s;
    assert_int_equal(kv_ssd_open(dir, 1 << 20, &s), KV_OK);
    assert_int_equal(put(s, "a", 1000, 1, 'a'), KV_OK);
    assert_int_equal(put(s, "b", 2000, 2, 'b'), KV_OK);
    assert_int_equal(put(s, "c", 3000, 3, 'c'), KV_OK);
    assert_int_equal(put(s, "d", 0, 4, 'd'), KV_OK); /* empty value */
    assert_int_equal(kv_ssd_count(s), 4);
    char buf[4000];
    uint64_t sz;
    assert_int_equal(kv_ssd_read(s, "b", 0, buf, sizeof(buf), &sz), KV_OK);
    assert_int_equal(sz, 2000);
    assert_true(buf[0] == 'b' && buf[1999] == 'b');
    assert_int_equal(kv_ssd_read(s, "b", 7, buf, sizeof(buf), &sz), KV_ENOENT);
    assert_int_equal(kv_ssd_read(s, "b", 2, buf, 10, &sz), KV_E2BIG);
    assert_int_equal(kv_ssd_read(s, "zz", 0, buf, sizeof(buf), &sz), KV_ENOENT);
    kv_ssd_close(s);
    /* corrupt "a" (value byte) and "c" (header), add junk, a temp file and a foreign file */
    char path[400];
    snprintf(path, sizeof(path), "%s/.tmp-x.kvo", dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    close(fd);
    snprintf(path, sizeof(path), "%s/junk.kvo", dir);
    fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_int_equal(write(fd, "KVSSD01\nxx", 10), 10);
    close(fd);
    snprintf(path, sizeof(path), "%s/README", dir);
    fd = open(path, O_CREAT | O_WRONLY, 0644);
    close(fd);
    assert_int_equal(kv_ssd_open(dir, 1 << 20, &s), KV_OK);
    assert_int_equal(kv_ssd_count(s), 4);
    kv_ssd_close(s);
    /* find files for a and c by scanning: flip a byte at the end of every file of size 56+1+1000
     * (a) and the 20th byte of the one of size 56+1+3000 (c) */
    char cmd[600];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && for f in *.kvo; do s=$(stat -c %%s $f); "
             "if [ $s = 1057 ]; then printf 'X' | dd of=$f bs=1 seek=1056 conv=notrunc 2>/dev/null;"
             " fi; if [ $s = 3057 ]; then printf 'X' | dd of=$f bs=1 seek=20 conv=notrunc "
             "2>/dev/null; fi; done",
             dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(kv_ssd_open(dir, 1 << 20, &s), KV_OK);
    assert_int_equal(kv_ssd_count(s), 2);
    assert_false(kv_ssd_has(s, "a", NULL));
    assert_false(kv_ssd_has(s, "c", NULL));
    int64_t created = 0;
    assert_true(kv_ssd_has(s, "b", &created));
    assert_int_equal(created, 2);
    int n = 0;
    kv_ssd_foreach(s, count_cb, &n);
    assert_int_equal(n, 2);
    /* moved aside: corrupt/ has a, c and junk */
    snprintf(cmd, sizeof(cmd), "test $(ls '%s/corrupt' | wc -l) = 3 && test ! -e '%s/.tmp-x.kvo'",
             dir, dir);
    assert_int_equal(system(cmd), 0);
    /* damage after open: detected at read */
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && for f in *.kvo; do s=$(stat -c %%s $f); if [ $s = 2057 ]; then printf 'X' "
             "| dd of=$f bs=1 seek=2000 conv=notrunc 2>/dev/null; fi; done",
             dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(kv_ssd_read(s, "b", 0, buf, sizeof(buf), &sz), KV_ECHECKSUM);
    assert_false(kv_ssd_has(s, "b", NULL));
    /* versions guard remove */
    assert_int_equal(kv_ssd_remove(s, "d", 99), KV_ENOENT);
    assert_int_equal(kv_ssd_remove(s, "d", 4), KV_OK);
    assert_int_equal(kv_ssd_count(s), 0);
    assert_int_equal(kv_ssd_used(s), 0);
    kv_ssd_close(s);
}

static void dropped_cb(void *ud, const char *key)
{
    char *out = ud;
    strncat(out, key, 10);
}

static void test_capacity(void **state)
{
    (void)state;
    struct kv_ssd *s;
    uint64_t per = KV_SSD_HDR_FIXED + 2 + 10000;
    assert_int_equal(kv_ssd_open(dir, 3 * per, &s), KV_OK);
    assert_int_equal(put(s, "k1", 10000, 10, '1'), KV_OK);
    assert_int_equal(put(s, "k2", 10000, 5, '2'), KV_OK); /* oldest by created */
    assert_int_equal(put(s, "k3", 10000, 30, '3'), KV_OK);
    assert_int_equal(kv_ssd_used(s), 3 * per);
    char *v = kv_malloc(10000);
    memset(v, '4', 10000);
    struct kv_ssd_obj o = {"k4", 10000, kv_hash64(v, 10000), 0, 40, false};
    char dropped[64] = "";
    assert_int_equal(kv_ssd_write(s, &o, v, dropped_cb, dropped), KV_OK);
    assert_string_equal(dropped, "k2");
    assert_int_equal(kv_ssd_count(s), 3);
    /* rewrite of an existing key does not drop others */
    dropped[0] = '\0';
    o.created_ms = 41;
    assert_int_equal(kv_ssd_write(s, &o, v, dropped_cb, dropped), KV_OK);
    assert_string_equal(dropped, "");
    int64_t c;
    assert_true(kv_ssd_has(s, "k4", &c));
    assert_int_equal(c, 41);
    /* larger than the whole tier */
    struct kv_ssd_obj big = {"big", 4 * per, 0, 0, 50, false};
    assert_int_equal(kv_ssd_write(s, &big, v, NULL, NULL), KV_ENOSPC);
    kv_free(v);
    kv_ssd_close(s);
}

/* Every allocation of open (scan) and write fails in turn: an error, never a crash or a leak,
 * and the tier stays consistent. */
static void test_alloc_failures(void **state)
{
    (void)state;
    struct kv_ssd *s;
    assert_int_equal(kv_ssd_open(dir, 1 << 20, &s), KV_OK);
    assert_int_equal(put(s, "one", 100, 1, '1'), KV_OK);
    assert_int_equal(put(s, "two", 200, 2, '2'), KV_OK);
    kv_ssd_close(s);
    for (long n = 1; n < 200; n++) {
        kv_alloc_fail_at(n);
        int rc = kv_ssd_open(dir, 1 << 20, &s);
        kv_alloc_fail_at(0);
        if (rc == KV_OK) { /* n passed every allocation of open: nothing was lost */
            assert_int_equal(kv_ssd_count(s), 2);
            kv_ssd_close(s);
            break;
        }
        assert_int_equal(rc, KV_ENOMEM);
    }
    assert_int_equal(kv_ssd_open(dir, 1 << 20, &s), KV_OK);
    char v[300];
    memset(v, 'x', sizeof(v));
    struct kv_ssd_obj o = {"three", sizeof(v), kv_hash64(v, sizeof(v)), 0, 3, false};
    for (long n = 1; n < 50; n++) {
        kv_alloc_fail_at(n);
        int rc = kv_ssd_write(s, &o, v, NULL, NULL);
        kv_alloc_fail_at(0);
        if (rc == KV_OK)
            break;
        assert_int_equal(rc, KV_ENOMEM);
        assert_false(kv_ssd_has(s, "three", NULL));
    }
    assert_true(kv_ssd_has(s, "three", NULL));
    uint64_t sz;
    char back[300];
    assert_int_equal(kv_ssd_read(s, "three", 0, back, sizeof(back), &sz), KV_OK);
    assert_memory_equal(back, v, sizeof(v));
    kv_ssd_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test_setup_teardown(test_reopen_and_corrupt, mkdir_setup, rm_teardown),
        cmocka_unit_test_setup_teardown(test_capacity, mkdir_setup, rm_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, mkdir_setup, rm_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
