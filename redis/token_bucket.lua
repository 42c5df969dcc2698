-- tickstream: take tokens from a rate-limit bucket, atomically, shared by every node
-- (docs/PROTOCOL.md "Rate limits", docs/ARCHITECTURE.md "Admission").
--
-- The bucket in its GCRA form: instead of a token count and a refill time, the key
-- holds one number, the theoretical arrival time (TAT): the moment, in microseconds,
-- at which the bucket will be full again. Taking `cost` tokens moves it `cost`
-- emission intervals later; a request is refused when that would put it more than a
-- whole burst into the future. Same behaviour as a token bucket of `burst` tokens
-- refilled one per interval, one key, one read and one write.
--
-- The clock is Redis's own (`TIME`), so the nodes' clocks never matter.
--
-- KEYS[1] bucket   tickstream:rl:{<subject>}:<group>
-- ARGV[1] emission interval, microseconds per token (may be fractional)
-- ARGV[2] burst, tokens
-- ARGV[3] cost, tokens (1 for a request, the tick count for an ingest batch)
--
-- Returns {allowed (1|0), remaining whole tokens, retry-after in microseconds
-- (0 when allowed)}. A refused request takes nothing.

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end

local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  local remaining = math.floor((burst * interval - (tat - now)) / interval)
  if remaining < 0 then
    remaining = 0
  end
  return {0, remaining, math.ceil(allow_at - now)}
end

-- The key expires when the bucket is full again: a full bucket and no key are the same.
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(ttl_ms, 1))
return {1, math.floor((burst * interval - (new_tat - now)) / interval), 0}
