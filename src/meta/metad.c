/* SPDX-License-Identifier: Apache-2.0 */
/*
 * metad.c - the built-in HTTP metadata server: an embedded store served over HTTP by libevent's
 * evhttp. Wire contract (endpoints, status codes, JSON shapes) in docs/design/meta.md; the
 * Mooncake-compatible part is GET/PUT/DELETE /metadata?key=K.
 *
 * Design:
 *  - The store is an embedded store (meta_embedded.c): shared by name with the process
 *    (opts->embedded_name, used by `kvstash serve`) or private. The server never keeps its own
 *    copy of the data.
 *  - Mooncake compatibility: a DELETE of a missing key answers 200, as Mooncake's server does
 *    (its client treats any other status as a failure); whether a key was removed travels in
 *    the X-Kvstash-Deleted: 0|1 header, from which kvstash's http:// client reports KV_ENOENT.
 *    A PUT stores values up to opts->max_value bytes (default 64 MiB; Mooncake's server has no
 *    limit and a segment descriptor with many buffers is large), not the API's 1 MiB.
 *  - Watch: the server watches its whole store with a revision-stamped embedded watch and keeps
 *    a bounded ring of recent events (RING_MAX_EVENTS events, RING_MAX_BYTES bytes of keys and
 *    values). GET /watch?prefix=P&after=REV answers at once with the ring's events newer than
 *    REV under P, or holds the request (long poll) until one arrives or timeout_ms passes.
 *    A REV older than the ring's floor (events were dropped) or newer than the store (the server
 *    restarted) gets 410: the client must list again and restart from a fresh revision.
 *  - Persistence (--data-file): loaded before serving. After changes, the saver thread takes a
 *    snapshot of the keys not bound to a lease (one memcpy pass into one arena under the
 *    store's lock: the only moment writers and keepalives wait), encodes it and writes FILE.tmp,
 * fsyncs it, renames it over FILE and fsyncs the directory. The event loop never waits for a save
 * (lease keepalives keep flowing while 50k keys are written). Saves coalesce: one in flight, and
 * the dirty flag is the one pending save; at most one starts every SAVE_MS; one more runs at stop
 * if changes are unsaved.
 *  - Debug log: every reply is logged at debug level (method, URI, status, body bytes in and
 *    out, microseconds since the request arrived); nothing is measured above debug.
 *
 * Invariants:
 *  1. ring holds events with consecutive store revisions (ring_floor, ring_last]; every event
 *     with a revision > ring_floor reaches the ring (or is in the embedded worker's queue).
 *  2. Every held poll is in d->polls with its own timer and is answered exactly once: by a
 *     wake-up that finds events, by its timer, or with 503 at stop (before evhttp_free).
 *  3. Every change after start sets dirty, and a save that starts after dirty was set sees the
 *     change (the flag is set after the store applied it, and cleared before the snapshot).
 *
 * Save states (saver thread):
 *
 *   IDLE --dirty (on_store_event)--> WAIT (until SAVE_MS after the last save, or stop)
 *   WAIT --clear dirty--> SAVING (save_data_file, no lock held)
 *   SAVING --ok--> IDLE;  SAVING --error--> dirty again, WAIT (retried every SAVE_MS)
 *   IDLE --save_stop--> exit;  after stop, one last SAVING, then exit whatever its result
 *
 * Thread model: one event-loop thread ("metad") runs every HTTP handler, timer and poll; the
 * embedded store's worker thread calls on_store_event(), which appends to the ring under d->lock,
 * activates wake_ev (libevent is made thread-safe with evthread_use_pthreads()) and sets dirty
 * under d->save_lock. The saver thread ("metad-save", only with a data file) writes the file.
 * The thread calling kv_metad_stop() activates stop_ev, joins the loop thread, unwatches, then
 * stops and joins the saver.
 *
 * Locks (both leaves; neither is taken under the other, nothing but event_active and a condvar
 * signal is called under them):
 *  - d->lock guards ring*.
 *  - d->save_lock guards dirty and save_stop (save_cond signals them).
 * Everything else in struct kv_metad belongs to the loop thread after start (max_value and
 * data_file are read-only).
 */
#define KV_LOG_COMPONENT "metad"
#include "meta/metad.h"
#include "common/admin_http.h"

#include <errno.h>
#include <sys/queue.h> /* before keyvalq_struct.h: TAILQ_* */

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/auth.h"
#include "common/json.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"
#include "meta/meta_embedded_int.h"
#include "meta/metad_int.h"

#define RING_MAX_EVENTS 4096
#define RING_MAX_BYTES (32u << 20)
#define SAVE_MS 100
#define MAX_POLLS 1024
#define CAS_MAX_BODY (4u << 20) /* a CAS body holds two base64 values of up to 1 MiB */
/* evhttp's body limit is max(max_value, CAS_MAX_BODY) + BODY_SLACK, so a PUT just over max_value
 * gets our 413 naming the limit; far larger bodies get evhttp's own 413 without reading them */
#define BODY_SLACK (64u << 10)
#define DATA_FORMAT "kvstash-metad"

struct ring_ev {
    uint64_t rev;
    enum kv_meta_event_type type;
    char *key;
    char *val; /* NULL for DEL */
    size_t len;
};

struct poll_req {
    struct poll_req *next;
    struct kv_metad *d;
    struct evhttp_request *req;
    char *prefix;
    uint64_t after;
    struct event *timer;
    int64_t start_us; /* the request's arrival, for the debug log */
};

struct kv_metad {
    struct kv_meta *m; /* the embedded store served */
    char *data_file;
    uint16_t port;
    uint64_t wid; /* the ring's watch on m */

    struct event_base *base;
    struct kv_admin_http *admin; /* the shared admin server on base (common/admin_http.h) */
    struct event *stop_ev;       /* activated by kv_metad_stop */
    struct event *wake_ev;       /* activated when the ring grows */
    pthread_t thread;
    bool thread_started;
    size_t max_value;       /* largest value a PUT may store */
    struct poll_req *polls; /* loop thread only */
    size_t npolls;

    pthread_mutex_t lock; /* guards ring*; leaf */
    struct ring_ev *ring; /* circular, RING_MAX_EVENTS slots */
    size_t ring_head, ring_n, ring_bytes;
    uint64_t ring_floor, ring_last;

    pthread_t saver; /* with a data file only */
    bool saver_started;
    pthread_mutex_t save_lock; /* guards dirty, save_stop; leaf */
    pthread_cond_t save_cond;  /* CLOCK_MONOTONIC; signalled when either changes */
    bool dirty;                /* a change is not in the data file yet (invariant 3) */
    bool save_stop;
};

/* Arrival time (kv_now_us) of the request the loop thread is answering, for the debug log; set
 * only when debug logging is on. One loop thread per server, hence thread-local. */
static _Thread_local int64_t cur_req_start_us;

/* ---- pure codecs (metad_int.h) ---- */

char *kv_metad_b64_encode(const void *p, size_t len)
{
    size_t n = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = kv_malloc(n);
    if (!out)
        return NULL;
    sodium_bin2base64(out, n, p, len, sodium_base64_VARIANT_ORIGINAL);
    return out;
}

int kv_metad_b64_decode(const char *b64, size_t b64len, size_t max, char **out, size_t *outlen)
{
    size_t cap = b64len / 4 * 3 + 3;
    if (b64len / 4 * 3 > max + 2) /* even with 2 padding bytes it decodes to more than max */
        return KV_E2BIG;
    char *buf = kv_malloc(cap + 1);
    if (!buf)
        return KV_ENOMEM;
    size_t n = 0;
    const char *end = NULL;
    if (sodium_base642bin((unsigned char *)buf, cap, b64, b64len, NULL, &n, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != b64 + b64len) {
        kv_free(buf);
        return KV_EINVAL;
    }
    if (n > max) {
        kv_free(buf);
        return KV_E2BIG;
    }
    buf[n] = '\0';
    *out = buf;
    *outlen = n;
    return KV_OK;
}

static int check_key(const char *key, size_t len, char *err, size_t errlen)
{
    if (len == 0) {
        kv_meta_set_err(err, errlen, "empty key");
        return KV_EINVAL;
    }
    if (len >= KV_META_MAX_KEY) {
        kv_meta_set_err(err, errlen, "key longer than %d bytes", KV_META_MAX_KEY - 1);
        return KV_EINVAL;
    }
    if (strlen(key) != len) {
        kv_meta_set_err(err, errlen, "key contains a NUL byte");
        return KV_EINVAL;
    }
    return KV_OK;
}

void kv_metad_query_fini(struct kv_metad_query *q)
{
    if (!q)
        return;
    kv_free(q->key);
    kv_free(q->prefix);
    memset(q, 0, sizeof(*q));
}

int kv_metad_decode_query(const char *query, struct kv_metad_query *q, char *err, size_t errlen)
{
    struct kv_metad_query r = {.timeout_ms = KV_METAD_DEFAULT_WATCH_MS};
    if (!query || !*query) {
        *q = r;
        return KV_OK;
    }
    if (strcasestr(query, "%00")) {
        kv_meta_set_err(err, errlen, "query contains a NUL byte (%%00)");
        return KV_EINVAL;
    }
    struct evkeyvalq params;
    TAILQ_INIT(&params);
    if (evhttp_parse_query_str(query, &params) != 0) {
        kv_meta_set_err(err, errlen, "malformed query string");
        evhttp_clear_headers(&params);
        return KV_EINVAL;
    }
    int rc = KV_OK;
    bool seen_lease = false, seen_timeout = false;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, &params, next)
    {
        const char *name = kv->key, *v = kv->value;
        if (strcmp(name, "key") == 0 || strcmp(name, "prefix") == 0) {
            char **dst = name[0] == 'k' ? &r.key : &r.prefix;
            if (*dst) {
                kv_meta_set_err(err, errlen, "parameter '%s' given twice", name);
                rc = KV_EINVAL;
                goto out;
            }
            size_t vl = strlen(v);
            if (name[0] == 'k') {
                rc = check_key(v, vl, err, errlen);
                if (rc < 0)
                    goto out;
            } else if (vl >= KV_META_MAX_KEY) {
                kv_meta_set_err(err, errlen, "prefix longer than %d bytes", KV_META_MAX_KEY - 1);
                rc = KV_EINVAL;
                goto out;
            }
            *dst = kv_strdup(v);
            if (!*dst) {
                rc = KV_ENOMEM;
                goto out;
            }
        } else if (strcmp(name, "lease") == 0) {
            if (seen_lease || kv_parse_i64(v, &r.lease) < 0 || r.lease < 0) {
                kv_meta_set_err(err, errlen,
                                seen_lease ? "parameter 'lease' given twice"
                                           : "bad lease '%s' (want a lease id >= 0)",
                                v);
                rc = KV_EINVAL;
                goto out;
            }
            seen_lease = true;
        } else if (strcmp(name, "after") == 0) {
            if (r.has_after || kv_parse_u64(v, &r.after) < 0) {
                kv_meta_set_err(err, errlen,
                                r.has_after ? "parameter 'after' given twice"
                                            : "bad after '%s' (want a revision >= 0)",
                                v);
                rc = KV_EINVAL;
                goto out;
            }
            r.has_after = true;
        } else if (strcmp(name, "timeout_ms") == 0) {
            int64_t t;
            if (seen_timeout || kv_parse_i64(v, &t) < 0 || t < 0) {
                kv_meta_set_err(err, errlen,
                                seen_timeout ? "parameter 'timeout_ms' given twice"
                                             : "bad timeout_ms '%s' (want >= 0)",
                                v);
                rc = KV_EINVAL;
                goto out;
            }
            r.timeout_ms = (int)KV_MIN(t, KV_METAD_MAX_WATCH_MS);
            seen_timeout = true;
        }
    }
out:
    evhttp_clear_headers(&params);
    if (rc < 0) {
        kv_metad_query_fini(&r);
        return rc;
    }
    *q = r;
    return KV_OK;
}

/* Reads "key" (a UTF-8 string) or "key_b64" from o into an owned string. */
int kv_metad_json_key(json_t *o, char **out, char *err, size_t errlen)
{
    json_t *k = json_object_get(o, "key");
    json_t *kb = json_object_get(o, "key_b64");
    char *key = NULL;
    size_t len = 0;
    if (k && json_is_string(k)) {
        len = json_string_length(k);
        key = kv_memdup0(json_string_value(k), len);
        if (!key)
            return KV_ENOMEM;
    } else if (kb && json_is_string(kb)) {
        int rc = kv_metad_b64_decode(json_string_value(kb), json_string_length(kb), KV_META_MAX_KEY,
                                     &key, &len);
        if (rc < 0) {
            kv_meta_set_err(err, errlen, "field 'key_b64' is not valid base64");
            return rc == KV_ENOMEM ? rc : KV_EINVAL;
        }
    } else {
        kv_meta_set_err(err, errlen, "field 'key' missing or not a string");
        return KV_EINVAL;
    }
    int rc = check_key(key, len, err, errlen);
    if (rc < 0) {
        kv_free(key);
        return rc;
    }
    *out = key;
    return KV_OK;
}

/* Reads a base64 field into an owned buffer. */
int kv_metad_json_b64(json_t *o, const char *field, size_t max, char **out, size_t *len, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(o, field);
    if (!v || !json_is_string(v)) {
        kv_meta_set_err(err, errlen, "field '%s' missing or not a string", field);
        return KV_EINVAL;
    }
    int rc = kv_metad_b64_decode(json_string_value(v), json_string_length(v), max, out, len);
    if (rc == KV_EINVAL)
        kv_meta_set_err(err, errlen, "field '%s' is not valid base64", field);
    else if (rc == KV_E2BIG)
        kv_meta_set_err(err, errlen, "field '%s' is larger than %zu bytes", field, max);
    return rc;
}

/* One {"key"|"key_b64", "value"} object; out-params written only on success. */
int kv_metad_json_kv(json_t *e, bool with_value, size_t max, char **key, char **val, size_t *len,
                     char *err, size_t errlen)
{
    if (!json_is_object(e)) {
        kv_meta_set_err(err, errlen, "not an object");
        return KV_EINVAL;
    }
    char *k = NULL, *v = NULL;
    size_t vlen = 0;
    int rc = kv_metad_json_key(e, &k, err, errlen);
    if (rc == KV_OK && with_value)
        rc = kv_metad_json_b64(e, "value", max, &v, &vlen, err, errlen);
    if (rc < 0) {
        kv_free(k);
        return rc;
    }
    *key = k;
    *val = v;
    *len = vlen;
    return KV_OK;
}

int kv_metad_json_kvs(json_t *arr, size_t max, struct kv_meta_kv **kvs, size_t *n, size_t *bad,
                      char *err, size_t errlen)
{
    size_t total = json_array_size(arr), cnt = 0;
    struct kv_meta_kv *out = total ? kv_calloc(total, sizeof(*out)) : NULL;
    *bad = 0;
    if (total && !out) {
        kv_meta_set_err(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    for (; cnt < total; cnt++) {
        struct kv_meta_kv *kv = &out[cnt];
        int rc = kv_metad_json_kv(json_array_get(arr, cnt), true, max, &kv->key, &kv->val, &kv->len,
                                  err, errlen);
        if (rc < 0) {
            *bad = cnt;
            kv_meta_kvs_free(out, cnt);
            return rc;
        }
    }
    *kvs = out;
    *n = cnt;
    return kv_meta_kvs_sort(out, cnt);
}

void kv_metad_cas_fini(struct kv_metad_cas *c)
{
    if (!c)
        return;
    kv_free(c->key);
    kv_free(c->expect);
    kv_free(c->val);
    memset(c, 0, sizeof(*c));
}

int kv_metad_decode_cas(const char *body, size_t len, struct kv_metad_cas *c, char *err,
                        size_t errlen)
{
    json_t *o = NULL;
    int rc = kv_json_parse(body, len, &o, err, errlen);
    if (rc < 0)
        return KV_EINVAL;
    struct kv_metad_cas r = {0};
    if (!json_is_object(o)) {
        kv_meta_set_err(err, errlen, "body is not a JSON object");
        rc = KV_EINVAL;
        goto out;
    }
    rc = kv_metad_json_key(o, &r.key, err, errlen);
    if (rc < 0)
        goto out;
    json_t *e = json_object_get(o, "expect");
    if (e && !json_is_null(e)) {
        rc = kv_metad_json_b64(o, "expect", KV_META_MAX_VALUE, &r.expect, &r.expect_len, err,
                               errlen);
        if (rc < 0)
            goto out;
    }
    rc = kv_metad_json_b64(o, "value", KV_META_MAX_VALUE, &r.val, &r.len, err, errlen);
    if (rc < 0)
        goto out;
    json_t *l = json_object_get(o, "lease");
    if (l && !json_is_null(l)) {
        if (!json_is_integer(l) || json_integer_value(l) < 0) {
            kv_meta_set_err(err, errlen, "field 'lease' is not an integer >= 0");
            rc = KV_EINVAL;
            goto out;
        }
        r.lease = json_integer_value(l);
    }
out:
    json_decref(o);
    if (rc < 0) {
        kv_metad_cas_fini(&r);
        return rc;
    }
    *c = r;
    return KV_OK;
}

int kv_metad_decode_lease(const char *body, size_t len, const char *field, int64_t *out, char *err,
                          size_t errlen)
{
    json_t *o = NULL;
    if (kv_json_parse(body, len, &o, err, errlen) < 0)
        return KV_EINVAL;
    int rc = KV_EINVAL;
    bool ttl = strcmp(field, "ttl") == 0;
    int64_t max = ttl ? 86400LL * 365 : INT64_MAX;
    json_t *v = json_is_object(o) ? json_object_get(o, field) : NULL;
    if (!json_is_object(o)) {
        kv_meta_set_err(err, errlen, "body is not a JSON object");
    } else if (!v || !json_is_integer(v)) {
        kv_meta_set_err(err, errlen, "field '%s' missing or not an integer", field);
    } else if (json_integer_value(v) < 1 || json_integer_value(v) > max) {
        kv_meta_set_err(err, errlen, "field '%s' out of range (%s)", field,
                        ttl ? "1..31536000 seconds" : "a lease id > 0");
    } else {
        *out = json_integer_value(v);
        rc = KV_OK;
    }
    json_decref(o);
    return rc;
}

int kv_metad_parse_data(const char *buf, size_t len, struct kv_meta_kv **kvs, size_t *n, char *err,
                        size_t errlen)
{
    json_t *o = NULL;
    if (kv_json_parse(buf, len, &o, err, errlen) < 0)
        return KV_EINVAL;
    int rc = KV_EINVAL;
    struct kv_meta_kv *out = NULL;
    size_t cnt = 0;
    json_t *fmt = json_object_get(o, "format");
    json_t *ver = json_object_get(o, "version");
    json_t *arr = json_object_get(o, "kvs");
    if (!json_is_object(o) || !json_is_string(fmt) ||
        strcmp(json_string_value(fmt), DATA_FORMAT) != 0) {
        kv_meta_set_err(err, errlen, "not a kvstash metad data file (field 'format' is not '%s')",
                        DATA_FORMAT);
        goto out;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        kv_meta_set_err(err, errlen, "unsupported data file version (want 1)");
        goto out;
    }
    if (!json_is_array(arr)) {
        kv_meta_set_err(err, errlen, "field 'kvs' missing or not an array");
        goto out;
    }
    size_t bad;
    char sub[200] = "";
    /* any value a server could have stored, whatever its --max-value */
    rc = kv_metad_json_kvs(arr, KV_METAD_MAX_VALUE_LIMIT, &out, &cnt, &bad, sub, sizeof(sub));
    if (rc < 0)
        kv_meta_set_err(err, errlen, "kvs[%zu]: %s", bad, sub);
    for (size_t i = 1; rc == KV_OK && i < cnt; i++) {
        if (strcmp(out[i - 1].key, out[i].key) == 0) {
            kv_meta_set_err(err, errlen, "key '%.200s' appears twice", out[i].key);
            rc = KV_EINVAL;
        }
    }
out:
    json_decref(o);
    if (rc < 0) {
        kv_meta_kvs_free(out, cnt); /* only a duplicate key leaves an array here */
        return rc;
    }
    *kvs = out; /* NULL when empty */
    *n = cnt;
    return KV_OK;
}

/* Adds {"key" or "key_b64", "value"} for one pair to arr. */
int kv_metad_json_add_kv(json_t *arr, const char *key, const char *val, size_t len)
{
    json_t *o = json_object();
    if (!o)
        return KV_ENOMEM;
    json_t *k = json_string(key); /* NULL for a key that is not UTF-8 */
    if (k) {
        json_object_set_new(o, "key", k);
    } else {
        char *kb = kv_metad_b64_encode(key, strlen(key));
        if (!kb)
            goto out_nomem;
        json_object_set_new(o, "key_b64", json_string(kb));
        kv_free(kb);
    }
    if (val) {
        char *vb = kv_metad_b64_encode(val, len);
        if (!vb)
            goto out_nomem;
        json_object_set_new(o, "value", json_string(vb));
        kv_free(vb);
    }
    if (json_array_append_new(arr, o) != 0)
        return KV_ENOMEM;
    return KV_OK;
out_nomem:
    json_decref(o);
    return KV_ENOMEM;
}

int kv_metad_encode_data(const struct kv_meta_kv *kvs, size_t n, char **out)
{
    json_t *arr = json_array();
    json_t *o = json_object();
    int rc = KV_ENOMEM;
    if (!arr || !o)
        goto out;
    for (size_t i = 0; i < n; i++) {
        rc = kv_metad_json_add_kv(arr, kvs[i].key, kvs[i].val, kvs[i].len);
        if (rc < 0)
            goto out;
    }
    rc = KV_ENOMEM;
    if (json_object_set_new(o, "format", json_string(DATA_FORMAT)) != 0 ||
        json_object_set_new(o, "version", json_integer(1)) != 0 ||
        json_object_set(o, "kvs", arr) != 0)
        goto out;
    *out = kv_json_dump(o);
    rc = *out ? KV_OK : KV_ENOMEM;
out:
    json_decref(arr);
    json_decref(o);
    return rc;
}

/* ---- data file ---- */

static int load_data_file(struct kv_metad *d)
{
    FILE *f = fopen(d->data_file, "rb");
    if (!f) {
        if (errno == ENOENT) {
            KV_LOGI("data file %s does not exist yet: starting empty", d->data_file);
            return KV_OK;
        }
        KV_LOGE("cannot open data file %s: %s", d->data_file, strerror(errno));
        return kv_err_from_errno(errno);
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = KV_OK;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = kv_realloc(buf, cap);
            if (!nb) {
                rc = KV_ENOMEM;
                goto out_close;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        KV_LOGE("cannot read data file %s", d->data_file);
        rc = KV_EIO;
        goto out_close;
    }
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    char err[256] = "";
    rc = kv_metad_parse_data(buf, len, &kvs, &n, err, sizeof(err));
    if (rc < 0) {
        KV_LOGE("bad data file %s: %s", d->data_file, err);
        goto out_close;
    }
    for (size_t i = 0; i < n && rc == KV_OK; i++) /* values may exceed the API's 1 MiB */
        rc = kv_meta_embedded_put(d->m, kvs[i].key, kvs[i].val, kvs[i].len, 0);
    if (rc < 0)
        KV_LOGE("cannot load data file %s: %s", d->data_file, kv_strerror(rc));
    else
        KV_LOGI("loaded %zu keys from %s", n, d->data_file);
    kv_meta_kvs_free(kvs, n);
out_close:
    fclose(f);
    kv_free(buf);
    return rc;
}

/* fsyncs the directory holding path, so a rename into it survives a crash. */
static int fsync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4200];
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return kv_err_from_errno(errno);
    int rc = fsync(fd) == 0 ? KV_OK : kv_err_from_errno(errno);
    close(fd);
    return rc;
}

/* Saver thread: snapshot (kv_meta_embedded_snapshot_unleased), encode, write FILE.tmp, fsync,
 * rename over FILE, fsync the directory. A failed save leaves FILE as it was. */
static int save_data_file(struct kv_metad *d)
{
    int64_t t0 = kv_now_us();
    struct kv_meta_emb_snap snap;
    char *text = NULL;
    size_t tlen = 0, n = 0;
    int rc = kv_meta_embedded_snapshot_unleased(d->m, &snap);
    int64_t snap_us = kv_now_us() - t0;
    if (rc == KV_OK) {
        n = snap.n;
        rc = kv_metad_encode_data(snap.kvs, snap.n, &text);
        kv_meta_embedded_snap_free(&snap);
    }
    if (rc < 0)
        goto out;
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", d->data_file);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = kv_err_from_errno(errno);
        goto out;
    }
    tlen = strlen(text);
    size_t left = tlen;
    const char *p = text;
    while (left && rc == KV_OK) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = w < 0 ? kv_err_from_errno(errno) : KV_EIO;
        else {
            p += w;
            left -= (size_t)w;
        }
    }
    if (rc == KV_OK && fsync(fd) != 0)
        rc = kv_err_from_errno(errno);
    close(fd);
    if (rc == KV_OK && rename(tmp, d->data_file) != 0)
        rc = kv_err_from_errno(errno);
    if (rc < 0)
        unlink(tmp);
    else
        rc = fsync_parent_dir(d->data_file); /* FILE is complete; only its durability is open */
out:
    kv_free(text);
    if (rc < 0)
        KV_LOGW_RL(5000, "cannot save data file %s: %s", d->data_file, kv_strerror(rc));
    else
        KV_LOGD("saved %zu keys (%zu bytes) to %s in %lld us (snapshot under the store lock: "
                "%lld us)",
                n, tlen, d->data_file, (long long)(kv_now_us() - t0), (long long)snap_us);
    return rc;
}

/* Waits on save_cond until the monotonic time deadline_ms (or a signal). save_lock held. */
static void save_wait_until(struct kv_metad *d, int64_t deadline_ms)
{
    struct timespec ts = {(time_t)(deadline_ms / 1000), (long)(deadline_ms % 1000) * 1000000L};
    pthread_cond_timedwait(&d->save_cond, &d->save_lock, &ts);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The saver thread (state diagram in the file header). */
static void *saver_main(void *arg)
{
    struct kv_metad *d = arg;
    kv_log_set_thread_name("metad-save");
    int64_t last_ms = INT64_MIN / 2; /* start of the previous save */
    pthread_mutex_lock(&d->save_lock);
    for (;;) {
        while (!d->dirty && !d->save_stop)
            pthread_cond_wait(&d->save_cond, &d->save_lock);
        if (!d->dirty)
            break; /* stopping with nothing unsaved */
        while (!d->save_stop && mono_ms() < last_ms + SAVE_MS)
            save_wait_until(d, last_ms + SAVE_MS); /* coalesce a burst of changes */
        bool last = d->save_stop;
        d->dirty = false;
        pthread_mutex_unlock(&d->save_lock);
        last_ms = mono_ms();
        int rc = save_data_file(d);
        pthread_mutex_lock(&d->save_lock);
        if (rc < 0 && last)
            break; /* the final attempt failed: warned, give up */
        if (rc < 0)
            d->dirty = true; /* retried SAVE_MS later */
    }
    pthread_mutex_unlock(&d->save_lock);
    return NULL;
}

/* Any thread: marks the store changed and wakes the saver (invariant 3). */
static void mark_dirty(struct kv_metad *d)
{
    pthread_mutex_lock(&d->save_lock);
    if (!d->dirty) {
        d->dirty = true;
        pthread_cond_signal(&d->save_cond);
    }
    pthread_mutex_unlock(&d->save_lock);
}

/* ---- event ring ---- */

static void ring_ev_free(struct ring_ev *e)
{
    kv_free(e->key);
    kv_free(e->val);
    memset(e, 0, sizeof(*e));
}

/* Embedded worker thread: appends an event to the ring (invariant 1) and wakes the loop. */
static void on_store_event(void *ud, const struct kv_meta_event *ev, uint64_t rev)
{
    struct kv_metad *d = ud;
    struct ring_ev e = {.rev = rev, .type = ev->type, .len = ev->len};
    e.key = kv_strdup(ev->key);
    if (ev->value)
        e.val = kv_memdup0(ev->value, ev->len);
    size_t bytes = strlen(ev->key) + ev->len + sizeof(e);
    if (d->data_file)
        mark_dirty(d);
    pthread_mutex_lock(&d->lock);
    if (!e.key || (ev->value && !e.val)) {
        /* cannot record it: make every older revision "compacted" so pollers re-list */
        KV_LOGW_RL(5000, "out of memory recording a watch event; watchers will re-list");
        ring_ev_free(&e);
        while (d->ring_n) {
            ring_ev_free(&d->ring[d->ring_head]);
            d->ring_head = (d->ring_head + 1) % RING_MAX_EVENTS;
            d->ring_n--;
        }
        d->ring_bytes = 0;
        d->ring_floor = d->ring_last = rev;
        goto out_unlock;
    }
    while (d->ring_n && (d->ring_n == RING_MAX_EVENTS || d->ring_bytes + bytes > RING_MAX_BYTES)) {
        struct ring_ev *old = &d->ring[d->ring_head];
        d->ring_floor = old->rev;
        d->ring_bytes -= strlen(old->key) + old->len + sizeof(*old);
        ring_ev_free(old);
        d->ring_head = (d->ring_head + 1) % RING_MAX_EVENTS;
        d->ring_n--;
    }
    d->ring[(d->ring_head + d->ring_n) % RING_MAX_EVENTS] = e;
    d->ring_n++;
    d->ring_bytes += bytes;
    d->ring_last = rev;
out_unlock:
    pthread_mutex_unlock(&d->lock);
    event_active(d->wake_ev, EV_READ, 0);
}

/* ---- replies ---- */

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    default:
        return "OTHER";
    }
}

/* Every reply goes through here, so every request is logged once at debug level. */
static void reply(struct evhttp_request *req, int code, const char *ctype, const void *body,
                  size_t len)
{
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    if (len)
        evbuffer_add(b, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    if (kv_log_enabled(KV_LOG_DEBUG)) {
        const char *uri = evhttp_request_get_uri(req);
        size_t in = evbuffer_get_length(evhttp_request_get_input_buffer(req));
        long long us = cur_req_start_us ? (long long)(kv_now_us() - cur_req_start_us) : -1;
        KV_LOGD("%s %.300s -> %d, in %zu B, out %zu B, %lld us",
                method_name(evhttp_request_get_command(req)), uri ? uri : "?", code, in, len, us);
    }
    evhttp_send_reply(req, code, NULL, NULL);
}

static void reply_err(struct evhttp_request *req, int code, int kverr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_err(struct evhttp_request *req, int code, int kverr, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof(msg) - 2)
        n = (int)sizeof(msg) - 2;
    msg[n++] = '\n';
    char num[16];
    snprintf(num, sizeof(num), "%d", kverr);
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Kvstash-Error", num);
    reply(req, code, "text/plain", msg, (size_t)n);
}

static void reply_json(struct evhttp_request *req, json_t *o)
{
    char *s = o ? kv_json_dump(o) : NULL;
    json_decref(o);
    if (!s) {
        reply_err(req, 500, KV_ENOMEM, "out of memory");
        return;
    }
    reply(req, 200, "application/json", s, strlen(s));
    kv_free(s);
}

/* Maps a store error to a reply. */
static void reply_rc(struct evhttp_request *req, int rc, const char *what)
{
    switch (rc) {
    case KV_ENOENT:
        reply_err(req, 404, rc, "%s: not found", what);
        break;
    case KV_EMETA_LEASE:
        reply_err(req, 404, rc, "%s: lease not found or expired", what);
        break;
    case KV_EMETA_CAS:
        reply_err(req, 409, rc, "%s: compare failed (value differs)", what);
        break;
    case KV_E2BIG:
        reply_err(req, 413, rc, "%s: too large", what);
        break;
    case KV_EINVAL:
        reply_err(req, 400, rc, "%s: invalid argument", what);
        break;
    default:
        reply_err(req, 500, rc, "%s: %s", what, kv_strerror(rc));
        break;
    }
}

/* Body bytes (contiguous) and length. */
static const char *req_body(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(b);
    if (!*len)
        return "";
    return (const char *)evbuffer_pullup(b, -1);
}

/* ---- handlers ---- */

static void handle_metadata(struct kv_metad *d, struct evhttp_request *req,
                            const struct kv_metad_query *q)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd == EVHTTP_REQ_GET && !q->key && q->prefix) {
        struct kv_meta_kv *kvs = NULL;
        size_t n = 0;
        int rc = kv_meta_list(d->m, q->prefix, &kvs, &n);
        if (rc < 0) {
            reply_rc(req, rc, "list");
            return;
        }
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++) {
            if (kv_metad_json_add_kv(arr, kvs[i].key, kvs[i].val, kvs[i].len) < 0) {
                json_decref(arr);
                arr = NULL;
            }
        }
        kv_meta_kvs_free(kvs, n);
        reply_json(req, arr);
        return;
    }
    if (!q->key) {
        reply_err(req, 400, KV_EINVAL, "missing parameter 'key'%s",
                  cmd == EVHTTP_REQ_GET ? " (or 'prefix')" : "");
        return;
    }
    if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
        char *v = NULL;
        size_t len = 0;
        int rc = kv_meta_get(d->m, q->key, &v, &len);
        if (rc < 0) {
            reply_rc(req, rc, "get");
            return;
        }
        reply(req, 200, "application/octet-stream", v, len);
        kv_meta_free(v);
    } else if (cmd == EVHTTP_REQ_PUT || cmd == EVHTTP_REQ_POST) {
        size_t len;
        const char *body = req_body(req, &len);
        if (!body) {
            reply_err(req, 500, KV_ENOMEM, "out of memory");
            return;
        }
        if (len > d->max_value) {
            reply_err(req, 413, KV_E2BIG,
                      "value of %zu bytes is larger than the limit of %zu (metad --max-value)", len,
                      d->max_value);
            return;
        }
        /* the embedded store directly: kv_meta_put() stops at the API's 1 MiB */
        int rc = kv_meta_embedded_put(d->m, q->key, body, len, q->lease);
        if (rc < 0)
            reply_rc(req, rc, "put");
        else
            reply(req, 200, "text/plain", "", 0);
    } else if (cmd == EVHTTP_REQ_DELETE) {
        /* 200 even when the key is absent, as Mooncake's server answers (its client fails on
         * any other status); kvstash's client learns "absent" from X-Kvstash-Deleted: 0. A
         * header rather than a strict-404 query flag: one behaviour for every client, and
         * curl users see it too. */
        int rc = kv_meta_del(d->m, q->key);
        if (rc < 0 && rc != KV_ENOENT) {
            reply_rc(req, rc, "delete");
            return;
        }
        evhttp_add_header(evhttp_request_get_output_headers(req), "X-Kvstash-Deleted",
                          rc == KV_ENOENT ? "0" : "1");
        reply(req, 200, "text/plain", "", 0);
    } else {
        reply_err(req, 405, KV_ENOTSUP, "method not allowed on /metadata (GET, PUT, DELETE)");
    }
}

static void handle_cas(struct kv_metad *d, struct evhttp_request *req)
{
    size_t len;
    const char *body = req_body(req, &len);
    struct kv_metad_cas c = {0};
    char err[256] = "";
    int rc = body ? kv_metad_decode_cas(body, len, &c, err, sizeof(err)) : KV_ENOMEM;
    if (rc < 0) {
        if (rc == KV_ENOMEM)
            reply_err(req, 500, rc, "out of memory");
        else
            reply_err(req, rc == KV_E2BIG ? 413 : 400, rc, "bad CAS body: %s", err);
        return;
    }
    rc = kv_meta_cas(d->m, c.key, c.expect, c.expect_len, c.val, c.len, c.lease);
    if (rc < 0)
        reply_rc(req, rc, "cas");
    else
        reply(req, 200, "text/plain", "", 0);
    kv_metad_cas_fini(&c);
}

static void handle_lease(struct kv_metad *d, struct evhttp_request *req, const char *op)
{
    size_t len;
    const char *body = req_body(req, &len);
    bool grant = strcmp(op, "grant") == 0;
    int64_t v = 0;
    char err[256] = "";
    int rc = body ? kv_metad_decode_lease(body, len, grant ? "ttl" : "id", &v, err, sizeof(err))
                  : KV_ENOMEM;
    if (rc < 0) {
        reply_err(req, 400, rc, "bad lease %s body: %s", op, err);
        return;
    }
    int64_t id = v;
    if (grant)
        rc = kv_meta_lease_grant(d->m, (int)v, &id);
    else if (strcmp(op, "keepalive") == 0)
        rc = kv_meta_lease_keepalive(d->m, v);
    else
        rc = kv_meta_lease_revoke(d->m, v);
    if (rc < 0) {
        reply_rc(req, rc, op);
        return;
    }
    json_t *o = json_object();
    if (o) {
        json_object_set_new(o, "id", json_integer(id));
        if (grant)
            json_object_set_new(o, "ttl", json_integer(v));
    }
    reply_json(req, o);
}

static void poll_free(struct poll_req *p)
{
    if (p->timer)
        event_free(p->timer);
    kv_free(p->prefix);
    kv_free(p);
}

/* Collects ring events after p->after under p->prefix. Returns the JSON reply, or NULL with
 * *gone when the revision is outside the ring; with no event, NULL unless force. */
static json_t *poll_collect(struct kv_metad *d, const char *prefix, uint64_t after, bool force,
                            bool *gone)
{
    size_t plen = strlen(prefix);
    json_t *arr = NULL;
    uint64_t last;
    uint64_t store_rev = 0;
    kv_meta_embedded_rev(d->m, &store_rev);
    *gone = false;
    pthread_mutex_lock(&d->lock);
    last = KV_MAX(after, d->ring_last);
    if (after < d->ring_floor || after > store_rev) {
        *gone = true;
        goto out_unlock;
    }
    for (size_t i = 0; i < d->ring_n; i++) {
        struct ring_ev *e = &d->ring[(d->ring_head + i) % RING_MAX_EVENTS];
        if (e->rev <= after || strncmp(e->key, prefix, plen) != 0)
            continue;
        if (!arr)
            arr = json_array();
        if (!arr)
            break;
        json_t *o = json_object();
        if (!o)
            continue;
        json_object_set_new(o, "type", json_string(e->type == KV_META_EV_PUT ? "put" : "delete"));
        json_object_set_new(o, "rev", json_integer((json_int_t)e->rev));
        json_t *tmp = json_array();
        if (tmp && kv_metad_json_add_kv(tmp, e->key, e->val, e->len) == KV_OK)
            json_object_update(o, json_array_get(tmp, 0));
        json_decref(tmp);
        json_array_append_new(arr, o);
    }
out_unlock:
    pthread_mutex_unlock(&d->lock);
    if (*gone || (!arr && !force))
        return NULL;
    json_t *o = json_object();
    if (!o) {
        json_decref(arr);
        return NULL;
    }
    json_object_set_new(o, "revision", json_integer((json_int_t)last));
    json_object_set_new(o, "events", arr ? arr : json_array());
    return o;
}

static void reply_gone(struct evhttp_request *req, uint64_t after)
{
    reply_err(req, 410, KV_ERANGE,
              "revision %llu is no longer (or not yet) in the event history: list again and "
              "watch from a fresh revision",
              (unsigned long long)after);
}

static void poll_unlink(struct kv_metad *d, struct poll_req *p)
{
    for (struct poll_req **pp = &d->polls; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            d->npolls--;
            return;
        }
    }
}

static void on_poll_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct poll_req *p = arg;
    struct kv_metad *d = p->d;
    poll_unlink(d, p);
    cur_req_start_us = p->start_us;
    bool gone;
    json_t *o = poll_collect(d, p->prefix, p->after, true, &gone);
    if (gone)
        reply_gone(p->req, p->after);
    else
        reply_json(p->req, o);
    poll_free(p);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_metad *d = arg;
    struct poll_req **pp = &d->polls;
    while (*pp) {
        struct poll_req *p = *pp;
        bool gone;
        json_t *o = poll_collect(d, p->prefix, p->after, false, &gone);
        if (!o && !gone) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        d->npolls--;
        cur_req_start_us = p->start_us;
        if (gone)
            reply_gone(p->req, p->after);
        else
            reply_json(p->req, o);
        poll_free(p);
    }
}

static void handle_watch(struct kv_metad *d, struct evhttp_request *req,
                         const struct kv_metad_query *q)
{
    const char *prefix = q->prefix ? q->prefix : "";
    if (!q->has_after) {
        uint64_t rev = 0;
        kv_meta_embedded_rev(d->m, &rev);
        json_t *o = json_object();
        if (o) {
            json_object_set_new(o, "revision", json_integer((json_int_t)rev));
            json_object_set_new(o, "events", json_array());
        }
        reply_json(req, o);
        return;
    }
    bool gone;
    json_t *o = poll_collect(d, prefix, q->after, q->timeout_ms == 0, &gone);
    if (gone) {
        reply_gone(req, q->after);
        return;
    }
    if (o) {
        reply_json(req, o);
        return;
    }
    if (d->npolls >= MAX_POLLS) {
        reply_err(req, 503, KV_EBUSY, "too many watchers waiting (%d)", MAX_POLLS);
        return;
    }
    struct poll_req *p = kv_calloc(1, sizeof(*p));
    if (p)
        p->prefix = kv_strdup(prefix);
    if (p && p->prefix)
        p->timer = evtimer_new(d->base, on_poll_timeout, p);
    if (!p || !p->prefix || !p->timer) {
        if (p)
            poll_free(p);
        reply_err(req, 500, KV_ENOMEM, "out of memory");
        return;
    }
    p->d = d;
    p->req = req;
    p->after = q->after;
    p->start_us = cur_req_start_us;
    struct timeval tv = {q->timeout_ms / 1000, (q->timeout_ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
    p->next = d->polls;
    d->polls = p;
    d->npolls++;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct kv_metad *d = arg;
    cur_req_start_us = kv_log_enabled(KV_LOG_DEBUG) ? kv_now_us() : 0;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!path) {
        reply_err(req, 400, KV_EINVAL, "malformed request URI");
        return;
    }
    struct kv_metad_query q;
    char err[256] = "";
    int rc = kv_metad_decode_query(query, &q, err, sizeof(err));
    if (rc < 0) {
        if (rc == KV_ENOMEM)
            reply_err(req, 500, rc, "out of memory");
        else
            reply_err(req, 400, rc, "bad query: %s", err);
        return;
    }
    /* with a shared token (KVSTASH_TOKEN, --token), every request that changes state (PUT,
     * POST, DELETE) must present it: whoever reaches this port could otherwise rewrite segment
     * descriptors or take the leader key. Reads stay open (Mooncake's clients send no token). */
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD && kv_auth_token()) {
        char *peer_addr = NULL;
        ev_uint16_t peer_port = 0;
        struct evhttp_connection *conn = evhttp_request_get_connection(req);
        if (conn)
            evhttp_connection_get_peer(conn, &peer_addr, &peer_port);
        char peer[300], what[256];
        snprintf(peer, sizeof(peer), "%s:%u", peer_addr ? peer_addr : "?", (unsigned)peer_port);
        snprintf(what, sizeof(what), "metadata %s %.200s",
                 cmd == EVHTTP_REQ_DELETE ? "DELETE"
                 : cmd == EVHTTP_REQ_PUT  ? "PUT"
                                          : "POST",
                 path);
        const char *why = NULL;
        const char *authz =
            evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        if (kv_auth_http(authz, peer, what, &why) < 0) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                              "Bearer realm=\"kvstash\"");
            reply_err(req, 401, KV_EPERM,
                      "%s: this metad requires the shared token for changes (send "
                      "'Authorization: Bearer TOKEN'; kvstash daemons do when KVSTASH_TOKEN or "
                      "--token is set)",
                      why);
            kv_metad_query_fini(&q);
            return;
        }
    }
    if (strcmp(path, "/metadata") == 0) {
        handle_metadata(d, req, &q);
    } else if (strcmp(path, "/watch") == 0) {
        if (cmd != EVHTTP_REQ_GET)
            reply_err(req, 405, KV_ENOTSUP, "use GET for /watch");
        else
            handle_watch(d, req, &q);
    } else if (strcmp(path, "/metadata/cas") == 0) {
        if (cmd != EVHTTP_REQ_POST)
            reply_err(req, 405, KV_ENOTSUP, "use POST for /metadata/cas");
        else
            handle_cas(d, req);
    } else if (kv_startswith(path, "/lease/") &&
               (strcmp(path + 7, "grant") == 0 || strcmp(path + 7, "keepalive") == 0 ||
                strcmp(path + 7, "revoke") == 0)) {
        if (cmd != EVHTTP_REQ_POST)
            reply_err(req, 405, KV_ENOTSUP, "use POST for %s", path);
        else
            handle_lease(d, req, path + 7);
    } else {
        reply_err(req, 404, KV_ENOENT,
                  "unknown path '%.200s' (try /metadata, /metadata/cas, /lease/grant, "
                  "/lease/keepalive, /lease/revoke, /watch, /health, /ready)",
                  path);
    }
    kv_metad_query_fini(&q);
}

static void on_route(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    on_request(req, ud);
}

/* ---- lifecycle ---- */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kv_metad *d = arg;
    while (d->polls) { /* invariant 2: answer held polls before evhttp_free */
        struct poll_req *p = d->polls;
        d->polls = p->next;
        d->npolls--;
        cur_req_start_us = p->start_us;
        reply_err(p->req, 503, KV_ESHUTDOWN, "server shutting down");
        poll_free(p);
    }
    event_base_loopbreak(d->base);
}

static void *loop_main(void *arg)
{
    struct kv_metad *d = arg;
    kv_log_set_thread_name("metad");
    event_base_loop(d->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static atomic_int evthread_rc;
static void evthread_init(void)
{
    atomic_store(&evthread_rc, evthread_use_pthreads());
    if (sodium_init() < 0)
        atomic_store(&evthread_rc, -1);
}

static void metad_free(struct kv_metad *d)
{
    if (d->wid)
        kv_meta_unwatch(d->m, d->wid); /* no change is recorded after this */
    if (d->saver_started) {
        pthread_mutex_lock(&d->save_lock);
        d->save_stop = true; /* the saver writes unsaved changes once more, then exits */
        pthread_cond_signal(&d->save_cond);
        pthread_mutex_unlock(&d->save_lock);
        pthread_join(d->saver, NULL);
    }
    kv_admin_http_destroy(d->admin); /* after the loop stopped */
    if (d->stop_ev)
        event_free(d->stop_ev);
    if (d->wake_ev)
        event_free(d->wake_ev);
    if (d->base)
        event_base_free(d->base);
    kv_meta_close(d->m);
    for (size_t i = 0; i < d->ring_n; i++)
        ring_ev_free(&d->ring[(d->ring_head + i) % RING_MAX_EVENTS]);
    kv_free(d->ring);
    kv_free(d->data_file);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->save_lock);
    pthread_cond_destroy(&d->save_cond);
    kv_free(d);
}

int kv_metad_start(const struct kv_metad_opts *opts, struct kv_metad **out)
{
    if (!opts || !opts->addr || !out)
        return KV_EINVAL;
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(opts->addr, host, sizeof(host), &port) < 0) {
        KV_LOGE("bad listen address '%s' (want HOST:PORT)", opts->addr);
        return KV_EINVAL;
    }
    pthread_once(&evthread_once, evthread_init);
    if (atomic_load(&evthread_rc) != 0) {
        KV_LOGE("cannot initialise libevent threading or libsodium");
        return KV_EIO;
    }
    if (opts->max_value > KV_METAD_MAX_VALUE_LIMIT) {
        KV_LOGE("max value %zu is over the limit of %u bytes", opts->max_value,
                KV_METAD_MAX_VALUE_LIMIT);
        return KV_EINVAL;
    }
    struct kv_metad *d = kv_calloc(1, sizeof(*d));
    if (!d)
        return KV_ENOMEM;
    d->max_value = opts->max_value ? opts->max_value : KV_METAD_DEFAULT_MAX_VALUE;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->save_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->save_cond, &ca);
    pthread_condattr_destroy(&ca);
    int rc = KV_ENOMEM;
    d->ring = kv_calloc(RING_MAX_EVENTS, sizeof(*d->ring));
    if (!d->ring)
        goto out_free;
    if (opts->data_file) {
        d->data_file = kv_strdup(opts->data_file);
        if (!d->data_file)
            goto out_free;
    }
    char url[300];
    static atomic_uint private_seq;
    if (opts->embedded_name)
        snprintf(url, sizeof(url), "embedded://%s", opts->embedded_name);
    else
        snprintf(url, sizeof(url), "embedded://#metad-private-%d-%u", (int)getpid(),
                 atomic_fetch_add(&private_seq, 1));
    rc = kv_meta_open(url, NULL, &d->m);
    if (rc < 0)
        goto out_free;
    if (d->data_file) {
        rc = load_data_file(d);
        if (rc < 0)
            goto out_free;
    }
    d->base = event_base_new();
    if (!d->base) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    /* /health and /ready are the admin server's; every other path goes to on_request */
    struct kv_admin_http_opts ao = {
        .addr = opts->addr,
        .base = d->base,
        .max_body = KV_MAX(d->max_value, CAS_MAX_BODY) + BODY_SLACK,
        .timeout_s = KV_METAD_MAX_WATCH_MS / 1000 + 60,
    };
    char err[300];
    rc = kv_admin_http_create(&ao, &d->admin, err, sizeof(err));
    if (rc < 0) {
        KV_LOGE("%s", err);
        goto out_free;
    }
    rc = kv_admin_http_route(d->admin, "/", KV_ADMIN_PREFIX, KV_ADMIN_ANY, on_route, d);
    if (rc < 0)
        goto out_free;
    d->port = kv_admin_http_port(d->admin);
    d->stop_ev = event_new(d->base, -1, 0, on_stop, d);
    d->wake_ev = event_new(d->base, -1, EV_PERSIST, on_wake, d);
    rc = KV_ENOMEM;
    if (!d->stop_ev || !d->wake_ev)
        goto out_free;
    /* wake_ev has no fd or timeout: only event_active() triggers it; add it so EV_PERSIST
     * keeps it registered */
    event_add(d->wake_ev, NULL);
    if (d->data_file) {
        if (pthread_create(&d->saver, NULL, saver_main, d) != 0) {
            rc = KV_ENOMEM;
            goto out_free;
        }
        d->saver_started = true;
    }
    uint64_t start_rev = 0;
    rc = kv_meta_embedded_watch_rev(d->m, "", on_store_event, d, &d->wid, &start_rev);
    if (rc < 0)
        goto out_free;
    d->ring_floor = d->ring_last = start_rev;
    if (pthread_create(&d->thread, NULL, loop_main, d) != 0) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    d->thread_started = true;
    *out = d;
    return KV_OK;
out_free:
    metad_free(d);
    return rc;
}

uint16_t kv_metad_port(const struct kv_metad *d)
{
    return d ? d->port : 0;
}

void kv_metad_stop(struct kv_metad *d)
{
    if (!d)
        return;
    if (d->thread_started) {
        event_active(d->stop_ev, EV_READ, 0);
        pthread_join(d->thread, NULL);
    }
    metad_free(d);
}
