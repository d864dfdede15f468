/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer.c - the transfer engine: segments, targets, batches, transport selection and the
 * publication of segment descriptors in metadata. Transports live in xfer_tcp.c (TCP),
 * xfer_shm.c (memfd mapping) and xfer_rdma.c (libibverbs; untested data path); the wire format in
 * xfer_frame.c, the descriptor in xfer_desc.c. Design note: docs/design/xfer.md.
 *
 * Objects and ids: segments, targets and batches live in three idtabs guarded by x->lock;
 * their ids ({index, generation}) are what the API hands out, so a stale id misses
 * (KV_EXFER_NOSEG / KV_EXFER_NOBATCH) instead of reaching freed memory.
 *
 * Invariants
 *  1. A segment's memory stays mapped while s->uses > 0 (a server thread or a local copy is
 *     using it). Unregister removes it from the table first (no new users), withdraws the
 *     descriptor, then waits for uses to drain before releasing memory, so caller-owned
 *     memory is never touched after kv_xfer_unregister() returns.
 *  2. A target is refcounted: the table holds one ref, every request in flight (every TCP
 *     piece) one more. Its mapping (shm) and its peer use (tcp) go with the last ref.
 *  3. A batch is freed only when pending == 0 and no thread waits on it (b->waiters), both
 *     checked under b->lock; a request completes by storing its status and then decrementing
 *     pending under b->lock, after which the completer touches nothing of the batch.
 *  4. Descriptors are published with create-if-absent (kv_meta_cas) bound to one lease per
 *     engine, auto-renewed by the meta keeper. If the lease is lost, the lost callback (found
 *     through a registry keyed by a serial number, so a callback racing with destroy never
 *     touches a freed engine) grants a new lease and re-publishes every descriptor.
 *
 * Request life: PENDING -> (bounds fail | local/shm memcpy | TCP pieces answered) -> KV_OK or
 * error. A WRITE over TCP is complete only when the target acknowledged it after the bytes
 * were in its memory; over shm or local when memcpy returned.
 *
 * Thread model: any thread may call any function (except concurrently with destroy). Local
 * and shm requests are copied on the submitting thread; TCP requests are queued to the TCP
 * client's workers. Waiting uses b->cond (CLOCK_MONOTONIC); nothing busy-polls.
 * Locks: see xfer_int.h for the one lock order. x->meta_lock guards lease and pubs and is
 * held across metadata calls; x->lock guards the three tables and s->uses / s->removed.
 */
#define KV_LOG_COMPONENT "xfer"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "xfer/xfer_int.h"

#define DEFAULT_CONNS 4
#define DEFAULT_WORKERS 2
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_TTL_S 10
#define MAX_BATCH (1u << 24)
/* The RDMA data path has never run on hardware (see xfer_rdma.c): until it has, "auto" does
 * not pick it and only a forced "rdma" protocol uses it. */
#define XFER_RDMA_AUTO 0

enum xfer_proto {
    PROTO_AUTO,
    PROTO_TCP,
    PROTO_SHM,
    PROTO_RDMA,
};

struct xfer_seg {
    uint64_t id;
    char name[KV_XFER_NAME_MAX + 1];
    void *addr;
    size_t len;
    int memfd; /* -1 for caller-owned memory */
    void *mr;  /* RDMA memory region, or NULL */
    uint32_t rkey;
    int uses; /* x->lock */
    bool removed;
};

/* A published descriptor (x->meta_lock). */
struct xfer_pub {
    struct xfer_pub *next;
    uint64_t seg_id;
    char *key;
    char *json;
    size_t len;
};

struct kv_xfer {
    struct kv_meta *meta;
    char *cluster;
    char *token;
    int timeout_ms;
    int lease_ttl_s;
    enum xfer_proto proto;
    char adv_host[256];
    uint16_t port;
    bool have_rdma;
    char rdma_dev[64];
    char rdma_gid[64];
    struct xfer_rdma *rdma; /* NULL without a device */
    _Atomic bool stopping;

    pthread_mutex_t meta_lock; /* guards lease, pubs; held across metadata calls */
    int64_t lease;             /* 0 = none granted yet */
    struct xfer_pub *pubs;

    pthread_mutex_t lock;    /* guards segs, targets, batches, seg uses/removed */
    pthread_cond_t seg_cond; /* a removed segment's uses dropped */
    struct kv_idtab segs;
    struct kv_idtab targets;
    struct kv_idtab batches;

    struct xfer_tcp_server *srv;
    struct xfer_tcp_client *cli;

    /* lease-lost registry (g_reg_lock) */
    struct kv_xfer *reg_next;
    uint64_t serial;
    int lost_busy;
};

static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_reg_cond = PTHREAD_COND_INITIALIZER;
static struct kv_xfer *g_reg;
static uint64_t g_serial;

const char *kv_xfer_token(const struct kv_xfer *x)
{
    return x->token;
}

int kv_xfer_timeout_ms(const struct kv_xfer *x)
{
    return x->timeout_ms;
}

struct xfer_rdma *kv_xfer_rdma_ctx(const struct kv_xfer *x)
{
    return x->rdma;
}

bool kv_xfer_stopping(const struct kv_xfer *x)
{
    return atomic_load_explicit(&x->stopping, memory_order_acquire);
}

int64_t kv_xfer_lease_id(struct kv_xfer *x)
{
    pthread_mutex_lock(&x->meta_lock);
    int64_t l = x->lease;
    pthread_mutex_unlock(&x->meta_lock);
    return l;
}

/* ------------------------------------------------------------------ segments */

struct xfer_seg *kv_xfer_seg_get(struct kv_xfer *x, uint64_t seg_id, void **addr, size_t *len)
{
    pthread_mutex_lock(&x->lock);
    struct xfer_seg *s = kv_idtab_get(&x->segs, seg_id);
    if (s) {
        s->uses++;
        *addr = s->addr;
        *len = s->len;
    }
    pthread_mutex_unlock(&x->lock);
    return s;
}

void kv_xfer_seg_put(struct kv_xfer *x, struct xfer_seg *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&x->lock);
    if (--s->uses == 0 && s->removed)
        pthread_cond_broadcast(&x->seg_cond);
    pthread_mutex_unlock(&x->lock);
}

static void seg_free(struct xfer_seg *s)
{
    kv_xfer_rdma_dereg(s->mr);
    if (s->memfd >= 0) {
        munmap(s->addr, s->len);
        close(s->memfd);
    }
    kv_free(s);
}

static int check_name(const char *name)
{
    if (!name || !*name) {
        KV_LOGW("segment name is empty");
        return KV_EINVAL;
    }
    size_t n = strnlen(name, KV_XFER_NAME_MAX + 1);
    if (n > KV_XFER_NAME_MAX) {
        KV_LOGW("segment name is longer than %d bytes", KV_XFER_NAME_MAX);
        return KV_EINVAL;
    }
    for (const char *c = name; *c; c++) {
        if (*c == '/' || (unsigned char)*c < 0x20 || *c == 0x7f) {
            KV_LOGW("segment name '%s' contains '/' or a control character", name);
            return KV_EINVAL;
        }
    }
    return KV_OK;
}

static char *seg_key(const struct kv_xfer *x, const char *name)
{
    struct kv_buf b;
    kv_buf_init(&b);
    if (kv_buf_appendf(&b, "/kvstash/%s/segments/%s", x->cluster, name) < 0)
        return NULL;
    return kv_buf_steal(&b, NULL);
}

static int lease_lost(void *ud, int64_t lease);

/* Puts every published descriptor again under the current lease (meta_lock held). */
static void republish(struct kv_xfer *x)
{
    int n = 0;
    for (struct xfer_pub *p = x->pubs; p; p = p->next) {
        int r = kv_meta_cas(x->meta, p->key, NULL, 0, p->json, p->len, x->lease);
        if (r < 0)
            KV_LOGE("xfer: cannot re-publish %s: %s", p->key,
                    r == KV_EMETA_CAS ? "the name was taken meanwhile" : kv_strerror(r));
        else
            n++;
    }
    if (x->pubs)
        KV_LOGW("xfer: re-published %d segment descriptor(s) under a new lease", n);
}

/* Grants and auto-renews the engine's lease if it has none (meta_lock held). A lease granted
 * after a lost one re-publishes every descriptor. */
static int ensure_lease(struct kv_xfer *x)
{
    if (x->lease > 0)
        return KV_OK;
    int64_t lease;
    int rc = kv_meta_lease_grant(x->meta, x->lease_ttl_s, &lease);
    if (rc < 0) {
        KV_LOGE("xfer: cannot grant a metadata lease: %s", kv_strerror(rc));
        return rc;
    }
    rc = kv_meta_lease_autorenew(x->meta, lease, x->lease_ttl_s, lease_lost,
                                 (void *)(uintptr_t)x->serial);
    if (rc < 0) {
        kv_meta_lease_revoke(x->meta, lease);
        return rc;
    }
    x->lease = lease;
    republish(x);
    return KV_OK;
}

static int lease_lost(void *ud, int64_t lease)
{
    uint64_t serial = (uint64_t)(uintptr_t)ud;
    pthread_mutex_lock(&g_reg_lock);
    struct kv_xfer *x = g_reg;
    while (x && x->serial != serial)
        x = x->reg_next;
    if (x)
        x->lost_busy++;
    pthread_mutex_unlock(&g_reg_lock);
    if (!x)
        return KV_OK; /* the engine is gone */
    int rc = KV_OK;
    pthread_mutex_lock(&x->meta_lock);
    if (x->lease == lease) {
        KV_LOGW("xfer: metadata lease %lld lost; its descriptors are gone", (long long)lease);
        x->lease = 0;
    }
    /* a failure (metadata down) is retried by the keeper; a registration meanwhile may have
     * granted a lease and re-published already */
    if (x->lease == 0)
        rc = ensure_lease(x);
    pthread_mutex_unlock(&x->meta_lock);
    pthread_mutex_lock(&g_reg_lock);
    x->lost_busy--;
    pthread_cond_broadcast(&g_reg_cond);
    pthread_mutex_unlock(&g_reg_lock);
    return rc;
}

static int publish(struct kv_xfer *x, struct xfer_seg *s)
{
    const char *boot, *host;
    kv_xfer_host_identity(&boot, &host);
    struct kv_xfer_desc *d = kv_calloc(1, sizeof(*d));
    if (!d)
        return KV_ENOMEM;
    snprintf(d->name, sizeof(d->name), "%s", s->name);
    d->size = s->len;
    d->seg_id = s->id;
    snprintf(d->boot_id, sizeof(d->boot_id), "%s", boot);
    snprintf(d->hostname, sizeof(d->hostname), "%s", host);
    d->pid = getpid();
    snprintf(d->tcp_host, sizeof(d->tcp_host), "%s", x->adv_host);
    d->tcp_port = x->port;
    if (s->memfd >= 0)
        snprintf(d->shm, sizeof(d->shm), "/proc/%d/fd/%d", (int)getpid(), s->memfd);
    if (x->have_rdma) {
        d->has_rdma = true;
        snprintf(d->rdma_dev, sizeof(d->rdma_dev), "%s", x->rdma_dev);
        snprintf(d->rdma_gid, sizeof(d->rdma_gid), "%s", x->rdma_gid);
        if (s->mr) {
            d->rdma_addr = (uint64_t)(uintptr_t)s->addr;
            d->rdma_rkey = s->rkey;
        }
    }
    int rc = KV_ENOMEM;
    struct xfer_pub *p = kv_calloc(1, sizeof(*p));
    if (!p)
        goto out_free_desc;
    p->seg_id = s->id;
    p->key = seg_key(x, s->name);
    if (!p->key)
        goto out_free_pub;
    rc = kv_xfer_desc_encode(d, &p->json, &p->len);
    if (rc < 0)
        goto out_free_pub;
    pthread_mutex_lock(&x->meta_lock);
    rc = ensure_lease(x);
    if (rc == KV_OK)
        rc = kv_meta_cas(x->meta, p->key, NULL, 0, p->json, p->len, x->lease);
    if (rc == KV_OK) {
        p->next = x->pubs;
        x->pubs = p;
        p = NULL;
    } else if (rc == KV_EMETA_CAS) {
        KV_LOGW("xfer: segment name '%s' is already registered in cluster '%s'", s->name,
                x->cluster);
        rc = KV_EEXIST;
    }
    pthread_mutex_unlock(&x->meta_lock);
out_free_pub:
    if (p) {
        kv_free(p->key);
        kv_free(p->json);
        kv_free(p);
    }
out_free_desc:
    kv_free(d);
    return rc;
}

static void unpublish(struct kv_xfer *x, uint64_t seg_id)
{
    pthread_mutex_lock(&x->meta_lock);
    for (struct xfer_pub **pp = &x->pubs; *pp; pp = &(*pp)->next) {
        struct xfer_pub *p = *pp;
        if (p->seg_id != seg_id)
            continue;
        *pp = p->next;
        /* delete only our own descriptor (the name may have passed to another process after
         * a lost lease) */
        char *cur = NULL;
        size_t len = 0;
        if (kv_meta_get(x->meta, p->key, &cur, &len) == KV_OK && len == p->len &&
            memcmp(cur, p->json, len) == 0)
            kv_meta_del(x->meta, p->key);
        kv_meta_free(cur);
        kv_free(p->key);
        kv_free(p->json);
        kv_free(p);
        break;
    }
    pthread_mutex_unlock(&x->meta_lock);
}

static int seg_add(struct kv_xfer *x, const char *name, void *addr, size_t len, int memfd,
                   kv_seg_id *id)
{
    struct xfer_seg *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->addr = addr;
    s->len = len;
    s->memfd = memfd;
    if (x->rdma && kv_xfer_rdma_reg(x->rdma, addr, len, &s->mr, &s->rkey) < 0)
        KV_LOGW("xfer: segment '%s' is not reachable over RDMA", name);
    pthread_mutex_lock(&x->lock);
    int rc = kv_idtab_add(&x->segs, s, &s->id);
    pthread_mutex_unlock(&x->lock);
    if (rc < 0) {
        kv_xfer_rdma_dereg(s->mr);
        kv_free(s);
        return rc;
    }
    rc = publish(x, s);
    if (rc < 0) {
        pthread_mutex_lock(&x->lock);
        kv_idtab_remove(&x->segs, s->id);
        s->removed = true;
        while (s->uses > 0)
            pthread_cond_wait(&x->seg_cond, &x->lock);
        pthread_mutex_unlock(&x->lock);
        kv_xfer_rdma_dereg(s->mr);
        kv_free(s);
        return rc;
    }
    *id = s->id;
    return KV_OK;
}

int kv_xfer_segment_alloc(struct kv_xfer *x, const char *name, size_t len, void **addr,
                          kv_seg_id *id)
{
    if (!x || !addr || !id || len == 0)
        return KV_EINVAL;
    int rc = check_name(name);
    if (rc < 0)
        return rc;
    int fd;
    void *p;
    rc = kv_xfer_shm_create(name, len, &fd, &p);
    if (rc < 0) {
        KV_LOGE("xfer: cannot allocate %zu bytes of shared memory for '%s': %s", len, name,
                kv_strerror(rc));
        return rc;
    }
    rc = seg_add(x, name, p, len, fd, id);
    if (rc < 0) {
        munmap(p, len);
        close(fd);
        return rc;
    }
    *addr = p;
    return KV_OK;
}

int kv_xfer_huge_parse(const char *s, enum kv_xfer_huge *out)
{
    static const struct {
        const char *word;
        enum kv_xfer_huge v;
    } words[] = {
        {"off", KV_XFER_HUGE_OFF}, {"auto", KV_XFER_HUGE_AUTO}, {"2M", KV_XFER_HUGE_2M},
        {"2MiB", KV_XFER_HUGE_2M}, {"1G", KV_XFER_HUGE_1G},     {"1GiB", KV_XFER_HUGE_1G},
    };
    for (size_t i = 0; s && out && i < KV_ARRAY_SIZE(words); i++) {
        if (strcasecmp(s, words[i].word) == 0) {
            *out = words[i].v;
            return KV_OK;
        }
    }
    KV_LOGW("huge pages '%s': want auto, 2M, 1G or off", s ? s : "(null)");
    return KV_EINVAL;
}

int kv_xfer_segment_alloc_huge(struct kv_xfer *x, const char *name, size_t len,
                               enum kv_xfer_huge huge, void **addr, kv_seg_id *id,
                               size_t *page_size)
{
    if (!x || !addr || !id || len == 0)
        return KV_EINVAL;
    size_t ps;
    switch (huge) {
    case KV_XFER_HUGE_OFF:
        ps = 0;
        break;
    case KV_XFER_HUGE_AUTO:
    case KV_XFER_HUGE_2M:
        ps = (size_t)2 << 20;
        break;
    case KV_XFER_HUGE_1G:
        ps = (size_t)1 << 30;
        break;
    default:
        return KV_EINVAL;
    }
    int rc = check_name(name);
    if (rc < 0)
        return rc;
    if (ps == 0) {
        rc = kv_xfer_segment_alloc(x, name, len, addr, id);
        if (rc == KV_OK && page_size)
            *page_size = (size_t)sysconf(_SC_PAGESIZE);
        return rc;
    }
    if (len > SIZE_MAX - ps)
        return KV_EINVAL;
    size_t hlen = (len + ps - 1) / ps * ps;
    int fd = -1;
    void *p = NULL;
    if (huge == KV_XFER_HUGE_AUTO) {
        /* auto asks the pool first, so that the fallback is one line, not an error */
        uint64_t nfree = 0, ntotal = 0;
        if (!kv_xfer_huge_pool(ps, &nfree, &ntotal) || nfree < hlen / ps) {
            KV_LOGW("xfer: segment '%s': huge pages auto: %zu 2 MiB pages needed, %llu of %llu "
                    "reserved are free; using 4 KiB pages",
                    name, hlen / ps, (unsigned long long)nfree, (unsigned long long)ntotal);
            return kv_xfer_segment_alloc_huge(x, name, len, KV_XFER_HUGE_OFF, addr, id, page_size);
        }
    }
    rc = kv_xfer_shm_create_huge(name, hlen, ps, &fd, &p);
    if (rc < 0 && huge == KV_XFER_HUGE_AUTO) {
        KV_LOGW("xfer: segment '%s': huge pages auto: %s; using 4 KiB pages", name,
                kv_strerror(rc));
        return kv_xfer_segment_alloc_huge(x, name, len, KV_XFER_HUGE_OFF, addr, id, page_size);
    }
    if (rc < 0)
        return rc;
    rc = seg_add(x, name, p, hlen, fd, id);
    if (rc < 0) {
        munmap(p, hlen);
        close(fd);
        return rc;
    }
    *addr = p;
    if (page_size)
        *page_size = ps;
    return KV_OK;
}

int kv_xfer_segment_register(struct kv_xfer *x, const char *name, void *addr, size_t len,
                             kv_seg_id *id)
{
    if (!x || !addr || !id || len == 0)
        return KV_EINVAL;
    int rc = check_name(name);
    if (rc < 0)
        return rc;
    return seg_add(x, name, addr, len, -1, id);
}

int kv_xfer_unregister(struct kv_xfer *x, kv_seg_id id)
{
    if (!x)
        return KV_EINVAL;
    pthread_mutex_lock(&x->lock);
    struct xfer_seg *s = kv_idtab_remove(&x->segs, id);
    if (s)
        s->removed = true;
    pthread_mutex_unlock(&x->lock);
    if (!s)
        return KV_EXFER_NOSEG;
    unpublish(x, id);
    pthread_mutex_lock(&x->lock);
    while (s->uses > 0)
        pthread_cond_wait(&x->seg_cond, &x->lock);
    pthread_mutex_unlock(&x->lock);
    seg_free(s);
    return KV_OK;
}

/* ------------------------------------------------------------------ targets */

static void target_ref(struct xfer_target *t, int n)
{
    atomic_fetch_add_explicit(&t->refs, n, memory_order_relaxed);
}

static void target_unref(struct xfer_target *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (t->map)
        munmap(t->map, t->map_len);
    kv_free(t->populated);
    if (t->peer)
        kv_xfer_tcp_peer_release(t->x->cli, t->peer);
    kv_xfer_rdma_chan_close(t->rdma);
    kv_free(t);
}

static const char *kind_name(enum xfer_kind k)
{
    switch (k) {
    case XFER_T_TCP:
        return "tcp";
    case XFER_T_RDMA:
        return "rdma";
    case XFER_T_SHM:
    case XFER_T_LOCAL:
        return "shm";
    }
    return "?";
}

/* Picks and sets up the transport of t (desc filled). */
static int target_connect(struct kv_xfer *x, struct xfer_target *t)
{
    const struct kv_xfer_desc *d = &t->desc;
    const char *boot, *host;
    kv_xfer_host_identity(&boot, &host);
    bool same_host = strcmp(d->boot_id, boot) == 0 && strcmp(d->hostname, host) == 0;
    bool local = false;
    if (same_host && d->pid == (int64_t)getpid()) {
        pthread_mutex_lock(&x->lock);
        struct xfer_seg *s = kv_idtab_get(&x->segs, d->seg_id);
        local = s && strcmp(s->name, d->name) == 0 && s->len == d->size;
        pthread_mutex_unlock(&x->lock);
    }
    switch (x->proto) {
    case PROTO_RDMA:
        if (!x->rdma || !d->has_rdma || !d->rdma_addr) {
            KV_LOGE("xfer: segment '%s': forced protocol rdma: %s", d->name,
                    !x->rdma       ? "no RDMA device on this host"
                    : !d->has_rdma ? "the segment's owner has no RDMA device"
                                   : "the segment is not registered with the owner's device");
            return KV_EXFER_NOTRANSPORT;
        }
        t->kind = XFER_T_RDMA;
        return kv_xfer_rdma_connect(x->rdma, d->tcp_host, d->tcp_port, &t->rdma);
    case PROTO_SHM:
    case PROTO_AUTO:
        if (local) {
            t->kind = XFER_T_LOCAL;
            return KV_OK;
        }
        if (same_host && d->shm[0]) {
            int rc = kv_xfer_shm_map(d, &t->map, &t->map_len);
            if (rc == KV_OK) {
                kv_xfer_shm_chunks_init(t);
                t->kind = XFER_T_SHM;
                return KV_OK;
            }
            if (rc == KV_ENOMEM)
                return rc;
        }
        if (x->proto == PROTO_SHM) {
            KV_LOGE("xfer: segment '%s': forced protocol shm, but it is %s", d->name,
                    !same_host   ? "on another host"
                    : !d->shm[0] ? "not shareable (registered memory, not allocated)"
                                 : "not mappable from this process");
            return KV_EXFER_NOTRANSPORT;
        }
        if (XFER_RDMA_AUTO && x->rdma && d->has_rdma && d->rdma_addr &&
            kv_xfer_rdma_connect(x->rdma, d->tcp_host, d->tcp_port, &t->rdma) == KV_OK) {
            t->kind = XFER_T_RDMA;
            return KV_OK;
        }
        break;
    case PROTO_TCP:
        break;
    }
    t->kind = XFER_T_TCP;
    return kv_xfer_tcp_peer_get(x->cli, d->tcp_host, d->tcp_port, &t->peer);
}

static struct xfer_target *target_find(struct kv_xfer *x, const char *name, kv_target_id *id)
{
    for (uint32_t i = 0; i < x->targets.n; i++) {
        struct xfer_target *t = kv_idtab_at(&x->targets, i, id);
        if (t && strcmp(t->desc.name, name) == 0)
            return t;
    }
    return NULL;
}

int kv_xfer_open(struct kv_xfer *x, const char *name, kv_target_id *out)
{
    if (!x || !out)
        return KV_EINVAL;
    int rc = check_name(name);
    if (rc < 0)
        return rc;
    kv_target_id id;
    pthread_mutex_lock(&x->lock);
    struct xfer_target *t = target_find(x, name, &id);
    pthread_mutex_unlock(&x->lock);
    if (t) {
        *out = id;
        return KV_OK;
    }
    char *key = seg_key(x, name);
    if (!key)
        return KV_ENOMEM;
    char *val = NULL;
    size_t len = 0;
    rc = kv_meta_get(x->meta, key, &val, &len);
    kv_free(key);
    if (rc == KV_ENOENT)
        return KV_EXFER_NOSEG;
    if (rc < 0)
        return rc;
    t = kv_calloc(1, sizeof(*t));
    if (!t) {
        kv_meta_free(val);
        return KV_ENOMEM;
    }
    t->x = x;
    atomic_init(&t->refs, 1);
    rc = kv_xfer_desc_decode(val, len, &t->desc);
    kv_meta_free(val);
    if (rc == KV_OK && strcmp(t->desc.name, name) != 0) {
        KV_LOGW("bad segment descriptor: field \"name\" is '%s', published as '%s'", t->desc.name,
                name);
        rc = KV_EPROTO;
    }
    if (rc < 0) {
        kv_free(t);
        return rc;
    }
    rc = target_connect(x, t);
    if (rc < 0) {
        target_unref(t);
        return rc;
    }
    pthread_mutex_lock(&x->lock);
    struct xfer_target *other = target_find(x, name, &id);
    if (!other)
        rc = kv_idtab_add(&x->targets, t, &t->id);
    pthread_mutex_unlock(&x->lock);
    if (other || rc < 0) {
        target_unref(t);
        if (rc < 0)
            return rc;
        *out = id;
        return KV_OK;
    }
    *out = t->id;
    return KV_OK;
}

int kv_xfer_target_info(struct kv_xfer *x, kv_target_id id, uint64_t *size, const char **transport)
{
    if (!x)
        return KV_EINVAL;
    pthread_mutex_lock(&x->lock);
    struct xfer_target *t = kv_idtab_get(&x->targets, id);
    if (t) {
        if (size)
            *size = t->desc.size;
        if (transport)
            *transport = kind_name(t->kind);
    }
    pthread_mutex_unlock(&x->lock);
    return t ? KV_OK : KV_EXFER_NOSEG;
}

int kv_xfer_close(struct kv_xfer *x, kv_target_id id)
{
    if (!x)
        return KV_EINVAL;
    pthread_mutex_lock(&x->lock);
    struct xfer_target *t = kv_idtab_remove(&x->targets, id);
    pthread_mutex_unlock(&x->lock);
    if (!t)
        return KV_EXFER_NOSEG;
    target_unref(t);
    kv_xfer_tcp_gc(x->cli);
    return KV_OK;
}

/* ------------------------------------------------------------------ direct views */

struct kv_xfer_map {
    struct xfer_target *t; /* XFER_T_SHM: holds a ref (the mapping goes with the last one) */
    struct xfer_seg *s;    /* XFER_T_LOCAL: holds a use (unregister waits for it) */
};

int kv_xfer_map(struct kv_xfer *x, kv_target_id id, uint64_t offset, uint64_t len, void **addr,
                struct kv_xfer_map **out)
{
    if (!x || !addr || !out)
        return KV_EINVAL;
    struct kv_xfer_map *m = kv_calloc(1, sizeof(*m));
    if (!m)
        return KV_ENOMEM;
    int rc = KV_OK;
    enum xfer_kind kind = XFER_T_TCP;
    uint64_t seg_id = 0;
    pthread_mutex_lock(&x->lock);
    struct xfer_target *t = kv_idtab_get(&x->targets, id);
    if (!t) {
        rc = KV_EXFER_NOSEG;
    } else if (t->kind != XFER_T_SHM && t->kind != XFER_T_LOCAL) {
        rc = KV_ENOTSUP;
    } else if (!kv_xfer_in_bounds(offset, len, t->desc.size)) {
        rc = KV_EXFER_BOUNDS;
    } else {
        kind = t->kind;
        seg_id = t->desc.seg_id;
        if (kind == XFER_T_SHM)
            target_ref(t, 1);
    }
    pthread_mutex_unlock(&x->lock);
    if (rc == KV_OK && kind == XFER_T_SHM) {
        m->t = t;
        kv_xfer_shm_prepare(t, offset, len);
        *addr = (uint8_t *)t->map + offset;
    } else if (rc == KV_OK) {
        /* a segment of this engine: its use keeps the memory until kv_xfer_unmap */
        void *base = NULL;
        size_t slen = 0;
        m->s = kv_xfer_seg_get(x, seg_id, &base, &slen);
        if (!m->s)
            rc = KV_EXFER_NOSEG;
        else if (!kv_xfer_in_bounds(offset, len, slen))
            rc = KV_EXFER_BOUNDS;
        else
            *addr = (uint8_t *)base + offset;
    }
    if (rc < 0) {
        kv_xfer_unmap(x, m);
        return rc;
    }
    *out = m;
    return KV_OK;
}

void kv_xfer_unmap(struct kv_xfer *x, struct kv_xfer_map *m)
{
    if (!x || !m)
        return;
    if (m->t)
        target_unref(m->t);
    kv_xfer_seg_put(x, m->s);
    kv_free(m);
}

/* ------------------------------------------------------------------ requests */

static void batch_done(struct xfer_batch *b)
{
    pthread_mutex_lock(&b->lock);
    if (--b->pending == 0)
        pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

/* k pieces of r finished with rc; the last one completes r. */
static void req_sub(struct xfer_ireq *r, uint64_t k, int rc)
{
    if (rc < 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&r->err, &zero, rc);
    }
    if (atomic_fetch_sub_explicit(&r->remaining, k, memory_order_acq_rel) != k)
        return;
    atomic_store_explicit(&r->status, atomic_load(&r->err), memory_order_release);
    batch_done(r->b);
}

void kv_xfer_piece_done(struct xfer_piece *p, int rc)
{
    struct xfer_target *t = p->t;
    struct xfer_ireq *r = p->req;
    kv_free(p);
    /* drop the target first: once the request completes, the caller may close the target and
     * expect its peer to be released */
    target_unref(t);
    req_sub(r, 1, rc);
}

static int copy_local(struct kv_xfer *x, struct xfer_target *t, const struct kv_xfer_req *q)
{
    void *addr;
    size_t len;
    struct xfer_seg *s = kv_xfer_seg_get(x, t->desc.seg_id, &addr, &len);
    if (!s)
        return KV_EXFER_NOSEG;
    int rc = KV_EXFER_BOUNDS;
    if (kv_xfer_in_bounds(q->offset, q->len, len)) {
        uint8_t *m = (uint8_t *)addr + q->offset;
        if (q->op == KV_XFER_READ)
            memmove(q->local, m, (size_t)q->len);
        else
            memmove(m, q->local, (size_t)q->len);
        rc = KV_OK;
    }
    kv_xfer_seg_put(x, s);
    return rc;
}

/* Starts request q on t (consumes one ref of t); completes r. */
static void dispatch(struct kv_xfer *x, struct xfer_target *t, const struct kv_xfer_req *q,
                     struct xfer_ireq *r)
{
    int rc = KV_OK;
    atomic_store(&r->err, 0);
    atomic_store(&r->remaining, 1);
    atomic_store(&r->status, KV_XFER_PENDING);
    if (q->len == 0)
        goto out_done;
    if (!kv_xfer_in_bounds(q->offset, q->len, t->desc.size)) {
        rc = KV_EXFER_BOUNDS;
        goto out_done;
    }
    switch (t->kind) {
    case XFER_T_LOCAL:
        rc = copy_local(x, t, q);
        goto out_done;
    case XFER_T_SHM: {
        uint8_t *m = (uint8_t *)t->map + q->offset;
        kv_xfer_shm_prepare(t, q->offset, q->len);
        if (q->op == KV_XFER_READ)
            memmove(q->local, m, (size_t)q->len);
        else
            memmove(m, q->local, (size_t)q->len);
        goto out_done;
    }
    case XFER_T_RDMA:
    case XFER_T_TCP:
        break;
    }
    uint64_t npieces = (q->len + KV_XFER_PIECE - 1) / KV_XFER_PIECE;
    atomic_store(&r->remaining, npieces);
    for (uint64_t i = 0; i < npieces; i++) {
        struct xfer_piece *p = kv_calloc(1, sizeof(*p));
        if (!p) {
            req_sub(r, npieces - i, KV_ENOMEM);
            break;
        }
        uint64_t off = i * KV_XFER_PIECE;
        p->req = r;
        p->t = t;
        target_ref(t, 1);
        p->op = q->op;
        p->local = (uint8_t *)q->local + off;
        p->offset = q->offset + off;
        p->len = KV_MIN(KV_XFER_PIECE, q->len - off);
        if (t->kind == XFER_T_RDMA)
            kv_xfer_rdma_post(t->rdma, p, t->desc.rdma_addr + p->offset, t->desc.rdma_rkey);
        else
            kv_xfer_tcp_submit(x->cli, p);
    }
    target_unref(t);
    return;
out_done:
    req_sub(r, 1, rc);
    target_unref(t);
}

static int check_req(const struct kv_xfer_req *q)
{
    if (q->op != KV_XFER_READ && q->op != KV_XFER_WRITE)
        return KV_EINVAL;
    if (!q->local && q->len > 0)
        return KV_EINVAL;
    return KV_OK;
}

static int batch_init(struct xfer_batch *b, size_t max)
{
    b->reqs = kv_calloc(max, sizeof(*b->reqs));
    if (!b->reqs)
        return KV_ENOMEM;
    b->max = max;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&b->lock, NULL);
    for (size_t i = 0; i < max; i++)
        b->reqs[i].b = b;
    return KV_OK;
}

static void batch_fini(struct xfer_batch *b)
{
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    kv_free(b->reqs);
}

int kv_xfer_batch_create(struct kv_xfer *x, size_t max_reqs, kv_batch_id *out)
{
    if (!x || !out || max_reqs == 0 || max_reqs > MAX_BATCH)
        return KV_EINVAL;
    struct xfer_batch *b = kv_calloc(1, sizeof(*b));
    if (!b)
        return KV_ENOMEM;
    int rc = batch_init(b, max_reqs);
    if (rc < 0) {
        kv_free(b);
        return rc;
    }
    kv_batch_id id;
    pthread_mutex_lock(&x->lock);
    rc = kv_idtab_add(&x->batches, b, &id);
    pthread_mutex_unlock(&x->lock);
    if (rc < 0) {
        batch_fini(b);
        kv_free(b);
        return rc;
    }
    *out = id;
    return KV_OK;
}

int kv_xfer_batch_submit(struct kv_xfer *x, kv_batch_id bid, const struct kv_xfer_req *reqs,
                         size_t n)
{
    if (!x || (!reqs && n))
        return KV_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (check_req(&reqs[i]) < 0)
            return KV_EINVAL;
    struct xfer_target *small[16];
    struct xfer_target **ts = small;
    if (n > KV_ARRAY_SIZE(small)) {
        ts = kv_calloc(n, sizeof(*ts));
        if (!ts)
            return KV_ENOMEM;
    }
    int rc = KV_OK;
    size_t start = 0;
    pthread_mutex_lock(&x->lock);
    struct xfer_batch *b = kv_idtab_get(&x->batches, bid);
    if (!b) {
        rc = KV_EXFER_NOBATCH;
        goto out_unlock;
    }
    for (size_t i = 0; i < n; i++) {
        ts[i] = kv_idtab_get(&x->targets, reqs[i].target);
        if (!ts[i]) {
            rc = KV_EXFER_NOSEG;
            goto out_unlock;
        }
    }
    pthread_mutex_lock(&b->lock);
    if (n > b->max - b->n) {
        rc = KV_E2BIG;
    } else {
        start = b->n;
        b->n += n;
        b->pending += n;
        for (size_t i = 0; i < n; i++) {
            atomic_store(&b->reqs[start + i].status, KV_XFER_PENDING);
            target_ref(ts[i], 1);
        }
    }
    pthread_mutex_unlock(&b->lock);
out_unlock:
    pthread_mutex_unlock(&x->lock);
    if (rc == KV_OK)
        for (size_t i = 0; i < n; i++)
            dispatch(x, ts[i], &reqs[i], &b->reqs[start + i]);
    if (ts != small)
        kv_free(ts);
    return rc;
}

int kv_xfer_batch_status(struct kv_xfer *x, kv_batch_id bid, size_t idx)
{
    if (!x)
        return KV_EINVAL;
    int rc;
    pthread_mutex_lock(&x->lock);
    struct xfer_batch *b = kv_idtab_get(&x->batches, bid);
    if (!b) {
        rc = KV_EXFER_NOBATCH;
    } else {
        pthread_mutex_lock(&b->lock);
        rc = idx < b->n ? atomic_load_explicit(&b->reqs[idx].status, memory_order_acquire)
                        : KV_EINVAL;
        pthread_mutex_unlock(&b->lock);
    }
    pthread_mutex_unlock(&x->lock);
    return rc;
}

/* Waits (b->lock held) until pending == 0 or the deadline. */
static int wait_locked(struct xfer_batch *b, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout_ms > 0) {
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
    }
    while (b->pending > 0) {
        if (timeout_ms == 0)
            return KV_ETIMEDOUT;
        if (timeout_ms < 0) {
            pthread_cond_wait(&b->cond, &b->lock);
        } else if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT && b->pending > 0) {
            return KV_ETIMEDOUT;
        }
    }
    for (size_t i = 0; i < b->n; i++) {
        int st = atomic_load_explicit(&b->reqs[i].status, memory_order_acquire);
        if (st < 0)
            return st;
    }
    return KV_OK;
}

int kv_xfer_batch_wait(struct kv_xfer *x, kv_batch_id bid, int timeout_ms)
{
    if (!x)
        return KV_EINVAL;
    pthread_mutex_lock(&x->lock);
    struct xfer_batch *b = kv_idtab_get(&x->batches, bid);
    if (!b) {
        pthread_mutex_unlock(&x->lock);
        return KV_EXFER_NOBATCH;
    }
    pthread_mutex_lock(&b->lock);
    pthread_mutex_unlock(&x->lock);
    b->waiters++;
    int rc = wait_locked(b, timeout_ms);
    b->waiters--;
    pthread_mutex_unlock(&b->lock);
    return rc;
}

int kv_xfer_batch_destroy(struct kv_xfer *x, kv_batch_id bid)
{
    if (!x)
        return KV_EINVAL;
    pthread_mutex_lock(&x->lock);
    struct xfer_batch *b = kv_idtab_get(&x->batches, bid);
    int rc = KV_OK;
    if (!b) {
        rc = KV_EXFER_NOBATCH;
    } else {
        pthread_mutex_lock(&b->lock);
        if (b->pending > 0 || b->waiters > 0)
            rc = KV_EBUSY;
        pthread_mutex_unlock(&b->lock);
        if (rc == KV_OK)
            kv_idtab_remove(&x->batches, bid);
    }
    pthread_mutex_unlock(&x->lock);
    if (rc == KV_OK) {
        batch_fini(b);
        kv_free(b);
    }
    return rc;
}

static int sync_one(struct kv_xfer *x, kv_target_id tid, enum kv_xfer_op op, uint64_t offset,
                    void *local, uint64_t len)
{
    if (!x)
        return KV_EINVAL;
    struct kv_xfer_req q = {.op = op, .local = local, .len = len, .target = tid, .offset = offset};
    if (check_req(&q) < 0)
        return KV_EINVAL;
    struct xfer_batch b;
    memset(&b, 0, sizeof(b));
    int rc = batch_init(&b, 1);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&x->lock);
    struct xfer_target *t = kv_idtab_get(&x->targets, tid);
    if (t)
        target_ref(t, 1);
    pthread_mutex_unlock(&x->lock);
    if (!t) {
        batch_fini(&b);
        return KV_EXFER_NOSEG;
    }
    b.n = b.pending = 1;
    dispatch(x, t, &q, &b.reqs[0]);
    pthread_mutex_lock(&b.lock);
    rc = wait_locked(&b, -1);
    pthread_mutex_unlock(&b.lock);
    batch_fini(&b);
    return rc;
}

int kv_xfer_read(struct kv_xfer *x, kv_target_id t, uint64_t offset, void *local, uint64_t len)
{
    return sync_one(x, t, KV_XFER_READ, offset, local, len);
}

int kv_xfer_write(struct kv_xfer *x, kv_target_id t, uint64_t offset, const void *local,
                  uint64_t len)
{
    return sync_one(x, t, KV_XFER_WRITE, offset, (void *)local, len);
}

/* ------------------------------------------------------------------ engine */

static int parse_proto(const char *s, enum xfer_proto *out)
{
    if (!s || !*s || strcmp(s, "auto") == 0)
        *out = PROTO_AUTO;
    else if (strcmp(s, "tcp") == 0)
        *out = PROTO_TCP;
    else if (strcmp(s, "shm") == 0)
        *out = PROTO_SHM;
    else if (strcmp(s, "rdma") == 0)
        *out = PROTO_RDMA;
    else {
        KV_LOGE("xfer: unknown protocol '%s' (auto, tcp, shm or rdma)", s);
        return KV_EINVAL;
    }
    return KV_OK;
}

int kv_xfer_create(struct kv_meta *meta, const struct kv_xfer_opts *opts, struct kv_xfer **out)
{
    if (!meta || !out)
        return KV_EINVAL;
    struct kv_xfer_opts o;
    memset(&o, 0, sizeof(o));
    if (opts)
        o = *opts;
    if (o.conns_per_peer < 0 || o.conns_per_peer > 64 || o.workers < 0 || o.workers > 64 ||
        o.timeout_ms < 0 || o.lease_ttl_s < 0) {
        KV_LOGE("xfer: bad options (conns_per_peer 0..64, workers 0..64, timeout_ms >= 0)");
        return KV_EINVAL;
    }
    if (o.token && strlen(o.token) > KV_XFER_MAX_TOKEN) {
        KV_LOGE("xfer: token longer than %d bytes", KV_XFER_MAX_TOKEN);
        return KV_EINVAL;
    }
    const char *cluster = o.cluster && *o.cluster ? o.cluster : "default";
    if (strchr(cluster, '/')) {
        KV_LOGE("xfer: cluster name '%s' contains '/'", cluster);
        return KV_EINVAL;
    }
    struct kv_xfer *x = kv_calloc(1, sizeof(*x));
    if (!x)
        return KV_ENOMEM;
    int rc = parse_proto(o.protocol, &x->proto);
    if (rc < 0)
        goto out_free;
    rc = KV_ENOMEM;
    x->meta = meta;
    x->cluster = kv_strdup(cluster);
    x->token = o.token && *o.token ? kv_strdup(o.token) : NULL;
    if (!x->cluster || (o.token && *o.token && !x->token))
        goto out_free;
    x->timeout_ms = o.timeout_ms ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
    x->lease_ttl_s = o.lease_ttl_s ? o.lease_ttl_s : DEFAULT_TTL_S;
    rc = kv_xfer_rdma_probe(x->rdma_dev, sizeof(x->rdma_dev));
    if (rc == KV_OK)
        rc = kv_xfer_rdma_open(x, &x->rdma, x->rdma_dev, sizeof(x->rdma_dev), x->rdma_gid,
                               sizeof(x->rdma_gid));
    x->have_rdma = rc == KV_OK;
    if (x->proto == PROTO_RDMA && !x->have_rdma) {
        KV_LOGE("xfer: protocol rdma forced, but %s",
                rc == KV_ENOTBUILT ? "this binary was built without libibverbs"
                                   : "no active RDMA device was found (ibv_get_device_list)");
        rc = KV_EXFER_NOTRANSPORT;
        goto out_free;
    }
    pthread_mutex_init(&x->meta_lock, NULL);
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->seg_cond, NULL);
    kv_idtab_init(&x->segs);
    kv_idtab_init(&x->targets);
    kv_idtab_init(&x->batches);
    const char *bind = o.bind_host && *o.bind_host ? o.bind_host : "127.0.0.1";
    const char *adv = o.advertise_host && *o.advertise_host ? o.advertise_host : bind;
    if (strcmp(adv, "0.0.0.0") == 0 || strcmp(adv, "::") == 0) {
        const char *boot;
        kv_xfer_host_identity(&boot, &adv);
    }
    snprintf(x->adv_host, sizeof(x->adv_host), "%s", adv);
    rc = kv_xfer_tcp_client_create(x, o.workers ? o.workers : DEFAULT_WORKERS,
                                   o.conns_per_peer ? o.conns_per_peer : DEFAULT_CONNS, &x->cli);
    if (rc < 0)
        goto out_fini;
    rc = kv_xfer_tcp_server_start(x, bind, o.port, &x->srv, &x->port);
    if (rc < 0)
        goto out_client;
    pthread_mutex_lock(&g_reg_lock);
    x->serial = ++g_serial;
    x->reg_next = g_reg;
    g_reg = x;
    pthread_mutex_unlock(&g_reg_lock);
    KV_LOGI("xfer engine: tcp %s:%u (advertised %s), protocol %s, rdma %s", bind, x->port,
            x->adv_host, o.protocol ? o.protocol : "auto", x->have_rdma ? x->rdma_dev : "none");
    *out = x;
    return KV_OK;
out_client:
    kv_xfer_tcp_client_destroy(x->cli);
out_fini:
    kv_xfer_rdma_close(x->rdma);
    pthread_mutex_destroy(&x->meta_lock);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->seg_cond);
    kv_idtab_fini(&x->segs);
    kv_idtab_fini(&x->targets);
    kv_idtab_fini(&x->batches);
out_free:
    kv_free(x->cluster);
    kv_free(x->token);
    kv_free(x);
    return rc;
}

void kv_xfer_destroy(struct kv_xfer *x)
{
    if (!x)
        return;
    pthread_mutex_lock(&g_reg_lock);
    for (struct kv_xfer **pp = &g_reg; *pp; pp = &(*pp)->reg_next) {
        if (*pp == x) {
            *pp = x->reg_next;
            break;
        }
    }
    while (x->lost_busy > 0)
        pthread_cond_wait(&g_reg_cond, &g_reg_lock);
    pthread_mutex_unlock(&g_reg_lock);
    atomic_store_explicit(&x->stopping, true, memory_order_release);
    /* no more remote access to our segments */
    kv_xfer_tcp_server_stop(x->srv);
    /* drop the table's target refs, then fail what is in flight and join the client */
    pthread_mutex_lock(&x->lock);
    for (uint32_t i = 0; i < x->targets.n; i++) {
        uint64_t id;
        struct xfer_target *t = kv_idtab_at(&x->targets, i, &id);
        if (t) {
            kv_idtab_remove(&x->targets, id);
            pthread_mutex_unlock(&x->lock);
            target_unref(t);
            pthread_mutex_lock(&x->lock);
        }
    }
    pthread_mutex_unlock(&x->lock);
    kv_xfer_tcp_client_destroy(x->cli);
    /* withdraw descriptors */
    pthread_mutex_lock(&x->meta_lock);
    if (x->lease > 0)
        kv_meta_lease_revoke(x->meta, x->lease);
    while (x->pubs) {
        struct xfer_pub *p = x->pubs;
        x->pubs = p->next;
        kv_free(p->key);
        kv_free(p->json);
        kv_free(p);
    }
    pthread_mutex_unlock(&x->meta_lock);
    for (uint32_t i = 0; i < x->segs.n; i++) {
        uint64_t id;
        struct xfer_seg *s = kv_idtab_at(&x->segs, i, &id);
        if (s)
            seg_free(s);
    }
    for (uint32_t i = 0; i < x->batches.n; i++) {
        uint64_t id;
        struct xfer_batch *b = kv_idtab_at(&x->batches, i, &id);
        if (b) {
            batch_fini(b);
            kv_free(b);
        }
    }
    kv_xfer_rdma_close(x->rdma); /* after every MR and QP is gone */
    kv_idtab_fini(&x->segs);
    kv_idtab_fini(&x->targets);
    kv_idtab_fini(&x->batches);
    pthread_mutex_destroy(&x->meta_lock);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->seg_cond);
    kv_free(x->cluster);
    kv_free(x->token);
    kv_free(x);
}
