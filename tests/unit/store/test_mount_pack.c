/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_mount_pack.c - the packed MOUNT object records (src/store/mount_pack.h): every field
 * round-trips, including the largest key; an empty buffer is no objects; each kind of bad
 * record is rejected with a message naming the record and the problem.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "kvstash/store.h"
#include "store/mount_pack.h"

static uint8_t buf[3 * (KV_MOUNT_REC_FIXED + KV_STORE_MAX_KEY + 1)];

static size_t pack3(char *bigkey)
{
    memset(bigkey, 'k', KV_STORE_MAX_KEY);
    bigkey[KV_STORE_MAX_KEY] = '\0';
    Kvstash__NodeObject a = KVSTASH__NODE_OBJECT__INIT, b = a, c = a;
    a.key = "a";
    a.size = 1;
    a.checksum = 0xfedcba9876543210ull;
    a.offset = 1ull << 40;
    a.expire_at_ms = -5; /* carried as is: the master decides what it means */
    a.created_ms = 1764000000000;
    b.key = "ssd/key";
    b.tier = KVSTASH__TIER__TIER_SSD;
    b.pin = true;
    b.size = UINT64_MAX;
    c.key = bigkey;
    uint8_t *p = kv_mount_pack(buf, &a);
    p = kv_mount_pack(p, &b);
    p = kv_mount_pack(p, &c);
    return (size_t)(p - buf);
}

static void test_round_trip(void **state)
{
    (void)state;
    static char big[KV_STORE_MAX_KEY + 1];
    size_t len = pack3(big);
    assert_int_equal(len, kv_mount_rec_size(1) + kv_mount_rec_size(7) +
                              kv_mount_rec_size(KV_STORE_MAX_KEY));
    assert_int_equal(kv_mount_rec_len(buf), kv_mount_rec_size(1));
    Kvstash__NodeObject *v;
    size_t n;
    char err[160] = "";
    assert_int_equal(kv_mount_unpack(buf, len, &v, &n, err, sizeof(err)), KV_OK);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].key, "a");
    assert_int_equal(v[0].tier, KVSTASH__TIER__TIER_DRAM);
    assert_false(v[0].pin);
    assert_int_equal(v[0].size, 1);
    assert_int_equal(v[0].checksum, 0xfedcba9876543210ull);
    assert_int_equal(v[0].offset, 1ull << 40);
    assert_int_equal(v[0].expire_at_ms, -5);
    assert_int_equal(v[0].created_ms, 1764000000000);
    assert_string_equal(v[1].key, "ssd/key");
    assert_int_equal(v[1].tier, KVSTASH__TIER__TIER_SSD);
    assert_true(v[1].pin);
    assert_int_equal(v[1].size, UINT64_MAX);
    assert_string_equal(v[2].key, big);
    kv_free(v);
    assert_int_equal(kv_mount_unpack(buf, 0, &v, &n, err, sizeof(err)), KV_OK);
    assert_int_equal(n, 0);
    kv_free(v);
}

/* Decodes buf[0..len) and expects a rejection whose message holds want. */
static void rejects(size_t len, const char *want)
{
    Kvstash__NodeObject *v = (Kvstash__NodeObject *)1;
    size_t n = 99;
    char err[160] = "";
    assert_int_equal(kv_mount_unpack(buf, len, &v, &n, err, sizeof(err)), KV_EPROTO);
    assert_null(v);
    assert_int_equal(n, 0);
    print_message("rejected: %s\n", err);
    assert_non_null(strstr(err, want));
}

static void test_bad_records(void **state)
{
    (void)state;
    static char big[KV_STORE_MAX_KEY + 1];
    size_t len = pack3(big), r1 = kv_mount_rec_size(1);
    /* the second record, ssd/key, starts at r1 */
    rejects(len - 1, "packed object 2"); /* the big key's terminator is missing */
    rejects(r1 + 10, "packed object 1 (byte 46): cut short in its fixed part");
    rejects(r1 + KV_MOUNT_REC_FIXED + 3, "cut short in its key");
    buf[r1 + 2] = 7;
    rejects(len, "unknown tier");
    buf[r1 + 2] = KVSTASH__TIER__TIER_SSD;
    buf[r1 + 3] = 2;
    rejects(len, "unknown flag bits");
    buf[r1 + 3] = 1;
    buf[r1 + KV_MOUNT_REC_FIXED + 3] = '\0';
    rejects(len, "NUL inside the key");
    buf[r1 + KV_MOUNT_REC_FIXED + 3] = '/';
    buf[r1 + KV_MOUNT_REC_FIXED + 7] = 'x';
    rejects(len, "key not NUL-terminated");
    buf[r1 + KV_MOUNT_REC_FIXED + 7] = '\0';
    buf[r1] = 0;
    buf[r1 + 1] = 0;
    rejects(len, "key length out of 1..4096");
    buf[r1] = 0x01;
    buf[r1 + 1] = 0x10; /* 4097 */
    rejects(len, "key length out of 1..4096");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
