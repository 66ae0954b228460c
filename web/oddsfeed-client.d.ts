// Types for oddsfeed-client.js.

export interface Outcome {
  name: string;
  probability: number | null;
  odds: number | null;
}

/** An EVENT as the server publishes it (docs/PROTOCOL.md). */
export interface OddsEvent {
  id: string;
  version: number;
  sport: string;
  league: string | null;
  title: string;
  teamA: string | null;
  teamB: string | null;
  isEsports: boolean;
  live: boolean;
  gameStatus: string | null;
  score: string | null;
  period: string | null;
  elapsed: string | null;
  startTime: string | null;
  outcomes: Outcome[];
  yesOdds: number | null;
  noOdds: number | null;
  oddsSource: "external" | "hybrid" | null;
  suspended: boolean;
  suspendedReason: string | null;
}

export type ConnectionStatus = "idle" | "connecting" | "open" | "reconnecting" | "closed";
export type PublisherStatus = "live" | "stale";

export interface OddsFeedOptions {
  /** JWT for private rooms (sent as ?token=). */
  token?: string;
  /**
   * "changes": live odds messages carry only the changed fields of each event (the client
   * merges them, so listeners still get whole events); "full" (the default): whole events.
   */
  format?: "full" | "changes";
  /** WebSocket implementation; defaults to globalThis.WebSocket. */
  WebSocket?: unknown;
  /** First reconnect delay ceiling in ms (default 250); doubles per attempt, full jitter. */
  initialBackoffMs?: number;
  /** Largest reconnect delay ceiling in ms (default 15000). */
  maxBackoffMs?: number;
  /** Window of the latency percentiles in ms (default 60000). */
  latencyWindowMs?: number;
  /** Report measured latency to the server every 1.1 s (default true); each reply syncs the clock. */
  reportLatency?: boolean;
  /**
   * Ping for the clock offset when nothing has synced it for this long, in ms (default 10000;
   * pings at 0, 0.4, 0.8, 1.2, 3 and 6 s after connecting).
   */
  clockSyncIntervalMs?: number;
  /**
   * Our clock in Unix ms, for tests. Default: `performance.timeOrigin + performance.now()`
   * (a fraction of a millisecond), else `Date.now()`.
   */
  now?: () => number;
  /** Resolution of `now` in ms (default 0 with `now`; 0.1 for performance.now, 1 for Date.now). */
  clockResolutionMs?: number;
}

/** Latency percentiles over the last minute (`OddsFeedClient.latency()`). */
export interface LatencySummary {
  /** Latencies measured in the window. */
  count: number;
  /** Median publish → receive latency in ms, or null when none was measured. */
  p50: number | null;
  p99: number | null;
  /**
   * `p50` and `p99` are each within this many ms of the truth (the half round trip of the
   * clock offset they were measured with, plus timestamp resolutions), so one may be slightly
   * below 0: show them with `formatLatency`, and this beside them.
   */
  uncertaintyMs: number;
  /** Latencies left out because they were below 0 by more than their uncertainty (a wrong clock offset). */
  untrusted: number;
}

/**
 * "0.4 ms" below 10 ms, "12 ms" above, "< 0.1 ms" below what one decimal shows (a value at or
 * below 0 included), "–" for null. Never "0 ms".
 */
export function formatLatency(ms: number | null): string;

/** A clock-offset sample: at `at` (our clock, Unix ms), server clock minus ours was `offset`, within `halfWidth` ms. */
export interface OffsetSample {
  at: number;
  offset: number;
  halfWidth: number;
}

/** The sample of one round trip: sent at `sentAt`, stamped `serverTime` by the server, received at `receivedAt`. */
export function offsetSample(
  sentAt: number,
  serverTime: number,
  receivedAt: number,
  serverResolutionMs?: number,
  localResolutionMs?: number,
): OffsetSample;

/** The smallest step of the clock `read()` seen over 3 steps or `budgetMs` of it (`budgetMs` when none is seen). */
export function smallestStep(read: () => number, budgetMs: number): number;

/**
 * Server clock minus ours, from the last 16 samples (2 minutes at most): the clocks' rate from
 * the two samples that bound it best, the offset from the sample narrowest when carried
 * forward. A sample the estimate cannot hold with (a stepped clock) drops the older ones.
 */
export class ClockOffset {
  readonly samples: OffsetSample[];
  add(sample: OffsetSample): void;
  /** At `t` (our clock), or null before the first sample. */
  estimate(t: number): { offset: number; uncertainty: number; rate: number } | null;
  reset(): void;
}

export interface ServerError {
  type: "error";
  code: "bad_request" | "unknown_room" | "forbidden" | "unauthorized" | "rate_limited" | "too_many_rooms" | "too_large";
  message: string;
  id?: unknown;
}

export class OddsFeedClient {
  constructor(url: string, options?: OddsFeedOptions);
  readonly status: ConnectionStatus;
  readonly publisher: PublisherStatus;
  /** Server clock minus local clock, in ms. */
  readonly clockOffsetMs: number;
  /** How far `clockOffsetMs` may be off, in ms (half the best recent round trip, plus resolutions). */
  readonly clockUncertaintyMs: number;
  readonly clientId: string | null;
  connect(): this;
  close(): void;
  /** Joins a room; returns a function that leaves it. */
  subscribe(room: string, listener?: (events: OddsEvent[], room: string) => void): () => void;
  events(room: string): OddsEvent[];
  position(room: string): { epoch: string | null; seq: number; snapshots: number; gaps: number } | null;
  /** Latency percentiles in ms over the last minute. */
  latency(): LatencySummary;
  on(name: "status", fn: (status: ConnectionStatus) => void): () => void;
  on(name: "publisher", fn: (status: PublisherStatus) => void): () => void;
  on(name: "update", fn: (room: string, events: OddsEvent[]) => void): () => void;
  /** Each measured latency in ms (may be slightly below 0, within `latency().uncertaintyMs`). */
  on(name: "latency", fn: (ms: number) => void): () => void;
  on(name: "error", fn: (error: ServerError) => void): () => void;
  on(name: "message", fn: (message: { type: string; [key: string]: unknown }) => void): () => void;
  /** Drops the connection as a network failure would (tests, demos). */
  dropConnection(): void;
}
