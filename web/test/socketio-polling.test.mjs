// More long-polling pages than MAX_PENDING_CONNECTIONS (tests/socketio.rs starts
// `oddsfeed serve` with a cap of 4 and prices moving): each page's connections serve its
// session, so none is evicted as a silent pending connection and none reconnects.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
import { sleep, until } from "./wait.mjs";

const URL = process.env.ODDSFEED_HTTP_URL;
const PAGES = Number(process.env.PAGES);
assert.ok(URL && PAGES, "set by tests/socketio.rs");

test(`${PAGES} long-polling pages stay connected above the pending cap`, { timeout: 60000 }, async () => {
  // A connection per request (no idle keep-alive connection to be evicted meanwhile).
  const get = (url) =>
    new Promise((resolve, reject) => {
      http.get(url, { agent: false }, (res) => {
        let body = "";
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => resolve(body));
      }).on("error", reject);
    });
  const metric = async (name) => {
    const text = await get(`${URL}/metrics`);
    const line = text.split("\n").find((l) => l.startsWith(name));
    return { value: line === undefined ? 0 : Number(line.slice(name.length).trim()), text };
  };
  const EVICTED = 'oddsfeed_http_connections_closed_total{reason="evicted"} ';
  const pages = [];
  // One page at a time: a storm of handshakes above the cap is only slowed down (a handshake
  // connection that waits may be evicted and retried); this test is about the sessions.
  for (let i = 0; i < PAGES; i++) {
    const page = { connects: 0, disconnects: 0, errors: 0, live: 0, reasons: [] };
    page.socket = io(URL, { transports: ["polling"], reconnectionDelay: 100 });
    page.socket.on("connect", () => {
      page.connects += 1;
      page.socket.emit("join-sport", "football");
    });
    page.socket.on("disconnect", (reason) => {
      page.disconnects += 1;
      page.reasons.push(reason);
    });
    page.socket.on("connect_error", (e) => {
      page.errors += 1;
      page.reasons.push(e.message);
    });
    page.socket.on("sports:odds-update", (data) => {
      if (!data.snapshot) page.live += 1;
    });
    pages.push(page);
    await until(`page ${i} connected`, () => page.connects >= 1, 10000);
  }
  const before = pages.map(({ connects, disconnects, errors }) => ({ connects, disconnects, errors }));
  const evictedBefore = (await metric(EVICTED)).value;
  // Long enough for evictions (a pending connection older than 1 s is closed when another waits).
  await sleep(5000);
  const livesBefore = pages.map((p) => p.live);
  await until("live changes on every page", () => pages.every((p, i) => p.live >= livesBefore[i] + 2), 20000);
  const sessions = await metric("oddsfeed_http_session_connections ");
  const evicted = await metric(EVICTED);
  const summary = pages.map(({ connects, disconnects, errors, reasons }) => ({ connects, disconnects, errors, reasons }));
  for (const page of pages) page.socket.disconnect();
  assert.deepEqual(
    summary.map(({ connects, disconnects, errors }) => ({ connects, disconnects, errors })),
    before,
    `a page reconnected: ${JSON.stringify(summary)}\n${evicted.text}`,
  );
  assert.equal(evicted.value, evictedBefore, evicted.text);
  assert.ok(sessions.value >= PAGES, sessions.text);
});
