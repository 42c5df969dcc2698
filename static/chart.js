// The dashboard's charts: canvas drawing only, no state of its own (cards.js calls it
// once per animation frame for a card that changed). Each channel gets its own charts
// with its own y scale: a price near 42,000 and a sensor near 20 on one axis would make
// the sensor a flat line at 0.

import { lowerBound } from './model.js';
import { clockFmt } from './texts.js';

const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false });

// Sizes the canvas to its CSS box at the device pixel ratio; null when not laid out.
function prepare(canvas, col) {
  const W = canvas.clientWidth, H = canvas.clientHeight, dpr = globalThis.devicePixelRatio || 1;
  if (!W || !H) return null;
  if (canvas.width !== Math.round(W * dpr)) canvas.width = Math.round(W * dpr);
  if (canvas.height !== Math.round(H * dpr)) canvas.height = Math.round(H * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, W, H);
  Object.assign(g, { font: '11px system-ui, sans-serif', fillStyle: col.muted });
  return { g, W, H };
}

function message(p, text) {
  Object.assign(p.g, { textAlign: 'center', textBaseline: 'middle' });
  p.g.fillText(text, p.W / 2, p.H / 2);
}

// Axes for [start, end] × [lo, hi]: a 1/2/5 × 10ⁿ y step about every 40 px, x grid
// lines at least 80 px apart. Returns the scale functions.
function axes(p, col, start, end, lo, hi) {
  const { g, W, H } = p, top = 8, bottom = H - 18, right = W - 8;
  const raw = (hi - lo) / Math.max(2, Math.floor((bottom - top) / 40)), pw = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].find((f) => f * pw >= raw) * pw, dec = Math.min(8, Math.max(0, -Math.floor(Math.log10(step))));
  const yTicks = [];
  for (let k = Math.ceil(lo / step); k * step <= hi && yTicks.length < 50; k++) yTicks.push([k * step, (k * step).toFixed(dec)]);
  const left = 12 + Math.max(0, ...yTicks.map((t) => g.measureText(t[1]).width));
  const span = end - start;
  const X = (t) => left + ((t - start) * (right - left)) / span;
  const Y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  const steps = [1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800].map((s) => s * 1000);
  const xStep = steps.find((s) => (s * (right - left)) / span >= 80) || 2592e6;
  const fmt = xStep >= 86400e3 ? dayFmt : clockFmt;
  Object.assign(g, { strokeStyle: col.grid, lineWidth: 1, textAlign: 'center', textBaseline: 'top' });
  g.beginPath();
  for (let t = Math.ceil(start / xStep) * xStep; t <= end; t += xStep) {
    const x = Math.round(X(t)) + 0.5;
    g.moveTo(x, top); g.lineTo(x, bottom);
    if (x > left + 25 && x < right - 25) g.fillText(fmt.format(t), x, bottom + 4);
  }
  Object.assign(g, { textAlign: 'right', textBaseline: 'middle' });
  for (const [v, label] of yTicks) {
    const y = Math.round(Y(v)) + 0.5;
    g.moveTo(left, y); g.lineTo(right, y); g.fillText(label, left - 5, y);
  }
  g.stroke();
  return { X, Y, left, right, top, bottom };
}

function padded(lo, hi) {
  const pad = (hi - lo || Math.abs(hi) * 0.01 || 1) * 0.08;   // a flat line ends up centred
  return [lo - pad, hi + pad];
}

// `value` over time: xs (ms, ascending) and ys. The right edge is now, unless all
// data is older than the window (replayed history, a stalled producer): then it
// ends at the newest point so there is still something to see.
export function line(canvas, col, color, xs, ys, windowMs) {
  const p = prepare(canvas, col);
  if (!p) return;
  if (!xs.length) return message(p, 'Waiting for numeric values…');
  const newest = xs[xs.length - 1], now = Date.now();
  const end = newest < now - windowMs ? newest : Math.max(now, newest), start = end - windowMs;
  const i0 = lowerBound(xs, start);
  let lo = Infinity, hi = -Infinity;
  for (let i = i0; i < xs.length; i++) { if (ys[i] < lo) lo = ys[i]; if (ys[i] > hi) hi = ys[i]; }
  if (lo === Infinity) return message(p, 'No values in this window');
  [lo, hi] = padded(lo, hi);
  const { X, Y } = axes(p, col, start, end, lo, hi), g = p.g;
  // Points on the same pixel column fold into one min–max stroke: ~2 segments per
  // pixel, however many ticks the window holds.
  let column = NaN, cmin = 0, cmax = 0, moved = false, lastX = 0, lastY = 0;
  const flush = () => {
    if (Number.isNaN(column)) return;
    if (moved) g.lineTo(column, Y(cmin)); else { g.moveTo(column, Y(cmin)); moved = true; }
    if (cmax !== cmin) g.lineTo(column, Y(cmax));
  };
  Object.assign(g, { strokeStyle: color, fillStyle: color, lineWidth: 1.5, lineJoin: 'round' });
  g.beginPath();
  for (let i = i0; i < xs.length; i++) {
    const px = Math.round(X(xs[i])), v = ys[i];
    if (px !== column) { flush(); column = px; cmin = cmax = v; } else { cmin = Math.min(cmin, v); cmax = Math.max(cmax, v); }
    lastX = px; lastY = Y(v);
  }
  flush(); g.stroke();
  g.fillRect(lastX - 2.5, lastY - 2.5, 5, 5);   // the latest value
}

// OHLC candles, ascending by start `t` (ms); `intervalMs` is one bucket. Shows the
// newest that fit (at least 3 px per candle, 120 at most).
export function candles(canvas, col, list, intervalMs) {
  const p = prepare(canvas, col);
  if (!p) return;
  if (!list.length) return message(p, 'No candles yet');
  const fit = Math.max(5, Math.min(120, Math.floor((p.W - 60) / 4)));
  const shown = list.slice(-fit), last = shown[shown.length - 1];
  // The newest at the right edge; a few candles are not stretched across the width.
  const slots = Math.max(shown.length, Math.min(fit, 30)), end = last.t + intervalMs, start = end - slots * intervalMs;
  let lo = Infinity, hi = -Infinity;
  for (const c of shown) { lo = Math.min(lo, c.low); hi = Math.max(hi, c.high); }
  [lo, hi] = padded(lo, hi);
  const { X, Y } = axes(p, col, start, end, lo, hi), g = p.g;
  const w = Math.max(1, ((X(start + intervalMs) - X(start)) * 0.7) | 0);
  for (const c of shown) {
    const x = Math.round(X(c.t + intervalMs / 2)), up = c.close >= c.open;
    g.strokeStyle = g.fillStyle = up ? col.up : col.down;
    g.globalAlpha = c.final === false ? 0.75 : 1;   // the bucket still filling
    g.beginPath(); g.moveTo(x + 0.5, Y(c.high)); g.lineTo(x + 0.5, Y(c.low)); g.stroke();
    const yTop = Y(Math.max(c.open, c.close)), h = Math.max(1, Y(Math.min(c.open, c.close)) - yTop);
    g.fillRect(x - (w >> 1), yTop, w, h);
  }
  g.globalAlpha = 1;
}
