/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_http.c - the http:// metadata backend: a libcurl client of `kvstash metad`
 * (http://HOST:PORT/metadata). Endpoints and shapes: docs/design/meta.md.
 *
 * Design:
 *  - Requests: one blocking libcurl easy transfer per call, on a handle borrowed from a small
 *    pool (POOL_MAX handles, kept between calls so their TCP connections are reused).
 *    CURLOPT_TIMEOUT_MS = m->timeout_ms bounds every call; CURLOPT_NOSIGNAL; proxies are
 *    ignored (NOPROXY "*"). A transport failure (refused, reset, timeout) is KV_EMETA_UNAVAIL.
 *  - Errors: the server names the kv_err in an X-Kvstash-Error header; without it (another
 *    server, e.g. Mooncake's) the status code is mapped (404 -> KV_ENOENT, 409 -> KV_EMETA_CAS).
 *    A DELETE of an absent key is 200 (Mooncake's contract); metad's X-Kvstash-Deleted: 0
 *    header turns it into KV_ENOENT.
 *  - Watch: one thread per watch long-polls GET /watch?prefix=P&after=REV through a curl multi
 *    handle, so kv_meta_unwatch() interrupts a poll at once with curl_multi_wakeup(). The
 *    starting revision is fetched synchronously inside kv_meta_watch(), so every event made
 *    after it returns is delivered. On 410 (the server lost history, or restarted) the watch
 *    warns and continues from the server's current revision; on an outage it retries every
 *    RETRY_MS.
 *
 * Invariants:
 *  1. A watch is in impl->watches from kv_meta_watch() until unwatch/close removes it; the
 *     remover joins its thread (or, when the callback unwatches its own watch, the thread
 *     frees itself), so no callback runs after kv_meta_unwatch() returns.
 *
 * Thread model: any thread calls in; each watch has its own thread that runs its callbacks
 * without any lock held.
 *
 * Locks (leaves, never held across a transfer or a callback):
 *  - pool_lock guards pool[] and npool.
 *  - wlock guards watches.
 */
#define KV_LOG_COMPONENT "meta"
#include "meta/meta_http_int.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/auth.h"
#include "common/idtab.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "meta/metad_int.h"

#define POOL_MAX 8
#define WATCH_HOLD_MS 5000
#define RETRY_MS 500
#define MAX_RESPONSE (256u << 20)

struct http_impl {
    char *root;     /* "http://HOST:PORT" */
    char *meta_url; /* root + "/metadata" */
    pthread_mutex_t pool_lock;
    CURL *pool[POOL_MAX];
    int npool;
    pthread_mutex_t wlock;
    struct kv_idtab watches;
};

struct http_watch {
    struct kv_meta *m;
    char *prefix_esc; /* URL-encoded prefix */
    size_t plen;
    kv_meta_watch_fn fn;
    void *ud;
    uint64_t rev;
    CURLM *multi;
    pthread_t thread;
    atomic_bool stop;
    atomic_bool self_free; /* unwatched from its own callback: the thread frees the watch */
};

struct resp {
    long status;
    char *body; /* always NUL-terminated after len bytes once allocated */
    size_t len, cap;
    int kverr;   /* from X-Kvstash-Error, 0 if absent */
    int deleted; /* from X-Kvstash-Deleted: 0 or 1; -1 if absent (another server) */
    bool overflow;
};

static const struct kv_meta_ops http_ops;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- pure decoders ---- */

int kv_meta_http_decode_list(const char *body, size_t len, struct kv_meta_kv **kvs, size_t *n,
                             char *err, size_t errlen)
{
    json_t *a = NULL;
    if (kv_json_parse(body, len, &a, err, errlen) < 0)
        return KV_EPROTO;
    size_t bad;
    char sub[200] = "";
    int rc = KV_EPROTO;
    if (!json_is_array(a)) {
        kv_meta_set_err(err, errlen, "list reply is not a JSON array");
    } else {
        /* a Mooncake client may have stored values over the API's 1 MiB */
        rc = kv_metad_json_kvs(a, KV_METAD_MAX_VALUE_LIMIT, kvs, n, &bad, sub, sizeof(sub));
        if (rc < 0)
            kv_meta_set_err(err, errlen, "list reply element %zu: %s", bad, sub);
        if (rc < 0 && rc != KV_ENOMEM)
            rc = KV_EPROTO;
    }
    json_decref(a);
    return rc;
}

void kv_meta_http_evs_free(struct kv_meta_http_ev *evs, size_t n)
{
    if (!evs)
        return;
    for (size_t i = 0; i < n; i++) {
        kv_free(evs[i].key);
        kv_free(evs[i].val);
    }
    kv_free(evs);
}

int kv_meta_http_decode_watch(const char *body, size_t len, uint64_t *rev,
                              struct kv_meta_http_ev **evs, size_t *n, char *err, size_t errlen)
{
    json_t *o = NULL;
    if (kv_json_parse(body, len, &o, err, errlen) < 0)
        return KV_EPROTO;
    int rc = KV_EPROTO;
    struct kv_meta_http_ev *out = NULL;
    size_t cnt = 0;
    json_t *r = json_object_get(o, "revision");
    json_t *a = json_object_get(o, "events");
    if (!json_is_object(o) || !json_is_integer(r) || json_integer_value(r) < 0 ||
        !json_is_array(a)) {
        kv_meta_set_err(err, errlen,
                        "watch reply lacks 'revision' (integer >= 0) or 'events' (array)");
        goto out;
    }
    size_t total = json_array_size(a);
    if (total) {
        out = kv_calloc(total, sizeof(*out));
        if (!out) {
            rc = KV_ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < total; i++) {
        json_t *e = json_array_get(a, i);
        json_t *t = json_object_get(e, "type");
        char sub[200] = "";
        if (!json_is_object(e) || !json_is_string(t) ||
            (strcmp(json_string_value(t), "put") != 0 &&
             strcmp(json_string_value(t), "delete") != 0)) {
            kv_meta_set_err(err, errlen, "watch event %zu: not an object with type put|delete", i);
            rc = KV_EPROTO; /* rc may hold KV_OK from the previous event */
            goto out;
        }
        struct kv_meta_http_ev *ev = &out[cnt];
        ev->type = json_string_value(t)[0] == 'p' ? KV_META_EV_PUT : KV_META_EV_DEL;
        rc = kv_metad_json_kv(e, ev->type == KV_META_EV_PUT, KV_METAD_MAX_VALUE_LIMIT, &ev->key,
                              &ev->val, &ev->len, sub, sizeof(sub));
        if (rc < 0) {
            kv_meta_set_err(err, errlen, "watch event %zu: %s", i, sub);
            rc = rc == KV_ENOMEM ? rc : KV_EPROTO;
            goto out;
        }
        cnt++;
    }
    rc = KV_OK;
out:
    if (rc == KV_OK)
        *rev = (uint64_t)json_integer_value(r);
    json_decref(o);
    if (rc < 0) {
        kv_meta_http_evs_free(out, cnt);
        return rc;
    }
    *evs = out;
    *n = cnt;
    return KV_OK;
}

/* ---- transfers ---- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct resp *r = ud;
    size_t n = size * nmemb;
    if (r->len + n + 1 > r->cap) {
        if (r->len + n + 1 > MAX_RESPONSE) {
            r->overflow = true;
            return 0;
        }
        size_t cap = KV_MAX(r->cap * 2, r->len + n + 1);
        cap = KV_MAX(cap, (size_t)256);
        char *nb = kv_realloc(r->body, cap);
        if (!nb)
            return 0;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct resp *r = ud;
    size_t n = size * nmemb;
    static const char del[] = "x-kvstash-deleted:";
    if (n > sizeof(del) && strncasecmp(p, del, sizeof(del) - 1) == 0) {
        const char *s = p + sizeof(del) - 1, *e = p + n;
        while (s < e && *s == ' ')
            s++;
        if (s < e && (*s == '0' || *s == '1'))
            r->deleted = *s - '0';
        return n;
    }
    static const char name[] = "x-kvstash-error:";
    if (n > sizeof(name) && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        char v[24];
        size_t vl = KV_MIN(n - (sizeof(name) - 1), sizeof(v) - 1);
        memcpy(v, p + sizeof(name) - 1, vl);
        v[vl] = '\0';
        char *s = v;
        while (*s == ' ')
            s++;
        char *e = s;
        while (*e && *e != '\r' && *e != '\n' && *e != ' ')
            e++;
        *e = '\0';
        int64_t code;
        if (kv_parse_i64(s, &code) == KV_OK && code < 0 && code > -1000 &&
            strcmp(kv_err_name((int)code), "KV_UNKNOWN") != 0)
            r->kverr = (int)code;
    }
    return n;
}

static void resp_fini(struct resp *r)
{
    kv_free(r->body);
    memset(r, 0, sizeof(*r));
}

static CURL *pool_get(struct http_impl *h)
{
    CURL *c = NULL;
    pthread_mutex_lock(&h->pool_lock);
    if (h->npool)
        c = h->pool[--h->npool];
    pthread_mutex_unlock(&h->pool_lock);
    if (c)
        curl_easy_reset(c);
    else
        c = curl_easy_init();
    return c;
}

static void pool_put(struct http_impl *h, CURL *c)
{
    pthread_mutex_lock(&h->pool_lock);
    if (h->npool < POOL_MAX) {
        h->pool[h->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->pool_lock);
    if (c)
        curl_easy_cleanup(c);
}

/* Sets up c for one request. hdrs (owned by the caller) may be NULL. */
static void setup_easy(CURL *c, const char *method, const char *url, const void *body, size_t blen,
                       long timeout_ms, struct resp *r, struct curl_slist *hdrs)
{
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    if (hdrs)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    }
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    else if (strcmp(method, "POST") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
}

/* One request. KV_OK when a response arrived (any status, in r), KV_EMETA_UNAVAIL when the
 * server could not be reached or did not answer in time. */
static int http_do(struct kv_meta *m, const char *method, const char *url, const void *body,
                   size_t blen, const char *ctype, struct resp *r)
{
    struct http_impl *h = m->impl;
    memset(r, 0, sizeof(*r));
    r->deleted = -1;
    CURL *c = pool_get(h);
    if (!c)
        return KV_ENOMEM;
    struct curl_slist *hdrs = curl_slist_append(NULL, "Expect:");
    if (hdrs && ctype) {
        char ct[96];
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        struct curl_slist *nh = curl_slist_append(hdrs, ct);
        if (!nh) {
            curl_slist_free_all(hdrs);
            hdrs = NULL;
        } else {
            hdrs = nh;
        }
    }
    const char *tok = kv_auth_token();
    if (hdrs && tok && strcmp(method, "GET") != 0) { /* metad requires it on changes */
        size_t al = strlen(tok) + 32;
        char *a = kv_malloc(al);
        struct curl_slist *nh = NULL;
        if (a) {
            snprintf(a, al, "Authorization: Bearer %s", tok);
            nh = curl_slist_append(hdrs, a); /* copies it */
            kv_free(a);
        }
        if (!nh) {
            curl_slist_free_all(hdrs);
            hdrs = NULL;
        } else {
            hdrs = nh;
        }
    }
    if (!hdrs) {
        pool_put(h, c);
        return KV_ENOMEM;
    }
    if (body && !blen)
        body = ""; /* a zero-length body still needs a non-NULL POSTFIELDS */
    setup_easy(c, method, url, body, blen, m->timeout_ms, r, hdrs);
    CURLcode cc = curl_easy_perform(c);
    int rc = KV_OK;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    } else if (cc == CURLE_WRITE_ERROR && !r->overflow) {
        rc = KV_ENOMEM;
    } else {
        KV_LOGD("%s %s: %s", method, url, curl_easy_strerror(cc));
        rc = r->overflow ? KV_EPROTO : KV_EMETA_UNAVAIL;
    }
    curl_slist_free_all(hdrs);
    if (cc == CURLE_OK)
        pool_put(h, c);
    else
        curl_easy_cleanup(c); /* a failed connection is not worth keeping */
    if (rc < 0)
        resp_fini(r);
    return rc;
}

/* The kv_err of a non-2xx reply. */
static int status_err(const struct resp *r, int on404)
{
    if (r->status >= 200 && r->status < 300)
        return KV_OK;
    if (r->kverr == KV_ESHUTDOWN || r->kverr == KV_EBUSY)
        return KV_EMETA_UNAVAIL;
    if (r->kverr < 0)
        return r->kverr;
    switch (r->status) {
    case 404:
        return on404;
    case 409:
        return KV_EMETA_CAS;
    case 400:
        return KV_EINVAL;
    case 413:
        return KV_E2BIG;
    case 410:
        return KV_ERANGE;
    default:
        return r->status >= 500 ? KV_EMETA_UNAVAIL : KV_EPROTO;
    }
}

/* url = base + "?" + name + "=" + escaped(value) [+ "&lease=N"]; owned (kv_free). */
static char *make_url(const char *base, const char *name, const char *value, int64_t lease)
{
    char *esc = curl_easy_escape(NULL, value, 0);
    if (!esc)
        return NULL;
    size_t n = strlen(base) + strlen(name) + strlen(esc) + 48;
    char *url = kv_malloc(n);
    if (url) {
        if (lease)
            snprintf(url, n, "%s?%s=%s&lease=%" PRId64, base, name, esc, lease);
        else
            snprintf(url, n, "%s?%s=%s", base, name, esc);
    }
    curl_free(esc);
    return url;
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = kv_malloc(n);
    if (s)
        snprintf(s, n, "%s%s", a, b);
    return s;
}

/* Sends method to url (consumed; NULL means it could not be built: KV_ENOMEM) and maps the
 * status (on404: the error of a 404 without X-Kvstash-Error). With r, on KV_OK *r holds the
 * reply for the caller to resp_fini(); without r, or on error, the reply is already released. */
static int call(struct kv_meta *m, const char *method, char *url, const void *body, size_t blen,
                const char *ctype, int on404, struct resp *r)
{
    if (!url)
        return KV_ENOMEM;
    struct resp local;
    struct resp *rr = r ? r : &local;
    int rc = http_do(m, method, url, body, blen, ctype, rr);
    kv_free(url);
    if (rc < 0)
        return rc;
    rc = status_err(rr, on404);
    if (rc < 0 || !r)
        resp_fini(rr);
    return rc;
}

/* ---- ops ---- */

static int http_get(struct kv_meta *m, const char *key, char **val, size_t *len)
{
    struct http_impl *h = m->impl;
    struct resp r;
    int rc = call(m, "GET", make_url(h->meta_url, "key", key, 0), NULL, 0, NULL, KV_ENOENT, &r);
    if (rc < 0)
        return rc;
    if (!r.body) {
        r.body = kv_memdup0("", 0);
        if (!r.body)
            rc = KV_ENOMEM;
    }
    if (rc == KV_OK) {
        *val = r.body;
        *len = r.len;
        r.body = NULL;
    }
    resp_fini(&r);
    return rc;
}

static int http_put(struct kv_meta *m, const char *key, const void *val, size_t len, int64_t lease)
{
    struct http_impl *h = m->impl;
    return call(m, "PUT", make_url(h->meta_url, "key", key, lease), val, len,
                "application/octet-stream", lease ? KV_EMETA_LEASE : KV_EPROTO, NULL);
}

/* metad answers 200 for an absent key (Mooncake's semantics) and says whether it deleted
 * something in X-Kvstash-Deleted; an older metad answers 404 (KV_ENOENT through on404). Without
 * the header (Mooncake's own server) a 200 is KV_OK: that server cannot tell. */
static int http_del(struct kv_meta *m, const char *key)
{
    struct http_impl *h = m->impl;
    struct resp r;
    int rc = call(m, "DELETE", make_url(h->meta_url, "key", key, 0), NULL, 0, NULL, KV_ENOENT, &r);
    if (rc < 0)
        return rc;
    if (r.deleted == 0)
        rc = KV_ENOENT;
    resp_fini(&r);
    return rc;
}

static int http_list(struct kv_meta *m, const char *prefix, struct kv_meta_kv **kvs, size_t *n)
{
    struct http_impl *h = m->impl;
    struct resp r;
    int rc =
        call(m, "GET", make_url(h->meta_url, "prefix", prefix, 0), NULL, 0, NULL, KV_EPROTO, &r);
    if (rc < 0)
        return rc;
    char err[256] = "";
    rc = kv_meta_http_decode_list(r.body ? r.body : "", r.len, kvs, n, err, sizeof(err));
    if (rc < 0)
        KV_LOGW_RL(5000, "metadata server %s: bad list reply: %s", h->root, err);
    resp_fini(&r);
    return rc;
}

/* POSTs the JSON o (consumed) to root + path; status and r as call(). */
static int post_json(struct kv_meta *m, const char *path, json_t *o, int on404, struct resp *r)
{
    struct http_impl *h = m->impl;
    char *body = o ? kv_json_dump(o) : NULL;
    json_decref(o);
    int rc = KV_ENOMEM;
    if (body)
        rc = call(m, "POST", join(h->root, path), body, strlen(body), "application/json", on404, r);
    kv_free(body);
    return rc;
}

static int json_set_b64(json_t *o, const char *field, const void *p, size_t len)
{
    char *b = kv_metad_b64_encode(p, len);
    if (!b)
        return KV_ENOMEM;
    int rc = json_object_set_new(o, field, json_string(b)) == 0 ? KV_OK : KV_ENOMEM;
    kv_free(b);
    return rc;
}

static int http_cas(struct kv_meta *m, const char *key, const void *expect, size_t expect_len,
                    const void *val, size_t len, int64_t lease)
{
    json_t *o = json_object();
    json_t *arr = json_array();
    int rc = KV_ENOMEM;
    /* key (or key_b64) through the shared helper, then the other fields */
    if (!o || !arr || kv_metad_json_add_kv(arr, key, NULL, 0) < 0 ||
        json_object_update(o, json_array_get(arr, 0)) != 0)
        goto out_free;
    if (expect && json_set_b64(o, "expect", expect, expect_len) < 0)
        goto out_free;
    if (json_set_b64(o, "value", val, len) < 0)
        goto out_free;
    if (lease && json_object_set_new(o, "lease", json_integer(lease)) != 0)
        goto out_free;
    json_decref(arr);
    return post_json(m, "/metadata/cas", o, lease ? KV_EMETA_LEASE : KV_EPROTO, NULL);
out_free:
    json_decref(arr);
    json_decref(o);
    return rc;
}

static int lease_call(struct kv_meta *m, const char *op, const char *field, int64_t v,
                      int64_t *id_out)
{
    json_t *o = json_object();
    if (o && json_object_set_new(o, field, json_integer(v)) != 0) {
        json_decref(o);
        o = NULL;
    }
    if (!o)
        return KV_ENOMEM;
    char path[32];
    snprintf(path, sizeof(path), "/lease/%s", op);
    struct resp r;
    int rc = post_json(m, path, o, KV_EMETA_LEASE, &r);
    if (rc < 0)
        return rc;
    if (id_out) {
        json_t *j = NULL;
        char err[200] = "";
        rc = kv_json_parse(r.body ? r.body : "", r.len, &j, err, sizeof(err));
        json_t *idv = json_object_get(j, "id");
        if (rc == KV_OK && json_is_integer(idv) && json_integer_value(idv) > 0)
            *id_out = json_integer_value(idv);
        else
            rc = KV_EPROTO;
        json_decref(j);
    }
    resp_fini(&r);
    return rc;
}

static int http_lease_grant(struct kv_meta *m, int ttl_s, int64_t *lease)
{
    return lease_call(m, "grant", "ttl", ttl_s, lease);
}

static int http_lease_keepalive(struct kv_meta *m, int64_t lease)
{
    return lease_call(m, "keepalive", "id", lease, NULL);
}

static int http_lease_revoke(struct kv_meta *m, int64_t lease)
{
    return lease_call(m, "revoke", "id", lease, NULL);
}

/* ---- watch ---- */

/* GET /watch without 'after': the server's current revision. */
static int watch_current_rev(struct kv_meta *m, const char *prefix_esc, uint64_t *rev)
{
    struct http_impl *h = m->impl;
    size_t n = strlen(h->root) + strlen(prefix_esc) + 32;
    char *url = kv_malloc(n);
    if (url)
        snprintf(url, n, "%s/watch?prefix=%s", h->root, prefix_esc);
    struct resp r;
    int rc = call(m, "GET", url, NULL, 0, NULL, KV_ENOTSUP, &r);
    if (rc < 0)
        return rc;
    struct kv_meta_http_ev *evs = NULL;
    size_t ne = 0;
    char err[200] = "";
    rc = kv_meta_http_decode_watch(r.body ? r.body : "", r.len, rev, &evs, &ne, err, sizeof(err));
    kv_meta_http_evs_free(evs, ne);
    resp_fini(&r);
    return rc;
}

/* One long poll through w->multi; interrupted by stop. KV_ECANCELED when stopped. */
static int watch_poll(struct http_watch *w, struct resp *r)
{
    struct http_impl *h = w->m->impl;
    memset(r, 0, sizeof(*r));
    size_t n = strlen(h->root) + strlen(w->prefix_esc) + 96;
    char *url = kv_malloc(n);
    CURL *c = curl_easy_init();
    int rc = KV_ENOMEM;
    if (!url || !c)
        goto out;
    snprintf(url, n, "%s/watch?prefix=%s&after=%" PRIu64 "&timeout_ms=%d", h->root, w->prefix_esc,
             w->rev, WATCH_HOLD_MS);
    setup_easy(c, "GET", url, NULL, 0, WATCH_HOLD_MS + w->m->timeout_ms, r, NULL);
    curl_multi_add_handle(w->multi, c);
    int running = 1;
    CURLcode result = CURLE_OK;
    bool done = false;
    while (!done) {
        if (atomic_load(&w->stop)) {
            rc = KV_ECANCELED;
            break;
        }
        if (curl_multi_perform(w->multi, &running) != CURLM_OK) {
            rc = KV_EMETA_UNAVAIL;
            break;
        }
        int left;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
            if (msg->msg == CURLMSG_DONE) {
                result = msg->data.result;
                done = true;
            }
        }
        if (!done && running == 0)
            done = true;
        if (!done)
            curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
    }
    if (done) {
        if (result == CURLE_OK) {
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
            rc = KV_OK;
        } else {
            rc = KV_EMETA_UNAVAIL;
        }
    }
    curl_multi_remove_handle(w->multi, c);
out:
    if (c)
        curl_easy_cleanup(c);
    kv_free(url);
    if (rc < 0)
        resp_fini(r);
    return rc;
}

/* Sleeps up to ms, waking early on stop. */
static void watch_nap(struct http_watch *w, int ms)
{
    int64_t end = kv_now_ms() + ms;
    while (!atomic_load(&w->stop) && kv_now_ms() < end)
        curl_multi_poll(w->multi, NULL, 0, (int)KV_MAX(end - kv_now_ms(), 1), NULL);
}

static void watch_free(struct http_watch *w)
{
    if (w->multi)
        curl_multi_cleanup(w->multi);
    curl_free(w->prefix_esc);
    kv_free(w);
}

static void *watch_main(void *arg)
{
    struct http_watch *w = arg;
    struct http_impl *h = w->m->impl;
    kv_log_set_thread_name("meta-watch");
    while (!atomic_load(&w->stop)) {
        struct resp r;
        int rc = watch_poll(w, &r);
        if (rc == KV_ECANCELED)
            break;
        if (rc < 0) {
            KV_LOGW_RL(5000, "watch on %s: %s; retrying", h->root, kv_strerror(rc));
            watch_nap(w, RETRY_MS);
            continue;
        }
        rc = status_err(&r, KV_ENOTSUP);
        if (rc == KV_ERANGE) {
            resp_fini(&r);
            uint64_t rev;
            if (watch_current_rev(w->m, w->prefix_esc, &rev) == KV_OK) {
                KV_LOGW("watch on %s: the server lost events after revision %" PRIu64
                        " (restarted or too far behind); continuing from revision %" PRIu64,
                        h->root, w->rev, rev);
                w->rev = rev;
            } else {
                watch_nap(w, RETRY_MS);
            }
            continue;
        }
        struct kv_meta_http_ev *evs = NULL;
        size_t n = 0;
        uint64_t rev = w->rev;
        char err[256] = "";
        if (rc == KV_OK)
            rc = kv_meta_http_decode_watch(r.body ? r.body : "", r.len, &rev, &evs, &n, err,
                                           sizeof(err));
        resp_fini(&r);
        if (rc < 0) {
            KV_LOGW_RL(5000, "watch on %s: %s %s; retrying", h->root, kv_strerror(rc), err);
            watch_nap(w, RETRY_MS);
            continue;
        }
        for (size_t i = 0; i < n && !atomic_load(&w->stop); i++) {
            struct kv_meta_event ev = {
                .type = evs[i].type, .key = evs[i].key, .value = evs[i].val, .len = evs[i].len};
            w->fn(w->ud, &ev);
        }
        kv_meta_http_evs_free(evs, n);
        w->rev = rev;
    }
    if (atomic_load(&w->self_free))
        watch_free(w);
    return NULL;
}

static int http_watch(struct kv_meta *m, const char *prefix, kv_meta_watch_fn fn, void *ud,
                      uint64_t *id)
{
    struct http_impl *h = m->impl;
    struct http_watch *w = kv_calloc(1, sizeof(*w));
    if (!w)
        return KV_ENOMEM;
    w->m = m;
    w->fn = fn;
    w->ud = ud;
    w->prefix_esc = curl_easy_escape(NULL, prefix, 0);
    w->multi = curl_multi_init();
    int rc = KV_ENOMEM;
    if (!w->prefix_esc || !w->multi)
        goto out_free;
    rc = watch_current_rev(m, w->prefix_esc, &w->rev);
    if (rc < 0)
        goto out_free;
    pthread_mutex_lock(&h->wlock);
    rc = kv_idtab_add(&h->watches, w, id);
    if (rc == KV_OK && pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        kv_idtab_remove(&h->watches, *id);
        rc = KV_ENOMEM;
    }
    pthread_mutex_unlock(&h->wlock);
    if (rc < 0)
        goto out_free;
    return KV_OK;
out_free:
    watch_free(w);
    return rc;
}

/* Stops w (already out of the table): joins its thread, or lets it free itself when called
 * from its own callback (invariant 1). */
static void watch_stop(void *arg)
{
    struct http_watch *w = arg;
    atomic_store(&w->stop, true);
    if (pthread_equal(pthread_self(), w->thread)) {
        atomic_store(&w->self_free, true);
        pthread_detach(w->thread);
        return;
    }
    curl_multi_wakeup(w->multi);
    pthread_join(w->thread, NULL);
    watch_free(w);
}

static int http_unwatch(struct kv_meta *m, uint64_t id)
{
    struct http_impl *h = m->impl;
    return kv_meta_watch_remove(&h->watches, &h->wlock, id, watch_stop);
}

static void http_close(struct kv_meta *m)
{
    struct http_impl *h = m->impl;
    kv_meta_watch_remove_all(&h->watches, &h->wlock, watch_stop);
    kv_idtab_fini(&h->watches);
    for (int i = 0; i < h->npool; i++)
        curl_easy_cleanup(h->pool[i]);
    pthread_mutex_destroy(&h->pool_lock);
    pthread_mutex_destroy(&h->wlock);
    kv_free(h->root);
    kv_free(h->meta_url);
    kv_free(h);
    m->impl = NULL;
}

static const struct kv_meta_ops http_ops = {
    .name = "http",
    .get = http_get,
    .put = http_put,
    .del = http_del,
    .list = http_list,
    .cas = http_cas,
    .lease_grant = http_lease_grant,
    .lease_keepalive = http_lease_keepalive,
    .lease_revoke = http_lease_revoke,
    .watch = http_watch,
    .unwatch = http_unwatch,
    .close = http_close,
};

/* Splits url into root "http://HOST:PORT" with libcurl's URL parser; the path must be empty,
 * "/" or "/metadata". */
static int parse_url(const char *url, char **root)
{
    CURLU *u = curl_url();
    if (!u)
        return KV_ENOMEM;
    char *host = NULL, *port = NULL, *path = NULL, *query = NULL;
    int rc = KV_EMETA_URL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        KV_LOGE("metadata URL '%s' is malformed (want http://HOST:PORT/metadata)", url);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK && query && *query) {
        KV_LOGE("metadata URL '%s' must not have a query (want http://HOST:PORT/metadata)", url);
        goto out;
    }
    if (strcmp(path, "/") != 0 && strcmp(path, "/metadata") != 0 &&
        strcmp(path, "/metadata/") != 0) {
        KV_LOGE("metadata URL '%s': path must be /metadata (kvstash metad's endpoint)", url);
        goto out;
    }
    size_t n = strlen(host) + strlen(port) + 16;
    *root = kv_malloc(n);
    if (!*root) {
        rc = KV_ENOMEM;
        goto out;
    }
    snprintf(*root, n, "http://%s:%s", host, port);
    rc = KV_OK;
out:
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

int kv_meta_http_open(struct kv_meta *m, const char *url)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return KV_EIO;
    struct http_impl *h = kv_calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    int rc = parse_url(url, &h->root);
    if (rc < 0) {
        kv_free(h);
        return rc;
    }
    h->meta_url = join(h->root, "/metadata");
    if (!h->meta_url) {
        kv_free(h->root);
        kv_free(h);
        return KV_ENOMEM;
    }
    pthread_mutex_init(&h->pool_lock, NULL);
    pthread_mutex_init(&h->wlock, NULL);
    kv_idtab_init(&h->watches);
    m->ops = &http_ops;
    m->impl = h;
    /* reachability: any HTTP answer will do (a Mooncake server has no /health) */
    char *hurl = join(h->root, "/health");
    struct resp r;
    rc = hurl ? http_do(m, "GET", hurl, NULL, 0, NULL, &r) : KV_ENOMEM;
    kv_free(hurl);
    if (rc < 0) {
        if (rc == KV_EMETA_UNAVAIL)
            KV_LOGW("metadata server %s does not answer", h->root);
        http_close(m);
        m->ops = NULL;
        return rc;
    }
    resp_fini(&r);
    return KV_OK;
}
