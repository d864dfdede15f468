// SPDX-License-Identifier: Apache-2.0
// router.js - the router's status page (web/router.html): engines, their gateway states and
// requests per engine, from /api/v1/status every second. Helpers: window.kvUI (app.js).
"use strict";

(function () {
  const ui = window.kvUI;
  const state = { prev: null, samples: 0, rps: null, urls: "", errors: 0 };
  window.kvRouterStatus = state;
  const lat = ui.makePlot("p-lat", ["p50", "p99"]);
  let rpsData = null;

  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  function renderEngines(s) {
    const tb = document.querySelector("#engines tbody");
    tb.replaceChildren();
    s.engines.forEach(function (e) {
      const tr = document.createElement("tr");
      cell(tr, e.url);
      cell(tr, e.removed ? "removed" : e.healthy ? "in rotation" : "out of rotation");
      cell(tr, ui.fmtNum(e.inflight));
      cell(tr, ui.fmtNum(e.requests));
      cell(tr, ui.fmtNum(e.errors));
      const g = e.gateway;
      cell(tr, g ? g.latency_pred_ms.toFixed(1) + " ms" + (g.fresh ? "" : " (stale)") : "-");
      cell(tr, g && g.pending_tokens >= 0 ? ui.fmtNum(g.pending_tokens) : "-");
      const kv = g && g.kv_total_blocks > 0 && g.kv_free_blocks >= 0
        ? (100 * (1 - g.kv_free_blocks / g.kv_total_blocks)).toFixed(1) + "%" : "-";
      cell(tr, kv);
      cell(tr, g ? g.mode : "-");
      tb.appendChild(tr);
    });
  }
  function render(s) {
    const prev = state.prev;
    const t = s.time_ms / 1000;
    const live = s.engines.filter(function (e) { return e.healthy && !e.removed; }).length;
    ui.tag("policy", "policy " + s.policy, true);
    ui.tag("ready", live ? "ready" : "no engine in rotation", live > 0);
    ui.setText("updated", "updated " + new Date(s.time_ms).toLocaleTimeString());
    ui.setText("t-engines", live + " / " + s.engines.length);
    ui.setText("t-inflight", ui.fmtNum(s.engines.reduce(function (a, e) { return a + e.inflight; }, 0)));
    ui.setText("t-rejected", ui.fmtNum(s.rejected));
    renderEngines(s);
    const urls = s.engines.map(function (e) { return e.url; }).join(" ");
    if (urls !== state.urls) { // the engine set changed: a new plot with one series each
      document.getElementById("p-rps").replaceChildren();
      rpsData = ui.makePlot("p-rps", s.engines.map(function (e) { return e.url; }));
      state.rps = rpsData;
      state.urls = urls;
    }
    if (prev && t > prev.time_ms / 1000 && prev.engines.length === s.engines.length) {
      const dt = t - prev.time_ms / 1000;
      ui.setText("t-rps", ui.fmtNum((s.client_requests - prev.client_requests) / dt));
      ui.push(rpsData, t, s.engines.map(function (e, i) {
        return (e.requests - prev.engines[i].requests) / dt;
      }));
      const n = s.le.length + 1, d = new Array(n).fill(0);
      s.engines.forEach(function (e, i) {
        for (let k = 0; k < n; k++) d[k] += e.latency.buckets[k] - prev.engines[i].latency.buckets[k];
      });
      const ms = function (v) { return v === null ? null : v * 1000; };
      ui.push(lat, t, [ms(ui.quantile(0.5, d, s.le)), ms(ui.quantile(0.99, d, s.le))]);
    }
    state.prev = s;
    state.samples++;
  }
  async function tick() {
    try {
      render(await ui.fetchJSON("/api/v1/status"));
    } catch (e) {
      state.errors++;
      ui.tag("ready", "unreachable", false);
    }
  }
  tick();
  setInterval(tick, 1000);
})();
