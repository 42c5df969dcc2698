// Exactly once through the library, across everything that drops a connection: a
// graceful restart (1012), a SIGKILL, a Redis restart, a switch of node, a saved
// cursor in a new client, and the server replaying what the client already had.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStore } from '../index.js';
import { Redis, Server, client, collect, produce, until, assertExactlyOnce, unhandled, closeClients } from './support.mjs';

let redis, server, spare;
before(async () => {
  redis = await Redis.start({ persist: true });
  server = await Server.start(redis);
});
after(async () => {
  await closeClients();
  await server?.close(); await spare?.close(); await redis?.close();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

// Subscribes from the start of `channel`, produces while `disrupt` runs, and checks
// the ticks handed over equal the stream Redis holds.
async function throughDisruption(channel, disrupt, { url = () => server.url, clientOptions = {} } = {}) {
  const c = client(url(), clientOptions);
  const sub = c.subscribe(channel, { since: '0-0' });
  const got = collect(sub);
  let currentServer = () => server;
  const producer = produce(() => currentServer(), channel);
  await until('ticks flow', () => got.ticks.length >= 10);
  await disrupt({ setServer: (s) => { currentServer = () => s; } });
  const before = got.ticks.length;
  await until('ticks flow again after it', () => got.ticks.length >= before + 20, 30_000);
  const ids = await producer.stop();
  await until('every produced tick handed over', () => got.ticks.length >= ids.length && got.ticks.at(-1).id === ids.at(-1));
  assertExactlyOnce(assert, got.ticks, await redis.stream(channel));
  assert.deepEqual(got.gaps, [], 'no gap: nothing was lost');
  await c.close();
  return c;
}

test('a graceful restart (1012): reconnects soon, resumes, nothing lost or repeated', async () => {
  const c = await throughDisruption('resume.graceful', async () => {
    const exit = await server.terminate();
    assert.equal(exit.code, 0);
    await server.startAgain();
  });
  const drop = c.states.find((s) => s.s === 'reconnecting');
  assert.equal(drop.code, 1012, 'the close said "server restart"');
});

test('a SIGKILL and restart: resumes from the cursor, exactly once', async () => {
  await throughDisruption('resume.killed', async () => {
    await server.kill9();
    await server.startAgain();
  });
});

test('a Redis restart (append-only file): sockets stay, ticks resume, exactly once', async () => {
  await throughDisruption('resume.redis', async () => {
    await redis.stop();
    await redis.startAgain();
  });
});

test('a switch of node: the client takes the next URL and resumes there', async () => {
  spare = await Server.start(redis);
  const c = await throughDisruption('resume.switch', async ({ setServer }) => {
    setServer(spare);   // the producer moves too: node A is gone for good
    await server.kill9();
  }, { url: () => [server.url, spare.url] });
  assert.ok(c.states.some((s) => s.s === 'connected' && s.url === spare.url), 'connected to the second node');
  await server.startAgain();
});

test('a saved cursor: a new client resumes right after the last tick the old one handed over', async () => {
  const store = memoryStore();
  const channel = 'resume.saved';
  const ids = await server.ingest(channel, Array.from({ length: 30 }, (_, i) => ({ value: i })));
  const first = client(server.url, { store });
  const sub = first.subscribe(channel, { since: '0-0' });
  const seen = [];
  for await (const event of sub) {
    if (event.type === 'tick') seen.push(event);
    if (seen.length === 12) break;   // leaving the loop closes the subscription
  }
  assert.equal(sub.state, 'closed');
  assert.deepEqual(store.get(channel), { id: ids[11], seq: 12, epoch: seen[11].epoch });
  await first.close();

  const more = await server.ingest(channel, Array.from({ length: 10 }, (_, i) => ({ value: 100 + i })));
  const second = client(server.url, { store });
  const got = collect(second.subscribe(channel, { since: '0-0' }));   // the store wins over `since`
  await until('resumed to the newest', () => got.ticks.at(-1)?.id === more.at(-1));
  assert.deepEqual(got.ticks.map((t) => t.id), [...ids.slice(12), ...more]);
  assert.equal(got.ticks[0].seq, 13);
  await second.close();
});
