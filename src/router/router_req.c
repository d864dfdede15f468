/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_req.c - pure helpers of the router: engine URL normalisation, inspection of OpenAI
 * request bodies (the untrusted input fuzzed by tests/fuzz/fuzz_router_request.c) and
 * OpenAI-style error bodies.
 *
 * Design: URLs are parsed by libevent's evhttp_uri parser, JSON by jansson; nothing here is
 * hand-parsed. Every function is stateless and thread-safe; results are owned by the caller.
 */
#include <ctype.h>
#include <event2/http.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "router/router_int.h"

int kv_rt_url_normalize(const char *url, char *out, size_t outlen, char *host, size_t hostlen,
                        uint16_t *port, char *path, size_t pathlen, char *err, size_t errlen)
{
    if (!url || !*url) {
        snprintf(err, errlen, "empty engine URL");
        return KV_EINVAL;
    }
    struct kv_buf b;
    kv_buf_init(&b);
    int rc = strstr(url, "://") ? kv_buf_appends(&b, url) : kv_buf_appendf(&b, "http://%s", url);
    if (rc < 0) {
        kv_buf_fini(&b);
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    rc = KV_EINVAL;
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(b.data, 0);
    if (!u) {
        snprintf(err, errlen, "bad engine URL '%s'", url);
        goto out;
    }
    const char *scheme = evhttp_uri_get_scheme(u);
    const char *h = evhttp_uri_get_host(u);
    int p = evhttp_uri_get_port(u);
    const char *pa = evhttp_uri_get_path(u);
    if (!scheme || strcasecmp(scheme, "http") != 0) {
        snprintf(err, errlen, "engine URL '%s': only http:// is supported", url);
        goto out_uri;
    }
    if (!h || !*h) {
        snprintf(err, errlen, "engine URL '%s' has no host", url);
        goto out_uri;
    }
    if (evhttp_uri_get_query(u) || evhttp_uri_get_fragment(u) || evhttp_uri_get_userinfo(u)) {
        snprintf(err, errlen, "engine URL '%s' must not carry a query, fragment or user", url);
        goto out_uri;
    }
    if (p == 0 || p > 65535) {
        snprintf(err, errlen, "engine URL '%s' has a bad port", url);
        goto out_uri;
    }
    if (p < 0)
        p = 80;
    char hl[256];
    size_t hn = strlen(h);
    if (hn >= 2 && h[0] == '[' && h[hn - 1] == ']') { /* IPv6 literal */
        h++;
        hn -= 2;
    }
    if (hn >= sizeof(hl)) {
        snprintf(err, errlen, "engine URL '%s': host too long", url);
        goto out_uri;
    }
    for (size_t i = 0; i < hn; i++)
        hl[i] = (char)tolower((unsigned char)h[i]);
    hl[hn] = '\0';
    if (strcmp(hl, "localhost") == 0)
        snprintf(hl, sizeof(hl), "127.0.0.1");
    char pl[512];
    size_t pn = pa ? strlen(pa) : 0;
    if (pn >= sizeof(pl)) {
        snprintf(err, errlen, "engine URL '%s': path too long", url);
        goto out_uri;
    }
    if (pn)
        memcpy(pl, pa, pn);
    while (pn > 0 && pl[pn - 1] == '/')
        pn--;
    pl[pn] = '\0';
    bool v6 = strchr(hl, ':') != NULL;
    int n = snprintf(out, outlen, "http://%s%s%s:%d%s", v6 ? "[" : "", hl, v6 ? "]" : "", p, pl);
    if (n < 0 || (size_t)n >= outlen) {
        snprintf(err, errlen, "engine URL '%s' too long", url);
        goto out_uri;
    }
    if (host && snprintf(host, hostlen, "%s", hl) >= (int)hostlen) {
        snprintf(err, errlen, "engine URL '%s': host too long", url);
        goto out_uri;
    }
    if (port)
        *port = (uint16_t)p;
    if (path && snprintf(path, pathlen, "%s", pl) >= (int)pathlen) {
        snprintf(err, errlen, "engine URL '%s': path too long", url);
        goto out_uri;
    }
    rc = KV_OK;
out_uri:
    evhttp_uri_free(u);
out:
    kv_buf_fini(&b);
    return rc;
}

void kv_rt_reqinfo_fini(struct kv_rt_reqinfo *ri)
{
    if (!ri)
        return;
    kv_free(ri->model);
    kv_free(ri->user);
    kv_free(ri->text);
    memset(ri, 0, sizeof(*ri));
}

/* Appends the text of an OpenAI "content" value (string, or array of parts). */
static int append_content(struct kv_buf *b, json_t *c)
{
    if (json_is_string(c))
        return kv_buf_append(b, json_string_value(c), json_string_length(c));
    if (!json_is_array(c))
        return KV_OK;
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (json_is_string(t)) {
            int rc = kv_buf_append(b, json_string_value(t), json_string_length(t));
            if (rc < 0)
                return rc;
        } else if (json_is_string(part)) {
            int rc = kv_buf_append(b, json_string_value(part), json_string_length(part));
            if (rc < 0)
                return rc;
        }
    }
    return KV_OK;
}

static int append_prompt(struct kv_buf *b, json_t *p)
{
    if (json_is_string(p))
        return kv_buf_append(b, json_string_value(p), json_string_length(p));
    if (!json_is_array(p))
        return KV_OK; /* token ids or absent */
    size_t i;
    json_t *e;
    json_array_foreach(p, i, e)
    {
        if (json_is_string(e)) {
            int rc = kv_buf_append(b, json_string_value(e), json_string_length(e));
            if (rc < 0)
                return rc;
        }
    }
    return KV_OK;
}

int kv_rt_inspect(const char *body, size_t len, struct kv_rt_reqinfo *out, char *err, size_t errlen)
{
    return kv_rt_inspect_ex(body, len, true, out, err, errlen);
}

int kv_rt_inspect_ex(const char *body, size_t len, bool want_text, struct kv_rt_reqinfo *out,
                     char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    json_t *root;
    char jerr[200];
    int rc = kv_json_parse(body, len, &root, jerr, sizeof(jerr));
    if (rc < 0) {
        snprintf(err, errlen, "%s", jerr);
        return KV_EPROTO;
    }
    struct kv_rt_reqinfo ri;
    memset(&ri, 0, sizeof(ri));
    struct kv_buf b;
    kv_buf_init(&b);
    rc = KV_EPROTO;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "request body must be a JSON object");
        goto out;
    }
    json_t *m = json_object_get(root, "model");
    if (!m) {
        snprintf(err, errlen, "missing field \"model\"");
        goto out;
    }
    if (!json_is_string(m) || json_string_length(m) == 0) {
        snprintf(err, errlen, "field \"model\" must be a non-empty string");
        goto out;
    }
    if (strlen(json_string_value(m)) != json_string_length(m)) {
        snprintf(err, errlen, "field \"model\" must not contain NUL");
        goto out;
    }
    rc = KV_ENOMEM;
    ri.model = kv_strdup(json_string_value(m));
    if (!ri.model)
        goto out;
    json_t *u = json_object_get(root, "user");
    if (json_is_string(u)) {
        ri.user = kv_strndup(json_string_value(u), json_string_length(u));
        if (!ri.user)
            goto out;
    }
    json_t *s = json_object_get(root, "stream");
    ri.stream = json_is_true(s);
    json_t *msgs = json_object_get(root, "messages");
    if (!want_text) {
        /* the policy needs only the model (and user): no prompt text, est_tokens from
         * max_tokens alone */
    } else if (json_is_array(msgs)) {
        size_t i;
        json_t *msg;
        json_array_foreach(msgs, i, msg)
        {
            json_t *role = json_object_get(msg, "role");
            if (json_is_string(role) &&
                (kv_buf_append(&b, json_string_value(role), json_string_length(role)) < 0 ||
                 kv_buf_append(&b, ": ", 2) < 0))
                goto out;
            if (append_content(&b, json_object_get(msg, "content")) < 0 ||
                kv_buf_append(&b, "\n", 1) < 0)
                goto out;
        }
    } else if (append_prompt(&b, json_object_get(root, "prompt")) < 0 ||
               append_prompt(&b, json_object_get(root, "input")) < 0) {
        goto out;
    }
    if (want_text && !b.data && kv_buf_append(&b, "", 0) < 0) /* allocates the empty string */
        goto out;
    if (want_text) {
        ri.text = kv_buf_steal(&b, &ri.text_len);
        if (!ri.text)
            goto out;
    }
    ri.est_tokens = (int64_t)((ri.text_len + 3) / 4);
    json_t *mt = json_object_get(root, "max_tokens");
    if (!json_is_integer(mt))
        mt = json_object_get(root, "max_completion_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0 && json_integer_value(mt) < (1 << 24))
        ri.est_tokens += json_integer_value(mt);
    *out = ri;
    memset(&ri, 0, sizeof(ri));
    rc = KV_OK;
out:
    if (rc == KV_ENOMEM)
        snprintf(err, errlen, "out of memory");
    kv_rt_reqinfo_fini(&ri);
    kv_buf_fini(&b);
    json_decref(root);
    return rc;
}

char *kv_rt_error_body(const char *msg, const char *type, int code)
{
    json_t *o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", msg ? msg : "", "type",
                          type ? type : "error", "code", code);
    if (!o)
        return NULL;
    char *s = kv_json_dump(o);
    json_decref(o);
    return s;
}
