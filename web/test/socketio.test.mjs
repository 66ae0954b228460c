// A page written against the earlier Node relay, unchanged, against a real `oddsfeed serve`
// (started by tests/socketio.rs, which changes prices in PostgreSQL for the first seconds of
// this run and publishes on the bridged Redis channels). The real socket.io-client package.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { io } from "socket.io-client";
import { sleep, until } from "./wait.mjs";

const URL = process.env.ODDSFEED_HTTP_URL;
const USER_TOKEN = process.env.USER_TOKEN; // sub "u1"
const ADMIN_TOKEN = process.env.ADMIN_TOKEN; // sub "admin", role admin
const OUT = process.env.SIO_OUT;
assert.ok(URL && USER_TOKEN && ADMIN_TOKEN && OUT, "set by tests/socketio.rs");

function connect(options = {}) {
  const socket = io(URL, { autoConnect: false, reconnectionDelay: 100, ...options });
  socket.connect();
  return socket;
}

// The earlier page's merge: events by id, each update merged into what the page has.
function page(socket, selectedSport) {
  const state = { events: new Map(), updates: 0, sportUpdates: 0, first: null, latencies: [] };
  socket.on("connect", () => {
    if (selectedSport) socket.emit("join-sport", selectedSport);
  });
  socket.on("sports:odds-update", (data) => {
    state.updates += 1;
    if (data.sport) state.sportUpdates += 1;
    if (!state.first) state.first = data;
    for (const e of data.events) state.events.set(e.id, { ...state.events.get(e.id), ...e });
    if (data.timestamp) state.latencies.push(Date.now() - Date.parse(data.timestamp));
  });
  return state;
}

test("the page's merge, over WebSocket, ends where the Redis state is", { timeout: 25000 }, async () => {
  const socket = connect({ transports: ["websocket"] });
  const state = page(socket, "Football");
  await until("the first list", () => state.first);
  assert.equal(state.first.snapshot, true);
  assert.ok(state.first.events.length > 0 && state.first.count === state.first.events.length);
  assert.ok(!Number.isNaN(Date.parse(state.first.timestamp)));
  const e = state.first.events[0];
  for (const field of ["id", "yesOdds", "noOdds", "score", "period", "elapsed", "live", "gameStatus"]) {
    assert.ok(field in e, `${field} in ${JSON.stringify(e)}`);
  }
  await until("the sport's list", () => state.sportUpdates >= 1);
  await until("live updates", () => state.updates >= 8);
  // The changes stop after a few seconds; then the merged page is written for comparison.
  let last = state.updates;
  for (;;) {
    await sleep(1500);
    if (state.updates === last) break;
    last = state.updates;
  }
  const live = [...state.events.values()].filter((e) => !e.removed);
  writeFileSync(OUT, JSON.stringify(live));
  socket.disconnect();
});

test("leave-sport stops the sport's messages; the global ones go on", { timeout: 25000 }, async () => {
  const socket = connect({ transports: ["websocket"] });
  const state = page(socket, "football");
  await until("the sport's list", () => state.sportUpdates >= 1);
  socket.emit("leave-sport", "football");
  await sleep(300);
  const sport = state.sportUpdates;
  const all = state.updates;
  // A price moves (the test keeps moving one on e0, a football event, until this file ends).
  await until("global updates", () => state.updates >= all + 2);
  assert.equal(state.sportUpdates, sport);
  socket.disconnect();
});

test("long-polling only", { timeout: 25000 }, async () => {
  const socket = connect({ transports: ["polling"] });
  const state = page(socket, "football");
  await until("the first list", () => state.first);
  await until("updates over polling", () => state.updates >= 3);
  assert.equal(socket.io.engine.transport.name, "polling");
  socket.disconnect();
});

test("bridged channels by name", { timeout: 25000 }, async () => {
  const socket = connect({ transports: ["websocket"] });
  const seen = {};
  for (const name of ["odds-update-e1", "chat-message-e1", "user-update", "admin:alert"]) {
    socket.on(name, (data) => (seen[name] = data));
  }
  await until("connected", () => socket.connected);
  await until("odds-update-e1", () => seen["odds-update-e1"]);
  assert.equal(seen["odds-update-e1"].eventId, "e1");
  await until("chat-message-e1", () => seen["chat-message-e1"]);
  await sleep(500);
  assert.equal(seen["user-update"], undefined, "not in a user room");
  assert.equal(seen["admin:alert"], undefined, "admin events are for admins");
  socket.disconnect();
});

test("join-user-room needs the user's token", { timeout: 25000 }, async () => {
  const anonymous = connect({ transports: ["websocket"] });
  const errors = [];
  anonymous.on("error", (e) => errors.push(e));
  anonymous.emit("join-user-room", "u1");
  await until("an error", () => errors.length > 0);
  assert.equal(errors[0].error, "unauthorized");
  anonymous.disconnect();

  const other = connect({ transports: ["websocket"], auth: { token: USER_TOKEN } });
  const otherErrors = [];
  other.on("error", (e) => otherErrors.push(e));
  other.emit("join-user-room", "u2");
  await until("an error", () => otherErrors.length > 0);
  assert.equal(otherErrors[0].error, "forbidden");
  other.disconnect();

  const user = connect({ transports: ["websocket"], auth: { token: USER_TOKEN } });
  let update;
  user.on("user-update", (data) => (update = data));
  user.emit("join-user-room", "u1");
  await until("a user-update", () => update);
  assert.equal(update.userId, "u1");
  user.emit("leave-user-room", "u1");
  user.disconnect();

  // The token in a header, as a server-side page would send it; the admin gets admin events.
  const admin = connect({
    transports: ["websocket"],
    extraHeaders: { Authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  let alert;
  admin.on("admin:alert", (payload) => (alert = payload));
  await until("an admin event", () => alert);
  assert.deepEqual(alert, { level: "info" });
  admin.disconnect();
});
