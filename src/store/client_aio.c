/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client_aio.c - asynchronous single-key operations (kv_store_aio_*, store.h): many puts, gets
 * and exists in flight from one thread, the way redis-benchmark or an event-driven engine
 * drives a server, without a thread (and a thread wake-up) per request.
 *
 * Design:
 *   - A context owns `depth` connections of its own to the leader (kv_rpc_client_connect), each
 *     carrying at most one request: a submit packs the request into a free connection's send
 *     buffer and writes what the socket takes; kv_store_aio_poll waits on all of them with one
 *     epoll set, reads whole response frames and completes their operations. So a thread with
 *     `depth` requests outstanding sleeps once per batch of answers, not once per answer; and
 *     before it sleeps it polls the set for the context's spin window (kv_spin, net.h; at most
 *     kv_store_opts.poll_spin_us), yielding the CPU between two polls.
 *   - The requests are the synchronous client's own (client.c): PUT with the value inside
 *     (values up to inline_max), GET and EXISTS of one key. A get's answer names the replicas;
 *     the value is read from the nearest (shm: a memcpy) by the polling thread, then checked
 *     against the checksum and the read lease, as kv_store_get does.
 *   - Whatever the synchronous client would retry is handed to it, on the polling thread: not
 *     the leader (KV_EAGAIN, the hint remembered), no node mounted yet, a lost connection for a
 *     get or an exists, a get whose master answer was transient or whose replicas all failed.
 *     The synchronous call then follows the leader and retries within the timeout, and its
 *     result is the operation's. A put whose connection was lost is not retried (it may have
 *     been applied): it completes with the transport error, as kv_store_put reports it.
 *   - Values larger than inline_max are put by kv_store_put inside the submit call (the
 *     staged PUT_START/write/PUT_END path); the result still arrives through the poll.
 *   - Every operation has the client's timeout from its submit; one that runs out completes
 *     with KV_ETIMEDOUT and its connection is closed (a late answer must not meet the next
 *     request).
 *
 * Invariants:
 *   1. A connection has at most one operation in flight; its answer is the next frame on it.
 *   2. A get's buffer is written only inside kv_store_aio_poll (or a submit's fallback) and
 *      never after its operation completed; a failed get's bytes are never reported as a value.
 *   3. Each open connection holds a reference on the leader it was made to; a connection to a
 *      leader the client no longer uses is closed before its next request.
 * Thread model: one thread at a time per context (no locks inside); many contexts may share
 *   one kv_store, whose own calls are thread-safe.
 */
#define KV_LOG_COMPONENT "store-aio"
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"
#include "kvstash/store.h"
#include "store/client_int.h"
#include "store/rpc.h"

#define AIO_MAX_DEPTH 1024
#define AIO_RX_STEP (64u << 10) /* a receive buffer grows at most this (or doubles) at a time */
#define AIO_RX_MIN 4096u        /* room offered to each recv */

struct aio_conn {
    int fd; /* -1 = not connected */
    struct leader *l;
    /* the operation in flight (op_live) */
    bool op_live;
    uint16_t method;
    uint64_t tag, id;
    int64_t t0_ms, deadline_ms;
    char key[KV_STORE_MAX_KEY + 1];
    void *buf; /* get */
    size_t cap;
    struct kv_buf tx; /* header + request; kept until the answer (a put's fallback reads it) */
    size_t tx_off;
    struct kv_buf rx; /* the answer's header + payload so far */
    bool want_out;    /* registered for EPOLLOUT */
    bool fresh;       /* connected for the operation in flight (not an idle one reused) */
};

struct kv_store_aio {
    struct kv_store *s;
    int epfd;
    unsigned depth, live;
    uint64_t next_id;
    struct aio_conn *conns;
    struct epoll_event *evs;
    /* results of submits that finished at once (larger puts), handed out by the next poll */
    struct kv_store_aio_done *ready;
    unsigned nready;
    struct kv_store_aio_stats st;
    struct kv_spin spin; /* how long a poll asks before it sleeps (kv_store_opts.poll_spin_us) */
};

static void conn_close(struct kv_store_aio *a, struct aio_conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(a->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    cli_leader_put(c->l);
    c->l = NULL;
    c->want_out = false;
    kv_buf_reset(&c->rx);
}

int kv_store_aio_open(struct kv_store *s, unsigned depth, struct kv_store_aio **out)
{
    if (!s || !out || depth == 0 || depth > AIO_MAX_DEPTH)
        return KV_EINVAL;
    struct kv_store_aio *a = kv_calloc(1, sizeof(*a));
    if (!a)
        return KV_ENOMEM;
    a->s = s;
    a->depth = depth;
    kv_spin_init(&a->spin, s->poll_spin_us);
    a->next_id = 1;
    a->epfd = epoll_create1(EPOLL_CLOEXEC);
    a->conns = kv_calloc(depth, sizeof(*a->conns));
    a->evs = kv_calloc(depth, sizeof(*a->evs));
    a->ready = kv_calloc(depth, sizeof(*a->ready));
    if (a->epfd < 0 || !a->conns || !a->evs || !a->ready) {
        int rc = a->epfd < 0 ? kv_err_from_errno(errno) : KV_ENOMEM;
        if (a->epfd >= 0)
            close(a->epfd);
        kv_free(a->conns);
        kv_free(a->evs);
        kv_free(a->ready);
        kv_free(a);
        return rc;
    }
    for (unsigned i = 0; i < depth; i++) {
        a->conns[i].fd = -1;
        kv_buf_init(&a->conns[i].tx);
        kv_buf_init(&a->conns[i].rx);
    }
    *out = a;
    return KV_OK;
}

void kv_store_aio_close(struct kv_store_aio *a)
{
    if (!a)
        return;
    for (unsigned i = 0; i < a->depth; i++) {
        conn_close(a, &a->conns[i]);
        kv_buf_fini(&a->conns[i].tx);
        kv_buf_fini(&a->conns[i].rx);
    }
    close(a->epfd);
    kv_free(a->conns);
    kv_free(a->evs);
    kv_free(a->ready);
    kv_free(a);
}

void kv_store_aio_stats(const struct kv_store_aio *a, struct kv_store_aio_stats *st)
{
    if (a && st)
        *st = a->st;
}

unsigned kv_store_aio_inflight(const struct kv_store_aio *a)
{
    return a ? a->live + a->nready : 0;
}

/* A connection free for a request (NULL when all are busy); prefers a connected one. */
static struct aio_conn *free_conn(struct kv_store_aio *a)
{
    struct aio_conn *spare = NULL;
    for (unsigned i = 0; i < a->depth; i++) {
        struct aio_conn *c = &a->conns[i];
        if (c->op_live)
            continue;
        if (c->fd >= 0)
            return c;
        if (!spare)
            spare = c;
    }
    return spare;
}

/* Connects c to the current leader unless it already is. */
static int conn_ready(struct kv_store_aio *a, struct aio_conn *c)
{
    struct leader *l = NULL;
    int rc = cli_leader_get(a->s, &l);
    if (rc < 0)
        return rc;
    if (c->fd >= 0 && c->l == l) {
        cli_leader_put(l);
        c->fresh = false;
        return KV_OK;
    }
    conn_close(a, c);
    int fd = -1;
    rc = kv_rpc_client_connect(l->rpc, KV_MIN(a->s->timeout_ms, 3000), &fd);
    if (rc == KV_OK)
        rc = kv_net_set_nonblock(fd, 1);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    if (rc == KV_OK && epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        rc = kv_err_from_errno(errno);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        if (cli_transport_err(rc))
            cli_leader_drop(a->s, l, NULL);
        cli_leader_put(l);
        return rc;
    }
    c->fd = fd;
    c->l = l; /* the reference taken above */
    c->fresh = true;
    a->st.connects++;
    return KV_OK;
}

static void want_out(struct kv_store_aio *a, struct aio_conn *c, bool on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(a->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = on;
}

/* Writes what the socket takes of c's request. KV_OK (all sent or EPOLLOUT armed), or a
 * transport error. */
static int conn_send(struct kv_store_aio *a, struct aio_conn *c)
{
    while (c->tx_off < c->tx.len) {
        ssize_t w = send(c->fd, c->tx.data + c->tx_off, c->tx.len - c->tx_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->tx_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(a, c, true);
            return KV_OK;
        }
        return KV_ECONNRESET;
    }
    want_out(a, c, false);
    return KV_OK;
}

static int fallback(struct kv_store_aio *a, struct aio_conn *c, size_t *len);

/* Starts method with message req on a free connection. KV_EBUSY when depth operations are
 * in flight. When the request cannot be sent (no connection to the leader, a connection found
 * dead) the synchronous call runs it now (it follows the leader, retries within the timeout)
 * and its result waits for the next poll. */
static int submit(struct kv_store_aio *a, uint16_t method, const ProtobufCMessage *req,
                  const char *key, void *buf, size_t cap, uint64_t tag)
{
    struct aio_conn *c = free_conn(a);
    if (!c || a->live + a->nready >= a->depth)
        return KV_EBUSY;
    size_t plen = protobuf_c_message_get_packed_size(req);
    if (plen > KV_RPC_MAX_PAYLOAD)
        return KV_E2BIG;
    kv_buf_reset(&c->tx);
    int rc = kv_buf_reserve(&c->tx, KV_RPC_HDR_LEN + plen);
    if (rc < 0)
        return rc;
    c->id = a->next_id++;
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, 0, (uint32_t)plen, 0, c->id};
    kv_rpc_hdr_encode(&h, (uint8_t *)c->tx.data);
    protobuf_c_message_pack(req, (uint8_t *)c->tx.data + KV_RPC_HDR_LEN);
    c->tx.len = KV_RPC_HDR_LEN + plen;
    c->tx_off = 0;
    c->method = method;
    c->tag = tag;
    c->t0_ms = kv_now_ms();
    c->deadline_ms = c->t0_ms + a->s->timeout_ms;
    memcpy(c->key, key, strlen(key) + 1); /* cli_key_ok: fits */
    c->buf = buf;
    c->cap = cap;
    kv_buf_reset(&c->rx);
    rc = conn_ready(a, c);
    if (rc == KV_OK) {
        rc = conn_send(a, c);
        if (rc < 0) {
            cli_leader_drop(a->s, c->l, NULL);
            conn_close(a, c);
        }
    }
    if (rc < 0) { /* nothing was sent: the synchronous call does it */
        size_t len = 0;
        int res = fallback(a, c, &len);
        a->ready[a->nready++] = (struct kv_store_aio_done){.tag = tag, .status = res, .len = len};
        return KV_OK;
    }
    c->op_live = true;
    a->live++;
    a->st.submitted++;
    return KV_OK;
}

int kv_store_aio_put(struct kv_store_aio *a, const char *key, const void *buf, size_t len,
                     const struct kv_put_opts *opts, uint64_t tag)
{
    if (!a || !cli_key_ok(key) || (!buf && len))
        return KV_EINVAL;
    int replicas = cli_put_replicas(opts);
    if (replicas < 0)
        return replicas;
    if (!cli_inline_size(a->s, len)) {
        /* the staged path (PUT_START, write, PUT_END) runs here; its result waits for a poll */
        if (a->live + a->nready >= a->depth)
            return KV_EBUSY;
        int rc = kv_store_put(a->s, key, buf, len, opts);
        a->ready[a->nready++] = (struct kv_store_aio_done){.tag = tag, .status = rc};
        return KV_OK;
    }
    Kvstash__PutItem item;
    cli_put_item_init(&item, key, buf, len, replicas, opts);
    Kvstash__PutItem *pitem = &item;
    Kvstash__PutStartReq req = KVSTASH__PUT_START_REQ__INIT;
    req.n_items = 1;
    req.items = &pitem;
    return submit(a, KV_RPC_PUT, &req.base, key, NULL, 0, tag);
}

static int key_submit(struct kv_store_aio *a, uint16_t method, const char *key, void *buf,
                      size_t cap, uint64_t tag)
{
    char *k = (char *)key;
    Kvstash__KeyList kl = KVSTASH__KEY_LIST__INIT;
    kl.n_keys = 1;
    kl.keys = &k;
    return submit(a, method, &kl.base, key, buf, cap, tag);
}

int kv_store_aio_get(struct kv_store_aio *a, const char *key, void *buf, size_t cap, uint64_t tag)
{
    if (!a || !cli_key_ok(key) || (!buf && cap))
        return KV_EINVAL;
    return key_submit(a, KV_RPC_GET, key, buf, cap, tag);
}

int kv_store_aio_exists(struct kv_store_aio *a, const char *key, uint64_t tag)
{
    if (!a || !cli_key_ok(key))
        return KV_EINVAL;
    return key_submit(a, KV_RPC_EXISTS, key, NULL, 0, tag);
}

/* The synchronous call for c's operation (see the design: what it would retry). */
static int fallback(struct kv_store_aio *a, struct aio_conn *c, size_t *len)
{
    a->st.fallbacks++;
    KV_LOGD("%s %s: handed to the synchronous call", kv_rpc_method_name(c->method), c->key);
    switch (c->method) {
    case KV_RPC_GET:
        return kv_store_get(a->s, c->key, c->buf, c->cap, len);
    case KV_RPC_EXISTS:
        return kv_store_exists(a->s, c->key);
    default: { /* PUT: the request still holds the value */
        ProtobufCMessage *m = NULL;
        int rc = kv_rpc_pb_unpack(&kvstash__put_start_req__descriptor,
                                  (uint8_t *)c->tx.data + KV_RPC_HDR_LEN,
                                  c->tx.len - KV_RPC_HDR_LEN, &m);
        if (rc < 0)
            return rc;
        Kvstash__PutStartReq *r = (Kvstash__PutStartReq *)m;
        Kvstash__PutItem *it = r->items[0];
        struct kv_put_opts o = {.replicas = (int)it->replicas, .ttl_s = it->ttl_s, .pin = it->pin};
        rc = kv_store_put(a->s, c->key, it->data.data, it->data.len, &o);
        kv_rpc_pb_free(m);
        return rc;
    }
    }
}

/* A GET answer of KV_OK: reads the value from the nearest replica. KV_EAGAIN: hand it to the
 * synchronous get (transient answer, no replica reachable, every replica failed). */
static int get_done(struct kv_store_aio *a, struct aio_conn *c, const uint8_t *p, size_t n,
                    size_t *len)
{
    ProtobufCMessage *m = NULL;
    int rc = kv_rpc_pb_unpack(&kvstash__get_resp__descriptor, p, n, &m);
    if (rc < 0)
        return KV_EAGAIN;
    Kvstash__GetResp *gr = (Kvstash__GetResp *)m;
    if (gr->n_items != 1) {
        kv_rpc_pb_free(m);
        return KV_EAGAIN;
    }
    Kvstash__GetItem *gi = gr->items[0];
    struct get_item g = {0};
    if (gi->status == KV_ENOSPC || gi->status == KV_EAGAIN || gi->status == KV_EBUSY) {
        rc = KV_EAGAIN;
    } else if (gi->status != KV_OK) {
        rc = gi->status;
    } else if (gi->size > c->cap) {
        *len = gi->size;
        rc = KV_E2BIG;
    } else if (gi->size == 0) {
        rc = gi->checksum == kv_hash64("", 0) ? KV_OK : KV_ECHECKSUM;
    } else {
        g.size = gi->size;
        g.checksum = gi->checksum;
        g.buf = c->buf;
        cli_get_targets(a->s, &g, gi, false);
        uint64_t lease = gi->lease_ms ? gi->lease_ms : UINT64_MAX;
        rc = KV_EAGAIN;
        if (g.nrep > 0) {
            int st = kv_xfer_read(a->s->xfer, g.targets[0], g.offs[0], g.buf, g.size);
            if (cli_get_verify(a->s, &g, c->key, st, c->t0_ms, lease)) {
                *len = gi->size;
                rc = KV_OK;
            }
        }
    }
    kv_rpc_pb_free(m);
    return rc;
}

/* c's answer (status, payload p[0..n)) or transport failure (xerr < 0): the result. */
static int finish(struct kv_store_aio *a, struct aio_conn *c, int xerr, int status,
                  const uint8_t *p, size_t n, size_t *len)
{
    *len = 0;
    if (xerr < 0) {
        /* a reused connection that failed before any answer byte was likely closed while idle
         * (the leader restarted): retried like kv_rpc_call's stale pooled connection. Else a
         * put may have been applied: not retried (as kv_store_put) */
        bool stale = !c->fresh && c->rx.len == 0 && xerr != KV_ETIMEDOUT;
        cli_leader_drop(a->s, c->l, NULL);
        conn_close(a, c);
        return c->method == KV_RPC_PUT && !stale ? xerr : fallback(a, c, len);
    }
    if (status == KV_EAGAIN) { /* not the leader: the synchronous call follows the hint */
        char hint[256];
        kv_rpc_leader_hint(p, n, hint, sizeof(hint));
        cli_leader_drop(a->s, c->l, hint);
        conn_close(a, c);
        return fallback(a, c, len);
    }
    if (status == KV_ESTORE_NONODE)
        return fallback(a, c, len);
    if (status != KV_OK)
        return status > 0 ? KV_EPROTO : status;
    if (c->method == KV_RPC_GET) {
        int rc = get_done(a, c, p, n, len);
        return rc == KV_EAGAIN ? fallback(a, c, len) : rc;
    }
    ProtobufCMessage *m = NULL;
    int rc = kv_rpc_pb_unpack(&kvstash__status_list__descriptor, p, n, &m);
    if (rc < 0)
        return rc;
    Kvstash__StatusList *sl = (Kvstash__StatusList *)m;
    rc = sl->n_status == 1 ? sl->status[0] : KV_EPROTO;
    kv_rpc_pb_free(m);
    return rc;
}

/* Reads what c's socket holds. 1: a whole answer is in c->rx (header decoded into *h); 0: not
 * yet; < 0: transport failure. */
static int conn_recv(struct aio_conn *c, struct kv_rpc_hdr *h)
{
    for (;;) {
        size_t want = KV_RPC_HDR_LEN;
        if (c->rx.len >= KV_RPC_HDR_LEN) {
            int rc = kv_rpc_hdr_decode((const uint8_t *)c->rx.data, c->rx.len, h);
            if (rc < 0 || !(h->flags & KV_RPC_F_RESPONSE) || h->id != c->id)
                return KV_EPROTO;
            want += h->len;
            if (c->rx.len >= want)
                return c->rx.len == want ? 1 : KV_EPROTO; /* one request, one answer */
        }
        /* one request in flight: nothing follows its answer, so read ahead freely (a small
         * answer in one recv, not a header and then its payload) */
        size_t room = KV_MAX((size_t)AIO_RX_MIN,
                             KV_MIN(want - c->rx.len, KV_MAX((size_t)AIO_RX_STEP, c->rx.len)));
        if (kv_buf_reserve(&c->rx, room + 1) < 0)
            return KV_ENOMEM;
        ssize_t r = recv(c->fd, c->rx.data + c->rx.len, room, 0);
        if (r > 0) {
            c->rx.len += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return KV_ECONNRESET; /* closed by the server, or reset */
    }
}

static void complete(struct kv_store_aio *a, struct aio_conn *c, int xerr, struct kv_rpc_hdr *h,
                     struct kv_store_aio_done *d)
{
    size_t len = 0;
    const uint8_t *p = (const uint8_t *)c->rx.data + KV_RPC_HDR_LEN;
    int rc = finish(a, c, xerr, h ? h->status : 0, p, h ? h->len : 0, &len);
    *d = (struct kv_store_aio_done){.tag = c->tag, .status = rc, .len = len};
    c->op_live = false;
    a->live--;
    kv_buf_reset(&c->rx);
}

int kv_store_aio_poll(struct kv_store_aio *a, struct kv_store_aio_done *done, size_t max,
                      int timeout_ms)
{
    if (!a || (!done && max))
        return KV_EINVAL;
    size_t n = 0;
    while (n < max && a->nready) {
        done[n++] = a->ready[0];
        memmove(a->ready, a->ready + 1, --a->nready * sizeof(*a->ready));
    }
    if (n == max || a->live == 0)
        return (int)n;
    int64_t now = kv_now_ms();
    int64_t until = timeout_ms < 0 ? INT64_MAX : now + timeout_ms;
    for (;;) {
        int64_t first = INT64_MAX;
        for (unsigned i = 0; i < a->depth; i++)
            if (a->conns[i].op_live && a->conns[i].deadline_ms < first)
                first = a->conns[i].deadline_ms;
        int wait = n ? 0 : (int)KV_MAX(0, KV_MIN(KV_MIN(first, until) - now, (int64_t)INT32_MAX));
        int nmax = (int)KV_MIN((size_t)a->depth, max - n);
        int ne = 0;
        int win = wait != 0 ? kv_spin_window(&a->spin) : 0;
        int64_t t0 = wait != 0 && a->spin.max_us ? kv_now_us() : 0;
        if (win > 0) { /* poll before sleeping (store.h), yielding to threads that want the CPU */
            int64_t spin_until = t0 + win;
            while ((ne = epoll_wait(a->epfd, a->evs, nmax, 0)) == 0 && kv_now_us() < spin_until)
                sched_yield();
        }
        if (ne == 0)
            ne = epoll_wait(a->epfd, a->evs, nmax, wait);
        if (t0)
            kv_spin_learn(&a->spin, kv_now_us() - t0);
        if (ne < 0 && errno != EINTR)
            return n ? (int)n : kv_err_from_errno(errno);
        for (int e = 0; e < ne; e++) {
            struct aio_conn *c = a->evs[e].data.ptr;
            if (!c->op_live) { /* an idle connection closed or spoke: drop it */
                conn_close(a, c);
                continue;
            }
            int rc = KV_OK;
            if (a->evs[e].events & EPOLLOUT)
                rc = conn_send(a, c);
            struct kv_rpc_hdr h;
            if (rc == KV_OK)
                rc = conn_recv(c, &h);
            if (rc == 0)
                continue;
            complete(a, c, rc < 0 ? rc : KV_OK, rc < 0 ? NULL : &h, &done[n++]);
        }
        now = kv_now_ms();
        for (unsigned i = 0; i < a->depth && n < max; i++) {
            struct aio_conn *c = &a->conns[i];
            if (c->op_live && now >= c->deadline_ms) {
                KV_LOGD("%s %s: no answer within %d ms", kv_rpc_method_name(c->method), c->key,
                        a->s->timeout_ms);
                cli_leader_drop(a->s, c->l, NULL); /* as a synchronous call's timeout */
                conn_close(a, c); /* a late answer must not meet the next request */
                c->op_live = false;
                a->live--;
                done[n++] = (struct kv_store_aio_done){.tag = c->tag, .status = KV_ETIMEDOUT};
            }
        }
        if (n > 0 || a->live == 0 || now >= until)
            return (int)n;
    }
}
