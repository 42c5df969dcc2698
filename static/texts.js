// What the header and the cards say, from plain values: the connection status (from the
// client library's state and its info), a channel's badge, the continuity check, the
// sample note, and number and time formats. Pure, so Node can test the wording a user
// reads (static/test/texts.test.mjs).

const hms = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
const timeFmt = new Intl.DateTimeFormat(undefined, { ...hms, fractionalSecondDigits: 3 });
export const clockFmt = new Intl.DateTimeFormat(undefined, hms);
const numFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 6 });

/** A tick's time to the millisecond (or the text as it came, when it is no time). */
export const fmtTs = (s) => { const t = Date.parse(s); return Number.isNaN(t) ? String(s ?? '') : timeFmt.format(t); };
export const fmtVal = (v) => (typeof v === 'number' ? numFmt.format(v) : '');

// ---- the header ---------------------------------------------------------------------------

/** Why a socket that was open closed, in a few words. */
function closeWhy(code, reason) {
  switch (code) {
    case 1012: return 'server restarting';
    case 4029: return 'rate limited';
    case 1013: return 'server asked to try later';
    case 4001: return 'token expired';
    default: return `closed (${code}${reason ? ' ' + reason : ''})`;
  }
}

/** Why a handshake was refused: the library learns the status over REST (a browser
 *  hides it), and says nothing when the server could not be reached at all. */
function refusedWhy(error) {
  switch (error?.status) {
    case 429: return 'rate limited';
    case 503: return 'server not ready';
    case 401: return 'token expired';
    default: return 'connection failed';
  }
}

/** Why the client stopped for good, and whether a new token is what it needs. */
function stoppedView(error) {
  if (error?.status === 401) {
    const what = error.code === 'token_expired' ? 'Token expired' : 'Token rejected (invalid or expired)';
    return { text: `${what} — paste a new token in Settings`, askToken: true };
  }
  if (error?.code === 'bad_token') return { text: `Token is not usable: ${error.message}`, askToken: true };
  if (error?.status === 403 || error?.code === 'forbidden') return { text: `Forbidden (${error.message})`, askToken: false };
  return { text: error ? `Stopped: ${error.message}` : 'Closed', askToken: false };
}

/**
 * The header's status: `{state, text, askToken}`, state one of connecting, live,
 * reconnecting, closed (`#status[data-state]`).
 * - `clientState`, `info`: the library's last `state` event (null: no client, no token);
 * - `busy`: some channel is still subscribing or replaying;
 * - `probe`: while the client has nothing to connect for (idle), the channel list's
 *   answer tells whether the token works: null (not yet), "ok", or the error.
 */
export function statusView({ token, clientState, info = {}, busy = false, probe = null }) {
  if (!token) return { state: 'closed', text: 'No token — paste one in Settings', askToken: true };
  switch (clientState) {
    case 'connected': return { state: 'live', text: busy ? 'Connected — catching up' : 'Live' };
    case 'reconnecting': {
      // A socket that was open closed with a code; an attempt that failed says why.
      const why = info.error ? refusedWhy(info.error) : closeWhy(info.code, info.reason);
      return { state: 'reconnecting', text: `Reconnecting — ${why}` };
    }
    case 'closed': return { state: 'closed', ...stoppedView(info.error) };
    case 'idle':
      if (probe === 'ok') return { state: 'live', text: 'Live' };
      if (probe?.status === 401) return { state: 'closed', ...stoppedView(probe) };
      return { state: 'connecting', text: 'Connecting…' };
    default: return { state: 'connecting', text: 'Connecting…' };
  }
}

/** The countdown beside a reconnecting status. */
export const countdownText = (msLeft) => `in ${Math.max(0, Math.ceil(msLeft / 1000))} s`;

// ---- a channel's card ---------------------------------------------------------------------

const BADGE = { offline: 'offline', pending: 'subscribing', replaying: 'replaying', live: 'live' };

/**
 * A channel's badge, `{state, text}` (`.badge[data-state]`): offline while the socket
 * is not open, else the subscription's own state; `error` once the server refused it.
 * `subState` is the library's (pending, replaying, live, closed) or null before the
 * page subscribed; `starting` while its history loads first.
 */
export function badgeView({ clientState, subState = null, starting = false, error = null }) {
  if (error) return { state: 'error', text: `error: ${error}` };
  let state = 'offline';
  if (clientState === 'connected') {
    if (subState === 'pending' || subState === 'replaying' || subState === 'live') state = subState;
    else if (!subState && starting) state = 'pending';
  }
  return { state, text: BADGE[state] };
}

/** The `.check` cell: `{ok, text}`. */
export function checkView({ checked, breaks, gaps }) {
  const ok = breaks === 0;
  const text = (ok ? `✓ continuous (${checked})` : `✗ ${breaks} break${breaks === 1 ? '' : 's'}`)
    + (gaps ? `, ${gaps} gap${gaps === 1 ? '' : 's'} announced` : '');
  return { ok, text };
}

export const RATE_TITLE = "The channel's ticks per second over the last 5 s";

/** The ticks/s cell's tooltip: under a rate, also the frames a second this page gets. */
export function rateTitle(rate, frames) {
  if (!rate) return RATE_TITLE;
  return `${RATE_TITLE}; this page is sent a sample of at most ${rate} of them a second`
    + (frames != null ? ` (${frames.toFixed(1)}/s now)` : '') + ', each frame counting the ticks it skipped';
}

/** The note beside "Ticks" under a rate ('' without one: the note is hidden). */
export function sampleNote(rate, ticksPerSec) {
  if (!rate) return '';
  return `sample: at most ${rate} ticks/s${ticksPerSec != null ? ` of ${ticksPerSec.toFixed(1)}/s` : ''}`
    + ' — Skipped counts the ticks left out before each row';
}

// ---- errors -------------------------------------------------------------------------------

// The library's HTTP errors read "HTTP 401: message"; the page says "HTTP 401 — message".
const serverMessage = (e) => {
  const m = String(e?.message ?? '').replace(/^HTTP \d+:?\s*/, '');
  return m && m !== e?.code ? m : '';
};

/** A refusal the server sent for a channel (or for no channel). */
export function serverErrorText(e) {
  const m = serverMessage(e);
  return `Server error${e?.channel ? ' on ' + e.channel : ''}: ${e?.code || '?'}${m ? ' — ' + m : ''}`;
}

/** The channel list could not be read. */
export function channelListError(e) {
  const m = serverMessage(e);
  return `Channel list: HTTP ${e?.status ?? '?'}${m ? ' — ' + m : ''}`;
}
