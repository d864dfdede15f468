/* SPDX-License-Identifier: Apache-2.0 */
/*
 * web.c - lookup and serving of the compiled-in status page files (web.h). The files
 * themselves are in the generated web_assets.c (cmake/embed_web.cmake). No state, no locks.
 */
#include "common/web.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <string.h>

const struct kv_web_asset *kv_web_asset_find(const char *path)
{
    if (!path)
        return NULL;
    for (const struct kv_web_asset *a = kv_web_assets; a->path; a++)
        if (strcmp(a->path, path) == 0)
            return a;
    return NULL;
}

void kv_web_http_asset(struct evhttp_request *req, void *arg)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_send_error(req, 405, "only GET and HEAD");
        return;
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path || strcmp(path, "/") == 0)
        path = arg ? arg : "/index.html";
    const struct kv_web_asset *a = kv_web_asset_find(path);
    if (!a) {
        evhttp_send_error(req, 404, "no such file");
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    /* the data is static: no copy */
    evbuffer_add_reference(b, a->data, a->len, NULL, NULL);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", a->ctype);
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}
