-- tickstream: append one tick, atomically (SPEC §1, ARCHITECTURE §2 and §7).
--
-- Dedup, epoch, seq, XADD and the channel registry are one script so that concurrent
-- duplicates store once and `seq` has no holes: nothing can run between the dedup
-- check and the append.
--
-- KEYS[1] stream    tickstream:{p<N>}:s:<channel>
-- KEYS[2] meta      tickstream:{p<N>}:m:<channel>    (hash: epoch, seq)
-- KEYS[3] dedup     tickstream:{p<N>}:d:<channel>:<event_id>
-- KEYS[4] registry  tickstream:{p<N>}:channels       (zset: channel -> last append ms)
-- ARGV[1] MAXLEN (approximate)   ARGV[2] dedup window, seconds
-- ARGV[3] epoch to use if the channel has none yet
-- ARGV[4] channel   ARGV[5] ts (unix µs)   ARGV[6] value ('' = none)
-- ARGV[7] data ('' = none)                 ARGV[8] event_id
--
-- Returns {id, duplicate (0|1), seq, epoch}. A duplicate returns the original id
-- and takes no seq.

local original = redis.call('GET', KEYS[3])
if original then
  return {original, 1, 0, ''}
end

redis.call('HSETNX', KEYS[2], 'epoch', ARGV[3])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)

local fields = {'q', seq, 'ep', epoch, 'ts', ARGV[5], 'e', ARGV[8]}
if ARGV[6] ~= '' then
  table.insert(fields, 'v'); table.insert(fields, ARGV[6])
end
if ARGV[7] ~= '' then
  table.insert(fields, 'd'); table.insert(fields, ARGV[7])
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))

redis.call('SET', KEYS[3], id, 'EX', ARGV[2])
local ms = tonumber(string.match(id, '^(%d+)'))
redis.call('ZADD', KEYS[4], ms, ARGV[4])
return {id, 0, seq, epoch}
