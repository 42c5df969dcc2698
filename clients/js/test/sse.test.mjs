// transport: "sse", chosen explicitly: the same events and the same guarantee over
// /sse/{channel}, across a graceful restart and a kill; a refusal ends only its own
// subscription.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis, Server, client, collect, jwt, produce, until, assertExactlyOnce, unhandled, closeClients } from './support.mjs';

let redis, server;
before(async () => {
  redis = await Redis.start();
  server = await Server.start(redis, { TICKSTREAM_RATE_FREE_WS: '100000/s:100000' });
});
after(async () => {
  await closeClients();
  await server?.close(); await redis?.close();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

test('over SSE: exactly once across a graceful restart and a SIGKILL', async () => {
  const channel = 'sse.resumed';
  const c = client(server.url, { transport: 'sse', WebSocket: undefined });
  const sub = c.subscribe(channel, { since: '0-0' });
  const got = collect(sub);
  const producer = produce(() => server, channel);
  await until('ticks flow', () => got.ticks.length >= 10);
  assert.equal((await server.terminate()).code, 0);
  await server.startAgain();
  let n = got.ticks.length;
  await until('ticks after the restart', () => got.ticks.length >= n + 10, 30_000);
  await server.kill9();
  await server.startAgain();
  n = got.ticks.length;
  await until('ticks after the kill', () => got.ticks.length >= n + 10, 30_000);
  const ids = await producer.stop();
  await until('every tick', () => got.ticks.at(-1)?.id === ids.at(-1));
  assertExactlyOnce(assert, got.ticks, await redis.stream(channel));
  assert.deepEqual(got.gaps, []);
  assert.ok(c.states.some((s) => s.code === 1012 && s.reason === 'restarting'), 'the restart was told by the stream, as the close code it stands for');
  await c.close();
});

test('over SSE: a rate, and a forbidden channel that ends alone', async () => {
  const c = client(server.url, { transport: 'sse', token: jwt({ channels: ['sse.*'] }) });
  const sampled = c.subscribe('sse.sampled', { since: '$', rate: 4 });
  const got = collect(sampled);
  const denied = c.subscribe('other.x');
  const end = await denied.closed;
  assert.deepEqual([end.code, end.status], ['forbidden', 403]);
  await until('live', () => sampled.state === 'live');
  const producer = produce(() => server, 'sse.sampled', { everyMs: 10 });
  await until('frames', () => got.ticks.length >= 6);
  const ids = await producer.stop();
  await until('the newest tick', () => got.ticks.at(-1).id === ids.at(-1));
  assert.deepEqual(got.gaps, []);
  assert.ok(got.ticks.slice(1).every((t) => Number.isInteger(t.skipped)), 'each frame says what it skipped');
  assert.ok(got.ticks.length < ids.length / 2, `${got.ticks.length} frames for ${ids.length} ticks`);
  await c.close();
});
