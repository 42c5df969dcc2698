// The header's connection status: `#status[data-state]` and its text, the reconnect
// countdown and the "Reconnect now" button, from a view texts.js's statusView made.

import { countdownText } from './texts.js';

let countdownTimer = 0, countingTo = null;
const $ = (id) => document.getElementById(id);

/** Shows `{state, text, until, askToken}`; `until` (ms since the epoch) is when the
 *  next attempt is due while reconnecting: the countdown runs to it. */
export function showStatus(view) {
  const status = $('status'), text = $('status-text'), countdown = $('countdown');
  status.dataset.state = view.state;
  if (text.textContent !== view.text) {   // else not again: no re-announcing, no reopening
    text.textContent = view.text;
    if (view.askToken) $('settings').open = true;
  }
  $('reconnect').hidden = view.state === 'live' || view.state === 'connecting';
  const until = view.state === 'reconnecting' ? view.until ?? null : null;
  if (until === countingTo) return;
  clearInterval(countdownTimer);
  countingTo = until;
  countdown.textContent = '';
  if (until === null) return;
  const tick = () => { countdown.textContent = countdownText(until - Date.now()); };
  tick();
  countdownTimer = setInterval(tick, 1000);
}
