// The dashboard's entry point (docs/PROTOCOL.md §11): loaded as /app.js, an ES module
// with no build step. It wires the page together: the channel choice and preferences,
// the header's controls, the Settings form, and the start. The connection is feed.js
// (on the tickstream client library), the cards cards.js, what is kept store.js.
// The server's CSP forbids inline scripts and styles: nothing writes style attributes
// (colours are CSS classes and custom properties in style.css).

import { createCard, initCards, removeCard, themeChanged } from './cards.js';
import { idle, initFeed, listChannels, newClient, onlineAgain, reconnectNow, reloadCandles, resubscribeAll, start, startAll, stop } from './feed.js';
import { CHANNEL_RE, ChannelModel } from './model.js';
import { clearNotices, notice } from './notices.js';
import { colorFor } from './prefs.js';
import { loadPrefs, savePrefs, saveToken, takeToken } from './store.js';
import { fmtTs } from './texts.js';

const AUTO_CHANNELS = 12;      // a first visit subscribes to at most this many
const LIST_RETRY_MS = 3000;    // a first visit looks again this often while no channel has ticks

const $ = (id) => document.getElementById(id);
const loaded = loadPrefs();
// A first visit has no saved choice: it subscribes to what the token may read, and
// saves nothing until it has chosen (or the user did).
let firstVisit = loaded.firstVisit;
const page = { prefs: loaded.prefs, chans: new Map(), token: takeToken() };
const prefs = page.prefs;
const save = () => { if (!firstVisit) savePrefs(prefs); };
const emptyHint = $('empty-hint');

// ---- channels ------------------------------------------------------------------------------

function createChan(name) {
  const color = colorFor(prefs, name);
  const c = { name, model: new ChannelModel(name, color), ui: null, sub: null, error: null, starting: false, loading: null, startAfter: null };
  c.ui = createCard(name, color, () => removeChannel(name));
  page.chans.set(name, c);
  emptyHint.hidden = true;
  return c;
}

function addChannel(name) {
  prefs.channels.push(name);
  const c = createChan(name);
  save();
  start(c);
}

function removeChannel(name) {
  const c = page.chans.get(name);
  if (!c) return;
  page.chans.delete(name);
  stop(c);
  removeCard(c.ui);
  prefs.channels = prefs.channels.filter((n) => n !== name);
  delete prefs.colors[name];
  save();
  emptyHint.hidden = page.chans.size > 0;
  emptyHint.textContent = 'No channel selected — add one above.';
}

// The channel list fills the picker, and on a first visit picks the channels.
let listTimer = 0, listWait = LIST_RETRY_MS;
async function fetchChannels() {
  const { list, error } = await listChannels();
  if (!list) {
    // A first visit has nothing to show until the list answers: ask again, less and less
    // often (a refused token, 401 or 403, waits for a new one instead).
    if (firstVisit && error?.status !== 401 && error?.status !== 403) {
      clearTimeout(listTimer);
      listTimer = setTimeout(fetchChannels, listWait);
      listWait = Math.min(30_000, listWait * 2);
    }
    return;
  }
  listWait = LIST_RETRY_MS;
  $('channel-list').replaceChildren(...list.map((x) => {
    const option = document.createElement('option');
    option.value = x.channel;
    option.label = `${x.length ?? 0} ticks${x.last_ts ? ', last ' + fmtTs(x.last_ts) : ''}`;
    return option;
  }));
  $('channel-count').textContent = `${list.length} available`;
  if (firstVisit) adoptFirstChannels(list);
}

function adoptFirstChannels(list) {
  clearTimeout(listTimer);
  if (!list.length) {   // nothing ticked yet: look again shortly
    emptyHint.textContent = 'No channel has ticks yet — waiting for the first one (tickstream --demo feeds some).';
    listTimer = setTimeout(fetchChannels, LIST_RETRY_MS);
    return;
  }
  firstVisit = false;
  for (const { channel } of list.slice(0, AUTO_CHANNELS)) if (!page.chans.has(channel)) addChannel(channel);
  save();
  notice('info', `Subscribed to ${Math.min(list.length, AUTO_CHANNELS)} of ${list.length} channels this token may read`);
}

// ---- controls ------------------------------------------------------------------------------

const pauseBtn = $('pause'), themeBtn = $('theme'), windowSel = $('window'), intervalSel = $('interval'), rateSel = $('rate');
const channelInput = $('channel-input'), addError = $('add-error'), tokenInput = $('token-input');

function applyPrefs() {
  document.documentElement.dataset.theme = prefs.theme;
  themeBtn.setAttribute('aria-pressed', String(prefs.theme === 'dark'));
  themeBtn.textContent = prefs.theme === 'dark' ? 'Light theme' : 'Dark theme';
  pauseBtn.setAttribute('aria-pressed', String(prefs.paused));
  pauseBtn.textContent = prefs.paused ? 'Resume' : 'Pause';
  $('paused-badge').hidden = !prefs.paused;
  windowSel.value = String(prefs.windowSec);
  intervalSel.value = prefs.interval;
  rateSel.value = String(prefs.rate);
  save();
  themeChanged();
}
// Any explicit choice makes this visit's selection the saved one.
const choose = () => { firstVisit = false; clearTimeout(listTimer); };

$('add-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = channelInput.value.trim();
  const err = !CHANNEL_RE.test(name) ? 'Invalid name: a letter or digit, then letters, digits or _ . : - (128 max).'
    : page.chans.has(name) ? `${name} is already selected.` : '';
  addError.textContent = err;
  channelInput.setAttribute('aria-invalid', String(!!err));
  if (err) return;
  channelInput.value = '';
  choose(); addChannel(name);
});
$('refresh-channels').addEventListener('click', fetchChannels);

// A new client for the token, the channel list asked first, then every channel.
function connect() {
  newClient();
  fetchChannels();
  startAll();
}

const showToken = () => { $('token-info').textContent = page.token ? 'A token is stored in this browser.' : 'No token stored.'; };
$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!tokenInput.value.trim()) return;
  page.token = tokenInput.value.trim();
  tokenInput.value = '';
  saveToken(page.token); showToken();
  // A new client rather than a `refresh` message: the new token may carry another
  // subject or channel set, and resuming from the cursors loses nothing.
  connect();
});
$('token-clear').addEventListener('click', () => { page.token = ''; saveToken(''); showToken(); newClient(); });

$('reconnect').addEventListener('click', () => {
  if (!reconnectNow()) connect();
  else if (idle()) fetchChannels();
});
pauseBtn.addEventListener('click', () => { choose(); prefs.paused = !prefs.paused; applyPrefs(); });
themeBtn.addEventListener('click', () => { choose(); prefs.theme = prefs.theme === 'dark' ? 'light' : 'dark'; applyPrefs(); });
windowSel.addEventListener('change', () => { choose(); prefs.windowSec = Number(windowSel.value); applyPrefs(); });
intervalSel.addEventListener('change', () => {
  choose(); prefs.interval = intervalSel.value; applyPrefs();
  // Candle feeds are chosen per subscription: each channel subscribes again from its
  // cursor (nothing lost, nothing repeated), and its candles are read again.
  reloadCandles();
  resubscribeAll();
});
rateSel.addEventListener('change', () => {   // a subscription's rate is set when it subscribes
  choose(); prefs.rate = Number(rateSel.value); applyPrefs();
  resubscribeAll();
});
$('clear-notices').addEventListener('click', clearNotices);
addEventListener('online', () => { onlineAgain(); if (firstVisit) fetchChannels(); });

// ---- start ---------------------------------------------------------------------------------

initCards(page);
initFeed(page);
prefs.channels.forEach((name) => createChan(name));
if (!firstVisit && !prefs.channels.length) emptyHint.textContent = 'No channel selected — add one above.';
applyPrefs();   // also saves the normalised prefs and colour slots, and draws
showToken();
connect();
