// The pure parts of a channel's card (static/model.js): what a user would see go wrong
// if they broke — candles, ticks per second, the continuity counts and their notices.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChannelModel, RateWindow, ROW_CAP, mergeCandles, toCandle, upsertCandle, gapNotice, breakNotice, replayNotice } from '../model.js';

const tick = (seq, extra = {}) => ({ type: 'tick', id: `1700000000000-${seq}`, seq, epoch: 'e1', channel: 'c',
  ts: new Date(1700000000000 + seq).toISOString(), ingest_ts: new Date(1700000000000 + seq).toISOString(), value: seq, ...extra });
const candle = (t, close, extra = {}) => ({ t: new Date(t).toISOString(), open: 1, high: Math.max(1, close), low: 0, close, count: 1, volume: null, ...extra });

test('a live candle frame replaces the REST candle of the same bucket, and newer ones are appended', () => {
  const page = [candle(120_000, 3), candle(60_000, 2), candle(0, 1)];   // order=desc, as asked
  const live = [toCandle({ ...candle(120_000, 9), type: 'candle', interval: '1m', final: false })];
  const merged = mergeCandles(page, live);
  assert.deepEqual(merged.map((k) => k.t), [0, 60_000, 120_000]);
  assert.equal(merged[2].close, 9, 'the live frame wins over the REST page');
  assert.equal(merged[2].final, false);
  upsertCandle(merged, toCandle(candle(180_000, 4)));
  upsertCandle(merged, toCandle(candle(180_000, 5)));
  assert.deepEqual(merged.map((k) => k.close), [1, 2, 9, 5], 'one candle per bucket, the latest update kept');
});

test('candles that cannot be drawn are dropped, and the list stays bounded', () => {
  assert.equal(toCandle({ t: 'not a time', open: 1, high: 1, low: 1, close: 1 }), null);
  assert.equal(toCandle({ t: '2024-01-01T00:00:00Z', open: 1, high: null, low: 1, close: 1 }), null);
  assert.deepEqual(mergeCandles([{ t: 'x' }, candle(0, 1)], []).length, 1);
  const list = [];
  for (let i = 0; i < 10; i++) upsertCandle(list, toCandle(candle(i * 1000, i)), 4);
  assert.deepEqual(list.map((k) => k.close), [6, 7, 8, 9], 'the oldest go first');
  upsertCandle(list, toCandle(candle(6500, 1)), 5);
  assert.deepEqual(list.map((k) => k.t), [6000, 6500, 7000, 8000, 9000], 'an out-of-order bucket lands in place');
});

test('ticks per second count each frame as 1 + skipped over the last 5 s; frames beside', () => {
  const w = new RateWindow(5000);
  w.reset(0);
  assert.deepEqual(w.read(500), { ticks: null, frames: null }, 'under a second live: no rate yet');
  for (let t = 0; t < 2000; t += 200) w.add(t, 1 + 3);   // 5 frames/s, each skipped 3
  const r = w.read(2000);
  assert.equal(r.frames, 5);
  assert.equal(r.ticks, 20, 'the channel rate, not the sample rate');
  const later = w.read(7100);   // all arrivals older than 5 s: dropped from the window
  assert.equal(later.ticks, 0);
  assert.equal(later.frames, 0);
});

test('a live tick feeds ticks/s and latency; a replayed one does not, and is counted as replay', () => {
  const m = new ChannelModel('c');
  m.startFrom({ id: '1700000000000-1', seq: 1, epoch: 'e1' });
  m.subscribed();
  m.tick(tick(2, { skipped: 4 }), true, 1700000001000);
  m.tick(tick(3), true, 1700000001000);
  assert.equal(m.replayed, 2);
  assert.equal(m.replaySkipped, 4);
  assert.equal(m.rate.arrivals.length, 0);
  assert.equal(m.live(1700000001000), 'c: replayed 2 ticks from history (a sample: 4 more skipped), now live');
  m.tick(tick(4), false, 1700000000104);
  assert.equal(m.latency, 100);
  assert.equal(m.rate.total, 1);
  assert.deepEqual(m.pending.map((r) => r.kind), ['replay', 'replay', 'live']);
  assert.equal(m.checked, 3, 'each tick after its predecessor is checked');
});

test('a gap the library found is a break, told with the tick that shows it', () => {
  const m = new ChannelModel('demo.x');
  m.startFrom({ id: '1700000000000-5', seq: 5, epoch: 'e1' });
  assert.equal(m.gap({ type: 'gap', reason: 'seq', detected: 'client', after: '1700000000000-5', resume_from: '1700000000000-9', missed: 3 }), null);
  const n = m.tick(tick(9, { skipped: 0 }));
  assert.deepEqual(n, { level: 'error', key: 'seq:demo.x', text: 'demo.x: seq jumped 5 → 9 without a gap notice' });
  assert.equal(m.breaks, 1);
  assert.equal(m.checked, 0, 'the broken tick is not counted as checked');
  assert.equal(m.tick(tick(10)), null, 'the next one follows again');
  assert.equal(m.checked, 1);
});

test('a gap the server announced is no break: the next tick starts a new run', () => {
  const m = new ChannelModel('c');
  m.startFrom({ id: '1700000000000-5', seq: 5, epoch: 'e1' });
  const n = m.gap({ type: 'gap', reason: 'trimmed', after: '1700000000000-5', resume_from: '1700000000000-50', missed: 44 });
  assert.deepEqual(n, { level: 'warn', text: 'Gap on c: 44 ticks trimmed from history before this page could read them; resuming at 1700000000000-50' });
  assert.equal(m.tick(tick(50)), null);
  assert.equal(m.gaps, 1);
  assert.equal(m.breaks, 0);
  assert.equal(m.checked, 0);
});

test('gap notice texts say what was lost and why', () => {
  assert.equal(gapNotice('c', { reason: 'epoch', resume_from: null, missed: null }),
    'Gap on c: the stream was reset (new epoch): history before it is gone; resuming at the next tick');
  assert.equal(gapNotice('c', { reason: 'rollback', resume_from: '5-0', missed: 1 }),
    'Gap on c: a Redis failover rolled the stream back: 1 tick lost; resuming at 5-0');
  assert.equal(gapNotice('c', { reason: 'trimmed', resume_from: '5-0', missed: null }),
    'Gap on c: an unknown number of ticks trimmed from history before this page could read them; resuming at 5-0');
});

test('break notice texts: epoch, uncountable skip, seq jump with what the rate skipped', () => {
  const prev = { id: '1-1', seq: 7, epoch: 'old' };
  assert.deepEqual(breakNotice('c', { reason: 'epoch' }, prev, tick(1, { epoch: 'new' })),
    { level: 'error', key: 'ep:c', text: 'c: epoch changed old → new without a gap notice' });
  assert.deepEqual(breakNotice('c', { reason: 'seq' }, prev, tick(9, { skipped: null })),
    { level: 'error', key: 'skip:c', text: 'c: tick 1700000000000-9 does not say how many ticks were skipped before it' });
  assert.equal(breakNotice('c', { reason: 'seq' }, prev, tick(12, { skipped: 2 })).text, 'c: seq jumped 7 → 12 (2 skipped) without a gap notice');
  assert.equal(replayNotice('c', 1, 0), 'c: replayed 1 tick from history, now live');
});

test('history rows go below the live ones and keep the newest value; the chart stays sorted', () => {
  const m = new ChannelModel('c');
  m.record(tick(10), 'live');
  m.history([tick(1), tick(2), tick(3, { ts: new Date(1700000000000 + 20).toISOString() })]);
  assert.equal(m.last.seq, 10, 'an older history tick does not replace the headline');
  assert.deepEqual(m.older.map((r) => r.t.seq), [1, 2, 3]);
  assert.deepEqual(m.xs, [...m.xs].sort((a, b) => a - b));
  m.history([{ id: 'garbage' }, null]);
  assert.equal(m.older.length, 3, 'rows without a stream id are ignored');
  for (let i = 0; i < 3 * ROW_CAP; i++) m.record(tick(100 + i), 'live');
  assert.ok(m.pending.length <= 2 * ROW_CAP, 'rows waiting to be drawn stay bounded');
});
