/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client.c - the store client (include/kvstash/store.h): control calls to the master over the
 * store RPC (rpc.h), value bytes to and from node segments through the transfer engine.
 *
 * Design:
 *   - Put (n keys): PUT_START(n items) -> one xfer batch WRITE of every replica of every item
 *     (the xxh3 checksums are computed while it runs) -> PUT_END(n items: checksum, ok). An item
 *     whose write failed is ended with ok=false (the master frees its space) and reports the
 *     write error. So a put is one master round trip per phase whatever n is.
 *   - Put by a producer (kv_store_batch_put_fill): the same phases, but the caller's fill
 *     callback writes each object where it goes and checksums it in the same pass: straight
 *     into the node's segment through a kv_xfer_map view when the object has one replica on a
 *     segment this process maps (shm or its own), else into a buffer of the call that is then
 *     written to every replica as above. Objects of inline size are filled into one buffer and
 *     put by value (PUT).
 *   - Get (n keys): GET(n keys) -> replicas + sizes + checksums + a read lease -> one xfer batch
 *     READ of each item's nearest replica (shm before rdma before tcp, as the transfer engine
 *     reports the transport it picked) straight into the caller's buffer -> checksum check.
 *     An item whose read failed or whose checksum differs tries its other replicas; when all
 *     fail (or the lease ran out while reading) the whole GET is asked again, up to 4 rounds
 *     within the timeout, 100/200/400 ms apart. An item the master answered with a transient
 *     KV_ENOSPC/KV_EAGAIN/KV_EBUSY (an SSD object it had no DRAM to promote into: the DRAM is
 *     held by other readers' leases, which end within the lease time) is asked again, 500 ms
 *     apart after those rounds, until the timeout.
 *     A failed item returns an error, never "success with wrong bytes": the caller's buffer
 *     may hold garbage then, but the result says it is not a value.
 *   - Leader: the master address is opts->master for the first contact, then the leader
 *     recorded in metadata (/kvstash/<cluster>/masters/leader, JSON {id, rpc_addr, ...}) or the
 *     hint of a standby's KV_EAGAIN. On KV_EAGAIN, or a lost connection for idempotent calls
 *     (get, exists, list, stat), the leader is forgotten, found again and the call retried until
 *     the timeout. Puts and removes are retried only when the request surely was not applied
 *     (KV_EAGAIN, KV_ECONNREFUSED). KV_ESTORE_NONODE (the leader has no storage node mounted
 *     yet; nothing was applied) is retried the same way, without forgetting the leader.
 *
 * Invariants:
 *   1. s->leader is NULL or a struct leader with one reference held by s; every caller that
 *      uses it holds its own reference, so a leader replaced by another thread stays valid (its
 *      RPC client alive) until the last call on it returns.
 *   2. Bytes written into a caller's buffer by a failed get are never reported as a value.
 * Thread model: every function may be called from any thread at once. The transfer engine, the
 *   metadata handle and kv_rpc_client are thread-safe themselves.
 * Locks: s->lock guards s->leader, s->hint and s->epoch. Nothing is called under it except
 *   allocation and kv_rpc_client_destroy of an unreferenced leader (no I/O of its own).
 */
#define KV_LOG_COMPONENT "store-client"
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/auth.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/meta.h"
#include "kvstash/store.h"
#include "kvstash/xfer.h"
#include "store/client_int.h"
#include "store/rpc.h"

/* ---- leader handling ---------------------------------------------------------------------- */

void cli_leader_put(struct leader *l)
{
    if (l && atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1) {
        kv_rpc_client_destroy(l->rpc);
        kv_free(l);
    }
}

/* Reads the leader's rpc_addr from metadata into addr. */
static int leader_from_meta(struct kv_store *s, char *addr, size_t n)
{
    if (!s->meta)
        return KV_ENOENT;
    char key[512];
    snprintf(key, sizeof(key), "/kvstash/%s/masters/leader", s->cluster);
    char *val = NULL;
    size_t len = 0;
    int rc = kv_meta_get(s->meta, key, &val, &len);
    if (rc < 0)
        return rc;
    json_t *root = NULL;
    char err[160];
    const char *ra = NULL;
    rc = kv_json_parse(val, len, &root, err, sizeof(err));
    if (rc == KV_OK)
        rc = kv_json_get_str(root, "rpc_addr", &ra, err, sizeof(err));
    if (rc == KV_OK && (strlen(ra) == 0 || strlen(ra) >= n)) {
        snprintf(err, sizeof(err), "bad rpc_addr");
        rc = KV_EPROTO;
    }
    if (rc == KV_OK)
        snprintf(addr, n, "%s", ra);
    else
        KV_LOGW_RL(5000, "leader record %s: %s", key, err);
    json_decref(root);
    kv_meta_free(val);
    return rc;
}

/* A referenced leader (found and connected lazily). */
int cli_leader_get(struct kv_store *s, struct leader **out)
{
    char addr[256] = "";
    pthread_mutex_lock(&s->lock);
    if (s->leader) {
        atomic_fetch_add_explicit(&s->leader->refs, 1, memory_order_relaxed);
        *out = s->leader;
        pthread_mutex_unlock(&s->lock);
        return KV_OK;
    }
    if (s->hint[0]) {
        snprintf(addr, sizeof(addr), "%s", s->hint);
        s->hint[0] = '\0';
    }
    pthread_mutex_unlock(&s->lock);
    int rc = KV_OK;
    if (!addr[0]) {
        rc = leader_from_meta(s, addr, sizeof(addr));
        if (rc < 0 && s->master) {
            snprintf(addr, sizeof(addr), "%s", s->master);
            rc = KV_OK;
        }
        if (rc == KV_ENOENT)
            rc = KV_EAGAIN; /* no leader elected (yet) */
        if (rc < 0)
            return rc;
    }
    struct leader *l = kv_calloc(1, sizeof(*l));
    if (!l)
        return KV_ENOMEM;
    int cto = KV_MIN(s->timeout_ms, 3000);
    rc = kv_rpc_client_create(addr, cto, &l->rpc);
    if (rc < 0) {
        kv_free(l);
        return rc;
    }
    kv_rpc_client_set_poll_spin(l->rpc, s->poll_spin_us);
    atomic_init(&l->refs, 2); /* s and the caller */
    pthread_mutex_lock(&s->lock);
    if (s->leader) { /* another thread won: use its leader */
        struct leader *w = s->leader;
        atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed);
        pthread_mutex_unlock(&s->lock);
        kv_rpc_client_destroy(l->rpc);
        kv_free(l);
        *out = w;
        return KV_OK;
    }
    s->leader = l;
    pthread_mutex_unlock(&s->lock);
    KV_LOGD("master at %s", addr);
    *out = l;
    return KV_OK;
}

/* Forgets l as the leader (if it still is) and remembers hint for the next discovery. */
void cli_leader_drop(struct kv_store *s, struct leader *l, const char *hint)
{
    struct leader *old = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->leader == l) {
        old = l;
        s->leader = NULL;
        if (hint && hint[0])
            snprintf(s->hint, sizeof(s->hint), "%s", hint);
    }
    pthread_mutex_unlock(&s->lock);
    cli_leader_put(old);
}

bool cli_transport_err(int rc)
{
    return rc == KV_ECONNREFUSED || rc == KV_ECONNRESET || rc == KV_ETIMEDOUT || rc == KV_EPROTO ||
           rc == KV_EIO;
}

/* One master call with leader following and retries (see the header comment). */
static int call(struct kv_store *s, uint16_t method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, bool idempotent)
{
    int64_t deadline = kv_now_ms() + s->timeout_ms;
    int rc;
    int sleep_ms = 20;
    for (;;) {
        struct leader *l = NULL;
        rc = cli_leader_get(s, &l);
        if (rc == KV_OK) {
            char hint[256] = "";
            int64_t left = deadline - kv_now_ms();
            rc = kv_rpc_call_pb(l->rpc, method, req, desc, resp, (int)KV_MAX(left, 1), hint,
                                sizeof(hint));
            /* no node mounted yet (a master just elected, `kvstash serve` prefaulting): the
             * request was not applied; ask again, on the same leader, until the timeout */
            bool retry = rc == KV_EAGAIN || rc == KV_ECONNREFUSED || rc == KV_ESTORE_NONODE ||
                         (idempotent && cli_transport_err(rc));
            if ((retry && rc != KV_ESTORE_NONODE) || cli_transport_err(rc))
                cli_leader_drop(s, l, rc == KV_EAGAIN ? hint : NULL);
            cli_leader_put(l);
            if (!retry)
                return rc;
            /* without metadata there is nobody else to ask: a refused connection is final */
            if (rc == KV_ECONNREFUSED && !s->meta)
                return rc;
        } else if (rc != KV_EAGAIN && !cli_transport_err(rc) && rc != KV_EMETA_UNAVAIL) {
            return rc;
        }
        if (kv_now_ms() + sleep_ms >= deadline)
            return rc == KV_EAGAIN && !s->meta ? KV_ECONNREFUSED : rc;
        kv_sleep_ms(sleep_ms);
        sleep_ms = KV_MIN(sleep_ms * 2, 500);
    }
}

/* ---- open / close ------------------------------------------------------------------------- */

static int hello(struct kv_store *s, Kvstash__HelloResp **out)
{
    Kvstash__HelloReq req = KVSTASH__HELLO_REQ__INIT;
    req.client_id = s->client_id;
    ProtobufCMessage *resp = NULL;
    int rc = call(s, KV_RPC_HELLO, &req.base, &kvstash__hello_resp__descriptor, &resp, true);
    if (rc < 0)
        return rc;
    Kvstash__HelloResp *h = (Kvstash__HelloResp *)resp;
    if (h->status < 0) {
        rc = h->status;
        kv_rpc_pb_free(resp);
        return rc;
    }
    *out = h;
    return KV_OK;
}

void kv_store_close(struct kv_store *s)
{
    if (!s)
        return;
    kv_xfer_destroy(s->xfer);
    cli_leader_put(s->leader);
    kv_meta_close(s->meta);
    pthread_mutex_destroy(&s->lock);
    kv_free(s->master);
    kv_free(s->meta_url);
    kv_free(s->cluster);
    kv_free(s->protocol);
    kv_free(s);
}

int kv_store_open(const struct kv_store_opts *opts, struct kv_store **out)
{
    if (!opts || !out || (!opts->master && !opts->metadata) || opts->timeout_ms < 0)
        return KV_EINVAL;
    if (opts->protocol && strcmp(opts->protocol, "auto") != 0 &&
        strcmp(opts->protocol, "tcp") != 0 && strcmp(opts->protocol, "shm") != 0 &&
        strcmp(opts->protocol, "rdma") != 0)
        return KV_EINVAL;
    /* KVSTASH_PUT_INLINE_MAX: values up to this size travel inside the PUT request */
    size_t inline_max = INLINE_MAX_DEFAULT;
    const char *im = getenv("KVSTASH_PUT_INLINE_MAX");
    if (im && *im) {
        uint64_t v;
        if (kv_parse_size(im, &v) < 0 || v > INLINE_REQ_MAX) {
            KV_LOGE("KVSTASH_PUT_INLINE_MAX='%s': need a size of at most 8MiB (0: never inline)",
                    im);
            return KV_EINVAL;
        }
        inline_max = (size_t)v;
    }
    struct kv_store *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    static atomic_uint seq;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(s->client_id, sizeof(s->client_id), "%s-%d-%u", host, (int)getpid(),
             atomic_fetch_add(&seq, 1));
    s->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    s->poll_spin_us = opts->poll_spin_us == 0 ? KV_STORE_DEFAULT_POLL_SPIN_US
                                              : KV_MIN(KV_MAX(opts->poll_spin_us, 0), 10000);
    s->inline_max = inline_max;
    s->master = opts->master ? kv_strdup(opts->master) : NULL;
    s->cluster = kv_strdup(opts->cluster ? opts->cluster : "default");
    s->protocol = kv_strdup(opts->protocol ? opts->protocol : "auto");
    int rc = KV_ENOMEM;
    if ((opts->master && !s->master) || !s->cluster || !s->protocol)
        goto out_free;
    struct kv_meta_opts mo = {.timeout_ms = KV_MIN(s->timeout_ms, 3000)};
    if (opts->metadata) {
        s->meta_url = kv_strdup(opts->metadata);
        if (!s->meta_url)
            goto out_free;
        rc = kv_meta_open(opts->metadata, &mo, &s->meta);
        if (rc < 0) {
            KV_LOGD("metadata %s: %s", opts->metadata, kv_strerror(rc));
            goto out_free;
        }
    }
    Kvstash__HelloResp *h = NULL;
    rc = hello(s, &h);
    if (rc < 0) {
        KV_LOGD("no master answered (%s): %s", s->master ? s->master : "leader from metadata",
                kv_strerror(rc));
        goto out_free;
    }
    s->epoch = h->epoch;
    if (!opts->cluster && h->cluster && h->cluster[0]) {
        char *c = kv_strdup(h->cluster);
        if (c) {
            kv_free(s->cluster);
            s->cluster = c;
        }
    }
    if (!s->meta) {
        const char *url = h->metadata_url;
        if (!url || !url[0] || kv_startswith(url, "embedded://")) {
            KV_LOGE("the master at %s has no metadata reachable from other processes (%s); "
                    "pass --metadata",
                    s->master, url && url[0] ? url : "none");
            rc = KV_EMETA_URL;
            kv_rpc_pb_free(&h->base);
            goto out_free;
        }
        s->meta_url = kv_strdup(url);
        rc = s->meta_url ? kv_meta_open(url, &mo, &s->meta) : KV_ENOMEM;
        if (rc < 0) {
            KV_LOGE("metadata %s (from the master): %s", url, kv_strerror(rc));
            kv_rpc_pb_free(&h->base);
            goto out_free;
        }
    }
    kv_rpc_pb_free(&h->base);
    struct kv_xfer_opts xo = {
        .cluster = s->cluster,
        .protocol = s->protocol,
        .timeout_ms = s->timeout_ms,
        .token = kv_auth_token(), /* nodes' transfer engines check the same KVSTASH_TOKEN */
    };
    rc = kv_xfer_create(s->meta, &xo, &s->xfer);
    if (rc < 0) {
        KV_LOGE("transfer engine: %s", kv_strerror(rc));
        goto out_free;
    }
    *out = s;
    return KV_OK;
out_free:
    kv_store_close(s);
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------------ */

bool cli_key_ok(const char *key)
{
    if (!key)
        return false;
    size_t n = strnlen(key, KV_STORE_MAX_KEY + 1);
    return n >= 1 && n <= KV_STORE_MAX_KEY;
}

static int cli_transport_rank(const char *t)
{
    if (!t)
        return 3;
    if (strcmp(t, "shm") == 0)
        return 0;
    if (strcmp(t, "rdma") == 0)
        return 1;
    if (strcmp(t, "tcp") == 0)
        return 2;
    return 3;
}

/* Opens segment name; a failure is logged at debug level (the caller reports it). */
static int cli_open_target(struct kv_store *s, const char *seg, kv_target_id *t)
{
    int rc = kv_xfer_open(s->xfer, seg, t);
    if (rc < 0)
        KV_LOGD("open segment %s: %s", seg, kv_strerror(rc));
    return rc;
}

/* After a failed transfer or a checksum mismatch the target may be stale: a node restarted
 * under the same segment name while this client still maps the old one (an orphaned shm
 * mapping keeps "working"). Closing it makes the next open read the current descriptor. */
static void cli_forget_target(struct kv_store *s, kv_target_id t, int err)
{
    if (err == KV_EXFER_PEER || err == KV_EXFER_NOSEG || err == KV_ECONNRESET ||
        err == KV_ECONNREFUSED || err == KV_ETIMEDOUT || err == KV_EXFER_BOUNDS ||
        err == KV_ECHECKSUM)
        kv_xfer_close(s->xfer, t);
}

/* Runs reqs[0..n) as one batch; st[i] gets each request's status. Waits without a limit: the
 * engine fails every request within its own timeout, and the caller's buffers must not be
 * returned while a transfer may still touch them. */
static int run_batch(struct kv_store *s, const struct kv_xfer_req *reqs, size_t n, int *st)
{
    if (n == 0)
        return KV_OK;
    kv_batch_id b;
    int rc = kv_xfer_batch_create(s->xfer, n, &b);
    if (rc < 0)
        return rc;
    rc = kv_xfer_batch_submit(s->xfer, b, reqs, n);
    if (rc < 0) {
        kv_xfer_batch_destroy(s->xfer, b);
        return rc;
    }
    kv_xfer_batch_wait(s->xfer, b, -1);
    for (size_t i = 0; i < n; i++)
        st[i] = kv_xfer_batch_status(s->xfer, b, i);
    kv_xfer_batch_destroy(s->xfer, b);
    return KV_OK;
}

/* ---- put ---------------------------------------------------------------------------------- */

void cli_put_item_init(Kvstash__PutItem *it, const char *key, const void *buf, size_t len,
                       int replicas, const struct kv_put_opts *opts)
{
    kvstash__put_item__init(it);
    it->key = (char *)key;
    it->size = len;
    it->replicas = (uint32_t)replicas;
    it->ttl_s = opts ? opts->ttl_s : 0;
    it->pin = opts ? opts->pin : false;
    it->data.len = len;
    it->data.data = (uint8_t *)buf;
    it->checksum = kv_hash64(buf, len);
}

/* PUT of values carried in the request (small values): one master round trip. */
static int put_inline(struct kv_store *s, size_t n, const char *const *keys,
                      const void *const *bufs, const size_t *lens, const struct kv_put_opts *opts,
                      int replicas, int *results)
{
    Kvstash__PutItem *items = kv_calloc(n, sizeof(*items));
    Kvstash__PutItem **pitems = kv_calloc(n, sizeof(*pitems));
    int rc = KV_ENOMEM;
    if (!items || !pitems)
        goto out;
    for (size_t i = 0; i < n; i++) {
        cli_put_item_init(&items[i], keys[i], bufs[i], lens[i], replicas, opts);
        pitems[i] = &items[i];
    }
    Kvstash__PutStartReq req = KVSTASH__PUT_START_REQ__INIT;
    req.n_items = n;
    req.items = pitems;
    ProtobufCMessage *resp = NULL;
    rc = call(s, KV_RPC_PUT, &req.base, &kvstash__status_list__descriptor, &resp, false);
    if (rc < 0) {
        for (size_t i = 0; i < n; i++)
            results[i] = rc;
        goto out;
    }
    Kvstash__StatusList *sl = (Kvstash__StatusList *)resp;
    if (sl->n_status != n)
        KV_LOGW("PUT: %zu statuses for %zu items", sl->n_status, n);
    for (size_t i = 0; i < n; i++)
        results[i] = i < sl->n_status ? sl->status[i] : KV_EPROTO;
    kv_rpc_pb_free(resp);
    rc = KV_OK;
out:
    kv_free(items);
    kv_free(pitems);
    return rc;
}

/* The replica count a put asks for (opts NULL or 0: 1), or KV_EINVAL when out of range. */
int cli_put_replicas(const struct kv_put_opts *opts)
{
    int replicas = opts && opts->replicas ? opts->replicas : 1;
    return replicas < 1 || replicas > MAX_REPLICAS ? KV_EINVAL : replicas;
}

/* Whether a value of len bytes travels inside the PUT request (see inline_max). */
bool cli_inline_size(const struct kv_store *s, size_t len)
{
    return s->inline_max && len <= s->inline_max;
}

/* Where put_staged takes the bytes from: bufs[i], or fill(ud, pos[i], ...) (put_fill). */
struct put_src {
    const void *const *bufs;
    kv_put_fill_fn fill;
    void *ud;
    const size_t *pos;
};

static int put_staged(struct kv_store *s, size_t n, const char *const *keys,
                      const struct put_src *src, const size_t *lens, const struct kv_put_opts *opts,
                      int replicas, int *results);

int kv_store_batch_put(struct kv_store *s, size_t n, const char *const *keys,
                       const void *const *bufs, const size_t *lens, const struct kv_put_opts *opts,
                       int *results)
{
    if (!s || (n && (!keys || !bufs || !lens || !results)))
        return KV_EINVAL;
    if (n == 0)
        return KV_OK;
    int replicas = cli_put_replicas(opts);
    if (replicas < 0)
        return replicas;
    /* values up to s->inline_max travel inside the PUT request (in requests of up to
     * INLINE_REQ_MAX bytes); larger ones are written by the client into the nodes' segments */
    const char **k2 = kv_calloc(n, sizeof(*k2));
    const void **b2 = kv_calloc(n, sizeof(*b2));
    size_t *l2 = kv_calloc(n, sizeof(*l2));
    size_t *pos = kv_calloc(n, sizeof(*pos));
    int *r2 = kv_calloc(n, sizeof(*r2));
    int rc = KV_ENOMEM;
    if (!k2 || !b2 || !l2 || !pos || !r2)
        goto out;
    for (size_t i = 0; i < n; i++)
        results[i] = KV_ECANCELED; /* not asked: the master could not be reached */
    rc = KV_OK;
    for (int pass = 0; pass < 2 && rc == KV_OK; pass++) {
        size_t m = 0, bytes = 0;
        for (size_t i = 0; i <= n && rc == KV_OK; i++) {
            bool small = i < n && cli_inline_size(s, lens[i]) && cli_key_ok(keys[i]) &&
                         (bufs[i] || !lens[i]);
            bool flush = i == n || (pass == 0 && small && m && bytes + lens[i] > INLINE_REQ_MAX);
            if (flush && m) {
                struct put_src src = {.bufs = b2};
                rc = pass == 0 ? put_inline(s, m, k2, b2, l2, opts, replicas, r2)
                               : put_staged(s, m, k2, &src, l2, opts, replicas, r2);
                for (size_t j = 0; j < m; j++)
                    results[pos[j]] = r2[j];
                m = bytes = 0;
            }
            if (i == n || small != (pass == 0))
                continue;
            k2[m] = keys[i];
            b2[m] = bufs[i];
            l2[m] = lens[i];
            pos[m++] = i;
            bytes += lens[i];
        }
    }
    for (size_t i = 0; i < n && rc < 0; i++)
        if (results[i] == KV_ECANCELED)
            results[i] = rc;
out:
    kv_free(k2);
    kv_free(b2);
    kv_free(l2);
    kv_free(pos);
    kv_free(r2);
    return rc;
}

/* Object idx[j]'s bytes for put_staged's writes: src->bufs, or src->fill run into the node's
 * segment (direct: one replica on a segment this process maps) or into own[j]. Sets *from to
 * the bytes to write to every replica (NULL when written already) and sums[j]. */
static int put_produce(struct kv_store *s, const struct put_src *src, size_t i, size_t len,
                       const Kvstash__PutSlot *sl, const void **from, void **own, uint64_t *sum)
{
    *from = NULL;
    if (!src->fill) {
        *from = src->bufs[i];
        return KV_OK;
    }
    size_t ui = src->pos ? src->pos[i] : i; /* the caller's index */
    if (sl->n_replicas == 1) {
        kv_target_id t;
        void *dst;
        struct kv_xfer_map *mp = NULL;
        if (cli_open_target(s, sl->replicas[0]->segment, &t) == KV_OK &&
            kv_xfer_map(s->xfer, t, sl->replicas[0]->offset, len, &dst, &mp) == KV_OK) {
            int rc = src->fill(src->ud, ui, dst, len, sum);
            kv_xfer_unmap(s->xfer, mp);
            return rc;
        }
    }
    *own = kv_malloc(len);
    if (!*own)
        return KV_ENOMEM;
    int rc = src->fill(src->ud, ui, *own, len, sum);
    *from = *own;
    return rc;
}

/* PUT_START, the client's writes into the nodes' segments, PUT_END. */
static int put_staged(struct kv_store *s, size_t n, const char *const *keys,
                      const struct put_src *src, const size_t *lens, const struct kv_put_opts *opts,
                      int replicas, int *results)
{
    size_t *idx = kv_calloc(n, sizeof(*idx)); /* request item j -> key idx[j] */
    Kvstash__PutItem *items = kv_calloc(n, sizeof(*items));
    Kvstash__PutItem **pitems = kv_calloc(n, sizeof(*pitems));
    Kvstash__PutEndItem *ends = kv_calloc(n, sizeof(*ends));
    Kvstash__PutEndItem **pends = kv_calloc(n, sizeof(*pends));
    size_t *slot_of = kv_calloc(n, sizeof(*slot_of));           /* PUT_END item e -> key */
    int *wres = kv_calloc(n, sizeof(*wres));                    /* write status per request item */
    uint64_t *sums = kv_calloc(n, sizeof(*sums));               /* checksum per request item */
    void **own = src->fill ? kv_calloc(n, sizeof(*own)) : NULL; /* fill's buffers */
    struct kv_xfer_req *reqs = NULL;
    int *rst = NULL;
    size_t *req_item = NULL;
    ProtobufCMessage *sresp = NULL, *eresp = NULL;
    int rc = KV_ENOMEM;
    if (!idx || !items || !pitems || !ends || !pends || !slot_of || !wres || !sums ||
        (src->fill && !own))
        goto out;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!cli_key_ok(keys[i]) || (src->bufs && !src->bufs[i] && lens[i])) {
            results[i] = KV_EINVAL;
            continue;
        }
        kvstash__put_item__init(&items[m]);
        items[m].key = (char *)keys[i];
        items[m].size = lens[i];
        items[m].replicas = (uint32_t)replicas;
        items[m].ttl_s = opts ? opts->ttl_s : 0;
        items[m].pin = opts ? opts->pin : false;
        pitems[m] = &items[m];
        idx[m++] = i;
    }
    rc = KV_OK;
    if (m == 0)
        goto out;
    Kvstash__PutStartReq sreq = KVSTASH__PUT_START_REQ__INIT;
    sreq.n_items = m;
    sreq.items = pitems;
    rc = call(s, KV_RPC_PUT_START, &sreq.base, &kvstash__put_start_resp__descriptor, &sresp, false);
    if (rc < 0) {
        for (size_t j = 0; j < m; j++)
            results[idx[j]] = rc;
        goto out;
    }
    Kvstash__PutStartResp *sr = (Kvstash__PutStartResp *)sresp;
    if (sr->n_slots != m) {
        KV_LOGW("PUT_START: %zu slots for %zu items", sr->n_slots, m);
        rc = KV_EPROTO; /* PENDING entries, if any, are reclaimed by the master's timeout */
        goto out;
    }
    size_t nreq = 0;
    for (size_t j = 0; j < m; j++) {
        Kvstash__PutSlot *sl = sr->slots[j];
        if (sl->status == KV_OK && (sl->n_replicas == 0 || sl->n_replicas > MAX_REPLICAS)) {
            KV_LOGW("PUT_START %s: %zu replicas", keys[idx[j]], sl->n_replicas);
            wres[j] = KV_EPROTO;
        }
        if (sl->status == KV_OK && wres[j] == KV_OK && lens[idx[j]])
            nreq += sl->n_replicas;
    }
    if (nreq) {
        reqs = kv_calloc(nreq, sizeof(*reqs));
        rst = kv_calloc(nreq, sizeof(*rst));
        req_item = kv_calloc(nreq, sizeof(*req_item));
    }
    bool alloc_ok = !nreq || (reqs && rst && req_item);
    size_t r = 0;
    for (size_t j = 0; j < m; j++) {
        Kvstash__PutSlot *sl = sr->slots[j];
        size_t i = idx[j];
        if (sl->status != KV_OK || wres[j] != KV_OK)
            continue;
        if (lens[i] == 0) {
            sums[j] = kv_hash64("", 0);
            continue;
        }
        if (!alloc_ok) {
            wres[j] = KV_ENOMEM;
            continue;
        }
        const void *from;
        wres[j] = put_produce(s, src, i, lens[i], sl, &from, own ? &own[j] : NULL, &sums[j]);
        if (wres[j] != KV_OK || !from)
            continue;
        for (size_t k = 0; k < sl->n_replicas; k++) {
            kv_target_id t;
            int orc = cli_open_target(s, sl->replicas[k]->segment, &t);
            if (orc < 0) {
                if (wres[j] == KV_OK)
                    wres[j] = orc;
                continue;
            }
            reqs[r] = (struct kv_xfer_req){.op = KV_XFER_WRITE,
                                           .local = (void *)from,
                                           .len = lens[i],
                                           .target = t,
                                           .offset = sl->replicas[k]->offset};
            req_item[r++] = j;
        }
    }
    rc = run_batch(s, reqs, r, rst);
    for (size_t q = 0; q < r; q++) {
        int st = rc < 0 ? rc : rst[q];
        if (st != KV_OK && wres[req_item[q]] == KV_OK) {
            wres[req_item[q]] = st;
            cli_forget_target(s, reqs[q].target, st);
        }
    }
    size_t ne = 0;
    for (size_t j = 0; j < m; j++) {
        Kvstash__PutSlot *sl = sr->slots[j];
        size_t i = idx[j];
        results[i] = sl->status != KV_OK ? sl->status : wres[j];
        if (sl->status != KV_OK)
            continue;
        kvstash__put_end_item__init(&ends[ne]);
        ends[ne].key = (char *)keys[i];
        ends[ne].ok = wres[j] == KV_OK;
        ends[ne].checksum = !ends[ne].ok ? 0
                            : src->fill  ? sums[j]
                                         : kv_hash64(src->bufs[i], lens[i]);
        pends[ne] = &ends[ne];
        slot_of[ne++] = i;
    }
    rc = KV_OK;
    if (ne == 0)
        goto out;
    Kvstash__PutEndReq ereq = KVSTASH__PUT_END_REQ__INIT;
    ereq.n_items = ne;
    ereq.items = pends;
    rc = call(s, KV_RPC_PUT_END, &ereq.base, &kvstash__status_list__descriptor, &eresp, false);
    if (rc < 0) {
        /* the objects stay PENDING (invisible) until the master's put timeout reclaims them */
        for (size_t e = 0; e < ne; e++)
            if (results[slot_of[e]] == KV_OK)
                results[slot_of[e]] = rc;
        rc = KV_OK;
        goto out;
    }
    Kvstash__StatusList *el = (Kvstash__StatusList *)eresp;
    if (el->n_status != ne)
        KV_LOGW("PUT_END: %zu statuses for %zu items", el->n_status, ne);
    for (size_t e = 0; e < ne; e++) {
        int st = e < el->n_status ? el->status[e] : KV_EPROTO;
        if (results[slot_of[e]] == KV_OK)
            results[slot_of[e]] = st;
    }
out:
    kv_rpc_pb_free(sresp);
    kv_rpc_pb_free(eresp);
    for (size_t j = 0; own && j < n; j++)
        kv_free(own[j]);
    kv_free(own);
    kv_free(sums);
    kv_free(idx);
    kv_free(items);
    kv_free(pitems);
    kv_free(ends);
    kv_free(pends);
    kv_free(slot_of);
    kv_free(wres);
    kv_free(reqs);
    kv_free(rst);
    kv_free(req_item);
    return rc;
}

/* Small objects (<= inline_max) go by put_inline: filled into one buffer first. */
int kv_store_batch_put_fill(struct kv_store *s, size_t n, const char *const *keys,
                            const size_t *lens, kv_put_fill_fn fill, void *ud,
                            const struct kv_put_opts *opts, int *results)
{
    if (!s || !fill || (n && (!keys || !lens || !results)))
        return KV_EINVAL;
    if (n == 0)
        return KV_OK;
    int replicas = cli_put_replicas(opts);
    if (replicas < 0)
        return replicas;
    size_t *pos = kv_calloc(n, sizeof(*pos));
    const char **k2 = kv_calloc(n, sizeof(*k2));
    size_t *l2 = kv_calloc(n, sizeof(*l2));
    int *r2 = kv_calloc(n, sizeof(*r2));
    const void **b2 = kv_calloc(n, sizeof(*b2));
    uint8_t *small = NULL;
    int rc = KV_ENOMEM;
    if (!pos || !k2 || !l2 || !r2 || !b2)
        goto out;
    /* 1. the large ones, written where they are stored */
    size_t m = 0, ms = 0, sbytes = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = KV_ECANCELED;
        if (cli_inline_size(s, lens[i])) {
            sbytes += lens[i];
            ms++;
        } else {
            k2[m] = keys[i];
            l2[m] = lens[i];
            pos[m++] = i;
        }
    }
    rc = KV_OK;
    if (m) {
        struct put_src src = {.fill = fill, .ud = ud, .pos = pos};
        rc = put_staged(s, m, k2, &src, l2, opts, replicas, r2);
        for (size_t j = 0; j < m; j++)
            results[pos[j]] = rc < 0 ? rc : r2[j];
    }
    /* 2. the small ones, filled into one buffer and put by value */
    if (ms && rc == KV_OK) {
        small = kv_malloc(sbytes ? sbytes : 1);
        if (!small) {
            rc = KV_ENOMEM;
            goto out;
        }
        size_t off = 0;
        m = 0;
        for (size_t i = 0; i < n; i++) {
            if (!cli_inline_size(s, lens[i]))
                continue;
            uint64_t sum;
            int frc = lens[i] ? fill(ud, i, small + off, lens[i], &sum) : KV_OK;
            if (frc < 0) {
                results[i] = frc;
                continue;
            }
            k2[m] = keys[i];
            b2[m] = small + off;
            l2[m] = lens[i];
            pos[m++] = i;
            off += lens[i];
        }
        if (m) {
            rc = kv_store_batch_put(s, m, k2, b2, l2, opts, r2);
            for (size_t j = 0; j < m; j++)
                results[pos[j]] = r2[j];
        }
    }
out:
    for (size_t i = 0; i < n && rc < 0; i++)
        if (results[i] == KV_ECANCELED)
            results[i] = rc; /* not asked: say why, as kv_store_batch_put does */
    kv_free(pos);
    kv_free(k2);
    kv_free(l2);
    kv_free(r2);
    kv_free(b2);
    kv_free(small);
    return rc;
}

int kv_store_put(struct kv_store *s, const char *key, const void *buf, size_t len,
                 const struct kv_put_opts *opts)
{
    int res = KV_EINVAL;
    if (!cli_key_ok(key) || (!buf && len))
        return KV_EINVAL;
    int rc = kv_store_batch_put(s, 1, &key, &buf, &len, opts, &res);
    return rc < 0 ? rc : res;
}

/* ---- get ---------------------------------------------------------------------------------- */

/* Fills g's replica targets from the master's answer gi, nearest first (DRAM replicas only);
 * fresh: reopen each segment (a retry must not trust a cached descriptor). None reachable:
 * g->nrep 0 and g->err set. */
void cli_get_targets(struct kv_store *s, struct get_item *g, const Kvstash__GetItem *gi, bool fresh)
{
    for (size_t k = 0; k < gi->n_replicas && g->nrep < MAX_REPLICAS; k++) {
        Kvstash__Replica *rp = gi->replicas[k];
        if (rp->tier != KVSTASH__TIER__TIER_DRAM)
            continue;
        kv_target_id t;
        int orc = cli_open_target(s, rp->segment, &t);
        if (orc == KV_OK && fresh) { /* a retry: do not trust a cached descriptor */
            kv_xfer_close(s->xfer, t);
            orc = cli_open_target(s, rp->segment, &t);
        }
        if (orc < 0) {
            g->err = orc;
            continue;
        }
        const char *tr = NULL;
        kv_xfer_target_info(s->xfer, t, NULL, &tr);
        /* insertion by rank, stable: same-host (shm) first */
        int rank = cli_transport_rank(tr);
        size_t pos = g->nrep;
        while (pos > 0 && g->ranks[pos - 1] > rank) {
            g->ranks[pos] = g->ranks[pos - 1];
            g->targets[pos] = g->targets[pos - 1];
            g->offs[pos] = g->offs[pos - 1];
            pos--;
        }
        g->ranks[pos] = rank;
        g->targets[pos] = t;
        g->offs[pos] = rp->offset;
        g->nrep++;
    }
    if (g->nrep == 0 && !g->err)
        g->err = KV_EIO; /* no DRAM replica reachable (promotion pending?) */
}

/* g's first replica was read with status st: checks its bytes (checksum, and that the lease
 * granted at t0 still held when they were read), else reads the other replicas in turn. True
 * (g->done) when one held the value; false with g->err set when none did. */
bool cli_get_verify(struct kv_store *s, struct get_item *g, const char *key, int st, int64_t t0,
                    uint64_t lease_ms)
{
    for (size_t a = 0;;) {
        if (st == KV_OK && kv_hash64(g->buf, g->size) == g->checksum &&
            (uint64_t)(kv_now_ms() - t0) < lease_ms) {
            g->done = true;
            return true;
        }
        if (st == KV_OK)
            st = kv_hash64(g->buf, g->size) == g->checksum ? KV_ETIMEDOUT : KV_ECHECKSUM;
        cli_forget_target(s, g->targets[a], st);
        KV_LOGD("get %s replica %zu: %s", key, a, kv_strerror(st));
        g->err = st;
        if (++a >= g->nrep)
            return false;
        st = kv_xfer_read(s->xfer, g->targets[a], g->offs[a], g->buf, g->size);
    }
}

/* Keys to ask for in this round. */
static int get_round(struct kv_store *s, struct get_item *it, size_t m, const char *const *keys,
                     void *const *bufs, const size_t *caps, size_t *lens, int *results,
                     void **allocs, bool fresh)
{
    char **rk = kv_calloc(m, sizeof(*rk));
    size_t *map = kv_calloc(m, sizeof(*map));
    struct kv_xfer_req *reqs = kv_calloc(m, sizeof(*reqs));
    int *rst = kv_calloc(m, sizeof(*rst));
    size_t *ritem = kv_calloc(m, sizeof(*ritem));
    ProtobufCMessage *resp = NULL;
    int rc = KV_ENOMEM;
    if (!rk || !map || !reqs || !rst || !ritem)
        goto out;
    size_t q = 0;
    for (size_t j = 0; j < m; j++) {
        if (it[j].done)
            continue;
        rk[q] = (char *)keys[it[j].key];
        map[q++] = j;
    }
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    kl.n_keys = q;
    kl.keys = rk;
    int64_t t0 = kv_now_ms();
    rc = call(s, KV_RPC_GET, &kl.base, &kvstash__get_resp__descriptor, &resp, true);
    if (rc < 0)
        goto out;
    Kvstash__GetResp *gr = (Kvstash__GetResp *)resp;
    if (gr->n_items != q) {
        rc = KV_EPROTO;
        goto out;
    }
    uint64_t lease_ms = UINT64_MAX;
    for (size_t p = 0; p < q; p++) {
        struct get_item *g = &it[map[p]];
        Kvstash__GetItem *gi = gr->items[p];
        size_t i = g->key;
        g->nrep = 0;
        g->transient = false;
        if (gi->status == KV_ENOSPC || gi->status == KV_EAGAIN || gi->status == KV_EBUSY) {
            g->transient = true;
            g->err = gi->status; /* transient (no DRAM to promote into yet): next round */
            continue;
        }
        if (gi->status != KV_OK) {
            g->done = true;
            results[i] = gi->status;
            continue;
        }
        if (gi->lease_ms && gi->lease_ms < lease_ms)
            lease_ms = gi->lease_ms;
        g->size = gi->size;
        g->checksum = gi->checksum;
        if (allocs) {
            if (!g->buf) {
                g->buf = kv_malloc(gi->size ? gi->size : 1);
                if (!g->buf) {
                    g->done = true;
                    results[i] = KV_ENOMEM;
                    continue;
                }
            } else if (lens[i] != gi->size) { /* replaced between rounds: size changed */
                void *nb = kv_realloc(g->buf, gi->size ? gi->size : 1);
                if (!nb) {
                    g->done = true;
                    results[i] = KV_ENOMEM;
                    continue;
                }
                g->buf = nb;
            }
            lens[i] = gi->size;
        } else {
            lens[i] = gi->size;
            if (gi->size > caps[i]) {
                g->done = true;
                results[i] = KV_E2BIG;
                continue;
            }
            g->buf = bufs[i];
        }
        if (gi->size == 0) {
            g->done = true;
            results[i] = gi->checksum == kv_hash64("", 0) ? KV_OK : KV_ECHECKSUM;
            continue;
        }
        cli_get_targets(s, g, gi, fresh);
    }
    size_t r = 0;
    for (size_t p = 0; p < q; p++) {
        struct get_item *g = &it[map[p]];
        if (g->done || g->nrep == 0)
            continue;
        reqs[r] = (struct kv_xfer_req){.op = KV_XFER_READ,
                                       .local = g->buf,
                                       .len = g->size,
                                       .target = g->targets[0],
                                       .offset = g->offs[0]};
        ritem[r++] = p;
    }
    rc = run_batch(s, reqs, r, rst);
    if (rc < 0)
        goto out;
    for (size_t x = 0; x < r; x++) {
        size_t p = ritem[x];
        struct get_item *g = &it[map[p]];
        if (cli_get_verify(s, g, keys[g->key], rst[x], t0, lease_ms))
            results[g->key] = KV_OK;
    }
    rc = KV_OK;
out:
    kv_rpc_pb_free(resp);
    kv_free(rk);
    kv_free(map);
    kv_free(reqs);
    kv_free(rst);
    kv_free(ritem);
    return rc;
}

static int get_many(struct kv_store *s, size_t n, const char *const *keys, void *const *bufs,
                    const size_t *caps, size_t *lens, int *results, void **allocs)
{
    struct get_item *it = kv_calloc(n ? n : 1, sizeof(*it));
    if (!it)
        return KV_ENOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        lens[i] = 0;
        if (allocs)
            allocs[i] = NULL;
        if (!cli_key_ok(keys[i]) || (!allocs && !bufs[i] && caps[i])) {
            results[i] = KV_EINVAL;
            continue;
        }
        it[m++].key = i;
    }
    int rc = KV_OK;
    bool asked = false;
    int64_t deadline = kv_now_ms() + s->timeout_ms;
    for (int round = 0;; round++) {
        size_t left = 0, waiting = 0;
        for (size_t j = 0; j < m; j++) {
            left += !it[j].done;
            waiting += !it[j].done && it[j].transient;
        }
        /* failed reads get GET_ROUNDS rounds; an item the master could not promote yet (its
         * DRAM held by other readers' leases, which end within the lease time) is asked again
         * until the timeout */
        if (left == 0 || (round >= GET_ROUNDS && waiting == 0))
            break;
        if (round > 0) {
            /* let the master evict or promote meanwhile */
            int64_t pause = round < 4 ? 50ll << round : 500;
            if (kv_now_ms() + pause >= deadline)
                break;
            kv_sleep_ms((int)pause);
        }
        rc = get_round(s, it, m, keys, bufs, caps, lens, results, allocs, round > 0);
        if (rc < 0)
            break;
        asked = true;
    }
    for (size_t j = 0; j < m; j++) {
        struct get_item *g = &it[j];
        if (!g->done)
            results[g->key] = rc < 0 ? rc : (g->err ? g->err : KV_EIO);
        if (allocs) {
            if (g->done && results[g->key] == KV_OK) {
                allocs[g->key] = g->buf;
            } else {
                kv_free(g->buf);
                lens[g->key] = 0;
            }
        } else if (results[g->key] != KV_OK && results[g->key] != KV_E2BIG) {
            lens[g->key] = 0;
        }
    }
    kv_free(it);
    if (rc < 0 && !asked && m == n)
        return rc; /* the master could not be asked at all */
    return KV_OK;
}

int kv_store_batch_get(struct kv_store *s, size_t n, const char *const *keys, void *const *bufs,
                       const size_t *caps, size_t *lens, int *results)
{
    if (!s || (n && (!keys || !bufs || !caps || !lens || !results)))
        return KV_EINVAL;
    return get_many(s, n, keys, bufs, caps, lens, results, NULL);
}

int kv_store_get(struct kv_store *s, const char *key, void *buf, size_t cap, size_t *len)
{
    if (!s || !cli_key_ok(key) || !len || (!buf && cap))
        return KV_EINVAL;
    int res = KV_EIO;
    size_t l = 0;
    int rc = get_many(s, 1, &key, &buf, &cap, &l, &res, NULL);
    if (rc < 0)
        return rc;
    if (res == KV_OK || res == KV_E2BIG)
        *len = l;
    return res;
}

int kv_store_get_alloc(struct kv_store *s, const char *key, void **buf, size_t *len)
{
    if (!s || !cli_key_ok(key) || !buf || !len)
        return KV_EINVAL;
    int res = KV_EIO;
    size_t l = 0;
    void *p = NULL;
    int rc = get_many(s, 1, &key, NULL, NULL, &l, &res, &p);
    if (rc < 0)
        return rc;
    if (res == KV_OK) {
        *buf = p;
        *len = l;
    }
    return res;
}

/* ---- exists / remove / list / stat -------------------------------------------------------- */

static int key_call(struct kv_store *s, uint16_t method, size_t n, const char *const *keys,
                    int *results, bool idempotent)
{
    if (!s || (n && (!keys || !results)))
        return KV_EINVAL;
    char **rk = kv_calloc(n ? n : 1, sizeof(*rk));
    size_t *map = kv_calloc(n ? n : 1, sizeof(*map));
    ProtobufCMessage *resp = NULL;
    int rc = KV_ENOMEM;
    if (!rk || !map)
        goto out;
    size_t q = 0;
    for (size_t i = 0; i < n; i++) {
        if (!cli_key_ok(keys[i])) {
            results[i] = KV_EINVAL;
            continue;
        }
        rk[q] = (char *)keys[i];
        map[q++] = i;
    }
    rc = KV_OK;
    if (q == 0)
        goto out;
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    kl.n_keys = q;
    kl.keys = rk;
    rc = call(s, method, &kl.base, &kvstash__status_list__descriptor, &resp, idempotent);
    if (rc < 0)
        goto out;
    Kvstash__StatusList *sl = (Kvstash__StatusList *)resp;
    if (sl->n_status != q) {
        rc = KV_EPROTO;
        goto out;
    }
    for (size_t p = 0; p < q; p++)
        results[map[p]] = sl->status[p];
out:
    kv_rpc_pb_free(resp);
    kv_free(rk);
    kv_free(map);
    return rc;
}

int kv_store_batch_exists(struct kv_store *s, size_t n, const char *const *keys, int *results)
{
    return key_call(s, KV_RPC_EXISTS, n, keys, results, true);
}

int kv_store_batch_remove(struct kv_store *s, size_t n, const char *const *keys, int *results)
{
    return key_call(s, KV_RPC_REMOVE, n, keys, results, false);
}

int kv_store_exists(struct kv_store *s, const char *key)
{
    if (!cli_key_ok(key))
        return KV_EINVAL;
    int res = KV_EIO;
    int rc = key_call(s, KV_RPC_EXISTS, 1, &key, &res, true);
    return rc < 0 ? rc : res;
}

int kv_store_remove(struct kv_store *s, const char *key)
{
    if (!cli_key_ok(key))
        return KV_EINVAL;
    int res = KV_EIO;
    int rc = key_call(s, KV_RPC_REMOVE, 1, &key, &res, false);
    return rc < 0 ? rc : res;
}

void kv_store_keys_free(char **keys, size_t n)
{
    if (!keys)
        return;
    for (size_t i = 0; i < n; i++)
        kv_free(keys[i]);
    kv_free(keys);
}

int kv_store_list(struct kv_store *s, const char *prefix, size_t limit, char ***keys,
                  uint64_t **sizes, size_t *n)
{
    if (!s || !keys || !n || limit > UINT32_MAX)
        return KV_EINVAL;
    Kvstash__ListReq req = KVSTASH__LIST_REQ__INIT;
    req.prefix = (char *)(prefix ? prefix : "");
    req.limit = (uint32_t)limit;
    ProtobufCMessage *resp = NULL;
    int rc = call(s, KV_RPC_LIST, &req.base, &kvstash__list_resp__descriptor, &resp, true);
    if (rc < 0)
        return rc;
    Kvstash__ListResp *lr = (Kvstash__ListResp *)resp;
    char **k = NULL;
    uint64_t *sz = NULL;
    size_t cnt = lr->n_keys;
    rc = lr->status;
    if (rc < 0)
        goto out;
    rc = KV_ENOMEM;
    k = kv_calloc(cnt ? cnt : 1, sizeof(*k));
    if (!k)
        goto out;
    if (sizes) {
        sz = kv_calloc(cnt ? cnt : 1, sizeof(*sz));
        if (!sz)
            goto out_keys;
    }
    for (size_t i = 0; i < cnt; i++) {
        k[i] = kv_strdup(lr->keys[i]);
        if (!k[i])
            goto out_keys;
        if (sz)
            sz[i] = i < lr->n_sizes ? lr->sizes[i] : 0;
    }
    *keys = k;
    if (sizes)
        *sizes = sz;
    *n = cnt;
    rc = KV_OK;
    goto out;
out_keys:
    kv_store_keys_free(k, cnt);
    kv_free(sz);
out:
    kv_rpc_pb_free(resp);
    return rc;
}

int kv_store_stat_json(struct kv_store *s, char **json)
{
    if (!s || !json)
        return KV_EINVAL;
    ProtobufCMessage *resp = NULL;
    int rc = call(s, KV_RPC_STAT, NULL, &kvstash__stat_resp__descriptor, &resp, true);
    if (rc < 0)
        return rc;
    Kvstash__StatResp *sr = (Kvstash__StatResp *)resp;
    rc = sr->status;
    if (rc == KV_OK) {
        *json = kv_strdup(sr->json ? sr->json : "{}");
        if (!*json)
            rc = KV_ENOMEM;
    }
    kv_rpc_pb_free(resp);
    return rc;
}

void kv_store_free(void *p)
{
    kv_free(p);
}
