-- tickstream: move a channel whose stream a failover rolled back to its next epoch
-- (docs/PROTOCOL.md §5.4 "rollback", docs/ARCHITECTURE.md §4).
--
-- Redis replication is asynchronous: a promoted replica may lack the last ticks the
-- old master stored, ticks that nodes already delivered. A node that notices (the
-- stream's last id, or the channel's seq, is behind what it delivered) calls this
-- script. Checked and done atomically, once for all nodes: the first caller moves
-- the channel on, later callers find the epoch already moved.
--
-- KEYS[1] stream   tickstream:{p<N>}:s:<channel>
-- KEYS[2] meta     tickstream:{p<N>}:m:<channel>   (hash: epoch, seq)
-- ARGV[1] the epoch the caller delivered ticks of
-- ARGV[2] the last id it delivered      ARGV[3] the last seq it delivered
-- ARGV[4] the epoch to move to (the caller's tick::epoch::after_rollback of ARGV[1])
--
-- Moving on: the new epoch, and seq from 1 again (`seq` never repeats within an
-- epoch), and the stream's id counter raised to the last delivered id (XSETID), so
-- the new epoch's ticks get ids above every id a client has seen.
--
-- Returns {epoch now, the newest entry id at or below ARGV[2] ('0-0' if none), 1 if
-- this call moved it on else 0}.

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms or 0), tonumber(seq or 0)
end

local function id_less(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if last[1] then
  last_id = last[1][1]
end
-- The newest entry at or below what was delivered: where readers go on from (ticks
-- appended since the failover may already stand above it, and must not be skipped).
local kept = redis.call('XREVRANGE', KEYS[1], ARGV[2], '-', 'COUNT', 1)
local survivor = '0-0'
if kept[1] then
  survivor = kept[1][1]
end

local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq')
local epoch = meta[1]
local moved = 0
if epoch == ARGV[1] then
  local seq = tonumber(meta[2] or '0')
  if seq < tonumber(ARGV[3]) or id_less(last_id, ARGV[2]) then
    redis.call('HSET', KEYS[2], 'epoch', ARGV[4], 'seq', 0)
    epoch = ARGV[4]
    moved = 1
  end
end

-- Never let a new id fall at or below one a client was given (whoever moved the
-- epoch on). XSETID only raises: the stream's counter may already be higher. A
-- stream whose last entry is not below the fence has its counter there already
-- (the common case, on every fenced ingest): nothing to check.
if id_less(last_id, ARGV[2]) and redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local generated = '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      generated = info[i + 1]
    end
  end
  if id_less(generated, ARGV[2]) then
    redis.call('XSETID', KEYS[1], ARGV[2])
  end
end

return {epoch or false, survivor, moved}
