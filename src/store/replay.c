/* SPDX-License-Identifier: Apache-2.0 */
/*
 * replay.c - Mooncake trace replay against the store: the trace-line parser (fuzzed by
 * tests/fuzz/fuzz_trace_line.c) and the replay loop behind `kvstash replay`.
 *
 * Design:
 *   - A line is parsed with jansson into a struct kv_trace_req; every field is type- and
 *     range-checked and a failure names the field (the caller adds the line number).
 *   - Lines are read through a kv_buf (no getline: its buffer would come from raw malloc), so
 *     a line of any length works and a NUL byte inside a line is reported, not truncated.
 *   - Per request: one kv_store_batch_exists for all its blocks (one master round trip), the
 *     hit prefix is counted, then the missing blocks are put with kv_store_batch_put in chunks
 *     of at most 256 blocks or 64 MiB (one PUT_START/PUT_END pair per chunk). Block content:
 *     the first 8 bytes are the hash id, the rest a pattern derived from it, so a block read
 *     back under the wrong key is detected.
 * Thread model: runs on the caller's thread; the store may be shared with other threads.
 */
#define KV_LOG_COMPONENT "replay"
#include "store/replay.h"

#include <inttypes.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"

void kv_trace_req_fini(struct kv_trace_req *r)
{
    if (!r)
        return;
    kv_free(r->hash_ids);
    memset(r, 0, sizeof(*r));
}

static int get_nonneg(json_t *root, const char *field, bool required, int64_t *out, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(root, field);
    if (!v) {
        if (required) {
            snprintf(err, errlen, "missing field \"%s\"", field);
            return KV_EPROTO;
        }
        *out = -1;
        return KV_OK;
    }
    if (!json_is_integer(v)) {
        snprintf(err, errlen, "field \"%s\" is not an integer", field);
        return KV_EPROTO;
    }
    json_int_t x = json_integer_value(v);
    if (x < 0) {
        snprintf(err, errlen, "field \"%s\" is negative (%lld)", field, (long long)x);
        return KV_EPROTO;
    }
    *out = (int64_t)x;
    return KV_OK;
}

int kv_trace_parse_line(const char *line, size_t len, struct kv_trace_req *out, char *err,
                        size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (memchr(line, '\0', len)) {
        snprintf(err, errlen, "NUL byte inside the line");
        return KV_EPROTO;
    }
    json_t *root = NULL;
    int rc = kv_json_parse(line, len, &root, err, errlen);
    if (rc < 0)
        return KV_EPROTO;
    struct kv_trace_req r = {0};
    rc = KV_EPROTO;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "not a JSON object");
        goto out_root;
    }
    if (get_nonneg(root, "timestamp", true, &r.timestamp_ms, err, errlen) < 0 ||
        get_nonneg(root, "input_length", false, &r.input_length, err, errlen) < 0 ||
        get_nonneg(root, "output_length", false, &r.output_length, err, errlen) < 0)
        goto out_root;
    json_t *ids = json_object_get(root, "hash_ids");
    if (!ids) {
        snprintf(err, errlen, "missing field \"hash_ids\"");
        goto out_root;
    }
    if (!json_is_array(ids)) {
        snprintf(err, errlen, "field \"hash_ids\" is not an array");
        goto out_root;
    }
    size_t n = json_array_size(ids);
    if (n > KV_TRACE_MAX_IDS) {
        snprintf(err, errlen, "field \"hash_ids\" has %zu entries (at most %d)", n,
                 KV_TRACE_MAX_IDS);
        goto out_root;
    }
    if (n) {
        r.hash_ids = kv_malloc(n * sizeof(*r.hash_ids));
        if (!r.hash_ids) {
            snprintf(err, errlen, "out of memory");
            rc = KV_ENOMEM;
            goto out_root;
        }
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(ids, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(err, errlen, "hash_ids[%zu] is not an integer >= 0", i);
            goto out_ids;
        }
        r.hash_ids[i] = (uint64_t)json_integer_value(v);
    }
    r.n_ids = n;
    *out = r;
    json_decref(root);
    return KV_OK;
out_ids:
    kv_free(r.hash_ids);
out_root:
    json_decref(root);
    return rc;
}

/* Reads one line (without its '\n') into b. Returns 1 for a line, 0 at end of file, or a
 * negative error. */
static int read_line(FILE *f, struct kv_buf *b, uint64_t *pos)
{
    kv_buf_reset(b);
    char chunk[65536];
    bool any = false;
    for (;;) {
        size_t got = 0;
        int c = 0;
        /* getc_unlocked keeps NUL bytes (fgets would hide them) and is cheap enough */
        while (got < sizeof(chunk) && (c = getc_unlocked(f)) != EOF) {
            chunk[got++] = (char)c;
            if (c == '\n')
                break;
        }
        if (got == 0) {
            if (ferror(f))
                return KV_EIO;
            return any ? 1 : 0;
        }
        any = true;
        *pos += got;
        bool nl = chunk[got - 1] == '\n';
        if (kv_buf_append(b, chunk, nl ? got - 1 : got) < 0)
            return KV_ENOMEM;
        if (nl || c == EOF)
            return 1;
    }
}

static void fill_block(uint8_t *p, uint64_t len, uint64_t id)
{
    uint64_t x = id * 0x9E3779B97F4A7C15ull + 1;
    uint64_t i = 0;
    if (len >= 8) {
        memcpy(p, &id, 8);
        i = 8;
    }
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(id + i);
}

struct replay_ctx {
    struct kv_store *s;
    const struct kv_replay_opts *o;
    struct kv_replay_stats *st;
    uint64_t block;
    size_t chunk;    /* blocks per batch_put */
    char **keys;     /* chunk keys (reused, grown to the request size) */
    size_t keys_cap; /* allocated entries of keys / results */
    int *results;
    uint8_t *data; /* chunk * block bytes */
    const void **bufs;
    size_t *lens;
    size_t *caps;
    void **gbufs;
};

static int ensure_keys(struct replay_ctx *c, size_t n)
{
    if (n <= c->keys_cap)
        return KV_OK;
    char **k = kv_realloc(c->keys, n * sizeof(*k));
    if (!k)
        return KV_ENOMEM;
    c->keys = k;
    for (size_t i = c->keys_cap; i < n; i++)
        c->keys[i] = NULL;
    int *r = kv_realloc(c->results, n * sizeof(*r));
    if (!r)
        return KV_ENOMEM;
    c->results = r;
    for (size_t i = c->keys_cap; i < n; i++) {
        c->keys[i] = kv_malloc(strlen(c->o->key_prefix) + 24);
        if (!c->keys[i]) {
            c->keys_cap = i;
            return KV_ENOMEM;
        }
    }
    c->keys_cap = n;
    return KV_OK;
}

static int replay_one(struct replay_ctx *c, const struct kv_trace_req *r, char *err, size_t errlen)
{
    struct kv_replay_stats *st = c->st;
    size_t n = r->n_ids;
    st->requests++;
    if (n == 0)
        return KV_OK;
    int rc = ensure_keys(c, n);
    if (rc < 0)
        goto out_err;
    size_t plen = strlen(c->o->key_prefix);
    for (size_t i = 0; i < n; i++) {
        memcpy(c->keys[i], c->o->key_prefix, plen);
        snprintf(c->keys[i] + plen, 24, "/%" PRIu64, r->hash_ids[i]);
    }
    rc = kv_store_batch_exists(c->s, n, (const char *const *)c->keys, c->results);
    if (rc < 0)
        goto out_err;
    size_t hits = 0;
    while (hits < n && c->results[hits] == 1)
        hits++;
    st->blocks += n;
    st->hit_blocks += hits;
    /* read the hit prefix back, as an engine loading its cached prefix would */
    for (size_t off = 0; c->o->get_hits && off < hits; off += c->chunk) {
        size_t m = KV_MIN(c->chunk, hits - off);
        for (size_t i = 0; i < m; i++) {
            c->gbufs[i] = c->data + i * c->block;
            c->caps[i] = c->block;
        }
        rc = kv_store_batch_get(c->s, m, (const char *const *)c->keys + off, c->gbufs, c->caps,
                                c->lens, c->results);
        if (rc < 0)
            goto out_err;
        for (size_t i = 0; i < m; i++) {
            uint64_t id = 0;
            if (c->results[i] == KV_OK && c->lens[i] >= 8)
                memcpy(&id, c->gbufs[i], 8);
            if (c->results[i] != KV_OK || c->lens[i] != c->block ||
                (c->block >= 8 && id != r->hash_ids[off + i])) {
                st->get_failed++;
                continue;
            }
            st->bytes_read += c->lens[i];
        }
    }
    for (size_t off = hits; off < n; off += c->chunk) {
        size_t m = KV_MIN(c->chunk, n - off);
        for (size_t i = 0; i < m; i++) {
            uint8_t *p = c->data + i * c->block;
            fill_block(p, c->block, r->hash_ids[off + i]);
            c->bufs[i] = p;
            c->lens[i] = c->block;
        }
        rc = kv_store_batch_put(c->s, m, (const char *const *)c->keys + off, c->bufs, c->lens,
                                &c->o->put, c->results);
        if (rc < 0)
            goto out_err;
        for (size_t i = 0; i < m; i++) {
            if (c->results[i] == KV_OK) {
                st->put_blocks++;
                st->bytes_written += c->block;
            } else if (c->results[i] == KV_EEXIST) {
                st->put_exist++;
            } else {
                st->put_failed++;
                KV_LOGD("put %s: %s", c->keys[off + i], kv_strerror(c->results[i]));
            }
        }
    }
    return KV_OK;
out_err:
    snprintf(err, errlen, "request %" PRIu64 ": store: %s", st->requests, kv_strerror(rc));
    return rc;
}

int kv_replay_run(struct kv_store *s, FILE *f, uint64_t total, const struct kv_replay_opts *o,
                  struct kv_replay_stats *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    if (!s || !f || !o || !o->key_prefix || o->speed < 0) {
        snprintf(err, errlen, "bad replay options");
        return KV_EINVAL;
    }
    struct replay_ctx c = {.s = s, .o = o, .st = st};
    c.block = o->block_bytes ? o->block_bytes : KV_REPLAY_DEFAULT_BLOCK;
    c.chunk = (size_t)KV_MAX(1, KV_MIN(256, (64ull << 20) / c.block));
    int rc = KV_ENOMEM;
    c.data = kv_malloc(c.chunk * c.block);
    c.bufs = kv_calloc(c.chunk, sizeof(*c.bufs));
    c.lens = kv_calloc(c.chunk, sizeof(*c.lens));
    c.caps = kv_calloc(c.chunk, sizeof(*c.caps));
    c.gbufs = kv_calloc(c.chunk, sizeof(*c.gbufs));
    struct kv_buf line;
    kv_buf_init(&line);
    if (!c.data || !c.bufs || !c.lens || !c.caps || !c.gbufs) {
        snprintf(err, errlen, "out of memory (block buffers of %" PRIu64 " bytes)",
                 (uint64_t)(c.chunk * c.block));
        goto out;
    }
    int64_t start_us = kv_now_us();
    int64_t t0 = -1;
    uint64_t pos = 0;
    for (;;) {
        if (o->max_requests && st->requests >= o->max_requests)
            break;
        rc = read_line(f, &line, &pos);
        if (rc < 0) {
            snprintf(err, errlen, "line %" PRIu64 ": read error: %s", st->lines + 1,
                     kv_strerror(rc));
            goto out;
        }
        if (rc == 0)
            break;
        st->lines++;
        size_t l = line.len;
        while (l &&
               (line.data[l - 1] == '\r' || line.data[l - 1] == ' ' || line.data[l - 1] == '\t'))
            l--;
        if (l == 0)
            continue;
        struct kv_trace_req r;
        char perr[256];
        rc = kv_trace_parse_line(line.data, l, &r, perr, sizeof(perr));
        if (rc < 0) {
            snprintf(err, errlen, "line %" PRIu64 ": %s", st->lines, perr);
            goto out;
        }
        if (o->speed > 0) {
            if (t0 < 0)
                t0 = r.timestamp_ms;
            double due_us = (double)(r.timestamp_ms - t0) * 1000.0 / o->speed;
            int64_t now = kv_now_us() - start_us;
            if (due_us > (double)now) {
                int64_t wait_ms = (int64_t)((due_us - (double)now) / 1000.0);
                if (wait_ms > 0)
                    kv_sleep_ms((int)KV_MIN(wait_ms, (int64_t)1 << 30));
            }
        }
        if ((uint64_t)r.timestamp_ms > st->trace_ms)
            st->trace_ms = (uint64_t)r.timestamp_ms;
        rc = replay_one(&c, &r, err, errlen);
        kv_trace_req_fini(&r);
        if (rc < 0)
            goto out;
        st->elapsed_s = (double)(kv_now_us() - start_us) / 1e6;
        if (o->progress)
            o->progress(o->ud, st, pos, total);
    }
    st->elapsed_s = (double)(kv_now_us() - start_us) / 1e6;
    rc = KV_OK;
out:
    kv_buf_fini(&line);
    for (size_t i = 0; i < c.keys_cap; i++)
        kv_free(c.keys[i]);
    kv_free(c.keys);
    kv_free(c.results);
    kv_free(c.data);
    kv_free(c.bufs);
    kv_free(c.lens);
    kv_free(c.caps);
    kv_free(c.gbufs);
    return rc;
}
