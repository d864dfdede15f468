/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log.h - leveled logging macros. Each .c may #define KV_LOG_COMPONENT "name" before including
 * this header. The level is checked before anything is formatted, so a disabled KV_LOGD costs
 * one relaxed atomic load. One record = one line: time, level, component, thread, text (or one
 * JSON object with --log-format json).
 */
#ifndef KV_COMMON_LOG_H
#define KV_COMMON_LOG_H

#include <stdatomic.h>
#include <stdint.h>

#include "kvstash/kvstash.h"

#ifndef KV_LOG_COMPONENT
#define KV_LOG_COMPONENT "kvstash"
#endif

extern atomic_int kv_log_level_; /* the current enum kv_log_level */

static inline int kv_log_enabled(enum kv_log_level level)
{
    return (int)level <= atomic_load_explicit(&kv_log_level_, memory_order_relaxed);
}

KV_API void kv_log_write(enum kv_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True at most once per interval_ms for the given state word (rate limiting). */
KV_API int kv_log_ratelimit(_Atomic int64_t *last_ms, int interval_ms);

#define KV_LOG_AT_(level, ...)                                                                     \
    do {                                                                                           \
        if (kv_log_enabled(level))                                                                 \
            kv_log_write(level, KV_LOG_COMPONENT, __VA_ARGS__);                                    \
    } while (0)

#define KV_LOGE(...) KV_LOG_AT_(KV_LOG_ERROR, __VA_ARGS__)
#define KV_LOGW(...) KV_LOG_AT_(KV_LOG_WARN, __VA_ARGS__)
#define KV_LOGI(...) KV_LOG_AT_(KV_LOG_INFO, __VA_ARGS__)
#define KV_LOGD(...) KV_LOG_AT_(KV_LOG_DEBUG, __VA_ARGS__)

/* A warning printed at most once every interval_ms from this call site. */
#define KV_LOGW_RL(interval_ms, ...)                                                               \
    do {                                                                                           \
        static _Atomic int64_t kv_rl_last_;                                                        \
        if (kv_log_enabled(KV_LOG_WARN) && kv_log_ratelimit(&kv_rl_last_, (interval_ms)))          \
            kv_log_write(KV_LOG_WARN, KV_LOG_COMPONENT, __VA_ARGS__);                              \
    } while (0)

#endif
