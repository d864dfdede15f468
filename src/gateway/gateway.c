/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gateway.c - the gateway object: the UDP receive thread, the counters, and the snapshot API
 * (see gateway.h; the store, log and HTTP API live in gw_store.c, gw_log.c, gw_http.c).
 *
 * Receive path (one thread, "gw-udp"): poll(udp socket, stop eventfd) -> recvmmsg of up to
 * GW_BATCH_MAX datagrams (fewer if max_datagram is large) without blocking -> decode each outside
 * any lock (a pure function) -> take the lock once for the whole batch to count and apply the
 * states -> format JSONL lines for the valid ones and hand them to the log writer (which never
 * blocks us: a full buffer drops lines and counts them). Under load (a batch of at least
 * GW_COALESCE_MIN), the thread sleeps 0.2-5 ms (sized from the arrival rate, see udp_main) before
 * the next recvmmsg instead of polling, so batches fill up and the wake-ups per state drop. Every
 * GW_SWEEP_MS, engines silent past remove_after_ms are swept.
 *
 * Unicast vs broadcast: IP_PKTINFO gives each datagram's destination address; it is broadcast
 * when it is 255.255.255.255 or the broadcast address of a local interface (read with
 * getifaddrs at start: for each IPv4 address, addr | ~netmask; e.g. 127.255.255.255 on lo).
 *
 * Invariants: total_received == valid_states + invalid_states == unicast + broadcast (each
 * datagram is counted once, in one batch, under the lock); valid_states counts states applied
 * to the store; reordered states are invalid (reason "reordered").
 *
 * Locks: g->lock guards g->store and g->c (a leaf lock; no I/O or callback under it). The log
 * and the HTTP server have their own (gw_log.c, gw_http.c); lock order: the HTTP thread takes
 * g->lock only, the log's mu is never taken while g->lock is held.
 *
 * Lifetime: kv_gateway_start creates everything or nothing; kv_gateway_stop stops the HTTP
 * thread, then the receive thread, then flushes the log, then frees.
 */
#define KV_LOG_COMPONENT "gateway"
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/gw_int.h"

#define GW_BATCH_MAX 256 /* datagrams per recvmmsg */
/* receive buffers at most this large (virtual: a buffer's pages are touched only as far as its
 * datagrams reach), so a large max_datagram means fewer datagrams per call */
#define GW_BATCH_BYTES (16u << 20)
#define GW_SWEEP_MS 1000
#define GW_COALESCE_MIN 4 /* a batch this full means load: coalesce */
#define GW_COALESCE_MIN_US 200
#define GW_COALESCE_MAX_US 5000
#define GW_TRUESIZE_EST 2048 /* receive-buffer bytes one small datagram may cost (skb overhead) */

void kv_gateway_opts_init(struct kv_gateway_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->bind_address = "127.0.0.1";
    o->udp_port = 9999;
    o->stale_threshold_ms = 2000;
    o->remove_after_ms = 300000;
    o->history_len = 100;
    o->max_engines = 4096;
    o->max_datagram = 65507;
    o->udp_rcvbuf = 32u << 20;
    o->log_max_bytes = 100u << 20;
    o->log_keep = 5;
    o->log_buffer_bytes = 4u << 20;
}

static void seterr(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, a, b);
}

static void read_broadcast_addrs(struct kv_gateway *g)
{
    g->bcast[g->nbcast++] = htonl(INADDR_BROADCAST);
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return;
    for (struct ifaddrs *i = ifs; i && g->nbcast < KV_ARRAY_SIZE(g->bcast); i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !i->ifa_netmask)
            continue;
        uint32_t a = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr;
        uint32_t m = ((struct sockaddr_in *)i->ifa_netmask)->sin_addr.s_addr;
        if (m == 0xffffffffu)
            continue; /* a /32 has no broadcast address */
        g->bcast[g->nbcast++] = a | ~m;
    }
    freeifaddrs(ifs);
}

static bool is_broadcast(const struct kv_gateway *g, uint32_t dst)
{
    for (size_t i = 0; i < g->nbcast; i++)
        if (g->bcast[i] == dst)
            return true;
    return false;
}

static int open_udp(struct kv_gateway *g, char *err, size_t errlen)
{
    const struct kv_gateway_opts *o = &g->o;
    char ps[8];
    snprintf(ps, sizeof(ps), "%d", o->udp_port);
    const char *host = o->bind_address;
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (host[0] == '\0')
        host = "0.0.0.0"; /* ELRAR's "" means any */
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET; /* IP_PKTINFO classification is IPv4 (as ELRAR) */
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(host, ps, &hints, &res) != 0) {
        seterr(err, errlen, "bad UDP bind address '%s'%s (want an IPv4 address)", host, "");
        return KV_EINVAL;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return kv_err_from_errno(errno);
    }
    int one = 1;
    /* Broadcasts reach only sockets bound to the wildcard address: on a unicast address every
     * datagram is unicast and the per-datagram control message is not needed. */
    struct sockaddr_in *bound = (struct sockaddr_in *)res->ai_addr;
    g->pktinfo = o->broadcast || bound->sin_addr.s_addr == htonl(INADDR_ANY);
    if (g->pktinfo)
        setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
    if (o->broadcast)
        setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
    if (o->udp_rcvbuf > 0) {
        int sz = o->udp_rcvbuf > (1u << 30) ? (1 << 30) : (int)o->udp_rcvbuf;
        /* FORCE passes net.core.rmem_max when privileged; else the capped request */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) != 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    }
    int eff = 0;
    socklen_t el = sizeof(eff);
    g->rcvbuf_bytes =
        getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &eff, &el) == 0 && eff > 0 ? eff : 212992;
    /* no SO_REUSEADDR: a second gateway on the same port must fail, not share it */
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        int e = errno;
        char where[300];
        snprintf(where, sizeof(where), "%s:%s", host, ps);
        seterr(err, errlen, "cannot bind UDP %s: %s", where, strerror(e));
        freeaddrinfo(res);
        close(fd);
        return e == EADDRINUSE ? KV_EBUSY : kv_err_from_errno(e);
    }
    freeaddrinfo(res);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    g->udp_port = ntohs(sa.sin_port);
    g->udp_fd = fd;
    return KV_OK;
}

/* Appends the JSONL line of a valid datagram: {"timestamp": S, "state": RAW}. Raw CR/LF can
 * only be whitespace between tokens in valid JSON (never inside strings), so they become
 * spaces and the line stays one line. */
static bool log_line(struct kv_buf *b, const char *raw, size_t n, int64_t wall_ms)
{
    size_t start = b->len;
    if (kv_buf_appendf(b, "{\"timestamp\": %lld.%03lld, \"state\": ", (long long)(wall_ms / 1000),
                       (long long)(wall_ms % 1000)) < 0)
        goto out_undo;
    size_t at = b->len;
    if (kv_buf_append(b, raw, n) < 0)
        goto out_undo;
    for (size_t i = at; i < b->len; i++)
        if (b->data[i] == '\n' || b->data[i] == '\r')
            b->data[i] = ' ';
    if (kv_buf_append(b, "}\n", 2) < 0)
        goto out_undo;
    return true;
out_undo:
    b->len = start; /* never a partial line */
    if (b->data)
        b->data[start] = '\0';
    return false;
}

struct rx {
    struct kv_gateway_state st;
    enum kv_gateway_reason r;
    bool bcast;
};

/* Counts and applies n decoded datagrams that arrived at now/wall (rx[i].r becomes the final
 * reason). */
static void apply_batch(struct kv_gateway *g, struct rx *rx, size_t n, int64_t now, int64_t wall,
                        bool from_recv)
{
    pthread_mutex_lock(&g->lock);
    if (from_recv)
        g->c.recv_calls++;
    for (size_t i = 0; i < n; i++) {
        if (rx[i].r == KV_GW_VALID) {
            int rc = gw_store_apply(&g->store, &rx[i].st, now, wall);
            if (rc < 0)
                rx[i].r = KV_GW_BAD_JSON; /* out of memory: dropped; never seen in practice */
            else
                rx[i].r = (enum kv_gateway_reason)rc;
        }
        g->c.total_received++;
        if (rx[i].bcast)
            g->c.broadcast_received++;
        else
            g->c.unicast_received++;
        if (rx[i].r == KV_GW_VALID) {
            g->c.valid_states++;
        } else {
            g->c.invalid_states++;
            g->c.invalid_by_reason[rx[i].r]++;
        }
    }
    g->c.last_received_wall_ms = wall;
    pthread_mutex_unlock(&g->lock);
}

enum kv_gateway_reason kv_gateway_ingest(struct kv_gateway *g, const void *data, size_t len,
                                         bool broadcast)
{
    struct rx rx;
    rx.r = kv_gateway_decode(data, len, g->o.max_datagram, &rx.st);
    rx.bcast = broadcast;
    int64_t wall = kv_wall_ms();
    apply_batch(g, &rx, 1, kv_now_ms(), wall, false);
    if (rx.r == KV_GW_VALID && g->log) {
        struct kv_buf b;
        kv_buf_init(&b);
        if (log_line(&b, data, len, wall))
            gw_log_append(g->log, b.data, b.len, 1);
        kv_buf_fini(&b);
    }
    return rx.r;
}

static void sweep(struct kv_gateway *g, int64_t now)
{
    pthread_mutex_lock(&g->lock);
    size_t n = gw_store_sweep(&g->store, now);
    pthread_mutex_unlock(&g->lock);
    if (n)
        KV_LOGI("removed %zu engine(s) silent for more than %lld ms", n,
                (long long)g->o.remove_after_ms);
}

/* The receive thread's buffers, allocated by kv_gateway_start (so a shortage fails the start
 * instead of leaving a gateway that silently receives nothing). */
struct gw_rxmem {
    int batch;
    size_t bufsz;
    char *bufs;
    struct mmsghdr *msgs;
    struct iovec *iov;
    char (*ctl)[64];
    struct rx *rx;
};

static void rxmem_free(struct gw_rxmem *m)
{
    if (!m)
        return;
    kv_free(m->rx);
    kv_free(m->ctl);
    kv_free(m->iov);
    kv_free(m->msgs);
    kv_free(m->bufs);
    kv_free(m);
}

static struct gw_rxmem *rxmem_alloc(size_t max_datagram)
{
    struct gw_rxmem *m = kv_calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->bufsz = max_datagram + 1; /* one more byte: a longer datagram is oversize */
    m->batch = (int)KV_MAX(16, KV_MIN(GW_BATCH_MAX, GW_BATCH_BYTES / m->bufsz));
    size_t b = (size_t)m->batch;
    m->bufs = kv_malloc(b * m->bufsz);
    m->msgs = kv_calloc(b, sizeof(*m->msgs));
    m->iov = kv_calloc(b, sizeof(*m->iov));
    m->ctl = kv_calloc(b, sizeof(*m->ctl));
    m->rx = kv_malloc(b * sizeof(*m->rx));
    if (!m->bufs || !m->msgs || !m->iov || !m->ctl || !m->rx) {
        rxmem_free(m);
        return NULL;
    }
    return m;
}

static void *udp_main(void *arg)
{
    struct kv_gateway *g = arg;
    kv_log_set_thread_name("gw-udp");
    struct gw_rxmem *m = g->rxmem;
    const int GW_BATCH = m->batch;
    size_t bufsz = m->bufsz;
    char *bufs = m->bufs;
    struct mmsghdr *msgs = m->msgs;
    struct iovec *iov = m->iov;
    char(*ctl)[64] = m->ctl;
    struct rx *rx = m->rx;
    struct kv_buf lines;
    kv_buf_init(&lines);
    int64_t last_sweep = kv_now_ms();
    int64_t last_ns = 0; /* when the previous recvmmsg of this busy spell returned; 0 = idle */
    for (;;) {
        struct pollfd pf[2] = {{.fd = g->udp_fd, .events = POLLIN},
                               {.fd = g->stop_fd, .events = POLLIN}};
        int pr = poll(pf, 2, GW_SWEEP_MS);
        if (pr < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (pr > 0 && (pf[0].revents & POLLIN)) {
            for (;;) {
                for (int i = 0; i < GW_BATCH; i++) {
                    iov[i].iov_base = bufs + (size_t)i * bufsz;
                    iov[i].iov_len = bufsz;
                    memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
                    msgs[i].msg_hdr.msg_iov = &iov[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                    if (g->pktinfo) {
                        msgs[i].msg_hdr.msg_control = ctl[i];
                        msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i]);
                    }
                }
                if (atomic_load_explicit(&g->stopping, memory_order_relaxed))
                    break;
                int n = recvmmsg(g->udp_fd, msgs, (unsigned)GW_BATCH, MSG_DONTWAIT, NULL);
                if (n <= 0)
                    break;
                int64_t now = kv_now_ms(), wall = kv_wall_ms();
                for (int i = 0; i < n; i++) {
                    size_t len = msgs[i].msg_len;
                    if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len > g->o.max_datagram)
                        rx[i].r = KV_GW_OVERSIZE;
                    else
                        rx[i].r =
                            kv_gateway_decode(iov[i].iov_base, len, g->o.max_datagram, &rx[i].st);
                    rx[i].bcast = false;
                    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
                         cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
                            struct in_pktinfo pi;
                            memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
                            rx[i].bcast = is_broadcast(g, pi.ipi_addr.s_addr);
                        }
                    }
                }
                apply_batch(g, rx, (size_t)n, now, wall, true);
                if (g->log) {
                    uint32_t nl = 0;
                    kv_buf_reset(&lines);
                    for (int i = 0; i < n; i++) {
                        if (rx[i].r != KV_GW_VALID)
                            continue;
                        nl += log_line(&lines, iov[i].iov_base, msgs[i].msg_len, wall);
                    }
                    if (nl)
                        gw_log_append(g->log, lines.data, lines.len, nl);
                }
                if (now - last_sweep >= GW_SWEEP_MS) {
                    sweep(g, now);
                    last_sweep = now;
                }
                int64_t tn = kv_now_ns();
                if (n < GW_COALESCE_MIN) {
                    last_ns = 0;
                    break;
                }
                if (n < GW_BATCH) {
                    /* Under load, let a batch build up instead of waking per few datagrams
                     * (a wake-up costs more than a state here): sleep until about 3/4 of a
                     * batch has arrived at the current rate, within [MIN_US, MAX_US] and
                     * never longer than half the receive buffer takes to fill. */
                    double gap = last_ns ? (double)(tn - last_ns) : 1e6;
                    double rate = (double)n / (gap > 1e3 ? gap : 1e3); /* per ns */
                    double want = 0.75 * GW_BATCH / rate;
                    double cap = 0.5 * (double)g->rcvbuf_bytes / GW_TRUESIZE_EST / rate;
                    if (want > cap)
                        want = cap;
                    if (want > GW_COALESCE_MAX_US * 1e3)
                        want = GW_COALESCE_MAX_US * 1e3;
                    if (want < GW_COALESCE_MIN_US * 1e3)
                        want = GW_COALESCE_MIN_US * 1e3;
                    struct timespec ts = {0, (long)want};
                    nanosleep(&ts, NULL);
                }
                last_ns = tn;
            }
        }
        int64_t now = kv_now_ms();
        if (now - last_sweep >= GW_SWEEP_MS) {
            sweep(g, now);
            last_sweep = now;
        }
    }
    kv_buf_fini(&lines);
    return NULL;
}

static char *dup_opt(const char *s, int *rc)
{
    if (!s)
        return NULL;
    char *d = kv_strdup(s);
    if (!d)
        *rc = KV_ENOMEM;
    return d;
}

int kv_gateway_start(const struct kv_gateway_opts *o, struct kv_gateway **out)
{
    char *err = o->err;
    size_t errlen = o->errlen;
    if (err && errlen)
        err[0] = '\0';
    if (o->udp_port < 0 || o->udp_port > 65535 || o->stale_threshold_ms < 0 ||
        o->remove_after_ms < 0 || o->history_len < 1 || o->history_len > 100000 ||
        o->max_datagram < 1 || o->max_datagram > 65507 || o->log_keep < 0 || !o->bind_address ||
        o->max_engines < 1) {
        seterr(err, errlen, "bad gateway options%s%s", "", "");
        return KV_EINVAL;
    }
    struct kv_gateway *g = kv_calloc(1, sizeof(*g));
    if (!g)
        return KV_ENOMEM;
    int rc = KV_OK;
    g->o = *o;
    g->bind_copy = dup_opt(o->bind_address, &rc);
    g->http_copy = dup_opt(o->http_addr, &rc);
    g->log_copy = dup_opt(o->log_file, &rc);
    g->o.bind_address = g->bind_copy;
    g->o.http_addr = g->http_copy;
    g->o.log_file = g->log_copy;
    g->o.err = NULL;
    g->udp_fd = g->stop_fd = -1;
    snprintf(g->network_mode, sizeof(g->network_mode), "%s",
             o->broadcast ? "broadcast" : "unicast");
    if (rc < 0)
        goto out_free;
    rc = gw_store_init(&g->store, (uint32_t)o->history_len, o->max_engines, o->stale_threshold_ms,
                       o->remove_after_ms);
    if (rc < 0)
        goto out_free;
    pthread_mutex_init(&g->lock, NULL);
    read_broadcast_addrs(g);
    rc = open_udp(g, err, errlen);
    if (rc < 0)
        goto out_store;
    g->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g->stop_fd < 0) {
        rc = kv_err_from_errno(errno);
        goto out_udp;
    }
    if (g->o.log_file) {
        rc = gw_log_open(g->o.log_file, o->log_max_bytes, o->log_keep, o->log_buffer_bytes, &g->log,
                         err, errlen);
        if (rc < 0)
            goto out_udp;
    }
    if (g->o.http_addr) {
        rc = gw_http_start(g, g->o.http_addr, &g->http, &g->http_port, err, errlen);
        if (rc < 0)
            goto out_log;
    }
    g->rxmem = rxmem_alloc(g->o.max_datagram);
    if (!g->rxmem) {
        rc = KV_ENOMEM;
        goto out_http;
    }
    if (pthread_create(&g->udp_thr, NULL, udp_main, g) != 0) {
        rc = KV_EAGAIN;
        goto out_http;
    }
    g->udp_started = true;
    *out = g;
    return KV_OK;
out_http:
    rxmem_free(g->rxmem);
    gw_http_stop(g->http);
out_log:
    gw_log_close(g->log);
out_udp:
    if (g->stop_fd >= 0)
        close(g->stop_fd);
    close(g->udp_fd);
out_store:
    pthread_mutex_destroy(&g->lock);
    gw_store_fini(&g->store);
out_free:
    kv_free(g->bind_copy);
    kv_free(g->http_copy);
    kv_free(g->log_copy);
    kv_free(g);
    return rc;
}

void kv_gateway_stop(struct kv_gateway *g)
{
    if (!g)
        return;
    gw_http_stop(g->http);
    if (g->udp_started) {
        atomic_store_explicit(&g->stopping, true, memory_order_relaxed);
        uint64_t one = 1;
        ssize_t w = write(g->stop_fd, &one, sizeof(one));
        (void)w;
        pthread_join(g->udp_thr, NULL);
    }
    gw_log_close(g->log);
    rxmem_free(g->rxmem);
    close(g->stop_fd);
    close(g->udp_fd);
    pthread_mutex_destroy(&g->lock);
    gw_store_fini(&g->store);
    kv_free(g->bind_copy);
    kv_free(g->http_copy);
    kv_free(g->log_copy);
    kv_free(g);
}

uint16_t kv_gateway_udp_port(const struct kv_gateway *g)
{
    return g->udp_port;
}

uint16_t kv_gateway_http_port(const struct kv_gateway *g)
{
    return g->http_port;
}

int kv_gateway_engine_get(struct kv_gateway *g, const char *engine_id,
                          struct kv_gateway_engine *out)
{
    if (!engine_id)
        return KV_EINVAL;
    int64_t now = kv_now_ms();
    int rc = KV_ENOENT;
    pthread_mutex_lock(&g->lock);
    struct gw_engine *e = gw_store_find(&g->store, engine_id, now);
    if (e) {
        gw_store_snapshot(&g->store, e, now, out);
        rc = KV_OK;
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static int cmp_engine(const void *a, const void *b)
{
    return strcmp(((const struct kv_gateway_engine *)a)->state.engine_id,
                  ((const struct kv_gateway_engine *)b)->state.engine_id);
}

int kv_gateway_engines(struct kv_gateway *g, struct kv_gateway_engine **out, size_t *n)
{
    int64_t now = kv_now_ms();
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&g->lock);
    size_t cap = g->store.n;
    struct kv_gateway_engine *arr = cap ? kv_malloc(cap * sizeof(*arr)) : NULL;
    if (cap && !arr) {
        pthread_mutex_unlock(&g->lock);
        return KV_ENOMEM;
    }
    size_t k = 0;
    GW_STORE_FOREACH(&g->store, e, now)
    {
        gw_store_snapshot(&g->store, e, now, &arr[k++]);
    }
    pthread_mutex_unlock(&g->lock);
    if (k == 0) {
        kv_free(arr);
        return KV_OK;
    }
    qsort(arr, k, sizeof(*arr), cmp_engine);
    *out = arr;
    *n = k;
    return KV_OK;
}

int kv_gateway_history(struct kv_gateway *g, const char *engine_id,
                       struct kv_gateway_history_entry **out, size_t *n)
{
    if (!engine_id)
        return KV_EINVAL;
    int64_t now = kv_now_ms();
    pthread_mutex_lock(&g->lock);
    struct gw_engine *e = gw_store_find(&g->store, engine_id, now);
    if (!e) {
        pthread_mutex_unlock(&g->lock);
        return KV_ENOENT;
    }
    struct kv_gateway_history_entry *arr = kv_malloc((e->hist_n ? e->hist_n : 1) * sizeof(*arr));
    if (!arr) {
        pthread_mutex_unlock(&g->lock);
        return KV_ENOMEM;
    }
    for (uint32_t i = 0; i < e->hist_n; i++) {
        const struct gw_hist_ent *h = gw_store_hist_at(&g->store, e, i);
        gw_store_hist_state(&g->store, e, i, &arr[i].state);
        arr[i].recv_wall_ms = h->recv_wall_ms;
        arr[i].heartbeat = h->heartbeat;
    }
    *n = e->hist_n;
    pthread_mutex_unlock(&g->lock);
    *out = arr;
    return KV_OK;
}

void kv_gateway_free(void *p)
{
    kv_free(p);
}

void gw_stats_locked(struct kv_gateway *g, int64_t now, struct kv_gateway_stats *out)
{
    *out = g->c;
    out->active_engines = out->total_engines = 0;
    GW_STORE_FOREACH(&g->store, e, now)
    {
        out->total_engines++;
        if (now - e->last_seen_ms <= g->store.stale_ms)
            out->active_engines++;
    }
    out->engines_removed = g->store.removed;
    out->heartbeats = g->store.heartbeats;
}

int kv_gateway_stats(struct kv_gateway *g, struct kv_gateway_stats *out)
{
    pthread_mutex_lock(&g->lock);
    gw_stats_locked(g, kv_now_ms(), out);
    pthread_mutex_unlock(&g->lock);
    if (g->log) {
        struct gw_log_stats ls;
        gw_log_stats(g->log, &ls);
        out->log_lines = ls.lines;
        out->log_dropped = ls.dropped;
        out->log_errors = ls.errors;
        out->log_rotations = ls.rotations;
    }
    return KV_OK;
}

void kv_gateway_reopen_log(struct kv_gateway *g)
{
    if (g && g->log)
        gw_log_reopen(g->log);
}
