// tickstream-client: the delivery guarantee of a tickstream server, kept for its user.
//
// One ES module, no dependencies, no build step: the same file is the npm package
// `tickstream-client` and the dashboard's client (served by the server at
// /tickstream-client.js). What it promises, and how, is in README.md beside it and in
// the project's docs/PROTOCOL.md §12.
//
// Map of this file:
//   errors and small helpers      TickstreamError, Emitter, ids, backoff
//   tokens                        TokenSource: a string, or a function called again before exp
//   REST                          Rest: one call at a time, paced by X-RateLimit-Remaining
//   subscriptions                 Subscription: cursor, continuity check, events, iterators
//   transports                    WsLink (one multiplexed /ws socket), SseLink (one /sse stream)
//   the client                    Client
//   cursor stores                 memoryStore, localStorageStore

// ---- errors and small helpers ------------------------------------------------------------

/** Every error this library hands over: the server's `code` (or one of its own), and
 *  for HTTP refusals the `status` and `retryAfter` (seconds). */
export class TickstreamError extends Error {
  constructor(code, message, { status = null, channel = null, retryAfter = null } = {}) {
    super(message || code);
    this.name = 'TickstreamError';
    this.code = code;
    this.status = status;
    this.channel = channel;
    this.retryAfter = retryAfter;
  }
}

/** A small event emitter that never throws for want of a listener (unlike Node's on
 *  "error"), so nothing this library reports can crash a process nobody listens in. */
class Emitter {
  #handlers = new Map();
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return this;
  }
  off(event, fn) { this.#handlers.get(event)?.delete(fn); return this; }
  once(event, fn) {
    const wrapped = (...args) => { this.off(event, wrapped); fn(...args); };
    return this.on(event, wrapped);
  }
  listens(event) { return (this.#handlers.get(event)?.size ?? 0) > 0; }
  emit(event, ...args) {
    for (const fn of [...(this.#handlers.get(event) ?? [])]) {
      try { fn(...args); } catch (e) { queueMicrotask(() => { throw e; }); }   // a listener's own bug stays its own
    }
  }
}

const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const ID_RE = /^\d+-\d+$/;
const SPECIAL_SINCE = /^(\$|t:.+)$/;

/** A cursor `{id, seq, epoch}` of a tick (or of a stored cursor), each field checked. */
const cursorOf = (t) => ({ id: t.id, seq: Number.isSafeInteger(t.seq) ? t.seq : null, epoch: typeof t.epoch === 'string' ? t.epoch : null });

const tokenError = (e) => new TickstreamError('token_error', `the token function failed: ${e?.message ?? e}`);
const storeError = (e) => new TickstreamError('store_error', `the cursor store failed: ${e?.message ?? e}`);
/** A response whose body nobody reads: released at once. */
const discard = (res) => res.body?.cancel().catch(() => {});

/** Redis stream ids "ms-n", compared numerically part by part. */
export function compareIds(a, b) {
  const [am, an] = a.split('-'), [bm, bn] = b.split('-');
  const ms = BigInt(am) - BigInt(bm);
  if (ms !== 0n) return ms < 0n ? -1 : 1;
  const n = BigInt(an) - BigInt(bn);
  return n === 0n ? 0 : n < 0n ? -1 : 1;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Exponential backoff with full jitter: uniform in [min, min + min(cap, base·2ⁿ)]. */
function backoffDelay(attempt, { base, cap }, min = 0) {
  return min + Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

// The server's inbound throttle is a burst of 20 then 10 messages a second per socket
// (PROTOCOL §5.5); beyond it the socket closes with 4029. We stay safely under it.
const SEND_BURST = 15, SEND_PER_MS = 8 / 1000;
// Liveness: a ping after 25 s of silence (looked at every 5 s); 60 s without a byte is
// a dead connection.
const PING_MS = 25_000, SILENCE_MS = 60_000, LOOK_MS = 5_000;
// A connection that stayed up this long resets the backoff.
const STABLE_MS = 10_000;

// ---- tokens --------------------------------------------------------------------------------

function jwtClaims(token) {
  const part = typeof token === 'string' ? token.split('.')[1] : undefined;
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const text = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary');
    return JSON.parse(decodeURIComponent(escape(text)));
  } catch { return null; }
}

/** When to ask for the next token: before `exp` by a fifth of its lifetime (1–60 s),
 *  never sooner than in 1 s; null when the token carries no `exp`. */
export function refreshDelay(token, now = Date.now()) {
  const c = jwtClaims(token);
  if (!c || typeof c.exp !== 'number') return null;
  const nowS = now / 1000, lifetime = c.exp - (typeof c.iat === 'number' ? c.iat : nowS);
  const margin = Math.min(60, Math.max(1, lifetime / 5));
  return Math.max(1000, (c.exp - margin - nowS) * 1000);
}

/** A static token, or a function that returns one (called again before `exp` and
 *  whenever the server says the token expired). Concurrent callers share one call. */
class TokenSource {
  #fn; #value; #pending = null;
  constructor(token) {
    if (typeof token === 'function') this.#fn = token;
    else if (typeof token === 'string' || token == null) this.#value = token ?? '';
    else throw new TypeError('token must be a string or a function returning one');
  }
  get refreshable() { return !!this.#fn; }
  /** The token in force; `fresh` asks the function for a new one. A failing function
   *  rejects with a `token_error` (its own TickstreamError as it is). */
  async get(fresh = false) {
    if (!this.#fn) return this.#value;
    if (!fresh && this.#value != null) return this.#value;
    this.#pending ??= (async () => {
      try {
        const t = await this.#fn();
        if (typeof t !== 'string' || !t) throw new TickstreamError('bad_token', 'the token function returned no token');
        return (this.#value = t);
      } catch (e) {
        throw tokenError(e);
      } finally { this.#pending = null; }
    })();
    return this.#pending;
  }
}

// ---- REST ----------------------------------------------------------------------------------

const enc = encodeURIComponent;
// A REST answer that takes longer is given up (a page of 1,000 ticks takes milliseconds).
const REST_TIMEOUT_MS = 30_000;
// A cursor store's write that takes longer is reported as failed (the next goes on).
const STORE_TIMEOUT_MS = 10_000;
const query = (params) => {
  const q = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${k}=${enc(String(v))}`).join('&');
  return q ? '?' + q : '';
};

async function errorFrom(res) {
  const body = await res.json().catch(() => ({}));
  const retry = Number(res.headers.get('Retry-After'));
  return new TickstreamError(typeof body.error === 'string' ? body.error : `http_${res.status}`,
    `HTTP ${res.status}${body.message ? ': ' + body.message : ''}`,
    { status: res.status, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null });
}

/** REST reads, one at a time: when `X-RateLimit-Remaining` reaches 0 the next waits a
 *  second (about one refill), a 429 waits its `Retry-After` and is tried again (five
 *  times), and a 401 with a token function is tried once more with a fresh token. */
class Rest {
  #chain = Promise.resolve(); #notBefore = 0;
  constructor(client) { this.client = client; }

  /** A REST read in the queue; a `probe` (why was a handshake refused?) skips the
   *  queue and is asked once, with no wait for `Retry-After`. */
  request(path, { allow404 = false, probe = false } = {}) {
    if (probe) return this.#send(path, allow404, true);
    const call = this.#chain.then(() => this.#send(path, allow404, false));
    this.#chain = call.catch(() => {});
    return call;
  }

  async #send(path, allow404, probe) {
    const { tokens } = this.client;
    let refreshed = false;
    for (let tries = 0; ; tries++) {
      const wait = this.#notBefore - Date.now();
      if (wait > 0) await sleep(wait);
      const token = await tokens.get();
      let res;
      try {
        res = await this.client.fetch(this.client.httpUrl + path, {
          headers: token ? { Authorization: 'Bearer ' + token } : {}, cache: 'no-store',
          signal: AbortSignal.timeout?.(REST_TIMEOUT_MS) });
      } catch (e) {
        throw new TickstreamError('unreachable', `cannot reach the server: ${e.message}`);
      }
      const left = res.headers.get('X-RateLimit-Remaining');
      if (left !== null && Number(left) < 1) this.#notBefore = Date.now() + 1000;
      if (res.status === 429 && tries < 5 && !probe) {
        await discard(res);
        this.#notBefore = Date.now() + (Number(res.headers.get('Retry-After')) || 1) * 1000;
        continue;
      }
      if (res.status === 401 && tokens.refreshable && !refreshed) {
        await discard(res);
        refreshed = true;
        await tokens.get(true);
        continue;
      }
      if (res.status === 404 && allow404) { await discard(res); return null; }
      if (!res.ok) throw await errorFrom(res);
      return res.json();
    }
  }

  /** Yields the items of every page, following `next`, `limit` items at most. */
  async *pages(path, params, field, limit) {
    let left = limit ?? Infinity, cursor;
    if (!(left > 0)) return;
    do {
      const page = await this.request(path + query({ ...params, limit: Math.min(1000, left), cursor }));
      const items = Array.isArray(page?.[field]) ? page[field] : [];
      for (const item of items.slice(0, left)) yield item;
      left -= items.length;
      cursor = page?.next;
    } while (cursor && left > 0);
  }
}

// ---- subscriptions --------------------------------------------------------------------------

/** One async iterator over a subscription: a buffer that exists only while it does. */
class Feed {
  #queue = []; #waiter = null; #ended = false; #error = null;
  constructor(sub) { this.sub = sub; }
  push(event) {
    if (this.#waiter) { const w = this.#waiter; this.#waiter = null; w.resolve(this.#yield(event)); }
    else this.#queue.push(event);
  }
  // A tick is handed over when the iterator yields it, not when it is buffered.
  #yield(event) {
    if (event.type === 'tick') this.sub.handedOver(event);
    return { value: event, done: false };
  }
  end(error) {
    this.#ended = true; this.#error = error ?? null;
    // Closed by the user (or the client): what still waits is not wanted. An error
    // comes after what was received before it.
    if (!error) this.#queue.length = 0;
    if (this.#waiter) { const w = this.#waiter; this.#waiter = null; this.#settle(w); }
  }
  #settle(w) {
    if (this.#error) { const e = this.#error; this.#error = null; w.reject(e); }
    else w.resolve({ value: undefined, done: true });
  }
  next() {
    if (this.#queue.length) return Promise.resolve(this.#yield(this.#queue.shift()));
    return new Promise((resolve, reject) => {
      if (this.#ended) this.#settle({ resolve, reject });
      else this.#waiter = { resolve, reject };
    });
  }
  /** Leaving a `for await` loop closes the subscription. */
  return() {
    this.#queue.length = 0;
    this.sub.close();
    return Promise.resolve({ value: undefined, done: true });
  }
  [Symbol.asyncIterator]() { return this; }
}

/** One channel's subscription: its cursor, the continuity check, and its events. */
export class Subscription extends Emitter {
  /** `{id, seq, epoch}` of the last tick handed over (to `tick` listeners, or yielded by
   *  the iterator when one runs): what the store keeps. Before the first tick, the
   *  stored or given start; null for the server's default replay. */
  cursor = null;
  /** "pending" (asked for, waiting) | "replaying" | "live" | "closed". */
  state = 'pending';
  /** Why it ended, when it ended with an error. */
  error = null;
  /** Resolves (never rejects) with the error it ended with, or null. */
  closed;

  #client; #options; #feeds = new Set(); #resolveClosed;
  // Set when a (re)subscribe was sent: frames before its `subscribed` belong to an
  // earlier incarnation and are ignored.
  #awaiting = true;
  // The next tick may start a new run (after `subscribed` or a gap): no continuity check.
  #fresh = true; #epoch = null;
  // The last tick received and accepted (it may still wait in an iterator's buffer):
  // repeats and continuity are judged against it, and a reconnect resumes after it.
  #last = null;
  // The last gap handed over while no tick has followed it (the next tick is expected
  // to jump): a resume before its tick makes the server say it again, and a user
  // adding up `missed` must not count it twice.
  #lastGap = null;
  /** False until its start is known (a cursor store may answer later): a transport
   *  subscribes it only then. */
  started = false;
  /** Ticks handed over since the last (re)subscribe, while replaying. */
  replayed = 0;

  constructor(client, channel, options, cursor) {
    super();
    this.#client = client;
    this.channel = channel;
    this.#options = options;
    this.cursor = this.#last = cursor;
    this.closed = new Promise((r) => { this.#resolveClosed = r; });
  }

  /** Where it starts: a stored or given cursor, or null. */
  start(cursor) {
    this.cursor = this.#last = cursor;
    this.started = true;
  }

  get rate() { return this.#options.rate ?? null; }
  get candles() { return this.#options.candles ?? null; }

  /** The subscribe to send now: from the cursor once there is one, else as asked. */
  subscribeMessage() {
    const o = this.#options, msg = { type: 'subscribe', channel: this.channel };
    const c = this.#last;
    if (c) {
      msg.since = c.id;
      if (Number.isSafeInteger(c.seq)) msg.seq = c.seq;
      if (typeof c.epoch === 'string') msg.epoch = c.epoch;
    } else {
      if (o.since != null) msg.since = o.since;
      if (o.seq != null) msg.seq = o.seq;
      if (o.epoch != null) msg.epoch = o.epoch;
    }
    if (o.rate != null) msg.rate = o.rate;
    if (o.candles != null) msg.candles = o.candles;
    return msg;
  }

  /** Called by the transport as it (re)subscribes. */
  subscribing() {
    if (this.state === 'closed') return;
    this.#awaiting = true;
    this.#setState('pending');
  }

  #setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  #hand(type, event) {
    for (const f of this.#feeds) f.push(event);
    this.emit(type, event);
  }

  /** Called as an iterator yields a tick. */
  handedOver(t) {
    const c = this.cursor;   // two loops on one subscription: the cursor never goes back
    if (c && t.epoch === c.epoch && compareIds(t.id, c.id) <= 0) return;
    this.#handTo(cursorOf(t));
  }

  #handTo(cursor) {
    this.cursor = cursor;
    this.#client.saveCursor(this.channel, cursor);
  }

  /** One server frame for this channel. */
  frame(f) {
    if (this.state === 'closed') return;
    if (f.type === 'subscribed') {
      this.#awaiting = false;
      this.#fresh = true;   // a gap handed over before the drop stays pending: its tick is still to come
      this.#epoch = f.epoch ?? null;
      this.replayed = 0;
      this.#setState('replaying');
      return;
    }
    if (this.#awaiting) return;
    switch (f.type) {
      case 'tick': return this.#tick(f);
      case 'gap': {
        // Said again after a resume that came before its tick: the same loss, perhaps
        // grown (trimming went on meanwhile). Only what it adds is handed over.
        const g = this.#lastGap;
        this.#lastGap = f;
        if (g && g.reason === f.reason && g.after === f.after) {
          if (g.resume_from === f.resume_from) return undefined;
          const more = Number.isSafeInteger(g.missed) && Number.isSafeInteger(f.missed) ? f.missed - g.missed : null;
          return this.#hand('gap', { ...f, after: g.resume_from ?? f.after, missed: more });
        }
        return this.#hand('gap', f);
      }
      case 'candle': return this.#hand('candle', f);
      case 'live':
        // With nothing handed over yet (since=$, or an empty channel), the cursor
        // becomes where the server says the stream stood, so a reconnect resumes there.
        if (!this.#last && typeof f.last_id === 'string' && ID_RE.test(f.last_id)) {
          this.#handTo(this.#last = { id: f.last_id, seq: null, epoch: this.#epoch });
        }
        this.#setState('live');
        return this.emit('live', { type: 'live', channel: this.channel, last_id: f.last_id, replayed: this.replayed });
      default: return undefined;   // a frame type newer than this library
    }
  }

  // Exactly once, in order: a tick at or before the cursor (same epoch) is a repeat of
  // what was handed over, dropped. Within an epoch the next tick's seq must be the
  // cursor's + skipped + 1, and an epoch must not change, unless a gap frame said so;
  // a break the server did not announce becomes a gap event of our own (`detected:
  // "client"`), never hidden.
  #tick(t) {
    if (typeof t.id !== 'string' || !ID_RE.test(t.id)) return;
    const cur = this.#last;
    if (cur && (cur.epoch == null || t.epoch === cur.epoch) && compareIds(t.id, cur.id) <= 0) return;
    if (cur && !this.#lastGap) {
      let reason = null, missed = null;
      if (cur.epoch != null && t.epoch !== cur.epoch) {
        reason = 'epoch';
      } else if (t.skipped === null && !this.#fresh) {   // uncountable, where it may not be
        reason = 'seq';
      } else if (Number.isSafeInteger(cur.seq) && Number.isSafeInteger(t.seq) && t.skipped !== null) {
        const expected = cur.seq + (t.skipped ?? 0) + 1;
        if (t.seq !== expected) [reason, missed] = ['seq', t.seq > expected ? t.seq - expected : null];
      }
      if (reason) this.#hand('gap', { type: 'gap', channel: this.channel, after: cur.id, resume_from: t.id, detected: 'client', reason, missed });
    }
    this.#fresh = false;
    this.#lastGap = null;
    if (this.state === 'replaying') this.replayed++;
    this.#last = cursorOf(t);
    // Listeners alone: handed over now, in the order received (a listener reading
    // `sub.cursor` sees this tick).
    if (!this.#feeds.size) this.#handTo(this.#last);
    this.#hand('tick', t);
  }

  /** Ends the subscription; with an error, that error reaches the user once: the
   *  running iterator throws it, `error` listeners get it, else the next iterator
   *  throws it (and it stays in `sub.error`). */
  end(error = null) {
    if (this.state === 'closed') return;
    this.#setState('closed');
    this.error = error;
    let told = false;
    for (const f of this.#feeds) { f.end(error); told = true; }
    this.#feeds.clear();
    if (error && this.listens('error')) { this.emit('error', error); told = true; }
    if (error && !told) this.#unreported = true;
    this.emit('close', error);
    this.#resolveClosed(error);
  }
  #unreported = false;

  /** Stops it: an unsubscribe is sent, iterators finish. The cursor stays in the store. */
  close() {
    if (this.state === 'closed') return;
    this.#client.unsubscribed(this);
    this.end(null);
  }

  [Symbol.asyncIterator]() {
    const feed = new Feed(this);
    if (this.state === 'closed') {
      feed.end(this.#unreported ? this.error : null);
      this.#unreported = false;
    } else {
      this.#feeds.add(feed);
    }
    return feed;
  }
}

// ---- transports ------------------------------------------------------------------------------

/** What to do after a socket closed with `code` (PROTOCOL §5.6). */
function afterClose(code) {
  switch (code) {
    case 1002: case 1007: case 1008:
      return { stop: new TickstreamError('policy', `the server closed the socket (${code}): this client sent what it should not`) };
    case 4003: return { stop: new TickstreamError('forbidden', 'the server refused this client (4003)', { status: 403 }) };
    case 4001: return { token: true };
    case 4029: return { min: 5000, extra: 2 };
    case 1013: return { min: 5000 };
    case 1012: return { soon: true };
    default: return {};
  }
}

/** What to do after an HTTP refusal (a handshake, or an SSE request). */
function afterRefusal(error, tokens) {
  switch (error.status) {
    case 401: return tokens.refreshable ? { token: true, backoff: true } : { stop: error };
    case 403: case 400: case 404: return { stop: error };
    case 429: return { min: (error.retryAfter ?? 5) * 1000 };
    case 503: return { min: 1000 };
    default: return {};
  }
}

// The `error` event that ends an SSE stream (PROTOCOL §5.7), as the close code it
// stands for, so a user sees the same `code` whichever transport runs.
const SSE_ENDS = { restarting: 1012, token_expired: 4001, too_slow: 1013, closed: 1000 };

// A WebSocket handshake (or an SSE request's headers) that takes longer is given up.
const HANDSHAKE_MS = 15_000;

/** Common to both transports: retry timing, the stable-connection reset. */
class Link {
  attempt = 0;
  freshToken = false;
  #retryTimer = 0; #stableTimer = 0;
  constructor(client) { this.client = client; }

  /** Schedules the next connection per `plan`; false when it must stop. */
  retry(plan, info) {
    const c = this.client;
    this.unstable();
    if (c.state === 'closed') return false;
    if (plan.stop) { c.fail(plan.stop); return false; }
    let delay;
    if (plan.soon) delay = 100 + Math.random() * 900;
    else if (plan.token && !plan.backoff && this.attempt === 0) delay = 0;
    else delay = backoffDelay(this.attempt, c.backoff, plan.min ?? 0);
    this.attempt += 1 + (plan.extra ?? 0);
    if (plan.token) this.freshToken = true;
    c.setState('reconnecting', { ...info, delay: Math.round(delay), attempt: this.attempt });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.connect(), delay);
    return true;
  }
  /** Skips the rest of a backoff wait; nothing while connected or connecting. */
  skipWait() {
    if (this.waiting) { clearTimeout(this.#retryTimer); this.connect(); }
  }
  get waiting() { return this.client.state === 'reconnecting'; }
  /** A connection is up: the backoff starts over once it has stayed up 10 s. */
  opened() {
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => { this.attempt = 0; }, STABLE_MS);
  }
  unstable() { clearTimeout(this.#stableTimer); }
  stopTimers() { clearTimeout(this.#retryTimer); this.unstable(); }
  /** The token function failed (reported): try again with a fresh one, backing off. */
  tokenFailed(error) {
    this.client.report(error);
    this.retry({ token: true, backoff: true }, { error });
  }
  /** The token for the next request, fresh when the server said it expired. */
  async token() {
    const fresh = this.freshToken;
    this.freshToken = false;
    return this.client.tokens.get(fresh);
  }
}

/** One multiplexed `/ws` socket carrying every subscription of the client. */
class WsLink extends Link {
  ws = null;
  #gen = 0; #opened = false; #lastRx = 0; #pingAt = 0;
  #pingTimer = 0; #drainTimer = 0; #refreshTimer = 0; #handshakeTimer = 0;
  #out = []; #bucket = SEND_BURST; #bucketAt = 0;
  #retrySubs = new Map();   // subscription -> timer of a rate-limited subscribe's retry
  #limited = new Map();     // subscription -> rate-limited refusals in a row
  // A channel unsubscribed on this socket may still have frames of the old subscription
  // on the way (PROTOCOL §5.2), and its subscribe may or may not have been answered:
  // no frame names the subscribe it answers. So an unsubscribe is followed by a ping,
  // and until its pong (the server answers in order, after what it had queued) the
  // channel's frames are dropped and a new subscribe to it waits. Pings leave in the
  // order they are queued, so a ping's number is known when it is queued.
  #draining = new Map();    // channel -> number of the ping that ends its drain
  #held = new Map();        // channel -> subscription waiting for the drain
  #pings = 0; #pongs = 0;
  #refusal = null;          // the HTTP status a platform told of a refused handshake

  get open() { return this.#opened; }

  add(sub) {
    if (this.open) this.#subscribe(sub);
    else if (this.client.state === 'idle') this.connect();   // else the open to come subscribes it
  }

  remove(sub) {
    clearTimeout(this.#retrySubs.get(sub));
    this.#retrySubs.delete(sub); this.#limited.delete(sub);
    const queued = this.#out.findIndex((m) => m.sub === sub);
    if (queued >= 0) return void this.#out.splice(queued, 1);   // never sent: nothing to undo
    if (this.#held.get(sub.channel) === sub) return void this.#held.delete(sub.channel);
    if (!this.open || !sub.started) return;   // never subscribed on this socket
    this.#send({ type: 'unsubscribe', channel: sub.channel });
    this.#draining.set(sub.channel, this.#ping());
  }

  /** Queues a ping; its number (the pong that answers it is the same one). */
  #ping() {
    this.#send({ type: 'ping' });
    return ++this.#pings;
  }

  #subscribe(sub) {
    sub.subscribing();
    if (this.#draining.has(sub.channel)) this.#held.set(sub.channel, sub);
    else this.#send(sub.subscribeMessage(), sub);
  }

  #send(msg, sub = null) { this.#out.push({ msg, sub }); this.#drain(); }

  #drain() {
    clearTimeout(this.#drainTimer);
    if (!this.open) return;
    const now = Date.now();
    this.#bucket = Math.min(SEND_BURST, this.#bucket + (now - this.#bucketAt) * SEND_PER_MS);
    this.#bucketAt = now;
    for (; this.#out.length && this.#bucket >= 1; this.#bucket--) {
      const { msg } = this.#out.shift();
      try { this.ws.send(JSON.stringify(msg)); } catch { return; }   // closing: onclose follows
    }
    if (this.#out.length) this.#drainTimer = setTimeout(() => this.#drain(), 1 / SEND_PER_MS);
  }

  async connect() {
    const c = this.client, gen = ++this.#gen;
    this.#drop();
    if (c.state === 'closed') return;
    c.setState('connecting', { url: c.httpUrl });
    let token;
    try { token = await this.token(); } catch (e) {
      if (gen !== this.#gen || c.state === 'closed') return;
      return this.tokenFailed(e);
    }
    if (gen !== this.#gen || c.state === 'closed') return;
    let ws;
    try {
      const protocols = ['tickstream.v1'];
      if (token) protocols.push('tickstream.bearer.' + token);
      ws = new c.WebSocket(c.httpUrl.replace(/^http/, 'ws') + '/ws', protocols);
    } catch (e) {   // e.g. a token with characters a subprotocol may not carry
      c.fail(new TickstreamError('bad_token', `the token cannot be sent: ${e.message}`));
      return;
    }
    this.ws = ws;
    this.#refusal = null;
    ws.onopen = () => { if (ws === this.ws) this.#onOpen(token); };
    ws.onmessage = (ev) => { if (ws === this.ws) this.#onMessage(ev.data); };
    ws.onclose = (ev) => { if (ws === this.ws) this.#onClose(ev.code, ev.reason); };
    // A close event always follows. Node's `ws` says why a handshake was refused in
    // the error's message ("Unexpected server response: 429"); browsers say nothing.
    ws.onerror = (ev) => {
      const m = /Unexpected server response: (\d{3})/.exec(ev?.message ?? ev?.error?.message ?? '');
      if (m && ws === this.ws) this.#refusal = Number(m[1]);
    };
    this.#handshakeTimer = setTimeout(() => { if (ws === this.ws && !this.open) this.#onClose(1006, 'handshake timed out'); }, HANDSHAKE_MS);
  }

  #onOpen(token) {
    const c = this.client;
    clearTimeout(this.#handshakeTimer);
    this.#opened = true;
    this.#lastRx = this.#pingAt = Date.now();
    this.#bucket = SEND_BURST; this.#bucketAt = Date.now();
    this.opened();
    c.setState('connected', { url: c.httpUrl });
    for (const sub of c.subscriptions.values()) if (sub.started) this.#subscribe(sub);
    this.#pingTimer = setInterval(() => this.#heartbeat(), LOOK_MS);
    this.#scheduleRefresh(token, this.#gen);
  }

  // Asks the token function for the next token before this one expires, and sends it
  // as a `refresh`. A token that expires no later than the one in force is not sent:
  // the function is asked again later (halfway to the old expiry, at least in 5 s).
  #scheduleRefresh(token, gen, delay = refreshDelay(token)) {
    clearTimeout(this.#refreshTimer);
    if (!this.client.tokens.refreshable || delay === null) return;
    this.#refreshTimer = setTimeout(async () => {
      let fresh;
      try { fresh = await this.client.tokens.get(true); } catch (e) {
        if (gen !== this.#gen || !this.open) return;
        this.client.report(e);
        this.#scheduleRefresh(token, gen, 5000);
        return;
      }
      if (gen !== this.#gen || !this.open) return;
      const was = jwtClaims(token)?.exp, now = jwtClaims(fresh)?.exp;
      if (typeof was === 'number' && typeof now === 'number' && now <= was) {
        return this.#scheduleRefresh(token, gen, Math.max(5000, (was * 1000 - Date.now()) / 2));
      }
      this.#send({ type: 'refresh', token: fresh });
      this.#scheduleRefresh(fresh, gen);
    }, Math.min(delay, 2 ** 31 - 1));
  }

  #heartbeat() {
    if (!this.open) return;
    const now = Date.now(), silent = now - this.#lastRx;
    // A half-open connection: do not wait for the platform to notice.
    if (silent >= SILENCE_MS) return this.#onClose(1006, 'no data for 60 s');
    if (silent >= PING_MS && now - this.#pingAt >= PING_MS) {   // its pong counts like any other
      this.#pingAt = now;
      this.#ping();
    }
  }

  #onMessage(data) {
    this.#lastRx = Date.now();
    let f;
    try { f = JSON.parse(data); } catch { return; }
    if (!f || typeof f !== 'object') return;
    if (f.type === 'pong') return this.#onPong();
    const channel = typeof f.channel === 'string' ? f.channel : '';
    if (this.#draining.has(channel)) return;   // the unsubscribed one's
    const sub = this.client.subscriptions.get(channel);
    if (f.type === 'error') return this.#onError(f, sub);
    if (sub) {
      if (f.type === 'subscribed') this.#limited.delete(sub);
      sub.frame(f);
    }
  }

  #onPong() {
    this.#pongs++;
    for (const [channel, n] of this.#draining) {
      if (n > this.#pongs) continue;
      this.#draining.delete(channel);
      const sub = this.#held.get(channel);
      this.#held.delete(channel);
      if (sub && this.client.subscriptions.get(channel) === sub) this.#send(sub.subscribeMessage(), sub);
    }
  }

  #onError(f, sub) {
    const c = this.client;
    const error = new TickstreamError(f.code || 'error', f.message, { channel: f.channel || null, retryAfter: f.retry_after ?? null });
    if (!sub) {   // a refused refresh: the next token is asked for when the server closes with 4001
      if (!f.channel) c.report(error);
      return;
    }
    if (f.code === 'rate_limited') {   // transient: the same subscribe again, later
      sub.subscribing();
      const n = (this.#limited.get(sub) ?? 0) + 1;
      this.#limited.set(sub, n);
      const delay = backoffDelay(n, c.backoff, (f.retry_after ?? 1) * 1000);
      this.#retrySubs.set(sub, setTimeout(() => {
        this.#retrySubs.delete(sub);
        if (this.open && c.subscriptions.get(sub.channel) === sub) this.#subscribe(sub);
      }, delay));
      return;
    }
    c.refuse(sub, error);   // forbidden, bad_*: final
  }

  #onClose(code, reason) {
    const c = this.client, wasOpen = this.open, refusal = this.#refusal;
    this.#drop();
    if (c.state === 'closed') return;
    for (const sub of c.subscriptions.values()) sub.subscribing();
    const info = { code, reason };
    if (wasOpen) return void this.retry(afterClose(code), info);
    // Refused before the upgrade: a browser hides the HTTP status; ask REST.
    this.#diagnose(this.#gen, info, refusal);
  }

  // The REST answer to the same token tells 401, 403 and 503; a refusal it cannot see
  // (a `ws` bucket, the connection cap, an Origin) is reported as such, with a floor
  // on the backoff, so an empty bucket is not hammered.
  async #diagnose(gen, info, refusal) {
    const c = this.client;
    let plan = { min: 1000 }, error;
    try {
      await c.rest.request('/api/v1/channels?limit=1', { probe: true });
      error = refusal
        ? new TickstreamError(refusal === 429 ? 'rate_limited' : `http_${refusal}`, `the handshake was refused: HTTP ${refusal}`, { status: refusal })
        : new TickstreamError('refused', 'the connection failed, and a REST request with the same token found nothing wrong');
      plan = refusal ? afterRefusal(error, c.tokens) : plan;
    } catch (e) {
      error = e;
      plan = e.status ? afterRefusal(e, c.tokens) : {};
    }
    if (gen !== this.#gen || c.state === 'closed') return;
    this.retry(plan, { ...info, error });
  }

  #drop() {
    const ws = this.ws;
    this.ws = null; this.#opened = false;
    clearInterval(this.#pingTimer); clearTimeout(this.#drainTimer);
    clearTimeout(this.#refreshTimer); clearTimeout(this.#handshakeTimer);
    this.unstable();
    for (const t of this.#retrySubs.values()) clearTimeout(t);
    this.#retrySubs.clear(); this.#limited.clear();
    this.#draining.clear(); this.#held.clear();
    this.#pings = this.#pongs = 0;
    this.#out.length = 0;   // subscriptions are rebuilt from their cursors on the next open
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Closing a socket that is still connecting makes `ws` emit an error: it must
      // find a listener, or it would be an uncaught exception.
      ws.onerror = () => {};
      try { ws.close(1000); } catch { /* already closing */ }
    }
  }

  /** Closes the socket for good; resolves once it is closed (at most 2 s). */
  shutdown() {
    const ws = this.ws;
    this.#gen++;
    this.stopTimers();
    if (!ws) return this.#drop(), Promise.resolve();
    const done = new Promise((resolve) => {
      const t = setTimeout(resolve, 2000);
      ws.addEventListener('close', () => { clearTimeout(t); resolve(); }, { once: true });
    });
    this.#drop();
    return done;
  }
}

/** Server-Sent Events, chosen explicitly (`transport: "sse"`): one `/sse/{channel}`
 *  stream per subscription, read with fetch (headers, and the status of a refusal). */
class SseLink extends Link {
  #abort = null; #closed = false; #state = 'idle';
  constructor(client, sub) { super(client); this.sub = sub; }

  get waiting() { return this.#state === 'reconnecting'; }

  add() { this.connect(); }
  remove() { this.#closed = true; this.stopTimers(); this.#abort?.abort(); }
  shutdown() { this.remove(); return Promise.resolve(); }

  #setState(state, info) {
    this.#state = state;
    this.client.setState(state, { ...info, channel: this.sub.channel });
  }

  retry(plan, info) {
    const going = super.retry(plan, { ...info, channel: this.sub.channel });
    if (going) this.#state = 'reconnecting';
    return going;
  }

  async connect() {
    const c = this.client, sub = this.sub;
    if (this.#closed || c.state === 'closed') return;
    this.#abort?.abort();
    const abort = (this.#abort = new AbortController());
    const mine = () => !this.#closed && abort === this.#abort && c.state !== 'closed';
    this.#setState('connecting', { url: c.httpUrl });
    let end = {}, token;
    try { token = await this.token(); } catch (e) {
      if (!mine()) return;
      return this.tokenFailed(e);
    }
    if (!mine()) return;
    try {
      const { type, channel, ...params } = sub.subscribeMessage();   // since, seq, epoch, rate, candles
      const url = `${c.httpUrl}/sse/${enc(channel)}` + query(params);
      sub.subscribing();
      const timer = setTimeout(() => abort.abort(), HANDSHAKE_MS);
      let res;
      try {
        res = await c.fetch(url, { headers: { Accept: 'text/event-stream', ...(token ? { Authorization: 'Bearer ' + token } : {}) },
          signal: abort.signal, cache: 'no-store' });
      } finally { clearTimeout(timer); }
      if (!mine()) { discard(res); return; }
      if (!res.ok) {
        const error = await errorFrom(res);
        if (!mine()) return;
        if (error.code === 'forbidden' || error.status === 400) return this.client.refuse(sub, error);
        return void this.retry(afterRefusal(error, c.tokens), { error });
      }
      this.opened();
      this.#setState('connected', { url: c.httpUrl });
      end = await this.#read(res.body, abort);
    } catch (e) {
      end = { error: e instanceof TickstreamError ? e : new TickstreamError('unreachable', e.message) };
    }
    if (!mine() || sub.state === 'closed') return;
    sub.subscribing();
    this.retry(end.plan ?? {}, { code: end.code, reason: end.reason, error: end.error });
  }

  // Reads events until the stream ends; returns how it ended.
  async #read(body, abort) {
    const reader = body.getReader(), decoder = new TextDecoder();
    let buf = '', silence = 0;
    const watch = () => {   // comments come every 20 s: 60 s of nothing is a dead stream
      clearTimeout(silence);
      silence = setTimeout(() => abort.abort(), SILENCE_MS);
    };
    watch();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return {};
        watch();
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(l[5] === ' ' ? 6 : 5)).join('\n');
          if (!data) continue;
          let f;
          try { f = JSON.parse(data); } catch { continue; }
          if (!f || typeof f !== 'object') continue;
          if (f.type !== 'error') { this.sub.frame(f); continue; }
          // The stream's end, said before it ends (PROTOCOL §5.7).
          const code = SSE_ENDS[f.code];
          if (code === undefined) {   // a refusal of this subscription: final
            this.client.refuse(this.sub, new TickstreamError(f.code || 'error', f.message, { channel: this.sub.channel }));
            return {};
          }
          return { plan: afterClose(code), code, reason: f.code };
        }
      }
    } finally {
      clearTimeout(silence);
      reader.cancel().catch(() => {});
    }
  }
}

// ---- the client ----------------------------------------------------------------------------------

/** A tickstream client: one multiplexed socket (or SSE streams, when asked), every
 *  subscription resumed from its cursor after any drop, REST reads paced. */
export class Client extends Emitter {
  /** "idle" | "connecting" | "connected" | "reconnecting" | "closed". */
  state = 'idle';
  /** Subscriptions by channel. */
  subscriptions = new Map();

  #urls; #urlIndex = 0; #links = new Map(); #ws = null; #store; #transport;
  #writes = new Map();   // channel -> a cursor write in flight (async stores)

  constructor({ url, token, WebSocket: WS, transport = 'websocket', store = null, fetch: fetchImpl, backoff } = {}) {
    super();
    const urls = (Array.isArray(url) ? url : [url]).filter(Boolean).map((u) => String(u).replace(/\/+$/, '').replace(/^ws(s?):/, 'http$1:'));
    if (!urls.length || urls.some((u) => !/^https?:\/\//.test(u))) throw new TypeError('url must be an http(s) or ws(s) URL (or a list of them)');
    if (!['websocket', 'sse'].includes(transport)) throw new TypeError('transport must be "websocket" or "sse"');
    this.#urls = urls;
    this.#transport = transport;
    this.#store = store;
    this.tokens = new TokenSource(token);
    this.WebSocket = WS ?? globalThis.WebSocket;
    if (transport === 'websocket' && typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass one in the options (Node 20: the `ws` package)');
    }
    const f = fetchImpl ?? globalThis.fetch;
    this.fetch = (...args) => f(...args);
    this.backoff = { base: 500, cap: 30_000, ...backoff };
    this.rest = new Rest(this);
  }

  /** The node in use; another of the list after each failed or dropped connection. */
  get httpUrl() { return this.#urls[this.#urlIndex]; }

  setState(state, info = {}) {
    if (this.state === 'closed') return;   // closed is for good
    if (state === 'reconnecting' && this.#urls.length > 1) this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.state = state;
    this.emit('state', state, info);
  }

  /** Reports an error that belongs to no call or subscription to `error` listeners. */
  report(error) { if (this.listens('error')) this.emit('error', error); }

  /** Stops for good: every subscription ends with `error`. */
  fail(error) {
    if (this.state === 'closed') return;
    for (const link of this.#links.values()) link.shutdown();
    this.#ws?.shutdown();
    this.setState('closed', { error });
    const subs = [...this.subscriptions.values()];
    this.subscriptions.clear();
    for (const sub of subs) sub.end(error);
    this.#flush();   // never rejects: failures are reported
  }

  /**
   * Subscribes to `channel`; events: `tick`, `gap`, `candle` (also as an async
   * iterable), `live`, `state`, `error`, `close`. With a store holding a cursor for the
   * channel it resumes from it; else `since`/`seq`/`epoch` say where to start.
   */
  subscribe(channel, { since, seq, epoch, rate, candles } = {}) {
    if (typeof channel !== 'string' || !CHANNEL_RE.test(channel)) throw new TickstreamError('bad_channel', `not a channel name: ${channel}`);
    if (this.state === 'closed') throw new TickstreamError('closed', 'this client is closed');
    if (this.subscriptions.has(channel)) throw new TickstreamError('already_subscribed', `already subscribed to ${channel}`);
    if (since != null && !(ID_RE.test(since) || SPECIAL_SINCE.test(since))) throw new TickstreamError('bad_since', `since: ${since}`);
    if (rate != null && !(Number.isInteger(rate) && rate >= 1 && rate <= 1000)) throw new TickstreamError('bad_rate', 'rate: a whole number from 1 to 1000');
    // What the server would refuse with 1008 (ending every subscription of the socket),
    // or what JSON cannot carry, is refused here, before anything is sent.
    if (seq != null && !(Number.isSafeInteger(seq) && seq >= 0)) throw new TickstreamError('bad_seq', 'seq: a whole number ≥ 0');
    if (epoch != null && !(typeof epoch === 'string' && epoch.length > 0 && epoch.length <= 64)) throw new TickstreamError('bad_epoch', 'epoch: a string of 1 to 64 characters');
    // An id in `since` is a cursor like any other: repeats at or before it are dropped
    // and continuity is checked from its `seq`.
    const explicit = since != null && ID_RE.test(since) ? { id: since, seq: seq ?? null, epoch: epoch ?? null } : null;
    let stored = null;
    try { stored = this.#store ? this.#store.get(channel) : null; } catch (e) {
      throw storeError(e);
    }
    const sub = new Subscription(this, channel, { since, seq, epoch, rate, candles }, null);
    this.subscriptions.set(channel, sub);
    const start = (cursor) => {
      if (this.subscriptions.get(channel) !== sub) return;
      sub.start(cursor && ID_RE.test(cursor.id) ? cursorOf(cursor) : explicit);
      this.#linkFor(sub).add(sub);
    };
    if (stored && typeof stored.then === 'function') {
      stored.then(start, (e) => {
        if (this.subscriptions.get(channel) === sub) this.refuse(sub, storeError(e));
      });
    } else start(stored);
    return sub;
  }

  #linkFor(sub) {
    if (this.#transport === 'websocket') return (this.#ws ??= new WsLink(this));
    const link = new SseLink(this, sub);
    this.#links.set(sub, link);
    return link;
  }

  /** Called by `sub.close()`. */
  unsubscribed(sub) {
    if (this.subscriptions.get(sub.channel) !== sub) return;
    this.#ws?.remove(sub);   // (none under SSE)
    this.dropped(sub);
  }

  /** The server refused this subscription for good: it ends alone, with `error`. */
  refuse(sub, error) {
    this.dropped(sub);
    sub.end(error);
  }

  /** Forgets a subscription that ended (its SSE stream stopped). */
  dropped(sub) {
    if (this.subscriptions.get(sub.channel) === sub) this.subscriptions.delete(sub.channel);
    this.#links.get(sub)?.remove();
    this.#links.delete(sub);
  }

  /** Keeps a channel's cursor in the store. An async store's writes go one at a time
   *  per channel, the newest cursor last (never an older one over a newer), and a
   *  failed write is reported, never left as a rejected promise. */
  saveCursor(channel, cursor) {
    if (!this.#store) return;
    const busy = this.#writes.get(channel);
    if (busy) { busy.next = cursor; busy.pending = true; return; }
    let done;
    try { done = this.#store.set(channel, cursor); } catch (e) {
      return this.report(storeError(e));
    }
    if (!done || typeof done.then !== 'function') return;
    const write = { pending: false, next: null, settled: null };
    this.#writes.set(channel, write);
    let timer;
    const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('no answer in 10 s')), STORE_TIMEOUT_MS); });
    write.settled = Promise.race([done, late])
      .finally(() => clearTimeout(timer))
      .then(null, (e) => this.report(storeError(e)))
      .then(() => {
        this.#writes.delete(channel);
        if (write.pending) this.saveCursor(channel, write.next);
      });
  }

  /** Waits until every cursor handed over is written (an async store's writes too). */
  async #flush() {
    while (this.#writes.size) await Promise.all([...this.#writes.values()].map((w) => w.settled));
    try { await this.#store?.flush?.(); } catch (e) { this.report(storeError(e)); }
  }

  /** Opens the socket now rather than at the first subscribe (so `state` tells whether
   *  the server takes this client before anything is asked of it). */
  connect() {
    if (this.state === 'closed') throw new TickstreamError('closed', 'this client is closed');
    if (this.#transport !== 'websocket') return;
    this.#ws ??= new WsLink(this);
    if (this.state === 'idle') this.#ws.connect();
  }

  /** Skips the rest of a backoff wait and connects now (nothing while connected). */
  reconnect() {
    if (this.state === 'closed') return;
    this.#ws?.skipWait();
    for (const link of this.#links.values()) link.skipWait();
  }

  /** Closes the socket and ends every subscription (their cursors stay in the store). */
  async close() {
    if (this.state === 'closed') return;
    const subs = [...this.subscriptions.values()];
    this.subscriptions.clear();
    this.setState('closed', {});
    for (const sub of subs) sub.end(null);
    await Promise.all([this.#ws?.shutdown(), ...[...this.#links.values()].map((l) => l.shutdown()), this.#flush()]);
  }

  /** Every tick of a channel in (`since`, `until`], in `order`, `limit` at most; pages followed. */
  history(channel, { since, until, order, limit } = {}) {
    return this.rest.pages(`/api/v1/channels/${enc(channel)}/ticks`, { since, until, order }, 'ticks', limit);
  }

  /** Candles of `interval` whose start is in (`since`, `until`], pages followed. */
  candles(channel, { interval = '1m', since, until, order, limit } = {}) {
    return this.rest.pages(`/api/v1/channels/${enc(channel)}/candles`, { interval, since, until, order }, 'candles', limit);
  }

  /** The channel's newest tick, or null when it has none. */
  latest(channel) {
    return this.rest.request(`/api/v1/channels/${enc(channel)}/latest`, { allow404: true });
  }

  /** A page of the channels this token may read: `{channels, next}`. */
  channels({ limit, cursor } = {}) {
    return this.rest.request('/api/v1/channels' + query({ limit, cursor }));
  }
}

// ---- cursor stores ---------------------------------------------------------------------------------

/** Cursors kept in memory, for one process. */
export function memoryStore(initial = {}) {
  const map = new Map(Object.entries(initial));
  return {
    get: (channel) => map.get(channel) ?? null,
    set: (channel, cursor) => { if (cursor) map.set(channel, cursor); else map.delete(channel); },
    entries: () => Object.fromEntries(map),
  };
}

/** Cursors kept in a browser's `localStorage` under one key, so a reload resumes:
 *  written at most every `delay` ms and when the page is hidden or left. Storage that
 *  throws (private mode, quota) leaves the page working, only unremembered. */
export function localStorageStore({ key = 'tickstream.cursors', storage, delay = 250 } = {}) {
  let cursors = {};
  try {
    // Reading `localStorage` itself throws where a browser blocks site storage.
    storage ??= globalThis.localStorage;
    const saved = JSON.parse(storage?.getItem(key) ?? '{}');
    for (const [ch, c] of Object.entries(saved && typeof saved === 'object' ? saved : {})) {
      if (CHANNEL_RE.test(ch) && c && ID_RE.test(c.id)) {
        cursors[ch] = cursorOf(c);
      }
    }
  } catch { cursors = {}; }
  let timer = 0;
  const flush = () => {
    clearTimeout(timer); timer = 0;
    try { storage?.setItem(key, JSON.stringify(cursors)); } catch { /* not kept */ }
  };
  if (typeof addEventListener === 'function') {
    addEventListener('pagehide', flush);
    globalThis.document?.addEventListener('visibilitychange', () => { if (globalThis.document.hidden) flush(); });
  }
  return {
    get: (channel) => cursors[channel] ?? null,
    set: (channel, cursor) => {
      if (cursor) cursors[channel] = cursor; else delete cursors[channel];
      if (!timer) timer = setTimeout(flush, delay);
    },
    flush,
    entries: () => ({ ...cursors }),
  };
}
