/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_admin_http.c - fuzzes the admin server's routing decision (kv_admin_http_match: the
 * request-line URI reduced to its path, matched against exact and prefix routes and a method
 * mask). The first byte picks the method bit; the rest is the URI. Checks: no crash, no leak;
 * the answer is a route index or -400/-404/-405; a matched path is a prefix of the URI and starts
 * with '/'; an exact route is matched only by its own path.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "common/admin_http.h"
#include "common/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void nop(struct evhttp_request *req, const char *path, void *ud)
{
    (void)req;
    (void)path;
    (void)ud;
}

static struct kv_admin_http *server(void)
{
    static struct kv_admin_http *h;
    if (!h) {
        struct kv_admin_http_opts o = {0}; /* no listener, no thread */
        if (kv_admin_http_create(&o, &h, NULL, 0) < 0)
            return NULL;
        kv_admin_http_route(h, "/metrics", 0, KV_ADMIN_GET, nop, NULL);
        kv_admin_http_route(h, "/engines/", KV_ADMIN_PREFIX, KV_ADMIN_GET, nop, NULL);
        kv_admin_http_route(h, "/engines", 0, KV_ADMIN_GET, nop, NULL);
        kv_admin_http_route(h, "/api/", KV_ADMIN_PREFIX, KV_ADMIN_ANY, nop, NULL);
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct kv_admin_http *h = server();
    if (!h)
        return 0;
    unsigned method = 1u << (data[0] % 5);
    char *uri = kv_malloc(size);
    if (!uri)
        return 0;
    memcpy(uri, data + 1, size - 1);
    uri[size - 1] = '\0';
    char path[4096];
    path[0] = '\0';
    int r = kv_admin_http_match(h, method, uri, path, sizeof(path));
    assert(r >= 0 || r == -400 || r == -404 || r == -405);
    if (r != -400) {
        assert(path[0] == '/');
        assert(strncmp(uri, path, strlen(path)) == 0);
    }
    if (r >= 0 && strcmp(path, "/metrics") != 0 && strcmp(path, "/health") != 0 &&
        strcmp(path, "/ready") != 0 && strcmp(path, "/engines") != 0)
        assert(strncmp(path, "/engines/", 9) == 0 || strncmp(path, "/api/", 5) == 0);
    kv_free(uri);
    return 0;
}
