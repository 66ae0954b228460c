// oddsfeed browser/Node client: an ES module with no build step.
//
//   import { OddsFeedClient } from "./oddsfeed-client.js";
//   const feed = new OddsFeedClient("wss://odds.example.com/ws", { token });
//   const stop = feed.subscribe("sport:football", (events, room) => render(events));
//   feed.on("status", (s) => console.log("connection", s));      // connecting|open|reconnecting|closed
//   feed.on("publisher", (p) => console.log("publisher", p));    // live|stale
//   setInterval(() => { const l = feed.latency(); show(`${formatLatency(l.p50)} ± ${l.uncertaintyMs}`); }, 1000);
//
// It reconnects with exponential backoff and full jitter, resumes each room with epoch+seq
// (the server replays what was missed, or sends a snapshot), resubscribes when it sees a seq
// gap, keeps every room's events, estimates the server clock offset from its pings, measures
// publish-to-receive latency below the millisecond (from about 1.5 s after connecting, once
// the first pings are back) and reports it to the server every 1.1 s.
//
// The latency is only as good as the clock offset. Each ping gives an interval the server's
// clock was in (it stamped `serverTimeUs` between our send and our receive), so the offset is
// the interval's middle, within half the round trip (NTP's reasoning); the narrowest is used
// (NTP's clock filter). The replies to latency reports carry the
// server's time too, so a page that reports every 1.1 s also syncs that often. Reports
// and pings go out from a timer, not while a message is being handled: a reply that arrives
// while the page renders waits for it, and its round trip (its width) with it. The two
// clocks run at different rates (the server's wall clock is slewed by NTP, up to 0.05 %, and a
// virtual machine's clock can be off by more; the browser measures with a monotonic one), so
// the rate is measured too, from the two samples that bound it best, and the uncertainty
// grows with the time since the sample by the rate's own error. (A clock more than 0.1 % off
// looks, until the rate is measured, like one stepped now and then; its latencies may then be
// off by about its drift times a second.) A
// sample the estimate cannot hold with means a clock was stepped: the older ones are dropped.
// A latency below 0 by more than its uncertainty is not a latency but a wrong offset: it is
// counted (`untrusted`), neither kept nor reported, and the clock is synced again at once.
// Nothing is clamped to 0.

const DEFAULTS = {
  initialBackoffMs: 250,
  maxBackoffMs: 15000,
  latencyWindowMs: 60000,
  reportLatency: true,
  clockSyncIntervalMs: 10000,
};

/** The timer that sends the latest latency report, or a ping when one is due: a little over
 * the second the server asks between two reports, so that jitter never makes one early. */
const CLOCK_TICK_MS = 1100;

/** Round trips kept for the clock offset and rate: the last 16, over 2 minutes at most. */
const CLOCK_SAMPLES = 16;
const CLOCK_WINDOW_MS = 120000;
/** Rate difference assumed until two samples bound it better: twice NTP's largest slew. */
const UNKNOWN_DRIFT = 1e-3;
/** Pings on connecting: at 0, 0.4, 0.8, 1.2, 3 and 6 s (then every `clockSyncIntervalMs`), so
 * the rate is soon measured over seconds. Latencies are measured from the fourth pong on: the
 * first round trips are slow while a page loads and renders its snapshot (100 ms and more in
 * the board's test, against 2 ms a second later). */
const FIRST_PING_GAPS_MS = [400, 400, 400, 1800, 3000];
const PINGS_BEFORE_MEASURING = 4;
/** Early syncs (after an impossible latency) at most this often: pings count against the
 * server's message budget (CLIENT_MESSAGES_PER_MINUTE), which the latency reports share. */
const RESYNC_MIN_GAP_MS = 5000;

/**
 * Our clock in Unix ms: `performance.timeOrigin + performance.now()` where there is one (a
 * fraction of a millisecond, and not stepped when the system clock is set), else `Date.now()`
 * (1 ms). Browsers coarsen `performance.now()` differently (5 µs to 1 ms, more against
 * fingerprinting), so its resolution is measured: the smallest step seen in at most 5 ms.
 */
function platformClock() {
  const perf = globalThis.performance;
  if (perf && typeof perf.now === "function" && typeof perf.timeOrigin === "number") {
    return { now: () => perf.timeOrigin + perf.now(), resolutionMs: smallestStep(() => perf.now(), 5) };
  }
  return { now: () => Date.now(), resolutionMs: smallestStep(() => Date.now(), 5) };
}

/**
 * The smallest step of the clock `read()` seen over 3 steps, `budgetMs` of it or 200,000 reads
 * (a clock that does not move); `budgetMs` when no step was seen.
 */
export function smallestStep(read, budgetMs) {
  const start = read();
  let last = start;
  let smallest = Infinity;
  for (let steps = 0, reads = 0; steps < 3 && reads < 200000; reads++) {
    const t = read();
    if (t - start > budgetMs) break;
    if (t > last) {
      smallest = Math.min(smallest, t - last);
      last = t;
      steps += 1;
    }
  }
  return Number.isFinite(smallest) ? smallest : budgetMs;
}

/**
 * A server timestamp as `[ms, resolution]`: from microseconds when the message has them,
 * else from the truncated millisecond (its middle, ± 0.5 ms).
 */
function serverInstant(us, ms) {
  if (Number.isFinite(us) && us > 0) return [us / 1000 + 0.0005, 0.001];
  return [ms + 0.5, 1];
}

/**
 * One clock-offset sample: we sent at `sentAt`, the server stamped `serverTime` (resolution
 * `serverResolutionMs`), we received at `receivedAt` (our clock, resolution
 * `localResolutionMs`). At `at` (our clock), server clock minus ours was `offset`, within
 * `halfWidth`.
 */
export function offsetSample(sentAt, serverTime, receivedAt, serverResolutionMs = 0, localResolutionMs = 0) {
  const roundTrip = Math.max(0, receivedAt - sentAt);
  return {
    at: (sentAt + receivedAt) / 2,
    offset: serverTime - (sentAt + receivedAt) / 2,
    halfWidth: roundTrip / 2 + serverResolutionMs / 2 + localResolutionMs,
  };
}

/** The server clock offset of one connection, from its latest round trips (see the top). */
export class ClockOffset {
  constructor() {
    this.samples = []; // oldest first
  }

  /**
   * Adds a sample; when the estimate cannot hold with it, a clock was stepped: it starts over.
   * (A second sample is taken as it comes: one sample says nothing of the rate.)
   */
  add(sample) {
    const predicted = this.samples.length >= 2 ? this.estimate(sample.at) : null;
    if (predicted && Math.abs(sample.offset - predicted.offset) > sample.halfWidth + predicted.uncertainty) {
      this.samples = [];
    }
    this.samples.push(sample);
    while (this.samples.length > CLOCK_SAMPLES || sample.at - this.samples[0].at > CLOCK_WINDOW_MS) {
      this.samples.shift();
    }
  }

  /**
   * Server clock minus ours at `t` (our clock): `{ offset, uncertainty, rate }`, or null
   * before the first sample. The rate is that of the two samples that bound it best (their
   * widths over the time between them); the offset is the sample that, carried forward at that
   * rate, is the narrowest at `t`; the uncertainty is its half width plus the rate's error
   * times the time since.
   */
  estimate(t) {
    const samples = this.samples;
    if (samples.length === 0) return null;
    // Until two samples bound the rate better than NTP can slew a clock (twice over), the
    // rate is taken as 0 within that: two samples 0.4 s apart, each within 1 ms, say no more
    // than ± 0.5 %, and carried forward at that error a second-old offset would be ± 5 ms.
    let rate = 0;
    let rateError = UNKNOWN_DRIFT;
    for (let i = 0; i < samples.length; i++) {
      for (let j = i + 1; j < samples.length; j++) {
        const [a, b] = [samples[i], samples[j]];
        if (b.at <= a.at) continue;
        const error = (a.halfWidth + b.halfWidth) / (b.at - a.at);
        if (error < rateError) {
          rateError = error;
          rate = (b.offset - a.offset) / (b.at - a.at);
        }
      }
    }
    let best = null;
    for (const s of samples) {
      const uncertainty = s.halfWidth + Math.abs(t - s.at) * rateError;
      if (!best || uncertainty <= best.uncertainty) best = { offset: s.offset + rate * (t - s.at), uncertainty, rate };
    }
    return best;
  }

  reset() {
    this.samples = [];
  }
}

/**
 * A latency for people: "0.4 ms" below 10 ms, "12 ms" above, "< 0.1 ms" below what one decimal
 * shows (an estimate at or below 0 included: such a value is within its uncertainty of 0, or it
 * would not have been kept). Never "0 ms". `null` (nothing measured) is "–". Show
 * `latency().uncertaintyMs` beside it ("± 0.2 ms"), as the board does.
 */
export function formatLatency(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 0.05) return "< 0.1 ms";
  return ms < 9.95 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

/** Live first, then start time, then id: the publisher's order. */
function publishingOrder(a, b) {
  if (a.live !== b.live) return a.live ? -1 : 1;
  const ta = a.startTime ? Date.parse(a.startTime) : Infinity;
  const tb = b.startTime ? Date.parse(b.startTime) : Infinity;
  if (ta !== tb) return ta < tb ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export class OddsFeedClient {
  /**
   * @param {string} url ws:// or wss:// URL of the server's /ws endpoint.
   * @param {object} [options] see oddsfeed-client.d.ts
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket implementation: pass options.WebSocket");
    const clock = options.now ? { now: options.now, resolutionMs: options.clockResolutionMs ?? 0 } : platformClock();
    /** Our clock, Unix ms (a fraction of a millisecond where the platform has it). */
    this.now = clock.now;
    this.clockResolutionMs = clock.resolutionMs;
    /** @type {"idle"|"connecting"|"open"|"reconnecting"|"closed"} */
    this.status = "idle";
    /** @type {"live"|"stale"} */
    this.publisher = "live";
    this.clock = new ClockOffset();
    this.pings = new Map(); // ping id -> sent at (our clock)
    this.pingsAnswered = 0; // on this connection
    this.clockTimer = null;
    this.firstPingTimer = null;
    this.lastResync = -Infinity;
    this.connectStartedAt = 0;
    this.clientId = null;
    this.rooms = new Map(); // room -> { epoch, seq, events: Map, listeners: Set, snapshots, gaps }
    this.listeners = new Map(); // event name -> Set
    this.latencies = []; // [receivedAt, ms, uncertainty]
    this.untrusted = []; // receivedAt of latencies below 0 by more than their uncertainty
    this.pendingReport = null; // the latest latency to report, in ms
    this.lastTimedSend = -Infinity; // our clock
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
    this.nextId = 1;
  }

  /** Opens the connection (subscribing does it too). */
  connect() {
    if (this.socket || this.stopped) return this;
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    const params = [];
    if (this.options.token) params.push(`token=${encodeURIComponent(this.options.token)}`);
    if (this.options.format === "changes") params.push("format=changes");
    this.connectStartedAt = this.now();
    const socket = new this.WebSocket(this.url + (params.length ? `?${params.join("&")}` : ""));
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.setStatus("open");
      for (const [room, state] of this.rooms) this.sendSubscribe(room, state);
      this.pingsAnswered = 0;
      this.ping();
      this.clearClockTimers();
      this.clockTimer = setInterval(() => this.tick(), CLOCK_TICK_MS);
    };
    // A socket being closed (by `close()`, or replaced) may still deliver what was in flight.
    socket.onmessage = (event) => {
      if (this.socket === socket) this.onMessage(event.data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.clearClockTimers();
      this.pings.clear();
      this.pendingReport = null;
      if (this.stopped) {
        this.setStatus("closed");
        return;
      }
      this.scheduleReconnect();
    };
    socket.onerror = () => {};
    return this;
  }

  /** Closes for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.clearClockTimers();
    this.pings.clear();
    this.pendingReport = null;
    if (this.socket) this.socket.close(1000);
    this.socket = null;
    this.setStatus("closed");
  }

  /**
   * Joins a room; `listener(events, room)` gets the room's events (publishing order) after the
   * snapshot and after every change. Returns a function that leaves the room.
   */
  subscribe(room, listener) {
    let state = this.rooms.get(room);
    if (!state) {
      // `seen`: the highest seq received in this epoch; a message at or below it that is
      // applied is one the server replays after a gap, whose age is not a latency.
      state = { epoch: null, seq: 0, seen: 0, events: new Map(), listeners: new Set(), snapshots: 0, gaps: 0 };
      this.rooms.set(room, state);
      if (this.isOpen()) this.sendSubscribe(room, state);
    }
    if (listener) state.listeners.add(listener);
    this.connect();
    return () => {
      if (listener) state.listeners.delete(listener);
      if (state.listeners.size === 0) {
        this.rooms.delete(room);
        if (this.isOpen()) this.send({ type: "unsubscribe", room });
      }
    };
  }

  /** The events of a room in publishing order. */
  events(room) {
    const state = this.rooms.get(room);
    return state ? [...state.events.values()].sort(publishingOrder) : [];
  }

  /** `{ epoch, seq, snapshots, gaps }` of a room, for display and tests. */
  position(room) {
    const s = this.rooms.get(room);
    return s ? { epoch: s.epoch, seq: s.seq, snapshots: s.snapshots, gaps: s.gaps } : null;
  }

  /**
   * Latency percentiles (ms) over the last minute: `{ count, p50, p99, uncertaintyMs,
   * untrusted }`. `p50` and `p99` are each within `uncertaintyMs` of the truth (so one may be
   * a little below 0: show them with `formatLatency`); `untrusted` counts the latencies left
   * out because the clock offset was wrong.
   */
  latency() {
    this.trimLatencies(this.now());
    const sorted = this.latencies.map(([, ms, u]) => [ms, u]).sort((a, b) => a[0] - b[0]);
    const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
    const [p50, p99] = [at(0.5), at(0.99)];
    return {
      count: sorted.length,
      p50: p50 ? p50[0] : null,
      p99: p99 ? p99[0] : null,
      uncertaintyMs: Math.max(p50 ? p50[1] : 0, p99 ? p99[1] : 0),
      untrusted: this.untrusted.length,
    };
  }

  /** Listens to "status", "publisher", "update", "latency", "error", "message". */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  // --- internals ---

  emit(name, ...args) {
    for (const fn of this.listeners.get(name) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  isOpen() {
    return this.socket && this.socket.readyState === 1;
  }

  setStatus(status) {
    if (this.status !== status) {
      this.status = status;
      this.emit("status", status);
    }
  }

  send(message) {
    if (this.isOpen()) this.socket.send(JSON.stringify(message));
  }

  sendSubscribe(room, state) {
    const message = { type: "subscribe", room, id: this.nextId++ };
    if (state.epoch !== null) {
      message.epoch = state.epoch;
      message.seq = state.seq;
    }
    this.send(message);
  }

  /** A ping for the clock offset. */
  ping() {
    this.sendTimed({ type: "ping" });
  }

  /**
   * What the clock timer does every 1.1 s: sends the latest latency measured since the last
   * report (its reply is a clock sample), else a ping when `clockSyncIntervalMs` has passed
   * since the last sample was asked for.
   */
  tick() {
    if (this.pendingReport !== null) {
      const ms = this.pendingReport;
      this.pendingReport = null;
      this.sendTimed({ type: "latency", ms });
    } else if (this.now() - this.lastTimedSend >= this.options.clockSyncIntervalMs) {
      this.ping();
    }
  }

  /**
   * Sends a message whose reply carries the server's time (`ping`, `latency`), noting when:
   * the reply, told from others by its id, is a clock sample.
   */
  sendTimed(message) {
    if (!this.isOpen()) return;
    const id = `clock-${this.nextId++}`;
    if (this.pings.size > 16) this.pings.clear(); // replies that never came
    this.lastTimedSend = this.now();
    this.pings.set(id, this.lastTimedSend);
    this.send({ ...message, id });
  }

  /** The clock sample of a reply to `sendTimed`; false for any other message. */
  takeClockSample(msg) {
    const sentAt = this.pings.get(msg.id);
    if (sentAt === undefined) return false;
    this.pings.delete(msg.id);
    return this.addClockSample(sentAt, msg);
  }

  /**
   * A clock sample from `msg`, stamped by the server (`serverTimeUs`, `serverTime`) between
   * our `sentAt` and now; false when it carries no time.
   */
  addClockSample(sentAt, msg) {
    const [serverTime, resolution] = serverInstant(msg.serverTimeUs, msg.serverTime);
    if (!Number.isFinite(serverTime)) return false;
    this.clock.add(offsetSample(sentAt, serverTime, this.now(), resolution, this.clockResolutionMs));
    return true;
  }

  clearClockTimers() {
    clearInterval(this.clockTimer);
    clearTimeout(this.firstPingTimer);
  }

  /** Syncs the clock now, after a latency that shows the offset is wrong (rate-limited). */
  resync(now) {
    if (now - this.lastResync < RESYNC_MIN_GAP_MS) return;
    this.lastResync = now;
    this.ping();
  }

  /** Server clock minus ours now, in ms (0 before the first sample). */
  get clockOffsetMs() {
    return this.clock.estimate(this.now())?.offset ?? 0;
  }

  /** How far `clockOffsetMs` may be off now, in ms (see the top of this file). */
  get clockUncertaintyMs() {
    return this.clock.estimate(this.now())?.uncertainty ?? Infinity;
  }

  scheduleReconnect() {
    this.setStatus("reconnecting");
    const { initialBackoffMs, maxBackoffMs } = this.options;
    const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** this.attempt);
    const delay = Math.random() * ceiling; // full jitter: reconnect storms spread out
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Exposed for tests: drops the connection as a network failure would. */
  dropConnection() {
    if (this.socket) this.socket.close(4000, "dropped by the client");
  }

  onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(typeof data === "string" ? data : data.toString());
    } catch {
      return;
    }
    this.emit("message", msg);
    switch (msg.type) {
      case "welcome": {
        this.clientId = msg.clientId;
        // Maybe another server, with another clock: start over. The welcome was stamped
        // between our connect and now, a wide interval that the first pong narrows.
        this.clock.reset();
        this.addClockSample(this.connectStartedAt, msg);
        break;
      }
      case "latency":
        this.takeClockSample(msg);
        break;
      case "pong": {
        if (!this.takeClockSample(msg)) break;
        this.pingsAnswered += 1;
        const gap = FIRST_PING_GAPS_MS[this.pingsAnswered - 1];
        if (gap !== undefined) {
          clearTimeout(this.firstPingTimer);
          this.firstPingTimer = setTimeout(() => this.ping(), gap);
        }
        break;
      }
      case "snapshot":
        this.onSnapshot(msg);
        break;
      case "odds":
        this.onOdds(msg);
        break;
      case "status":
        if (this.publisher !== msg.publisher) {
          this.publisher = msg.publisher;
          this.emit("publisher", msg.publisher);
        }
        break;
      case "error":
        this.emit("error", msg);
        break;
      default:
        break;
    }
  }

  onSnapshot(msg) {
    const state = this.rooms.get(msg.room);
    if (!state) return;
    if (state.epoch !== msg.epoch) state.seen = 0;
    state.epoch = msg.epoch;
    state.seq = msg.seq;
    state.seen = Math.max(state.seen, msg.seq);
    state.events = new Map(msg.events.map((e) => [e.id, e]));
    state.snapshots += 1;
    this.notify(msg.room, state);
  }

  onOdds(msg) {
    const state = this.rooms.get(msg.room);
    if (!state) return;
    const replayed = msg.epoch === state.epoch && msg.seq <= state.seen;
    if (msg.epoch === state.epoch) state.seen = Math.max(state.seen, msg.seq);
    if (msg.epoch !== state.epoch || msg.seq !== state.seq + 1) {
      if (msg.epoch === state.epoch && msg.seq <= state.seq) return; // already applied
      // A gap: ask again from what we have; the server replays or sends a snapshot.
      state.gaps += 1;
      this.sendSubscribe(msg.room, state);
      return;
    }
    state.seq = msg.seq;
    for (const id of msg.removals) state.events.delete(id);
    // In the `changes` format an upsert carries only what changed (a new event comes whole):
    // merged into what we have, it is the whole event again.
    for (const event of msg.upserts) {
      const before = msg.format === "changes" ? state.events.get(event.id) : undefined;
      state.events.set(event.id, before ? { ...before, ...event } : event);
    }
    if (!replayed) this.recordLatency(msg);
    this.notify(msg.room, state);
  }

  notify(room, state) {
    const events = [...state.events.values()].sort(publishingOrder);
    for (const fn of state.listeners) fn(events, room);
    this.emit("update", room, events);
  }

  trimLatencies(now) {
    const horizon = now - this.options.latencyWindowMs;
    while (this.latencies.length && this.latencies[0][0] < horizon) this.latencies.shift();
    while (this.untrusted.length && this.untrusted[0] < horizon) this.untrusted.shift();
  }

  /** Publish → receive latency of an `odds` message (see the top of this file). */
  recordLatency(msg) {
    if (this.pingsAnswered < PINGS_BEFORE_MEASURING) return;
    const now = this.now();
    const [publishedAt, resolution] = serverInstant(msg.publishedAtUs, msg.publishedAt);
    // A replay on resume was published before this connection: its age is not a latency.
    const clock = this.clock.estimate(now);
    if (!clock || !Number.isFinite(publishedAt)) return;
    if (publishedAt - clock.offset < this.connectStartedAt) return;
    const ms = now + clock.offset - publishedAt;
    const uncertainty = clock.uncertainty + resolution / 2 + this.clockResolutionMs;
    if (ms < -uncertainty) {
      // Received before it was published: the offset is wrong (a clock was stepped, or the
      // publisher's clock is ahead of this server's). Not a latency, and not shown as 0.
      this.untrusted.push(now);
      this.trimLatencies(now);
      this.resync(now);
      return;
    }
    this.latencies.push([now, ms, uncertainty]);
    this.trimLatencies(now);
    this.emit("latency", ms);
    // Sent by the clock timer. The server takes 0 and above; a value within its uncertainty
    // below 0 is not reported.
    if (this.options.reportLatency && ms >= 0) this.pendingReport = Math.round(ms * 1000) / 1000;
  }
}
