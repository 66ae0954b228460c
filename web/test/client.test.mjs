// The JavaScript client against a real `oddsfeed serve` (started by tests/web_client.rs, which
// keeps changing prices in PostgreSQL while this runs). Node's built-in test runner.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { OddsFeedClient, formatLatency } from "../oddsfeed-client.js";
import { sleep, until } from "./wait.mjs";

const URL = process.env.ODDSFEED_WS_URL;
assert.ok(URL, "ODDSFEED_WS_URL is set by tests/web_client.rs");

const clients = [];
// Closed after each test, also when it fails: an open client (its socket, its clock timer)
// would keep node running, and the run would hang instead of reporting the failure.
afterEach(() => {
  for (const feed of clients.splice(0)) feed.close();
});

function client(options = {}) {
  const feed = new OddsFeedClient(URL, { WebSocket, initialBackoffMs: 50, ...options });
  clients.push(feed);
  return feed;
}

test("snapshot, live diffs, clock offset and latency reports", async () => {
  const feed = client();
  const statuses = [];
  feed.on("status", (s) => statuses.push(s));
  const replies = [];
  feed.on("message", (m) => m.type === "latency" && replies.push(m));
  let updates = 0;
  feed.subscribe("sport:all", () => (updates += 1));
  await until("a snapshot", () => feed.position("sport:all")?.snapshots === 1);
  const first = feed.position("sport:all").seq;
  assert.ok(feed.events("sport:all").length > 0, "the snapshot has events");
  await until("live diffs", () => feed.position("sport:all").seq >= first + 3);
  assert.equal(feed.position("sport:all").gaps, 0);
  assert.ok(updates >= 4);
  assert.deepEqual(statuses.slice(0, 2), ["connecting", "open"]);
  assert.equal(feed.status, "open");
  assert.equal(feed.publisher, "live");
  // One machine, one clock: the estimated offset is small.
  assert.ok(Math.abs(feed.clockOffsetMs) < 1000, `offset ${feed.clockOffsetMs}`);
  // Measured once the first pings are back (about 1.5 s).
  await until("latencies measured", () => feed.latency().count >= 3);
  const latency = feed.latency();
  assert.ok(latency.p50 < 5000, JSON.stringify(latency));
  // Never below 0 by more than the estimate's uncertainty, so none was left out.
  assert.ok(latency.p50 >= -latency.uncertaintyMs, JSON.stringify(latency));
  assert.equal(latency.untrusted, 0, JSON.stringify(latency));
  assert.notEqual(formatLatency(latency.p50), "0 ms");
  // The reports are ones the server records.
  await until("a latency report recorded", () => replies.some((r) => r.recorded));
  assert.ok(replies.every((r) => r.recorded || r.reason === undefined), JSON.stringify(replies));
  // Events come in publishing order: live first.
  const events = feed.events("sport:all");
  const firstNotLive = events.findIndex((e) => !e.live);
  assert.ok(firstNotLive === -1 || events.slice(firstNotLive).every((e) => !e.live));
  feed.close();
  assert.equal(feed.status, "closed");
});

test("reconnects after a dropped connection and resumes without a snapshot", async () => {
  const feed = client();
  feed.subscribe("sport:football");
  await until("a snapshot", () => feed.position("sport:football")?.snapshots === 1);
  const reconnecting = new Promise((resolve) => feed.on("status", (s) => s === "reconnecting" && resolve()));
  feed.dropConnection();
  await reconnecting;
  await until("reopened", () => feed.status === "open");
  const before = feed.position("sport:football").seq;
  await until("diffs after the resume", () => feed.position("sport:football").seq > before + 1);
  const pos = feed.position("sport:football");
  assert.equal(pos.snapshots, 1, "resumed from the replay buffer, not a new snapshot");
  assert.equal(pos.gaps, 0);

  // Same state as a fresh client at the same seq.
  const fresh = client({ reportLatency: false });
  fresh.subscribe("sport:football");
  await until("both at one seq", () => {
    const a = feed.position("sport:football").seq;
    const b = fresh.position("sport:football")?.seq;
    return b !== undefined && a === b && fresh.position("sport:football").snapshots > 0;
  });
  assert.deepEqual(feed.events("sport:football"), fresh.events("sport:football"));
  feed.close();
  fresh.close();
});

test("a seq gap makes the client resubscribe and converge", async () => {
  const feed = client();
  feed.subscribe("sport:all");
  await until("a snapshot", () => feed.position("sport:all")?.snapshots === 1);
  // Forget one message, as if it had been lost.
  feed.rooms.get("sport:all").seq -= 1;
  await until("the gap to be seen", () => feed.position("sport:all").gaps >= 1);
  const fresh = client({ reportLatency: false });
  fresh.subscribe("sport:all");
  await until("both at one seq", () => {
    const a = feed.position("sport:all").seq;
    const b = fresh.position("sport:all")?.seq;
    return fresh.position("sport:all")?.snapshots > 0 && a === b;
  });
  assert.deepEqual(feed.events("sport:all"), fresh.events("sport:all"));
  feed.close();
  fresh.close();
});

test("server errors reach the error listener and malformed rooms stay empty", async () => {
  const feed = client();
  const errors = [];
  feed.on("error", (e) => errors.push(e));
  // A sport with nothing active is a room that fills later; upper case is not a sport key.
  feed.subscribe("sport:Curling");
  await until("an error", () => errors.length > 0);
  assert.equal(errors[0].code, "unknown_room");
  assert.deepEqual(feed.events("sport:Curling"), []);
  feed.close();
});

test("the changes format merges into the same whole events as the full format", async () => {
  const full = client();
  const changes = client({ format: "changes" });
  full.subscribe("sport:all");
  changes.subscribe("sport:all");
  await until(
    "both snapshots",
    () => full.position("sport:all")?.snapshots === 1 && changes.position("sport:all")?.snapshots === 1,
  );
  const target = Math.max(full.position("sport:all").seq, changes.position("sport:all").seq) + 5;
  // Compared at an instant when both have applied the same message (one JavaScript turn).
  await until(
    "both at the same seq past the target",
    () => {
      const a = full.position("sport:all");
      const b = changes.position("sport:all");
      if (a.seq < target || a.seq !== b.seq) return false;
      assert.deepEqual(changes.events("sport:all"), full.events("sport:all"));
      return true;
    },
    20000,
  );
  assert.equal(changes.position("sport:all").gaps, 0);
  full.close();
  changes.close();
});

test("permessage-deflate both ways with the ws package (every client message compressed)", async () => {
  const socket = new WebSocket(URL, { perMessageDeflate: { threshold: 0 } });
  const messages = [];
  socket.on("message", (data) => messages.push(JSON.parse(data)));
  await new Promise((resolve, reject) => {
    socket.on("open", resolve);
    socket.on("error", reject);
  });
  assert.match(socket.extensions, /permessage-deflate/);
  socket.send(JSON.stringify({ type: "subscribe", room: "sport:all", id: "z" }));
  await until("a snapshot", () => messages.some((m) => m.type === "snapshot"));
  assert.ok(messages.some((m) => m.type === "subscribed" && m.id === "z"));
  assert.ok(messages.find((m) => m.type === "snapshot").events.length > 0);
  await until("a live message", () => messages.some((m) => m.type === "odds"));
  socket.close();
});
