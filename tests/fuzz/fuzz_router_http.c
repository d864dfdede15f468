/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_router_http.c - fuzzes the router's HTTP/1.1 message layer (router_http.c) with
 * arbitrary bytes, as a client's request stream (pipelined messages, any read sizes) and as an
 * engine's response stream. The first byte picks the read size. Checks: no crash, no leak; a
 * request stream either completes messages or stops with an error status and a message; the
 * bytes consumed never exceed what was fed; a completed request body respects the limit.
 */
#include <stdint.h>
#include <string.h>

#include "router/router_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int body_sink(void *ud, const char *p, size_t n)
{
    size_t *total = ud;
    (void)p;
    *total += n;
    return 0;
}

static int head_sink(void *ud)
{
    (void)ud;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] % 64) + 1;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;

    struct rt_http m;
    rt_http_init(&m, HTTP_REQUEST, 4096);
    size_t off = 0, avail = 0;
    while (off < n) {
        avail = avail + step > n ? n : avail + step; /* bytes "read" so far */
        while (off < avail) {
            size_t k = rt_http_feed(&m, p + off, avail - off);
            if (k > avail - off)
                __builtin_trap();
            off += k;
            if (m.status) {
                if (!m.err[0])
                    __builtin_trap();
                goto req_done;
            }
            if (!m.done)
                break;
            if (m.body.len > 4096 || !m.head_done)
                __builtin_trap();
            (void)rt_http_keepalive(&m);
            (void)rt_http_header(&m, "content-type", NULL);
            rt_http_next(&m);
        }
        if (avail == n && off < n && !m.done && !m.status)
            break; /* all fed, message incomplete */
    }
    (void)rt_http_eof(&m);
req_done:
    rt_http_fini(&m);

    size_t total = 0;
    rt_http_init(&m, HTTP_RESPONSE, 0);
    m.head_cb = head_sink;
    m.body_cb = body_sink;
    m.ud = &total;
    for (off = 0; off < n && !m.done && !m.status;) {
        size_t len = n - off < step ? n - off : step;
        size_t k = rt_http_feed(&m, p + off, len);
        if (k > len)
            __builtin_trap();
        off += k;
        if (k < len && !m.done && !m.status)
            __builtin_trap(); /* stops early only when done or failed */
    }
    if (!m.done && !m.status)
        (void)rt_http_eof(&m);
    if (m.status && !m.err[0])
        __builtin_trap();
    rt_http_fini(&m);
    return 0;
}
