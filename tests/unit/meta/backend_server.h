/* SPDX-License-Identifier: Apache-2.0 */
/*
 * backend_server.h - what test_etcd.c and test_redis.c share around their real server: starting
 * it (own process group, PR_SET_PDEATHSIG, log file) and waiting until it answers, killing and
 * reaping it, a watch recorder, CAS contention, and the outage tests (server stopped with
 * SIGSTOP; server killed). Include after cmocka.h; each test file passes what differs (URL,
 * server pid, key prefix) and keeps its own follow-up checks (etcd restarts, Redis does not).
 * test_conformance.c uses the process and recorder parts. Functions are static inline so a
 * file that uses only some of them compiles warning-free.
 *
 * Thread model: the recorder's callback runs on a backend's watch thread; rec.lock guards its
 * events. Everything else runs on the test thread (cas workers on their own).
 */
#ifndef KV_TEST_META_BACKEND_SERVER_H
#define KV_TEST_META_BACKEND_SERVER_H

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/meta.h"

/* ---------------------------------------------------------------- server process */

/* Two distinct free loopback ports (etcd's client and peer URLs): a second probe can be handed
 * the port the first one just closed. 0, or -1 with the reason on stderr. */
static inline int srv_two_ports(uint16_t *a, uint16_t *b)
{
    int rc = kv_net_free_port(a);
    *b = *a;
    for (int t = 0; rc == KV_OK && *b == *a && t < 16; t++)
        rc = kv_net_free_port(b);
    if (rc < 0 || *b == *a) {
        fprintf(stderr, "no two free loopback ports for etcd (%s)\n", kv_strerror(rc));
        return -1;
    }
    return 0;
}

/* Forks and execs argv[0] in its own process group, stdout and stderr appended to log; the
 * child dies with the test (PR_SET_PDEATHSIG). Returns its pid, or -1. */
static inline pid_t srv_spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    if (pid > 0)
        setpgid(pid, pid);
    return pid;
}

/* Kills the process group of *pid and reaps it; *pid becomes -1. A no-op when *pid <= 0. */
static inline void srv_kill_reap(pid_t *pid)
{
    if (*pid > 0) {
        kill(-*pid, SIGKILL);
        kill(*pid, SIGKILL); /* in case setpgid failed */
        waitpid(*pid, NULL, 0);
    }
    *pid = -1;
}

/* Opens url until the server (*pid, called name in messages) answers: 0. -1 when it exits
 * first (*pid becomes -1) or deadline_ms passes; the message names log. */
static inline int srv_wait_ready(const char *url, pid_t *pid, const char *name, const char *log,
                                 int deadline_ms)
{
    struct kv_meta_opts o = {.timeout_ms = 500};
    int64_t deadline = kv_now_ms() + deadline_ms;
    while (kv_now_ms() < deadline) {
        struct kv_meta *m = NULL;
        if (kv_meta_open(url, &o, &m) == KV_OK) {
            kv_meta_close(m);
            return 0;
        }
        int st;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            fprintf(stderr, "%s exited early; see %s\n", name, log);
            *pid = -1;
            return -1;
        }
        kv_sleep_ms(50);
    }
    fprintf(stderr, "%s did not answer within %d s; see %s\n", name, deadline_ms / 1000, log);
    return -1;
}

/* Opens url with default options and checks the backend's name. */
static inline struct kv_meta *srv_open(const char *url, const char *backend)
{
    struct kv_meta *m = NULL;
    assert_int_equal(kv_meta_open(url, NULL, &m), KV_OK);
    assert_string_equal(kv_meta_backend(m), backend);
    return m;
}

/* Polls until key is absent (true) or ms pass (false). */
static inline bool wait_gone(struct kv_meta *m, const char *key, int ms)
{
    int64_t deadline = kv_now_ms() + ms;
    while (kv_now_ms() < deadline) {
        char *v = NULL;
        size_t len = 0;
        int rc = kv_meta_get(m, key, &v, &len);
        kv_meta_free(v);
        if (rc == KV_ENOENT)
            return true;
        kv_sleep_ms(50);
    }
    return false;
}

/* ---------------------------------------------------------------- watch recorder */

struct rec_ev {
    int type;
    char key[128];
    char val[64];
    size_t len;
};

struct rec {
    pthread_mutex_t lock; /* guards evs and n */
    struct rec_ev evs[64];
    int n;
    atomic_int sleep_ms;    /* callback duration, to test unwatch waiting */
    atomic_int in_callback; /* 1 while a callback runs */
};

/* Initialises r (caller storage, never finalised: the mutex needs no cleanup on Linux). */
static inline void rec_init(struct rec *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
}

static inline struct rec *rec_new(void)
{
    struct rec *r = kv_malloc(sizeof(*r));
    assert_non_null(r);
    rec_init(r);
    return r;
}

static inline void rec_free(struct rec *r)
{
    pthread_mutex_destroy(&r->lock);
    kv_free(r);
}

/* The watch callback: records the first 64 events (values truncated to 64 bytes). */
static inline void rec_fn(void *ud, const struct kv_meta_event *ev)
{
    struct rec *r = ud;
    atomic_store(&r->in_callback, 1);
    pthread_mutex_lock(&r->lock);
    if (r->n < (int)KV_ARRAY_SIZE(r->evs)) {
        struct rec_ev *e = &r->evs[r->n++];
        e->type = ev->type;
        snprintf(e->key, sizeof(e->key), "%s", ev->key);
        e->len = ev->len;
        if (ev->value)
            memcpy(e->val, ev->value, KV_MIN(ev->len, sizeof(e->val)));
    }
    pthread_mutex_unlock(&r->lock);
    if (r->sleep_ms)
        kv_sleep_ms(r->sleep_ms);
    atomic_store(&r->in_callback, 0);
}

static inline int rec_count(struct rec *r)
{
    pthread_mutex_lock(&r->lock);
    int n = r->n;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Polls until r holds at least n events (true) or ms pass (false). */
static inline bool rec_wait(struct rec *r, int n, int ms)
{
    int64_t end = kv_now_ms() + ms;
    while (kv_now_ms() < end) {
        if (rec_count(r) >= n)
            return true;
        kv_sleep_ms(20);
    }
    return rec_count(r) >= n;
}

/* ---------------------------------------------------------------- CAS contention */

enum { CAS_THREADS = 4 };

struct cas_arg {
    const char *url;
    int n;     /* increments to make */
    int tries; /* attempts per increment before giving up */
    int done;  /* increments made */
};

static inline void *cas_worker(void *p)
{
    struct cas_arg *a = p;
    struct kv_meta *m = NULL;
    if (kv_meta_open(a->url, NULL, &m) != KV_OK)
        return NULL;
    for (int i = 0; i < a->n; i++) {
        for (int tries = 0; tries < a->tries; tries++) {
            char *v = NULL;
            size_t len = 0;
            if (kv_meta_get(m, "/t/cas/counter", &v, &len) != KV_OK)
                break;
            int64_t cur = 0;
            kv_parse_i64(v, &cur);
            char nv[32];
            int nl = snprintf(nv, sizeof(nv), "%lld", (long long)(cur + 1));
            int rc = kv_meta_cas(m, "/t/cas/counter", v, len, nv, (size_t)nl, 0);
            kv_meta_free(v);
            if (rc == KV_OK) {
                a->done++;
                break;
            }
            if (rc != KV_EMETA_CAS)
                break;
        }
    }
    kv_meta_close(m);
    return NULL;
}

/* CAS_THREADS threads, each with its own handle, increment "/t/cas/counter" n times each with
 * get + cas (at most tries attempts per increment): no increment is lost. */
static inline void meta_cas_contention(const char *url, const char *backend, int n, int tries)
{
    struct kv_meta *m = srv_open(url, backend);
    assert_int_equal(kv_meta_put(m, "/t/cas/counter", "0", 1, 0), KV_OK);
    pthread_t th[CAS_THREADS];
    struct cas_arg args[CAS_THREADS];
    for (int i = 0; i < CAS_THREADS; i++) {
        args[i] = (struct cas_arg){url, n, tries, 0};
        assert_int_equal(pthread_create(&th[i], NULL, cas_worker, &args[i]), 0);
    }
    for (int i = 0; i < CAS_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].done, n);
    }
    char *v = NULL;
    size_t len = 0;
    char want[32];
    snprintf(want, sizeof(want), "%d", CAS_THREADS * n);
    assert_int_equal(kv_meta_get(m, "/t/cas/counter", &v, &len), KV_OK);
    assert_string_equal(v, want);
    kv_meta_free(v);
    kv_meta_close(m);
}

/* ---------------------------------------------------------------- outages */

/* A stopped (hung, not dead) server, process group pid: every call on key gives up with
 * KV_EMETA_UNAVAIL after about the timeout instead of hanging, unwatch returns at once, and
 * calls work again after SIGCONT. */
static inline void meta_server_stopped(const char *url, pid_t pid, const char *key)
{
    struct kv_meta_opts o = {.timeout_ms = 800};
    struct kv_meta *m = NULL;
    assert_int_equal(kv_meta_open(url, &o, &m), KV_OK);
    assert_int_equal(kv_meta_put(m, key, "1", 1, 0), KV_OK);
    struct rec *r = rec_new();
    uint64_t id = 0;
    assert_int_equal(kv_meta_watch(m, key, rec_fn, r, &id), KV_OK);
    assert_int_equal(kill(-pid, SIGSTOP), 0);
    int st = 0; /* kill() returns before every thread has stopped: wait for the group stop */
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    assert_true(WIFSTOPPED(st));
    int64_t t0 = kv_now_ms();
    char *v = NULL;
    size_t len = 0;
    int rc1 = kv_meta_get(m, key, &v, &len);
    int rc2 = kv_meta_put(m, key, "2", 1, 0);
    int64_t lease = 0;
    int rc3 = kv_meta_lease_grant(m, 5, &lease);
    uint64_t id2 = 0;
    int rc4 = kv_meta_watch(m, key, rec_fn, r, &id2);
    struct kv_meta *m2 = NULL;
    int rc5 = kv_meta_open(url, &o, &m2);
    int64_t t1 = kv_now_ms();
    int rc6 = kv_meta_unwatch(m, id);
    int64_t t2 = kv_now_ms();
    kill(-pid, SIGCONT);
    assert_int_equal(rc1, KV_EMETA_UNAVAIL);
    assert_int_equal(rc2, KV_EMETA_UNAVAIL);
    assert_int_equal(rc3, KV_EMETA_UNAVAIL);
    assert_int_equal(rc4, KV_EMETA_UNAVAIL);
    assert_int_equal(rc5, KV_EMETA_UNAVAIL);
    assert_null(m2);
    assert_int_equal(rc6, KV_OK);
    assert_true(t1 - t0 < 15000); /* 5 calls of about 0.8 s each, nowhere near a hang */
    assert_true(t2 - t1 < 3000);
    /* back to normal once the server runs again */
    int rc = KV_EMETA_UNAVAIL;
    int64_t deadline = kv_now_ms() + 10000;
    while (rc != KV_OK && kv_now_ms() < deadline) {
        rc = kv_meta_get(m, key, &v, &len);
        if (rc == KV_OK)
            kv_meta_free(v);
        else
            kv_sleep_ms(100);
    }
    assert_int_equal(rc, KV_OK);
    kv_meta_close(m);
    rec_free(r);
}

/* A killed server: a handle with a watch on prefix, opened before the kill. */
struct outage {
    struct kv_meta *m; /* 1 s timeout */
    struct rec *r;     /* the watch's events; the first is the put of prefix "1" */
    uint64_t id;       /* the watch */
    int64_t t_kill;    /* kv_now_ms() right after the kill */
};

/* Opens url, watches prefix, puts prefix "1" and sees its event, then kills and reaps the
 * server (*pid becomes -1): a get of prefix "1" and a put of prefix "2" give KV_EMETA_UNAVAIL
 * within 10 s. The caller goes on with o and ends with outage_end(). */
static inline void outage_begin(struct outage *o, const char *url, pid_t *pid, const char *prefix)
{
    struct kv_meta_opts opts = {.timeout_ms = 1000};
    char k1[128], k2[128];
    snprintf(k1, sizeof(k1), "%s1", prefix);
    snprintf(k2, sizeof(k2), "%s2", prefix);
    o->m = NULL;
    assert_int_equal(kv_meta_open(url, &opts, &o->m), KV_OK);
    o->r = rec_new();
    o->id = 0;
    assert_int_equal(kv_meta_watch(o->m, prefix, rec_fn, o->r, &o->id), KV_OK);
    assert_int_equal(kv_meta_put(o->m, k1, "1", 1, 0), KV_OK);
    assert_true(rec_wait(o->r, 1, 5000));

    srv_kill_reap(pid);
    o->t_kill = kv_now_ms();
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(kv_meta_get(o->m, k1, &v, &len), KV_EMETA_UNAVAIL);
    assert_int_equal(kv_meta_put(o->m, k2, "2", 1, 0), KV_EMETA_UNAVAIL);
    assert_true(kv_now_ms() - o->t_kill < 10000);
}

/* Closes o's handle (stopping its watch) and frees its recorder. */
static inline void outage_end(struct outage *o)
{
    kv_meta_close(o->m);
    rec_free(o->r);
}

#endif
