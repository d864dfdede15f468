/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gateway.h - the engine-state gateway: engines report their state in UDP datagrams (one JSON
 * object each, ELRAR's format); the gateway validates them, keeps the latest state and a bounded
 * history per engine, judges freshness on its own clock, counts everything, optionally appends
 * every valid state to a JSONL log, and answers HTTP queries. `kvstash gateway` runs one as a
 * daemon; `kvstash router --routing-logic elrar` runs one in-process and reads it through
 * kv_gateway_engine_get() / kv_gateway_engines().
 *
 * Datagram (see docs/gateway.md): {"engine_id": str, "timestamp_ms": int, "latency_pred_ms":
 * number, "scheduling_mode": str, "pending_tokens_total": int, "kv_cache_free_blocks": int,
 * "kv_cache_total_blocks": int, "engine_capacity": number} plus any extra keys; an optional
 * integer "seq" drops reordered states. Counts are integers >= 0 or -1 (unknown).
 *
 * Heartbeats: a state with engine_capacity == 0 and latency_pred_ms == 0 refreshes the engine's
 * liveness but does not overwrite its last real load figures.
 *
 * Thread-safety: every function may be called from any thread. Reads return snapshots (copies
 * made under the gateway's lock), never pointers into live state.
 */
#ifndef KVSTASH_GATEWAY_H
#define KVSTASH_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_GATEWAY_ID_MAX 255  /* longest engine_id accepted, in bytes */
#define KV_GATEWAY_MODE_MAX 63 /* longest scheduling_mode accepted, in bytes */

/* One engine state, as carried by a datagram. */
struct kv_gateway_state {
    char engine_id[KV_GATEWAY_ID_MAX + 1];
    int64_t timestamp_ms; /* the sender's clock; informative only (never used for staleness) */
    double latency_pred_ms;
    char scheduling_mode[KV_GATEWAY_MODE_MAX + 1];
    int64_t pending_tokens_total;  /* >= 0, or -1 = unknown */
    int64_t kv_cache_free_blocks;  /* >= 0, or -1 = unknown */
    int64_t kv_cache_total_blocks; /* >= 0, or -1 = unknown */
    double engine_capacity;
    int64_t seq; /* the optional "seq" key, or -1 when absent */
};

/* True if s is a heartbeat (engine_capacity == 0 and latency_pred_ms == 0). */
KV_API bool kv_gateway_state_is_heartbeat(const struct kv_gateway_state *s);

/* A snapshot of one engine. */
struct kv_gateway_engine {
    struct kv_gateway_state state; /* the last real load figures (the first heartbeat until a
                                      non-heartbeat state arrives: then load_known is false) */
    bool load_known;               /* a non-heartbeat state has been received */
    bool fresh;                    /* age_ms <= the stale threshold */
    int64_t age_ms;                /* since the last state of any kind, on the gateway's clock */
    int64_t load_age_ms;           /* since the last non-heartbeat state; -1 if none */
    int64_t last_seen_wall_ms;     /* wall clock of the last arrival (display only) */
    uint64_t states;               /* states accepted, heartbeats included */
    uint64_t heartbeats;           /* of which heartbeats */
};

/* One history entry (newest last in kv_gateway_history()). */
struct kv_gateway_history_entry {
    struct kv_gateway_state state;
    int64_t recv_wall_ms; /* wall clock at arrival */
    bool heartbeat;
};

/* Why a datagram was not ingested. KV_GW_VALID is 0; the names ("bad_json", ...) are those of
 * /stats invalid_by_reason and of the kvstash_gateway_invalid_total{reason} metric. */
#define KV_GATEWAY_REASON_MAP(XX)                                                                  \
    XX(VALID, "valid")                                                                             \
    XX(EMPTY, "empty")                                                                             \
    XX(OVERSIZE, "oversize")                                                                       \
    XX(NOT_UTF8, "not_utf8")                                                                       \
    XX(BAD_JSON, "bad_json")                                                                       \
    XX(NOT_OBJECT, "not_object")                                                                   \
    XX(MISSING_FIELD, "missing_field")                                                             \
    XX(WRONG_TYPE, "wrong_type")                                                                   \
    XX(OUT_OF_RANGE, "out_of_range")                                                               \
    XX(FREE_GT_TOTAL, "free_gt_total")                                                             \
    XX(BAD_STRING, "bad_string")                                                                   \
    XX(REORDERED, "reordered")                                                                     \
    XX(TOO_MANY_ENGINES, "too_many_engines")

enum kv_gateway_reason {
#define KV_GW_REASON_ENUM_(name, str) KV_GW_##name,
    KV_GATEWAY_REASON_MAP(KV_GW_REASON_ENUM_)
#undef KV_GW_REASON_ENUM_
        KV_GW_REASON_COUNT
};

/* The reason's name ("bad_json"), or "unknown". Static storage. */
KV_API const char *kv_gateway_reason_name(int reason);

/* Decodes one datagram (a pure function: no allocation survives the call, no global state).
 * Returns KV_GW_VALID and fills *out, or the reason it is invalid (*out is then unspecified).
 * max_len is the largest datagram accepted (0 = 65507). KV_GW_REORDERED and
 * KV_GW_TOO_MANY_ENGINES are never returned here: they depend on the gateway's state. */
KV_API enum kv_gateway_reason kv_gateway_decode(const void *data, size_t len, size_t max_len,
                                                struct kv_gateway_state *out);

/* Encodes s as one compact JSON datagram into buf (NUL-terminated). Returns the length, or
 * KV_E2BIG if buf is too small, KV_EINVAL if s would not decode (bad counts or strings).
 * The "seq" key is written only when s->seq >= 0. */
KV_API int kv_gateway_state_format(const struct kv_gateway_state *s, char *buf, size_t len);

/* The UDP receive path (kv_gateway_opts.udp_io). RECVMMSG (the default): recvmmsg of up to 256
 * datagrams per call. URING: io_uring (a multishot receive into a provided-buffer ring: no
 * system call per datagram), or kv_gateway_start fails with KV_ENOTSUP. AUTO: io_uring when the
 * kernel (Linux >= 6.1), seccomp and sysctl allow it, else recvmmsg. Both paths cost the same
 * CPU per state on the development VM (docs/gateway.md, Benchmark), so the simpler one is the
 * default; io_uring is there to measure on other machines. */
enum {
    KV_GATEWAY_UDP_IO_RECVMMSG = 0,
    KV_GATEWAY_UDP_IO_URING = 1,
    KV_GATEWAY_UDP_IO_AUTO = 2,
};

struct kv_gateway_opts {
    const char *bind_address;   /* UDP bind address; default "127.0.0.1" */
    int udp_port;               /* default 9999; 0 = any free port */
    bool broadcast;             /* network_mode "broadcast": SO_BROADCAST on the socket */
    const char *http_addr;      /* "HOST:PORT" for the query API, or NULL for none */
    int64_t stale_threshold_ms; /* default 2000 */
    int64_t remove_after_ms;    /* engines silent this long are dropped; default 300000 */
    int history_len;            /* per engine; default 100 */
    size_t max_engines;         /* states of new engines beyond this are refused; default 4096 */
    size_t max_datagram;        /* default 65507 (the largest UDP/IPv4 payload) */
    size_t udp_rcvbuf;          /* SO_RCVBUF bytes; default 32 MiB; 0 = the system's */
    int udp_io;                 /* receive path: a KV_GATEWAY_UDP_IO_*; default RECVMMSG */
    const char *log_file;       /* JSONL log of valid states, or NULL for none */
    uint64_t log_max_bytes;     /* rotate past this size; 0 = never; default 100 MiB */
    int log_keep;               /* rotated files kept (FILE.1 .. FILE.N); default 5 */
    size_t log_buffer_bytes;    /* writer buffer; a full buffer drops lines; default 4 MiB */
    char *err;                  /* optional: gets a one-line reason when start fails */
    size_t errlen;
};

/* Fills o with the defaults above. */
KV_API void kv_gateway_opts_init(struct kv_gateway_opts *o);

struct kv_gateway;

/* Binds the UDP socket (and the HTTP listener when http_addr is set), opens the log, and starts
 * the receive, HTTP and log-writer threads. *out is owned (stop with kv_gateway_stop()).
 * Errors: KV_EINVAL for bad options (bad address, out-of-range numbers), KV_EBUSY when an
 * address is in use, KV_EIO/KV_EPERM for a log file that cannot be opened, KV_ENOMEM. On
 * failure nothing is left running. The strings in o are copied. */
KV_API int kv_gateway_start(const struct kv_gateway_opts *o, struct kv_gateway **out);

/* Stops every thread, flushes and closes the log, frees g. NULL is a no-op. */
KV_API void kv_gateway_stop(struct kv_gateway *g);

/* Ports actually bound (0 for no HTTP listener). */
KV_API uint16_t kv_gateway_udp_port(const struct kv_gateway *g);
KV_API uint16_t kv_gateway_http_port(const struct kv_gateway *g);

/* Ingests one datagram as if it had arrived over UDP (unicast unless broadcast): decoded,
 * counted, applied and logged like any other. Returns the reason, KV_GW_VALID when accepted.
 * For tests and in-process feeders. */
KV_API enum kv_gateway_reason kv_gateway_ingest(struct kv_gateway *g, const void *data, size_t len,
                                                bool broadcast);

/* A snapshot of engine id. KV_ENOENT if unknown (never seen, or removed after silence). */
KV_API int kv_gateway_engine_get(struct kv_gateway *g, const char *engine_id,
                                 struct kv_gateway_engine *out);

/* Snapshots of every engine, sorted by engine_id. *out is owned (free with kv_gateway_free());
 * NULL when *n is 0. KV_ENOMEM. */
KV_API int kv_gateway_engines(struct kv_gateway *g, struct kv_gateway_engine **out, size_t *n);

/* The history of engine id, oldest first (at most history_len entries). *out is owned (free
 * with kv_gateway_free()); KV_ENOENT if the engine is unknown. */
KV_API int kv_gateway_history(struct kv_gateway *g, const char *engine_id,
                              struct kv_gateway_history_entry **out, size_t *n);

/* Frees an array returned by kv_gateway_engines() or kv_gateway_history(). NULL is a no-op. */
KV_API void kv_gateway_free(void *p);

struct kv_gateway_stats {
    uint64_t total_received;
    uint64_t valid_states;
    uint64_t invalid_states;
    uint64_t unicast_received;
    uint64_t broadcast_received;
    uint64_t invalid_by_reason[KV_GW_REASON_COUNT]; /* [KV_GW_VALID] is unused (0) */
    int64_t last_received_wall_ms;                  /* 0 = nothing yet */
    uint64_t active_engines;                        /* fresh now */
    uint64_t total_engines;                         /* known now */
    uint64_t engines_removed;                       /* dropped after remove_after_ms of silence */
    uint64_t heartbeats;
    uint64_t recv_calls;  /* receive rounds (recvmmsg calls, io_uring reaps) with datagrams */
    uint64_t log_lines;   /* written to the JSONL log */
    uint64_t log_dropped; /* dropped because the writer buffer was full */
    uint64_t log_errors;  /* write/open failures */
    uint64_t log_rotations;
};

/* Counters since start. */
KV_API int kv_gateway_stats(struct kv_gateway *g, struct kv_gateway_stats *out);

/* Asks the log writer to close and reopen the log file (after logrotate moved it). Returns at
 * once; the reopen happens on the writer thread. Async-signal-safe: a signal handler may call
 * it. No-op without a log. */
KV_API void kv_gateway_reopen_log(struct kv_gateway *g);

/* --- Sending states (the engine side, `kvstash agent`) --- */

struct kv_gateway_sender;

/* Opens a UDP socket aimed at "HOST:PORT" (SO_BROADCAST when broadcast). *out is owned (close
 * with kv_gateway_sender_close()). KV_EINVAL for a bad address. */
KV_API int kv_gateway_sender_open(const char *hostport, bool broadcast,
                                  struct kv_gateway_sender **out);
/* Formats s and sends it as one datagram. KV_EINVAL for a state that would not decode; an
 * errno-mapped error if the send fails. Not thread-safe per sender. */
KV_API int kv_gateway_sender_send(struct kv_gateway_sender *snd, const struct kv_gateway_state *s);
/* NULL is a no-op. */
KV_API void kv_gateway_sender_close(struct kv_gateway_sender *snd);

/* One-shot convenience: open, send, close. */
KV_API int kv_gateway_send_state(const char *hostport, const struct kv_gateway_state *s);

/* Derives the load of s from a vLLM Prometheus /metrics endpoint (GET with libcurl, within
 * timeout_ms; 0 = 2000). Sets pending_tokens_total = (vllm:num_requests_running +
 * vllm:num_requests_waiting) * tokens_per_request, kv_cache_total_blocks from
 * vllm:cache_config_info{num_gpu_blocks} and kv_cache_free_blocks = total * (1 - usage) with
 * usage from vllm:kv_cache_usage_perc (V1) or vllm:gpu_cache_usage_perc (V0); both KV fields -1
 * when unknown. Other fields are left as they are (docs/gateway.md has the mapping). Errors:
 * KV_ECONNREFUSED, KV_ETIMEDOUT, KV_EIO (transport), KV_EINVAL (bad URL), KV_EPROTO (not HTTP
 * 200, or no vllm:num_requests_* series at all); s is unchanged on error. Thread-safe. */
KV_API int kv_gateway_scrape_vllm(const char *url, int timeout_ms, int64_t tokens_per_request,
                                  struct kv_gateway_state *s);

#ifdef __cplusplus
}
#endif
#endif
