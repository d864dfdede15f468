/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_admin.c - the master's admin HTTP endpoints on the shared admin server
 * (common/admin_http.h): /health (liveness), /ready (readiness), /metrics, /api/v1/cluster.
 *
 * Readiness: a master is ready when it is the leader and at least one node is mounted (not
 * mid-MOUNT, not removed): only then can a put be placed. A standby answers 503 with the
 * leader's address; a leader without nodes 503 "no storage node mounted yet", a new leader
 * whose every node is fenced (served the old leader, master_place.c) 503 until the fence ends.
 * `kvstash serve` runs a master and a node in one process, so its /ready is this one and turns 200
 * when its own node has mounted. Leadership is read through admin_is_leader() only, so a stricter
 * check (a lease deadline) replaces one line.
 *
 * Thread model: one admin thread (the admin server's own loop); handlers take m->lock only to
 * copy what they report (through master.c helpers).
 */
#define KV_LOG_COMPONENT "master"
#include <stdio.h>
#include <string.h>

#include "common/admin_http.h"
#include "common/alloc.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "store/master_int.h"
#include "store/master_metrics.h"

/* The one place the admin endpoints ask whether this master leads: within its local lease
 * deadline too (master_ha.c), so a leader cut off from metadata stops saying it leads. */
static bool admin_is_leader(struct kv_master *m)
{
    return mst_leading(m);
}

/* Nodes fully mounted (placement may use them). Takes m->lock. */
static int mounted_nodes(struct kv_master *m)
{
    int n = 0;
    pthread_mutex_lock(&m->lock);
    for (struct mnode *x = m->nodes; x; x = x->next)
        if (!x->removed && !x->mounting)
            n++;
    pthread_mutex_unlock(&m->lock);
    return n;
}

static bool on_live(void *ud, json_t *doc, char *why, size_t whylen)
{
    (void)why;
    (void)whylen;
    struct kv_master *m = ud;
    json_object_set_new(doc, "id", json_string(m->id));
    json_object_set_new(doc, "leader", json_boolean(admin_is_leader(m)));
    return true;
}

static bool on_ready(void *ud, json_t *doc, char *reason, size_t reasonlen)
{
    struct kv_master *m = ud;
    bool leader = admin_is_leader(m);
    int nodes = mounted_nodes(m);
    char hint[300];
    pthread_mutex_lock(&m->lock);
    memcpy(hint, m->leader_hint, sizeof(hint));
    uint64_t epoch = m->epoch;
    pthread_mutex_unlock(&m->lock);
    hint[sizeof(hint) - 1] = '\0';
    json_object_set_new(doc, "id", json_string(m->id));
    json_object_set_new(doc, "leader", json_boolean(leader));
    json_object_set_new(doc, "nodes", json_integer(nodes));
    if (leader) {
        json_object_set_new(doc, "epoch", json_integer((json_int_t)epoch));
    } else {
        json_object_set_new(doc, "leader_addr", hint[0] ? json_string(hint) : json_null());
        if (hint[0])
            snprintf(reason, reasonlen, "standby; the leader is at %s", hint);
        else
            snprintf(reason, reasonlen, "standby; no leader elected yet");
        return false;
    }
    if (nodes < 1) {
        snprintf(reason, reasonlen, "no storage node mounted yet");
        return false;
    }
    if (mst_place_fenced(m)) { /* gets are served, puts are refused until the fence ends */
        snprintf(reason, reasonlen,
                 "new leader: no placement until the old leader's lease and the put timeout "
                 "are over");
        return false;
    }
    return true;
}

static void do_metrics(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    struct kv_buf b;
    kv_buf_init(&b);
    if (kv_master_metrics(ud, &b) == KV_OK)
        kv_admin_reply(req, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    else
        kv_admin_reply_error(req, 500, "out of memory");
    kv_buf_fini(&b);
}

static void do_cluster(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    char *js = kv_master_cluster_json(ud);
    if (js)
        kv_admin_reply(req, 200, "application/json", js, strlen(js));
    else
        kv_admin_reply_error(req, 500, "out of memory");
    kv_free(js);
}

/* The status page and its JSON (master_metrics.c) */
static void do_status(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    kv_master_http_status(req, ud);
}

static void do_page(struct evhttp_request *req, const char *path, void *ud)
{
    (void)path;
    kv_master_http_page(req, ud);
}

int kv_master_admin_start(struct kv_master *m, const char *addr)
{
    struct kv_admin_http_opts o = {
        .addr = addr, .thread_name = "admin", .live = on_live, .ready = on_ready, .ud = m};
    char err[300];
    int rc = kv_admin_http_create(&o, &m->admin, err, sizeof(err));
    if (rc < 0) {
        KV_LOGE("%s", err);
        return rc;
    }
    if (kv_admin_http_route(m->admin, "/metrics", 0, 0, do_metrics, m) < 0 ||
        kv_admin_http_route(m->admin, "/api/v1/cluster", 0, 0, do_cluster, m) < 0 ||
        kv_admin_http_route(m->admin, "/api/v1/status", 0, 0, do_status, m) < 0 ||
        kv_admin_http_route(m->admin, "/", 0, 0, do_page, m) < 0 ||
        kv_admin_http_route(m->admin, "/ui/", KV_ADMIN_PREFIX, 0, do_page, m) < 0) {
        rc = KV_ENOMEM;
        goto out_free;
    }
    char host[256];
    uint16_t port;
    kv_parse_hostport(addr, host, sizeof(host), &port);
    m->admin_port = kv_admin_http_port(m->admin);
    snprintf(m->admin_addr, sizeof(m->admin_addr), "%s:%u",
             strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host, m->admin_port);
    rc = kv_admin_http_start(m->admin);
    if (rc < 0)
        goto out_free;
    return KV_OK;
out_free:
    kv_admin_http_destroy(m->admin);
    m->admin = NULL;
    m->admin_port = 0;
    return rc;
}

void kv_master_admin_stop(struct kv_master *m)
{
    kv_admin_http_destroy(m->admin);
    m->admin = NULL;
}
