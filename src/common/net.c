/* SPDX-License-Identifier: Apache-2.0 */
/* net.c - socket helpers (see net.h). Stateless and thread-safe. */
#include "common/net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"

static int resolve(const char *host, uint16_t port, int passive, struct addrinfo **res)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    if (host && strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    int rc = getaddrinfo(host, ps, &hints, res);
    if (rc != 0)
        return KV_EINVAL;
    return KV_OK;
}

int kv_net_set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return kv_err_from_errno(errno);
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl) < 0 ? kv_err_from_errno(errno) : KV_OK;
}

int kv_net_listen_tcp(const char *host, uint16_t port, int backlog, int *fd_out,
                      uint16_t *bound_port)
{
    struct addrinfo *res;
    int rc = resolve(host, port, 1, &res);
    if (rc < 0)
        return rc;
    rc = KV_EIO;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = kv_err_from_errno(errno);
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
            rc = errno == EADDRINUSE ? KV_EBUSY : kv_err_from_errno(errno);
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        if (bound_port) {
            if (ss.ss_family == AF_INET)
                *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else
                *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        *fd_out = fd;
        rc = KV_OK;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

int kv_net_connect_tcp(const char *host, uint16_t port, int timeout_ms, int *fd_out)
{
    struct addrinfo *res;
    int rc = resolve(host, port, 0, &res);
    if (rc < 0)
        return rc;
    rc = KV_ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            rc = kv_err_from_errno(errno);
            continue;
        }
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            r = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
            if (r == 0) {
                close(fd);
                rc = KV_ETIMEDOUT;
                continue;
            }
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) {
                close(fd);
                rc = kv_err_from_errno(err);
                continue;
            }
        } else if (r < 0) {
            rc = kv_err_from_errno(errno);
            close(fd);
            continue;
        }
        kv_net_set_nonblock(fd, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        *fd_out = fd;
        rc = KV_OK;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

static int wait_fd(int fd, short ev, int64_t deadline_ms)
{
    int to = -1;
    if (deadline_ms >= 0) {
        int64_t left = deadline_ms - kv_now_ms();
        if (left <= 0)
            return KV_ETIMEDOUT;
        to = (int)KV_MIN(left, 1 << 30);
    }
    struct pollfd pfd = {.fd = fd, .events = ev};
    int r;
    do {
        r = poll(&pfd, 1, to);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return KV_ETIMEDOUT;
    if (r < 0)
        return kv_err_from_errno(errno);
    return KV_OK;
}

int kv_net_write_full(int fd, const void *p, size_t n, int64_t deadline_ms)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL | (deadline_ms >= 0 ? MSG_DONTWAIT : 0));
        if (w > 0) {
            c += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(fd, POLLOUT, deadline_ms);
            if (rc < 0)
                return rc;
            continue;
        }
        return w == 0 ? KV_ECONNRESET : kv_err_from_errno(errno);
    }
    return KV_OK;
}

int kv_net_read_full(int fd, void *p, size_t n, int64_t deadline_ms)
{
    char *c = p;
    while (n > 0) {
        ssize_t r = recv(fd, c, n, deadline_ms >= 0 ? MSG_DONTWAIT : MSG_WAITALL);
        if (r > 0) {
            c += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0)
            return KV_ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(fd, POLLIN, deadline_ms);
            if (rc < 0)
                return rc;
            continue;
        }
        return kv_err_from_errno(errno);
    }
    return KV_OK;
}

#define SPIN_MIN_US 4 /* a window halved below this is 0; a grown one starts here */

void kv_spin_init(struct kv_spin *sp, int max_us)
{
    sp->max_us = max_us > 0 ? max_us : 0;
    atomic_init(&sp->win_us, sp->max_us);
}

int kv_spin_window(struct kv_spin *sp)
{
    return atomic_load_explicit(&sp->win_us, memory_order_relaxed);
}

void kv_spin_learn(struct kv_spin *sp, int64_t waited_us)
{
    if (sp->max_us == 0)
        return;
    int w = atomic_load_explicit(&sp->win_us, memory_order_relaxed);
    int nw;
    if (waited_us <= sp->max_us)
        nw = w == 0 ? SPIN_MIN_US : (w >= sp->max_us / 2 ? sp->max_us : w * 2);
    else
        nw = w / 2 < SPIN_MIN_US ? 0 : w / 2;
    if (nw != w)
        atomic_store_explicit(&sp->win_us, nw, memory_order_relaxed);
}

int kv_net_read_some(int fd, void *p, size_t n, int64_t deadline_ms, int spin_us, size_t *got)
{
    *got = 0;
    if (n == 0)
        return KV_OK;
    int64_t spin_until = spin_us > 0 ? kv_now_us() + spin_us : 0;
    for (;;) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            *got = (size_t)r;
            return KV_OK;
        }
        if (r == 0)
            return KV_ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return kv_err_from_errno(errno);
        if (spin_until && kv_now_us() < spin_until) {
            sched_yield(); /* a thread that wants this CPU runs first */
            continue;
        }
        spin_until = 0;
        int rc = wait_fd(fd, POLLIN, deadline_ms);
        if (rc < 0)
            return rc;
    }
}

int kv_net_free_port(uint16_t *port)
{
    int fd;
    int rc = kv_net_listen_tcp("127.0.0.1", 0, 1, &fd, port);
    if (rc == KV_OK)
        close(fd);
    return rc;
}
