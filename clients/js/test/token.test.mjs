// Tokens that expire while the user streams: a token function is called again before
// `exp`, the socket stays open past the first token's expiry, and a 4001 (the function
// failed to deliver in time) becomes a new token and a resumed subscription.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis, Server, client, collect, jwt, produce, until, assertExactlyOnce, unhandled, closeClients } from './support.mjs';

let redis, server;
before(async () => {
  redis = await Redis.start();
  server = await Server.start(redis);
});
after(async () => {
  await closeClients();
  await server?.close(); await redis?.close();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

// Tokens the server accepts for about 3 s more: past `exp`, inside its 30 s leeway.
const shortLived = () => {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ iat: now - 60, exp: now - 27 });
};

test('a token function keeps the socket open past every token\'s expiry, exactly once', async () => {
  let calls = 0;
  const c = client(server.url, { token: async () => { calls++; return shortLived(); } });
  const channel = 'token.refreshed';
  const got = collect(c.subscribe(channel, { since: '0-0' }));
  const producer = produce(() => server, channel, { everyMs: 50 });
  const started = Date.now();
  await until('ticks flow', () => got.ticks.length >= 5);
  // Each token alone would have been closed with 4001 after ~3 s: outlive three of them.
  await until('10 s of refreshed tokens', () => Date.now() - started > 10_000 && calls >= 8, 20_000);
  const ids = await producer.stop();
  await until('every tick', () => got.ticks.at(-1)?.id === ids.at(-1));
  assert.equal(c.states.filter((s) => s.s === 'connected').length, 1, 'one connection all along');
  assertExactlyOnce(assert, got.ticks, await redis.stream(channel));
  await c.close();
});

test('4001 after the token function failed: a new token, a new socket, resumed exactly once', async () => {
  let calls = 0;
  const c = client(server.url, {
    token: async () => {
      calls++;
      if (calls === 2) throw new Error('the token service is down');   // the refresh before exp
      return calls === 1 ? shortLived() : jwt();
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  const channel = 'token.expired';
  const got = collect(c.subscribe(channel, { since: '0-0' }));
  const producer = produce(() => server, channel, { everyMs: 50 });
  await until('closed with 4001 and back', () => c.states.some((s) => s.code === 4001) && c.state === 'connected', 20_000);
  const at = got.ticks.length;
  await until('ticks after the new token', () => got.ticks.length >= at + 5);
  const ids = await producer.stop();
  await until('every tick', () => got.ticks.at(-1)?.id === ids.at(-1));
  assert.deepEqual(errors, ['token_error'], 'the failed refresh was reported');
  assert.equal(calls, 3);
  assertExactlyOnce(assert, got.ticks, await redis.stream(channel));
  assert.deepEqual(got.gaps, []);
  await c.close();
});
