/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_tcp.c - the TCP transport: a server that exposes this engine's segments and a client
 * (initiator) with a connection pool per peer. Wire format: xfer_frame.c and
 * docs/design/xfer.md.
 *
 * Thread model
 *   server: a fixed set of I/O threads (srv_nthreads(): half the online CPUs, 4..8, and why
 *     there; never one per connection), each a level-triggered epoll loop owning its
 *     connections, whose sockets are non-blocking. io[0] also owns the listener: it accepts and
 *     hands each connection to the thread with the fewest, through that thread's inbox
 *     (io->inbox_lock, leaf) and eventfd. A connection is then touched by its thread only, so
 *     its state needs no lock. Requests of one connection are served in order; a connection
 *     moves at most SRV_BUDGET bytes per wake-up before the others of its thread get a turn.
 *     Stop: set s->stop, wake every loop; each closes its connections and returns; join; the
 *     stopper frees what was still queued in the inboxes, then closes the listener.
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
 *     a rejected WRITE's payload is drained into a per-thread scratch buffer (frames are
 *     <= 64 MiB). An accepted WRITE's payload is received straight into segment memory, a
 *     READ's answer sent straight from it (sendmsg of header + segment bytes), in as many
 *     partial calls as the socket takes; the segment's use ref (c->seg) is held from the
 *     header's check until the response is out, so kv_xfer_unregister() waits for it.
 *  5. Server deadlines: HELLO must be read within timeout_ms of the accept (the token within
 *     timeout_ms of its header) and answered; a frame, from the first byte of its header to
 *     the last byte of its response, must be over within timeout_ms; a connection waiting for
 *     the first byte of a header has no deadline. Every deadline has the same length and is
 *     armed in time order, so each loop keeps them in one list, earliest first (io->thead);
 *     a connection past its deadline is closed, which never waits on the others.
 *
 * Server connection states (conn_run; any state -> closed on EOF, socket error, malformed
 * frame, deadline or stop):
 *
 *   accept -> HELLO_HDR --on_hello_hdr--> HELLO_TOKEN --on_hello_token--> SEND
 *   SEND --on_sent--> HDR                 (or closed after a refused HELLO)
 *   HDR --on_request: READ--------------------------------------------> SEND (hdr + bytes)
 *   HDR --on_request: WRITE ok--> WRITE_DATA --on_received (the ack)--> SEND
 *   HDR --on_request: WRITE rejected--> DRAIN --payload discarded-----> SEND (status)
 *   HDR --on_request: RDMA_CONNECT--> RDMA_EP --on_rdma_ep------------> SEND (+ endpoint)
 *
 * RDMA_CONNECT (built with libibverbs only) creates the queue pair on the I/O thread: local
 * verbs calls that do not wait on the network but do block that thread's other connections
 * briefly, once per RDMA target opened.
 *
 * Peers are kept (idle) until kv_xfer_tcp_gc() or client destroy; both run on API threads,
 * never on a receiver, since tearing a peer down joins its receivers.
 */
#define KV_LOG_COMPONENT "xfer"
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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
#define MAX_SERVER_CONNS 65536 /* ~0.5 KiB and one descriptor each; no thread */
#define SRV_MIN_IO 4           /* server I/O threads at least (srv_nthreads) */
#define SRV_MAX_IO 8           /* and at most */
#define SRV_BACKLOG 1024
#define SRV_BUDGET (8u << 20) /* bytes one connection moves per wake-up before the next runs */
#define SRV_LOWAT_MIN                                                                              \
    (128u << 10)                 /* WRITE payload left below which SO_RCVLOWAT is not worth it     \
                                  */
#define SRV_LOWAT_MAX (1u << 20) /* well under half the receive buffer (the kernel's cap) */

/* ------------------------------------------------------------------ socket helpers */

static void tune_buffers(int fd)
{
    int one = 1, buf = SOCK_BUF;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

/* Initiator sockets are blocking, with slices so that waits notice shutdown and deadlines. */
static void tune_socket(int fd)
{
    tune_buffers(fd);
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

/* States of a server connection (the diagram is in the design block at the top). */
enum srv_state {
    SRV_HELLO_HDR,   /* reading the HELLO header; deadline: accept + timeout */
    SRV_HELLO_TOKEN, /* reading its token; deadline renewed when the header is in */
    SRV_HDR,         /* reading a request header; idle (no deadline) until its first byte */
    SRV_WRITE_DATA,  /* receiving a WRITE payload straight into segment memory */
    SRV_DRAIN,       /* discarding a rejected WRITE's payload */
    SRV_RDMA_EP,     /* reading RDMA_CONNECT's endpoint */
    SRV_SEND,        /* sending a response: header [+ endpoint | + segment bytes] */
};

struct srv_io;

/* One accepted connection. Owned by one I/O thread; nothing else touches it once adopted. */
struct srv_conn {
    struct srv_conn *next, *prev;   /* io->conns, or the inbox (next only) before adoption */
    struct srv_conn *tnext, *tprev; /* io->thead..ttail while a deadline runs */
    struct srv_io *io;
    int fd;
    enum srv_state st;
    bool timed;       /* on the deadline list */
    bool close_after; /* HELLO refused: close once the response is sent */
    uint32_t events;  /* current epoll interest */
    int status;       /* a WRITE's answer, known before its payload is in */
    int lowat;        /* SO_RCVLOWAT now set on fd (1: the default) */
    int64_t deadline_ms;
    struct kv_xfer_frame f; /* the request being served */
    struct xfer_seg *seg;   /* use ref while a request reads or writes segment memory */
    uint8_t *rx;            /* receiving states: where bytes go, how many, how many are in */
    size_t rx_len, rx_got;
    uint64_t drain_left;
    struct iovec iov[2]; /* SRV_SEND: what is left to send (iov_i first unsent) */
    int iov_i, iovcnt;
    void *qp; /* RDMA queue pair set up over this connection (dropped with it) */
    uint8_t in[KV_XFER_MAX_TOKEN]; /* header, token or endpoint being read */
    uint8_t out[KV_XFER_HDR_LEN + KV_XFER_RDMA_EP_LEN];
    char peer[INET6_ADDRSTRLEN];
};

/* One server I/O thread: an epoll loop owning its connections. */
struct srv_io {
    struct xfer_tcp_server *s;
    int idx;
    pthread_t thr;
    bool started;
    int epfd;
    int evfd;                   /* eventfd: stop, or connections waiting in the inbox */
    _Atomic int nconns;         /* connections owned or queued (read by the acceptor to balance) */
    pthread_mutex_t inbox_lock; /* guards inbox (leaf; taken by the acceptor and this loop) */
    struct srv_conn *inbox;     /* accepted by io[0], not adopted yet */
    /* touched by this loop only */
    struct srv_conn *conns;         /* every adopted connection */
    struct srv_conn *thead, *ttail; /* connections with a deadline, earliest first */
    bool accept_paused;             /* io[0]: listener out of epoll after EMFILE & co. */
    int64_t accept_resume_ms;
    uint8_t scratch[16384]; /* rejected WRITE payloads are drained here */
};

struct xfer_tcp_server {
    struct kv_xfer *x;
    int lfd;
    int timeout_ms;
    _Atomic bool stop;
    _Atomic int nconns; /* across all I/O threads (MAX_SERVER_CONNS) */
    int nio;
    struct srv_io *io; /* nio I/O threads; io[0] also accepts */
};

/* Deadlines all have the same length (timeout_ms) and are armed in time order, so appending
 * keeps the list sorted: the head is always the next to expire. */
static void timer_disarm(struct srv_conn *c)
{
    struct srv_io *io = c->io;
    if (!c->timed)
        return;
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        io->thead = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        io->ttail = c->tprev;
    c->tnext = c->tprev = NULL;
    c->timed = false;
}

static void timer_arm(struct srv_conn *c)
{
    struct srv_io *io = c->io;
    timer_disarm(c);
    c->deadline_ms = kv_now_ms() + io->s->timeout_ms;
    c->tprev = io->ttail;
    if (io->ttail)
        io->ttail->tnext = c;
    else
        io->thead = c;
    io->ttail = c;
    c->timed = true;
}

static void conn_close(struct srv_conn *c, int rc)
{
    struct srv_io *io = c->io;
    timer_disarm(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        io->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    kv_xfer_seg_put(io->s->x, c->seg);
    if (c->qp)
        kv_xfer_rdma_drop(c->qp);
    if (rc != KV_ECONNRESET && rc != KV_ESHUTDOWN && rc != KV_EPERM && rc != KV_EPROTO)
        KV_LOGD("xfer connection from %s closed: %s", c->peer, kv_strerror(rc));
    close(c->fd);
    kv_free(c);
    atomic_fetch_sub_explicit(&io->nconns, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&io->s->nconns, 1, memory_order_relaxed);
}

static void expect(struct srv_conn *c, enum srv_state st, void *buf, size_t len)
{
    c->st = st;
    c->rx = buf;
    c->rx_len = len;
    c->rx_got = 0;
}

/* Queues the response to c->f: status, and plen bytes of payload from p (segment memory or
 * c->out's endpoint), sent by SRV_SEND without copying p. */
static void respond(struct srv_conn *c, int status, const void *p, size_t plen)
{
    struct kv_xfer_frame r = {.op = c->f.op,
                              .flags = KV_XFER_F_RESP,
                              .status = status,
                              .req_id = c->f.req_id,
                              .seg_id = c->f.seg_id,
                              .offset = c->f.offset,
                              .length = plen};
    kv_xfer_frame_encode(&r, c->out);
    c->iov[0] = (struct iovec){.iov_base = c->out, .iov_len = KV_XFER_HDR_LEN};
    c->iov[1] = (struct iovec){.iov_base = (void *)p, .iov_len = plen};
    c->iov_i = 0;
    c->iovcnt = plen ? 2 : 1;
    c->st = SRV_SEND;
}

/* The HELLO header is in: check it, then read the token (renewing the deadline, as the
 * blocking server did for each of the two reads). */
static int on_hello_hdr(struct srv_conn *c)
{
    if (kv_xfer_frame_decode(c->in, KV_XFER_HDR_LEN, &c->f) < 0 || c->f.op != KV_XFER_OP_HELLO ||
        (c->f.flags & KV_XFER_F_RESP)) {
        KV_LOGW_RL(5000, "xfer connection from %s: first frame is not a valid HELLO", c->peer);
        return KV_EPROTO;
    }
    timer_arm(c);
    expect(c, SRV_HELLO_TOKEN, c->in, (size_t)c->f.length);
    return KV_OK;
}

static void on_hello_token(struct srv_conn *c)
{
    const char *want = kv_xfer_token(c->io->s->x);
    size_t wl = want ? strlen(want) : 0;
    int status = KV_OK;
    if (want && (wl != c->f.length || sodium_memcmp(c->in, want, wl) != 0)) {
        KV_LOGW_RL(5000, "rejected xfer connection from %s: %s token", c->peer,
                   c->f.length ? "wrong" : "missing");
        status = KV_EPERM;
        c->close_after = true;
    }
    respond(c, status, NULL, 0);
}

/* A request header is in. Invariant 4: the segment id and the bounds are checked here,
 * before any payload byte is read or written. */
static int on_request(struct srv_conn *c)
{
    struct kv_xfer_frame *f = &c->f;
    if (kv_xfer_frame_decode(c->in, KV_XFER_HDR_LEN, f) < 0 || (f->flags & KV_XFER_F_RESP) ||
        f->op == KV_XFER_OP_HELLO) {
        KV_LOGW_RL(5000, "xfer connection from %s: malformed frame; closing", c->peer);
        return KV_EPROTO;
    }
    if (f->op == KV_XFER_OP_RDMA_CONNECT) {
        expect(c, SRV_RDMA_EP, c->in, KV_XFER_RDMA_EP_LEN);
        return KV_OK;
    }
    void *addr = NULL;
    size_t size = 0;
    struct xfer_seg *seg = kv_xfer_seg_get(c->io->s->x, f->seg_id, &addr, &size);
    int status = KV_OK;
    if (!seg)
        status = KV_EXFER_NOSEG;
    else if (!kv_xfer_in_bounds(f->offset, f->length, size))
        status = KV_EXFER_BOUNDS;
    if (status != KV_OK) {
        KV_LOGD("xfer request from %s rejected: %s", c->peer, kv_strerror(status));
        kv_xfer_seg_put(c->io->s->x, seg);
        seg = NULL;
    }
    c->seg = seg; /* released when the response is sent or the connection closes */
    uint8_t *mem = seg ? (uint8_t *)addr + f->offset : NULL;
    if (f->op == KV_XFER_OP_READ) {
        respond(c, status, mem, seg ? (size_t)f->length : 0);
    } else if (seg) {
        c->status = KV_OK;
        expect(c, SRV_WRITE_DATA, mem, (size_t)f->length);
    } else {
        c->status = status;
        c->drain_left = f->length;
        c->st = SRV_DRAIN;
    }
    return KV_OK;
}

/* RDMA_CONNECT: hand the initiator's endpoint to the RDMA transport, answer with ours. The
 * verbs calls (create a CQ and a QP, move it to RTS) run on this I/O thread: they do not wait
 * for the network, but they do enter the driver, so the other connections of this thread wait
 * that long (once per RDMA target opened, not per request). */
static void on_rdma_ep(struct srv_conn *c)
{
    uint8_t ep[KV_XFER_RDMA_EP_LEN];
    int status = KV_EBUSY; /* one QP per connection */
    if (!c->qp) {
        struct xfer_rdma *r = kv_xfer_rdma_ctx(c->io->s->x);
        status = r ? kv_xfer_rdma_accept(r, c->in, ep, &c->qp) : KV_EXFER_NOTRANSPORT;
    }
    if (status == KV_OK)
        memcpy(c->out + KV_XFER_HDR_LEN, ep, sizeof(ep));
    respond(c, status, c->out + KV_XFER_HDR_LEN, status == KV_OK ? KV_XFER_RDMA_EP_LEN : 0);
}

/* Every byte a receiving state waited for is in: move to the next state. */
static int on_received(struct srv_conn *c)
{
    switch (c->st) {
    case SRV_HELLO_HDR:
        return on_hello_hdr(c);
    case SRV_HELLO_TOKEN:
        on_hello_token(c);
        return KV_OK;
    case SRV_HDR:
        return on_request(c);
    case SRV_WRITE_DATA:
        respond(c, c->status, NULL, 0); /* the ack: every byte is in segment memory */
        return KV_OK;
    case SRV_RDMA_EP:
        on_rdma_ep(c);
        return KV_OK;
    default:
        assert(!"on_received in a sending state");
        return KV_EPROTO;
    }
}

/* The response is out: the frame is over; wait (without deadline) for the next header. */
static int on_sent(struct srv_conn *c)
{
    kv_xfer_seg_put(c->io->s->x, c->seg);
    c->seg = NULL;
    if (c->close_after)
        return KV_EPERM;
    timer_disarm(c);
    expect(c, SRV_HDR, c->in, KV_XFER_HDR_LEN);
    return KV_OK;
}

/* Wakes the loop for c's socket only once n bytes (capped) are in, so that a large WRITE
 * payload arriving in many segments costs a few wake-ups instead of one per segment; 1 (the
 * default) below SRV_LOWAT_MIN. The kernel still reports EOF and errors at once. */
static void lowat_set(struct srv_conn *c, size_t n)
{
    n = n < SRV_LOWAT_MIN ? 1 : KV_MIN(n, SRV_LOWAT_MAX);
    if ((int)n == c->lowat)
        return;
    int v = (int)n;
    if (setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof(v)) == 0)
        c->lowat = v;
}

static int sock_err(int e)
{
    return e == EPIPE || e == ECONNRESET ? KV_ECONNRESET : kv_err_from_errno(e);
}

/* Moves c's state machine as far as its socket allows, or until it has moved SRV_BUDGET bytes
 * (fairness: the epoll loop is level-triggered, so it comes back). KV_OK to keep c (waiting
 * for the socket or out of budget); an error to close it. */
static int conn_run(struct srv_conn *c)
{
    size_t moved = 0;
    while (moved < SRV_BUDGET) {
        if (c->st == SRV_SEND) {
            struct msghdr mh = {.msg_iov = c->iov + c->iov_i,
                                .msg_iovlen = (size_t)(c->iovcnt - c->iov_i)};
            ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return errno == EAGAIN || errno == EWOULDBLOCK ? KV_OK : sock_err(errno);
            }
            moved += (size_t)w;
            size_t left = (size_t)w;
            while (c->iov_i < c->iovcnt && left >= c->iov[c->iov_i].iov_len)
                left -= c->iov[c->iov_i++].iov_len;
            if (c->iov_i < c->iovcnt) {
                c->iov[c->iov_i].iov_base = (uint8_t *)c->iov[c->iov_i].iov_base + left;
                c->iov[c->iov_i].iov_len -= left;
                return KV_OK; /* the send buffer is full: wait for EPOLLOUT */
            }
            int rc = on_sent(c);
            if (rc < 0)
                return rc;
            continue;
        }
        uint8_t *dst;
        size_t want;
        if (c->st == SRV_DRAIN) {
            dst = c->io->scratch;
            want = (size_t)KV_MIN(c->drain_left, sizeof(c->io->scratch));
        } else {
            dst = c->rx + c->rx_got;
            want = c->rx_len - c->rx_got;
        }
        ssize_t r = want ? recv(c->fd, dst, want, 0) : 0;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? KV_OK : sock_err(errno);
        }
        if (r == 0 && want)
            return KV_ECONNRESET;
        moved += (size_t)r;
        bool drained = (size_t)r < want; /* the socket had no more: back to epoll */
        if (c->st == SRV_DRAIN) {
            c->drain_left -= (uint64_t)r;
            if (c->drain_left == 0)
                respond(c, c->status, NULL, 0);
            else if (drained)
                return KV_OK;
            continue;
        }
        if (c->st == SRV_HDR && c->rx_got == 0)
            timer_arm(c); /* a frame started: it must be over within timeout_ms */
        c->rx_got += (size_t)r;
        if (c->rx_got < c->rx_len) {
            if (!drained)
                continue;
            if (c->st == SRV_WRITE_DATA)
                lowat_set(c, c->rx_len - c->rx_got);
            return KV_OK;
        }
        if (c->st == SRV_WRITE_DATA)
            lowat_set(c, 1);
        int rc = on_received(c);
        if (rc < 0)
            return rc;
    }
    return KV_OK;
}

/* Runs c and points its epoll interest at what its state waits for. */
static void conn_service(struct srv_conn *c)
{
    int rc = conn_run(c);
    if (rc < 0) {
        conn_close(c, rc);
        return;
    }
    uint32_t want = c->st == SRV_SEND ? EPOLLOUT : EPOLLIN;
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        if (epoll_ctl(c->io->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
            conn_close(c, kv_err_from_errno(errno));
            return;
        }
        c->events = want;
    }
}

/* Makes c one of io's connections (on io's thread). */
static void conn_adopt(struct srv_io *io, struct srv_conn *c)
{
    c->io = io;
    c->prev = NULL;
    c->next = io->conns;
    if (io->conns)
        io->conns->prev = c;
    io->conns = c;
    expect(c, SRV_HELLO_HDR, c->in, KV_XFER_HDR_LEN);
    timer_arm(c); /* HELLO must be over within timeout_ms of the accept */
    c->events = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(io->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        KV_LOGW_RL(5000, "xfer: epoll_ctl: %s", strerror(errno));
        conn_close(c, KV_ESHUTDOWN);
    }
}

static void io_wake(struct srv_io *io)
{
    uint64_t one = 1;
    ssize_t w = write(io->evfd, &one, sizeof(one));
    (void)w; /* the counter cannot overflow in practice; a full one is awake anyway */
}

static void io_adopt_inbox(struct srv_io *io)
{
    uint64_t n;
    ssize_t r = read(io->evfd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&io->inbox_lock);
    struct srv_conn *list = io->inbox;
    io->inbox = NULL;
    pthread_mutex_unlock(&io->inbox_lock);
    while (list) {
        struct srv_conn *c = list;
        list = c->next;
        conn_adopt(io, c);
    }
}

/* Frees connections that were never adopted (stop; single-threaded by then). */
static void io_free_inbox(struct srv_io *io)
{
    while (io->inbox) {
        struct srv_conn *c = io->inbox;
        io->inbox = c->next;
        close(c->fd);
        kv_free(c);
        atomic_fetch_sub_explicit(&io->s->nconns, 1, memory_order_relaxed);
    }
}

static void accept_pause(struct srv_io *io, bool pause)
{
    struct xfer_tcp_server *s = io->s;
    if (pause) {
        epoll_ctl(io->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
        io->accept_resume_ms = kv_now_ms() + 100;
    } else {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
        epoll_ctl(io->epfd, EPOLL_CTL_ADD, s->lfd, &ev);
    }
    io->accept_paused = pause;
}

/* io[0]: accepts what the listener holds (a bounded number per wake-up) and hands each
 * connection to the I/O thread with the fewest. */
static void srv_accept(struct srv_io *io)
{
    struct xfer_tcp_server *s = io->s;
    for (int k = 0; k < 64; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays in the backlog
             * and would wake us at once again; stop listening for 100 ms */
            KV_LOGW_RL(5000, "xfer accept: %s", strerror(errno));
            accept_pause(io, true);
            return;
        }
        if (atomic_load_explicit(&s->nconns, memory_order_relaxed) >= MAX_SERVER_CONNS) {
            KV_LOGW_RL(5000, "xfer: %d connections already; refusing another", MAX_SERVER_CONNS);
            close(fd);
            continue;
        }
        struct srv_conn *c = kv_calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        tune_buffers(fd);
        c->fd = fd;
        c->lowat = 1;
        snprintf(c->peer, sizeof(c->peer), "?");
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->peer, sizeof(c->peer));
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->peer, sizeof(c->peer));
        struct srv_io *to = &s->io[0];
        for (int i = 1; i < s->nio; i++)
            if (atomic_load_explicit(&s->io[i].nconns, memory_order_relaxed) <
                atomic_load_explicit(&to->nconns, memory_order_relaxed))
                to = &s->io[i];
        atomic_fetch_add_explicit(&s->nconns, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&to->nconns, 1, memory_order_relaxed);
        if (to == io) {
            conn_adopt(io, c);
            continue;
        }
        pthread_mutex_lock(&to->inbox_lock);
        c->next = to->inbox;
        to->inbox = c;
        pthread_mutex_unlock(&to->inbox_lock);
        io_wake(to);
    }
}

static void *srv_io_main(void *arg)
{
    struct srv_io *io = arg;
    struct xfer_tcp_server *s = io->s;
    char name[16];
    snprintf(name, sizeof(name), "xfer-srv%d", io->idx);
    kv_log_set_thread_name(name);
    struct epoll_event evs[64];
    while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
        int64_t now = kv_now_ms();
        int64_t wait = -1;
        if (io->thead)
            wait = KV_MAX(io->thead->deadline_ms - now + 1, 0);
        if (io->accept_paused)
            wait = wait < 0 ? KV_MAX(io->accept_resume_ms - now, 0)
                            : KV_MIN(wait, KV_MAX(io->accept_resume_ms - now, 0));
        int n = epoll_wait(io->epfd, evs, 64, (int)KV_MIN(wait, 60000));
        if (n < 0) {
            if (errno != EINTR)
                KV_LOGW_RL(5000, "xfer: epoll_wait: %s", strerror(errno));
            n = 0;
        }
        /* a connection closed below can only be the one whose event is being handled, so
         * later events of this batch never point at a freed connection */
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == io)
                io_adopt_inbox(io);
            else if (evs[i].data.ptr == s)
                srv_accept(io);
            else
                conn_service(evs[i].data.ptr);
        }
        now = kv_now_ms();
        while (io->thead && io->thead->deadline_ms <= now) {
            KV_LOGW_RL(5000, "xfer connection from %s: a frame was not over within %d ms; closing",
                       io->thead->peer, s->timeout_ms);
            conn_close(io->thead, KV_ETIMEDOUT);
        }
        if (io->accept_paused && now >= io->accept_resume_ms)
            accept_pause(io, false);
    }
    /* stop: every connection of this thread goes (its inbox is freed by the stopper) */
    while (io->conns)
        conn_close(io->conns, KV_ESHUTDOWN);
    return NULL;
}

/* Server I/O threads: half the online CPUs, clamped to SRV_MIN_IO..SRV_MAX_IO, whatever the
 * number of connections. The floor is the initiator's default connections per peer (4): a
 * request is cut into 1 MiB pieces striped over those connections, and the acceptor spreads
 * connections evenly, so one peer's stripes are copied in parallel, as they were with a thread
 * per connection (measured on loopback: 2 threads gave 1.9-2.1 GB/s on 1 MiB writes where 4
 * gave 2.9-3.1, at the same CPU time per byte). The ceiling: the work per byte is one kernel
 * copy (socket <-> segment), so more threads than half the cores would only take CPU from the
 * initiators and the application on the same host. */
static int srv_nthreads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN) / 2;
    return (int)KV_MIN(KV_MAX(n, SRV_MIN_IO), SRV_MAX_IO);
}

int kv_xfer_tcp_server_start(struct kv_xfer *x, const char *host, uint16_t port,
                             struct xfer_tcp_server **out, uint16_t *bound_port)
{
    struct xfer_tcp_server *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->x = x;
    s->timeout_ms = kv_xfer_timeout_ms(x);
    s->nio = srv_nthreads();
    s->lfd = -1;
    int rc = KV_ENOMEM;
    s->io = kv_calloc((size_t)s->nio, sizeof(*s->io));
    if (!s->io)
        goto out_free;
    for (int i = 0; i < s->nio; i++) {
        struct srv_io *io = &s->io[i];
        io->s = s;
        io->idx = i;
        io->epfd = io->evfd = -1;
        pthread_mutex_init(&io->inbox_lock, NULL);
    }
    for (int i = 0; i < s->nio; i++) {
        struct srv_io *io = &s->io[i];
        io->epfd = epoll_create1(EPOLL_CLOEXEC);
        io->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = io};
        if (io->epfd < 0 || io->evfd < 0 || epoll_ctl(io->epfd, EPOLL_CTL_ADD, io->evfd, &ev) < 0) {
            rc = kv_err_from_errno(errno);
            KV_LOGE("xfer: cannot set up a server event loop: %s", strerror(errno));
            goto out_stop;
        }
    }
    rc = kv_net_listen_tcp(host, port, SRV_BACKLOG, &s->lfd, bound_port);
    if (rc < 0) {
        KV_LOGE("xfer: cannot listen on %s:%u: %s", host, port, kv_strerror(rc));
        goto out_stop;
    }
    rc = kv_net_set_nonblock(s->lfd, 1);
    if (rc < 0)
        goto out_stop;
    accept_pause(&s->io[0], false);
    for (int i = 0; i < s->nio; i++) {
        if (pthread_create(&s->io[i].thr, NULL, srv_io_main, &s->io[i]) != 0) {
            rc = KV_ENOMEM;
            goto out_stop;
        }
        s->io[i].started = true;
    }
    *out = s;
    return KV_OK;
out_stop:
    kv_xfer_tcp_server_stop(s);
    return rc;
out_free:
    kv_free(s);
    return rc;
}

void kv_xfer_tcp_server_stop(struct xfer_tcp_server *s)
{
    if (!s)
        return;
    atomic_store_explicit(&s->stop, true, memory_order_release);
    for (int i = 0; i < s->nio; i++)
        if (s->io[i].started)
            io_wake(&s->io[i]);
    for (int i = 0; i < s->nio; i++)
        if (s->io[i].started)
            pthread_join(s->io[i].thr, NULL);
    /* the threads are gone: what the acceptor queued after a thread's last look is ours */
    for (int i = 0; i < s->nio; i++) {
        struct srv_io *io = &s->io[i];
        io_free_inbox(io);
        if (io->epfd >= 0)
            close(io->epfd);
        if (io->evfd >= 0)
            close(io->evfd);
        pthread_mutex_destroy(&io->inbox_lock);
    }
    if (s->lfd >= 0)
        close(s->lfd);
    kv_free(s->io);
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
