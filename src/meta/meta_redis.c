/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_redis.c - the Redis metadata backend through hiredis. URL: redis://HOST:PORT[/DB].
 *
 * Data model (DB = the URL's database, default 0):
 *   user key K          a Redis string K holding the value (binary-safe), as-is
 *   internal keys       all start with a NUL byte, which a kvstash key cannot contain, so they
 *                       never collide with user keys; list and watch skip every key starting
 *                       with NUL. NS = "\0kvstash/":
 *     NS "lease-seq"            INCR counter giving lease ids
 *     NS "lease/<id>"           string ttl_ms, PEXPIRE ttl_ms: the lease is alive while it exists
 *     NS "lease/<id>/keys"      set of keys put with the lease (may hold stale members)
 *     NS "kl/" K                string <id>: the lease K is bound to, same expiry as K
 *   Keys bound to a lease get the lease's remaining PTTL; keepalive re-PEXPIREs the lease key,
 *   its set and every member whose NS "kl/" K still names this lease (others are stale: K was
 *   put again without the lease, and are dropped from the set). Revoke deletes them the same
 *   way. Every multi-key step is one Lua script (EVAL), so it is atomic.
 *   put/cas: one script compares (cas: current value equal to expect, or absent), then SETs,
 *   binds or unbinds the lease, and PUBLISHes the event (see Watch). A lease that is gone
 *   makes the script fail with "KVLEASE" -> KV_EMETA_LEASE.
 *   list: SCAN MATCH <glob-escaped prefix>* (so "a*b" matches only itself as a prefix), then
 *   MGET in chunks; sorted and de-duplicated (SCAN may repeat keys). Not a snapshot: a key
 *   changed during the scan may appear with its old or new value or not at all.
 *
 * Watch: a dedicated subscriber connection per watch, on its own thread, PSUBSCRIBEd to
 *   (1) NS "ev/<db>/" PREFIX*  - events PUBLISHed by this backend's own put/cas/del/revoke
 *       scripts: payload "P"+value or "D". The value is the exact value written, in write
 *       order, since the script publishes atomically with the write.
 *   (2) __keyspace@<db>__:PREFIX* - Redis keyspace notifications, used only for "expired"
 *       and "evicted" (lease expiry, maxmemory) -> delete events.
 *   The backend enables notifications itself: on every watch it merges "Kxe" into the
 *   server's notify-keyspace-events (CONFIG SET; a server refusing CONFIG gets a warning and
 *   lease-expiry deletes are then not delivered). Writes made by other Redis clients (not
 *   through kvstash) are not reported, except for their expiry.
 *   unwatch wakes the thread through an eventfd; if the thread is just then reconnecting
 *   (connect + CONFIG + PSUBSCRIBE, each bounded by timeout_ms) unwatch waits for that.
 *   Ordering caveats: Redis delivers pub/sub messages of one connection in the order the
 *   server produced them, so events of one key arrive in order. Pub/sub is at-most-once: if
 *   the subscriber connection breaks, events until it is re-established are lost (the thread
 *   reconnects with backoff and logs a warning). Keyspace "expired" is sent when Redis
 *   actually removes the key (on access or by its 10 Hz expiry cycle), which can be later
 *   than the ttl.
 *
 * Connections: a pool of idle blocking connections (redisConnectWithTimeout, redisSetTimeout
 * = timeout_ms, so no call hangs). A call takes one (or connects), and returns it if healthy.
 * A reused connection that fails with EOF or an I/O error (other than a timeout) is retried
 * once on a fresh connection (the server may have restarted); then KV_EMETA_UNAVAIL.
 *
 * Invariants:
 *  1. A redisContext is used by one thread at a time (pool while idle).
 *  2. After unwatch/close returns the watch thread is joined: its callback will not run again;
 *     callbacks run on the watch thread with no lock held.
 * Thread model: any thread calls in; one thread per watch.
 * Locks (leaves, never held across network I/O or callbacks):
 *   redis.pool_lock   guards pool[], n_pool
 *   redis.watch_lock  guards watches
 */
#define KV_LOG_COMPONENT "meta.redis"
#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/idtab.h"
#include "common/log.h"
#include "common/util.h"
#include "meta/meta_int.h"

#define REDIS_POOL_MAX 16
#define NS "\0kvstash/"
#define NS_LEN (sizeof(NS) - 1)
#define MGET_CHUNK 256

struct redis {
    char host[256];
    uint16_t port;
    int db;
    int timeout_ms;
    pthread_mutex_t pool_lock; /* guards pool, n_pool; leaf */
    redisContext *pool[REDIS_POOL_MAX];
    size_t n_pool;
    pthread_mutex_t watch_lock; /* guards watches; leaf */
    struct kv_idtab watches;
};

struct redis_watch {
    struct redis *r;
    kv_meta_watch_fn fn;
    void *ud;
    struct kv_buf ev_pat;  /* NS "ev/<db>/" escaped-prefix "*" */
    struct kv_buf ks_pat;  /* "__keyspace@<db>__:" escaped-prefix "*" */
    struct kv_buf ev_chan; /* NS "ev/<db>/": channel prefix before the key */
    char ks_chan[48];      /* "__keyspace@<db>__:" */
    redisContext *sub;     /* watch thread only after start */
    int stopfd;            /* eventfd written by unwatch */
    atomic_bool stop;
    pthread_t thread;
};

/* ---------------------------------------------------------------- scripts */

/* KEYS: key, NS kl/key, NS lease/<id>, NS lease/<id>/keys, NS ev/<db>/key
 * ARGV: mode (put|absent|equal), expect, value, lease id ("0" = none) */
static const char SCRIPT_PUT[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if ARGV[1] == 'absent' then if cur then return 0 end\n"
    "elseif ARGV[1] == 'equal' then if cur ~= ARGV[2] then return 0 end end\n"
    "if ARGV[4] ~= '0' then\n"
    "  local ttl = redis.call('PTTL', KEYS[3])\n"
    "  if ttl <= 0 then return redis.error_reply('KVLEASE lease not found or expired') end\n"
    "  redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)\n"
    "  redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)\n"
    "  redis.call('SADD', KEYS[4], KEYS[1])\n"
    "  redis.call('PEXPIRE', KEYS[4], ttl)\n"
    "else\n"
    "  redis.call('SET', KEYS[1], ARGV[3])\n"
    "  redis.call('DEL', KEYS[2])\n"
    "end\n"
    "redis.call('PUBLISH', KEYS[5], 'P' .. ARGV[3])\n"
    "return 1\n";

/* KEYS: key, NS kl/key, NS ev/<db>/key */
static const char SCRIPT_DEL[] = "local n = redis.call('DEL', KEYS[1])\n"
                                 "redis.call('DEL', KEYS[2])\n"
                                 "if n > 0 then redis.call('PUBLISH', KEYS[3], 'D') end\n"
                                 "return n\n";

/* KEYS: NS lease-seq; ARGV: ttl_ms, NS "lease/" */
static const char SCRIPT_GRANT[] = "local id = redis.call('INCR', KEYS[1])\n"
                                   "redis.call('SET', ARGV[2] .. id, ARGV[1], 'PX', ARGV[1])\n"
                                   "return id\n";

/* KEYS: NS lease/<id>, NS lease/<id>/keys; ARGV: id, NS "kl/" */
static const char SCRIPT_KEEPALIVE[] =
    "local ttl = redis.call('GET', KEYS[1])\n"
    "if not ttl then return redis.error_reply('KVLEASE lease not found or expired') end\n"
    "redis.call('PEXPIRE', KEYS[1], ttl)\n"
    "redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  local c = ARGV[2] .. k\n"
    "  if redis.call('GET', c) == ARGV[1] then\n"
    "    redis.call('PEXPIRE', k, ttl)\n"
    "    redis.call('PEXPIRE', c, ttl)\n"
    "  else redis.call('SREM', KEYS[2], k) end\n"
    "end\n"
    "return 1\n";

/* KEYS: NS lease/<id>, NS lease/<id>/keys; ARGV: id, NS "kl/", NS "ev/<db>/" */
static const char SCRIPT_REVOKE[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  return redis.error_reply('KVLEASE lease not found or expired') end\n"
    "for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  local c = ARGV[2] .. k\n"
    "  if redis.call('GET', c) == ARGV[1] then\n"
    "    redis.call('DEL', k, c)\n"
    "    redis.call('PUBLISH', ARGV[3] .. k, 'D')\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[1], KEYS[2])\n"
    "return 1\n";

/* ---------------------------------------------------------------- connections */

static struct redis *impl(struct kv_meta *m)
{
    return m->impl;
}

static struct timeval tv_of(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* A new connection with timeouts set and the DB selected, or NULL (logged at DEBUG; *err
 * gets KV_EMETA_UNAVAIL, or KV_EMETA_URL for a DB the server refuses). */
static redisContext *conn_open(struct redis *r, int *err)
{
    *err = KV_EMETA_UNAVAIL;
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv_of(r->timeout_ms));
    if (!c)
        return NULL;
    if (c->err) {
        KV_LOGD("redis %s:%u: %s", r->host, (unsigned)r->port, c->errstr);
        redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv_of(r->timeout_ms)) != REDIS_OK) {
        redisFree(c);
        return NULL;
    }
    if (r->db) {
        redisReply *rep = redisCommand(c, "SELECT %d", r->db);
        bool ok = rep && rep->type == REDIS_REPLY_STATUS;
        if (rep && rep->type == REDIS_REPLY_ERROR) {
            KV_LOGE("redis %s:%u: SELECT %d: %s", r->host, (unsigned)r->port, r->db, rep->str);
            *err = KV_EMETA_URL;
        }
        if (rep)
            freeReplyObject(rep);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static redisContext *pool_get(struct redis *r, bool *pooled, int *err)
{
    redisContext *c = NULL;
    pthread_mutex_lock(&r->pool_lock);
    if (r->n_pool)
        c = r->pool[--r->n_pool];
    pthread_mutex_unlock(&r->pool_lock);
    *pooled = c != NULL;
    return c ? c : conn_open(r, err);
}

static void pool_put(struct redis *r, redisContext *c)
{
    pthread_mutex_lock(&r->pool_lock);
    if (r->n_pool < REDIS_POOL_MAX) {
        r->pool[r->n_pool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&r->pool_lock);
    if (c)
        redisFree(c);
}

/* Maps an error reply. */
static int reply_err(const redisReply *rep, const char *what)
{
    if (strncmp(rep->str, "KVLEASE", 7) == 0 || strstr(rep->str, "KVLEASE"))
        return KV_EMETA_LEASE;
    if (strncmp(rep->str, "LOADING", 7) == 0 || strncmp(rep->str, "BUSY", 4) == 0 ||
        strncmp(rep->str, "MASTERDOWN", 10) == 0) {
        KV_LOGW_RL(2000, "redis %s: %s", what, rep->str);
        return KV_EMETA_UNAVAIL;
    }
    if (strncmp(rep->str, "OOM", 3) == 0) {
        KV_LOGW("redis %s: %s", what, rep->str);
        return KV_ENOSPC;
    }
    if (strstr(rep->str, "WRONGTYPE")) {
        KV_LOGE("redis %s: a key holds a non-string value: %s", what, rep->str);
        return KV_EPROTO;
    }
    KV_LOGE("redis %s: %s", what, rep->str);
    return KV_EIO;
}

/* Runs one command. On KV_OK *out is a reply that is not an error (freeReplyObject). */
static int run(struct redis *r, int argc, const char **argv, const size_t *lens, redisReply **out)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool pooled = false;
        int err = KV_EMETA_UNAVAIL;
        redisContext *c = pool_get(r, &pooled, &err);
        if (!c) {
            KV_LOGW_RL(2000, "redis %s:%u unavailable", r->host, (unsigned)r->port);
            return err;
        }
        errno = 0;
        redisReply *rep = redisCommandArgv(c, argc, argv, lens);
        if (!rep) {
            int saved = errno;
            bool timeout = c->err == REDIS_ERR_IO && (saved == EAGAIN || saved == EWOULDBLOCK);
            KV_LOGD("redis %s: %s", argv[0], c->errstr);
            redisFree(c);
            if (pooled && !timeout && attempt == 0)
                continue; /* a stale pooled connection: retry on a fresh one */
            KV_LOGW_RL(2000, "redis %s:%u unavailable (%s)", r->host, (unsigned)r->port,
                       timeout ? "timed out" : "connection lost");
            return KV_EMETA_UNAVAIL;
        }
        pool_put(r, c);
        if (rep->type == REDIS_REPLY_ERROR) {
            int rc = reply_err(rep, argv[0]);
            freeReplyObject(rep);
            return rc;
        }
        *out = rep;
        return KV_OK;
    }
    return KV_EMETA_UNAVAIL;
}

/* ---------------------------------------------------------------- key names */

/* NS + part + tail into b. */
static int ns_key(struct kv_buf *b, const char *part, const char *tail)
{
    kv_buf_reset(b);
    int rc = kv_buf_append(b, NS, NS_LEN);
    if (rc == KV_OK)
        rc = kv_buf_appends(b, part);
    if (rc == KV_OK && tail)
        rc = kv_buf_appends(b, tail);
    return rc;
}

static int ev_chan(struct redis *r, struct kv_buf *b, const char *key)
{
    char part[32];
    snprintf(part, sizeof(part), "ev/%d/", r->db);
    return ns_key(b, part, key);
}

/* Appends s with the glob characters * ? [ ] \ escaped. */
static int glob_escape(struct kv_buf *b, const char *s)
{
    for (; *s; s++) {
        if (strchr("*?[]\\", *s) && kv_buf_append(b, "\\", 1) < 0)
            return KV_ENOMEM;
        if (kv_buf_append(b, s, 1) < 0)
            return KV_ENOMEM;
    }
    return KV_OK;
}

/* ---------------------------------------------------------------- ops */

static int redis_get(struct kv_meta *m, const char *key, char **val, size_t *len)
{
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    redisReply *rep;
    int rc = run(impl(m), 2, argv, lens, &rep);
    if (rc < 0)
        return rc;
    if (rep->type == REDIS_REPLY_NIL)
        rc = KV_ENOENT;
    else if (rep->type != REDIS_REPLY_STRING) {
        KV_LOGE("redis GET: unexpected reply type %d", rep->type);
        rc = KV_EPROTO;
    } else {
        char *v = kv_memdup0(rep->str, rep->len);
        if (!v)
            rc = KV_ENOMEM;
        else {
            *val = v;
            *len = rep->len;
        }
    }
    freeReplyObject(rep);
    return rc;
}

static int put_script(struct kv_meta *m, const char *mode, const char *key, const void *expect,
                      size_t expect_len, const void *val, size_t len, int64_t lease)
{
    struct redis *r = impl(m);
    struct kv_buf kl, lk, ls, ev;
    kv_buf_init(&kl);
    kv_buf_init(&lk);
    kv_buf_init(&ls);
    kv_buf_init(&ev);
    char id[24], idpart[48];
    snprintf(id, sizeof(id), "%lld", (long long)lease);
    snprintf(idpart, sizeof(idpart), "lease/%lld", (long long)lease);
    int rc = ns_key(&kl, "kl/", key);
    if (rc == KV_OK)
        rc = ns_key(&lk, idpart, NULL);
    if (rc == KV_OK)
        rc = ns_key(&ls, idpart, "/keys");
    if (rc == KV_OK)
        rc = ev_chan(r, &ev, key);
    if (rc < 0)
        goto out;
    const char *argv[] = {"EVAL",  SCRIPT_PUT, "5",     key,  kl.data,
                          lk.data, ls.data,    ev.data, mode, expect ? expect : "",
                          val,     id};
    size_t lens[] = {4,
                     sizeof(SCRIPT_PUT) - 1,
                     1,
                     strlen(key),
                     kl.len,
                     lk.len,
                     ls.len,
                     ev.len,
                     strlen(mode),
                     expect ? expect_len : 0,
                     len,
                     strlen(id)};
    redisReply *rep;
    rc = run(r, 12, argv, lens, &rep);
    if (rc < 0)
        goto out;
    if (rep->type != REDIS_REPLY_INTEGER) {
        KV_LOGE("redis put script: unexpected reply type %d", rep->type);
        rc = KV_EPROTO;
    } else {
        rc = rep->integer == 1 ? KV_OK : KV_EMETA_CAS;
    }
    freeReplyObject(rep);
out:
    kv_buf_fini(&kl);
    kv_buf_fini(&lk);
    kv_buf_fini(&ls);
    kv_buf_fini(&ev);
    return rc;
}

static int redis_put(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease)
{
    return put_script(m, "put", key, NULL, 0, val, len, lease);
}

static int redis_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                     const void *val, size_t len, int64_t lease)
{
    return put_script(m, expect ? "equal" : "absent", key, expect, expect_len, val, len, lease);
}

static int redis_del(struct kv_meta *m, const char *key)
{
    struct redis *r = impl(m);
    struct kv_buf kl, ev;
    kv_buf_init(&kl);
    kv_buf_init(&ev);
    int rc = ns_key(&kl, "kl/", key);
    if (rc == KV_OK)
        rc = ev_chan(r, &ev, key);
    if (rc < 0)
        goto out;
    const char *argv[] = {"EVAL", SCRIPT_DEL, "3", key, kl.data, ev.data};
    size_t lens[] = {4, sizeof(SCRIPT_DEL) - 1, 1, strlen(key), kl.len, ev.len};
    redisReply *rep;
    rc = run(r, 6, argv, lens, &rep);
    if (rc < 0)
        goto out;
    if (rep->type != REDIS_REPLY_INTEGER) {
        KV_LOGE("redis del script: unexpected reply type %d", rep->type);
        rc = KV_EPROTO;
    } else {
        rc = rep->integer > 0 ? KV_OK : KV_ENOENT;
    }
    freeReplyObject(rep);
out:
    kv_buf_fini(&kl);
    kv_buf_fini(&ev);
    return rc;
}

static bool user_key(const char *k, size_t len)
{
    return len > 0 && len < KV_META_MAX_KEY && k[0] != '\0' && memchr(k, '\0', len) == NULL;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

struct keyvec {
    char **v;
    size_t n, cap;
};

static void keyvec_fini(struct keyvec *kv)
{
    for (size_t i = 0; i < kv->n; i++)
        kv_free(kv->v[i]);
    kv_free(kv->v);
}

static int keyvec_push(struct keyvec *kv, const char *s, size_t len)
{
    if (kv->n == kv->cap) {
        size_t cap = kv->cap ? kv->cap * 2 : 64;
        char **nv = kv_realloc(kv->v, cap * sizeof(*nv));
        if (!nv)
            return KV_ENOMEM;
        kv->v = nv;
        kv->cap = cap;
    }
    char *d = kv_strndup(s, len);
    if (!d)
        return KV_ENOMEM;
    kv->v[kv->n++] = d;
    return KV_OK;
}

static int scan_keys(struct redis *r, const char *prefix, struct keyvec *keys)
{
    struct kv_buf pat;
    kv_buf_init(&pat);
    int rc = glob_escape(&pat, prefix);
    if (rc == KV_OK)
        rc = kv_buf_append(&pat, "*", 1);
    char cursor[32] = "0";
    size_t plen = strlen(prefix);
    do {
        if (rc < 0)
            break;
        const char *argv[] = {"SCAN", cursor, "MATCH", pat.data, "COUNT", "1000"};
        size_t lens[] = {4, strlen(cursor), 5, pat.len, 5, 4};
        redisReply *rep;
        rc = run(r, 6, argv, lens, &rep);
        if (rc < 0)
            break;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING || rep->element[0]->len >= sizeof(cursor) ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            KV_LOGE("redis SCAN: malformed reply");
            rc = KV_EPROTO;
        } else {
            memcpy(cursor, rep->element[0]->str, rep->element[0]->len);
            cursor[rep->element[0]->len] = '\0';
            redisReply *arr = rep->element[1];
            for (size_t i = 0; rc == KV_OK && i < arr->elements; i++) {
                redisReply *k = arr->element[i];
                if (k->type != REDIS_REPLY_STRING || !user_key(k->str, k->len) || k->len < plen ||
                    memcmp(k->str, prefix, plen) != 0)
                    continue;
                rc = keyvec_push(keys, k->str, k->len);
            }
        }
        freeReplyObject(rep);
    } while (rc == KV_OK && strcmp(cursor, "0") != 0);
    kv_buf_fini(&pat);
    if (rc == KV_OK && keys->n > 1) {
        qsort(keys->v, keys->n, sizeof(char *), str_cmp);
        size_t w = 1;
        for (size_t i = 1; i < keys->n; i++) {
            if (strcmp(keys->v[i], keys->v[w - 1]) == 0)
                kv_free(keys->v[i]);
            else
                keys->v[w++] = keys->v[i];
        }
        keys->n = w;
    }
    return rc;
}

static int redis_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    struct redis *r = impl(m);
    struct keyvec keys = {0};
    struct kv_meta_kv *out = NULL;
    size_t cnt = 0;
    const char **argv = NULL;
    size_t *lens = NULL;
    int rc = scan_keys(r, prefix, &keys);
    if (rc < 0 || keys.n == 0)
        goto out;
    out = kv_calloc(keys.n, sizeof(*out));
    argv = kv_calloc(MGET_CHUNK + 1, sizeof(*argv));
    lens = kv_calloc(MGET_CHUNK + 1, sizeof(*lens));
    if (!out || !argv || !lens) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (size_t base = 0; rc == KV_OK && base < keys.n; base += MGET_CHUNK) {
        size_t k = KV_MIN((size_t)MGET_CHUNK, keys.n - base);
        argv[0] = "MGET";
        lens[0] = 4;
        for (size_t i = 0; i < k; i++) {
            argv[i + 1] = keys.v[base + i];
            lens[i + 1] = strlen(keys.v[base + i]);
        }
        redisReply *rep;
        rc = run(r, (int)k + 1, argv, lens, &rep);
        if (rc < 0)
            break;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != k) {
            KV_LOGE("redis MGET: malformed reply");
            rc = KV_EPROTO;
        }
        for (size_t i = 0; rc == KV_OK && i < k; i++) {
            redisReply *v = rep->element[i];
            if (v->type != REDIS_REPLY_STRING)
                continue; /* deleted since the scan, or not a string */
            out[cnt].val = kv_memdup0(v->str, v->len);
            if (!out[cnt].val) {
                rc = KV_ENOMEM;
                break;
            }
            out[cnt].len = v->len;
            out[cnt].key = keys.v[base + i];
            keys.v[base + i] = NULL; /* ownership moved to out */
            cnt++;
        }
        freeReplyObject(rep);
    }
out:
    kv_free(argv);
    kv_free(lens);
    keyvec_fini(&keys);
    if (rc < 0) {
        kv_meta_kvs_free(out, cnt);
        return rc;
    }
    if (cnt == 0) {
        kv_free(out);
        out = NULL;
    }
    *kvs = out;
    *n = cnt;
    return KV_OK;
}

static int redis_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease)
{
    struct redis *r = impl(m);
    struct kv_buf seq, lp;
    kv_buf_init(&seq);
    kv_buf_init(&lp);
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_s * 1000);
    int rc = ns_key(&seq, "lease-seq", NULL);
    if (rc == KV_OK)
        rc = ns_key(&lp, "lease/", NULL);
    if (rc < 0)
        goto out;
    const char *argv[] = {"EVAL", SCRIPT_GRANT, "1", seq.data, ttl, lp.data};
    size_t lens[] = {4, sizeof(SCRIPT_GRANT) - 1, 1, seq.len, strlen(ttl), lp.len};
    redisReply *rep;
    rc = run(r, 6, argv, lens, &rep);
    if (rc < 0)
        goto out;
    if (rep->type != REDIS_REPLY_INTEGER || rep->integer <= 0) {
        KV_LOGE("redis lease grant: unexpected reply");
        rc = KV_EPROTO;
    } else {
        *lease = rep->integer;
    }
    freeReplyObject(rep);
out:
    kv_buf_fini(&seq);
    kv_buf_fini(&lp);
    return rc;
}

static int lease_script(struct kv_meta *m, const char *script, size_t slen, int64_t lease)
{
    struct redis *r = impl(m);
    struct kv_buf lk, ls, kl, ev;
    kv_buf_init(&lk);
    kv_buf_init(&ls);
    kv_buf_init(&kl);
    kv_buf_init(&ev);
    char id[24], idpart[48];
    snprintf(id, sizeof(id), "%lld", (long long)lease);
    snprintf(idpart, sizeof(idpart), "lease/%lld", (long long)lease);
    int rc = ns_key(&lk, idpart, NULL);
    if (rc == KV_OK)
        rc = ns_key(&ls, idpart, "/keys");
    if (rc == KV_OK)
        rc = ns_key(&kl, "kl/", NULL);
    if (rc == KV_OK)
        rc = ev_chan(r, &ev, "");
    if (rc < 0)
        goto out;
    const char *argv[] = {"EVAL", script, "2", lk.data, ls.data, id, kl.data, ev.data};
    size_t lens[] = {4, slen, 1, lk.len, ls.len, strlen(id), kl.len, ev.len};
    redisReply *rep;
    rc = run(r, 8, argv, lens, &rep);
    if (rc < 0)
        goto out;
    if (rep->type != REDIS_REPLY_INTEGER) {
        KV_LOGE("redis lease script: unexpected reply type %d", rep->type);
        rc = KV_EPROTO;
    }
    freeReplyObject(rep);
out:
    kv_buf_fini(&lk);
    kv_buf_fini(&ls);
    kv_buf_fini(&kl);
    kv_buf_fini(&ev);
    return rc;
}

static int redis_lease_keepalive(struct kv_meta *m, int64_t lease)
{
    return lease_script(m, SCRIPT_KEEPALIVE, sizeof(SCRIPT_KEEPALIVE) - 1, lease);
}

static int redis_lease_revoke(struct kv_meta *m, int64_t lease)
{
    return lease_script(m, SCRIPT_REVOKE, sizeof(SCRIPT_REVOKE) - 1, lease);
}

/* ---------------------------------------------------------------- watch */

/* Merges "Kxe" into notify-keyspace-events (see the header comment). A server refusing
 * CONFIG only gets a warning; false when the connection itself failed. */
static bool enable_notifications(redisContext *c)
{
    redisReply *rep = redisCommand(c, "CONFIG GET notify-keyspace-events");
    if (!rep)
        return false;
    char cur[64] = "";
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[1]->type == REDIS_REPLY_STRING && rep->element[1]->len < sizeof(cur) - 4) {
        memcpy(cur, rep->element[1]->str, rep->element[1]->len);
        cur[rep->element[1]->len] = '\0';
    } else {
        KV_LOGW("redis refuses CONFIG GET notify-keyspace-events (%s); lease-expiry deletes "
                "reach watches only if the server sets it to include \"Kxe\"",
                rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        freeReplyObject(rep);
        return true;
    }
    freeReplyObject(rep);
    size_t n = strlen(cur);
    bool all = strchr(cur, 'A') != NULL;
    bool changed = false;
    if (!strchr(cur, 'K')) {
        cur[n++] = 'K';
        changed = true;
    }
    if (!all && !strchr(cur, 'x')) {
        cur[n++] = 'x';
        changed = true;
    }
    if (!all && !strchr(cur, 'e')) {
        cur[n++] = 'e';
        changed = true;
    }
    cur[n] = '\0';
    if (!changed)
        return true;
    rep = redisCommand(c, "CONFIG SET notify-keyspace-events %s", cur);
    if (!rep)
        return false;
    if (rep->type == REDIS_REPLY_ERROR)
        KV_LOGW("redis refuses CONFIG SET notify-keyspace-events %s (%s); lease-expiry deletes "
                "will not reach watches",
                cur, rep->str);
    freeReplyObject(rep);
    return true;
}

/* Opens the subscriber connection and subscribes; the confirmations are read here, so events
 * after it returns are delivered. */
static int sub_open(struct redis_watch *w)
{
    int err;
    redisContext *c = conn_open(w->r, &err);
    if (!c)
        return err;
    if (!enable_notifications(c))
        goto fail;
    const char *argv[] = {"PSUBSCRIBE", w->ev_pat.data, w->ks_pat.data};
    size_t lens[] = {10, w->ev_pat.len, w->ks_pat.len};
    if (redisAppendCommandArgv(c, 3, argv, lens) != REDIS_OK)
        goto fail;
    for (int i = 0; i < 2; i++) {
        void *rep = NULL;
        if (redisGetReply(c, &rep) != REDIS_OK || !rep)
            goto fail;
        redisReply *rr = rep;
        bool ok = rr->type == REDIS_REPLY_ARRAY && rr->elements == 3 &&
                  rr->element[0]->type == REDIS_REPLY_STRING &&
                  strcmp(rr->element[0]->str, "psubscribe") == 0;
        freeReplyObject(rep);
        if (!ok)
            goto fail;
    }
    /* the subscriber reads without a timeout: the thread polls */
    redisSetTimeout(c, tv_of(0));
    w->sub = c;
    return KV_OK;
fail:
    KV_LOGW("redis PSUBSCRIBE failed: %s", c->err ? c->errstr : "unexpected reply");
    redisFree(c);
    return KV_EMETA_UNAVAIL;
}

static void deliver(struct redis_watch *w, enum kv_meta_event_type type, const char *key,
                    size_t klen, const char *val, size_t len)
{
    if (!user_key(key, klen) || atomic_load_explicit(&w->stop, memory_order_acquire))
        return;
    char *k = kv_strndup(key, klen);
    if (!k) {
        KV_LOGE("redis watch: out of memory; event for a key dropped");
        return;
    }
    struct kv_meta_event ev = {type, k, type == KV_META_EV_PUT ? val : NULL,
                               type == KV_META_EV_PUT ? len : 0};
    w->fn(w->ud, &ev);
    kv_free(k);
}

static void handle_msg(struct redis_watch *w, redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 4 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(rep->element[0]->str, "pmessage") != 0 ||
        rep->element[2]->type != REDIS_REPLY_STRING || rep->element[3]->type != REDIS_REPLY_STRING)
        return;
    redisReply *ch = rep->element[2], *data = rep->element[3];
    size_t evl = w->ev_chan.len, ksl = strlen(w->ks_chan);
    if (ch->len >= evl && memcmp(ch->str, w->ev_chan.data, evl) == 0) {
        if (data->len >= 1 && data->str[0] == 'P')
            deliver(w, KV_META_EV_PUT, ch->str + evl, ch->len - evl, data->str + 1, data->len - 1);
        else if (data->len == 1 && data->str[0] == 'D')
            deliver(w, KV_META_EV_DEL, ch->str + evl, ch->len - evl, NULL, 0);
    } else if (ch->len >= ksl && memcmp(ch->str, w->ks_chan, ksl) == 0) {
        if (strcmp(data->str, "expired") == 0 || strcmp(data->str, "evicted") == 0)
            deliver(w, KV_META_EV_DEL, ch->str + ksl, ch->len - ksl, NULL, 0);
    }
}

/* Waits up to ms for stopfd or data on the subscriber; true if stop was requested. */
static bool wait_io(struct redis_watch *w, int ms)
{
    struct pollfd p[2] = {{w->stopfd, POLLIN, 0}, {w->sub ? w->sub->fd : -1, POLLIN, 0}};
    poll(p, w->sub ? 2 : 1, ms);
    return atomic_load_explicit(&w->stop, memory_order_acquire);
}

static void *watch_main(void *arg)
{
    struct redis_watch *w = arg;
    kv_log_set_thread_name("meta-redis-watch");
    int backoff = 100;
    while (!atomic_load_explicit(&w->stop, memory_order_acquire)) {
        if (!w->sub) {
            if (wait_io(w, backoff))
                break;
            backoff = KV_MIN(backoff * 2, 1000);
            if (sub_open(w) == KV_OK) {
                KV_LOGW("redis watch re-subscribed; events while it was down are lost");
                backoff = 100;
            }
            continue;
        }
        void *rep = NULL;
        while (redisGetReplyFromReader(w->sub, &rep) == REDIS_OK && rep) {
            handle_msg(w, rep);
            freeReplyObject(rep);
            rep = NULL;
        }
        if (w->sub->err) {
            KV_LOGW("redis watch connection failed: %s; reconnecting", w->sub->errstr);
            redisFree(w->sub);
            w->sub = NULL;
            continue;
        }
        if (wait_io(w, 1000))
            break;
        struct pollfd p = {w->sub->fd, POLLIN, 0};
        if (poll(&p, 1, 0) == 1 && redisBufferRead(w->sub) != REDIS_OK) {
            KV_LOGW("redis watch connection lost: %s; reconnecting", w->sub->errstr);
            redisFree(w->sub);
            w->sub = NULL;
        }
    }
    return NULL;
}

static void watch_free(struct redis_watch *w)
{
    if (w->sub)
        redisFree(w->sub);
    if (w->stopfd >= 0)
        close(w->stopfd);
    kv_buf_fini(&w->ev_pat);
    kv_buf_fini(&w->ks_pat);
    kv_buf_fini(&w->ev_chan);
    kv_free(w);
}

static void watch_stop(void *arg)
{
    struct redis_watch *w = arg;
    atomic_store_explicit(&w->stop, true, memory_order_release);
    uint64_t one = 1;
    ssize_t wr = write(w->stopfd, &one, sizeof(one));
    (void)wr;
    pthread_join(w->thread, NULL);
    watch_free(w);
}

static int redis_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                       uint64_t *id)
{
    struct redis *r = impl(m);
    struct redis_watch *w = kv_calloc(1, sizeof(*w));
    if (!w)
        return KV_ENOMEM;
    w->r = r;
    w->fn = fn;
    w->ud = ud;
    w->stopfd = -1;
    kv_buf_init(&w->ev_pat);
    kv_buf_init(&w->ks_pat);
    kv_buf_init(&w->ev_chan);
    snprintf(w->ks_chan, sizeof(w->ks_chan), "__keyspace@%d__:", r->db);
    int rc = ev_chan(r, &w->ev_chan, "");
    if (rc == KV_OK)
        rc = kv_buf_append(&w->ev_pat, w->ev_chan.data, w->ev_chan.len);
    if (rc == KV_OK)
        rc = glob_escape(&w->ev_pat, prefix);
    if (rc == KV_OK)
        rc = kv_buf_append(&w->ev_pat, "*", 1);
    if (rc == KV_OK)
        rc = kv_buf_appends(&w->ks_pat, w->ks_chan);
    if (rc == KV_OK)
        rc = glob_escape(&w->ks_pat, prefix);
    if (rc == KV_OK)
        rc = kv_buf_append(&w->ks_pat, "*", 1);
    if (rc < 0)
        goto out_free;
    w->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stopfd < 0) {
        rc = kv_err_from_errno(errno);
        goto out_free;
    }
    rc = sub_open(w);
    if (rc < 0)
        goto out_free;
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    pthread_mutex_lock(&r->watch_lock);
    rc = kv_idtab_add(&r->watches, w, id);
    pthread_mutex_unlock(&r->watch_lock);
    if (rc < 0)
        watch_stop(w);
    return rc;
out_free:
    watch_free(w);
    return rc;
}

static int redis_unwatch(struct kv_meta *m, uint64_t id)
{
    struct redis *r = impl(m);
    return kv_meta_watch_remove(&r->watches, &r->watch_lock, id, watch_stop);
}

static void redis_free(struct redis *r)
{
    for (size_t i = 0; i < r->n_pool; i++)
        redisFree(r->pool[i]);
    kv_idtab_fini(&r->watches);
    pthread_mutex_destroy(&r->pool_lock);
    pthread_mutex_destroy(&r->watch_lock);
    kv_free(r);
}

static void redis_close(struct kv_meta *m)
{
    struct redis *r = impl(m);
    kv_meta_watch_remove_all(&r->watches, &r->watch_lock, watch_stop);
    redis_free(r);
    m->impl = NULL;
}

static const struct kv_meta_ops redis_ops = {
    .name = "redis",
    .get = redis_get,
    .put = redis_put,
    .del = redis_del,
    .list = redis_list,
    .cas = redis_cas,
    .lease_grant = redis_lease_grant,
    .lease_keepalive = redis_lease_keepalive,
    .lease_revoke = redis_lease_revoke,
    .watch = redis_watch,
    .unwatch = redis_unwatch,
    .close = redis_close,
};

static int parse_url(struct redis *r, const char *rest)
{
    char hp[300];
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= sizeof(hp))
        goto bad;
    memcpy(hp, rest, n);
    hp[n] = '\0';
    if (kv_parse_hostport(hp, r->host, sizeof(r->host), &r->port) < 0 || r->port == 0 ||
        hp[0] == ':')
        goto bad;
    if (slash) {
        uint64_t db;
        if (kv_parse_u64(slash + 1, &db) < 0 || db > 1000000)
            goto bad;
        r->db = (int)db;
    }
    return KV_OK;
bad:
    KV_LOGE("bad Redis URL 'redis://%s' (want redis://HOST:PORT[/DB])", rest);
    return KV_EMETA_URL;
}

int kv_meta_redis_open(struct kv_meta *m, const char *rest)
{
    struct redis *r = kv_calloc(1, sizeof(*r));
    if (!r)
        return KV_ENOMEM;
    pthread_mutex_init(&r->pool_lock, NULL);
    pthread_mutex_init(&r->watch_lock, NULL);
    kv_idtab_init(&r->watches);
    r->timeout_ms = m->timeout_ms;
    int rc = parse_url(r, rest);
    if (rc < 0)
        goto out_free;
    redisContext *c = conn_open(r, &rc);
    if (!c) {
        KV_LOGE("redis at '%s' does not answer%s", rest,
                rc == KV_EMETA_URL ? " to SELECT (bad DB?)" : "");
        goto out_free;
    }
    redisReply *rep = redisCommand(c, "PING");
    bool ok = rep && (rep->type == REDIS_REPLY_STATUS || rep->type == REDIS_REPLY_STRING);
    if (rep)
        freeReplyObject(rep);
    if (!ok) {
        KV_LOGE("redis at '%s' does not answer PING", rest);
        redisFree(c);
        rc = KV_EMETA_UNAVAIL;
        goto out_free;
    }
    r->pool[r->n_pool++] = c;
    m->impl = r;
    m->ops = &redis_ops;
    return KV_OK;
out_free:
    redis_free(r);
    return rc;
}
