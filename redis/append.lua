-- tickstream: append a channel's ticks and fold them into its candles, atomically
-- (docs/PROTOCOL.md §2 and §6 "Candles", docs/ARCHITECTURE.md §2, §3 and §14).
--
-- Dedup, epoch, seq, XADD, the channel registry and the candles happen in one script,
-- so that concurrent duplicates are stored once, `seq` has no holes, a duplicate
-- never counts in a candle and no reader sees a half-updated candle: nothing can run
-- between the dedup check, the append and the candle update. One call takes every
-- tick of one channel in an ingest batch, in order (a batch costs one script call per
-- channel, not per tick), and reads and writes each candle it touches once.
--
-- KEYS[1] stream    tickstream:{p<N>}:s:<channel>
-- KEYS[2] meta      tickstream:{p<N>}:m:<channel>    (hash: epoch, seq)
-- KEYS[3] registry  tickstream:{p<N>}:channels       (zset: channel -> last append ms)
-- KEYS[#KEYS] births tickstream:{p<N>}:births        (stream: one entry per channel created)
-- KEYS[3+k] candles tickstream:{p<N>}:c:<interval k>:<channel> (zset: bucket start -> candle)
-- KEYS[3+c+1..3+c+r] the r dedup buckets read, oldest first; KEYS[3+c+q] is the
--           current one, written: tickstream:{p<N>}:e:<bucket>:<channel> (hash:
--           an event id's first 16 bytes -> stream id of the original;
--           src/keyspace.rs DedupBuckets)
-- KEYS[3+c+r+i] the first format's dedup marker of tick i,
--           tickstream:{p<N>}:d:<channel>:<event_id> (string, EX window): read, never
--           written, for one window after a channel's first append in this format
-- ARGV[1] MAXLEN (approximate)   ARGV[2] how long to keep the current bucket, ms
--         (relative: Redis's clock and the node's need not agree)
-- ARGV[3] epoch to use if the channel has none yet   ARGV[4] channel
-- ARGV[5] '1' when the caller will WAIT for replicas (TICKSTREAM_REDIS_WAIT): then a
--         duplicate writes too (its id again, where it was found, with its expiry
--         unchanged), so that the WAIT that follows also covers the original it
--         points to (replication is one ordered stream)
-- ARGV[6] now, Unix ms (the node's clock)   ARGV[7] the dedup window in ms
-- ARGV[8] r, the number of dedup buckets read   ARGV[9] q, the current one's place
-- ARGV[10] c, the number of candle intervals (0: candles off)
-- ARGV[10+k] interval k in ms   ARGV[10+c+k] its retention in ms
-- then per tick i, five arguments from ARGV[10+2c+5(i-1)+1]: the tick's tail (the JSON
-- members its producer determines, serialized by the node:
-- "ts":"…","value":…,"data":…,"event_id":"…"}), its ts in Unix µs, its value as
-- number text ('' when none), its data.volume as number text ('' when none), the
-- first 16 bytes of its event id (raw)
--
-- Deduplication costs a few calls per script call, not two per tick: every bucket is
-- read with one HMGET of all the call's event ids, and the new ids are written with
-- one HSET (a string key with its own expiry per tick was half of this script's
-- time; docs/BENCHMARKS.md "Ingest"). The meta hash's `dedup_since` says since when
-- (Unix ms) the channel is deduplicated in buckets: 0 for a channel that began so,
-- and while it is less than a window ago the first format's markers are read too.
--
-- Each entry has one field, `j`: "seq":<seq>,"epoch":"<epoch>", then the tail. A
-- reader splices it behind the members the stream id gives (id, channel, ingest_ts)
-- and has the whole tick object without re-serializing anything (src/tick/wire.rs).
--
-- A candle is one member of its interval's sorted set, scored by its bucket start:
-- start|count|open|high|low|close|volume|open_ts|open_id|close_ts|close_id (the
-- format of src/candles/candle.rs). Open is the tick with the smallest (ts, stream
-- id), close the largest, so a late tick updates its older bucket exactly. Each
-- interval keeps the buckets newer than its newest bucket minus its retention.
--
-- Returns {id_1, duplicate_1, id_2, duplicate_2, ...}; a duplicate returns the
-- original id and takes no seq.
--
-- A second entry point serves `tickstream candles rebuild`: ARGV[1] 'replace', KEYS
-- the stream, then the candle keys; ARGV[2] the stream's last id the rebuild folded up
-- to, ARGV[3] c, then the intervals and retentions as above, then pairs of interval
-- number and packed candle. If ticks were appended after that id it changes nothing
-- and returns {'moved', last id} (the rebuild folds the newer ticks and calls again);
-- else each rebuilt candle replaces the stored one of its bucket unless the stored
-- one counts more ticks (it then also holds ticks the stream has since trimmed), and
-- it returns {'ok'}. Atomic, so a rebuild is exact while ingest runs, and idempotent.

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms or 0), tonumber(seq or 0)
end

local function unpack_candle(member)
  local f = {}
  for part in string.gmatch(member .. '|', '([^|]*)|') do
    f[#f + 1] = part
  end
  return {
    start = f[1], count = tonumber(f[2]), open = f[3], high = f[4], low = f[5],
    close = f[6], volume = f[7], ots = f[8], oid = f[9], cts = f[10], cid = f[11],
  }
end

-- The retention cutoff: `retention` ms back from the newest bucket, but never from
-- later than `now` (Redis's clock, as the last stream id gives it), so a tick dated
-- years ahead cannot trim a channel's real candles away.
local function cutoff_of(newest, now, retention)
  return math.min(newest, now) - retention
end

-- A batch's ticks are folded per bucket in numbers first (`pending`: bucket start ->
-- {count, open, ots, oms, oseq, oid, close, cts, cms, cseq, cid, high, highn, low,
-- lown, vol}), so each tick costs a few comparisons, and each touched bucket is read
-- and written once per call.

-- (ts, ms, seq) of a stored mark against a pending one: is the stored one earlier?
local function stored_before(ts, id, pts, pms, pseq)
  local t = tonumber(ts)
  if t ~= pts then
    return t < pts
  end
  local ms, seq = id_parts(id)
  return ms < pms or (ms == pms and seq < pseq)
end

-- The stored member of pending candle `p`, merged into the stored candle `y` (nil:
-- a new bucket).
local function packed_with(y, p)
  local vol = ''
  if p.vol then
    vol = string.format('%.17g', p.vol)
  end
  if not y then
    return table.concat({
      string.format('%.0f', p.start), string.format('%d', p.count), p.open, p.high, p.low,
      p.close, vol, string.format('%.0f', p.ots), p.oid, string.format('%.0f', p.cts), p.cid,
    }, '|')
  end
  local open, ots, oid = y.open, y.ots, y.oid
  if not stored_before(y.ots, y.oid, p.ots, p.oms, p.oseq) then
    open, ots, oid = p.open, string.format('%.0f', p.ots), p.oid
  end
  local close, cts, cid = p.close, string.format('%.0f', p.cts), p.cid
  if not stored_before(y.cts, y.cid, p.cts, p.cms, p.cseq) then
    close, cts, cid = y.close, y.cts, y.cid
  end
  local high, low = y.high, y.low
  if p.highn > tonumber(high) then
    high = p.high
  end
  if p.lown < tonumber(low) then
    low = p.low
  end
  if y.volume ~= '' then
    if p.vol then
      vol = string.format('%.17g', tonumber(y.volume) + p.vol)
    else
      vol = y.volume
    end
  end
  return table.concat({
    y.start, string.format('%d', y.count + p.count), open, high, low, close, vol,
    ots, oid, cts, cid,
  }, '|')
end

-- Folds `pending` into candle key `key`. Retention is applied when a bucket is
-- created (updating an existing bucket cannot make an older one expire sooner than
-- the next new bucket would): a late tick behind the cutoff is dropped, and buckets
-- at or before it are removed.
local function store_candles(key, retention, pending, starts, now)
  local newest = -math.huge
  for _, start in ipairs(starts) do
    if start > newest then
      newest = start
    end
  end
  local cutoff = cutoff_of(newest, now, retention)
  local created = false
  for _, start in ipairs(starts) do
    if start > cutoff then
      local score = string.format('%.0f', start)
      local existing = redis.call('ZRANGEBYSCORE', key, score, score, 'LIMIT', 0, 1)
      local y = nil
      if existing[1] then
        y = unpack_candle(existing[1])
        redis.call('ZREM', key, existing[1])
      else
        created = true
      end
      redis.call('ZADD', key, score, packed_with(y, pending[start]))
    end
  end
  if created then
    local top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
    if top[2] then
      local trim = cutoff_of(tonumber(top[2]), now, retention)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', trim))
    end
  end
end

if ARGV[1] == 'replace' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local last_id = '0-0'
  if last[1] then
    last_id = last[1][1]
  end
  if last_id ~= ARGV[2] then
    return {'moved', last_id}
  end
  local c = tonumber(ARGV[3])
  local rebuilt = {}
  for k = 1, c do
    rebuilt[k] = {}
  end
  for j = 4 + 2 * c, #ARGV, 2 do
    local k = tonumber(ARGV[j])
    rebuilt[k][#rebuilt[k] + 1] = ARGV[j + 1]
  end
  for k = 1, c do
    local key = KEYS[1 + k]
    for _, member in ipairs(rebuilt[k]) do
      local y = unpack_candle(member)
      local existing = redis.call('ZRANGEBYSCORE', key, y.start, y.start, 'LIMIT', 0, 1)
      if not existing[1] or unpack_candle(existing[1]).count <= y.count then
        if existing[1] then
          redis.call('ZREM', key, existing[1])
        end
        redis.call('ZADD', key, y.start, member)
      end
    end
    local top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
    if top[2] then
      local cutoff = cutoff_of(tonumber(top[2]), id_parts(last_id), tonumber(ARGV[3 + c + k]))
      redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', cutoff))
    end
  end
  return {'ok'}
end

local r = tonumber(ARGV[8])
local c = tonumber(ARGV[10])
-- The births key is last, after the n ticks' markers.
local n = #KEYS - 4 - c - r
local base = 10 + 2 * c
local now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local current = KEYS[3 + c + tonumber(ARGV[9])]
local out = {}
local epoch = nil
local seq = 0
local last_id = nil
local pending, starts, intervals = {}, {}, {}
for k = 1, c do
  pending[k], starts[k], intervals[k] = {}, {}, tonumber(ARGV[10 + k])
end

local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'dedup_since')
local since = meta[3]
if not since and not meta[1] then
  -- A new channel: it never had markers of the first format.
  since = '0'
end

-- found[i]: the original id of tick i's event id, if one is remembered, and at[i]
-- the key it was found in.
local eids, found, at = {}, {}, {}
for i = 1, n do
  eids[i] = ARGV[base + 5 * i]
end
for b = 3 + c + 1, 3 + c + r do
  local got = redis.call('HMGET', KEYS[b], unpack(eids))
  for i = 1, n do
    if got[i] and not found[i] then
      found[i], at[i] = got[i], KEYS[b]
    end
  end
end
if not since or tonumber(since) + window > now then
  local old = redis.call('MGET', unpack(KEYS, 4 + c + r, 3 + c + r + n))
  for i = 1, n do
    if old[i] and not found[i] then
      found[i], at[i] = old[i], false
    end
  end
end

-- What this call stores, for the bucket (event id, id, …) and for a tick resent
-- within the call.
local stored, written = {}, {}
for i = 1, n do
  local a = base + 5 * (i - 1)
  local original = found[i] or stored[eids[i]]
  if original then
    if ARGV[5] == '1' and found[i] then
      -- A write that changes nothing: the marker, where it was, keeps its expiry
      -- (a duplicate must not extend the window counted from the first store).
      if at[i] then
        redis.call('HSET', at[i], eids[i], original)
      else
        local old = KEYS[3 + c + r + i]
        local ttl = redis.call('PTTL', old)
        if ttl > 0 then
          redis.call('PEXPIRE', old, ttl)
        end
      end
    end
    out[#out + 1] = original
    out[#out + 1] = 1
  else
    if not epoch then
      if not meta[1] then
        redis.call('HSETNX', KEYS[2], 'epoch', ARGV[3])
        meta[1] = redis.call('HGET', KEYS[2], 'epoch')
      end
      epoch, seq = meta[1], tonumber(meta[2] or '0')
    end
    -- Counted here and written once after the loop (one HSET per call, not an
    -- HINCRBY per tick): nothing else runs meanwhile, so it is the same.
    seq = seq + 1
    local body = string.format('"seq":%d,"epoch":"%s",', seq, epoch) .. ARGV[a + 1]
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'j', body)
    stored[eids[i]] = id
    written[#written + 1] = eids[i]
    written[#written + 1] = id
    out[#out + 1] = id
    out[#out + 1] = 0
    last_id = id
    local value = ARGV[a + 3]
    if c > 0 and value ~= '' then
      -- Ticks of one call are appended in order: on equal ts a later one has the
      -- larger id, so it closes but does not open.
      local ts = tonumber(ARGV[a + 2])
      local vn = tonumber(value)
      local vol = nil
      if ARGV[a + 4] ~= '' then
        vol = tonumber(ARGV[a + 4])
      end
      local ims, iseq = id_parts(id)
      local ms = math.floor(ts / 1000)
      for k = 1, c do
        local start = ms - ms % intervals[k]
        local x = pending[k][start]
        if not x then
          pending[k][start] = {
            start = start, count = 1, open = value, ots = ts, oms = ims, oseq = iseq, oid = id,
            close = value, cts = ts, cms = ims, cseq = iseq, cid = id,
            high = value, highn = vn, low = value, lown = vn, vol = vol,
          }
          starts[k][#starts[k] + 1] = start
        else
          x.count = x.count + 1
          if ts < x.ots then
            x.open, x.ots, x.oms, x.oseq, x.oid = value, ts, ims, iseq, id
          end
          if ts >= x.cts then
            x.close, x.cts, x.cms, x.cseq, x.cid = value, ts, ims, iseq, id
          end
          if vn > x.highn then
            x.high, x.highn = value, vn
          end
          if vn < x.lown then
            x.low, x.lown = value, vn
          end
          if vol then
            x.vol = (x.vol or 0) + vol
          end
        end
      end
    end
  end
end

if written[1] then
  redis.call('HSET', current, unpack(written))
  redis.call('PEXPIRE', current, ARGV[2])
end
if not last_id and not since then
  -- Only duplicates, on a channel of the first format: its transition starts anyway.
  redis.call('HSET', KEYS[2], 'dedup_since', ARGV[6])
end
if last_id then
  if meta[3] then
    redis.call('HSET', KEYS[2], 'seq', string.format('%d', seq))
  else
    redis.call('HSET', KEYS[2], 'seq', string.format('%d', seq), 'dedup_since', since or ARGV[6])
  end
  local clock = id_parts(last_id)
  for k = 1, c do
    store_candles(KEYS[3 + k], tonumber(ARGV[10 + c + k]), pending[k], starts[k], clock)
  end
  -- A channel new to the registry was just created (or re-created after its stream
  -- was lost): say so on the partition's births, which readers follow so that a
  -- subscription waiting for the channel's first tick costs no read until now.
  if redis.call('ZADD', KEYS[3], clock, ARGV[4]) == 1 then
    -- 10000: keyspace::BIRTHS_KEPT.
    redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', 10000, '*', 'c', ARGV[4])
  end
end
return out
