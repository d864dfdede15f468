/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc.c - the store's control-plane RPC: frame codec, a pooled blocking client and an
 * event-loop server with a bounded worker pool. Wire format and method table in rpc.h.
 *
 * Client: a call borrows an idle connection from the pool (or connects), writes the request
 * frame and reads the response with one deadline. The first read of the answer takes whatever
 * has arrived (a small answer whole, in one system call), after polling the socket for the
 * client's spin window (kv_spin, net.h: it grows while answers come within poll_spin_us and
 * shrinks to nothing when they do not). Any transport or framing error closes the
 * connection instead of returning it to the pool, so a desynchronised stream is never reused.
 * A failure on a pooled connection before any response byte arrived is retried once on a fresh
 * connection (the server may have closed an idle connection); the retry may repeat the request,
 * so callers send only requests that are safe to repeat or tolerate KV_EEXIST.
 *
 * Server thread model: io_threads + workers threads in one pool, nothing per connection.
 *  - There are io_threads loops, each an epoll set owning the connections dealt to it, and at
 *    any time each loop has at most one *leader*: the pool thread running it. The other pool
 *    threads are workers: they wait on one condvar for a loop without a leader (served first)
 *    or a request to run. Thread i < io_threads starts as loop i's leader.
 *  - Loop 0 also owns the (non-blocking, level-triggered) listening socket: it accepts and
 *    deals new connections round-robin, to itself directly and to the other loops through
 *    their inbox (a mutex-protected list + an eventfd in the loop's epoll set). One acceptor
 *    was chosen over EPOLLEXCLUSIVE on every loop because it spreads connections evenly
 *    (exclusive wake-ups let one loop grab a whole burst) and the inboxes are needed anyway for
 *    connections coming back from workers.
 *  - Sockets are non-blocking and registered once, edge-triggered, for IN|OUT|RDHUP; a leader
 *    therefore always reads until EAGAIN or a short read (which, epoll(7) says, also means the
 *    socket was empty: later bytes raise a new edge), and writes until EAGAIN, before it waits
 *    for the next edge.
 *  - Before a leader sleeps in epoll_wait it polls epoll for the loop's spin window (at most
 *    poll_spin_us, learned from the loop's waits as the client's is), yielding the CPU between
 *    two polls: a request that comes meanwhile is answered without the thread's sleep and
 *    wake-up.
 *  - A complete request is offered to fast_handler on the leader's thread; if it is NULL or
 *    returns KV_RPC_SLOW the connection goes busy and the request must run on a worker. When a
 *    worker is idle beyond the work already queued, the leader hands the *loop* to it (lead
 *    queue, the rest of its epoll batch kept in the loop) and runs the request itself, so the
 *    answer does not wait for a thread wake-up (leader/follower, as in ACE); otherwise the
 *    request is queued and the leader keeps leading. Requests dispatched while draining the
 *    inbox are always queued. The protocol is one request at a time, so a busy connection is
 *    not read: ordering is trivial.
 *  - The thread that ran the handler writes the response itself under the connection's lock
 *    when the socket takes it whole (the common case). It hands the connection back to its
 *    loop's inbox when the write would block, failed, or when there may be input the loop has
 *    not looked at (bytes of a next frame, a full last read, or an epoll edge that arrived
 *    while busy); only a leader reads a socket.
 *  - Deadlines: a frame in progress (a partial request, or a response the peer does not read)
 *    must complete within io_timeout_ms; while a loop has such connections its leader scans
 *    the loop's list every scan_ms and closes the late ones. Idle connections have no deadline.
 *
 * Connection states (owned by the loop's leader unless busy):
 *
 *   accept (loop 0) --loop_register--> READING --frame complete--> conn_dispatch
 *                                        ^  |                        |              |
 *                                        |  | malformed header,      | fast_handler | no fast /
 *                                        |  | no memory              | answered     | SLOW
 *                                        |  v                        v              v
 *                                        | WRITING <-----------------+         BUSY (run_request
 *                                        |  | conn_tx EAGAIN: wait EPOLLOUT     on a worker or on
 *                                        |  | (close after it when framing      the old leader)
 *                                        |  |  was lost)                         | written whole:
 *                                        +--+ conn_frame_done                    | READING; else
 *                                        +---------------------------------------+ inbox -> loop
 *   any error, EOF, deadline: conn_close (by the leader only, never while BUSY)
 *
 * Invariants:
 *  1. A pooled client connection has no unread bytes (it completed a whole request/response).
 *  2. A server connection belongs to one loop from accept to close; only that loop's leader
 *     reads its socket, closes or frees it. It is in its loop's list from registration until
 *     conn_close, and freed at the end of the epoll batch that closed it (a later event of the
 *     same batch may still name it; `closed` skips it).
 *  3. Exactly one thread holds a connection's buffers and frame state: its loop's leader while
 *     !busy, the thread running its request while busy. busy flips true on the leader (before
 *     the request leaves the loop) and false on the runner (after the write) or on the leader
 *     (taking it from the inbox); the queues' mutexes order the hand-over. A busy connection
 *     has no deadline.
 *  4. Whenever a leader holds a connection and waits, it has seen EAGAIN (or a short read) on
 *     the direction it waits for, or it is told by io_pending / maybe_more / leftover input to
 *     look again: no edge-triggered event is lost.
 *  5. A receive buffer never holds more than max(SRV_RX_STEP, received) bytes of room beyond
 *     what arrived, nor more than its frame + 1; buffers over SRV_KEEP_BUF are released once
 *     their frame is answered.
 *  6. A loop is handed over only when nidle > nqueued + nlead, and a waiting thread takes lead
 *     work before requests, so a loop is never left without a leader while all threads run
 *     handlers: at most `workers` handlers run at once, the other threads lead.
 *  7. A loop's leader-only fields (batch, list, deadlines) are touched by one thread at a time:
 *     the old leader stops touching them before it puts the loop on the lead queue.
 *  8. After kv_rpc_server_stop has joined the pool no handler or fast_handler runs. Requests
 *     still queued then are dropped unanswered.
 *
 * Locks (all leaves: none is taken while holding another, none is held during a handler):
 *  - client c->lock guards c->idle, c->nidle.
 *  - server s->wlock guards the request queue (wq_*, nqueued), the lead queue (lead_*, nlead)
 *    and nidle; s->wcond waits on it.
 *  - loop l->qlock guards its inbox (inbox_head, inbox_tail).
 *  - conn c->lock guards c->busy and c->io_pending; the runner holds it while it writes the
 *    response, the leader only to test-and-set on an event.
 */
#define KV_LOG_COMPONENT "rpc"
#include "store/rpc.h"
#include "store/rpc_local.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/auth.h"
#include "common/log.h"
#include "common/net.h"
#include "common/util.h"

#define POOL_MAX_IDLE 8
#define DEF_TIMEOUT_MS 10000
#define DEF_CONNECT_MS 3000
#define CLI_RX_STEP (64u << 10) /* a response buffer grows at most this (or doubles) at a time */

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
    case KV_RPC_AUTH:
        return "AUTH";
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

/* An unpacked message lives in an arena. protobuf-c allocates the message, then a piece per
 * string, bytes field, repeated array and sub-message: a batch of 1,024 keys took 1,026 mallocs
 * and as many frees, a quarter of the master's CPU answering batch-exists. The arena carves the
 * pieces from a few chunks and kv_rpc_pb_free returns them all at once.
 *  - The first chunk holds the arena and is sized from the message's wire size (a key list
 *    unpacks to 2-3 times its wire bytes), capped at PB_CHUNK_MAX; later chunks double up to
 *    that cap.
 *  - A piece above a quarter of the current chunk gets a block of its own: from kv_malloc, or a
 *    mapping of its own from PB_MAP_MIN bytes (a MOUNT part's megabytes of records). In the
 *    master, large blocks taken from the heap would sit between the index's millions of small
 *    objects, which pin the space once they are freed (master.c raises glibc's mmap threshold
 *    for the buffers it reuses); a mapping goes back to the system when the message is freed.
 *  - The message is the arena's first piece (protobuf-c allocates it first: checked), so
 *    kv_rpc_pb_free finds the arena right before it. protobuf-c's own frees (temporary slabs, a
 *    failed unpack) are no-ops: the arena goes as a whole.
 *  - Under ASan every chunk starts poisoned and each piece is unpoisoned as it is handed out,
 *    with a poisoned gap after it: an overrun is reported as for a malloc'ed block. */
#define PB_MAP_MIN (256u << 10)
#define PB_CHUNK_MAX (128u << 10)
#if defined(__SANITIZE_ADDRESS__)
#define PB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PB_ASAN 1
#endif
#endif
#ifdef PB_ASAN
#include <sanitizer/asan_interface.h>
#define PB_GAP 16 /* poisoned bytes after each piece */
#define PB_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define PB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define PB_GAP 0
#define PB_POISON(p, n) ((void)(p), (void)(n))
#define PB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct pb_block { /* a chunk after the first one, or a piece of its own */
    struct pb_block *next;
    size_t size;   /* of the whole block, header included */
    size_t mapped; /* 1: mmap, 0: kv_malloc */
    size_t pad;    /* pieces after the header stay 16-byte aligned */
};

struct pb_arena { /* at the start of the first chunk, right before the message */
    struct pb_block *blocks;
    char *at, *end; /* room left in the current chunk */
    size_t chunk;   /* size of the next chunk */
    size_t first;   /* size of the first chunk, arena included */
};

#define PB_ARENA_HDR ((sizeof(struct pb_arena) + 15) & ~(size_t)15)
_Static_assert(sizeof(struct pb_block) % 16 == 0, "pb_block keeps pieces 16-byte aligned");

static struct pb_block *pb_block_new(struct pb_arena *a, size_t size)
{
    struct pb_block *b;
    size_t mapped = size >= PB_MAP_MIN;
    if (mapped) {
        b = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED)
            return NULL;
    } else if (!(b = kv_malloc(size))) {
        return NULL;
    }
    b->next = a->blocks;
    b->size = size;
    b->mapped = mapped;
    a->blocks = b;
    return b;
}

static void *pb_alloc(void *ud, size_t n)
{
    struct pb_arena *a = ud;
    size_t need = ((n ? n : 1) + 15) & ~(size_t)15;
    if (need > SIZE_MAX / 2)
        return NULL;
    if (need + PB_GAP > (size_t)(a->end - a->at)) {
        if (need > a->chunk / 4) { /* a block of its own; the current chunk keeps its room */
            struct pb_block *b = pb_block_new(a, sizeof(*b) + need);
            return b ? b + 1 : NULL;
        }
        struct pb_block *b = pb_block_new(a, a->chunk);
        if (!b)
            return NULL;
        a->at = (char *)(b + 1);
        a->end = (char *)b + a->chunk;
        PB_POISON(a->at, (size_t)(a->end - a->at));
        if (a->chunk < PB_CHUNK_MAX)
            a->chunk *= 2;
    }
    char *p = a->at;
    a->at += need + PB_GAP;
    PB_UNPOISON(p, n ? n : 1);
    return p;
}

static void pb_free_piece(void *ud, void *p)
{
    (void)ud;
    (void)p;
}

static void pb_arena_free(struct pb_arena *a)
{
    for (struct pb_block *b = a->blocks, *next; b; b = next) {
        next = b->next;
        if (b->mapped) {
            munmap(b, b->size);
        } else {
            PB_UNPOISON(b, b->size);
            kv_free(b);
        }
    }
    PB_UNPOISON(a, a->first);
    kv_free(a);
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
    size_t room = n < PB_CHUNK_MAX / 3 ? 3 * n + 256 : PB_CHUNK_MAX;
    struct pb_arena *a = kv_malloc(PB_ARENA_HDR + room);
    if (!a)
        return KV_ENOMEM;
    a->blocks = NULL;
    a->at = (char *)a + PB_ARENA_HDR;
    a->end = a->at + room;
    a->chunk = room < PB_CHUNK_MAX / 2 ? 2 * room : PB_CHUNK_MAX;
    a->first = PB_ARENA_HDR + room;
    PB_POISON(a->at, room);
    ProtobufCAllocator al = {pb_alloc, pb_free_piece, a};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &al, n, p ? p : &empty);
    if (m && (char *)m != (char *)a + PB_ARENA_HDR) {
        /* kv_rpc_pb_free could not find the arena: a protobuf-c that allocates the message
         * after something else needs another way (every RPC would fail here, loudly) */
        KV_LOGW_RL(5000, "protobuf-c did not allocate the message first: cannot unpack");
        m = NULL;
    }
    if (!m) {
        pb_arena_free(a);
        return KV_EPROTO;
    }
    *out = m;
    return KV_OK;
}

void kv_rpc_pb_free(ProtobufCMessage *msg)
{
    if (msg)
        pb_arena_free((struct pb_arena *)((char *)msg - PB_ARENA_HDR));
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
    char *token;         /* presented first on every new connection (AUTH); NULL = none */
    struct kv_spin spin; /* a call polls for its answer this long before it blocks */
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
    if (kv_auth_token() && kv_rpc_client_set_token(c, kv_auth_token()) < 0) {
        kv_free(c->addr);
        kv_free(c);
        return KV_ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    atomic_init(&c->next_id, 1);
    *out = c;
    return KV_OK;
}

int kv_rpc_client_set_token(struct kv_rpc_client *c, const char *token)
{
    char *t = token && *token ? kv_strdup(token) : NULL;
    if (token && *token && !t)
        return KV_ENOMEM;
    kv_free(c->token);
    c->token = t;
    return KV_OK;
}

void kv_rpc_client_set_poll_spin(struct kv_rpc_client *c, int us)
{
    kv_spin_init(&c->spin, KV_MIN(KV_RPC_MAX_POLL_SPIN_US, us));
}

int kv_rpc_client_poll_spin(const struct kv_rpc_client *c)
{
    return c->spin.max_us;
}

void kv_rpc_client_destroy(struct kv_rpc_client *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nidle; i++)
        close(c->idle[i]);
    pthread_mutex_destroy(&c->lock);
    kv_free(c->token);
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

/* One exchange on fd. *got_any tells whether any response byte arrived. The answer's first
 * read takes whatever has arrived, up to the header and FIRST_READ bytes of payload (a small
 * answer in one system call), after polling for sp's window (kv_net_read_some; sp NULL = no
 * polling); the wait teaches sp. */
#define FIRST_READ 4096
static int exchange(int fd, uint16_t method, uint64_t id, const void *req, size_t len,
                    int64_t deadline, struct kv_spin *sp, int *status, struct kv_buf *resp,
                    bool *got_any)
{
    uint8_t hb[KV_RPC_HDR_LEN + FIRST_READ];
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, 0, (uint32_t)len, 0, id};
    kv_rpc_hdr_encode(&h, hb);
    *got_any = false;
    int rc = write_frame(fd, hb, req, len, deadline);
    if (rc < 0)
        return rc;
    size_t have = 0;
    int64_t t0 = sp && sp->max_us ? kv_now_us() : 0;
    while (have < KV_RPC_HDR_LEN) {
        size_t n;
        int spin = have || !sp ? 0 : kv_spin_window(sp);
        rc = kv_net_read_some(fd, hb + have, sizeof(hb) - have, deadline, spin, &n);
        if (rc < 0)
            return rc;
        if (!have && t0)
            kv_spin_learn(sp, kv_now_us() - t0);
        *got_any = true;
        have += n;
    }
    struct kv_rpc_hdr r;
    rc = kv_rpc_hdr_decode(hb, KV_RPC_HDR_LEN, &r);
    if (rc < 0)
        return rc;
    if (!(r.flags & KV_RPC_F_RESPONSE))
        return KV_EPROTO;
    if (r.id != id && r.id != 0)
        return KV_EPROTO;
    size_t early = have - KV_RPC_HDR_LEN; /* payload bytes the first reads brought */
    if (early > r.len)
        return KV_EPROTO; /* bytes past the answer: the stream is not ours to trust */
    struct kv_buf tmp;
    kv_buf_init(&tmp);
    struct kv_buf *dst = resp ? resp : &tmp;
    kv_buf_reset(dst);
    rc = kv_buf_reserve(dst, early + 1);
    if (rc < 0) {
        kv_buf_fini(&tmp);
        return rc;
    }
    memcpy(dst->data, hb + KV_RPC_HDR_LEN, early);
    dst->len = early;
    /* The rest grows the buffer as it arrives, by at most max(CLI_RX_STEP, received) at a
     * time: a peer whose header announces 64 MiB and sends nothing costs CLI_RX_STEP. */
    size_t got = early;
    while (got < r.len) {
        size_t chunk = KV_MIN((size_t)r.len - got, KV_MAX((size_t)CLI_RX_STEP, got));
        rc = kv_buf_reserve(dst, chunk + 1);
        if (rc == KV_OK)
            rc = kv_net_read_full(fd, dst->data + got, chunk, deadline);
        if (rc < 0) {
            kv_buf_reset(dst);
            kv_buf_fini(&tmp);
            return rc;
        }
        got += chunk;
        dst->len = got;
    }
    dst->data[r.len] = '\0';
    kv_buf_fini(&tmp);
    if (r.id == 0) /* the server rejected our framing and closes: treat as protocol error */
        return r.status < 0 ? r.status : KV_EPROTO;
    *status = r.status;
    return KV_OK;
}

/* Presents c's token on the fresh connection fd (an AUTH frame). KV_OK, KV_EPERM when the
 * server refused it (its reason logged), or a transport error. */
static int client_auth(struct kv_rpc_client *c, int fd, uint64_t id, int64_t deadline)
{
    struct kv_buf r;
    kv_buf_init(&r);
    int status = 0;
    bool got_any;
    int rc = exchange(fd, KV_RPC_AUTH, id, c->token, strlen(c->token), deadline, NULL, &status, &r,
                      &got_any);
    if (rc == KV_OK && status != KV_OK) {
        KV_LOGW_RL(5000, "RPC server %s refused this client's token: %s", c->addr,
                   r.len ? r.data : kv_strerror(status));
        rc = status == KV_EPERM ? KV_EPERM : (status < 0 ? status : KV_EPROTO);
    }
    kv_buf_fini(&r);
    return rc;
}

/* A fresh connection to c's server, its token presented (id: the AUTH frame's id). */
static int connect_authed(struct kv_rpc_client *c, uint64_t id, int64_t deadline, int *out)
{
    int left = (int)(deadline - kv_now_ms());
    if (left <= 0)
        return KV_ETIMEDOUT;
    int fd = -1;
    int rc = kv_net_connect_tcp(c->host, c->port, KV_MIN(left, c->connect_timeout_ms), &fd);
    if (rc < 0)
        return rc;
    if (c->token) {
        rc = client_auth(c, fd, id, deadline);
        if (rc < 0) {
            close(fd);
            return rc;
        }
    }
    *out = fd;
    return KV_OK;
}

int kv_rpc_client_connect(struct kv_rpc_client *c, int timeout_ms, int *fd)
{
    if (!c || !fd)
        return KV_EINVAL;
    int64_t deadline = kv_now_ms() + (timeout_ms > 0 ? timeout_ms : DEF_TIMEOUT_MS);
    uint64_t id = atomic_fetch_add_explicit(&c->next_id, 1, memory_order_relaxed);
    return connect_authed(c, id ? id : 1, deadline, fd);
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
            int rc = connect_authed(c, id, deadline, &fd);
            if (rc < 0)
                return rc;
        }
        bool got_any;
        int rc = exchange(fd, method, id, req, len, deadline, &c->spin, status, resp, &got_any);
        if (rc == KV_OK && *status == KV_EPERM) {
            /* refused: the server closes the connection after this answer */
            KV_LOGW_RL(5000, "RPC %s to %s refused: %.*s", kv_rpc_method_name(method), c->addr,
                       resp && resp->len ? (int)KV_MIN(resp->len, 200u) : 13,
                       resp && resp->len ? resp->data : "permission denied");
            close(fd);
            return KV_OK;
        }
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

void kv_rpc_leader_hint(const uint8_t *p, size_t n, char *hint, size_t hint_len)
{
    hint[0] = '\0';
    ProtobufCMessage *nl = NULL;
    if (n && kv_rpc_pb_unpack(&kvstash__not_leader__descriptor, p, n, &nl) == KV_OK) {
        const char *a = ((Kvstash__NotLeader *)nl)->leader_addr;
        if (a && strlen(a) < hint_len)
            memcpy(hint, a, strlen(a) + 1);
        kv_rpc_pb_free(nl);
    }
}

int kv_rpc_call_pb(struct kv_rpc_client *c, uint16_t method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int timeout_ms, char *leader_hint, size_t hint_len)
{
    struct kv_buf b;
    kv_buf_init(&b);
    int status = 0, rc;
    if (c && kv_rpc_local_call_pb(c->addr, method, req, &status, &b)) {
        rc = KV_OK; /* a server of this process took the message itself (rpc_local.h) */
    } else {
        rc = kv_rpc_pb_pack(req, &b);
        if (rc < 0)
            goto out;
        rc = kv_rpc_call(c, method, b.data, b.len, timeout_ms, &status, &b);
        if (rc < 0)
            goto out;
    }
    if (status == KV_EAGAIN && leader_hint && hint_len)
        kv_rpc_leader_hint((const uint8_t *)b.data, b.len, leader_hint, hint_len);
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

#define SRV_RX_INITIAL 4096u    /* first capacity of a connection's receive buffer */
#define SRV_RX_STEP (64u << 10) /* a buffer grows at most max(this, bytes received) ahead */
#define SRV_KEEP_BUF (4u << 20) /* larger buffers are released once their frame is answered */
#define SRV_ACCEPT_BATCH 64     /* accepts per wake-up, so one loop is not starved */
#define SRV_MAX_EVENTS 128      /* epoll_wait batch */
#define SRV_ACCEPT_PAUSE_MS 100 /* accept back-off after EMFILE and friends */
#define SRV_MAX_IO_THREADS 64
#define SRV_MAX_WORKERS 1024

struct srv_loop;

struct srv_conn {
    struct srv_loop *loop; /* owning loop; fixed at accept */
    int fd;

    /* Owned by the holder (invariant 3): the loop thread while !busy, the worker while busy. */
    struct kv_buf in; /* received bytes; in.data[0] starts the current frame */
    bool have_hdr;    /* h is the current frame's decoded header */
    struct kv_rpc_hdr h;
    bool maybe_more;   /* the last read filled its space: the socket may hold more */
    struct kv_buf out; /* response payload (the handler's resp) */
    uint8_t out_hdr[KV_RPC_HDR_LEN];
    size_t tx_off, tx_len; /* response bytes (header + payload) written / total; 0 = none */
    bool close_after_tx;   /* framing lost (malformed header, no memory): close once sent */
    bool failed;           /* the worker's write failed: the loop closes it */
    bool fresh;            /* accepted, not yet registered with its loop's epoll */
    bool authed;           /* presented the server's token (or none is needed); loop thread */

    /* Loop thread only. */
    bool closed;                  /* closed in this loop iteration; freed at its end */
    int64_t deadline;             /* kv_now_ms() after which the frame in progress fails; 0 none */
    struct srv_conn *prev, *next; /* the loop's connection list (or its graveyard) */

    struct srv_conn *qnext; /* link in the one queue it is in: a loop inbox or the workers' */

    pthread_mutex_t lock; /* guards busy, io_pending; leaf (never held with another lock) */
    bool busy;            /* a worker holds the connection */
    bool io_pending;      /* an epoll event arrived while busy: the loop must look again */
};

struct srv_loop {
    struct kv_rpc_server *s;
    int epfd;
    int evfd;              /* wakes the loop: inbox non-empty or stopping */
    pthread_mutex_t qlock; /* guards inbox_head, inbox_tail; leaf */
    struct srv_conn *inbox_head, *inbox_tail;
    struct srv_loop *lnext; /* in the server's lead queue (guarded by s->wlock) */
    /* Leader only (the one thread leading the loop now; see invariant 7). */
    struct epoll_event evs[SRV_MAX_EVENTS]; /* the current epoll batch, evs[iev..nev) to do */
    int nev, iev;
    bool in_events;           /* handling an epoll event: a dispatch may hand the loop over */
    struct srv_conn *handoff; /* dispatched; its request runs on this thread after the hand-over */
    struct srv_conn *conns;   /* every registered connection of this loop */
    struct srv_conn *graveyard; /* closed in this iteration, freed at its end */
    int ntimed;                 /* connections with a deadline */
    int64_t next_scan;
    bool accept_paused;
    int64_t accept_resume;
    unsigned next_loop;  /* loop 0 only: round-robin target of the next accepted connection */
    struct kv_spin spin; /* how long the leader polls before it sleeps */
};

struct kv_rpc_server {
    kv_rpc_handler_fn handler;
    kv_rpc_handler_fn fast_handler;
    void *ud;
    int max_conns;
    int io_timeout_ms;
    int scan_ms; /* how often a loop looks for expired deadlines while it has any */
    int nloops;
    int nworkers;
    int threads_started;
    int lfd;
    uint16_t port;
    atomic_bool stopping;
    atomic_int nconns;
    struct srv_loop *loops;
    pthread_t *threads; /* nloops + nworkers; thread i < nloops starts as loop i's leader */
    /* guards wq_head, wq_tail, nqueued, lead_head, lead_tail, nlead, nidle; leaf; wcond waits on
     * it */
    pthread_mutex_t wlock;
    pthread_cond_t wcond;
    struct srv_conn *wq_head, *wq_tail; /* requests for the workers */
    int nqueued;
    struct srv_loop *lead_head, *lead_tail; /* loops without a leader, served before requests */
    int nlead;
    int nidle;        /* threads waiting on wcond */
    char *token;      /* every connection must present it first (AUTH); NULL = none; fixed */
    int poll_spin_us; /* a loop polls at most this long before it sleeps; 0 = never */
    atomic_ullong spins, spin_hits; /* polls before a sleep / those that found an event */
};

static void conn_free(struct srv_conn *c)
{
    kv_buf_fini(&c->in);
    kv_buf_fini(&c->out);
    pthread_mutex_destroy(&c->lock);
    kv_free(c);
}

/* Loop thread: the frame in progress (partial request or unsent response) gets a deadline. */
static void timer_arm(struct srv_loop *l, struct srv_conn *c)
{
    if (c->deadline)
        return;
    c->deadline = kv_now_ms() + l->s->io_timeout_ms;
    if (l->ntimed++ == 0)
        l->next_scan = kv_now_ms() + l->s->scan_ms;
}

static void timer_clear(struct srv_loop *l, struct srv_conn *c)
{
    if (!c->deadline)
        return;
    c->deadline = 0;
    l->ntimed--;
}

/* Loop thread: unlinks, closes the socket (which leaves the epoll set) and defers the free to
 * the end of the loop iteration, as later events of the same batch may name c. */
static void conn_close(struct srv_loop *l, struct srv_conn *c)
{
    timer_clear(l, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    close(c->fd);
    c->fd = -1;
    c->closed = true;
    c->prev = NULL;
    c->next = l->graveyard;
    l->graveyard = c;
    atomic_fetch_sub_explicit(&l->s->nconns, 1, memory_order_relaxed);
}

/* Prepares the response frame for the current request from c->out and the handler's status. */
static void conn_set_response(struct srv_conn *c, uint16_t method, uint64_t id, int status)
{
    if (status > 0)
        status = KV_OK;
    bool payload = status == KV_OK || status == KV_EAGAIN || status == KV_EPERM;
    if (payload && c->out.len > KV_RPC_MAX_PAYLOAD) {
        KV_LOGW_RL(5000, "RPC %s: response of %zu bytes is over the frame limit",
                   kv_rpc_method_name(method), c->out.len);
        status = KV_E2BIG;
        payload = false;
    }
    size_t len = payload ? c->out.len : 0;
    struct kv_rpc_hdr h = {KV_RPC_MAGIC, method, KV_RPC_F_RESPONSE, (uint32_t)len, status, id};
    kv_rpc_hdr_encode(&h, c->out_hdr);
    c->tx_off = 0;
    c->tx_len = KV_RPC_HDR_LEN + len;
}

/* The framing of c can no longer be trusted: answer status (id 0 when the header is bad) and
 * close once that is sent. */
static void conn_set_fatal(struct srv_conn *c, uint16_t method, uint64_t id, int status)
{
    kv_buf_reset(&c->out);
    conn_set_response(c, method, id, status);
    c->close_after_tx = true;
}

/* Writes what is left of the response without blocking. KV_OK once it is all out, KV_EAGAIN when
 * the socket is full, another error when the connection is broken. */
static int conn_tx(struct srv_conn *c)
{
    while (c->tx_off < c->tx_len) {
        struct iovec iov[2];
        int n = 0;
        if (c->tx_off < KV_RPC_HDR_LEN) {
            iov[n].iov_base = c->out_hdr + c->tx_off;
            iov[n++].iov_len = KV_RPC_HDR_LEN - c->tx_off;
        }
        size_t plen = c->tx_len - KV_RPC_HDR_LEN;
        size_t poff = c->tx_off > KV_RPC_HDR_LEN ? c->tx_off - KV_RPC_HDR_LEN : 0;
        if (poff < plen) {
            iov[n].iov_base = c->out.data + poff;
            iov[n++].iov_len = plen - poff;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return KV_EAGAIN;
            return kv_err_from_errno(errno);
        }
        c->tx_off += (size_t)w;
    }
    c->tx_off = c->tx_len = 0;
    return KV_OK;
}

/* The current frame is answered: drop its bytes (keeping any of the next frame) and release
 * buffers grown past SRV_KEEP_BUF. */
static void conn_frame_done(struct srv_conn *c)
{
    size_t flen = KV_RPC_HDR_LEN + (size_t)c->h.len;
    size_t left = c->in.len > flen ? c->in.len - flen : 0;
    if (left)
        memmove(c->in.data, c->in.data + flen, left);
    c->in.len = left;
    if (c->in.data)
        c->in.data[left] = '\0';
    c->have_hdr = false;
    if (c->in.cap > SRV_KEEP_BUF && left == 0)
        kv_buf_fini(&c->in);
    if (c->out.cap > SRV_KEEP_BUF)
        kv_buf_fini(&c->out);
    else
        kv_buf_reset(&c->out);
}

/* Makes room to receive: the buffer grows only when full, to at most the whole frame (+ NUL)
 * and at most max(SRV_RX_STEP, received) ahead of what arrived, so a peer that announces a
 * large frame and sends nothing costs nothing. KV_ENOMEM. */
static int conn_rx_room(struct srv_conn *c)
{
    size_t len = c->in.len;
    if (c->in.cap >= SRV_RX_INITIAL && c->in.cap - 1 > len)
        return KV_OK;
    size_t frame = KV_RPC_HDR_LEN + (c->have_hdr ? (size_t)c->h.len : 0);
    size_t cap = KV_MAX(c->in.cap * 2, len + SRV_RX_STEP + 1);
    cap = KV_MIN(cap, KV_MAX(frame, len) + 1);
    cap = KV_MAX(cap, SRV_RX_INITIAL);
    if (cap <= c->in.cap)
        return KV_OK;
    char *d = kv_realloc(c->in.data, cap);
    if (!d)
        return KV_ENOMEM;
    c->in.data = d;
    c->in.cap = cap;
    return KV_OK;
}

/* One non-blocking read. KV_OK (bytes arrived), KV_EAGAIN, KV_ENOMEM, or KV_ECONNRESET and
 * friends when the peer closed or the connection broke. */
static int conn_rx(struct srv_conn *c)
{
    int rc = conn_rx_room(c);
    if (rc < 0)
        return rc;
    size_t room = c->in.cap - 1 - c->in.len;
    for (;;) {
        ssize_t n = recv(c->fd, c->in.data + c->in.len, room, MSG_DONTWAIT);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->in.data[c->in.len] = '\0';
            c->maybe_more = (size_t)n == room;
            return KV_OK;
        }
        if (n == 0)
            return KV_ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->maybe_more = false;
            return KV_EAGAIN;
        }
        return kv_err_from_errno(errno);
    }
}

/* Runs fn on the complete frame in c->in (its payload NUL-terminated for the call). */
static int conn_call(struct kv_rpc_server *s, struct srv_conn *c, kv_rpc_handler_fn fn)
{
    uint8_t *p = (uint8_t *)c->in.data + KV_RPC_HDR_LEN;
    size_t len = c->h.len;
    uint8_t saved = p[len]; /* a byte of the next frame may sit there */
    p[len] = '\0';
    kv_buf_reset(&c->out);
    int status = fn(s->ud, c->h.method, p, len, &c->out);
    p[len] = saved;
    return status;
}

static void worker_push(struct kv_rpc_server *s, struct srv_conn *c)
{
    c->qnext = NULL;
    pthread_mutex_lock(&s->wlock);
    if (s->wq_tail)
        s->wq_tail->qnext = c;
    else
        s->wq_head = c;
    s->wq_tail = c;
    s->nqueued++;
    pthread_mutex_unlock(&s->wlock);
    pthread_cond_signal(&s->wcond); /* after the unlock: the woken worker does not block on it */
}

static void loop_wake(struct srv_loop *l)
{
    uint64_t one = 1;
    ssize_t w = write(l->evfd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, the loop will wake */
}

/* Hands c to its loop: a freshly accepted connection, or one a worker is done with. */
static void loop_push(struct srv_loop *l, struct srv_conn *c)
{
    c->qnext = NULL;
    pthread_mutex_lock(&l->qlock);
    bool was_empty = !l->inbox_head;
    if (l->inbox_tail)
        l->inbox_tail->qnext = c;
    else
        l->inbox_head = c;
    l->inbox_tail = c;
    pthread_mutex_unlock(&l->qlock);
    if (was_empty) /* the loop reads evfd before taking the inbox, so one wake-up covers all */
        loop_wake(l);
}

/* The peer's "HOST:PORT" for a log line. */
static void conn_peer(const struct srv_conn *c, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(buf, len, "%s:%u", ip, port);
}

/* Loop thread: the first frame of a connection of a server with a token, or an AUTH frame.
 * AUTH with the right token (or any AUTH when the server has none): KV_OK. Anything else:
 * KV_EPERM with the reason as payload, logged (rate-limited), and the connection is closed
 * once that is sent. */
static void conn_auth(struct kv_rpc_server *s, struct srv_conn *c)
{
    bool is_auth = c->h.method == KV_RPC_AUTH;
    const char *why = NULL;
    int rc = kv_auth_check(s->token, is_auth, c->in.data + KV_RPC_HDR_LEN, c->h.len, &why);
    kv_buf_reset(&c->out);
    if (rc == KV_OK) {
        c->authed = true;
        conn_set_response(c, c->h.method, c->h.id, KV_OK);
        return;
    }
    char peer[96];
    conn_peer(c, peer, sizeof(peer));
    if (is_auth) /* one rate limit per reason: a flood of one does not hide the other */
        KV_LOGW_RL(5000, "refused RPC connection from %s: %s", peer, why);
    else
        KV_LOGW_RL(5000, "refused RPC connection from %s: %s (first request %s, no AUTH)", peer,
                   why, kv_rpc_method_name(c->h.method));
    kv_buf_append(&c->out, why, strlen(why));
    conn_set_response(c, c->h.method, c->h.id, KV_EPERM);
    c->close_after_tx = true;
}

/* Loop thread: a complete request is in c->in. Answers it through fast_handler, or hands it to
 * the workers (then returns true: the connection is busy and no longer the loop's). */
static bool conn_dispatch(struct srv_loop *l, struct srv_conn *c)
{
    struct kv_rpc_server *s = l->s;
    if (!c->authed || c->h.method == KV_RPC_AUTH) {
        conn_auth(s, c);
        return false;
    }
    if (s->fast_handler) {
        int status = conn_call(s, c, s->fast_handler);
        if (status != KV_RPC_SLOW) {
            conn_set_response(c, c->h.method, c->h.id, status);
            return false;
        }
        kv_buf_reset(&c->out);
    }
    pthread_mutex_lock(&c->lock);
    c->busy = true;
    c->io_pending = false;
    pthread_mutex_unlock(&c->lock);
    if (l->in_events) /* loop_lead decides between a hand-over and the queue */
        l->handoff = c;
    else
        worker_push(s, c);
    return true;
}

/* Loop thread: advances c's state machine until it would block (see the diagram at the top). */
static void conn_drive(struct srv_loop *l, struct srv_conn *c)
{
    bool drained = false; /* a read here came back short: the socket was empty then */
    for (;;) {
        if (c->tx_len) {
            int rc = conn_tx(c);
            if (rc == KV_EAGAIN) {
                timer_arm(l, c);
                return;
            }
            if (rc < 0 || c->close_after_tx)
                goto out_close;
            timer_clear(l, c);
            conn_frame_done(c);
            continue;
        }
        if (!c->have_hdr && c->in.len >= KV_RPC_HDR_LEN) {
            if (kv_rpc_hdr_decode((const uint8_t *)c->in.data, c->in.len, &c->h) < 0 ||
                (c->h.flags & KV_RPC_F_RESPONSE)) {
                KV_LOGW_RL(5000, "malformed RPC frame header (bad magic, flags or length): "
                                 "closing the connection");
                conn_set_fatal(c, 0, 0, KV_EPROTO);
                continue;
            }
            c->have_hdr = true;
        }
        if (c->have_hdr && c->in.len >= KV_RPC_HDR_LEN + (size_t)c->h.len) {
            timer_clear(l, c);
            if (conn_dispatch(l, c))
                return;
            continue;
        }
        /* A short read emptied the socket (epoll(7)): whatever arrives after it raises a new
         * edge, so asking again would only cost a system call that says EAGAIN. */
        int rc = drained ? KV_EAGAIN : conn_rx(c);
        if (rc == KV_EAGAIN) {
            if (c->in.len)
                timer_arm(l, c);
            return;
        }
        drained = rc == KV_OK && !c->maybe_more;
        if (rc == KV_ENOMEM) {
            conn_set_fatal(c, c->have_hdr ? c->h.method : 0, c->have_hdr ? c->h.id : 0, KV_ENOMEM);
            continue;
        }
        if (rc < 0) {
            if (c->in.len)
                KV_LOGD("connection closed mid-frame: %s", kv_strerror(rc));
            goto out_close;
        }
    }
out_close:
    conn_close(l, c);
}

/* A worker's part of a call: runs the handler on the busy connection c, then writes the
 * response at once when the socket takes it all, or hands c back to its loop. */
static void run_request(struct kv_rpc_server *s, struct srv_conn *c)
{
    int status = conn_call(s, c, s->handler);
    conn_set_response(c, c->h.method, c->h.id, status);
    bool handback = true;
    pthread_mutex_lock(&c->lock);
    int rc = conn_tx(c);
    if (rc == KV_OK) {
        conn_frame_done(c);
        /* Bytes (or an epoll edge) the loop has not looked at: only the loop may read. */
        handback = c->io_pending || c->maybe_more || c->in.len > 0;
        if (!handback)
            c->busy = false;
    } else if (rc != KV_EAGAIN) {
        c->failed = true;
    }
    pthread_mutex_unlock(&c->lock);
    if (handback)
        loop_push(c->loop, c);
}

/* Loop thread: c (accepted by loop 0) joins l's epoll set and list. */
static void loop_register(struct srv_loop *l, struct srv_conn *c)
{
    c->fresh = false;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        KV_LOGW_RL(5000, "RPC connection dropped: epoll_ctl: %s", strerror(errno));
        close(c->fd);
        conn_free(c);
        atomic_fetch_sub_explicit(&l->s->nconns, 1, memory_order_relaxed);
        return;
    }
    c->prev = NULL;
    c->next = l->conns;
    if (l->conns)
        l->conns->prev = c;
    l->conns = c;
}

/* Loop 0: accepts pending connections and deals them round-robin to the loops. */
static void loop_accept(struct srv_loop *l)
{
    struct kv_rpc_server *s = l->s;
    for (int i = 0; i < SRV_ACCEPT_BATCH; i++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            KV_LOGW_RL(5000, "RPC accept: %s (pausing accepts for %d ms)", strerror(errno),
                       SRV_ACCEPT_PAUSE_MS);
            struct epoll_event ev = {.events = 0, .data.ptr = s};
            epoll_ctl(l->epfd, EPOLL_CTL_MOD, s->lfd, &ev);
            l->accept_paused = true;
            l->accept_resume = kv_now_ms() + SRV_ACCEPT_PAUSE_MS;
            return;
        }
        if (atomic_fetch_add_explicit(&s->nconns, 1, memory_order_relaxed) >= s->max_conns) {
            atomic_fetch_sub_explicit(&s->nconns, 1, memory_order_relaxed);
            KV_LOGW_RL(5000, "RPC connection refused: too many connections (max %d)", s->max_conns);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct srv_conn *c = kv_calloc(1, sizeof(*c));
        if (!c) {
            KV_LOGW_RL(5000, "RPC connection refused: out of memory");
            atomic_fetch_sub_explicit(&s->nconns, 1, memory_order_relaxed);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->fresh = true;
        c->authed = !s->token;
        kv_buf_init(&c->in);
        kv_buf_init(&c->out);
        pthread_mutex_init(&c->lock, NULL);
        c->loop = &s->loops[l->next_loop++ % (unsigned)s->nloops];
        if (c->loop == l)
            loop_register(l, c);
        else
            loop_push(c->loop, c);
    }
}

/* Loop thread: takes what loop 0 and the workers handed over. */
static void loop_drain_inbox(struct srv_loop *l)
{
    uint64_t v;
    ssize_t r = read(l->evfd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&l->qlock);
    struct srv_conn *c = l->inbox_head;
    l->inbox_head = l->inbox_tail = NULL;
    pthread_mutex_unlock(&l->qlock);
    while (c) {
        struct srv_conn *next = c->qnext; /* c may be queued to a worker again below */
        if (c->fresh) {
            loop_register(l, c);
        } else {
            pthread_mutex_lock(&c->lock);
            c->busy = false;
            c->io_pending = false;
            pthread_mutex_unlock(&c->lock);
            if (c->failed)
                conn_close(l, c);
            else
                conn_drive(l, c);
        }
        c = next;
    }
}

static void loop_scan_deadlines(struct srv_loop *l, int64_t now)
{
    for (struct srv_conn *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->deadline && now >= c->deadline) {
            KV_LOGD("RPC frame not completed within %d ms: closing the connection",
                    l->s->io_timeout_ms);
            conn_close(l, c);
        }
    }
    l->next_scan = now + l->s->scan_ms;
}

/* Before the loop sleeps: asks epoll without blocking for up to win_us, yielding the CPU to
 * any thread that wants it between two asks. A request that arrives meanwhile is read at once,
 * without the sleep and wake-up of the thread, which on a VM (a halted vCPU woken by an
 * interrupt) cost about as much as the rest of a small request (bench/README.md). true when
 * events arrived (l->nev > 0). */
static bool loop_spin(struct srv_loop *l, int win_us)
{
    struct kv_rpc_server *s = l->s;
    int64_t until = kv_now_us() + win_us;
    atomic_fetch_add_explicit(&s->spins, 1, memory_order_relaxed);
    do {
        l->nev = epoll_wait(l->epfd, l->evs, SRV_MAX_EVENTS, 0);
        if (l->nev > 0) {
            atomic_fetch_add_explicit(&s->spin_hits, 1, memory_order_relaxed);
            return true;
        }
        sched_yield(); /* a thread that wants this CPU runs first */
    } while (!atomic_load_explicit(&s->stopping, memory_order_relaxed) && kv_now_us() < until);
    l->nev = 0;
    return false;
}

/* Leader: ends an epoll batch (deadline scan, accept resume, frees) and waits for the next,
 * polling first for the window the loop's own waits taught it (kv_spin, net.h). */
static void loop_next_batch(struct srv_loop *l)
{
    struct kv_rpc_server *s = l->s;
    int64_t now = kv_now_ms();
    if (l->ntimed > 0 && now >= l->next_scan)
        loop_scan_deadlines(l, now);
    if (l->accept_paused && now >= l->accept_resume) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, s->lfd, &ev);
        l->accept_paused = false;
    }
    while (l->graveyard) {
        struct srv_conn *c = l->graveyard;
        l->graveyard = c->next;
        conn_free(c);
    }
    int timeout = -1;
    if (l->ntimed > 0)
        timeout = (int)KV_MAX(0, l->next_scan - now);
    if (l->accept_paused) {
        int t = (int)KV_MAX(0, l->accept_resume - now);
        timeout = timeout < 0 ? t : KV_MIN(timeout, t);
    }
    l->iev = 0;
    int win = timeout != 0 ? kv_spin_window(&l->spin) : 0;
    int64_t t0 = l->spin.max_us ? kv_now_us() : 0;
    if (win > 0 && loop_spin(l, win)) {
        kv_spin_learn(&l->spin, kv_now_us() - t0);
        return;
    }
    l->nev = epoll_wait(l->epfd, l->evs, SRV_MAX_EVENTS, timeout);
    if (t0)
        kv_spin_learn(&l->spin, kv_now_us() - t0);
    if (l->nev < 0) {
        if (errno != EINTR) {
            KV_LOGE("RPC loop: epoll_wait: %s", strerror(errno));
            kv_sleep_ms(10);
        }
        l->nev = 0;
    }
}

/* Leads loop l until the server stops (NULL) or until an event produced a request for the
 * workers (that connection, busy; the batch in progress stays in l for the next leader). */
static struct srv_conn *loop_lead(struct srv_loop *l)
{
    struct kv_rpc_server *s = l->s;
    while (!atomic_load(&s->stopping)) {
        if (l->iev >= l->nev) {
            loop_next_batch(l);
            continue;
        }
        void *p = l->evs[l->iev++].data.ptr;
        if (p == l) {
            loop_drain_inbox(l);
            continue;
        }
        if (p == s) {
            loop_accept(l);
            continue;
        }
        struct srv_conn *c = p;
        if (c->closed)
            continue;
        pthread_mutex_lock(&c->lock);
        bool busy = c->busy;
        if (busy)
            c->io_pending = true;
        pthread_mutex_unlock(&c->lock);
        if (busy)
            continue;
        l->in_events = true;
        conn_drive(l, c);
        l->in_events = false;
        if (l->handoff) {
            c = l->handoff;
            l->handoff = NULL;
            return c;
        }
    }
    return NULL;
}

/* The leader of l has request c for the workers. When a thread is idle beyond the work already
 * queued, l goes to the lead queue (that thread takes it over) and the caller runs c itself:
 * the request is answered without a thread hop. Otherwise c is queued and the caller keeps
 * leading. Returns true for a hand-over. */
static bool loop_handover(struct kv_rpc_server *s, struct srv_loop *l, struct srv_conn *c)
{
    pthread_mutex_lock(&s->wlock);
    bool give = s->nidle > s->nqueued + s->nlead;
    if (give) {
        l->lnext = NULL;
        if (s->lead_tail)
            s->lead_tail->lnext = l;
        else
            s->lead_head = l;
        s->lead_tail = l;
        s->nlead++;
    } else {
        c->qnext = NULL;
        if (s->wq_tail)
            s->wq_tail->qnext = c;
        else
            s->wq_head = c;
        s->wq_tail = c;
        s->nqueued++;
    }
    pthread_mutex_unlock(&s->wlock);
    pthread_cond_signal(&s->wcond);
    return give;
}

/* Every server thread: leads a loop while it has one, else takes loops to lead and requests
 * to run from the queues (loops first: a loop without a leader serves nobody). */
static void srv_thread(struct kv_rpc_server *s, struct srv_loop *l)
{
    for (;;) {
        if (l) {
            struct srv_conn *c = loop_lead(l);
            if (!c)
                return;
            if (!loop_handover(s, l, c))
                continue;
            l = NULL;
            run_request(s, c);
        }
        pthread_mutex_lock(&s->wlock);
        s->nidle++;
        while (!s->lead_head && !s->wq_head && !atomic_load(&s->stopping))
            pthread_cond_wait(&s->wcond, &s->wlock);
        s->nidle--;
        if (atomic_load(&s->stopping)) { /* queued requests are dropped: their handler never runs */
            pthread_mutex_unlock(&s->wlock);
            return;
        }
        if (s->lead_head) {
            l = s->lead_head;
            s->lead_head = l->lnext;
            if (!s->lead_head)
                s->lead_tail = NULL;
            s->nlead--;
            pthread_mutex_unlock(&s->wlock);
            continue;
        }
        struct srv_conn *c = s->wq_head;
        s->wq_head = c->qnext;
        if (!s->wq_head)
            s->wq_tail = NULL;
        s->nqueued--;
        pthread_mutex_unlock(&s->wlock);
        run_request(s, c);
    }
}

static void *leader_main(void *arg)
{
    struct srv_loop *l = arg;
    srv_thread(l->s, l);
    return NULL;
}

static void *worker_main(void *arg)
{
    srv_thread(arg, NULL);
    return NULL;
}

static int loop_init(struct kv_rpc_server *s, struct srv_loop *l, bool with_listener)
{
    l->s = s;
    kv_spin_init(&l->spin, s->poll_spin_us);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0)
        return kv_err_from_errno(errno);
    int rc;
    l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->evfd < 0) {
        rc = kv_err_from_errno(errno);
        goto out_close_ep;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) < 0) {
        rc = kv_err_from_errno(errno);
        goto out_close_ev;
    }
    if (with_listener) {
        struct epoll_event lev = {.events = EPOLLIN, .data.ptr = s};
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, s->lfd, &lev) < 0) {
            rc = kv_err_from_errno(errno);
            goto out_close_ev;
        }
    }
    pthread_mutex_init(&l->qlock, NULL);
    return KV_OK;
out_close_ev:
    close(l->evfd);
out_close_ep:
    close(l->epfd);
    l->epfd = l->evfd = -1;
    return rc;
}

/* Frees the connections of a loop whose thread is gone (or never ran), then the loop. */
static void loop_fini(struct srv_loop *l)
{
    for (struct srv_conn *c = l->inbox_head, *next; c; c = next) {
        next = c->qnext;
        if (c->fresh) { /* not in the list yet; the others are */
            close(c->fd);
            conn_free(c);
        }
    }
    for (struct srv_conn *c = l->conns, *next; c; c = next) {
        next = c->next;
        close(c->fd);
        conn_free(c);
    }
    for (struct srv_conn *c = l->graveyard, *next; c; c = next) {
        next = c->next;
        conn_free(c);
    }
    pthread_mutex_destroy(&l->qlock);
    close(l->evfd);
    close(l->epfd);
}

/* Stops and frees s with however many loops and workers were started. */
static void server_teardown(struct kv_rpc_server *s, int loops_inited)
{
    atomic_store(&s->stopping, true);
    pthread_mutex_lock(&s->wlock);
    pthread_cond_broadcast(&s->wcond);
    pthread_mutex_unlock(&s->wlock);
    for (int i = 0; i < loops_inited; i++)
        loop_wake(&s->loops[i]);
    /* After the joins neither handler runs. Threads may hand connections back to the loops until
     * then: the evfds stay open until loop_fini. */
    for (int i = 0; i < s->threads_started; i++)
        pthread_join(s->threads[i], NULL);
    for (int i = 0; i < loops_inited; i++)
        loop_fini(&s->loops[i]);
    close(s->lfd);
    pthread_cond_destroy(&s->wcond);
    pthread_mutex_destroy(&s->wlock);
    kv_free(s->threads);
    kv_free(s->loops);
    kv_free(s->token);
    kv_free(s);
}

int kv_rpc_server_start(const struct kv_rpc_server_opts *opts, struct kv_rpc_server **out)
{
    if (!opts || !opts->addr || !opts->handler || !out || opts->io_threads < 0 ||
        opts->io_threads > SRV_MAX_IO_THREADS || opts->workers < 0 ||
        opts->workers > SRV_MAX_WORKERS)
        return KV_EINVAL;
    char host[256];
    uint16_t port;
    if (kv_parse_hostport(opts->addr, host, sizeof(host), &port) < 0)
        return KV_EINVAL;
    struct kv_rpc_server *s = kv_calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->handler = opts->handler;
    s->fast_handler = opts->fast_handler;
    const char *tok = opts->token ? opts->token : kv_auth_token();
    if (tok && *tok && !(s->token = kv_strdup(tok))) {
        kv_free(s);
        return KV_ENOMEM;
    }
    s->ud = opts->ud;
    s->max_conns = opts->max_conns > 0 ? opts->max_conns : KV_RPC_DEF_MAX_CONNS;
    s->io_timeout_ms = opts->io_timeout_ms > 0 ? opts->io_timeout_ms : DEF_TIMEOUT_MS;
    s->scan_ms = KV_MAX(10, KV_MIN(1000, s->io_timeout_ms / 10));
    s->nloops = opts->io_threads > 0 ? opts->io_threads : KV_RPC_DEF_IO_THREADS;
    s->nworkers = opts->workers > 0 ? opts->workers : KV_RPC_DEF_WORKERS;
    s->poll_spin_us = KV_MIN(KV_RPC_MAX_POLL_SPIN_US, KV_MAX(0, opts->poll_spin_us));
    atomic_init(&s->stopping, false);
    atomic_init(&s->nconns, 0);
    int rc = kv_net_listen_tcp(host, port, 1024, &s->lfd, &s->port);
    if (rc < 0)
        goto out_free;
    kv_net_set_nonblock(s->lfd, 1);
    pthread_mutex_init(&s->wlock, NULL);
    pthread_cond_init(&s->wcond, NULL);
    s->loops = kv_calloc((size_t)s->nloops, sizeof(*s->loops));
    s->threads = kv_calloc((size_t)(s->nloops + s->nworkers), sizeof(*s->threads));
    int inited = 0;
    if (!s->loops || !s->threads) {
        rc = KV_ENOMEM;
        goto out_teardown;
    }
    for (; inited < s->nloops; inited++) {
        rc = loop_init(s, &s->loops[inited], inited == 0);
        if (rc < 0)
            goto out_teardown;
    }
    for (; s->threads_started < s->nloops + s->nworkers; s->threads_started++) {
        int i = s->threads_started;
        int e = i < s->nloops ? pthread_create(&s->threads[i], NULL, leader_main, &s->loops[i])
                              : pthread_create(&s->threads[i], NULL, worker_main, s);
        if (e != 0) {
            rc = KV_ENOMEM;
            goto out_teardown;
        }
    }
    *out = s;
    return KV_OK;
out_teardown:
    server_teardown(s, inited);
    return rc;
out_free:
    kv_free(s->token);
    kv_free(s);
    return rc;
}

void kv_rpc_server_poll_stats(struct kv_rpc_server *s, uint64_t *spins, uint64_t *hits)
{
    *spins = atomic_load_explicit(&s->spins, memory_order_relaxed);
    *hits = atomic_load_explicit(&s->spin_hits, memory_order_relaxed);
}

uint16_t kv_rpc_server_port(const struct kv_rpc_server *s)
{
    return s->port;
}

void kv_rpc_server_stop(struct kv_rpc_server *s)
{
    if (!s)
        return;
    server_teardown(s, s->nloops);
}
