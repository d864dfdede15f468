/* SPDX-License-Identifier: Apache-2.0 */
/* meta_pending_local.c - TEMPORARY: embedded/http backends and metad not yet built. */
#include "meta/meta_int.h"
#include "meta/metad.h"

int kv_meta_embedded_open(struct kv_meta *m, const char *rest)
{
    (void)m;
    (void)rest;
    return KV_ENOTBUILT;
}
int kv_meta_http_open(struct kv_meta *m, const char *url)
{
    (void)m;
    (void)url;
    return KV_ENOTBUILT;
}
int kv_metad_start(const struct kv_metad_opts *opts, struct kv_metad **out)
{
    (void)opts;
    (void)out;
    return KV_ENOTBUILT;
}
uint16_t kv_metad_port(const struct kv_metad *d)
{
    (void)d;
    return 0;
}
void kv_metad_stop(struct kv_metad *d)
{
    (void)d;
}
