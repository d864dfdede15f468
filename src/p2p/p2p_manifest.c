/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p_manifest.c - the P2P manifest and peer-record codecs (JSON through jansson).
 *
 * Manifest (docs/p2p.md):
 *   {"version":1,"name":"N","chunk_size":C,"size":S,
 *    "files":[{"path":"a/b.bin","size":X},...],"chunks":["<16 hex>",...]}
 * Chunks never span files: file i owns ceil(size_i / C) consecutive chunks, in file order. The
 * decoder is strict (it is fed by the network): every field present with its type, no unknown
 * field, version 1, paths relative without "." / ".." / empty components / control characters,
 * unique paths, sizes and counts in range, the chunk list exactly as long as the sizes imply,
 * "size" equal to the sum. Fuzzed by tests/fuzz/fuzz_p2p_manifest.c.
 *
 * Peer record: {"peer":"ID","publisher":B,"segs":["seg",...],"have":"<hex bitmap>",
 *   "claims":"<hex bitmap>"} with one segment name per file ("" for an empty file) and bitmaps
 * of exactly ceil(nchunks / 8) bytes, bit i of byte i/8 (LSB first) = chunk i.
 *
 * Stateless; thread-safe.
 */
#define KV_LOG_COMPONENT "p2p"
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/util.h"
#include "p2p/p2p_int.h"

#define ERR(...)                                                                                   \
    do {                                                                                           \
        if (err && errlen)                                                                         \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
    } while (0)

bool kv_p2p_name_ok(const char *name)
{
    if (!name || !*name || name[0] == '.')
        return false;
    size_t n = 0;
    for (const char *c = name; *c; c++, n++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-';
        if (!ok || n >= KV_P2P_NAME_MAX)
            return false;
    }
    return true;
}

bool kv_p2p_path_ok(const char *path)
{
    if (!path || !*path || path[0] == '/')
        return false;
    size_t n = strnlen(path, KV_P2P_MAX_PATH + 1);
    if (n > KV_P2P_MAX_PATH)
        return false;
    const char *comp = path;
    for (const char *c = path;; c++) {
        if (*c && (unsigned char)*c < 0x20)
            return false;
        if (*c == 0x7f)
            return false;
        if (*c == '/' || *c == '\0') {
            size_t len = (size_t)(c - comp);
            if (len == 0)
                return false;
            if ((len == 1 && comp[0] == '.') || (len == 2 && comp[0] == '.' && comp[1] == '.'))
                return false;
            if (!*c)
                break;
            comp = c + 1;
        }
    }
    return true;
}

int kv_p2p_manifest_layout(struct kv_p2p_manifest *m)
{
    if (m->chunk_size < KV_P2P_MIN_CHUNK || m->chunk_size > KV_P2P_MAX_CHUNK)
        return KV_ERANGE;
    uint64_t next = 0, total = 0;
    for (size_t i = 0; i < m->nfiles; i++) {
        struct kv_p2p_file *f = &m->files[i];
        if (f->size > KV_P2P_MAX_SIZE)
            return KV_ERANGE;
        f->first_chunk = next;
        f->nchunks = (f->size + m->chunk_size - 1) / m->chunk_size;
        next += f->nchunks;
        total += f->size;
        if (next > KV_P2P_MAX_CHUNKS)
            return KV_ERANGE;
    }
    m->nchunks = next;
    m->size = total;
    return KV_OK;
}

void kv_p2p_chunk_locate(const struct kv_p2p_manifest *m, uint64_t chunk, size_t *file,
                         uint64_t *offset, uint64_t *len)
{
    /* binary search for the last file with first_chunk <= chunk and nchunks > 0 */
    size_t lo = 0, hi = m->nfiles;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->files[mid].first_chunk <= chunk)
            lo = mid;
        else
            hi = mid;
    }
    while (m->files[lo].nchunks == 0 || chunk >= m->files[lo].first_chunk + m->files[lo].nchunks)
        lo++; /* skip empty files sharing the same first_chunk */
    const struct kv_p2p_file *f = &m->files[lo];
    uint64_t off = (chunk - f->first_chunk) * m->chunk_size;
    *file = lo;
    *offset = off;
    *len = KV_MIN(f->size - off, m->chunk_size);
}

void kv_p2p_manifest_fini(struct kv_p2p_manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfiles; i++)
        kv_free(m->files[i].path);
    kv_free(m->files);
    kv_free(m->sums);
    kv_free(m->name);
    memset(m, 0, sizeof(*m));
}

bool kv_p2p_manifest_equal(const struct kv_p2p_manifest *a, const struct kv_p2p_manifest *b)
{
    if (a->chunk_size != b->chunk_size || a->nfiles != b->nfiles || a->nchunks != b->nchunks)
        return false;
    for (size_t i = 0; i < a->nfiles; i++)
        if (a->files[i].size != b->files[i].size || strcmp(a->files[i].path, b->files[i].path))
            return false;
    return a->nchunks == 0 || memcmp(a->sums, b->sums, a->nchunks * sizeof(uint64_t)) == 0;
}

int kv_p2p_manifest_encode(const struct kv_p2p_manifest *m, char **out, size_t *len)
{
    int rc = KV_ENOMEM;
    json_t *o = json_object(), *files = json_array(), *chunks = json_array();
    if (!o || !files || !chunks)
        goto out;
    for (size_t i = 0; i < m->nfiles; i++) {
        json_t *f =
            json_pack("{s:s,s:I}", "path", m->files[i].path, "size", (json_int_t)m->files[i].size);
        if (!f || json_array_append_new(files, f) < 0)
            goto out;
    }
    for (uint64_t i = 0; i < m->nchunks; i++) {
        char hex[17];
        snprintf(hex, sizeof(hex), "%016" PRIx64, m->sums[i]);
        if (json_array_append_new(chunks, json_string(hex)) < 0)
            goto out;
    }
    if (json_object_set_new(o, "version", json_integer(KV_P2P_MANIFEST_VERSION)) < 0 ||
        json_object_set_new(o, "name", json_string(m->name ? m->name : "")) < 0 ||
        json_object_set_new(o, "chunk_size", json_integer((json_int_t)m->chunk_size)) < 0 ||
        json_object_set_new(o, "size", json_integer((json_int_t)m->size)) < 0)
        goto out;
    if (json_object_set(o, "files", files) < 0 || json_object_set(o, "chunks", chunks) < 0)
        goto out;
    char *txt = kv_json_dump(o);
    if (!txt)
        goto out;
    *out = txt;
    *len = strlen(txt);
    rc = KV_OK;
out:
    json_decref(files);
    json_decref(chunks);
    json_decref(o);
    return rc;
}

/* Checks that o has exactly the given keys. */
static int only_keys(json_t *o, const char *const *keys, size_t n, const char *what, char *err,
                     size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        bool known = false;
        for (size_t i = 0; i < n; i++)
            if (strcmp(k, keys[i]) == 0)
                known = true;
        if (!known) {
            ERR("%s: unknown field '%s'", what, k);
            return KV_EPROTO;
        }
    }
    return KV_OK;
}

static int get_u64(json_t *o, const char *field, uint64_t max, uint64_t *out, char *err,
                   size_t errlen)
{
    json_t *v = json_object_get(o, field);
    if (!v || !json_is_integer(v)) {
        ERR("field '%s' missing or not an integer", field);
        return KV_EPROTO;
    }
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i > max) {
        ERR("field '%s' out of range (%" PRId64 ")", field, (int64_t)i);
        return KV_EPROTO;
    }
    *out = (uint64_t)i;
    return KV_OK;
}

static int parse_hex64(const char *s, uint64_t *out)
{
    if (strlen(s) != 16)
        return KV_EPROTO;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return KV_EPROTO;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return KV_OK;
}

int kv_p2p_manifest_decode(const char *data, size_t len, struct kv_p2p_manifest *m, char *err,
                           size_t errlen)
{
    static const char *const top[] = {"version", "name", "chunk_size", "size", "files", "chunks"};
    static const char *const fkeys[] = {"path", "size"};
    struct kv_p2p_manifest t = {0};
    json_t *o = NULL;
    int rc = kv_json_parse(data, len, &o, err, errlen);
    if (rc < 0)
        return rc;
    rc = KV_EPROTO;
    if (!json_is_object(o)) {
        ERR("manifest is not a JSON object");
        goto out;
    }
    if (only_keys(o, top, KV_ARRAY_SIZE(top), "manifest", err, errlen) < 0)
        goto out;
    uint64_t ver, size;
    if (get_u64(o, "version", 1000, &ver, err, errlen) < 0)
        goto out;
    if (ver != KV_P2P_MANIFEST_VERSION) {
        ERR("unsupported manifest version %" PRIu64, ver);
        goto out;
    }
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || !kv_p2p_name_ok(json_string_value(name))) {
        ERR("field 'name' missing or not a valid set name");
        goto out;
    }
    if (get_u64(o, "chunk_size", KV_P2P_MAX_CHUNK, &t.chunk_size, err, errlen) < 0 ||
        get_u64(o, "size", UINT64_MAX >> 1, &size, err, errlen) < 0)
        goto out;
    if (t.chunk_size < KV_P2P_MIN_CHUNK) {
        ERR("field 'chunk_size' below %llu", (unsigned long long)KV_P2P_MIN_CHUNK);
        goto out;
    }
    json_t *files = json_object_get(o, "files"), *chunks = json_object_get(o, "chunks");
    if (!json_is_array(files) || !json_is_array(chunks)) {
        ERR("fields 'files' and 'chunks' must be arrays");
        goto out;
    }
    size_t nf = json_array_size(files);
    if (nf > KV_P2P_MAX_FILES) {
        ERR("too many files (%zu)", nf);
        goto out;
    }
    t.name = kv_strdup(json_string_value(name));
    t.files = kv_calloc(nf ? nf : 1, sizeof(*t.files));
    if (!t.name || !t.files) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nf; i++) {
        json_t *f = json_array_get(files, i);
        if (!json_is_object(f)) {
            ERR("files[%zu] is not an object", i);
            goto out;
        }
        if (only_keys(f, fkeys, KV_ARRAY_SIZE(fkeys), "file", err, errlen) < 0)
            goto out;
        json_t *p = json_object_get(f, "path");
        if (!json_is_string(p) || !kv_p2p_path_ok(json_string_value(p))) {
            ERR("files[%zu]: path missing or not a safe relative path", i);
            goto out;
        }
        if (get_u64(f, "size", KV_P2P_MAX_SIZE, &t.files[i].size, err, errlen) < 0)
            goto out;
        const char *ps = json_string_value(p);
        for (size_t j = 0; j < i; j++) {
            const char *q = t.files[j].path;
            size_t lq = strlen(q), lp = strlen(ps);
            /* a path equal to another, or one being a directory prefix of another */
            if (strcmp(q, ps) == 0 || (lq < lp && strncmp(q, ps, lq) == 0 && ps[lq] == '/') ||
                (lp < lq && strncmp(q, ps, lp) == 0 && q[lp] == '/')) {
                ERR("files[%zu]: path '%s' clashes with files[%zu]", i, ps, j);
                goto out;
            }
        }
        t.files[i].path = kv_strdup(ps);
        t.nfiles = i + 1;
        if (!t.files[i].path) {
            rc = KV_ENOMEM;
            goto out;
        }
    }
    int lrc = kv_p2p_manifest_layout(&t);
    if (lrc < 0) {
        ERR("file sizes out of range (too many chunks)");
        goto out;
    }
    if (t.size != size) {
        ERR("field 'size' (%" PRIu64 ") differs from the sum of file sizes (%" PRIu64 ")", size,
            t.size);
        goto out;
    }
    if (json_array_size(chunks) != t.nchunks) {
        ERR("'chunks' has %zu checksums, the sizes need %" PRIu64, json_array_size(chunks),
            t.nchunks);
        goto out;
    }
    t.sums = kv_calloc(t.nchunks ? t.nchunks : 1, sizeof(uint64_t));
    if (!t.sums) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < t.nchunks; i++) {
        json_t *c = json_array_get(chunks, i);
        if (!json_is_string(c) || parse_hex64(json_string_value(c), &t.sums[i]) < 0) {
            ERR("chunks[%" PRIu64 "] is not 16 lowercase hex digits", i);
            goto out;
        }
    }
    *m = t;
    memset(&t, 0, sizeof(t));
    rc = KV_OK;
out:
    kv_p2p_manifest_fini(&t);
    json_decref(o);
    return rc;
}

/* ------------------------------------------------------------------ peer records */

static char *hex_encode(const uint8_t *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *s = kv_malloc(2 * n + 1);
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        s[2 * i] = digits[b[i] >> 4];
        s[2 * i + 1] = digits[b[i] & 15];
    }
    s[2 * n] = '\0';
    return s;
}

static int hex_decode(const char *s, uint8_t *b, size_t n)
{
    if (strlen(s) != 2 * n)
        return KV_EPROTO;
    for (size_t i = 0; i < 2 * n; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return KV_EPROTO;
        if (i & 1)
            b[i / 2] = (uint8_t)(b[i / 2] | d);
        else
            b[i / 2] = (uint8_t)(d << 4);
    }
    return KV_OK;
}

int kv_p2p_peer_encode(const struct kv_p2p_peer *p, char **out, size_t *len)
{
    size_t nb = (size_t)((p->nchunks + 7) / 8);
    int rc = KV_ENOMEM;
    char *have = hex_encode(p->have, nb), *claims = hex_encode(p->claims, nb);
    json_t *segs = json_array(), *o = NULL;
    if (!have || !claims || !segs)
        goto out;
    for (size_t i = 0; i < p->nsegs; i++)
        if (json_array_append_new(segs, json_string(p->segs[i])) < 0)
            goto out;
    o = json_pack("{s:s,s:b,s:O,s:s,s:s}", "peer", p->id, "publisher", p->publisher, "segs", segs,
                  "have", have, "claims", claims);
    if (!o)
        goto out;
    char *txt = kv_json_dump(o);
    if (!txt)
        goto out;
    *out = txt;
    *len = strlen(txt);
    rc = KV_OK;
out:
    json_decref(o);
    json_decref(segs);
    kv_free(have);
    kv_free(claims);
    return rc;
}

void kv_p2p_peer_fini(struct kv_p2p_peer *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nsegs; i++)
        kv_free(p->segs[i]);
    kv_free(p->segs);
    kv_free(p->have);
    kv_free(p->claims);
    memset(p, 0, sizeof(*p));
}

int kv_p2p_peer_decode(const char *data, size_t len, uint64_t nchunks, size_t nfiles,
                       struct kv_p2p_peer *p, char *err, size_t errlen)
{
    static const char *const keys[] = {"peer", "publisher", "segs", "have", "claims"};
    struct kv_p2p_peer t = {0};
    json_t *o = NULL;
    int rc = kv_json_parse(data, len, &o, err, errlen);
    if (rc < 0)
        return rc;
    rc = KV_EPROTO;
    if (!json_is_object(o) || only_keys(o, keys, KV_ARRAY_SIZE(keys), "peer", err, errlen) < 0) {
        if (!json_is_object(o))
            ERR("peer record is not an object");
        goto out;
    }
    json_t *id = json_object_get(o, "peer"), *pub = json_object_get(o, "publisher");
    json_t *segs = json_object_get(o, "segs"), *have = json_object_get(o, "have");
    json_t *claims = json_object_get(o, "claims");
    if (!json_is_string(id) || !json_is_boolean(pub) || !json_is_array(segs) ||
        !json_is_string(have) || !json_is_string(claims)) {
        ERR("peer record: a field is missing or of the wrong type");
        goto out;
    }
    const char *ids = json_string_value(id);
    if (!*ids || strlen(ids) > KV_P2P_PEER_MAX || json_array_size(segs) != nfiles) {
        ERR("peer record: bad peer id or segment count");
        goto out;
    }
    memcpy(t.id, ids, strlen(ids) + 1);
    t.publisher = json_is_true(pub);
    t.nchunks = nchunks;
    size_t nb = (size_t)((nchunks + 7) / 8);
    t.have = kv_calloc(nb ? nb : 1, 1);
    t.claims = kv_calloc(nb ? nb : 1, 1);
    t.segs = kv_calloc(nfiles ? nfiles : 1, sizeof(char *));
    if (!t.have || !t.claims || !t.segs) {
        rc = KV_ENOMEM;
        goto out;
    }
    if (hex_decode(json_string_value(have), t.have, nb) < 0 ||
        hex_decode(json_string_value(claims), t.claims, nb) < 0) {
        ERR("peer record: bitmap is not %zu hex bytes", nb);
        goto out;
    }
    for (size_t i = 0; i < nfiles; i++) {
        json_t *s = json_array_get(segs, i);
        if (!json_is_string(s)) {
            ERR("peer record: segs[%zu] is not a string", i);
            goto out;
        }
        t.segs[i] = kv_strdup(json_string_value(s));
        t.nsegs = i + 1;
        if (!t.segs[i]) {
            rc = KV_ENOMEM;
            goto out;
        }
    }
    *p = t;
    memset(&t, 0, sizeof(t));
    rc = KV_OK;
out:
    kv_p2p_peer_fini(&t);
    json_decref(o);
    return rc;
}
