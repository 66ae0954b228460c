// Socket.IO load generator for oddsfeed's /socket.io/ endpoint (docs/SOCKETIO.md).
//
// Opens N socket.io-client connections (WebSocket transport, or long-polling with --polling),
// each in its own Manager (forceNew), spread round-robin over source addresses and over the
// sports of --sports (`none` = stay in the global list only; every socket gets the global
// `sports:odds-update` messages, a joined sport adds its own). Once every client has its lists
// and after a warm-up, it measures a window: for each `sports:odds-update` that is not a
// snapshot, receive time minus Date.parse(data.timestamp) (the publish time, same machine
// clock, 1 ms resolution). Reports connected clients, connect errors, messages/s, latency
// p50/p90/p99/max, disconnects and reconnects, the load generator's own CPU
// (process.cpuUsage of the worker processes) and event-loop delay, and, with --server-pid,
// the server's CPU (/proc/<pid>/stat) and RSS per connection (/proc/<pid>/status VmRSS,
// before the clients connect and at the start of the window); with --metrics-url, how many
// sockets the server resynced in the window because their send buffer was full.
//
// Usage (from web/, after `npm ci`):
//   node bench/socketio-load.mjs --url http://127.0.0.1:3001 --clients 1000 --seconds 30 \
//     [--warmup 5] [--polling] [--processes 2] [--source-addresses 8] \
//     [--sports none,football,basketball,tennis,esports] [--concurrency 200] [--probes 10] \
//     [--server-pid PID] [--metrics-url http://127.0.0.1:3001/metrics]
//
// One Node process has one thread: at high N it, not the server, may be the limit; compare
// its CPU and event-loop delay (printed) with the cores available, use --processes to spread
// the clients, and --probes N for N more clients in a process of their own that stays idle:
// their latency is the server's, not the load generator's backlog.
// A process may hold at most as many sockets as its open-files limit (`ulimit -n`).

import { fork, execSync } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:3001" },
    clients: { type: "string", default: "1000" },
    seconds: { type: "string", default: "30" },
    warmup: { type: "string", default: "5" },
    polling: { type: "boolean", default: false },
    processes: { type: "string", default: "1" },
    "source-addresses": { type: "string", default: "1" },
    sports: { type: "string", default: "none,football,basketball,tennis,esports" },
    concurrency: { type: "string", default: "200" },
    "ready-timeout": { type: "string", default: "120" },
    probes: { type: "string", default: "0" },
    "metrics-url": { type: "string" },
    "server-pid": { type: "string" },
    // Internal: set by the parent for its workers.
    worker: { type: "boolean", default: false },
    first: { type: "string", default: "0" },
  },
});
const num = (name) => Number(opt[name]);

if (opt.worker) worker();
else await parent();

// ---------------------------------------------------------------- worker: the clients

function worker() {
  const clients = num("clients");
  const first = num("first");
  const sports = opt.sports.split(",");
  const sources = num("source-addresses");
  const agents = new Map(); // polling: one keep-alive agent per source address, like a browser
  const hist = new Map(); // latency in 0.1 ms buckets -> count
  const stats = { messages: 0, snapshots: 0, disconnects: 0, reconnects: 0, connectErrors: 0 };
  const reasons = {};
  let firstError = null;
  let measuring = false;
  let ready = 0;
  let started = 0;
  let cpuStart = null;
  const connectMs = [];
  const sockets = [];
  const LOOP_MS = 10; // the delay monitor samples every LOOP_MS; it reports that interval too
  const loop = monitorEventLoopDelay({ resolution: LOOP_MS });

  const t0 = performance.now();
  const open = (i) => {
    const n = first + i;
    const localAddress = `127.0.0.${1 + (n % sources)}`;
    const sport = sports[n % sports.length];
    const options = {
      forceNew: true,
      transports: opt.polling ? ["polling"] : ["websocket"],
      localAddress, // the ws transport passes it to the ws package
    };
    if (opt.polling) {
      if (!agents.has(localAddress)) {
        agents.set(localAddress, new http.Agent({ keepAlive: true, localAddress }));
      }
      options.agent = agents.get(localAddress);
    }
    const socket = io(opt.url, options);
    const begun = performance.now();
    let needed = sport === "none" ? 1 : 2; // snapshots to get before the client is ready
    let connectedOnce = false;
    socket.on("connect", () => {
      if (connectedOnce) stats.reconnects++;
      connectedOnce = true;
      if (sport !== "none") socket.emit("join-sport", sport);
    });
    socket.on("connect_error", (err) => {
      stats.connectErrors++;
      firstError ??= String(err?.message ?? err);
    });
    socket.on("disconnect", (reason) => {
      if (measuring) {
        stats.disconnects++;
        reasons[reason] = (reasons[reason] ?? 0) + 1;
      }
    });
    socket.on("error", (e) => (firstError ??= `error event: ${JSON.stringify(e)}`));
    socket.on("sports:odds-update", (data) => {
      const now = performance.timeOrigin + performance.now();
      if (data.snapshot) {
        if (needed > 0 && --needed === 0) {
          ready++;
          connectMs.push(performance.now() - begun);
          next();
        }
        if (measuring) stats.snapshots++;
        return;
      }
      if (!measuring) return;
      stats.messages++;
      const b = Math.max(0, Math.round((now - Date.parse(data.timestamp)) * 10));
      hist.set(b, (hist.get(b) ?? 0) + 1);
    });
    sockets.push(socket);
  };
  // At most --concurrency clients between opening and ready at a time.
  const next = () => {
    if (started < clients) open(started++);
    if (ready === clients) report();
  };
  for (let i = 0; i < Math.min(num("concurrency"), clients); i++) next();
  const timeout = setTimeout(() => report(), num("ready-timeout") * 1000);
  let reported = false;
  function report() {
    if (reported) return;
    reported = true;
    clearTimeout(timeout);
    connectMs.sort((a, b) => a - b);
    process.send({
      type: "ready",
      ready,
      seconds: (performance.now() - t0) / 1000,
      connectMs,
      connectErrors: stats.connectErrors,
      firstError,
    });
  }

  process.on("message", (msg) => {
    if (msg === "start") {
      measuring = true;
      stats.connectErrors = 0;
      loop.enable();
      cpuStart = process.cpuUsage();
    } else if (msg === "stop") {
      measuring = false;
      loop.disable();
      const cpu = process.cpuUsage(cpuStart);
      process.send({
        type: "result",
        ...stats,
        reasons,
        firstError,
        connected: sockets.filter((s) => s.connected).length,
        cpuMs: (cpu.user + cpu.system) / 1000,
        loopP99Ms: Math.max(0, loop.percentile(99) / 1e6 - LOOP_MS),
        loopMaxMs: Math.max(0, loop.max / 1e6 - LOOP_MS),
        hist: [...hist],
      });
      for (const s of sockets) s.close();
      for (const a of agents.values()) a.destroy();
      setTimeout(() => process.exit(0), 200);
    }
  });
}

// ---------------------------------------------------------------- parent: workers and report

function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const cpuTicks = Number(f[11]) + Number(f[12]); // utime + stime
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);
    return { cpuTicks, rssKiB: rss };
  } catch {
    return null;
  }
}

async function parent() {
  const clients = num("clients");
  const processes = Math.max(1, Math.min(num("processes"), clients));
  const probes = num("probes");
  const pid = opt["server-pid"];
  let hz = 100;
  try {
    hz = Number(execSync("getconf CLK_TCK").toString()) || 100;
  } catch {}
  const before = pid && procStat(pid);
  const self = new URL(import.meta.url).pathname;
  const spawn = (n, first, probe) => {
    const args = ["--worker", "--clients", `${n}`, "--first", `${first}`];
    for (const k of ["url", "sports", "concurrency", "source-addresses", "ready-timeout"]) {
      args.push(`--${k}`, opt[k]);
    }
    if (opt.polling) args.push("--polling");
    const child = fork(self, args);
    const inbox = [];
    let wake = null;
    child.on("message", (m) => (inbox.push(m), wake?.()));
    child.on("exit", (code, signal) => (inbox.push({ type: "exit", code, signal }), wake?.()));
    const nextMessage = async () => {
      while (!inbox.length) await new Promise((r) => (wake = r));
      const m = inbox.shift();
      if (m.type === "exit") {
        console.error(`a worker ended early (code ${m.code}, signal ${m.signal})`);
        process.exit(1);
      }
      return m;
    };
    return { child, nextMessage, probe };
  };
  const workers = [];
  let first = 0;
  for (let p = 0; p < processes; p++) {
    const n = Math.floor(clients / processes) + (p < clients % processes ? 1 : 0);
    workers.push(spawn(n, first, false));
    first += n;
  }
  // Probe clients: a few more in a process of their own that is never busy, so their latency
  // is the server's (and the kernel's) and not the load generator's backlog.
  if (probes > 0) workers.push(spawn(probes, first, true));

  const t0 = performance.now();
  const readies = [];
  for (const w of workers) readies.push(await w.nextMessage());
  const ready = readies.reduce((a, r, i) => a + (workers[i].probe ? 0 : r.ready), 0);
  const connectMs = readies.flatMap((r) => r.connectMs).sort((a, b) => a - b);
  const q = (v, p) => (v.length ? v[Math.min(v.length - 1, Math.round((v.length - 1) * p))] : NaN);
  const errs = readies.reduce((a, r) => a + r.connectErrors, 0);
  const firstErr = readies.find((r) => r.firstError)?.firstError;
  console.log(
    `${opt.polling ? "long-polling" : "websocket"}: ${ready} of ${clients} clients ready ` +
      `(connected + lists) in ${((performance.now() - t0) / 1000).toFixed(1)} s from ${processes} process(es)` +
      `${probes > 0 ? ` (+ ${readies.at(-1).ready} of ${probes} probes)` : ""}; ` +
      `${errs} connect errors${firstErr ? ` (first: ${firstErr})` : ""}`,
  );
  console.log(
    `connect + lists: p50 ${q(connectMs, 0.5).toFixed(0)} ms, p99 ${q(connectMs, 0.99).toFixed(0)} ms, max ${q(connectMs, 1).toFixed(0)} ms`,
  );

  const connectedStat = pid && procStat(pid);
  if (before && connectedStat) {
    const cpu = (connectedStat.cpuTicks - before.cpuTicks) / hz;
    console.log(
      `server CPU while the clients connected: ${cpu.toFixed(2)} s (${((cpu * 1e3) / Math.max(1, ready)).toFixed(2)} ms per client)`,
    );
  }
  await new Promise((r) => setTimeout(r, num("warmup") * 1000));
  const failed = async () => {
    if (!opt["metrics-url"]) return NaN;
    const text = await (await fetch(opt["metrics-url"])).text();
    return Number(/^oddsfeed_socketio_resyncs_total (\d+)/m.exec(text)?.[1] ?? 0);
  };
  const failedStart = await failed();
  const start = pid && procStat(pid);
  for (const w of workers) w.child.send("start");
  const w0 = performance.now();
  await new Promise((r) => setTimeout(r, num("seconds") * 1000));
  for (const w of workers) w.child.send("stop");
  const end = pid && procStat(pid);
  const failedEnd = await failed();
  const elapsed = (performance.now() - w0) / 1000;
  const all = [];
  for (const w of workers) all.push(await w.nextMessage());
  const load = all.filter((_, i) => !workers[i].probe);

  const summary = (results) => {
    const sum = (k) => results.reduce((a, r) => a + r[k], 0);
    const hist = new Map();
    for (const r of results) for (const [b, c] of r.hist) hist.set(b, (hist.get(b) ?? 0) + c);
    const buckets = [...hist].sort((a, b) => a[0] - b[0]);
    const total = buckets.reduce((a, [, c]) => a + c, 0);
    const pct = (p) => {
      let seen = 0;
      for (const [b, c] of buckets) if ((seen += c) >= Math.ceil(total * p)) return b / 10;
      return NaN;
    };
    const reasons = {};
    for (const r of results) {
      for (const [k, v] of Object.entries(r.reasons)) reasons[k] = (reasons[k] ?? 0) + v;
    }
    const latency = `p50 ${pct(0.5)} ms   p90 ${pct(0.9)} ms   p99 ${pct(0.99)} ms   max ${pct(1)} ms`;
    return { sum, reasons, latency };
  };
  const s = summary(load);
  const messages = s.sum("messages");
  console.log(
    `window ${elapsed.toFixed(1)} s: ${s.sum("connected")} connected at the end; ${messages} odds updates ` +
      `(${(messages / elapsed).toFixed(0)}/s, ${(messages / elapsed / Math.max(1, ready)).toFixed(2)}/s per client); ` +
      `${s.sum("snapshots")} snapshots, ${s.sum("disconnects")} disconnects ${JSON.stringify(s.reasons)}, ` +
      `${s.sum("reconnects")} reconnects, ${s.sum("connectErrors")} connect errors`,
  );
  console.log(`publish -> client: ${s.latency}`);
  if (opt["metrics-url"]) {
    console.log(`sockets resynced for a full send buffer in the window (oddsfeed_socketio_resyncs_total): ${failedEnd - failedStart}`);
  }
  if (probes > 0) {
    const p = summary(all.filter((_, i) => workers[i].probe));
    console.log(
      `probes (own process): ${p.sum("messages")} updates, ${p.sum("disconnects")} disconnects; publish -> probe: ${p.latency}`,
    );
  }
  const cpuMs = s.sum("cpuMs");
  console.log(
    `load generator CPU ${(cpuMs / 1000).toFixed(2)} s in the window (${(cpuMs / 1000 / elapsed).toFixed(2)} cores over ${processes} process(es), ` +
      `${((cpuMs * 1000) / Math.max(1, messages)).toFixed(1)} us per message); ` +
      `event-loop delay p99 ${Math.max(...load.map((r) => r.loopP99Ms)).toFixed(1)} ms, max ${Math.max(...load.map((r) => r.loopMaxMs)).toFixed(1)} ms`,
  );
  if (before && start && end) {
    const cpu = (end.cpuTicks - start.cpuTicks) / hz;
    const delivered = all.reduce((a, r) => a + r.messages, 0);
    console.log(
      `server CPU ${cpu.toFixed(2)} s in the window (${(cpu / elapsed).toFixed(2)} cores, ` +
        `${((cpu * 1e6) / Math.max(1, delivered)).toFixed(1)} us per delivered update)`,
    );
    console.log(
      `server RSS ${before.rssKiB} KiB before, ${start.rssKiB} KiB with the clients, ${end.rssKiB} KiB at the end: ` +
        `${((start.rssKiB - before.rssKiB) / Math.max(1, ready + probes)).toFixed(1)} KiB per connection`,
    );
  }
}
