/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p.c - P2P file distribution: publish, fetch (and seed), list, remove, stat.
 *
 * Metadata layout, with P = /kvstash/<cluster>/p2p/<NAME>/ (docs/p2p.md):
 *   P manifest        the manifest (p2p_manifest.c); no lease, stays until kv_p2p_remove()
 *   P peers/<peer>    one record per participant, bound to its lease: segment names per file,
 *                     a bitmap of the chunks it holds, a bitmap of the chunks it is reading
 *                     from a publisher (claims). Rewritten once per verified chunk. Fetchers
 *                     read every record with one list per refresh (every REFRESH_MS).
 *   P served/<peer>   a fetcher's accounting, no lease (survives it): bytes it requested from
 *                     publishers (written BEFORE each publisher read, so the sum is an upper
 *                     bound of the publishers' upload) and bytes it read from peers.
 * One record per peer (not one key per chunk) keeps metadata operations at O(1) per chunk and
 * one list per refresh, whatever the number of chunks.
 *
 * Invariants:
 *  1. A chunk's have-bit is set in our record only after its bytes verified against the
 *     manifest's XXH3, so a holder never serves unverified bytes.
 *  2. A mapping stays mapped while any of our READs into it may be pending: kv_p2p_close()
 *     destroys the transfer engine (failing pending requests) before it unmaps.
 *  3. The publisher's files are mapped PROT_READ: peers only READ them; a WRITE from a rogue
 *     peer makes the engine's recv() fail with EFAULT (the request fails, the file is intact).
 *     A fetcher's mappings are writable while it fetches and PROT_READ once complete.
 *
 * Fetch loop (single thread, the caller's):
 *     refresh holders (list) --> pick (p2p_pick.c) --> submit READ batch (one per chunk)
 *          ^                                                        |
 *          +---- announce (put record) <-- verify XXH3 <-- poll ----+
 *   a failed read excludes that holder for a while (a dead holder's record vanishes with its
 *   lease meanwhile); a checksum mismatch likewise; the chunk goes back to MISSING.
 *
 * Threads and locks: kv_p2p functions run on the caller's thread, except the lease-lost
 * callback (metadata backend thread), which re-grants the lease and re-puts the record.
 * rec_lock guards self (the record's bitmaps) and lease; it is taken alone (no lock order).
 * cancel and closing are atomic flags (closing stops the callback from restoring a record that
 * kv_p2p_close() is withdrawing).
 */
#define KV_LOG_COMPONENT "p2p"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/meta.h"
#include "kvstash/p2p.h"
#include "kvstash/xfer.h"
#include "p2p/p2p_int.h"

#define DEFAULT_METADATA "http://127.0.0.1:8080/metadata"
#define DEFAULT_CHUNK (64ULL << 20)
#define REFRESH_MS 250
#define PUB_LIMIT 2 /* our reads in flight from publishers */
#define MAX_INFLIGHT 64

struct mapping {
    void *addr;
    size_t len;
    kv_seg_id seg;
    bool registered;
};

struct kv_p2p {
    char *metadata, *cluster, *protocol, *bind_host;
    int timeout_ms, ttl_s, inflight;
    struct kv_meta *meta;
    struct kv_xfer *xfer;
    _Atomic bool cancel;
    _Atomic bool closing; /* set by kv_p2p_close: the lease-lost callback restores nothing */
    bool active;          /* a publish or fetch ran */
    char peer_id[KV_P2P_PEER_MAX + 1];
    char *prefix; /* P, for the active set */
    struct kv_p2p_manifest man;
    struct mapping *maps;     /* man.nfiles */
    pthread_mutex_t rec_lock; /* guards self, lease, rec_key */
    struct kv_p2p_peer self;
    int64_t lease;
    char *rec_key;
};

/* ------------------------------------------------------------------ small helpers */

static char *key_of(const struct kv_p2p *p, const char *name, const char *rest)
{
    size_t n = strlen(p->cluster) + strlen(name) + strlen(rest) + 32;
    char *k = kv_malloc(n);
    if (k)
        snprintf(k, n, "/kvstash/%s/p2p/%s/%s", p->cluster, name, rest);
    return k;
}

static int put_record_locked(struct kv_p2p *p)
{
    char *txt;
    size_t len;
    int rc = kv_p2p_peer_encode(&p->self, &txt, &len);
    if (rc < 0)
        return rc;
    rc = kv_meta_put(p->meta, p->rec_key, txt, len, p->lease);
    kv_free(txt);
    return rc;
}

static int put_record(struct kv_p2p *p)
{
    pthread_mutex_lock(&p->rec_lock);
    int rc = put_record_locked(p);
    pthread_mutex_unlock(&p->rec_lock);
    if (rc < 0)
        KV_LOGW_RL(2000, "p2p: cannot update peer record %s: %s", p->rec_key, kv_strerror(rc));
    return rc;
}

static int put_manifest(struct kv_p2p *p, const char *name);

/* Keeper thread: grants a new lease (once per lost one) and puts the record, and for a
 * publisher the manifest, again. A failure is retried by the keeper (the calls repeat safely). */
static int lease_lost(void *ud, int64_t lease)
{
    struct kv_p2p *p = ud;
    if (atomic_load_explicit(&p->closing, memory_order_acquire))
        return KV_OK;
    int rc = KV_OK;
    pthread_mutex_lock(&p->rec_lock);
    if (p->lease == lease) {
        KV_LOGW("p2p: lease %" PRId64 " expired; granting a new one", lease);
        int64_t nl;
        rc = kv_meta_lease_grant(p->meta, p->ttl_s, &nl);
        if (rc == KV_OK) {
            rc = kv_meta_lease_autorenew(p->meta, nl, p->ttl_s, lease_lost, p);
            if (rc == KV_OK)
                p->lease = nl;
            else
                kv_meta_lease_revoke(p->meta, nl);
        }
    }
    if (rc == KV_OK)
        rc = put_record_locked(p);
    int64_t cur = p->lease;
    pthread_mutex_unlock(&p->rec_lock);
    /* a metadata server that restarted empty lost the manifest too: the publisher restores it */
    if (rc == KV_OK && p->self.publisher)
        rc = put_manifest(p, p->man.name);
    if (rc < 0)
        KV_LOGW_RL(5000, "p2p: cannot restore the peer record after a lease loss yet: %s",
                   kv_strerror(rc));
    else
        KV_LOGI("p2p: peer record restored under lease %" PRId64, cur);
    return rc;
}

static int start_lease(struct kv_p2p *p)
{
    int rc = kv_meta_lease_grant(p->meta, p->ttl_s, &p->lease);
    if (rc < 0)
        return rc;
    return kv_meta_lease_autorenew(p->meta, p->lease, p->ttl_s, lease_lost, p);
}

static int ensure_xfer(struct kv_p2p *p)
{
    if (p->xfer)
        return KV_OK;
    struct kv_xfer_opts o = {
        .cluster = p->cluster,
        .protocol = p->protocol,
        .bind_host = p->bind_host,
        .timeout_ms = p->timeout_ms,
        .lease_ttl_s = p->ttl_s,
    };
    return kv_xfer_create(p->meta, &o, &p->xfer);
}

/* Registers the non-empty mappings as segments p2p.<name>.<peer>.<i> and fills self.segs. */
static int register_maps(struct kv_p2p *p, const char *name)
{
    int rc = ensure_xfer(p);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < p->man.nfiles; i++) {
        char seg[256] = "";
        if (p->maps[i].len > 0) {
            snprintf(seg, sizeof(seg), "p2p.%s.%s.%zu", name, p->peer_id, i);
            rc = kv_xfer_segment_register(p->xfer, seg, p->maps[i].addr, p->maps[i].len,
                                          &p->maps[i].seg);
            if (rc < 0) {
                KV_LOGE("p2p: cannot register segment %s: %s", seg, kv_strerror(rc));
                return rc;
            }
            p->maps[i].registered = true;
        }
        p->self.segs[i] = kv_strdup(seg);
        if (!p->self.segs[i])
            return KV_ENOMEM;
        p->self.nsegs = i + 1;
    }
    return KV_OK;
}

static int self_init(struct kv_p2p *p, bool publisher)
{
    size_t nb = (size_t)((p->man.nchunks + 7) / 8);
    memcpy(p->self.id, p->peer_id, sizeof(p->self.id));
    p->self.publisher = publisher;
    p->self.nchunks = p->man.nchunks;
    p->self.have = kv_calloc(nb ? nb : 1, 1);
    p->self.claims = kv_calloc(nb ? nb : 1, 1);
    p->self.segs = kv_calloc(p->man.nfiles ? p->man.nfiles : 1, sizeof(char *));
    p->maps = kv_calloc(p->man.nfiles ? p->man.nfiles : 1, sizeof(*p->maps));
    if (!p->self.have || !p->self.claims || !p->self.segs || !p->maps)
        return KV_ENOMEM;
    return KV_OK;
}

/* ------------------------------------------------------------------ open / close */

static char *dup_or(const char *s, const char *def)
{
    return kv_strdup(s ? s : def);
}

int kv_p2p_open(const struct kv_p2p_opts *opts, struct kv_p2p **out)
{
    struct kv_p2p_opts o = {0};
    if (opts)
        o = *opts;
    if (!out)
        return KV_EINVAL;
    struct kv_p2p *p = kv_calloc(1, sizeof(*p));
    if (!p)
        return KV_ENOMEM;
    pthread_mutex_init(&p->rec_lock, NULL);
    p->metadata = dup_or(o.metadata, DEFAULT_METADATA);
    p->cluster = dup_or(o.cluster, "default");
    p->protocol = dup_or(o.protocol, "auto");
    p->bind_host = dup_or(o.bind_host, "127.0.0.1");
    p->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 10000;
    p->ttl_s = o.lease_ttl_s > 0 ? o.lease_ttl_s : 5;
    p->inflight = o.inflight > 0 ? KV_MIN(o.inflight, MAX_INFLIGHT) : 4;
    if (!p->metadata || !p->cluster || !p->protocol || !p->bind_host) {
        kv_p2p_close(p);
        return KV_ENOMEM;
    }
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    for (char *c = host; *c; c++)
        if (*c == '/' || *c == '.' || (unsigned char)*c < 0x21)
            *c = '-';
    uint64_t r = (uint64_t)kv_now_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(p->peer_id, sizeof(p->peer_id), "%.40s-%d-%04x", host, (int)getpid(),
             (unsigned)(kv_p2p_rand(&r) & 0xffff));
    struct kv_meta_opts mo = {.timeout_ms = p->timeout_ms};
    int rc = kv_meta_open(p->metadata, &mo, &p->meta);
    if (rc < 0) {
        KV_LOGE("p2p: cannot open metadata %s: %s", p->metadata, kv_strerror(rc));
        kv_p2p_close(p);
        return rc;
    }
    *out = p;
    return KV_OK;
}

void kv_p2p_close(struct kv_p2p *p)
{
    if (!p)
        return;
    atomic_store_explicit(&p->closing, true, memory_order_release);
    pthread_mutex_lock(&p->rec_lock);
    int64_t lease = p->lease;
    pthread_mutex_unlock(&p->rec_lock);
    if (p->meta && lease)
        kv_meta_lease_revoke(p->meta, lease); /* fetchers stop picking us at once */
    kv_xfer_destroy(p->xfer);                 /* invariant 2: before the unmaps */
    p->xfer = NULL;
    kv_meta_close(p->meta);
    if (p->maps)
        for (size_t i = 0; i < p->man.nfiles; i++)
            if (p->maps[i].addr)
                munmap(p->maps[i].addr, p->maps[i].len);
    kv_free(p->maps);
    kv_p2p_peer_fini(&p->self);
    kv_p2p_manifest_fini(&p->man);
    kv_free(p->rec_key);
    kv_free(p->prefix);
    kv_free(p->metadata);
    kv_free(p->cluster);
    kv_free(p->protocol);
    kv_free(p->bind_host);
    pthread_mutex_destroy(&p->rec_lock);
    kv_free(p);
}

void kv_p2p_cancel(struct kv_p2p *p)
{
    if (p)
        atomic_store_explicit(&p->cancel, true, memory_order_release);
}

static bool cancelled(struct kv_p2p *p)
{
    return atomic_load_explicit(&p->cancel, memory_order_acquire);
}

/* ------------------------------------------------------------------ publish */

struct src_file {
    char *src; /* path to open */
    char *rel; /* published path */
    uint64_t size;
};

struct src_list {
    struct src_file *v;
    size_t n, cap;
};

static void src_list_fini(struct src_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        kv_free(l->v[i].src);
        kv_free(l->v[i].rel);
    }
    kv_free(l->v);
}

static int src_add(struct src_list *l, const char *src, const char *rel, uint64_t size)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        struct src_file *nv = kv_realloc(l->v, nc * sizeof(*nv));
        if (!nv)
            return KV_ENOMEM;
        l->v = nv;
        l->cap = nc;
    }
    struct src_file *f = &l->v[l->n];
    f->src = kv_strdup(src);
    f->rel = kv_strdup(rel);
    f->size = size;
    if (!f->src || !f->rel) {
        kv_free(f->src);
        kv_free(f->rel);
        return KV_ENOMEM;
    }
    l->n++;
    return KV_OK;
}

/* Adds the regular files under dir (rel = their path below the walked root). */
static int walk_dir(struct src_list *l, const char *dir, const char *rel, int depth)
{
    if (depth > 64) {
        KV_LOGE("p2p: %s: directories nested too deep", dir);
        return KV_EINVAL;
    }
    DIR *d = opendir(dir);
    if (!d) {
        KV_LOGE("p2p: cannot open directory %s: %s", dir, strerror(errno));
        return KV_EINVAL;
    }
    int rc = KV_OK;
    struct dirent *e;
    while (rc == KV_OK && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char src[PATH_MAX], r[PATH_MAX];
        if ((size_t)snprintf(src, sizeof(src), "%s/%s", dir, e->d_name) >= sizeof(src) ||
            (size_t)snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", e->d_name) >=
                sizeof(r)) {
            KV_LOGE("p2p: path too long under %s", dir);
            rc = KV_EINVAL;
            break;
        }
        struct stat st;
        if (stat(src, &st) < 0) {
            KV_LOGE("p2p: cannot stat %s: %s", src, strerror(errno));
            rc = KV_EINVAL;
        } else if (S_ISDIR(st.st_mode)) {
            rc = walk_dir(l, src, r, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            rc = src_add(l, src, r, (uint64_t)st.st_size);
        }
    }
    closedir(d);
    return rc;
}

static int cmp_src(const void *a, const void *b)
{
    return strcmp(((const struct src_file *)a)->rel, ((const struct src_file *)b)->rel);
}

static int collect(const char *const *paths, size_t n, struct src_list *l)
{
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(paths[i], &st) < 0) {
            KV_LOGE("p2p: cannot stat %s: %s", paths[i], strerror(errno));
            return KV_EINVAL;
        }
        int rc;
        if (S_ISDIR(st.st_mode)) {
            rc = walk_dir(l, paths[i], "", 0);
        } else if (S_ISREG(st.st_mode)) {
            const char *base = strrchr(paths[i], '/');
            base = base ? base + 1 : paths[i];
            rc = src_add(l, paths[i], base, (uint64_t)st.st_size);
        } else {
            KV_LOGE("p2p: %s is neither a regular file nor a directory", paths[i]);
            rc = KV_EINVAL;
        }
        if (rc < 0)
            return rc;
    }
    if (l->n == 0) {
        KV_LOGE("p2p: no files to publish");
        return KV_EINVAL;
    }
    qsort(l->v, l->n, sizeof(*l->v), cmp_src);
    for (size_t i = 0; i < l->n; i++) {
        if (!kv_p2p_path_ok(l->v[i].rel)) {
            KV_LOGE("p2p: cannot publish %s under the path '%s'", l->v[i].src, l->v[i].rel);
            return KV_EINVAL;
        }
        if (i > 0 && strcmp(l->v[i].rel, l->v[i - 1].rel) == 0) {
            KV_LOGE("p2p: two files would be published as '%s' (%s and %s)", l->v[i].rel,
                    l->v[i - 1].src, l->v[i].src);
            return KV_EINVAL;
        }
    }
    return KV_OK;
}

/* Puts the manifest if absent; accepts an identical one already there. */
static int put_manifest(struct kv_p2p *p, const char *name)
{
    char *key = key_of(p, name, "manifest"), *txt = NULL;
    size_t len;
    int rc = key ? kv_p2p_manifest_encode(&p->man, &txt, &len) : KV_ENOMEM;
    for (int attempt = 0; rc == KV_OK && attempt < 3; attempt++) {
        rc = kv_meta_cas(p->meta, key, NULL, 0, txt, len, 0);
        if (rc != KV_EMETA_CAS)
            break;
        char *cur;
        size_t clen;
        rc = kv_meta_get(p->meta, key, &cur, &clen);
        if (rc == KV_ENOENT) {
            rc = KV_OK;
            continue;
        }
        if (rc < 0)
            break;
        struct kv_p2p_manifest old;
        char err[256];
        int drc = kv_p2p_manifest_decode(cur, clen, &old, err, sizeof(err));
        kv_meta_free(cur);
        if (drc == KV_OK && kv_p2p_manifest_equal(&old, &p->man)) {
            KV_LOGI("p2p: %s already published with the same contents; serving it", name);
            kv_p2p_manifest_fini(&old);
            rc = KV_OK;
            break;
        }
        if (drc == KV_OK)
            kv_p2p_manifest_fini(&old);
        KV_LOGE("p2p: set %s is already published with other contents (p2p rm it first)", name);
        rc = KV_EEXIST;
    }
    kv_free(txt);
    kv_free(key);
    return rc;
}

int kv_p2p_publish(struct kv_p2p *p, const char *name, const char *const *paths, size_t n,
                   uint64_t chunk_size)
{
    if (!p || !paths || n == 0)
        return KV_EINVAL;
    if (!kv_p2p_name_ok(name)) {
        KV_LOGE("p2p: bad set name '%s' ([A-Za-z0-9._-], at most %d bytes)", name ? name : "",
                KV_P2P_NAME_MAX);
        return KV_EINVAL;
    }
    if (p->active)
        return KV_EBUSY;
    if (chunk_size == 0)
        chunk_size = DEFAULT_CHUNK;
    if (chunk_size < KV_P2P_MIN_CHUNK || chunk_size > KV_P2P_MAX_CHUNK)
        return KV_ERANGE;
    p->active = true;
    struct src_list l = {0};
    int rc = collect(paths, n, &l);
    if (rc < 0)
        goto out;
    rc = KV_ENOMEM;
    p->man.name = kv_strdup(name);
    p->man.chunk_size = chunk_size;
    p->man.files = kv_calloc(l.n, sizeof(*p->man.files));
    if (!p->man.name || !p->man.files)
        goto out;
    for (size_t i = 0; i < l.n; i++) {
        p->man.files[i].path = kv_strdup(l.v[i].rel);
        p->man.files[i].size = l.v[i].size;
        p->man.nfiles = i + 1;
        if (!p->man.files[i].path)
            goto out;
    }
    rc = kv_p2p_manifest_layout(&p->man);
    if (rc < 0) {
        KV_LOGE("p2p: set too large for chunk size %" PRIu64, chunk_size);
        goto out;
    }
    p->man.sums = kv_calloc(p->man.nchunks ? p->man.nchunks : 1, sizeof(uint64_t));
    rc = self_init(p, true);
    if (rc < 0 || !p->man.sums)
        goto out;
    /* map read-only (invariant 3) and checksum every chunk */
    for (size_t i = 0; i < l.n; i++) {
        if (l.v[i].size == 0)
            continue;
        int fd = open(l.v[i].src, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            KV_LOGE("p2p: cannot open %s: %s", l.v[i].src, strerror(errno));
            rc = KV_EINVAL;
            goto out;
        }
        void *a = mmap(NULL, (size_t)l.v[i].size, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (a == MAP_FAILED) {
            KV_LOGE("p2p: cannot map %s: %s", l.v[i].src, strerror(errno));
            rc = KV_EIO;
            goto out;
        }
        p->maps[i].addr = a;
        p->maps[i].len = (size_t)l.v[i].size;
        madvise(a, p->maps[i].len, MADV_SEQUENTIAL);
        const struct kv_p2p_file *f = &p->man.files[i];
        for (uint64_t c = 0; c < f->nchunks; c++) {
            uint64_t off = c * chunk_size, len = KV_MIN(chunk_size, f->size - off);
            p->man.sums[f->first_chunk + c] = kv_hash64((const uint8_t *)a + off, (size_t)len);
            kv_p2p_bit_set(p->self.have, f->first_chunk + c, true);
        }
        madvise(a, p->maps[i].len, MADV_NORMAL);
    }
    rc = put_manifest(p, name);
    if (rc < 0)
        goto out;
    rc = register_maps(p, name);
    if (rc < 0)
        goto out;
    char rest[KV_P2P_PEER_MAX + 16];
    snprintf(rest, sizeof(rest), "peers/%s", p->peer_id);
    p->rec_key = key_of(p, name, rest);
    if (!p->rec_key) {
        rc = KV_ENOMEM;
        goto out;
    }
    rc = start_lease(p);
    if (rc == KV_OK)
        rc = put_record(p);
    if (rc == KV_OK)
        KV_LOGI("p2p: published %s: %zu files, %" PRIu64 " bytes, %" PRIu64 " chunks as peer %s",
                name, p->man.nfiles, p->man.size, p->man.nchunks, p->peer_id);
out:
    src_list_fini(&l);
    return rc;
}

/* ------------------------------------------------------------------ fetch */

struct holder {
    struct kv_p2p_peer rec;
    bool present;           /* listed in the last refresh */
    int64_t excluded_until; /* ms; 0 = usable */
    int inflight;
    kv_target_id *targets; /* per file; 0 = not opened */
    bool *opened;
};

struct slot {
    bool used;
    uint64_t chunk;
    size_t holder;
    bool from_pub;
    kv_batch_id batch;
};

struct fetch {
    struct kv_p2p *p;
    const char *name;
    uint8_t *state;
    uint8_t *taken; /* bitmap: publisher chunks whose claim CAS we lost (until next refresh) */
    int64_t refreshed_ms;
    struct holder *h;
    size_t nh, caph;
    struct kv_p2p_holder *view;
    struct slot slots[MAX_INFLIGHT];
    int nslots, pub_inflight;
    uint64_t rnd;
    uint64_t done_bytes;
    uint64_t pub_requested; /* accounting (served/<peer>) */
    char *served_key;
    struct kv_p2p_fetch_result r;
};

static void holder_fini(struct fetch *f, struct holder *h)
{
    if (h->targets)
        for (size_t i = 0; i < f->p->man.nfiles; i++)
            if (h->opened[i])
                kv_xfer_close(f->p->xfer, h->targets[i]);
    kv_free(h->targets);
    kv_free(h->opened);
    kv_p2p_peer_fini(&h->rec);
}

static int put_served(struct fetch *f)
{
    char buf[160];
    int n =
        snprintf(buf, sizeof(buf), "{\"publisher_bytes\":%" PRIu64 ",\"peer_bytes\":%" PRIu64 "}",
                 f->pub_requested, f->r.from_peers);
    return kv_meta_put(f->p->meta, f->served_key, buf, (size_t)n, 0);
}

/* Reads every peer record (one list) and merges it into f->h. */
static int refresh(struct fetch *f)
{
    struct kv_p2p *p = f->p;
    char *prefix = key_of(p, f->name, "peers/");
    if (!prefix)
        return KV_ENOMEM;
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    int rc = kv_meta_list(p->meta, prefix, &kvs, &n);
    kv_free(prefix);
    if (rc < 0) {
        KV_LOGW_RL(2000, "p2p: cannot list holders: %s", kv_strerror(rc));
        return rc;
    }
    for (size_t i = 0; i < f->nh; i++)
        f->h[i].present = false;
    memset(f->taken, 0, (size_t)((p->man.nchunks + 7) / 8));
    f->refreshed_ms = kv_now_ms();
    for (size_t k = 0; k < n; k++) {
        struct kv_p2p_peer rec;
        char err[256];
        if (kv_p2p_peer_decode(kvs[k].val, kvs[k].len, p->man.nchunks, p->man.nfiles, &rec, err,
                               sizeof(err)) < 0) {
            KV_LOGW_RL(5000, "p2p: ignoring bad peer record %s: %s", kvs[k].key, err);
            continue;
        }
        if (strcmp(rec.id, p->peer_id) == 0) {
            kv_p2p_peer_fini(&rec);
            continue;
        }
        size_t j;
        for (j = 0; j < f->nh; j++)
            if (strcmp(f->h[j].rec.id, rec.id) == 0)
                break;
        if (j == f->nh) {
            if (f->nh == f->caph) {
                size_t nc = f->caph ? f->caph * 2 : 16;
                struct holder *nhv = kv_realloc(f->h, nc * sizeof(*nhv));
                if (!nhv) {
                    kv_p2p_peer_fini(&rec);
                    rc = KV_ENOMEM;
                    break;
                }
                f->h = nhv;
                struct kv_p2p_holder *nv = kv_realloc(f->view, (nc + 1) * sizeof(*nv));
                if (!nv) {
                    kv_p2p_peer_fini(&rec);
                    rc = KV_ENOMEM;
                    break;
                }
                f->view = nv;
                f->caph = nc;
            }
            struct holder *h = &f->h[j];
            memset(h, 0, sizeof(*h));
            h->targets = kv_calloc(p->man.nfiles ? p->man.nfiles : 1, sizeof(kv_target_id));
            h->opened = kv_calloc(p->man.nfiles ? p->man.nfiles : 1, sizeof(bool));
            if (!h->targets || !h->opened) {
                kv_free(h->targets);
                kv_free(h->opened);
                kv_p2p_peer_fini(&rec);
                rc = KV_ENOMEM;
                break;
            }
            f->nh++;
        } else {
            kv_p2p_peer_fini(&f->h[j].rec);
        }
        f->h[j].rec = rec;
        f->h[j].present = true;
    }
    kv_meta_kvs_free(kvs, n);
    /* drop vanished holders without reads in flight (swap with the last) */
    for (size_t i = 0; i < f->nh;) {
        if (f->h[i].present || f->h[i].inflight > 0) {
            i++;
            continue;
        }
        holder_fini(f, &f->h[i]);
        size_t last = f->nh - 1;
        if (i != last) {
            f->h[i] = f->h[last];
            for (int s = 0; s < MAX_INFLIGHT; s++)
                if (f->slots[s].used && f->slots[s].holder == last)
                    f->slots[s].holder = i;
        }
        f->nh--;
    }
    return rc;
}

/* Builds the picker's view of the holders, plus one pseudo-holder carrying the claims we lost
 * (it holds nothing; its claims keep the picker off those chunks). Returns its length. */
static size_t fill_view(struct fetch *f, int64_t now)
{
    for (size_t i = 0; i < f->nh; i++) {
        struct holder *h = &f->h[i];
        if (h->excluded_until && now >= h->excluded_until)
            h->excluded_until = 0;
        f->view[i] = (struct kv_p2p_holder){
            .have = h->rec.have,
            .claims = h->rec.claims,
            .publisher = h->rec.publisher,
            .usable = h->present && h->excluded_until == 0,
            .inflight = h->inflight,
        };
    }
    f->view[f->nh] = (struct kv_p2p_holder){.claims = f->taken, .usable = true};
    return f->nh + 1;
}

static void exclude(struct fetch *f, size_t hi, int why)
{
    struct holder *h = &f->h[hi];
    h->excluded_until = kv_now_ms() + (int64_t)f->p->ttl_s * 1000 + 1000;
    KV_LOGI("p2p: holder %s excluded for now: %s", h->rec.id, kv_strerror(why));
}

/* Takes (or releases) the exclusive right to read chunk from a publisher: a CAS on
 * P claims/<chunk> bound to our lease. KV_EBUSY when another fetcher holds it. */
static int claim(struct fetch *f, uint64_t chunk, bool take)
{
    struct kv_p2p *p = f->p;
    char rest[48];
    snprintf(rest, sizeof(rest), "claims/%" PRIu64, chunk);
    char *key = key_of(p, f->name, rest);
    if (!key)
        return KV_ENOMEM;
    int rc;
    if (take) {
        pthread_mutex_lock(&p->rec_lock);
        int64_t lease = p->lease;
        pthread_mutex_unlock(&p->rec_lock);
        rc = kv_meta_cas(p->meta, key, NULL, 0, p->peer_id, strlen(p->peer_id), lease);
        if (rc == KV_EMETA_CAS) {
            kv_p2p_bit_set(f->taken, chunk, true);
            rc = KV_EBUSY;
        }
    } else {
        rc = kv_meta_del(p->meta, key);
    }
    kv_free(key);
    return rc;
}

static int submit(struct fetch *f, const struct kv_p2p_pick *pk)
{
    struct kv_p2p *p = f->p;
    struct holder *h = &f->h[pk->holder];
    size_t fi;
    uint64_t off, len;
    kv_p2p_chunk_locate(&p->man, pk->chunk, &fi, &off, &len);
    int rc;
    if (!h->opened[fi]) {
        rc = kv_xfer_open(p->xfer, h->rec.segs[fi], &h->targets[fi]);
        if (rc < 0) {
            exclude(f, pk->holder, rc);
            return rc;
        }
        h->opened[fi] = true;
    }
    int s;
    for (s = 0; s < MAX_INFLIGHT && f->slots[s].used; s++)
        ;
    struct slot *sl = &f->slots[s];
    sl->chunk = pk->chunk;
    sl->holder = pk->holder;
    sl->from_pub = h->rec.publisher;
    if (sl->from_pub) {
        rc = claim(f, pk->chunk, true);
        if (rc < 0)
            return rc;
        /* claim it and account for it before the publisher sends a byte (honest upper bound) */
        pthread_mutex_lock(&p->rec_lock);
        kv_p2p_bit_set(p->self.claims, pk->chunk, true);
        pthread_mutex_unlock(&p->rec_lock);
        f->pub_requested += len;
        put_record(p);
        rc = put_served(f);
        if (rc < 0)
            KV_LOGW_RL(2000, "p2p: cannot record accounting: %s", kv_strerror(rc));
    }
    rc = kv_xfer_batch_create(p->xfer, 1, &sl->batch);
    if (rc < 0)
        goto out_unclaim;
    struct kv_xfer_req req = {
        .op = KV_XFER_READ,
        .local = (uint8_t *)p->maps[fi].addr + off,
        .len = len,
        .target = h->targets[fi],
        .offset = off,
    };
    rc = kv_xfer_batch_submit(p->xfer, sl->batch, &req, 1);
    if (rc < 0) {
        kv_xfer_batch_destroy(p->xfer, sl->batch);
        goto out_unclaim;
    }
    sl->used = true;
    f->nslots++;
    h->inflight++;
    if (sl->from_pub)
        f->pub_inflight++;
    f->state[pk->chunk] = KV_P2P_INFLIGHT;
    return KV_OK;
out_unclaim:
    if (sl->from_pub) {
        pthread_mutex_lock(&p->rec_lock);
        kv_p2p_bit_set(p->self.claims, pk->chunk, false);
        pthread_mutex_unlock(&p->rec_lock);
        put_record(p);
        claim(f, pk->chunk, false);
    }
    return rc;
}

/* Handles a finished slot: verify, announce, or put the chunk back. */
static void complete(struct fetch *f, int s, int status)
{
    struct kv_p2p *p = f->p;
    struct slot *sl = &f->slots[s];
    struct holder *h = &f->h[sl->holder];
    kv_xfer_batch_destroy(p->xfer, sl->batch);
    sl->used = false;
    f->nslots--;
    h->inflight--;
    if (sl->from_pub)
        f->pub_inflight--;
    size_t fi;
    uint64_t off, len;
    kv_p2p_chunk_locate(&p->man, sl->chunk, &fi, &off, &len);
    bool ok = false;
    if (status == KV_OK) {
        uint64_t sum = kv_hash64((const uint8_t *)p->maps[fi].addr + off, (size_t)len);
        if (sum == p->man.sums[sl->chunk]) {
            ok = true;
        } else {
            f->r.checksum_errors++;
            KV_LOGW("p2p: chunk %" PRIu64 " from %s failed verification", sl->chunk, h->rec.id);
            exclude(f, sl->holder, KV_ECHECKSUM);
        }
    } else {
        f->r.peer_errors++;
        exclude(f, sl->holder, status);
    }
    f->state[sl->chunk] = ok ? KV_P2P_DONE : KV_P2P_MISSING;
    if (ok) {
        f->done_bytes += len;
        if (sl->from_pub)
            f->r.from_publisher += len;
        else
            f->r.from_peers += len;
    }
    pthread_mutex_lock(&p->rec_lock);
    if (ok)
        kv_p2p_bit_set(p->self.have, sl->chunk, true);
    kv_p2p_bit_set(p->self.claims, sl->chunk, false);
    pthread_mutex_unlock(&p->rec_lock);
    if (ok || sl->from_pub)
        put_record(p); /* announce at once */
    if (sl->from_pub) {
        int crc = claim(f, sl->chunk, false);
        if (crc < 0 && crc != KV_ENOENT)
            KV_LOGW_RL(2000, "p2p: cannot release claim on chunk %" PRIu64 ": %s", sl->chunk,
                       kv_strerror(crc));
    }
}

/* Creates parent directories of path (which lies below dest). */
static int make_parents(char *path, size_t dest_len)
{
    for (char *c = path + dest_len + 1; *c; c++) {
        if (*c != '/')
            continue;
        *c = '\0';
        int rc = mkdir(path, 0755);
        int e = errno;
        *c = '/';
        if (rc < 0 && e != EEXIST) {
            KV_LOGE("p2p: cannot create directory %.*s: %s", (int)(c - path), path, strerror(e));
            return KV_EIO;
        }
    }
    return KV_OK;
}

/* Opens, sizes and maps every destination file; verifies chunks of files that already had the
 * right size (resume). */
static int prepare_dest(struct fetch *f, const char *dest)
{
    struct kv_p2p *p = f->p;
    if (mkdir(dest, 0755) < 0 && errno != EEXIST) {
        KV_LOGE("p2p: cannot create %s: %s", dest, strerror(errno));
        return KV_EIO;
    }
    size_t dl = strlen(dest);
    for (size_t i = 0; i < p->man.nfiles; i++) {
        const struct kv_p2p_file *mf = &p->man.files[i];
        char path[PATH_MAX];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dest, mf->path) >= sizeof(path)) {
            KV_LOGE("p2p: destination path too long for %s", mf->path);
            return KV_EIO;
        }
        int rc = make_parents(path, dl);
        if (rc < 0)
            return rc;
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
            KV_LOGE("p2p: cannot open %s: %s", path, strerror(errno));
            return KV_EIO;
        }
        struct stat st;
        bool existed = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                       (uint64_t)st.st_size == mf->size && mf->size > 0;
        if (ftruncate(fd, (off_t)mf->size) < 0) {
            KV_LOGE("p2p: cannot size %s: %s", path, strerror(errno));
            close(fd);
            return KV_EIO;
        }
        if (mf->size > 0) {
            void *a = mmap(NULL, (size_t)mf->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (a == MAP_FAILED) {
                KV_LOGE("p2p: cannot map %s: %s", path, strerror(errno));
                close(fd);
                return KV_EIO;
            }
            p->maps[i].addr = a;
            p->maps[i].len = (size_t)mf->size;
        }
        close(fd);
        for (uint64_t c = 0; existed && c < mf->nchunks; c++) {
            uint64_t off = c * p->man.chunk_size, len = KV_MIN(p->man.chunk_size, mf->size - off);
            if (kv_hash64((const uint8_t *)p->maps[i].addr + off, (size_t)len) ==
                p->man.sums[mf->first_chunk + c]) {
                f->state[mf->first_chunk + c] = KV_P2P_DONE;
                kv_p2p_bit_set(p->self.have, mf->first_chunk + c, true);
                f->r.reused_chunks++;
                f->done_bytes += len;
            }
        }
    }
    return KV_OK;
}

static int load_manifest(struct kv_p2p *p, const char *name, struct kv_p2p_manifest *m)
{
    char *key = key_of(p, name, "manifest"), *val;
    size_t len;
    if (!key)
        return KV_ENOMEM;
    int rc = kv_meta_get(p->meta, key, &val, &len);
    kv_free(key);
    if (rc < 0)
        return rc;
    char err[256];
    rc = kv_p2p_manifest_decode(val, len, m, err, sizeof(err));
    kv_meta_free(val);
    if (rc < 0)
        KV_LOGE("p2p: the manifest of %s is invalid: %s", name, err);
    return rc;
}

int kv_p2p_fetch(struct kv_p2p *p, const char *name, const char *dest, kv_p2p_progress_fn progress,
                 void *ud, struct kv_p2p_fetch_result *res)
{
    if (!p || !dest || !*dest)
        return KV_EINVAL;
    if (!kv_p2p_name_ok(name)) {
        KV_LOGE("p2p: bad set name '%s'", name ? name : "");
        return KV_EINVAL;
    }
    if (p->active)
        return KV_EBUSY;
    int64_t t0 = kv_now_ms();
    int rc = load_manifest(p, name, &p->man);
    if (rc < 0)
        return rc;
    p->active = true;
    struct fetch f = {.p = p, .name = name};
    f.rnd = (uint64_t)kv_now_ns() ^ ((uint64_t)getpid() << 20) ^ 0x5bd1e995ULL;
    f.r.size_bytes = p->man.size;
    f.r.chunks = p->man.nchunks;
    char rest[KV_P2P_PEER_MAX + 16];
    snprintf(rest, sizeof(rest), "served/%s", p->peer_id);
    f.served_key = key_of(p, name, rest);
    snprintf(rest, sizeof(rest), "peers/%s", p->peer_id);
    p->rec_key = key_of(p, name, rest);
    f.state = kv_calloc(p->man.nchunks ? p->man.nchunks : 1, 1);
    f.taken = kv_calloc((size_t)((p->man.nchunks + 7) / 8) + 1, 1);
    f.view = kv_calloc(1, sizeof(*f.view));
    rc = self_init(p, false);
    if (rc == KV_OK && (!f.served_key || !p->rec_key || !f.state || !f.taken || !f.view))
        rc = KV_ENOMEM;
    if (rc < 0)
        goto out;
    rc = prepare_dest(&f, dest);
    if (rc < 0)
        goto out;
    rc = register_maps(p, name);
    if (rc < 0)
        goto out;
    rc = start_lease(p);
    if (rc == KV_OK)
        rc = put_record(p);
    if (rc < 0)
        goto out;

    uint64_t left = 0;
    for (uint64_t c = 0; c < p->man.nchunks; c++)
        left += f.state[c] != KV_P2P_DONE;
    int64_t last_refresh = 0, last_progress = 0, last_activity = kv_now_ms();
    int64_t stall_ms = (int64_t)p->timeout_ms * 3;
    while (left > 0) {
        if (cancelled(p)) {
            rc = KV_ECANCELED;
            break;
        }
        int64_t now = kv_now_ms();
        if (now - last_refresh >= REFRESH_MS) {
            refresh(&f);
            last_refresh = now;
        }
        /* fill the free slots */
        bool fresh = false;
        while (f.nslots < p->inflight) {
            size_t nv = fill_view(&f, now);
            struct kv_p2p_pick pk;
            if (!kv_p2p_pick_next(f.state, p->man.nchunks, f.view, nv, f.pub_inflight, PUB_LIMIT,
                                  &f.rnd, &pk))
                break;
            if (f.h[pk.holder].rec.publisher && !fresh && kv_now_ms() - f.refreshed_ms > 20) {
                /* publisher reads are the scarce resource: decide on a fresh view */
                refresh(&f);
                fresh = true;
                continue;
            }
            int src = submit(&f, &pk);
            if (src == KV_EBUSY)
                continue; /* another fetcher claimed it first: pick again */
            if (src < 0 && src != KV_EXFER_NOSEG && src != KV_EXFER_PEER &&
                src != KV_EXFER_NOTRANSPORT && src != KV_ECONNREFUSED)
                KV_LOGW_RL(2000, "p2p: cannot read chunk %" PRIu64 ": %s", pk.chunk,
                           kv_strerror(src));
            if (src < 0)
                break;
        }
        /* reap */
        int reaped = 0;
        for (int s = 0; s < MAX_INFLIGHT; s++) {
            if (!f.slots[s].used)
                continue;
            int st = kv_xfer_batch_status(p->xfer, f.slots[s].batch, 0);
            if (st == KV_XFER_PENDING)
                continue;
            bool was_ok = st == KV_OK;
            complete(&f, s, st);
            reaped++;
            if (was_ok && f.state[f.slots[s].chunk] == KV_P2P_DONE)
                left--;
        }
        now = kv_now_ms();
        if (reaped > 0 || f.nslots > 0)
            last_activity = now;
        if (progress && (now - last_progress >= 100 || left == 0)) {
            progress(ud, f.done_bytes, p->man.size);
            last_progress = now;
        }
        if (left == 0)
            break;
        if (now - last_activity > stall_ms) {
            KV_LOGE("p2p: no holder has the %" PRIu64 " missing chunks of %s", left, name);
            rc = KV_ETIMEDOUT;
            break;
        }
        if (reaped == 0) {
            int first = -1;
            for (int s = 0; s < MAX_INFLIGHT && first < 0; s++)
                if (f.slots[s].used)
                    first = s;
            if (first >= 0)
                kv_xfer_batch_wait(p->xfer, f.slots[first].batch, 20);
            else
                kv_sleep_ms(20);
        }
    }
    if (left == 0)
        rc = KV_OK;
    /* pending reads land in our mappings: wait for them (bounded by the engine's timeout) */
    for (int s = 0; s < MAX_INFLIGHT; s++) {
        if (!f.slots[s].used)
            continue;
        kv_xfer_batch_wait(p->xfer, f.slots[s].batch, p->timeout_ms * 2);
        if (kv_xfer_batch_destroy(p->xfer, f.slots[s].batch) == KV_OK) {
            f.slots[s].used = false;
            f.h[f.slots[s].holder].inflight--;
        }
    }
    if (rc == KV_OK) {
        /* seeding from here on: peers only READ, so the mappings become read-only too */
        for (size_t i = 0; i < p->man.nfiles; i++)
            if (p->maps[i].addr && mprotect(p->maps[i].addr, p->maps[i].len, PROT_READ) < 0)
                KV_LOGW("p2p: cannot make %s read-only: %s", p->man.files[i].path, strerror(errno));
    }
    int prc = put_served(&f);
    if (prc < 0)
        KV_LOGW("p2p: cannot record accounting: %s", kv_strerror(prc));
    if (progress && rc == KV_OK)
        progress(ud, f.done_bytes, p->man.size);
out:
    f.r.elapsed_ms = kv_now_ms() - t0;
    if (res)
        *res = f.r;
    for (size_t i = 0; i < f.nh; i++)
        holder_fini(&f, &f.h[i]);
    kv_free(f.h);
    kv_free(f.view);
    kv_free(f.state);
    kv_free(f.taken);
    kv_free(f.served_key);
    return rc;
}

/* ------------------------------------------------------------------ ls / rm / stat */

static char *root_prefix(const struct kv_p2p *p)
{
    size_t n = strlen(p->cluster) + 32;
    char *k = kv_malloc(n);
    if (k)
        snprintf(k, n, "/kvstash/%s/p2p/", p->cluster);
    return k;
}

int kv_p2p_list(struct kv_p2p *p, char ***names, size_t *n)
{
    if (!p || !names || !n)
        return KV_EINVAL;
    char *prefix = root_prefix(p);
    if (!prefix)
        return KV_ENOMEM;
    struct kv_meta_kv *kvs = NULL;
    size_t nk = 0;
    int rc = kv_meta_list(p->meta, prefix, &kvs, &nk);
    size_t pl = strlen(prefix);
    kv_free(prefix);
    if (rc < 0)
        return rc;
    char **v = kv_calloc(nk ? nk : 1, sizeof(char *));
    size_t cnt = 0;
    if (!v)
        rc = KV_ENOMEM;
    for (size_t i = 0; rc == KV_OK && i < nk; i++) {
        const char *rest = kvs[i].key + pl;
        const char *slash = strchr(rest, '/');
        if (!slash || strcmp(slash, "/manifest") != 0)
            continue;
        v[cnt] = kv_strndup(rest, (size_t)(slash - rest));
        if (!v[cnt])
            rc = KV_ENOMEM;
        else
            cnt++;
    }
    kv_meta_kvs_free(kvs, nk);
    if (rc < 0) {
        kv_p2p_names_free(v, cnt);
        return rc;
    }
    *names = v;
    *n = cnt;
    return KV_OK;
}

void kv_p2p_names_free(char **names, size_t n)
{
    if (!names)
        return;
    for (size_t i = 0; i < n; i++)
        kv_free(names[i]);
    kv_free(names);
}

int kv_p2p_remove(struct kv_p2p *p, const char *name)
{
    if (!p || !kv_p2p_name_ok(name))
        return KV_EINVAL;
    char *mkey = key_of(p, name, "manifest"), *prefix = key_of(p, name, "");
    int rc = KV_ENOMEM;
    if (!mkey || !prefix)
        goto out;
    rc = kv_meta_del(p->meta, mkey);
    if (rc < 0)
        goto out;
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    rc = kv_meta_list(p->meta, prefix, &kvs, &n);
    for (size_t i = 0; rc == KV_OK && i < n; i++) {
        int drc = kv_meta_del(p->meta, kvs[i].key);
        if (drc < 0 && drc != KV_ENOENT)
            rc = drc;
    }
    kv_meta_kvs_free(kvs, n);
out:
    kv_free(mkey);
    kv_free(prefix);
    return rc;
}

int kv_p2p_stat(struct kv_p2p *p, const char *name, struct kv_p2p_stat *st)
{
    if (!p || !st || !kv_p2p_name_ok(name))
        return KV_EINVAL;
    struct kv_p2p_manifest m = {0};
    int rc = load_manifest(p, name, &m);
    if (rc < 0)
        return rc;
    struct kv_p2p_stat s = {
        .size_bytes = m.size,
        .chunk_size = m.chunk_size,
        .chunks = m.nchunks,
        .files = m.nfiles,
    };
    char *prefix = key_of(p, name, "");
    struct kv_meta_kv *kvs = NULL;
    size_t n = 0;
    rc = prefix ? kv_meta_list(p->meta, prefix, &kvs, &n) : KV_ENOMEM;
    size_t pl = prefix ? strlen(prefix) : 0;
    for (size_t i = 0; rc == KV_OK && i < n; i++) {
        const char *rest = kvs[i].key + pl;
        char err[256];
        if (kv_startswith(rest, "peers/")) {
            struct kv_p2p_peer rec;
            if (kv_p2p_peer_decode(kvs[i].val, kvs[i].len, m.nchunks, m.nfiles, &rec, err,
                                   sizeof(err)) < 0)
                continue;
            s.holders++;
            s.publishers += rec.publisher;
            bool all = true;
            for (uint64_t c = 0; all && c < m.nchunks; c++)
                all = kv_p2p_bit(rec.have, c);
            s.complete_holders += all;
            kv_p2p_peer_fini(&rec);
        } else if (kv_startswith(rest, "served/")) {
            json_t *o;
            uint64_t pb, qb;
            if (kv_json_parse(kvs[i].val, kvs[i].len, &o, err, sizeof(err)) < 0)
                continue;
            if (json_is_object(o) &&
                kv_json_get_u64(o, "publisher_bytes", &pb, err, sizeof(err)) == KV_OK &&
                kv_json_get_u64(o, "peer_bytes", &qb, err, sizeof(err)) == KV_OK) {
                s.publisher_uploaded_bytes += pb;
                s.peer_uploaded_bytes += qb;
            }
            json_decref(o);
        }
    }
    kv_meta_kvs_free(kvs, n);
    kv_free(prefix);
    kv_p2p_manifest_fini(&m);
    if (rc == KV_OK)
        *st = s;
    return rc;
}
