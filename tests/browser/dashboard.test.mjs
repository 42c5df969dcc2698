// The dashboard in a real browser (docs/TESTING.md "Browser tests"): Debian's
// chromium, driven by playwright-core, against a real `tickstream --demo` on its own
// redis-server. What a first-time user does: open the printed dev URL, see ticks
// arrive, reload, change a preference, sample at a lower rate, live through a server
// restart, then ask for every tick again.
//
//   TICKSTREAM_BIN=target/debug/tickstream node tests/browser/dashboard.test.mjs
//
// Screenshots and a summary go to $ARTIFACTS (default target/browser-artifacts).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = resolve(process.env.TICKSTREAM_BIN || join(ROOT, 'target/debug/tickstream'));
const ART = resolve(process.env.ARTIFACTS || join(ROOT, 'target/browser-artifacts'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 20_000;
const DEMO = ['demo.BTC-USD', 'demo.ETH-USD', 'demo.iss.cabin-temp', 'demo.slow.battery'];

mkdirSync(ART, { recursive: true });
const summary = { steps: [] };
const started = Date.now();
const step = (name, detail = {}) => {
  summary.steps.push({ name, at_ms: Date.now() - started, ...detail });
  console.log(`ok - ${name}${Object.keys(detail).length ? ' ' + JSON.stringify(detail) : ''}`);
};
function check(cond, what) {
  if (!cond) throw new Error(`not ok: ${what}`);
}

const freePort = () => new Promise((res, rej) => {
  const s = createServer();
  s.once('error', rej);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
});

const children = [];
function run(cmd, args, env) {
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  child.output = '';
  child.stdout.on('data', (d) => { child.output += d; });
  child.stderr.on('data', (d) => { child.output += d; });
  child.exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  return child;
}

async function until(what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what} (last: ${last})`);
}

// Our own redis-server on a free port (never the shared one), kept running across
// the tickstream restart.
const redisPort = await freePort(), httpPort = await freePort();
const redisDir = mkdtempSync(join(tmpdir(), 'tickstream-browser-'));
const redis = run('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', redisDir, '--save', '', '--appendonly', 'no'], process.env);

// Dev mode, as a newcomer runs it: no signing key, no ingest token in the environment.
const serverEnv = { ...process.env, REDIS_URL: `redis://127.0.0.1:${redisPort}`, TICKSTREAM_LISTEN: `127.0.0.1:${httpPort}`, TICKSTREAM_LOG: 'warn' };
for (const k of ['TICKSTREAM_JWT_SECRET', 'TICKSTREAM_JWT_PUBLIC_KEY', 'TICKSTREAM_HMAC_SECRET', 'TICKSTREAM_INGEST_TOKEN']) delete serverEnv[k];
async function startServer() {
  const server = run(BIN, ['--demo'], serverEnv);
  const url = await until('the server prints its dashboard URL', () => (server.output.match(/Dashboard:\s+(\S+)/) || [])[1]);
  return { server, url };
}

let browser;
const problems = [];   // console errors, page errors, CSP violations: none allowed
let networkDown = false;   // while the server restarts, failed connections are expected
try {
  await until('redis answers', async () => {
    const probe = run('redis-cli', ['-p', String(redisPort), 'ping'], process.env);
    await probe.exited;
    return probe.output.includes('PONG');
  });
  let { server, url } = await startServer();
  check(url.includes('#token='), `the dev URL carries the token in its fragment: ${url}`);

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
  const page = await context.newPage();
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
  });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    const expected = networkDown && /WebSocket connection to|Failed to load resource|ERR_CONNECTION_REFUSED|Failed to fetch/.test(text);
    if (!expected || text.startsWith('CSP violation')) problems.push(`console: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

  const cards = () => page.locator('article.card');
  const card = (channel) => page.locator(`article.card[data-channel="${channel}"]`);
  const state = () => page.locator('#status').getAttribute('data-state');
  // `skipped`: what the rate left out before a row (the Skipped column; none = 0).
  const rows = (channel) => card(channel).locator('tbody tr').evaluateAll((trs) =>
    trs.map((tr) => ({ id: tr.dataset.id, seq: Number(tr.dataset.seq), skipped: Number(tr.dataset.skipped ?? 0), sampled: 'skipped' in tr.dataset })));
  const sampleNote = (channel) => card(channel).locator('.sample-note');
  // The card's ticks/s (the channel's rate) and, from its tooltip, the frames/s received.
  const rates = (channel) => card(channel).locator('.rate').evaluate((dd) => ({
    ticks: Number(dd.textContent), frames: Number((dd.title.match(/\(([\d.]+)\/s now\)/) || [])[1]) }));
  const checkText = (channel) => card(channel).locator('.check').textContent();
  const checked = async (channel) => Number(((await checkText(channel)).match(/continuous \((\d+)\)/) || [])[1] || 0);

  // Rows newest first: every id once, and each seq the next one's + skipped + 1.
  async function assertContinuous(channel, what) {
    const r = await rows(channel);
    check(r.length > 0, `${what}: ${channel} has rows`);
    check(new Set(r.map((x) => x.id)).size === r.length, `${what}: no duplicate rows on ${channel}`);
    for (let i = 1; i < r.length; i++) {
      check(r[i - 1].seq === r[i].seq + r[i - 1].skipped + 1,
        `${what}: ${channel} seq continuous at ${r[i].seq} → ${r[i - 1].seq} (${r[i - 1].skipped} skipped)`);
    }
    check((await checkText(channel)).startsWith('✓'), `${what}: the page's own seq check holds on ${channel}`);
    return r;
  }

  // 0. The page's modules, as served: the client library is the npm package's own file
  //    (one source of truth), and every module has the page's CSP and no-cache.
  const base = url.replace(/[#?].*$/, '').replace(/\/$/, '');
  const served = await fetch(`${base}/tickstream-client.js`);
  check(served.ok && (await served.text()) === readFileSync(join(ROOT, 'clients/js/index.js'), 'utf8'),
    '/tickstream-client.js is clients/js/index.js, byte for byte');
  for (const path of ['/app.js', '/tickstream-client.js']) {
    const res = await fetch(base + path);
    check(res.headers.get('content-type').startsWith('text/javascript'), `${path} is served as JavaScript`);
    check((res.headers.get('content-security-policy') || '').includes("script-src 'self'"), `${path} carries the page's CSP`);
    check(res.headers.get('cache-control') === 'no-cache', `${path} is revalidated (no-cache)`);
  }
  step('the page and the client library it is built on are served from their own files');

  // 1. First open: subscribed by itself to every channel the token may read, live.
  const opened = Date.now();
  await page.goto(url);
  check(!page.url().includes('token'), `the token is removed from the address bar: ${page.url()}`);
  await until('a card per demo channel', async () => (await cards().count()) === DEMO.length);
  await until('every channel live', async () => {
    for (const c of DEMO) if ((await card(c).locator('.badge').textContent()) !== 'live') return false;
    return (await state()) === 'live';
  });
  const liveAfter = Date.now() - opened;
  await until('live ticks arrive', async () => (await checked('demo.BTC-USD')) >= 5);
  const ticksAfter = Date.now() - opened;
  const rate = await until('ticks per second shown', async () => {
    const r = Number(await card('demo.BTC-USD').locator('.rate').textContent());
    return r > 0 && r;
  });
  check(/ms$/.test(await card('demo.BTC-USD').locator('.latency').textContent()), 'last-tick latency shown');
  check((await card('demo.BTC-USD').locator('tbody tr').count()) >= 100, 'history rows filled at once');
  await assertContinuous('demo.BTC-USD', 'first open');
  check((await page.inputValue('#rate')) === '15', 'the rate is 15/s by default');
  check(await sampleNote('demo.BTC-USD').isVisible(), 'the ticks table says it is a sample');
  check((await sampleNote('demo.BTC-USD').textContent()).includes('at most 15 ticks/s'), 'the sample note names the rate');
  await page.screenshot({ path: join(ART, 'dashboard.png'), fullPage: true });
  step('first open: four channels live, ticks arriving', { live_after_ms: liveAfter, ticks_after_ms: ticksAfter, btc_ticks_per_s: rate });

  // 2. Reload: resumes every channel from its cursor; nothing shown twice.
  const before = await rows('demo.BTC-USD');
  await page.reload();
  await until('live again after the reload', async () => (await state()) === 'live' && (await checked('demo.BTC-USD')) >= 3);
  // History up to the cursor (REST) below, resumed ticks after it (WebSocket) above.
  await until('the reloaded table spans the cursor', async () => {
    const r = await rows('demo.BTC-USD');
    return r.length && r[r.length - 1].seq <= before[0].seq && r[0].seq > before[0].seq;
  });
  const after = await assertContinuous('demo.BTC-USD', 'after reload');
  for (const c of DEMO.slice(1)) await until(`${c} continuous after the reload`, async () => (await rows(c)).length > 0);
  for (const c of DEMO.slice(1)) await assertContinuous(c, 'after reload');
  step('reload: resumed, seq continuous, no duplicate rows', { rows: after.length });

  // 3. Preferences survive a reload. The rate goes down to 5/s (below demo.BTC-USD's
  //    10 ticks/s): resubscribed from the cursors, frames now skip ticks, the check
  //    counts them and still holds, and ticks/s stays the channel's rate while the
  //    frames come at most 5 a second. (One reload for all three: each page load costs
  //    the free tier's REST and subscribe buckets.)
  await page.click('#theme');
  const checkedBefore = await checked('demo.BTC-USD');
  await page.selectOption('#rate', '5');   // first: the interval change then reloads the candles once
  await page.selectOption('#interval', '1s');
  await until('1 s candles drawn', async () => (await card('demo.BTC-USD').locator('.candle-caption').textContent()).includes('1s'));
  await until('the sample note says 5/s', async () => (await sampleNote('demo.BTC-USD').textContent()).includes('at most 5 ticks/s'));
  await until('live again at 5/s', async () => (await state()) === 'live' && (await checked('demo.BTC-USD')) > checkedBefore + 5);
  const skippedSeen = await until('a sampled row that skipped ticks', async () =>
    Math.max(0, ...(await rows('demo.BTC-USD')).filter((x) => x.sampled).map((x) => x.skipped)));
  const sampled = await until('ticks/s counts skipped ticks, frames at most 5/s', async () => {
    const r = await rates('demo.BTC-USD');
    return r.frames > 0 && r.frames <= 5.5 && r.ticks >= 1.5 * r.frames && r;
  });
  for (const c of DEMO) await assertContinuous(c, 'at 5/s');
  await page.reload();
  await until('live after the preference reload', async () => (await state()) === 'live' && (await checked('demo.BTC-USD')) >= 3);
  check((await page.locator('html').getAttribute('data-theme')) === 'dark', 'the dark theme survived the reload');
  check((await page.inputValue('#interval')) === '1s', 'the candle interval survived the reload');
  check((await page.inputValue('#rate')) === '5', 'the rate survived the reload');
  check((await cards().count()) === DEMO.length, 'the channel choice survived the reload');
  check((await sampleNote('demo.BTC-USD').textContent()).includes('at most 5 ticks/s'), 'the sample note after the reload');
  await until('sampled rows after the reload', async () => (await rows('demo.BTC-USD')).some((x) => x.sampled && x.skipped > 0));
  await assertContinuous('demo.BTC-USD', 'after the preference reload');
  await page.screenshot({ path: join(ART, 'dashboard-dark.png'), fullPage: true });
  step('preferences: theme, candle interval and rate kept; 5/s sampled, skipped counted, check holds',
    { max_skipped: skippedSeen, btc_ticks_per_s: sampled.ticks, btc_frames_per_s: sampled.frames });

  // 4. Server restart (SIGTERM, same port, same Redis), still at 5/s: the page resumes by itself.
  await until('ticks flowing before the restart', async () => (await checked('demo.BTC-USD')) >= 3);
  const lastSeq = (await rows('demo.BTC-USD'))[0].seq;
  networkDown = true;
  server.kill('SIGTERM');
  const exit = await server.exited;
  check(exit.code === 0, `the server exits 0 on SIGTERM (${JSON.stringify(exit)})`);
  await until('the page shows it is reconnecting', async () => (await state()) === 'reconnecting');
  const countdown = await page.locator('#countdown').textContent();
  await page.screenshot({ path: join(ART, 'dashboard-reconnecting.png'), fullPage: true });
  ({ server } = await startServer());
  await until('live again after the restart', async () => (await state()) === 'live', 30_000);
  networkDown = false;
  await until('new ticks after the restart', async () => (await rows('demo.BTC-USD'))[0].seq > lastSeq + 3);
  await assertContinuous('demo.BTC-USD', 'after the restart');
  const notices = await page.locator('#notices').textContent();
  check(!/Gap on|duplicate|jumped|without a gap|does not say/.test(notices), `no gap or duplicate after a clean restart: ${notices}`);
  await page.screenshot({ path: join(ART, 'dashboard-restarted.png'), fullPage: true });
  step('restart: reconnected by itself and resumed', { countdown, last_seq_before: lastSeq });

  // 5. Back to every tick: no rate, no sample note, rows one seq apart again.
  const seqAtAll = (await rows('demo.BTC-USD'))[0].seq;
  await page.selectOption('#rate', '0');
  await until('the sample note hidden', async () => !(await sampleNote('demo.BTC-USD').isVisible()));
  await until('every tick again', async () => {
    const r = await rows('demo.BTC-USD');
    return r[0].seq > seqAtAll + 10 && r.slice(0, 10).every((x) => !x.sampled);
  });
  await assertContinuous('demo.BTC-USD', 'at all');
  check(!/duplicate|jumped|without a gap|does not say/.test(await page.locator('#notices').textContent()), 'no break notice after the rate changes');
  step('rate all: every tick, one seq apart');

  check(problems.length === 0, `no console error or CSP violation:\n  ${problems.join('\n  ')}`);
  step('no console error, no CSP violation');
  summary.result = 'pass';
} catch (e) {
  summary.result = 'fail';
  summary.error = String(e && e.stack || e);
  summary.problems = problems;
  console.error(summary.error);
  if (problems.length) console.error(problems.join('\n'));
  for (const c of children) if (c.output) console.error(`--- ${c.spawnargs.join(' ')}\n${c.output.slice(-4000)}`);
  process.exitCode = 1;
} finally {
  writeFileSync(join(ART, 'summary.json'), JSON.stringify(summary, null, 2));
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(redisDir, { recursive: true, force: true });
}
