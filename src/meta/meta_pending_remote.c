/* SPDX-License-Identifier: Apache-2.0 */
/* meta_pending_remote.c - TEMPORARY: etcd/redis backends not yet built. */
#include "meta/meta_int.h"

int kv_meta_etcd_open(struct kv_meta *m, const char *rest)
{
    (void)m;
    (void)rest;
    return KV_ENOTBUILT;
}
int kv_meta_redis_open(struct kv_meta *m, const char *rest)
{
    (void)m;
    (void)rest;
    return KV_ENOTBUILT;
}
