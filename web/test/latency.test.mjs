// The client's clock offset, latency estimate and latency formatting, without a server: a fake
// WebSocket and a fake clock play the server's side (tests/web_client.rs runs this file).
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { OddsFeedClient, formatLatency, offsetSample, smallestStep, ClockOffset } from "../oddsfeed-client.js";

/** A WebSocket whose server side the test plays: it records what the client sends. */
class FakeSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.last = this;
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
    this.onclose?.();
  }
}

const feeds = [];
// Closed after each test, pass or fail: an open client's clock timer keeps node running.
afterEach(() => {
  for (const feed of feeds.splice(0)) feed.close();
});

/**
 * A client on a fake clock, connected to a fake server whose clock is `skewMs` ahead of ours.
 * `server.at(localMs)` is the server's clock then; `server.reply(...)` answers the client.
 */
function connected({ skewMs = 5000.25, drift = 0, withMicroseconds = true } = {}) {
  let local = 1_000_000;
  const clock = { now: () => local, set: (t) => (local = t), advance: (ms) => (local += ms) };
  const feed = new OddsFeedClient("ws://fake/ws", { WebSocket: FakeSocket, now: clock.now });
  feeds.push(feed);
  feed.subscribe("sport:all");
  const socket = FakeSocket.last;
  const start = local;
  const server = {
    skewMs,
    // The server's clock runs `drift` faster than ours.
    at: (localMs) => localMs + server.skewMs + (localMs - start) * drift,
    stamp(name, serverMs) {
      return withMicroseconds
        ? { [name]: Math.floor(serverMs), [`${name}Us`]: Math.floor(serverMs * 1000) }
        : { [name]: Math.floor(serverMs) };
    },
    reply(msg) {
      socket.onmessage({ data: JSON.stringify(msg) });
    },
    /**
     * Answers every ping (and, with `reports`, every latency report) sent since the last call,
     * the server stamping at the midpoint.
     */
    answerPings({ roundTripMs = 0.2, reports = false } = {}) {
      for (;;) {
        const asked = socket.sent.find((m) => (m.type === "ping" || (reports && m.type === "latency")) && !m.answered);
        if (!asked) return;
        asked.answered = true;
        clock.advance(roundTripMs / 2);
        const stamped = server.at(clock.now());
        clock.advance(roundTripMs / 2);
        const reply = asked.type === "ping" ? { type: "pong" } : { type: "latency", recorded: true };
        server.reply({ ...reply, id: asked.id, ...server.stamp("serverTime", stamped) });
      }
    },
    seq: 0,
    /** An odds message published `ageMs` before it is received now (the next seq, or `seq`). */
    odds(ageMs, seq = server.seq + 1) {
      server.seq = Math.max(server.seq, seq);
      server.reply({
        type: "odds", room: "sport:all", epoch: "e", seq,
        ...server.stamp("publishedAt", server.at(clock.now()) - ageMs),
        upserts: [], removals: [],
      });
    },
    reports: () => socket.sent.filter((m) => m.type === "latency").map((m) => m.ms),
  };
  clock.advance(1.5); // the handshake
  server.reply({ type: "welcome", clientId: "c1", ...server.stamp("serverTime", server.at(clock.now() - 0.5)), heartbeatMs: 25000 });
  socket.readyState = 1;
  socket.onopen();
  server.reply({ type: "snapshot", room: "sport:all", epoch: "e", seq: 0, events: [] });
  server.answerPings();
  // Not measured until the first pings are all back.
  clock.advance(100);
  server.odds(0.4);
  assert.equal(feed.latency().count, 0);
  for (let i = 1; i < 4; i++) {
    clock.advance(400);
    feed.ping(); // what the first pings' timer does
    server.answerPings();
  }
  return { feed, clock, server, socket };
}

function assertReports(server, expected) {
  const sent = server.reports();
  assert.equal(sent.length, expected.length, `reports ${sent}`);
  // Server stamps are truncated to the microsecond: 2 µs at most between two of them.
  sent.forEach((ms, i) => assert.ok(Math.abs(ms - expected[i]) <= 0.003, `reports ${sent}`));
}

test("the offset comes from the narrowest round trip: latencies below a millisecond are measured", () => {
  const { feed, clock, server } = connected();
  assert.ok(Math.abs(feed.clockOffsetMs - server.skewMs) < 0.01, `offset ${feed.clockOffsetMs}`);
  assert.ok(feed.clockUncertaintyMs < 0.2, `uncertainty ${feed.clockUncertaintyMs}`);
  for (let i = 0; i < 5; i++) {
    clock.advance(100);
    server.odds(0.4);
  }
  const l = feed.latency();
  assert.equal(l.count, 5);
  assert.ok(Math.abs(l.p50 - 0.4) < 0.01, JSON.stringify(l));
  assert.equal(formatLatency(l.p50), "0.4 ms");
  // Reported by the clock timer, once a second, to the microsecond (the server's stamps are
  // truncated to it): the latest value.
  assertReports(server, []);
  feed.tick(); // what the clock timer does
  assertReports(server, [0.4]);
  feed.tick();
  assertReports(server, [0.4]); // nothing new to report
  // The report's reply, with the server's time, is a clock sample too.
  const samples = feed.clock.samples.length;
  server.answerPings({ reports: true });
  assert.equal(feed.clock.samples.length, samples + 1);
  clock.advance(1000);
  server.odds(0.4);
  feed.tick();
  assertReports(server, [0.4, 0.4]);
});

test("with millisecond timestamps only, a sub-millisecond latency is measured, within a millisecond or so", () => {
  const { feed, clock, server } = connected({ withMicroseconds: false });
  clock.advance(100);
  server.odds(0.4);
  const l = feed.latency();
  // The server's stamps are truncated to the millisecond: each is taken as its middle, ± 0.5.
  assert.ok(l.uncertaintyMs >= 1 && l.uncertaintyMs < 2, JSON.stringify(l));
  assert.ok(Math.abs(l.p50 - 0.4) <= l.uncertaintyMs, JSON.stringify(l));
  assert.match(formatLatency(l.p50), /^(< 0\.1|\d\.\d) ms$/);
});

test("the server's clock stepped forward: no negative or clamped latency, the clock is synced again at once", () => {
  const { feed, clock, server, socket } = connected();
  clock.advance(100);
  server.odds(0.4);
  feed.tick();
  // The server's clock is set 5 s ahead: with the old offset, messages arrive 5 s before they left.
  server.skewMs += 5000;
  const pingsBefore = socket.sent.filter((m) => m.type === "ping").length;
  clock.advance(2000);
  server.odds(0.4);
  let l = feed.latency();
  assert.equal(l.count, 1, "the impossible latency is not kept");
  assert.equal(l.untrusted, 1);
  assertReports(server, [0.4]); // nor reported
  assert.equal(socket.sent.filter((m) => m.type === "ping").length, pingsBefore + 1, "a ping at once");
  server.answerPings();
  assert.ok(Math.abs(feed.clockOffsetMs - server.skewMs) < 0.01, "the new offset replaced the old samples");
  clock.advance(100);
  server.odds(0.4);
  l = feed.latency();
  assert.equal(l.count, 2);
  assert.ok(Math.abs(l.p99 - 0.4) < 0.01, JSON.stringify(l));
  feed.tick();
  assertReports(server, [0.4, 0.4]);
});

test("the server's clock stepped back (a 14.7 s report): the next sync puts the latency right", () => {
  const { feed, clock, server } = connected();
  clock.advance(20000);
  server.answerPings();
  // The server's clock is set 14.7 s back: with the old offset, messages look 14.7 s old.
  server.skewMs -= 14700;
  clock.advance(100);
  server.odds(0.4);
  assert.ok(feed.latency().p50 > 14000, "wrong until the clocks are compared again");
  // The clock timer reports that 14.7 s (the server rejects it as too large), and the reply
  // syncs the clock.
  feed.tick();
  const reported = server.reports();
  assert.ok(reported.length === 1 && reported[0] > 14000, `reports ${reported}`);
  server.answerPings({ reports: true });
  assert.ok(Math.abs(feed.clockOffsetMs - server.skewMs) < 0.01, `offset ${feed.clockOffsetMs}`);
  clock.advance(1000);
  server.odds(0.4);
  const latest = feed.latencies.at(-1)[1];
  assert.ok(Math.abs(latest - 0.4) < 0.01, `${latest}`);
});

test("with nothing to report, the clock timer pings once clockSyncIntervalMs has passed", () => {
  const { feed, clock, socket } = connected();
  const pings = () => socket.sent.filter((m) => m.type === "ping").length;
  const before = pings();
  clock.advance(9000);
  feed.tick();
  assert.equal(pings(), before, "not yet");
  clock.advance(1000);
  feed.tick();
  assert.equal(pings(), before + 1);
  feed.tick();
  assert.equal(pings(), before + 1, "a ping was just asked for");
});

test("replayed messages on resume are not latencies", () => {
  const { feed, clock, server, socket } = connected();
  // A message published before this connection (a replay) arrives now.
  clock.advance(100);
  server.odds(3000);
  assert.equal(feed.latency().count, 0);
  feed.tick();
  assertReports(server, []);
  feed.close();
  assert.equal(socket.readyState, 3);
});

test("messages the server replays after a gap are not latencies; the live ones after them are", () => {
  const { feed, clock, server, socket } = connected();
  clock.advance(100);
  server.odds(0.4); // seq 2
  assert.equal(feed.latency().count, 1);
  // seq 3 is lost; seq 4 shows the gap, and the client asks to resume from 2.
  clock.advance(100);
  server.odds(0.4, 4);
  const resume = socket.sent.at(-1);
  assert.deepEqual([resume.type, resume.seq], ["subscribe", 2]);
  // The server replays 3 and 4, published 300 and 200 ms ago: their age is not a latency.
  clock.advance(200);
  server.odds(300, 3);
  server.odds(200, 4);
  assert.equal(feed.position("sport:all").seq, 4);
  assert.equal(feed.latency().count, 1, JSON.stringify(feed.latencies));
  clock.advance(100);
  server.odds(0.4); // seq 5, live
  const l = feed.latency();
  assert.equal(l.count, 2);
  assert.ok(Math.abs(l.p99 - 0.4) < 0.01, JSON.stringify(l));
});

test("after close(), what was in flight is ignored: no timer restarted, nothing measured", () => {
  const { feed, clock, server, socket } = connected();
  feed.ping();
  const inFlight = socket.sent.at(-1);
  feed.close();
  const count = feed.latency().count;
  // The socket, closing, still delivers the pong and a message (the ws package does).
  socket.onmessage({ data: JSON.stringify({ type: "pong", id: inFlight.id, ...server.stamp("serverTime", server.at(clock.now())) }) });
  server.odds(0.4);
  assert.equal(feed.latency().count, count);
  assert.equal(feed.pings.size, 0);
  assert.equal(feed.status, "closed");
});

test("a welcome without serverTime leaves the clock unknown, not NaN", () => {
  const feed = new OddsFeedClient("ws://fake/ws", { WebSocket: FakeSocket, now: () => 1000 });
  feeds.push(feed);
  feed.subscribe("sport:all");
  FakeSocket.last.onmessage({ data: JSON.stringify({ type: "welcome", clientId: "c1", heartbeatMs: 25000 }) });
  assert.equal(feed.clock.samples.length, 0);
  assert.equal(feed.clockOffsetMs, 0);
});

test("the local clock's resolution is measured", () => {
  let t = 0;
  assert.ok(Math.abs(smallestStep(() => (t += 0.03, Math.floor(t * 10) / 10), 5) - 0.1) < 1e-9);
  assert.equal(smallestStep(() => 7, 5), 5, "a clock that does not move");
  t = 0;
  assert.equal(smallestStep(() => (t += 0.5, Math.floor(t / 100) * 100), 5), 5, "coarser than the budget");
});

test("the clocks run at different rates (0.5 %, ten times what NTP slews): latencies stay right", () => {
  const { feed, clock, server } = connected({ drift: 0.005 });
  for (let t = 0; t < 60000; t += 500) {
    if (t % 1000 === 0) feed.tick(); // what the clock timer does
    server.answerPings({ reports: true });
    clock.advance(500);
    server.odds(0.4);
    const [, ms, uncertainty] = feed.latencies.at(-1) ?? [];
    assert.ok(Math.abs(ms - 0.4) <= uncertainty, `at ${t} ms: ${ms} ± ${uncertainty}`);
  }
  const l = feed.latency();
  assert.equal(l.untrusted, 0);
  assert.ok(l.count > 100, JSON.stringify(l));
  // A minute in, the rate is known well enough for a tenth of a millisecond.
  assert.ok(l.uncertaintyMs < 0.2, JSON.stringify(l));
  assert.equal(formatLatency(l.p50), "0.4 ms");
});

test("offset samples: the midpoint within half the round trip, carried forward at the measured rate", () => {
  assert.deepEqual(offsetSample(100, 5150.5, 101), { at: 100.5, offset: 5050, halfWidth: 0.5 });
  const c = new ClockOffset();
  assert.equal(c.estimate(0), null);
  // The server's clock runs 0.5 % fast against ours.
  for (const at of [0, 1000, 2000]) c.add({ at, offset: 10 + at * 0.005, halfWidth: 0.1 });
  const e = c.estimate(3000);
  assert.ok(Math.abs(e.offset - 25) < 1e-9, JSON.stringify(e));
  assert.ok(Math.abs(e.rate - 0.005) < 1e-12, JSON.stringify(e));
  // The newest sample's half width, plus the rate's error (0.2 ms over 2 s) for 1 s.
  assert.ok(Math.abs(e.uncertainty - 0.2) < 1e-9, JSON.stringify(e));
  // A sample the estimate cannot hold with (a stepped clock): it starts over.
  c.add({ at: 3000, offset: 40, halfWidth: 0.1 });
  assert.deepEqual(c.samples, [{ at: 3000, offset: 40, halfWidth: 0.1 }]);
  // With one sample the rate is unknown: 0, within twice NTP's largest slew.
  assert.deepEqual(c.estimate(4000), { offset: 40, uncertainty: 0.1 + 1000 * 1e-3, rate: 0 });
});

test("formatting: one decimal below 10 ms, integers above, never 0 ms", () => {
  for (const [ms, shown] of [
    [0.4, "0.4 ms"],
    [2.25, "2.3 ms"],
    [9.94, "9.9 ms"],
    [9.96, "10 ms"],
    [12.3, "12 ms"],
    [14700, "14700 ms"],
    [0.05, "0.1 ms"],
    [0.049, "< 0.1 ms"],
    [0, "< 0.1 ms"],
    [-0.3, "< 0.1 ms"],
    [null, "–"],
    [NaN, "–"],
    [Infinity, "–"],
  ]) {
    assert.equal(formatLatency(ms), shown, `${ms}`);
  }
  for (let i = 0; i < 10000; i++) {
    const ms = (Math.random() - 0.1) * 10 ** (Math.random() * 5 - 3);
    const shown = formatLatency(ms);
    assert.match(shown, /^(< 0\.1|\d\.\d|[1-9]\d+) ms$/, `${ms}`);
    assert.doesNotMatch(shown, /^0(\.0)? ms$/, `${ms}`);
  }
});
