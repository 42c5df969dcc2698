// The Notices panel: replays, gaps, breaks, closes and refusals, newest on top. A repeated
// `key` within 5 s bumps a counter on the row already there, so a burst of warnings
// cannot flood the list (or a screen reader). Text only (textContent), never markup:
// much of what it says comes from the server.

import { clockFmt } from './texts.js';

const MAX = 100;
const recent = new Map();   // key -> {li, at, count}

/** Adds a notice; `level` is info, warn or error (its colour). */
export function notice(level, text, key) {
  const list = document.getElementById('notices');
  const now = Date.now(), r = key && recent.get(key);
  if (r && now - r.at < 5000 && r.li.isConnected) {
    r.at = now;
    r.li.lastChild.textContent = `${text} (×${++r.count})`;
    return;
  }
  const li = document.createElement('li'), time = document.createElement('time'), span = document.createElement('span');
  li.className = level;
  time.textContent = clockFmt.format(now);
  span.textContent = text;
  li.append(time, span);
  list.prepend(li);
  while (list.children.length > MAX) list.lastChild.remove();
  if (key) recent.set(key, { li, at: now, count: 1 });
}

export function clearNotices() {
  document.getElementById('notices').replaceChildren();
  recent.clear();
}
