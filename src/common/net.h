/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net.h - socket helpers shared by every daemon and transport: listen, connect with a
 * deadline, full reads and writes with a deadline. All return KV_OK or a negative kv_err
 * (KV_ETIMEDOUT, KV_ECONNREFUSED, KV_ECONNRESET for an orderly close mid-message, ...).
 */
#ifndef KV_COMMON_NET_H
#define KV_COMMON_NET_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kvstash/err.h"

/* Binds and listens on host:port (port 0 = any); *bound_port gets the port actually bound.
 * SO_REUSEADDR, close-on-exec. */
KV_API int kv_net_listen_tcp(const char *host, uint16_t port, int backlog, int *fd,
                             uint16_t *bound_port);
/* Connects to host:port within timeout_ms; the socket is blocking, TCP_NODELAY, cloexec. */
KV_API int kv_net_connect_tcp(const char *host, uint16_t port, int timeout_ms, int *fd);
/* Writes/reads exactly n bytes before deadline_ms (kv_now_ms() clock; -1 = none). */
KV_API int kv_net_write_full(int fd, const void *p, size_t n, int64_t deadline_ms);
KV_API int kv_net_read_full(int fd, void *p, size_t n, int64_t deadline_ms);
/* How long a waiter polls before it sleeps, learned from its own waits (as the kernel's
 * haltpoll does for an idle vCPU): a wait that ended within max_us would have been caught by
 * polling, so the window grows (to max_us); one that took longer means polling burnt CPU that
 * another thread may have needed (the one computing the answer, on a small host), so the
 * window halves, down to 0. Threads may share one (relaxed atomics: a lost update only slows
 * the learning). */
struct kv_spin {
    int max_us;         /* 0 = never poll */
    _Atomic int win_us; /* the current window, 0..max_us */
};
KV_API void kv_spin_init(struct kv_spin *sp, int max_us);
/* The window to poll for now, in microseconds (0: do not poll). */
KV_API int kv_spin_window(struct kv_spin *sp);
/* A wait of waited_us (polling included) is over: adapts the window. */
KV_API void kv_spin_learn(struct kv_spin *sp, int64_t waited_us);

/* Reads what has arrived, at least 1 and at most n bytes, into p (*got). Before it blocks it
 * keeps asking without blocking for up to spin_us microseconds (0 = not at all): an answer due
 * within that time is read without the thread's sleep and wake-up. Errors as kv_net_read_full. */
KV_API int kv_net_read_some(int fd, void *p, size_t n, int64_t deadline_ms, int spin_us,
                            size_t *got);
KV_API int kv_net_set_nonblock(int fd, int on);
/* A free TCP port on 127.0.0.1 (racy by nature; for tests and defaults only). */
KV_API int kv_net_free_port(uint16_t *port);

#endif
