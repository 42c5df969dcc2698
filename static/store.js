// What the page keeps in this browser: preferences (`tickstream.prefs`) and the token
// (`tickstream.token`). The cursors (`tickstream.cursors`) are the client library's
// localStorageStore. localStorage can throw (disabled, private mode, quota; in some
// browsers merely reading `window.localStorage` does): nothing here lets that out, the
// page then works unremembered.

import { normalisePrefs } from './prefs.js';

const KEY = { token: 'tickstream.token', prefs: 'tickstream.prefs' };

/** The browser's localStorage, or null where it may not be used. */
function storage() {
  try { return globalThis.localStorage ?? null; } catch { return null; }
}

const lsGet = (k) => { try { return storage()?.getItem(k) ?? null; } catch { return null; } };
const lsSet = (k, v) => {
  try { if (v == null) storage()?.removeItem(k); else storage()?.setItem(k, v); } catch { /* not kept */ }
};
const lsJson = (k) => { try { return JSON.parse(lsGet(k)); } catch { return null; } };

/** The saved preferences, normalised: `{prefs, firstVisit}`. */
export function loadPrefs() {
  let prefersDark = false;
  try { prefersDark = matchMedia('(prefers-color-scheme: dark)').matches; } catch { /* light */ }
  return normalisePrefs(lsJson(KEY.prefs), { prefersDark });
}

export const savePrefs = (prefs) => lsSet(KEY.prefs, JSON.stringify(prefs));

/**
 * The token: from the address (`#token=`, what dev mode prints: a fragment never reaches
 * a server or its logs; or `?token=`), kept, and dropped from the address bar at once so
 * it does not linger in history, bookmarks or screenshots; else the one kept before.
 */
export function takeToken() {
  const url = new URL(location.href), hash = new URLSearchParams(url.hash.slice(1));
  if (!hash.has('token') && !url.searchParams.has('token')) return lsGet(KEY.token) || '';
  const given = (hash.get('token') || url.searchParams.get('token') || '').trim();
  if (given) lsSet(KEY.token, given);
  hash.delete('token'); url.searchParams.delete('token');
  const rest = hash.toString();
  history.replaceState(history.state, '', url.pathname + url.search + (rest ? '#' + rest : ''));
  return given || lsGet(KEY.token) || '';
}

export const saveToken = (token) => lsSet(KEY.token, token || null);
