/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gateway.c - the gateway object: the UDP receive thread, the counters, and the snapshot API
 * (see gateway.h; the store, log and HTTP API live in gw_store.c, gw_log.c, gw_http.c).
 *
 * Receive path (one thread, "gw-udp"), two implementations chosen at start (opts udp_io, see
 * choose_udp_io; one INFO line names the one running):
 *   recvmmsg (udp_loop_recvmmsg): poll(udp socket, stop eventfd) -> recvmmsg of up to
 *     GW_BATCH_MAX datagrams (fewer if max_datagram is large) without blocking;
 *   io_uring (udp_loop_uring, see its design note below): a multishot receive into a ring of
 *     provided buffers, completions reaped in rounds.
 * Then, for both (handle_batch): decode each datagram outside any lock (a pure function) -> take
 * the lock once for the whole batch to count and apply the states -> format JSONL lines for the
 * valid ones and hand them to the log writer (which never blocks us: a full buffer drops lines
 * and counts them). Under load (a round of at least GW_COALESCE_MIN), the thread sleeps 0.2-5 ms
 * (sized from the arrival rate, see coalesce_ns) before the next round instead of waiting for
 * the socket, so batches fill up and the wake-ups per state drop. Every GW_SWEEP_MS, engines
 * silent past remove_after_ms are swept.
 *
 * Unicast vs broadcast: IP_PKTINFO gives each datagram's destination address; it is broadcast
 * when it is 255.255.255.255 or the broadcast address of a local interface (read with
 * getifaddrs at start: for each IPv4 address, addr | ~netmask; e.g. 127.255.255.255 on lo).
 *
 * Invariants: total_received == valid_states + invalid_states == unicast + broadcast (each
 * datagram is counted once, in one batch, under the lock); valid_states counts states applied
 * to the store; reordered states are invalid (reason "reordered").
 *
 * Threads: the receive thread alone uses the UDP socket, g->rxmem and g->uring (its io_uring is
 * SINGLE_ISSUER: only that thread may enter it); g->udp_io_uring is atomic (read by tests).
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
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/gw_int.h"

#ifdef KV_HAVE_URING
#include <liburing.h>
#endif

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

/* The receive thread's recvmmsg buffers, allocated by kv_gateway_start (so a shortage fails the
 * start instead of leaving a gateway that silently receives nothing). Allocated on the io_uring
 * path too: the thread falls back to recvmmsg if the kernel refuses io_uring after all. */
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

/* The broadcast flag from a datagram's control messages (IP_PKTINFO's destination address). */
static bool cmsg_bcast(const struct kv_gateway *g, struct cmsghdr *cm)
{
    if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
        struct in_pktinfo pi;
        memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
        return is_broadcast(g, pi.ipi_addr.s_addr);
    }
    return false;
}

/* Decodes, counts, applies and logs n received datagrams: pay[i] (iov_len = the datagram's real
 * length), trunc[i] set when it did not fit its buffer; rx[i].bcast already set. */
static void handle_batch(struct kv_gateway *g, struct rx *rx, const struct iovec *pay,
                         const bool *trunc, size_t n, struct kv_buf *lines)
{
    int64_t now = kv_now_ms(), wall = kv_wall_ms();
    for (size_t i = 0; i < n; i++) {
        size_t len = pay[i].iov_len;
        if (trunc[i] || len > g->o.max_datagram)
            rx[i].r = KV_GW_OVERSIZE;
        else
            rx[i].r = kv_gateway_decode(pay[i].iov_base, len, g->o.max_datagram, &rx[i].st);
    }
    apply_batch(g, rx, n, now, wall, true);
    if (g->log) {
        uint32_t nl = 0;
        kv_buf_reset(lines);
        for (size_t i = 0; i < n; i++) {
            if (rx[i].r != KV_GW_VALID)
                continue;
            nl += log_line(lines, pay[i].iov_base, pay[i].iov_len, wall);
        }
        if (nl)
            gw_log_append(g->log, lines->data, lines->len, nl);
    }
}

/* Coalescing: after a receive round of n datagrams (batch the most one round takes), how long
 * to sleep before the next one, in ns (0: go back to waiting). *last_ns is when the previous
 * round of this busy spell ended (0 = idle). Under load, a batch builds up instead of a wake-up
 * per few datagrams (a wake-up costs more than a state here): sleep until about 3/4 of a batch
 * has arrived at the current rate, within [MIN_US, MAX_US] and never longer than half the
 * receive buffer takes to fill. */
static int64_t coalesce_ns(const struct kv_gateway *g, size_t n, size_t batch, int64_t *last_ns)
{
    int64_t tn = kv_now_ns();
    if (n < GW_COALESCE_MIN) {
        *last_ns = 0;
        return 0;
    }
    double want = 0;
    if (n < batch) {
        double gap = *last_ns ? (double)(tn - *last_ns) : 1e6;
        double rate = (double)n / (gap > 1e3 ? gap : 1e3); /* per ns */
        want = 0.75 * (double)batch / rate;
        double cap = 0.5 * (double)g->rcvbuf_bytes / GW_TRUESIZE_EST / rate;
        if (want > cap)
            want = cap;
        if (want > GW_COALESCE_MAX_US * 1e3)
            want = GW_COALESCE_MAX_US * 1e3;
        if (want < GW_COALESCE_MIN_US * 1e3)
            want = GW_COALESCE_MIN_US * 1e3;
    }
    *last_ns = tn;
    return (int64_t)want;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    nanosleep(&ts, NULL);
}

/* The recvmmsg receive loop: poll(socket, stop eventfd) -> recvmmsg rounds until the socket is
 * drained (with coalescing sleeps between rounds under load). */
static void udp_loop_recvmmsg(struct kv_gateway *g, struct kv_buf *lines)
{
    struct gw_rxmem *m = g->rxmem;
    const int GW_BATCH = m->batch;
    size_t bufsz = m->bufsz;
    char *bufs = m->bufs;
    struct mmsghdr *msgs = m->msgs;
    struct iovec *iov = m->iov;
    char(*ctl)[64] = m->ctl;
    struct rx *rx = m->rx;
    bool trunc[GW_BATCH_MAX];
    struct iovec pay[GW_BATCH_MAX];
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
                for (int i = 0; i < n; i++) {
                    pay[i].iov_base = iov[i].iov_base;
                    pay[i].iov_len = msgs[i].msg_len;
                    trunc[i] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
                    rx[i].bcast = false;
                    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
                         cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm))
                        rx[i].bcast |= cmsg_bcast(g, cm);
                }
                handle_batch(g, rx, pay, trunc, (size_t)n, lines);
                int64_t now = kv_now_ms();
                if (now - last_sweep >= GW_SWEEP_MS) {
                    sweep(g, now);
                    last_sweep = now;
                }
                int64_t ns = coalesce_ns(g, (size_t)n, (size_t)GW_BATCH, &last_ns);
                if (last_ns == 0)
                    break;
                if (ns)
                    sleep_ns(ns);
            }
        }
        int64_t now = kv_now_ms();
        if (now - last_sweep >= GW_SWEEP_MS) {
            sweep(g, now);
            last_sweep = now;
        }
    }
}

#ifdef KV_HAVE_URING
/* ---- the io_uring receive path ----
 *
 * One ring per gateway, created by kv_gateway_start (disabled, IORING_SETUP_R_DISABLED) and
 * enabled by the receive thread, which is its only user (SINGLE_ISSUER). With DEFER_TASKRUN the
 * kernel receives only when that thread asks for completions (io_uring_enter GETEVENTS), so
 * datagrams wait in the socket buffer while the thread sleeps or decodes, exactly like with
 * recvmmsg, and a round of completions costs one system call whatever its size.
 *
 * Requests in flight: one multishot receive on the UDP socket (user_data GW_UD_RECV) and one
 * IORING_OP_POLL_ADD on the stop eventfd (GW_UD_STOP). Each datagram completes as a CQE naming a
 * buffer of the provided-buffer ring (group GW_URING_BGID). When the control message is needed
 * (g->pktinfo), the receive is IORING_OP_RECVMSG and the buffer holds a
 * struct io_uring_recvmsg_out, the IP_PKTINFO message, then the payload (cut at the buffer's
 * end: MSG_TRUNC in the out flags); otherwise it is a plain IORING_OP_RECV (one user copy per
 * datagram instead of three) and the buffer holds the payload only: bufsz > max_datagram, so a
 * longer datagram fills more than max_datagram bytes and is oversize by its length. A buffer
 * goes back to the ring once its datagram is decoded and logged. The multishot request ends (a
 * CQE without IORING_CQE_F_MORE) when every buffer is in use (-ENOBUFS) or on an error; it is
 * then re-armed.
 *
 * Kernel support: DEFER_TASKRUN needs Linux 6.1, which also has multishot recv/recvmsg (6.0) and
 * provided-buffer rings (5.19), so a ring that sets up implies the rest. If the first receive
 * fails all the same (a kernel or seccomp policy refusing the opcode), io_uring_enter fails (a
 * seccomp policy allowing io_uring_setup only), or the receive fails GW_URING_MAX_ERRORS times
 * in a row, the thread falls back to recvmmsg with a warning (g->udp_io_uring becomes false).
 *
 * Teardown: the receive thread cancels the receive, waits for its last CQE (so the kernel no
 * longer writes into the buffers) and closes the ring itself; kv_gateway_stop frees the memory.
 */
#define GW_URING_BGID 1
#define GW_UD_RECV 1
#define GW_UD_STOP 2
#define GW_UD_CANCEL 3
#define GW_URING_BYTES (20u << 20) /* virtual; pages are touched as far as datagrams reach */
#define GW_URING_BUFS_MAX 1024u
#define GW_URING_BUFS_MIN 16u
#define GW_URING_NO_BUF UINT16_MAX /* u->bid of a datagram that came without a buffer */
#define GW_URING_MAX_ERRORS 100    /* receive errors in a row before falling back to recvmmsg */
#define GW_URING_PASS_MIN 16       /* a multishot pass yielding fewer: the socket is drained */

struct gw_uring {
    struct io_uring ring;
    bool ring_up;
    struct io_uring_buf_ring *br; /* mmap'd: the kernel wants it page-aligned */
    size_t br_bytes;
    char *bufs;
    unsigned nbufs; /* a power of two */
    size_t bufsz;
    struct msghdr msg; /* the template the kernel lays each buffer out by */
    struct rx *rx;     /* per reaped datagram (nbufs) */
    struct iovec *pay;
    bool *trunc;
    uint16_t *bid;
};

static void uring_free(struct gw_uring *u)
{
    if (!u)
        return;
    if (u->ring_up)
        io_uring_queue_exit(&u->ring);
    if (u->br)
        munmap(u->br, u->br_bytes);
    kv_free(u->bid);
    kv_free(u->trunc);
    kv_free(u->pay);
    kv_free(u->rx);
    kv_free(u->bufs);
    kv_free(u);
}

/* Sets up the ring and its buffers. KV_ENOMEM, or KV_ENOTSUP with why (a kernel without the
 * features, io_uring disabled by sysctl or refused by seccomp). */
static int uring_setup(struct kv_gateway *g, struct gw_uring **out, char *why, size_t whylen)
{
    struct gw_uring *u = kv_calloc(1, sizeof(*u));
    if (!u)
        return KV_ENOMEM;
    int rc = KV_ENOMEM;
    size_t ctl = g->pktinfo ? CMSG_SPACE(sizeof(struct in_pktinfo)) : 0;
    u->msg.msg_controllen = ctl;
    u->bufsz = (sizeof(struct io_uring_recvmsg_out) + ctl + g->o.max_datagram + 1 + 63) & ~63u;
    /* an odd number of cache lines: with a power-of-two stride (64 KiB for the default
     * max_datagram) every buffer's head would map to the same few cache sets */
    if ((u->bufsz / 64) % 2 == 0)
        u->bufsz += 64;
    size_t nb = KV_MAX(GW_URING_BUFS_MIN, KV_MIN(GW_URING_BUFS_MAX, GW_URING_BYTES / u->bufsz));
    u->nbufs = GW_URING_BUFS_MIN;
    while (u->nbufs * 2 <= nb)
        u->nbufs *= 2;
    u->bufs = kv_malloc(u->nbufs * u->bufsz);
    u->rx = kv_malloc(u->nbufs * sizeof(*u->rx));
    u->pay = kv_malloc(u->nbufs * sizeof(*u->pay));
    u->trunc = kv_malloc(u->nbufs * sizeof(*u->trunc));
    u->bid = kv_malloc(u->nbufs * sizeof(*u->bid));
    if (!u->bufs || !u->rx || !u->pay || !u->trunc || !u->bid)
        goto out_free;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED |
              IORING_SETUP_CQSIZE;
    p.cq_entries = u->nbufs * 2; /* each CQE holds a buffer: the CQ never overflows */
    int r = io_uring_queue_init_params(8, &u->ring, &p);
    if (r < 0) {
        snprintf(why, whylen, "io_uring_setup: %s%s", strerror(-r),
                 r == -EINVAL ? " (a kernel older than 6.1?)" : "");
        rc = KV_ENOTSUP;
        goto out_free;
    }
    u->ring_up = true;
    u->br_bytes = u->nbufs * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, u->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED)
        goto out_free;
    u->br = br;
    io_uring_buf_ring_init(u->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)u->br;
    reg.ring_entries = u->nbufs;
    reg.bgid = GW_URING_BGID;
    r = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (r < 0) {
        snprintf(why, whylen, "io_uring buffer ring: %s", strerror(-r));
        rc = KV_ENOTSUP;
        goto out_free;
    }
    unsigned mask = io_uring_buf_ring_mask(u->nbufs);
    for (unsigned i = 0; i < u->nbufs; i++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t)i * u->bufsz, (unsigned)u->bufsz,
                              (unsigned short)i, mask, (int)i);
    io_uring_buf_ring_advance(u->br, (int)u->nbufs);
    *out = u;
    return KV_OK;
out_free:
    uring_free(u);
    return rc;
}

static bool uring_arm_recv(struct kv_gateway *g, struct gw_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe)
        return false;
    if (g->pktinfo)
        io_uring_prep_recvmsg_multishot(sqe, g->udp_fd, &u->msg, 0);
    else
        io_uring_prep_recv_multishot(sqe, g->udp_fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = GW_URING_BGID;
    io_uring_sqe_set_data64(sqe, GW_UD_RECV);
    return true;
}

/* Cancels the receive and waits (bounded) for its final CQE, so that the kernel no longer
 * writes into the buffers; then closes the ring. */
static void uring_teardown(struct gw_uring *u, bool recv_armed)
{
    if (recv_armed) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
        if (sqe) {
            io_uring_prep_cancel64(sqe, GW_UD_RECV, 0);
            io_uring_sqe_set_data64(sqe, GW_UD_CANCEL);
        }
        for (int tries = 0; recv_armed && tries < 100; tries++) {
            struct io_uring_cqe *cqe;
            struct __kernel_timespec ts = {0, 10 * 1000 * 1000};
            if (io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL) < 0 && !cqe)
                continue;
            unsigned head, n = 0;
            io_uring_for_each_cqe(&u->ring, head, cqe)
            {
                n++;
                if (cqe->user_data == GW_UD_RECV && !(cqe->flags & IORING_CQE_F_MORE))
                    recv_armed = false;
            }
            io_uring_cq_advance(&u->ring, n);
        }
    }
    io_uring_queue_exit(&u->ring);
    u->ring_up = false;
}

/* The io_uring receive loop. Returns false if the kernel refused the ring, the first receive or
 * a later io_uring_enter (the caller then runs the recvmmsg loop); true when stopped. */
static bool udp_loop_uring(struct kv_gateway *g, struct kv_buf *lines)
{
    struct gw_uring *u = g->uring;
    /* io_uring_enable_rings is declared but not exported by Debian's liburing 2.3 */
    int r = io_uring_register(u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (r < 0) {
        KV_LOGW("io_uring: cannot enable the ring (%s); receiving with recvmmsg", strerror(-r));
        io_uring_queue_exit(&u->ring);
        u->ring_up = false;
        return false;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    io_uring_prep_poll_add(sqe, g->stop_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, GW_UD_STOP);
    bool recv_armed = uring_arm_recv(g, u);
    unsigned mask = io_uring_buf_ring_mask(u->nbufs);
    bool got_any = false, stop = false;
    int64_t last_sweep = kv_now_ms();
    int64_t last_ns = 0, sleep_for = 0; /* last_ns: as in coalesce_ns; 0 = idle */
    int errors_in_row = 0;
    /* a drain stops short of every buffer (a multishot pass may overshoot by ~32), so that the
     * receive rarely runs out of buffers and has to be re-armed */
    unsigned drain_nr = u->nbufs - u->nbufs / 4;
    while (!stop) {
        struct io_uring_cqe *cqe = NULL;
        if (last_ns) {
            /* busy: sleep (coalesce), then take what is queued without blocking. One GETEVENTS
             * runs one multishot pass (the kernel stops a pass at 32 datagrams and requeues
             * it), so ask again while passes come back full, up to drain_nr. (Asking for
             * drain_nr completions with a zero timeout instead arms an already expired timer
             * whenever fewer are queued: perf showed that costing more than the passes.) */
            if (sleep_for)
                sleep_ns(sleep_for);
            unsigned before = io_uring_cq_ready(&u->ring);
            for (;;) {
                r = io_uring_submit_and_get_events(&u->ring);
                unsigned ready = io_uring_cq_ready(&u->ring);
                if (r < 0 || ready - before < GW_URING_PASS_MIN || ready >= drain_nr)
                    break;
                before = ready;
            }
        } else {
            struct __kernel_timespec ts = {GW_SWEEP_MS / 1000, (GW_SWEEP_MS % 1000) * 1000000L};
            r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        }
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) {
            /* e.g. a seccomp policy that allows io_uring_setup but not io_uring_enter */
            KV_LOGW("io_uring_enter: %s; receiving with recvmmsg", strerror(-r));
            uring_teardown(u, recv_armed);
            return false;
        }
        /* reap: every CQE ready, in rounds of at most nbufs datagrams */
        size_t total = 0;
        for (;;) {
            size_t n = 0;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&u->ring, head, cqe)
            {
                if (n == u->nbufs)
                    break;
                seen++;
                if (cqe->user_data == GW_UD_STOP) {
                    stop = true;
                    continue;
                }
                if (cqe->user_data != GW_UD_RECV)
                    continue;
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    recv_armed = false;
                if (cqe->res < 0) {
                    if (cqe->res == -ENOBUFS)
                        continue; /* every buffer in use: re-armed below once some are back */
                    /* refused at once (a kernel or seccomp policy), or failing over and over
                     * (each failure ends the multishot and we re-arm it): give up on io_uring */
                    bool refused = !got_any && (cqe->res == -EINVAL || cqe->res == -EOPNOTSUPP ||
                                                cqe->res == -EPERM || cqe->res == -EACCES);
                    if (refused || ++errors_in_row >= GW_URING_MAX_ERRORS) {
                        KV_LOGW("io_uring multishot receive: %s; receiving with recvmmsg",
                                strerror(-cqe->res));
                        io_uring_cq_advance(&u->ring, seen);
                        uring_teardown(u, recv_armed);
                        return false;
                    }
                    continue;
                }
                got_any = true;
                errors_in_row = 0;
                u->rx[n].bcast = false;
                if (!(cqe->flags & IORING_CQE_F_BUFFER)) {
                    /* a plain recv of an empty datagram (it also ends the multishot) */
                    u->bid[n] = GW_URING_NO_BUF;
                    u->pay[n].iov_base = NULL;
                    u->pay[n].iov_len = 0;
                    u->trunc[n] = false;
                    n++;
                    continue;
                }
                uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                char *buf = u->bufs + (size_t)bid * u->bufsz;
                u->bid[n] = bid;
                if (!g->pktinfo) {
                    /* plain recv: the payload only; a buffer filled to max_datagram + 1
                     * bytes means a longer datagram (handle_batch's length check) */
                    u->pay[n].iov_base = buf;
                    u->pay[n].iov_len = (size_t)cqe->res;
                    u->trunc[n] = false;
                    n++;
                    continue;
                }
                struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf, cqe->res, &u->msg);
                if (!o) { /* cannot happen: the kernel wrote at least the header */
                    u->pay[n].iov_base = buf;
                    u->pay[n].iov_len = 0;
                    u->trunc[n] = true;
                    n++;
                    continue;
                }
                u->pay[n].iov_base = io_uring_recvmsg_payload(o, &u->msg);
                u->pay[n].iov_len = o->payloadlen;
                u->trunc[n] = (o->flags & MSG_TRUNC) != 0;
                for (struct cmsghdr *cm = io_uring_recvmsg_cmsg_firsthdr(o, &u->msg); cm;
                     cm = io_uring_recvmsg_cmsg_nexthdr(o, &u->msg, cm))
                    u->rx[n].bcast |= cmsg_bcast(g, cm);
                n++;
            }
            io_uring_cq_advance(&u->ring, seen);
            if (n) {
                handle_batch(g, u->rx, u->pay, u->trunc, n, lines);
                int back = 0;
                for (size_t i = 0; i < n; i++)
                    if (u->bid[i] != GW_URING_NO_BUF)
                        io_uring_buf_ring_add(u->br, u->bufs + (size_t)u->bid[i] * u->bufsz,
                                              (unsigned)u->bufsz, u->bid[i], mask, back++);
                io_uring_buf_ring_advance(u->br, back);
                total += n;
            }
            if (!recv_armed && !stop)
                recv_armed = uring_arm_recv(g, u);
            if (n < u->nbufs || stop)
                break;
        }
        int64_t now = kv_now_ms();
        if (now - last_sweep >= GW_SWEEP_MS) {
            sweep(g, now);
            last_sweep = now;
        }
        sleep_for = coalesce_ns(g, total, drain_nr, &last_ns);
        if (atomic_load_explicit(&g->stopping, memory_order_relaxed))
            stop = true;
    }
    uring_teardown(u, recv_armed);
    return true;
}
#else
struct gw_uring {
    int unused;
};
static void uring_free(struct gw_uring *u)
{
    (void)u;
}
#endif

static void *udp_main(void *arg)
{
    struct kv_gateway *g = arg;
    kv_log_set_thread_name("gw-udp");
    struct kv_buf lines;
    kv_buf_init(&lines);
    bool done = false;
#ifdef KV_HAVE_URING
    if (atomic_load_explicit(&g->udp_io_uring, memory_order_relaxed)) {
        done = udp_loop_uring(g, &lines);
        if (!done)
            atomic_store_explicit(&g->udp_io_uring, false, memory_order_relaxed);
    }
#endif
    if (!done)
        udp_loop_recvmmsg(g, &lines);
    kv_buf_fini(&lines);
    atomic_store(&g->udp_running, false);
    if (!atomic_load_explicit(&g->stopping, memory_order_relaxed))
        KV_LOGE("the UDP receive thread exited: /health answers 503");
    return NULL;
}

/* Picks the receive path (opts udp_io) and logs it: sets up io_uring when asked or possible.
 * KV_ENOTSUP (err says why) when io_uring was required but is unavailable; KV_ENOMEM. */
static int choose_udp_io(struct kv_gateway *g, char *err, size_t errlen)
{
    char why[160] = "";
    if (g->o.udp_io == KV_GATEWAY_UDP_IO_RECVMMSG) {
        KV_LOGI("UDP receive path: recvmmsg (as configured)");
        return KV_OK;
    }
#ifdef KV_HAVE_URING
    int rc = uring_setup(g, &g->uring, why, sizeof(why));
    if (rc == KV_OK) {
        atomic_store_explicit(&g->udp_io_uring, true, memory_order_relaxed);
        KV_LOGI("UDP receive path: io_uring (multishot %s, %u provided buffers of %zu bytes)",
                g->pktinfo ? "recvmsg" : "recv", g->uring->nbufs, g->uring->bufsz);
        return KV_OK;
    }
    if (rc != KV_ENOTSUP)
        return rc;
#else
    snprintf(why, sizeof(why), "built without liburing");
#endif
    if (g->o.udp_io == KV_GATEWAY_UDP_IO_URING) {
        seterr(err, errlen, "io_uring receive path unavailable (%s)%s; use udp_io auto or recvmmsg",
               why, "");
        return KV_ENOTSUP;
    }
    KV_LOGI("UDP receive path: recvmmsg (io_uring unavailable: %s)", why);
    return KV_OK;
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
        o->max_engines < 1 || o->udp_io < KV_GATEWAY_UDP_IO_RECVMMSG ||
        o->udp_io > KV_GATEWAY_UDP_IO_AUTO) {
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
    rc = choose_udp_io(g, err, errlen);
    if (rc < 0)
        goto out_http;
    atomic_store(&g->udp_running, true);
    if (pthread_create(&g->udp_thr, NULL, udp_main, g) != 0) {
        atomic_store(&g->udp_running, false);
        rc = KV_EAGAIN;
        goto out_http;
    }
    g->udp_started = true;
    *out = g;
    return KV_OK;
out_http:
    uring_free(g->uring);
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
    uring_free(g->uring);
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
