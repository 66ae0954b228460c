// The live odds board in headless Chromium (Debian's chromium, driven by playwright-core),
// against a real `oddsfeed serve` that this test starts, changes and restarts itself.
// Environment (set by tests/board.rs): ODDSFEED_BIN, DATABASE_URL, REDIS_URL, ODDS_CHANNEL,
// LISTEN_ADDR, and optionally SCREENSHOT (a path to save the board to).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
for (const key of ["ODDSFEED_BIN", "DATABASE_URL", "REDIS_URL", "ODDS_CHANNEL", "LISTEN_ADDR"]) {
  assert.ok(env[key], `${key} is set by tests/board.rs`);
}
const BASE = `http://${env.LISTEN_ADDR}/`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let server;
function startServer() {
  server = spawn(env.ODDSFEED_BIN, ["serve"], {
    env: { ...env, LOG_FORMAT: "json", TICK_INTERVAL_MS: "100" },
    stdio: ["ignore", "ignore", "inherit"],
  });
}
async function stopServer() {
  const exited = new Promise((r) => server.once("exit", r));
  server.kill("SIGTERM");
  await exited;
}
function sql(statement) {
  execFileSync("psql", [env.DATABASE_URL, "-qAtc", statement]);
}

let browser;
let page;
before(async () => {
  startServer();
  // A fresh profile each run (playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "oddsfeed-chromium-")), {
    executablePath: env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  for (let i = 0; i < 100; i++) {
    try {
      await page.goto(BASE);
      break;
    } catch {
      await sleep(100);
    }
  }
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) await stopServer();
});

test("the page shows the seeded events with odds, score and clock", async () => {
  await page.waitForFunction(() => document.querySelectorAll("[data-event]").length >= 20, null, { timeout: 10000 });
  const count = await page.locator("[data-event]").count();
  const expected = Number(execFileSync("psql", [env.DATABASE_URL, "-qAtc",
    "SELECT count(*) FROM events WHERE status = 'ACTIVE' AND event_type IN ('live','upcoming')"]).toString().trim());
  assert.equal(count, expected, "one card per active event");
  assert.equal(await page.textContent("#conn"), "open");
  assert.equal(await page.textContent("#publisher"), "live");
  assert.ok((await page.locator(".live").count()) > 0, "live events are marked");
  const odds = await page.locator(".outcome .odds").first().textContent();
  assert.match(odds, /^\d+\.\d\d$/);
  // Upcoming events show when they start as a bettor reads it: "Today 19:45", "Sat 14:30".
  const starts = (await page.$$eval("[data-event] .top > span:last-child", (els) => els.map((el) => el.textContent)))
    .filter((text) => !text.startsWith("LIVE"));
  assert.ok(starts.length > 0, "upcoming events are shown");
  for (const start of starts) {
    assert.match(start, /^(Today|Tomorrow|Mon|Tue|Wed|Thu|Fri|Sat|Sun)( \d{1,2} [A-Z][a-z]{2})? \d\d:\d\d$/);
  }
});

// An event and the name of its first outcome (HOME, or the first-named side), not already a favourite.
function firstOutcome(order) {
  const [id, name] = execFileSync("psql", [env.DATABASE_URL, "-qAtc",
    `SELECT e.id, o.name FROM events e JOIN outcomes o ON o.event_id = e.id
      WHERE e.status = 'ACTIVE' AND o.position = 0 AND o.external_price < 0.8 ORDER BY e.id ${order} LIMIT 1`]).toString().trim().split("|");
  return { id, name };
}
// Makes the first outcome a near-certainty: its odds go to the floor.
function makeFirstOutcomeCertain(id) {
  sql(`UPDATE outcomes SET external_price = CASE WHEN position = 0 THEN 0.99 ELSE 0.01 END WHERE event_id = '${id}';`);
}

test("a price change made in PostgreSQL appears within 2 s, flashing", async () => {
  const { id, name } = firstOutcome("ASC");
  const selector = `[data-event="${id}"] [data-outcome="${name}"] .odds`;
  await page.waitForSelector(selector);
  const before = await page.textContent(selector);
  makeFirstOutcomeCertain(id);
  const started = Date.now();
  await page.waitForFunction(
    ([sel, old]) => document.querySelector(sel)?.textContent !== old, [selector, before], { timeout: 2000 });
  const tookMs = Date.now() - started;
  const after = await page.textContent(selector);
  assert.ok(Number(after) < Number(before), `${before} -> ${after}`);
  assert.ok(tookMs <= 2000, `appeared after ${tookMs} ms`);
  const cls = await page.getAttribute(`[data-event="${id}"] [data-outcome="${name}"]`, "class");
  assert.match(cls, /down/, "lower odds flash down");
  // Latency is measured and shown.
  await page.waitForFunction(() => /ms/.test(document.querySelector("#p50").textContent), null, { timeout: 5000 });
  if (env.SCREENSHOT) await page.screenshot({ path: env.SCREENSHOT });
});

test("after the server restarts, the page reconnects by itself", async () => {
  await stopServer();
  await page.waitForFunction(() => document.body.dataset.connection === "reconnecting", null, { timeout: 5000 });
  startServer();
  await page.waitForFunction(() => document.body.dataset.connection === "open", null, { timeout: 15000 });
  // And it is live again: a new change arrives.
  const { id, name } = firstOutcome("DESC");
  const selector = `[data-event="${id}"] [data-outcome="${name}"] .odds`;
  await page.waitForSelector(selector, { timeout: 10000 });
  const before = await page.textContent(selector);
  makeFirstOutcomeCertain(id);
  await page.waitForFunction(
    ([sel, old]) => document.querySelector(sel)?.textContent !== old, [selector, before], { timeout: 5000 });
});
