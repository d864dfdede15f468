/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_p2p_manifest.c - fuzzes the P2P manifest decoder (JSON from metadata, written by any
 * publisher) and the peer-record decoder. Properties: never crashes; an accepted manifest
 * re-encodes and decodes to an equal one; every chunk locates inside its file; an accepted
 * peer record (decoded against the manifest's layout, or a fixed one) re-encodes identically.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "kvstash/kvstash.h"
#include "p2p/p2p_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_peer(const uint8_t *data, size_t size, uint64_t nchunks, size_t nfiles)
{
    struct kv_p2p_peer p, q;
    char err[256];
    if (kv_p2p_peer_decode((const char *)data, size, nchunks, nfiles, &p, err, sizeof(err)) !=
        KV_OK)
        return;
    char *s = NULL;
    size_t n = 0;
    if (kv_p2p_peer_encode(&p, &s, &n) == KV_OK) {
        size_t nb = (size_t)((nchunks + 7) / 8);
        if (kv_p2p_peer_decode(s, n, nchunks, nfiles, &q, err, sizeof(err)) != KV_OK)
            abort();
        if (strcmp(p.id, q.id) != 0 || p.publisher != q.publisher ||
            (nb && (memcmp(p.have, q.have, nb) != 0 || memcmp(p.claims, q.claims, nb) != 0)))
            abort();
        kv_p2p_peer_fini(&q);
        kv_free(s);
    }
    kv_p2p_peer_fini(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        kv_log_set_level(KV_LOG_ERROR);
        quiet = 1;
    }
    struct kv_p2p_manifest m, e;
    char err[256];
    check_peer(data, size, 9, 2);
    if (kv_p2p_manifest_decode((const char *)data, size, &m, err, sizeof(err)) != KV_OK)
        return 0;
    for (uint64_t c = 0; c < m.nchunks && c < 4096; c++) {
        size_t fi;
        uint64_t off, len;
        kv_p2p_chunk_locate(&m, c, &fi, &off, &len);
        if (fi >= m.nfiles || len == 0 || len > m.chunk_size || off + len > m.files[fi].size)
            abort();
    }
    char *s = NULL;
    size_t n = 0;
    if (kv_p2p_manifest_encode(&m, &s, &n) == KV_OK) {
        if (kv_p2p_manifest_decode(s, n, &e, err, sizeof(err)) != KV_OK ||
            !kv_p2p_manifest_equal(&m, &e))
            abort();
        kv_p2p_manifest_fini(&e);
        kv_free(s);
    }
    kv_p2p_manifest_fini(&m);
    return 0;
}
