/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_tcp.c - the TCP transport: a server that exposes this engine's segments and a client
 * (initiator) with a connection pool per peer. Wire format: xfer_frame.c and
 * docs/design/xfer.md.
 *
 * Thread model
 *   server: one accept thread plus one detached thread per accepted connection doing blocking
 *     I/O (requests of one connection are served in order; connections run in parallel).
 *     s->lock (leaf) guards the connection list and its count; stop shuts every socket down
 *     and waits for the count to reach zero.
 *   client: `workers` sender threads take pieces from one queue (c->q_lock, leaf), pick a
 *     connection of the piece's peer (round robin, preferring one nobody is writing to),
 *     append the piece to that connection's in-flight FIFO and write its header (and, for a
 *     WRITE, its payload straight from the caller's buffer). Each connection has one receiver
 *     thread that reads responses in FIFO order (the server answers in order; the request id
 *     is checked) and receives READ payloads straight into the destination buffer. Nobody
 *     polls: idle receivers sleep on conn->cond, idle workers on c->q_cond.
 *
 * Invariants
 *  1. A piece is completed exactly once: by a worker before it is appended to a FIFO (dead
 *     peer, reconnect failure, shutdown); after that by whichever of its sender (send returned)
 *     and its receiver (response read, or the connection failed, which fails the whole FIFO)
 *     lets go last, with the receiver's status. So a completed request's buffer is no longer
 *     read by any send().
 *  2. conn->fd is closed only by a thread holding conn->send_lock after joining the receiver,
 *     so the receiver never reads a closed or reused descriptor.
 *  3. A connection that failed (EOF, error, protocol violation, deadline) is marked dead and
 *     shut down; the next worker using it reconnects (HELLO again) or fails its piece with
 *     KV_EXFER_PEER. Deadlines: the head piece of a FIFO must be answered within timeout_ms of
 *     being sent; sends give up after timeout_ms without progress (SO_SNDTIMEO slices).
 *  4. Server: bounds and segment id are checked before any payload byte is read or written;
 *     a rejected WRITE's payload is drained into a scratch buffer (frames are <= 64 MiB).
 *
 * Peers are kept (idle) until kv_xfer_tcp_gc() or client destroy; both run on API threads,
 * never on a receiver, since tearing a peer down joins its receivers.
 */
#define KV_LOG_COMPONENT "xfer"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"
#include "xfer/xfer_int.h"

#define SOCK_BUF (4 << 20)
#define IO_SLICE_MS 250
#define MAX_SERVER_CONNS 4096 /* one thread each */

/* ------------------------------------------------------------------ socket helpers */

static void tune_socket(int fd)
{
    int one = 1, buf = SOCK_BUF;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    struct timeval tv = {.tv_sec = 0, .tv_usec = IO_SLICE_MS * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Receives exactly n bytes. With idle, waiting for the first byte has no deadline (until stop
 * is set); once bytes flow, timeout_ms without progress fails with KV_ETIMEDOUT. deadline_ms
 * (>= 0) is an absolute limit for the whole call. */
static int recv_full(int fd, void *p, size_t n, bool idle, int timeout_ms, int64_t deadline_ms,
                     const _Atomic bool *stop)
{
    uint8_t *c = p;
    size_t got = 0;
    int64_t last = kv_now_ms();
    while (got < n) {
        ssize_t r = recv(fd, c + got, n - got, MSG_WAITALL);
        if (r > 0) {
            got += (size_t)r;
            last = kv_now_ms();
            continue;
        }
        if (r == 0)
            return KV_ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return errno == ECONNRESET ? KV_ECONNRESET : kv_err_from_errno(errno);
        if (stop && atomic_load_explicit(stop, memory_order_acquire))
            return KV_ESHUTDOWN;
        int64_t now = kv_now_ms();
        if (deadline_ms >= 0 && now >= deadline_ms)
            return KV_ETIMEDOUT;
        if (idle && got == 0) {
            last = now;
            continue;
        }
        if (now - last >= timeout_ms)
            return KV_ETIMEDOUT;
    }
    return KV_OK;
}

/* Sends every byte of iov[0..cnt) (modified). Fails after timeout_ms without progress. */
static int send_iov(int fd, struct iovec *iov, int cnt, int timeout_ms, const _Atomic bool *stop)
{
    int64_t last = kv_now_ms();
    while (cnt > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return errno == EPIPE || errno == ECONNRESET ? KV_ECONNRESET
                                                             : kv_err_from_errno(errno);
            if (stop && atomic_load_explicit(stop, memory_order_acquire))
                return KV_ESHUTDOWN;
            if (kv_now_ms() - last >= timeout_ms)
                return KV_ETIMEDOUT;
            continue;
        }
        last = kv_now_ms();
        size_t left = (size_t)w;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return KV_OK;
}

static int send_frame(int fd, const struct kv_xfer_frame *f, const void *payload, size_t len,
                      int timeout_ms, const _Atomic bool *stop)
{
    uint8_t hdr[KV_XFER_HDR_LEN];
    kv_xfer_frame_encode(f, hdr);
    struct iovec iov[2] = {{.iov_base = hdr, .iov_len = sizeof(hdr)},
                           {.iov_base = (void *)payload, .iov_len = len}};
    return send_iov(fd, iov, len ? 2 : 1, timeout_ms, stop);
}

/* ------------------------------------------------------------------ server */

struct srv_conn {
    struct srv_conn *next, *prev;
    struct xfer_tcp_server *s;
    int fd;
    char peer[64];
    void *qp; /* RDMA queue pair set up over this connection (dropped with it) */
};

struct xfer_tcp_server {
    struct kv_xfer *x;
    int lfd;
    pthread_t accept_thr;
    _Atomic bool stop;
    pthread_mutex_t lock; /* guards conns, nconns (leaf) */
    pthread_cond_t cond;  /* nconns dropped */
    struct srv_conn *conns;
    int nconns;
};

static int srv_hello(struct srv_conn *sc)
{
    struct xfer_tcp_server *s = sc->s;
    int to = kv_xfer_timeout_ms(s->x);
    uint8_t hdr[KV_XFER_HDR_LEN], tok[KV_XFER_MAX_TOKEN];
    struct kv_xfer_frame f;
    int rc = recv_full(sc->fd, hdr, sizeof(hdr), false, to, kv_now_ms() + to, &s->stop);
    if (rc < 0)
        return rc;
    if (kv_xfer_frame_decode(hdr, sizeof(hdr), &f) < 0 || f.op != KV_XFER_OP_HELLO ||
        (f.flags & KV_XFER_F_RESP)) {
        KV_LOGW_RL(5000, "xfer connection from %s: first frame is not a valid HELLO", sc->peer);
        return KV_EPROTO;
    }
    rc = recv_full(sc->fd, tok, (size_t)f.length, false, to, kv_now_ms() + to, &s->stop);
    if (rc < 0)
        return rc;
    const char *want = kv_xfer_token(s->x);
    size_t wl = want ? strlen(want) : 0;
    int status = KV_OK;
    if (want && (wl != f.length || sodium_memcmp(tok, want, wl) != 0)) {
        KV_LOGW_RL(5000, "rejected xfer connection from %s: %s token", sc->peer,
                   f.length ? "wrong" : "missing");
        status = KV_EPERM;
    }
    struct kv_xfer_frame r = {
        .op = KV_XFER_OP_HELLO, .flags = KV_XFER_F_RESP, .status = status, .req_id = f.req_id};
    rc = send_frame(sc->fd, &r, NULL, 0, to, &s->stop);
    return rc < 0 ? rc : status;
}

/* Reads and discards n bytes (a rejected WRITE's payload). */
static int srv_drain(struct srv_conn *sc, uint64_t n, int to)
{
    uint8_t scratch[16384];
    while (n > 0) {
        size_t k = (size_t)KV_MIN(n, sizeof(scratch));
        int rc = recv_full(sc->fd, scratch, k, false, to, -1, &sc->s->stop);
        if (rc < 0)
            return rc;
        n -= k;
    }
    return KV_OK;
}

/* RDMA_CONNECT: hand the initiator's endpoint to the RDMA transport, answer with ours. */
static int srv_rdma_connect(struct srv_conn *sc, const struct kv_xfer_frame *f)
{
    struct xfer_tcp_server *s = sc->s;
    int to = kv_xfer_timeout_ms(s->x);
    uint8_t in[KV_XFER_RDMA_EP_LEN], out[KV_XFER_RDMA_EP_LEN];
    int rc = recv_full(sc->fd, in, sizeof(in), false, to, -1, &s->stop);
    if (rc < 0)
        return rc;
    int status = KV_EBUSY; /* one QP per connection */
    if (!sc->qp) {
        struct xfer_rdma *r = kv_xfer_rdma_ctx(s->x);
        status = r ? kv_xfer_rdma_accept(r, in, out, &sc->qp) : KV_EXFER_NOTRANSPORT;
    }
    struct kv_xfer_frame resp = {.op = f->op,
                                 .flags = KV_XFER_F_RESP,
                                 .status = status,
                                 .req_id = f->req_id,
                                 .length = status == KV_OK ? KV_XFER_RDMA_EP_LEN : 0};
    return send_frame(sc->fd, &resp, out, (size_t)resp.length, to, &s->stop);
}

static int srv_serve_one(struct srv_conn *sc, const struct kv_xfer_frame *f)
{
    struct xfer_tcp_server *s = sc->s;
    int to = kv_xfer_timeout_ms(s->x);
    void *addr = NULL;
    size_t size = 0;
    struct xfer_seg *seg = kv_xfer_seg_get(s->x, f->seg_id, &addr, &size);
    int status = KV_OK;
    if (!seg)
        status = KV_EXFER_NOSEG;
    else if (!kv_xfer_in_bounds(f->offset, f->length, size))
        status = KV_EXFER_BOUNDS;
    struct kv_xfer_frame r = {.op = f->op,
                              .flags = KV_XFER_F_RESP,
                              .status = status,
                              .req_id = f->req_id,
                              .seg_id = f->seg_id,
                              .offset = f->offset};
    int rc;
    if (f->op == KV_XFER_OP_READ) {
        r.length = status == KV_OK ? f->length : 0;
        rc = send_frame(sc->fd, &r, status == KV_OK ? (uint8_t *)addr + f->offset : NULL,
                        (size_t)r.length, to, &s->stop);
    } else {
        if (status == KV_OK)
            rc = recv_full(sc->fd, (uint8_t *)addr + f->offset, (size_t)f->length, false, to, -1,
                           &s->stop);
        else
            rc = srv_drain(sc, f->length, to);
        if (rc == KV_OK)
            rc = send_frame(sc->fd, &r, NULL, 0, to, &s->stop);
    }
    if (status != KV_OK)
        KV_LOGD("xfer request from %s rejected: %s", sc->peer, kv_strerror(status));
    kv_xfer_seg_put(s->x, seg);
    return rc;
}

static void *srv_conn_main(void *arg)
{
    struct srv_conn *sc = arg;
    struct xfer_tcp_server *s = sc->s;
    kv_log_set_thread_name("xfer-srv");
    int rc = srv_hello(sc);
    int to = kv_xfer_timeout_ms(s->x);
    while (rc == KV_OK) {
        uint8_t hdr[KV_XFER_HDR_LEN];
        struct kv_xfer_frame f;
        rc = recv_full(sc->fd, hdr, sizeof(hdr), true, to, -1, &s->stop);
        if (rc < 0)
            break;
        if (kv_xfer_frame_decode(hdr, sizeof(hdr), &f) < 0 || (f.flags & KV_XFER_F_RESP) ||
            f.op == KV_XFER_OP_HELLO) {
            KV_LOGW_RL(5000, "xfer connection from %s: malformed frame; closing", sc->peer);
            rc = KV_EPROTO;
            break;
        }
        rc = f.op == KV_XFER_OP_RDMA_CONNECT ? srv_rdma_connect(sc, &f) : srv_serve_one(sc, &f);
    }
    if (sc->qp)
        kv_xfer_rdma_drop(sc->qp);
    if (rc != KV_ECONNRESET && rc != KV_ESHUTDOWN && rc != KV_EPERM && rc != KV_EPROTO)
        KV_LOGD("xfer connection from %s closed: %s", sc->peer, kv_strerror(rc));
    pthread_mutex_lock(&s->lock);
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        s->conns = sc->next;
    if (sc->next)
        sc->next->prev = sc->prev;
    close(sc->fd);
    kv_free(sc);
    s->nconns--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void *srv_accept_main(void *arg)
{
    struct xfer_tcp_server *s = arg;
    kv_log_set_thread_name("xfer-accept");
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (atomic_load_explicit(&s->stop, memory_order_acquire))
                break;
            if (errno != EINTR && errno != ECONNABORTED) {
                KV_LOGW_RL(5000, "xfer accept: %s", strerror(errno));
                kv_sleep_ms(50);
            }
            continue;
        }
        pthread_mutex_lock(&s->lock);
        bool full = s->nconns >= MAX_SERVER_CONNS;
        pthread_mutex_unlock(&s->lock);
        if (full) {
            KV_LOGW_RL(5000, "xfer: %d connections already; refusing another", MAX_SERVER_CONNS);
            close(fd);
            continue;
        }
        tune_socket(fd);
        struct srv_conn *sc = kv_calloc(1, sizeof(*sc));
        if (!sc) {
            close(fd);
            continue;
        }
        sc->s = s;
        sc->fd = fd;
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof(ip));
        snprintf(sc->peer, sizeof(sc->peer), "%s", ip);
        pthread_mutex_lock(&s->lock);
        sc->next = s->conns;
        if (s->conns)
            s->conns->prev = sc;
        s->conns = sc;
        s->nconns++;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, srv_conn_main, sc) != 0) {
            s->conns = sc->next;
            if (sc->next)
                sc->next->prev = NULL;
            s->nconns--;
            close(fd);
            kv_free(sc);
            KV_LOGW_RL(5000, "xfer: cannot start a connection thread");
        }
        pthread_attr_destroy(&attr);
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

int kv_xfer_tcp_server_start(struct kv_xfer *x, const char *host, uint16_t port,
                             struct xfer_tcp_server **out, uint16_t *bound_port)
{
    struct xfer_tcp_server *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->x = x;
    int rc = kv_net_listen_tcp(host, port, 128, &s->lfd, bound_port);
    if (rc < 0) {
        KV_LOGE("xfer: cannot listen on %s:%u: %s", host, port, kv_strerror(rc));
        kv_free(s);
        return rc;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->accept_thr, NULL, srv_accept_main, s) != 0) {
        close(s->lfd);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        kv_free(s);
        return KV_ENOMEM;
    }
    *out = s;
    return KV_OK;
}

void kv_xfer_tcp_server_stop(struct xfer_tcp_server *s)
{
    if (!s)
        return;
    atomic_store_explicit(&s->stop, true, memory_order_release);
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(s->accept_thr, NULL);
    close(s->lfd);
    pthread_mutex_lock(&s->lock);
    for (struct srv_conn *sc = s->conns; sc; sc = sc->next)
        shutdown(sc->fd, SHUT_RDWR);
    while (s->nconns > 0)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    kv_free(s);
}

/* ------------------------------------------------------------------ client */

struct xfer_conn {
    struct xfer_peer *peer;
    pthread_mutex_t send_lock; /* guards writes to fd, fd itself, reconnects, rx join */
    pthread_mutex_t lock;      /* guards head/tail, dead, next_id; cond: work or death */
    pthread_cond_t cond;
    int fd; /* -1 when closed */
    bool dead;
    bool rx_live; /* receiver thread started and not yet joined (send_lock) */
    pthread_t rx;
    struct xfer_piece *head, *tail;
    uint64_t next_id;
};

struct xfer_peer {
    struct xfer_peer *next;
    struct xfer_tcp_client *c;
    char host[256];
    uint16_t port;
    int users; /* targets using it (c->peers_lock) */
    _Atomic unsigned rr;
    int nconns;
    struct xfer_conn *conns;
};

struct xfer_tcp_client {
    struct kv_xfer *x;
    int conns_per_peer;
    int nworkers;
    pthread_t *workers;
    _Atomic bool stop;
    pthread_mutex_t q_lock; /* guards qh/qt (leaf) */
    pthread_cond_t q_cond;
    struct xfer_piece *qh, *qt;
    pthread_mutex_t peers_lock; /* guards peers and peer->users; after x->lock */
    struct xfer_peer *peers;
};

static void *rx_main(void *arg);

/* Drops one of a FIFO piece's two refs (sender, receiver); the last completes it. */
static void piece_put(struct xfer_piece *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        kv_xfer_piece_done(p, p->rc);
}

int kv_xfer_tcp_dial(struct kv_xfer *x, const char *host, uint16_t port, int *fd_out)
{
    int to = kv_xfer_timeout_ms(x);
    int fd;
    int rc = kv_net_connect_tcp(host, port, to, &fd);
    if (rc < 0) {
        KV_LOGW_RL(2000, "xfer: cannot connect to %s:%u: %s", host, port, kv_strerror(rc));
        return KV_EXFER_PEER;
    }
    tune_socket(fd);
    const char *tok = kv_xfer_token(x);
    size_t tl = tok ? strlen(tok) : 0;
    struct kv_xfer_frame f = {.op = KV_XFER_OP_HELLO, .length = tl};
    uint8_t hdr[KV_XFER_HDR_LEN];
    rc = send_frame(fd, &f, tok, tl, to, NULL);
    if (rc == KV_OK)
        rc = recv_full(fd, hdr, sizeof(hdr), false, to, kv_now_ms() + to, NULL);
    if (rc == KV_OK && (kv_xfer_frame_decode(hdr, sizeof(hdr), &f) < 0 ||
                        f.op != KV_XFER_OP_HELLO || !(f.flags & KV_XFER_F_RESP)))
        rc = KV_EPROTO;
    if (rc == KV_OK && f.status != KV_OK) {
        rc = f.status;
        KV_LOGW_RL(2000, "xfer: %s:%u refused the connection: %s", host, port, kv_strerror(rc));
    }
    if (rc < 0) {
        close(fd);
        return rc == KV_EPERM ? rc : KV_EXFER_PEER;
    }
    *fd_out = fd;
    return KV_OK;
}

int kv_xfer_tcp_call(struct kv_xfer *x, int fd, const struct kv_xfer_frame *req,
                     const void *payload, struct kv_xfer_frame *resp, void *rbuf, size_t cap)
{
    int to = kv_xfer_timeout_ms(x);
    uint8_t hdr[KV_XFER_HDR_LEN];
    int rc = send_frame(fd, req, payload, (size_t)req->length, to, NULL);
    if (rc == KV_OK)
        rc = recv_full(fd, hdr, sizeof(hdr), false, to, kv_now_ms() + to, NULL);
    if (rc < 0)
        return rc;
    if (kv_xfer_frame_decode(hdr, sizeof(hdr), resp) < 0 || !(resp->flags & KV_XFER_F_RESP) ||
        resp->op != req->op || resp->req_id != req->req_id || resp->length > cap)
        return KV_EPROTO;
    if (resp->length)
        rc = recv_full(fd, rbuf, (size_t)resp->length, false, to, kv_now_ms() + to, NULL);
    return rc;
}

/* Connects conn (send_lock held, no receiver running): TCP connect, HELLO, start receiver. */
static int conn_open(struct xfer_conn *cn)
{
    struct xfer_peer *p = cn->peer;
    struct xfer_tcp_client *c = p->c;
    if (atomic_load(&c->stop))
        return KV_ESHUTDOWN;
    int fd;
    int rc = kv_xfer_tcp_dial(c->x, p->host, p->port, &fd);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&cn->lock);
    cn->fd = fd;
    cn->dead = false;
    pthread_mutex_unlock(&cn->lock);
    if (pthread_create(&cn->rx, NULL, rx_main, cn) != 0) {
        pthread_mutex_lock(&cn->lock);
        cn->dead = true;
        cn->fd = -1;
        pthread_mutex_unlock(&cn->lock);
        close(fd);
        return KV_ENOMEM;
    }
    cn->rx_live = true;
    return KV_OK;
}

/* Marks cn dead and wakes its receiver (which fails the FIFO). */
static void conn_kill(struct xfer_conn *cn)
{
    pthread_mutex_lock(&cn->lock);
    cn->dead = true;
    if (cn->fd >= 0)
        shutdown(cn->fd, SHUT_RDWR);
    pthread_cond_broadcast(&cn->cond);
    pthread_mutex_unlock(&cn->lock);
}

/* Joins the receiver and closes the socket (send_lock held). */
static void conn_reap(struct xfer_conn *cn)
{
    if (cn->rx_live) {
        conn_kill(cn);
        pthread_join(cn->rx, NULL);
        cn->rx_live = false;
    }
    if (cn->fd >= 0) {
        close(cn->fd);
        cn->fd = -1;
    }
}

/* Reconnects cn if it is dead (send_lock taken here). */
static int conn_check(struct xfer_conn *cn)
{
    pthread_mutex_lock(&cn->send_lock);
    pthread_mutex_lock(&cn->lock);
    bool dead = cn->dead;
    pthread_mutex_unlock(&cn->lock);
    int rc = KV_OK;
    if (dead) {
        conn_reap(cn);
        rc = conn_open(cn);
    }
    pthread_mutex_unlock(&cn->send_lock);
    return rc;
}

static void *rx_main(void *arg)
{
    struct xfer_conn *cn = arg;
    struct xfer_tcp_client *c = cn->peer->c;
    int to = kv_xfer_timeout_ms(c->x);
    kv_log_set_thread_name("xfer-rx");
    int rc = KV_OK;
    for (;;) {
        pthread_mutex_lock(&cn->lock);
        while (!cn->head && !cn->dead)
            pthread_cond_wait(&cn->cond, &cn->lock);
        struct xfer_piece *p = cn->dead ? NULL : cn->head;
        int fd = cn->fd;
        pthread_mutex_unlock(&cn->lock);
        if (!p)
            break;
        uint8_t hdr[KV_XFER_HDR_LEN];
        struct kv_xfer_frame f;
        rc = recv_full(fd, hdr, sizeof(hdr), false, to, p->deadline_ms, &c->stop);
        if (rc < 0)
            break;
        int wop = p->op == KV_XFER_WRITE ? KV_XFER_OP_WRITE : KV_XFER_OP_READ;
        if (kv_xfer_frame_decode(hdr, sizeof(hdr), &f) < 0 || !(f.flags & KV_XFER_F_RESP) ||
            f.op != wop || f.req_id != p->req_id ||
            (f.status == KV_OK && f.op == KV_XFER_OP_READ && f.length != p->len)) {
            KV_LOGW_RL(5000, "xfer: malformed response from %s:%u; dropping the connection",
                       cn->peer->host, cn->peer->port);
            rc = KV_EPROTO;
            break;
        }
        if (f.status == KV_OK && f.op == KV_XFER_OP_READ) {
            rc = recv_full(fd, p->local, (size_t)p->len, false, to, p->deadline_ms, &c->stop);
            if (rc < 0)
                break;
        }
        pthread_mutex_lock(&cn->lock);
        cn->head = p->next;
        if (!cn->head)
            cn->tail = NULL;
        pthread_mutex_unlock(&cn->lock);
        p->rc = f.status;
        piece_put(p);
    }
    /* failure or shutdown: fail everything in flight on this connection */
    int err = kv_xfer_stopping(c->x) || atomic_load(&c->stop) ? KV_ESHUTDOWN
              : rc == KV_ETIMEDOUT                            ? KV_ETIMEDOUT
                                                              : KV_EXFER_PEER;
    pthread_mutex_lock(&cn->lock);
    struct xfer_piece *list = cn->head;
    cn->head = cn->tail = NULL;
    if (!cn->dead && list)
        KV_LOGW_RL(2000, "xfer: connection to %s:%u failed (%s); failing its requests",
                   cn->peer->host, cn->peer->port, kv_strerror(rc));
    cn->dead = true;
    if (cn->fd >= 0)
        shutdown(cn->fd, SHUT_RDWR);
    pthread_mutex_unlock(&cn->lock);
    while (list) {
        struct xfer_piece *n = list->next;
        list->rc = err;
        piece_put(list);
        list = n;
    }
    return NULL;
}

static void send_piece(struct xfer_tcp_client *c, struct xfer_piece *p)
{
    struct xfer_peer *pe = p->t->peer;
    unsigned start = atomic_fetch_add_explicit(&pe->rr, 1, memory_order_relaxed);
    struct xfer_conn *cn = NULL;
    for (int i = 0; i < pe->nconns && !cn; i++) {
        struct xfer_conn *k = &pe->conns[(start + (unsigned)i) % (unsigned)pe->nconns];
        if (pthread_mutex_trylock(&k->send_lock) == 0)
            cn = k;
    }
    if (!cn) {
        cn = &pe->conns[start % (unsigned)pe->nconns];
        pthread_mutex_lock(&cn->send_lock);
    }
    int to = kv_xfer_timeout_ms(c->x);
    bool w = p->op == KV_XFER_WRITE;
    struct kv_xfer_frame f = {.op = w ? KV_XFER_OP_WRITE : KV_XFER_OP_READ,
                              .seg_id = p->t->desc.seg_id,
                              .offset = p->offset,
                              .length = p->len};
    const void *payload = w ? p->local : NULL;
    int fd = -1;
    /* append under cn->lock only while the connection is alive, so that its receiver (which
     * marks it dead and takes the FIFO under the same lock) owns every appended piece */
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&cn->lock);
        if (!cn->dead) {
            f.req_id = p->req_id = ++cn->next_id;
            p->deadline_ms = kv_now_ms() + to;
            p->next = NULL;
            p->rc = KV_OK;
            atomic_store_explicit(&p->refs, 2, memory_order_relaxed);
            if (cn->tail)
                cn->tail->next = p;
            else
                cn->head = p;
            cn->tail = p;
            fd = cn->fd;
            pthread_cond_signal(&cn->cond);
            pthread_mutex_unlock(&cn->lock);
            break;
        }
        pthread_mutex_unlock(&cn->lock);
        conn_reap(cn);
        int rc = attempt > 0 ? KV_EXFER_PEER : conn_open(cn);
        if (rc < 0) {
            pthread_mutex_unlock(&cn->send_lock);
            kv_xfer_piece_done(p, rc);
            return;
        }
    }
    /* the receiver may answer p before send returns; p lives until both let go */
    int rc = send_frame(fd, &f, payload, w ? (size_t)f.length : 0, to, &c->stop);
    if (rc < 0)
        conn_kill(cn);
    pthread_mutex_unlock(&cn->send_lock);
    piece_put(p);
}

static void *worker_main(void *arg)
{
    struct xfer_tcp_client *c = arg;
    kv_log_set_thread_name("xfer-worker");
    for (;;) {
        pthread_mutex_lock(&c->q_lock);
        while (!c->qh && !atomic_load(&c->stop))
            pthread_cond_wait(&c->q_cond, &c->q_lock);
        struct xfer_piece *p = c->qh;
        if (p) {
            c->qh = p->next;
            if (!c->qh)
                c->qt = NULL;
        }
        pthread_mutex_unlock(&c->q_lock);
        if (!p)
            break;
        if (atomic_load(&c->stop))
            kv_xfer_piece_done(p, KV_ESHUTDOWN);
        else
            send_piece(c, p);
    }
    return NULL;
}

void kv_xfer_tcp_submit(struct xfer_tcp_client *c, struct xfer_piece *p)
{
    p->next = NULL;
    pthread_mutex_lock(&c->q_lock);
    if (atomic_load(&c->stop)) {
        pthread_mutex_unlock(&c->q_lock);
        kv_xfer_piece_done(p, KV_ESHUTDOWN);
        return;
    }
    if (c->qt)
        c->qt->next = p;
    else
        c->qh = p;
    c->qt = p;
    pthread_cond_signal(&c->q_cond);
    pthread_mutex_unlock(&c->q_lock);
}

int kv_xfer_tcp_client_create(struct kv_xfer *x, int workers, int conns_per_peer,
                              struct xfer_tcp_client **out)
{
    struct xfer_tcp_client *c = kv_calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    c->x = x;
    c->conns_per_peer = conns_per_peer;
    c->workers = kv_calloc((size_t)workers, sizeof(pthread_t));
    if (!c->workers) {
        kv_free(c);
        return KV_ENOMEM;
    }
    pthread_mutex_init(&c->q_lock, NULL);
    pthread_cond_init(&c->q_cond, NULL);
    pthread_mutex_init(&c->peers_lock, NULL);
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&c->workers[i], NULL, worker_main, c) != 0)
            break;
        c->nworkers++;
    }
    if (c->nworkers == 0) {
        kv_xfer_tcp_client_destroy(c);
        return KV_ENOMEM;
    }
    *out = c;
    return KV_OK;
}

static void peer_free(struct xfer_peer *p)
{
    for (int i = 0; i < p->nconns; i++) {
        struct xfer_conn *cn = &p->conns[i];
        pthread_mutex_lock(&cn->send_lock);
        conn_reap(cn);
        pthread_mutex_unlock(&cn->send_lock);
        pthread_mutex_destroy(&cn->send_lock);
        pthread_mutex_destroy(&cn->lock);
        pthread_cond_destroy(&cn->cond);
    }
    kv_free(p->conns);
    kv_free(p);
}

void kv_xfer_tcp_client_destroy(struct xfer_tcp_client *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->q_lock);
    atomic_store(&c->stop, true);
    pthread_cond_broadcast(&c->q_cond);
    pthread_mutex_unlock(&c->q_lock);
    /* wake workers blocked writing to a stalled peer */
    pthread_mutex_lock(&c->peers_lock);
    for (struct xfer_peer *p = c->peers; p; p = p->next)
        for (int i = 0; i < p->nconns; i++)
            conn_kill(&p->conns[i]);
    pthread_mutex_unlock(&c->peers_lock);
    for (int i = 0; i < c->nworkers; i++)
        pthread_join(c->workers[i], NULL);
    while (c->qh) {
        struct xfer_piece *p = c->qh;
        c->qh = p->next;
        kv_xfer_piece_done(p, KV_ESHUTDOWN);
    }
    while (c->peers) {
        struct xfer_peer *p = c->peers;
        c->peers = p->next;
        peer_free(p);
    }
    pthread_mutex_destroy(&c->q_lock);
    pthread_cond_destroy(&c->q_cond);
    pthread_mutex_destroy(&c->peers_lock);
    kv_free(c->workers);
    kv_free(c);
}

int kv_xfer_tcp_peer_get(struct xfer_tcp_client *c, const char *host, uint16_t port,
                         struct xfer_peer **out)
{
    pthread_mutex_lock(&c->peers_lock);
    for (struct xfer_peer *p = c->peers; p; p = p->next) {
        if (p->port == port && strcmp(p->host, host) == 0) {
            p->users++;
            pthread_mutex_unlock(&c->peers_lock);
            /* reusing a pooled peer: make sure it is still reachable, as a new one would be */
            int rc = conn_check(&p->conns[0]);
            if (rc < 0) {
                kv_xfer_tcp_peer_release(c, p);
                return rc;
            }
            *out = p;
            return KV_OK;
        }
    }
    pthread_mutex_unlock(&c->peers_lock);

    struct xfer_peer *p = kv_calloc(1, sizeof(*p));
    if (!p)
        return KV_ENOMEM;
    p->conns = kv_calloc((size_t)c->conns_per_peer, sizeof(*p->conns));
    if (!p->conns) {
        kv_free(p);
        return KV_ENOMEM;
    }
    p->c = c;
    snprintf(p->host, sizeof(p->host), "%s", host);
    p->port = port;
    p->users = 1;
    int rc = KV_OK;
    for (int i = 0; i < c->conns_per_peer; i++) {
        struct xfer_conn *cn = &p->conns[i];
        cn->peer = p;
        cn->fd = -1;
        cn->dead = true;
        pthread_mutex_init(&cn->send_lock, NULL);
        pthread_mutex_init(&cn->lock, NULL);
        pthread_cond_init(&cn->cond, NULL);
        p->nconns++;
        /* the first connection is made now so that open reports refusal (token, down) */
        if (i == 0) {
            pthread_mutex_lock(&cn->send_lock);
            rc = conn_open(cn);
            pthread_mutex_unlock(&cn->send_lock);
            if (rc < 0)
                break;
        }
    }
    if (rc < 0) {
        peer_free(p);
        return rc;
    }
    pthread_mutex_lock(&c->peers_lock);
    for (struct xfer_peer *q = c->peers; q; q = q->next) {
        if (q->port == port && strcmp(q->host, host) == 0) {
            /* lost a race with another opener: use theirs */
            q->users++;
            pthread_mutex_unlock(&c->peers_lock);
            peer_free(p);
            *out = q;
            return KV_OK;
        }
    }
    p->next = c->peers;
    c->peers = p;
    pthread_mutex_unlock(&c->peers_lock);
    *out = p;
    return KV_OK;
}

void kv_xfer_tcp_peer_release(struct xfer_tcp_client *c, struct xfer_peer *p)
{
    pthread_mutex_lock(&c->peers_lock);
    p->users--;
    pthread_mutex_unlock(&c->peers_lock);
}

void kv_xfer_tcp_gc(struct xfer_tcp_client *c)
{
    struct xfer_peer *idle = NULL;
    pthread_mutex_lock(&c->peers_lock);
    for (struct xfer_peer **pp = &c->peers; *pp;) {
        struct xfer_peer *p = *pp;
        if (p->users == 0) {
            *pp = p->next;
            p->next = idle;
            idle = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&c->peers_lock);
    while (idle) {
        struct xfer_peer *p = idle;
        idle = p->next;
        peer_free(p);
    }
}
