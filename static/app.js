// tickstream dashboard — vanilla JS, no dependencies, no build step.
// Loaded from /app.js with `defer`: the server's CSP forbids inline scripts and styles,
// so nothing here writes style attributes either (colours are CSS classes/variables).
'use strict';
(() => {
  const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
  const ID_RE = /^\d+-\d+$/;
  const KEY = { token: 'tickstream.token', cursors: 'tickstream.cursors', prefs: 'tickstream.prefs' };
  const ROW_CAP = 200;            // table rows kept per channel
  const POINT_CAP = 20000;        // chart points kept per channel (memory bound at high rates)
  const HISTORY_MS = 15 * 60e3;   // chart data kept: the largest selectable window
  const PALETTE = 8;              // --c0 … --c7 in style.css
  const PING_MS = 25e3, SILENCE_MS = 60e3;   // silent for 60 s (not even a pong) = dead socket
  const STABLE_MS = 10e3;         // a connection that stayed open this long resets the backoff
  const BACKOFF_BASE = 500, BACKOFF_CAP = 30e3;
  // The server closes with 4029 beyond a burst of 20 then 10 msg/s: stay safely under it.
  const SEND_BURST = 15, SEND_PER_MS = 8 / 1000;

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
  const prefs = {
    channels: [...new Set((Array.isArray(saved.channels) ? saved.channels : []).filter((c) => CHANNEL_RE.test(c)))],
    colors: saved.colors && typeof saved.colors === 'object' ? saved.colors : {},
    theme: ['dark', 'light'].includes(saved.theme) ? saved.theme : matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light',
    paused: saved.paused === true,
    windowSec: [60, 300, 900].includes(saved.windowSec) ? saved.windowSec : 300,
  };
  const savePrefs = () => lsSet(KEY.prefs, JSON.stringify(prefs));

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

  // The dev URL is /?token=…: adopt the token, then drop it from the address bar so it
  // does not linger in history, bookmarks or screenshots.
  let token = (() => {
    const url = new URL(location.href), t = (url.searchParams.get('token') || '').trim();
    if (!url.searchParams.has('token')) return lsGet(KEY.token) || '';
    if (t) lsSet(KEY.token, t);
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
    return t || lsGet(KEY.token) || '';
  })();

  // ---- status, notices ------------------------------------------------------------------
  const statusEl = $('status'), statusText = $('status-text'), countdownEl = $('countdown'), reconnectBtn = $('reconnect');
  const noticesEl = $('notices'), canvas = $('chart'), settings = $('settings');
  const hms = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  const timeFmt = new Intl.DateTimeFormat(undefined, { ...hms, fractionalSecondDigits: 3 });
  const clockFmt = new Intl.DateTimeFormat(undefined, hms);
  const numFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 6 });
  const fmtTs = (s) => { const t = Date.parse(s); return Number.isNaN(t) ? String(s ?? '') : timeFmt.format(t); };
  const fmtVal = (v) => (typeof v === 'number' ? numFmt.format(v) : '');

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    if (statusText.textContent !== text) statusText.textContent = text;   // don't re-announce
    reconnectBtn.hidden = state === 'live' || state === 'connecting';
    if (state !== 'reconnecting') countdownEl.textContent = '';
  }

  // Newest on top. A repeated `key` within 5 s bumps a counter on the existing row, so a
  // burst of self-check warnings cannot flood the list (or a screen reader).
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
    q('table').setAttribute('aria-label', `Ticks on ${name}, newest first`);
    const chip = el('li', 'chip'), rm = el('button', 'remove', '×');
    rm.type = 'button';
    rm.setAttribute('aria-label', `Remove ${name}`);
    rm.addEventListener('click', () => removeChannel(name));
    chip.append(el('span', 'swatch c' + color), el('span', null, name), rm);
    $('chips').append(chip);
    $('tables').append(card);
    const c = { name, color, card, chip, tbody: q('tbody'), badge: q('.badge'), lastEl: q('.last'), metaEl: q('.meta'),
      state: 'offline', errorCode: '', replayed: 0, gapPending: false, count: 0, last: null, shown: null, pending: [], xs: [], ys: [] };
    chans.set(name, c);
    setChanState(c, 'offline');
    $('empty-hint').hidden = true;
  }

  const BADGE = { offline: 'offline', pending: 'subscribing', replaying: 'replaying', live: 'live' };
  function setChanState(c, state, errorCode) {
    c.state = state;
    c.badge.dataset.state = state;
    c.badge.textContent = state === 'error' ? `error: ${errorCode}` : BADGE[state];
  }

  function removeChannel(name) {
    const c = chans.get(name);
    // A subscribe still waiting in the send queue is simply dropped instead.
    const q = outQ.findIndex((m) => m.type === 'subscribe' && m.channel === name);
    if (q >= 0) outQ.splice(q, 1);
    else if (isOpen() && c.state !== 'error') send({ type: 'unsubscribe', channel: name });
    c.card.remove(); c.chip.remove(); chans.delete(name);
    prefs.channels = prefs.channels.filter((n) => n !== name);
    delete prefs.colors[name];
    // Forget the cursor too: re-adding later starts with the recent replay, not with a
    // catch-up of everything missed while the channel was deselected.
    delete cursors[name];
    saveCursors(); savePrefs(); markChart(); refreshStatus();
    $('empty-hint').hidden = chans.size > 0;
  }

  // GET /api/v1/channels fills the picker. It is also how a failed WebSocket handshake is
  // diagnosed: browsers hide the HTTP status (401/429/503…) of a refused upgrade.
  async function fetchChannels() {
    if (!token) return { status: 401 };
    try {
      const res = await fetch('/api/v1/channels', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        notice('error', `Channel list: HTTP ${res.status}${body.message ? ' — ' + body.message : ''}`, 'chlist');
        return { status: res.status, retryAfter: Number(res.headers.get('Retry-After')) || 0 };
      }
      const list = ((await res.json()).channels || []).filter((x) => x && CHANNEL_RE.test(x.channel));
      $('channel-list').replaceChildren(...list.map((x) => Object.assign(el('option'),
        { value: x.channel, label: `${x.length ?? 0} ticks${x.last_ts ? ', last ' + fmtTs(x.last_ts) : ''}` })));
      $('channel-count').textContent = `${list.length} available`;
      return { status: res.status };
    } catch { return { status: 0 }; }   // network down / server unreachable
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

  function subscribe(name) {
    const c = chans.get(name), cur = cursors[name], msg = { type: 'subscribe', channel: name };
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
    gen++;
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
      prefs.channels.forEach(subscribe);
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
      case 'subscribed':   // a changed epoch needs nothing here: the server follows with a gap frame
        if (c) { c.replayed = 0; c.gapPending = false; setChanState(c, 'replaying'); }
        break;
      case 'gap':
        if (!c) break;
        c.gapPending = true;   // the next tick may legitimately jump in seq or epoch
        notice('warn', `Gap on ${c.name}: ${m.reason === 'epoch' ? 'stream was reset (new epoch)'
          : `${m.reason}, missed ${Number.isInteger(m.missed) ? m.missed : 'an unknown number of'} ticks`}`
          + `; resuming at ${m.resume_from ?? 'the next tick'}`);
        break;
      case 'live':
        if (!c) break;
        setChanState(c, 'live');
        if (c.replayed) notice('info', `${c.name}: replayed ${c.replayed} tick${c.replayed === 1 ? '' : 's'}`);
        refreshStatus();
        break;
      case 'error':
        notice('error', `Server error${m.channel ? ' on ' + m.channel : ''}: ${m.code || '?'}${m.message ? ' — ' + m.message : ''}`);
        if (!c) break;
        setChanState(c, 'error', m.code || '?');
        if (m.code === 'rate_limited') {   // transient: try this channel again a little later
          setTimeout(() => { if (chans.get(c.name) === c && c.state === 'error' && isOpen()) subscribe(c.name); },
            5000 + Math.random() * 5000);
        }
        refreshStatus();
        break;
      default: break;   // pong (lastRx is updated above), or a frame type newer than this page
    }
  }

  function cmpId(a, b) {   // Redis stream ids "ms-n": compare numerically, part by part
    const [am, an] = a.split('-').map(Number), [bm, bn] = b.split('-').map(Number);
    return am - bm || an - bn;
  }

  function onTick(c, t) {
    if (!ID_RE.test(t.id)) return;
    const cur = cursors[c.name];
    // Client-side self-check of the contract: exactly once, in id order, and within an
    // epoch seq = previous + 1 — unless a gap frame announced otherwise.
    if (cur && !c.gapPending) {
      if (t.epoch === cur.epoch && cmpId(t.id, cur.id) <= 0) {
        notice('warn', `${c.name}: duplicate or out-of-order tick ${t.id} (last ${cur.id}), dropped`, 'dup:' + c.name);
        return;   // keeps the resume cursor monotonic
      }
      if (cur.epoch !== null && t.epoch !== cur.epoch) {
        notice('warn', `${c.name}: epoch changed ${cur.epoch} → ${t.epoch} without a gap notice`, 'ep:' + c.name);
      } else if (cur.seq !== null && Number.isInteger(t.seq) && t.seq !== cur.seq + 1) {
        notice('warn', `${c.name}: seq jumped ${cur.seq} → ${t.seq} without a gap notice`, 'seq:' + c.name);
      }
    }
    c.gapPending = false;
    cursors[c.name] = { id: t.id, seq: Number.isSafeInteger(t.seq) ? t.seq : null, epoch: typeof t.epoch === 'string' ? t.epoch : null };
    scheduleCursorSave();

    const replay = c.state === 'replaying';
    if (replay) c.replayed++;
    c.count++; c.last = t; c.pending.push({ t, replay });
    // Only the newest ROW_CAP rows can ever be shown; trim in amortised chunks.
    if (c.pending.length > 2 * ROW_CAP) c.pending.splice(0, c.pending.length - ROW_CAP);
    const x = Date.parse(t.ts ?? t.ingest_ts);
    if (typeof t.value === 'number' && Number.isFinite(t.value) && !Number.isNaN(x)) {
      c.xs.push(x); c.ys.push(t.value);
      if (c.xs.length > POINT_CAP * 1.25) { const k = c.xs.length - POINT_CAP; c.xs.splice(0, k); c.ys.splice(0, k); }
      chartDirty = true;
    }
    scheduleRender();
  }

  // ---- rendering: at most once per animation frame, whatever the tick rate -----------------------
  let rafPending = false, chartDirty = true;
  function scheduleRender() {
    if (!rafPending && !prefs.paused) { rafPending = true; requestAnimationFrame(render); }
  }
  const markChart = () => { chartDirty = true; scheduleRender(); };
  function render() {
    rafPending = false;
    if (prefs.paused) return;   // ticks, cursors and buffers keep updating meanwhile
    for (const c of chans.values()) flushRows(c);
    if (chartDirty) drawChart();
  }

  function flushRows(c) {
    if (c.last !== c.shown) {
      c.shown = c.last;
      c.lastEl.textContent = fmtVal(c.last.value);
      c.metaEl.textContent = `seq ${c.last.seq ?? '—'} · ${c.count} received`;
    }
    if (!c.pending.length) return;
    const rows = c.pending.slice(-ROW_CAP), frag = document.createDocumentFragment();
    c.pending = [];
    for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));   // newest first
    if (rows.length === ROW_CAP) return c.tbody.replaceChildren(frag);
    c.tbody.prepend(frag);
    while (c.tbody.rows.length > ROW_CAP) c.tbody.lastElementChild.remove();
  }

  function makeRow({ t, replay }) {
    const tr = el('tr', replay ? 'replay' : null), data = t.data == null ? '' : JSON.stringify(t.data);
    const dataTd = el('td', 'data mono', data.length > 160 ? data.slice(0, 160) + '…' : data);
    if (data.length > 160) dataTd.title = data.slice(0, 2000);
    tr.append(el('td', 'mono', fmtTs(t.ts)), el('td', 'num', t.seq ?? ''), el('td', 'mono', t.id), el('td', 'num', fmtVal(t.value)), dataTd);
    return tr;
  }

  // Theme colours live in style.css (custom properties); read them once per theme.
  let colors = null;
  function themeColors() {
    if (colors) return colors;
    const cs = getComputedStyle(document.documentElement), v = (n) => cs.getPropertyValue(n).trim();
    return (colors = { muted: v('--muted'), grid: v('--grid'), series: Array.from({ length: PALETTE }, (_, i) => v('--c' + i)) });
  }

  function lowerBound(a, x) {   // first index with a[i] >= x (tick ts are assumed roughly ascending)
    let lo = 0, hi = a.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < x) lo = m + 1; else hi = m; }
    return lo;
  }

  function drawChart() {
    chartDirty = false;
    const W = canvas.clientWidth, H = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
    if (!W || !H) return;
    if (canvas.width !== Math.round(W * dpr)) canvas.width = Math.round(W * dpr);
    if (canvas.height !== Math.round(H * dpr)) canvas.height = Math.round(H * dpr);
    const g = canvas.getContext('2d'), col = themeColors();
    g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, W, H);
    Object.assign(g, { font: '11px system-ui, sans-serif', fillStyle: col.muted });

    const now = Date.now(), win = prefs.windowSec * 1000;
    let newest = -Infinity;
    for (const c of chans.values()) {
      if (!c.xs.length) continue;
      const cut = lowerBound(c.xs, c.xs[c.xs.length - 1] - HISTORY_MS);
      if (cut) { c.xs.splice(0, cut); c.ys.splice(0, cut); }
      newest = Math.max(newest, c.xs[c.xs.length - 1]);
    }
    // The right edge is "now", so the chart scrolls in real time — unless all data is older
    // than the window (replayed history, stalled producer, skewed producer clock): then
    // anchor on the newest tick so there is still something to see.
    const end = newest > -Infinity && newest < now - win ? newest : Math.max(now, newest), start = end - win;

    let lo = Infinity, hi = -Infinity;
    const series = [];
    for (const c of chans.values()) {
      const i0 = lowerBound(c.xs, start), n0 = series.length;
      for (let i = i0; i < c.xs.length; i++) {
        if (c.xs[i] > end) continue;
        if (series.length === n0) series.push({ c, i0 });
        lo = Math.min(lo, c.ys[i]);
        hi = Math.max(hi, c.ys[i]);
      }
    }
    if (!series.length) {
      Object.assign(g, { textAlign: 'center', textBaseline: 'middle' });
      return g.fillText(chans.size ? 'Waiting for numeric values…' : 'Add a channel to start', W / 2, H / 2);
    }
    const pad = (hi - lo || Math.abs(hi) * 0.01 || 1) * 0.05;   // a flat line ends up centred
    lo -= pad; hi += pad;

    // Y grid on a 1/2/5 × 10ⁿ step about every 50 px; x grid lines at least 80 px apart.
    const top = 8, bottom = H - 20, right = W - 10;
    const raw = (hi - lo) / Math.max(2, Math.floor((bottom - top) / 50)), p = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].find((f) => f * p >= raw) * p, dec = Math.min(8, Math.max(0, -Math.floor(Math.log10(step))));
    const yTicks = [];
    for (let k = Math.ceil(lo / step); k * step <= hi && yTicks.length < 50; k++) yTicks.push([k * step, (k * step).toFixed(dec)]);
    const left = 16 + Math.max(0, ...yTicks.map((t) => g.measureText(t[1]).width));
    const X = (t) => left + ((t - start) * (right - left)) / win;
    const Y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
    const xStep = [5, 10, 15, 30, 60, 120, 300].map((s) => s * 1000).find((s) => (s * (right - left)) / win >= 80) || 600e3;

    Object.assign(g, { strokeStyle: col.grid, lineWidth: 1, textAlign: 'center', textBaseline: 'top' });
    g.beginPath();
    for (let t = Math.ceil(start / xStep) * xStep; t <= end; t += xStep) {
      const x = Math.round(X(t)) + 0.5;
      g.moveTo(x, top); g.lineTo(x, bottom);
      if (x > left + 25 && x < right - 25) g.fillText(clockFmt.format(t), x, bottom + 5);
    }
    Object.assign(g, { textAlign: 'right', textBaseline: 'middle' });
    for (const [v, label] of yTicks) {
      const y = Math.round(Y(v)) + 0.5;
      g.moveTo(left, y); g.lineTo(right, y); g.fillText(label, left - 6, y);
    }
    g.stroke();
    Object.assign(g, { lineWidth: 1.5, lineJoin: 'round' });
    for (const { c, i0 } of series) {
      g.strokeStyle = g.fillStyle = col.series[c.color];
      plot(g, c, i0, start, end, X, Y);
    }
  }

  // One series. Points landing on the same pixel column fold into a vertical min–max
  // stroke, so the path has ~2 segments per pixel however many ticks are in the window.
  function plot(g, { xs, ys }, i0, start, end, X, Y) {
    let col = NaN, lo = 0, hi = 0, moved = false, lastX = 0, lastY = 0;
    const flush = () => {
      if (Number.isNaN(col)) return;
      if (moved) g.lineTo(col, Y(lo)); else { g.moveTo(col, Y(lo)); moved = true; }
      if (hi !== lo) g.lineTo(col, Y(hi));
    };
    g.beginPath();
    for (let i = i0; i < xs.length; i++) {
      if (xs[i] < start || xs[i] > end) continue;
      const px = Math.round(X(xs[i])), v = ys[i];
      if (px !== col) { flush(); col = px; lo = hi = v; } else { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      lastX = px; lastY = Y(v);
    }
    flush(); g.stroke();
    g.fillRect(lastX - 2.5, lastY - 2.5, 5, 5);   // mark the latest value
  }

  // ---- UI wiring ----------------------------------------------------------------------------------
  const pauseBtn = $('pause'), themeBtn = $('theme'), windowSel = $('window');
  const channelInput = $('channel-input'), addError = $('add-error'), tokenInput = $('token-input');

  function applyPrefs() {
    document.documentElement.dataset.theme = prefs.theme;
    colors = null;
    themeBtn.setAttribute('aria-pressed', String(prefs.theme === 'dark'));
    pauseBtn.setAttribute('aria-pressed', String(prefs.paused));
    pauseBtn.textContent = prefs.paused ? 'Resume' : 'Pause';
    $('paused-badge').hidden = !prefs.paused;
    windowSel.value = String(prefs.windowSec);
    savePrefs();
    markChart();
  }

  $('add-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = channelInput.value.trim();
    const err = !CHANNEL_RE.test(name) ? 'Invalid name: a letter or digit, then letters, digits or _ . : - (128 max).'
      : chans.has(name) ? `${name} is already selected.` : '';
    addError.textContent = err;
    channelInput.setAttribute('aria-invalid', String(!!err));
    if (err) return;
    channelInput.value = '';
    prefs.channels.push(name); createChan(name); savePrefs();
    if (isOpen()) subscribe(name);
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
  pauseBtn.addEventListener('click', () => { prefs.paused = !prefs.paused; applyPrefs(); });
  themeBtn.addEventListener('click', () => { prefs.theme = prefs.theme === 'dark' ? 'light' : 'dark'; applyPrefs(); });
  windowSel.addEventListener('change', () => { prefs.windowSec = Number(windowSel.value); applyPrefs(); });
  $('clear-notices').addEventListener('click', () => { noticesEl.replaceChildren(); recent.clear(); });
  new ResizeObserver(markChart).observe(canvas);
  setInterval(markChart, 1000);   // keep the time axis moving when no ticks arrive
  addEventListener('online', () => { if (statusEl.dataset.state === 'reconnecting') connect(); });   // skip the rest of a long backoff
  // Flush cursors whenever the page may be going away (pagehide also covers mobile and bfcache).
  addEventListener('pagehide', saveCursors);
  document.addEventListener('visibilitychange', () => { if (document.hidden) saveCursors(); });

  // ---- start --------------------------------------------------------------------------------------
  prefs.channels.forEach((name) => createChan(name));
  applyPrefs();   // also persists the normalised prefs and colour slots
  showToken(); connect(); fetchChannels();
})();
