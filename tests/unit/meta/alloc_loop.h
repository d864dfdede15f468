/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc_loop.h - the allocation-failure loop shared by the backend tests (test_etcd.c,
 * test_redis.c). Include after cmocka.h.
 *
 * Each op is run with allocation n failing, n = 1, 2, ... until it makes fewer than n
 * allocations: every failure must be a clean KV_ENOMEM (or KV_EPROTO when the JSON parser
 * reports it as a parse error), never a crash or a leak (ASan builds check leaks).
 */
#ifndef KV_TEST_META_ALLOC_LOOP_H
#define KV_TEST_META_ALLOC_LOOP_H

#include <stdio.h>

#include "common/alloc.h"
#include "kvstash/meta.h"

static int af_op(struct kv_meta *m, const char *prefix, int op, long n, int64_t lease)
{
    char key[128], base[128];
    snprintf(key, sizeof(key), "%s%d/%ld", prefix, op, n);
    snprintf(base, sizeof(base), "%sbase", prefix);
    char *v = NULL;
    size_t len = 0;
    struct kv_meta_kv *kvs = NULL;
    size_t cnt = 0;
    int rc;
    switch (op) {
    case 0:
        return kv_meta_put(m, key, "v\0w", 3, lease);
    case 1:
        rc = kv_meta_get(m, base, &v, &len);
        kv_meta_free(v);
        return rc;
    case 2:
        rc = kv_meta_list(m, prefix, &kvs, &cnt);
        kv_meta_kvs_free(kvs, cnt);
        return rc;
    case 3:
        return kv_meta_cas(m, key, NULL, 0, "c", 1, lease);
    case 4:
        return kv_meta_cas(m, base, "base", 4, "base", 4, 0);
    case 5:
        return kv_meta_lease_keepalive(m, lease);
    default:
        return kv_meta_del(m, base);
    }
}

/* Runs every op of af_op against the backend at url, keys under prefix (ending in '/'). */
static void meta_alloc_failure_loop(const char *url, const char *prefix)
{
    struct kv_meta *m = NULL;
    assert_int_equal(kv_meta_open(url, NULL, &m), KV_OK);
    int64_t lease = 0;
    assert_int_equal(kv_meta_lease_grant(m, 60, &lease), KV_OK);
    char base[128];
    snprintf(base, sizeof(base), "%sbase", prefix);
    for (int op = 0; op < 7; op++) {
        for (long n = 1;; n++) {
            assert_true(n < 1000);
            /* get, cas and del need the key before each try */
            assert_int_equal(kv_meta_put(m, base, "base", 4, 0), KV_OK);
            long before = kv_alloc_calls();
            kv_alloc_fail_at(n);
            int rc = af_op(m, prefix, op, n, lease);
            long used = kv_alloc_calls() - before;
            kv_alloc_fail_at(0);
            if (used < n) {
                assert_int_equal(rc, KV_OK);
                break;
            }
            if (rc != KV_OK && rc != KV_ENOMEM && rc != KV_EPROTO)
                fail_msg("op %d with allocation %ld failing: %s", op, n, kv_err_name(rc));
        }
    }
    assert_int_equal(kv_meta_lease_revoke(m, lease), KV_OK);
    kv_meta_close(m);
}

#endif
