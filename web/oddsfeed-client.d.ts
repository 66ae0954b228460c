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
  /** Report measured latency to the server once a second (default true). */
  reportLatency?: boolean;
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
  readonly clientId: string | null;
  connect(): this;
  close(): void;
  /** Joins a room; returns a function that leaves it. */
  subscribe(room: string, listener?: (events: OddsEvent[], room: string) => void): () => void;
  events(room: string): OddsEvent[];
  position(room: string): { epoch: string | null; seq: number; snapshots: number; gaps: number } | null;
  /** Latency percentiles in ms over the last minute. */
  latency(): { count: number; p50: number | null; p99: number | null };
  on(name: "status", fn: (status: ConnectionStatus) => void): () => void;
  on(name: "publisher", fn: (status: PublisherStatus) => void): () => void;
  on(name: "update", fn: (room: string, events: OddsEvent[]) => void): () => void;
  on(name: "latency", fn: (ms: number) => void): () => void;
  on(name: "error", fn: (error: ServerError) => void): () => void;
  on(name: "message", fn: (message: { type: string; [key: string]: unknown }) => void): () => void;
  /** Drops the connection as a network failure would (tests, demos). */
  dropConnection(): void;
}
