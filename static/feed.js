// The page's connection to the server: one tickstream Client (the npm package's very
// module, clients/js/index.js, served as /tickstream-client.js), a subscription per
// channel, and the REST reads that fill a card before its live ticks. The library keeps
// the guarantee (cursors, continuity, repeats, backoff, pacing); this turns its events
// into the models, badges, notices and the header's status. Nothing here touches the
// DOM until initFeed() is called.

import { Client, localStorageStore } from './tickstream-client.js';
import { scheduleRender, showBadge } from './cards.js';
import { CHANNEL_RE, mergeCandles } from './model.js';
import { notice } from './notices.js';
import { showStatus } from './status.js';
import { channelListError, serverErrorText, statusView } from './texts.js';

const HISTORY_PAGE = 1000;   // ticks read over REST to draw a channel at once
const CANDLE_PAGE = 120;     // candles read over REST
const LIST_PAGE = 1000;      // channels listed for the picker (the server's largest page)

let page = null;             // {prefs, chans, token}: what app.js shares
let store = null;            // the cursors, in localStorage
let client = null;           // null without a token
let clientState = null, info = {};   // the client's last `state` event
let until = null;            // when the next attempt is due, while reconnecting
let probe = null;            // the channel list's answer: says whether the token works while idle

/** Starts with `shared` ({prefs, chans, token}); newClient() then connects. */
export function initFeed(shared) {
  page = shared;
  // One store for the page, handed to every client it makes: a store writes its own
  // copy of the cursors on pagehide, so a second one would write stale ones back.
  store = localStorageStore();
}

/**
 * A new client for the page's token (none without one): at start, when the token
 * changes, and when the user asks to reconnect a client that stopped (a rejected
 * token, a refusal). startAll() then subscribes every channel again from its stored
 * cursor; in between the page may ask for the channel list, so that it goes first in
 * the library's REST queue instead of after every channel's history.
 */
export function newClient() {
  const old = client;
  client = null; clientState = null; info = {}; until = null; probe = null;
  for (const c of page.chans.values()) { c.sub = null; c.error = null; }
  old?.close();   // its cursors stay in the store; its late events are ignored below
  if (page.token) {
    const cl = new Client({ url: location.origin, token: page.token, store });
    client = cl; clientState = cl.state;
    cl.on('state', (state, i) => onState(cl, state, i));
    cl.on('error', (e) => { if (cl === client) notice('error', serverErrorText(e)); });
    cl.connect();   // the header tells the connection's state even before any channel
  }
  refresh();
}

export function startAll() {
  for (const c of page.chans.values()) start(c);
}

function onState(cl, state, i = {}) {
  if (cl !== client) return;
  const wasOpen = clientState === 'connected';   // the state before this one
  if (state === 'reconnecting') {
    if (wasOpen) {
      notice(i.code === 1000 || i.code === 1012 ? 'info' : 'warn', `Connection closed (${i.code}${i.reason ? ' ' + i.reason : ''})`);
    }
    until = Date.now() + (i.delay ?? 0);
  }
  if (state === 'closed' && wasOpen && i.error) notice('warn', `Connection closed (${i.error.message})`);
  clientState = state; info = i;
  refresh();
}

/** The header's status and every badge, from the client's and subscriptions' states. */
function refresh() {
  const busy = [...page.chans.values()].some((c) => (c.sub ? c.sub.state === 'pending' || c.sub.state === 'replaying' : c.starting));
  showStatus({ ...statusView({ token: page.token, clientState, info, busy, probe }), until });
  for (const c of page.chans.values()) badge(c);
}

function badge(c) {
  showBadge(c.ui, { clientState, subState: c.sub?.state ?? null, starting: c.starting, error: c.error });
}

/**
 * A channel on the current client: its history and candles over REST the first time,
 * then the subscription. A channel seen before resumes at once from its stored cursor
 * while they load (that history ends at the cursor: the two never overlap); a channel
 * new to this browser subscribes after the newest tick of its history, so it waits.
 */
export async function start(c) {
  const cl = client;
  if (!cl || cl.state === 'closed' || c.sub) return;
  const cursor = store.get(c.name);
  c.starting = true;
  badge(c);
  // Read once per page; a read that failed (no server, a rejected token) is read again
  // when the channel next starts, on the next client.
  c.loading ??= Promise.all([
    c.historyRead || loadHistory(c, cl, cursor).then((ok) => { c.historyRead = ok; }),
    c.candlesRead || loadCandles(c, cl).then((ok) => { c.candlesRead = ok; }),
  ]).then(() => { if (!c.historyRead || !c.candlesRead) c.loading = null; });
  if (!cursor) await c.loading;
  c.starting = false;
  if (cl !== client || cl.state === 'closed' || page.chans.get(c.name) !== c || c.sub) return;
  subscribe(c);
  refresh();
}

function subscribe(c) {
  const { rate, interval } = page.prefs;
  // A rate suited to drawing (the cursors stay exact: `skipped` counts the rest).
  const options = { candles: interval, ...(rate ? { rate } : {}), ...c.startAfter };
  let sub;
  c.error = null;
  try { sub = client.subscribe(c.name, options); } catch (e) {
    c.error = e.code || '?';
    notice('error', serverErrorText(e));
    return;
  }
  c.sub = sub;
  c.model.startFrom(sub.cursor);   // the stored cursor, else the newest history tick
  // A closed subscription says nothing more but `state: closed`, which comes as the
  // page replaces it: ignored then.
  sub.on('state', (s) => {
    if (c.sub !== sub) return;
    if (s === 'replaying') c.model.subscribed();
    refresh();
  });
  sub.on('tick', (t) => {
    const n = c.model.tick(t, sub.state === 'replaying');
    if (n) notice(n.level, n.text, n.key);
    scheduleRender();
  });
  sub.on('gap', (g) => {
    const n = c.model.gap(g);
    if (n) notice(n.level, n.text);
    scheduleRender();
  });
  // Each subscription is made with the page's interval (a change resubscribes).
  sub.on('candle', (k) => {
    if (c.model.candle(k)) scheduleRender();
  });
  sub.on('live', () => {
    const text = c.model.live();
    if (text) notice('info', text);
    scheduleRender();
  });
  sub.on('error', (e) => {
    // Without a channel the whole client stopped: the header says why, once.
    if (!e.channel) return;
    c.error = e.code || '?';
    notice('error', serverErrorText(e));
    refresh();
  });
}

/** Subscribes every channel again, from its cursor, with the page's rate and candle
 *  interval (chosen per subscription) on the same socket. */
export function resubscribeAll() {
  if (!client || client.state === 'closed') return;
  for (const c of page.chans.values()) {
    if (!c.sub) {   // still loading (it subscribes with the new settings when done), or refused at once
      if (!c.starting) start(c);
      continue;
    }
    c.sub.close();
    c.sub = null;
    subscribe(c);
  }
  refresh();
}

/** The candles of the page's interval over REST, for every channel (after a change). */
export function reloadCandles() {
  for (const c of page.chans.values()) {
    c.model.candles = [];
    c.model.dirty = true;
    if (client) loadCandles(c, client);
  }
  scheduleRender();
}

/** A channel removed: unsubscribed, and its cursor forgotten, so adding it again later
 *  starts with recent history, not a catch-up of all it missed meanwhile. */
export function stop(c) {
  c.sub?.close();
  c.sub = null;
  store.set(c.name, null);
  store.flush();   // at once, as the choice itself is saved: a reload must not bring it back
  refresh();
}

// The newest ticks up to the cursor (or the newest at all), so the chart and the table
// are full at once.
async function loadHistory(c, cl, cursor) {
  const ticks = [];
  try {
    for await (const t of cl.history(c.name, { order: 'desc', until: cursor?.id, limit: HISTORY_PAGE })) ticks.push(t);
  } catch { return false; }   // the card fills from live ticks meanwhile
  ticks.reverse();
  const newest = c.model.history(ticks);
  if (!cursor && newest) {
    c.startAfter = { since: newest.id, seq: Number.isSafeInteger(newest.seq) ? newest.seq : undefined,
      epoch: typeof newest.epoch === 'string' ? newest.epoch : undefined };
  }
  scheduleRender();
  return true;
}

async function loadCandles(c, cl) {
  const interval = page.prefs.interval, list = [];
  try {
    for await (const k of cl.candles(c.name, { interval, order: 'desc', limit: CANDLE_PAGE })) list.push(k);
  } catch { return false; }
  if (interval !== page.prefs.interval || page.chans.get(c.name) !== c) return true;
  c.model.candles = mergeCandles(list, c.model.candles);   // live frames that came first win
  c.model.dirty = true;
  scheduleRender();
  return true;
}

/**
 * The channels this token may read (the picker, a first visit's choice). Also how an
 * idle client (no channel yet) learns whether its token works. `{list}` or `{error}`.
 */
export async function listChannels() {
  const cl = client;
  if (!cl) return { error: { status: 401 } };
  try {
    const res = await cl.channels({ limit: LIST_PAGE });
    if (cl === client) { probe = 'ok'; refresh(); }
    return { list: (Array.isArray(res?.channels) ? res.channels : []).filter((x) => x && typeof x.channel === 'string' && CHANNEL_RE.test(x.channel)) };
  } catch (e) {
    if (e.status && cl === client) {   // unreachable: the connection's own retries tell
      probe = e;
      notice('error', channelListError(e), 'chlist');
      refresh();
    }
    return { error: e };
  }
}

/** "Reconnect now": skips the backoff wait. False when there is no client to do it
 *  (none, or it stopped): a new one is needed. */
export function reconnectNow() {
  if (!client || client.state === 'closed') return false;
  client.reconnect();
  return true;
}

/** The client has nothing to connect for yet (no channel): the channel list is what
 *  tells whether its token works. */
export const idle = () => client?.state === 'idle';

/** The browser is online again: no need to wait out a long backoff. */
export function onlineAgain() {
  client?.reconnect();   // nothing unless it waits to reconnect
}
