// What a user installs: `npm pack` holds exactly the module, its declarations and the
// README; the tarball installs into an empty folder; the README's first example runs
// there against `tickstream --demo` and prints ticks. The declarations name what the
// module exports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as library from '../index.js';
import { BIN, freePort, start, until } from './support.mjs';

const run = promisify(execFile);
const HERE = new URL('..', import.meta.url).pathname;

test('the declarations name every export of the module, and nothing else', () => {
  const dts = readFileSync(join(HERE, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export (?:class|function) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(declared, Object.keys(library).sort());
});

test('npm pack installs into an empty folder and the README\'s first example prints ticks from --demo', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tickstream-pack-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: HERE });
  const [packed] = JSON.parse(stdout);
  assert.deepEqual(packed.files.map((f) => f.path).sort(), ['README.md', 'index.d.ts', 'index.js', 'package.json']);

  const app = join(dir, 'app');
  await run('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'first', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, packed.filename), 'ws@8.23.1'], { cwd: app });

  const readme = readFileSync(join(HERE, 'README.md'), 'utf8');
  const example = readme.match(/```js\n([\s\S]*?)```/)[1];
  assert.match(example, /from "tickstream-client"/);
  writeFileSync(join(app, 'first.mjs'), example);

  // The demo as a newcomer runs it: no Redis, dev mode, the reader token printed.
  const port = await freePort();
  const env = { ...process.env, TICKSTREAM_LISTEN: `127.0.0.1:${port}`, TICKSTREAM_LOG: 'warn' };
  for (const k of ['REDIS_URL', 'TICKSTREAM_JWT_SECRET', 'TICKSTREAM_JWT_PUBLIC_KEY', 'TICKSTREAM_HMAC_SECRET', 'TICKSTREAM_INGEST_TOKEN']) delete env[k];
  const demo = start(BIN, ['--demo'], env);
  t.after(() => demo.kill('SIGKILL'));
  const token = await until('the demo prints its reader token', () => (demo.output.match(/Reader token:\s+(\S+)/) || [])[1]);

  const first = start('node', ['first.mjs'], { ...process.env, TICKSTREAM_TOKEN: token, TICKSTREAM_URL: `http://127.0.0.1:${port}` }, { cwd: app });
  t.after(() => first.kill('SIGKILL'));
  await until('the example prints ticks', () => (first.output.match(/^tick seq=\d+ /gm) || []).length >= 5, 30_000);
  const seqs = [...first.output.matchAll(/^tick seq=(\d+) /gm)].map((m) => Number(m[1]));
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `printed in order, once: ${first.output}`);
});
