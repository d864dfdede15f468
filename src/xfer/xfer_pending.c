/* SPDX-License-Identifier: Apache-2.0 */
/* xfer_pending.c - TEMPORARY stubs until the transfer engine lands. */
#include "kvstash/xfer.h"

int kv_xfer_create(struct kv_meta *meta, const struct kv_xfer_opts *opts, struct kv_xfer **out)
{
    (void)meta;
    (void)opts;
    (void)out;
    return KV_ENOTBUILT;
}
void kv_xfer_destroy(struct kv_xfer *x)
{
    (void)x;
}
int kv_xfer_segment_alloc(struct kv_xfer *x, const char *name, size_t len, void **addr,
                          kv_seg_id *id)
{
    (void)x;
    (void)name;
    (void)len;
    (void)addr;
    (void)id;
    return KV_ENOTBUILT;
}
