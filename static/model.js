// The dashboard's data, one channel at a time: rows waiting to be drawn, chart points,
// candles, ticks per second and the continuity counts of a card. No DOM and no
// network here (cards.js draws this, feed.js feeds it), so Node can test it as it is
// (static/test/model.test.mjs).

export const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const ID_RE = /^\d+-\d+$/;
export const ROW_CAP = 200;            // table rows kept per channel
const POINT_CAP = 20000;        // chart points kept per channel (memory bound at high rates)
const HISTORY_MS = 15 * 60e3;   // chart data kept: the largest selectable window
const RATE_MS = 5000;           // ticks per second over the last 5 s
const CANDLE_CAP = 500;         // candles kept per channel
export const INTERVALS = { '1s': 1e3, '1m': 60e3, '5m': 300e3, '1h': 3600e3, '1d': 86400e3 };

/** First index with a[i] >= x in an ascending array. */
export function lowerBound(a, x) {
  let lo = 0, hi = a.length;
  while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < x) lo = m + 1; else hi = m; }
  return lo;
}

/** A REST candle or a live `candle` frame as the chart draws it (t in ms), or null
 *  when it cannot be drawn. */
export function toCandle(m) {
  if (!m || typeof m !== 'object') return null;
  const t = Date.parse(m.t), n = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null);
  if (Number.isNaN(t) || [m.open, m.high, m.low, m.close].some((x) => n(x) === null)) return null;
  return { t, open: m.open, high: m.high, low: m.low, close: m.close, count: m.count, volume: n(m.volume), final: m.final };
}

/** Puts `k` into `list` (ascending by t), replacing the one of the same bucket: a live
 *  frame updates its bucket as it fills. Live updates almost always touch the end. */
export function upsertCandle(list, k, cap = CANDLE_CAP) {
  let i = list.length - 1;
  while (i >= 0 && list[i].t > k.t) i--;
  if (i >= 0 && list[i].t === k.t) list[i] = k; else list.splice(i + 1, 0, k);
  if (list.length > cap) list.splice(0, list.length - cap);
  return list;
}

/** A REST page of candles (newest first, as asked with order=desc) under the live
 *  frames that came before it: those are newer than the page and win. */
export function mergeCandles(pageDesc, live) {
  const list = (Array.isArray(pageDesc) ? pageDesc : []).map(toCandle).filter(Boolean).reverse();
  for (const k of live) upsertCandle(list, k);
  return list;
}

/** Ticks per second over the last `span` ms: each frame counts 1 + its `skipped`, so a
 *  sample under a rate still shows the channel's real rate; frames per second beside. */
export class RateWindow {
  constructor(span = RATE_MS) { this.span = span; this.reset(0); }
  /** Counting starts again (the subscription went live at `now`). */
  reset(now) { this.since = now; this.arrivals = []; this.sizes = []; this.total = 0; }
  add(now, size) { this.arrivals.push(now); this.sizes.push(size); this.total += size; }
  /** `{ticks, frames}` a second, null while less than a second has been seen. */
  read(now) {
    while (this.arrivals.length && this.arrivals[0] < now - this.span) { this.arrivals.shift(); this.total -= this.sizes.shift(); }
    // Over the last 5 s, or since the subscription went live when that is shorter.
    const span = Math.min(this.span, now - this.since);
    if (span < 1000) return { ticks: null, frames: null };
    return { ticks: (this.total * 1000) / span, frames: (this.arrivals.length * 1000) / span };
  }
}

const skippedOf = (t) => (Number.isInteger(t.skipped) && t.skipped > 0 ? t.skipped : 0);

/**
 * One channel's card, as data. The client library checks continuity and drops repeats;
 * this counts what it reports: each tick that followed its predecessor without a gap is
 * `checked`, a gap the library found itself (`detected: "client"`) is a `break`, one
 * the server announced is a `gap`.
 */
export class ChannelModel {
  constructor(name, color = 0) {
    this.name = name;
    this.color = color;
    this.pending = [];     // rows newer than those shown, oldest first: {t, kind}
    this.older = [];       // history rows older than those shown, oldest first
    this.last = null;      // the newest tick (its value is the card's headline)
    this.xs = []; this.ys = [];   // chart points, xs ascending (ms)
    this.candles = [];
    this.rate = new RateWindow();
    this.latency = null;   // ms from ingest to this browser, last live tick
    this.checked = 0; this.breaks = 0; this.gaps = 0;
    this.replayed = 0; this.replaySkipped = 0;
    this.prev = null;      // the tick (or cursor) the next tick follows
    this.gapPending = false;   // the server announced a gap: the next tick starts a new run
    this.breakPending = null;  // a gap the library found: told with the tick that shows it
    this.dirty = true;
  }

  /** Where the subscription starts: the stored cursor, the newest history tick, or
   *  null (the server's recent replay, nothing to check the first tick against). */
  startFrom(cursor) { this.prev = cursor ? { id: cursor.id, seq: cursor.seq ?? null, epoch: cursor.epoch ?? null } : this.prev; }

  /** The server confirmed a (re)subscribe: what follows is replay until `live`. */
  // A gap announced before a drop stays pending: the library hands its restatement
  // over once, and the tick it announced is still to come.
  subscribed() { this.replayed = this.replaySkipped = 0; }

  /** A gap event; returns the notice for an announced one (a break is told with its tick). */
  gap(g) {
    this.dirty = true;
    if (g.detected === 'client') { this.breakPending = g; return null; }
    this.gaps++;
    this.gapPending = true;
    return { level: 'warn', text: gapNotice(this.name, g) };
  }

  /** A tick the library handed over; returns a break notice, if it shows one. */
  tick(t, replay = false, now = Date.now()) {
    let notice = null;
    if (this.breakPending) {
      this.breaks++;
      notice = breakNotice(this.name, this.breakPending, this.prev, t);
    } else if (this.prev && !this.gapPending) {
      this.checked++;
    }
    this.breakPending = null; this.gapPending = false;
    this.prev = t;   // its seq and epoch are what a break notice quotes
    const n = skippedOf(t);
    if (replay) { this.replayed++; this.replaySkipped += n; } else {
      // ticks/s is the channel's: a sampled frame stands for itself and what it skipped.
      this.rate.add(now, 1 + n);
      const at = Date.parse(t.ingest_ts);
      if (!Number.isNaN(at)) this.latency = now - at;
    }
    this.record(t, replay ? 'replay' : 'live');
    return notice;
  }

  /** The subscription went live; returns what the replay brought, if anything. */
  live(now = Date.now()) {
    this.rate.reset(now);
    this.dirty = true;
    return this.replayed ? replayNotice(this.name, this.replayed, this.replaySkipped) : null;
  }

  /** A live candle frame of the interval shown. */
  candle(frame) {
    const k = toCandle(frame);
    if (!k) return false;
    upsertCandle(this.candles, k);
    this.dirty = true;
    return true;
  }

  /** Ticks read over REST (ascending), all older than anything received live;
   *  returns the newest of them (null: none). */
  history(ticks) {
    let newest = null;
    for (const t of ticks) if (t && ID_RE.test(t.id)) { this.record(t, 'history'); newest = t; }
    this.last ??= newest;
    return newest;
  }

  /** A tick into the rows and the chart ('history' and 'replay' rows are muted). */
  record(t, kind) {
    // History is older than every row shown: it goes below them.
    const rows = kind === 'history' ? this.older : this.pending;
    if (kind !== 'history') this.last = t;
    rows.push({ t, kind });
    // Only the newest ROW_CAP rows can ever be shown; trim in amortised chunks.
    if (rows.length > 2 * ROW_CAP) rows.splice(0, rows.length - ROW_CAP);
    const x = Date.parse(t.ts ?? t.ingest_ts);
    if (typeof t.value === 'number' && Number.isFinite(t.value) && !Number.isNaN(x)) {
      // Producer times may run backwards a little: keep xs sorted for the binary search.
      let i = this.xs.length;
      while (i > 0 && this.xs[i - 1] > x) i--;
      if (i === this.xs.length) { this.xs.push(x); this.ys.push(t.value); } else { this.xs.splice(i, 0, x); this.ys.splice(i, 0, t.value); }
      if (this.xs.length > POINT_CAP * 1.25) { const k = this.xs.length - POINT_CAP; this.xs.splice(0, k); this.ys.splice(0, k); }
    }
    this.dirty = true;
  }

  /** Drops chart points older than the largest window before the newest. */
  trimPoints() {
    const cut = lowerBound(this.xs, (this.xs[this.xs.length - 1] ?? 0) - HISTORY_MS);
    if (cut) { this.xs.splice(0, cut); this.ys.splice(0, cut); }
  }
}

// ---- what a channel's events say (notices) -------------------------------------------------

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** A gap the server announced: what was lost and why. */
export function gapNotice(name, g) {
  const missed = Number.isInteger(g.missed) ? plural(g.missed, 'tick') : 'an unknown number of ticks';
  const why = g.reason === 'epoch' ? 'the stream was reset (new epoch): history before it is gone'
    : g.reason === 'rollback' ? `a Redis failover rolled the stream back: ${missed} lost`
      : `${missed} trimmed from history before this page could read them`;
  return `Gap on ${name}: ${why}; resuming at ${g.resume_from ?? 'the next tick'}`;
}

/** A break the library found (`detected: "client"`), told with the tick after it:
 *  `{level, text, key}`; the key folds a burst of them into one notice. */
export function breakNotice(name, g, prev, t) {
  if (g.reason === 'epoch') {
    return { level: 'error', key: 'ep:' + name, text: `${name}: epoch changed ${prev?.epoch ?? '?'} → ${t.epoch} without a gap notice` };
  }
  if (t.skipped === null) {
    return { level: 'error', key: 'skip:' + name, text: `${name}: tick ${t.id} does not say how many ticks were skipped before it` };
  }
  const skipped = skippedOf(t);
  return { level: 'error', key: 'seq:' + name,
    text: `${name}: seq jumped ${prev?.seq ?? '?'} → ${t.seq}${skipped ? ` (${skipped} skipped)` : ''} without a gap notice` };
}

/** What a (re)subscribe replayed before going live. */
export function replayNotice(name, replayed, skipped) {
  return `${name}: replayed ${plural(replayed, 'tick')} from history`
    + (skipped ? ` (a sample: ${skipped} more skipped)` : '') + ', now live';
}
