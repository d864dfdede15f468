/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ssd.c - the storage node's SSD tier: one file per object with a self-describing header
 * (format in ssd.h).
 *
 * Design:
 *  - s->tab maps key -> struct ssd_ent {file name, size, checksum, expire, created, pin}; it is
 *    rebuilt at open by scanning the directory (headers and value checksums verified).
 *  - Writes: temp file, write header + value, fsync, rename over the final name, fsync the
 *    directory; only then the table changes. Capacity counts whole file sizes; to make room the
 *    oldest entries (smallest created) are unlinked first and reported to the caller.
 *  - Reads verify the checksum; a mismatch moves the file to corrupt/ and forgets it.
 *
 * Invariants: 1. every table entry names a complete, verified-at-open or fsync'ed file;
 * 2. used = sum of the entries' file sizes.
 *
 * Thread model: any thread. s->lock guards tab and used (leaf). Reads open the file under the
 * lock (so a concurrent remove cannot swap it) and read it outside; writes build the temp file
 * outside the lock and rename under it.
 */
#define KV_LOG_COMPONENT "ssd"
#include "store/ssd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"
#include "kvstash/store.h"
#include "store/master_map.h"

static const uint8_t ssd_magic[8] = {'K', 'V', 'S', 'S', 'D', '0', '1', '\n'};

struct ssd_ent {
    char name[40]; /* 32 hex + ".kvo" */
    uint64_t size, checksum, file_size;
    int64_t expire_at_ms, created_ms;
    bool pin;
};

struct kv_ssd {
    char *dir;
    int dfd;
    uint64_t capacity;
    pthread_mutex_t lock; /* guards tab, used; leaf */
    struct kv_smap tab;   /* key -> struct ssd_ent */
    uint64_t used;
};

/* ---- header codec ---- */

static void w32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void w64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t r32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t r64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t hdr_check(const uint8_t *fixed52, const char *key, uint32_t klen)
{
    uint64_t h = kv_hash64(fixed52, 52);
    return (uint32_t)kv_hash64_seed(key, klen, h);
}

int kv_ssd_hdr_encode(const struct kv_ssd_hdr *h, const char *key, uint8_t *out, size_t cap,
                      size_t *n)
{
    if (!h || !key || h->key_len == 0 || h->key_len > KV_STORE_MAX_KEY)
        return KV_EINVAL;
    size_t need = KV_SSD_HDR_FIXED + h->key_len;
    if (cap < need)
        return KV_E2BIG;
    memcpy(out, ssd_magic, 8);
    w32(out + 8, KV_SSD_VERSION);
    w32(out + 12, h->key_len);
    w64(out + 16, h->size);
    w64(out + 24, h->checksum);
    w64(out + 32, (uint64_t)h->expire_at_ms);
    w64(out + 40, (uint64_t)h->created_ms);
    w32(out + 48, h->flags);
    w32(out + 52, hdr_check(out, key, h->key_len));
    memcpy(out + KV_SSD_HDR_FIXED, key, h->key_len);
    *n = need;
    return KV_OK;
}

int kv_ssd_hdr_decode(const uint8_t *p, size_t n, struct kv_ssd_hdr *h, const char **key,
                      size_t *hdr_len)
{
    if (!p || n < KV_SSD_HDR_FIXED || memcmp(p, ssd_magic, 8) != 0)
        return KV_EPROTO;
    if (r32(p + 8) != KV_SSD_VERSION)
        return KV_EPROTO;
    uint32_t klen = r32(p + 12);
    if (klen == 0 || klen > KV_STORE_MAX_KEY || n - KV_SSD_HDR_FIXED < klen)
        return KV_EPROTO;
    const char *k = (const char *)p + KV_SSD_HDR_FIXED;
    if (memchr(k, '\0', klen))
        return KV_EPROTO;
    if (r32(p + 52) != hdr_check(p, k, klen))
        return KV_EPROTO;
    struct kv_ssd_hdr t = {
        .key_len = klen,
        .size = r64(p + 16),
        .checksum = r64(p + 24),
        .expire_at_ms = (int64_t)r64(p + 32),
        .created_ms = (int64_t)r64(p + 40),
        .flags = r32(p + 48),
    };
    *h = t;
    *key = k;
    *hdr_len = KV_SSD_HDR_FIXED + klen;
    return KV_OK;
}

/* ---- helpers ---- */

static void file_name(const char *key, char out[40])
{
    uint64_t hi, lo;
    kv_hash128(key, strlen(key), &hi, &lo);
    snprintf(out, 40, "%016llx%016llx.kvo", (unsigned long long)hi, (unsigned long long)lo);
}

static void move_aside(struct kv_ssd *s, const char *name, const char *why)
{
    mkdirat(s->dfd, "corrupt", 0755);
    char dst[80];
    snprintf(dst, sizeof(dst), "corrupt/%s", name);
    if (renameat(s->dfd, name, s->dfd, dst) < 0)
        unlinkat(s->dfd, name, 0);
    KV_LOGW("SSD file %s/%s: %s; moved to %s/corrupt/ (not served)", s->dir, name, why, s->dir);
}

static int read_full_fd(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0 ? KV_EIO : kv_err_from_errno(errno);
        c += r;
        n -= (size_t)r;
    }
    return KV_OK;
}

static int write_full_fd(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t r = write(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return kv_err_from_errno(errno);
        c += r;
        n -= (size_t)r;
    }
    return KV_OK;
}

/* Reads and verifies a whole file. On success fills e and *key (owned). */
static int load_file(struct kv_ssd *s, const char *name, struct ssd_ent *e, char **key,
                     const char **why)
{
    int fd = openat(s->dfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *why = "cannot open";
        return KV_EIO;
    }
    int rc = KV_EPROTO;
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) < 0 || st.st_size < (off_t)KV_SSD_HDR_FIXED) {
        *why = "truncated header";
        goto out;
    }
    size_t hmax = KV_SSD_HDR_FIXED + KV_STORE_MAX_KEY;
    size_t hn = (size_t)st.st_size < hmax ? (size_t)st.st_size : hmax;
    uint8_t *hb = kv_malloc(hmax);
    if (!hb) {
        rc = KV_ENOMEM;
        goto out;
    }
    if (read_full_fd(fd, hb, hn) < 0) {
        kv_free(hb);
        *why = "read error";
        goto out;
    }
    struct kv_ssd_hdr h;
    const char *k;
    size_t hl;
    if (kv_ssd_hdr_decode(hb, hn, &h, &k, &hl) < 0) {
        kv_free(hb);
        *why = "bad header";
        goto out;
    }
    if ((uint64_t)st.st_size != hl + h.size) {
        kv_free(hb);
        *why = "file size does not match the header";
        goto out;
    }
    *key = kv_strndup(k, h.key_len);
    kv_free(hb);
    buf = kv_malloc(h.size ? h.size : 1);
    if (!*key || !buf) {
        kv_free(*key);
        rc = KV_ENOMEM;
        goto out;
    }
    if (pread(fd, buf, h.size, (off_t)hl) != (ssize_t)h.size) {
        kv_free(*key);
        *why = "short value";
        goto out;
    }
    if (kv_hash64(buf, h.size) != h.checksum) {
        kv_free(*key);
        *why = "value checksum mismatch";
        goto out;
    }
    char expect[40];
    file_name(*key, expect);
    if (strcmp(expect, name) != 0) {
        kv_free(*key);
        *why = "file name does not match its key";
        goto out;
    }
    memcpy(e->name, expect, sizeof(e->name));
    e->size = h.size;
    e->checksum = h.checksum;
    e->file_size = (uint64_t)st.st_size;
    e->expire_at_ms = h.expire_at_ms;
    e->created_ms = h.created_ms;
    e->pin = h.flags & 1;
    rc = KV_OK;
out:
    kv_free(buf);
    close(fd);
    return rc;
}

int kv_ssd_open(const char *dir, uint64_t capacity, struct kv_ssd **out)
{
    if (!dir || !out || !capacity)
        return KV_EINVAL;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        KV_LOGE("SSD dir %s: %s", dir, strerror(errno));
        return kv_err_from_errno(errno);
    }
    struct kv_ssd *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->dir = kv_strdup(dir);
    s->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!s->dir || s->dfd < 0) {
        int rc = s->dir ? kv_err_from_errno(errno) : KV_ENOMEM;
        KV_LOGE("SSD dir %s: cannot open: %s", dir, kv_strerror(rc));
        if (s->dfd >= 0)
            close(s->dfd);
        kv_free(s->dir);
        kv_free(s);
        return rc;
    }
    s->capacity = capacity;
    pthread_mutex_init(&s->lock, NULL);
    kv_smap_init(&s->tab);
    int dfd2 = dup(s->dfd);
    DIR *d = dfd2 >= 0 ? fdopendir(dfd2) : NULL;
    if (!d) {
        if (dfd2 >= 0)
            close(dfd2);
        kv_ssd_close(s);
        return KV_EIO;
    }
    uint64_t bad = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (nm[0] == '.' && strncmp(nm, ".tmp-", 5) == 0) {
            unlinkat(s->dfd, nm, 0);
            continue;
        }
        size_t l = strlen(nm);
        if (l < 4 || strcmp(nm + l - 4, ".kvo") != 0)
            continue;
        struct ssd_ent *e = kv_calloc(1, sizeof(*e));
        char *key = NULL;
        const char *why = "unknown";
        int rc = e ? load_file(s, nm, e, &key, &why) : KV_ENOMEM;
        if (rc == KV_ENOMEM) {
            kv_free(e);
            closedir(d);
            kv_ssd_close(s);
            return KV_ENOMEM;
        }
        if (rc < 0) {
            kv_free(e);
            move_aside(s, nm, why);
            bad++;
            continue;
        }
        struct ssd_ent *old = kv_smap_get(&s->tab, key);
        if (old) { /* cannot happen with name == hash(key); keep the newer */
            kv_free(e);
            kv_free(key);
            continue;
        }
        if (kv_smap_put(&s->tab, key, e) < 0) {
            kv_free(e);
            kv_free(key);
            closedir(d);
            kv_ssd_close(s);
            return KV_ENOMEM;
        }
        s->used += e->file_size;
        kv_free(key);
    }
    closedir(d);
    KV_LOGI("SSD tier %s: %zu objects, %llu bytes used of %llu (%llu bad files moved aside)", dir,
            s->tab.n, (unsigned long long)s->used, (unsigned long long)capacity,
            (unsigned long long)bad);
    *out = s;
    return KV_OK;
}

static int free_ent(void *ud, const char *key, void *val)
{
    (void)ud;
    (void)key;
    kv_free(val);
    return 1;
}

void kv_ssd_close(struct kv_ssd *s)
{
    if (!s)
        return;
    kv_smap_each(&s->tab, free_ent, NULL);
    kv_smap_fini(&s->tab);
    pthread_mutex_destroy(&s->lock);
    if (s->dfd >= 0)
        close(s->dfd);
    kv_free(s->dir);
    kv_free(s);
}

struct each_ctx {
    void (*fn)(void *ud, const struct kv_ssd_obj *o);
    void *ud;
};

static int each_cb(void *ud, const char *key, void *val)
{
    struct each_ctx *c = ud;
    struct ssd_ent *e = val;
    struct kv_ssd_obj o = {key, e->size, e->checksum, e->expire_at_ms, e->created_ms, e->pin};
    c->fn(c->ud, &o);
    return 0;
}

void kv_ssd_foreach(struct kv_ssd *s, void (*fn)(void *ud, const struct kv_ssd_obj *o), void *ud)
{
    struct each_ctx c = {fn, ud};
    pthread_mutex_lock(&s->lock);
    kv_smap_each(&s->tab, each_cb, &c);
    pthread_mutex_unlock(&s->lock);
}

struct oldest_ctx {
    const char *skip;
    char *key;
    int64_t created;
};

static int oldest_cb(void *ud, const char *key, void *val)
{
    struct oldest_ctx *c = ud;
    struct ssd_ent *e = val;
    if (c->skip && strcmp(key, c->skip) == 0)
        return 0;
    if (!c->key || e->created_ms < c->created) {
        c->key = (char *)key;
        c->created = e->created_ms;
    }
    return 0;
}

int kv_ssd_write(struct kv_ssd *s, const struct kv_ssd_obj *o, const void *data,
                 void (*dropped)(void *ud, const char *key), void *ud)
{
    size_t klen = strlen(o->key);
    if (klen == 0 || klen > KV_STORE_MAX_KEY)
        return KV_EINVAL;
    uint64_t fsize = KV_SSD_HDR_FIXED + klen + o->size;
    if (fsize > s->capacity)
        return KV_ENOSPC;
    uint8_t *hb = kv_malloc(KV_SSD_HDR_FIXED + klen);
    struct ssd_ent *e = kv_calloc(1, sizeof(*e));
    if (!hb || !e) {
        kv_free(hb);
        kv_free(e);
        return KV_ENOMEM;
    }
    struct kv_ssd_hdr h = {(uint32_t)klen,  o->size,       o->checksum,
                           o->expire_at_ms, o->created_ms, o->pin ? 1u : 0u};
    size_t hl;
    kv_ssd_hdr_encode(&h, o->key, hb, KV_SSD_HDR_FIXED + klen, &hl);
    file_name(o->key, e->name);
    char tmp[48];
    snprintf(tmp, sizeof(tmp), ".tmp-%s", e->name);
    int rc = KV_OK;
    int fd = openat(s->dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = kv_err_from_errno(errno);
        goto out;
    }
    rc = write_full_fd(fd, hb, hl);
    if (rc == KV_OK)
        rc = write_full_fd(fd, data, o->size);
    if (rc == KV_OK && fsync(fd) < 0)
        rc = kv_err_from_errno(errno);
    close(fd);
    if (rc < 0) {
        unlinkat(s->dfd, tmp, 0);
        KV_LOGW_RL(5000, "SSD write %s/%s: %s", s->dir, tmp, kv_strerror(rc));
        goto out;
    }
    e->size = o->size;
    e->checksum = o->checksum;
    e->file_size = fsize;
    e->expire_at_ms = o->expire_at_ms;
    e->created_ms = o->created_ms;
    e->pin = o->pin;
    /* make room (oldest first), then publish */
    for (;;) {
        char *victim = NULL;
        pthread_mutex_lock(&s->lock);
        struct ssd_ent *old = kv_smap_get(&s->tab, o->key);
        uint64_t after = s->used - (old ? old->file_size : 0) + fsize;
        if (after <= s->capacity) {
            if (old) {
                s->used -= old->file_size;
                kv_free(kv_smap_del(&s->tab, o->key));
            }
            rc = kv_smap_put(&s->tab, o->key, e);
            if (rc == KV_OK) {
                if (renameat(s->dfd, tmp, s->dfd, e->name) < 0) {
                    rc = kv_err_from_errno(errno);
                    kv_smap_del(&s->tab, o->key);
                } else {
                    s->used += fsize;
                    e = NULL;
                }
            }
            pthread_mutex_unlock(&s->lock);
            break;
        }
        struct oldest_ctx c = {o->key, NULL, 0};
        kv_smap_each(&s->tab, oldest_cb, &c);
        if (c.key) {
            struct ssd_ent *v = kv_smap_get(&s->tab, c.key);
            unlinkat(s->dfd, v->name, 0);
            s->used -= v->file_size;
            victim = kv_strdup(c.key);
            kv_free(kv_smap_del(&s->tab, c.key));
        }
        pthread_mutex_unlock(&s->lock);
        if (!c.key) {
            rc = KV_ENOSPC;
            break;
        }
        if (victim) {
            KV_LOGD("SSD full: dropped %s", victim);
            if (dropped)
                dropped(ud, victim);
            kv_free(victim);
        }
    }
    if (e) /* not published */
        unlinkat(s->dfd, tmp, 0);
    else
        fsync(s->dfd);
out:
    kv_free(e);
    kv_free(hb);
    return rc;
}

int kv_ssd_read(struct kv_ssd *s, const char *key, int64_t created, void *dst, size_t cap,
                uint64_t *size)
{
    pthread_mutex_lock(&s->lock);
    struct ssd_ent *e = kv_smap_get(&s->tab, key);
    if (!e || (created && e->created_ms != created)) {
        pthread_mutex_unlock(&s->lock);
        return KV_ENOENT;
    }
    struct ssd_ent copy = *e;
    int fd = openat(s->dfd, e->name, O_RDONLY | O_CLOEXEC);
    pthread_mutex_unlock(&s->lock);
    if (size)
        *size = copy.size;
    if (fd < 0)
        return KV_EIO;
    if (cap < copy.size) {
        close(fd);
        return KV_E2BIG;
    }
    off_t at = (off_t)(copy.file_size - copy.size);
    ssize_t r = pread(fd, dst, copy.size, at);
    close(fd);
    if (r != (ssize_t)copy.size || kv_hash64(dst, copy.size) != copy.checksum) {
        pthread_mutex_lock(&s->lock);
        struct ssd_ent *cur = kv_smap_get(&s->tab, key);
        if (cur && cur->created_ms == copy.created_ms) {
            s->used -= cur->file_size;
            kv_free(kv_smap_del(&s->tab, key));
            move_aside(s, copy.name, r != (ssize_t)copy.size ? "short read" : "checksum mismatch");
        }
        pthread_mutex_unlock(&s->lock);
        return r != (ssize_t)copy.size ? KV_EIO : KV_ECHECKSUM;
    }
    return KV_OK;
}

int kv_ssd_remove(struct kv_ssd *s, const char *key, int64_t created)
{
    pthread_mutex_lock(&s->lock);
    struct ssd_ent *e = kv_smap_get(&s->tab, key);
    if (!e || (created && e->created_ms != created)) {
        pthread_mutex_unlock(&s->lock);
        return KV_ENOENT;
    }
    unlinkat(s->dfd, e->name, 0);
    s->used -= e->file_size;
    kv_free(kv_smap_del(&s->tab, key));
    pthread_mutex_unlock(&s->lock);
    return KV_OK;
}

int kv_ssd_stat(struct kv_ssd *s, const char *key, struct kv_ssd_obj *o)
{
    pthread_mutex_lock(&s->lock);
    struct ssd_ent *e = kv_smap_get(&s->tab, key);
    if (e) {
        o->key = NULL;
        o->size = e->size;
        o->checksum = e->checksum;
        o->expire_at_ms = e->expire_at_ms;
        o->created_ms = e->created_ms;
        o->pin = e->pin;
    }
    pthread_mutex_unlock(&s->lock);
    return e ? KV_OK : KV_ENOENT;
}

bool kv_ssd_has(struct kv_ssd *s, const char *key, int64_t *created)
{
    pthread_mutex_lock(&s->lock);
    struct ssd_ent *e = kv_smap_get(&s->tab, key);
    if (e && created)
        *created = e->created_ms;
    pthread_mutex_unlock(&s->lock);
    return e != NULL;
}

uint64_t kv_ssd_used(struct kv_ssd *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t u = s->used;
    pthread_mutex_unlock(&s->lock);
    return u;
}

uint64_t kv_ssd_count(struct kv_ssd *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t n = s->tab.n;
    pthread_mutex_unlock(&s->lock);
    return n;
}

uint64_t kv_ssd_capacity(const struct kv_ssd *s)
{
    return s->capacity;
}
