// SPDX-License-Identifier: Apache-2.0
// browser_common.js - what status_page.js and router_page.js share: Debian's /usr/bin/chromium
// launched headless through playwright-core (never a downloaded browser), a page that records
// every console error, page error and failed request, a load command run beside the checks,
// and the exit protocol (0 = all held; "FAIL: ..." and 1 otherwise).
"use strict";
const { chromium } = require("playwright-core");
const { spawn } = require("child_process");

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// Opens url in a new headless Chromium; resolves to { browser, page, problems } once the page
// answered 200.
async function openPage(url, viewport) {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
  });
  const problems = [];
  const page = await browser.newPage({ viewport });
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("requestfailed", (r) => problems.push("request failed: " + r.url()));
  const resp = await page.goto(url, { waitUntil: "load" });
  if (!resp || resp.status() !== 200) {
    await browser.close();
    throw new Error("GET " + url + ": " + (resp && resp.status()));
  }
  return { browser, page, problems };
}

// Starts the load command (argv); .done() waits up to 30 s for it and throws if it failed.
function startLoad(argv) {
  const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "ignore", "inherit"] });
  let code = null;
  child.on("exit", (c) => { code = c; });
  return {
    async done() {
      for (let i = 0; i < 60 && code === null; i++) await sleep(500);
      if (code === null) child.kill("SIGKILL");
      else if (code !== 0) throw new Error("the load exited " + code);
    },
  };
}

// Evaluates fn(arg) in the page every 500 ms, at most tries times, until it returns something
// truthy; resolves to that, or to null.
async function poll(page, fn, arg, tries) {
  for (let i = 0; i < tries; i++) {
    await sleep(500);
    const v = await page.evaluate(fn, arg);
    if (v) return v;
  }
  return null;
}

// After the checks: a second and a half more of live plots, the screenshot, the load's end,
// and the browser's error log.
async function finish(page, problems, shot, running) {
  await sleep(1500);
  await page.screenshot({ path: shot, fullPage: true });
  console.log("ok - screenshot " + shot);
  await running.done();
  checkProblems(problems);
}

// Throws when the browser reported anything.
function checkProblems(problems) {
  if (problems.length) throw new Error("browser reported:\n  " + problems.join("\n  "));
  console.log("ok - no console errors, page errors or failed requests");
}

// Runs main() and exits 0, or prints "FAIL: ..." and exits 1.
function run(main) {
  main().then(() => process.exit(0), (e) => {
    console.error("FAIL: " + e.message);
    process.exit(1);
  });
}

module.exports = { sleep, openPage, startLoad, poll, finish, run };
