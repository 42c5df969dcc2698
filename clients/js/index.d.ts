// Types of tickstream-client (index.js beside this file). Hand-written, kept in step
// with the module; README.md describes the behaviour.

/** Where a subscription stands: the last tick handed over. */
export interface Cursor {
  id: string;
  seq: number | null;
  epoch: string | null;
}

/** A tick as the server delivers it (WebSocket, SSE and REST alike). */
export interface Tick {
  type?: "tick";
  id: string;
  seq: number;
  epoch: string;
  channel: string;
  ts: string;
  ingest_ts: string;
  value?: number | null;
  data?: Record<string, unknown> | null;
  event_id: string;
  /** Under a `rate`: the channel's ticks between the previous frame's tick and this one
   *  (null only where the server cannot count them: first after a (re)subscribe or gap). */
  skipped?: number | null;
}

/** What was lost, said by the server (`detected` absent) or found by this library's
 *  own continuity check (`detected: "client"`, reason `seq` or `epoch`). */
export interface Gap {
  type: "gap";
  channel: string;
  reason: "trimmed" | "epoch" | "rollback" | "seq";
  after: string | null;
  resume_from: string | null;
  missed: number | null;
  detected?: "client";
}

/** An OHLCV candle. Live frames (`type: "candle"`) carry `interval` and `final`. */
export interface Candle {
  type?: "candle";
  channel?: string;
  interval?: string;
  t: string;
  open: number;
  high: number;
  low: number;
  close: number;
  count: number;
  volume: number | null;
  final?: boolean;
}

export interface Live {
  type: "live";
  channel: string;
  last_id: string;
  /** Ticks handed over from history before this live point. */
  replayed: number;
}

export type SubscriptionEvent = (Tick & { type: "tick" }) | Gap | (Candle & { type: "candle" });

export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";
export type SubscriptionState = "pending" | "replaying" | "live" | "closed";

export interface StateInfo {
  url?: string;
  channel?: string;
  /** The close code that caused a reconnect (over SSE, the code the stream's ending
   *  event stands for: 1012 restarting, 4001 token expired, 1013 too slow, 1000 closed). */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt. */
  delay?: number;
  attempt?: number;
  /** Why: a refused handshake (with its status and code), or, on "closed", the final error. */
  error?: TickstreamError | null;
}

export class TickstreamError extends Error {
  constructor(code: string, message?: string, options?: { status?: number | null; channel?: string | null; retryAfter?: number | null });
  /** The server's code (`forbidden`, `rate_limited`, `invalid_token`, `bad_rate`, …)
   *  or this library's (`policy`, `unreachable`, `already_subscribed`, …). */
  code: string;
  /** HTTP status of a refusal, else null. */
  status: number | null;
  channel: string | null;
  /** Seconds to wait, from `Retry-After` or an error frame's `retry_after`. */
  retryAfter: number | null;
}

/** Keeps each channel's cursor so that a new client (a reload, a restarted service)
 *  resumes where the last one stopped. `get` may return a promise. */
export interface CursorStore {
  get(channel: string): Cursor | null | Promise<Cursor | null>;
  set(channel: string, cursor: Cursor | null): void;
  flush?(): void;
}

/** Anything shaped like the WHATWG WebSocket (a browser's, Node ≥ 22's, or `ws`). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;

export interface ClientOptions {
  /** The server's http(s) or ws(s) base URL, or several nodes to take in turn. */
  url: string | string[];
  /** A JWT, or a function returning one: called again before `exp` and when the
   *  server says the token expired. */
  token?: string | (() => string | Promise<string>);
  /** The WebSocket class; default the global one (Node 20 has none: pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** "websocket" (default: one multiplexed socket) or "sse" (one stream per channel). */
  transport?: "websocket" | "sse";
  /** Where cursors are kept between clients. */
  store?: CursorStore | null;
  fetch?: typeof fetch;
  /** Reconnect backoff: full jitter over base·2ⁿ ms, capped (defaults 500 and 30,000). */
  backoff?: { base?: number; cap?: number };
}

export interface SubscribeOptions {
  /** Where to start when the store holds no cursor: an id, "$" (live only), "0-0"
   *  (everything kept) or "t:<RFC 3339 | unix ms>". Omitted: the server's recent replay. */
  since?: string;
  /** The `seq` of the tick at `since`: makes gaps exact. */
  seq?: number;
  /** The epoch of the tick at `since`: detects a reset channel. */
  epoch?: string;
  /** At most this many tick frames a second (1–1000), each the newest. */
  rate?: number;
  /** Also live candles of this interval. */
  candles?: "1s" | "1m" | "5m" | "1h" | "1d";
}

export interface HistoryOptions {
  since?: string;
  until?: string;
  order?: "asc" | "desc";
  /** The most items to yield (pages are followed until then). */
  limit?: number;
}

export interface CandleOptions {
  interval?: "1s" | "1m" | "5m" | "1h" | "1d";
  since?: string | number;
  until?: string | number;
  order?: "asc" | "desc";
  limit?: number;
}

export class Subscription implements AsyncIterable<SubscriptionEvent> {
  readonly channel: string;
  readonly cursor: Cursor | null;
  readonly state: SubscriptionState;
  readonly error: TickstreamError | null;
  readonly rate: number | null;
  readonly candles: string | null;
  /** Ticks handed over from history since the last (re)subscribe. */
  readonly replayed: number;
  /** Resolves (never rejects) when it ends: with its error, or null. */
  readonly closed: Promise<TickstreamError | null>;
  on(event: "tick", fn: (tick: Tick) => void): this;
  on(event: "gap", fn: (gap: Gap) => void): this;
  on(event: "candle", fn: (candle: Candle) => void): this;
  on(event: "live", fn: (live: Live) => void): this;
  on(event: "state", fn: (state: SubscriptionState) => void): this;
  on(event: "error", fn: (error: TickstreamError) => void): this;
  on(event: "close", fn: (error: TickstreamError | null) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
  once(event: string, fn: (...args: any[]) => void): this;
  /** Stops it (an unsubscribe is sent); the cursor stays in the store. */
  close(): void;
  /** Events while it is iterated; leaving the loop closes the subscription. A refused
   *  subscribe ends the loop by throwing a TickstreamError carrying its code. */
  [Symbol.asyncIterator](): AsyncIterator<SubscriptionEvent>;
}

export class Client {
  constructor(options: ClientOptions);
  readonly state: ClientState;
  readonly subscriptions: Map<string, Subscription>;
  /** The node in use. */
  readonly httpUrl: string;
  on(event: "state", fn: (state: ClientState, info: StateInfo) => void): this;
  on(event: "error", fn: (error: TickstreamError) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
  once(event: string, fn: (...args: any[]) => void): this;
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  /** Opens the socket before the first subscribe (a no-op over SSE). */
  connect(): void;
  /** Skips the rest of a backoff wait. */
  reconnect(): void;
  close(): Promise<void>;
  history(channel: string, options?: HistoryOptions): AsyncGenerator<Tick, void, undefined>;
  candles(channel: string, options?: CandleOptions): AsyncGenerator<Candle, void, undefined>;
  latest(channel: string): Promise<Tick | null>;
  channels(options?: { limit?: number; cursor?: string }): Promise<{
    channels: { channel: string; last_id: string | null; last_ts: string | null; length: number }[];
    next: string | null;
  }>;
}

export function compareIds(a: string, b: string): -1 | 0 | 1;
export function refreshDelay(token: string, now?: number): number | null;
export function memoryStore(initial?: Record<string, Cursor>): CursorStore & { entries(): Record<string, Cursor> };
export function localStorageStore(options?: { key?: string; storage?: Storage; delay?: number }):
  CursorStore & { flush(): void; entries(): Record<string, Cursor> };
