/* SPDX-License-Identifier: Apache-2.0 */
/*
 * metad.h - the built-in HTTP metadata server (`kvstash metad`, and inside `kvstash serve`).
 *
 * It serves an embedded store over HTTP. Wire contract (compatible with Mooncake's HTTP
 * metadata server): GET /metadata?key=K (404 if absent), PUT /metadata?key=K with the value as
 * body, DELETE /metadata?key=K (200 even when absent); plus list by prefix, CAS, leases and watch
 * for kvstash's own http:// backend (see docs/design/meta.md). With a data file, the store survives
 * a restart.
 */
#ifndef KV_META_METAD_H
#define KV_META_METAD_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash/meta.h"

struct kv_metad;

struct kv_metad_opts {
    const char *addr;          /* "HOST:PORT" to listen on; port 0 = any */
    const char *data_file;     /* persist here (loaded at start), or NULL */
    const char *embedded_name; /* serve the in-process store embedded://NAME (NULL = private) */
    size_t max_value; /* largest value PUT /metadata stores (413 beyond); 0 = 64 MiB; <= 1 GiB */
};

/* Starts the server on its own thread (and, with a data file, a saver thread). *out is owned
 * (stop with kv_metad_stop()). KV_EINVAL for a bad address or max_value. */
int kv_metad_start(const struct kv_metad_opts *opts, struct kv_metad **out);
/* The port actually bound. */
uint16_t kv_metad_port(const struct kv_metad *d);
/* Stops serving, writes unsaved changes to the data file if any, frees d. NULL is a no-op. */
void kv_metad_stop(struct kv_metad *d);

#endif
