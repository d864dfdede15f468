/* SPDX-License-Identifier: Apache-2.0 */
/* err.c - names and messages of enum kv_err, generated from KV_ERR_MAP. Stateless. */
#include <errno.h>

#include "kvstash/kvstash.h"

const char *kv_err_name(int err)
{
    switch (err) {
#define KV_ERR_NAME_(name, value, msg)                                                             \
    case value:                                                                                    \
        return "KV_" #name;
        KV_ERR_MAP(KV_ERR_NAME_)
#undef KV_ERR_NAME_
    }
    return "KV_UNKNOWN";
}

const char *kv_strerror(int err)
{
    if (err > 0)
        err = -err;
    switch (err) {
#define KV_ERR_MSG_(name, value, msg)                                                              \
    case value:                                                                                    \
        return msg;
        KV_ERR_MAP(KV_ERR_MSG_)
#undef KV_ERR_MSG_
    }
    return "unknown error";
}

int kv_err_from_errno(int e)
{
    switch (e) {
    case 0:
        return KV_OK;
    case EINVAL:
        return KV_EINVAL;
    case ENOMEM:
        return KV_ENOMEM;
    case ENOENT:
        return KV_ENOENT;
    case EEXIST:
        return KV_EEXIST;
    case ETIMEDOUT:
        return KV_ETIMEDOUT;
    case ENOSPC:
        return KV_ENOSPC;
    case EBUSY:
        return KV_EBUSY;
    case EAGAIN:
        return KV_EAGAIN;
    case ECONNREFUSED:
        return KV_ECONNREFUSED;
    case ECONNRESET:
    case EPIPE:
        return KV_ECONNRESET;
    case ENOTSUP:
        return KV_ENOTSUP;
    case ERANGE:
        return KV_ERANGE;
    case EPERM:
    case EACCES:
        return KV_EPERM;
    case E2BIG:
        return KV_E2BIG;
    case ECANCELED:
        return KV_ECANCELED;
    default:
        return KV_EIO;
    }
}

const char *kv_version(void)
{
#define KV_STR2_(x) #x
#define KV_STR_(x) KV_STR2_(x)
    return KV_STR_(KV_VERSION_MAJOR) "." KV_STR_(KV_VERSION_MINOR) "." KV_STR_(KV_VERSION_PATCH);
}
