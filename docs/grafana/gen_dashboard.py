#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# gen_dashboard.py - writes kvstash.json, the Grafana dashboard (rows: cluster, nodes, tiers, latency,
# processes, router, gateway). Edit this file, not the JSON, and run it from anywhere:
#   /usr/bin/python3 docs/grafana/gen_dashboard.py
# tests/integration/test_metrics_endpoints.sh checks that every metric its queries use is exported.
import os
import json
ds = {"type": "prometheus", "uid": "${datasource}"}
panels = []
pid = [0]
y = [0]
def row(title):
    pid[0] += 1
    panels.append({"type": "row", "title": title, "id": pid[0], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1
    row.x = 0
def panel(title, exprs, unit="short", kind="timeseries", w=8, h=7, desc=""):
    pid[0] += 1
    if row.x + w > 24:
        row.x = 0
        y[0] += h
    p = {"type": kind, "title": title, "id": pid[0], "datasource": ds, "description": desc,
         "gridPos": {"h": h, "w": w, "x": row.x, "y": y[0]},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {},
         "targets": [{"datasource": ds, "refId": chr(65 + i), "expr": e, "legendFormat": l}
                     for i, (e, l) in enumerate(exprs)]}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area"}
    panels.append(p)
    row.x += w
    if row.x >= 24:
        row.x = 0
        y[0] += h
def endrow(h=7):
    if row.x:
        y[0] += h
    row.x = 0
row.x = 0
J = '{job=~"$job"}'
JD = '{job=~"$job",tier="dram"}'
def j(extra=""):
    return '{job=~"$job"' + ("," + extra if extra else "") + '}'

row("Cluster")
panel("Leader", [(f'max by (instance) (kvstash_store_leader{J})', "{{instance}}")], kind="stat", w=4)
panel("Epoch", [(f'max(kvstash_store_epoch{J})', "epoch")], kind="stat", w=4)
panel("Nodes", [(f'max(kvstash_store_nodes{J} * on(instance) group_left kvstash_store_leader{J})', "nodes")], kind="stat", w=4)
panel("Objects", [(f'sum(kvstash_store_objects{J} * on(instance) group_left kvstash_store_leader{J})', "objects")], kind="stat", w=4)
panel("DRAM hit ratio (5m)", [(f'sum(rate(kvstash_store_hits_total{JD}[5m])) / clamp_min(sum(rate(kvstash_store_get_requests_total{J}[5m])), 1e-9)', "DRAM")], unit="percentunit", kind="stat", w=4)
panel("Hit ratio, all tiers (5m)", [(f'sum(rate(kvstash_store_hits_total{J}[5m])) / clamp_min(sum(rate(kvstash_store_get_requests_total{J}[5m])), 1e-9)', "all")], unit="percentunit", kind="stat", w=4)
endrow(7)
panel("Operations per second", [(f'sum(rate(kvstash_store_get_requests_total{J}[1m]))', "gets"), (f'sum(rate(kvstash_store_puts_total{J}[1m]))', "puts"), (f'sum(rate(kvstash_store_errors_total{J}[1m]))', "errors")], unit="ops")
panel("Bytes per second", [(f'sum(rate(kvstash_store_put_bytes_total{J}[1m]))', "in (puts)"), (f'sum(rate(kvstash_store_hit_bytes_total{J}[1m]))', "out (hits)")], unit="Bps")
panel("Misses by reason", [(f'sum by (reason) (rate(kvstash_store_get_misses_total{J}[1m]))', "{{reason}}")], unit="ops")
endrow()
row("Nodes")
panel("DRAM used per node", [(f'sum by (node) (kvstash_store_used_bytes{JD})', "{{node}}")], unit="bytes", w=12)
panel("DRAM use per node", [(f'sum by (node) (kvstash_store_used_bytes{JD}) / clamp_min(sum by (node) (kvstash_store_capacity_bytes{JD}), 1)', "{{node}}")], unit="percentunit", w=12)
endrow()
row("Tiers")
panel("Hits per tier", [(f'sum by (tier) (rate(kvstash_store_hits_total{J}[1m]))', "{{tier}}")], unit="ops")
panel("Misses per tier", [(f'sum by (tier) (rate(kvstash_store_misses_total{J}[1m]))', "{{tier}}")], unit="ops")
panel("Capacity and use per tier", [(f'sum by (tier) (kvstash_store_capacity_bytes{J})', "{{tier}} capacity"), (f'sum by (tier) (kvstash_store_used_bytes{J})', "{{tier}} used")], unit="bytes")
panel("Evictions, demotions, promotions, expirations", [(f'sum(rate(kvstash_store_evictions_total{J}[1m]))', "evictions"), (f'sum(rate(kvstash_store_demotions_total{J}[1m]))', "demotions"), (f'sum(rate(kvstash_store_promotions_total{J}[1m]))', "promotions"), (f'sum(rate(kvstash_store_expirations_total{J}[1m]))', "expirations")], unit="ops", w=12)
panel("Bytes moved between tiers", [(f'sum(rate(kvstash_store_evicted_bytes_total{J}[1m]))', "evicted"), (f'sum(rate(kvstash_store_demoted_bytes_total{J}[1m]))', "demoted"), (f'sum(rate(kvstash_store_promoted_bytes_total{J}[1m]))', "promoted"), (f'sum(rate(kvstash_store_expired_bytes_total{J}[1m]))', "expired"), (f'sum by (tier) (rate(kvstash_store_miss_bytes_total{J}[1m]))', "missed in {{tier}}")], unit="Bps", w=12)
endrow()
row("Latency")
panel("Master RPC p50", [(f'histogram_quantile(0.5, sum by (op, le) (rate(kvstash_store_rpc_duration_seconds_bucket{J}[1m])))', "{{op}}")], unit="s")
panel("Master RPC p99", [(f'histogram_quantile(0.99, sum by (op, le) (rate(kvstash_store_rpc_duration_seconds_bucket{J}[1m])))', "{{op}}")], unit="s")
panel("Master RPCs per second", [(f'sum by (op) (rate(kvstash_store_rpc_duration_seconds_count{J}[1m]))', "{{op}}"), (f'sum by (op) (rate(kvstash_store_rpc_duration_seconds_sum{J}[1m]))', "{{op}} busy (s/s)")], unit="ops")
endrow()
row("Processes")
panel("Resident memory", [(f'process_resident_memory_bytes{J}', "{{job}} {{instance}}")], unit="bytes")
panel("Open file descriptors", [(f'process_open_fds{J}', "{{job}} {{instance}}"), (f'process_max_fds{J}', "{{job}} {{instance}} max")])
panel("CPU", [(f'rate(process_cpu_seconds_total{J}[1m])', "{{job}} {{instance}}")], unit="percentunit")
endrow()
row("Router")
panel("Requests per second per engine", [(f'sum by (server) (rate(kvstash_router_requests_total{J}[1m]))', "{{server}}"), (f'sum(rate(kvstash_router_client_requests_total{J}[1m]))', "clients")], unit="reqps")
panel("Latency p50 / p99", [(f'histogram_quantile(0.5, sum by (le) (rate(kvstash_router_request_latency_seconds_bucket{J}[1m])))', "p50"), (f'histogram_quantile(0.99, sum by (le) (rate(kvstash_router_request_latency_seconds_bucket{J}[1m])))', "p99"), (f'histogram_quantile(0.5, sum by (le) (rate(kvstash_router_time_to_first_byte_seconds_bucket{J}[1m])))', "TTFB p50")], unit="s")
panel("In flight and health", [(f'sum by (server) (kvstash_router_engine_requests_running{J})', "{{server}} in flight"), (f'sum by (server) (kvstash_router_engine_healthy{J})', "{{server}} healthy")])
panel("Errors, failovers, rejections", [(f'sum by (server) (rate(kvstash_router_errors_total{J}[1m]))', "{{server}} errors"), (f'sum by (server) (rate(kvstash_router_failovers_total{J}[1m]))', "{{server}} failovers"), (f'sum by (reason) (rate(kvstash_router_rejected_total{J}[1m]))', "rejected: {{reason}}"), (f'sum(rate(kvstash_router_upstream_timeouts_total{J}[1m]))', "timeouts")], unit="ops", w=12)
panel("Engine states seen by the router", [(f'kvstash_router_engine_predicted_latency_seconds{J}', "{{server}} predicted latency"), (f'kvstash_router_engine_pending_tokens{J}', "{{server}} pending tokens")], w=12)
endrow()
row("Gateway")
panel("States received", [(f'sum(rate(kvstash_gateway_valid_states_total{J}[1m]))', "valid"), (f'sum by (reason) (rate(kvstash_gateway_invalid_states_total{J}[1m]))', "invalid: {{reason}}"), (f'sum(rate(kvstash_gateway_heartbeats_total{J}[1m]))', "heartbeats")], unit="ops")
panel("Engines", [(f'sum(kvstash_gateway_engines{J})', "known"), (f'sum(kvstash_gateway_active_engines{J})', "fresh")])
panel("Predicted latency per engine", [(f'kvstash_gateway_engine_predicted_latency_seconds{J}', "{{engine_id}}")], unit="s")
panel("Pending tokens per engine", [(f'kvstash_gateway_engine_pending_tokens{J}', "{{engine_id}}")], w=12)
panel("KV cache use per engine", [(f'kvstash_gateway_engine_kv_cache_usage_ratio{J}', "{{engine_id}}")], unit="percentunit", w=12)
endrow()

dash = {
  "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                "pluginId": "prometheus", "pluginName": "Prometheus"}],
  "title": "kvstash", "uid": "kvstash-overview", "tags": ["kvstash"], "timezone": "browser",
  "schemaVersion": 39, "version": 1, "refresh": "10s", "editable": True,
  "time": {"from": "now-1h", "to": "now"},
  "description": "kvstash store master, nodes and tiers, router and state gateway. Every metric: docs/metrics.md.",
  "templating": {"list": [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}},
    {"name": "job", "label": "Job", "type": "query", "datasource": ds, "multi": True, "includeAll": True,
     "allValue": ".*", "current": {"text": "All", "value": "$__all"},
     "query": {"query": "label_values(process_start_time_seconds, job)", "refId": "jobs"},
     "definition": "label_values(process_start_time_seconds, job)", "refresh": 2}]},
  "panels": panels,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kvstash.json"), "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
print(len(panels), "panels")
