/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json.h - JSON through jansson. jansson was chosen over cJSON because it reports the line,
 * column and reason of a parse error (which our "name the problem" rule needs), rejects
 * duplicate keys on request, checks UTF-8, has reference-counted values safe to hand between
 * threads, and is a well-kept Debian package. At load time jansson is pointed at kv_malloc /
 * kv_free, so the allocation-failure tests cover JSON too; strings from json_dumps() are freed
 * with kv_free().
 */
#ifndef KV_COMMON_JSON_H
#define KV_COMMON_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/err.h"

/* Parses exactly one JSON value from data[0..len). On error returns KV_EPROTO and writes a
 * message naming the problem ("line 1 column 7: ...") into err (errlen bytes). */
KV_API int kv_json_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen);

/* Typed field readers for objects; each returns KV_EPROTO with a message naming the field when
 * it is missing or of another type. */
KV_API int kv_json_get_str(json_t *o, const char *field, const char **out, char *err,
                           size_t errlen);
KV_API int kv_json_get_int(json_t *o, const char *field, int64_t *out, char *err, size_t errlen);
KV_API int kv_json_get_u64(json_t *o, const char *field, uint64_t *out, char *err, size_t errlen);

/* Compact JSON text of v into a kv_free-able string (NULL on ENOMEM; never partial). */
KV_API char *kv_json_dump(const json_t *v);

#endif
