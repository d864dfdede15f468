// SPDX-License-Identifier: Apache-2.0
// app.js - the master's status page (web/index.html): polls /api/v1/status every second and
// plots the last WINDOW seconds with uPlot. Also defines window.kvUI, the helpers the router's
// page (router.js) uses. The state of the plots is in window.kvStatus (read by the browser test).
"use strict";

(function () {
  const WINDOW = 300; // seconds kept in the plots

  function fmtBytes(v) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(Math.round(v))) + " " + u[i];
  }
  function fmtNum(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "-";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }
  function setText(id, t) {
    const e = document.getElementById(id);
    if (e) e.textContent = t;
  }
  function tag(id, text, ok) {
    const e = document.getElementById(id);
    if (!e) return;
    e.textContent = text;
    e.className = "tag " + (ok ? "ok" : "bad");
  }
  function bar(used, cap) {
    const pct = cap > 0 ? Math.min(100, (100 * used) / cap) : 0;
    const b = document.createElement("span");
    b.className = "bar";
    const f = document.createElement("span");
    f.style.width = pct.toFixed(1) + "%";
    b.appendChild(f);
    return b;
  }
  const COLORS = ["#3b6fd8", "#d8573b", "#2f9e55", "#9b3bd8", "#c79a1a"];
  // A uPlot chart in element id with the given series names; returns {plot, data}.
  function makePlot(id, names, opts) {
    const el = document.getElementById(id);
    const data = [[]];
    const series = [{}];
    names.forEach(function (n, i) {
      data.push([]);
      series.push({ label: n, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true });
    });
    const width = Math.max(300, (el.parentElement.clientWidth || 460) - 16);
    const plot = new uPlot({
      width: width, height: 180, series: series,
      scales: { y: (opts && opts.y) || {} },
      axes: [{}, { size: 70, values: function (u, vals) {
        return vals.map(function (v) { return (opts && opts.fmt ? opts.fmt : fmtNum)(v); });
      } }],
      legend: { live: false },
    }, data, el);
    return { plot: plot, data: data };
  }
  // Appends one point (t in seconds, values per series) and trims to WINDOW seconds.
  function push(p, t, values) {
    p.data[0].push(t);
    values.forEach(function (v, i) { p.data[i + 1].push(v); });
    while (p.data[0].length && p.data[0][0] < t - WINDOW)
      p.data.forEach(function (s) { s.shift(); });
    p.plot.setData(p.data);
  }
  // The q-quantile (0..1) of a histogram given per-bucket counts and upper bounds le (the last
  // bucket is +Inf: its quantile is the last finite bound), interpolated within the bucket.
  function quantile(q, counts, le) {
    let total = 0;
    counts.forEach(function (c) { total += c; });
    if (total <= 0) return null;
    const rank = q * total;
    let cum = 0;
    for (let i = 0; i < counts.length; i++) {
      if (cum + counts[i] >= rank) {
        if (i >= le.length) return le[le.length - 1];
        const lo = i ? le[i - 1] : 0;
        const f = counts[i] ? (rank - cum) / counts[i] : 0;
        return lo + (le[i] - lo) * f;
      }
      cum += counts[i];
    }
    return le[le.length - 1];
  }
  async function fetchJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }
  window.kvUI = { fmtBytes, fmtNum, setText, tag, bar, makePlot, push, quantile, fetchJSON,
                  WINDOW };

  if (!document.getElementById("nodes") || document.body.dataset.page === "router") return;

  const plots = {
    ops: makePlot("p-ops", ["gets/s", "puts/s"]),
    hit: makePlot("p-hit", ["DRAM", "all tiers"], { y: { range: [0, 1] } }),
    bytes: makePlot("p-bytes", ["in (puts)", "out (hits)"], { fmt: fmtBytes }),
    lat: makePlot("p-lat", ["get p50", "get p99", "put p50", "put p99"]),
    evict: makePlot("p-evict", ["evictions/s", "demotions/s"]),
    objects: makePlot("p-objects", ["objects"]),
  };
  const state = { prev: null, samples: 0, plots: plots, errors: 0 };
  window.kvStatus = state;

  function sum(o) { return o.dram + o.ssd; }
  function bucketDiff(cur, prev, ops) {
    const n = cur.rpc_le.length + 1;
    const out = new Array(n).fill(0);
    ops.forEach(function (op) {
      const a = cur.rpc[op].buckets, b = prev.rpc[op].buckets;
      for (let i = 0; i < n; i++) out[i] += a[i] - b[i];
    });
    return out;
  }
  function renderNodes(s) {
    const tb = document.querySelector("#nodes tbody");
    tb.replaceChildren();
    s.nodes.forEach(function (n) {
      const tr = document.createElement("tr");
      const id = document.createElement("td");
      id.textContent = n.id;
      const d = document.createElement("td");
      d.appendChild(bar(n.used.dram, n.capacity.dram));
      d.appendChild(document.createTextNode(fmtBytes(n.used.dram) + " / " + fmtBytes(n.capacity.dram)));
      const sd = document.createElement("td");
      if (n.capacity.ssd > 0) {
        sd.appendChild(bar(n.used.ssd, n.capacity.ssd));
        sd.appendChild(document.createTextNode(fmtBytes(n.used.ssd) + " / " + fmtBytes(n.capacity.ssd)));
      } else {
        sd.textContent = "no SSD tier";
      }
      tr.append(id, d, sd);
      tb.appendChild(tr);
    });
  }
  function render(s) {
    const prev = state.prev;
    const t = s.time_ms / 1000;
    tag("cluster", "cluster " + s.cluster, true);
    tag("leader", s.leader ? "leader (epoch " + s.epoch + ")" : "standby", s.leader);
    tag("ready", s.ready ? "ready" : "not ready", s.ready);
    setText("updated", "updated " + new Date(s.time_ms).toLocaleTimeString());
    let cap = { dram: 0, ssd: 0 }, used = { dram: 0, ssd: 0 };
    s.nodes.forEach(function (n) {
      cap.dram += n.capacity.dram; cap.ssd += n.capacity.ssd;
      used.dram += n.used.dram; used.ssd += n.used.ssd;
    });
    setText("t-objects", fmtNum(s.objects));
    setText("t-dram", fmtBytes(used.dram) + " / " + fmtBytes(cap.dram));
    setText("t-ssd", cap.ssd ? fmtBytes(used.ssd) + " / " + fmtBytes(cap.ssd) : "no SSD tier");
    setText("t-evict", fmtNum(s.evictions));
    renderNodes(s);
    push(plots.objects, t, [s.objects]);
    if (prev && t > prev.time_ms / 1000) {
      const dt = t - prev.time_ms / 1000;
      const gets = (s.gets - prev.gets) / dt, puts = (s.puts - prev.puts) / dt;
      push(plots.ops, t, [gets, puts]);
      setText("t-ops", fmtNum(gets + puts));
      const dh = { dram: s.hits.dram - prev.hits.dram, ssd: s.hits.ssd - prev.hits.ssd };
      const dg = s.gets - prev.gets;
      const hd = dg > 0 ? dh.dram / dg : null, ha = dg > 0 ? (dh.dram + dh.ssd) / dg : null;
      push(plots.hit, t, [hd, ha]);
      const tg = s.gets, th = sum(s.hits);
      setText("t-hit", tg ? (100 * s.hits.dram / tg).toFixed(1) + "% / " +
        (100 * th / tg).toFixed(1) + "%" : "-");
      push(plots.bytes, t, [(s.put_bytes - prev.put_bytes) / dt,
        (sum(s.hit_bytes) - sum(prev.hit_bytes)) / dt]);
      const g = bucketDiff(s, prev, ["get"]);
      const p = bucketDiff(s, prev, ["put", "put_start", "put_end"]);
      const ms = function (v) { return v === null ? null : v * 1000; };
      push(plots.lat, t, [ms(quantile(0.5, g, s.rpc_le)), ms(quantile(0.99, g, s.rpc_le)),
        ms(quantile(0.5, p, s.rpc_le)), ms(quantile(0.99, p, s.rpc_le))]);
      push(plots.evict, t, [(s.evictions - prev.evictions) / dt,
        (s.demotions - prev.demotions) / dt]);
    }
    state.prev = s;
    state.samples++;
  }
  async function tick() {
    try {
      render(await fetchJSON("/api/v1/status"));
    } catch (e) {
      state.errors++;
      tag("ready", "unreachable", false);
    }
  }
  tick();
  setInterval(tick, 1000);
})();
