// The library's pure parts, without a server: the continuity check a user relies on,
// the iterator's buffer, how errors reach the user, token timing, the cursor stores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, Subscription, TickstreamError, compareIds, localStorageStore, refreshDelay } from '../index.js';

// A subscription fed frames by hand, as a transport would.
function fed(cursor = null) {
  const saved = [];
  const sub = new Subscription({ saveCursor: (ch, c) => saved.push(c), unsubscribed: () => {} }, 'c', {}, cursor);
  const events = [];
  for (const type of ['tick', 'gap']) sub.on(type, (e) => events.push(type === 'tick' ? e.seq : { gap: e.reason, missed: e.missed, detected: e.detected }));
  sub.subscribing();
  sub.frame({ type: 'subscribed', channel: 'c', epoch: 'e1' });
  return { sub, events, saved };
}
const tick = (seq, extra = {}) => ({ type: 'tick', channel: 'c', id: `1000-${seq}`, seq, epoch: 'e1', ...extra });

test('ids compare as numbers, part by part, beyond 2^53', () => {
  assert.equal(compareIds('9-0', '10-0'), -1);
  assert.equal(compareIds('10-2', '10-10'), -1);
  assert.equal(compareIds('18446744073709551615-1', '18446744073709551615-0'), 1);
  assert.equal(compareIds('5-5', '5-5'), 0);
});

test('a repeated or older tick is never handed over twice', () => {
  const f = fed();
  for (const s of [1, 2, 2, 1, 3]) f.sub.frame(tick(s));
  assert.deepEqual(f.events, [1, 2, 3]);
  assert.deepEqual(f.sub.cursor, { id: '1000-3', seq: 3, epoch: 'e1' });
});

test('a seq jump the server did not announce becomes a gap event, never hidden', () => {
  const f = fed();
  for (const s of [1, 2, 5, 6]) f.sub.frame(tick(s));
  assert.deepEqual(f.events, [1, 2, { gap: 'seq', missed: 2, detected: 'client' }, 5, 6]);
});

test('after a server gap the jump is expected: no second gap', () => {
  const f = fed();
  f.sub.frame(tick(1));
  f.sub.frame({ type: 'gap', channel: 'c', reason: 'trimmed', missed: 7 });
  f.sub.frame(tick(9));
  f.sub.frame(tick(10));
  assert.deepEqual(f.events, [1, { gap: 'trimmed', missed: 7, detected: undefined }, 9, 10]);
});

test('an epoch change without a gap frame is reported as an epoch gap', () => {
  const f = fed();
  f.sub.frame(tick(1));
  f.sub.frame({ ...tick(1), id: '2000-0', epoch: 'e2' });
  assert.deepEqual(f.events, [1, { gap: 'epoch', missed: null, detected: 'client' }, 1]);
});

test('under a rate the skipped chain proves continuity; a broken chain is a gap', () => {
  const f = fed({ id: '1000-10', seq: 10, epoch: 'e1' });
  f.sub.frame(tick(15, { skipped: 4 }));   // 11..14 skipped
  f.sub.frame(tick(20, { skipped: 4 }));   // 16..19
  f.sub.frame(tick(30, { skipped: 4 }));   // 21..24 skipped, 25..29 lost
  assert.deepEqual(f.events, [15, 20, { gap: 'seq', missed: 5, detected: 'client' }, 30]);
});

test('skipped: null is accepted first after a subscribe, and is a break anywhere else', () => {
  const f = fed({ id: '1000-10', seq: 10, epoch: 'e1' });
  f.sub.frame(tick(15, { skipped: null }));
  f.sub.frame(tick(20, { skipped: null }));
  assert.deepEqual(f.events, [15, { gap: 'seq', missed: null, detected: 'client' }, 20]);
});

test('frames before the subscription\'s own `subscribed` belong to the old one: ignored', () => {
  const f = fed();
  f.sub.frame(tick(1));
  f.sub.subscribing();                 // a resubscribe is in flight
  f.sub.frame(tick(2));                // still the old subscription's
  f.sub.frame({ type: 'subscribed', channel: 'c', epoch: 'e1' });
  f.sub.frame(tick(2));
  assert.deepEqual(f.events, [1, 2]);
  assert.equal(f.sub.state, 'replaying');
});

test('events wait in a buffer only while an iterator runs; the cursor moves as it yields', async () => {
  const f = fed();
  for (let s = 1; s <= 100; s++) f.sub.frame(tick(s));   // nobody iterates: nothing kept
  assert.equal(f.sub.cursor.seq, 100, 'handed to listeners at once');
  const it = f.sub[Symbol.asyncIterator]();
  for (let s = 101; s <= 103; s++) f.sub.frame(tick(s));
  assert.equal(f.sub.cursor.seq, 100, 'buffered, not yet handed over');
  assert.equal((await it.next()).value.seq, 101);
  assert.equal(f.sub.cursor.seq, 101);
  assert.deepEqual(f.saved.at(-1), { id: '1000-101', seq: 101, epoch: 'e1' }, 'the store keeps what was handed over');
  await it.return();
  assert.equal(f.sub.state, 'closed', 'leaving the loop closes the subscription');
});

test('a final error reaches the iterator once, and ends it', async () => {
  const f = fed();
  const it = f.sub[Symbol.asyncIterator]();
  f.sub.frame(tick(1));
  f.sub.end(new TickstreamError('forbidden', 'no', { channel: 'c' }));
  assert.equal((await it.next()).value.seq, 1, 'what came before is still handed over');
  await assert.rejects(it.next(), (e) => e.code === 'forbidden');
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(await f.sub.closed, f.sub.error);
});

test('an error nobody listened for waits for the next iterator, once', async () => {
  const { sub } = fed();
  sub.end(new TickstreamError('bad_rate', 'no'));
  await assert.rejects(sub[Symbol.asyncIterator]().next(), (e) => e.code === 'bad_rate');
  assert.deepEqual(await sub[Symbol.asyncIterator]().next(), { value: undefined, done: true });
});

test('a token is refreshed before exp, by a fifth of its lifetime (1 to 60 s), not sooner than 1 s', () => {
  const now = 1_800_000_000_000, s = now / 1000;
  const token = (claims) => `h.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.s`;
  assert.equal(refreshDelay(token({ iat: s, exp: s + 3600 }), now), 3540_000);
  assert.equal(refreshDelay(token({ iat: s, exp: s + 10 }), now), 8000);
  assert.equal(refreshDelay(token({ exp: s - 20 }), now), 1000);
  assert.equal(refreshDelay('not-a-jwt', now), null);
});

test('localStorageStore: writes are batched, bad saved data is ignored, a throwing storage is harmless', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const data = new Map([['k', JSON.stringify({ good: { id: '1-0', seq: 1, epoch: 'e' }, 'bad name!': { id: '1-0' }, bad: { id: 'x' } })]]);
  let writes = 0;
  const storage = { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => { writes++; data.set(k, v); } };
  const store = localStorageStore({ key: 'k', storage, delay: 20 });
  assert.deepEqual(store.entries(), { good: { id: '1-0', seq: 1, epoch: 'e' } });
  for (let i = 0; i < 50; i++) store.set('c', { id: `2-${i}`, seq: i, epoch: 'e' });
  t.mock.timers.tick(19);
  assert.equal(writes, 0);
  t.mock.timers.tick(1);
  assert.equal(writes, 1, 'fifty cursors, one write');
  assert.deepEqual(JSON.parse(data.get('k')).c, { id: '2-49', seq: 49, epoch: 'e' });
  const broken = localStorageStore({ storage: { getItem: () => { throw new Error('denied'); }, setItem: () => { throw new Error('quota'); } }, delay: 1 });
  assert.doesNotThrow(() => { broken.set('c', { id: '1-0', seq: 1, epoch: 'e' }); broken.flush(); });
  assert.deepEqual(broken.get('c'), { id: '1-0', seq: 1, epoch: 'e' });
});

test('a tick listener reading sub.cursor sees the tick it is given', () => {
  const f = fed();
  const seen = [];
  f.sub.on('tick', (t) => seen.push([t.seq, f.sub.cursor.seq]));
  f.sub.frame(tick(1)); f.sub.frame(tick(2));
  assert.deepEqual(seen, [[1, 1], [2, 2]]);
});

test('localStorageStore where the browser blocks site storage: reading localStorage throws, the store still works', () => {
  const had = Object.getOwnPropertyDescriptor(globalThis, 'localStorage');
  Object.defineProperty(globalThis, 'localStorage', { configurable: true, get() { throw new Error('SecurityError'); } });
  try {
    const store = localStorageStore({ delay: 1 });
    assert.doesNotThrow(() => { store.set('c', { id: '1-0', seq: 1, epoch: 'e' }); store.flush(); });
    assert.deepEqual(store.get('c'), { id: '1-0', seq: 1, epoch: 'e' });
  } finally {
    if (had) Object.defineProperty(globalThis, 'localStorage', had); else delete globalThis.localStorage;
  }
});

test('a gap said again after a resume that came before its tick is handed over once', () => {
  const f = fed({ id: '1000-1', seq: 1, epoch: 'e1' });
  const gap = { type: 'gap', channel: 'c', reason: 'trimmed', after: '1000-1', resume_from: '1000-9', missed: 7 };
  f.sub.frame(gap);
  f.sub.subscribing();   // the socket dropped before the tick at 1000-9
  f.sub.frame({ type: 'subscribed', channel: 'c', epoch: 'e1' });
  f.sub.frame({ ...gap });
  f.sub.frame(tick(9));
  assert.deepEqual(f.events, [{ gap: 'trimmed', missed: 7, detected: undefined }, 9]);
});

test('a gap that grew while the client reconnected: only what it adds is handed over', () => {
  const f = fed({ id: '1000-10', seq: 10, epoch: 'e1' });
  const missedOf = [];
  f.sub.on('gap', (g) => missedOf.push([g.after, g.resume_from, g.missed]));
  f.sub.frame({ type: 'gap', channel: 'c', reason: 'trimmed', after: '1000-10', resume_from: '1000-50', missed: 39 });
  f.sub.subscribing();
  f.sub.frame({ type: 'subscribed', channel: 'c', epoch: 'e1' });
  f.sub.frame({ type: 'gap', channel: 'c', reason: 'trimmed', after: '1000-10', resume_from: '1000-60', missed: 49 });
  f.sub.frame(tick(60));
  assert.deepEqual(missedOf, [['1000-10', '1000-50', 39], ['1000-50', '1000-60', 10]], '39 + 10 = 49 in all');
  assert.equal(f.events.at(-1), 60, 'no break of our own after them');
});

test('subscribe refuses what the server would close the socket for, before anything is sent', () => {
  const c = new Client({ url: 'http://127.0.0.1:1', token: 't', WebSocket: class {} });
  const bad = [[{ seq: '5' }, 'bad_seq'], [{ seq: -1 }, 'bad_seq'], [{ seq: 5n }, 'bad_seq'], [{ seq: 1.5 }, 'bad_seq'],
    [{ epoch: 5 }, 'bad_epoch'], [{ epoch: '' }, 'bad_epoch'], [{ epoch: 'x'.repeat(65) }, 'bad_epoch'], [{ rate: 0 }, 'bad_rate']];
  for (const [options, code] of bad) {
    assert.throws(() => c.subscribe('c', { since: '1-0', ...options }), (e) => e instanceof TickstreamError && e.code === code, JSON.stringify(options, (k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
  }
  assert.equal(c.subscriptions.size, 0, 'nothing subscribed, no socket opened');
  assert.equal(c.state, 'idle');
});
