/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.h - the cluster's shared token (KVSTASH_TOKEN) and the one check every server uses:
 * the transfer engine's HELLO, the store RPC's AUTH frame (store/rpc.c) and admin HTTP
 * handlers that change state (kv_auth_http). Tokens are compared in constant time
 * (sodium_memcmp); a refusal names its reason ("authentication required" when nothing was
 * presented, "bad token" otherwise) and is logged, rate-limited, by the caller's check.
 *
 * Thread-safety: kv_auth_token() and the checks may be called from any thread;
 * kv_auth_set_token() only at start-up, before threads that check tokens run.
 */
#ifndef KV_COMMON_AUTH_H
#define KV_COMMON_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "kvstash/err.h"

#define KV_AUTH_MAX_TOKEN 4096

/* The process's token: the one kv_auth_set_token() gave, else $KVSTASH_TOKEN (read once), or
 * NULL when neither is set or it is empty (no authentication). Borrowed, static storage. */
const char *kv_auth_token(void);

/* Replaces the process's token (a daemon's --token flag); NULL or "" = none. The string is
 * copied. KV_ENOMEM, KV_E2BIG past KV_AUTH_MAX_TOKEN bytes. Start-up only. */
int kv_auth_set_token(const char *token);

/* Checks a presented token against want. want NULL: nothing required, KV_OK. Else KV_OK when
 * got[0..got_len) equals want (constant time in the token's bytes), KV_EPERM otherwise with
 * *why "authentication required" (presented false: no token was offered) or "bad token". */
int kv_auth_check(const char *want, bool presented, const void *got, size_t got_len,
                  const char **why);

/* For an admin HTTP handler that changes state: checks the request's Authorization header
 * value ("Bearer TOKEN"; NULL when absent) against kv_auth_token(). KV_OK, or KV_EPERM with
 * *why as kv_auth_check and a rate-limited warning naming peer ("HOST:PORT", may be NULL) and
 * what (the endpoint). Answer a refusal with 401 and *why in the body. */
int kv_auth_http(const char *authorization, const char *peer, const char *what, const char **why);

#endif
