// The page as the server serves it: every file of static/ has its row in the server's
// asset table (src/http/ops.rs), every module the page imports is one the server
// serves, and the client library it imports is the npm package's own file. A module
// added without its row would be a 404 in the browser and a page that never starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const STATIC = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = join(STATIC, '..');
const table = new Map([...readFileSync(join(ROOT, 'src/http/ops.rs'), 'utf8')
  .matchAll(/\("([^"]+)", \w+, include_str!\("\.\.\/\.\.\/([^"]+)"\)\)/g)].map((m) => [m[1], m[2]]));
const pageFiles = readdirSync(STATIC).filter((f) => /\.(js|css|html)$/.test(f));

test('every file of static/ is served, from that file', () => {
  for (const f of pageFiles) {
    const path = f === 'index.html' ? '/' : '/' + f;
    assert.equal(table.get(path), 'static/' + f, `${path} in the asset table of src/http/ops.rs`);
  }
});

test('the client library is served from clients/js/index.js, the npm package itself', () => {
  assert.equal(table.get('/tickstream-client.js'), 'clients/js/index.js');
  const lib = readFileSync(join(ROOT, 'clients/js/index.js'), 'utf8');
  for (const f of pageFiles.filter((x) => x.endsWith('.js'))) {
    const src = readFileSync(join(STATIC, f), 'utf8');
    for (const [, names] of src.matchAll(/import \{([^}]+)\} from '\.\/tickstream-client\.js'/g)) {
      for (const name of names.split(',').map((n) => n.trim())) {
        assert.match(lib, new RegExp(`export (class|function|const) ${name}\\b`), `${f} imports ${name}, which the library exports`);
      }
    }
  }
});

test('every module a page file imports is served at the path it is imported from', () => {
  for (const f of pageFiles.filter((x) => x.endsWith('.js'))) {
    const src = readFileSync(join(STATIC, f), 'utf8');
    for (const [, spec] of src.matchAll(/^import [^'"]*'([^']+)';$/gm)) {
      assert.match(spec, /^\.\/[\w-]+\.js$/, `${f}: a same-origin module beside it (${spec})`);
      assert.ok(table.has(spec.slice(1)), `${f} imports ${spec}: served by src/http/ops.rs`);
    }
  }
  const html = readFileSync(join(STATIC, 'index.html'), 'utf8');
  assert.match(html, /<script type="module" src="\/app\.js"><\/script>/);
  for (const [, href] of html.matchAll(/(?:src|href)="(\/[^"]*)"/g)) assert.ok(table.has(href), `index.html loads ${href}`);
});

test('nothing in the page writes markup or inline styles (the CSP forbids styles; server data is text)', () => {
  for (const f of pageFiles.filter((x) => x.endsWith('.js'))) {
    const src = readFileSync(join(STATIC, f), 'utf8');
    assert.doesNotMatch(src, /\.innerHTML|\.outerHTML|insertAdjacentHTML|\.style\.|setAttribute\('style'/, f);
  }
});

test('the pure modules load in Node (no DOM at import time)', async () => {
  for (const f of ['model.js', 'prefs.js', 'texts.js', 'chart.js']) await import(join(STATIC, f));
});
