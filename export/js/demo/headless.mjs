#!/usr/bin/env node
// Run the demo page in headless Chromium (playwright-core) until it has sampled, and write what the page
// exposes as window.pyddpmDemo ({state, message, shape, samples, msPerStep, ...}) as JSON.
//
//   node export/js/demo/headless.mjs "http://127.0.0.1:8000/export/js/demo/index.html?model=/exported/&num=500" \
//        --out result.json [--screenshot page.png] [--chromium /usr/bin/chromium] [--timeout-ms 120000]
//   node export/js/demo/headless.mjs "http://127.0.0.1:8000/export/js/demo/index.html?num=500" --pick exported/ --out ...
//
// with the repository root served as docs/export.md says (`python -m http.server 8000 --bind 127.0.0.1`) and
// the export in exported/.
//
// --pick loads the export through the page's directory picker instead of a URL (then presses Sample).
// The browser gets a fresh profile (user-data-dir) that is removed afterwards. Exit status 0 when the page
// finished sampling, 2 when it reported an error or did not finish in time (the page's message on stderr).
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true, options: {
      out: { type: "string" }, screenshot: { type: "string" }, chromium: { type: "string", default: "/usr/bin/chromium" },
      "timeout-ms": { type: "string", default: "120000" }, pick: { type: "string" },
    },
  });
  if (positionals.length !== 1 || !values.out) {
    console.error("usage: headless.mjs URL --out result.json [--pick EXPORT_DIR] [--screenshot page.png] " +
      "[--chromium PATH] [--timeout-ms N]");
    return 2;
  }
  const profile = await mkdtemp(join(tmpdir(), "pyddpm-demo-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: values.chromium, headless: true, args: FLAGS, viewport: { width: 1000, height: 900 },
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
    page.on("console", (msg) => msg.type() === "error" && console.error(`console: ${msg.text()}`));
    await page.goto(positionals[0]);
    if (values.pick) {
      await page.setInputFiles("#picker", values.pick);
      await page.click("#run");
    }
    let finished = true;
    try {
      await page.waitForFunction(() => ["done", "error"].includes(window.pyddpmDemo?.state), null,
        { timeout: Number(values["timeout-ms"]), polling: 100 });
    } catch {
      finished = false;
    }
    const demo = await page.evaluate(() => window.pyddpmDemo ?? { state: "missing", message: "no window.pyddpmDemo" });
    if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
    await writeFile(values.out, JSON.stringify(demo));
    if (!finished || demo.state !== "done") {
      console.error(`headless.mjs: the page did not finish sampling (state ${demo.state}): ${demo.message}`);
      return 2;
    }
    console.log(`${demo.message}`);
    return 0;
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

process.exitCode = await main();
