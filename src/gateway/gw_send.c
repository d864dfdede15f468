/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gw_send.c - the engine side of the gateway: a UDP sender of state datagrams, and a scraper
 * that derives a state from a vLLM Prometheus /metrics endpoint (`kvstash agent` uses both).
 *
 * Sender: one unconnected UDP socket (sendto), so a gateway that is not up yet costs nothing
 * but lost datagrams (a connected socket would report ICMP refusals as send errors).
 *
 * Scraper: GET with libcurl, then a line-by-line reading of the Prometheus text format
 * ("name{labels} value [timestamp]", '#' lines skipped); values of one metric are summed over
 * label sets (several engines/models behind one endpoint), the cache usage takes the maximum.
 * Mapping (docs/gateway.md): pending_tokens_total = (vllm:num_requests_running +
 * vllm:num_requests_waiting) * tokens_per_request; kv_cache_total_blocks =
 * vllm:cache_config_info{num_gpu_blocks}; kv_cache_free_blocks = total * (1 - usage), usage from
 * vllm:kv_cache_usage_perc (vLLM V1) or vllm:gpu_cache_usage_perc (V0); both -1 when unknown.
 *
 * Thread model: a sender is used by one thread at a time; the scraper is reentrant.
 */
#define KV_LOG_COMPONENT "gateway"
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/util.h"
#include "kvstash/gateway.h"

struct kv_gateway_sender {
    int fd;
    struct sockaddr_storage sa;
    socklen_t salen;
    char buf[2048]; /* the longest state: 255-byte id and 63-byte mode, all \u-escaped */
};

int kv_gateway_sender_open(const char *hostport, bool broadcast, struct kv_gateway_sender **out)
{
    char host[256];
    uint16_t port;
    if (!hostport || kv_parse_hostport(hostport, host, sizeof(host), &port) < 0 || port == 0)
        return KV_EINVAL;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, ps, &hints, &res) != 0)
        return KV_EINVAL;
    struct kv_gateway_sender *s = kv_calloc(1, sizeof(*s));
    if (!s) {
        freeaddrinfo(res);
        return KV_ENOMEM;
    }
    s->fd = socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        int rc = kv_err_from_errno(errno);
        freeaddrinfo(res);
        kv_free(s);
        return rc;
    }
    if (broadcast) {
        int one = 1;
        setsockopt(s->fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
    }
    memcpy(&s->sa, res->ai_addr, res->ai_addrlen);
    s->salen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    *out = s;
    return KV_OK;
}

int kv_gateway_sender_send(struct kv_gateway_sender *snd, const struct kv_gateway_state *s)
{
    int n = kv_gateway_state_format(s, snd->buf, sizeof(snd->buf));
    if (n < 0)
        return n;
    if (sendto(snd->fd, snd->buf, (size_t)n, 0, (struct sockaddr *)&snd->sa, snd->salen) < 0)
        return kv_err_from_errno(errno);
    return KV_OK;
}

void kv_gateway_sender_close(struct kv_gateway_sender *snd)
{
    if (!snd)
        return;
    close(snd->fd);
    kv_free(snd);
}

int kv_gateway_send_state(const char *hostport, const struct kv_gateway_state *s)
{
    struct kv_gateway_sender *snd;
    int rc = kv_gateway_sender_open(hostport, false, &snd);
    if (rc < 0)
        return rc;
    rc = kv_gateway_sender_send(snd, s);
    kv_gateway_sender_close(snd);
    return rc;
}

/* ---- vLLM /metrics scraping ---- */

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    struct kv_buf *b = ud;
    if (b->len + sz * n > (16u << 20))
        return 0; /* a metrics page over 16 MiB is not a vLLM page */
    return kv_buf_append(b, p, sz * n) < 0 ? 0 : sz * n;
}

struct scrape {
    double running, waiting, usage;
    bool have_running, have_waiting, have_usage;
    int64_t blocks; /* -1 unknown */
};

/* The value of label key in labels[0..n) ("k=\"v\",..."), as an integer; -1 if absent. */
static int64_t label_int(const char *labels, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 2 <= n; i++) {
        if ((i == 0 || labels[i - 1] == ',' || labels[i - 1] == '{' || labels[i - 1] == ' ') &&
            memcmp(labels + i, key, kl) == 0 && labels[i + kl] == '=' &&
            labels[i + kl + 1] == '"') {
            char num[32];
            size_t j = 0, at = i + kl + 2;
            while (at < n && labels[at] != '"' && j + 1 < sizeof(num))
                num[j++] = labels[at++];
            num[j] = '\0';
            int64_t v;
            return kv_parse_i64(num, &v) == KV_OK && v >= 0 ? v : -1;
        }
    }
    return -1;
}

static void scrape_line(struct scrape *sc, const char *l, size_t n)
{
    if (n == 0 || l[0] == '#')
        return;
    size_t name_end = 0;
    while (name_end < n && l[name_end] != '{' && l[name_end] != ' ')
        name_end++;
    const char *labels = NULL;
    size_t labels_len = 0, at = name_end;
    if (at < n && l[at] == '{') {
        labels = l + at + 1;
        bool inq = false;
        while (at < n && (inq || l[at] != '}')) {
            if (l[at] == '"' && l[at - 1] != '\\')
                inq = !inq;
            at++;
        }
        if (at >= n)
            return;
        labels_len = (size_t)(l + at - labels);
        at++;
    }
    while (at < n && l[at] == ' ')
        at++;
    char num[64];
    size_t j = 0;
    while (at < n && l[at] != ' ' && j + 1 < sizeof(num))
        num[j++] = l[at++];
    num[j] = '\0';
    double v;
    if (kv_parse_double(num, &v) != KV_OK)
        return;
#define IS(name) (name_end == strlen(name) && memcmp(l, name, name_end) == 0)
    if (IS("vllm:num_requests_running")) {
        sc->running += v;
        sc->have_running = true;
    } else if (IS("vllm:num_requests_waiting")) {
        sc->waiting += v;
        sc->have_waiting = true;
    } else if (IS("vllm:kv_cache_usage_perc") || IS("vllm:gpu_cache_usage_perc")) {
        if (!sc->have_usage || v > sc->usage)
            sc->usage = v;
        sc->have_usage = true;
    } else if (IS("vllm:cache_config_info") && labels) {
        int64_t b = label_int(labels, labels_len, "num_gpu_blocks");
        if (b >= 0)
            sc->blocks = sc->blocks < 0 ? b : sc->blocks + b;
    }
#undef IS
}

int kv_gateway_scrape_vllm(const char *url, int timeout_ms, int64_t tokens_per_request,
                           struct kv_gateway_state *s)
{
    if (!url || tokens_per_request < 0)
        return KV_EINVAL;
    CURL *c = curl_easy_init();
    if (!c)
        return KV_ENOMEM;
    struct kv_buf body;
    kv_buf_init(&body);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 2000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    int rc = KV_OK;
    if (cc != CURLE_OK) {
        rc = cc == CURLE_OPERATION_TIMEDOUT                                  ? KV_ETIMEDOUT
             : cc == CURLE_COULDNT_CONNECT                                   ? KV_ECONNREFUSED
             : cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL ? KV_EINVAL
                                                                             : KV_EIO;
        goto out;
    }
    if (code != 200) {
        rc = KV_EPROTO;
        goto out;
    }
    struct scrape sc = {.blocks = -1};
    const char *p = body.data ? body.data : "";
    size_t left = body.len;
    while (left > 0) {
        const char *nl = memchr(p, '\n', left);
        size_t n = nl ? (size_t)(nl - p) : left;
        size_t ln = n;
        if (ln > 0 && p[ln - 1] == '\r')
            ln--;
        scrape_line(&sc, p, ln);
        p += nl ? n + 1 : n;
        left -= nl ? n + 1 : n;
    }
    if (!sc.have_running && !sc.have_waiting) {
        rc = KV_EPROTO; /* not a vLLM metrics page */
        goto out;
    }
    double pend = (sc.running + sc.waiting) * (double)tokens_per_request;
    s->pending_tokens_total = pend > 0 && pend < 9e18 ? (int64_t)llround(pend) : 0;
    if (sc.blocks >= 0 && sc.have_usage) {
        double u = sc.usage < 0 ? 0 : sc.usage > 1 ? 1 : sc.usage;
        s->kv_cache_total_blocks = sc.blocks;
        s->kv_cache_free_blocks = (int64_t)llround((double)sc.blocks * (1.0 - u));
        if (s->kv_cache_free_blocks > sc.blocks)
            s->kv_cache_free_blocks = sc.blocks;
    } else {
        s->kv_cache_total_blocks = -1;
        s->kv_cache_free_blocks = -1;
    }
out:
    kv_buf_fini(&body);
    return rc;
}
