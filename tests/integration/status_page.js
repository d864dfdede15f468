// SPDX-License-Identifier: Apache-2.0
// status_page.js - drives the master's status page in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core; never a downloaded browser) for
// test_status_page.sh. Usage:
//   node status_page.js URL NODE_ID SCREENSHOT.png LOAD_CMD [ARG...]
// Opens URL, checks the node table names NODE_ID, starts LOAD_CMD (a put load), and checks that
// the plotted ops/s and object count change while it runs; saves a screenshot; fails on any
// console error, page error or failed request. Exit 0 = all held; a message names what did not.
"use strict";
const { openPage, startLoad, poll, finish, run } = require("./browser_common.js");

const [url, nodeId, shot, ...load] = process.argv.slice(2);
if (!url || !nodeId || !shot || load.length === 0) {
  console.error("usage: status_page.js URL NODE_ID SCREENSHOT LOAD_CMD [ARG...]");
  process.exit(2);
}

async function main() {
  const { browser, page, problems } = await openPage(url, { width: 1280, height: 1000 });
  try {

    // the node table shows the node
    await page.waitForFunction((id) => Array.from(document.querySelectorAll("#nodes tbody td"))
      .some((td) => td.textContent === id), nodeId, { timeout: 10000 });
    console.log("ok - the node table shows " + nodeId);

    // a few idle samples first
    await page.waitForFunction(() => window.kvStatus && window.kvStatus.samples >= 3,
      null, { timeout: 10000 });
    const before = await page.evaluate(() => {
      const o = window.kvStatus.plots.objects.plot.data[1];
      return { objects: o[o.length - 1], t: window.kvStatus.prev.time_ms / 1000 };
    });

    const running = startLoad(load);

    // while the load runs: some plotted puts/s > 0 after it started, and the plotted object
    // count above what it was before
    const seen = await poll(page, (b) => {
      const ops = window.kvStatus.plots.ops.plot.data; // [t, gets/s, puts/s]
      const obj = window.kvStatus.plots.objects.plot.data; // [t, objects]
      let maxPuts = 0;
      for (let k = 0; k < ops[0].length; k++)
        if (ops[0][k] > b.t && ops[2][k] > maxPuts) maxPuts = ops[2][k];
      const last = obj[1][obj[1].length - 1];
      return maxPuts > 0 && last > b.objects ? { maxPuts, objects: last } : null;
    }, before, 40);
    if (!seen)
      throw new Error("the plotted ops/s or object count did not change during the put load " +
        "(objects before: " + before.objects + ")");
    console.log("ok - plotted puts/s rose to " + seen.maxPuts.toFixed(0) + " and objects from " +
      before.objects + " to " + seen.objects + " during the load");
    await finish(page, problems, shot, running);
  } finally {
    await browser.close();
  }
}

run(main);
