-- tickstream: append a channel's ticks, atomically (docs/PROTOCOL.md §2, docs/ARCHITECTURE.md §2 and §3).
--
-- Dedup, epoch, seq, XADD and the channel registry happen in one script, so that
-- concurrent duplicates are stored once and `seq` has no holes: nothing can run
-- between the dedup check and the append. One call takes every tick of one channel
-- in an ingest batch, in order (a batch costs one script call per channel, not per tick).
--
-- KEYS[1] stream    tickstream:{p<N>}:s:<channel>
-- KEYS[2] meta      tickstream:{p<N>}:m:<channel>    (hash: epoch, seq)
-- KEYS[3] registry  tickstream:{p<N>}:channels       (zset: channel -> last append ms)
-- KEYS[3+i] dedup   tickstream:{p<N>}:d:<channel>:<event_id of tick i>
-- ARGV[1] MAXLEN (approximate)   ARGV[2] dedup window, seconds
-- ARGV[3] epoch to use if the channel has none yet   ARGV[4] channel
-- ARGV[5] '1' when the caller will WAIT for replicas (TICKSTREAM_REDIS_WAIT): then a
--         duplicate writes too (its marker's expiry, unchanged), so that the WAIT
--         that follows also covers the original it points to (replication is one
--         ordered stream)
-- then per tick i, ARGV[5+i]: the tick's tail, the JSON members its producer
-- determines, serialized by the node: "ts":"…","value":…,"data":…,"event_id":"…"}
--
-- Each entry has one field, `j`: "seq":<seq>,"epoch":"<epoch>", then the tail. A
-- reader splices it behind the members the stream id gives (id, channel, ingest_ts)
-- and has the whole tick object without re-serializing anything (src/tick/wire.rs).
--
-- Returns {id_1, duplicate_1, id_2, duplicate_2, ...}; a duplicate returns the
-- original id and takes no seq.

local n = #KEYS - 3
local out = {}
local epoch = nil
local last_id = nil

for i = 1, n do
  local dedup = KEYS[3 + i]
  local original = redis.call('GET', dedup)
  if original then
    if ARGV[5] == '1' then
      local ttl = redis.call('PTTL', dedup)
      if ttl > 0 then
        redis.call('PEXPIRE', dedup, ttl)
      end
    end
    out[#out + 1] = original
    out[#out + 1] = 1
  else
    if not epoch then
      redis.call('HSETNX', KEYS[2], 'epoch', ARGV[3])
      epoch = redis.call('HGET', KEYS[2], 'epoch')
    end
    local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
    local body = string.format('"seq":%d,"epoch":"%s",', seq, epoch) .. ARGV[5 + i]
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'j', body)
    redis.call('SET', dedup, id, 'EX', ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = 0
    last_id = id
  end
end

if last_id then
  redis.call('ZADD', KEYS[3], tonumber(string.match(last_id, '^(%d+)')), ARGV[4])
end
return out
