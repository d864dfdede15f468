/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_ha.c - the master's leader election (through the metadata backend) and its admin HTTP
 * endpoints (/health, /metrics, /api/v1/cluster).
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
 * flags and signal wake_cond. Admin HTTP: one libevent loop thread ("admin"); handlers build
 * their documents under m->lock (through master.c helpers).
 */
#define KV_LOG_COMPONENT "master"
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"
#include "store/master_int.h"
#include "store/master_metrics.h"

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

/* ---- admin HTTP ---- */

static void send_text(struct evhttp_request *req, int code, const char *ctype, const char *body,
                      size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(b, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
}

static void on_http(struct evhttp_request *req, void *arg)
{
    struct kv_master *m = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path)
        path = "/";
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        evhttp_send_error(req, 405, "only GET");
        return;
    }
    if (strcmp(path, "/health") == 0) {
        char body[256];
        int n = snprintf(body, sizeof(body), "{\"status\":\"ok\",\"id\":\"%s\",\"leader\":%s}\n",
                         m->id, atomic_load(&m->leader) ? "true" : "false");
        send_text(req, 200, "application/json", body, (size_t)n);
    } else if (strcmp(path, "/metrics") == 0) {
        kv_master_http_metrics(req, m);
    } else if (strcmp(path, "/api/v1/status") == 0) {
        kv_master_http_status(req, m);
    } else if (strcmp(path, "/") == 0 || strncmp(path, "/ui/", 4) == 0) {
        kv_master_http_page(req, m);
    } else if (strcmp(path, "/api/v1/cluster") == 0) {
        char *js = kv_master_cluster_json(m);
        if (js)
            send_text(req, 200, "application/json", js, strlen(js));
        else
            evhttp_send_error(req, 500, "out of memory");
        kv_free(js);
    } else {
        evhttp_send_error(req, 404, "unknown path (try /health, /metrics, /api/v1/cluster)");
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(((struct kv_master *)arg)->ebase);
}

static void *admin_main(void *arg)
{
    struct kv_master *m = arg;
    event_base_dispatch(m->ebase);
    return NULL;
}

int kv_master_admin_start(struct kv_master *m, const char *addr)
{
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(addr, host, sizeof(host), &port) < 0)
        return KV_EINVAL;
    evthread_use_pthreads();
    m->ebase = event_base_new();
    if (!m->ebase)
        return KV_ENOMEM;
    m->http = evhttp_new(m->ebase);
    if (!m->http) {
        event_base_free(m->ebase);
        m->ebase = NULL;
        return KV_ENOMEM;
    }
    evhttp_set_gencb(m->http, on_http, m);
    m->stop_ev = event_new(m->ebase, -1, 0, on_stop, m);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(m->http, host, port);
    if (!bs || !m->stop_ev) {
        if (m->stop_ev)
            event_free(m->stop_ev);
        evhttp_free(m->http);
        event_base_free(m->ebase);
        m->http = NULL;
        m->ebase = NULL;
        return KV_EBUSY;
    }
    evutil_socket_t fd = evhttp_bound_socket_get_fd(bs);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        m->admin_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                       : ((struct sockaddr_in *)&ss)->sin_port);
    snprintf(m->admin_addr, sizeof(m->admin_addr), "%s:%u",
             strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host, m->admin_port);
    if (pthread_create(&m->admin_thread, NULL, admin_main, m) != 0) {
        event_free(m->stop_ev);
        evhttp_free(m->http);
        event_base_free(m->ebase);
        m->http = NULL;
        m->ebase = NULL;
        return KV_ENOMEM;
    }
    m->admin_running = true;
    return KV_OK;
}

void kv_master_admin_stop(struct kv_master *m)
{
    if (!m->admin_running)
        return;
    event_active(m->stop_ev, EV_TIMEOUT, 0); /* works even before the loop started */
    pthread_join(m->admin_thread, NULL);
    event_free(m->stop_ev);
    evhttp_free(m->http);
    event_base_free(m->ebase);
    m->admin_running = false;
}
