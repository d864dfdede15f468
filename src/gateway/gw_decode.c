/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_decode.c - the datagram decoder and encoder of engine states (see gateway.h).
 *
 * Design: kv_gateway_decode is a pure function, bytes -> a validated struct kv_gateway_state
 * or the one reason it is invalid. It is the only code that looks at untrusted datagrams, so it
 * is fuzzed (tests/fuzz/fuzz_gateway_datagram.c). Reasons, by precedence:
 *   1. len == 0 -> empty; len > max_len -> oversize (checked before parsing: cost stays bounded)
 *   2. the JSON syntax: invalid UTF-8 anywhere -> not_utf8, any other syntax error (trailing
 *      garbage, comments, a second value, overflowing numbers included) -> bad_json
 *   3. a top-level value that is not an object -> not_object
 *   4. the first problem with a known key's value, in document order: wrong_type (counts,
 *      timestamp_ms and seq must be JSON integers; latency/capacity any number; ids strings),
 *      out_of_range (counts < -1, latency/capacity < 0 other than -1, seq < 0), bad_string
 *      (engine_id empty or > KV_GATEWAY_ID_MAX bytes, scheduling_mode > KV_GATEWAY_MODE_MAX,
 *      an escaped NUL)
 *   5. a required key absent -> missing_field; free > total when both are known -> free_gt_total
 * Unknown keys and nested values under them are ignored. Duplicate keys: the last good value
 * wins, but any bad one invalidates the datagram.
 *
 * Why yajl and not jansson here: this is the gateway's hot path (goal <= 0.8 us of CPU per
 * state). On this project's 2-core test machine a typical 224-byte state costs 5.2 us in
 * jansson's json_loadb (a tree with a hash table and an allocation per value), 3.2 us in json-c,
 * 2.0 us in cJSON, and 0.83 us in yajl's event (SAX) parser, which builds no tree. yajl is a
 * Debian package (libyajl-dev, security-maintained), validates UTF-8 and rejects trailing
 * garbage by default. Everything else in kvstash (and the encoder below) uses jansson. What is
 * left of a state's cost is yajl's own lexer and state machine (~6,000 instructions for a
 * 228-byte state); see docs/gateway.md, Benchmark.
 *
 * Thread model: none needed (no shared state). Memory: a per-call arena (see arena below).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "common/alloc.h"
#include "common/json.h"
#include "kvstash/gateway.h"

static const char *const reason_names[] = {
#define KV_GW_REASON_NAME_(name, str) str,
    KV_GATEWAY_REASON_MAP(KV_GW_REASON_NAME_)
#undef KV_GW_REASON_NAME_
};

const char *kv_gateway_reason_name(int reason)
{
    if (reason < 0 || reason >= KV_GW_REASON_COUNT)
        return "unknown";
    return reason_names[reason];
}

bool kv_gateway_state_is_heartbeat(const struct kv_gateway_state *s)
{
    return s->engine_capacity == 0.0 && s->latency_pred_ms == 0.0;
}

/* Top-level keys the decoder knows; their bit in struct dec.seen. */
enum field {
    F_ENGINE_ID,
    F_TIMESTAMP,
    F_LATENCY,
    F_MODE,
    F_PENDING,
    F_FREE,
    F_TOTAL,
    F_CAPACITY,
    F_SEQ,
    F_COUNT,
    F_NONE = -1,
};

#define REQUIRED_MASK ((1u << F_SEQ) - 1u)

/* The SAX parse state. Invariant: depth counts open containers; only depth 1 keys matter. */
struct dec {
    struct kv_gateway_state *s;
    int depth;
    int cur;                      /* the field of the last depth-1 key, or F_NONE */
    unsigned seen;                /* bit per field received with a good value */
    bool any;                     /* a top-level value started */
    bool not_object;              /* the top-level value is not an object */
    enum kv_gateway_reason first; /* the first semantic problem, in document order */
};

static void fail(struct dec *d, enum kv_gateway_reason r)
{
    if (d->first == KV_GW_VALID)
        d->first = r;
}

/* Called for every scalar; returns true when it is the value of a known depth-1 key (then
 * d->cur is that field and is consumed). */
static bool take_field(struct dec *d)
{
    if (d->depth == 0) {
        d->any = true;
        d->not_object = true;
        return false;
    }
    if (d->depth != 1 || d->cur == F_NONE)
        return false;
    return true;
}

static void set_int(struct dec *d, long long v)
{
    int f = d->cur;
    d->cur = F_NONE;
    struct kv_gateway_state *s = d->s;
    switch (f) {
    case F_TIMESTAMP:
        s->timestamp_ms = v;
        break;
    case F_LATENCY:
    case F_CAPACITY: {
        if (v < 0 && v != -1) {
            fail(d, KV_GW_OUT_OF_RANGE);
            return;
        }
        *(f == F_LATENCY ? &s->latency_pred_ms : &s->engine_capacity) = (double)v;
        break;
    }
    case F_PENDING:
    case F_FREE:
    case F_TOTAL:
        if (v < -1) {
            fail(d, KV_GW_OUT_OF_RANGE);
            return;
        }
        *(f == F_PENDING ? &s->pending_tokens_total
          : f == F_FREE  ? &s->kv_cache_free_blocks
                         : &s->kv_cache_total_blocks) = v;
        break;
    case F_SEQ:
        if (v < 0) {
            fail(d, KV_GW_OUT_OF_RANGE);
            return;
        }
        s->seq = v;
        break;
    default:
        fail(d, KV_GW_WRONG_TYPE); /* a string field */
        return;
    }
    d->seen |= 1u << f;
}

/* Numbers arrive as yajl's raw token text (the lexer has checked the JSON number grammar:
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?), so yajl's own integer parser and its strtod
 * call (which first copies the token into a buffer) are skipped. Semantics are yajl's exactly:
 * an integer token outside [LLONG_MIN+1, LLONG_MAX] and a real token that overflows to +-HUGE_VAL
 * are syntax errors (the callback cancels the parse, which reports bad_json), an underflow is
 * not. An integer of at most 18 digits converts directly (the rest is checked digit by digit).
 * A real converts on Clinger's fast path when it has no exponent and at most 15 digits (the
 * digits, as an integer, and the power of ten are both exact doubles, so one IEEE division
 * rounds correctly, as strtod does); anything else goes to strtod. Numbers and key matching
 * were ~15% of the decoder's instructions before (strtod alone 11% of the gateway's CPU). */
static const double pow10_exact[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* Converts a number token. Sets *is_int and *iv (integer token) or *dv (real token). Returns
 * false when yajl would have failed the parse: an integer whose magnitude does not fit a long
 * long (as yajl_parse_integer), a real that overflows to +-HUGE_VAL (or no memory for a long
 * token's copy). need_real: false when the value is not wanted (only the overflow check
 * matters then). */
static bool num_convert(const char *p, size_t n, bool need_real, bool *is_int, long long *iv,
                        double *dv)
{
    bool neg = p[0] == '-';
    size_t i = neg;
    /* mant wraps past 19 digits: it is used only when there are at most 18 */
    unsigned long long mant = 0;
    while (i < n && (unsigned)(p[i] - '0') <= 9)
        mant = mant * 10 + (unsigned)(p[i++] - '0');
    size_t idigits = i - neg;
    if (i == n && idigits <= 18) { /* an integer of at most 18 digits */
        *is_int = true;
        *iv = neg ? -(long long)mant : (long long)mant;
        return true;
    }
    size_t frac = 0;
    if (i < n && p[i] == '.') {
        size_t f0 = ++i;
        while (i < n && (unsigned)(p[i] - '0') <= 9)
            mant = mant * 10 + (unsigned)(p[i++] - '0');
        frac = i - f0;
    }
    if (i == n && frac > 0 && idigits + frac <= 15) { /* a real: Clinger's fast path */
        *is_int = false;
        double d = (double)mant / pow10_exact[frac]; /* frac <= 15 */
        *dv = neg ? -d : d;
        return true;
    }
    *is_int = !memchr(p, '.', n) && !memchr(p, 'e', n) && !memchr(p, 'E', n);
    if (*is_int) { /* more than 18 digits */
        unsigned long long v = 0;
        for (i = neg; i < n; i++) {
            unsigned dgt = (unsigned)(p[i] - '0');
            if (v > (unsigned long long)LLONG_MAX / 10 ||
                (unsigned long long)LLONG_MAX - v * 10 < dgt)
                return false; /* yajl: "integer overflow" */
            v = v * 10 + dgt;
        }
        *iv = neg ? -(long long)v : (long long)v;
        return true;
    }
    /* no exponent and fewer than 309 digits cannot overflow */
    if (!need_real && !memchr(p, 'e', n) && !memchr(p, 'E', n) && n < 300)
        return true;
    /* the slow path: strtod wants a NUL-terminated copy (the token is not terminated) */
    char stackbuf[64];
    char *buf = n < sizeof(stackbuf) ? stackbuf : kv_malloc(n + 1);
    if (!buf)
        return false; /* out of memory: rejected like an overflow (bad_json) */
    memcpy(buf, p, n);
    buf[n] = '\0';
    errno = 0;
    double d = strtod(buf, NULL);
    bool ok = !((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE);
    if (buf != stackbuf)
        kv_free(buf);
    *dv = d;
    return ok; /* false: yajl's "numeric (floating point) overflow" */
}

static int on_number(void *ctx, const char *p, size_t n)
{
    struct dec *d = ctx;
    bool want = take_field(d);
    bool is_int;
    long long iv = 0;
    double v = 0;
    if (!num_convert(p, n, want, &is_int, &iv, &v))
        return 0; /* cancels the parse: bad_json */
    if (!want)
        return 1;
    if (is_int) {
        set_int(d, iv);
        return 1;
    }
    int f = d->cur;
    d->cur = F_NONE;
    if (f != F_LATENCY && f != F_CAPACITY) {
        fail(d, KV_GW_WRONG_TYPE);
        return 1;
    }
    if (!isfinite(v) || (v < 0 && v != -1.0)) {
        fail(d, KV_GW_OUT_OF_RANGE);
        return 1;
    }
    *(f == F_LATENCY ? &d->s->latency_pred_ms : &d->s->engine_capacity) = v;
    d->seen |= 1u << f;
    return 1;
}

static int on_string(void *ctx, const unsigned char *p, size_t n)
{
    struct dec *d = ctx;
    if (!take_field(d))
        return 1;
    int f = d->cur;
    d->cur = F_NONE;
    char *dst;
    size_t minlen, maxlen;
    if (f == F_ENGINE_ID) {
        dst = d->s->engine_id;
        minlen = 1;
        maxlen = KV_GATEWAY_ID_MAX;
    } else if (f == F_MODE) {
        dst = d->s->scheduling_mode;
        minlen = 0;
        maxlen = KV_GATEWAY_MODE_MAX;
    } else {
        fail(d, KV_GW_WRONG_TYPE);
        return 1;
    }
    /* An escaped \u0000 would cut a C string short: refuse it. */
    if (n < minlen || n > maxlen || memchr(p, '\0', n)) {
        fail(d, KV_GW_BAD_STRING);
        return 1;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
    d->seen |= 1u << f;
    return 1;
}

/* null and booleans: never the type of a known field. */
static int on_other(struct dec *d)
{
    if (take_field(d)) {
        d->cur = F_NONE;
        fail(d, KV_GW_WRONG_TYPE);
    }
    return 1;
}

static int on_null(void *ctx)
{
    return on_other(ctx);
}

static int on_bool(void *ctx, int b)
{
    (void)b;
    return on_other(ctx);
}

static int on_open(void *ctx, bool map)
{
    struct dec *d = ctx;
    if (d->depth == 0) {
        d->any = true;
        if (!map)
            d->not_object = true;
    } else if (take_field(d)) {
        d->cur = F_NONE;
        fail(d, KV_GW_WRONG_TYPE);
    }
    d->depth++;
    return 1;
}

static int on_start_map(void *ctx)
{
    return on_open(ctx, true);
}

static int on_start_array(void *ctx)
{
    return on_open(ctx, false);
}

static int on_close(void *ctx)
{
    struct dec *d = ctx;
    d->depth--;
    return 1;
}

/* KEY_IS(k, "lit"): k starts with lit; a constant-length memcmp, which the compiler turns into
 * a few loads and compares (no call). */
#define KEY_IS(k, lit) (memcmp((k), (lit), sizeof(lit) - 1) == 0)

static int on_map_key(void *ctx, const unsigned char *key, size_t n)
{
    struct dec *d = ctx;
    if (d->depth != 1)
        return 1;
    /* by length first (most lengths name one field), then the bytes */
    int f = F_NONE;
    switch (n) {
    case 3:
        f = KEY_IS(key, "seq") ? F_SEQ : F_NONE;
        break;
    case 9:
        f = KEY_IS(key, "engine_id") ? F_ENGINE_ID : F_NONE;
        break;
    case 12:
        f = KEY_IS(key, "timestamp_ms") ? F_TIMESTAMP : F_NONE;
        break;
    case 15:
        f = KEY_IS(key, "latency_pred_ms")   ? F_LATENCY
            : KEY_IS(key, "scheduling_mode") ? F_MODE
            : KEY_IS(key, "engine_capacity") ? F_CAPACITY
                                             : F_NONE;
        break;
    case 20:
        f = KEY_IS(key, "pending_tokens_total")   ? F_PENDING
            : KEY_IS(key, "kv_cache_free_blocks") ? F_FREE
                                                  : F_NONE;
        break;
    case 21:
        f = KEY_IS(key, "kv_cache_total_blocks") ? F_TOTAL : F_NONE;
        break;
    default:
        break;
    }
    d->cur = f;
    return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_map_key,
    .yajl_end_map = on_close,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_close,
};

/* yajl allocates without checking for NULL (a failed allocation would crash it), so it gets a
 * per-call arena: a bump allocator over a stack buffer (no malloc at all for ordinary
 * datagrams: faster too), then kv_malloc chunks kept on a list. A failed kv_malloc longjmps
 * back to parse_guarded, which returns an error; everything is freed by arena_fini. yajl_free
 * is never called: the arena owns all of yajl's memory. */
struct arena_hdr {
    size_t size;
    struct arena_hdr *next; /* heap chunks only */
};

struct arena {
    char *base;
    size_t used, cap;
    struct arena_hdr *heap;
    jmp_buf *jb;
};

#define ARENA_ALIGN 16
#define ARENA_HDR ((sizeof(struct arena_hdr) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))

static void *y_malloc(void *ctx, size_t n)
{
    struct arena *a = ctx;
    size_t need = ARENA_HDR + ((n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1));
    struct arena_hdr *h;
    if (a->cap - a->used >= need) {
        h = (struct arena_hdr *)(a->base + a->used);
        a->used += need;
        h->next = NULL;
    } else {
        h = kv_malloc(ARENA_HDR + n);
        if (!h)
            longjmp(*a->jb, 1);
        h->next = a->heap;
        a->heap = h;
    }
    h->size = n;
    return (char *)h + ARENA_HDR;
}

static void *y_realloc(void *ctx, void *p, size_t n)
{
    if (!p)
        return y_malloc(ctx, n);
    struct arena_hdr *h = (struct arena_hdr *)((char *)p - ARENA_HDR);
    if (n <= h->size)
        return p;
    void *q = y_malloc(ctx, n);
    memcpy(q, p, h->size);
    return q; /* the old block is reclaimed with the arena */
}

static void y_free(void *ctx, void *p)
{
    (void)ctx;
    (void)p;
}

static void arena_fini(struct arena *a)
{
    while (a->heap) {
        struct arena_hdr *next = a->heap->next;
        kv_free(a->heap);
        a->heap = next;
    }
}

/* Runs yajl over data[0..len). Returns KV_GW_VALID when the syntax is good (d is filled),
 * KV_GW_NOT_UTF8 / KV_GW_BAD_JSON otherwise (BAD_JSON also when memory ran out). The arena and
 * the decoder state live in the caller, so nothing here is indeterminate after longjmp. */
static enum kv_gateway_reason parse_guarded(struct arena *a, struct dec *d, const void *data,
                                            size_t len)
{
    jmp_buf jb;
    a->jb = &jb;
    if (setjmp(jb) != 0)
        return KV_GW_BAD_JSON;
    yajl_alloc_funcs af = {y_malloc, y_realloc, y_free, a};
    yajl_handle h = yajl_alloc(&callbacks, &af, d);
    yajl_status st = yajl_parse(h, data, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st == yajl_status_ok)
        return KV_GW_VALID;
    /* yajl names the lexer's UTF-8 failure "invalid bytes in UTF8 string." */
    unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
    return msg && strstr((const char *)msg, "UTF8") ? KV_GW_NOT_UTF8 : KV_GW_BAD_JSON;
}

enum kv_gateway_reason kv_gateway_decode(const void *data, size_t len, size_t max_len,
                                         struct kv_gateway_state *out)
{
    if (max_len == 0)
        max_len = 65507;
    if (len == 0)
        return KV_GW_EMPTY;
    if (len > max_len)
        return KV_GW_OVERSIZE;
    struct dec d = {.s = out, .cur = F_NONE};
    out->seq = -1;
    _Alignas(16) char stack[8192];
    struct arena a = {.base = stack, .cap = sizeof(stack)};
    enum kv_gateway_reason r = parse_guarded(&a, &d, data, len);
    arena_fini(&a);
    if (r != KV_GW_VALID)
        return r;
    if (!d.any)
        return KV_GW_BAD_JSON;
    if (d.not_object)
        return KV_GW_NOT_OBJECT;
    if (d.first != KV_GW_VALID)
        return d.first;
    if ((d.seen & REQUIRED_MASK) != REQUIRED_MASK)
        return KV_GW_MISSING_FIELD;
    if (out->kv_cache_free_blocks >= 0 && out->kv_cache_total_blocks >= 0 &&
        out->kv_cache_free_blocks > out->kv_cache_total_blocks)
        return KV_GW_FREE_GT_TOTAL;
    return KV_GW_VALID;
}

static bool count_ok(int64_t v)
{
    return v >= -1;
}

static bool figure_ok(double d)
{
    return isfinite(d) && (d >= 0 || d == -1.0);
}

int kv_gateway_state_format(const struct kv_gateway_state *s, char *buf, size_t len)
{
    size_t idlen = strnlen(s->engine_id, sizeof(s->engine_id));
    if (idlen == 0 || idlen > KV_GATEWAY_ID_MAX ||
        strnlen(s->scheduling_mode, sizeof(s->scheduling_mode)) > KV_GATEWAY_MODE_MAX ||
        !count_ok(s->pending_tokens_total) || !count_ok(s->kv_cache_free_blocks) ||
        !count_ok(s->kv_cache_total_blocks) || !figure_ok(s->latency_pred_ms) ||
        !figure_ok(s->engine_capacity) ||
        (s->kv_cache_free_blocks >= 0 && s->kv_cache_total_blocks >= 0 &&
         s->kv_cache_free_blocks > s->kv_cache_total_blocks))
        return KV_EINVAL;
    /* jansson escapes the strings (and rejects invalid UTF-8 in them). */
    json_t *o = json_pack(
        "{s:s, s:I, s:f, s:s, s:I, s:I, s:I, s:f}", "engine_id", s->engine_id, "timestamp_ms",
        (json_int_t)s->timestamp_ms, "latency_pred_ms", s->latency_pred_ms, "scheduling_mode",
        s->scheduling_mode, "pending_tokens_total", (json_int_t)s->pending_tokens_total,
        "kv_cache_free_blocks", (json_int_t)s->kv_cache_free_blocks, "kv_cache_total_blocks",
        (json_int_t)s->kv_cache_total_blocks, "engine_capacity", s->engine_capacity);
    if (!o)
        return KV_EINVAL; /* invalid UTF-8 in a string, or ENOMEM */
    if (s->seq >= 0 && json_object_set_new(o, "seq", json_integer((json_int_t)s->seq)) < 0) {
        json_decref(o);
        return KV_ENOMEM;
    }
    size_t n = json_dumpb(o, buf, len, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (n == 0)
        return KV_ENOMEM;
    if (n >= len)
        return KV_E2BIG;
    buf[n] = '\0';
    return (int)n;
}
