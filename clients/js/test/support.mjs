// Test harness for tickstream-client: a real redis-server and a real tickstream binary
// of the test's own, on free loopback ports (never the machine's shared Redis), and
// the helpers the tests share. Every process started here is killed by its pid.
//
//   TICKSTREAM_BIN=target/debug/tickstream node --test clients/js/test/
import { spawn, execFile } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { Client } from '../index.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = resolve(process.env.TICKSTREAM_BIN || join(ROOT, 'target/debug/tickstream'));
export const SECRET = 'client-test-secret-0123456789abcdef';
export const INGEST = 'client-test-ingest';
const run = promisify(execFile);

export const freePort = () => new Promise((res, rej) => {
  const s = createServer();
  s.once('error', rej);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
});

/** Waits until `fn` returns something truthy (polled every 25 ms); fails after `timeout`. */
export async function until(what, fn, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out: ${what} (last: ${last})`);
}

const children = new Set();
/** A child process whose output is kept (its last 20,000 characters) in `output`,
 *  `exited` resolving when it ends; killed with the test process at the latest. */
export function start(cmd, args, env, { cwd } = {}) {
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.output = '';
  child.stdout.on('data', (d) => { child.output = (child.output + d).slice(-20_000); });
  child.stderr.on('data', (d) => { child.output = (child.output + d).slice(-20_000); });
  child.exited = new Promise((r) => child.once('exit', (code, signal) => { children.delete(child); r({ code, signal }); }));
  return child;
}
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

/** A redis-server of the test's own; with `persist`, an append-only file that
 *  survives a restart (a Redis restart then loses nothing). */
export class Redis {
  constructor(port, dir, persist) { Object.assign(this, { port, dir, persist }); }
  static async start({ persist = false, extra = [] } = {}) {
    const r = new Redis(await freePort(), mkdtempSync(join(tmpdir(), 'tickstream-js-')), persist);
    r.extra = extra;
    await r.startAgain();
    return r;
  }
  get url() { return `redis://127.0.0.1:${this.port}`; }
  async startAgain() {
    this.child = start('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir,
      '--save', '', '--appendonly', this.persist ? 'yes' : 'no', '--appendfsync', 'always', ...this.extra], process.env);
    await until('redis answers', async () => (await this.cli('PING')).trim() === 'PONG');
  }
  async cli(...args) {
    const { stdout } = await run('redis-cli', ['-p', String(this.port), '--raw', ...args]);
    return stdout;
  }
  /** Stops it as an operator would (its data written first when it persists). */
  async stop() {
    this.child.kill('SIGTERM');
    await this.child.exited;
  }
  async close() {
    if (this.child.exitCode === null && this.child.signalCode === null) { this.child.kill('SIGKILL'); await this.child.exited; }
    rmSync(this.dir, { recursive: true, force: true });
  }
  /** The stream of `channel` as Redis holds it: `[{id, seq, epoch}]` in id order. */
  async stream(channel) {
    const lines = (await this.cli('XRANGE', streamKey(channel), '-', '+')).split('\n').filter(Boolean);
    const out = [];
    for (let i = 0; i + 2 < lines.length + 1; i += 3) {
      const body = lines[i + 2] ?? '';
      out.push({ id: lines[i], seq: Number((body.match(/"seq":(\d+)/) || [])[1]), epoch: (body.match(/"epoch":"([^"]+)"/) || [])[1] });
    }
    return out;
  }
}

/** The stream key of a channel (PROTOCOL §1: partition from SHA-256, 16 partitions). */
export function streamKey(channel, partitions = 16) {
  const n = createHash('sha256').update(channel).digest().readUInt32BE(0) % partitions;
  return `tickstream:{p${n}}:s:${channel}`;
}

/** A tickstream binary on its own port and the given Redis. */
export class Server {
  constructor(port, redis, env) { Object.assign(this, { port, redis, env }); }
  static async start(redis, env = {}) {
    const s = new Server(await freePort(), redis, env);
    await s.startAgain();
    return s;
  }
  get url() { return `http://127.0.0.1:${this.port}`; }
  async startAgain() {
    const env = { ...process.env, TICKSTREAM_IP_RATE: 'off', TICKSTREAM_LOG: 'warn', ...this.env,
      REDIS_URL: this.redis.url, TICKSTREAM_LISTEN: `127.0.0.1:${this.port}`,
      TICKSTREAM_JWT_SECRET: SECRET, TICKSTREAM_INGEST_TOKEN: INGEST };
    for (const k of ['TICKSTREAM_HMAC_SECRET', 'TICKSTREAM_JWT_PUBLIC_KEY']) delete env[k];
    this.child = start(BIN, [], env);
    await until('tickstream answers /readyz', async () => {
      if (this.child.exitCode !== null) throw new Error(`tickstream exited: ${this.child.output}`);
      return (await fetch(this.url + '/readyz')).ok;
    });
  }
  /** Graceful shutdown: every socket gets 1012. */
  async terminate() {
    this.child.kill('SIGTERM');
    return this.child.exited;
  }
  async kill9() {
    this.child.kill('SIGKILL');
    return this.child.exited;
  }
  async close() {
    if (this.child.exitCode === null && this.child.signalCode === null) await this.kill9();
  }
  /** Posts ticks; returns their ids. */
  async ingest(channel, ticks) {
    const body = ticks.map((t) => ({ channel, ...t }));
    const res = await fetch(this.url + '/api/v1/ingest', { method: 'POST', body: JSON.stringify(body),
      headers: { Authorization: `Bearer ${INGEST}`, 'Content-Type': 'application/json' } });
    if (res.status !== 201) throw new Error(`ingest: HTTP ${res.status} ${await res.text()}`);
    return (await res.json()).results.map((r) => r.id);
  }
  async metric(name) {
    const text = await (await fetch(this.url + '/metrics')).text();
    return text.split('\n').filter((l) => l.startsWith(name)).reduce((a, l) => a + Number(l.split(' ').pop()), 0);
  }
}

/** An HS256 JWT for the test secret; `channels: ["*"]` and 1 h unless told. */
export function jwt(claims = {}, secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub: 'js-client-test', iat: now, exp: now + 3600, channels: ['*'], ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Posts ticks to `server()` (a function, so it follows restarts) about every
 *  `everyMs`, `batch` at a time, until stopped; a refused post (server down) is tried
 *  again. `stop()` resolves with every id stored. */
export function produce(server, channel, { everyMs = 20, batch = 1 } = {}) {
  let running = true, n = 0;
  const ids = [];
  const done = (async () => {
    while (running) {
      const ticks = Array.from({ length: batch }, () => ({ value: ++n, key: `k${n}` }));
      try { ids.push(...await server().ingest(channel, ticks)); } catch { n -= batch; }
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return { ids, stop: async () => { running = false; await done; return ids; } };
}

/** A client for the server(s) with ws, a token and quick backoff, recording its states. */
const made = new Set();
export function client(url, options = {}) {
  const c = new Client({ url, token: jwt(), WebSocket, backoff: { base: 100, cap: 1000 }, ...options });
  made.add(c);
  c.states = [];
  c.on('state', (s, info) => c.states.push({ s, ...info }));
  return c;
}

/** Closes every client a test made, also those a failed assertion left open (they
 *  would keep the test process alive, reconnecting). */
export async function closeClients() {
  await Promise.all([...made].map((c) => c.close()));
  made.clear();
}

/** Collects a subscription's ticks and gaps through `on`, as a user of events would. */
export function collect(sub) {
  const got = { ticks: [], gaps: [], candles: [], errors: [] };
  sub.on('tick', (t) => got.ticks.push(t));
  sub.on('gap', (g) => got.gaps.push(g));
  sub.on('candle', (k) => got.candles.push(k));
  sub.on('error', (e) => got.errors.push(e));
  return got;
}

/** The contract: the ids handed over are exactly the stream's after `after`, in order. */
export function assertExactlyOnce(assert, got, stream, after = '0-0') {
  const want = stream.filter((e) => compare(e.id, after) > 0).map((e) => e.id);
  const ids = got.map((t) => t.id);
  assert.equal(new Set(ids).size, ids.length, 'no tick handed over twice');
  assert.deepEqual(ids, want, 'every stored tick after the cursor, in order');
  for (let i = 1; i < got.length; i++) assert.equal(got[i].seq, got[i - 1].seq + 1, `seq continuous at ${got[i].id}`);
}
function compare(a, b) {
  const [am, an] = a.split('-').map(BigInt), [bm, bn] = b.split('-').map(BigInt);
  return am === bm ? (an === bn ? 0 : an < bn ? -1 : 1) : am < bm ? -1 : 1;
}

/** Unhandled rejections are bugs of the library: recorded, and asserted on. */
export const unhandled = [];
process.on('unhandledRejection', (e) => unhandled.push(e));
