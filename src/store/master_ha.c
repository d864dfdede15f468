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
 * Leading on a local deadline (a partitioned leader steps down): the lease keeper thread sends
 * a keepalive every ttl/3 (every 250 ms after a failure) and, when one succeeds, sets
 * lease_deadline = the time it was SENT + ttl - margin (monotonic clock). etcd restarts the ttl
 * when it receives the keepalive, after we sent it, so the lease cannot expire in metadata
 * before sent + ttl: past the deadline another master may have won. mst_leading() is the one
 * check every leader-only path makes; the first caller to find the deadline passed steps the
 * master down (it answers NOT_LEADER from then on), the campaign thread then revokes the lease
 * (best effort), drops its index and nodes, and campaigns again as a standby. A metadata
 * outage longer than ttl - margin thus costs leadership even when no other master exists: it
 * is won back once metadata answers. A keepalive answered "expired" (lease_lost) steps down too.
 *
 * Fence of a new leader: the old leader stopped placing by its deadline, before its lease
 * ended, hence before we won; a key deleted by hand could let it go on until ttl after we won.
 * Its clients may still write into the ranges it handed out until the put timeout after that.
 * So a node that reports at MOUNT that it served an older epoch is not placed on until
 * won + ttl + put timeout (fence_until); a node that never mounted before (last_epoch 0) cannot
 * hold such ranges and is placed on at once. When every mounted node is fenced a put gets a
 * retryable NOT_LEADER naming this master (docs/design/store.md).
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
#include "kvstash/kvstash.h"
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

static int64_t ttl_ms(const struct kv_master *m)
{
    return (int64_t)m->leader_ttl_s * 1000;
}

/* How long before the earliest possible expiry in metadata the leader stops: covers the clock
 * rate difference between hosts and a standby that reads the key the moment it expires. */
static int64_t lease_margin_ms(const struct kv_master *m)
{
    return KV_MAX(ttl_ms(m) / 6, 200);
}

bool mst_leading(struct kv_master *m)
{
    if (!atomic_load(&m->leader))
        return false;
    int64_t deadline = atomic_load(&m->lease_deadline);
    int64_t now = kv_now_ms();
    if (now < deadline)
        return true;
    if (atomic_exchange(&m->leader, false)) {
        KV_LOGW("master %s steps down: no lease keepalive succeeded in time; its local deadline "
                "passed %lld ms ago, %lld ms before its lease (ttl %d s) can expire in metadata; "
                "it stops acting as leader",
                m->id, (long long)(now - deadline), (long long)lease_margin_ms(m), m->leader_ttl_s);
        wake(m);
    }
    return false;
}

/* The lease keeper: renews keep_lease every ttl/3 and moves lease_deadline on. */
static void *keeper_main(void *arg)
{
    struct kv_master *m = arg;
    kv_log_set_thread_name("master-lease");
    int64_t cur = 0, next = 0;
    while (!atomic_load(&m->stopping)) {
        int64_t lease = atomic_load(&m->keep_lease);
        int64_t now = kv_now_ms();
        if (lease != cur) {
            cur = lease;
            next = now + ttl_ms(m) / 3;
        }
        if (!lease || now < next) {
            kv_sleep_ms(lease ? (int)KV_MIN(next - now, 50) : 50);
            continue;
        }
        mst_keepalive_fn keepalive = atomic_load(&m->keepalive);
        int64_t sent = kv_now_ms();
        int rc = keepalive(m->meta, lease);
        if (atomic_load(&m->keep_lease) != lease)
            continue; /* stepped down or stopped meanwhile */
        if (rc == KV_OK) {
            atomic_store(&m->lease_deadline, sent + ttl_ms(m) - lease_margin_ms(m));
            next = sent + ttl_ms(m) / 3;
        } else if (rc == KV_EMETA_LEASE) {
            KV_LOGW("leader lease %lld expired in metadata", (long long)lease);
            atomic_store(&m->lease_lost, true);
            atomic_store(&m->keep_lease, 0);
            wake(m);
        } else {
            KV_LOGW_RL(2000,
                       "leader lease %lld keepalive failed (%s); leading until %lld ms from now",
                       (long long)lease, kv_strerror(rc),
                       (long long)(atomic_load(&m->lease_deadline) - kv_now_ms()));
            next = kv_now_ms() + 250;
        }
    }
    return NULL;
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
    int64_t sent = kv_now_ms(); /* the lease cannot expire before sent + ttl */
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
    m->lease = lease;
    int64_t now = kv_now_ms();
    atomic_store(&m->fence_until, now + ttl_ms(m) + (int64_t)m->put_timeout_ms);
    atomic_store(&m->lease_deadline, sent + ttl_ms(m) - lease_margin_ms(m));
    atomic_store(&m->keep_lease, lease);
    pthread_mutex_lock(&m->lock);
    m->epoch = e + 1;
    snprintf(m->leader_hint, sizeof(m->leader_hint), "%s", m->rpc_addr);
    pthread_mutex_unlock(&m->lock);
    atomic_store(&m->leader, true);
    KV_LOGI("master %s is now the LEADER (epoch %llu) at %s; waiting for nodes to mount", m->id,
            (unsigned long long)(e + 1), m->rpc_addr);
}

/* Stops acting as leader now (the campaign thread releases the rest: release()). */
static void demote(struct kv_master *m, const char *why)
{
    if (atomic_exchange(&m->leader, false))
        KV_LOGW("master %s steps down: %s", m->id, why);
}

/* After leadership ended (demote or mst_leading): stops the keepalives, revokes the lease (best
 * effort: metadata may be unreachable), drops every node and object. Campaign thread. */
static void release(struct kv_master *m)
{
    atomic_store(&m->keep_lease, 0);
    pthread_mutex_lock(&m->lock);
    m->leader_hint[0] = '\0'; /* clients look the leader up in metadata */
    pthread_mutex_unlock(&m->lock);
    kv_master_reset(m);
    if (m->lease) {
        int rc = kv_meta_lease_revoke(m->meta, m->lease);
        if (rc < 0 && rc != KV_EMETA_LEASE)
            KV_LOGW("revoking leader lease %lld: %s (it expires by itself)", (long long)m->lease,
                    kv_strerror(rc));
        m->lease = 0;
    }
    KV_LOGI("master %s is a standby again; it campaigns when the leader key is free", m->id);
}

static void *campaign_main(void *arg)
{
    struct kv_master *m = arg;
    kv_log_set_thread_name("master-campaign");
    char last_leader[128] = "";
    /* after stepping down, a master lets healthy standbys campaign first for one ttl: the one
     * whose keepalives failed would otherwise win again and again */
    int64_t campaign_after = 0;
    while (!atomic_load(&m->stopping)) {
        if (!mst_leading(m) && m->lease) {
            release(m); /* stepped down since the last round */
            campaign_after = kv_now_ms() + ttl_ms(m);
        }
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
        if (m->lease) {
            if (atomic_load(&m->lease_lost))
                demote(m, "leader lease lost (metadata unreachable for longer than its ttl?)");
            else if (have && strcmp(id, m->id) != 0)
                demote(m, "the leader key names another master");
            else if (rc == KV_ENOENT)
                demote(m, "the leader key disappeared");
            if (!mst_leading(m)) {
                release(m);
                campaign_after = kv_now_ms() + ttl_ms(m);
            }
        } else if (rc == KV_ENOENT) {
            if (kv_now_ms() >= campaign_after)
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
        if (m->lease)
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
    if (pthread_create(&m->keeper_thread, NULL, keeper_main, m) != 0)
        return KV_ENOMEM;
    m->keeper_started = true;
    if (pthread_create(&m->campaign_thread, NULL, campaign_main, m) != 0) {
        atomic_store(&m->stopping, true);
        pthread_join(m->keeper_thread, NULL);
        m->keeper_started = false;
        return KV_ENOMEM;
    }
    return KV_OK;
}

void kv_master_campaign_stop(struct kv_master *m)
{
    wake(m);
    pthread_join(m->campaign_thread, NULL);
    atomic_store(&m->keep_lease, 0);
    if (m->keeper_started) {
        pthread_join(m->keeper_thread, NULL); /* m->stopping is set */
        m->keeper_started = false;
    }
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
