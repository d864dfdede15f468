/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.c - the shared token and its checks (see auth.h).
 * Thread model: g_token is set once (pthread_once from the environment, or kv_auth_set_token
 * at start-up) and only read afterwards.
 */
#define KV_LOG_COMPONENT "auth"
#include "common/auth.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/log.h"

static char *g_token;    /* NULL = none; written at start-up only */
static bool g_token_set; /* kv_auth_set_token was called: the environment is not read */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    if (g_token_set)
        return;
    const char *e = getenv("KVSTASH_TOKEN");
    if (e && *e && strlen(e) <= KV_AUTH_MAX_TOKEN)
        g_token = kv_strdup(e);
    else if (e && strlen(e) > KV_AUTH_MAX_TOKEN)
        KV_LOGE("KVSTASH_TOKEN is longer than %d bytes: ignored", KV_AUTH_MAX_TOKEN);
}

const char *kv_auth_token(void)
{
    pthread_once(&g_once, read_env);
    return g_token;
}

int kv_auth_set_token(const char *token)
{
    if (token && strlen(token) > KV_AUTH_MAX_TOKEN)
        return KV_E2BIG;
    char *t = token && *token ? kv_strdup(token) : NULL;
    if (token && *token && !t)
        return KV_ENOMEM;
    g_token_set = true;
    pthread_once(&g_once, read_env);
    kv_free(g_token);
    g_token = t;
    return KV_OK;
}

int kv_auth_check(const char *want, bool presented, const void *got, size_t got_len,
                  const char **why)
{
    const char *w = NULL;
    if (!want)
        goto out;
    if (!presented) {
        w = "authentication required";
        goto out;
    }
    size_t wl = strlen(want);
    /* the length is not secret (the transfer engine's HELLO sends it in the clear) */
    if (got_len != wl || !got || sodium_memcmp(got, want, wl) != 0)
        w = "bad token";
out:
    if (why)
        *why = w;
    return w ? KV_EPERM : KV_OK;
}

int kv_auth_http(const char *authorization, const char *peer, const char *what, const char **why)
{
    const char *tok = NULL;
    size_t len = 0;
    if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
        tok = authorization + 7;
        while (*tok == ' ')
            tok++;
        len = strlen(tok);
    }
    const char *w = NULL;
    int rc = kv_auth_check(kv_auth_token(), authorization != NULL, tok, len, &w);
    if (rc < 0)
        KV_LOGW_RL(5000, "refused %s from %s: %s", what ? what : "admin request", peer ? peer : "?",
                   w);
    if (why)
        *why = w;
    return rc;
}
