/* SPDX-License-Identifier: Apache-2.0 */
/*
 * web.h - the status pages' files (web/, third_party/uplot/) compiled into the binary, and a
 * libevent handler that serves them. The table is generated at build time from web/assets.txt
 * by cmake/embed_web.cmake, so the pages need no network beyond the daemon.
 *
 * Thread model: the table is immutable; every function may be called from any thread.
 */
#ifndef KV_COMMON_WEB_H
#define KV_COMMON_WEB_H

#include <stddef.h>

#include "kvstash/err.h"

struct evhttp_request;

struct kv_web_asset {
    const char *path;  /* URL path, e.g. "/ui/app.js" */
    const char *ctype; /* Content-Type */
    const unsigned char *data;
    size_t len;
};

/* The generated table, ended by an entry whose path is NULL. */
extern const struct kv_web_asset kv_web_assets[];

/* The asset at URL path (exact match) or NULL. Borrowed: valid for the process's lifetime. */
KV_API const struct kv_web_asset *kv_web_asset_find(const char *path);

/* A libevent handler (evhttp_set_cb / a gencb branch): answers GET and HEAD of the request's
 * path with the asset of that path, "/" with arg (the page's asset path, e.g. "/index.html"),
 * and 404 otherwise. Assets are sent with Cache-Control: no-cache. */
KV_API void kv_web_http_asset(struct evhttp_request *req, void *arg);

#endif
