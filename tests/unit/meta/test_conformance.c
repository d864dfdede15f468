/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_conformance.c - one set of metadata tests run against every backend: embedded, http
 * (an in-process kv_metad on 127.0.0.1:0), etcd and Redis (real servers started here on free
 * ports, killed and reaped in the group teardown).
 *
 * Each backend is a cmocka group. Every backend is built into every binary (none returns
 * KV_ENOTBUILT any more), so no test skips; a missing etcd or redis-server binary is a failure
 * (they are in scripts/packages.txt). The outage test stops the group's server, so it
 * runs last in each group. Lease TTLs are 2 s (etcd's minimum TTL is about 1.5 s); waits poll
 * against a deadline instead of sleeping blindly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend_server.h"
#include "common/alloc.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/meta.h"
#include "meta/metad.h"

#define TIMEOUT_MS 1000
#define TTL_S 2
#define KV_META_MAX_VALUE_TEST (1u << 20) /* meta_int.h: KV_META_MAX_VALUE */

struct backend {
    const char *name;
    char url[256];
    pid_t pid; /* server process group (etcd, redis), <= 0 = none */
    char tmpdir[128];
    struct kv_metad *md; /* http */
    struct kv_meta *m;   /* shared handle for the group */
};

/* ---- helpers ---- */

static struct kv_meta *open_url(const char *url)
{
    struct kv_meta_opts o = {.timeout_ms = TIMEOUT_MS};
    struct kv_meta *m = NULL;
    int rc = kv_meta_open(url, &o, &m);
    if (rc != KV_OK)
        fail_msg("kv_meta_open(%s): %s", url, kv_err_name(rc));
    return m;
}

static void key_of(char *buf, size_t n, const struct backend *b, const char *test, const char *k)
{
    snprintf(buf, n, "/conf/%s/%s/%s", b->name, test, k);
}

static void check_value(struct kv_meta *m, const char *key, const void *want, size_t wlen)
{
    char *v = NULL;
    size_t len = 0;
    int rc = kv_meta_get(m, key, &v, &len);
    if (rc != KV_OK)
        fail_msg("get %s: %s", key, kv_err_name(rc));
    assert_int_equal(len, wlen);
    assert_memory_equal(v, want, wlen);
    assert_int_equal(v[len], '\0');
    kv_meta_free(v);
}

static void check_absent(struct kv_meta *m, const char *key)
{
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(kv_meta_get(m, key, &v, &len), KV_ENOENT);
}

/* ---- server processes ---- */

static bool have_binary(const char *name)
{
    const char *path = getenv("PATH");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path ? path : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dir, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", d, name);
        if (access(p, X_OK) == 0)
            return true;
    }
    return false;
}

static void stop_server(struct backend *b)
{
    srv_kill_reap(&b->pid);
    kv_metad_stop(b->md);
    b->md = NULL;
}

static void rm_tmpdir(struct backend *b)
{
    if (!b->tmpdir[0])
        return;
    char *argv[] = {"rm", "-rf", b->tmpdir, NULL};
    pid_t pid = srv_spawn(argv, "/dev/null");
    if (pid > 0)
        waitpid(pid, NULL, 0);
    b->tmpdir[0] = '\0';
}

/* Opens b->url until it answers (the server may still be starting). */
static int open_until_ready(struct backend *b, int deadline_ms)
{
    struct kv_meta_opts o = {.timeout_ms = TIMEOUT_MS};
    int64_t end = kv_now_ms() + deadline_ms;
    int rc;
    do {
        rc = kv_meta_open(b->url, &o, &b->m);
        if (rc == KV_OK)
            return rc;
        if (b->pid > 0 && waitpid(b->pid, NULL, WNOHANG) == b->pid) {
            b->pid = 0;
            fprintf(stderr, "%s server exited at start-up (log in %s)\n", b->name, b->tmpdir);
            return rc;
        }
        kv_sleep_ms(100);
    } while (kv_now_ms() < end);
    return rc;
}

static int group_setup_common(void **state, struct backend *b)
{
    int rc = open_until_ready(b, 20000);
    if (rc != KV_OK) {
        fprintf(stderr, "%s backend at %s never answered: %s\n", b->name, b->url, kv_err_name(rc));
        stop_server(b);
        return -1;
    }
    *state = b;
    return 0;
}

static struct backend be_embedded = {.name = "embedded"};
static struct backend be_http = {.name = "http"};
static struct backend be_etcd = {.name = "etcd"};
static struct backend be_redis = {.name = "redis"};

static int setup_embedded(void **state)
{
    snprintf(be_embedded.url, sizeof(be_embedded.url), "embedded://conformance");
    return group_setup_common(state, &be_embedded);
}

static int setup_http(void **state)
{
    struct kv_metad_opts mo = {.addr = "127.0.0.1:0"};
    int rc = kv_metad_start(&mo, &be_http.md);
    if (rc != KV_OK) {
        fprintf(stderr, "kv_metad_start: %s\n", kv_err_name(rc));
        return -1;
    }
    snprintf(be_http.url, sizeof(be_http.url), "http://127.0.0.1:%u/metadata",
             kv_metad_port(be_http.md));
    return group_setup_common(state, &be_http);
}

static int make_tmpdir(struct backend *b)
{
    snprintf(b->tmpdir, sizeof(b->tmpdir), "/tmp/kvstash-conf-%s-XXXXXX", b->name);
    if (!mkdtemp(b->tmpdir)) {
        b->tmpdir[0] = '\0';
        return -1;
    }
    return 0;
}

static int setup_etcd(void **state)
{
    if (!have_binary("etcd")) {
        fprintf(stderr, "etcd binary not found (install etcd-server, see scripts/packages.txt)\n");
        return -1;
    }
    uint16_t p1, p2;
    if (srv_two_ports(&p1, &p2) < 0)
        return -1;
    if (make_tmpdir(&be_etcd))
        return -1;
    char data[256], log[256], client[64], peer[64], cluster[96];
    snprintf(data, sizeof(data), "%s/data", be_etcd.tmpdir);
    snprintf(log, sizeof(log), "%s/etcd.log", be_etcd.tmpdir);
    snprintf(client, sizeof(client), "http://127.0.0.1:%u", p1);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%u", p2);
    snprintf(cluster, sizeof(cluster), "default=%s", peer);
    char *argv[] = {"etcd",    "--data-dir",           data,    "--name",
                    "default", "--listen-client-urls", client,  "--advertise-client-urls",
                    client,    "--listen-peer-urls",   peer,    "--initial-advertise-peer-urls",
                    peer,      "--initial-cluster",    cluster, NULL};
    be_etcd.pid = srv_spawn(argv, log);
    if (be_etcd.pid < 0)
        return -1;
    snprintf(be_etcd.url, sizeof(be_etcd.url), "etcd://127.0.0.1:%u", p1);
    int rc = group_setup_common(state, &be_etcd);
    if (rc < 0)
        rm_tmpdir(&be_etcd);
    return rc;
}

static int setup_redis(void **state)
{
    if (!have_binary("redis-server")) {
        fprintf(stderr, "redis-server binary not found (install redis-server, see "
                        "scripts/packages.txt)\n");
        return -1;
    }
    uint16_t p;
    if (kv_net_free_port(&p) < 0 || make_tmpdir(&be_redis))
        return -1;
    char port[16], log[256];
    snprintf(port, sizeof(port), "%u", p);
    snprintf(log, sizeof(log), "%s/redis.log", be_redis.tmpdir);
    char *argv[] = {
        "redis-server", "--port", port,          "--bind", "127.0.0.1", "--save",        "",
        "--appendonly", "no",     "--daemonize", "no",     "--dir",     be_redis.tmpdir, NULL};
    be_redis.pid = srv_spawn(argv, log);
    if (be_redis.pid < 0)
        return -1;
    snprintf(be_redis.url, sizeof(be_redis.url), "redis://127.0.0.1:%u", p);
    int rc = group_setup_common(state, &be_redis);
    if (rc < 0)
        rm_tmpdir(&be_redis);
    return rc;
}

static int group_teardown(void **state)
{
    struct backend *b = *state;
    if (!b)
        return 0;
    kv_meta_close(b->m);
    b->m = NULL;
    stop_server(b);
    rm_tmpdir(b);
    return 0;
}

/* ---- the tests ---- */

static void test_basic(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char k[256];
    key_of(k, sizeof(k), b, "basic", "a");
    check_absent(m, k);
    assert_int_equal(kv_meta_del(m, k), KV_ENOENT);
    assert_int_equal(kv_meta_put(m, k, "hello", 5, 0), KV_OK);
    check_value(m, k, "hello", 5);
    assert_int_equal(kv_meta_put(m, k, "hi", 2, 0), KV_OK); /* overwrite, shorter */
    check_value(m, k, "hi", 2);
    static const char bin[] = {'a', 0, 'b', 0, 0, (char)0xff, '\n', 'z'};
    assert_int_equal(kv_meta_put(m, k, bin, sizeof(bin), 0), KV_OK);
    check_value(m, k, bin, sizeof(bin));
    assert_int_equal(kv_meta_put(m, k, "", 0, 0), KV_OK); /* empty value: present */
    check_value(m, k, "", 0);
    assert_int_equal(kv_meta_del(m, k), KV_OK);
    check_absent(m, k);
    assert_int_equal(kv_meta_del(m, k), KV_ENOENT);
    /* a key with characters that need escaping in URLs and other encodings */
    key_of(k, sizeof(k), b, "basic", "sp ace&q=1?x%2F+#\"'");
    assert_int_equal(kv_meta_put(m, k, "v", 1, 0), KV_OK);
    check_value(m, k, "v", 1);
    assert_int_equal(kv_meta_del(m, k), KV_OK);
    /* a large value (256 KiB of every byte value) */
    size_t big = 256 * 1024;
    char *v = kv_malloc(big);
    assert_non_null(v);
    for (size_t i = 0; i < big; i++)
        v[i] = (char)(i * 7 + i / 256);
    key_of(k, sizeof(k), b, "basic", "big");
    assert_int_equal(kv_meta_put(m, k, v, big, 0), KV_OK);
    check_value(m, k, v, big);
    assert_int_equal(kv_meta_del(m, k), KV_OK);
    kv_free(v);
    /* exactly the size limit works; one byte more is KV_E2BIG */
    v = kv_malloc(KV_META_MAX_VALUE_TEST + 1);
    assert_non_null(v);
    for (size_t i = 0; i <= KV_META_MAX_VALUE_TEST; i++)
        v[i] = (char)(i * 13 + 5);
    assert_int_equal(kv_meta_put(m, k, v, KV_META_MAX_VALUE_TEST, 0), KV_OK);
    check_value(m, k, v, KV_META_MAX_VALUE_TEST);
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    assert_int_equal(kv_meta_list(m, k, &kvs, &n), KV_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvs[0].len, KV_META_MAX_VALUE_TEST);
    assert_memory_equal(kvs[0].val, v, KV_META_MAX_VALUE_TEST);
    kv_meta_kvs_free(kvs, n);
    assert_int_equal(kv_meta_put(m, k, v, KV_META_MAX_VALUE_TEST + 1, 0), KV_E2BIG);
    assert_int_equal(kv_meta_del(m, k), KV_OK);
    kv_free(v);
    /* a second handle sees the same data */
    struct kv_meta *m2 = open_url(b->url);
    key_of(k, sizeof(k), b, "basic", "shared");
    assert_int_equal(kv_meta_put(m, k, "x", 1, 0), KV_OK);
    check_value(m2, k, "x", 1);
    assert_int_equal(kv_meta_del(m2, k), KV_OK);
    check_absent(m, k);
    assert_string_equal(kv_meta_backend(m2), b->name);
    kv_meta_close(m2);
}

static void test_list(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char base[256], k[300];
    key_of(base, sizeof(base), b, "list", "");
    const char *names[] = {"p/c", "p/a", "p/b/x", "q/a", "pz", "p/a0"};
    for (size_t i = 0; i < KV_ARRAY_SIZE(names); i++) {
        snprintf(k, sizeof(k), "%s%s", base, names[i]);
        assert_int_equal(kv_meta_put(m, k, names[i], strlen(names[i]), 0), KV_OK);
    }
    struct kv_meta_kv *kvs = NULL;
    size_t n = 99;
    snprintf(k, sizeof(k), "%sp/", base);
    assert_int_equal(kv_meta_list(m, k, &kvs, &n), KV_OK);
    const char *want[] = {"p/a", "p/a0", "p/b/x", "p/c"};
    assert_int_equal(n, KV_ARRAY_SIZE(want));
    for (size_t i = 0; i < n; i++) {
        snprintf(k, sizeof(k), "%s%s", base, want[i]);
        assert_string_equal(kvs[i].key, k);
        assert_int_equal(kvs[i].len, strlen(want[i]));
        assert_memory_equal(kvs[i].val, want[i], kvs[i].len);
        assert_int_equal(kvs[i].val[kvs[i].len], '\0');
    }
    kv_meta_kvs_free(kvs, n);
    /* the whole test prefix: 6 keys, sorted */
    assert_int_equal(kv_meta_list(m, base, &kvs, &n), KV_OK);
    assert_int_equal(n, 6);
    for (size_t i = 1; i < n; i++)
        assert_true(strcmp(kvs[i - 1].key, kvs[i].key) < 0);
    kv_meta_kvs_free(kvs, n);
    /* no match: NULL and 0 */
    snprintf(k, sizeof(k), "%snothing/", base);
    kvs = (void *)1;
    assert_int_equal(kv_meta_list(m, k, &kvs, &n), KV_OK);
    assert_int_equal(n, 0);
    assert_null(kvs);
    for (size_t i = 0; i < KV_ARRAY_SIZE(names); i++) {
        snprintf(k, sizeof(k), "%s%s", base, names[i]);
        assert_int_equal(kv_meta_del(m, k), KV_OK);
    }
    assert_int_equal(kv_meta_list(m, base, &kvs, &n), KV_OK);
    assert_int_equal(n, 0);
}

static void test_cas(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char k[256];
    key_of(k, sizeof(k), b, "cas", "k");
    assert_int_equal(kv_meta_cas(m, k, NULL, 0, "v1", 2, 0), KV_OK); /* create if absent */
    check_value(m, k, "v1", 2);
    assert_int_equal(kv_meta_cas(m, k, NULL, 0, "v2", 2, 0), KV_EMETA_CAS); /* exists */
    assert_int_equal(kv_meta_cas(m, k, "v1", 2, "v2", 2, 0), KV_OK);        /* match */
    check_value(m, k, "v2", 2);
    assert_int_equal(kv_meta_cas(m, k, "v1", 2, "v3", 2, 0), KV_EMETA_CAS); /* mismatch */
    assert_int_equal(kv_meta_cas(m, k, "v", 1, "v3", 2, 0), KV_EMETA_CAS);  /* prefix only */
    check_value(m, k, "v2", 2);
    /* binary expect with NUL bytes; empty expected value differs from absent */
    assert_int_equal(kv_meta_cas(m, k, "v2", 2, "a\0b", 3, 0), KV_OK);
    assert_int_equal(kv_meta_cas(m, k, "a\0c", 3, "x", 1, 0), KV_EMETA_CAS);
    assert_int_equal(kv_meta_cas(m, k, "a\0b", 3, "", 0, 0), KV_OK);
    assert_int_equal(kv_meta_cas(m, k, NULL, 0, "x", 1, 0), KV_EMETA_CAS);
    assert_int_equal(kv_meta_cas(m, k, "", 0, "e", 1, 0), KV_OK);
    check_value(m, k, "e", 1);
    assert_int_equal(kv_meta_del(m, k), KV_OK);
    assert_int_equal(kv_meta_cas(m, k, "e", 1, "x", 1, 0), KV_EMETA_CAS); /* absent */
    check_absent(m, k);
}

struct incr_arg {
    struct kv_meta *m;
    const char *key;
    int n;
    int errors;
};

static void *incr_main(void *p)
{
    struct incr_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        for (int tries = 0;; tries++) {
            char *v = NULL;
            size_t len = 0;
            int rc = kv_meta_get(a->m, a->key, &v, &len);
            if (rc != KV_OK || tries > 10000) {
                a->errors++;
                kv_meta_free(v);
                break;
            }
            int64_t cur = 0;
            kv_parse_i64(v, &cur);
            char nv[32];
            int nl = snprintf(nv, sizeof(nv), "%lld", (long long)cur + 1);
            rc = kv_meta_cas(a->m, a->key, v, len, nv, (size_t)nl, 0);
            kv_meta_free(v);
            if (rc == KV_OK)
                break;
            if (rc != KV_EMETA_CAS) {
                a->errors++;
                break;
            }
        }
    }
    return NULL;
}

static void test_cas_contention(void **state)
{
    struct backend *b = *state;
    char k[256];
    key_of(k, sizeof(k), b, "cas_contention", "counter");
    assert_int_equal(kv_meta_put(b->m, k, "0", 1, 0), KV_OK);
    struct kv_meta *m2 = open_url(b->url);
    pthread_t th[4];
    struct incr_arg args[4];
    for (int i = 0; i < 4; i++) {
        /* two threads share the group's handle, two share a second handle */
        args[i] = (struct incr_arg){.m = (i % 2) ? m2 : b->m, .key = k, .n = 50};
        assert_int_equal(pthread_create(&th[i], NULL, incr_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].errors, 0);
    }
    check_value(b->m, k, "200", 3);
    assert_int_equal(kv_meta_del(b->m, k), KV_OK);
    kv_meta_close(m2);
}

static void test_lease_expiry(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char prefix[256], k[256], k2[256];
    key_of(prefix, sizeof(prefix), b, "lease_expiry", "");
    key_of(k, sizeof(k), b, "lease_expiry", "bound");
    key_of(k2, sizeof(k2), b, "lease_expiry", "free");
    struct rec r;
    rec_init(&r);
    uint64_t wid;
    assert_int_equal(kv_meta_watch(m, prefix, rec_fn, &r, &wid), KV_OK);
    int64_t lease = 0;
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease), KV_OK);
    assert_true(lease > 0);
    assert_int_equal(kv_meta_put(m, k, "alive", 5, lease), KV_OK);
    assert_int_equal(kv_meta_put(m, k2, "stays", 5, 0), KV_OK);
    check_value(m, k, "alive", 5);
    int64_t t0 = kv_now_ms();
    assert_true(wait_gone(m, k, 15000));
    assert_true(kv_now_ms() - t0 >= 500); /* not deleted right away */
    check_value(m, k2, "stays", 5);
    assert_int_equal(kv_meta_lease_keepalive(m, lease), KV_EMETA_LEASE);
    /* the expiry produced a delete event: put k, put k2, del k */
    assert_true(rec_wait(&r, 3, 10000));
    pthread_mutex_lock(&r.lock);
    assert_int_equal(r.evs[0].type, KV_META_EV_PUT);
    assert_string_equal(r.evs[0].key, k);
    assert_int_equal(r.evs[2].type, KV_META_EV_DEL);
    assert_string_equal(r.evs[2].key, k);
    pthread_mutex_unlock(&r.lock);
    assert_int_equal(kv_meta_unwatch(m, wid), KV_OK);
    /* putting with an expired lease fails */
    assert_int_equal(kv_meta_put(m, k, "x", 1, lease), KV_EMETA_LEASE);
    assert_int_equal(kv_meta_del(m, k2), KV_OK);
}

static void test_lease_keepalive_revoke(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char k[256], k2[256];
    key_of(k, sizeof(k), b, "lease_keepalive", "a");
    key_of(k2, sizeof(k2), b, "lease_keepalive", "b");
    int64_t lease = 0, lease2 = 0;
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease), KV_OK);
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease2), KV_OK);
    assert_true(lease2 != lease);
    assert_int_equal(kv_meta_put(m, k, "a", 1, lease), KV_OK);
    assert_int_equal(kv_meta_cas(m, k2, NULL, 0, "b", 1, lease), KV_OK); /* cas with lease */
    int64_t end = kv_now_ms() + TTL_S * 1000 * 2 + 500;
    while (kv_now_ms() < end) {
        assert_int_equal(kv_meta_lease_keepalive(m, lease), KV_OK);
        check_value(m, k, "a", 1);
        kv_sleep_ms(300);
    }
    check_value(m, k2, "b", 1);
    assert_int_equal(kv_meta_lease_revoke(m, lease), KV_OK);
    check_absent(m, k);
    check_absent(m, k2);
    assert_int_equal(kv_meta_lease_revoke(m, lease), KV_EMETA_LEASE);
    assert_int_equal(kv_meta_lease_keepalive(m, lease), KV_EMETA_LEASE);
    /* lease2 had no keepalives: expired by now */
    assert_int_equal(kv_meta_lease_keepalive(m, lease2), KV_EMETA_LEASE);
    assert_int_equal(kv_meta_lease_revoke(m, 123456789), KV_EMETA_LEASE);
}

static atomic_int lost_calls;
static int on_lost(void *ud, int64_t lease)
{
    (void)ud;
    (void)lease;
    atomic_fetch_add(&lost_calls, 1);
    return KV_OK;
}

/* fails its first two calls, as an owner whose metadata server is still down would */
static atomic_llong lost_lease;
static int on_lost_flaky(void *ud, int64_t lease)
{
    (void)ud;
    atomic_store(&lost_lease, lease);
    return atomic_fetch_add(&lost_calls, 1) < 2 ? KV_EMETA_UNAVAIL : KV_OK;
}

static bool wait_calls(int n, int ms)
{
    for (int64_t end = kv_now_ms() + ms; kv_now_ms() < end; kv_sleep_ms(20))
        if (atomic_load(&lost_calls) >= n)
            return true;
    return false;
}

/* A lease revoked behind the keeper's back is reported lost; a failing lost() is called
 * again with back-off until it succeeds, then never again. */
static void test_autorenew_lost_retry(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = open_url(b->url);
    int64_t lease = 0;
    atomic_store(&lost_calls, 0);
    atomic_store(&lost_lease, 0);
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease), KV_OK);
    assert_int_equal(kv_meta_lease_autorenew(m, lease, TTL_S, on_lost_flaky, NULL), KV_OK);
    assert_int_equal(kv_meta_lease_revoke(b->m, lease), KV_OK); /* another handle */
    assert_true(wait_calls(3, TTL_S * 1000 + 10000));
    assert_int_equal(atomic_load(&lost_lease), lease);
    kv_sleep_ms(1500); /* past the longest back-off so far: no fourth call */
    assert_int_equal(atomic_load(&lost_calls), 3);
    kv_meta_close(m);

    /* a revoke through the keeping handle cancels pending retries */
    m = open_url(b->url);
    atomic_store(&lost_calls, 0);
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease), KV_OK);
    assert_int_equal(kv_meta_lease_autorenew(m, lease, TTL_S, on_lost_flaky, NULL), KV_OK);
    assert_int_equal(kv_meta_lease_revoke(b->m, lease), KV_OK);
    assert_true(wait_calls(1, TTL_S * 1000 + 10000));
    kv_meta_lease_revoke(m, lease); /* unknown to the server by now: only the retry goes */
    int seen = atomic_load(&lost_calls);
    kv_sleep_ms(1500);
    assert_true(atomic_load(&lost_calls) <= seen + 1); /* at most one already under way */
    kv_meta_close(m);
}

static void test_autorenew(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = open_url(b->url);
    char k[256];
    key_of(k, sizeof(k), b, "autorenew", "a");
    int64_t lease = 0;
    atomic_store(&lost_calls, 0);
    assert_int_equal(kv_meta_lease_grant(m, TTL_S, &lease), KV_OK);
    assert_int_equal(kv_meta_lease_autorenew(m, lease, TTL_S, on_lost, NULL), KV_OK);
    assert_int_equal(kv_meta_put(m, k, "a", 1, lease), KV_OK);
    int64_t end = kv_now_ms() + TTL_S * 1000 * 2 + 1000;
    while (kv_now_ms() < end) {
        check_value(b->m, k, "a", 1);
        kv_sleep_ms(250);
    }
    assert_int_equal(atomic_load(&lost_calls), 0);
    /* closing the handle stops renewal without revoking: the key then expires */
    kv_meta_close(m);
    check_value(b->m, k, "a", 1);
    assert_true(wait_gone(b->m, k, 15000));
}

static void test_watch(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    char pa[256], pb[256], k1[256], k2[256], kb[256];
    key_of(pa, sizeof(pa), b, "watch", "a/");
    key_of(pb, sizeof(pb), b, "watch", "b/");
    key_of(k1, sizeof(k1), b, "watch", "a/k1");
    key_of(k2, sizeof(k2), b, "watch", "a/k2");
    key_of(kb, sizeof(kb), b, "watch", "b/k");
    /* an event made before the watch is never delivered */
    assert_int_equal(kv_meta_put(m, k2, "old", 3, 0), KV_OK);
    struct rec r;
    rec_init(&r);
    uint64_t wid;
    assert_int_equal(kv_meta_watch(m, pa, rec_fn, &r, &wid), KV_OK);
    struct kv_meta *m2 = open_url(b->url); /* writes from another handle are seen too */
    assert_int_equal(kv_meta_put(m2, k1, "v1", 2, 0), KV_OK);
    assert_int_equal(kv_meta_put(m2, kb, "other", 5, 0), KV_OK); /* not under the prefix */
    assert_int_equal(kv_meta_put(m, k1, "v\0002", 3, 0), KV_OK);
    assert_int_equal(kv_meta_del(m, k1), KV_OK);
    assert_int_equal(kv_meta_cas(m, k2, "old", 3, "new", 3, 0), KV_OK);
    assert_int_equal(kv_meta_del(m, k2), KV_OK);
    assert_true(rec_wait(&r, 5, 10000));
    kv_sleep_ms(200); /* nothing else may arrive */
    pthread_mutex_lock(&r.lock);
    assert_int_equal(r.n, 5);
    assert_int_equal(r.evs[0].type, KV_META_EV_PUT);
    assert_string_equal(r.evs[0].key, k1);
    assert_int_equal(r.evs[0].len, 2);
    assert_memory_equal(r.evs[0].val, "v1", 2);
    assert_int_equal(r.evs[1].type, KV_META_EV_PUT);
    assert_int_equal(r.evs[1].len, 3);
    assert_memory_equal(r.evs[1].val, "v\0002", 3);
    assert_int_equal(r.evs[2].type, KV_META_EV_DEL);
    assert_string_equal(r.evs[2].key, k1);
    assert_int_equal(r.evs[3].type, KV_META_EV_PUT);
    assert_string_equal(r.evs[3].key, k2);
    assert_memory_equal(r.evs[3].val, "new", 3);
    assert_int_equal(r.evs[4].type, KV_META_EV_DEL);
    assert_string_equal(r.evs[4].key, k2);
    pthread_mutex_unlock(&r.lock);

    /* unwatch while a (slow) callback runs: it returns only after the callback ended */
    r.sleep_ms = 300;
    assert_int_equal(kv_meta_put(m, k1, "slow", 4, 0), KV_OK);
    assert_true(rec_wait(&r, 6, 10000));
    assert_int_equal(kv_meta_unwatch(m, wid), KV_OK);
    assert_int_equal(atomic_load(&r.in_callback), 0);
    int before = rec_count(&r);
    assert_int_equal(kv_meta_put(m, k1, "after", 5, 0), KV_OK);
    kv_sleep_ms(500);
    assert_int_equal(rec_count(&r), before);
    assert_int_equal(kv_meta_unwatch(m, wid), KV_ENOENT);

    /* close stops a handle's watches */
    struct rec r2;
    rec_init(&r2);
    uint64_t wid2;
    assert_int_equal(kv_meta_watch(m2, pb, rec_fn, &r2, &wid2), KV_OK);
    assert_int_equal(kv_meta_del(m, kb), KV_OK);
    assert_true(rec_wait(&r2, 1, 10000));
    /* an idle watch (its long poll or stream waiting) stops promptly: well under the hold
     * time of a long poll (5 s for http) */
    kv_sleep_ms(200);
    int64_t t0 = kv_now_ms();
    kv_meta_close(m2);
    int64_t el = kv_now_ms() - t0;
    fprintf(stderr, "[          ] %s: close with an idle watch took %lld ms\n", b->name,
            (long long)el);
    assert_true(el < 2500);
    assert_int_equal(kv_meta_put(m, kb, "x", 1, 0), KV_OK);
    kv_sleep_ms(300);
    assert_int_equal(rec_count(&r2), 1);
    assert_int_equal(kv_meta_del(m, kb), KV_OK);
    assert_int_equal(kv_meta_del(m, k1), KV_OK);
}

static void test_outage(void **state)
{
    struct backend *b = *state;
    struct rec r;
    rec_init(&r);
    uint64_t wid;
    char k[256];
    key_of(k, sizeof(k), b, "outage", "k");
    assert_int_equal(kv_meta_watch(b->m, k, rec_fn, &r, &wid), KV_OK);
    assert_int_equal(kv_meta_put(b->m, k, "v", 1, 0), KV_OK);
    stop_server(b);
    int64_t t0 = kv_now_ms();
    char *v = NULL;
    size_t len;
    assert_int_equal(kv_meta_get(b->m, k, &v, &len), KV_EMETA_UNAVAIL);
    assert_int_equal(kv_meta_put(b->m, k, "v", 1, 0), KV_EMETA_UNAVAIL);
    int64_t lease;
    assert_int_equal(kv_meta_lease_grant(b->m, TTL_S, &lease), KV_EMETA_UNAVAIL);
    struct kv_meta_kv *kvs;
    size_t n;
    assert_int_equal(kv_meta_list(b->m, "/conf/", &kvs, &n), KV_EMETA_UNAVAIL);
    assert_int_equal(kv_meta_unwatch(b->m, wid), KV_OK);
    int64_t el = kv_now_ms() - t0;
    fprintf(stderr, "[          ] %s outage: 4 calls + unwatch failed in %lld ms\n", b->name,
            (long long)el);
    assert_true(el < 10000); /* bounded: no hang */
    /* opening a dead backend fails too */
    struct kv_meta_opts o = {.timeout_ms = TIMEOUT_MS};
    struct kv_meta *m2 = NULL;
    assert_int_equal(kv_meta_open(b->url, &o, &m2), KV_EMETA_UNAVAIL);
    assert_null(m2);
}

/* A server that accepts connections but never answers: calls time out with
 * KV_EMETA_UNAVAIL instead of hanging. A black-hole listener (never accepted, so the kernel
 * completes the handshake and the request waits) for opening; for etcd and Redis also the real
 * server stopped with SIGSTOP, then resumed. */
static void test_hang(void **state)
{
    struct backend *b = *state;
    int fd;
    uint16_t port;
    assert_int_equal(kv_net_listen_tcp("127.0.0.1", 0, 16, &fd, &port), KV_OK);
    char url[128];
    if (strcmp(b->name, "http") == 0)
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/metadata", port);
    else
        snprintf(url, sizeof(url), "%s://127.0.0.1:%u", b->name, port);
    struct kv_meta_opts o = {.timeout_ms = TIMEOUT_MS};
    struct kv_meta *m2 = NULL;
    int64_t t0 = kv_now_ms();
    assert_int_equal(kv_meta_open(url, &o, &m2), KV_EMETA_UNAVAIL);
    int64_t el = kv_now_ms() - t0;
    close(fd);
    fprintf(stderr, "[          ] %s: open of a silent server failed in %lld ms\n", b->name,
            (long long)el);
    assert_true(el < 10000);
    if (b->pid <= 0)
        return;
    char k[256];
    key_of(k, sizeof(k), b, "hang", "k");
    assert_int_equal(kv_meta_put(b->m, k, "v", 1, 0), KV_OK);
    kill(-b->pid, SIGSTOP);
    int st;
    waitpid(b->pid, &st, WUNTRACED); /* kill() returns before every thread has stopped */
    t0 = kv_now_ms();
    char *v = NULL;
    size_t len;
    int rc = kv_meta_get(b->m, k, &v, &len);
    el = kv_now_ms() - t0;
    kill(-b->pid, SIGCONT);
    fprintf(stderr, "[          ] %s: get from a stopped server failed in %lld ms\n", b->name,
            (long long)el);
    assert_int_equal(rc, KV_EMETA_UNAVAIL);
    assert_true(el < 10000);
    /* and it recovers once the server runs again */
    int64_t end = kv_now_ms() + 10000;
    do {
        rc = kv_meta_get(b->m, k, &v, &len);
        if (rc != KV_OK)
            kv_sleep_ms(100);
    } while (rc != KV_OK && kv_now_ms() < end);
    assert_int_equal(rc, KV_OK);
    kv_meta_free(v);
    assert_int_equal(kv_meta_del(b->m, k), KV_OK);
}

/* embedded only: stores are shared by name, separate across names, and die with the last
 * handle. */
static void test_embedded_names(void **state)
{
    (void)state;
    struct kv_meta *a = open_url("embedded://names-x");
    struct kv_meta *a2 = open_url("embedded://names-x");
    struct kv_meta *c = open_url("embedded://names-y");
    struct kv_meta *d = open_url("embedded://");
    struct kv_meta *d2 = open_url("embedded");
    assert_int_equal(kv_meta_put(a, "/k", "1", 1, 0), KV_OK);
    check_value(a2, "/k", "1", 1);
    check_absent(c, "/k");
    assert_int_equal(kv_meta_put(d, "/k", "d", 1, 0), KV_OK);
    check_value(d2, "/k", "d", 1);
    kv_meta_close(a);
    check_value(a2, "/k", "1", 1);
    kv_meta_close(a2);
    a = open_url("embedded://names-x"); /* last handle closed: a fresh store */
    check_absent(a, "/k");
    /* lease ids are positive, distinct, and not small counters */
    int64_t l1, l2;
    assert_int_equal(kv_meta_lease_grant(a, 5, &l1), KV_OK);
    assert_int_equal(kv_meta_lease_grant(a, 5, &l2), KV_OK);
    assert_true(l1 > 0 && l2 > l1);
    assert_int_equal(kv_meta_lease_revoke(a, l1), KV_OK);
    int64_t l3;
    assert_int_equal(kv_meta_lease_grant(a, 5, &l3), KV_OK);
    assert_true(l3 != l1 && l3 != l2);
    /* argument checks of the front end */
    assert_int_equal(kv_meta_put(a, "", "x", 1, 0), KV_EINVAL);
    assert_int_equal(kv_meta_put(a, "/k", "x", 1, 987654321), KV_EMETA_LEASE);
    kv_meta_close(a);
    kv_meta_close(c);
    kv_meta_close(d);
    kv_meta_close(d2);
    /* an unknown scheme */
    struct kv_meta *bad = NULL;
    struct kv_meta_opts o = {0};
    assert_int_equal(kv_meta_open("ftp://x", &o, &bad), KV_EMETA_URL);
}

static void unwatch_self_cb(void *ud, const struct kv_meta_event *ev);
struct self_unwatch {
    struct kv_meta *m;
    uint64_t id;
    atomic_int calls;
};
static void unwatch_self_cb(void *ud, const struct kv_meta_event *ev)
{
    (void)ev;
    struct self_unwatch *s = ud;
    atomic_fetch_add(&s->calls, 1);
    kv_meta_unwatch(s->m, s->id); /* tolerated by the embedded backend */
}

static void test_embedded_watch_many(void **state)
{
    struct backend *b = *state;
    struct kv_meta *m = b->m;
    /* 1000 events on 10 keys arrive in order per key */
    struct rec r;
    rec_init(&r);
    uint64_t wid;
    assert_int_equal(kv_meta_watch(m, "/many/", rec_fn, &r, &wid), KV_OK);
    for (int i = 0; i < 60; i++) {
        char k[32], v[32];
        snprintf(k, sizeof(k), "/many/%d", i % 3);
        int n = snprintf(v, sizeof(v), "%d", i);
        assert_int_equal(kv_meta_put(m, k, v, (size_t)n, 0), KV_OK);
    }
    assert_true(rec_wait(&r, 60, 10000));
    for (int i = 0; i < 60; i++) {
        char v[32];
        snprintf(v, sizeof(v), "%d", i);
        assert_string_equal(r.evs[i].val, v);
    }
    assert_int_equal(kv_meta_unwatch(m, wid), KV_OK);
    struct self_unwatch s = {.m = m};
    assert_int_equal(kv_meta_watch(m, "/self/", unwatch_self_cb, &s, &s.id), KV_OK);
    assert_int_equal(kv_meta_put(m, "/self/a", "1", 1, 0), KV_OK);
    assert_int_equal(kv_meta_put(m, "/self/a", "2", 1, 0), KV_OK);
    int64_t end = kv_now_ms() + 5000;
    while (atomic_load(&s.calls) == 0 && kv_now_ms() < end)
        kv_sleep_ms(10);
    kv_sleep_ms(100);
    assert_int_equal(atomic_load(&s.calls), 1);
}

#define CONFORMANCE_TESTS                                                                          \
    cmocka_unit_test(test_basic), cmocka_unit_test(test_list), cmocka_unit_test(test_cas),         \
        cmocka_unit_test(test_cas_contention), cmocka_unit_test(test_lease_expiry),                \
        cmocka_unit_test(test_lease_keepalive_revoke), cmocka_unit_test(test_autorenew),           \
        cmocka_unit_test(test_autorenew_lost_retry), cmocka_unit_test(test_watch)

static const struct CMUnitTest embedded_tests[] = {
    CONFORMANCE_TESTS,
    cmocka_unit_test(test_embedded_names),
    cmocka_unit_test(test_embedded_watch_many),
};
static const struct CMUnitTest remote_tests[] = {
    CONFORMANCE_TESTS,
    cmocka_unit_test(test_hang),
    cmocka_unit_test(test_outage),
};

static const char *const group_names[] = {"embedded", "http", "etcd", "redis"};

static int run_group(int i)
{
    switch (i) {
    case 0:
        return cmocka_run_group_tests_name("meta.embedded", embedded_tests, setup_embedded,
                                           group_teardown);
    case 1:
        return cmocka_run_group_tests_name("meta.http", remote_tests, setup_http, group_teardown);
    case 2:
        return cmocka_run_group_tests_name("meta.etcd", remote_tests, setup_etcd, group_teardown);
    default:
        return cmocka_run_group_tests_name("meta.redis", remote_tests, setup_redis, group_teardown);
    }
}

/* Runs every group at once, each in its own process (most of the time is spent waiting for
 * leases to expire), then prints their outputs in order. KV_CONFORMANCE_ONLY=NAME runs one
 * group in this process. */
int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *only = getenv("KV_CONFORMANCE_ONLY");
    if (only) {
        for (int i = 0; i < 4; i++)
            if (strcmp(only, group_names[i]) == 0)
                return run_group(i) ? 1 : 0;
        fprintf(stderr, "KV_CONFORMANCE_ONLY: unknown group '%s'\n", only);
        return 1;
    }
    pid_t pids[4];
    char logs[4][64];
    for (int i = 0; i < 4; i++) {
        snprintf(logs[i], sizeof(logs[i]), "/tmp/kvstash-conf-out-XXXXXX");
        int fd = mkstemp(logs[i]);
        if (fd < 0) {
            perror("mkstemp");
            return 1;
        }
        fflush(stdout);
        fflush(stderr);
        pids[i] = fork();
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
            _exit(run_group(i) ? 1 : 0);
        }
        close(fd);
        if (pids[i] < 0) {
            perror("fork");
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        int st = 0;
        waitpid(pids[i], &st, 0);
        FILE *f = fopen(logs[i], "r");
        char line[1024];
        while (f && fgets(line, sizeof(line), f))
            fputs(line, stdout);
        if (f)
            fclose(f);
        unlink(logs[i]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("group %s FAILED (%s %d)\n", group_names[i], WIFEXITED(st) ? "exit" : "signal",
                   WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            failed = 1;
        }
    }
    fflush(stdout);
    return failed;
}
