// What the header and the cards say (static/texts.js), from the client library's states
// and errors: the words a user reads when something goes wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { badgeView, channelListError, checkView, rateTitle, sampleNote, serverErrorText, statusView } from '../texts.js';

const err = (code, message, extra = {}) => Object.assign(new Error(message), { code, status: null, channel: null, ...extra });

test('the header follows the client: connecting, live (catching up while replaying), reconnecting', () => {
  const token = 't';
  assert.deepEqual(statusView({ token, clientState: 'connecting' }), { state: 'connecting', text: 'Connecting…' });
  assert.deepEqual(statusView({ token, clientState: 'connected', busy: true }), { state: 'live', text: 'Connected — catching up' });
  assert.deepEqual(statusView({ token, clientState: 'connected' }), { state: 'live', text: 'Live' });
  assert.deepEqual(statusView({ token, clientState: 'reconnecting', info: { code: 1012, delay: 400 } }),
    { state: 'reconnecting', text: 'Reconnecting — server restarting' });
  assert.equal(statusView({ token, clientState: 'reconnecting', info: { code: 1006, reason: 'gone' } }).text,
    'Reconnecting — closed (1006 gone)');
  assert.equal(statusView({ token, clientState: 'reconnecting', info: { code: 4029 } }).text, 'Reconnecting — rate limited');
});

test('a refused handshake says what the REST diagnosis found', () => {
  const view = (error) => statusView({ token: 't', clientState: 'reconnecting', info: { code: 1006, error } }).text;
  assert.equal(view(err('rate_limited', 'HTTP 429', { status: 429 })), 'Reconnecting — rate limited');
  assert.equal(view(err('unavailable', 'HTTP 503', { status: 503 })), 'Reconnecting — server not ready');
  assert.equal(view(err('unreachable', 'cannot reach the server')), 'Reconnecting — connection failed');
});

test('a stopped client asks for a token when the token is the trouble', () => {
  const closed = (error) => statusView({ token: 't', clientState: 'closed', info: { error } });
  assert.deepEqual(closed(err('token_expired', 'HTTP 401: token expired', { status: 401 })),
    { state: 'closed', text: 'Token expired — paste a new token in Settings', askToken: true });
  assert.deepEqual(closed(err('invalid_token', 'HTTP 401: bad signature', { status: 401 })),
    { state: 'closed', text: 'Token rejected (invalid or expired) — paste a new token in Settings', askToken: true });
  assert.equal(closed(err('forbidden', 'the server refused this client (4003)', { status: 403 })).text,
    'Forbidden (the server refused this client (4003))');
  assert.equal(closed(err('policy', 'the server closed the socket (1008)')).text, 'Stopped: the server closed the socket (1008)');
  assert.deepEqual(statusView({ token: '' }), { state: 'closed', text: 'No token — paste one in Settings', askToken: true });
});

test('an idle client (no channel yet) is live once the channel list answered', () => {
  assert.equal(statusView({ token: 't', clientState: 'idle' }).state, 'connecting');
  assert.deepEqual(statusView({ token: 't', clientState: 'idle', probe: 'ok' }), { state: 'live', text: 'Live' });
  assert.equal(statusView({ token: 't', clientState: 'idle', probe: err('invalid_token', 'HTTP 401', { status: 401 }) }).state, 'closed');
});

test('badges: offline until the socket is open, then the subscription state, error once refused', () => {
  assert.deepEqual(badgeView({ clientState: 'reconnecting', subState: 'pending' }), { state: 'offline', text: 'offline' });
  assert.deepEqual(badgeView({ clientState: 'connected', subState: 'pending' }), { state: 'pending', text: 'subscribing' });
  assert.deepEqual(badgeView({ clientState: 'connected', subState: null, starting: true }), { state: 'pending', text: 'subscribing' });
  assert.deepEqual(badgeView({ clientState: 'connected', subState: 'replaying' }), { state: 'replaying', text: 'replaying' });
  assert.deepEqual(badgeView({ clientState: 'connected', subState: 'live' }), { state: 'live', text: 'live' });
  assert.deepEqual(badgeView({ clientState: 'connected', subState: 'closed', error: 'forbidden' }), { state: 'error', text: 'error: forbidden' });
});

test('the check: continuous with its count, or the breaks in red; announced gaps beside', () => {
  assert.deepEqual(checkView({ checked: 14, breaks: 0, gaps: 0 }), { ok: true, text: '✓ continuous (14)' });
  assert.deepEqual(checkView({ checked: 14, breaks: 1, gaps: 0 }), { ok: false, text: '✗ 1 break' });
  assert.deepEqual(checkView({ checked: 14, breaks: 3, gaps: 2 }), { ok: false, text: '✗ 3 breaks, 2 gaps announced' });
  assert.equal(checkView({ checked: 2, breaks: 0, gaps: 1 }).text, '✓ continuous (2), 1 gap announced');
});

test('under a rate the table says it is a sample, and the tooltip gives the frames a second', () => {
  assert.equal(sampleNote(15, 10.94), 'sample: at most 15 ticks/s of 10.9/s — Skipped counts the ticks left out before each row');
  assert.equal(sampleNote(5, null), 'sample: at most 5 ticks/s — Skipped counts the ticks left out before each row');
  assert.equal(sampleNote(0, 10), '', 'every tick: no note');
  assert.match(rateTitle(5, 4.96), /at most 5 of them a second \(5\.0\/s now\)/);
  assert.equal(rateTitle(0, 3), "The channel's ticks per second over the last 5 s");
});

test('server refusals read as before: code, then the message when there is one', () => {
  assert.equal(serverErrorText(err('forbidden', 'not for you', { channel: 'a.b' })), 'Server error on a.b: forbidden — not for you');
  assert.equal(serverErrorText(err('bad_rate', 'bad_rate', { channel: 'a.b' })), 'Server error on a.b: bad_rate');
  assert.equal(channelListError(err('invalid_token', 'HTTP 401: token expired', { status: 401 })), 'Channel list: HTTP 401 — token expired');
  assert.equal(channelListError(err('http_502', 'HTTP 502', { status: 502 })), 'Channel list: HTTP 502');
});
