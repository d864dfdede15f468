/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_stats.c - what the master reports: /api/v1/cluster JSON and counts for tests (the
 * Prometheus text and the status page's JSON: master_metrics.c). Design, states, invariants and
 * locks of the master: master.c.
 */
#define KV_LOG_COMPONENT "master"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/store.h"
#include "store/master_int.h"

char *kv_master_cluster_json(struct kv_master *m)
{
    json_t *root = json_object();
    json_t *nodes = json_array();
    if (!root || !nodes) {
        json_decref(root);
        json_decref(nodes);
        return NULL;
    }
    pthread_mutex_lock(&m->lock);
    uint64_t cap = 0, used = 0, ssd_cap = 0, ssd_used = 0;
    for (struct mnode *n = m->nodes; n; n = n->next) {
        json_t *j = json_object();
        json_object_set_new(j, "id", json_string(n->id));
        json_object_set_new(j, "segment", json_string(n->segment));
        json_object_set_new(j, "rpc_addr", json_string(n->rpc_addr));
        json_object_set_new(j, "host", json_string(n->host_id));
        json_object_set_new(j, "capacity", json_integer((json_int_t)n->size));
        json_object_set_new(j, "used", json_integer((json_int_t)kv_segalloc_used(n->alloc)));
        json_object_set_new(j, "ssd_capacity", json_integer((json_int_t)n->ssd_capacity));
        json_object_set_new(j, "ssd_used", json_integer((json_int_t)n->ssd_used));
        json_array_append_new(nodes, j);
        cap += n->size;
        used += kv_segalloc_used(n->alloc);
        ssd_cap += n->ssd_capacity;
        ssd_used += n->ssd_used;
    }
    json_object_set_new(root, "master_id", json_string(m->id));
    json_object_set_new(root, "leader", json_boolean(atomic_load(&m->leader)));
    json_object_set_new(root, "epoch", json_integer((json_int_t)m->epoch));
    json_object_set_new(root, "cluster", json_string(m->cluster));
    json_object_set_new(root, "nodes", nodes);
    json_object_set_new(root, "capacity", json_integer((json_int_t)cap));
    json_object_set_new(root, "used", json_integer((json_int_t)used));
    json_object_set_new(root, "ssd_capacity", json_integer((json_int_t)ssd_cap));
    json_object_set_new(root, "ssd_used", json_integer((json_int_t)ssd_used));
    json_object_set_new(root, "objects", json_integer((json_int_t)m->index.n));
    json_object_set_new(root, "hits", json_integer((json_int_t)m->hits));
    json_object_set_new(root, "misses", json_integer((json_int_t)m->misses));
    json_object_set_new(root, "evictions", json_integer((json_int_t)m->evictions));
    json_object_set_new(root, "demotions", json_integer((json_int_t)m->demotions));
    json_object_set_new(root, "promotions", json_integer((json_int_t)m->promotions));
    json_object_set_new(root, "expired", json_integer((json_int_t)m->expired));
    json_object_set_new(root, "puts", json_integer((json_int_t)m->puts));
    json_object_set_new(root, "gets", json_integer((json_int_t)m->gets));
    json_object_set_new(root, "errors", json_integer((json_int_t)m->errors));
    pthread_mutex_unlock(&m->lock);
    char *s = kv_json_dump(root);
    json_decref(root);
    return s;
}

int kv_master_stat_json(struct kv_master *m, char **json)
{
    char *s = kv_master_cluster_json(m);
    if (!s)
        return KV_ENOMEM;
    *json = s;
    return KV_OK;
}

uint64_t kv_master_object_count(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t n = m->index.n;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int kv_master_node_count(struct kv_master *m)
{
    pthread_mutex_lock(&m->lock);
    int n = m->nnodes;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int kv_master_key_info(struct kv_master *m, const char *key, int *nrep, int *ndram, int *nssd)
{
    pthread_mutex_lock(&m->lock);
    struct mobj *o = kv_oidx_get(&m->index, key);
    int rc = KV_ENOENT;
    if (o && o->state == OBJ_COMPLETE) {
        int d = 0, s = 0;
        for (int i = 0; i < o->nrep; i++) {
            d += obj_rep(o)[i].dram;
            s += obj_rep(o)[i].ssd;
        }
        if (nrep)
            *nrep = o->nrep;
        if (ndram)
            *ndram = d;
        if (nssd)
            *nssd = s;
        rc = KV_OK;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}
