// What a user of the library sees of the contract: exact trimmed gaps, conflation's
// skipped chain, live candles, refusals reported once (never retried forever), the
// inbound throttle respected, and REST reads equal to what Redis holds.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { memoryStore } from '../index.js';
import { Redis, Server, client, collect, jwt, produce, until, assertExactlyOnce, unhandled, closeClients } from './support.mjs';

// Sends are recorded, so a test can count what the library asked of the server.
class SpyWebSocket extends WebSocket {
  static sent = [];
  send(data) { SpyWebSocket.sent.push(JSON.parse(data)); super.send(data); }
}
const GENEROUS = '100000/s:100000';

let redis, server, strict;
before(async () => {
  // Small stream nodes, so MAXLEN ~ trims close to the cap and a gap is certain.
  redis = await Redis.start({ extra: ['--stream-node-max-entries', '10'] });
  server = await Server.start(redis, { TICKSTREAM_STREAM_MAXLEN: '100', TICKSTREAM_RATE_FREE_WS: GENEROUS, TICKSTREAM_RATE_FREE_API: GENEROUS });
  // Default-ish buckets where a test needs the server to refuse.
  strict = await Server.start(redis, { TICKSTREAM_RATE_FREE_WS: '2/s:3', TICKSTREAM_RATE_FREE_API: '4/s:4' });
});
after(async () => {
  await closeClients();
  await server?.close(); await strict?.close(); await redis?.close();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

test('a trimmed stream: the gap says exactly how many were missed, then everything kept follows', async () => {
  const channel = 'contract.trimmed', store = memoryStore();
  const first = await server.ingest(channel, Array.from({ length: 10 }, (_, i) => ({ value: i })));
  store.set(channel, { id: first[4], seq: 5, epoch: (await redis.stream(channel))[0].epoch });
  for (let i = 0; i < 5; i++) await server.ingest(channel, Array.from({ length: 100 }, (_, k) => ({ value: 1000 + 100 * i + k })));
  const kept = await redis.stream(channel);
  assert.ok(kept[0].seq > 6, `the stream was trimmed past the cursor (oldest kept seq ${kept[0].seq})`);

  const c = client(server.url, { store });
  const sub = c.subscribe(channel);
  const events = [];
  for await (const e of sub) {
    events.push(e);
    if (e.type === 'tick' && e.id === kept.at(-1).id) break;
  }
  assert.deepEqual(events[0], { type: 'gap', channel, reason: 'trimmed', after: first[4], resume_from: kept[0].id, missed: kept[0].seq - 5 - 1 });
  assertExactlyOnce(assert, events.slice(1), kept);
  await c.close();
});

test('conflation: at most `rate` frames a second, the skipped chain holds, the newest tick arrives', async () => {
  const channel = 'contract.conflated';
  const c = client(server.url);
  const sub = c.subscribe(channel, { since: '$', rate: 5 });
  const got = collect(sub);
  await until('live', () => sub.state === 'live');
  const producer = produce(() => server, channel, { everyMs: 10 });
  await until('ten frames', () => got.ticks.length >= 10);
  const ids = await producer.stop();
  await until('the newest tick', () => got.ticks.at(-1).id === ids.at(-1));
  assert.deepEqual(got.gaps, [], 'the skipped chain holds: no break found');
  const span = (Date.parse(got.ticks.at(-1).ingest_ts) - Date.parse(got.ticks[0].ingest_ts)) / 1000;
  assert.ok(got.ticks.length <= 5 * span + 3, `${got.ticks.length} frames in ${span} s`);
  for (let i = 1; i < got.ticks.length; i++) {
    assert.equal(got.ticks[i].seq, got.ticks[i - 1].seq + got.ticks[i].skipped + 1, 'seq = previous + skipped + 1');
  }
  assert.ok(got.ticks.reduce((n, t) => n + t.skipped, 0) > got.ticks.length, 'most ticks were skipped');
  await c.close();
});

test('live candles arrive as candle events', async () => {
  const channel = 'contract.candles';
  const c = client(server.url);
  const got = collect(c.subscribe(channel, { since: '$', candles: '1s' }));
  await server.ingest(channel, [{ value: 3 }, { value: 7 }, { value: 5 }]);
  const k = await until('a candle with all three', () => got.candles.find((x) => x.count === 3));
  assert.deepEqual([k.type, k.interval, k.open, k.high, k.low, k.close], ['candle', '1s', 3, 7, 3, 5]);
  await c.close();
});

test('a forbidden channel: its iteration ends with the code, once; never retried; the others go on', async () => {
  SpyWebSocket.sent.length = 0;
  const c = client(server.url, { token: jwt({ channels: ['open.*'] }), WebSocket: SpyWebSocket });
  const ok = collect(c.subscribe('open.a', { since: '$' }));
  const errors = [];
  const denied = c.subscribe('secret.a');
  denied.on('error', (e) => errors.push(e.code));
  await assert.rejects((async () => { for await (const _ of denied) { /* nothing arrives */ } })(),
    (e) => e.code === 'forbidden' && e.channel === 'secret.a');
  await server.ingest('open.a', [{ value: 1 }]);
  await until('the allowed channel still ticks', () => ok.ticks.length === 1);
  assert.deepEqual(errors, ['forbidden'], 'reported once');
  assert.equal(SpyWebSocket.sent.filter((m) => m.type === 'subscribe' && m.channel === 'secret.a').length, 1, 'asked once');
  assert.equal(c.state, 'connected');
  await c.close();
});

test('a refused handshake is reported with its status and code, once, and stops', async () => {
  const c = client(server.url, { token: 'not-a-jwt' });
  const sub = c.subscribe('open.b');
  await assert.rejects((async () => { for await (const _ of sub) { /* nothing */ } })(),
    (e) => e.status === 401 && e.code === 'invalid_token');
  assert.equal(c.state, 'closed');
  assert.equal(c.states.filter((s) => s.s === 'closed').length, 1);
  assert.equal(c.states.at(-1).error.code, 'invalid_token');
});

test('an expired token without a function: 4001 is reported as token_expired and the client stops', async () => {
  const now = Math.floor(Date.now() / 1000);
  // Past exp but inside the server's 30 s leeway: accepted, then closed with 4001.
  const c = client(server.url, { token: jwt({ iat: now - 60, exp: now - 28 }) });
  const sub = c.subscribe('open.c', { since: '$' });
  const end = await sub.closed;
  assert.equal(end.code, 'token_expired');
  assert.equal(c.state, 'closed');
});

test('subscribes are paced under the inbound throttle: 30 channels, then a restart, never a 4029', async () => {
  SpyWebSocket.sent.length = 0;
  const c = client(server.url, { WebSocket: SpyWebSocket });
  const subs = Array.from({ length: 30 }, (_, i) => c.subscribe(`contract.many.${i}`, { since: '$' }));
  await until('all 30 live', () => subs.every((s) => s.state === 'live'));
  const exit = await server.terminate();
  assert.equal(exit.code, 0);
  await server.startAgain();
  await until('all 30 live again', () => c.state === 'connected' && subs.every((s) => s.state === 'live'), 30_000);
  assert.deepEqual(c.states.filter((s) => s.code !== undefined).map((s) => s.code), [1012], 'one close: the restart');
  assert.equal(SpyWebSocket.sent.filter((m) => m.type === 'subscribe').length, 60);
  await c.close();
});

test('a rate-limited subscribe is retried until it is accepted', async () => {
  SpyWebSocket.sent.length = 0;
  const c = client(strict.url, { WebSocket: SpyWebSocket });
  const subs = Array.from({ length: 6 }, (_, i) => c.subscribe(`contract.limited.${i}`, { since: '$' }));
  await until('all six live', () => subs.every((s) => s.state === 'live'), 30_000);
  assert.ok(SpyWebSocket.sent.filter((m) => m.type === 'subscribe').length > 6, 'some were refused and asked again');
  await c.close();
});

test('REST under a small bucket: paced by X-RateLimit-Remaining, no request fails', async () => {
  const channel = 'contract.paced';
  await strict.ingest(channel, [{ value: 1 }]);
  const c = client(strict.url);
  const limitedBefore = await strict.metric('tickstream_rate_limited_total{group="api"}');
  for (let i = 0; i < 12; i++) assert.equal((await c.latest(channel)).value, 1);
  assert.equal(await strict.metric('tickstream_rate_limited_total{group="api"}'), limitedBefore, 'never refused');
});

test('history, latest and candles equal what Redis holds', async () => {
  const channel = 'contract.history';
  // 2,400 ticks over 40 minutes of producer time, with volumes: pages of history and
  // of candles are followed, and candles are checked against the ticks themselves.
  const t0 = Date.UTC(2026, 11, 6, 9, 0, 0);
  const ticks = Array.from({ length: 2400 }, (_, i) => ({ ts: new Date(t0 + i * 1000).toISOString(), value: 100 + ((i * 7919) % 101), data: { volume: i % 5 } }));
  const c = client(server.url);
  // Stored through the node without a MAXLEN of 100, so every tick is kept.
  for (let i = 0; i < ticks.length; i += 1000) await strict.ingest(channel, ticks.slice(i, i + 1000));
  const stream = await redis.stream(channel);
  assert.equal(stream.length, 2400);
  const history = [];
  for await (const t of c.history(channel)) history.push(t);
  assert.deepEqual(history.map((t) => [t.id, t.seq]), stream.map((e) => [e.id, e.seq]), 'every tick, pages followed');
  const newest = [];
  for await (const t of c.history(channel, { order: 'desc', limit: 1500 })) newest.push(t.id);
  assert.deepEqual(newest, stream.slice(-1500).reverse().map((e) => e.id));
  const since = [];
  for await (const t of c.history(channel, { since: stream[2000].id, until: stream[2100].id })) since.push(t.id);
  assert.deepEqual(since, stream.slice(2001, 2101).map((e) => e.id));
  assert.equal((await c.latest(channel)).id, stream.at(-1).id);
  assert.equal(await c.latest('contract.nothing'), null);

  const want = new Map();
  for (const t of ticks) {
    const start = Math.floor(Date.parse(t.ts) / 60000) * 60000, k = want.get(start);
    if (!k) want.set(start, { t: new Date(start).toISOString().replace('.000Z', 'Z'), open: t.value, high: t.value, low: t.value, close: t.value, count: 1, volume: t.data.volume });
    else Object.assign(k, { high: Math.max(k.high, t.value), low: Math.min(k.low, t.value), close: t.value, count: k.count + 1, volume: k.volume + t.data.volume });
  }
  const candles = [];
  for await (const k of c.candles(channel, { interval: '1m', since: new Date(t0 - 1).toISOString() })) candles.push(k);
  assert.deepEqual(candles.map(({ t, open, high, low, close, count, volume }) => ({ t: t.replace('.000Z', 'Z'), open, high, low, close, count, volume })), [...want.values()]);
  await c.close();
});

test('Redis restarts without its data: an epoch gap, then the new stream from its first tick', async () => {
  const channel = 'contract.lost';
  const c = client(server.url);
  const sub = c.subscribe(channel, { since: '0-0' });
  const got = collect(sub);
  await server.ingest(channel, [{ value: 1 }, { value: 2 }]);
  await until('two ticks', () => got.ticks.length === 2);
  await redis.stop();
  await redis.startAgain();   // no persistence: every stream is gone
  const fresh = await until('the server stores again', () => server.ingest(channel, [{ value: 3 }]).catch(() => null));
  await until('the new tick', () => got.ticks.at(-1).id === fresh[0]);
  assert.equal(got.gaps.length, 1);
  assert.equal(got.gaps[0].reason, 'epoch');
  assert.equal(got.gaps[0].detected, undefined, 'announced by the server');
  assert.equal(got.ticks.at(-1).seq, 1, 'the new epoch counts from 1');
  assert.notEqual(got.ticks.at(-1).epoch, got.ticks[0].epoch);
  await c.close();
});
