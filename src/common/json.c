/* SPDX-License-Identifier: Apache-2.0 */
/* json.c - jansson glue (see json.h). The allocator hook is installed once at load. */
#include "common/json.h"

#include <stdio.h>

#include "common/alloc.h"
#include "common/buf.h"

__attribute__((constructor)) static void kv_json_init(void)
{
    json_set_alloc_funcs(kv_malloc, kv_free);
}

int kv_json_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!v) {
        if (err)
            snprintf(err, errlen, "bad JSON at line %d column %d: %s", je.line, je.column, je.text);
        return KV_EPROTO;
    }
    *out = v;
    return KV_OK;
}

static json_t *field_of(json_t *o, const char *field, char *err, size_t errlen)
{
    json_t *v = json_is_object(o) ? json_object_get(o, field) : NULL;
    if (!v && err)
        snprintf(err, errlen, "missing field \"%s\"", field);
    return v;
}

int kv_json_get_str(json_t *o, const char *field, const char **out, char *err, size_t errlen)
{
    json_t *v = field_of(o, field, err, errlen);
    if (!v)
        return KV_EPROTO;
    if (!json_is_string(v)) {
        if (err)
            snprintf(err, errlen, "field \"%s\" must be a string", field);
        return KV_EPROTO;
    }
    *out = json_string_value(v);
    return KV_OK;
}

int kv_json_get_int(json_t *o, const char *field, int64_t *out, char *err, size_t errlen)
{
    json_t *v = field_of(o, field, err, errlen);
    if (!v)
        return KV_EPROTO;
    if (!json_is_integer(v)) {
        if (err)
            snprintf(err, errlen, "field \"%s\" must be an integer", field);
        return KV_EPROTO;
    }
    *out = json_integer_value(v);
    return KV_OK;
}

int kv_json_get_u64(json_t *o, const char *field, uint64_t *out, char *err, size_t errlen)
{
    int64_t v;
    int rc = kv_json_get_int(o, field, &v, err, errlen);
    if (rc < 0)
        return rc;
    if (v < 0) {
        if (err)
            snprintf(err, errlen, "field \"%s\" must not be negative", field);
        return KV_EPROTO;
    }
    *out = (uint64_t)v;
    return KV_OK;
}

struct dump_sink {
    struct kv_buf b;
    bool failed; /* sticky */
};

static int dump_cb(const char *p, size_t n, void *ud)
{
    struct dump_sink *d = ud;
    if (d->failed || kv_buf_append(&d->b, p, n) < 0) {
        d->failed = true;
        return -1;
    }
    return 0;
}

/* Not json_dumps(): jansson 2.14 ignores a failed write of an object key and goes on, so under
 * memory pressure it can return malformed JSON; the sticky flag here catches every failure. */
char *kv_json_dump(const json_t *v)
{
    struct dump_sink d = {.failed = false};
    kv_buf_init(&d.b);
    if (json_dump_callback(v, dump_cb, &d, JSON_COMPACT) != 0 || d.failed) {
        kv_buf_fini(&d.b);
        return NULL;
    }
    return kv_buf_steal(&d.b, NULL);
}
