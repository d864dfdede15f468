/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_router_request.c - fuzzes the router's inspection of untrusted OpenAI request bodies
 * (kv_rt_inspect) and the engine URL normaliser with arbitrary bytes. Checks: no crash, no leak,
 * and on success the extracted fields are consistent (model non-empty, text_len == strlen(text)).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "router/router_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kv_rt_reqinfo ri;
    char err[256];
    if (kv_rt_inspect((const char *)data, size, &ri, err, sizeof(err)) == KV_OK) {
        if (!ri.model || !*ri.model || !ri.text || strlen(ri.text) != ri.text_len ||
            ri.est_tokens < 0)
            __builtin_trap();
        kv_rt_reqinfo_fini(&ri);
    } else if (ri.model || ri.text || !err[0]) {
        __builtin_trap();
    }
    /* the same bytes as an engine URL */
    char *s = kv_memdup0(data, size > 1024 ? 1024 : size);
    if (s) {
        char out[300], host[256], path[256];
        uint16_t port;
        int rc = kv_rt_url_normalize(s, out, sizeof(out), host, sizeof(host), &port, path,
                                     sizeof(path), err, sizeof(err));
        if (rc == KV_OK && (strncmp(out, "http://", 7) != 0 || port == 0))
            __builtin_trap();
        kv_free(s);
    }
    return 0;
}
