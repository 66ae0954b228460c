// oddsfeed browser/Node client: an ES module with no build step.
//
//   import { OddsFeedClient } from "./oddsfeed-client.js";
//   const feed = new OddsFeedClient("wss://odds.example.com/ws", { token });
//   const stop = feed.subscribe("sport:football", (events, room) => render(events));
//   feed.on("status", (s) => console.log("connection", s));      // connecting|open|reconnecting|closed
//   feed.on("publisher", (p) => console.log("publisher", p));    // live|stale
//
// It reconnects with exponential backoff and full jitter, resumes each room with epoch+seq
// (the server replays what was missed, or sends a snapshot), resubscribes when it sees a seq
// gap, keeps every room's events, estimates the server clock offset from serverTime, measures
// publish-to-receive latency and reports it to the server once a second.

const DEFAULTS = {
  initialBackoffMs: 250,
  maxBackoffMs: 15000,
  latencyWindowMs: 60000,
  reportLatency: true,
};

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
    /** @type {"idle"|"connecting"|"open"|"reconnecting"|"closed"} */
    this.status = "idle";
    /** @type {"live"|"stale"} */
    this.publisher = "live";
    /** Server clock minus local clock, in ms (estimated from serverTime). */
    this.clockOffsetMs = 0;
    this.clientId = null;
    this.rooms = new Map(); // room -> { epoch, seq, events: Map, listeners: Set, snapshots, gaps }
    this.listeners = new Map(); // event name -> Set
    this.latencies = []; // [receivedAt, ms]
    this.lastReport = 0;
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.pingSentAt = 0;
    this.bestRtt = Infinity;
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
    const socket = new this.WebSocket(this.url + (params.length ? `?${params.join("&")}` : ""));
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.setStatus("open");
      for (const [room, state] of this.rooms) this.sendSubscribe(room, state);
      this.ping();
    };
    socket.onmessage = (event) => this.onMessage(event.data);
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
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
      state = { epoch: null, seq: 0, events: new Map(), listeners: new Set(), snapshots: 0, gaps: 0 };
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

  /** Latency percentiles (ms) over the last minute: `{ count, p50, p99 }`. */
  latency() {
    this.trimLatencies(Date.now());
    const values = this.latencies.map(([, ms]) => ms).sort((a, b) => a - b);
    const at = (q) => (values.length ? values[Math.min(values.length - 1, Math.floor(q * values.length))] : null);
    return { count: values.length, p50: at(0.5), p99: at(0.99) };
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

  ping() {
    this.pingSentAt = Date.now();
    this.send({ type: "ping" });
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
      case "welcome":
        this.clientId = msg.clientId;
        this.clockOffsetMs = msg.serverTime - Date.now();
        break;
      case "pong":
        if (this.pingSentAt) {
          const now = Date.now();
          const rtt = now - this.pingSentAt;
          // The best round trip gives the tightest offset estimate.
          if (rtt <= this.bestRtt) {
            this.bestRtt = rtt;
            this.clockOffsetMs = msg.serverTime + rtt / 2 - now;
          }
          this.pingSentAt = 0;
        }
        break;
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
    state.epoch = msg.epoch;
    state.seq = msg.seq;
    state.events = new Map(msg.events.map((e) => [e.id, e]));
    state.snapshots += 1;
    this.notify(msg.room, state);
  }

  onOdds(msg) {
    const state = this.rooms.get(msg.room);
    if (!state) return;
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
    this.recordLatency(msg.publishedAt);
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
  }

  recordLatency(publishedAt) {
    const now = Date.now();
    const ms = Math.max(0, now + this.clockOffsetMs - publishedAt);
    this.latencies.push([now, ms]);
    this.trimLatencies(now);
    this.emit("latency", ms);
    if (this.options.reportLatency && now - this.lastReport >= 1000 && ms <= 60000) {
      this.lastReport = now;
      this.send({ type: "latency", ms: Math.round(ms * 10) / 10 });
    }
  }
}
