/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_mount_pack.c - fuzzes the decoder of the packed MOUNT object records (a new leader
 * trusts nothing a node reports). Properties: never crashes or reads past the input; an
 * accepted buffer re-encodes, record by record, to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "store/mount_pack.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Kvstash__NodeObject *v;
    size_t n;
    char err[160];
    int rc = kv_mount_unpack(data, size, &v, &n, err, sizeof(err));
    if (rc == KV_OK) {
        uint8_t *b = malloc(size + 1);
        if (!b)
            abort();
        uint8_t *p = b;
        for (size_t i = 0; i < n; i++)
            p = kv_mount_pack(p, &v[i]);
        if ((size_t)(p - b) != size || memcmp(b, data, size) != 0)
            abort();
        free(b);
        kv_free(v);
    } else if (rc != KV_EPROTO || !err[0]) {
        abort();
    }
    return 0;
}
