/* SPDX-License-Identifier: Apache-2.0 */
/*
 * router_int.h - the router's pure parts, separated from the event loops so they can be unit
 * tested and fuzzed: URL normalisation, inspection of an OpenAI request body, OpenAI-style
 * error bodies, and the routing policies' state and choices (consistent-hash ring, approximate
 * prefix tree, ELRAR score, least-loaded). None of these functions locks anything: the caller
 * (router.c) holds its state mutex around every call that touches a policy object.
 *
 * Engines are named by their index 0..KV_RT_MAX_ENGINES-1 in the router's engine table; sets of
 * engines are uint64_t bit masks (bit i = engine i).
 */
#ifndef KV_ROUTER_INT_H
#define KV_ROUTER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

#define KV_RT_MAX_ENGINES 64

/* --- URLs --- */

/* Normalises an engine URL so that equal engines compare equal: scheme and host lower-cased,
 * "localhost" -> "127.0.0.1", default port made explicit (http: 80), trailing slashes removed;
 * "HOST:PORT" without a scheme means http://HOST:PORT. Only http:// is accepted. Writes the
 * result ("http://127.0.0.1:8001" or "http://h:80/prefix") into out (outlen bytes); host gets the
 * host (without brackets), port the port, path the path prefix ("" or "/x") when non-NULL.
 * KV_EINVAL (with a message in err) for anything else. */
int kv_rt_url_normalize(const char *url, char *out, size_t outlen, char *host, size_t hostlen,
                        uint16_t *port, char *path, size_t pathlen, char *err, size_t errlen);

/* --- Requests --- */

/* What routing needs from an OpenAI request body. */
struct kv_rt_reqinfo {
    char *model;     /* owned; never NULL after a successful inspect */
    char *user;      /* owned; the "user" field, or NULL */
    bool stream;     /* "stream": true */
    char *text;      /* owned; prompt text for prefix matching ("" when none), NUL-terminated; NULL
                        when inspected with want_text false */
    size_t text_len; /* bytes in text */
    int64_t est_tokens; /* rough prompt tokens: ceil(text_len / 4) + max_tokens (if given) */
};

/* Parses body[0..len) as a JSON object and extracts model (required string), user, stream and
 * the prompt text: "prompt" (string, or array of strings), "messages" (each "role: content\n",
 * content a string or an array of {"type":"text","text":...} parts) or "input" (embeddings).
 * Token-id prompts contribute no text. Returns KV_OK, or KV_EPROTO with a message naming the
 * problem in err ("bad JSON at line 1 column 3: ...", "missing field \"model\""). On error *out
 * is left zeroed. Free with kv_rt_reqinfo_fini(). */
int kv_rt_inspect(const char *body, size_t len, struct kv_rt_reqinfo *out, char *err,
                  size_t errlen);
/* Same as kv_rt_inspect, but with want_text false the prompt text is not assembled: text is NULL,
 * text_len 0 and est_tokens counts max_tokens only. For policies that route on the model (and
 * user) alone (roundrobin, session), this spares the copies of every message. */
int kv_rt_inspect_ex(const char *body, size_t len, bool want_text, struct kv_rt_reqinfo *out,
                     char *err, size_t errlen);
void kv_rt_reqinfo_fini(struct kv_rt_reqinfo *ri);

/* An OpenAI-style error body {"error":{"message":msg,"type":type,"code":code}} as a kv_free-able
 * string; NULL on ENOMEM. */
char *kv_rt_error_body(const char *msg, const char *type, int code);

/* --- Consistent-hash ring (session policy) --- */

struct kv_rt_ring_point {
    uint64_t h;
    int engine;
};

struct kv_rt_ring {
    struct kv_rt_ring_point *pts; /* sorted by h */
    size_t n;
};

/* Rebuilds r with vnodes points per named engine: point hashes are xxh3(name "#" i). names[i]
 * NULL skips engine i. On KV_ENOMEM r is unchanged. */
int kv_rt_ring_build(struct kv_rt_ring *r, const char *const *names, size_t n, int vnodes);
void kv_rt_ring_fini(struct kv_rt_ring *r);
/* The engine owning key: the first point clockwise of xxh3(key) whose engine is in eligible.
 * -1 when no point is eligible. */
int kv_rt_ring_pick(const struct kv_rt_ring *r, const void *key, size_t keylen, uint64_t eligible);

/* --- Approximate prefix tree (prefix policy) --- */

/* The prompt is cut in chunks of chunk bytes; chunk k is keyed by the chained hash of chunks
 * 0..k (so a key stands for the whole prefix up to it). Each key remembers which engines were
 * sent that prefix and when. Longest match = the deepest chunk still held by some engine. */
struct kv_rt_prefix;

struct kv_rt_prefix_params {
    double cache_threshold;        /* SGLang default 0.5 */
    int64_t balance_abs_threshold; /* SGLang default 32 */
    double balance_rel_threshold;  /* SGLang default 1.0001 */
    size_t max_chars;              /* per-engine size limit of the tree (SGLang max_tree_size) */
    size_t chunk;                  /* bytes per chunk; default 16 */
};

void kv_rt_prefix_params_default(struct kv_rt_prefix_params *p);
int kv_rt_prefix_create(const struct kv_rt_prefix_params *p, struct kv_rt_prefix **out);
void kv_rt_prefix_destroy(struct kv_rt_prefix *t);
/* Longest prefix of text held by an engine of eligible: *engine (or -1) and *matched bytes. */
void kv_rt_prefix_match(const struct kv_rt_prefix *t, const char *text, size_t len,
                        uint64_t eligible, int *engine, size_t *matched);
/* Records that engine was sent text at time now (any monotonic unit). Evicts the engine's least
 * recently used chunks when it holds more than max_chars. KV_ENOMEM leaves t consistent. */
int kv_rt_prefix_insert(struct kv_rt_prefix *t, const char *text, size_t len, int engine,
                        int64_t now);
/* Bytes of prompt the tree holds for engine. */
size_t kv_rt_prefix_size(const struct kv_rt_prefix *t, int engine);
/* Forgets engine entirely (it left the cluster). */
void kv_rt_prefix_forget(struct kv_rt_prefix *t, int engine);

/* SGLang's cache_aware choice: if the load (in-flight requests, load[i]) of eligible engines is
 * imbalanced (max - min > abs_threshold and max > min * rel_threshold) -> the least loaded;
 * else if the longest match covers more than cache_threshold of the text -> its engine; else
 * the engine holding the smallest tree. Then text is inserted for the chosen engine.
 * *why gets "imbalanced", "prefix_hit" or "smallest_tree". -1 when eligible is empty. */
int kv_rt_pick_prefix(struct kv_rt_prefix *t, const struct kv_rt_prefix_params *p, const char *text,
                      size_t len, const int64_t *load, uint64_t eligible, int64_t now,
                      const char **why);

/* --- Least loaded --- */

/* The eligible engine with the smallest load[i]; ties go to the first at or after start
 * (rotating start spreads ties). -1 when eligible is empty. */
int kv_rt_pick_least(const int64_t *load, uint64_t eligible, unsigned start);

/* Round robin: the first eligible engine at or after (counter mod n). -1 when none. */
int kv_rt_pick_rr(uint64_t eligible, size_t n, uint64_t counter);

/* --- ELRAR --- */

/* An engine's state as mirrored from the gateway. */
struct kv_rt_estate {
    bool known; /* the gateway has this engine (and a real, non-heartbeat load figure) */
    bool fresh; /* arrived within the stale threshold (gateway clock) */
    double latency_pred_ms;
    char mode[64];
    int64_t pending_tokens; /* -1 unknown */
    double capacity;        /* tokens/s; <= 0 unknown */
};

struct kv_rt_elrar_params {
    double slo_ms;              /* VLLM_ELRAR_SLO_MS, default 50 */
    double load_scale_s;        /* VLLM_ELRAR_LOAD_SCALE_S, default 1 */
    double kv_beta;             /* VLLM_ELRAR_KV_BETA, default 1 */
    int64_t affinity_window_ms; /* VLLM_ELRAR_KV_AFFINITY_WINDOW (s) * 1000, default 300000 */
    double w[4];                /* VLLM_ELRAR_W1..W4 (latency, load, mode, kv), default 1 */
};

void kv_rt_elrar_params_default(struct kv_rt_elrar_params *p);

/* ELRAR's score of one engine (higher is better):
 *   w1 * max(0, 1 - min(latency/slo, 5)) + w2 * (1 - tanh(pending/capacity/load_scale))
 *   + w3 * mode(latency_optimized 1, throughput_optimized 0, else 0.5) + w4 * (affine ? beta : 0)
 * extra_pending (tokens routed since the state was reported) is added to pending. Unknown
 * capacity or pending scores the load term 0.5 (neutral) instead of ELRAR's 1 (idle). */
double kv_rt_elrar_score(const struct kv_rt_elrar_params *p, const struct kv_rt_estate *s,
                         int64_t extra_pending, bool affine);

/* Session affinity memory for ELRAR: a direct-mapped table of session hash -> (engine, time). */
#define KV_RT_AFFINITY_SLOTS 4096
struct kv_rt_affinity {
    uint64_t h[KV_RT_AFFINITY_SLOTS];
    int16_t engine[KV_RT_AFFINITY_SLOTS];
    int64_t ts[KV_RT_AFFINITY_SLOTS];
};
void kv_rt_affinity_init(struct kv_rt_affinity *a);
/* The engine key last went to within window of now, or -1. */
int kv_rt_affinity_get(const struct kv_rt_affinity *a, const void *key, size_t len, int64_t now,
                       int64_t window);
void kv_rt_affinity_put(struct kv_rt_affinity *a, const void *key, size_t len, int engine,
                        int64_t now);

/* Picks by ELRAR: among eligible engines with a fresh known state, the highest score (ties:
 * lower index); extra[i] is the in-flight compensation. -1 when no eligible engine has a fresh
 * state (the caller falls back to least-loaded, as ELRAR falls back to QPS routing). */
int kv_rt_pick_elrar(const struct kv_rt_elrar_params *p, const struct kv_rt_estate *st,
                     const int64_t *extra, int affine_engine, uint64_t eligible);

#endif
