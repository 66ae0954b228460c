// A long-polling page that stops polling (its event loop blocked) while `oddsfeed serve`
// (started by tests/socketio.rs with a send buffer of 16 packets and prices moving every
// 50 ms) fills its buffer: once it polls again it gets fresh lists, then live changes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { until } from "./wait.mjs";

const URL = process.env.ODDSFEED_HTTP_URL;
assert.ok(URL, "set by tests/socketio.rs");

test("a page whose buffer filled gets fresh lists, then live changes", { timeout: 30000 }, async () => {
  const socket = io(URL, { transports: ["polling"] });
  let lists = 0;
  let live = 0;
  socket.on("connect", () => socket.emit("join-sport", "football"));
  socket.on("sports:odds-update", (data) => {
    if (data.snapshot) lists += 1;
    else live += 1;
  });
  await until("the first lists", () => lists >= 2);
  // No polling for 4 s: the server's buffer for this socket fills, and its retries of the
  // fresh lists fail too while the page stays blocked.
  const end = Date.now() + 4000;
  while (Date.now() < end) {
    // blocked
  }
  const [listsBefore, liveBefore] = [lists, live];
  await until("fresh lists", () => lists >= listsBefore + 2, 15000);
  await until("live changes again", () => live >= liveBefore + 3, 15000);
  assert.ok(socket.connected);
  socket.disconnect();
});
