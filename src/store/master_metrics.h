/* SPDX-License-Identifier: Apache-2.0 */
/*
 * master_metrics.h - the master's admin HTTP handlers for metrics and the status page, with the
 * plain libevent signature (evhttp_set_cb / a gencb branch) so that any admin HTTP server can
 * register them. arg is the struct kv_master. Each answers GET (and HEAD for the page); other
 * methods get 405. They run on the admin server's loop thread and take the master's lock
 * briefly to copy the figures.
 */
#ifndef KV_STORE_MASTER_METRICS_H
#define KV_STORE_MASTER_METRICS_H

struct evhttp_request;

/* /metrics: Prometheus text (docs/metrics.md lists every family). */
void kv_master_http_metrics(struct evhttp_request *req, void *arg);
/* /api/v1/status: the status page's JSON: cluster, nodes, counters, latency histograms,
 * process figures, sampled at the request (the page polls it every second). */
void kv_master_http_status(struct evhttp_request *req, void *arg);
/* / and /ui/...: the status page (web/index.html and its assets, compiled in). */
void kv_master_http_page(struct evhttp_request *req, void *arg);

#endif
