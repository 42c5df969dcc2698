// The page's preferences as values: what a saved `tickstream.prefs` may hold, and each
// channel's colour slot. Pure (store.js reads and writes them), so Node can test that a
// bad saved value never reaches the page (static/test/prefs.test.mjs).

import { CHANNEL_RE, INTERVALS } from './model.js';

export const PALETTE = 8;                  // --c0 … --c7 in style.css
const WINDOWS = [60, 300, 900];     // chart window, seconds
// Tick frames per second asked of each channel ("rate": the server sends the newest
// tick and says how many it skipped); 0 = every tick, no rate.
const RATES = [5, 10, 15, 20, 30, 0];

/**
 * Saved preferences (whatever JSON.parse gave, or nothing) as the page uses them: every
 * field checked, anything else replaced by its default. `firstVisit` when no channel
 * choice was ever saved: the page then subscribes to what the token may read; once the
 * user has a choice (even an empty one) it is restored as it was.
 */
export function normalisePrefs(saved, { prefersDark = false } = {}) {
  const s = saved && typeof saved === 'object' && !Array.isArray(saved) ? saved : {};
  const firstVisit = !Array.isArray(s.channels);
  const channels = [...new Set((firstVisit ? [] : s.channels).filter((c) => typeof c === 'string' && CHANNEL_RE.test(c)))];
  const colors = {};
  if (s.colors && typeof s.colors === 'object' && !Array.isArray(s.colors)) {
    for (const name of channels) {
      const c = s.colors[name];
      if (Number.isInteger(c) && c >= 0 && c < PALETTE) colors[name] = c;
    }
  }
  return {
    firstVisit,
    prefs: {
      channels,
      colors,
      theme: ['dark', 'light'].includes(s.theme) ? s.theme : prefersDark ? 'dark' : 'light',
      paused: s.paused === true,
      windowSec: WINDOWS.includes(s.windowSec) ? s.windowSec : 300,
      interval: typeof s.interval === 'string' && Object.hasOwn(INTERVALS, s.interval) ? s.interval : '1m',
      rate: RATES.includes(s.rate) ? s.rate : 15,
    },
  };
}

/** The channel's colour slot: its saved one, else the first no other selected channel
 *  uses (so colours stay distinct), remembered in `prefs.colors`. */
export function colorFor(prefs, name) {
  const c = prefs.colors[name];
  if (Number.isInteger(c) && c >= 0 && c < PALETTE) return c;
  const used = new Set(prefs.channels.filter((n) => n !== name).map((n) => prefs.colors[n]));
  let i = 0;
  while (i < PALETTE - 1 && used.has(i)) i++;
  return (prefs.colors[name] = i);
}
