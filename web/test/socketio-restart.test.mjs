// socket.io-client against a real `oddsfeed serve` that tests/socketio.rs restarts on the same
// port once this file says it is ready: the page reconnects by itself and gets a fresh list,
// then live changes again. Also: a flood of client events is rate limited.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { io } from "socket.io-client";
import { sleep, until } from "./wait.mjs";

const URL = process.env.ODDSFEED_HTTP_URL;
const READY = process.env.SIO_READY;
assert.ok(URL && READY, "set by tests/socketio.rs");

test("a flood of client events is answered with rate_limited", { timeout: 25000 }, async () => {
  const socket = io(URL, { transports: ["websocket"] });
  const errors = [];
  socket.on("error", (e) => errors.push(e));
  await until("connected", () => socket.connected);
  for (let i = 0; i < 40; i++) socket.emit("leave-sport", "football");
  await until("rate_limited", () => errors.some((e) => e.error === "rate_limited"));
  socket.disconnect();
});

test("the page reconnects after a restart, gets a fresh list, then live changes", { timeout: 25000 }, async () => {
  const socket = io(URL, { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 });
  let connects = 0;
  let lists = 0;
  let liveAfterRestart = 0;
  socket.on("connect", () => {
    connects += 1;
    socket.emit("join-sport", "Football");
  });
  socket.on("sports:odds-update", (data) => {
    if (data.snapshot) lists += 1;
    else if (connects >= 2) liveAfterRestart += 1;
  });
  await until("the first lists", () => lists >= 2);
  writeFileSync(READY, "ready");
  await until("a reconnect", () => connects >= 2, 30000);
  await until("fresh lists after the restart", () => lists >= 4, 10000);
  await until("live changes after the restart", () => liveAfterRestart >= 2, 10000);
  socket.disconnect();
});
