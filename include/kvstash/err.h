/* SPDX-License-Identifier: Apache-2.0 */
/*
 * err.h - the one error space of kvstash.
 *
 * Every fallible function returns an int: KV_OK (0) on success or a negative enum kv_err.
 * The enum, its names and its messages are generated from the single KV_ERR_MAP below.
 * Ranges: general -1..-99, xfer -100..-199, meta -200..-299, store -300..-399,
 * gateway/router -400..-499, p2p -500..-599. The list is append-only: a value is never
 * renumbered or reused, since the Python layer and logs carry the numbers.
 */
#ifndef KVSTASH_ERR_H
#define KVSTASH_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KV_API __attribute__((visibility("default")))
#else
#define KV_API
#endif

/* XX(name, value, message) */
#define KV_ERR_MAP(XX)                                                                             \
    XX(OK, 0, "success")                                                                           \
    XX(EINVAL, -1, "invalid argument")                                                             \
    XX(ENOMEM, -2, "out of memory")                                                                \
    XX(ENOENT, -3, "not found")                                                                    \
    XX(EEXIST, -4, "already exists")                                                               \
    XX(EIO, -5, "I/O error")                                                                       \
    XX(ETIMEDOUT, -6, "timed out")                                                                 \
    XX(EPROTO, -7, "protocol error (malformed message)")                                           \
    XX(ENOSPC, -8, "no space left")                                                                \
    XX(EBUSY, -9, "resource busy")                                                                 \
    XX(ECANCELED, -10, "operation canceled")                                                       \
    XX(EAGAIN, -11, "try again")                                                                   \
    XX(ECONNREFUSED, -12, "connection refused")                                                    \
    XX(ECONNRESET, -13, "connection reset by peer")                                                \
    XX(ENOTSUP, -14, "operation not supported")                                                    \
    XX(ERANGE, -15, "value out of range")                                                          \
    XX(EPERM, -16, "permission denied (bad or missing token)")                                     \
    XX(E2BIG, -17, "argument or message too large")                                                \
    XX(ESHUTDOWN, -18, "shut down")                                                                \
    XX(ENOTBUILT, -19, "not built in this binary")                                                 \
    XX(ECHECKSUM, -20, "checksum mismatch")                                                        \
    XX(EXFER_BOUNDS, -100, "request outside the segment's bounds")                                 \
    XX(EXFER_NOSEG, -101, "segment not found")                                                     \
    XX(EXFER_PEER, -102, "peer failed during transfer")                                            \
    XX(EXFER_NOTRANSPORT, -103, "no transport reaches the segment")                                \
    XX(EXFER_NOBATCH, -104, "unknown or stale batch id")                                           \
    XX(EMETA_CAS, -200, "compare-and-swap failed: value differs")                                  \
    XX(EMETA_LEASE, -201, "lease not found or expired")                                            \
    XX(EMETA_UNAVAIL, -202, "metadata backend unavailable")                                        \
    XX(EMETA_URL, -203, "bad metadata URL")                                                        \
    XX(ESTORE_NONODE, -300, "no storage node mounted yet")

enum kv_err {
#define KV_ERR_ENUM_(name, value, msg) KV_##name = (value),
    KV_ERR_MAP(KV_ERR_ENUM_)
#undef KV_ERR_ENUM_
};

/* The constant's name ("KV_EINVAL"), or "KV_UNKNOWN" for a value not in the map. Static
 * storage; thread-safe. */
KV_API const char *kv_err_name(int err);

/* A human-readable message for err (positive values are treated as their negation), or
 * "unknown error" for a value not in the map. Static storage; thread-safe. */
KV_API const char *kv_strerror(int err);

/* The negative kv_err that best matches a positive errno value (ENOENT -> KV_ENOENT, ...);
 * KV_EIO for anything without a closer match. */
KV_API int kv_err_from_errno(int errnum);

#ifdef __cplusplus
}
#endif
#endif
