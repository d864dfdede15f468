/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_metrics.c - the master's metrics: Prometheus text (/metrics), the status page's JSON
 * (/api/v1/status) and the RPC latency histograms; docs/metrics.md explains every family.
 *
 * Where the figures come from: counters in keys and bytes are kept in m->mc under m->lock by
 * the handlers (master_client.c, master_place.c, master_maint.c); capacity and use per node and
 * tier are read from the node list under the lock; RPC handling times are atomics updated by
 * master.c (dispatch_timed) without the lock; process figures come from /proc (common/prom.c).
 *
 * Thread model: mst_rpc_observe runs on RPC threads (relaxed atomics); the rest runs on the
 * admin HTTP thread, copies what it needs under m->lock, and formats after letting it go.
 */
#define KV_LOG_COMPONENT "master"
#include "store/master_metrics.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/util.h"
#include "common/web.h"
#include "store/master_int.h"

/* RPC histogram upper bounds in seconds (10 us .. 2.5 s) */
static const double rpc_le[MST_RPC_NB] = {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
                                          1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                                          1e-1, 2.5e-1, 5e-1, 1,    2.5};
static const struct {
    uint16_t method;
    const char *op;
} rpc_ops[MST_RPC_NOPS] = {
    {KV_RPC_HELLO, "hello"},
    {KV_RPC_PUT_START, "put_start"},
    {KV_RPC_PUT_END, "put_end"},
    {KV_RPC_PUT, "put"},
    {KV_RPC_GET, "get"},
    {KV_RPC_EXISTS, "exists"},
    {KV_RPC_REMOVE, "remove"},
    {KV_RPC_LIST, "list"},
    {KV_RPC_STAT, "stat"},
    {KV_RPC_MOUNT, "mount"},
    {KV_RPC_HEARTBEAT, "heartbeat"},
};
static const char *const tier_name[MST_NTIERS] = {"dram", "ssd"};
static const char *const miss_name[MST_NMISS] = {"not_found", "pending", "expired", "lost"};

int mst_rpc_slot(uint16_t method)
{
    for (int i = 0; i < MST_RPC_NOPS; i++)
        if (rpc_ops[i].method == method)
            return i;
    return -1;
}

void mst_rpc_observe(struct kv_master *m, uint16_t method, int64_t ns)
{
    int s = mst_rpc_slot(method);
    if (s < 0)
        return;
    if (ns < 0)
        ns = 0;
    double sec = (double)ns / 1e9;
    size_t b = 0;
    while (b < MST_RPC_NB && sec > rpc_le[b])
        b++;
    atomic_fetch_add_explicit(&m->rpc_hist[s].b[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->rpc_hist[s].sum_ns, (uint64_t)ns, memory_order_relaxed);
}

/* One node's figures, copied under the lock. */
struct node_snap {
    char id[128];
    uint64_t cap[MST_NTIERS], used[MST_NTIERS];
};

/* Everything the two documents need, copied under the lock. */
struct snap {
    bool leader;
    uint64_t epoch, objects, pending, puts, gets, errors, evictions, demotions, promotions, expired;
    struct kv_slab_stats slab;
    struct mst_counters mc;
    size_t nn;
    struct node_snap *nodes; /* kv_malloc'd */
    uint64_t rpc[MST_RPC_NOPS][MST_RPC_NB + 1];
    double rpc_sum[MST_RPC_NOPS];
};

static int take_snap(struct kv_master *m, struct snap *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&m->lock);
    size_t n = 0;
    for (struct mnode *x = m->nodes; x; x = x->next)
        n++;
    s->nodes = kv_calloc(n ? n : 1, sizeof(*s->nodes));
    if (!s->nodes) {
        pthread_mutex_unlock(&m->lock);
        return KV_ENOMEM;
    }
    for (struct mnode *x = m->nodes; x; x = x->next) {
        struct node_snap *ns = &s->nodes[s->nn++];
        snprintf(ns->id, sizeof(ns->id), "%s", x->id);
        ns->cap[MST_TIER_DRAM] = x->size;
        ns->used[MST_TIER_DRAM] = kv_segalloc_used(x->alloc);
        ns->cap[MST_TIER_SSD] = x->ssd_capacity;
        ns->used[MST_TIER_SSD] = x->ssd_used;
    }
    s->leader = atomic_load(&m->leader);
    s->epoch = m->epoch;
    s->objects = m->index.n;
    s->pending = m->npending;
    s->puts = m->puts;
    s->gets = m->gets;
    s->errors = m->errors;
    s->evictions = m->evictions;
    s->demotions = m->demotions;
    s->promotions = m->promotions;
    s->expired = m->expired;
    kv_slab_stats(&m->slab, &s->slab);
    s->mc = m->mc;
    pthread_mutex_unlock(&m->lock);
    for (int o = 0; o < MST_RPC_NOPS; o++) {
        for (int b = 0; b <= MST_RPC_NB; b++)
            s->rpc[o][b] = atomic_load_explicit(&m->rpc_hist[o].b[b], memory_order_relaxed);
        s->rpc_sum[o] =
            (double)atomic_load_explicit(&m->rpc_hist[o].sum_ns, memory_order_relaxed) / 1e9;
    }
    return KV_OK;
}

static void tiered(struct kv_prom *p, const char *name, enum kv_prom_type t, const char *help,
                   const uint64_t v[MST_NTIERS])
{
    kv_prom_family(p, name, t, help);
    for (int i = 0; i < MST_NTIERS; i++) {
        struct kv_prom_label l = {"tier", tier_name[i]};
        kv_prom_sample(p, &l, 1, (double)v[i]);
    }
}

static void per_node(struct kv_prom *p, const struct snap *s, const char *name, const char *help,
                     bool used)
{
    kv_prom_family(p, name, KV_PROM_GAUGE, help);
    for (size_t i = 0; i < s->nn; i++) {
        for (int t = 0; t < MST_NTIERS; t++) {
            struct kv_prom_label l[] = {{"node", s->nodes[i].id}, {"tier", tier_name[t]}};
            kv_prom_sample(p, l, 2, (double)(used ? s->nodes[i].used[t] : s->nodes[i].cap[t]));
        }
    }
}

int kv_master_metrics(struct kv_master *m, struct kv_buf *b)
{
    struct snap s;
    int rc = take_snap(m, &s);
    if (rc < 0)
        return rc;
    const struct mst_counters *c = &s.mc;
    struct kv_prom p;
    kv_prom_init(&p, b);
    kv_prom_one(&p, "kvstash_store_leader", KV_PROM_GAUGE, "1 if this master is the leader.",
                s.leader);
    kv_prom_one(&p, "kvstash_store_epoch", KV_PROM_GAUGE, "Leader epoch this master knows.",
                (double)s.epoch);
    kv_prom_one(&p, "kvstash_store_nodes", KV_PROM_GAUGE, "Mounted storage nodes.", (double)s.nn);
    kv_prom_one(&p, "kvstash_store_objects", KV_PROM_GAUGE,
                "Objects in the index (complete and pending).", (double)s.objects);
    kv_prom_one(&p, "kvstash_store_pending_objects", KV_PROM_GAUGE,
                "Objects whose put has started and not ended.", (double)s.pending);
    kv_prom_one(&p, "kvstash_store_object_record_mapped_bytes", KV_PROM_GAUGE,
                "Bytes of huge-page chunks holding the index's object records.",
                (double)s.slab.mapped);
    kv_prom_one(&p, "kvstash_store_object_record_used_bytes", KV_PROM_GAUGE,
                "Bytes of those chunks in live object records (the rest: freed records kept for "
                "reuse, and the newest chunk's unused end).",
                (double)s.slab.used);
    per_node(&p, &s, "kvstash_store_capacity_bytes", "Capacity of a node's tier in bytes.", false);
    per_node(&p, &s, "kvstash_store_used_bytes", "Bytes in use in a node's tier.", true);
    kv_prom_one(&p, "kvstash_store_get_requests_total", KV_PROM_COUNTER,
                "Keys asked for by get requests.", (double)s.gets);
    tiered(&p, "kvstash_store_hits_total", KV_PROM_COUNTER,
           "Gets served by a tier (ssd: not in DRAM, read back from SSD).", c->hits);
    tiered(&p, "kvstash_store_hit_bytes_total", KV_PROM_COUNTER, "Bytes of the gets a tier served.",
           c->hit_bytes);
    tiered(&p, "kvstash_store_misses_total", KV_PROM_COUNTER,
           "Gets that reached a tier and that it could not serve (DRAM first, then SSD).",
           c->misses);
    tiered(&p, "kvstash_store_miss_bytes_total", KV_PROM_COUNTER,
           "Bytes of the tier misses whose size is known (DRAM misses served by SSD).",
           c->miss_bytes);
    kv_prom_family(&p, "kvstash_store_get_misses_total", KV_PROM_COUNTER,
                   "Gets that found nothing, by reason.");
    for (int i = 0; i < MST_NMISS; i++) {
        struct kv_prom_label l = {"reason", miss_name[i]};
        kv_prom_sample(&p, &l, 1, (double)c->miss_reason[i]);
    }
    kv_prom_one(&p, "kvstash_store_puts_total", KV_PROM_COUNTER, "Completed puts (objects).",
                (double)s.puts);
    kv_prom_one(&p, "kvstash_store_put_bytes_total", KV_PROM_COUNTER, "Bytes of completed puts.",
                (double)c->put_bytes);
    kv_prom_one(&p, "kvstash_store_evictions_total", KV_PROM_COUNTER,
                "Replicas dropped from DRAM (or SSD) by eviction.", (double)s.evictions);
    kv_prom_one(&p, "kvstash_store_evicted_bytes_total", KV_PROM_COUNTER,
                "Bytes of the replicas dropped by eviction.", (double)c->evicted_bytes);
    kv_prom_one(&p, "kvstash_store_demotions_total", KV_PROM_COUNTER,
                "Replicas moved from DRAM to SSD.", (double)s.demotions);
    kv_prom_one(&p, "kvstash_store_demoted_bytes_total", KV_PROM_COUNTER,
                "Bytes moved from DRAM to SSD.", (double)c->demoted_bytes);
    kv_prom_one(&p, "kvstash_store_promotions_total", KV_PROM_COUNTER,
                "Replicas read back from SSD into DRAM.", (double)s.promotions);
    kv_prom_one(&p, "kvstash_store_promoted_bytes_total", KV_PROM_COUNTER,
                "Bytes read back from SSD into DRAM.", (double)c->promoted_bytes);
    kv_prom_one(&p, "kvstash_store_expirations_total", KV_PROM_COUNTER,
                "Objects removed because their TTL passed.", (double)s.expired);
    kv_prom_one(&p, "kvstash_store_expired_bytes_total", KV_PROM_COUNTER,
                "Bytes of the objects removed by TTL.", (double)c->expired_bytes);
    kv_prom_one(&p, "kvstash_store_errors_total", KV_PROM_COUNTER,
                "Gets and puts that failed (I/O, no room, timeouts).", (double)s.errors);
    kv_prom_family(&p, "kvstash_store_rpc_duration_seconds", KV_PROM_HISTOGRAM,
                   "Time the master spent handling an RPC, by operation.");
    for (int o = 0; o < MST_RPC_NOPS; o++) {
        struct kv_prom_label l = {"op", rpc_ops[o].op};
        kv_prom_hist(&p, &l, 1, rpc_le, s.rpc[o], MST_RPC_NB, s.rpc_sum[o]);
    }
    uint64_t spins = 0, hits = 0;
    if (m->rpc)
        kv_rpc_server_poll_stats(m->rpc, &spins, &hits);
    kv_prom_one(&p, "kvstash_store_rpc_poll_spins_total", KV_PROM_COUNTER,
                "Times an RPC event loop polled (--poll-spin-us) before it would sleep.",
                (double)spins);
    kv_prom_one(&p, "kvstash_store_rpc_poll_spin_hits_total", KV_PROM_COUNTER,
                "Polls that found a request, so the loop did not sleep.", (double)hits);
    kv_prom_process(&p);
    kv_free(s.nodes);
    return kv_prom_end(&p);
}

static json_t *u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *tier_obj(const uint64_t v[MST_NTIERS])
{
    return json_pack("{s:o, s:o}", "dram", u64(v[MST_TIER_DRAM]), "ssd", u64(v[MST_TIER_SSD]));
}

char *kv_master_status_json(struct kv_master *m)
{
    struct snap s;
    if (take_snap(m, &s) < 0)
        return NULL;
    char *out = NULL;
    json_t *root = json_object();
    json_t *nodes = json_array();
    json_t *rpc = json_object();
    json_t *le = json_array();
    if (!root || !nodes || !rpc || !le) {
        json_decref(nodes);
        json_decref(rpc);
        json_decref(le);
        goto out_free;
    }
    for (size_t i = 0; i < s.nn; i++)
        json_array_append_new(nodes, json_pack("{s:s, s:o, s:o}", "id", s.nodes[i].id, "capacity",
                                               tier_obj(s.nodes[i].cap), "used",
                                               tier_obj(s.nodes[i].used)));
    for (int b = 0; b < MST_RPC_NB; b++)
        json_array_append_new(le, json_real(rpc_le[b]));
    for (int o = 0; o < MST_RPC_NOPS; o++) {
        json_t *bk = json_array();
        uint64_t n = 0;
        for (int b = 0; bk && b <= MST_RPC_NB; b++) {
            n += s.rpc[o][b];
            json_array_append_new(bk, u64(s.rpc[o][b]));
        }
        json_object_set_new(
            rpc, rpc_ops[o].op,
            json_pack("{s:o*, s:f, s:o}", "buckets", bk, "sum", s.rpc_sum[o], "count", u64(n)));
    }
    const struct mst_counters *c = &s.mc;
    json_object_set_new(root, "time_ms", json_integer((json_int_t)kv_wall_ms()));
    json_object_set_new(root, "master_id", json_string(m->id));
    json_object_set_new(root, "cluster", json_string(m->cluster));
    json_object_set_new(root, "leader", json_boolean(s.leader));
    json_object_set_new(root, "epoch", u64(s.epoch));
    json_object_set_new(root, "ready", json_boolean(s.leader && s.nn > 0));
    json_object_set_new(root, "objects", u64(s.objects));
    json_object_set_new(root, "pending", u64(s.pending));
    json_object_set_new(root, "nodes", nodes);
    json_object_set_new(root, "gets", u64(s.gets));
    json_object_set_new(root, "hits", tier_obj(c->hits));
    json_object_set_new(root, "hit_bytes", tier_obj(c->hit_bytes));
    json_object_set_new(root, "misses", tier_obj(c->misses));
    json_object_set_new(root, "puts", u64(s.puts));
    json_object_set_new(root, "put_bytes", u64(c->put_bytes));
    json_object_set_new(root, "evictions", u64(s.evictions));
    json_object_set_new(root, "evicted_bytes", u64(c->evicted_bytes));
    json_object_set_new(root, "demotions", u64(s.demotions));
    json_object_set_new(root, "promotions", u64(s.promotions));
    json_object_set_new(root, "expirations", u64(s.expired));
    json_object_set_new(root, "errors", u64(s.errors));
    json_object_set_new(root, "rpc_le", le);
    json_object_set_new(root, "rpc", rpc);
    out = kv_json_dump(root);
out_free:
    json_decref(root);
    kv_free(s.nodes);
    return out;
}

static void send_body(struct evhttp_request *req, const char *ctype, const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(b, body, len);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static bool only_get(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET)
        return true;
    evhttp_send_error(req, 405, "only GET");
    return false;
}

void kv_master_http_metrics(struct evhttp_request *req, void *arg)
{
    if (!only_get(req))
        return;
    struct kv_buf b;
    kv_buf_init(&b);
    if (kv_master_metrics(arg, &b) == KV_OK)
        send_body(req, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "", b.len);
    else
        evhttp_send_error(req, 500, "metrics page not written (see the log)");
    kv_buf_fini(&b);
}

void kv_master_http_status(struct evhttp_request *req, void *arg)
{
    if (!only_get(req))
        return;
    char *js = kv_master_status_json(arg);
    if (js)
        send_body(req, "application/json", js, strlen(js));
    else
        evhttp_send_error(req, 500, "out of memory");
    kv_free(js);
}

void kv_master_http_page(struct evhttp_request *req, void *arg)
{
    (void)arg;
    kv_web_http_asset(req, "/index.html");
}
