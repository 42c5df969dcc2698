// Channel cards: one <article class="card"> per channel (from #card-tpl) and its chip,
// drawn from the channel's ChannelModel (model.js) at most once per animation frame,
// whatever the tick rate. Text only (textContent), never markup: ticks are server data.
// Nothing here touches the DOM until initCards() is called.

import { candles, line } from './chart.js';
import { INTERVALS, ROW_CAP } from './model.js';
import { PALETTE } from './prefs.js';
import { badgeView, checkView, fmtTs, fmtVal, RATE_TITLE, rateTitle, sampleNote } from './texts.js';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
};

let page = null;          // {prefs, chans}: what app.js shares
let resizer = null;       // redraws a card whose canvas changed size
let rafPending = false;
let colors = null;        // the theme's colours, read from style.css once per theme

/** Starts drawing `page.chans` (name -> channel) with `page.prefs`. */
export function initCards(shared) {
  page = shared;
  resizer = new ResizeObserver(markAll);
  setInterval(markAll, 1000);   // keep time axes and ticks/s moving when no ticks arrive
}

/** The card and chip of a channel; `onRemove` is the chip's × button. */
export function createCard(name, color, onRemove) {
  const card = $('card-tpl').content.firstElementChild.cloneNode(true);
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
  rm.addEventListener('click', onRemove);
  chip.append(el('span', 'swatch c' + color), el('span', null, name), rm);
  $('chips').append(chip);
  $('tables').append(card);
  const ui = { card, chip, tbody: q('tbody'), badge: q('.badge'), lastEl: q('.last'), rateEl: q('.rate'),
    latencyEl: q('.latency'), seqEl: q('.seq'), checkEl: q('.check'), lineCanvas: q('canvas.line'),
    candleCanvas: q('canvas.candles'), candleCaption: q('.candle-caption'), sampleEl: q('.sample-note'), shown: null };
  resizer.observe(ui.lineCanvas); resizer.observe(ui.candleCanvas);
  return ui;
}

export function removeCard(ui) {
  resizer.unobserve(ui.lineCanvas); resizer.unobserve(ui.candleCanvas);
  ui.card.remove(); ui.chip.remove();
}

/** The badge from badgeView's arguments. */
export function showBadge(ui, args) {
  const { state, text } = badgeView(args);
  ui.badge.dataset.state = state;
  if (ui.badge.textContent !== text) ui.badge.textContent = text;
}

/** Colours come from the theme: read again on the next frame. */
export function themeChanged() { colors = null; markAll(); }

function markAll() {
  for (const c of page.chans.values()) c.model.dirty = true;
  scheduleRender();
}

export function scheduleRender() {
  if (!rafPending && !page.prefs.paused) { rafPending = true; requestAnimationFrame(render); }
}

function render() {
  rafPending = false;
  if (page.prefs.paused) return;   // ticks, cursors and buffers keep updating meanwhile
  const col = themeColors(), now = Date.now();
  for (const c of page.chans.values()) {
    if (!c.model.dirty) continue;
    c.model.dirty = false;
    draw(c, col, now);
  }
}

// Writes a property only when it changes: most of a card stays as it was from one
// frame to the next, and an unchanged write still costs the page a re-layout.
const put = (el, prop, value) => { if (el[prop] !== value) el[prop] = value; };

function draw(c, col, now) {
  const m = c.model, ui = c.ui, { rate, interval, windowSec } = page.prefs;
  flushRows(m, ui.tbody);
  // ticks/s only once the subscription is live (a replay is no rate).
  const r = c.sub?.state === 'live' ? m.rate.read(now) : { ticks: null, frames: null };
  put(ui.rateEl, 'textContent', r.ticks == null ? '—' : r.ticks.toFixed(1));
  put(ui.rateEl, 'title', rateTitle(rate, r.frames));
  put(ui.sampleEl, 'hidden', !rate);
  put(ui.sampleEl, 'textContent', sampleNote(rate, r.ticks));
  put(ui.latencyEl, 'textContent', m.latency === null ? '—' : `${Math.max(0, m.latency)} ms`);
  put(ui.seqEl, 'textContent', m.last ? `${m.last.seq ?? '—'}` : '—');
  const check = checkView(m);
  put(ui.checkEl.dataset, 'ok', String(check.ok));
  put(ui.checkEl, 'textContent', check.text);
  put(ui.candleCaption, 'textContent', `candles · ${interval}`);
  if (m.last !== ui.shown) { ui.shown = m.last; ui.lastEl.textContent = fmtVal(m.last?.value); }
  m.trimPoints();
  line(ui.lineCanvas, col, col.series[m.color], m.xs, m.ys, windowSec * 1000);
  candles(ui.candleCanvas, col, m.candles, INTERVALS[interval]);
}

// New rows on top (newest first), history rows below what is there while there is room.
function flushRows(m, tbody) {
  if (m.older.length) {
    const room = ROW_CAP - tbody.rows.length - Math.min(m.pending.length, ROW_CAP), frag = document.createDocumentFragment();
    const rows = room > 0 ? m.older.slice(-room) : [];
    m.older = [];
    for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));
    tbody.append(frag);
  }
  if (!m.pending.length) return;
  const rows = m.pending.slice(-ROW_CAP), frag = document.createDocumentFragment();
  m.pending = [];
  for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));
  if (rows.length === ROW_CAP) return void tbody.replaceChildren(frag);
  tbody.prepend(frag);
  while (tbody.rows.length > ROW_CAP) tbody.lastElementChild.remove();
}

function makeRow({ t, kind }) {
  const tr = el('tr', kind === 'live' ? null : 'replay'), data = t.data == null ? '' : JSON.stringify(t.data);
  tr.dataset.id = t.id;
  if (Number.isInteger(t.seq)) tr.dataset.seq = String(t.seq);
  if (Number.isInteger(t.skipped)) tr.dataset.skipped = String(t.skipped);
  const dataTd = el('td', 'data mono', data.length > 160 ? data.slice(0, 160) + '…' : data);
  if (data.length > 160) dataTd.title = data.slice(0, 2000);
  tr.append(el('td', 'mono', fmtTs(t.ts)), el('td', 'num', t.seq ?? ''), el('td', 'num', t.skipped === null ? '?' : t.skipped ?? ''),
    el('td', 'mono', t.id), el('td', 'num', fmtVal(t.value)), dataTd);
  return tr;
}

function themeColors() {
  if (colors) return colors;
  const cs = getComputedStyle(document.documentElement), v = (n) => cs.getPropertyValue(n).trim();
  return (colors = { muted: v('--muted'), grid: v('--grid'), up: v('--up'), down: v('--down'),
    series: Array.from({ length: PALETTE }, (_, i) => v('--c' + i)) });
}
