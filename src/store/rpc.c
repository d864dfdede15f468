/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc.c - the store's control-plane RPC: frame codec, a pooled blocking client and a
 * thread-per-connection server. Wire format and method table in rpc.h.
 *
 * Design:
 *  - Client: a call borrows an idle connection from the pool (or connects), writes the request
 *    frame and reads the response with one deadline. Any transport or framing error closes the
 *    connection instead of returning it to the pool, so a desynchronised stream is never reused.
 *    A failure on a pooled connection before any response byte arrived is retried once on a
 *    fresh connection (the server may have closed an idle connection); the retry may repeat the
 *    request, so callers send only requests that are safe to repeat or tolerate KV_EEXIST.
 *  - Server: one accept thread (poll on the listen socket and a wake pipe) and one thread per
 *    connection. A connection thread reads a header (no deadline: idle clients are fine), then
 *    the payload within io_timeout_ms, calls the handler, writes the response.
 *
 * Invariants:
 *  1. A pooled connection has no unread bytes (it completed a whole request/response).
 *  2. Every server connection is in s->conns from its thread's start until the thread is
 *     joined; its fd is closed only by the stop path after the join, or by the thread itself
 *     before it marks itself done.
 *
 * Locks: client c->lock guards c->idle/c->nidle (leaf). Server s->lock guards s->conns,
 * s->nconns and each conn's done flag (leaf). No lock is held during I/O or the handler.
 */
#define KV_LOG_COMPONENT "rpc"
#include "store/rpc.h"
#include "store/rpc_local.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"

#define POOL_MAX_IDLE 8
#define DEF_TIMEOUT_MS 10000
#define DEF_CONNECT_MS 3000

/* ---- codec ------------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void kv_rpc_hdr_encode(const struct kv_rpc_hdr *h, uint8_t out[KV_RPC_HDR_LEN])
{
    put_u32(out, h->magic);
    put_u16(out + 4, h->method);
    put_u16(out + 6, h->flags);
    put_u32(out + 8, h->len);
    put_u32(out + 12, (uint32_t)h->status);
    put_u64(out + 16, h->id);
}

int kv_rpc_hdr_decode(const uint8_t *p, size_t n, struct kv_rpc_hdr *h)
{
    if (!p || n < KV_RPC_HDR_LEN)
        return KV_EPROTO;
    struct kv_rpc_hdr t;
    t.magic = get_u32(p);
    t.method = get_u16(p + 4);
    t.flags = get_u16(p + 6);
    t.len = get_u32(p + 8);
    t.status = (int32_t)get_u32(p + 12);
    t.id = get_u64(p + 16);
    if (t.magic != KV_RPC_MAGIC || (t.flags & ~KV_RPC_F_RESPONSE) || t.len > KV_RPC_MAX_PAYLOAD)
        return KV_EPROTO;
    *h = t;
    return KV_OK;
}

const char *kv_rpc_method_name(uint16_t method)
{
    switch (method) {
    case KV_RPC_HELLO:
        return "HELLO";
    case KV_RPC_PUT_START:
        return "PUT_START";
    case KV_RPC_PUT_END:
        return "PUT_END";
    case KV_RPC_GET:
        return "GET";
    case KV_RPC_EXISTS:
        return "EXISTS";
    case KV_RPC_REMOVE:
        return "REMOVE";
    case KV_RPC_LIST:
        return "LIST";
    case KV_RPC_STAT:
        return "STAT";
    case KV_RPC_PUT:
        return "PUT";
    case KV_RPC_MOUNT:
        return "MOUNT";
    case KV_RPC_HEARTBEAT:
        return "HEARTBEAT";
    case KV_RPC_NODE_COMMIT:
        return "NODE_COMMIT";
    case KV_RPC_NODE_FREE:
        return "NODE_FREE";
    case KV_RPC_NODE_DEMOTE:
        return "NODE_DEMOTE";
    case KV_RPC_NODE_PROMOTE:
        return "NODE_PROMOTE";
    default:
        return "UNKNOWN";
    }
}

/* ---- protobuf helpers -------------------------------------------------------------------- */

static void *pb_alloc(void *ud, size_t n)
{
    (void)ud;
    return kv_malloc(n ? n : 1);
}

static void pb_free(void *ud, void *p)
{
    (void)ud;
    kv_free(p);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

ProtobufCAllocator *kv_rpc_pb_allocator(void)
{
    return &pb_allocator;
}

int kv_rpc_pb_pack(const ProtobufCMessage *msg, struct kv_buf *b)
{
    kv_buf_reset(b);
    if (!msg)
        return KV_OK;
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > KV_RPC_MAX_PAYLOAD)
        return KV_E2BIG;
    int rc = kv_buf_reserve(b, n + 1);
    if (rc < 0)
        return rc;
    b->len = protobuf_c_message_pack(msg, (uint8_t *)b->data);
    b->data[b->len] = '\0';
    return KV_OK;
}

int kv_rpc_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t n,
                     ProtobufCMessage **out)
{
    static const uint8_t empty;
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &pb_allocator, n, p ? p : &empty);
    if (!m)
        return KV_EPROTO;
    *out = m;
    return KV_OK;
}

void kv_rpc_pb_free(ProtobufCMessage *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, &pb_allocator);
}

/* ---- client ------------------------------------------------------------------------------ */

struct kv_rpc_client {
    char *addr;
    char host[256];
    uint16_t port;
    int connect_timeout_ms;
    pthread_mutex_t lock; /* guards idle, nidle; leaf */
    int idle[POOL_MAX_IDLE];
    int nidle;
    _Atomic uint64_t next_id;
};

int kv_rpc_client_create(const char *addr, int connect_timeout_ms, struct kv_rpc_client **out)
{
    if (!addr || !out)
        return KV_EINVAL;
    struct kv_rpc_client *c = kv_calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    if (kv_parse_hostport(addr, c->host, sizeof(c->host), &c->port) < 0 || c->port == 0) {
        kv_free(c);
        return KV_EINVAL;
    }
    c->addr = kv_strdup(addr);
    if (!c->addr) {
        kv_free(c);
        return KV_ENOMEM;
    }
    c->connect_timeout_ms = connect_timeout_ms > 0 ? connect_timeout_ms : DEF_CONNECT_MS;
    pthread_mutex_init(&c->lock, NULL);
    atomic_init(&c->next_id, 1);
    *out = c;
    return KV_OK;
}

void kv_rpc_client_destroy(struct kv_rpc_client *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nidle; i++)
        close(c->idle[i]);
    pthread_mutex_destroy(&c->lock);
    kv_free(c->addr);
    kv_free(c);
}

const char *kv_rpc_client_addr(const struct kv_rpc_client *c)
{
    return c->addr;
}

static int pool_get(struct kv_rpc_client *c)
{
    int fd = -1;
    pthread_mutex_lock(&c->lock);
    if (c->nidle > 0)
        fd = c->idle[--c->nidle];
    pthread_mutex_unlock(&c->lock);
    return fd;
}

static void pool_put(struct kv_rpc_client *c, int fd)
{
    pthread_mutex_lock(&c->lock);
    if (c->nidle < POOL_MAX_IDLE) {
        c->idle[c->nidle++] = fd;
        fd = -1;
    }
    pthread_mutex_unlock(&c->lock);
    if (fd >= 0)
        close(fd);
}

/* Writes a header and its payload; small frames in one write (one segment on the wire). */
static int write_frame(int fd, const uint8_t hb[KV_RPC_HDR_LEN], const void *p, size_t len,
                       int64_t deadline)
{
    if (len && len <= 16384) {
        uint8_t one[KV_RPC_HDR_LEN + 16384];
        memcpy(one, hb, KV_RPC_HDR_LEN);
        memcpy(one + KV_RPC_HDR_LEN, p, len);
        return kv_net_write_full(fd, one, KV_RPC_HDR_LEN + len, deadline);
    }
    int rc = kv_net_write_full(fd, hb, KV_RPC_HDR_LEN, deadline);
    if (rc == KV_OK && len)
        rc = kv_net_write_full(fd, p, len, deadline);
    return rc;
}

/* One exchange on fd. *got_any tells whether any response byte arrived. */
static int exchange(int fd, uint16_t method, uint64_t id, const void *req, size_t len,
                    int64_t deadline, int *status, struct kv_buf *resp, bool *got_any)
{
    uint8_t hb[KV_RPC_HDR_LEN];
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, 0, (uint32_t)len, 0, id};
    kv_rpc_hdr_encode(&h, hb);
    *got_any = false;
    int rc = write_frame(fd, hb, req, len, deadline);
    if (rc < 0)
        return rc;
    rc = kv_net_read_full(fd, hb, 1, deadline);
    if (rc < 0)
        return rc;
    *got_any = true;
    rc = kv_net_read_full(fd, hb + 1, sizeof(hb) - 1, deadline);
    if (rc < 0)
        return rc == KV_ECONNRESET ? KV_ECONNRESET : rc;
    struct kv_rpc_hdr r;
    rc = kv_rpc_hdr_decode(hb, sizeof(hb), &r);
    if (rc < 0)
        return rc;
    if (!(r.flags & KV_RPC_F_RESPONSE))
        return KV_EPROTO;
    if (r.id != id && r.id != 0)
        return KV_EPROTO;
    struct kv_buf tmp;
    kv_buf_init(&tmp);
    struct kv_buf *dst = resp ? resp : &tmp;
    kv_buf_reset(dst);
    rc = kv_buf_reserve(dst, (size_t)r.len + 1);
    if (rc < 0)
        return rc;
    if (r.len) {
        rc = kv_net_read_full(fd, dst->data, r.len, deadline);
        if (rc < 0) {
            kv_buf_reset(dst);
            kv_buf_fini(&tmp);
            return rc;
        }
    }
    dst->len = r.len;
    dst->data[r.len] = '\0';
    kv_buf_fini(&tmp);
    if (r.id == 0) /* the server rejected our framing and closes: treat as protocol error */
        return r.status < 0 ? r.status : KV_EPROTO;
    *status = r.status;
    return KV_OK;
}

int kv_rpc_call(struct kv_rpc_client *c, uint16_t method, const void *req, size_t len,
                int timeout_ms, int *status, struct kv_buf *resp)
{
    if (!c || (!req && len) || !status)
        return KV_EINVAL;
    if (len > KV_RPC_MAX_PAYLOAD)
        return KV_E2BIG;
    if (kv_rpc_local_call(c->addr, method, req, len, status, resp))
        return KV_OK; /* a server of this process that opted in (rpc_local.h) */
    int64_t deadline = kv_now_ms() + (timeout_ms > 0 ? timeout_ms : DEF_TIMEOUT_MS);
    uint64_t id = atomic_fetch_add_explicit(&c->next_id, 1, memory_order_relaxed);
    if (id == 0)
        id = atomic_fetch_add_explicit(&c->next_id, 1, memory_order_relaxed);
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = pool_get(c);
        bool pooled = fd >= 0;
        if (!pooled) {
            int left = (int)(deadline - kv_now_ms());
            if (left <= 0)
                return KV_ETIMEDOUT;
            int rc = kv_net_connect_tcp(c->host, c->port, KV_MIN(left, c->connect_timeout_ms), &fd);
            if (rc < 0)
                return rc;
        }
        bool got_any;
        int rc = exchange(fd, method, id, req, len, deadline, status, resp, &got_any);
        if (rc == KV_OK) {
            pool_put(c, fd);
            return KV_OK;
        }
        close(fd);
        if (!(pooled && !got_any && rc != KV_ETIMEDOUT))
            return rc;
        /* a stale pooled connection: retry once on a fresh one */
    }
    return KV_ECONNRESET;
}

int kv_rpc_call_pb(struct kv_rpc_client *c, uint16_t method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int timeout_ms, char *leader_hint, size_t hint_len)
{
    struct kv_buf b;
    kv_buf_init(&b);
    int rc = kv_rpc_pb_pack(req, &b);
    if (rc < 0)
        goto out;
    int status = 0;
    rc = kv_rpc_call(c, method, b.data, b.len, timeout_ms, &status, &b);
    if (rc < 0)
        goto out;
    if (status == KV_EAGAIN && leader_hint && hint_len) {
        leader_hint[0] = '\0';
        ProtobufCMessage *nl = NULL;
        if (b.len && kv_rpc_pb_unpack(&kvstash__not_leader__descriptor, (uint8_t *)b.data, b.len,
                                      &nl) == KV_OK) {
            const char *a = ((Kvstash__NotLeader *)nl)->leader_addr;
            if (a && strlen(a) < hint_len)
                memcpy(leader_hint, a, strlen(a) + 1);
            kv_rpc_pb_free(nl);
        }
    }
    if (status != KV_OK) {
        rc = status > 0 ? KV_EPROTO : status;
        goto out;
    }
    if (resp_desc) {
        ProtobufCMessage *m = NULL;
        rc = kv_rpc_pb_unpack(resp_desc, (uint8_t *)b.data, b.len, &m);
        if (rc < 0)
            goto out;
        if (resp)
            *resp = m;
        else
            kv_rpc_pb_free(m);
    }
    rc = KV_OK;
out:
    kv_buf_fini(&b);
    return rc;
}

/* ---- server ------------------------------------------------------------------------------ */

struct srv_conn {
    struct kv_rpc_server *s;
    int fd;
    pthread_t thread;
    bool done; /* thread finished (guarded by s->lock) */
    struct srv_conn *next;
};

struct kv_rpc_server {
    kv_rpc_handler_fn handler;
    void *ud;
    int max_conns;
    int io_timeout_ms;
    int lfd;
    int wake[2]; /* accept-thread wake pipe */
    uint16_t port;
    pthread_t accept_thread;
    atomic_bool stopping;
    pthread_mutex_t lock; /* guards conns, nconns, srv_conn.done; leaf */
    struct srv_conn *conns;
    int nconns;
};

static int send_frame(int fd, uint16_t method, uint64_t id, int status, const struct kv_buf *p,
                      int64_t deadline)
{
    uint8_t hb[KV_RPC_HDR_LEN];
    size_t len = p ? p->len : 0;
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, KV_RPC_F_RESPONSE, (uint32_t)len, status, id};
    kv_rpc_hdr_encode(&h, hb);
    return write_frame(fd, hb, p ? p->data : NULL, len, deadline);
}

static void *conn_main(void *arg)
{
    struct srv_conn *sc = arg;
    struct kv_rpc_server *s = sc->s;
    struct kv_buf req, resp;
    kv_buf_init(&req);
    kv_buf_init(&resp);
    while (!atomic_load(&s->stopping)) {
        uint8_t hb[KV_RPC_HDR_LEN];
        int rc = kv_net_read_full(sc->fd, hb, 1, -1);
        if (rc < 0)
            break;
        int64_t deadline = kv_now_ms() + s->io_timeout_ms;
        rc = kv_net_read_full(sc->fd, hb + 1, sizeof(hb) - 1, deadline);
        if (rc < 0) {
            KV_LOGD("connection closed mid-header: %s", kv_strerror(rc));
            break;
        }
        struct kv_rpc_hdr h;
        rc = kv_rpc_hdr_decode(hb, sizeof(hb), &h);
        if (rc < 0 || (h.flags & KV_RPC_F_RESPONSE)) {
            KV_LOGW_RL(5000, "malformed RPC frame header (bad magic, flags or length): closing "
                             "the connection");
            send_frame(sc->fd, 0, 0, KV_EPROTO, NULL, deadline);
            break;
        }
        kv_buf_reset(&req);
        if (kv_buf_reserve(&req, (size_t)h.len + 1) < 0) {
            send_frame(sc->fd, h.method, h.id, KV_ENOMEM, NULL, deadline);
            break;
        }
        if (h.len) {
            rc = kv_net_read_full(sc->fd, req.data, h.len, deadline);
            if (rc < 0) {
                KV_LOGD("connection closed mid-payload: %s", kv_strerror(rc));
                break;
            }
        }
        req.len = h.len;
        req.data[h.len] = '\0';
        kv_buf_reset(&resp);
        int status = s->handler(s->ud, h.method, (const uint8_t *)req.data, req.len, &resp);
        if (status > 0)
            status = KV_OK;
        rc = send_frame(sc->fd, h.method, h.id, status,
                        (status == KV_OK || status == KV_EAGAIN) ? &resp : NULL,
                        kv_now_ms() + s->io_timeout_ms);
        if (rc < 0)
            break;
        if (req.cap > (1u << 20)) { /* do not keep a huge buffer for an idle connection */
            kv_buf_fini(&req);
            kv_buf_init(&req);
        }
        if (resp.cap > (1u << 20)) {
            kv_buf_fini(&resp);
            kv_buf_init(&resp);
        }
    }
    kv_buf_fini(&req);
    kv_buf_fini(&resp);
    shutdown(sc->fd, SHUT_RDWR);
    pthread_mutex_lock(&s->lock);
    sc->done = true;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Joins and frees finished connections. Called by the accept thread. */
static void reap(struct kv_rpc_server *s, bool all)
{
    for (;;) {
        struct srv_conn *victim = NULL;
        pthread_mutex_lock(&s->lock);
        for (struct srv_conn **pp = &s->conns; *pp; pp = &(*pp)->next) {
            if ((*pp)->done || all) {
                victim = *pp;
                *pp = victim->next;
                s->nconns--;
                break;
            }
        }
        pthread_mutex_unlock(&s->lock);
        if (!victim)
            return;
        pthread_join(victim->thread, NULL);
        close(victim->fd);
        kv_free(victim);
    }
}

static void *accept_main(void *arg)
{
    struct kv_rpc_server *s = arg;
    while (!atomic_load(&s->stopping)) {
        struct pollfd pf[2] = {{s->lfd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
        int n = poll(pf, 2, 1000);
        reap(s, false);
        if (n <= 0 || atomic_load(&s->stopping))
            continue;
        if (!(pf[0].revents & POLLIN))
            continue;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                KV_LOGW_RL(5000, "accept: %s", strerror(errno));
                kv_sleep_ms(10);
            }
            continue;
        }
        kv_net_set_nonblock(fd, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pthread_mutex_lock(&s->lock);
        bool full = s->nconns >= s->max_conns;
        pthread_mutex_unlock(&s->lock);
        struct srv_conn *sc = full ? NULL : kv_calloc(1, sizeof(*sc));
        if (!sc) {
            KV_LOGW_RL(5000, "RPC connection refused: %s",
                       full ? "too many connections" : "out of memory");
            close(fd);
            continue;
        }
        sc->s = s;
        sc->fd = fd;
        pthread_mutex_lock(&s->lock);
        if (pthread_create(&sc->thread, NULL, conn_main, sc) != 0) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            kv_free(sc);
            continue;
        }
        sc->next = s->conns;
        s->conns = sc;
        s->nconns++;
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

int kv_rpc_server_start(const struct kv_rpc_server_opts *opts, struct kv_rpc_server **out)
{
    if (!opts || !opts->addr || !opts->handler || !out)
        return KV_EINVAL;
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(opts->addr, host, sizeof(host), &port) < 0)
        return KV_EINVAL;
    struct kv_rpc_server *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->handler = opts->handler;
    s->ud = opts->ud;
    s->max_conns = opts->max_conns > 0 ? opts->max_conns : 512;
    s->io_timeout_ms = opts->io_timeout_ms > 0 ? opts->io_timeout_ms : DEF_TIMEOUT_MS;
    int rc = kv_net_listen_tcp(host, port, 128, &s->lfd, &s->port);
    if (rc < 0)
        goto out_free;
    kv_net_set_nonblock(s->lfd, 1);
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        rc = kv_err_from_errno(errno);
        goto out_close;
    }
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->stopping, false);
    if (pthread_create(&s->accept_thread, NULL, accept_main, s) != 0) {
        rc = KV_ENOMEM;
        pthread_mutex_destroy(&s->lock);
        close(s->wake[0]);
        close(s->wake[1]);
        goto out_close;
    }
    *out = s;
    return KV_OK;
out_close:
    close(s->lfd);
out_free:
    kv_free(s);
    return rc;
}

uint16_t kv_rpc_server_port(const struct kv_rpc_server *s)
{
    return s->port;
}

void kv_rpc_server_stop(struct kv_rpc_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    ssize_t w = write(s->wake[1], "x", 1);
    (void)w;
    pthread_join(s->accept_thread, NULL);
    pthread_mutex_lock(&s->lock);
    for (struct srv_conn *sc = s->conns; sc; sc = sc->next)
        shutdown(sc->fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    reap(s, true);
    close(s->lfd);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->lock);
    kv_free(s);
}
