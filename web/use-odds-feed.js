"use client";
// A React hook over the oddsfeed client, for Next.js (app router) or any React 18+ app.
//
//   import { useOddsFeed } from "@/lib/oddsfeed/use-odds-feed";
//   import { formatLatency } from "@/lib/oddsfeed/oddsfeed-client";
//
//   export default function Football() {
//     const { events, status, publisher, latency } = useOddsFeed("sport:football");
//     return (
//       <section>
//         <p>{status} · publisher {publisher} · p50 {formatLatency(latency.p50)} {latency.count ? `± ${latency.uncertaintyMs.toFixed(1)} ms` : ""}</p>
//         {events.map((e) => (
//           <div key={e.id}>
//             {e.title} {e.suspended ? "suspended" : e.outcomes.map((o) => `${o.name} ${o.odds}`).join(" / ")}
//           </div>
//         ))}
//       </section>
//     );
//   }
//
// Copy oddsfeed-client.js, oddsfeed-client.d.ts and this file into the app. One connection is
// shared by every component; set NEXT_PUBLIC_ODDSFEED_URL (default: this host's /ws).

import { useEffect, useState } from "react";
import { OddsFeedClient } from "./oddsfeed-client.js";

let shared = null;

/** The page-wide client (created on first use, in the browser only). */
export function getOddsFeed(options = {}) {
  if (!shared) {
    const fallback =
      typeof location !== "undefined"
        ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`
        : "ws://localhost:3001/ws";
    const url = options.url ?? globalThis.process?.env?.NEXT_PUBLIC_ODDSFEED_URL ?? fallback;
    shared = new OddsFeedClient(url, options);
  }
  return shared;
}

/** Events of `room`, the connection status, the publisher status and latency percentiles. */
export function useOddsFeed(room, options) {
  const feed = getOddsFeed(options);
  const [events, setEvents] = useState(() => feed.events(room));
  const [status, setStatus] = useState(feed.status);
  const [publisher, setPublisher] = useState(feed.publisher);
  const [latency, setLatency] = useState(feed.latency());
  useEffect(() => feed.subscribe(room, setEvents), [feed, room]);
  useEffect(() => feed.on("status", setStatus), [feed]);
  useEffect(() => feed.on("publisher", setPublisher), [feed]);
  useEffect(() => {
    const timer = setInterval(() => setLatency(feed.latency()), 1000);
    return () => clearInterval(timer);
  }, [feed]);
  return { events, status, publisher, latency };
}
