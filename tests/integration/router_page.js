// SPDX-License-Identifier: Apache-2.0
// router_page.js - drives the router's status page in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core; never a downloaded browser) for
// test_status_page.sh. Usage:
//   node router_page.js URL ENGINE_URL,ENGINE_URL SCREENSHOT.png LOAD_CMD [ARG...]
// Opens URL, checks that the engine table lists each engine "in rotation", starts LOAD_CMD
// (chat requests through the router), and checks that the plotted requests/s of some engine
// rise above 0 and that the table's request counts grow; saves a screenshot; fails on any
// console error, page error or failed request. Exit 0 = all held; a message names what did not.
"use strict";
const { openPage, startLoad, poll, finish, run } = require("./browser_common.js");

const [url, engineList, shot, ...load] = process.argv.slice(2);
if (!url || !engineList || !shot || load.length === 0) {
  console.error("usage: router_page.js URL ENGINE_URL[,ENGINE_URL] SCREENSHOT LOAD_CMD [ARG...]");
  process.exit(2);
}
const engines = engineList.split(",");

async function main() {
  const { browser, page, problems } = await openPage(url, { width: 1280, height: 900 });
  try {

    // every engine is listed, in rotation
    await page.waitForFunction((want) => {
      const rows = Array.from(document.querySelectorAll("#engines tbody tr"))
        .map((tr) => Array.from(tr.children).map((td) => td.textContent));
      return want.every((u) => rows.some((r) => r[0] === u && r[1] === "in rotation"));
    }, engines, { timeout: 10000 });
    console.log("ok - the engine table lists " + engines.join(", ") + " in rotation");
    await page.waitForFunction(() => window.kvRouterStatus && window.kvRouterStatus.samples >= 2,
      null, { timeout: 10000 });
    const before = await page.evaluate(() => {
      const s = window.kvRouterStatus.prev;
      return { t: s.time_ms / 1000, requests: s.engines.reduce((a, e) => a + e.requests, 0) };
    });

    const running = startLoad(load);

    // while the load runs: a plotted requests/s above 0 after it started, and more requests in
    // the engine table than before
    const seen = await poll(page, (b) => {
      const st = window.kvRouterStatus;
      if (!st.rps) return null;
      const d = st.rps.plot.data; // [t, rps of engine 0, rps of engine 1, ...]
      let max = 0;
      for (let k = 0; k < d[0].length; k++)
        if (d[0][k] > b.t)
          for (let e = 1; e < d.length; e++) if (d[e][k] > max) max = d[e][k];
      const cells = Array.from(document.querySelectorAll("#engines tbody tr"))
        .map((tr) => Number(tr.children[3].textContent.replace(/[^0-9.]/g, "")) || 0);
      const shown = cells.reduce((a, v) => a + v, 0);
      return max > 0 && shown > b.requests ? { max, shown } : null;
    }, before, 40);
    if (!seen)
      throw new Error("the plotted requests/s or the table's request counts did not change " +
        "during the load (requests before: " + before.requests + ")");
    console.log("ok - plotted requests/s rose to " + seen.max.toFixed(1) + " and the table " +
      "counts " + seen.shown + " requests (" + before.requests + " before)");
    await finish(page, problems, shot, running);
  } finally {
    await browser.close();
  }
}

run(main);
