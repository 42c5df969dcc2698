// The edges a careful user hits: closing mid-handshake, a cursor store that answers
// late or fails, closing a channel and subscribing to it again at once, a handshake
// refused where REST cannot see why, and an SSE client asked to reconnect while fine.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client, TickstreamError } from '../index.js';
import { Redis, Server, client, collect, jwt, until, assertExactlyOnce, unhandled, closeClients } from './support.mjs';

let redis, server, strict;
before(async () => {
  redis = await Redis.start();
  server = await Server.start(redis, { TICKSTREAM_RATE_FREE_WS: '100000/s:100000' });
  strict = await Server.start(redis, { TICKSTREAM_RATE_FREE_WS: '1/m:2' });
});
after(async () => {
  await closeClients();
  await server?.close(); await strict?.close(); await redis?.close();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

test('closing while the socket is still connecting neither throws nor leaves it open', async () => {
  for (let i = 0; i < 5; i++) {
    const c = client(server.url);
    c.subscribe('races.quick', { since: '$' });
    await new Promise((r) => setTimeout(r, i));
    await c.close();
    assert.equal(c.state, 'closed');
  }
  // The process is still here (an uncaught `ws` error would have ended it), and no
  // socket of those clients is left on the server.
  await until('no connection left', async () => (await server.metric('tickstream_connections')) === 0);
});

test('a cursor store that answers late: the subscription waits for it, nothing twice', async () => {
  const channel = 'races.slowstore';
  const ids = await server.ingest(channel, Array.from({ length: 20 }, (_, i) => ({ value: i })));
  const stream = await redis.stream(channel);
  const saved = { id: ids[14], seq: 15, epoch: stream[0].epoch };
  const store = { get: () => new Promise((r) => setTimeout(() => r(saved), 300)), set: () => {} };
  const c = client(server.url, { store });
  const got = collect(c.subscribe(channel));
  const more = await server.ingest(channel, [{ value: 99 }]);
  await until('the newest tick', () => got.ticks.at(-1)?.id === more[0]);
  assertExactlyOnce(assert, got.ticks, await redis.stream(channel), ids[14]);
});

test('a cursor store whose writes fail: reported on the client, never an unhandled rejection', async () => {
  const channel = 'races.badstore';
  const c = client(server.url, { store: { get: () => null, set: async () => { throw new Error('disk full'); } } });
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  const got = collect(c.subscribe(channel, { since: '$' }));
  await until('live', () => c.subscriptions.get(channel)?.state === 'live');
  await server.ingest(channel, [{ value: 1 }, { value: 2 }]);
  await until('both ticks', () => got.ticks.length === 2);
  await until('the failed writes reported', () => errors.length >= 2);
  assert.ok(errors.every((e) => e === 'store_error'));
});

test('a store that throws on get: subscribe says so and the channel stays free', () => {
  const c = new Client({ url: server.url, WebSocket, store: { get: () => { throw new Error('locked'); }, set: () => {} } });
  assert.throws(() => c.subscribe('races.x'), (e) => e instanceof TickstreamError && e.code === 'store_error');
  assert.equal(c.subscriptions.size, 0);
});

test('close and subscribe again at once: the new subscription gets its own replay, not the old one\'s frames', async () => {
  const channel = 'races.again';
  const ids = await server.ingest(channel, Array.from({ length: 50 }, (_, i) => ({ value: i })));
  const c = client(server.url);
  c.subscribe('races.warm', { since: '$' });
  await until('socket open', () => c.state === 'connected');
  for (let round = 0; round < 5; round++) {
    const first = c.subscribe(channel, { since: '$' });
    first.close();
    const second = c.subscribe(channel, { since: '0-0' });
    const got = collect(second);
    await until('the whole replay', () => got.ticks.length === ids.length);
    assert.deepEqual(got.ticks.map((t) => t.id), ids, `round ${round}: every tick from 0-0, once`);
    assert.deepEqual(got.gaps, []);
    second.close();
  }
});

test('a handshake refused by the `ws` bucket: reported as 429 rate_limited and retried after a wait, not hammered', async () => {
  // A subject of its own (buckets live in Redis, shared by the nodes): two `ws` tokens
  // a minute, spent by a first client's handshake and subscribe.
  const token = jwt({ sub: 'races-limited' });
  const spend = client(strict.url, { token });
  const first = spend.subscribe('races.spend', { since: '$' });
  await until('the first client live', () => first.state === 'live');
  await spend.close();
  const c = client(strict.url, { token });
  c.subscribe('races.refused', { since: '$' });
  const refused = await until('a refusal', () => c.states.find((s) => s.s === 'reconnecting' && s.error));
  assert.deepEqual([refused.error.status, refused.error.code], [429, 'rate_limited']);
  assert.ok(refused.delay >= 5000, `waits at least 5 s (${refused.delay} ms)`);
});

test('SSE: reconnect() while connected changes nothing', async () => {
  const c = client(server.url, { transport: 'sse' });
  const sub = c.subscribe('races.sse', { since: '$' });
  await until('live', () => sub.state === 'live');
  const before = c.states.length;
  const got = collect(sub);
  c.reconnect();
  await server.ingest('races.sse', [{ value: 1 }]);
  await until('the tick, on the same stream', () => got.ticks.length === 1);
  assert.equal(c.states.length, before, 'no new connection');
});

test('close() returns once an async store holds the last cursor handed over', async () => {
  const channel = 'races.closewrites';
  const held = new Map();
  const store = { get: () => null, set: (ch, c) => new Promise((r) => setTimeout(() => { held.set(ch, c); r(); }, 50)) };
  const c = client(server.url, { store });
  const got = collect(c.subscribe(channel, { since: '$' }));
  await until('live', () => c.subscriptions.get(channel)?.state === 'live');
  const ids = await server.ingest(channel, Array.from({ length: 10 }, (_, i) => ({ value: i })));
  await until('ten ticks', () => got.ticks.length === 10);
  await c.close();
  assert.equal(held.get(channel)?.id, ids[9], 'the newest cursor is written before close() returns');
});
