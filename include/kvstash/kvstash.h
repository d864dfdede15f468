/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvstash.h - umbrella header: version, logging hooks, and every module's API.
 *
 * Thread-safety: every function here may be called from any thread unless its comment says
 * otherwise. Strings passed in are borrowed for the call and never retained.
 */
#ifndef KVSTASH_H
#define KVSTASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_VERSION_MAJOR 0
#define KV_VERSION_MINOR 1
#define KV_VERSION_PATCH 0

/* "MAJOR.MINOR.PATCH" of the library actually loaded. Static storage. */
KV_API const char *kv_version(void);

enum kv_log_level {
    KV_LOG_ERROR = 0,
    KV_LOG_WARN = 1,
    KV_LOG_INFO = 2,
    KV_LOG_DEBUG = 3,
};

enum kv_log_format {
    KV_LOG_TEXT = 0,
    KV_LOG_JSON = 1,
};

/* A log sink receives one finished record. component and msg are borrowed for the call.
 * It is called on the logging thread, never under a kvstash lock; it must be thread-safe. */
typedef void (*kv_log_sink_fn)(void *ud, enum kv_log_level level, const char *component,
                               const char *msg);

/* Messages above this level are dropped before they are formatted. Default KV_LOG_WARN. */
KV_API void kv_log_set_level(enum kv_log_level level);
KV_API enum kv_log_level kv_log_get_level(void);

/* Parses "error|warn|info|debug" (case-insensitive). KV_EINVAL for anything else. */
KV_API int kv_log_level_parse(const char *s, enum kv_log_level *out);

/* Format of the default stderr sink. Default KV_LOG_TEXT. */
KV_API void kv_log_set_format(enum kv_log_format fmt);

/* Replaces the default stderr sink; NULL restores it. */
KV_API void kv_log_set_sink(kv_log_sink_fn fn, void *ud);

/* Names the calling thread in log lines (truncated to 15 bytes). */
KV_API void kv_log_set_thread_name(const char *name);

#ifdef __cplusplus
}
#endif

#include "meta.h"
#include "xfer.h"
#include "gateway.h"
#include "p2p.h"

#endif
