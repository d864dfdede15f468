/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_log.c - the gateway's JSONL log of valid states, with size-based rotation and reopen on
 * request (SIGHUP, for logrotate).
 *
 * Design: producers (the receive thread) copy whole lines into the current buffer under mu and
 * never touch the file; one writer thread swaps the current buffer with its spare and writes
 * the spare out. A producer that finds the buffer full drops its lines and counts them, so a
 * slow disk costs log lines, never received datagrams.
 *
 * Rotation (max_bytes > 0): before a write would take the file past max_bytes, the writer
 * renames FILE.(keep-1) -> FILE.keep ... FILE -> FILE.1 and opens a new FILE; keep == 0 just
 * truncates. Rotation only happens between lines, so every file holds whole lines (a single
 * line larger than max_bytes goes alone into its own file).
 *
 * Reopen: gw_log_reopen sets an atomic flag (async-signal-safe); the writer, which wakes at
 * least every GW_LOG_WAKE_MS, closes and reopens FILE (append) when it sees it.
 *
 * Thread model: mu guards cur/cur_len/cur_lines, stop and the counters; the file descriptor,
 * size and spare buffer belong to the writer thread alone. mu is a leaf lock: no I/O under it.
 */
#define KV_LOG_COMPONENT "gateway"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/gw_int.h"

struct gw_log {
    pthread_mutex_t mu; /* guards the fields up to stats; leaf */
    pthread_cond_t cv;
    char *cur;
    size_t cur_len;
    uint32_t cur_lines;
    bool stop;
    struct gw_log_stats stats;

    atomic_bool reopen;
    /* writer thread only */
    char *spare;
    size_t cap;
    char *path;
    uint64_t max_bytes;
    int keep;
    int fd;
    uint64_t size;
    pthread_t thr;
};

static int open_file(struct gw_log *l, char *err, size_t errlen)
{
    int fd = open(l->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (err)
            snprintf(err, errlen, "cannot open log file %s: %s", l->path, strerror(e));
        return kv_err_from_errno(e);
    }
    struct stat st;
    l->size = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    l->fd = fd;
    return KV_OK;
}

static void count(struct gw_log *l, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&l->mu);
    *field += n;
    pthread_mutex_unlock(&l->mu);
}

static void rotate(struct gw_log *l)
{
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    size_t plen = strlen(l->path) + 16;
    char *a = kv_malloc(plen), *b = kv_malloc(plen);
    if (a && b && l->keep > 0) {
        for (int k = l->keep - 1; k >= 1; k--) {
            snprintf(a, plen, "%s.%d", l->path, k);
            snprintf(b, plen, "%s.%d", l->path, k + 1);
            rename(a, b); /* a missing file is fine */
        }
        snprintf(b, plen, "%s.1", l->path);
        rename(l->path, b);
    } else if (l->keep == 0) {
        if (truncate(l->path, 0) != 0)
            count(l, &l->stats.errors, 1);
    }
    kv_free(a);
    kv_free(b);
    if (open_file(l, NULL, 0) < 0) {
        count(l, &l->stats.errors, 1);
        KV_LOGW_RL(10000, "cannot reopen log %s after rotation: %s", l->path, strerror(errno));
    }
    count(l, &l->stats.rotations, 1);
}

static void write_all(struct gw_log *l, const char *p, size_t n)
{
    while (n > 0 && l->fd >= 0) {
        ssize_t w = write(l->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            count(l, &l->stats.errors, 1);
            KV_LOGW_RL(10000, "log write to %s failed: %s", l->path, strerror(errno));
            return;
        }
        p += w;
        n -= (size_t)w;
        l->size += (uint64_t)w;
    }
}

/* Writes whole lines p[0..n), rotating between lines. */
static void write_lines(struct gw_log *l, const char *p, size_t n)
{
    if (l->fd < 0 && open_file(l, NULL, 0) < 0) {
        count(l, &l->stats.errors, 1);
        return;
    }
    while (n > 0) {
        if (l->max_bytes == 0 || l->size + n <= l->max_bytes) {
            write_all(l, p, n);
            return;
        }
        /* the longest prefix of whole lines that still fits */
        size_t room = l->size < l->max_bytes ? (size_t)(l->max_bytes - l->size) : 0;
        size_t take = 0;
        while (take < n) {
            const char *nl = memchr(p + take, '\n', n - take);
            size_t end = nl ? (size_t)(nl - p) + 1 : n;
            if (end > room)
                break;
            take = end;
        }
        if (take == 0 && l->size == 0) {
            /* one line longer than max_bytes: it gets a file of its own */
            const char *nl = memchr(p, '\n', n);
            take = nl ? (size_t)(nl - p) + 1 : n;
        }
        if (take > 0)
            write_all(l, p, take);
        p += take;
        n -= take;
        if (n > 0)
            rotate(l);
    }
}

static void *writer_main(void *arg)
{
    struct gw_log *l = arg;
    kv_log_set_thread_name("gw-log");
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (l->cur_len == 0 && !l->stop &&
               !atomic_load_explicit(&l->reopen, memory_order_acquire)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += GW_LOG_WAKE_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        }
        bool stop = l->stop;
        char *buf = l->cur;
        size_t len = l->cur_len;
        uint32_t lines = l->cur_lines;
        l->cur = l->spare;
        l->cur_len = 0;
        l->cur_lines = 0;
        l->spare = buf;
        pthread_mutex_unlock(&l->mu);

        if (atomic_exchange_explicit(&l->reopen, false, memory_order_acq_rel)) {
            if (l->fd >= 0)
                close(l->fd);
            l->fd = -1;
            if (open_file(l, NULL, 0) < 0)
                count(l, &l->stats.errors, 1);
            else
                KV_LOGI("reopened log %s", l->path);
        }
        if (len > 0) {
            write_lines(l, buf, len);
            count(l, &l->stats.lines, lines);
        }
        if (stop)
            break;
    }
    return NULL;
}

int gw_log_open(const char *path, uint64_t max_bytes, int keep, size_t buffer_bytes,
                struct gw_log **out, char *err, size_t errlen)
{
    struct gw_log *l = kv_calloc(1, sizeof(*l));
    if (!l)
        return KV_ENOMEM;
    int rc = KV_ENOMEM;
    if (buffer_bytes < 4096)
        buffer_bytes = 4096;
    l->cap = buffer_bytes / 2;
    l->fd = -1;
    l->max_bytes = max_bytes;
    l->keep = keep < 0 ? 0 : keep;
    l->path = kv_strdup(path);
    l->cur = kv_malloc(l->cap);
    l->spare = kv_malloc(l->cap);
    if (!l->path || !l->cur || !l->spare)
        goto out_free;
    rc = open_file(l, err, errlen);
    if (rc < 0)
        goto out_free;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&l->thr, NULL, writer_main, l) != 0) {
        rc = KV_EAGAIN;
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        close(l->fd);
        goto out_free;
    }
    *out = l;
    return KV_OK;
out_free:
    kv_free(l->cur);
    kv_free(l->spare);
    kv_free(l->path);
    kv_free(l);
    return rc;
}

void gw_log_append(struct gw_log *l, const char *p, size_t n, uint32_t nlines)
{
    pthread_mutex_lock(&l->mu);
    if (l->cur_len + n > l->cap) {
        l->stats.dropped += nlines;
    } else {
        bool was_empty = l->cur_len == 0;
        memcpy(l->cur + l->cur_len, p, n);
        l->cur_len += n;
        l->cur_lines += nlines;
        if (was_empty)
            pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
}

void gw_log_reopen(struct gw_log *l)
{
    atomic_store_explicit(&l->reopen, true, memory_order_release);
}

void gw_log_stats(struct gw_log *l, struct gw_log_stats *out)
{
    pthread_mutex_lock(&l->mu);
    *out = l->stats;
    pthread_mutex_unlock(&l->mu);
}

void gw_log_close(struct gw_log *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thr, NULL);
    if (l->fd >= 0)
        close(l->fd);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    kv_free(l->cur);
    kv_free(l->spare);
    kv_free(l->path);
    kv_free(l);
}
