/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log.c - formats log records and hands them to the sink (stderr by default).
 *
 * Thread model: any thread logs. The level and format are atomics; the sink pointer pair is
 * guarded by sink_lock (a leaf lock, held only to copy the pair, so a sink never runs under it).
 * Each record is formatted into a stack buffer and written with one write(2), so lines from
 * different threads never interleave.
 */
#include "common/log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/util.h"

atomic_int kv_log_level_ = KV_LOG_WARN;
static atomic_int log_format = KV_LOG_TEXT;

/* guards sink_fn, sink_ud; leaf lock */
static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;
static kv_log_sink_fn sink_fn;
static void *sink_ud;

static _Thread_local char thread_name[16];

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char level_chars[] = {'E', 'W', 'I', 'D'};

void kv_log_set_level(enum kv_log_level level)
{
    if (level > KV_LOG_DEBUG)
        level = KV_LOG_DEBUG;
    atomic_store_explicit(&kv_log_level_, (int)level, memory_order_relaxed);
}

enum kv_log_level kv_log_get_level(void)
{
    return (enum kv_log_level)atomic_load_explicit(&kv_log_level_, memory_order_relaxed);
}

int kv_log_level_parse(const char *s, enum kv_log_level *out)
{
    for (int i = 0; i <= KV_LOG_DEBUG; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum kv_log_level)i;
            return KV_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = KV_LOG_WARN;
        return KV_OK;
    }
    return KV_EINVAL;
}

void kv_log_set_format(enum kv_log_format fmt)
{
    atomic_store_explicit(&log_format, (int)fmt, memory_order_relaxed);
}

void kv_log_set_sink(kv_log_sink_fn fn, void *ud)
{
    pthread_mutex_lock(&sink_lock);
    sink_fn = fn;
    sink_ud = ud;
    pthread_mutex_unlock(&sink_lock);
}

void kv_log_set_thread_name(const char *name)
{
    snprintf(thread_name, sizeof(thread_name), "%s", name);
}

static const char *current_thread_name(char *tmp, size_t n)
{
    if (thread_name[0])
        return thread_name;
    snprintf(tmp, n, "%ld", (long)syscall(SYS_gettid));
    return tmp;
}

int kv_log_ratelimit(_Atomic int64_t *last_ms, int interval_ms)
{
    int64_t now = kv_now_ms();
    int64_t prev = atomic_load_explicit(last_ms, memory_order_relaxed);
    if (prev != 0 && now - prev < interval_ms)
        return 0;
    return atomic_compare_exchange_strong(last_ms, &prev, now);
}

static void write_all_stderr(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void kv_log_write(enum kv_log_level level, const char *component, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        memcpy(msg + sizeof(msg) - 4, "...", 4);
    if (level > KV_LOG_DEBUG)
        level = KV_LOG_DEBUG;

    pthread_mutex_lock(&sink_lock);
    kv_log_sink_fn fn = sink_fn;
    void *ud = sink_ud;
    pthread_mutex_unlock(&sink_lock);
    if (fn) {
        fn(ud, level, component, msg);
        return;
    }

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t wl = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof(when) - wl, ".%03ldZ", ts.tv_nsec / 1000000);
    char tid[24];
    const char *tname = current_thread_name(tid, sizeof(tid));

    if (atomic_load_explicit(&log_format, memory_order_relaxed) == KV_LOG_JSON) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "ts", when, "level", level_names[level],
                              "component", component, "thread", tname, "msg", msg);
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (s) {
            size_t sl = strlen(s);
            char line[4096];
            if (sl + 1 < sizeof(line)) {
                memcpy(line, s, sl);
                line[sl] = '\n';
                write_all_stderr(line, sl + 1);
            }
            kv_free(s);
        }
        json_decref(o);
        return;
    }
    char line[2300];
    int ln = snprintf(line, sizeof(line), "%s %c %s [%s] %s\n", when, level_chars[level], component,
                      tname, msg);
    if (ln > 0)
        write_all_stderr(line, (size_t)ln < sizeof(line) ? (size_t)ln : sizeof(line) - 1);
}
