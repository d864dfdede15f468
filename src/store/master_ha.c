/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_ha.c - the master's leader election (through the metadata backend). Its admin HTTP
 * endpoints are in master_admin.c.
 *
 * Election (states of one master):
 *
 *     STANDBY ──leader key absent: bump epoch (CAS), grant lease, CAS-create leader key──▶ LEADER
 *        ▲                                                                               │
 *        └──── lease lost (auto-renew failed) / leader key now names another master ─────┘
 *                (kv_master_reset: drop every node and object; nodes re-MOUNT elsewhere)
 *
 * The leader key /kvstash/<cluster>/masters/leader holds JSON {id, rpc_addr, admin_addr, epoch}
 * bound to a lease of leader_ttl_s, renewed by the metadata backend's auto-renew thread. A
 * standby watches the key (and polls it every 500 ms in case a watch event is lost); when it is
 * gone, it campaigns. A new leader starts with an empty index; nodes, which watch the same key,
 * MOUNT again with their object lists, rebuilding it. kv_master_stop revokes the lease, so a
 * standby takes over at once after a clean stop, and within leader_ttl_s after a crash.
 *
 * Thread model: one campaign thread; watch and lease-lost callbacks (backend threads) only set
 * flags and signal wake_cond.
 */
#define KV_LOG_COMPONENT "master"
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "store/master_int.h"

static void wake(struct kv_master *m)
{
    pthread_mutex_lock(&m->wake_lock);
    m->wake_flag = true;
    pthread_cond_broadcast(&m->wake_cond);
    pthread_mutex_unlock(&m->wake_lock);
}

static void on_leader_event(void *ud, const struct kv_meta_event *ev)
{
    (void)ev;
    wake(ud);
}

static int on_lease_lost(void *ud, int64_t lease)
{
    struct kv_master *m = ud;
    KV_LOGW("leader lease %lld lost", (long long)lease);
    atomic_store(&m->lease_lost, true);
    wake(m);
    return KV_OK; /* the campaign loop steps down and runs again */
}

/* Parses the leader document. Returns KV_OK with its id and rpc_addr copied. */
static int parse_leader(const char *v, size_t len, char *id, size_t idlen, char *addr,
                        size_t addrlen, uint64_t *epoch)
{
    json_t *j;
    char err[128];
    if (kv_json_parse(v, len, &j, err, sizeof(err)) < 0)
        return KV_EPROTO;
    const char *i, *a;
    int rc = kv_json_get_str(j, "id", &i, err, sizeof(err));
    if (rc == KV_OK)
        rc = kv_json_get_str(j, "rpc_addr", &a, err, sizeof(err));
    if (rc == KV_OK) {
        snprintf(id, idlen, "%s", i);
        snprintf(addr, addrlen, "%s", a);
        json_t *e = json_object_get(j, "epoch");
        *epoch = json_is_integer(e) ? (uint64_t)json_integer_value(e) : 0;
    }
    json_decref(j);
    return rc;
}

static void campaign(struct kv_master *m)
{
    char *old = NULL;
    size_t olen = 0;
    uint64_t e = 0;
    int rc = kv_meta_get(m->meta, m->epoch_key, &old, &olen);
    if (rc == KV_OK) {
        if (kv_parse_u64(old, &e) < 0)
            e = 0;
    } else if (rc != KV_ENOENT) {
        KV_LOGW_RL(5000, "campaign: reading %s: %s", m->epoch_key, kv_strerror(rc));
        return;
    }
    char nv[32];
    snprintf(nv, sizeof(nv), "%llu", (unsigned long long)(e + 1));
    rc = kv_meta_cas(m->meta, m->epoch_key, old, olen, nv, strlen(nv), 0);
    kv_meta_free(old);
    if (rc < 0)
        return; /* another master bumped it first: look again */
    int64_t lease;
    rc = kv_meta_lease_grant(m->meta, m->leader_ttl_s, &lease);
    if (rc < 0) {
        KV_LOGW_RL(5000, "campaign: lease grant: %s", kv_strerror(rc));
        return;
    }
    json_t *doc =
        json_pack("{s:s, s:s, s:s, s:I}", "id", m->id, "rpc_addr", m->rpc_addr, "admin_addr",
                  m->admin_port ? m->admin_addr : "", "epoch", (json_int_t)(e + 1));
    char *js = doc ? kv_json_dump(doc) : NULL;
    json_decref(doc);
    if (!js) {
        kv_meta_lease_revoke(m->meta, lease);
        return;
    }
    rc = kv_meta_cas(m->meta, m->leader_key, NULL, 0, js, strlen(js), lease);
    kv_free(js);
    if (rc < 0) {
        kv_meta_lease_revoke(m->meta, lease);
        return;
    }
    atomic_store(&m->lease_lost, false);
    rc = kv_meta_lease_autorenew(m->meta, lease, m->leader_ttl_s, on_lease_lost, m);
    if (rc < 0) {
        KV_LOGW("campaign: lease auto-renew: %s", kv_strerror(rc));
        kv_meta_lease_revoke(m->meta, lease);
        return;
    }
    m->lease = lease;
    pthread_mutex_lock(&m->lock);
    m->epoch = e + 1;
    snprintf(m->leader_hint, sizeof(m->leader_hint), "%s", m->rpc_addr);
    pthread_mutex_unlock(&m->lock);
    atomic_store(&m->leader, true);
    KV_LOGI("master %s is now the LEADER (epoch %llu) at %s; waiting for nodes to mount", m->id,
            (unsigned long long)(e + 1), m->rpc_addr);
}

static void step_down(struct kv_master *m, const char *why)
{
    KV_LOGW("master %s steps down: %s", m->id, why);
    atomic_store(&m->leader, false);
    if (m->lease) {
        kv_meta_lease_revoke(m->meta, m->lease);
        m->lease = 0;
    }
    kv_master_reset(m);
}

static void *campaign_main(void *arg)
{
    struct kv_master *m = arg;
    char last_leader[128] = "";
    while (!atomic_load(&m->stopping)) {
        if (!m->watching &&
            kv_meta_watch(m->meta, m->leader_key, on_leader_event, m, &m->watch_id) == KV_OK)
            m->watching = true;
        char *v = NULL;
        size_t len = 0;
        int rc = kv_meta_get(m->meta, m->leader_key, &v, &len);
        char id[128] = "", addr[300] = "";
        uint64_t epoch = 0;
        bool have = rc == KV_OK &&
                    parse_leader(v, len, id, sizeof(id), addr, sizeof(addr), &epoch) == KV_OK;
        kv_meta_free(v);
        if (atomic_load(&m->leader)) {
            if (atomic_load(&m->lease_lost))
                step_down(m, "leader lease lost (metadata unreachable for longer than its ttl?)");
            else if (have && strcmp(id, m->id) != 0)
                step_down(m, "the leader key names another master");
            else if (rc == KV_ENOENT)
                step_down(m, "the leader key disappeared");
        } else if (rc == KV_ENOENT) {
            campaign(m);
        } else if (have) {
            pthread_mutex_lock(&m->lock);
            snprintf(m->leader_hint, sizeof(m->leader_hint), "%s", addr);
            pthread_mutex_unlock(&m->lock);
            if (strcmp(last_leader, id) != 0) {
                KV_LOGI("master %s is a STANDBY; following leader %s at %s (epoch %llu)", m->id, id,
                        addr, (unsigned long long)epoch);
                snprintf(last_leader, sizeof(last_leader), "%s", id);
            }
        } else if (rc != KV_OK) {
            KV_LOGW_RL(5000, "reading %s: %s", m->leader_key, kv_strerror(rc));
        }
        if (atomic_load(&m->leader))
            last_leader[0] = '\0';
        pthread_mutex_lock(&m->wake_lock);
        if (!m->wake_flag && !atomic_load(&m->stopping)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 500 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->wake_cond, &m->wake_lock, &ts);
        }
        m->wake_flag = false;
        pthread_mutex_unlock(&m->wake_lock);
    }
    return NULL;
}

int kv_master_campaign_start(struct kv_master *m)
{
    if (pthread_create(&m->campaign_thread, NULL, campaign_main, m) != 0)
        return KV_ENOMEM;
    return KV_OK;
}

void kv_master_campaign_stop(struct kv_master *m)
{
    wake(m);
    pthread_join(m->campaign_thread, NULL);
    if (m->watching) {
        kv_meta_unwatch(m->meta, m->watch_id);
        m->watching = false;
    }
    if (m->lease) {
        /* resign: deletes the leader key so a standby campaigns at once */
        kv_meta_lease_revoke(m->meta, m->lease);
        m->lease = 0;
    }
    atomic_store(&m->leader, false);
}
