/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_rdma.c - the RDMA transport (libibverbs), compiled only when CMake found libibverbs
 * (KV_HAVE_RDMA); without it every entry point returns KV_ENOTBUILT.
 *
 * STATUS: device discovery is exercised by the tests (no device here: "auto" skips RDMA and a
 * forced "rdma" fails with KV_EXFER_NOTRANSPORT). The data path below compiles but has NEVER
 * run on RDMA hardware (none on the development machine); for that reason "auto" does not
 * select it (xfer.c, XFER_RDMA_AUTO) and only a forced --protocol=rdma uses it.
 *
 * Design
 *  - Per engine (struct xfer_rdma): the first device with an active port, its protection
 *    domain, port attributes and GID index 0. Segments are registered as memory regions
 *    (local write, remote read/write); the descriptor publishes "rdma":{dev,gid,addr,rkey}.
 *  - Connection: the initiator dials the owner's TCP address (HELLO with the token, so RDMA is
 *    no less authenticated than TCP), creates an RC queue pair and sends RDMA_CONNECT with its
 *    endpoint {qpn, psn, lid, gid}; the owner's connection thread creates a QP connected to it
 *    and answers with its own endpoint. The owner's QP lives as long as that TCP connection:
 *    when the initiator (or its process) goes away the QP is destroyed; when the owner dies
 *    the initiator's posted work requests complete in error (retry exhaustion) -> KV_EXFER_PEER.
 *  - Data: each piece is one RDMA READ/WRITE (signalled) from a local buffer registered for the
 *    piece's lifetime (the API has no local registration). RC completion of an RDMA WRITE means
 *    the remote HCA acknowledged it: the bytes are in the target's memory. Bounds were checked
 *    against the descriptor, and the remote MR bounds every access in hardware.
 *  - Completion: one thread per channel sleeps in poll() on the completion channel's fd and an
 *    eventfd (stop); on an event it acks, re-arms, and drains the CQ. No busy polling.
 *  - Flow control: at most CHAN_DEPTH work requests in flight per QP; posters wait on a condvar.
 * Locks: ch->lock guards inflight and stopping (leaf).
 *
 * Endpoint wire format (32 bytes, little-endian): u32 qpn, u32 psn, u16 lid, u8[6] zero,
 * u8[16] gid.
 */
#define KV_LOG_COMPONENT "xfer"
#include <stdio.h>

#include "common/log.h"
#include "xfer/xfer_int.h"

#ifdef KV_HAVE_RDMA
#include <errno.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/util.h"

#define CHAN_DEPTH 256
#define GID_INDEX 0

struct xfer_rdma {
    struct kv_xfer *x;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    uint8_t port;
    struct ibv_port_attr pattr;
    union ibv_gid gid;
};

struct rdma_ep {
    uint32_t qpn;
    uint32_t psn;
    uint16_t lid;
    uint8_t gid[16];
};

/* A server-side QP and its CQ. */
struct rdma_srv_qp {
    struct ibv_cq *cq;
    struct ibv_qp *qp;
};

struct xfer_rdma_chan {
    struct xfer_rdma *r;
    int fd; /* the TCP connection that carried the handshake (keeps the owner's QP alive) */
    struct ibv_comp_channel *cc;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    int stop_efd;
    pthread_t thr;
    bool thr_started;
    _Atomic bool self_close; /* closed from its own completion thread: it tears down */
    pthread_mutex_t lock;    /* guards inflight, failed (leaf) */
    pthread_cond_t cond;
    int inflight;
    bool failed; /* the QP went to error: new posts fail at once */
};

/* A piece in flight and the MR of its local buffer. */
struct rdma_wr {
    struct xfer_piece *p;
    struct ibv_mr *mr;
};

int kv_xfer_rdma_probe(char *dev, size_t devlen)
{
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n <= 0) {
        if (list)
            ibv_free_device_list(list);
        return KV_EXFER_NOTRANSPORT;
    }
    int rc = KV_EXFER_NOTRANSPORT;
    for (int i = 0; i < n && rc < 0; i++) {
        struct ibv_context *ctx = ibv_open_device(list[i]);
        if (!ctx)
            continue;
        struct ibv_device_attr attr;
        if (ibv_query_device(ctx, &attr) == 0) {
            for (uint8_t port = 1; port <= attr.phys_port_cnt; port++) {
                struct ibv_port_attr pa;
                if (ibv_query_port(ctx, port, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) {
                    snprintf(dev, devlen, "%s", ibv_get_device_name(list[i]));
                    rc = KV_OK;
                    break;
                }
            }
        }
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    return rc;
}

int kv_xfer_rdma_open(struct kv_xfer *x, struct xfer_rdma **out, char *dev, size_t devlen,
                      char *gid, size_t gidlen)
{
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list)
        return KV_EXFER_NOTRANSPORT;
    struct xfer_rdma *r = kv_calloc(1, sizeof(*r));
    int rc = r ? KV_EXFER_NOTRANSPORT : KV_ENOMEM;
    for (int i = 0; r && i < n && rc < 0; i++) {
        struct ibv_context *ctx = ibv_open_device(list[i]);
        struct ibv_device_attr attr;
        if (!ctx)
            continue;
        if (ibv_query_device(ctx, &attr) == 0) {
            for (uint8_t port = 1; port <= attr.phys_port_cnt && rc < 0; port++) {
                if (ibv_query_port(ctx, port, &r->pattr) != 0 ||
                    r->pattr.state != IBV_PORT_ACTIVE ||
                    ibv_query_gid(ctx, port, GID_INDEX, &r->gid) != 0)
                    continue;
                r->pd = ibv_alloc_pd(ctx);
                if (!r->pd)
                    continue;
                r->ctx = ctx;
                r->port = port;
                snprintf(dev, devlen, "%s", ibv_get_device_name(list[i]));
                rc = KV_OK;
            }
        }
        if (rc < 0)
            ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    if (rc < 0) {
        kv_free(r);
        return rc;
    }
    r->x = x;
    size_t o = 0;
    for (int i = 0; i < 16 && o + 3 <= gidlen; i++)
        o += (size_t)snprintf(gid + o, gidlen - o, "%02x", r->gid.raw[i]);
    *out = r;
    return KV_OK;
}

void kv_xfer_rdma_close(struct xfer_rdma *r)
{
    if (!r)
        return;
    ibv_dealloc_pd(r->pd);
    ibv_close_device(r->ctx);
    kv_free(r);
}

int kv_xfer_rdma_reg(struct xfer_rdma *r, void *addr, size_t len, void **mr_out, uint32_t *rkey)
{
    struct ibv_mr *mr =
        ibv_reg_mr(r->pd, addr, len,
                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
    if (!mr) {
        KV_LOGW("xfer: cannot register %zu bytes with the RDMA device: %s", len, strerror(errno));
        return KV_ENOMEM;
    }
    *mr_out = mr;
    *rkey = mr->rkey;
    return KV_OK;
}

void kv_xfer_rdma_dereg(void *mr)
{
    if (mr)
        ibv_dereg_mr(mr);
}

static void ep_encode(const struct rdma_ep *e, uint8_t out[KV_XFER_RDMA_EP_LEN])
{
    memset(out, 0, KV_XFER_RDMA_EP_LEN);
    for (int i = 0; i < 4; i++) {
        out[i] = (uint8_t)(e->qpn >> (8 * i));
        out[4 + i] = (uint8_t)(e->psn >> (8 * i));
    }
    out[8] = (uint8_t)e->lid;
    out[9] = (uint8_t)(e->lid >> 8);
    memcpy(out + 16, e->gid, 16);
}

static int ep_decode(const uint8_t in[KV_XFER_RDMA_EP_LEN], struct rdma_ep *e)
{
    for (int i = 10; i < 16; i++)
        if (in[i])
            return KV_EPROTO;
    e->qpn = e->psn = 0;
    for (int i = 3; i >= 0; i--) {
        e->qpn = (e->qpn << 8) | in[i];
        e->psn = (e->psn << 8) | in[4 + i];
    }
    e->lid = (uint16_t)(in[8] | (in[9] << 8));
    memcpy(e->gid, in + 16, 16);
    if (e->qpn == 0 || e->qpn > 0xffffff || e->psn > 0xffffff)
        return KV_EPROTO;
    return KV_OK;
}

static struct ibv_qp *make_qp(struct xfer_rdma *r, struct ibv_cq *cq)
{
    struct ibv_qp_init_attr ia = {
        .send_cq = cq,
        .recv_cq = cq,
        .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = CHAN_DEPTH, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1},
    };
    struct ibv_qp *qp = ibv_create_qp(r->pd, &ia);
    if (!qp)
        return NULL;
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = r->port,
        .qp_access_flags =
            IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE,
    };
    if (ibv_modify_qp(qp, &a,
                      IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
        ibv_destroy_qp(qp);
        return NULL;
    }
    return qp;
}

/* INIT -> RTR -> RTS towards the remote endpoint. */
static int connect_qp(struct xfer_rdma *r, struct ibv_qp *qp, uint32_t my_psn,
                      const struct rdma_ep *rem)
{
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = r->pattr.active_mtu;
    a.dest_qp_num = rem->qpn;
    a.rq_psn = rem->psn;
    a.max_dest_rd_atomic = 16;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = rem->lid;
    a.ah_attr.port_num = r->port;
    static const uint8_t zero[16];
    if (memcmp(rem->gid, zero, 16) != 0) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, rem->gid, 16);
        a.ah_attr.grh.sgid_index = GID_INDEX;
        a.ah_attr.grh.hop_limit = 64;
    }
    if (ibv_modify_qp(qp, &a,
                      IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return KV_EXFER_NOTRANSPORT;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14; /* 4.096 us * 2^14 = 67 ms per try */
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = my_psn;
    a.max_rd_atomic = 16;
    if (ibv_modify_qp(qp, &a,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                          IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
        return KV_EXFER_NOTRANSPORT;
    return KV_OK;
}

static void my_ep(struct xfer_rdma *r, struct ibv_qp *qp, uint32_t psn, struct rdma_ep *e)
{
    e->qpn = qp->qp_num;
    e->psn = psn;
    e->lid = r->pattr.lid;
    memcpy(e->gid, r->gid.raw, 16);
}

static uint32_t new_psn(void)
{
    return (uint32_t)(kv_now_ns() & 0xffffff);
}

int kv_xfer_rdma_accept(struct xfer_rdma *r, const uint8_t in[KV_XFER_RDMA_EP_LEN],
                        uint8_t out[KV_XFER_RDMA_EP_LEN], void **qp_out)
{
    struct rdma_ep rem, me;
    if (ep_decode(in, &rem) < 0)
        return KV_EPROTO;
    struct rdma_srv_qp *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    int rc = KV_EXFER_NOTRANSPORT;
    s->cq = ibv_create_cq(r->ctx, 4, NULL, NULL, 0);
    if (!s->cq)
        goto out_free;
    s->qp = make_qp(r, s->cq);
    if (!s->qp)
        goto out_cq;
    uint32_t psn = new_psn();
    rc = connect_qp(r, s->qp, psn, &rem);
    if (rc < 0)
        goto out_qp;
    my_ep(r, s->qp, psn, &me);
    ep_encode(&me, out);
    *qp_out = s;
    return KV_OK;
out_qp:
    ibv_destroy_qp(s->qp);
out_cq:
    ibv_destroy_cq(s->cq);
out_free:
    kv_free(s);
    return rc;
}

void kv_xfer_rdma_drop(void *qp)
{
    struct rdma_srv_qp *s = qp;
    if (!s)
        return;
    ibv_destroy_qp(s->qp);
    ibv_destroy_cq(s->cq);
    kv_free(s);
}

static void wr_done(struct xfer_rdma_chan *ch, struct rdma_wr *w, int rc)
{
    ibv_dereg_mr(w->mr);
    struct xfer_piece *p = w->p;
    kv_free(w);
    pthread_mutex_lock(&ch->lock);
    if (rc < 0)
        ch->failed = true;
    ch->inflight--;
    pthread_cond_broadcast(&ch->cond);
    pthread_mutex_unlock(&ch->lock);
    kv_xfer_piece_done(p, rc);
}

static void drain_cq(struct xfer_rdma_chan *ch)
{
    struct ibv_wc wc[32];
    int n;
    while ((n = ibv_poll_cq(ch->cq, 32, wc)) > 0) {
        for (int i = 0; i < n; i++) {
            struct rdma_wr *w = (struct rdma_wr *)(uintptr_t)wc[i].wr_id;
            if (wc[i].status != IBV_WC_SUCCESS)
                KV_LOGW_RL(2000, "xfer: RDMA work request failed: %s",
                           ibv_wc_status_str(wc[i].status));
            wr_done(ch, w, wc[i].status == IBV_WC_SUCCESS ? KV_OK : KV_EXFER_PEER);
        }
    }
}

static void chan_teardown(struct xfer_rdma_chan *ch)
{
    if (ch->qp) {
        /* flush outstanding work requests: they complete with IBV_WC_WR_FLUSH_ERR */
        struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
        ibv_modify_qp(ch->qp, &a, IBV_QP_STATE);
        int64_t deadline = kv_now_ms() + 5000;
        pthread_mutex_lock(&ch->lock);
        while (ch->inflight > 0 && kv_now_ms() < deadline) {
            pthread_mutex_unlock(&ch->lock);
            drain_cq(ch);
            kv_sleep_ms(1); /* shutdown only: flushed completions arrive at once */
            pthread_mutex_lock(&ch->lock);
        }
        pthread_mutex_unlock(&ch->lock);
        ibv_destroy_qp(ch->qp);
    }
    if (ch->cq)
        ibv_destroy_cq(ch->cq);
    if (ch->cc)
        ibv_destroy_comp_channel(ch->cc);
    if (ch->stop_efd >= 0)
        close(ch->stop_efd);
    if (ch->fd >= 0)
        close(ch->fd);
    pthread_mutex_destroy(&ch->lock);
    pthread_cond_destroy(&ch->cond);
    kv_free(ch);
}

static void *chan_main(void *arg)
{
    struct xfer_rdma_chan *ch = arg;
    kv_log_set_thread_name("xfer-rdma");
    while (!atomic_load(&ch->self_close)) {
        struct pollfd pf[2] = {{.fd = ch->cc->fd, .events = POLLIN},
                               {.fd = ch->stop_efd, .events = POLLIN}};
        int r = poll(pf, 2, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || (pf[1].revents & POLLIN))
            break;
        struct ibv_cq *cq;
        void *ctx;
        if (ibv_get_cq_event(ch->cc, &cq, &ctx) == 0) {
            ibv_ack_cq_events(cq, 1);
            ibv_req_notify_cq(cq, 0);
        }
        drain_cq(ch);
    }
    if (atomic_load(&ch->self_close))
        chan_teardown(ch);
    return NULL;
}

void kv_xfer_rdma_chan_close(struct xfer_rdma_chan *ch)
{
    if (!ch)
        return;
    if (ch->thr_started && pthread_equal(pthread_self(), ch->thr)) {
        /* the last piece completed on our own thread dropped the target: it tears down */
        pthread_detach(ch->thr);
        atomic_store(&ch->self_close, true);
        return;
    }
    if (ch->thr_started) {
        uint64_t one = 1;
        if (write(ch->stop_efd, &one, sizeof(one)) < 0)
            KV_LOGW("xfer: cannot wake the RDMA completion thread");
        pthread_join(ch->thr, NULL);
    }
    chan_teardown(ch);
}

int kv_xfer_rdma_connect(struct xfer_rdma *r, const char *host, uint16_t port,
                         struct xfer_rdma_chan **out)
{
    struct xfer_rdma_chan *ch = kv_calloc(1, sizeof(*ch));
    if (!ch)
        return KV_ENOMEM;
    ch->r = r;
    ch->fd = -1;
    ch->stop_efd = -1;
    pthread_mutex_init(&ch->lock, NULL);
    pthread_cond_init(&ch->cond, NULL);
    int rc = kv_xfer_tcp_dial(r->x, host, port, &ch->fd);
    if (rc < 0)
        goto out_close;
    rc = KV_EXFER_NOTRANSPORT;
    ch->stop_efd = eventfd(0, EFD_CLOEXEC);
    ch->cc = ibv_create_comp_channel(r->ctx);
    if (ch->stop_efd < 0 || !ch->cc)
        goto out_close;
    ch->cq = ibv_create_cq(r->ctx, CHAN_DEPTH * 2, NULL, ch->cc, 0);
    if (!ch->cq || ibv_req_notify_cq(ch->cq, 0))
        goto out_close;
    ch->qp = make_qp(r, ch->cq);
    if (!ch->qp)
        goto out_close;
    uint32_t psn = new_psn();
    struct rdma_ep me, rem;
    my_ep(r, ch->qp, psn, &me);
    uint8_t epb[KV_XFER_RDMA_EP_LEN], repb[KV_XFER_RDMA_EP_LEN];
    ep_encode(&me, epb);
    struct kv_xfer_frame req = {.op = KV_XFER_OP_RDMA_CONNECT,
                                .req_id = 1,
                                .length = KV_XFER_RDMA_EP_LEN},
                         resp;
    rc = kv_xfer_tcp_call(r->x, ch->fd, &req, epb, &resp, repb, sizeof(repb));
    if (rc == KV_OK && resp.status != KV_OK)
        rc = resp.status;
    if (rc == KV_OK && (resp.length != KV_XFER_RDMA_EP_LEN || ep_decode(repb, &rem) < 0))
        rc = KV_EPROTO;
    if (rc == KV_OK)
        rc = connect_qp(r, ch->qp, psn, &rem);
    if (rc < 0) {
        KV_LOGW("xfer: RDMA connection to %s:%u failed: %s", host, port, kv_strerror(rc));
        goto out_close;
    }
    if (pthread_create(&ch->thr, NULL, chan_main, ch) != 0) {
        rc = KV_ENOMEM;
        goto out_close;
    }
    ch->thr_started = true;
    *out = ch;
    return KV_OK;
out_close:
    kv_xfer_rdma_chan_close(ch);
    return rc;
}

void kv_xfer_rdma_post(struct xfer_rdma_chan *ch, struct xfer_piece *p, uint64_t raddr,
                       uint32_t rkey)
{
    struct rdma_wr *w = kv_calloc(1, sizeof(*w));
    if (!w) {
        kv_xfer_piece_done(p, KV_ENOMEM);
        return;
    }
    w->p = p;
    w->mr = ibv_reg_mr(ch->r->pd, p->local, (size_t)p->len, IBV_ACCESS_LOCAL_WRITE);
    if (!w->mr) {
        kv_free(w);
        kv_xfer_piece_done(p, KV_ENOMEM);
        return;
    }
    pthread_mutex_lock(&ch->lock);
    while (ch->inflight >= CHAN_DEPTH && !ch->failed)
        pthread_cond_wait(&ch->cond, &ch->lock);
    if (ch->failed) {
        pthread_mutex_unlock(&ch->lock);
        ibv_dereg_mr(w->mr);
        kv_free(w);
        kv_xfer_piece_done(p, KV_EXFER_PEER);
        return;
    }
    ch->inflight++;
    pthread_mutex_unlock(&ch->lock);
    struct ibv_sge sge = {
        .addr = (uintptr_t)p->local, .length = (uint32_t)p->len, .lkey = w->mr->lkey};
    struct ibv_send_wr wr = {
        .wr_id = (uintptr_t)w,
        .sg_list = &sge,
        .num_sge = 1,
        .opcode = p->op == KV_XFER_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ,
        .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = {.remote_addr = raddr, .rkey = rkey},
    };
    struct ibv_send_wr *bad = NULL;
    if (ibv_post_send(ch->qp, &wr, &bad) != 0)
        wr_done(ch, w, KV_EXFER_PEER);
}

#else /* !KV_HAVE_RDMA */

int kv_xfer_rdma_probe(char *dev, size_t devlen)
{
    (void)dev;
    (void)devlen;
    return KV_ENOTBUILT;
}

int kv_xfer_rdma_open(struct kv_xfer *x, struct xfer_rdma **out, char *dev, size_t devlen,
                      char *gid, size_t gidlen)
{
    (void)x;
    (void)out;
    (void)dev;
    (void)devlen;
    (void)gid;
    (void)gidlen;
    return KV_ENOTBUILT;
}

void kv_xfer_rdma_close(struct xfer_rdma *r)
{
    (void)r;
}

int kv_xfer_rdma_reg(struct xfer_rdma *r, void *addr, size_t len, void **mr, uint32_t *rkey)
{
    (void)r;
    (void)addr;
    (void)len;
    (void)mr;
    (void)rkey;
    return KV_ENOTBUILT;
}

void kv_xfer_rdma_dereg(void *mr)
{
    (void)mr;
}

int kv_xfer_rdma_accept(struct xfer_rdma *r, const uint8_t in[KV_XFER_RDMA_EP_LEN],
                        uint8_t out[KV_XFER_RDMA_EP_LEN], void **qp)
{
    (void)r;
    (void)in;
    (void)out;
    (void)qp;
    return KV_EXFER_NOTRANSPORT;
}

void kv_xfer_rdma_drop(void *qp)
{
    (void)qp;
}

int kv_xfer_rdma_connect(struct xfer_rdma *r, const char *host, uint16_t port,
                         struct xfer_rdma_chan **out)
{
    (void)r;
    (void)host;
    (void)port;
    (void)out;
    return KV_ENOTBUILT;
}

void kv_xfer_rdma_chan_close(struct xfer_rdma_chan *c)
{
    (void)c;
}

void kv_xfer_rdma_post(struct xfer_rdma_chan *c, struct xfer_piece *p, uint64_t raddr,
                       uint32_t rkey)
{
    (void)c;
    (void)raddr;
    (void)rkey;
    kv_xfer_piece_done(p, KV_ENOTBUILT);
}

#endif
