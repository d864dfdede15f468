/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net.h - socket helpers shared by every daemon and transport: listen, connect with a
 * deadline, full reads and writes with a deadline. All return KV_OK or a negative kv_err
 * (KV_ETIMEDOUT, KV_ECONNREFUSED, KV_ECONNRESET for an orderly close mid-message, ...).
 */
#ifndef KV_COMMON_NET_H
#define KV_COMMON_NET_H

#include <stddef.h>
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
KV_API int kv_net_set_nonblock(int fd, int on);
/* A free TCP port on 127.0.0.1 (racy by nature; for tests and defaults only). */
KV_API int kv_net_free_port(uint16_t *port);

#endif
