// tickstream dashboard — vanilla JS, no dependencies, no build step (docs/PROTOCOL.md §8).
// Loaded from /app.js with `defer` after /chart.js: the server's CSP forbids inline
// scripts and styles, so nothing here writes style attributes either (colours are CSS
// classes and custom properties).
'use strict';
(() => {
  const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
  const ID_RE = /^\d+-\d+$/;
  const KEY = { token: 'tickstream.token', cursors: 'tickstream.cursors', prefs: 'tickstream.prefs' };
  const ROW_CAP = 200;            // table rows kept per channel
  const POINT_CAP = 20000;        // chart points kept per channel (memory bound at high rates)
  const HISTORY_MS = 15 * 60e3;   // chart data kept: the largest selectable window
  const HISTORY_PAGE = 1000;      // ticks fetched over REST to draw a channel at once
  const AUTO_CHANNELS = 12;       // a first visit subscribes to at most this many
  const RATE_MS = 5000;           // ticks per second over the last 5 s
  const RATE_TITLE = "The channel's ticks per second over the last 5 s";
  const PALETTE = 8;              // --c0 … --c7 in style.css
  const PING_MS = 25e3, SILENCE_MS = 60e3;   // silent for 60 s (not even a pong) = dead socket
  const STABLE_MS = 10e3;         // a connection that stayed open this long resets the backoff
  const BACKOFF_BASE = 500, BACKOFF_CAP = 30e3;
  // The server closes with 4029 beyond a burst of 20 then 10 msg/s: stay safely under it.
  const SEND_BURST = 15, SEND_PER_MS = 8 / 1000;
  const INTERVALS = { '1s': 1e3, '1m': 60e3, '5m': 300e3, '1h': 3600e3, '1d': 86400e3 };
  // Tick frames per second asked of each channel ("rate": the server conflates to the
  // newest tick and says how many it skipped); 0 = every tick, no rate.
  const RATES = [5, 10, 15, 20, 30, 0];

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {   // textContent only, never innerHTML: server data is untrusted
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };

  // ---- persistence --------------------------------------------------------------------
  // localStorage can throw (disabled, private mode, quota): the page must still work.
  const lsGet = (k) => { try { return localStorage.getItem(k); } catch { return null; } };
  const lsSet = (k, v) => { try { v == null ? localStorage.removeItem(k) : localStorage.setItem(k, v); } catch { /* not kept */ } };
  const lsObj = (k) => { try { const v = JSON.parse(lsGet(k)); return v && typeof v === 'object' ? v : {}; } catch { return {}; } };

  const saved = lsObj(KEY.prefs);
  // A first visit has no saved choice: it subscribes to what the token may read. Once
  // the user has a choice (even an empty one) it is restored as it was.
  let firstVisit = !Array.isArray(saved.channels);
  const prefs = {
    channels: [...new Set((Array.isArray(saved.channels) ? saved.channels : []).filter((c) => CHANNEL_RE.test(c)))],
    colors: saved.colors && typeof saved.colors === 'object' ? saved.colors : {},
    theme: ['dark', 'light'].includes(saved.theme) ? saved.theme : matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light',
    paused: saved.paused === true,
    windowSec: [60, 300, 900].includes(saved.windowSec) ? saved.windowSec : 300,
    interval: Object.hasOwn(INTERVALS, saved.interval) ? saved.interval : '1m',
    rate: RATES.includes(saved.rate) ? saved.rate : 15,
  };
  const savePrefs = () => { if (!firstVisit) lsSet(KEY.prefs, JSON.stringify(prefs)); };

  // Resume cursors {channel: {id, seq, epoch}} — the last tick seen on each channel.
  const cursors = {};
  for (const [ch, c] of Object.entries(lsObj(KEY.cursors))) {
    if (CHANNEL_RE.test(ch) && c && ID_RE.test(c.id)) {
      cursors[ch] = { id: c.id, seq: Number.isSafeInteger(c.seq) ? c.seq : null, epoch: typeof c.epoch === 'string' ? c.epoch : null };
    }
  }
  // Ticks can arrive hundreds per second: write at most every 250 ms, plus on pagehide.
  let cursorTimer = 0;
  const saveCursors = () => { clearTimeout(cursorTimer); cursorTimer = 0; lsSet(KEY.cursors, JSON.stringify(cursors)); };
  const scheduleCursorSave = () => { if (!cursorTimer) cursorTimer = setTimeout(saveCursors, 250); };

  // The dev URL is /#token=… (a fragment never reaches a server or its logs); ?token=
  // works too. Adopt it, then drop it from the address bar so it does not linger in
  // history, bookmarks or screenshots.
  let token = (() => {
    const url = new URL(location.href), hash = new URLSearchParams(url.hash.slice(1));
    const given = (hash.get('token') || url.searchParams.get('token') || '').trim();
    if (!hash.has('token') && !url.searchParams.has('token')) return lsGet(KEY.token) || '';
    if (given) lsSet(KEY.token, given);
    hash.delete('token'); url.searchParams.delete('token');
    const rest = hash.toString();
    history.replaceState(history.state, '', url.pathname + url.search + (rest ? '#' + rest : ''));
    return given || lsGet(KEY.token) || '';
  })();

  // ---- status, notices ------------------------------------------------------------------
  const statusEl = $('status'), statusText = $('status-text'), countdownEl = $('countdown'), reconnectBtn = $('reconnect');
  const noticesEl = $('notices'), settings = $('settings'), emptyHint = $('empty-hint');
  const hms = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  const timeFmt = new Intl.DateTimeFormat(undefined, { ...hms, fractionalSecondDigits: 3 });
  const clockFmt = new Intl.DateTimeFormat(undefined, hms);
  const numFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 6 });
  const fmtTs = (s) => { const t = Date.parse(s); return Number.isNaN(t) ? String(s ?? '') : timeFmt.format(t); };
  const fmtVal = (v) => (typeof v === 'number' ? numFmt.format(v) : '');
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Every REST call goes through here, one at a time, paced by the server's own
  // X-RateLimit-Remaining: a page of many channels, reloaded a few times, stays
  // within a free token's bucket instead of collecting 429s. A 429 waits its
  // Retry-After and tries again. Rejects when the server cannot be reached.
  let apiChain = Promise.resolve(), apiNotBefore = 0;
  function api(path) {
    const call = apiChain.then(async () => {
      for (let tries = 0; ; tries++) {
        if (apiNotBefore > Date.now()) await sleep(apiNotBefore - Date.now());
        const res = await fetch(path, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
        if (res.status === 429 && tries < 3) {
          apiNotBefore = Date.now() + (Number(res.headers.get('Retry-After')) || 1) * 1000;
          continue;
        }
        const left = res.headers.get('X-RateLimit-Remaining');
        if (left !== null && Number(left) < 2) apiNotBefore = Date.now() + 1100;   // about one refill
        return res;
      }
    });
    apiChain = call.catch(() => {});
    return call;
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    if (statusText.textContent !== text) statusText.textContent = text;   // don't re-announce
    reconnectBtn.hidden = state === 'live' || state === 'connecting';
    if (state !== 'reconnecting') countdownEl.textContent = '';
  }

  // Newest on top. A repeated `key` within 5 s bumps a counter on the existing row, so a
  // burst of warnings cannot flood the list (or a screen reader).
  const recent = new Map();
  function notice(level, text, key) {
    const now = Date.now(), r = key && recent.get(key);
    if (r && now - r.at < 5000 && r.li.isConnected) {
      r.at = now;
      return void (r.li.lastChild.textContent = `${text} (×${++r.count})`);
    }
    const li = el('li', level);
    li.append(el('time', null, clockFmt.format(now)), el('span', null, text));
    noticesEl.prepend(li);
    while (noticesEl.children.length > 100) noticesEl.lastChild.remove();
    if (key) recent.set(key, { li, at: now, count: 1 });
  }

  // ---- channels ---------------------------------------------------------------------------
  const chans = new Map();   // name -> DOM refs, buffers, subscription state

  function colorFor(name) {
    const c = prefs.colors[name];
    if (Number.isInteger(c) && c >= 0 && c < PALETTE) return c;
    // First palette slot no other selected channel uses, so colours stay distinct.
    const used = new Set(prefs.channels.filter((n) => n !== name).map((n) => prefs.colors[n]));
    let i = 0;
    while (i < PALETTE - 1 && used.has(i)) i++;
    return (prefs.colors[name] = i);
  }

  function createChan(name) {
    const color = colorFor(name), card = $('card-tpl').content.firstElementChild.cloneNode(true);
    const q = (sel) => card.querySelector(sel);
    q('.swatch').classList.add('c' + color);
    q('.name').textContent = name;
    card.dataset.channel = name;
    q('table').setAttribute('aria-label', `Ticks on ${name}, newest first`);
    q('canvas.line').setAttribute('aria-label', `Line chart of ${name} values; the ticks table lists the same ticks`);
    q('canvas.candles').setAttribute('aria-label', `Candles of ${name}`);
    q('.rate').title = RATE_TITLE;
    const chip = el('li', 'chip'), rm = el('button', 'remove', '×');
    rm.type = 'button';
    rm.setAttribute('aria-label', `Remove ${name}`);
    rm.addEventListener('click', () => removeChannel(name));
    chip.append(el('span', 'swatch c' + color), el('span', null, name), rm);
    $('chips').append(chip);
    $('tables').append(card);
    const c = { name, color, card, chip, tbody: q('tbody'), badge: q('.badge'), lastEl: q('.last'), rateEl: q('.rate'),
      latencyEl: q('.latency'), seqEl: q('.seq'), checkEl: q('.check'), lineCanvas: q('canvas.line'),
      candleCanvas: q('canvas.candles'), candleCaption: q('.candle-caption'), sampleEl: q('.sample-note'),
      state: 'offline', replayed: 0, replaySkipped: 0, gapPending: false, fresh: false, count: 0, last: null, shown: null, pending: [], xs: [], ys: [],
      candles: [], arrivals: [], sizes: [], ticksIn: 0, latency: null, breaks: 0, gaps: 0, checked: 0, loading: null, loaded: false, older: [], liveSince: 0, dirty: true };
    chans.set(name, c);
    setChanState(c, 'offline');
    resizer.observe(c.lineCanvas); resizer.observe(c.candleCanvas);
    emptyHint.hidden = true;
    return c;
  }

  const BADGE = { offline: 'offline', pending: 'subscribing', replaying: 'replaying', live: 'live' };
  function setChanState(c, state, errorCode) {
    c.state = state;
    c.badge.dataset.state = state;
    c.badge.textContent = state === 'error' ? `error: ${errorCode}` : BADGE[state];
  }

  function addChannel(name) {
    prefs.channels.push(name); createChan(name); savePrefs();
    if (isOpen()) start(chans.get(name), gen);
  }

  function removeChannel(name) {
    const c = chans.get(name);
    // A subscribe still waiting in the send queue is simply dropped instead.
    const q = outQ.findIndex((m) => m.type === 'subscribe' && m.channel === name);
    if (q >= 0) outQ.splice(q, 1);
    else if (isOpen() && c.state !== 'error') send({ type: 'unsubscribe', channel: name });
    resizer.unobserve(c.lineCanvas); resizer.unobserve(c.candleCanvas);
    c.card.remove(); c.chip.remove(); chans.delete(name);
    prefs.channels = prefs.channels.filter((n) => n !== name);
    delete prefs.colors[name];
    // Forget the cursor too: re-adding later starts with recent history, not with a
    // catch-up of everything missed while the channel was deselected.
    delete cursors[name];
    saveCursors(); savePrefs(); refreshStatus();
    emptyHint.hidden = chans.size > 0;
    emptyHint.textContent = 'No channel selected — add one above.';
  }

  // GET /api/v1/channels fills the picker, and on a first visit picks the channels. It
  // is also how a failed WebSocket handshake is diagnosed: browsers hide the HTTP
  // status (401/429/503…) of a refused upgrade.
  let listTimer = 0;
  async function fetchChannels() {
    if (!token) return { status: 401 };
    try {
      const res = await api('/api/v1/channels');
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        notice('error', `Channel list: HTTP ${res.status}${body.message ? ' — ' + body.message : ''}`, 'chlist');
        return { status: res.status, retryAfter: Number(res.headers.get('Retry-After')) || 0 };
      }
      const list = ((await res.json()).channels || []).filter((x) => x && CHANNEL_RE.test(x.channel));
      $('channel-list').replaceChildren(...list.map((x) => Object.assign(el('option'),
        { value: x.channel, label: `${x.length ?? 0} ticks${x.last_ts ? ', last ' + fmtTs(x.last_ts) : ''}` })));
      $('channel-count').textContent = `${list.length} available`;
      if (firstVisit) adoptFirstChannels(list);
      return { status: res.status };
    } catch { return { status: 0 }; }   // network down / server unreachable
  }

  function adoptFirstChannels(list) {
    clearTimeout(listTimer);
    if (!list.length) {   // nothing ticked yet: look again shortly
      emptyHint.textContent = 'No channel has ticks yet — waiting for the first one (tickstream --demo feeds some).';
      listTimer = setTimeout(fetchChannels, 3000);
      return;
    }
    firstVisit = false;
    for (const { channel } of list.slice(0, AUTO_CHANNELS)) if (!chans.has(channel)) addChannel(channel);
    savePrefs();
    notice('info', `Subscribed to ${Math.min(list.length, AUTO_CHANNELS)} of ${list.length} channels this token may read`);
  }

  // ---- REST: what a channel looked like before this page subscribed ----------------------
  const enc = encodeURIComponent;

  // The newest ticks up to the cursor (or the newest at all), so charts and the table
  // are full at once; the subscription then resumes right after them, so no tick is
  // shown twice and none is missing.
  async function loadHistory(c) {
    const cur = cursors[c.name];
    const res = await api(`/api/v1/channels/${enc(c.name)}/ticks?order=desc&limit=${HISTORY_PAGE}`
      + (cur ? `&until=${cur.id}` : '')).catch(() => null);
    if (!res || !res.ok) return;
    const page = await res.json().catch(() => ({}));
    const ticks = (Array.isArray(page.ticks) ? page.ticks : []).filter((t) => t && ID_RE.test(t.id)).reverse();
    for (const t of ticks) record(c, t, 'history');
    const newest = ticks[ticks.length - 1];
    if (!cur && newest) setCursor(c, newest);
  }

  async function loadCandles(c) {
    const interval = prefs.interval;
    const res = await api(`/api/v1/channels/${enc(c.name)}/candles?interval=${interval}&order=desc&limit=120`).catch(() => null);
    if (!res || !res.ok || interval !== prefs.interval) return;
    const page = await res.json().catch(() => ({}));
    const list = (Array.isArray(page.candles) ? page.candles : []).map(toCandle).filter(Boolean).reverse();
    // Live frames that came first are newer than the page: they win.
    for (const k of c.candles) upsert(list, k);
    c.candles = list;
    c.dirty = true; scheduleRender();
  }

  function toCandle(m) {
    const t = Date.parse(m.t), n = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null);
    if (Number.isNaN(t) || [m.open, m.high, m.low, m.close].some((x) => n(x) === null)) return null;
    return { t, open: m.open, high: m.high, low: m.low, close: m.close, count: m.count, volume: n(m.volume), final: m.final };
  }

  function upsert(list, k) {   // sorted by t; live updates almost always touch the end
    let i = list.length - 1;
    while (i >= 0 && list[i].t > k.t) i--;
    if (i >= 0 && list[i].t === k.t) list[i] = k; else list.splice(i + 1, 0, k);
    if (list.length > 500) list.splice(0, list.length - 500);
  }

  // ---- WebSocket ------------------------------------------------------------------------------
  let ws = null, gen = 0, attempt = 0, openedAt = 0, lastRx = 0;
  let retryTimer = 0, countdownTimer = 0, pingTimer = 0, drainTimer = 0;
  const isOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;

  // Outgoing token bucket, so re-subscribing many channels cannot trip the server's 4029.
  const outQ = [];
  let bucket = SEND_BURST, bucketAt = 0;
  function send(msg) { outQ.push(msg); drain(); }
  function drain() {
    const now = performance.now();
    clearTimeout(drainTimer);
    bucket = Math.min(SEND_BURST, bucket + (now - bucketAt) * SEND_PER_MS);
    bucketAt = now;
    for (; outQ.length && bucket >= 1 && isOpen(); bucket--) ws.send(JSON.stringify(outQ.shift()));
    if (outQ.length && isOpen()) drainTimer = setTimeout(drain, 1 / SEND_PER_MS);
  }

  // A channel on a fresh socket: its history and candles over REST the first time,
  // then the subscription, resuming after the last tick seen.
  async function start(c, g) {
    setChanState(c, 'pending');
    // History and candles are loaded once per page. A channel seen before resumes at
    // once from its cursor while they load (history is all at or before the cursor,
    // so the two never overlap); a channel new to this browser takes its cursor from
    // the history page, so it waits for it.
    const resumable = !!cursors[c.name];
    c.loading ??= Promise.all([loadHistory(c), loadCandles(c)]);
    if (!resumable) await c.loading;
    if (c.loaded && !c.candles.length) await loadCandles(c);   // after an interval change
    c.loading.then(() => { c.loaded = true; });
    if (g !== gen || chans.get(c.name) !== c || !isOpen()) return;
    subscribe(c);
  }

  function subscribe(c) {
    const cur = cursors[c.name], msg = { type: 'subscribe', channel: c.name, candles: prefs.interval };
    if (prefs.rate) msg.rate = prefs.rate;   // a sample suited to drawing; the cursors stay exact
    setChanState(c, 'pending');
    if (cur) {   // resume right after the last tick seen; no cursor = the server's recent replay
      msg.since = cur.id;
      if (cur.seq !== null) msg.seq = cur.seq;   // makes the server's gap count exact
      if (cur.epoch !== null) msg.epoch = cur.epoch;
    }
    send(msg);
  }

  // Forget the current socket first (so its late events are ignored), then close it.
  function dropSocket(reason) {
    const s = ws;
    ws = null;
    clearInterval(pingTimer); clearTimeout(drainTimer);
    outQ.length = 0;   // subscriptions are rebuilt from the cursors on the next open
    if (s) try { s.close(1000, reason); } catch { /* already closing */ }
  }

  function connect() {
    const g = ++gen;
    clearTimeout(retryTimer); clearInterval(countdownTimer); dropSocket('reconnecting');
    openedAt = 0;
    if (!token) { setStatus('closed', 'No token — paste one in Settings'); settings.open = true; return; }
    setStatus('connecting', 'Connecting…');
    let sock;
    try {   // browsers cannot set headers on a WebSocket: the token rides in a subprotocol
      sock = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
        ['tickstream.v1', 'tickstream.bearer.' + token]);
    } catch (e) {   // e.g. characters that are not allowed in a subprotocol
      return setStatus('closed', 'Token is not usable: ' + e.message);
    }
    ws = sock;
    sock.onopen = () => {
      if (sock !== ws) return;
      openedAt = lastRx = Date.now();
      bucket = SEND_BURST;
      for (const c of chans.values()) start(c, g);
      pingTimer = setInterval(heartbeat, PING_MS);
      refreshStatus();
    };
    sock.onmessage = (ev) => { if (sock === ws) onMessage(ev.data); };
    sock.onclose = (ev) => { if (sock === ws) onClose(ev.code, ev.reason); };
  }

  function heartbeat() {
    if (!isOpen()) return;
    if (Date.now() - lastRx < SILENCE_MS) return send({ type: 'ping' });
    dropSocket('silent');   // half-open TCP: don't wait for the browser to notice
    onClose(1006, 'no data for 60 s');
  }

  function backoff(minMs = 0) {   // exponential with "equal jitter" (½…1 × base·2ⁿ), capped
    const d = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt);
    attempt = Math.min(attempt + 1, 16);
    return Math.max(minMs, d / 2 + Math.random() * (d / 2));
  }

  function retryIn(ms, why) {
    const until = Date.now() + ms;
    const tick = () => { countdownEl.textContent = `in ${Math.max(0, Math.ceil((until - Date.now()) / 1000))} s`; };
    setStatus('reconnecting', `Reconnecting — ${why}`); tick(); clearInterval(countdownTimer);
    countdownTimer = setInterval(tick, 1000);
    retryTimer = setTimeout(connect, ms);
  }

  async function onClose(code, reason) {
    const wasOpen = openedAt > 0, why = `${code}${reason ? ' ' + reason : ''}`;
    dropSocket();
    if (wasOpen && Date.now() - openedAt > STABLE_MS) attempt = 0;
    openedAt = 0;
    for (const c of chans.values()) if (c.state !== 'error') setChanState(c, 'offline');
    if (wasOpen) notice(code === 1000 || code === 1012 ? 'info' : 'warn', `Connection closed (${why})`);
    const askToken = (text) => { setStatus('closed', text + ' — paste a new token in Settings'); settings.open = true; };
    switch (code) {
      case 4001: return askToken('Token expired');   // the same token would only loop
      case 4003: return setStatus('closed', `Forbidden (${why})`);
      case 1012: return retryIn(250 + Math.random() * 1500, 'server restarting');   // jitter spreads the herd
      case 4029: attempt += 2; return retryIn(backoff(15e3), 'rate limited');
      case 1013: return retryIn(backoff(5e3), 'server asked to try later');
    }
    if (wasOpen) return retryIn(backoff(), `closed (${why})`);
    // Refused before the upgrade: ask REST what is wrong.
    const g = gen, probe = await fetchChannels();
    if (g !== gen) return;   // the user reconnected meanwhile
    if (probe.status === 401) askToken('Token rejected (invalid or expired)');
    else if (probe.status === 429) retryIn(Math.max(probe.retryAfter * 1000, backoff()), 'rate limited');
    else retryIn(backoff(), probe.status === 503 ? 'server not ready' : 'connection failed');
  }

  function refreshStatus() {
    if (!isOpen()) return;
    const busy = [...chans.values()].some((c) => c.state === 'pending' || c.state === 'replaying');
    setStatus('live', busy ? 'Connected — catching up' : 'Live');
  }

  // ---- server frames --------------------------------------------------------------------------
  function onMessage(data) {
    lastRx = Date.now();
    let m;
    try { m = JSON.parse(data); } catch { return; }
    // Frames for channels no longer selected (in flight after unsubscribe) are ignored.
    const c = m && typeof m.channel === 'string' ? chans.get(m.channel) : undefined;
    switch (m && m.type) {
      case 'tick': if (c) onTick(c, m); break;
      case 'candle':
        if (c && m.interval === prefs.interval) { const k = toCandle(m); if (k) { upsert(c.candles, k); c.dirty = true; scheduleRender(); } }
        break;
      case 'subscribed':   // a changed epoch needs nothing here: the server follows with a gap frame
        if (c) { c.replayed = c.replaySkipped = 0; c.gapPending = false; c.fresh = true; setChanState(c, 'replaying'); }
        break;
      case 'gap': if (c) onGap(c, m); break;
      case 'live':
        if (!c) break;
        setChanState(c, 'live');
        c.liveSince = Date.now(); c.arrivals.length = c.sizes.length = c.ticksIn = 0;
        if (c.replayed) {
          notice('info', `${c.name}: replayed ${c.replayed} tick${c.replayed === 1 ? '' : 's'} from history`
            + (c.replaySkipped ? ` (a sample: ${c.replaySkipped} more skipped)` : '') + ', now live');
        }
        refreshStatus();
        break;
      case 'error':
        notice('error', `Server error${m.channel ? ' on ' + m.channel : ''}: ${m.code || '?'}${m.message ? ' — ' + m.message : ''}`);
        if (!c) break;
        setChanState(c, 'error', m.code || '?');
        if (m.code === 'rate_limited') {   // transient: try this channel again a little later
          setTimeout(() => { if (chans.get(c.name) === c && c.state === 'error' && isOpen()) subscribe(c); },
            5000 + Math.random() * 5000);
        }
        refreshStatus();
        break;
      default: break;   // pong (lastRx is updated above), or a frame type newer than this page
    }
  }

  function onGap(c, m) {
    c.gapPending = true;   // the next tick may legitimately jump in seq or epoch
    c.gaps++;
    const missed = Number.isInteger(m.missed) ? `${m.missed} tick${m.missed === 1 ? '' : 's'}` : 'an unknown number of ticks';
    const why = m.reason === 'epoch' ? 'the stream was reset (new epoch): history before it is gone'
      : m.reason === 'rollback' ? `a Redis failover rolled the stream back: ${missed} lost`
        : `${missed} trimmed from history before this page could read them`;
    notice('warn', `Gap on ${c.name}: ${why}; resuming at ${m.resume_from ?? 'the next tick'}`);
    c.dirty = true; scheduleRender();
  }

  function cmpId(a, b) {   // Redis stream ids "ms-n": compare numerically, part by part
    const [am, an] = a.split('-').map(Number), [bm, bn] = b.split('-').map(Number);
    return am - bm || an - bn;
  }

  function setCursor(c, t) {
    cursors[c.name] = { id: t.id, seq: Number.isSafeInteger(t.seq) ? t.seq : null, epoch: typeof t.epoch === 'string' ? t.epoch : null };
    scheduleCursorSave();
  }

  function onTick(c, t) {
    if (!ID_RE.test(t.id)) return;
    const cur = cursors[c.name];
    // The contract, checked here in the open: exactly once, in id order, and within
    // an epoch seq = previous + skipped + 1 (skipped: what a rate left out; absent = 0)
    // — unless a gap frame announced otherwise. `skipped: null` (not countable) may
    // only come first after a (re)subscribe or a gap, where the check starts again.
    const skipped = t.skipped ?? 0;
    if (cur && !c.gapPending) {
      if (t.epoch === cur.epoch && cmpId(t.id, cur.id) <= 0) {
        c.breaks++; c.dirty = true;
        notice('error', `${c.name}: duplicate or out-of-order tick ${t.id} (last ${cur.id}), dropped`, 'dup:' + c.name);
        return;   // keeps the resume cursor monotonic
      }
      if (cur.epoch !== null && t.epoch !== cur.epoch) {
        c.breaks++;
        notice('error', `${c.name}: epoch changed ${cur.epoch} → ${t.epoch} without a gap notice`, 'ep:' + c.name);
      } else if (t.skipped === null && !c.fresh) {
        c.breaks++;
        notice('error', `${c.name}: tick ${t.id} does not say how many ticks were skipped before it`, 'skip:' + c.name);
      } else if (cur.seq !== null && Number.isInteger(t.seq) && t.skipped !== null && t.seq !== cur.seq + skipped + 1) {
        c.breaks++;
        notice('error', `${c.name}: seq jumped ${cur.seq} → ${t.seq}${skipped ? ` (${skipped} skipped)` : ''} without a gap notice`, 'seq:' + c.name);
      } else {
        c.checked++;
      }
    }
    c.gapPending = c.fresh = false;
    setCursor(c, t);
    const replay = c.state === 'replaying', n = Number.isInteger(skipped) && skipped > 0 ? skipped : 0;
    if (replay) { c.replayed++; c.replaySkipped += n; } else {
      const now = Date.now(), at = Date.parse(t.ingest_ts);
      // ticks/s is the channel's: a sampled frame stands for itself and what it skipped.
      c.arrivals.push(now); c.sizes.push(1 + n); c.ticksIn += 1 + n;
      if (!Number.isNaN(at)) c.latency = now - at;
    }
    record(c, t, replay ? 'replay' : 'live');
  }

  // A tick into the table and the chart ('history' and 'replay' rows are muted).
  function record(c, t, kind) {
    c.count++;
    if (kind !== 'history') {
      c.last = t; c.pending.push({ t, kind });
      // Only the newest ROW_CAP rows can ever be shown; trim in amortised chunks.
      if (c.pending.length > 2 * ROW_CAP) c.pending.splice(0, c.pending.length - ROW_CAP);
    } else {   // older than every row shown: goes below them
      if (!c.last || cmpId(t.id, c.last.id) > 0) c.last = t;
      c.older.push({ t, kind });
    }
    const x = Date.parse(t.ts ?? t.ingest_ts);
    if (typeof t.value === 'number' && Number.isFinite(t.value) && !Number.isNaN(x)) {
      // Producer times may run backwards a little: keep xs sorted for the binary search.
      let i = c.xs.length;
      while (i > 0 && c.xs[i - 1] > x) i--;
      c.xs.splice(i, 0, x); c.ys.splice(i, 0, t.value);
      if (c.xs.length > POINT_CAP * 1.25) { const k = c.xs.length - POINT_CAP; c.xs.splice(0, k); c.ys.splice(0, k); }
    }
    c.dirty = true;
    scheduleRender();
  }

  // ---- rendering: at most once per animation frame, whatever the tick rate -----------------------
  let rafPending = false;
  function scheduleRender() {
    if (!rafPending && !prefs.paused) { rafPending = true; requestAnimationFrame(render); }
  }
  const markAll = () => { for (const c of chans.values()) c.dirty = true; scheduleRender(); };
  function render() {
    rafPending = false;
    if (prefs.paused) return;   // ticks, cursors and buffers keep updating meanwhile
    const col = themeColors();
    for (const c of chans.values()) {
      if (!c.dirty) continue;
      c.dirty = false;
      flushRows(c); showStats(c);
      const cut = TickCharts.lowerBound(c.xs, (c.xs[c.xs.length - 1] ?? 0) - HISTORY_MS);
      if (cut) { c.xs.splice(0, cut); c.ys.splice(0, cut); }
      TickCharts.line(c.lineCanvas, col, col.series[c.color], c.xs, c.ys, prefs.windowSec * 1000);
      TickCharts.candles(c.candleCanvas, col, c.candles, INTERVALS[prefs.interval]);
    }
  }

  function showStats(c) {
    const now = Date.now();
    while (c.arrivals.length && c.arrivals[0] < now - RATE_MS) { c.arrivals.shift(); c.ticksIn -= c.sizes.shift(); }
    // Over the last 5 s, or since the subscription went live when that is shorter.
    const span = Math.min(RATE_MS, now - c.liveSince), known = c.state === 'live' && span >= 1000;
    const perSec = known ? (c.ticksIn * 1000 / span).toFixed(1) : '—';
    c.rateEl.textContent = perSec;
    c.rateEl.title = RATE_TITLE + (prefs.rate ? `; this page is sent a sample of at most ${prefs.rate} of them a second`
      + (known ? ` (${(c.arrivals.length * 1000 / span).toFixed(1)}/s now)` : '') + ', each frame counting the ticks it skipped' : '');
    c.sampleEl.hidden = !prefs.rate;
    c.sampleEl.textContent = prefs.rate ? `sample: at most ${prefs.rate} ticks/s${known ? ` of ${perSec}/s` : ''}`
      + ' — Skipped counts the ticks left out before each row' : '';
    c.latencyEl.textContent = c.latency === null ? '—' : `${Math.max(0, c.latency)} ms`;
    c.seqEl.textContent = c.last ? `${c.last.seq ?? '—'}` : '—';
    const ok = c.breaks === 0;
    c.checkEl.dataset.ok = String(ok);
    c.checkEl.textContent = (ok ? `✓ continuous (${c.checked})` : `✗ ${c.breaks} break${c.breaks === 1 ? '' : 's'}`)
      + (c.gaps ? `, ${c.gaps} gap${c.gaps === 1 ? '' : 's'} announced` : '');
    c.candleCaption.textContent = `candles · ${prefs.interval}`;
    if (c.last !== c.shown) { c.shown = c.last; c.lastEl.textContent = fmtVal(c.last.value); }
  }

  function flushRows(c) {
    if (c.older.length) {   // newest first, below what is there, while there is room
      const room = ROW_CAP - c.tbody.rows.length - Math.min(c.pending.length, ROW_CAP), frag = document.createDocumentFragment();
      const rows = room > 0 ? c.older.slice(-room) : [];
      c.older = [];
      for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));
      c.tbody.append(frag);
    }
    if (!c.pending.length) return;
    const rows = c.pending.slice(-ROW_CAP), frag = document.createDocumentFragment();
    c.pending = [];
    for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));   // newest first
    if (rows.length === ROW_CAP) return c.tbody.replaceChildren(frag);
    c.tbody.prepend(frag);
    while (c.tbody.rows.length > ROW_CAP) c.tbody.lastElementChild.remove();
  }

  function makeRow({ t, kind }) {
    const tr = el('tr', kind === 'live' ? null : 'replay'), data = t.data == null ? '' : JSON.stringify(t.data);
    tr.dataset.id = t.id;
    if (Number.isInteger(t.seq)) tr.dataset.seq = String(t.seq);
    const dataTd = el('td', 'data mono', data.length > 160 ? data.slice(0, 160) + '…' : data);
    if (data.length > 160) dataTd.title = data.slice(0, 2000);
    if (Number.isInteger(t.skipped)) tr.dataset.skipped = String(t.skipped);
    tr.append(el('td', 'mono', fmtTs(t.ts)), el('td', 'num', t.seq ?? ''), el('td', 'num', t.skipped === null ? '?' : t.skipped ?? ''),
      el('td', 'mono', t.id), el('td', 'num', fmtVal(t.value)), dataTd);
    return tr;
  }

  // Theme colours live in style.css (custom properties); read them once per theme.
  let colors = null;
  function themeColors() {
    if (colors) return colors;
    const cs = getComputedStyle(document.documentElement), v = (n) => cs.getPropertyValue(n).trim();
    return (colors = { muted: v('--muted'), grid: v('--grid'), up: v('--up'), down: v('--down'),
      series: Array.from({ length: PALETTE }, (_, i) => v('--c' + i)) });
  }

  // ---- UI wiring ----------------------------------------------------------------------------------
  const pauseBtn = $('pause'), themeBtn = $('theme'), windowSel = $('window'), intervalSel = $('interval'), rateSel = $('rate');
  const channelInput = $('channel-input'), addError = $('add-error'), tokenInput = $('token-input');
  const resizer = new ResizeObserver(markAll);

  function applyPrefs() {
    document.documentElement.dataset.theme = prefs.theme;
    colors = null;
    themeBtn.setAttribute('aria-pressed', String(prefs.theme === 'dark'));
    themeBtn.textContent = prefs.theme === 'dark' ? 'Light theme' : 'Dark theme';
    pauseBtn.setAttribute('aria-pressed', String(prefs.paused));
    pauseBtn.textContent = prefs.paused ? 'Resume' : 'Pause';
    $('paused-badge').hidden = !prefs.paused;
    windowSel.value = String(prefs.windowSec);
    intervalSel.value = prefs.interval;
    rateSel.value = String(prefs.rate);
    savePrefs();
    markAll();
  }
  // Any explicit choice makes this visit's selection the saved one.
  const choose = () => { firstVisit = false; clearTimeout(listTimer); };

  $('add-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = channelInput.value.trim();
    const err = !CHANNEL_RE.test(name) ? 'Invalid name: a letter or digit, then letters, digits or _ . : - (128 max).'
      : chans.has(name) ? `${name} is already selected.` : '';
    addError.textContent = err;
    channelInput.setAttribute('aria-invalid', String(!!err));
    if (err) return;
    channelInput.value = '';
    choose(); addChannel(name);
    refreshStatus();
  });
  $('refresh-channels').addEventListener('click', fetchChannels);

  const showToken = () => { $('token-info').textContent = token ? 'A token is stored in this browser.' : 'No token stored.'; };
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!tokenInput.value.trim()) return;
    token = tokenInput.value.trim();
    tokenInput.value = '';
    lsSet(KEY.token, token); showToken();
    // Reconnect rather than send {"type":"refresh"}: the new token may carry another
    // subject or channel set, and resuming from the cursors loses nothing.
    attempt = 0;
    connect(); fetchChannels();
  });
  $('token-clear').addEventListener('click', () => { token = ''; lsSet(KEY.token, null); showToken(); connect(); });

  reconnectBtn.addEventListener('click', connect);
  pauseBtn.addEventListener('click', () => { choose(); prefs.paused = !prefs.paused; applyPrefs(); });
  themeBtn.addEventListener('click', () => { choose(); prefs.theme = prefs.theme === 'dark' ? 'light' : 'dark'; applyPrefs(); });
  windowSel.addEventListener('change', () => { choose(); prefs.windowSec = Number(windowSel.value); applyPrefs(); });
  intervalSel.addEventListener('change', () => {
    choose(); prefs.interval = intervalSel.value; applyPrefs();
    // Candle feeds are chosen per subscription: resubscribe everything on a fresh
    // socket (resuming from the cursors loses nothing and repeats nothing).
    for (const c of chans.values()) c.candles = [];
    connect();
  });
  rateSel.addEventListener('change', () => {   // a subscription's rate is set when it subscribes
    choose(); prefs.rate = Number(rateSel.value); applyPrefs();
    connect();
  });
  $('clear-notices').addEventListener('click', () => { noticesEl.replaceChildren(); recent.clear(); });
  setInterval(markAll, 1000);   // keep time axes and ticks/s moving when no ticks arrive
  addEventListener('online', () => { if (statusEl.dataset.state === 'reconnecting') connect(); });   // skip the rest of a long backoff
  // Flush cursors whenever the page may be going away (pagehide also covers mobile and bfcache).
  addEventListener('pagehide', saveCursors);
  document.addEventListener('visibilitychange', () => { if (document.hidden) saveCursors(); });

  // ---- start --------------------------------------------------------------------------------------
  prefs.channels.forEach((name) => createChan(name));
  if (!firstVisit && !prefs.channels.length) emptyHint.textContent = 'No channel selected — add one above.';
  applyPrefs();   // also persists the normalised prefs and colour slots
  showToken(); connect(); fetchChannels();
})();
