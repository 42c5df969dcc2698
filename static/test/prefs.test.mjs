// Saved preferences (static/prefs.js): whatever sits in localStorage, the page starts
// with values it can use, and a first visit is told apart from an emptied choice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { colorFor, normalisePrefs, PALETTE } from '../prefs.js';

test('nothing saved is a first visit with the defaults: rate 15, 5 min window, 1 min candles', () => {
  for (const saved of [null, undefined, 'text', 42, [], {}]) {
    const { firstVisit, prefs } = normalisePrefs(saved);
    assert.equal(firstVisit, true);
    assert.deepEqual(prefs, { channels: [], colors: {}, theme: 'light', paused: false, windowSec: 300, interval: '1m', rate: 15 });
  }
  assert.equal(normalisePrefs(null, { prefersDark: true }).prefs.theme, 'dark', 'the system theme by default');
});

test('an empty saved choice is kept as it is (no auto-subscribe)', () => {
  const { firstVisit, prefs } = normalisePrefs({ channels: [] });
  assert.equal(firstVisit, false);
  assert.deepEqual(prefs.channels, []);
});

test('bad saved values are replaced by defaults, good ones kept', () => {
  const { prefs } = normalisePrefs({
    channels: ['ok.one', 'bad name', 123, '-starts-badly', 'ok.one', 'x'.repeat(129), 'ok:two'],
    colors: { 'ok.one': 3, 'ok:two': 99, stale: 1 },
    theme: 'purple', paused: 'yes', windowSec: 61, interval: '2m', rate: 7,
  });
  assert.deepEqual(prefs.channels, ['ok.one', 'ok:two'], 'valid names, once each, in order');
  assert.deepEqual(prefs.colors, { 'ok.one': 3 }, 'only valid slots of selected channels');
  assert.equal(prefs.theme, 'light');
  assert.equal(prefs.paused, false);
  assert.equal(prefs.windowSec, 300);
  assert.equal(prefs.interval, '1m');
  assert.equal(prefs.rate, 15);
  const good = normalisePrefs({ channels: ['a'], theme: 'dark', paused: true, windowSec: 900, interval: '1s', rate: 0 }).prefs;
  assert.deepEqual([good.theme, good.paused, good.windowSec, good.interval, good.rate], ['dark', true, 900, '1s', 0], '0 = every tick');
  assert.equal(normalisePrefs({ interval: 'constructor' }).prefs.interval, '1m', 'no inherited property passes as an interval');
});

test('colour slots: a saved one is kept, a new channel gets the first free one', () => {
  const prefs = { channels: ['a', 'b', 'c'], colors: { a: 0, b: 1 } };
  assert.equal(colorFor(prefs, 'a'), 0);
  assert.equal(colorFor(prefs, 'c'), 2);
  assert.equal(prefs.colors.c, 2, 'remembered');
  const full = { channels: [], colors: {} };
  for (let i = 0; i < PALETTE + 2; i++) { full.channels.push('c' + i); colorFor(full, 'c' + i); }
  assert.ok(Object.values(full.colors).every((c) => c >= 0 && c < PALETTE), 'never beyond the palette');
});
