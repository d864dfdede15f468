/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_etcd.c - the etcd metadata backend: etcd v3 through its JSON gateway (grpc-gateway)
 * over libcurl. URL: etcd://HOST:PORT[,HOST:PORT...].
 *
 * Requests: POST /v3/kv/range | put | deleterange | txn, /v3/lease/grant | keepalive | revoke,
 * and the streaming POST /v3/watch. Keys and values travel as base64 (libsodium). Responses
 * are decoded by the pure functions of meta_etcd_int.h (fuzzed), which never trust the body.
 *
 * Mapping of the meta API:
 *   get      range(key) -> kvs[0] or KV_ENOENT
 *   list     range(prefix, prefix_end(prefix)), sorted by key
 *   del      deleterange(key); deleted == 0 -> KV_ENOENT
 *   cas      txn: compare VALUE == expect (or CREATE revision == 0 for "absent"); success op
 *            put(key, val, lease); succeeded == false -> KV_EMETA_CAS
 *   leases   etcd leases (etcd rounds a ttl up to its minimum, 2 s by default); keepalive
 *            reporting TTL 0 or NotFound -> KV_EMETA_LEASE
 *   watch    one thread per watch streaming /v3/watch; see "Watch" below
 *
 * Endpoint fail-over: every request starts at the endpoint that last answered (cur) and, on
 * a transport error, a timeout or an HTTP 503 (etcd without a leader), tries the next one.
 * The whole call is bounded by timeout_ms (the connect phase gets a share of it per
 * endpoint), then KV_EMETA_UNAVAIL. A request that timed out may have been applied: retrying
 * a put is harmless, a retried cas may then report KV_EMETA_CAS although it took effect
 * (callers of cas re-read on failure anyway).
 *
 * Watch: the thread drives one easy handle through a private curl multi handle, so that
 * unwatch can interrupt it at once with curl_multi_wakeup(). The stream is split on newlines
 * (the gateway writes one JSON object per line). kv_meta_watch() returns only after etcd
 * confirmed the watch ("created"), whose header revision R means every later change (> R) is
 * delivered. The thread keeps next_rev = last delivered mod_revision + 1 (initially R + 1);
 * when the stream breaks it reconnects (next endpoint, backoff 100 ms .. 1 s) with
 * start_revision = next_rev, so nothing is lost or repeated unless etcd compacted that
 * revision away (then it logs a warning and resumes at the compact revision).
 *
 * Watch states: PENDING --created--> LIVE --stream break--> (reconnect) LIVE
 *               PENDING/LIVE --unwatch/close: stop=1, wakeup, join--> gone
 * kv_meta_watch() gives up on PENDING after timeout_ms (stops the thread, KV_EMETA_UNAVAIL).
 *
 * Invariants:
 *  1. A curl easy handle is used by one thread at a time: request handles live in pool
 *     while idle and belong to the calling thread during a request.
 *  2. After kv_meta_unwatch() (or close) returns the watch thread is joined: its callback
 *     will not run again. The callback runs on the watch thread with no lock held.
 *
 * Thread model: any thread calls in; one thread per watch.
 * Locks (both leaves, never held across a network call or a callback):
 *   etcd.pool_lock     guards pool[], n_pool
 *   etcd.watch_lock    guards watches (the id table of live watches)
 *   etcd_watch.lock    guards state (the PENDING -> LIVE hand-off to kv_meta_watch())
 */
#define KV_LOG_COMPONENT "meta.etcd"
#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/idtab.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "meta/meta_etcd_int.h"
#include "meta/meta_int.h"

#define ETCD_POOL_MAX 16
#define ETCD_MAX_RESPONSE (64u << 20) /* a bigger reply is refused (KV_E2BIG) */
#define ETCD_MAX_ENDPOINTS 16
#define ETCD_MAX_LINE (16u << 20) /* one watch message */

/* ---------------------------------------------------------------- pure decoders */

int kv_etcd_b64_encode(const void *p, size_t n, char **out)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *s = kv_malloc(cap);
    if (!s)
        return KV_ENOMEM;
    sodium_bin2base64(s, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    *out = s;
    return KV_OK;
}

int kv_etcd_b64_decode(const char *s, size_t slen, char **out, size_t *len)
{
    /* libsodium 1.0.18 decodes some bytes >= 0x80 as digits (found by fuzzing): check the
     * alphabet first */
    for (size_t i = 0; i < slen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '='))
            return KV_EPROTO;
    }
    size_t cap = slen / 4 * 3 + 3;
    char *bin = kv_malloc(cap + 1);
    if (!bin)
        return KV_ENOMEM;
    size_t got = 0;
    const char *end = NULL;
    if (sodium_base642bin((unsigned char *)bin, cap, s, slen, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != s + slen) {
        kv_free(bin);
        return KV_EPROTO;
    }
    bin[got] = '\0';
    *out = bin;
    *len = got;
    return KV_OK;
}

int kv_etcd_prefix_end(const char *prefix, char **out, size_t *len)
{
    size_t n = strlen(prefix);
    while (n > 0 && (unsigned char)prefix[n - 1] == 0xff)
        n--;
    char *e = kv_malloc(n + 1);
    if (!e)
        return KV_ENOMEM;
    if (n == 0) {
        e[0] = '\0'; /* "\0" as range_end: every key >= key */
        *out = e;
        *len = 1;
        return KV_OK;
    }
    memcpy(e, prefix, n);
    e[n - 1] = (char)((unsigned char)e[n - 1] + 1);
    e[n] = '\0';
    *out = e;
    *len = n;
    return KV_OK;
}

static int parse_obj(const char *body, size_t len, json_t **out, char *err, size_t errlen)
{
    char jerr[160];
    json_t *v = NULL;
    if (kv_json_parse(body, len, &v, jerr, sizeof(jerr)) < 0) {
        snprintf(err, errlen, "reply is not JSON (%s)", jerr);
        return KV_EPROTO;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(err, errlen, "reply is not a JSON object");
        return KV_EPROTO;
    }
    *out = v;
    return KV_OK;
}

/* An int64 field sent as a JSON string (or number); absent -> 0. */
static int get_i64(json_t *o, const char *field, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, field);
    if (!v) {
        *out = 0;
        return KV_OK;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return KV_OK;
    }
    if (json_is_string(v) && kv_parse_i64(json_string_value(v), out) == KV_OK)
        return KV_OK;
    snprintf(err, errlen, "field \"%s\" is not an int64", field);
    return KV_EPROTO;
}

static int get_bool(json_t *o, const char *field, bool *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, field);
    if (!v) {
        *out = false;
        return KV_OK;
    }
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "field \"%s\" is not a boolean", field);
        return KV_EPROTO;
    }
    *out = json_is_true(v);
    return KV_OK;
}

/* A base64 field; absent -> "" (etcd omits empty values). */
static int get_b64(json_t *o, const char *field, char **out, size_t *len, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, field);
    if (!v)
        return kv_etcd_b64_decode("", 0, out, len);
    if (!json_is_string(v)) {
        snprintf(err, errlen, "field \"%s\" is not a string", field);
        return KV_EPROTO;
    }
    int rc = kv_etcd_b64_decode(json_string_value(v), json_string_length(v), out, len);
    if (rc == KV_EPROTO)
        snprintf(err, errlen, "field \"%s\" is not valid base64", field);
    return rc;
}

static bool valid_key(const char *k, size_t len)
{
    return len > 0 && len < KV_META_MAX_KEY && strlen(k) == len;
}

/* A body's "header" must be an object when present. */
static int check_header(json_t *root, int64_t *rev, char *err, size_t errlen)
{
    json_t *h = json_object_get(root, "header");
    if (!h) {
        *rev = 0;
        return KV_OK;
    }
    if (!json_is_object(h)) {
        snprintf(err, errlen, "field \"header\" is not an object");
        return KV_EPROTO;
    }
    return get_i64(h, "revision", rev, err, errlen);
}

int kv_etcd_decode_error(long status, const char *body, size_t len, char *err, size_t errlen)
{
    json_t *root;
    if (parse_obj(body, len, &root, err, errlen) < 0) {
        snprintf(err, errlen, "HTTP %ld with a body that is not a JSON error object", status);
        return KV_EPROTO;
    }
    int64_t code = 0;
    const char *msg = NULL;
    json_t *m = json_object_get(root, "message");
    if (!m)
        m = json_object_get(root, "error");
    if (json_is_string(m))
        msg = json_string_value(m);
    int rc = KV_EIO;
    if (!msg || get_i64(root, "code", &code, err, errlen) < 0) {
        snprintf(err, errlen, "HTTP %ld with an error object lacking \"message\"/\"code\"", status);
        rc = KV_EPROTO;
        goto out;
    }
    snprintf(err, errlen, "HTTP %ld, code %lld: %s", status, (long long)code, msg);
    if (code == 5 /* NotFound */)
        rc = strstr(msg, "lease") ? KV_EMETA_LEASE : KV_ENOENT;
    else if (strstr(msg, "too large"))
        rc = KV_E2BIG;
    else if (code == 3 /* InvalidArgument */)
        rc = KV_EINVAL;
    else if (code == 14 /* Unavailable */ || code == 4 /* DeadlineExceeded */)
        rc = KV_EMETA_UNAVAIL;
out:
    json_decref(root);
    return rc;
}

/* One {"key","value","mod_revision"} object; val NULL skips the value. */
static int decode_kv(json_t *kv, char **key, size_t *klen, char **val, size_t *vlen,
                     int64_t *mod_rev, char *err, size_t errlen)
{
    if (!json_is_object(kv)) {
        snprintf(err, errlen, "a kv is not an object");
        return KV_EPROTO;
    }
    int rc = get_i64(kv, "mod_revision", mod_rev, err, errlen);
    if (rc < 0)
        return rc;
    rc = get_b64(kv, "key", key, klen, err, errlen);
    if (rc < 0 || !val)
        return rc;
    rc = get_b64(kv, "value", val, vlen, err, errlen);
    if (rc < 0)
        kv_free(*key);
    return rc;
}

int kv_etcd_decode_range(const char *body, size_t len, struct kv_meta_kv **kvs, size_t *n,
                         char *err, size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    int64_t rev;
    struct kv_meta_kv *out = NULL;
    size_t cnt = 0;
    rc = check_header(root, &rev, err, errlen);
    if (rc < 0)
        goto out;
    json_t *arr = json_object_get(root, "kvs");
    if (arr && !json_is_array(arr)) {
        snprintf(err, errlen, "field \"kvs\" is not an array");
        rc = KV_EPROTO;
        goto out;
    }
    size_t total = arr ? json_array_size(arr) : 0;
    if (total) {
        out = kv_calloc(total, sizeof(*out));
        if (!out) {
            rc = KV_ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < total; i++) {
        char *k = NULL, *v = NULL;
        size_t klen = 0, vlen = 0;
        int64_t mrev;
        rc = decode_kv(json_array_get(arr, i), &k, &klen, &v, &vlen, &mrev, err, errlen);
        if (rc < 0)
            goto out;
        if (!valid_key(k, klen)) {
            KV_LOGW_RL(5000, "skipping an etcd key that is empty, too long or holds a NUL byte");
            kv_free(k);
            kv_free(v);
            continue;
        }
        out[cnt].key = k;
        out[cnt].val = v;
        out[cnt].len = vlen;
        cnt++;
    }
    rc = KV_OK;
    *kvs = cnt ? out : NULL;
    *n = cnt;
    if (!cnt)
        kv_free(out);
    out = NULL;
out:
    if (out)
        kv_meta_kvs_free(out, cnt);
    json_decref(root);
    return rc;
}

int kv_etcd_decode_header(const char *body, size_t len, int64_t *revision, char *err, size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    int64_t rev = 0;
    if (!json_is_object(json_object_get(root, "header"))) {
        snprintf(err, errlen, "reply lacks a \"header\" object");
        rc = KV_EPROTO;
    } else {
        rc = check_header(root, &rev, err, errlen);
    }
    if (rc == KV_OK)
        *revision = rev;
    json_decref(root);
    return rc;
}

int kv_etcd_decode_deleted(const char *body, size_t len, int64_t *deleted, char *err, size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    int64_t rev, d = 0;
    rc = check_header(root, &rev, err, errlen);
    if (rc == KV_OK)
        rc = get_i64(root, "deleted", &d, err, errlen);
    if (rc == KV_OK && d < 0) {
        snprintf(err, errlen, "field \"deleted\" is negative");
        rc = KV_EPROTO;
    }
    if (rc == KV_OK)
        *deleted = d;
    json_decref(root);
    return rc;
}

int kv_etcd_decode_txn(const char *body, size_t len, bool *succeeded, char *err, size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    int64_t rev;
    bool ok = false;
    rc = check_header(root, &rev, err, errlen);
    if (rc == KV_OK)
        rc = get_bool(root, "succeeded", &ok, err, errlen);
    json_t *resp = json_object_get(root, "responses");
    if (rc == KV_OK && resp && !json_is_array(resp)) {
        snprintf(err, errlen, "field \"responses\" is not an array");
        rc = KV_EPROTO;
    }
    if (rc == KV_OK)
        *succeeded = ok;
    json_decref(root);
    return rc;
}

int kv_etcd_decode_grant(const char *body, size_t len, int64_t *id, int64_t *ttl, char *err,
                         size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    int64_t rev, lid = 0, t = 0;
    rc = check_header(root, &rev, err, errlen);
    if (rc == KV_OK)
        rc = get_i64(root, "ID", &lid, err, errlen);
    if (rc == KV_OK)
        rc = get_i64(root, "TTL", &t, err, errlen);
    json_t *e = json_object_get(root, "error");
    if (rc == KV_OK && json_is_string(e) && json_string_length(e) > 0) {
        snprintf(err, errlen, "lease grant failed: %s", json_string_value(e));
        rc = KV_EPROTO;
    }
    if (rc == KV_OK && (lid <= 0 || t <= 0)) {
        snprintf(err, errlen, "lease grant reply lacks a positive ID and TTL");
        rc = KV_EPROTO;
    }
    if (rc == KV_OK) {
        *id = lid;
        *ttl = t;
    }
    json_decref(root);
    return rc;
}

/* The first line of a streamed reply. */
static size_t first_line(const char *body, size_t len)
{
    const char *nl = memchr(body, '\n', len);
    return nl ? (size_t)(nl - body) : len;
}

/* Unwraps a stream message: {"result": X} -> X (borrowed from root), {"error": ...} ->
 * KV_EIO. */
static int stream_result(json_t *root, json_t **res, char *err, size_t errlen)
{
    json_t *e = json_object_get(root, "error");
    if (e) {
        json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;
        snprintf(err, errlen, "stream error: %s",
                 json_is_string(m) ? json_string_value(m) : "(no message)");
        return KV_EIO;
    }
    json_t *r = json_object_get(root, "result");
    if (!json_is_object(r)) {
        snprintf(err, errlen, "stream message lacks a \"result\" object");
        return KV_EPROTO;
    }
    *res = r;
    return KV_OK;
}

int kv_etcd_decode_keepalive(const char *body, size_t len, int64_t *ttl, char *err, size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, first_line(body, len), &root, err, errlen);
    if (rc < 0)
        return rc;
    json_t *res = NULL;
    int64_t rev, t = 0;
    rc = stream_result(root, &res, err, errlen);
    if (rc == KV_OK)
        rc = check_header(res, &rev, err, errlen);
    if (rc == KV_OK)
        rc = get_i64(res, "TTL", &t, err, errlen);
    if (rc == KV_OK)
        *ttl = t < 0 ? 0 : t;
    json_decref(root);
    return rc;
}

void kv_etcd_watch_msg_fini(struct kv_etcd_watch_msg *msg)
{
    for (size_t i = 0; i < msg->n_events; i++) {
        kv_free(msg->events[i].key);
        kv_free(msg->events[i].val);
    }
    kv_free(msg->events);
    memset(msg, 0, sizeof(*msg));
}

static int decode_event(json_t *ev, struct kv_etcd_event *out, bool *skip, char *err, size_t errlen)
{
    if (!json_is_object(ev)) {
        snprintf(err, errlen, "an event is not an object");
        return KV_EPROTO;
    }
    json_t *t = json_object_get(ev, "type");
    enum kv_meta_event_type type = KV_META_EV_PUT;
    if (t) {
        if (json_is_string(t) && strcmp(json_string_value(t), "PUT") == 0)
            type = KV_META_EV_PUT;
        else if (json_is_string(t) && strcmp(json_string_value(t), "DELETE") == 0)
            type = KV_META_EV_DEL;
        else {
            snprintf(err, errlen, "event has an unknown \"type\"");
            return KV_EPROTO;
        }
    }
    char *k = NULL, *v = NULL;
    size_t klen = 0, vlen = 0;
    int64_t mrev;
    int rc = decode_kv(json_object_get(ev, "kv"), &k, &klen, type == KV_META_EV_PUT ? &v : NULL,
                       &vlen, &mrev, err, errlen);
    if (rc < 0)
        return rc;
    *skip = !valid_key(k, klen);
    if (*skip) {
        kv_free(k);
        kv_free(v);
        return KV_OK;
    }
    out->type = type;
    out->key = k;
    out->val = v;
    out->len = vlen;
    out->mod_revision = mrev;
    return KV_OK;
}

int kv_etcd_decode_watch(const char *body, size_t len, struct kv_etcd_watch_msg *msg, char *err,
                         size_t errlen)
{
    json_t *root;
    int rc = parse_obj(body, len, &root, err, errlen);
    if (rc < 0)
        return rc;
    struct kv_etcd_watch_msg m;
    memset(&m, 0, sizeof(m));
    json_t *res = NULL;
    rc = stream_result(root, &res, err, errlen);
    if (rc == KV_OK)
        rc = check_header(res, &m.header_revision, err, errlen);
    if (rc == KV_OK)
        rc = get_bool(res, "created", &m.created, err, errlen);
    if (rc == KV_OK)
        rc = get_bool(res, "canceled", &m.canceled, err, errlen);
    if (rc == KV_OK)
        rc = get_i64(res, "compact_revision", &m.compact_revision, err, errlen);
    json_t *evs = rc == KV_OK ? json_object_get(res, "events") : NULL;
    if (evs && !json_is_array(evs)) {
        snprintf(err, errlen, "field \"events\" is not an array");
        rc = KV_EPROTO;
    }
    size_t total = evs ? json_array_size(evs) : 0;
    if (rc == KV_OK && total) {
        m.events = kv_calloc(total, sizeof(*m.events));
        if (!m.events)
            rc = KV_ENOMEM;
    }
    for (size_t i = 0; rc == KV_OK && i < total; i++) {
        bool skip = false;
        rc = decode_event(json_array_get(evs, i), &m.events[m.n_events], &skip, err, errlen);
        if (rc == KV_OK && !skip)
            m.n_events++;
    }
    json_decref(root);
    if (rc < 0) {
        kv_etcd_watch_msg_fini(&m);
        return rc;
    }
    *msg = m;
    return KV_OK;
}

/* ---------------------------------------------------------------- transport */

struct etcd_watch;

struct etcd {
    char *eps[ETCD_MAX_ENDPOINTS]; /* "http://host:port", immutable after open */
    size_t n_eps;
    atomic_size_t cur; /* endpoint that answered last */
    int timeout_ms;
    struct curl_slist *headers; /* immutable after open; shared read-only by all handles */

    pthread_mutex_t pool_lock; /* guards pool, n_pool; leaf */
    CURL *pool[ETCD_POOL_MAX];
    size_t n_pool;

    pthread_mutex_t watch_lock; /* guards watches; leaf */
    struct kv_idtab watches;
};

struct etcd_watch {
    struct etcd *e;
    kv_meta_watch_fn fn;
    void *ud;
    char *key_b64; /* request fields */
    char *end_b64;
    CURLM *multi;     /* owned by the thread; curl_multi_wakeup() is thread-safe */
    atomic_bool stop; /* set by unwatch/close */
    pthread_t thread;

    pthread_mutex_t lock; /* guards state; leaf */
    pthread_cond_t cond;
    int state; /* 0 PENDING, 1 LIVE */

    /* watch thread only */
    int64_t next_rev; /* resume point; 0 = "now" */
    struct kv_buf line;
    bool broken; /* the current stream must be dropped */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static struct etcd *impl(struct kv_meta *m)
{
    return m->impl;
}

static CURL *pool_get(struct etcd *e)
{
    CURL *h = NULL;
    pthread_mutex_lock(&e->pool_lock);
    if (e->n_pool)
        h = e->pool[--e->n_pool];
    pthread_mutex_unlock(&e->pool_lock);
    return h ? h : curl_easy_init();
}

static void pool_put(struct etcd *e, CURL *h)
{
    pthread_mutex_lock(&e->pool_lock);
    if (e->n_pool < ETCD_POOL_MAX) {
        e->pool[e->n_pool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&e->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

struct body_sink {
    struct kv_buf *b;
    bool too_big;
    bool oom;
};

static size_t body_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct body_sink *s = ud;
    size_t n = size * nmemb;
    if (s->b->len + n > ETCD_MAX_RESPONSE) {
        s->too_big = true;
        return 0;
    }
    if (kv_buf_append(s->b, p, n) < 0) {
        s->oom = true;
        return 0;
    }
    return n;
}

/* POSTs the JSON req to path, failing over between endpoints. On KV_OK *status holds the
 * HTTP status and body the reply. KV_EMETA_UNAVAIL when no endpoint answered in time. */
static int etcd_post(struct etcd *e, const char *path, json_t *req, struct kv_buf *body,
                     long *status)
{
    char *reqs = kv_json_dump(req);
    if (!reqs)
        return KV_ENOMEM;
    CURL *h = pool_get(e);
    if (!h) {
        kv_free(reqs);
        return KV_ENOMEM;
    }
    int rc = KV_EMETA_UNAVAIL;
    int64_t deadline = kv_now_ms() + e->timeout_ms;
    size_t start = atomic_load_explicit(&e->cur, memory_order_relaxed);
    long connect_ms = KV_MAX(e->timeout_ms / (long)e->n_eps, 200L);
    char lasterr[CURL_ERROR_SIZE + 400] = "";
    for (size_t i = 0; i < e->n_eps; i++) {
        size_t idx = (start + i) % e->n_eps;
        int64_t left = deadline - kv_now_ms();
        if (left <= 0)
            break;
        char url[512];
        snprintf(url, sizeof(url), "%s%s", e->eps[idx], path);
        struct body_sink sink = {body, false, false};
        char ebuf[CURL_ERROR_SIZE] = "";
        kv_buf_reset(body);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, reqs);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(reqs));
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)left);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, KV_MIN((long)left, connect_ms));
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
        curl_easy_setopt(h, CURLOPT_PROXY, "");
        CURLcode cc = curl_easy_perform(h);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
        if (cc == CURLE_OK) {
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
            if (*status == 503) {
                snprintf(lasterr, sizeof(lasterr), "%s: HTTP 503", e->eps[idx]);
                continue;
            }
            atomic_store_explicit(&e->cur, idx, memory_order_relaxed);
            rc = KV_OK;
            break;
        }
        if (sink.too_big || sink.oom) {
            if (sink.too_big)
                KV_LOGE("etcd %s%s: reply larger than %u bytes", e->eps[idx], path,
                        ETCD_MAX_RESPONSE);
            rc = sink.too_big ? KV_E2BIG : KV_ENOMEM;
            break;
        }
        snprintf(lasterr, sizeof(lasterr), "%s: %s", e->eps[idx],
                 ebuf[0] ? ebuf : curl_easy_strerror(cc));
        KV_LOGD("etcd %s%s failed: %s", e->eps[idx], path, lasterr);
    }
    if (rc == KV_EMETA_UNAVAIL)
        KV_LOGW_RL(2000, "etcd unavailable (%s %s; tried %zu endpoint(s))", path,
                   lasterr[0] ? lasterr : "deadline passed", e->n_eps);
    pool_put(e, h);
    kv_free(reqs);
    return rc;
}

/* Posts and, for a non-200 status, maps the error body. *body holds a 200 reply on KV_OK. */
static int etcd_call(struct etcd *e, const char *path, json_t *req, struct kv_buf *body)
{
    long status = 0;
    int rc = etcd_post(e, path, req, body, &status);
    if (rc < 0)
        return rc;
    if (status == 200) /* decoders get a valid pointer even for an empty body */
        return body->data || kv_buf_reserve(body, 0) == KV_OK ? KV_OK : KV_ENOMEM;
    char err[256];
    rc = kv_etcd_decode_error(status, body->data ? body->data : "", body->len, err, sizeof(err));
    if (rc == KV_EMETA_LEASE || rc == KV_ENOENT)
        KV_LOGD("etcd %s: %s", path, err);
    else
        KV_LOGW("etcd %s: %s", path, err);
    return rc;
}

static int set_b64(json_t *o, const char *field, const void *p, size_t n)
{
    char *s;
    if (kv_etcd_b64_encode(p, n, &s) < 0)
        return KV_ENOMEM;
    int rc = json_object_set_new(o, field, json_string(s)) == 0 ? KV_OK : KV_ENOMEM;
    kv_free(s);
    return rc;
}

static int set_i64(json_t *o, const char *field, int64_t v)
{
    char s[32];
    snprintf(s, sizeof(s), "%lld", (long long)v);
    return json_object_set_new(o, field, json_string(s)) == 0 ? KV_OK : KV_ENOMEM;
}

static void log_proto(const char *path, const char *err)
{
    KV_LOGE("etcd %s: malformed reply: %s", path, err);
}

/* ---------------------------------------------------------------- ops */

static int etcd_range(struct etcd *e, const char *key, size_t klen, const char *end, size_t elen,
                      struct kv_meta_kv **kvs, size_t *n)
{
    json_t *req = json_object();
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = req ? set_b64(req, "key", key, klen) : KV_ENOMEM;
    if (rc == KV_OK && end)
        rc = set_b64(req, "range_end", end, elen);
    if (rc == KV_OK)
        rc = etcd_call(e, "/v3/kv/range", req, &body);
    if (rc == KV_OK) {
        char err[256];
        rc = kv_etcd_decode_range(body.data, body.len, kvs, n, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/kv/range", err);
    }
    json_decref(req);
    kv_buf_fini(&body);
    return rc;
}

static int etcd_get(struct kv_meta *m, const char *key, char **val, size_t *len)
{
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    int rc = etcd_range(impl(m), key, strlen(key), NULL, 0, &kvs, &n);
    if (rc < 0)
        return rc;
    if (n == 0)
        return KV_ENOENT;
    *val = kvs[0].val;
    *len = kvs[0].len;
    kvs[0].val = NULL;
    kv_meta_kvs_free(kvs, n);
    return KV_OK;
}

static int etcd_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    char *end;
    size_t elen;
    if (kv_etcd_prefix_end(prefix, &end, &elen) < 0)
        return KV_ENOMEM;
    /* prefix "" starts at key "\0": etcd rejects an empty key */
    int rc = *prefix ? etcd_range(impl(m), prefix, strlen(prefix), end, elen, kvs, n)
                     : etcd_range(impl(m), "", 1, end, elen, kvs, n);
    kv_free(end);
    if (rc == KV_OK)
        kv_meta_kvs_sort(*kvs, *n);
    return rc;
}

static int put_fields(json_t *o, const char *key, const void *val, size_t len, int64_t lease)
{
    int rc = set_b64(o, "key", key, strlen(key));
    if (rc == KV_OK)
        rc = set_b64(o, "value", val, len);
    if (rc == KV_OK && lease)
        rc = set_i64(o, "lease", lease);
    return rc;
}

static int etcd_put(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease)
{
    json_t *req = json_object();
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = req ? put_fields(req, key, val, len, lease) : KV_ENOMEM;
    if (rc == KV_OK)
        rc = etcd_call(impl(m), "/v3/kv/put", req, &body);
    if (rc == KV_OK) {
        char err[256];
        int64_t rev;
        rc = kv_etcd_decode_header(body.data, body.len, &rev, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/kv/put", err);
    }
    json_decref(req);
    kv_buf_fini(&body);
    return rc;
}

static int etcd_del(struct kv_meta *m, const char *key)
{
    json_t *req = json_object();
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = req ? set_b64(req, "key", key, strlen(key)) : KV_ENOMEM;
    if (rc == KV_OK)
        rc = etcd_call(impl(m), "/v3/kv/deleterange", req, &body);
    if (rc == KV_OK) {
        char err[256];
        int64_t deleted = 0;
        rc = kv_etcd_decode_deleted(body.data, body.len, &deleted, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/kv/deleterange", err);
        if (rc == KV_OK && deleted == 0)
            rc = KV_ENOENT;
    }
    json_decref(req);
    kv_buf_fini(&body);
    return rc;
}

static int etcd_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                    const void *val, size_t len, int64_t lease)
{
    char *kb = NULL, *eb = NULL;
    json_t *req = NULL;
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = kv_etcd_b64_encode(key, strlen(key), &kb);
    if (rc == KV_OK && expect)
        rc = kv_etcd_b64_encode(expect, expect_len, &eb);
    if (rc < 0)
        goto out;
    json_t *put = json_object();
    if (put && put_fields(put, key, val, len, lease) < 0) {
        json_decref(put);
        put = NULL;
    }
    json_t *cmp = expect ? json_pack("{s:s, s:s, s:s, s:s}", "key", kb, "target", "VALUE", "result",
                                     "EQUAL", "value", eb)
                         : json_pack("{s:s, s:s, s:s, s:s}", "key", kb, "target", "CREATE",
                                     "result", "EQUAL", "create_revision", "0");
    /* "o" steals cmp and put, also when json_pack fails (a NULL one makes it fail) */
    req = json_pack("{s:[o], s:[{s:o}]}", "compare", cmp, "success", "request_put", put);
    rc = req ? etcd_call(impl(m), "/v3/kv/txn", req, &body) : KV_ENOMEM;
    if (rc == KV_OK) {
        char err[256];
        bool ok = false;
        rc = kv_etcd_decode_txn(body.data, body.len, &ok, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/kv/txn", err);
        if (rc == KV_OK && !ok)
            rc = KV_EMETA_CAS;
    }
out:
    json_decref(req);
    kv_free(kb);
    kv_free(eb);
    kv_buf_fini(&body);
    return rc;
}

static int etcd_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease)
{
    json_t *req = json_pack("{sI}", "TTL", (json_int_t)ttl_s);
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = req ? etcd_call(impl(m), "/v3/lease/grant", req, &body) : KV_ENOMEM;
    if (rc == KV_OK) {
        char err[256];
        int64_t id, ttl;
        rc = kv_etcd_decode_grant(body.data, body.len, &id, &ttl, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/lease/grant", err);
        if (rc == KV_OK)
            *lease = id;
    }
    json_decref(req);
    kv_buf_fini(&body);
    return rc;
}

static int lease_req(struct kv_meta *m, const char *path, int64_t lease, struct kv_buf *body)
{
    json_t *req = json_object();
    int rc = req ? set_i64(req, "ID", lease) : KV_ENOMEM;
    if (rc == KV_OK)
        rc = etcd_call(impl(m), path, req, body);
    json_decref(req);
    return rc;
}

static int etcd_lease_keepalive(struct kv_meta *m, int64_t lease)
{
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = lease_req(m, "/v3/lease/keepalive", lease, &body);
    if (rc == KV_OK) {
        char err[256];
        int64_t ttl = 0;
        rc = kv_etcd_decode_keepalive(body.data, body.len, &ttl, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/lease/keepalive", err);
        else if (rc == KV_EIO)
            KV_LOGW("etcd /v3/lease/keepalive: %s", err);
        if (rc == KV_OK && ttl <= 0)
            rc = KV_EMETA_LEASE;
    }
    kv_buf_fini(&body);
    return rc == KV_ENOENT ? KV_EMETA_LEASE : rc;
}

static int etcd_lease_revoke(struct kv_meta *m, int64_t lease)
{
    struct kv_buf body;
    kv_buf_init(&body);
    int rc = lease_req(m, "/v3/lease/revoke", lease, &body);
    if (rc == KV_OK) {
        char err[256];
        int64_t rev;
        rc = kv_etcd_decode_header(body.data, body.len, &rev, err, sizeof(err));
        if (rc == KV_EPROTO)
            log_proto("/v3/lease/revoke", err);
    }
    kv_buf_fini(&body);
    return rc == KV_ENOENT ? KV_EMETA_LEASE : rc;
}

/* ---------------------------------------------------------------- watch */

static void watch_set_live(struct etcd_watch *w)
{
    pthread_mutex_lock(&w->lock);
    w->state = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Handles one stream line; false drops the stream (reconnect). */
static bool watch_line(struct etcd_watch *w, const char *p, size_t n)
{
    struct kv_etcd_watch_msg msg;
    char err[256];
    int rc = kv_etcd_decode_watch(p, n, &msg, err, sizeof(err));
    if (rc < 0) {
        if (rc == KV_EPROTO)
            log_proto("/v3/watch", err);
        else
            KV_LOGW("etcd /v3/watch: %s", err);
        return false;
    }
    bool keep = true;
    if (msg.created) {
        if (w->next_rev == 0)
            w->next_rev = msg.header_revision + 1;
        watch_set_live(w);
    }
    for (size_t i = 0; i < msg.n_events; i++) {
        if (atomic_load_explicit(&w->stop, memory_order_acquire)) {
            keep = false;
            break;
        }
        struct kv_etcd_event *ev = &msg.events[i];
        struct kv_meta_event out = {ev->type, ev->key, ev->val, ev->len};
        w->fn(w->ud, &out);
        if (ev->mod_revision >= w->next_rev)
            w->next_rev = ev->mod_revision + 1;
    }
    if (msg.canceled) {
        if (msg.compact_revision > 0) {
            KV_LOGW("etcd watch: revisions before %lld were compacted; events between %lld and "
                    "%lld are lost",
                    (long long)msg.compact_revision, (long long)w->next_rev,
                    (long long)msg.compact_revision);
            w->next_rev = msg.compact_revision;
        } else {
            KV_LOGW("etcd watch canceled by the server; re-creating it");
        }
        keep = false;
    }
    kv_etcd_watch_msg_fini(&msg);
    return keep;
}

static size_t watch_write(char *p, size_t size, size_t nmemb, void *ud)
{
    struct etcd_watch *w = ud;
    size_t n = size * nmemb;
    if (atomic_load_explicit(&w->stop, memory_order_acquire))
        return 0;
    if (w->line.len + n > ETCD_MAX_LINE) {
        KV_LOGE("etcd /v3/watch: a message exceeds %u bytes; dropping the stream", ETCD_MAX_LINE);
        w->broken = true;
        return 0;
    }
    if (kv_buf_append(&w->line, p, n) < 0)
        return 0;
    size_t off = 0;
    for (;;) {
        char *nl = memchr(w->line.data + off, '\n', w->line.len - off);
        if (!nl)
            break;
        size_t ln = (size_t)(nl - (w->line.data + off));
        bool keep = true;
        if (ln > 0)
            keep = watch_line(w, w->line.data + off, ln);
        off += ln + 1;
        if (!keep) {
            w->broken = true;
            return 0;
        }
    }
    if (off) {
        memmove(w->line.data, w->line.data + off, w->line.len - off);
        w->line.len -= off;
        w->line.data[w->line.len] = '\0';
    }
    return n;
}

/* Runs one stream on endpoint ep until it ends, breaks or stop is set. */
static void watch_stream(struct etcd_watch *w, size_t ep)
{
    struct etcd *e = w->e;
    json_t *cr = json_pack("{s:s, s:s}", "key", w->key_b64, "range_end", w->end_b64);
    if (cr && w->next_rev > 0 && set_i64(cr, "start_revision", w->next_rev) < 0) {
        json_decref(cr);
        cr = NULL;
    }
    json_t *req = json_pack("{s:o}", "create_request", cr); /* steals cr */
    char *reqs = NULL;
    CURL *h = curl_easy_init();
    if (!req || !h)
        goto out;
    reqs = kv_json_dump(req);
    if (!reqs)
        goto out;
    char url[512];
    snprintf(url, sizeof(url), "%s/v3/watch", e->eps[ep]);
    kv_buf_reset(&w->line);
    w->broken = false;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, reqs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(reqs));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_multi_add_handle(w->multi, h);
    int running = 1;
    while (running && !atomic_load_explicit(&w->stop, memory_order_acquire)) {
        if (curl_multi_perform(w->multi, &running) != CURLM_OK)
            break;
        if (!running)
            break;
        curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
    }
    int left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK && !w->broken &&
            !atomic_load_explicit(&w->stop, memory_order_acquire))
            KV_LOGD("etcd watch stream on %s ended: %s", e->eps[ep],
                    curl_easy_strerror(msg->data.result));
    }
    curl_multi_remove_handle(w->multi, h);
out:
    if (h)
        curl_easy_cleanup(h);
    kv_free(reqs);
    json_decref(req);
}

static void *watch_main(void *arg)
{
    struct etcd_watch *w = arg;
    struct etcd *e = w->e;
    kv_log_set_thread_name("meta-etcd-watch");
    size_t ep = atomic_load_explicit(&e->cur, memory_order_relaxed);
    int backoff = 100;
    size_t fails = 0;
    while (!atomic_load_explicit(&w->stop, memory_order_acquire)) {
        int64_t t0 = kv_now_ms();
        watch_stream(w, ep);
        if (atomic_load_explicit(&w->stop, memory_order_acquire))
            break;
        if (kv_now_ms() - t0 > 2000) {
            fails = 0; /* the stream lived: start over with a short backoff */
            backoff = 100;
        }
        KV_LOGW_RL(5000, "etcd watch stream on %s broke; resuming at revision %lld", e->eps[ep],
                   (long long)w->next_rev);
        ep = (ep + 1) % e->n_eps;
        if (++fails >= e->n_eps) {
            /* every endpoint failed once: wait (interruptible by unwatch) */
            curl_multi_poll(w->multi, NULL, 0, backoff, NULL);
            backoff = KV_MIN(backoff * 2, 1000);
            fails = 0;
        }
    }
    return NULL;
}

static void watch_free(struct etcd_watch *w)
{
    if (w->multi)
        curl_multi_cleanup(w->multi);
    kv_free(w->key_b64);
    kv_free(w->end_b64);
    kv_buf_fini(&w->line);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    kv_free(w);
}

static void watch_stop(void *arg)
{
    struct etcd_watch *w = arg;
    atomic_store_explicit(&w->stop, true, memory_order_release);
    curl_multi_wakeup(w->multi);
    pthread_join(w->thread, NULL);
    watch_free(w);
}

static int etcd_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                      uint64_t *id)
{
    struct etcd *e = impl(m);
    struct etcd_watch *w = kv_calloc(1, sizeof(*w));
    if (!w)
        return KV_ENOMEM;
    w->e = e;
    w->fn = fn;
    w->ud = ud;
    kv_buf_init(&w->line);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    char *end = NULL;
    size_t elen = 0;
    int rc = KV_ENOMEM;
    if (kv_etcd_prefix_end(prefix, &end, &elen) < 0)
        goto out_free;
    rc = *prefix ? kv_etcd_b64_encode(prefix, strlen(prefix), &w->key_b64)
                 : kv_etcd_b64_encode("", 1, &w->key_b64);
    if (rc == KV_OK)
        rc = kv_etcd_b64_encode(end, elen, &w->end_b64);
    kv_free(end);
    if (rc < 0)
        goto out_free;
    w->multi = curl_multi_init();
    if (!w->multi) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    /* wait for etcd's "created" */
    int64_t deadline = kv_now_ms() + e->timeout_ms;
    pthread_mutex_lock(&w->lock);
    while (w->state == 0 && kv_now_ms() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
    }
    bool live = w->state == 1;
    pthread_mutex_unlock(&w->lock);
    if (!live) {
        KV_LOGW("etcd watch on '%s' not confirmed within %d ms", prefix, e->timeout_ms);
        watch_stop(w);
        return KV_EMETA_UNAVAIL;
    }
    pthread_mutex_lock(&e->watch_lock);
    rc = kv_idtab_add(&e->watches, w, id);
    pthread_mutex_unlock(&e->watch_lock);
    if (rc < 0) {
        watch_stop(w);
        return rc;
    }
    return KV_OK;
out_free:
    watch_free(w);
    return rc;
}

static int etcd_unwatch(struct kv_meta *m, uint64_t id)
{
    struct etcd *e = impl(m);
    return kv_meta_watch_remove(&e->watches, &e->watch_lock, id, watch_stop);
}

static void etcd_free(struct etcd *e)
{
    for (size_t i = 0; i < e->n_pool; i++)
        curl_easy_cleanup(e->pool[i]);
    for (size_t i = 0; i < e->n_eps; i++)
        kv_free(e->eps[i]);
    if (e->headers)
        curl_slist_free_all(e->headers);
    kv_idtab_fini(&e->watches);
    pthread_mutex_destroy(&e->pool_lock);
    pthread_mutex_destroy(&e->watch_lock);
    kv_free(e);
}

static void etcd_close(struct kv_meta *m)
{
    struct etcd *e = impl(m);
    kv_meta_watch_remove_all(&e->watches, &e->watch_lock, watch_stop);
    etcd_free(e);
    m->impl = NULL;
}

static const struct kv_meta_ops etcd_ops = {
    .name = "etcd",
    .get = etcd_get,
    .put = etcd_put,
    .del = etcd_del,
    .list = etcd_list,
    .cas = etcd_cas,
    .lease_grant = etcd_lease_grant,
    .lease_keepalive = etcd_lease_keepalive,
    .lease_revoke = etcd_lease_revoke,
    .watch = etcd_watch,
    .unwatch = etcd_unwatch,
    .close = etcd_close,
};

/* Splits "h1:p1,h2:p2" into base URLs. */
static int parse_endpoints(struct etcd *e, const char *rest)
{
    const char *p = rest;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[300], host[256];
        uint16_t port;
        if (n == 0 || n >= sizeof(item) || e->n_eps == ETCD_MAX_ENDPOINTS)
            goto bad;
        memcpy(item, p, n);
        item[n] = '\0';
        if (kv_parse_hostport(item, host, sizeof(host), &port) < 0 || port == 0 || item[0] == ':')
            goto bad;
        char url[300];
        if (strchr(host, ':'))
            snprintf(url, sizeof(url), "http://[%s]:%u", host, (unsigned)port);
        else
            snprintf(url, sizeof(url), "http://%s:%u", host, (unsigned)port);
        e->eps[e->n_eps] = kv_strdup(url);
        if (!e->eps[e->n_eps])
            return KV_ENOMEM;
        e->n_eps++;
        p += n;
        if (*p == ',')
            p++;
        if (comma && !*p)
            goto bad;
    }
    if (e->n_eps == 0)
        goto bad;
    return KV_OK;
bad:
    KV_LOGE("bad etcd URL 'etcd://%s' (want etcd://HOST:PORT[,HOST:PORT...], at most %d)", rest,
            ETCD_MAX_ENDPOINTS);
    return KV_EMETA_URL;
}

int kv_meta_etcd_open(struct kv_meta *m, const char *rest)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        KV_LOGE("curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
        return KV_EIO;
    }
    struct etcd *e = kv_calloc(1, sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    pthread_mutex_init(&e->pool_lock, NULL);
    pthread_mutex_init(&e->watch_lock, NULL);
    kv_idtab_init(&e->watches);
    e->timeout_ms = m->timeout_ms;
    int rc = parse_endpoints(e, rest);
    if (rc < 0)
        goto out_free;
    struct curl_slist *h1 = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *h2 = h1 ? curl_slist_append(h1, "Expect:") : NULL;
    if (!h2) {
        if (h1)
            curl_slist_free_all(h1);
        rc = KV_ENOMEM;
        goto out_free;
    }
    e->headers = h2;
    /* reachability probe: a range over one key that need not exist */
    m->impl = e;
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    static const char probe[] = "\0kvstash-probe";
    rc = etcd_range(e, probe, sizeof(probe) - 1, NULL, 0, &kvs, &n);
    kv_meta_kvs_free(kvs, n);
    if (rc < 0) {
        KV_LOGE("etcd at '%s' does not answer: %s", rest, kv_strerror(rc));
        rc = rc == KV_ENOMEM ? rc : KV_EMETA_UNAVAIL;
        m->impl = NULL;
        goto out_free;
    }
    m->ops = &etcd_ops;
    return KV_OK;
out_free:
    etcd_free(e);
    return rc;
}
